-- Each target's BMC password, encrypted under DATA/bmc.key (XChaCha20-
-- Poly1305, the MAC as associated data): the settings the API shows live
-- in the target's row; the secret only here, and never leaves the server.
CREATE TABLE bmc_secrets (
    mac TEXT PRIMARY KEY,
    secret BLOB NOT NULL
);
