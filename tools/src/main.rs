//! `rackcast`: the command-line front end of the rackcast imaging engine.

mod cmd;

use clap::{Parser, Subcommand};

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
    /// Run the demo: capture a sample disk, verify it, restore it to local
    /// targets and check every byte.
    Demo(cmd::demo::DemoArgs),
    /// Multicast an image to a rack (send) or receive it (recv).
    #[command(subcommand)]
    Cast(cmd::cast::CastCommand),
    /// Capture, inspect, verify, sign and restore disk images.
    #[command(subcommand)]
    Image(cmd::image::ImageCommand),
    /// Run the netboot front end alone: proxy-DHCP / DHCP, TFTP and HTTP boot.
    Netboot(cmd::netboot::NetbootArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Cast(c) => cmd::cast::run(c),
        Command::Demo(a) => cmd::demo::run(a),
        Command::Image(c) => cmd::image::run(c),
        Command::Netboot(a) => cmd::netboot::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
