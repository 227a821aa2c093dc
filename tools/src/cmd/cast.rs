//! `rackcast cast send|recv`: one image to a whole rack over multicast.

use std::net::SocketAddrV4;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use rackcast_cast_net::{self as net, NetConfig, ReceiveLimits};
use rackcast_engine::cast::sink::ReadBack;
use rackcast_engine::cast::wire::symbol_size_for_mtu;
use rackcast_engine::cast::{
    ImageFrames, ReedSolomon, Sender, SenderConfig, SenderEvent, SessionKey, Verdict,
};
use rackcast_engine::image::{hex, ImageReader};
use rackcast_types::Interface;
use rackcast_writer::CastReceive;

use super::util::{human_bytes, parse_size};

/// `rackcast cast ...`
#[derive(Debug, Subcommand)]
pub enum CastCommand {
    /// Multicast an image to every receiver that joins.
    ///
    /// Starts when --min-receivers have joined or after --max-wait; ends when
    /// every receiver has written and verified the image, or at --deadline
    /// with a verdict per receiver. Stragglers never hold the group back.
    Send(SendArgs),
    /// Receive an image into a file or block device; exits 0 only when the
    /// target is written, flushed and verified.
    Recv(RecvArgs),
}

/// Options shared by both ends.
#[derive(Debug, Args)]
pub struct GroupArgs {
    /// Multicast group and port, e.g. 239.255.42.1:7400.
    #[arg(long)]
    pub group: SocketAddrV4,
    /// Interface to send on / join on (its IPv4 address and MTU are used).
    #[arg(long)]
    pub iface: String,
    /// File whose bytes key the packet MACs (any length; same on both ends).
    #[arg(long)]
    pub key_file: Option<PathBuf>,
}

/// Options of `rackcast cast send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// The image to send.
    pub img: PathBuf,
    #[command(flatten)]
    pub group: GroupArgs,
    /// Rate ceiling on the wire, bytes/s (suffixes K, M, G), e.g. 1G.
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    pub rate: u64,
    /// Start as soon as this many receivers have joined.
    #[arg(long, default_value_t = 1)]
    pub min_receivers: usize,
    /// ...or this many seconds after starting, whichever is first.
    #[arg(long, default_value_t = 30)]
    pub max_wait: u64,
    /// Give up after this many seconds, with a verdict per receiver.
    #[arg(long, default_value_t = 3600)]
    pub deadline: u64,
    /// Multicast TTL (1 keeps the stream on the local segment).
    #[arg(long, default_value_t = 1)]
    pub ttl: u32,
    /// Override the interface MTU used to size packets (never fragmented).
    #[arg(long)]
    pub mtu: Option<usize>,
}

/// Options of `rackcast cast recv`.
#[derive(Debug, Args)]
pub struct RecvArgs {
    /// Target: a file (created if missing) or a block device.
    pub dest: PathBuf,
    #[command(flatten)]
    pub group: GroupArgs,
    /// Only accept the image with this root (hex), e.g. from `image inspect`.
    #[arg(long)]
    pub root: Option<String>,
    /// Do not look for chunks already correct on the target.
    #[arg(long)]
    pub no_resume: bool,
    /// Read back after the final flush: off, a sample of chunks, or all
    /// (every chunk is checked against the index before it is written anyway).
    #[arg(long, value_enum, default_value = "sample")]
    pub verify: VerifyArg,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 3600)]
    pub timeout: u64,
    /// What to do with the blocks the image leaves out: keep, zero, discard.
    #[arg(long, value_enum, default_value = "keep")]
    pub unused: super::image::UnusedArg,
    /// On a target larger than the source: extend the last partition and
    /// grow its ext2/3/4 or XFS (as `image restore --grow`).
    #[arg(long)]
    pub grow: bool,
}

/// Read-back after the final flush.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum VerifyArg {
    /// No read-back.
    Off,
    /// About one chunk in sixteen, plus the first and last.
    Sample,
    /// Every chunk.
    Full,
}

/// Runs `rackcast cast ...`.
pub fn run(cmd: CastCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        CastCommand::Send(a) => send(&a),
        CastCommand::Recv(a) => recv(&a),
    }
}

fn session_key(g: &GroupArgs) -> anyhow::Result<SessionKey> {
    match &g.key_file {
        Some(p) => {
            let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            if bytes.len() < 16 {
                bail!(
                    "{}: a key file needs at least 16 bytes of secret",
                    p.display()
                );
            }
            Ok(SessionKey::from_secret(&bytes))
        }
        None => {
            eprintln!("warning: no --key-file: packets are checked for integrity but anyone on the segment could forge them");
            Ok(SessionKey::from_secret(g.group.to_string().as_bytes()))
        }
    }
}

/// A fresh session id; the engine wants one random per session.
fn random_u64() -> anyhow::Result<u64> {
    getrandom::u64().context("gathering OS randomness for the session id")
}

fn send(a: &SendArgs) -> anyhow::Result<ExitCode> {
    let reader =
        ImageReader::open(&a.img).with_context(|| format!("opening {}", a.img.display()))?;
    let iface = Interface::lookup(&a.group.iface)?;
    let (iface_addr, iface_mtu) = (iface.ipv4, iface.mtu as usize);
    // Receivers read into 64 KiB slots: `lo`'s 65536-byte MTU would make
    // every packet too big for them.
    let mtu = a.mtu.unwrap_or(iface_mtu).min(9000);
    let symbol = symbol_size_for_mtu(mtu);
    if symbol < 256 {
        bail!("MTU {mtu} is too small");
    }
    let key = session_key(&a.group)?;
    let index = reader.index().clone();
    let mut cfg = SenderConfig::new(random_u64()?, key, symbol);
    cfg.max_rate = a.rate;
    cfg.min_rate = (a.rate / 100).max(1_000_000).min(a.rate);
    cfg.min_receivers = a.min_receivers;
    cfg.max_wait = Duration::from_secs(a.max_wait);
    cfg.deadline = Duration::from_secs(a.deadline);
    let netcfg = NetConfig {
        group: a.group.group,
        iface_addr,
        ttl: a.ttl,
        buffer: 8 << 20,
    };
    let sock = net::sender_socket(&netcfg)?;
    let stored = index.stored_bytes();
    let image_size = index.meta.source_size;
    let now = Instant::now();
    let mut sender = Sender::new(cfg, Arc::new(ReedSolomon), index, ImageFrames(reader), now);
    eprintln!(
        "sending {} (root {}) to {} on {} ({iface_addr}, MTU {mtu}, {symbol}-byte symbols), {} of frames",
        a.img.display(),
        &hex(&sender.root())[..16],
        a.group.group,
        a.group.iface,
        human_bytes(stored)
    );
    eprintln!(
        "waiting for {} receiver(s), at most {} s",
        a.min_receivers, a.max_wait
    );
    let start = Instant::now();
    let mut last_print = start;
    let mut verdicts = Vec::new();
    let mut stragglers = 0;
    net::run_sender(&mut sender, &sock, &netcfg, &mut |s, ev| match ev {
        Some(SenderEvent::Joined { receiver, addr }) => {
            eprintln!("joined     receiver {receiver:016x} from {addr}")
        }
        Some(SenderEvent::Started { receivers }) => {
            eprintln!("started    with {receivers} receiver(s)")
        }
        Some(SenderEvent::Straggler { receiver, loss }) => {
            stragglers += 1;
            eprintln!(
                "straggler  receiver {receiver:016x} ({:.0}% loss): no longer sets the pace",
                loss * 100.0
            )
        }
        Some(SenderEvent::ReceiverDone { receiver }) => {
            eprintln!("done       receiver {receiver:016x}")
        }
        Some(SenderEvent::Finished { verdicts: v }) => verdicts = v.clone(),
        None => {
            if last_print.elapsed() >= Duration::from_secs(1) {
                last_print = Instant::now();
                let st = s.stats();
                eprintln!(
                    "progress   {} sent, {:.1} MB/s now, {} repair symbols, {}/{} receivers done",
                    human_bytes(st.bytes),
                    s.rate() as f64 / 1e6,
                    st.repair_symbols,
                    s.receivers_done(),
                    s.receiver_count()
                );
            }
        }
    })?;
    let st = sender.stats();
    let secs = start.elapsed().as_secs_f64();
    let ok = verdicts.iter().filter(|(_, v)| *v == Verdict::Done).count();
    println!("image       {}", a.img.display());
    println!("root        {}", hex(&sender.root()));
    println!("frames      {}", human_bytes(stored));
    println!(
        "sent        {} in {} packets ({} source, {} repair symbols; repair overhead {:.1}%)",
        human_bytes(st.bytes),
        st.packets,
        st.source_symbols,
        st.repair_symbols,
        st.repair_symbols as f64 * 100.0 / st.source_symbols.max(1) as f64
    );
    println!(
        "time        {secs:.2} s, {:.1} MB/s of image delivered (source bytes per second)",
        image_size as f64 / secs / 1e6
    );
    println!("stragglers  {stragglers}");
    for (id, v) in &verdicts {
        println!("receiver    {id:016x} {v:?}");
    }
    println!("result      {ok}/{} receivers done", verdicts.len());
    Ok(if ok == verdicts.len() && ok > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn recv(a: &RecvArgs) -> anyhow::Result<ExitCode> {
    let iface_addr = Interface::lookup(&a.group.iface)?.ipv4;
    let key = session_key(&a.group)?;
    // The same target on the same machine is the same receiver, across
    // restarts: the sender keeps counting it instead of waiting for a ghost.
    let machine = std::fs::read("/etc/machine-id").unwrap_or_default();
    let dest = std::fs::canonicalize(&a.dest).unwrap_or_else(|_| a.dest.clone());
    let id_hash = blake3::hash(
        &[
            machine.as_slice(),
            dest.as_os_str().as_encoded_bytes(),
            a.group.iface.as_bytes(),
        ]
        .concat(),
    );
    let id = u64::from_le_bytes(id_hash.as_bytes()[..8].try_into().expect("8 bytes"));
    let expected_root = match &a.root {
        Some(r) => Some(
            rackcast_engine::image::from_hex(r)
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .context("--root must be 64 hex digits")?,
        ),
        None => None,
    };
    let read_back = match a.verify {
        VerifyArg::Off => ReadBack::Off,
        VerifyArg::Sample => ReadBack::Sample,
        VerifyArg::Full => ReadBack::Full,
    };
    let spec = CastReceive {
        dest: a.dest.clone(),
        group: a.group.group,
        iface_addr,
        key,
        receiver: id,
        session: None,
        expected_root,
        resume: !a.no_resume,
        read_back,
        limits: ReceiveLimits::timeout(Duration::from_secs(a.timeout)),
        writer: rackcast_writer::WriterConfig::default(),
        layout: rackcast_writer::LayoutOptions {
            unused: a.unused.into(),
            grow: a.grow,
            reserve: 0,
        },
    };
    eprintln!(
        "receiver {id:016x} joined {} on {} ({iface_addr}), writing {}",
        a.group.group,
        a.group.iface,
        a.dest.display()
    );
    let start = Instant::now();
    let mut last = start;
    let result = rackcast_writer::receive(&spec, &mut |r| {
        if last.elapsed() >= Duration::from_secs(1) {
            last = Instant::now();
            let s = r.stats();
            eprintln!(
                "progress   {}/{} chunks, {} received, loss {:.1}%, {} decoded by FEC, {} dropped",
                r.chunks_done(),
                r.chunks_needed_total(),
                human_bytes(s.bytes),
                r.loss_ppm() as f64 / 1e4,
                s.decoded,
                s.bad_mac + s.malformed + s.wrong_session + s.wrong_source
            );
        }
        ControlFlow::Continue(())
    });
    let secs = start.elapsed().as_secs_f64();
    match result {
        Ok(done) => {
            let (s, sink) = (&done.rx, &done.sink);
            let root = hex(&done.root);
            println!("target      {}", a.dest.display());
            println!("root        {root}");
            println!(
                "received    {} in {} packets, {} lost ({:.2}%), {} chunks rebuilt by FEC",
                human_bytes(s.bytes),
                s.packets,
                s.lost,
                s.lost as f64 * 100.0 / (s.packets + s.lost).max(1) as f64,
                s.decoded
            );
            println!(
                "dropped     {} bad MAC, {} other session, {} malformed, {} from another address, {} unechoed announces",
                s.bad_mac, s.wrong_session, s.malformed, s.wrong_source, s.unechoed
            );
            if s.evicted + s.over_budget > 0 {
                println!(
                    "memory      {} partial chunks evicted, {} symbols over the budget",
                    s.evicted, s.over_budget
                );
            }
            println!(
                "written     {} ({} chunks already on the target)",
                human_bytes(sink.bytes_written),
                sink.resumed_chunks
            );
            println!("time        {secs:.2} s");
            println!("verified    ok ({} chunks read back)", sink.verified_chunks);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            Err(anyhow::Error::new(e).context(format!("receiving into {}", a.dest.display())))
        }
    }
}
