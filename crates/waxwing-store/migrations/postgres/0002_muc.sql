-- XEP-0045 persistent rooms (sqlite/0002_muc.sql).

CREATE TABLE muc_rooms (
    jid        TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    domain     TEXT COLLATE "C" NOT NULL,
    config     TEXT COLLATE "C" NOT NULL,
    subject    TEXT COLLATE "C" NOT NULL,
    subject_by TEXT COLLATE "C"
);
CREATE INDEX muc_rooms_domain ON muc_rooms (domain, jid);

CREATE TABLE muc_affiliations (
    room        TEXT COLLATE "C" NOT NULL REFERENCES muc_rooms (jid) ON DELETE CASCADE,
    jid         TEXT COLLATE "C" NOT NULL,
    affiliation TEXT COLLATE "C" NOT NULL CHECK (affiliation IN ('owner', 'admin', 'member', 'outcast')),
    nick        TEXT COLLATE "C",
    reason      TEXT COLLATE "C",
    PRIMARY KEY (room, jid)
);
CREATE UNIQUE INDEX muc_affiliations_nick ON muc_affiliations (room, nick) WHERE nick IS NOT NULL;
