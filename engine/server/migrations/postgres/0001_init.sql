-- rackcast server state on PostgreSQL: the same tables as migrations/sqlite,
-- version for version, with PostgreSQL's types (BIGINT for every integer:
-- times are Unix milliseconds).
CREATE TABLE targets (
    mac      TEXT PRIMARY KEY,
    state    TEXT NOT NULL,
    data     TEXT NOT NULL,
    updated  BIGINT NOT NULL
);
CREATE TABLE jobs (
    id       BIGINT PRIMARY KEY,
    status   TEXT NOT NULL,
    data     TEXT NOT NULL,
    created  BIGINT NOT NULL
);
CREATE TABLE cast_sessions (
    id       BIGINT PRIMARY KEY,
    image    TEXT NOT NULL,
    data     TEXT NOT NULL
);
CREATE TABLE environments (
    name     TEXT PRIMARY KEY,
    data     TEXT NOT NULL
);
CREATE TABLE images (
    name     TEXT PRIMARY KEY,
    root     TEXT NOT NULL,
    data     TEXT NOT NULL,
    added    BIGINT NOT NULL
);
CREATE TABLE agent_tokens (
    mac      TEXT PRIMARY KEY,
    token    TEXT NOT NULL,
    issued   BIGINT NOT NULL
);
CREATE TABLE events (
    seq      BIGINT PRIMARY KEY,
    at       BIGINT NOT NULL,
    actor    TEXT NOT NULL,
    kind     TEXT NOT NULL,
    target   TEXT,
    job      BIGINT,
    task     BIGINT,
    detail   TEXT NOT NULL
);
CREATE INDEX events_by_job ON events (job, seq);
CREATE INDEX events_by_target ON events (target, seq);
