-- XEP-0060 §6.3 subscription options: the submitted
-- `pubsub#subscribe_options` form, opaque to the store; '' means defaults.
ALTER TABLE pubsub_subscriptions ADD COLUMN options TEXT NOT NULL DEFAULT '';
