-- Message archives (XEP-0313) for users and MUC rooms, and users' archiving
-- preferences (XEP-0441).
--
-- `seq` is the archive order: append order, never the timestamp (messages
-- share timestamps, clocks step back). AUTOINCREMENT so a purged item's seq
-- is never handed out again. `id` is the opaque UID clients see (XEP-0359
-- stanza-id), unique across all archives so it is never reused either.

CREATE TABLE archive_items (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    owner_kind    TEXT NOT NULL CHECK (owner_kind IN ('user', 'room')),
    owner         TEXT NOT NULL,
    id            TEXT NOT NULL UNIQUE,
    -- Milliseconds since the Unix epoch.
    stamp         INTEGER NOT NULL,
    -- The other party, split so that a bare `with` matches every resource.
    with_bare     TEXT NOT NULL,
    -- NULL for a bare JID.
    with_resource TEXT,
    stanza        TEXT NOT NULL
);
CREATE INDEX archive_items_owner ON archive_items (owner_kind, owner, seq);
CREATE INDEX archive_items_with ON archive_items (owner_kind, owner, with_bare, seq);
-- Retention purges by age across all archives of a kind.
CREATE INDEX archive_items_stamp ON archive_items (owner_kind, stamp);

CREATE TABLE archive_prefs (
    owner          TEXT PRIMARY KEY NOT NULL,
    default_policy TEXT NOT NULL CHECK (default_policy IN ('always', 'never', 'roster'))
);

CREATE TABLE archive_prefs_jids (
    owner  TEXT NOT NULL REFERENCES archive_prefs (owner) ON DELETE CASCADE,
    jid    TEXT NOT NULL,
    policy TEXT NOT NULL CHECK (policy IN ('always', 'never')),
    PRIMARY KEY (owner, jid)
);
