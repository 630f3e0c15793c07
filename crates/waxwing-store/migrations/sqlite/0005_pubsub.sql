-- Publish-subscribe (issue 9): XEP-0060 nodes of the `pubsub.<host>` services
-- and XEP-0163 PEP nodes of accounts, in the same tables.
--
-- `service` is the bare JID of the account (PEP) or the service domain.
-- No foreign key to accounts: the PEP module removes an account's nodes on
-- Event::UserDeleted.

-- One row per node. `config` is the node's configuration as an opaque
-- XEP-0004 submit form; the module parses it.
CREATE TABLE pubsub_nodes (
    service TEXT NOT NULL,
    node    TEXT NOT NULL,
    config  TEXT NOT NULL,
    PRIMARY KEY (service, node)
);

-- Published items, oldest first by `seq`; republishing an id moves it to
-- the newest position.
CREATE TABLE pubsub_items (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    service   TEXT NOT NULL,
    node      TEXT NOT NULL,
    item_id   TEXT NOT NULL,
    publisher TEXT NOT NULL,
    payload   TEXT NOT NULL,
    UNIQUE (service, node, item_id),
    FOREIGN KEY (service, node) REFERENCES pubsub_nodes (service, node) ON DELETE CASCADE
);

-- Affiliations other than `none` (XEP-0060 §4.1).
CREATE TABLE pubsub_affiliations (
    service     TEXT NOT NULL,
    node        TEXT NOT NULL,
    jid         TEXT NOT NULL,
    affiliation TEXT NOT NULL,
    PRIMARY KEY (service, node, jid),
    FOREIGN KEY (service, node) REFERENCES pubsub_nodes (service, node) ON DELETE CASCADE
);

-- Subscriptions (`subscribed` or `pending`), by the subscribing JID (bare or full).
CREATE TABLE pubsub_subscriptions (
    service TEXT NOT NULL,
    node    TEXT NOT NULL,
    jid     TEXT NOT NULL,
    state   TEXT NOT NULL,
    PRIMARY KEY (service, node, jid),
    FOREIGN KEY (service, node) REFERENCES pubsub_nodes (service, node) ON DELETE CASCADE
);
