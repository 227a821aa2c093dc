//! `/metrics` for Prometheus (text format 0.0.4): cast sessions (active,
//! bytes and packets sent, repair symbols, receivers done, loss), targets
//! and jobs by state (read from the scheduler at each scrape), task
//! durations, API latency and store write latency as histograms, and
//! netboot's counters when the server runs netboot. It needs an operator
//! token, like every operator route: Prometheus sends it as a bearer token
//! (`authorization: { credentials_file: ... }`).
//!
//! Label values come from closed sets (route templates, state and kind
//! words), so no request can grow the number of series.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::prometheus_text;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use rackcast_engine::sched::api::{CastLive, JobId};
use rackcast_engine::sched::{Event, EventKind, MacAddr};

use super::openapi::OperatorErrors;
use super::{ApiErr, Shared};

/// The server's metrics; see the module doc.
#[derive(Debug)]
pub struct ServerMetrics {
    registry: Registry,
    /// Netboot's, when the server runs it.
    netboot: Option<Arc<Registry>>,
    pub(crate) cast: CastMetrics,
    api: Family<ApiLabels, Histogram>,
    store_write: Histogram,
    task_seconds: Family<TaskLabels, Histogram>,
    /// Tasks started and not yet ended: their kind and start (Unix ms).
    started: Mutex<HashMap<TaskKey, (&'static str, u64)>>,
    /// Each recent session's sender figures, for `GET /api/v1/sessions`.
    live: Mutex<std::collections::BTreeMap<u64, CastLive>>,
}

/// Sessions whose last figures are kept.
const LIVE_KEPT: usize = 256;

/// Cast counters, updated by the sender threads as they go.
#[derive(Debug, Clone, Default)]
pub(crate) struct CastMetrics {
    pub(crate) active: Gauge,
    pub(crate) bytes: Counter,
    pub(crate) packets: Counter,
    pub(crate) source_symbols: Counter,
    pub(crate) repair_symbols: Counter,
    pub(crate) statuses: Counter,
    pub(crate) receivers_done: Counter,
    /// Mean smoothed loss the running senders last saw from their receivers.
    pub(crate) loss: Gauge<f64, AtomicU64>,
}

/// A target's task of a job.
type TaskKey = (MacAddr, JobId, u32);

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ApiLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TaskLabels {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

/// Tasks whose start is remembered for their duration; beyond it (starts
/// whose end never came, say after a restart) the oldest are forgotten.
const STARTED_CAP: usize = 100_000;

impl ServerMetrics {
    /// Registers everything; `netboot` is netboot's registry when it runs
    /// in this process.
    pub(crate) fn new(netboot: Option<Arc<Registry>>) -> ServerMetrics {
        let mut registry = Registry::default();
        let cast = CastMetrics::default();
        let c = &cast;
        registry.register(
            "rackcast_cast_sessions_active",
            "Cast sessions sending now",
            c.active.clone(),
        );
        registry.register(
            "rackcast_cast_bytes",
            "Cast bytes sent (UDP payload)",
            c.bytes.clone(),
        );
        registry.register(
            "rackcast_cast_packets",
            "Cast packets sent",
            c.packets.clone(),
        );
        registry.register(
            "rackcast_cast_source_symbols",
            "Cast source symbols sent",
            c.source_symbols.clone(),
        );
        registry.register(
            "rackcast_cast_repair_symbols",
            "Cast repair symbols encoded and sent",
            c.repair_symbols.clone(),
        );
        registry.register(
            "rackcast_cast_statuses",
            "Receiver status packets taken by the senders",
            c.statuses.clone(),
        );
        registry.register(
            "rackcast_cast_receivers_done",
            "Receivers the senders saw finish",
            c.receivers_done.clone(),
        );
        registry.register(
            "rackcast_cast_loss_ratio",
            "Mean loss the running senders' receivers report (0..1)",
            c.loss.clone(),
        );
        let api = Family::<ApiLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 4.0, 10))
        });
        registry.register(
            "rackcast_api_request_seconds",
            "API request latency by method, route and status",
            api.clone(),
        );
        let store_write = Histogram::new(exponential_buckets(0.0001, 4.0, 10));
        registry.register(
            "rackcast_store_write_seconds",
            "Latency of committing one batch of scheduler changes to the store",
            store_write.clone(),
        );
        let task_seconds = Family::<TaskLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(1.0, 2.0, 14))
        });
        registry.register(
            "rackcast_task_seconds",
            "Task attempt durations by kind and outcome",
            task_seconds.clone(),
        );
        ServerMetrics {
            registry,
            netboot,
            cast,
            api,
            store_write,
            task_seconds,
            started: Mutex::new(HashMap::new()),
            live: Mutex::new(Default::default()),
        }
    }

    /// Session `id`'s sender figures now.
    pub(crate) fn set_live(&self, id: u64, v: CastLive) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.insert(id, v);
        while live.len() > LIVE_KEPT {
            live.pop_first();
        }
    }

    /// Session `id`'s last figures, if its sender ran.
    pub(crate) fn live(&self, id: u64) -> Option<CastLive> {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.get(&id).cloned()
    }

    /// Records one store commit that took `secs`.
    pub(crate) fn store_write(&self, secs: f64) {
        self.store_write.observe(secs);
    }

    /// Follows task starts and ends in the event stream for durations.
    pub(crate) fn saw(&self, e: &Event) {
        let (Some(mac), Some(job), Some(task)) = (e.about.target, e.about.job, e.about.task) else {
            return;
        };
        let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        let outcome = match &e.what {
            EventKind::TaskStarted { kind, .. } => {
                if started.len() >= STARTED_CAP {
                    if let Some(oldest) = started.iter().min_by_key(|(_, v)| v.1).map(|(k, _)| *k) {
                        started.remove(&oldest);
                    }
                }
                started.insert((mac, job, task), (kind, e.at));
                return;
            }
            EventKind::TaskFinished { .. } => "finished",
            EventKind::TaskRetry { .. } => "retry",
            EventKind::TaskFailed { .. } => "failed",
            _ => return,
        };
        if let Some((kind, at)) = started.remove(&(mac, job, task)) {
            let secs = e.at.saturating_sub(at) as f64 / 1000.0;
            self.task_seconds
                .get_or_create(&TaskLabels { kind, outcome })
                .observe(secs);
        }
    }

    /// The text a scrape gets: the standing metrics, the scheduler's
    /// counts by state, then netboot's.
    fn encode(&self, targets: &[(&'static str, i64)], jobs: &[(&'static str, i64)]) -> String {
        let mut now = Registry::default();
        let by = |rows: &[(&'static str, i64)]| {
            let f = Family::<StateLabels, Gauge>::default();
            for (state, n) in rows {
                f.get_or_create(&StateLabels { state }).set(*n);
            }
            f
        };
        now.register("rackcast_targets", "Targets by state", by(targets));
        now.register("rackcast_jobs", "Jobs by state", by(jobs));
        let mut text = String::new();
        let regs = [Some(&self.registry), Some(&now), self.netboot.as_deref()];
        for r in regs.into_iter().flatten() {
            // Writing to a String cannot fail.
            let _ = prometheus_text::encode(&mut text, r);
        }
        text
    }
}

/// Times every API request by its route template (never the raw path,
/// which would make a series per MAC or job).
pub(crate) async fn track(State(sh): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let method = req.method().as_str().to_string();
    let start = Instant::now();
    let resp = next.run(req).await;
    sh.metrics
        .api
        .get_or_create(&ApiLabels {
            method,
            route,
            status: resp.status().as_u16(),
        })
        .observe(start.elapsed().as_secs_f64());
    resp
}

/// `GET /metrics`.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "server",
    responses(
        (status = 200, description = "The server's metrics (and netboot's, when it runs in the server) in the Prometheus text format", content_type = "text/plain; version=0.0.4; charset=utf-8", body = String),
        OperatorErrors,
    ),
    security(("operator_token" = []))
)]
pub(crate) async fn scrape(
    State(sh): State<Arc<Shared>>,
    h: HeaderMap,
) -> Result<Response, ApiErr> {
    super::operator::operator(&sh, &h)?;
    let (targets, jobs) = sh
        .read(|i| {
            let mut t: HashMap<&'static str, i64> = HashMap::new();
            for x in i.sched.targets() {
                *t.entry(x.state.word()).or_default() += 1;
            }
            let mut j: HashMap<&'static str, i64> = HashMap::new();
            for x in i.sched.jobs() {
                *j.entry(x.status()).or_default() += 1;
            }
            (
                t.into_iter().collect::<Vec<_>>(),
                j.into_iter().collect::<Vec<_>>(),
            )
        })
        .await;
    let text = sh.metrics.encode(&targets, &jobs);
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)],
        text,
    )
        .into_response())
}
