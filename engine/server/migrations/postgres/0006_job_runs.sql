-- One row per target of a job (see migrations/sqlite).
CREATE TABLE job_runs (
    job      BIGINT NOT NULL,
    idx      BIGINT NOT NULL,
    data     TEXT NOT NULL,
    PRIMARY KEY (job, idx)
);
