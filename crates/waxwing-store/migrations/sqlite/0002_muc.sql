-- XEP-0045 persistent rooms: configuration, subject and affiliations.
-- Occupants, roles and discussion history are not stored.

CREATE TABLE muc_rooms (
    jid        TEXT PRIMARY KEY NOT NULL,
    -- The service domain, so a service loads only its own rooms.
    domain     TEXT NOT NULL,
    -- The muc#roomconfig form written by the MUC module; opaque here.
    config     TEXT NOT NULL,
    subject    TEXT NOT NULL,
    subject_by TEXT
);
CREATE INDEX muc_rooms_domain ON muc_rooms (domain, jid);

CREATE TABLE muc_affiliations (
    room        TEXT NOT NULL REFERENCES muc_rooms (jid) ON DELETE CASCADE,
    jid         TEXT NOT NULL,
    affiliation TEXT NOT NULL CHECK (affiliation IN ('owner', 'admin', 'member', 'outcast')),
    nick        TEXT,
    reason      TEXT,
    PRIMARY KEY (room, jid)
);
-- A registered nickname belongs to one JID per room (XEP-0045 §7.10).
CREATE UNIQUE INDEX muc_affiliations_nick ON muc_affiliations (room, nick) WHERE nick IS NOT NULL;
