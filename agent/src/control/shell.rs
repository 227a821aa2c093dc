//! The thin driver of the agent's [`Machine`]: it performs the machine's
//! calls over HTTP, runs task workers on their threads, carries out
//! reboots, and waits for whichever comes first of a worker's report and
//! the machine's next deadline. Every decision is the machine's.

use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;

use super::backoff::Backoff;
use super::client::Client;
use super::machine::{Action, Answer, Call, Machine, MachineConfig};
use super::tasks::{TaskContext, TaskHandle};
use super::{boot, inventory, AgentConfig, Outcome};
use crate::error::{AgentError, Result};
use rackcast_client::CallError;
use rackcast_engine::sched::api::{RegisterRequest, Registered};

/// Runs the agent until the machine is done.
pub(super) fn drive(cfg: AgentConfig) -> Result<Outcome> {
    let tag = format!("agent {}", cfg.mac);
    let say = |msg: &str| tracing::info!("{tag}: {msg}");
    let killed = super::script::reap_orphans(&cfg.work_dir);
    if killed > 0 {
        say(&format!(
            "ended {killed} process(es) of a script an earlier agent run left running"
        ));
    }
    let client = Client::new(&cfg.server, cfg.ca.as_deref())?
        .with_session_file(cfg.work_dir.join("session.token"));
    let mut m = Machine::new(
        MachineConfig {
            mac: cfg.mac,
            env: cfg.env.clone(),
            server: cfg.server.clone(),
            poll_wait: cfg.poll_wait,
            give_up: cfg.give_up,
            on_reboot: cfg.on_reboot,
        },
        inventory::collect(cfg.disk.as_deref()),
        Backoff::from_entropy(),
        Instant::now(),
    );
    let mut worker: Option<TaskHandle> = None;
    loop {
        while let Some(a) = m.poll_action() {
            match a {
                Action::Say(line) => say(&line),
                Action::Call(c) => {
                    let answer = perform(&client, &cfg.enroll_token, &c);
                    m.handle_answer(Instant::now(), answer);
                }
                Action::StartTask {
                    task,
                    work,
                    timeout,
                } => {
                    let ctx = TaskContext {
                        client: client.clone(),
                        work_dir: cfg.work_dir.clone(),
                        default_disk: cfg.disk.clone(),
                        iface_addr: cfg.iface_addr,
                        stall: cfg.stall,
                        give_up: cfg.give_up,
                        tag: tag.clone(),
                    };
                    worker = Some(TaskHandle::spawn(ctx, task, work, timeout));
                }
                Action::StopTask => {
                    if let Some(w) = worker.take() {
                        w.stop_and_join();
                    }
                }
                Action::JoinTask => {
                    if let Some(w) = worker.take() {
                        w.join();
                    }
                }
                Action::RefreshInventory => {
                    m.set_inventory(inventory::collect(cfg.disk.as_deref()))
                }
                Action::SystemReboot { env, outcome } => {
                    if outcome != Outcome::BootLocal && boot::is_uefi() {
                        match boot::set_network_boot_next(Some(&cfg.mac.to_string())) {
                            Ok(e) => say(&format!(
                                "one-time network boot set: Boot{:04X} {}",
                                e.num, e.label
                            )),
                            // The firmware's boot order may still reach the
                            // network; the server's deadline catches it if not.
                            Err(e) => say(&format!("warning: {e}")),
                        }
                    }
                    say(&format!(
                        "rebooting into {env}: {}",
                        cfg.reboot_command.join(" ")
                    ));
                    boot::reboot(&cfg.reboot_command)?;
                    return Ok(outcome);
                }
                Action::Finish(o) => return Ok(o),
                Action::Fail(e) => return Err(e),
            }
        }
        wait(&mut m, worker.as_ref());
    }
}

/// Waits for a worker's report or the machine's next deadline, and hands
/// the machine what happened.
fn wait(m: &mut Machine, worker: Option<&TaskHandle>) {
    let until = m.poll_timeout();
    let left = |now: Instant| until.map(|t| t.saturating_duration_since(now));
    match worker.filter(|_| m.accepts_reports()) {
        Some(w) => {
            // Long enough to stay responsive to reports; bounded so a lost
            // deadline still wakes the loop.
            let timeout = left(Instant::now()).unwrap_or(Duration::from_secs(1));
            match w.reports().recv_timeout(timeout) {
                Ok(r) => {
                    let now = Instant::now();
                    m.handle_task_report(now, r);
                    // A burst is delivered as one batch.
                    for r in w.reports().try_iter() {
                        m.handle_task_report(now, r);
                    }
                }
                Err(RecvTimeoutError::Timeout) => m.handle_timeout(Instant::now()),
                Err(RecvTimeoutError::Disconnected) => {
                    // The worker is gone (its last report is in, or it
                    // died): nothing more comes from it, so sleep to the
                    // deadline rather than spin on the closed channel.
                    m.handle_task_gone(Instant::now());
                    if let Some(d) = m
                        .poll_timeout()
                        .map(|t| t.saturating_duration_since(Instant::now()))
                    {
                        std::thread::sleep(d);
                    }
                    m.handle_timeout(Instant::now());
                }
            }
        }
        None => {
            if let Some(d) = left(Instant::now()) {
                std::thread::sleep(d);
            }
            m.handle_timeout(Instant::now());
        }
    }
}

/// Registers: first with the session token this agent saved before (a
/// restart in the same boot, whose boot token is spent), then with the
/// configured token. The session token answered is saved again.
fn register(client: &Client, token: &str, req: &RegisterRequest) -> Result<Registered, AgentError> {
    client.forget_token();
    if let Some(saved) = client.saved_session() {
        match client.register(&saved, req) {
            Ok(r) => return Ok(r),
            Err(AgentError::Api(CallError::Status {
                status: 401 | 409, ..
            })) => {}
            Err(e) => return Err(e),
        }
    }
    client.register(token, req)
}

/// One call to the agent API.
fn perform(client: &Client, enroll_token: &str, call: &Call) -> Result<Answer, AgentError> {
    match call {
        Call::Register(req) => register(client, enroll_token, req).map(Answer::Registered),
        Call::Poll(req) => client.poll(req).map(Answer::Directive),
        Call::Report(req) => client.report(req).map(Answer::Ack),
    }
}
