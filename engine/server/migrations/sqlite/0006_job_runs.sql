-- One row per target of a job: a target's progress rewrites its run's row,
-- not the job's, whose size grows with its targets (the job row is written
-- whole, with its runs here, when a job is submitted, cancelled or retried).
-- A job row written before this still carries its runs; rows here, by
-- index, take precedence when the job is loaded.
CREATE TABLE job_runs (
    job      INTEGER NOT NULL,
    idx      INTEGER NOT NULL,
    data     TEXT NOT NULL,
    PRIMARY KEY (job, idx)
);
