-- Local reputation of remote domains (sqlite/0006_reputation.sql).
CREATE TABLE domain_reputation (
    domain           TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    spam_reports     BIGINT NOT NULL DEFAULT 0,
    bounces          BIGINT NOT NULL DEFAULT 0,
    failed_dialbacks BIGINT NOT NULL DEFAULT 0,
    rate_limit_hits  BIGINT NOT NULL DEFAULT 0,
    score            DOUBLE PRECISION NOT NULL DEFAULT 0,
    updated_at       BIGINT NOT NULL,
    blocked          BIGINT NOT NULL DEFAULT 0 CHECK (blocked IN (0, 1))
);
