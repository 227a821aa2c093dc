//! Tests of `tasks.rs`.

use super::*;

fn ctx(dir: &Path) -> TaskContext {
    TaskContext {
        client: Client::new("http://127.0.0.1:9", None).unwrap(),
        work_dir: dir.to_path_buf(),
        default_disk: None,
        iface_addr: Some(Ipv4Addr::LOCALHOST),
        stall: Duration::from_secs(1),
        give_up: Duration::from_secs(1),
        tag: "test".into(),
    }
}

fn collect(h: TaskHandle) -> Vec<TaskReport> {
    let mut v = Vec::new();
    while let Ok(r) = h.reports().recv_timeout(Duration::from_secs(20)) {
        let end = matches!(r, TaskReport::Finished { .. } | TaskReport::Rejoin { .. });
        v.push(r);
        if end {
            break;
        }
    }
    h.join();
    v
}

const T: TaskRef = TaskRef {
    job: rackcast_engine::sched::api::JobId(1),
    task: 0,
    attempt: 1,
};

#[test]
fn a_script_task_logs_and_finishes_with_its_exit_code() {
    let d = tempfile::tempdir().unwrap();
    let work = Work::Script {
        script: "echo hello; echo \"task $RACKCAST_JOB.$RACKCAST_TASK\"; exit 2".into(),
        interpreter: "/bin/sh".into(),
        expect_exit: 2,
    };
    let reports = collect(TaskHandle::spawn(ctx(d.path()), T, work, 10));
    let log: String = reports
        .iter()
        .filter_map(|r| match r {
            TaskReport::Log { text } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(log, "hello\ntask 1.0\n");
    assert_eq!(
        reports.last(),
        Some(&TaskReport::Finished {
            ok: true,
            error: None,
            summary: "exit 2".into(),
            root: None,
            transport: None,
        })
    );
}

#[test]
fn a_stopped_script_task_sends_no_finished_report() {
    let d = tempfile::tempdir().unwrap();
    let work = Work::Script {
        script: "echo go; sleep 30".into(),
        interpreter: String::new(),
        expect_exit: 0,
    };
    let h = TaskHandle::spawn(ctx(d.path()), T, work, 0);
    let first = h.reports().recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(
        first,
        TaskReport::Log {
            text: "go\n".into()
        }
    );
    let start = Instant::now();
    h.stop_and_join();
    assert!(start.elapsed() < Duration::from_secs(3));
}

#[test]
fn a_stopped_create_task_ends_mid_capture_and_leaves_no_file() {
    let d = tempfile::tempdir().unwrap();
    let work_dir = d.path().join("work");
    let disk = d.path().join("disk");
    // 4 GiB of holes: long enough to capture that the first progress
    // report (after a second) comes well before the end.
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(4 << 30)
        .unwrap();
    let mut c = ctx(&work_dir);
    c.default_disk = Some(disk);
    let work = Work::Create {
        image: "x".into(),
        disk: None,
    };
    let h = TaskHandle::spawn(c, T, work, 0);
    // The first progress report: the capture is under way.
    let t0 = Instant::now();
    loop {
        match h.reports().recv_timeout(Duration::from_secs(20)) {
            Ok(TaskReport::Progress(p)) => {
                // Bytes so far, not the last chunk's.
                assert_eq!(p.total, 4 << 30);
                assert!(
                    p.done > 8 * u64::from(rackcast_engine::image::DEFAULT_CHUNK_SIZE),
                    "{p:?}"
                );
                break;
            }
            Ok(TaskReport::Finished { .. }) => panic!("finished before it could be stopped"),
            Ok(_) => {}
            Err(e) => panic!("no progress after {:?}: {e}", t0.elapsed()),
        }
    }
    let start = Instant::now();
    let reports = h.reports().clone();
    h.stop_and_join();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert!(
        !reports
            .try_iter()
            .any(|r| matches!(r, TaskReport::Finished { .. })),
        "a stopped task reports no end"
    );
    let left: Vec<_> = std::fs::read_dir(&work_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left in the work dir: {left:?}");
}

#[test]
fn a_distribute_with_a_bad_key_fails_clearly() {
    let d = tempfile::tempdir().unwrap();
    let mut c = ctx(d.path());
    c.default_disk = Some(d.path().join("disk"));
    let work = Work::Distribute {
        image: "img".into(),
        root: "00".repeat(32),
        disk: None,
        verify: VerifyMode::Sample,
        unused: Default::default(),
        grow: false,
        seed: None,
        cast: CastJoin {
            group: "239.255.42.9:7409".into(),
            key: "not hex".into(),
            session: 1,
            receiver: 2,
            unicast_after: None,
        },
    };
    let reports = collect(TaskHandle::spawn(c, T, work, 10));
    match reports.last() {
        Some(TaskReport::Finished {
            ok: false,
            error: Some(e),
            ..
        }) => {
            assert!(e.contains("cast key"), "{e}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_silent_session_asks_to_rejoin() {
    let d = tempfile::tempdir().unwrap();
    let mut c = ctx(d.path());
    c.default_disk = Some(d.path().join("disk"));
    let work = Work::Distribute {
        image: "img".into(),
        root: "11".repeat(32),
        disk: None,
        verify: VerifyMode::Off,
        unused: Default::default(),
        grow: false,
        seed: None,
        cast: CastJoin {
            // Nobody sends to this group.
            group: "239.255.42.77:7477".into(),
            key: "00112233445566778899aabbccddeeff".into(),
            session: 7,
            receiver: 8,
            unicast_after: None,
        },
    };
    let start = Instant::now();
    let reports = collect(TaskHandle::spawn(c, T, work, 60));
    match reports.last() {
        Some(TaskReport::Rejoin { reason }) => {
            assert!(reason.contains("no packet"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_task_without_a_disk_fails() {
    let d = tempfile::tempdir().unwrap();
    let work = Work::Create {
        image: "x".into(),
        disk: None,
    };
    let reports = collect(TaskHandle::spawn(ctx(d.path()), T, work, 10));
    assert!(matches!(
        reports.last(),
        Some(TaskReport::Finished { ok: false, .. })
    ));
}

#[test]
fn held_output_is_bounded_and_marked() {
    let (tx, rx) = bounded(1);
    let mut out = Out {
        tx,
        stop: Arc::default(),
        held: String::new(),
        dropped: 0,
    };
    out.log("first\n");
    // The channel is full now: the rest is held, then trimmed.
    for _ in 0..200 {
        out.log(&"x".repeat(10_000));
    }
    assert!(out.held.len() <= HELD_LOG_MAX);
    assert!(out.dropped > 0);
    assert_eq!(
        rx.try_recv().unwrap(),
        TaskReport::Log {
            text: "first\n".into()
        }
    );
    out.log("last\n");
    match rx.try_recv().unwrap() {
        TaskReport::Log { text } => {
            assert!(text.starts_with("[rackcast: "), "{}", &text[..40]);
            assert!(text.ends_with("last\n"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(out.dropped, 0);
}
