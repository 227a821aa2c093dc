//! `rackcast-agent`: the small binary an automation environment runs on
//! every target. It links the agent and the disk writer, never the server.

use std::process::ExitCode;

use clap::Parser;
use rackcast_agent::cli::{self, AgentArgs};

/// The rackcast target agent: register with a deployment server, follow its
/// directives (scripts, captures, multicast restores, reboots), report.
#[derive(Debug, Parser)]
#[command(name = "rackcast-agent", version)]
struct Cli {
    #[command(flatten)]
    agent: AgentArgs,
}

fn main() -> ExitCode {
    cli::main(Cli::parse().agent)
}
