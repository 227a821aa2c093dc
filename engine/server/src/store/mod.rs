//! Persistence: the scheduler's rows and the event log in SQLite (WAL) on
//! disk, or in PostgreSQL (`database = "postgres://..."`), through `sqlx`'s
//! `Any` driver: one set of statements, portable SQL that both run. Each
//! backend has its own migrations (`migrations/sqlite`,
//! `migrations/postgres`), version for version. Every batch of changes is
//! one transaction, committed before the server answers the request that
//! caused it.

use std::path::Path;

use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor, Row};

use rackcast_engine::sched::api::{AuditEntry, EventRecord, ImageView, JobId, TokenView};
use rackcast_engine::sched::model::{keep_log_tail, LOG_TAIL};
use rackcast_engine::sched::model::{Job, Run};
use rackcast_engine::sched::{Change, LogLine, MacAddr, MacParseError, State};

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened, migrated, read or written.
    #[error("database {path}: {source}")]
    Db {
        /// The database file.
        path: String,
        /// The cause.
        source: sqlx::Error,
    },
    /// The database file could not be created or made private (0600).
    #[error("database {path}: {source}")]
    File {
        /// The database file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A migration failed.
    #[error("migrating {path}: {source}")]
    Migrate {
        /// The database file.
        path: String,
        /// The cause.
        source: sqlx::migrate::MigrateError,
    },
    /// A stored row does not decode (a newer server wrote it, or it was edited).
    #[error("database {path}: {what} does not decode: {source}")]
    Decode {
        /// The database file.
        path: String,
        /// Which row.
        what: String,
        /// The cause.
        source: serde_json::Error,
    },
    /// A job's run rows do not fit its job (a run after a gap).
    #[error("database {path}: job {job}: run {index} follows {runs} runs")]
    RunGap {
        /// The database file.
        path: String,
        /// The job.
        job: i64,
        /// The run row's index.
        index: usize,
        /// The runs before it.
        runs: usize,
    },
    /// A stored MAC does not parse.
    #[error("database {path}: {what}: {source}")]
    BadMac {
        /// The database file.
        path: String,
        /// Which row.
        what: String,
        /// The cause.
        source: MacParseError,
    },
}

/// A target's agent session as the server keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentSession {
    /// BLAKE3 (hex) of the session token; empty once an operator reset it.
    pub hash: String,
    /// Issue time (unix ms) of the last boot token claimed for this
    /// target; only a later-issued one may claim again.
    pub claimed: u64,
}

/// The server's database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    /// The file, or the URL without its password: for messages.
    path: String,
}

static SQLITE: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("./migrations/postgres");

impl Store {
    /// Opens the database the server's config names: PostgreSQL for a
    /// `postgres://` (or `postgresql://`) URL, else `data/rackcast.db`.
    pub async fn connect(data: &Path, database: Option<&str>) -> Result<Store, StoreError> {
        match database {
            Some(url) => Store::open_postgres(url).await,
            None => Store::open(data).await,
        }
    }

    /// Opens (creating and migrating) `dir/rackcast.db`. The database is
    /// made 0600 before SQLite opens it (SQLite gives its `-wal` and
    /// `-shm` files the database's mode), and wider modes found are narrowed.
    pub async fn open(dir: &Path) -> Result<Store, StoreError> {
        let file = dir.join("rackcast.db");
        let path = file.display().to_string();
        private_files(&file).map_err(|source| StoreError::File {
            path: path.clone(),
            source,
        })?;
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    // FULL: a committed transaction survives power loss,
                    // not only kill -9.
                    conn.execute(
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                         PRAGMA busy_timeout = 10000;",
                    )
                    .await
                    .map(drop)
                })
            })
            .connect(&format!("sqlite://{path}?mode=rwc"))
            .await
            .map_err(|source| StoreError::Db {
                path: path.clone(),
                source,
            })?;
        Store::migrate(pool, path, &SQLITE).await
    }

    /// Connects to PostgreSQL at `url` and brings it to the current schema
    /// (several servers may start at once: sqlx's migrator holds an
    /// advisory lock while it works).
    pub async fn open_postgres(url: &str) -> Result<Store, StoreError> {
        let path = redact(url);
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(StoreError::Db {
                path,
                source: sqlx::Error::Configuration(
                    "database: give a postgres://USER@HOST[:PORT]/DB URL, or leave it out \
                     for the embedded SQLite"
                        .into(),
                ),
            });
        }
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            // While the database is down, each change waits this long (with
            // the scheduler locked) before it is kept for the next try.
            .acquire_timeout(std::time::Duration::from_secs(3))
            .connect(url)
            .await
            .map_err(|source| StoreError::Db {
                path: path.clone(),
                source,
            })?;
        Store::migrate(pool, path, &POSTGRES).await
    }

    async fn migrate(pool: AnyPool, path: String, m: &Migrator) -> Result<Store, StoreError> {
        m.run(&pool).await.map_err(|source| StoreError::Migrate {
            path: path.clone(),
            source,
        })?;
        Ok(Store { pool, path })
    }

    /// The database, for messages: the file, or the URL without a password.
    pub fn location(&self) -> &str {
        &self.path
    }

    fn db(&self) -> impl Fn(sqlx::Error) -> StoreError + '_ {
        move |source| StoreError::Db {
            path: self.path.clone(),
            source,
        }
    }

    fn decode_mac(&self, seq: i64, s: &str) -> Result<MacAddr, StoreError> {
        MacAddr::parse(s).map_err(|source| StoreError::BadMac {
            path: self.path.clone(),
            what: format!("event {seq}"),
            source,
        })
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, what: &str, s: &str) -> Result<T, StoreError> {
        serde_json::from_str(s).map_err(|source| StoreError::Decode {
            path: self.path.clone(),
            what: what.to_string(),
            source,
        })
    }

    /// Everything the scheduler needs to start, and the image library.
    pub async fn load(&self) -> Result<(State, Vec<ImageView>), StoreError> {
        let mut st = State::default();
        for r in sqlx::query("SELECT mac, data FROM targets ORDER BY mac")
            .fetch_all(&self.pool)
            .await
            .map_err(self.db())?
        {
            let mac: String = r.get(0);
            st.targets
                .push(self.decode(&format!("target {mac}"), r.get(1))?);
        }
        for r in sqlx::query("SELECT id, data FROM jobs ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .map_err(self.db())?
        {
            let id: i64 = r.get(0);
            let mut job: Job = self.decode(&format!("job {id}"), r.get(1))?;
            // Runs in their own rows take the place of those a row written
            // before them carries.
            for r in sqlx::query("SELECT idx, data FROM job_runs WHERE job = $1 ORDER BY idx")
                .bind(id)
                .fetch_all(&self.pool)
                .await
                .map_err(self.db())?
            {
                let idx = r.get::<i64, _>(0) as usize;
                let run: Run = self.decode(&format!("job {id} run {idx}"), r.get(1))?;
                let runs = job.runs.len();
                if idx < runs {
                    job.runs[idx] = run;
                } else if idx == runs {
                    job.runs.push(run);
                } else {
                    return Err(StoreError::RunGap {
                        path: self.path.clone(),
                        job: id,
                        index: idx,
                        runs,
                    });
                }
            }
            st.jobs.push(job);
        }
        for r in sqlx::query("SELECT id, data FROM cast_sessions ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .map_err(self.db())?
        {
            let id: i64 = r.get(0);
            st.sessions
                .push(self.decode(&format!("cast session {id}"), r.get(1))?);
        }
        for r in sqlx::query("SELECT name, data FROM environments ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(self.db())?
        {
            let name: String = r.get(0);
            st.environments
                .push(self.decode(&format!("environment {name}"), r.get(1))?);
        }
        let last: Option<i64> = sqlx::query("SELECT MAX(seq) FROM events")
            .fetch_one(&self.pool)
            .await
            .map_err(self.db())?
            .get(0);
        st.last_seq = last.unwrap_or(0) as u64;
        let last: Option<i64> = sqlx::query("SELECT MAX(seq) FROM job_logs")
            .fetch_one(&self.pool)
            .await
            .map_err(self.db())?
            .get(0);
        st.last_log = last.unwrap_or(0) as u64;
        self.load_logs(&mut st).await?;
        let mut images = Vec::new();
        for r in sqlx::query("SELECT name, data FROM images ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(self.db())?
        {
            let name: String = r.get(0);
            images.push(self.decode(&format!("image {name}"), r.get(1))?);
        }
        Ok((st, images))
    }

    /// Gives every run the tail of its output from the job log. A job row
    /// written before the job log existed still carries its run's tail:
    /// that is moved into the job log (and the row rewritten without it),
    /// once, in one transaction.
    async fn load_logs(&self, st: &mut State) -> Result<(), StoreError> {
        let mut moved = Vec::new();
        for job in &mut st.jobs {
            let mut legacy = false;
            for run in &mut job.runs {
                if !run.log.is_empty() {
                    st.last_log += 1;
                    moved.push(Change::Log(LogLine {
                        seq: st.last_log,
                        job: job.id,
                        mac: run.mac,
                        task: run.task,
                        at: job.created,
                        text: run.log.clone(),
                    }));
                    legacy = true;
                    continue;
                }
                run.log = self.log_tail(job.id, run.mac).await?;
            }
            if legacy {
                moved.push(Change::Job(job.clone()));
            }
        }
        if !moved.is_empty() {
            self.apply(&moved, 0).await?;
        }
        Ok(())
    }

    /// The last [`LOG_TAIL`] bytes (about) of `mac`'s output in `job`.
    async fn log_tail(&self, job: JobId, mac: MacAddr) -> Result<String, StoreError> {
        use futures_util::TryStreamExt;
        let mut rows =
            sqlx::query("SELECT text FROM job_logs WHERE job = $1 AND mac = $2 ORDER BY seq DESC")
                .bind(job.0 as i64)
                .bind(mac.to_string())
                .fetch(&self.pool);
        let mut parts = Vec::new();
        let mut len = 0;
        // Newest first, and only as far back as the tail reaches.
        while len < LOG_TAIL {
            let Some(r) = rows.try_next().await.map_err(self.db())? else {
                break;
            };
            let text: String = r.get(0);
            len += text.len();
            parts.push(text);
        }
        let mut log: String = parts.into_iter().rev().collect();
        keep_log_tail(&mut log);
        Ok(log)
    }

    /// `mac`'s output in `job` after log line `after`, oldest first, at
    /// most `limit` lines: `(seq, text)`.
    pub async fn job_log(
        &self,
        job: JobId,
        mac: MacAddr,
        after: u64,
        limit: u32,
    ) -> Result<Vec<(u64, String)>, StoreError> {
        Ok(sqlx::query(
            "SELECT seq, text FROM job_logs WHERE job = $1 AND mac = $2 AND seq > $3 \
             ORDER BY seq LIMIT $4",
        )
        .bind(job.0 as i64)
        .bind(mac.to_string())
        .bind(after as i64)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(self.db())?
        .iter()
        .map(|r| (r.get::<i64, _>(0) as u64, r.get(1)))
        .collect())
    }

    /// Writes a batch of changes in one transaction. Transient events
    /// (seq 0) are not stored; output is appended to the job log.
    pub async fn apply(&self, changes: &[Change], now: u64) -> Result<(), StoreError> {
        if changes
            .iter()
            .all(|c| matches!(c, Change::Event(e) if e.seq == 0))
        {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(self.db())?;
        for c in changes {
            // A job's runs go in rows of their own (`job_runs`): the job's
            // row keeps the rest, so a target's progress writes one run.
            if let Change::Job(j) = c {
                for (i, run) in j.runs.iter().enumerate() {
                    upsert_run(j.id.0, i, run)
                        .execute(&mut *tx)
                        .await
                        .map_err(self.db())?;
                }
            }
            if let Change::Run {
                job,
                index,
                status,
                run,
            } = c
            {
                upsert_run(job.0, *index, run)
                    .execute(&mut *tx)
                    .await
                    .map_err(self.db())?;
                sqlx::query("UPDATE jobs SET status = $1 WHERE id = $2 AND status <> $1")
                    .bind(*status)
                    .bind(job.0 as i64)
                    .execute(&mut *tx)
                    .await
                    .map_err(self.db())?;
                continue;
            }
            let q = match c {
                Change::Target(t) => sqlx::query(
                    "INSERT INTO targets (mac, state, data, updated) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (mac) DO UPDATE SET state = excluded.state, data = excluded.data, updated = excluded.updated",
                )
                .bind(t.mac.to_string())
                .bind(t.state.word())
                .bind(json(t))
                .bind(now as i64),
                Change::Job(j) => sqlx::query(
                    "INSERT INTO jobs (id, status, data, created) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (id) DO UPDATE SET status = excluded.status, data = excluded.data",
                )
                .bind(j.id.0 as i64)
                .bind(j.status())
                .bind(json(&j.without_runs()))
                .bind(j.created as i64),
                Change::Session(s) => sqlx::query(
                    "INSERT INTO cast_sessions (id, image, data) VALUES ($1, $2, $3) \
                     ON CONFLICT (id) DO UPDATE SET data = excluded.data",
                )
                .bind(s.id.0 as i64)
                .bind(&s.image)
                .bind(json(s)),
                Change::Environment(e) => sqlx::query(
                    "INSERT INTO environments (name, data) VALUES ($1, $2) \
                     ON CONFLICT (name) DO UPDATE SET data = excluded.data",
                )
                .bind(&e.name)
                .bind(json(e)),
                Change::Log(l) => sqlx::query(
                    // A retried batch whose commit did happen (the answer
                    // was lost) finds its rows there.
                    "INSERT INTO job_logs (seq, job, mac, task, at, text) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (seq) DO NOTHING",
                )
                .bind(l.seq as i64)
                .bind(l.job.0 as i64)
                .bind(l.mac.to_string())
                .bind(i64::from(l.task))
                .bind(l.at as i64)
                .bind(&l.text),
                Change::Event(e) if e.seq == 0 => continue,
                Change::Run { .. } => continue, // written above
                Change::Event(e) => {
                    // The typed event becomes its wire form here, where it is stored.
                    let r = e.record();
                    sqlx::query(
                        "INSERT INTO events (seq, at, actor, kind, target, job, task, detail) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (seq) DO NOTHING",
                    )
                    .bind(r.seq as i64)
                    .bind(r.at as i64)
                    .bind(r.actor)
                    .bind(r.kind)
                    .bind(r.target.map(|m| m.to_string()))
                    .bind(r.job.map(|j| j.0 as i64))
                    .bind(r.task.map(i64::from))
                    .bind(r.detail.to_string())
                }
            };
            q.execute(&mut *tx).await.map_err(self.db())?;
        }
        tx.commit().await.map_err(self.db())?;
        Ok(())
    }

    /// Events after `since`, optionally of one job, oldest first.
    pub async fn events(
        &self,
        job: Option<JobId>,
        since: u64,
        limit: u32,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let rows = match job {
            Some(j) => sqlx::query(
                "SELECT seq, at, actor, kind, target, job, task, detail FROM events \
                 WHERE job = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            )
            .bind(j.0 as i64)
            .bind(since as i64)
            .bind(i64::from(limit)),
            None => sqlx::query(
                "SELECT seq, at, actor, kind, target, job, task, detail FROM events \
                 WHERE seq > $1 ORDER BY seq LIMIT $2",
            )
            .bind(since as i64)
            .bind(i64::from(limit)),
        }
        .fetch_all(&self.pool)
        .await
        .map_err(self.db())?;
        rows.iter()
            .map(|r| {
                let seq: i64 = r.get(0);
                Ok(EventRecord {
                    seq: seq as u64,
                    at: r.get::<i64, _>(1) as u64,
                    actor: r.get(2),
                    kind: r.get(3),
                    target: r
                        .get::<Option<String>, _>(4)
                        .map(|m| self.decode_mac(seq, &m))
                        .transpose()?,
                    job: r.get::<Option<i64>, _>(5).map(|j| JobId(j as u64)),
                    task: r.get::<Option<i64>, _>(6).map(|t| t as u32),
                    detail: self.decode(&format!("event {seq}"), r.get(7))?,
                })
            })
            .collect()
    }

    /// Adds or replaces an image in the library index.
    pub async fn put_image(&self, img: &ImageView, now: u64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO images (name, root, data, added) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET root = excluded.root, data = excluded.data, added = excluded.added",
        )
        .bind(&img.name)
        .bind(&img.root)
        .bind(json(img))
        .bind(now as i64)
        .execute(&self.pool)
        .await
        .map_err(self.db())?;
        Ok(())
    }

    /// Records `mac`'s agent session: the BLAKE3 of its token (never the
    /// token) and the issue time of the boot token it claimed with.
    /// Stores (`Some`) or removes `mac`'s encrypted BMC password.
    pub async fn set_bmc_secret(
        &self,
        mac: MacAddr,
        secret: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let q = match secret {
            Some(b) => sqlx::query(
                "INSERT INTO bmc_secrets (mac, secret) VALUES ($1, $2) \
                 ON CONFLICT (mac) DO UPDATE SET secret = excluded.secret",
            )
            .bind(mac.to_string())
            .bind(b.to_vec()),
            None => sqlx::query("DELETE FROM bmc_secrets WHERE mac = $1").bind(mac.to_string()),
        };
        q.execute(&self.pool).await.map_err(self.db())?;
        Ok(())
    }

    /// Every named operator token (hash, view), revoked ones included.
    pub async fn operator_tokens(&self) -> Result<Vec<(String, TokenView)>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, role, hash, created, revoked FROM operator_tokens ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(self.db())?;
        let mut out = Vec::new();
        for r in rows {
            let role: String = r.get(1);
            let role = role.parse().map_err(|e: String| StoreError::Decode {
                path: self.path.clone(),
                what: "operator_tokens.role".into(),
                source: serde::de::Error::custom(e),
            })?;
            let view = TokenView {
                name: r.get(0),
                role,
                created: r.get::<i64, _>(3) as u64,
                revoked: r.get::<Option<i64>, _>(4).map(|t| t as u64),
            };
            out.push((r.get(2), view));
        }
        Ok(out)
    }

    /// Adds a named token by its hash; `false` when the name is taken.
    pub async fn add_operator_token(&self, v: &TokenView, hash: &str) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "INSERT INTO operator_tokens (name, role, hash, created) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(&v.name)
        .bind(v.role.word())
        .bind(hash)
        .bind(v.created as i64)
        .execute(&self.pool)
        .await
        .map_err(self.db())?;
        Ok(r.rows_affected() == 1)
    }

    /// Revokes `name` at `now`; `false` when no such live token.
    pub async fn revoke_operator_token(&self, name: &str, now: u64) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE operator_tokens SET revoked = $2 WHERE name = $1 AND revoked IS NULL",
        )
        .bind(name)
        .bind(now as i64)
        .execute(&self.pool)
        .await
        .map_err(self.db())?;
        Ok(r.rows_affected() == 1)
    }

    /// Appends `e` (its `seq` is assigned here) to the audit log.
    pub async fn append_audit(&self, e: &AuditEntry) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit (at, token, origin, action, path, status) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(e.at as i64)
        .bind(&e.token)
        .bind(&e.origin)
        .bind(&e.action)
        .bind(&e.path)
        .bind(i64::from(e.status))
        .execute(&self.pool)
        .await
        .map_err(self.db())?;
        Ok(())
    }

    /// Audit entries at or after `since` (Unix ms), oldest first, at most `limit`.
    pub async fn audit(&self, since: u64, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, at, token, origin, action, path, status FROM audit \
             WHERE at >= $1 ORDER BY seq LIMIT $2",
        )
        .bind(since as i64)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(self.db())?;
        Ok(rows
            .into_iter()
            .map(|r| AuditEntry {
                seq: r.get::<i64, _>(0) as u64,
                at: r.get::<i64, _>(1) as u64,
                token: r.get(2),
                origin: r.get(3),
                action: r.get(4),
                path: r.get(5),
                status: u16::try_from(r.get::<i64, _>(6)).unwrap_or(0),
            })
            .collect())
    }

    /// `mac`'s encrypted BMC password, if one is stored.
    pub async fn bmc_secret(&self, mac: MacAddr) -> Result<Option<Vec<u8>>, StoreError> {
        let row = sqlx::query("SELECT secret FROM bmc_secrets WHERE mac = $1")
            .bind(mac.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(self.db())?;
        Ok(row.map(|r| r.get::<Vec<u8>, _>(0)))
    }

    pub async fn set_agent_token(
        &self,
        mac: MacAddr,
        session: &AgentSession,
        now: u64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO agent_tokens (mac, token, issued, claimed) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (mac) DO UPDATE SET token = excluded.token, issued = excluded.issued, \
             claimed = excluded.claimed",
        )
        .bind(mac.to_string())
        .bind(&session.hash)
        .bind(now as i64)
        .bind(session.claimed as i64)
        .execute(&self.pool)
        .await
        .map_err(self.db())?;
        Ok(())
    }

    /// Every target's agent session.
    pub async fn agent_tokens(&self) -> Result<Vec<(MacAddr, AgentSession)>, StoreError> {
        sqlx::query("SELECT mac, token, claimed FROM agent_tokens")
            .fetch_all(&self.pool)
            .await
            .map_err(self.db())?
            .iter()
            .map(|r| {
                let mac: String = r.get(0);
                let mac = MacAddr::parse(&mac).map_err(|source| StoreError::BadMac {
                    path: self.path.clone(),
                    what: "agent token".into(),
                    source,
                })?;
                let claimed: i64 = r.get(2);
                Ok((
                    mac,
                    AgentSession {
                        hash: r.get(1),
                        claimed: claimed.max(0) as u64,
                    },
                ))
            })
            .collect()
    }
}

/// Creates `db` empty with mode 0600 if it is missing (an empty file is an
/// empty database) and narrows it and its `-wal`/`-shm` files to 0600.
fn private_files(db: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(db)?;
    let name = db.file_name().unwrap_or_default().to_string_lossy();
    for f in [
        db.to_path_buf(),
        db.with_file_name(format!("{name}-wal")),
        db.with_file_name(format!("{name}-shm")),
    ] {
        crate::datadir::restrict(&f, 0o600)?;
    }
    Ok(())
}

/// `url` without a password: the user part's, or a `password=` parameter.
fn redact(url: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    // The last '@': a password may hold one, a host may not.
    let base = match base
        .split_once("://")
        .and_then(|(scheme, rest)| Some((scheme, rest.rsplit_once('@')?)))
    {
        Some((scheme, (auth, host))) => {
            let user = auth.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}@{host}")
        }
        None => base.to_string(),
    };
    let kept: Vec<&str> = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter(|p| !p.starts_with("password="))
        .collect();
    if kept.is_empty() {
        base
    } else {
        format!("{base}?{}", kept.join("&"))
    }
}

fn json<T: serde::Serialize>(v: &T) -> String {
    // Our own types always serialize.
    serde_json::to_string(v).unwrap_or_default()
}

/// The upsert of run `index` of job `job`.
fn upsert_run(
    job: u64,
    index: usize,
    run: &Run,
) -> sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments<'static>> {
    sqlx::query(
        "INSERT INTO job_runs (job, idx, data) VALUES ($1, $2, $3) \
         ON CONFLICT (job, idx) DO UPDATE SET data = excluded.data",
    )
    .bind(job as i64)
    .bind(index as i64)
    .bind(json(run))
}

#[cfg(test)]
mod tests;
