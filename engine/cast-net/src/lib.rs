//! The socket shells: one driver thread per endpoint moves datagrams between
//! a UDP socket and the sans-IO [`Sender`] / [`Receiver`].
//!
//! - Batched I/O through `quinn-udp`: UDP GSO on send (one syscall carries
//!   up to 64 same-size packets) and GRO / `recvmmsg` on receive.
//! - Large socket buffers, forced past `net.core.[rw]mem_max` as root
//!   (SO_RCVBUFFORCE / SO_SNDBUFFORCE: inside a network namespace the sysctl
//!   cannot be raised).
//! - No busy waiting: the thread sleeps in `poll(2)` until a datagram arrives
//!   or the state machine's next deadline.

use std::io::IoSliceMut;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::ops::ControlFlow;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{setsockopt, sockopt};
use quinn_udp::{RecvMeta, Transmit as UdpTransmit, UdpSockRef, UdpSocketState};
use socket2::{Domain, Protocol, Socket, Type};

use rackcast_engine::cast::receiver::{Receiver, ReceiverEvent, MAX_CANDIDATES};
use rackcast_engine::cast::sender::{FrameSource, Sender, SenderEvent};
use rackcast_engine::cast::sink::ChunkSink;
use rackcast_engine::cast::CastError;

/// Where a session runs.
#[derive(Debug, Clone, Copy)]
pub struct NetConfig {
    /// Multicast group and port.
    pub group: SocketAddrV4,
    /// Address of the interface to send and join on.
    pub iface_addr: Ipv4Addr,
    /// Multicast TTL (1 keeps packets on the segment).
    pub ttl: u32,
    /// Socket buffer size to ask for.
    pub buffer: usize,
}

fn net_err(what: &str) -> impl Fn(std::io::Error) -> CastError + '_ {
    move |e| CastError::net(what, e)
}

fn force_buffers(sock: &Socket, size: usize) {
    // Best effort: as root the FORCE variants pass the sysctl ceiling; as a
    // user the plain ones are clamped to it.
    if setsockopt(sock, sockopt::RcvBufForce, &size).is_err() {
        let _ = sock.set_recv_buffer_size(size);
    }
    if setsockopt(sock, sockopt::SndBufForce, &size).is_err() {
        let _ = sock.set_send_buffer_size(size);
    }
}

/// Opens the sender's socket: bound to the interface, multicast out of it.
pub fn sender_socket(net: &NetConfig) -> Result<UdpSocket, CastError> {
    let s =
        Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(net_err("socket"))?;
    force_buffers(&s, net.buffer);
    s.bind(&SocketAddr::from((net.iface_addr, 0)).into())
        .map_err(net_err("binding the sender socket"))?;
    s.set_multicast_if_v4(&net.iface_addr)
        .map_err(net_err("IP_MULTICAST_IF"))?;
    s.set_multicast_ttl_v4(net.ttl)
        .map_err(net_err("IP_MULTICAST_TTL"))?;
    s.set_multicast_loop_v4(true)
        .map_err(net_err("IP_MULTICAST_LOOP"))?;
    Ok(s.into())
}

/// Opens a receiver's socket: bound to the group port, joined on the interface.
pub fn receiver_socket(net: &NetConfig) -> Result<UdpSocket, CastError> {
    let s =
        Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(net_err("socket"))?;
    s.set_reuse_address(true).map_err(net_err("SO_REUSEADDR"))?;
    s.set_reuse_port(true).map_err(net_err("SO_REUSEPORT"))?;
    force_buffers(&s, net.buffer);
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, net.group.port())).into())
        .map_err(net_err("binding the group port"))?;
    s.join_multicast_v4(net.group.ip(), &net.iface_addr)
        .map_err(net_err("joining the multicast group"))?;
    // Only what this socket joined, on the interface it joined on: by
    // default Linux hands a socket every group any socket of the host
    // joined on any interface, so a receiver joined where the session is
    // not heard (and about to fall back to unicast) would still hear it
    // through a neighbour's membership on another interface.
    s.set_multicast_all_v4(false)
        .map_err(net_err("IP_MULTICAST_ALL"))?;
    // Multicast sent from this host loops back to it (a receiver beside its
    // sender, as in the demo and the tests). Best effort: it is the
    // kernel's default.
    let _ = setsockopt(&s, sockopt::IpMulticastLoop, &true);
    s.set_multicast_if_v4(&net.iface_addr)
        .map_err(net_err("IP_MULTICAST_IF"))?;
    Ok(s.into())
}

fn wait_readable(sock: &UdpSocket, until: Option<Instant>) -> Result<(), CastError> {
    let ms = wait_ms(Instant::now(), until);
    if ms == 0 {
        return Ok(());
    }
    let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::from(ms)) {
        Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
        Err(e) => Err(CastError::net("poll", e.into())),
    }
}

/// Milliseconds to sleep in `poll(2)` until `until` (at most 50). Rounded
/// up: a deadline under a millisecond away, normal when pacing at high
/// rates, would otherwise round to 0 and the driver would spin until it
/// passed. Only a deadline already reached gives 0.
fn wait_ms(now: Instant, until: Option<Instant>) -> u16 {
    until.map_or(50, |t| {
        let left = t.saturating_duration_since(now);
        left.as_micros().div_ceil(1000).min(50) as u16
    })
}

/// Sends until the session is over. `observe` sees every event and is called
/// at least every 100 ms (for progress output).
pub fn run_sender<S: FrameSource>(
    sender: &mut Sender<S>,
    sock: &UdpSocket,
    net: &NetConfig,
    observe: &mut dyn FnMut(&Sender<S>, Option<&SenderEvent>),
) -> Result<(), CastError> {
    let state = UdpSocketState::new(UdpSockRef::from(sock)).map_err(net_err("socket state"))?;
    let max_segments = state.max_gso_segments().clamp(1, 64);
    let dest = SocketAddr::V4(net.group);
    let mut batch: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut seg = 0usize;
    let mut count = 0usize;
    let mut rbuf = vec![0u8; 2048];
    let mut last_observe = Instant::now();
    let flush = |batch: &mut Vec<u8>, seg: usize, count: &mut usize| -> Result<(), CastError> {
        if batch.is_empty() {
            return Ok(());
        }
        let t = UdpTransmit {
            destination: dest,
            ecn: None,
            contents: batch,
            segment_size: (*count > 1).then_some(seg),
            src_ip: None,
        };
        loop {
            match state.send(UdpSockRef::from(sock), &t) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLOUT)];
                    let _ = poll(&mut fds, PollTimeout::from(10u16));
                }
                Err(e) => return Err(CastError::net("send", e)),
            }
        }
        batch.clear();
        *count = 0;
        Ok(())
    };
    loop {
        let now = Instant::now();
        // Statuses from receivers.
        loop {
            match sock.recv_from(&mut rbuf) {
                Ok((n, from)) => sender.handle_datagram(now, from, &rbuf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err(CastError::net("receiving statuses", e)),
            }
        }
        // Everything the pacer allows now, in GSO batches of same-size packets.
        for _ in 0..4096 {
            let before = batch.len();
            match sender.poll_transmit(now, &mut batch)? {
                Some(t) => {
                    if count > 0
                        && (t.len != seg || count == max_segments || batch.len() > 60 * 1024)
                    {
                        let pkt = batch.split_off(before);
                        flush(&mut batch, seg, &mut count)?;
                        batch = pkt;
                    }
                    if count == 0 {
                        seg = t.len;
                    }
                    count += 1;
                    if t.len != seg {
                        flush(&mut batch, seg, &mut count)?;
                    }
                }
                None => break,
            }
        }
        flush(&mut batch, seg, &mut count)?;
        while let Some(ev) = sender.poll_event() {
            observe(sender, Some(&ev));
        }
        if now >= last_observe + Duration::from_millis(100) {
            last_observe = now;
            observe(sender, None);
        }
        if sender.is_finished() {
            return Ok(());
        }
        wait_readable(sock, sender.poll_timeout())?;
    }
}

/// How a receive ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiveOutcome {
    /// Every chunk written, flushed and verified; the sender was told.
    Complete,
}

/// Limits of one receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiveLimits {
    /// Give up after this long in all.
    pub timeout: Duration,
    /// Give up with [`CastError::Stalled`] when no authenticated packet of
    /// the session arrived for this long (`None`: wait until `timeout`).
    /// Announces count, so a sender still waiting for receivers is not idle.
    pub idle: Option<Duration>,
}

impl ReceiveLimits {
    /// Only an overall timeout.
    pub fn timeout(timeout: Duration) -> ReceiveLimits {
        ReceiveLimits {
            timeout,
            idle: None,
        }
    }
}

/// Receives until the target is complete and verified, or a limit is hit.
/// `observe` is called at least every 100 ms; when it breaks, the receive
/// ends with [`CastError::Abandoned`] (what was written stays).
///
/// A session the sender ends early is [`CastError::EndedEarly`]; an idle one
/// is [`CastError::Stalled`]: in both cases a resumed receive into the same
/// target only fetches what is still missing.
pub fn run_receiver_with(
    rx: &mut Receiver,
    sock: &UdpSocket,
    sink: &mut dyn ChunkSink,
    limits: ReceiveLimits,
    observe: &mut dyn FnMut(&Receiver) -> ControlFlow<()>,
) -> Result<ReceiveOutcome, CastError> {
    let timeout = limits.timeout;
    let state = UdpSocketState::new(UdpSockRef::from(sock)).map_err(net_err("socket state"))?;
    let gro = state.gro_segments().max(1);
    const SLOTS: usize = 16;
    let slot_len = (gro * 1500).max(64 * 1024);
    let mut storage = vec![0u8; SLOTS * slot_len];
    let mut metas = [RecvMeta::default(); SLOTS];
    let mut out = Vec::with_capacity(2048);
    let start = Instant::now();
    let mut finished_at: Option<Instant> = None;
    let mut last_observe = start;
    let mut heard = (rx.stats().packets, start);
    loop {
        let now = Instant::now();
        if now > start + timeout {
            return Err(CastError::TimedOut {
                secs: timeout.as_secs(),
                done: rx.chunks_done(),
                total: rx.chunks_needed_total(),
            });
        }
        let n = {
            let mut bufs: Vec<IoSliceMut<'_>> =
                storage.chunks_mut(slot_len).map(IoSliceMut::new).collect();
            match state.recv(UdpSockRef::from(sock), &mut bufs, &mut metas) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
                Err(e) => return Err(CastError::net("receive", e)),
            }
        };
        for (i, m) in metas.iter().take(n).enumerate() {
            let buf = &storage[i * slot_len..i * slot_len + m.len];
            let stride = m.stride.max(1);
            for d in buf.chunks(stride) {
                rx.handle_datagram(now, m.addr, d);
            }
        }
        // Checked after the socket was read: a slow disk that held this loop
        // up is not a silent sender.
        if rx.stats().packets != heard.0 {
            heard = (rx.stats().packets, now);
        }
        if let Some(idle) = limits.idle {
            if finished_at.is_none() && now > heard.1 + idle {
                return Err(CastError::Stalled {
                    idle_secs: idle.as_secs(),
                    done: rx.chunks_done(),
                    total: rx.chunks_needed_total(),
                });
            }
        }
        while let Some(ev) = rx.poll_event() {
            match ev {
                ReceiverEvent::IndexReady(idx) => {
                    for c in sink.prepare(&idx)? {
                        rx.mark_done(c);
                    }
                }
                ReceiverEvent::Chunk { chunk, frame } => {
                    if let Err(e) = sink.write(chunk, frame) {
                        rx.mark_needed(chunk);
                        return Err(e);
                    }
                }
                ReceiverEvent::SessionEnded => {}
            }
        }
        rx.set_write_backlog(sink.backlog());
        if rx.all_received() && !rx.is_done() {
            sink.finish()?;
            rx.set_durable(now);
            finished_at = Some(now);
        }
        // A status, or before a session is adopted, a join to each sender
        // heard announcing.
        for _ in 0..=MAX_CANDIDATES {
            out.clear();
            let Some((to, len)) = rx.poll_transmit(now, &mut out) else {
                break;
            };
            let _ = sock.send_to(&out[..len], to);
        }
        if now >= last_observe + Duration::from_millis(100) {
            last_observe = now;
            if observe(rx).is_break() {
                return Err(CastError::Abandoned);
            }
        }
        if let Some(t) = finished_at {
            // Keep saying "done" until the sender has recorded it (or ends
            // the session, or a while has passed).
            if rx.acked() || rx.ended() || now > t + Duration::from_secs(3) {
                let _ = observe(rx);
                return Ok(ReceiveOutcome::Complete);
            }
        } else if rx.ended() && rx.index().is_some() {
            return Err(CastError::EndedEarly {
                done: rx.chunks_done(),
                total: rx.chunks_needed_total(),
            });
        }
        if n == 0 {
            wait_readable(sock, rx.poll_timeout())?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_under_a_millisecond_away_is_slept_not_spun() {
        let now = Instant::now();
        assert_eq!(wait_ms(now, Some(now + Duration::from_micros(300))), 1);
        assert_eq!(wait_ms(now, Some(now + Duration::from_micros(1001))), 2);
        assert_eq!(wait_ms(now, Some(now)), 0);
        assert_eq!(wait_ms(now + Duration::from_millis(1), Some(now)), 0);
        assert_eq!(wait_ms(now, Some(now + Duration::from_secs(9))), 50);
        assert_eq!(wait_ms(now, None), 50);
    }
}
