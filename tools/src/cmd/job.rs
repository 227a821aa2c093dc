//! `rackcast job`: submit jobs (a job file or a shortcut), list and show
//! them, retry or cancel them, and watch one to its end.

mod follow;
mod spec;
mod watch;

use std::fmt::Write as _;
use std::io::Read;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{ArgGroup, Args, Subcommand};
use rackcast_engine::sched::api::{
    CastPolicy, CastTransport, CloudInit, JobId, JobSpec, JobView, TargetRun, TaskKind, TaskSpec,
    UnusedBlocks, VerifyMode,
};

use super::client::show::{format_age, now_ms, progress_cell, Table};
use super::client::{Client, ClientArgs};
use super::image::VerifyArg;
use super::util::parse_size;
use rackcast_engine::sched::MacAddr;
use spec::{check_spec, load_job_file, parse_secs, parse_start_at};

/// `rackcast job ...`
#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Submit a job file (TOML, YAML or JSON); prints the job id.
    ///
    /// The file is checked before it is sent: a typo or an unknown field is
    /// reported with its line and column. `-` reads the job from stdin.
    #[command(after_help = "Example:\n  \
        rackcast job submit tools/examples/jobs/distribute.toml --watch\n  \
        ID=$(rackcast job submit rack12.yaml) && rackcast job watch \"$ID\"")]
    Submit(SubmitArgs),
    /// Multicast an image to targets (a one-task job); prints the job id.
    ///
    /// The cast session starts at the first of: --min-targets joined
    /// (default: all), --max-wait seconds after the first joined (default 60,
    /// none with --start-at), or --start-at.
    #[command(after_help = "Example:\n  \
        rackcast job distribute --image debian-12 \\\n    \
        --targets aa:bb:cc:dd:ee:01,aa:bb:cc:dd:ee:02 --min-targets 2 --max-wait 5m --watch")]
    Distribute(DistributeArgs),
    /// Run a script on targets (a one-task job); prints the job id.
    #[command(after_help = "Example:\n  \
        rackcast job script --targets aa:bb:cc:dd:ee:01 --command 'nvme list' --watch\n  \
        rackcast job script --targets aa:bb:cc:dd:ee:01 --script fw-update.py \\\n    \
        --interpreter /usr/bin/python3 --timeout 20m")]
    Script(ScriptArgs),
    /// Capture a target's disk into the image library (Create Disk Image).
    #[command(after_help = "Example:\n  \
        rackcast job capture --target aa:bb:cc:dd:ee:01 --image golden-2025-06 --disk /dev/nvme0n1 --watch")]
    Capture(CaptureArgs),
    /// List jobs.
    #[command(
        after_help = "Example:\n  rackcast job list\n  rackcast job list --json | jq '.[] | select(.status==\"failed\") | .id'"
    )]
    List(ListArgs),
    /// Show a job: its tasks and, per target, status, task, attempt, error
    /// and the tail of its log.
    #[command(after_help = "Example:\n  rackcast job show 12")]
    Show(ShowArgs),
    /// Print a target's whole output in a job (`job show` has its tail):
    /// what its scripts and tasks wrote, as the server stored it within
    /// the target's log budget (`log_rate`, `log_burst`).
    #[command(after_help = "Example:\n  rackcast job log 12 --mac aa:bb:cc:dd:ee:01 | less")]
    Log(LogArgs),
    /// Run a job's failed targets again (from the task that failed).
    #[command(after_help = "Example:\n  rackcast job retry 12 && rackcast job watch 12")]
    Retry(IdArgs),
    /// Cancel a job: running tasks are stopped, queued ones never start.
    #[command(after_help = "Example:\n  rackcast job cancel 12")]
    Cancel(IdArgs),
    /// Follow a job live, one progress bar per target, until it ends.
    ///
    /// Exit status: 0 when the job is done; 1 when it failed or was
    /// cancelled (each failed target's error is printed); 2 when the server
    /// could not be reached again; 3 when --timeout ran out first. When
    /// stdout is not a terminal, one line per event is printed instead.
    #[command(
        after_help = "Example:\n  rackcast job watch 12 --timeout 1h || rackcast job show 12"
    )]
    Watch(WatchArgs),
}

/// Options of `rackcast job submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The job file (`.toml`, `.yaml`/`.yml`, `.json`; `-` for stdin).
    pub file: String,
    #[command(flatten)]
    pub submit: SubmitOpts,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// What to do once a job is submitted.
#[derive(Debug, Clone, Args)]
pub struct SubmitOpts {
    /// Watch the job right after submitting it (exit status as `job watch`;
    /// the progress goes to stderr, stdout keeps only the job id).
    #[arg(long)]
    pub watch: bool,
    /// With --watch: give up watching after this long (e.g. 30m).
    #[arg(long, value_name = "S", value_parser = parse_secs, requires = "watch")]
    pub watch_timeout: Option<u64>,
}

/// Per-task options of the shortcuts.
#[derive(Debug, Clone, Args)]
pub struct TaskOpts {
    /// Environment the task runs in (default: the server's).
    #[arg(long, value_name = "NAME")]
    pub env: Option<String>,
    /// Seconds before an attempt fails (e.g. 1800, 30m; default per kind).
    #[arg(long, value_name = "S", value_parser = parse_secs)]
    pub timeout: Option<u64>,
    /// Attempts after the first before the target is held as failed.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub retries: u32,
    /// A name for the job.
    #[arg(long)]
    pub name: Option<String>,
}

/// Options of `rackcast job distribute`.
#[derive(Debug, Args)]
pub struct DistributeArgs {
    /// Image name in the server's library.
    #[arg(long, value_name = "NAME")]
    pub image: String,
    /// Target MACs, comma-separated.
    #[arg(
        long,
        value_name = "MAC,MAC,...",
        required = true,
        value_delimiter = ','
    )]
    pub targets: Vec<MacAddr>,
    /// Start the session once this many targets joined (default: all).
    #[arg(long, value_name = "N")]
    pub min_targets: Option<usize>,
    /// ...or this long after the first joined (e.g. 90, 5m; default 60 s).
    #[arg(long, value_name = "S", value_parser = parse_secs)]
    pub max_wait: Option<u64>,
    /// ...or at this time: Unix seconds, RFC 3339 (2025-06-01T22:00:00Z) or +10m.
    #[arg(long, value_name = "UNIX|RFC3339")]
    pub start_at: Option<String>,
    /// Disk to write on each target (default: the agent's --disk).
    #[arg(long, value_name = "PATH")]
    pub disk: Option<String>,
    /// Read-back after the final flush.
    #[arg(long, value_enum, default_value = "sample")]
    pub verify: VerifyArg,
    /// The blocks the image leaves out (its filesystems' free space):
    /// keep what each disk holds there, zero them, or discard them.
    #[arg(long, value_enum, default_value = "keep")]
    pub unused: super::image::UnusedArg,
    /// On disks larger than the image's source, extend the last partition
    /// to each disk's end and grow its ext2/3/4 (e2fsck, resize2fs) or XFS
    /// (xfs_growfs); environments built by `rackcast env build` carry the
    /// tools.
    #[arg(long)]
    pub grow: bool,
    /// Then write a cloud-init NoCloud seed with this user-data to each
    /// disk (a CIDATA partition in its free space); `{hostname}`, `{mac}`,
    /// `{ip}`, `{job}` and the target's own variables (`{rack}` after
    /// `target vars MAC --set rack=r12`) become each target's values.
    #[arg(long, value_name = "FILE")]
    pub user_data: Option<std::path::PathBuf>,
    /// The seed's network-config (with the same templates).
    #[arg(long, value_name = "FILE", requires = "user_data")]
    pub network_config: Option<std::path::PathBuf>,
    /// The seed's instance-id [default: rackcast-{job}-{mac}].
    #[arg(long, value_name = "TEMPLATE", requires = "user_data")]
    pub instance_id: Option<String>,
    /// No cast session: every target fetches the image from the server by
    /// HTTP range requests (where multicast cannot reach any of them; a
    /// session's receivers that cannot hear it fall back to that anyway).
    #[arg(long)]
    pub unicast: bool,
    /// Cap the cast rate, bytes/s (suffixes K, M, G; default: the server's).
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub rate: Option<u64>,
    #[command(flatten)]
    pub task: TaskOpts,
    #[command(flatten)]
    pub submit: SubmitOpts,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Options of `rackcast job script`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("what").required(true).args(["script", "command"])))]
pub struct ScriptArgs {
    /// Target MACs, comma-separated.
    #[arg(
        long,
        value_name = "MAC,MAC,...",
        required = true,
        value_delimiter = ','
    )]
    pub targets: Vec<MacAddr>,
    /// The script to run (its text is sent; `-` for stdin).
    #[arg(long, value_name = "FILE")]
    pub script: Option<String>,
    /// Or a command line to run.
    #[arg(long, value_name = "CMD")]
    pub command: Option<String>,
    /// Interpreter (default: /bin/sh).
    #[arg(long, value_name = "PATH")]
    pub interpreter: Option<String>,
    /// Exit code that counts as success.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        allow_hyphen_values = true
    )]
    pub expect_exit: i32,
    #[command(flatten)]
    pub task: TaskOpts,
    #[command(flatten)]
    pub submit: SubmitOpts,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Options of `rackcast job capture`.
#[derive(Debug, Args)]
pub struct CaptureArgs {
    /// The target whose disk is captured.
    #[arg(long, value_name = "MAC")]
    pub target: MacAddr,
    /// Name of the new image in the library.
    #[arg(long, value_name = "NAME")]
    pub image: String,
    /// Disk to read (default: the agent's --disk).
    #[arg(long, value_name = "PATH")]
    pub disk: Option<String>,
    #[command(flatten)]
    pub task: TaskOpts,
    #[command(flatten)]
    pub submit: SubmitOpts,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Options of `rackcast job list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print the server's JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Options of `rackcast job show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Job id.
    pub id: JobId,
    /// Print the server's JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Options of `rackcast job log`.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// Job id.
    pub id: JobId,
    /// The target whose output to print.
    #[arg(long, value_name = "MAC")]
    pub mac: MacAddr,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// A job id and the server.
#[derive(Debug, Args)]
pub struct IdArgs {
    /// Job id.
    pub id: JobId,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Options of `rackcast job watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Job id.
    pub id: JobId,
    /// Give up after this long (e.g. 3600, 1h); exit status 3.
    #[arg(long, value_name = "S", value_parser = parse_secs)]
    pub timeout: Option<u64>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs `rackcast job ...`.
pub fn run(cmd: JobCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        JobCommand::Submit(a) => {
            let spec = load_job_file(&a.file)?;
            submit(&Client::new(&a.client)?, spec, &a.submit)
        }
        JobCommand::Distribute(a) => {
            let spec = a.spec(now_ms() / 1000)?;
            submit(&Client::new(&a.client)?, spec, &a.submit)
        }
        JobCommand::Script(a) => {
            let text = match (&a.script, &a.command) {
                (Some(path), _) => read_script(path)?,
                (None, Some(cmd)) => format!("{cmd}\n"),
                (None, None) => anyhow::bail!("pass --script FILE or --command CMD"),
            };
            let spec = a.spec(text)?;
            submit(&Client::new(&a.client)?, spec, &a.submit)
        }
        JobCommand::Capture(a) => {
            let spec = a.spec()?;
            submit(&Client::new(&a.client)?, spec, &a.submit)
        }
        JobCommand::List(a) => list(&Client::new(&a.client)?, a.json),
        JobCommand::Show(a) => show(&Client::new(&a.client)?, a.id, a.json),
        JobCommand::Log(a) => {
            let client = Client::new(&a.client)?;
            let mut body = client.text(&format!("/api/v1/jobs/{}/log?mac={}", a.id, a.mac))?;
            let mut out = std::io::stdout().lock();
            match std::io::copy(&mut body, &mut out) {
                Ok(_) => Ok(ExitCode::SUCCESS),
                // `| head` closing the pipe is not a failure.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
                Err(e) => Err(anyhow::Error::new(e).context(format!("reading job {}'s log", a.id))),
            }
        }
        JobCommand::Retry(a) => act(&Client::new(&a.client)?, a.id, "retry"),
        JobCommand::Cancel(a) => act(&Client::new(&a.client)?, a.id, "cancel"),
        JobCommand::Watch(a) => watch::watch(
            &Client::new(&a.client)?,
            a.id,
            a.timeout.map(Duration::from_secs),
            watch::Sink::Stdout,
        ),
    }
}

impl DistributeArgs {
    /// The one-task job; `now` (Unix seconds) resolves `--start-at +10m`.
    /// The NoCloud seed the flags ask for.
    fn cloud_init(&self) -> anyhow::Result<Option<CloudInit>> {
        let read = |p: &std::path::Path| {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
        };
        let Some(user) = &self.user_data else {
            return Ok(None);
        };
        Ok(Some(CloudInit {
            user_data: read(user)?,
            network_config: self.network_config.as_deref().map(read).transpose()?,
            instance_id: self.instance_id.clone(),
        }))
    }

    pub fn spec(&self, now: u64) -> anyhow::Result<JobSpec> {
        let start_at = self
            .start_at
            .as_deref()
            .map(|s| parse_start_at(s, now))
            .transpose()
            .map_err(|e| anyhow::anyhow!("--start-at {e}"))?;
        if let Some(t) = start_at {
            if t < now {
                eprintln!("note: --start-at is in the past: the session starts as soon as it can");
            }
        }
        let cast = CastPolicy {
            min_targets: self.min_targets,
            // A set start time is the operator's choice: no 60 s default before it.
            max_wait: self.max_wait.or(if start_at.is_some() {
                None
            } else {
                CastPolicy::default().max_wait
            }),
            start_at,
            rate: self.rate,
            transport: if self.unicast {
                CastTransport::Unicast
            } else {
                CastTransport::Multicast
            },
        };
        let kind = TaskKind::Distribute {
            image: self.image.clone(),
            disk: self.disk.clone(),
            verify: verify_mode(self.verify),
            unused: self.unused.into(),
            grow: self.grow,
            cloud_init: self.cloud_init()?,
        };
        let name = format!("distribute {}", self.image);
        one_task(
            &self.task,
            name,
            self.targets.iter().map(MacAddr::to_string).collect(),
            cast,
            kind,
        )
    }
}

impl ScriptArgs {
    /// The one-task job running `script` (the text).
    pub fn spec(&self, script: String) -> anyhow::Result<JobSpec> {
        let name = match (&self.script, &self.command) {
            (Some(path), _) if path != "-" => format!("script {path}"),
            (_, Some(cmd)) => format!("script {}", cmd.lines().next().unwrap_or("")),
            _ => "script".to_string(),
        };
        let kind = TaskKind::Script {
            script,
            interpreter: self.interpreter.clone(),
            expect_exit: self.expect_exit,
        };
        one_task(
            &self.task,
            name,
            self.targets.iter().map(MacAddr::to_string).collect(),
            CastPolicy::default(),
            kind,
        )
    }
}

impl CaptureArgs {
    /// The one-task Create Disk Image job.
    pub fn spec(&self) -> anyhow::Result<JobSpec> {
        let kind = TaskKind::Create {
            image: self.image.clone(),
            disk: self.disk.clone(),
        };
        let name = format!("capture {} as {}", self.target, self.image);
        one_task(
            &self.task,
            name,
            vec![self.target.to_string()],
            CastPolicy::default(),
            kind,
        )
    }
}

fn one_task(
    opts: &TaskOpts,
    default_name: String,
    targets: Vec<String>,
    cast: CastPolicy,
    kind: TaskKind,
) -> anyhow::Result<JobSpec> {
    let mut spec = JobSpec {
        origin: None,
        name: opts.name.clone().unwrap_or(default_name),
        targets,
        cast,
        tasks: vec![TaskSpec {
            kind,
            env: opts.env.clone(),
            timeout: opts.timeout,
            retries: opts.retries,
        }],
    };
    check_spec(&mut spec).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(spec)
}

fn verify_mode(v: VerifyArg) -> VerifyMode {
    match v {
        VerifyArg::Off => VerifyMode::Off,
        VerifyArg::Sample => VerifyMode::Sample,
        VerifyArg::Full => VerifyMode::Full,
    }
}

fn read_script(path: &str) -> anyhow::Result<String> {
    let mut text = String::new();
    if path == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the script from stdin")?;
    } else {
        text =
            std::fs::read_to_string(path).with_context(|| format!("reading the script {path}"))?;
    }
    if text.trim().is_empty() {
        anyhow::bail!("the script {path} is empty");
    }
    Ok(text)
}

/// POSTs the job, prints its id (alone) on stdout, watches it if asked.
fn submit(client: &Client, spec: JobSpec, opts: &SubmitOpts) -> anyhow::Result<ExitCode> {
    let view: JobView = client.post("/api/v1/jobs", &spec)?;
    println!("{}", view.id);
    eprintln!(
        "submitted job {} ({}): {} target{}, {} task{}; follow it with `rackcast job watch {}`",
        view.id,
        view.name,
        view.targets.len(),
        plural(view.targets.len()),
        view.spec.tasks.len(),
        plural(view.spec.tasks.len()),
        view.id
    );
    if !opts.watch {
        return Ok(ExitCode::SUCCESS);
    }
    watch::watch(
        client,
        view.id,
        opts.watch_timeout.map(Duration::from_secs),
        watch::Sink::Stderr,
    )
}

fn list(client: &Client, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        let v: serde_json::Value = client.get("/api/v1/jobs")?;
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut jobs: Vec<JobView> = client.get("/api/v1/jobs")?;
    jobs.sort_by_key(|j| j.id);
    let now = now_ms();
    let mut t = Table::new(&["ID", "NAME", "STATUS", "TARGETS", "TASKS", "CREATED"]);
    for j in &jobs {
        t.row(vec![
            j.id.to_string(),
            j.name.clone(),
            j.status.clone(),
            targets_cell(&j.targets),
            j.spec
                .tasks
                .iter()
                .map(|t| t.kind.word())
                .collect::<Vec<_>>()
                .join(","),
            format_age(now, j.created),
        ]);
    }
    if t.is_empty() {
        eprintln!(
            "no jobs (submit one with `rackcast job submit FILE` or `rackcast job distribute`)"
        );
    } else {
        print!("{}", t.render());
    }
    Ok(ExitCode::SUCCESS)
}

fn show(client: &Client, id: JobId, json: bool) -> anyhow::Result<ExitCode> {
    let path = format!("/api/v1/jobs/{id}");
    if json {
        let v: serde_json::Value = client.get(&path)?;
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let j: JobView = client.get(&path)?;
    print!("{}", render_job(&j, now_ms()));
    Ok(ExitCode::SUCCESS)
}

fn act(client: &Client, id: JobId, verb: &str) -> anyhow::Result<ExitCode> {
    let j: JobView = client.post_empty(&format!("/api/v1/jobs/{id}/{verb}"))?;
    println!("job {}: {} ({})", j.id, j.status, targets_cell(&j.targets));
    Ok(ExitCode::SUCCESS)
}

/// `3 done, 1 failed, 2 running of 6`.
pub fn targets_cell(runs: &[TargetRun]) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for r in runs {
        match counts.iter_mut().find(|(s, _)| *s == r.status) {
            Some((_, n)) => *n += 1,
            None => counts.push((&r.status, 1)),
        }
    }
    let order = ["done", "failed", "cancelled", "running", "queued"];
    counts.sort_by_key(|(s, _)| order.iter().position(|o| o == s).unwrap_or(order.len()));
    let parts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    if parts.is_empty() {
        return "none".to_string();
    }
    format!("{} of {}", parts.join(", "), runs.len())
}

/// `2/3 script` for a run at task index `task` (`3/3 done` past the end).
pub fn task_label(spec: &JobSpec, task: u32) -> String {
    let m = spec.tasks.len();
    match spec.tasks.get(task as usize) {
        Some(t) => format!("{}/{m} {}", task + 1, t.kind.word()),
        None => format!("{m}/{m}"),
    }
}

/// One line about a task: what it does and its options.
pub fn describe_task(t: &TaskSpec) -> String {
    let mut s = match &t.kind {
        TaskKind::Create { image, disk } => format!(
            "create image {image} from {}",
            disk.as_deref().unwrap_or("the agent's disk")
        ),
        TaskKind::Distribute {
            image,
            disk,
            verify,
            unused,
            grow,
            cloud_init,
        } => format!(
            "distribute {image} to {} (verify {}{}{}{})",
            disk.as_deref().unwrap_or("the agent's disk"),
            match verify {
                VerifyMode::Off => "off",
                VerifyMode::Sample => "sample",
                VerifyMode::Full => "full",
            },
            match unused {
                UnusedBlocks::Keep => "",
                UnusedBlocks::Zero => ", unused blocks zeroed",
                UnusedBlocks::Discard => ", unused blocks discarded",
            },
            if *grow {
                ", grow the last partition"
            } else {
                ""
            },
            if cloud_init.is_some() {
                ", then a NoCloud seed"
            } else {
                ""
            }
        ),
        TaskKind::Script {
            script,
            interpreter,
            expect_exit,
        } => {
            let first = script.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            let more = script.lines().filter(|l| !l.trim().is_empty()).count() > 1;
            format!(
                "script ({}, exit {expect_exit}): {first}{}",
                interpreter.as_deref().unwrap_or("/bin/sh"),
                if more { " ..." } else { "" }
            )
        }
        TaskKind::Reboot { to } => format!("reboot to {to}"),
        TaskKind::Power { op } => format!("power {op}"),
    };
    let mut opts = Vec::new();
    if let Some(e) = &t.env {
        opts.push(format!("env {e}"));
    }
    if let Some(to) = t.timeout {
        opts.push(format!("timeout {to}s"));
    }
    if t.retries > 0 {
        opts.push(format!("retries {}", t.retries));
    }
    if !opts.is_empty() {
        let _ = write!(s, "; {}", opts.join(", "));
    }
    s
}

/// The text of `rackcast job show`.
pub fn render_job(j: &JobView, now: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "job      {}  {}", j.id, j.name);
    let _ = writeln!(out, "status   {} ({})", j.status, targets_cell(&j.targets));
    match &j.spec.origin {
        Some(by) => {
            let _ = writeln!(out, "created  {}, from {by}", format_age(now, j.created));
        }
        None => {
            let _ = writeln!(out, "created  {}", format_age(now, j.created));
        }
    }
    for (i, t) in j.spec.tasks.iter().enumerate() {
        let head = if i == 0 { "tasks" } else { "" };
        let _ = writeln!(out, "{head:<8} {}. {}", i + 1, describe_task(t));
    }
    if j.spec
        .tasks
        .iter()
        .any(|t| matches!(t.kind, TaskKind::Distribute { .. }))
    {
        let _ = writeln!(out, "cast     {}", describe_cast(&j.spec.cast));
    }
    out.push('\n');
    let mut t = Table::new(&["MAC", "STATUS", "TASK", "ATTEMPT", "PROGRESS / ERROR"]);
    for r in &j.targets {
        let detail = match (&r.error, &r.progress) {
            (Some(e), _) if r.status != "done" => e.clone(),
            (_, Some(p)) if r.status == "running" => progress_cell(p),
            _ => "-".to_string(),
        };
        t.row(vec![
            r.mac.to_string(),
            r.status.clone(),
            task_label(&j.spec, r.task),
            r.attempt.to_string(),
            detail,
        ]);
    }
    out.push_str(&t.render());
    for r in j.targets.iter().filter(|r| !r.log.trim().is_empty()) {
        let _ = writeln!(out, "\nlog of {} (last lines):", r.mac);
        for l in log_tail(&r.log, 10) {
            let _ = writeln!(out, "  {l}");
        }
    }
    out
}

/// `min 4 targets, max wait 60s, at 1750000000, rate 100.0 MB/s`.
pub fn describe_cast(c: &CastPolicy) -> String {
    let mut parts = vec![match c.min_targets {
        Some(n) => format!("min {n} target{}", plural(n)),
        None => "all targets".to_string(),
    }];
    if let Some(w) = c.max_wait {
        parts.push(format!("or {w}s after the first"));
    }
    if let Some(t) = c.start_at {
        parts.push(format!("or at Unix time {t}"));
    }
    if let Some(r) = c.rate {
        parts.push(format!("rate {}", super::client::show::rate_cell(r as f64)));
    }
    parts.join(", ")
}

/// The last `n` non-empty lines of a log.
pub fn log_tail(log: &str, n: usize) -> Vec<&str> {
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[cfg(test)]
#[path = "job_tests.rs"]
mod tests;
