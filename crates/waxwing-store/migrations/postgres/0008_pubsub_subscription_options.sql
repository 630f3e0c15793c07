-- XEP-0060 §6.3 subscription options (sqlite/0008_pubsub_subscription_options.sql).
ALTER TABLE pubsub_subscriptions ADD COLUMN options TEXT COLLATE "C" NOT NULL DEFAULT '';
