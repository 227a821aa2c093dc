//! The deployment server: one process holding the scheduler, its SQLite
//! store, the operator REST API with live events, the agent API, the image
//! library, the cast senders and (when configured) netboot.
//!
//! Every request that changes anything runs [`Shared::mutate`]: under one
//! lock the scheduler takes the input, its changes are committed to the
//! store, and only then is anyone answered, so a kill -9 at any instant
//! loses nothing that was acknowledged.

mod agent_api;
mod auth;
mod bmc;
mod body;
mod boot_token;
mod cast;
mod console;
mod dashboard;
mod datadir;
mod library;
mod metrics;
mod openapi;
mod operator;
mod operators;
mod policy;
mod power_api;
pub mod store;
pub mod tls;
mod unicast;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::sync::{broadcast, Mutex, Notify};

use crate::store::{Store, StoreError};
use rackcast_engine::sched::api::{ApiError, EventRecord, Millis};
use rackcast_engine::sched::{Action, Change, SchedConfig, Scheduler};

pub use policy::SchedPolicy;

/// Errors that stop the server from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The data directory could not be prepared.
    #[error("data directory {path}: {source}")]
    Data {
        /// The directory or file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A listening socket could not be bound.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// Address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The configuration is wrong.
    #[error("configuration: {0}")]
    Config(String),
    /// HTTPS could not be set up.
    #[error("TLS")]
    Tls(#[from] tls::TlsError),
    /// Netboot failed.
    #[error("netboot: {0}")]
    Netboot(#[from] rackcast_netboot::Error),
}

/// Server configuration: `rackcast server --config FILE` (TOML), flags override.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Data directory: database, tokens, image library.
    pub data: PathBuf,
    /// The database: `postgres://USER@HOST[:PORT]/DB` (its password from
    /// `PGPASSWORD` or `~/.pgpass`, not here), or none for the embedded
    /// SQLite file `DATA/rackcast.db`.
    #[serde(default)]
    pub database: Option<String>,
    /// Address of the operator and agent APIs.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The operator API's own address (default: it shares `listen` with
    /// the agent API). Set it to keep the operator API off the
    /// provisioning network.
    #[serde(default)]
    pub operator_listen: Option<SocketAddr>,
    /// URL agents use to reach us (default: `https://LISTEN`).
    #[serde(default)]
    pub public_url: Option<String>,
    /// Serve the APIs over HTTPS (default). `false` serves plain HTTP:
    /// tokens, cast keys and scripts then cross the network in clear.
    #[serde(default = "default_true")]
    pub tls: bool,
    /// Certificate chain (PEM) to serve; with `tls_key`. Default: one the
    /// server issues itself from its own CA (`DATA/tls/ca.pem`).
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Extra names (DNS names or IP addresses) the generated certificate
    /// carries, beside loopback, the host name, the listening addresses
    /// and the public URL's host.
    #[serde(default)]
    pub tls_names: Vec<String>,
    /// Interface address cast sessions are sent from.
    #[serde(default = "default_cast_addr")]
    pub cast_addr: Ipv4Addr,
    /// Multicast group of cast sessions.
    #[serde(default = "default_group")]
    pub cast_group: Ipv4Addr,
    /// First port of cast sessions.
    #[serde(default = "default_port")]
    pub cast_port: u16,
    /// Rate ceiling of a cast session, bytes/s.
    #[serde(default = "default_rate")]
    pub cast_rate: u64,
    /// Seconds a receiver hears nothing of its cast session before it
    /// fetches what it still needs by unicast (HTTP range requests from
    /// this server): multicast filtered or not routed. 0: never (it asks
    /// for a new session).
    #[serde(default = "default_unicast_after")]
    pub unicast_after: u32,
    /// All unicast fetches together, bytes/s [default: a quarter of
    /// `cast_rate`], so they do not starve the cast sessions.
    #[serde(default)]
    pub unicast_rate: Option<u64>,
    /// MTU that sizes cast packets (default 1500; clamped to 576..=9000).
    #[serde(default)]
    pub cast_mtu: Option<usize>,
    /// Environment of tasks that name none.
    #[serde(default = "default_env")]
    pub default_env: String,
    /// Seconds a target may take to come back from a reboot.
    #[serde(default = "default_boot_timeout")]
    pub boot_timeout: u64,
    /// Longest a poll is held open, seconds.
    #[serde(default = "default_poll_wait")]
    pub poll_wait: u64,
    /// Whether agents may register with the shared enrollment token
    /// (`DATA/agent.token`, for agents an operator starts by hand).
    /// Netbooted targets always use their per-boot token; `false` leaves
    /// only those.
    #[serde(default = "default_true")]
    pub enroll_token: bool,
    /// Public key files (`rackcast image keygen` writes KEY.pub): when
    /// any is given, an upload (CLI or Create Disk Image) must be signed by
    /// one of them or it is refused and not stored.
    #[serde(default)]
    pub trusted_keys: Vec<PathBuf>,
    /// Seconds an unclaimed boot token stays valid.
    #[serde(default = "default_boot_token_ttl")]
    pub boot_token_ttl: u64,
    /// Netboot, when the server answers PXE itself.
    #[serde(default)]
    pub netboot: Option<rackcast_netboot::NetbootSettings>,
    /// Largest image upload accepted, bytes (default 4 TiB).
    #[serde(default = "default_max_image_bytes")]
    pub max_image_bytes: u64,
    /// Task output kept per target, bytes/s (default 16 KiB/s); more is
    /// dropped and counted in the job log.
    #[serde(default = "default_log_rate")]
    pub log_rate: u64,
    /// Task output a target may send at once (default 1 MiB).
    #[serde(default = "default_log_burst")]
    pub log_burst: u64,
    /// Seconds between reads of each BMC's power state (default 30).
    #[serde(default = "default_bmc_poll")]
    pub bmc_poll: u64,
    /// Seconds each BMC request may take (default 20).
    #[serde(default = "default_bmc_timeout")]
    pub bmc_timeout: u64,
    /// Network boots through a target's BMC before a target that does not
    /// register is failed and held (default 3).
    #[serde(default = "default_power_tries")]
    pub power_tries: u32,
    /// Seconds a network-booting machine with no work shows "press KEY
    /// for the menu" before it boots its disk (default 3; 0: no menu and
    /// no console, the boot exactly as without them). Needs `[netboot]`.
    #[serde(default = "default_menu_timeout")]
    pub menu_timeout: u32,
    /// The key that opens the menu: a letter or digit (default `m`).
    #[serde(default = "default_menu_key")]
    pub menu_key: char,
    /// Whether machines that are not enrolled get the prompt too, so a
    /// technician can register them from their console (default true).
    #[serde(default = "default_true")]
    pub menu_for_unknown: bool,
    /// A file (mode 0600) holding the console PIN, which authorises
    /// register, capture, deploy and shell at a machine's console.
    /// Default: `DATA/console.pin` when it exists. Without one, only an
    /// admin operator's name and token do.
    #[serde(default)]
    pub menu_pin_file: Option<PathBuf>,
}

fn default_menu_timeout() -> u32 {
    3
}
fn default_menu_key() -> char {
    'm'
}

fn default_bmc_poll() -> u64 {
    30
}
fn default_bmc_timeout() -> u64 {
    20
}
fn default_power_tries() -> u32 {
    3
}

fn default_max_image_bytes() -> u64 {
    body::DEFAULT_MAX_IMAGE_BYTES
}
fn default_log_rate() -> u64 {
    SchedConfig::default().log_rate
}
fn default_log_burst() -> u64 {
    SchedConfig::default().log_burst
}

fn default_true() -> bool {
    true
}
fn default_boot_token_ttl() -> u64 {
    3600
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7300))
}
fn default_cast_addr() -> Ipv4Addr {
    Ipv4Addr::LOCALHOST
}
fn default_group() -> Ipv4Addr {
    Ipv4Addr::new(239, 255, 42, 1)
}
fn default_port() -> u16 {
    7400
}
fn default_rate() -> u64 {
    1_000_000_000
}
fn default_unicast_after() -> u32 {
    5
}
fn default_env() -> String {
    "linux-x64".into()
}
fn default_boot_timeout() -> u64 {
    900
}
fn default_poll_wait() -> u64 {
    20
}

impl ServerConfig {
    /// Defaults with `data` as the data directory.
    pub fn new(data: PathBuf) -> ServerConfig {
        ServerConfig {
            data,
            database: None,
            listen: default_listen(),
            operator_listen: None,
            public_url: None,
            tls: true,
            tls_cert: None,
            tls_key: None,
            tls_names: Vec::new(),
            cast_addr: default_cast_addr(),
            cast_group: default_group(),
            cast_port: default_port(),
            cast_rate: default_rate(),
            unicast_after: default_unicast_after(),
            unicast_rate: None,
            cast_mtu: None,
            default_env: default_env(),
            boot_timeout: default_boot_timeout(),
            poll_wait: default_poll_wait(),
            enroll_token: true,
            trusted_keys: Vec::new(),
            boot_token_ttl: default_boot_token_ttl(),
            netboot: None,
            max_image_bytes: default_max_image_bytes(),
            log_rate: default_log_rate(),
            log_burst: default_log_burst(),
            bmc_poll: default_bmc_poll(),
            bmc_timeout: default_bmc_timeout(),
            power_tries: default_power_tries(),
            menu_timeout: default_menu_timeout(),
            menu_key: default_menu_key(),
            menu_for_unknown: true,
            menu_pin_file: None,
        }
    }
}

/// Unix ms now: the only place the server reads the wall clock for the scheduler.
pub fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// State shared by every handler.
#[derive(Debug)]
pub struct Shared {
    inner: Mutex<Inner>,
    /// Woken on every change (long polls wait on it).
    changed: Notify,
    /// Every event, persisted or transient, for SSE subscribers.
    events: broadcast::Sender<EventRecord>,
    store: Store,
    cfg: ServerConfig,
    admin_token: String,
    /// Live operator tokens: the built-in one and the named ones.
    tokens: operators::TokenBook,
    /// Browsers logged in to the dashboard.
    ui: dashboard::UiSessions,
    enroll_token: String,
    /// Tags boot tokens (`DATA/boot.key`).
    boot_key: [u8; 32],
    /// Seals BMC passwords (`DATA/bmc.key`).
    vault: bmc::Vault,
    /// Uploads must be signed by one of these, when there are any.
    trusted: Vec<rackcast_engine::image::TrustedKey>,
    policy: Arc<SchedPolicy>,
    url: String,
    /// What `/metrics` serves.
    metrics: metrics::ServerMetrics,
    /// What `/api/v1/openapi.json` serves: set by [`Server::run`] from
    /// the routers it serves.
    openapi: std::sync::OnceLock<bytes::Bytes>,
    /// The rate all unicast image fetches share.
    unicast: Arc<unicast::Limiter>,
    /// Who may change things from a machine's console.
    console: std::sync::Mutex<console::Gate>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    sched: Scheduler,
    /// Each target's agent session.
    agent_tokens: std::collections::HashMap<rackcast_engine::sched::MacAddr, store::AgentSession>,
    /// Image library: name -> view.
    images: std::collections::BTreeMap<String, rackcast_engine::sched::api::ImageView>,
    /// When each MAC's last refused registration was recorded as an event.
    refusals_noted: std::collections::HashMap<rackcast_engine::sched::MacAddr, u64>,
    /// Changes the scheduler made that the store refused (the database was
    /// down), with the actions they set off: written and done first by the
    /// next change (the timer makes one every second).
    unsaved: Vec<Change>,
    unacted: Vec<Action>,
}

/// At most one `agent.refused` event per MAC in this long, so a stranger
/// replaying a stale token cannot flood the event history.
const REFUSAL_EVENT_GAP_MS: u64 = 10_000;
/// MACs remembered for that; beyond it refusals are logged only.
const REFUSAL_MACS: usize = 4096;

/// An error answer: a status and a message for people.
#[derive(Debug)]
pub(crate) struct ApiErr(pub StatusCode, pub String);

impl IntoResponse for ApiErr {
    fn into_response(self) -> Response {
        (self.0, axum::Json(ApiError { error: self.1 })).into_response()
    }
}

impl From<rackcast_engine::sched::SchedError> for ApiErr {
    fn from(e: rackcast_engine::sched::SchedError) -> Self {
        use rackcast_engine::sched::SchedError as E;
        let code = match e {
            E::UnknownTarget(_) | E::UnknownImage(_) | E::UnknownJob(_) => StatusCode::NOT_FOUND,
            E::BadMac(_) | E::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            E::NotYet(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiErr(code, e.to_string())
    }
}

impl From<StoreError> for ApiErr {
    fn from(e: StoreError) -> Self {
        tracing::error!("{e}");
        ApiErr(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

impl Shared {
    /// Whether a refused registration of `mac` at `now` is recorded as an
    /// event (see [`REFUSAL_EVENT_GAP_MS`]).
    pub(crate) async fn note_refusal(
        &self,
        mac: rackcast_engine::sched::MacAddr,
        now: u64,
    ) -> bool {
        let mut inner = self.inner.lock().await;
        let seen = &mut inner.refusals_noted;
        let recent = |t: &u64| now.saturating_sub(*t) < REFUSAL_EVENT_GAP_MS;
        if seen.len() >= REFUSAL_MACS {
            seen.retain(|_, t| recent(t));
        }
        match seen.get(&mac) {
            Some(t) if recent(t) => false,
            _ if seen.len() >= REFUSAL_MACS => false,
            _ => {
                seen.insert(mac, now);
                true
            }
        }
    }

    /// Runs `f` on the scheduler at `now`, commits what it changed, wakes
    /// pollers, publishes events and starts what it asked for. The answer
    /// goes out only after the commit.
    pub(crate) async fn mutate<T>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Scheduler, Millis) -> T,
    ) -> Result<T, ApiErr> {
        let mut inner = self.inner.lock().await;
        let now = now_ms();
        let out = f(&mut inner.sched, now);
        let mut changes = std::mem::take(&mut inner.unsaved);
        changes.extend(inner.sched.drain_changes());
        let mut actions = std::mem::take(&mut inner.unacted);
        while let Some(a) = inner.sched.poll_action() {
            actions.push(a);
        }
        if !changes.is_empty() {
            let t = std::time::Instant::now();
            if let Err(e) = self.store.apply(&changes, now).await {
                // The scheduler holds them already: kept for the next write,
                // so the database catches up when it is back. The caller
                // hears the failure: nothing of this is acknowledged.
                // Transient events (progress) are not kept.
                changes.retain(|c| !matches!(c, Change::Event(ev) if ev.seq == 0));
                inner.unsaved = changes;
                inner.unacted = actions;
                return Err(e.into());
            }
            self.metrics.store_write(t.elapsed().as_secs_f64());
            self.policy.update(&inner.sched, &changes);
        }
        drop(inner);
        self.publish(changes);
        for a in actions {
            self.act(a).await;
        }
        Ok(out)
    }

    /// Reads the scheduler without changing it.
    pub(crate) async fn read<T>(&self, f: impl FnOnce(&Inner) -> T) -> T {
        f(&*self.inner.lock().await)
    }

    /// Puts a verified image into the library index and tells the scheduler.
    pub(crate) async fn install_image(
        self: &Arc<Self>,
        v: rackcast_engine::sched::api::ImageView,
        who: &str,
    ) -> Result<(), ApiErr> {
        self.store.put_image(&v, now_ms()).await?;
        self.inner
            .lock()
            .await
            .images
            .insert(v.name.clone(), v.clone());
        let who = who.to_string();
        self.mutate(move |s, now| s.image_added(now, &v.name, &v.root, &who))
            .await
    }

    fn publish(&self, changes: Vec<Change>) {
        // Progress and log lines (transient events, job log appends) change no directive:
        // they must not wake every long-polling agent.
        let mut any = false;
        for c in changes {
            match c {
                Change::Event(e) => {
                    any |= e.seq > 0;
                    self.metrics.saw(&e);
                    let _ = self.events.send(e.record());
                }
                Change::Log(_) => {}
                _ => any = true,
            }
        }
        if any {
            self.changed.notify_waiters();
        }
    }

    async fn act(self: &Arc<Self>, a: Action) {
        match a {
            Action::Power { mac, plan } => bmc::spawn_plan(self.clone(), mac, plan),
            Action::StartSender {
                session,
                receivers,
                rate,
            } => {
                let s = self.read(|i| i.sched.session(session).cloned()).await;
                let path = s
                    .as_ref()
                    .map(|s| library::blob_path(&self.cfg.data, &s.root));
                match (s, path) {
                    (Some(s), Some(path)) => {
                        cast::spawn_sender(self.clone(), s, path, receivers, rate)
                    }
                    _ => tracing::error!("cast session {session} vanished before its start"),
                }
            }
        }
    }
}

/// A server bound to its sockets, ready to run.
#[derive(Debug)]
pub struct Server {
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    /// The operator API's own listener, when `operator_listen` is set.
    operator: Option<tokio::net::TcpListener>,
    /// HTTPS, unless `tls = false`.
    tls: Option<Arc<rustls::ServerConfig>>,
    netboot: Option<rackcast_netboot::Netboot>,
    /// What the boot policy hands on (see [`policy`]).
    inbox: policy::Inbox,
}

impl Server {
    /// Creates the data directory if needed and brings its database to the
    /// current schema, then returns: `rackcast server --migrate-only`, for
    /// upgrades run before the new server starts. The database's location
    /// (its file, or its URL without a password).
    pub async fn migrate_only(cfg: &ServerConfig) -> Result<String, ServerError> {
        datadir::prepare(&cfg.data).map_err(|source| ServerError::Data {
            path: cfg.data.display().to_string(),
            source,
        })?;
        let store = store::Store::connect(&cfg.data, cfg.database.as_deref()).await?;
        Ok(store.location().to_string())
    }

    /// Opens the data directory (creating tokens on first start), loads the
    /// state, binds the API (and netboot) sockets.
    pub async fn bind(cfg: ServerConfig) -> Result<Server, ServerError> {
        let data_err = |p: &Path| {
            let path = p.display().to_string();
            move |source| ServerError::Data { path, source }
        };
        datadir::prepare(&cfg.data).map_err(data_err(&cfg.data))?;
        let admin_token = auth::load_or_create_token(&cfg.data.join("admin.token"))
            .map_err(data_err(&cfg.data.join("admin.token")))?;
        let enroll_token = auth::load_or_create_token(&cfg.data.join("agent.token"))
            .map_err(data_err(&cfg.data.join("agent.token")))?;
        let boot_key = auth::load_or_create_key(&cfg.data.join("boot.key"))
            .map_err(data_err(&cfg.data.join("boot.key")))?;
        let vault = bmc::Vault::open(&cfg.data.join("bmc.key"))
            .map_err(data_err(&cfg.data.join("bmc.key")))?;
        let stale = library::remove_stale_uploads(&cfg.data);
        if stale > 0 {
            tracing::info!("removed {stale} unfinished upload(s) a stopped server left");
        }
        let trusted = cfg
            .trusted_keys
            .iter()
            .map(|p| {
                rackcast_engine::image::TrustedKey::load(p)
                    .map_err(|e| ServerError::Config(format!("trusted_keys: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let store = Store::connect(&cfg.data, cfg.database.as_deref()).await?;
        let (state, images) = store.load().await?;
        let now = now_ms();
        let mut key_secret = [0u8; 32];
        getrandom::fill(&mut key_secret)
            .map_err(|e| ServerError::Config(format!("no OS randomness: {e}")))?;
        let sched_cfg = SchedConfig {
            default_env: cfg.default_env.clone(),
            boot_timeout: cfg.boot_timeout * 1000,
            cast_group: cfg.cast_group,
            cast_port: cfg.cast_port,
            key_secret,
            log_rate: cfg.log_rate,
            log_burst: cfg.log_burst,
            // An agent holds a poll open for poll_wait: two missed polls
            // and a minute's grace mean it is gone.
            agent_silence: (2 * cfg.poll_wait + 60) * 1000,
            power_tries: cfg.power_tries,
            unicast_after: (cfg.unicast_after > 0).then_some(cfg.unicast_after),
            ..SchedConfig::default()
        };
        let mut sched = Scheduler::new(sched_cfg, state, now);
        let boot_root = cfg
            .netboot
            .as_ref()
            .and_then(|n| n.root.clone())
            .unwrap_or_else(|| cfg.data.join("boot"));
        for env in policy::environments_in(&boot_root) {
            let name = env.name.clone();
            match sched.put_environment(now, env) {
                Ok(()) => tracing::info!("environment {name} from {}", boot_root.display()),
                Err(e) => tracing::warn!("{}: {e}", boot_root.display()),
            }
        }
        let mut image_map = std::collections::BTreeMap::new();
        for img in images {
            let blob = library::blob_path(&cfg.data, &img.root);
            let legacy = library::legacy_path(&cfg.data, &img.name);
            if !blob.exists() && legacy.exists() {
                // A library from before content addressing: move it under its root.
                let moved = blob
                    .parent()
                    .map_or(Ok(()), std::fs::create_dir_all)
                    .and_then(|()| std::fs::rename(&legacy, &blob));
                if let Err(e) = moved {
                    tracing::warn!("moving {} to {}: {e}", legacy.display(), blob.display());
                }
            }
            if blob.exists() {
                sched.set_image(&img.name, Some(img.root.clone()));
                image_map.insert(img.name.clone(), img);
            } else {
                tracing::warn!("image {} is in the database but its file is gone", img.name);
            }
        }
        let (listener, bound) = listen(cfg.listen).await?;
        let operator = match cfg.operator_listen {
            Some(a) => Some(listen(a).await?),
            None => None,
        };
        let scheme = if cfg.tls { "https" } else { "http" };
        let url = cfg
            .public_url
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{bound}"));
        let tls = if cfg.tls {
            let mut listens = vec![bound];
            listens.extend(operator.as_ref().map(|o| o.1));
            let names = tls::names_for(&listens, Some(&url), &cfg.tls_names);
            let configured = match (&cfg.tls_cert, &cfg.tls_key) {
                (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
                (None, None) => None,
                _ => {
                    return Err(ServerError::Config(
                        "tls_cert and tls_key go together".into(),
                    ))
                }
            };
            Some(tls::server_config(&cfg.data, configured, &names)?)
        } else {
            tracing::warn!(
                "tls = false: the APIs serve plain HTTP, so tokens, cast keys and scripts \
                 cross the network in clear"
            );
            None
        };
        let menu = policy::Menu {
            timeout: if cfg.netboot.is_some() {
                cfg.menu_timeout
            } else {
                0
            },
            key: cfg.menu_key,
            for_unknown: cfg.menu_for_unknown,
        };
        if !menu.key.is_ascii_alphanumeric() {
            return Err(ServerError::Config(format!(
                "menu_key {:?}: use a letter or a digit",
                menu.key
            )));
        }
        let pin = console::pin::load(&cfg)?;
        let (policy, inbox) = SchedPolicy::new(url.clone(), boot_key, menu);
        let policy = Arc::new(policy);
        // Bound now, served from `run`, after the policy first reads the scheduler.
        let netboot = match &cfg.netboot {
            Some(nb) => Some(policy::bind_netboot(&cfg, nb, policy.clone()).await?),
            None => None,
        };
        let metrics = metrics::ServerMetrics::new(netboot.as_ref().map(|n| n.registry()));
        let agent_tokens = store.agent_tokens().await?.into_iter().collect();
        let tokens = operators::TokenBook::new(&admin_token, &store.operator_tokens().await?);
        let (events, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                sched,
                agent_tokens,
                images: image_map,
                refusals_noted: Default::default(),
                unsaved: Vec::new(),
                unacted: Vec::new(),
            }),
            changed: Notify::new(),
            events,
            store,
            cfg: cfg.clone(),
            admin_token,
            tokens,
            ui: Default::default(),
            enroll_token,
            boot_key,
            vault,
            trusted,
            policy: policy.clone(),
            url,
            metrics,
            openapi: std::sync::OnceLock::new(),
            unicast: unicast::Limiter::new(cfg.unicast_rate.unwrap_or(cfg.cast_rate / 4)),
            console: std::sync::Mutex::new(console::Gate::new(pin.as_deref())),
        });
        // Persist what the restart itself changed (ended sessions, deadlines).
        shared
            .mutate(|s, _| {
                policy.refresh_all(s);
            })
            .await
            .map_err(|e| ServerError::Config(e.1))?;
        Ok(Server {
            shared,
            listener,
            operator: operator.map(|o| o.0),
            tls,
            netboot,
            inbox,
        })
    }

    /// The API's bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.shared.cfg.listen)
    }

    /// The URL agents and the CLI use.
    pub fn url(&self) -> &str {
        &self.shared.url
    }

    /// Where the operator token is.
    pub fn admin_token_path(&self) -> PathBuf {
        self.shared.cfg.data.join("admin.token")
    }

    /// The operator token.
    pub fn admin_token(&self) -> &str {
        &self.shared.admin_token
    }

    /// The agents' enrollment token.
    pub fn enroll_token(&self) -> &str {
        &self.shared.enroll_token
    }

    /// Where the CA certificate clients trust is (`None` when the server
    /// serves a configured certificate or plain HTTP).
    pub fn ca_path(&self) -> Option<PathBuf> {
        let c = &self.shared.cfg;
        (c.tls && c.tls_cert.is_none()).then(|| tls::ca_path(&c.data))
    }

    /// The operator API's address, when it listens apart.
    pub fn operator_addr(&self) -> Option<SocketAddr> {
        self.operator.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until a listener fails.
    pub async fn run(self) -> Result<(), ServerError> {
        let track = axum::middleware::from_fn_with_state(self.shared.clone(), metrics::track);
        let guard = axum::middleware::from_fn_with_state(self.shared.clone(), operators::guard);
        let (operator_api, agent_api, doc) = api_routers();
        let operator_api = operator_api
            .route_layer(guard)
            .route_layer(track.clone())
            .with_state(self.shared.clone());
        let agent_api = agent_api.route_layer(track).with_state(self.shared.clone());
        let doc = openapi::to_json(&doc)
            .map_err(|e| ServerError::Config(format!("the OpenAPI document: {e}")))?;
        // Only `run` sets it, and `run` takes the server by value.
        let _ = self.shared.openapi.set(doc);
        let timers = tokio::spawn(timer_loop(self.shared.clone()));
        let bmc_poll = tokio::spawn(bmc::poll_loop(self.shared.clone()));
        let disk_missed = tokio::spawn(bmc::disk_missed_loop(
            self.shared.clone(),
            self.inbox.disk_missed,
        ));
        let console = tokio::spawn(console::serve(self.shared.clone(), self.inbox.console));
        let mut apis = tokio::task::JoinSet::new();
        match self.operator {
            Some(op) => {
                apis.spawn(serve(self.listener, agent_api, self.tls.clone()));
                apis.spawn(serve(op, operator_api, self.tls.clone()));
            }
            None => {
                apis.spawn(serve(
                    self.listener,
                    agent_api.merge(operator_api),
                    self.tls.clone(),
                ));
            }
        }
        let first = async move {
            match apis.join_next().await {
                Some(Ok(r)) => r,
                Some(Err(e)) => Err(ServerError::Config(format!("an API task ended: {e}"))),
                None => Ok(()),
            }
        };
        let r = match self.netboot {
            Some(nb) => tokio::select! {
                r = first => r,
                r = nb.run() => r.map_err(ServerError::from),
            },
            None => first.await,
        };
        timers.abort();
        bmc_poll.abort();
        disk_missed.abort();
        console.abort();
        r
    }
}

/// The operator and agent routers, without their middleware, and the
/// OpenAPI document of both, collected from the same `routes!` calls.
fn api_routers() -> (
    axum::Router<Arc<Shared>>,
    axum::Router<Arc<Shared>>,
    utoipa::openapi::OpenApi,
) {
    use utoipa::OpenApi;
    use utoipa_axum::routes;
    let (operator_api, mut doc) =
        utoipa_axum::router::OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
            .merge(operator::routes())
            .merge(power_api::routes())
            .merge(operators::routes())
            .merge(dashboard::routes())
            .routes(routes!(metrics::scrape))
            .routes(routes!(openapi::document))
            .split_for_parts();
    let (agent_api, agent_doc) = agent_api::routes()
        .merge(unicast::routes())
        .split_for_parts();
    doc.merge(agent_doc);
    (operator_api, agent_api, doc)
}

/// Binds an API listener: it and its bound address.
async fn listen(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), ServerError> {
    let err = |source| ServerError::Listen {
        addr: addr.to_string(),
        source,
    };
    let l = tokio::net::TcpListener::bind(addr).await.map_err(err)?;
    let bound = l.local_addr().map_err(err)?;
    Ok((l, bound))
}

/// Serves `app` on `listener`, over TLS when `tls` is given.
async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<(), ServerError> {
    let addr = listener
        .local_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string());
    let err = |source| ServerError::Listen {
        addr: addr.clone(),
        source,
    };
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    match tls {
        Some(cfg) => {
            let std = listener.into_std().map_err(err)?;
            let config = axum_server::tls_rustls::RustlsConfig::from_config(cfg);
            axum_server::from_tcp_rustls(std, config)
                .map_err(err)?
                .serve(app)
                .await
                .map_err(err)
        }
        None => axum::serve(listener, app).await.map_err(err),
    }
}

/// Calls the scheduler's timers when they are due (at least once a second).
async fn timer_loop(shared: Arc<Shared>) {
    loop {
        let next = shared.read(|i| i.sched.poll_timeout()).await;
        let now = now_ms();
        let wait = next.map_or(1000, |t| t.saturating_sub(now).min(1000));
        tokio::time::sleep(Duration::from_millis(wait.max(10))).await;
        if let Err(e) = shared.mutate(|s, now| s.handle_timeout(now)).await {
            tracing::error!("timer: {}", e.1);
        }
    }
}
