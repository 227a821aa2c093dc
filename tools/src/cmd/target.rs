//! `rackcast target`: the machines the server knows, their state and
//! inventory; `release` lets a failed one go.

use std::fmt::Write as _;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use rackcast_engine::sched::api::{Millis, TargetState, TargetView};

use super::client::show::{format_age, format_duration, now_ms, progress_cell, Table};
use super::client::{parse_mac, path_segment, Client, ClientArgs};
use super::util::human_bytes;

/// `rackcast target ...`
#[derive(Debug, Subcommand)]
pub enum TargetCommand {
    /// List targets: MAC, name, state, environment, last seen, progress.
    #[command(after_help = "Example:\n  rackcast target list\n  \
        rackcast target list --json | jq -r '.[] | select(.state==\"failed\") | .mac'")]
    List(ListArgs),
    /// Show one target: state (with its error when failed), progress, jobs
    /// and the inventory its agent reported.
    #[command(after_help = "Example:\n  rackcast target show aa:bb:cc:dd:ee:01")]
    Show(ShowArgs),
    /// Enroll a target before its first boot, so jobs can name it.
    #[command(after_help = "Example:\n  rackcast target add aa:bb:cc:dd:ee:01 --name rack12-u07")]
    Add(AddArgs),
    /// Release a failed target: clear its failure hold without retrying.
    #[command(after_help = "Example:\n  rackcast target release aa:bb:cc:dd:ee:01")]
    Release(MacArgs),
}

/// Options of `rackcast target list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print the server's JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Options of `rackcast target show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The target's MAC (aa:bb:cc:dd:ee:ff).
    #[arg(value_parser = parse_mac)]
    pub mac: String,
    /// Print the server's JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Options of `rackcast target add`.
#[derive(Debug, Args)]
pub struct AddArgs {
    /// The target's MAC (aa:bb:cc:dd:ee:ff).
    #[arg(value_parser = parse_mac)]
    pub mac: String,
    /// A name for people (default: the host name its agent reports).
    #[arg(long, default_value = "")]
    pub name: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// The body of `POST /api/v1/targets`.
#[derive(Debug, serde::Serialize)]
struct NewTarget<'a> {
    mac: &'a str,
    name: &'a str,
}

/// A target's MAC and the server.
#[derive(Debug, Args)]
pub struct MacArgs {
    /// The target's MAC (aa:bb:cc:dd:ee:ff).
    #[arg(value_parser = parse_mac)]
    pub mac: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs `rackcast target ...`.
pub fn run(cmd: TargetCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TargetCommand::List(a) => {
            let client = Client::new(&a.client)?;
            if a.json {
                let v: serde_json::Value = client.get("/api/v1/targets")?;
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(ExitCode::SUCCESS);
            }
            let mut targets = client.get_with("/api/v1/targets", decode_targets)?;
            targets.sort_by(|a, b| a.mac.cmp(&b.mac));
            if targets.is_empty() {
                eprintln!(
                    "no targets yet: they appear when their agent registers or a job names them"
                );
            } else {
                print!("{}", targets_table(&targets, now_ms()).render());
            }
        }
        TargetCommand::Show(a) => {
            let client = Client::new(&a.client)?;
            let path = format!("/api/v1/targets/{}", path_segment(&a.mac));
            if a.json {
                let v: serde_json::Value = client.get(&path)?;
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let t = client.get_with(&path, decode_target)?;
                print!("{}", render_target(&t, now_ms()));
            }
        }
        TargetCommand::Add(a) => {
            let client = Client::new(&a.client)?;
            let body = NewTarget {
                mac: &a.mac,
                name: &a.name,
            };
            let t = client.post_with("/api/v1/targets", &body, decode_target)?;
            println!("{}: {}", t.mac, state_cell(&t.state, now_ms()));
        }
        TargetCommand::Release(a) => {
            let client = Client::new(&a.client)?;
            let path = format!("/api/v1/targets/{}/release", path_segment(&a.mac));
            let t = client.post_empty_with(&path, decode_target)?;
            println!("{}: {}", t.mac, state_cell(&t.state, now_ms()));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Decodes a `TargetView` answer. For waiting and rebooting-to targets the
/// flattened state's `env` and the target's own `env` share the key `env`
/// (written twice, the state's first), which the derived decoder cannot
/// take apart; this one can, and takes a plain answer as well.
pub fn decode_target(text: &str) -> Result<TargetView, String> {
    if let Ok(t) = serde_json::from_str(text) {
        return Ok(t);
    }
    let e: Entries = serde_json::from_str(text).map_err(|e| e.to_string())?;
    e.into_target().map_err(|e| e.to_string())
}

/// Decodes a `[TargetView]` answer (see [`decode_target`]).
pub fn decode_targets(text: &str) -> Result<Vec<TargetView>, String> {
    if let Ok(t) = serde_json::from_str(text) {
        return Ok(t);
    }
    let list: Vec<Entries> = serde_json::from_str(text).map_err(|e| e.to_string())?;
    list.into_iter()
        .map(|e| e.into_target().map_err(|e| e.to_string()))
        .collect()
}

/// A JSON object's entries in order, duplicates kept.
#[derive(Debug)]
struct Entries(Vec<(String, serde_json::Value)>);

impl Entries {
    /// The state from the keys with the first `env`, the rest of the target
    /// with the last one.
    fn into_target(self) -> Result<TargetView, serde_json::Error> {
        use serde_json::{Map, Value};
        let first_env = self
            .0
            .iter()
            .find(|(k, _)| k == "env")
            .map(|(_, v)| v.clone());
        let mut view: Map<String, Value> = self.0.into_iter().collect();
        let mut state = view.clone();
        if let Some(env) = first_env {
            state.insert("env".into(), env);
        }
        let state: TargetState = serde_json::from_value(Value::Object(state))?;
        view.insert("state".into(), Value::String("unknown".into()));
        let mut t: TargetView = serde_json::from_value(Value::Object(view))?;
        t.state = state;
        Ok(t)
    }
}

impl<'de> serde::Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a target object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Entries, A::Error> {
                let mut v = Vec::new();
                while let Some(kv) = m.next_entry::<String, serde_json::Value>()? {
                    v.push(kv);
                }
                Ok(Entries(v))
            }
        }
        d.deserialize_map(V)
    }
}

/// The `target list` table.
pub fn targets_table(targets: &[TargetView], now: Millis) -> Table {
    let mut t = Table::new(&["MAC", "NAME", "STATE", "ENV", "LAST SEEN", "PROGRESS"]);
    for v in targets {
        t.row(vec![
            v.mac.clone(),
            if v.name.is_empty() {
                "-".into()
            } else {
                v.name.clone()
            },
            state_cell(&v.state, now),
            v.env.clone(),
            format_age(now, v.last_seen),
            v.progress.as_ref().map_or("-".into(), progress_cell),
        ]);
    }
    t
}

/// `running job 3 task 1 (attempt 2)`, `rebooting to linux-x64 (due in 4m00s)`.
pub fn state_cell(s: &TargetState, now: Millis) -> String {
    match s {
        TargetState::Unknown => "unknown".into(),
        TargetState::Waiting { env } => format!("waiting in {env}"),
        TargetState::RebootingTo { env, deadline } => {
            format!("rebooting to {env} ({})", deadline_cell(now, *deadline))
        }
        TargetState::Running {
            job, task, attempt, ..
        } => {
            let mut s = format!("running job {job} task {}", task + 1);
            if *attempt > 1 {
                let _ = write!(s, " (attempt {attempt})");
            }
            s
        }
        TargetState::Failed { job, task, .. } => format!("failed job {job} task {}", task + 1),
        TargetState::Local => "local".into(),
    }
}

/// `due in 4m00s` or `overdue by 12s`.
pub fn deadline_cell(now: Millis, deadline: Millis) -> String {
    use std::time::Duration;
    if deadline >= now {
        format!(
            "due in {}",
            format_duration(Duration::from_millis(deadline - now))
        )
    } else {
        format!(
            "overdue by {}",
            format_duration(Duration::from_millis(now - deadline))
        )
    }
}

/// The text of `rackcast target show`.
pub fn render_target(t: &TargetView, now: Millis) -> String {
    let mut out = String::new();
    let mut field = |k: &str, v: String| {
        let _ = writeln!(out, "{k:<10} {v}");
    };
    field("mac", t.mac.clone());
    field("name", t.name.clone());
    field("state", state_cell(&t.state, now));
    match &t.state {
        TargetState::Failed { error, .. } => field("error", error.clone()),
        TargetState::Running { deadline, .. } => field("deadline", deadline_cell(now, *deadline)),
        _ => {}
    }
    field("env", t.env.clone());
    field("last seen", format_age(now, t.last_seen));
    if let Some(p) = &t.progress {
        field("progress", progress_cell(p));
    }
    field(
        "jobs",
        if t.jobs.is_empty() {
            "none".into()
        } else {
            t.jobs
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        },
    );
    let inv = &t.inventory;
    if !inv.hostname.is_empty() {
        field("hostname", inv.hostname.clone());
    }
    if inv.cpus > 0 || !inv.cpu.is_empty() {
        field("cpu", format!("{} x {}", inv.cpus, inv.cpu));
    }
    if inv.memory > 0 {
        field("memory", human_bytes(inv.memory));
    }
    for (i, d) in inv.disks.iter().enumerate() {
        let mut s = format!("{}  {}", d.path, human_bytes(d.size));
        if !d.model.is_empty() {
            let _ = write!(s, "  {}", d.model);
        }
        if !d.serial.is_empty() {
            let _ = write!(s, "  serial {}", d.serial);
        }
        field(if i == 0 { "disks" } else { "" }, s);
    }
    for (i, n) in inv.nics.iter().enumerate() {
        let mut s = format!("{}  {}", n.name, n.mac);
        if !n.ipv4.is_empty() {
            let _ = write!(s, "  {}", n.ipv4.join(", "));
        }
        field(if i == 0 { "nics" } else { "" }, s);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rackcast_engine::sched::api::{DiskInfo, Inventory, NicInfo, Progress};

    fn target(state: TargetState) -> TargetView {
        TargetView {
            mac: "aa:bb:cc:dd:ee:01".into(),
            name: "node1".into(),
            state,
            env: "linux-x64".into(),
            inventory: Inventory {
                hostname: "node1".into(),
                cpu: "EPYC 9354".into(),
                cpus: 64,
                memory: 256 << 30,
                disks: vec![DiskInfo {
                    path: "/dev/nvme0n1".into(),
                    size: 2 << 40,
                    serial: "S4X".into(),
                    model: "PM9A3".into(),
                }],
                nics: vec![NicInfo {
                    name: "eno1".into(),
                    mac: "aa:bb:cc:dd:ee:01".into(),
                    ipv4: vec!["10.0.0.7".into()],
                }],
            },
            last_seen: 88_000,
            progress: Some(Progress {
                done: 1 << 30,
                total: 2 << 30,
                rate: 2e8,
                message: String::new(),
            }),
            jobs: vec![3],
        }
    }

    #[test]
    fn list_table() {
        let running = TargetState::Running {
            job: 3,
            task: 0,
            attempt: 2,
            deadline: 200_000,
        };
        let t = targets_table(&[target(running)], 100_000).render();
        assert_eq!(
            t,
            "MAC                NAME   STATE                             ENV        LAST SEEN  PROGRESS\n\
             aa:bb:cc:dd:ee:01  node1  running job 3 task 1 (attempt 2)  linux-x64  12s ago    \
             50% 1.00 GiB/2.00 GiB 200.0 MB/s\n"
        );
    }

    #[test]
    fn decodes_the_duplicate_env_key() {
        // What the server writes for a target told to reboot elsewhere.
        let mut t = target(TargetState::RebootingTo {
            env: "linux-x64".into(),
            deadline: 5,
        });
        t.env = "local".into();
        let text = serde_json::to_string(&t).unwrap();
        assert_eq!(text.matches("\"env\"").count(), 2, "{text}");
        assert_eq!(decode_target(&text).unwrap(), t);
        assert_eq!(
            decode_targets(&format!("[{text},{text}]")).unwrap(),
            [t.clone(), t]
        );
        // ...and a target whose state has no env of its own.
        let local = target(TargetState::Local);
        let text = serde_json::to_string(&local).unwrap();
        assert_eq!(decode_target(&text).unwrap(), local);
        assert!(decode_target("[]").is_err());
    }

    #[test]
    fn states() {
        let now = 100_000;
        assert_eq!(state_cell(&TargetState::Unknown, now), "unknown");
        assert_eq!(
            state_cell(
                &TargetState::RebootingTo {
                    env: "linux-x64".into(),
                    deadline: now + 240_000
                },
                now
            ),
            "rebooting to linux-x64 (due in 4m00s)"
        );
        assert_eq!(deadline_cell(now, now - 12_000), "overdue by 12s");
        assert_eq!(
            state_cell(
                &TargetState::Failed {
                    job: 3,
                    task: 1,
                    error: "x".into()
                },
                now
            ),
            "failed job 3 task 2"
        );
    }

    #[test]
    fn show_text() {
        let t = target(TargetState::Failed {
            job: 3,
            task: 1,
            error: "exit 1, expected 0".into(),
        });
        let s = render_target(&t, 100_000);
        assert!(s.contains("state      failed job 3 task 2\n"), "{s}");
        assert!(s.contains("error      exit 1, expected 0\n"), "{s}");
        assert!(s.contains("cpu        64 x EPYC 9354\n"), "{s}");
        assert!(
            s.contains("disks      /dev/nvme0n1  2.00 TiB  PM9A3  serial S4X\n"),
            "{s}"
        );
        assert!(
            s.contains("nics       eno1  aa:bb:cc:dd:ee:01  10.0.0.7\n"),
            "{s}"
        );
        assert!(s.contains("jobs       3\n"), "{s}");
    }
}
