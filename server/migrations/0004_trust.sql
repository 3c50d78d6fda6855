-- Trust: providers' persistent identities and standing, shut-outs, address bans, checked and withdrawn credit.
-- Timestamps are Unix seconds.

-- A provider that presents a persistent key. Only the SHA-256 of the key is kept (hex): the key is the
-- provider's secret. Standing (checks passed) and shut-outs survive its reconnects.
CREATE TABLE provider_identities (
    id              INTEGER PRIMARY KEY,
    key_hash        TEXT    NOT NULL UNIQUE,
    -- Checks by recomputation it passed, across connections and projects.
    verified        INTEGER NOT NULL DEFAULT 0,
    -- Set when a check failed: the identity is refused from then on.
    shut_out_at     INTEGER,
    shut_out_reason TEXT,
    first_seen      INTEGER NOT NULL,
    last_seen       INTEGER NOT NULL
);

-- The identity a connection presented, the address it came from, and the project it was shut out of.
ALTER TABLE providers ADD COLUMN identity_id INTEGER REFERENCES provider_identities(id);
ALTER TABLE providers ADD COLUMN address TEXT;
ALTER TABLE providers ADD COLUMN shut_out_project INTEGER;
ALTER TABLE providers ADD COLUMN shut_out_at INTEGER;
ALTER TABLE providers ADD COLUMN shut_out_reason TEXT;
CREATE INDEX providers_identity ON providers(identity_id);
CREATE INDEX providers_shut_out ON providers(shut_out_project) WHERE shut_out_project IS NOT NULL;

-- Addresses a shut-out provider came from, refused until `until`.
CREATE TABLE address_bans (
    address    TEXT    PRIMARY KEY,
    until      INTEGER NOT NULL,
    reason     TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);

-- Whether the contribution's check by recomputation passed before it was applied (0: applied unchecked, from a
-- provider in good standing that the sample skipped), and when its credit was withdrawn (its provider was shut
-- out). A withdrawn contribution stays in the ledger: its update was applied.
ALTER TABLE contributions ADD COLUMN verified INTEGER NOT NULL DEFAULT 0;
ALTER TABLE contributions ADD COLUMN withdrawn_at INTEGER;
