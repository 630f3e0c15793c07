-- Invitations (XEP-0401/0379/0445): only the SHA-256 of each token is kept.
CREATE TABLE invites (
    id         TEXT    NOT NULL PRIMARY KEY,
    token_hash BLOB    NOT NULL UNIQUE,
    host       TEXT    NOT NULL,
    kind       TEXT    NOT NULL CHECK (kind IN ('register', 'roster', 'roster+register')),
    creator    TEXT,
    username   TEXT,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    max_uses   INTEGER NOT NULL CHECK (max_uses >= 1),
    uses       INTEGER NOT NULL DEFAULT 0 CHECK (uses >= 0)
);
CREATE INDEX invites_by_creator ON invites (creator);
CREATE INDEX invites_by_username ON invites (host, username);
CREATE INDEX invites_by_expiry ON invites (expires_at);
