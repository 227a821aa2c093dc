//! The technician at the console: the preboot menu a machine with no work
//! opens with a key while it network boots, and what its choices do.
//!
//! netboot's HTTP server takes `GET /console/<mac>/<action>` (only from
//! the machine with that MAC) and hands it to the policy
//! ([`crate::SchedPolicy`]), which queues it here. Choices are answered one
//! at a time, so a stranger's flood costs one task, not the server.
//!
//! Reading (`menu`, `info`) needs nothing. Anything that writes a disk or
//! registers a machine (`register`, `capture`, `deploy`, `shell`) needs
//! the console PIN or an admin operator's token, typed at iPXE's `login`
//! and sent as Basic authorization ([`gate`]). Every such attempt, right,
//! wrong or locked out, goes to the audit log with origin `console MAC`;
//! a wrong one changes nothing else. A choice becomes an ordinary job
//! (origin `console MAC by WHO`) and the machine then boots what the
//! scheduler has for it, exactly as a scheduled one. The maintenance shell
//! is not a job: it boots the default environment with a root shell on
//! the console and no agent.

use std::sync::Arc;

use rackcast_engine::sched::api::{
    AuditEntry, CastPolicy, JobSpec, TargetState, TaskKind, TaskSpec,
};
use rackcast_engine::sched::MacAddr;
use rackcast_netboot::{BootAction, ConsoleReply, ConsoleRequest};
use tokio::sync::{mpsc, oneshot};

use super::{now_ms, Shared};

pub(crate) mod gate;
pub(crate) mod pin;
pub(crate) mod script;

pub(crate) use gate::Gate;

/// A console request waiting for its answer.
#[derive(Debug)]
pub(crate) struct Call {
    pub(crate) req: ConsoleRequest,
    pub(crate) reply: oneshot::Sender<ConsoleReply>,
}

/// Answers console requests until the policy is dropped.
pub(crate) async fn serve(sh: Arc<Shared>, mut calls: mpsc::Receiver<Call>) {
    while let Some(call) = calls.recv().await {
        let answer = answer(&sh, &call.req).await;
        let _ = call.reply.send(answer);
    }
}

/// The choices that change something, and so need credentials.
const GUARDED: [&str; 4] = ["register", "capture", "deploy", "shell"];

async fn answer(sh: &Arc<Shared>, req: &ConsoleRequest) -> ConsoleReply {
    let arch = req.arch.raw();
    let script = match req.action.as_str() {
        "menu" => menu(sh, req).await,
        "info" => info(sh, req.mac, arch).await,
        a if GUARDED.contains(&a) => match &req.login {
            None => return ConsoleReply::Login,
            Some((user, secret)) => guarded(sh, req, user, secret).await,
        },
        other => script::back_to_menu(&format!("no such choice: {other}"), arch),
    };
    ConsoleReply::Script(script)
}

/// The script that boots `mac`'s disk, as the policy would answer it.
fn local_script(req: &ConsoleRequest) -> String {
    rackcast_netboot::policy::ipxe_script(
        &BootAction::LocalDisk,
        req.arch,
        "{server}",
        "{http}",
        req.mac,
    )
    .unwrap_or_else(|| "#!ipxe\nexit\n".into())
}

async fn menu(sh: &Arc<Shared>, req: &ConsoleRequest) -> String {
    let (name, state, held, images) = sh
        .read(|i| {
            let t = i.sched.target(req.mac);
            let images = i
                .images
                .values()
                .map(|v| script::Offer {
                    name: v.name.clone(),
                    bytes: v.source_size,
                    signed: v.signed,
                })
                .collect();
            (
                t.map(|t| t.name.clone()).unwrap_or_default(),
                t.map_or_else(|| "not enrolled".to_string(), |t| state_words(&t.state)),
                t.and_then(|t| match &t.state {
                    TargetState::Failed { job, task, error } => {
                        Some(format!("job {job} task {} failed: {error}", task + 1))
                    }
                    _ => None,
                }),
                images,
            )
        })
        .await;
    script::menu(&script::MenuView {
        name,
        state,
        held,
        images,
        arch: req.arch.raw(),
        local: local_script(req),
    })
}

fn state_words(s: &TargetState) -> String {
    match s {
        TargetState::Unknown => "enrolled, never registered".into(),
        TargetState::Waiting { env } => format!("waiting in {env}"),
        TargetState::RebootingTo { env, .. } => format!("rebooting into {env}"),
        TargetState::Running { job, task, .. } => format!("running job {job} task {}", task + 1),
        TargetState::Failed { .. } => "failed, held".into(),
        TargetState::Local => "no work: boots its disk".into(),
    }
}

async fn info(sh: &Arc<Shared>, mac: MacAddr, arch: u16) -> String {
    let known = sh
        .read(|i| {
            let Some(t) = i.sched.target(mac) else {
                return Vec::new();
            };
            let inv = &t.inventory;
            let mut lines = Vec::new();
            if inv.cpus > 0 || inv.memory > 0 {
                lines.push(format!(
                    "{} CPUs ({}), {} MiB memory",
                    inv.cpus,
                    inv.cpu,
                    inv.memory >> 20
                ));
            }
            for d in &inv.disks {
                lines.push(format!(
                    "disk {} {} MiB {} {}",
                    d.path,
                    d.size >> 20,
                    d.model,
                    d.serial
                ));
            }
            for n in &inv.nics {
                lines.push(format!(
                    "nic {}",
                    serde_json::to_string(n).unwrap_or_default()
                ));
            }
            lines
        })
        .await;
    script::info(arch, &known)
}

/// A choice that needs credentials: checked, audited, then done.
async fn guarded(sh: &Arc<Shared>, req: &ConsoleRequest, user: &str, secret: &str) -> String {
    let arch = req.arch.raw();
    let now = now_ms();
    let verdict = {
        let mut g = sh.console.lock().unwrap_or_else(|e| e.into_inner());
        g.check(now, req.mac, user, secret, |t| sh.tokens.caller(t))
    };
    let (who, outcome) = match verdict {
        gate::Verdict::Allowed(who) => {
            let done = act(sh, req, &who).await;
            (who, done)
        }
        gate::Verdict::Wrong => (
            claimed(user),
            Err((
                403,
                "wrong PIN or credentials: nothing was changed".to_string(),
            )),
        ),
        gate::Verdict::Locked { wait_ms } => (
            claimed(user),
            Err((
                429,
                format!(
                    "too many wrong PINs: the console is locked for {} s",
                    wait_ms.div_ceil(1000)
                ),
            )),
        ),
    };
    let entry = AuditEntry {
        seq: 0,
        at: now,
        token: who,
        origin: format!("console {}", req.mac),
        action: format!("console {}", req.action),
        path: format!("/console/{}/{}", req.mac, req.action),
        status: outcome.as_ref().map_or_else(|e| e.0, |_| 200),
    };
    if let Err(e) = sh.store.append_audit(&entry).await {
        tracing::error!("audit log: {e} (lost: {} {})", entry.token, entry.action);
    }
    match outcome {
        Ok(script) => script,
        Err((_, msg)) => script::back_to_menu(&msg, arch),
    }
}

/// The name a refused attempt is audited under: what was typed as the
/// user (bounded), never the secret.
fn claimed(user: &str) -> String {
    if user.is_empty() {
        "-".into()
    } else {
        format!("{} (refused)", script::text(user, 64))
    }
}

/// Does an authorised choice: the script that follows, or (status, why).
async fn act(sh: &Arc<Shared>, req: &ConsoleRequest, who: &str) -> Result<String, (u16, String)> {
    let arch = req.arch.raw();
    let mac = req.mac;
    let origin = format!("console {mac} by {who}");
    let (job_name, name, kind) = match req.action.as_str() {
        "shell" => return shell(sh, mac).await,
        "register" => {
            let name = req.param("name").unwrap_or("").trim().to_string();
            if !name.is_empty() {
                named(&name, "a name")?;
            }
            let kind = TaskKind::Script {
                script: "echo registered from its console\n".into(),
                interpreter: None,
                expect_exit: 0,
            };
            (format!("register {name}"), name, kind)
        }
        "capture" => {
            let image = req.param("image").unwrap_or("").trim().to_string();
            // Checked before a stranger is enrolled for it.
            named(&image, "an image name")?;
            let kind = TaskKind::Create {
                image: image.clone(),
                disk: None,
            };
            (format!("capture {image}"), String::new(), kind)
        }
        "deploy" => {
            // The menu's labels are `i:NAME`.
            let image = req.param("image").unwrap_or("");
            let image = image.strip_prefix("i:").unwrap_or(image).to_string();
            if !sh.read(|i| i.images.contains_key(&image)).await {
                let image = script::text(&image, 64);
                return Err((422, format!("refused: no image {image:?} in the library")));
            }
            let kind = TaskKind::Distribute {
                image: image.clone(),
                disk: None,
                verify: Default::default(),
                unused: Default::default(),
                grow: false,
                cloud_init: None,
            };
            (format!("deploy {image}"), String::new(), kind)
        }
        other => return Err((404, format!("no such choice: {other}"))),
    };
    let spec = JobSpec {
        name: job_name.trim().to_string(),
        targets: vec![mac.to_string()],
        cast: CastPolicy::default(),
        tasks: vec![TaskSpec {
            kind,
            env: None,
            timeout: None,
            retries: 0,
        }],
        origin: Some(origin),
    };
    let submitted = sh
        .mutate(|s, now| {
            // Enrolled on the way: a stranger registers by being named,
            // and captures or deploys under its MAC.
            if s.target(mac).is_none() || !name.is_empty() {
                s.add_target(now, mac, &name)?;
            }
            s.submit(now, spec)
        })
        .await;
    match submitted {
        Ok(Ok(job)) => Ok(script::then_boot(
            &format!("job {job} ({job_name}) started; booting its environment"),
            arch,
        )),
        Ok(Err(e)) => Err((422, format!("refused: {e}"))),
        Err(e) => Err((e.0.as_u16(), e.1)),
    }
}

/// `Ok` when `value` is a valid name (library and target names share the
/// rule), else the refusal naming `what` it should have been.
fn named(value: &str, what: &str) -> Result<(), (u16, String)> {
    if rackcast_engine::sched::valid_name(value) {
        return Ok(());
    }
    let value = script::text(value, 64);
    Err((
        422,
        format!("refused: {value:?} is not {what}: use letters, digits, '.', '_' or '-'"),
    ))
}

/// The maintenance shell: the default environment, a root shell on the
/// console, no agent and no boot token.
async fn shell(sh: &Arc<Shared>, mac: MacAddr) -> Result<String, (u16, String)> {
    let name = &sh.cfg.default_env;
    let env = sh.read(|i| i.sched.environment(name).cloned()).await;
    env.and_then(|env| sh.policy.shell_script(&env, mac))
        .ok_or_else(|| {
            (
                422,
                format!("environment {name} has no kernel and initrd to boot"),
            )
        })
}
