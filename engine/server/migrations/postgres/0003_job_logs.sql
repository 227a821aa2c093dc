-- Task output, appended as it arrives (see migrations/sqlite).
CREATE TABLE job_logs (
    seq      BIGINT PRIMARY KEY,
    job      BIGINT NOT NULL,
    mac      TEXT NOT NULL,
    task     BIGINT NOT NULL,
    at       BIGINT NOT NULL,
    text     TEXT NOT NULL
);
CREATE INDEX job_logs_by_run ON job_logs (job, mac, seq);
