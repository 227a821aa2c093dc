-- Each target's BMC password, encrypted under DATA/bmc.key (see
-- migrations/sqlite).
CREATE TABLE bmc_secrets (
    mac TEXT PRIMARY KEY,
    secret BYTEA NOT NULL
);
