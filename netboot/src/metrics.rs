//! What netboot counts for Prometheus: DHCP answers by step, client
//! architecture and kind; TFTP transfers, bytes and errors (read from
//! [`TftpStats`] at each scrape); HTTP boot requests and bytes. Served at
//! `/metrics` on the boot HTTP port in the Prometheus text format, and
//! joined to the server's `/metrics` when the server runs netboot.
//!
//! Label values come from closed sets (an architecture nobody defined is
//! `other`), so a stranger's DHCP packets cannot grow the series.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::arch::{ClientArch, ClientKind};
use crate::events::Step;
use crate::tftp::TftpStats;

/// Netboot's counters, shared by its services.
#[derive(Debug, Clone, Default)]
pub struct NetbootMetrics {
    dhcp: Family<DhcpLabels, Counter>,
    dhcp_malformed: Counter,
    http_requests: Family<HttpLabels, Counter>,
    http_bytes: Counter,
}

/// One DHCP answer's labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DhcpLabels {
    step: &'static str,
    arch: &'static str,
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HttpLabels {
    what: &'static str,
}

impl NetbootMetrics {
    /// Counts one DHCP decision: its step (offer, ack, nak, boot server
    /// ack, ignored, released) for a client of `arch` and `kind`
    /// (`none` for a plain DHCP client).
    pub fn dhcp(&self, step: Step, arch: ClientArch, kind: Option<ClientKind>) {
        let step = match step {
            Step::Offer => "offer",
            Step::Ack => "ack",
            Step::Nak => "nak",
            Step::BootServerAck => "boot_server_ack",
            Step::Ignored => "ignored",
            Step::Released => "released",
            _ => return,
        };
        let kind = match kind {
            Some(ClientKind::Pxe) => "pxe",
            Some(ClientKind::Http) => "http_boot",
            Some(ClientKind::Ipxe) => "ipxe",
            None => "none",
        };
        self.dhcp
            .get_or_create(&DhcpLabels {
                step,
                arch: arch_label(arch),
                kind,
            })
            .inc();
    }

    /// Counts a datagram that did not parse.
    pub fn dhcp_malformed(&self) {
        self.dhcp_malformed.inc();
    }

    /// Counts an HTTP boot request answered with a script or a file.
    pub fn http_request(&self, script: bool) {
        let what = if script { "script" } else { "file" };
        self.http_requests.get_or_create(&HttpLabels { what }).inc();
    }

    /// Counts HTTP boot bytes sent (bodies).
    pub fn http_bytes(&self, n: u64) {
        self.http_bytes.inc_by(n);
    }

    /// Registers every netboot metric in `reg`, TFTP's read from `tftp`.
    pub fn register(&self, reg: &mut Registry, tftp: Arc<TftpStats>) {
        reg.register(
            "rackcast_dhcp_answers",
            "DHCP decisions by step, client architecture and client kind",
            self.dhcp.clone(),
        );
        reg.register(
            "rackcast_dhcp_malformed",
            "DHCP datagrams that did not parse (dropped)",
            self.dhcp_malformed.clone(),
        );
        reg.register(
            "rackcast_http_boot_requests",
            "HTTP boot requests answered, by what was served",
            self.http_requests.clone(),
        );
        reg.register(
            "rackcast_http_boot_bytes",
            "HTTP boot body bytes sent",
            self.http_bytes.clone(),
        );
        reg.register_collector(Box::new(TftpCollector(tftp)));
    }
}

/// A closed set of architecture names for labels.
fn arch_label(a: ClientArch) -> &'static str {
    match a {
        ClientArch::X86Bios | ClientArch::X86BiosHttp => "bios",
        ClientArch::X86Uefi | ClientArch::X86UefiHttp => "x86_uefi",
        ClientArch::X64Uefi | ClientArch::X64UefiHttp => "x64_uefi",
        ClientArch::Arm32Uefi | ClientArch::Arm32UefiHttp => "arm32_uefi",
        ClientArch::Arm64Uefi | ClientArch::Arm64UefiHttp => "arm64_uefi",
        ClientArch::RiscV64Uefi | ClientArch::RiscV64UefiHttp => "riscv64_uefi",
        ClientArch::Ebc | ClientArch::EbcHttp => "ebc",
        ClientArch::Other(_) => "other",
    }
}

/// TFTP's counters, read at scrape time: the TFTP server keeps them as
/// atomics its shards update without a registry in reach.
#[derive(Debug)]
struct TftpCollector(Arc<TftpStats>);

impl Collector for TftpCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let counters: [(&str, &str, u64); 7] = [
            (
                "rackcast_tftp_requests",
                "TFTP read requests",
                get(&s.requests),
            ),
            (
                "rackcast_tftp_completed",
                "TFTP transfers acknowledged to the last block",
                get(&s.completed),
            ),
            (
                "rackcast_tftp_aborted",
                "TFTP transfers ended by the client's error or silence",
                get(&s.aborted),
            ),
            (
                "rackcast_tftp_refused",
                "TFTP requests refused (not found, caps, bad request)",
                get(&s.refused),
            ),
            (
                "rackcast_tftp_malformed",
                "TFTP datagrams that did not parse (dropped)",
                get(&s.malformed),
            ),
            (
                "rackcast_tftp_stray",
                "TFTP datagrams from another address than a transfer's client",
                get(&s.stray),
            ),
            (
                "rackcast_tftp_bytes",
                "TFTP file bytes of completed transfers",
                get(&s.bytes),
            ),
        ];
        for (name, help, v) in counters {
            let c = ConstCounter::new(v);
            c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        let g = ConstGauge::new(i64::try_from(get(&s.active)).unwrap_or(i64::MAX));
        g.encode(enc.encode_descriptor(
            "rackcast_tftp_active",
            "TFTP transfers running now",
            None,
            g.metric_type(),
        )?)?;
        Ok(())
    }
}
