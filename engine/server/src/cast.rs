//! Cast senders: one thread per running session, driving the sans-IO
//! sender over a real multicast socket, reporting back to the scheduler
//! when the session ends.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Shared;
use rackcast_cast_net::{self as net, NetConfig};
use rackcast_engine::cast::wire::symbol_size_for_mtu;
use rackcast_engine::cast::{
    ImageFrames, ReedSolomon, Sender, SenderConfig, SenderEvent, SessionKey, Verdict,
};
use rackcast_engine::image::{from_hex, hex, ImageReader};
use rackcast_engine::sched::CastSession;
use rackcast_engine::sched::ErrorChain;

/// Starts `session`'s sender on its own thread.
pub(crate) fn spawn_sender(
    shared: Arc<Shared>,
    session: CastSession,
    image: PathBuf,
    receivers: usize,
    rate: Option<u64>,
) {
    let handle = tokio::runtime::Handle::current();
    let id = session.id;
    // Each receiver the sender sees finish is recorded as it happens: an
    // agent's report of success is taken only after that.
    let (confirm, mut confirmed) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let recorder = shared.clone();
    handle.spawn(async move {
        while let Some(rid) = confirmed.recv().await {
            let r = recorder.mutate(|s, _| s.receiver_confirmed(id, rid)).await;
            if let Err(e) = r {
                tracing::error!("cast session {id}: recording receiver {rid} done: {}", e.1);
            }
        }
    });
    let spawned = std::thread::Builder::new()
        .name(format!("cast-{id}"))
        .spawn(move || {
            let sent = send(&shared, &session, &image, receivers, rate, &confirm);
            drop(confirm);
            let (done, detail) = match sent {
                Ok(r) => r,
                Err(e) => {
                    let e = ErrorChain(&e).to_string();
                    tracing::error!("cast session {id}: {e}");
                    (Vec::new(), serde_json::json!({"error": e}))
                }
            };
            let r =
                handle.block_on(shared.mutate(|s, now| s.sender_finished(now, id, &done, detail)));
            if let Err(e) = r {
                tracing::error!("cast session {id}: recording its end: {}", e.1);
            }
        });
    if let Err(e) = spawned {
        tracing::error!("cast session {id}: cannot start its thread: {e}");
    }
}

/// Why a session's sender could not run.
#[derive(Debug, thiserror::Error)]
enum SendError {
    /// The image would not open.
    #[error("opening {}", path.display())]
    Image {
        path: std::path::PathBuf,
        #[source]
        source: rackcast_engine::image::ImageError,
    },
    /// The file is not the image the session pinned.
    #[error("{} has root {got}, but the session sends root {want}: refusing to send it", path.display())]
    Root {
        path: std::path::PathBuf,
        want: String,
        got: String,
    },
    /// The session's key is not hex (a corrupt store row).
    #[error("the session key is not hex")]
    Key,
    /// The session's group does not parse (a corrupt store row).
    #[error("group {group}")]
    Group {
        group: String,
        #[source]
        source: std::net::AddrParseError,
    },
    /// The sender's socket or protocol failed.
    #[error(transparent)]
    Cast(#[from] rackcast_engine::cast::CastError),
}

fn send(
    shared: &Shared,
    s: &CastSession,
    image: &std::path::Path,
    receivers: usize,
    rate: Option<u64>,
    confirm: &tokio::sync::mpsc::UnboundedSender<u64>,
) -> Result<(Vec<u64>, serde_json::Value), SendError> {
    let reader = ImageReader::open(image).map_err(|source| SendError::Image {
        path: image.to_path_buf(),
        source,
    })?;
    let got = hex(&reader.root());
    if got != s.root {
        return Err(SendError::Root {
            path: image.to_path_buf(),
            want: s.root.clone(),
            got,
        });
    }
    let key = from_hex(&s.key).ok_or(SendError::Key)?;
    let group = s.group.parse().map_err(|source| SendError::Group {
        group: s.group.clone(),
        source,
    })?;
    let mtu = shared.cfg.cast_mtu.unwrap_or(1500).clamp(576, 9000);
    let symbol = symbol_size_for_mtu(mtu);
    let mut cfg = SenderConfig::new(s.wire_session, SessionKey::from_secret(&key), symbol);
    cfg.max_rate = rate.unwrap_or(shared.cfg.cast_rate);
    cfg.min_rate = (cfg.max_rate / 100).clamp(1, 1_000_000);
    cfg.min_receivers = receivers.max(1);
    // Every member was told already; they need only fetch the directive and bind.
    cfg.max_wait = Duration::from_secs(20);
    cfg.deadline = Duration::from_secs(4 * 3600);
    let netcfg = NetConfig {
        group,
        iface_addr: shared.cfg.cast_addr,
        ttl: 1,
        buffer: 8 << 20,
    };
    let sock = net::sender_socket(&netcfg)?;
    let index = reader.index().clone();
    let image_size = index.meta.source_size;
    let mut sender = Sender::new(
        cfg,
        Arc::new(ReedSolomon),
        index,
        ImageFrames(reader),
        Instant::now(),
    );
    tracing::info!(
        "cast session {} ({}) to {} for {receivers} target(s)",
        s.id,
        s.image,
        s.group
    );
    let start = Instant::now();
    let mut verdicts = Vec::new();
    let m = &shared.metrics.cast;
    m.active.inc();
    // Counters move by what changed since the last look (every ~100 ms).
    let mut seen = rackcast_engine::cast::SenderStats::default();
    let mut count = |st: &rackcast_engine::cast::SenderStats| {
        m.bytes.inc_by(st.bytes.saturating_sub(seen.bytes));
        m.packets.inc_by(st.packets.saturating_sub(seen.packets));
        m.source_symbols
            .inc_by(st.source_symbols.saturating_sub(seen.source_symbols));
        m.repair_symbols
            .inc_by(st.repair_symbols.saturating_sub(seen.repair_symbols));
        m.statuses.inc_by(st.statuses.saturating_sub(seen.statuses));
        seen = st.clone();
    };
    let ran = net::run_sender(&mut sender, &sock, &netcfg, &mut |snd, ev| match ev {
        Some(SenderEvent::Finished { verdicts: v }) => verdicts = v.clone(),
        Some(SenderEvent::ReceiverDone { receiver }) => {
            m.receivers_done.inc();
            let _ = confirm.send(*receiver);
        }
        Some(_) => {}
        None => {
            m.loss.set(snd.mean_loss());
            count(snd.stats());
            shared.metrics.set_live(s.id.0, live(snd));
        }
    });
    count(sender.stats());
    shared.metrics.set_live(s.id.0, live(&sender));
    m.active.dec();
    ran?;
    let st = sender.stats();
    let done: Vec<u64> = verdicts
        .iter()
        .filter(|(_, v)| *v == Verdict::Done)
        .map(|(id, _)| *id)
        .collect();
    let secs = start.elapsed().as_secs_f64();
    Ok((
        done,
        serde_json::json!({
            "image_bytes": image_size,
            "wire_bytes": st.bytes,
            "packets": st.packets,
            "source_symbols": st.source_symbols,
            "repair_symbols": st.repair_symbols,
            "repair_overhead": st.repair_symbols as f64 / st.source_symbols.max(1) as f64,
            "seconds": secs,
            "receivers": verdicts.len(),
        }),
    ))
}

/// What the dashboard shows of a running sender.
fn live<S: rackcast_engine::cast::FrameSource>(
    snd: &Sender<S>,
) -> rackcast_engine::sched::api::CastLive {
    let st = snd.stats();
    rackcast_engine::sched::api::CastLive {
        joined: snd.receiver_count() as u64,
        done: snd.receivers_done() as u64,
        rate: snd.rate(),
        loss: snd.mean_loss(),
        repair_overhead: st.repair_symbols as f64 / st.source_symbols.max(1) as f64,
        stragglers: snd.stragglers() as u64,
    }
}
