//! The store on a real SQLite file and on a real PostgreSQL (a cluster of
//! the test's own, `rackcast_tests::pg`): each test runs on both.

use std::os::unix::fs::PermissionsExt;

use rackcast_tests::pg::Postgres;

use super::*;
use rackcast_engine::sched::api::{CastPolicy, JobSpec};
use rackcast_engine::sched::{Job, Run, RunStatus};

const M: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);

fn job(log: &str) -> Job {
    Job {
        id: JobId(1),
        spec: JobSpec {
            origin: None,
            name: "j".into(),
            targets: vec![M.to_string()],
            cast: CastPolicy::default(),
            tasks: Vec::new(),
        },
        created: 5,
        runs: vec![Run {
            mac: M,
            status: RunStatus::Running,
            task: 0,
            attempt: 1,
            started: true,
            error: None,
            log: log.into(),
            progress: None,
        }],
        pinned: Default::default(),
    }
}

fn line(seq: u64, text: &str) -> Change {
    Change::Log(LogLine {
        seq,
        job: JobId(1),
        mac: M,
        task: 0,
        at: seq,
        text: text.into(),
    })
}

/// A database a test opens (and opens again, as a restarted server would).
enum Db {
    Sqlite(tempfile::TempDir),
    Postgres(Postgres, String),
}

impl Db {
    async fn open(&self) -> Store {
        match self {
            Db::Sqlite(dir) => Store::open(dir.path()).await.unwrap(),
            Db::Postgres(pg, url) => Store::open_postgres(url)
                .await
                .unwrap_or_else(|e| panic!("{e}\n{}", pg.log())),
        }
    }
}

/// SQLite, and PostgreSQL where it is installed (its own cluster, so
/// nothing outlives the test).
fn backends() -> Vec<Db> {
    let mut dbs = vec![Db::Sqlite(tempfile::tempdir().unwrap())];
    if let Some(pg) = Postgres::start() {
        let url = pg.create_db("rackcast");
        dbs.push(Db::Postgres(pg, url));
    }
    dbs
}

async fn row(s: &Store) -> String {
    sqlx::query("SELECT data FROM jobs WHERE id = 1")
        .fetch_one(&s.pool)
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn output_is_appended_to_the_job_log_and_the_job_row_is_not_rewritten() {
    for db in backends() {
        output_is_appended(&db).await;
    }
}

async fn output_is_appended(db: &Db) {
    let s = db.open().await;
    s.apply(&[Change::Job(job("in memory only"))], 1)
        .await
        .unwrap();
    let before = row(&s).await;
    assert!(
        !before.contains("in memory only"),
        "the row carries the log: {before}"
    );
    for seq in 1..=100 {
        s.apply(&[line(seq, &format!("line {seq}\n"))], 2)
            .await
            .unwrap();
    }
    assert_eq!(row(&s).await, before, "a log line rewrote the job row");
    let lines = s.job_log(JobId(1), M, 90, 5).await.unwrap();
    assert_eq!(lines[0], (91, "line 91\n".to_string()));
    assert_eq!(lines.len(), 5);
    // A restart rebuilds the tail and the sequence from the job log.
    let (st, _) = db.open().await.load().await.unwrap();
    assert_eq!(st.last_log, 100);
    let log = &st.jobs[0].runs[0].log;
    assert!(
        log.starts_with("line 1\n") && log.ends_with("line 100\n"),
        "{log:?}"
    );
}

#[tokio::test]
async fn a_run_is_written_alone_and_the_job_reads_back_whole() {
    for db in backends() {
        runs_alone(&db).await;
    }
}

async fn runs_alone(db: &Db) {
    let s = db.open().await;
    let mut j = job("");
    let mut second = j.runs[0].clone();
    second.mac = MacAddr([2, 0, 0, 0, 0, 2]);
    j.runs.push(second);
    s.apply(&[Change::Job(j.clone())], 1).await.unwrap();
    let before = row(&s).await;
    assert!(
        !before.contains("\"mac\""),
        "the job row carries runs: {before}"
    );
    let finish = |i: usize| {
        let mut r = j.runs[i].clone();
        r.status = RunStatus::Done;
        r.task = 1;
        r
    };
    let run = |index: usize, status: &'static str| Change::Run {
        job: JobId(1),
        index,
        status,
        run: finish(index),
    };
    s.apply(&[run(1, "running")], 2).await.unwrap();
    assert_eq!(row(&s).await, before, "a run rewrote the job row");
    let (st, _) = db.open().await.load().await.unwrap();
    let runs: Vec<_> = st.jobs[0].runs.iter().map(|r| (r.mac, r.status)).collect();
    assert_eq!(
        runs,
        vec![(M, RunStatus::Running), (j.runs[1].mac, RunStatus::Done)]
    );
    // The job's status column follows its runs.
    s.apply(&[run(0, "done")], 3).await.unwrap();
    let status: String = sqlx::query("SELECT status FROM jobs WHERE id = 1")
        .fetch_one(&s.pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "done");
}

#[tokio::test]
async fn a_job_row_from_before_the_job_log_has_its_log_moved_there_once() {
    for db in backends() {
        old_job_row(&db).await;
    }
}

async fn old_job_row(db: &Db) {
    let s = db.open().await;
    // What an older server wrote: the tail inside the row.
    let old = serde_json::to_value(job("")).unwrap();
    let mut old = old;
    old["runs"][0]["log"] = "old output\n".into();
    sqlx::query("INSERT INTO jobs (id, status, data, created) VALUES (1, 'running', $1, 5)")
        .bind(old.to_string())
        .execute(&s.pool)
        .await
        .unwrap();
    for _ in 0..2 {
        let (st, _) = s.load().await.unwrap();
        assert_eq!(st.jobs[0].runs[0].log, "old output\n");
        assert_eq!(st.last_log, 1, "moved once");
    }
    assert!(!row(&s).await.contains("old output"));
}

#[tokio::test]
async fn the_database_and_its_wal_are_0600_even_when_found_wider() {
    let dir = tempfile::tempdir().unwrap();
    let mode = |n: &str| {
        std::fs::metadata(dir.path().join(n))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    let s = Store::open(dir.path()).await.unwrap();
    s.apply(&[Change::Job(job(""))], 1).await.unwrap();
    for f in ["rackcast.db", "rackcast.db-wal", "rackcast.db-shm"] {
        assert_eq!(mode(f), 0o600, "{f}");
    }
    s.pool.close().await;
    for f in ["rackcast.db", "rackcast.db-wal", "rackcast.db-shm"] {
        let p = dir.path().join(f);
        if p.exists() {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    let s = Store::open(dir.path()).await.unwrap();
    s.apply(&[line(1, "x")], 2).await.unwrap();
    for f in ["rackcast.db", "rackcast.db-wal", "rackcast.db-shm"] {
        assert_eq!(mode(f), 0o600, "{f} after a reopen");
    }
}

#[tokio::test]
async fn the_audit_log_is_append_only_and_named_tokens_keep_only_a_hash() {
    for db in backends() {
        audit_and_tokens(&db).await;
    }
}

async fn audit_and_tokens(db: &Db) {
    let s = db.open().await;
    let e = AuditEntry {
        seq: 0,
        at: 1_000,
        token: "alice".into(),
        origin: "api".into(),
        action: "POST /api/v1/jobs".into(),
        path: "/api/v1/jobs".into(),
        status: 200,
    };
    s.append_audit(&e).await.unwrap();
    s.append_audit(&AuditEntry {
        at: 2_000,
        ..e.clone()
    })
    .await
    .unwrap();
    let all = s.audit(0, 10).await.unwrap();
    assert_eq!(all.iter().map(|a| a.seq).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(s.audit(1_500, 10).await.unwrap().len(), 1);
    for sql in ["UPDATE audit SET status = 500", "DELETE FROM audit"] {
        let err = sqlx::query(sql).execute(&s.pool).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    assert_eq!(s.audit(0, 10).await.unwrap(), all);
    let v = TokenView {
        name: "grafana".into(),
        role: rackcast_engine::sched::api::Role::Viewer,
        created: 5,
        revoked: None,
    };
    assert!(s.add_operator_token(&v, "ab12").await.unwrap());
    assert!(
        !s.add_operator_token(&v, "cd34").await.unwrap(),
        "name taken"
    );
    assert!(s.revoke_operator_token("grafana", 9).await.unwrap());
    assert!(!s.revoke_operator_token("grafana", 10).await.unwrap());
    let named = s.operator_tokens().await.unwrap();
    assert_eq!(named.len(), 1);
    assert_eq!(named[0].0, "ab12");
    assert_eq!(named[0].1.revoked, Some(9));
}

#[tokio::test]
async fn everything_written_reads_back_after_a_restart() {
    for db in backends() {
        round_trip(&db).await;
    }
}

async fn round_trip(db: &Db) {
    use rackcast_engine::sched::api::Environment;
    use rackcast_engine::sched::{Actor, Event, EventKind, Subject, Target};
    let s = db.open().await;
    let mut t = Target::new(M);
    t.name = "rack12-u01".into();
    t.vars = [("rack".to_string(), "r12".to_string())].into();
    let env = Environment {
        name: "linux-x64".into(),
        kernel: Some("linux-x64/vmlinuz".into()),
        initrd: None,
        cmdline: "console=ttyS0".into(),
        boot_file: None,
    };
    let event = |seq, about| {
        Change::Event(Event {
            seq,
            at: 1_796_000_000_000 + seq,
            actor: Actor::Operator,
            about,
            what: EventKind::TargetAdded {
                name: "rack12-u01".into(),
            },
        })
    };
    let task = Subject {
        target: Some(M),
        job: Some(JobId(1)),
        task: Some(3),
    };
    s.apply(
        &[
            Change::Target(t.clone()),
            Change::Job(job("")),
            Change::Environment(env.clone()),
            event(1, Subject::target(M)),
            event(2, task),
            // Transient: broadcast, never stored.
            event(0, task),
        ],
        1_796_000_000_000,
    )
    .await
    .unwrap();
    let img = ImageView {
        name: "golden".into(),
        root: "ab".repeat(32),
        source_size: 8 << 30,
        stored_size: 739_316_867,
        chunks: 2048,
        signed: true,
    };
    s.put_image(&img, 5).await.unwrap();
    let secret: Vec<u8> = (0..=255).collect();
    s.set_bmc_secret(M, Some(&secret)).await.unwrap();
    let session = AgentSession {
        hash: "c0ffee".into(),
        claimed: 1_796_000_000_123,
    };
    s.set_agent_token(M, &session, 9).await.unwrap();

    let s = db.open().await;
    let (st, images) = s.load().await.unwrap();
    assert_eq!(st.targets.len(), 1);
    assert_eq!(st.targets[0].vars, t.vars);
    assert_eq!(st.targets[0].name, t.name);
    assert_eq!(st.jobs.len(), 1);
    assert_eq!(st.environments, vec![env]);
    assert_eq!(st.last_seq, 2);
    assert_eq!(images, vec![img]);
    let events = s.events(None, 0, 10).await.unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(
        (events[1].target, events[1].job, events[1].task),
        (Some(M), Some(JobId(1)), Some(3))
    );
    assert_eq!(s.events(Some(JobId(1)), 0, 10).await.unwrap().len(), 1);
    assert_eq!(s.events(None, 1, 10).await.unwrap()[0].seq, 2);
    assert_eq!(s.bmc_secret(M).await.unwrap(), Some(secret));
    s.set_bmc_secret(M, None).await.unwrap();
    assert_eq!(s.bmc_secret(M).await.unwrap(), None);
    assert_eq!(s.agent_tokens().await.unwrap(), vec![(M, session)]);
}

#[test]
fn a_url_is_shown_without_its_password() {
    assert_eq!(
        redact("postgres://rc:s3cr@t@db.example:5432/rackcast?sslmode=require&password=x"),
        "postgres://rc@db.example:5432/rackcast?sslmode=require"
    );
    assert_eq!(
        redact("postgres://db/rackcast?password=x"),
        "postgres://db/rackcast"
    );
    assert_eq!(
        redact("postgres://rc@db/rackcast"),
        "postgres://rc@db/rackcast"
    );
}

#[tokio::test]
async fn a_url_that_is_not_postgres_is_refused_with_what_to_give() {
    let e = Store::open_postgres("mysql://rc:pw@db/x")
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("postgres://USER@HOST"), "{msg}");
    assert!(!msg.contains("pw"), "the password was shown: {msg}");
}

#[tokio::test]
async fn a_batch_written_again_after_a_lost_answer_is_taken() {
    for db in backends() {
        let s = db.open().await;
        let batch = [line(1, "once\n"), line(2, "twice\n")];
        s.apply(&batch, 1).await.unwrap();
        // The commit happened but its answer was lost: the server tries again.
        s.apply(&batch, 1).await.unwrap();
        let lines = s.job_log(JobId(1), M, 0, 10).await.unwrap();
        assert_eq!(lines.len(), 2, "{lines:?}");
    }
}
