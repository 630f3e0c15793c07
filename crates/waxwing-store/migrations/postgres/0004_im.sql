-- Blocking (XEP-0191), private XML and vCards (XEP-0049, XEP-0054), last
-- activity (XEP-0012) (sqlite/0004_im.sql).

CREATE TABLE blocklist (
    owner TEXT COLLATE "C" NOT NULL,
    jid   TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (owner, jid)
);

CREATE TABLE private_xml (
    owner TEXT COLLATE "C" NOT NULL,
    key   TEXT COLLATE "C" NOT NULL,
    xml   TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (owner, key)
);

CREATE TABLE last_activity (
    owner  TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    at     BIGINT NOT NULL CHECK (at >= 0),
    status TEXT COLLATE "C" NOT NULL
);
