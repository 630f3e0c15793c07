-- Accounts, rosters, offline messages.
--
-- JIDs are stored as their canonical string (waxwing_proto's BareJid Display),
-- prepared once in waxwing-proto, so plain byte comparison is JID equality.
-- Roster and offline rows carry no foreign key to accounts: an account can
-- live in an external directory later, and AccountStore::delete removes
-- them explicitly in its transaction.

CREATE TABLE accounts (
    jid    TEXT PRIMARY KEY NOT NULL,
    domain TEXT NOT NULL
);
CREATE INDEX accounts_domain ON accounts (domain, jid);

-- One row per SCRAM hash: never the password itself.
CREATE TABLE account_secrets (
    jid        TEXT NOT NULL REFERENCES accounts (jid) ON DELETE CASCADE,
    mechanism  TEXT NOT NULL,
    salt       BLOB NOT NULL,
    iterations INTEGER NOT NULL CHECK (iterations >= 0),
    stored_key BLOB NOT NULL,
    server_key BLOB NOT NULL,
    PRIMARY KEY (jid, mechanism)
);

-- The full subscription state of one contact in one owner's roster
-- (RFC 6121). Booleans are 0/1.
CREATE TABLE roster_items (
    owner             TEXT NOT NULL,
    contact           TEXT NOT NULL,
    name              TEXT,
    subscription      TEXT NOT NULL CHECK (subscription IN ('none', 'to', 'from', 'both')),
    ask               BOOLEAN NOT NULL,
    pending_in        BOOLEAN NOT NULL,
    pending_in_stanza TEXT,
    approved          BOOLEAN NOT NULL,
    in_roster         BOOLEAN NOT NULL,
    PRIMARY KEY (owner, contact)
);
-- owners_of: who has this contact.
CREATE INDEX roster_items_contact ON roster_items (contact);

-- Groups in a child table rather than a JSON column: the DDL and DML stay
-- identical on PostgreSQL with no JSON functions, "which groups exist"
-- (shared groups, XEP-0083) is a plain query, and position keeps the
-- client's order.
CREATE TABLE roster_groups (
    owner    TEXT NOT NULL,
    contact  TEXT NOT NULL,
    position INTEGER NOT NULL,
    name     TEXT NOT NULL,
    PRIMARY KEY (owner, contact, name),
    FOREIGN KEY (owner, contact) REFERENCES roster_items (owner, contact) ON DELETE CASCADE
);
CREATE INDEX roster_groups_contact ON roster_groups (contact);

-- Outlives the owner's rows (and account): versions never go backwards,
-- so a client's cached roster is never mistaken for a newer one.
CREATE TABLE roster_versions (
    owner   TEXT PRIMARY KEY NOT NULL,
    version INTEGER NOT NULL CHECK (version >= 0)
);

-- AUTOINCREMENT so ids are never reused after deletes: remove_up_to(n)
-- must never catch a message that arrived after the list that produced n.
CREATE TABLE offline_messages (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    owner  TEXT NOT NULL,
    stanza TEXT NOT NULL
);
CREATE INDEX offline_messages_owner ON offline_messages (owner, id);
