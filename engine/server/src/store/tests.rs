//! The store on a real SQLite file.

use std::os::unix::fs::PermissionsExt;

use super::*;
use rackcast_engine::sched::api::{CastPolicy, JobSpec};
use rackcast_engine::sched::{Job, Run, RunStatus};

const M: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);

fn job(log: &str) -> Job {
    Job {
        id: JobId(1),
        spec: JobSpec {
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

async fn row(s: &Store) -> String {
    sqlx::query("SELECT data FROM jobs WHERE id = 1")
        .fetch_one(&s.pool)
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn output_is_appended_to_the_job_log_and_the_job_row_is_not_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).await.unwrap();
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
    let (st, _) = Store::open(dir.path()).await.unwrap().load().await.unwrap();
    assert_eq!(st.last_log, 100);
    let log = &st.jobs[0].runs[0].log;
    assert!(
        log.starts_with("line 1\n") && log.ends_with("line 100\n"),
        "{log:?}"
    );
}

#[tokio::test]
async fn a_job_row_from_before_the_job_log_has_its_log_moved_there_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).await.unwrap();
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
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).await.unwrap();
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
