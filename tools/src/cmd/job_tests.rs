//! Tests of `job.rs`.

use super::spec::{parse_job, JobFormat};
use super::*;
use clap::Parser;

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    job: JobCommand,
}

fn parse(args: &[&str]) -> JobCommand {
    Cli::try_parse_from(std::iter::once("job").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("{e}"))
        .job
}

#[test]
fn distribute_shortcut_builds_a_one_task_job() {
    let JobCommand::Distribute(a) = parse(&[
        "distribute",
        "--image",
        "debian-12",
        "--targets",
        "AA:BB:CC:DD:EE:01,aa:bb:cc:dd:ee:02",
        "--min-targets",
        "2",
        "--max-wait",
        "5m",
        "--disk",
        "/dev/nvme0n1",
        "--verify",
        "full",
        "--env",
        "linux-x64",
        "--timeout",
        "30m",
        "--retries",
        "2",
    ]) else {
        panic!("not distribute")
    };
    let spec = a.spec(1_700_000_000).unwrap();
    assert_eq!(
        spec,
        JobSpec {
            origin: None,
            name: "distribute debian-12".into(),
            targets: vec!["aa:bb:cc:dd:ee:01".into(), "aa:bb:cc:dd:ee:02".into()],
            cast: CastPolicy {
                min_targets: Some(2),
                max_wait: Some(300),
                start_at: None,
                rate: None,
                transport: Default::default(),
            },
            tasks: vec![TaskSpec {
                kind: TaskKind::Distribute {
                    image: "debian-12".into(),
                    disk: Some("/dev/nvme0n1".into()),
                    verify: VerifyMode::Full,
                    unused: UnusedBlocks::Keep,
                    grow: false,
                    cloud_init: None,
                },
                env: Some("linux-x64".into()),
                timeout: Some(1800),
                retries: 2
            }]
        }
    );
    // What is sent parses back into the same spec on the server side.
    let json = serde_json::to_string(&spec).unwrap();
    assert_eq!(serde_json::from_str::<JobSpec>(&json).unwrap(), spec);
}

#[test]
fn distribute_defaults_and_start_at() {
    let JobCommand::Distribute(a) = parse(&[
        "distribute",
        "--image",
        "x",
        "--targets",
        "aa:bb:cc:dd:ee:01",
    ]) else {
        panic!()
    };
    let spec = a.spec(0).unwrap();
    assert_eq!(spec.cast, CastPolicy::default());
    assert_eq!(spec.tasks[0].retries, 0);
    assert_eq!(
        spec.tasks[0].kind,
        TaskKind::Distribute {
            image: "x".into(),
            disk: None,
            verify: VerifyMode::Sample,
            unused: UnusedBlocks::Keep,
            grow: false,
            cloud_init: None,
        }
    );

    let JobCommand::Distribute(a) = parse(&[
        "distribute",
        "--image",
        "x",
        "--targets",
        "aa:bb:cc:dd:ee:01",
        "--start-at",
        "+10m",
        "--rate",
        "100M",
    ]) else {
        panic!()
    };
    let cast = a.spec(1_000).unwrap().cast;
    assert_eq!(cast.start_at, Some(1_600));
    assert_eq!(cast.max_wait, None, "a start time drops the 60 s default");
    assert_eq!(cast.rate, Some(100 << 20));
}

#[test]
fn distribute_refuses_bad_input() {
    let bad = |args: &[&str]| {
        Cli::try_parse_from(std::iter::once("job").chain(args.iter().copied())).is_err()
    };
    assert!(bad(&["distribute", "--image", "x"]), "no --targets");
    assert!(bad(&["distribute", "--image", "x", "--targets", "node1"]));
    assert!(bad(&[
        "distribute",
        "--image",
        "x",
        "--targets",
        "aa:bb:cc:dd:ee:01",
        "--verify",
        "most"
    ]));
    let JobCommand::Distribute(a) = parse(&[
        "distribute",
        "--image",
        "x",
        "--targets",
        "aa:bb:cc:dd:ee:01,AA:BB:CC:DD:EE:01",
    ]) else {
        panic!()
    };
    assert!(a.spec(0).unwrap_err().to_string().contains("listed twice"));
    let JobCommand::Distribute(a) = parse(&[
        "distribute",
        "--image",
        "x",
        "--targets",
        "aa:bb:cc:dd:ee:01",
        "--start-at",
        "soon",
    ]) else {
        panic!()
    };
    assert!(a.spec(0).unwrap_err().to_string().starts_with("--start-at"));
}

#[test]
fn script_and_capture_shortcuts() {
    let JobCommand::Script(a) = parse(&[
        "script",
        "--targets",
        "aa:bb:cc:dd:ee:01",
        "--command",
        "nvme list",
        "--expect-exit",
        "3",
    ]) else {
        panic!()
    };
    let spec = a.spec("nvme list\n".into()).unwrap();
    assert_eq!(spec.name, "script nvme list");
    assert_eq!(
        spec.tasks[0].kind,
        TaskKind::Script {
            script: "nvme list\n".into(),
            interpreter: None,
            expect_exit: 3
        }
    );
    assert!(Cli::try_parse_from(["job", "script", "--targets", "aa:bb:cc:dd:ee:01"]).is_err());

    let JobCommand::Capture(a) = parse(&[
        "capture",
        "--target",
        "aa:bb:cc:dd:ee:01",
        "--image",
        "golden",
        "--disk",
        "/dev/sda",
    ]) else {
        panic!()
    };
    let spec = a.spec().unwrap();
    assert_eq!(spec.targets, ["aa:bb:cc:dd:ee:01"]);
    assert_eq!(
        spec.tasks[0].kind,
        TaskKind::Create {
            image: "golden".into(),
            disk: Some("/dev/sda".into())
        }
    );
}

#[test]
fn example_job_files_parse() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/jobs");
    let d = load_job_file(dir.join("distribute.toml").to_str().unwrap()).unwrap();
    assert!(matches!(d.tasks[0].kind, TaskKind::Distribute { .. }));
    assert!(d.targets.len() >= 2);
    let s = load_job_file(dir.join("script.yaml").to_str().unwrap()).unwrap();
    assert!(s
        .tasks
        .iter()
        .any(|t| matches!(t.kind, TaskKind::Script { .. })));
}

fn run(mac: &str, status: &str, task: u32, error: Option<&str>) -> TargetRun {
    TargetRun {
        mac: mac.parse().unwrap(),
        status: status.into(),
        task,
        attempt: 1,
        error: error.map(Into::into),
        progress: None,
        log: String::new(),
    }
}

#[test]
fn job_text() {
    let spec = parse_job(
        "targets = [\"aa:bb:cc:dd:ee:01\", \"aa:bb:cc:dd:ee:02\"]\n\
         [[task]]\nkind = \"distribute\"\nimage = \"deb\"\n\
         [[task]]\nkind = \"script\"\nscript = \"echo a\\necho b\"\nretries = 1\n",
        JobFormat::Toml,
        "t",
    )
    .unwrap();
    let mut failed = run("aa:bb:cc:dd:ee:02", "failed", 1, Some("exit 1, expected 0"));
    failed.log = "line 1\n\nline 2\n".into();
    let mut spec = spec;
    spec.origin = Some("console 52:54:00:00:00:07 by pin".into());
    let j = JobView {
        id: JobId(7),
        name: "n".into(),
        status: "failed".into(),
        spec,
        targets: vec![run("aa:bb:cc:dd:ee:01", "done", 2, None), failed],
        created: 1_000,
    };
    let text = render_job(&j, 61_000);
    assert!(
        text.contains("status   failed (1 done, 1 failed of 2)"),
        "{text}"
    );
    assert!(
        text.contains("created  1m00s ago, from console 52:54:00:00:00:07 by pin"),
        "{text}"
    );
    assert!(
        text.contains("1. distribute deb to the agent's disk (verify sample)"),
        "{text}"
    );
    assert!(
        text.contains("2. script (/bin/sh, exit 0): echo a ...; retries 1"),
        "{text}"
    );
    assert!(
        text.contains("cast     all targets, or 60s after the first"),
        "{text}"
    );
    assert!(text.contains("aa:bb:cc:dd:ee:01  done    2/2"), "{text}");
    assert!(
        text.contains("2/2 script  1        exit 1, expected 0"),
        "{text}"
    );
    assert!(
        text.contains("log of aa:bb:cc:dd:ee:02 (last lines):\n  line 1\n  line 2\n"),
        "{text}"
    );
}

#[test]
fn small_cells() {
    assert_eq!(log_tail("a\nb\nc\n", 2), ["b", "c"]);
    assert_eq!(log_tail("", 2), Vec::<&str>::new());
    assert_eq!(targets_cell(&[]), "none");
}
