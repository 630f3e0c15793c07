-- Local reputation of remote domains (federation abuse defences, issue 8).
CREATE TABLE domain_reputation (
    domain           TEXT    NOT NULL PRIMARY KEY,
    spam_reports     INTEGER NOT NULL DEFAULT 0,
    bounces          INTEGER NOT NULL DEFAULT 0,
    failed_dialbacks INTEGER NOT NULL DEFAULT 0,
    rate_limit_hits  INTEGER NOT NULL DEFAULT 0,
    score            REAL    NOT NULL DEFAULT 0,
    updated_at       INTEGER NOT NULL,
    blocked          INTEGER NOT NULL DEFAULT 0
);
