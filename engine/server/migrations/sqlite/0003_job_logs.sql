-- Task output, appended as it arrives: a log line never rewrites its job's
-- row (the row no longer carries the log; the server moves an older row's
-- log here when it starts).
CREATE TABLE job_logs (
    seq      BIGINT PRIMARY KEY,
    job      BIGINT NOT NULL,
    mac      TEXT NOT NULL,
    task     INTEGER NOT NULL,
    at       BIGINT NOT NULL,
    text     TEXT NOT NULL
);
CREATE INDEX job_logs_by_run ON job_logs (job, mac, seq);
