//! `rackcast`: the command-line front end of the rackcast imaging engine.

use clap::{Parser, Subcommand};
use rackcast_tools::cmd;

/// rackcast images whole racks of servers at once: capture a disk image once,
/// multicast it to every target, verify every byte.
#[derive(Debug, Parser)]
#[command(name = "rackcast", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the target agent: register with a deployment server, follow its
    /// directives (scripts, captures, multicast restores, reboots), report.
    /// The same as the `rackcast-agent` binary that environments carry.
    Agent(rackcast_agent::cli::AgentArgs),
    /// Run the demo: capture a sample disk, verify it, restore it to local
    /// targets and check every byte.
    Demo(cmd::demo::DemoArgs),
    /// Automation environments: build the kernel + initramfs a target boots
    /// to run the agent.
    #[command(subcommand)]
    Env(cmd::env::EnvCommand),
    /// Multicast an image to a rack (send) or receive it (recv).
    #[command(subcommand)]
    Cast(cmd::cast::CastCommand),
    /// Capture, inspect, verify, sign and restore disk images.
    #[command(subcommand)]
    Image(cmd::image::ImageCommand),
    /// Run the netboot front end alone: proxy-DHCP / DHCP, TFTP and HTTP boot.
    Netboot(cmd::netboot::NetbootArgs),
    /// The server's targets: list, show, add, release (a client of the server).
    #[command(subcommand)]
    Target(cmd::target::TargetCommand),
    /// Jobs on the server: submit, distribute, script, capture, list, show,
    /// retry, cancel, watch.
    #[command(subcommand)]
    Job(cmd::job::JobCommand),
    /// Run the deployment server: REST API, agent API, cast sessions, image
    /// library and (configured) netboot.
    Server(cmd::server::ServerArgs),
    /// Named operator tokens: create (admin or viewer), list, revoke.
    #[command(subcommand)]
    Token(cmd::token::TokenCommand),
    /// What operators did: token, action, path and result, oldest first.
    Audit(cmd::audit::AuditArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if prints_only(&cli.command) {
        // A reader that stops early (`rackcast image inspect X | head`)
        // ends a command that only prints, as it ends any Unix filter:
        // quietly, by SIGPIPE. Rust ignores SIGPIPE, and `println!` then
        // panics. Commands that serve or write disks keep it ignored and
        // see EPIPE as an error.
        let _ = sigpipe_default();
    }
    let result = match cli.command {
        Command::Agent(a) => rackcast_agent::cli::run(a),
        Command::Cast(c) => cmd::cast::run(c),
        Command::Demo(a) => cmd::demo::run(a),
        Command::Env(c) => cmd::env::run(c),
        Command::Image(c) => cmd::image::run(c),
        Command::Netboot(a) => cmd::netboot::run(a),
        Command::Target(c) => cmd::target::run(c),
        Command::Job(c) => cmd::job::run(c),
        Command::Server(a) => cmd::server::run(a),
        Command::Token(c) => cmd::token::run(c),
        Command::Audit(a) => cmd::audit::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Whether `c` only reads and prints (see `main`).
fn prints_only(c: &Command) -> bool {
    use cmd::image::ImageCommand as I;
    matches!(
        c,
        Command::Target(_)
            | Command::Job(_)
            | Command::Token(_)
            | Command::Audit(_)
            | Command::Image(I::Inspect(_) | I::Verify(_) | I::List(_))
    )
}

/// Restores SIGPIPE's default action (terminate).
fn sigpipe_default() -> nix::Result<()> {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: SIG_DFL installs no handler of ours, so nothing can run in
    // signal context; it is set once, before any thread starts.
    unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) }.map(drop)
}
