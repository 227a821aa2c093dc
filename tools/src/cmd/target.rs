//! `rackcast target`: the machines the server knows, their state and
//! inventory; `release` lets a failed one go; `reset` drops its agent
//! session; `set-bmc`, `power` and `boot-once` work through its BMC;
//! `vars` sets what job templates fill in for it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use rackcast_engine::sched::api::{
    BmcRequest, BmcSettings, BootDevice, BootOnceRequest, JobId, Millis, PowerAnswer, PowerOp,
    PowerRequest, TargetState, TargetView, VarsUpdate,
};

use super::client::show::{format_age, format_duration, now_ms, progress_cell, Table};
use super::client::{path_segment, Client, ClientArgs};
use super::util::human_bytes;
use rackcast_engine::sched::MacAddr;

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
    /// Enroll a target before its first boot, so jobs can name it; with
    /// --bmc, rackcast powers it on into the network boot when a job needs it.
    #[command(
        after_help = "Example:\n  rackcast target add aa:bb:cc:dd:ee:01 --name rack12-u07\n  \
        rackcast target add aa:bb:cc:dd:ee:01 --bmc redfish://10.0.1.7 --bmc-user admin \\\n    \
        --bmc-password-file /etc/rackcast/bmc/rack12-u07\n  \
        rackcast target add aa:bb:cc:dd:ee:02 --bmc ipmi://10.0.1.8 --bmc-user ADMIN --bmc-password-file -\n  \
        rackcast target add aa:bb:cc:dd:ee:03 --bmc wol"
    )]
    Add(AddArgs),
    /// Set (or with `--bmc none` remove) an enrolled target's BMC.
    ///
    /// The password is sent once, stored encrypted on the server, and never
    /// shown again by the API, events, logs or `target show`. Omit
    /// --bmc-password-file to keep the stored one.
    #[command(
        name = "set-bmc",
        after_help = "Example:\n  rackcast target set-bmc aa:bb:cc:dd:ee:01 --bmc redfish://10.0.1.7/redfish/v1/Systems/1 \\\n    \
        --bmc-user admin --bmc-password-file pw.txt --bmc-insecure\n  \
        rackcast target set-bmc aa:bb:cc:dd:ee:01 --bmc none"
    )]
    SetBmc(SetBmcArgs),
    /// Power a target on, off or cycle it through its BMC, or print its
    /// power state (`status`).
    #[command(
        after_help = "Example:\n  rackcast target power aa:bb:cc:dd:ee:01 status\n  \
        rackcast target power aa:bb:cc:dd:ee:01 cycle"
    )]
    Power(PowerArgs),
    /// Set a target's next boot (only the next) to the network or its
    /// disk, through its BMC.
    #[command(
        name = "boot-once",
        after_help = "Example:\n  rackcast target boot-once aa:bb:cc:dd:ee:01 pxe && rackcast target power aa:bb:cc:dd:ee:01 cycle"
    )]
    BootOnce(BootOnceArgs),
    /// Show, set or remove a target's variables: `{NAME}` in a job's
    /// cloud-init (`job distribute --user-data`) becomes the target's value,
    /// beside the built-in {hostname}, {mac}, {ip} and {job}.
    ///
    /// Variables are shown by `target show` and the API: keep secrets out.
    #[command(
        after_help = "Example:\n  rackcast target vars aa:bb:cc:dd:ee:01 --set rack=r12 --set role=db\n  \
        rackcast target vars aa:bb:cc:dd:ee:01 --unset role\n  \
        rackcast target vars aa:bb:cc:dd:ee:01            # print them\n\n\
        A user-data line `fqdn: {hostname}.{rack}.example.net` then reads\n\
        `fqdn: rack12-u07.r12.example.net` on that target."
    )]
    Vars(VarsArgs),
    /// Release a failed target: clear its failure hold without retrying.
    #[command(after_help = "Example:\n  rackcast target release aa:bb:cc:dd:ee:01")]
    Release(MacArgs),
    /// Drop a target's agent session: its running agent must register
    /// again, and an agent started by hand may then register it with the
    /// enrollment token (refused while a session is live).
    #[command(after_help = "Example:\n  rackcast target reset aa:bb:cc:dd:ee:01")]
    Reset(MacArgs),
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
    pub mac: MacAddr,
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
    pub mac: MacAddr,
    /// A name for people (default: the host name its agent reports).
    #[arg(long, default_value = "")]
    pub name: String,
    /// A variable for job templates, NAME=VALUE (repeatable; see `target vars`).
    #[arg(long = "var", value_name = "NAME=VALUE", value_parser = parse_var)]
    pub vars: Vec<(String, String)>,
    #[command(flatten)]
    pub bmc: BmcArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Options of `rackcast target vars`.
#[derive(Debug, Args)]
pub struct VarsArgs {
    /// The target's MAC (aa:bb:cc:dd:ee:ff).
    pub mac: MacAddr,
    /// Set NAME to VALUE (repeatable). Names: letters, digits, `_`, `-`,
    /// starting with a letter; not hostname, mac, ip or job.
    #[arg(long = "set", value_name = "NAME=VALUE", value_parser = parse_var)]
    pub set: Vec<(String, String)>,
    /// Remove NAME (repeatable; applied after --set).
    #[arg(long = "unset", value_name = "NAME")]
    pub unset: Vec<String>,
    /// Print the variables as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `NAME=VALUE` (the value may hold `=`).
fn parse_var(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=VALUE"))?;
    rackcast_engine::sched::template::check_name(k)?;
    Ok((k.to_string(), v.to_string()))
}

/// A target's BMC on the command line.
#[derive(Debug, Args)]
pub struct BmcArgs {
    /// Its BMC: redfish://HOST[:PORT][/redfish/v1/Systems/ID],
    /// ipmi://HOST[:PORT] or wol (Wake-on-LAN: power-on only).
    #[arg(long, value_name = "URL")]
    pub bmc: Option<String>,
    /// The BMC login user (Redfish, IPMI).
    #[arg(long, value_name = "USER")]
    pub bmc_user: Option<String>,
    /// A file holding the BMC password (`-`: standard input), so it shows in
    /// no process list or shell history.
    #[arg(long, value_name = "FILE")]
    pub bmc_password_file: Option<std::path::PathBuf>,
    /// Accept the BMC's certificate though no trusted CA issued it (the
    /// self-signed certificates most BMCs ship with).
    #[arg(long)]
    pub bmc_insecure: bool,
}

impl BmcArgs {
    /// The request for `--bmc URL`, reading the password file.
    fn request(&self, addr: &str) -> anyhow::Result<BmcRequest> {
        let password = match &self.bmc_password_file {
            None => None,
            Some(p) if p.as_os_str() == "-" => {
                let mut s = String::new();
                std::io::stdin()
                    .read_line(&mut s)
                    .context("reading the BMC password from standard input")?;
                Some(s)
            }
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("--bmc-password-file {}", p.display()))?,
            ),
        };
        // A file's trailing newline is not part of the password.
        let password = password.map(|p| p.trim_end_matches(['\r', '\n']).to_string());
        Ok(BmcRequest {
            settings: BmcSettings {
                addr: addr.to_string(),
                user: self.bmc_user.clone(),
                insecure: self.bmc_insecure,
            },
            password,
        })
    }
}

/// Options of `rackcast target set-bmc`.
#[derive(Debug, Args)]
pub struct SetBmcArgs {
    /// The target's MAC (aa:bb:cc:dd:ee:ff).
    pub mac: MacAddr,
    #[command(flatten)]
    pub bmc: BmcArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// What `rackcast target power` does.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum PowerWord {
    /// Power on.
    On,
    /// Power off at once.
    Off,
    /// Off, then on.
    Cycle,
    /// Print the power state.
    Status,
}

/// Options of `rackcast target power`.
#[derive(Debug, Args)]
pub struct PowerArgs {
    /// The target's MAC (aa:bb:cc:dd:ee:ff).
    pub mac: MacAddr,
    /// on, off, cycle or status.
    #[arg(value_enum)]
    pub action: PowerWord,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Where `rackcast target boot-once` boots.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum BootWord {
    /// The network (PXE).
    Pxe,
    /// The local disk.
    Disk,
}

/// Options of `rackcast target boot-once`.
#[derive(Debug, Args)]
pub struct BootOnceArgs {
    /// The target's MAC (aa:bb:cc:dd:ee:ff).
    pub mac: MacAddr,
    /// pxe or disk.
    #[arg(value_enum)]
    pub device: BootWord,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// The body of `POST /api/v1/targets`.
#[derive(Debug, serde::Serialize)]
struct NewTarget<'a> {
    mac: MacAddr,
    name: &'a str,
    vars: BTreeMap<String, String>,
}

/// A target's MAC and the server.
#[derive(Debug, Args)]
pub struct MacArgs {
    /// The target's MAC (aa:bb:cc:dd:ee:ff).
    pub mac: MacAddr,
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
            let mut targets = client.get::<Vec<TargetView>>("/api/v1/targets")?;
            targets.sort_by_key(|t| t.mac);
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
            let path = format!("/api/v1/targets/{}", path_segment(&a.mac.to_string()));
            if a.json {
                let v: serde_json::Value = client.get(&path)?;
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let t: TargetView = client.get(&path)?;
                print!("{}", render_target(&t, now_ms()));
            }
        }
        TargetCommand::Add(a) => {
            let client = Client::new(&a.client)?;
            let body = NewTarget {
                mac: a.mac,
                name: &a.name,
                vars: a.vars.into_iter().collect(),
            };
            let req = a.bmc.bmc.as_deref().map(|b| a.bmc.request(b)).transpose()?;
            let mut t: TargetView = client.post("/api/v1/targets", &body)?;
            if let Some(req) = req {
                let path = format!("/api/v1/targets/{}/bmc", path_segment(&a.mac.to_string()));
                t = client.put(&path, &req)?;
            }
            println!(
                "{}: {}{}",
                t.mac,
                state_cell(&t.state, now_ms()),
                bmc_note(&t)
            );
        }
        TargetCommand::SetBmc(a) => {
            let client = Client::new(&a.client)?;
            let path = format!("/api/v1/targets/{}/bmc", path_segment(&a.mac.to_string()));
            let t: TargetView = match a.bmc.bmc.as_deref() {
                None => anyhow::bail!("give --bmc URL (or --bmc none to remove the BMC)"),
                Some("none") => client.delete(&path)?,
                Some(b) => client.put(&path, &a.bmc.request(b)?)?,
            };
            println!("{}: {}", t.mac, bmc_note(&t).trim_start_matches(", "));
        }
        TargetCommand::Power(a) => {
            let client = Client::new(&a.client)?;
            let path = format!("/api/v1/targets/{}/power", path_segment(&a.mac.to_string()));
            let op = match a.action {
                PowerWord::On => Some(PowerOp::On),
                PowerWord::Off => Some(PowerOp::Off),
                PowerWord::Cycle => Some(PowerOp::Cycle),
                PowerWord::Status => None,
            };
            let p: PowerAnswer = client.post(&path, &PowerRequest { op })?;
            println!("{}: power {}", p.mac, p.power);
        }
        TargetCommand::BootOnce(a) => {
            let client = Client::new(&a.client)?;
            let path = format!(
                "/api/v1/targets/{}/boot-once",
                path_segment(&a.mac.to_string())
            );
            let device = match a.device {
                BootWord::Pxe => BootDevice::Pxe,
                BootWord::Disk => BootDevice::Disk,
            };
            let p: PowerAnswer = client.post(&path, &BootOnceRequest { device })?;
            println!("{}: next boot {device} (power {})", p.mac, p.power);
        }
        TargetCommand::Vars(a) => {
            let client = Client::new(&a.client)?;
            let mac = path_segment(&a.mac.to_string());
            let t: TargetView = if a.set.is_empty() && a.unset.is_empty() {
                client.get(&format!("/api/v1/targets/{mac}"))?
            } else {
                let update = VarsUpdate {
                    set: a.set.into_iter().collect(),
                    unset: a.unset,
                };
                client.patch(&format!("/api/v1/targets/{mac}/vars"), &update)?
            };
            if a.json {
                println!("{}", serde_json::to_string_pretty(&t.vars)?);
            } else if t.vars.is_empty() {
                eprintln!("{}: no variables", t.mac);
            } else {
                for (k, v) in &t.vars {
                    println!("{k}={v}");
                }
            }
        }
        TargetCommand::Release(a) => {
            let client = Client::new(&a.client)?;
            let path = format!(
                "/api/v1/targets/{}/release",
                path_segment(&a.mac.to_string())
            );
            let t: TargetView = client.post_empty(&path)?;
            println!("{}: {}", t.mac, state_cell(&t.state, now_ms()));
        }
        TargetCommand::Reset(a) => {
            let client = Client::new(&a.client)?;
            let path = format!("/api/v1/targets/{}/reset", path_segment(&a.mac.to_string()));
            let t: TargetView = client.post_empty(&path)?;
            println!("{}: agent session dropped", t.mac);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The `target list` table.
pub fn targets_table(targets: &[TargetView], now: Millis) -> Table {
    let mut t = Table::new(&[
        "MAC",
        "NAME",
        "STATE",
        "ENV",
        "POWER",
        "LAST SEEN",
        "PROGRESS",
    ]);
    for v in targets {
        t.row(vec![
            v.mac.to_string(),
            if v.name.is_empty() {
                "-".into()
            } else {
                v.name.clone()
            },
            state_cell(&v.state, now),
            v.environment.clone(),
            power_cell(v),
            format_age(now, v.last_seen),
            v.progress.as_ref().map_or("-".into(), progress_cell),
        ]);
    }
    t
}

/// `on`, `off`, `?` (a BMC that could not be read), `-` (no BMC).
fn power_cell(v: &TargetView) -> String {
    match (&v.bmc, v.power, &v.bmc_error) {
        (None, ..) => "-".into(),
        (Some(_), _, Some(_)) => "bmc error".into(),
        (Some(_), Some(p), None) => p.to_string(),
        (Some(_), None, None) => "?".into(),
    }
}

/// `, BMC redfish://10.0.1.7 (user admin)`, or nothing.
fn bmc_note(t: &TargetView) -> String {
    match &t.bmc {
        None => ", no BMC".into(),
        Some(b) => bmc_text(b),
    }
}

fn bmc_text(b: &BmcSettings) -> String {
    let mut s = format!(", BMC {}", b.addr);
    if let Some(u) = &b.user {
        let _ = write!(s, " (user {u}");
        if b.insecure {
            s.push_str(", any certificate");
        }
        s.push(')');
    }
    s
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
    field("mac", t.mac.to_string());
    field("name", t.name.clone());
    field("state", state_cell(&t.state, now));
    match &t.state {
        TargetState::Failed { error, .. } => field("error", error.clone()),
        TargetState::Running { deadline, .. } => field("deadline", deadline_cell(now, *deadline)),
        _ => {}
    }
    field("env", t.environment.clone());
    if let Some(b) = &t.bmc {
        field("bmc", bmc_text(b).trim_start_matches(", BMC ").to_string());
        field(
            "power",
            t.power
                .map_or_else(|| "not read yet".into(), |p| p.to_string()),
        );
        if let Some(e) = &t.bmc_error {
            field("bmc error", e.clone());
        }
    }
    if !t.vars.is_empty() {
        let vars: Vec<String> = t.vars.iter().map(|(k, v)| format!("{k}={v}")).collect();
        field("vars", vars.join(" "));
    }
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
                .map(JobId::to_string)
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
            mac: "aa:bb:cc:dd:ee:01".parse().unwrap(),
            name: "node1".into(),
            state,
            environment: "linux-x64".into(),
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
            jobs: vec![JobId(3)],
            bmc: None,
            power: None,
            bmc_error: None,
            vars: [("rack".to_string(), "r12".to_string())].into(),
        }
    }

    #[test]
    fn list_table() {
        let running = TargetState::Running {
            job: JobId(3),
            task: 0,
            attempt: 2,
            deadline: 200_000,
        };
        let mut with_bmc = target(running.clone());
        with_bmc.mac = "aa:bb:cc:dd:ee:02".parse().unwrap();
        with_bmc.bmc = Some(BmcSettings {
            addr: "ipmi://10.0.1.8".into(),
            user: Some("ADMIN".into()),
            insecure: false,
        });
        with_bmc.power = Some(rackcast_engine::sched::api::PowerState::On);
        let t = targets_table(&[target(running), with_bmc], 100_000).render();
        assert_eq!(
            t,
            "MAC                NAME   STATE                             ENV        POWER  LAST SEEN  PROGRESS\n\
             aa:bb:cc:dd:ee:01  node1  running job 3 task 1 (attempt 2)  linux-x64  -      12s ago    \
             50% 1.00 GiB/2.00 GiB 200.0 MB/s\n\
             aa:bb:cc:dd:ee:02  node1  running job 3 task 1 (attempt 2)  linux-x64  on     12s ago    \
             50% 1.00 GiB/2.00 GiB 200.0 MB/s\n"
        );
    }

    #[test]
    fn target_views_round_trip() {
        // The state is flattened into the view: its `env` must not collide
        // with the view's own fields, or the answer cannot be read back.
        for state in [
            TargetState::Waiting {
                env: "linux-x64".into(),
            },
            TargetState::RebootingTo {
                env: "linux-x64".into(),
                deadline: 5,
            },
            TargetState::Local,
        ] {
            let mut t = target(state);
            t.environment = "local".into();
            let text = serde_json::to_string(&t).unwrap();
            assert_eq!(
                serde_json::from_str::<TargetView>(&text).unwrap(),
                t,
                "{text}"
            );
        }
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
                    job: JobId(3),
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
            job: JobId(3),
            task: 1,
            error: "exit 1, expected 0".into(),
        });
        let s = render_target(&t, 100_000);
        assert!(s.contains("state      failed job 3 task 2\n"), "{s}");
        assert!(s.contains("error      exit 1, expected 0\n"), "{s}");
        assert!(s.contains("vars       rack=r12\n"), "{s}");
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
