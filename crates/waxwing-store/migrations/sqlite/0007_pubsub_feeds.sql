-- RSS/Atom feeds republished on pubsub nodes (issue 9, item 5).
--
-- One row per (service, node, url): configured feeds are upserted at every
-- start (`admin` = 0); feeds added by an administrator's ad-hoc command
-- (`admin` = 1) are polled from this table. The HTTP validators of the last
-- successful fetch make the next one conditional.
CREATE TABLE pubsub_feeds (
    service       TEXT NOT NULL,
    node          TEXT NOT NULL,
    url           TEXT NOT NULL,
    interval_secs INTEGER NOT NULL,
    admin         INTEGER NOT NULL,
    etag          TEXT,
    last_modified TEXT,
    PRIMARY KEY (service, node, url)
);

-- Item ids already published per feed, so that an entry is published once,
-- also across restarts and after the node dropped the item. The newest
-- rows by `seq` are kept; the rest are trimmed.
CREATE TABLE pubsub_feed_seen (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    service TEXT NOT NULL,
    node    TEXT NOT NULL,
    url     TEXT NOT NULL,
    item_id TEXT NOT NULL,
    UNIQUE (service, node, url, item_id),
    FOREIGN KEY (service, node, url) REFERENCES pubsub_feeds (service, node, url) ON DELETE CASCADE
);
