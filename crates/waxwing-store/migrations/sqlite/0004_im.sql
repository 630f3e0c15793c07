-- Modern IM (issue 6): blocking (XEP-0191), private XML storage and
-- vCard-temp (XEP-0049, XEP-0054), last activity (XEP-0012).
--
-- Like rosters, these rows carry no foreign key to accounts; the modules
-- remove them on account deletion (Event::UserDeleted).

-- One row per blocked JID, in its canonical string form (any JID shape:
-- user@domain/res, user@domain, domain/res, domain).
CREATE TABLE blocklist (
    owner TEXT NOT NULL,
    jid   TEXT NOT NULL,
    PRIMARY KEY (owner, jid)
);

-- Opaque XML fragments: key `{namespace}name` for XEP-0049, `vcard-temp`
-- for the vCard.
CREATE TABLE private_xml (
    owner TEXT NOT NULL,
    key   TEXT NOT NULL,
    xml   TEXT NOT NULL,
    PRIMARY KEY (owner, key)
);

-- When the account's last session ended (Unix seconds) and its status text.
CREATE TABLE last_activity (
    owner  TEXT PRIMARY KEY NOT NULL,
    at     INTEGER NOT NULL CHECK (at >= 0),
    status TEXT NOT NULL
);
