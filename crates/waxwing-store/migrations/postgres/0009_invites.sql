-- Invitations (sqlite/0009_invites.sql).
CREATE TABLE invites (
    id         TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    token_hash BYTEA  NOT NULL UNIQUE,
    host       TEXT COLLATE "C" NOT NULL,
    kind       TEXT COLLATE "C" NOT NULL CHECK (kind IN ('register', 'roster', 'roster+register')),
    creator    TEXT COLLATE "C",
    username   TEXT COLLATE "C",
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    max_uses   BIGINT NOT NULL CHECK (max_uses >= 1),
    uses       BIGINT NOT NULL DEFAULT 0 CHECK (uses >= 0)
);
CREATE INDEX invites_by_creator ON invites (creator);
CREATE INDEX invites_by_username ON invites (host, username);
CREATE INDEX invites_by_expiry ON invites (expires_at);
