-- Named operator tokens (the built-in `admin` is DATA/admin.token and not
-- here) and the audit log of what operators did.
CREATE TABLE operator_tokens (
    name TEXT PRIMARY KEY,
    -- admin | viewer
    role TEXT NOT NULL,
    -- BLAKE3 (hex) of the token: the token itself is shown once, at creation.
    hash TEXT NOT NULL UNIQUE,
    created INTEGER NOT NULL,
    -- Unix ms it was revoked; NULL while it works.
    revoked INTEGER
);

-- Append-only: every state-changing operator request by a valid token,
-- refused ones included.
CREATE TABLE audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    token TEXT NOT NULL,
    -- api | console
    origin TEXT NOT NULL,
    -- "METHOD /route/{template}"
    action TEXT NOT NULL,
    -- the request's path
    path TEXT NOT NULL,
    status INTEGER NOT NULL
);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
