//! The wire types of the deployment server's two HTTP APIs: the operator API
//! (`/api/v1/...`, REST/JSON + server-sent events, operator token) and the
//! agent API (`/agent/v1/...`, JSON, a boot, session or enrollment token
//! then a session token), both over HTTPS.
//!
//! Both ends (server, agent, CLI) share these types, so a field renamed here is
//! renamed everywhere. Every request carries `Authorization: Bearer TOKEN`
//! (but the one for the API's OpenAPI document, which holds no secret).
//! With the `openapi` feature (the server's) these types derive
//! `utoipa::ToSchema`, and the server builds that document from them and
//! its handlers: these tables and it must list the same routes (a test
//! compares them).
//!
//! Operator API:
//!
//! | method and path                        | body -> answer                          |
//! |----------------------------------------|-----------------------------------------|
//! | `GET  /api/v1/targets`                 | -> `[TargetView]`                       |
//! | `POST /api/v1/targets`                 | `{mac, name}` -> `TargetView` (enroll)  |
//! | `GET  /api/v1/targets/{mac}`           | -> `TargetView`                         |
//! | `POST /api/v1/targets/{mac}/release`   | -> `TargetView` (clears a failure hold) |
//! | `POST /api/v1/targets/{mac}/reset`     | -> `TargetView` (drops its agent session) |
//! | `PATCH /api/v1/targets/{mac}/vars`     | `VarsUpdate` -> `TargetView` (template variables) |
//! | `PUT  /api/v1/targets/{mac}/bmc`       | `BmcRequest` -> `TargetView` (the password is never returned) |
//! | `DELETE /api/v1/targets/{mac}/bmc`     | -> `TargetView`                         |
//! | `POST /api/v1/targets/{mac}/power`     | `PowerRequest` -> `PowerAnswer` (through its BMC) |
//! | `POST /api/v1/targets/{mac}/boot-once` | `BootOnceRequest` -> `PowerAnswer`      |
//! | `GET  /api/v1/images`                  | -> `[ImageView]`                        |
//! | `GET  /api/v1/images/{name}`           | -> `ImageView`                          |
//! | `PUT  /api/v1/images/{name}`           | image file bytes -> `ImageView`         |
//! | `GET  /api/v1/environments`            | -> `[Environment]`                      |
//! | `GET  /api/v1/environments/{name}`     | -> `Environment`                        |
//! | `PUT  /api/v1/environments/{name}`     | `Environment` -> `Environment`          |
//! | `POST /api/v1/jobs`                    | `JobSpec` -> `JobView`                  |
//! | `GET  /api/v1/jobs`                    | -> `[JobView]`                          |
//! | `GET  /api/v1/jobs/{id}`               | -> `JobView`                            |
//! | `GET  /api/v1/jobs/{id}/log?mac=M[&after=SEQ]` | -> `text/plain`: all of M's output (the view has the tail) |
//! | `POST /api/v1/jobs/{id}/retry`         | -> `JobView` (failed targets run again) |
//! | `POST /api/v1/jobs/{id}/cancel`        | -> `JobView`                            |
//! | `GET  /api/v1/events?job=ID&since=SEQ` | -> `text/event-stream` of `EventRecord` |
//! | `POST /api/v1/tokens`                  | `TokenRequest` -> `TokenCreated` (the token, shown once) |
//! | `GET  /api/v1/tokens`                  | -> `[TokenView]` (admin tokens only)    |
//! | `DELETE /api/v1/tokens/{name}`         | -> `TokenView` (revoked)                |
//! | `GET  /api/v1/audit?since=MS&limit=N`  | -> `[AuditEntry]`, oldest first         |
//! | `GET  /api/v1/sessions`                | -> `[SessionView]` (cast sessions, live figures while they run) |
//! | `GET  /metrics`                        | -> Prometheus text                      |
//! | `GET  /api/v1/openapi.json` (no token) | -> this API in OpenAPI 3 (both tables)  |
//!
//! Operator tokens are `admin` (everything) or `viewer` (every GET; any
//! other method is 403). Every state-changing request by a valid token,
//! refused or not, is appended to the audit log.
//!
//! Agent API:
//!
//! | method and path                              | body -> answer                     |
//! |----------------------------------------------|------------------------------------|
//! | `POST /agent/v1/register` (boot or enrollment token) | `RegisterRequest` -> `Registered` |
//! | `POST /agent/v1/poll` (session token)        | `PollRequest` -> `Directive`       |
//! | `POST /agent/v1/report` (session token)      | `ReportRequest` -> `ReportAck`     |
//! | `PUT  /agent/v1/images/{name}?job=J&task=T&attempt=A[&mac=M]` | image bytes -> `ImageView` |
//! | `GET  /agent/v1/images/by-root/{root}?[mac=M]` | -> the image file its running Distribute pinned, or one `Range` of it (206): unicast fallback |
//!
//! Errors are JSON `ApiError` with a 4xx/5xx status.
//!
//! Request bodies are read only up to a limit, past which the answer is
//! 413: JSON bodies 1 MiB, job specs 4 MiB (a script travels in its
//! spec), agent reports 8 MiB. Image uploads are streamed to disk and
//! bounded by the server's `max_image_bytes`. Task output an agent reports
//! is kept within a per-target budget (`log_rate` bytes/s, `log_burst`);
//! the rest is dropped and a note in the log says how much.

use std::collections::BTreeMap;

use rackcast_types::MacAddr;
pub use rackcast_types::{BootDevice, PowerOp, PowerState};
use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch: the scheduler's clock (an input).
pub type Millis = u64;

/// A job's id, from 1. On the wire and in the store it is the number.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct JobId(pub u64);

/// A cast session's id (the scheduler's, from 1; not the random wire
/// session id its packets carry).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct SessionId(pub u64);

macro_rules! number_id {
    ($t:ident) => {
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }

        impl std::str::FromStr for $t {
            type Err = std::num::ParseIntError;
            fn from_str(s: &str) -> Result<$t, Self::Err> {
                s.parse().map($t)
            }
        }
    };
}
number_id!(JobId);
number_id!(SessionId);

/// The environment name that means "the target's own disk".
pub const LOCAL_ENV: &str = "local";

/// An error answer from either API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiError {
    /// What went wrong, for a person.
    pub error: String,
}

// ---------------------------------------------------------------- jobs

/// A job as submitted: tasks run in order on every listed target.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// A name for people.
    #[serde(default)]
    pub name: String,
    /// Target MACs (`aa:bb:cc:dd:ee:ff`).
    pub targets: Vec<String>,
    /// When the cast session of a Distribute Disk Image task starts.
    #[serde(default)]
    pub cast: CastPolicy,
    /// The tasks, in order (`[[task]]` in TOML).
    #[serde(rename = "task", alias = "tasks")]
    pub tasks: Vec<TaskSpec>,
    /// Who submitted it, set by the server (whatever a request says is
    /// replaced): `api NAME` (the operator token's name) or
    /// `console MAC by WHO` (the preboot menu, `WHO` being `pin` or the
    /// operator who logged in there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

/// When a cast session starts: the first of the set conditions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CastPolicy {
    /// Start when this many targets have joined (default: all the job's targets).
    #[serde(default)]
    pub min_targets: Option<usize>,
    /// ...or this many seconds after the first joined.
    #[serde(default)]
    pub max_wait: Option<u64>,
    /// ...or at this time (Unix seconds).
    #[serde(default)]
    pub start_at: Option<u64>,
    /// Rate ceiling in bytes/s (default: the server's).
    #[serde(default)]
    pub rate: Option<u64>,
    /// `multicast` (a cast session, falling back to unicast where it is
    /// not heard) or `unicast` (no session: every target fetches the image
    /// from the server by HTTP range requests).
    #[serde(default)]
    pub transport: CastTransport,
}

/// How a job's Distribute tasks move the image.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum CastTransport {
    /// One cast session per image; receivers that cannot hear it fall
    /// back to unicast after the server's `unicast_after`.
    #[default]
    Multicast,
    /// Every target fetches by unicast from the start.
    Unicast,
}

impl Default for CastPolicy {
    fn default() -> Self {
        CastPolicy {
            min_targets: None,
            max_wait: Some(60),
            start_at: None,
            rate: None,
            transport: CastTransport::Multicast,
        }
    }
}

/// One task of a job.
// No `deny_unknown_fields` here: serde cannot combine it with `flatten` (every
// field of the flattened kind, `kind` included, would be refused); `TaskKind`
// refuses unknown fields instead.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskSpec {
    /// What to do.
    #[serde(flatten)]
    pub kind: TaskKind,
    /// The environment the task runs in (default: the server's default).
    #[serde(default)]
    pub env: Option<String>,
    /// Seconds before an attempt is failed (default per kind).
    #[serde(default)]
    pub timeout: Option<u64>,
    /// Attempts after the first before the target is held as failed.
    #[serde(default)]
    pub retries: u32,
}

/// The kinds of task.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum TaskKind {
    /// Create Disk Image: capture `disk` into the image library as `image`.
    Create {
        /// Name in the image library.
        image: String,
        /// Disk to read (default: the agent's `--disk`).
        #[serde(default)]
        disk: Option<String>,
    },
    /// Distribute Disk Image: multicast `image` onto `disk`.
    Distribute {
        /// Name in the image library.
        image: String,
        /// Disk to write (default: the agent's `--disk`).
        #[serde(default)]
        disk: Option<String>,
        /// Read-back after the final flush.
        #[serde(default)]
        verify: VerifyMode,
        /// The blocks the image leaves out (its filesystems' free space).
        #[serde(default)]
        unused: UnusedBlocks,
        /// On a disk larger than the image's source: extend the last
        /// partition to the disk's end and grow its ext2/3/4 or XFS.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        grow: bool,
        /// A cloud-init NoCloud seed written to each disk after the image,
        /// with the target's own values.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cloud_init: Option<CloudInit>,
    },
    /// Run Script: run `script` with `interpreter`; success is `expect_exit`.
    Script {
        /// The script text.
        script: String,
        /// Interpreter (default `/bin/sh`).
        #[serde(default)]
        interpreter: Option<String>,
        /// Exit code that counts as success.
        #[serde(default)]
        expect_exit: i32,
    },
    /// Reboot into an environment (`local`: the target's own disk).
    Reboot {
        /// Where to.
        to: String,
    },
    /// Power the target on, off or cycle it through its BMC: the server
    /// does it, no agent is needed.
    Power {
        /// `on`, `off` or `cycle`.
        op: PowerOp,
    },
}

impl TaskKind {
    /// A short word for the kind.
    pub fn word(&self) -> &'static str {
        match self {
            TaskKind::Create { .. } => "create",
            TaskKind::Distribute { .. } => "distribute",
            TaskKind::Script { .. } => "script",
            TaskKind::Reboot { .. } => "reboot",
            TaskKind::Power { .. } => "power",
        }
    }
}

/// Read-back after writing a disk.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum VerifyMode {
    /// No read-back (every chunk is still checked before it is written).
    Off,
    /// About one chunk in sixteen, plus the first and last.
    #[default]
    Sample,
    /// Every chunk.
    Full,
}

/// A cloud-init NoCloud seed for every target of a Distribute. Its texts
/// are templates: `{hostname}` (the target's name), `{mac}`, `{ip}` (the
/// address its agent reported on that NIC, or empty), `{job}` and each of
/// the target's own variables (`{rack}`, see [`VarsUpdate`]) become that
/// target's values.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CloudInit {
    /// user-data: `#cloud-config` YAML or a script.
    pub user_data: String,
    /// network-config (version 1 or 2), if any.
    #[serde(default)]
    pub network_config: Option<String>,
    /// meta-data `instance-id` [default: `rackcast-{job}-{mac}`, new with
    /// every job, so cloud-init runs its first-boot modules again].
    #[serde(default)]
    pub instance_id: Option<String>,
}

/// The values a [`CloudInit`] template names, for one target.
#[derive(Debug, Clone)]
pub struct SeedValues {
    /// The target's name.
    pub hostname: String,
    /// Its MAC.
    pub mac: MacAddr,
    /// Its address, or empty.
    pub ip: String,
    /// The job.
    pub job: JobId,
    /// The target's own variables (`rackcast target vars`).
    pub vars: BTreeMap<String, String>,
}

impl CloudInit {
    /// The seed for one target: `{hostname}`, `{mac}`, `{ip}`, `{job}` and
    /// the target's own variables filled in (see [`super::template::fill`]).
    pub fn render(&self, v: &SeedValues) -> NoCloudSeed {
        let (mac, job) = (v.mac.to_string(), v.job.0.to_string());
        let value = |name: &str| match name {
            "hostname" => Some(v.hostname.as_str()),
            "mac" => Some(mac.as_str()),
            "ip" => Some(v.ip.as_str()),
            "job" => Some(job.as_str()),
            _ => v.vars.get(name).map(String::as_str),
        };
        let fill = |t: &str| super::template::fill(t, value);
        let id = fill(
            self.instance_id
                .as_deref()
                .unwrap_or("rackcast-{job}-{mac}"),
        );
        NoCloudSeed {
            meta_data: NoCloudSeed::meta_data(&id, &v.hostname),
            user_data: fill(&self.user_data),
            network_config: self.network_config.as_deref().map(fill),
        }
    }
}

/// The three NoCloud files, as one target gets them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NoCloudSeed {
    /// `instance-id` and `local-hostname` (YAML).
    pub meta_data: String,
    /// cloud-config or a script.
    pub user_data: String,
    /// Network config v1 or v2, when given.
    #[serde(default)]
    pub network_config: Option<String>,
}

impl NoCloudSeed {
    /// The usual meta-data for an instance id and a hostname.
    pub fn meta_data(instance_id: &str, hostname: &str) -> String {
        format!("instance-id: {instance_id}\nlocal-hostname: {hostname}\n")
    }
}

/// What a restore does with the blocks its image leaves out (the free
/// space of the filesystems it was captured from).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum UnusedBlocks {
    /// Leave them as the target has them (the fastest).
    #[default]
    Keep,
    /// Make them read as zeros (BLKZEROOUT; a punched hole in a file).
    Zero,
    /// Tell the device they are free (BLKDISCARD; a punched hole in a
    /// file): fastest on flash, contents then undefined.
    Discard,
}

// ---------------------------------------------------------------- views

/// A target's state, as the operator sees it. Every transient state has a
/// deadline (Unix ms) after which the scheduler acts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum TargetState {
    /// Named in a job, never heard from.
    Unknown,
    /// The agent is up in `env` and has nothing to do.
    Waiting {
        /// Environment it runs in.
        env: String,
    },
    /// Told to reboot into `env`; its agent must register from there by `deadline`.
    RebootingTo {
        /// Environment it boots into.
        env: String,
        /// Unix ms.
        #[cfg_attr(feature = "openapi", schema(value_type = u64))]
        deadline: Millis,
    },
    /// Running a task.
    Running {
        /// Job.
        job: JobId,
        /// Task index in the job.
        task: u32,
        /// Attempt, from 1.
        attempt: u32,
        /// Unix ms.
        #[cfg_attr(feature = "openapi", schema(value_type = u64))]
        deadline: Millis,
    },
    /// Failed; held until an operator retries the job or releases the target.
    Failed {
        /// Job.
        job: JobId,
        /// Task index.
        task: u32,
        /// Why.
        error: String,
    },
    /// No work left: booting (or booted) its local disk.
    Local,
}

impl TargetState {
    /// The state's name, as in the JSON `state` field.
    pub fn word(&self) -> &'static str {
        match self {
            TargetState::Unknown => "unknown",
            TargetState::Waiting { .. } => "waiting",
            TargetState::RebootingTo { .. } => "rebooting-to",
            TargetState::Running { .. } => "running",
            TargetState::Failed { .. } => "failed",
            TargetState::Local => "local",
        }
    }
}

/// What the agent reported about its machine.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Inventory {
    /// Host name.
    #[serde(default)]
    pub hostname: String,
    /// CPU model.
    #[serde(default)]
    pub cpu: String,
    /// Logical CPUs.
    #[serde(default)]
    pub cpus: u32,
    /// Memory in bytes.
    #[serde(default)]
    pub memory: u64,
    /// Disks.
    #[serde(default)]
    pub disks: Vec<DiskInfo>,
    /// Network interfaces.
    #[serde(default)]
    pub nics: Vec<NicInfo>,
}

/// A disk the agent sees.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DiskInfo {
    /// Device path or file.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Serial number, where the kernel knows one.
    #[serde(default)]
    pub serial: String,
    /// Model.
    #[serde(default)]
    pub model: String,
}

/// A network interface the agent sees.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NicInfo {
    /// Kernel name.
    pub name: String,
    /// MAC address.
    pub mac: String,
    /// IPv4 addresses.
    #[serde(default)]
    pub ipv4: Vec<String>,
}

/// Progress of the running task.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Progress {
    /// Bytes done.
    pub done: u64,
    /// Bytes in all (0 when unknown).
    pub total: u64,
    /// Bytes per second now.
    pub rate: f64,
    /// A short line for people.
    #[serde(default)]
    pub message: String,
}

/// A target, for the operator.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TargetView {
    /// MAC.
    pub mac: MacAddr,
    /// Name (host name or operator's).
    pub name: String,
    /// State.
    #[serde(flatten)]
    pub state: TargetState,
    /// Environment the agent last registered from (`local` when none).
    pub environment: String,
    /// Inventory.
    pub inventory: Inventory,
    /// Unix ms the agent was last heard from (0: never).
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub last_seen: Millis,
    /// Progress of the running task.
    pub progress: Option<Progress>,
    /// Jobs queued or running for it, in order.
    pub jobs: Vec<JobId>,
    /// Its BMC (never its password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bmc: Option<BmcSettings>,
    /// Power as its BMC last reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power: Option<PowerState>,
    /// The BMC's last error, until a call succeeds again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bmc_error: Option<String>,
    /// Its variables for job templates (`rackcast target vars`).
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
}

/// `PATCH /api/v1/targets/{mac}/vars`: variables to set (or replace), then
/// names to remove.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct VarsUpdate {
    /// Name to value; names of letters, digits, `_`, `-` (at most 64 bytes,
    /// not `hostname`, `mac`, `ip` or `job`); values at most 4096 bytes; at
    /// most 64 per target.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Names to remove (unknown ones are ignored).
    #[serde(default)]
    pub unset: Vec<String>,
}

/// A target's BMC, as the API shows it: never the password, which the
/// server keeps encrypted apart.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BmcSettings {
    /// `redfish://HOST[:PORT][/redfish/v1/Systems/ID]`, `ipmi://HOST[:PORT]` or `wol`.
    pub addr: String,
    /// Login user (Redfish, IPMI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Accept a certificate no trusted CA issued (self-signed BMCs).
    #[serde(default)]
    pub insecure: bool,
}

/// `PUT /api/v1/targets/{mac}/bmc`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BmcRequest {
    /// Where the BMC is and how to log in (the password apart).
    #[serde(flatten)]
    pub settings: BmcSettings,
    /// Login password; stored encrypted, never returned. Omitted: the
    /// stored one is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// `POST /api/v1/targets/{mac}/power`: an action, or `None` for the state only.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PowerRequest {
    /// `on`, `off` or `cycle`; absent: report the state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<PowerOp>,
}

/// `POST /api/v1/targets/{mac}/boot-once`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BootOnceRequest {
    /// `pxe` or `disk`.
    pub device: BootDevice,
}

/// What a power or boot-once call did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PowerAnswer {
    /// The target.
    pub mac: MacAddr,
    /// The power state after the call, as the BMC reports it.
    pub power: PowerState,
}

/// How far a job got on one target.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TargetRun {
    /// MAC.
    pub mac: MacAddr,
    /// `queued`, `running`, `done`, `failed` or `cancelled`.
    pub status: String,
    /// Current task index (= tasks count when done).
    pub task: u32,
    /// Attempt of the current task.
    pub attempt: u32,
    /// Last error.
    pub error: Option<String>,
    /// Progress of the current task.
    pub progress: Option<Progress>,
    /// Tail of the last task's output (Run Script) or result line.
    pub log: String,
}

/// A job, for the operator.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobView {
    /// Id.
    pub id: JobId,
    /// Name.
    pub name: String,
    /// `running`, `done`, `failed` (some target failed, none running) or `cancelled`.
    pub status: String,
    /// The spec as submitted.
    pub spec: JobSpec,
    /// Per target.
    pub targets: Vec<TargetRun>,
    /// Unix ms.
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub created: Millis,
}

/// An image in the library.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImageView {
    /// Name.
    pub name: String,
    /// Root hash (hex).
    pub root: String,
    /// Disk size it restores to.
    pub source_size: u64,
    /// Bytes of the image file.
    pub stored_size: u64,
    /// Chunks.
    pub chunks: u64,
    /// Signed?
    pub signed: bool,
}

/// An automation environment: what a target boots to run the agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Environment {
    /// Name, e.g. `linux-x64`.
    pub name: String,
    /// Kernel, a path under the server's boot root.
    #[serde(default)]
    pub kernel: Option<String>,
    /// Initramfs, a path under the boot root.
    #[serde(default)]
    pub initrd: Option<String>,
    /// Kernel command line (`{server}` is replaced by the server URL, `{token}`
    /// by a one-time boot token minted for the target, `{env}` by the name).
    #[serde(default)]
    pub cmdline: String,
    /// Or an EFI / iPXE file to chain instead of kernel + initrd.
    #[serde(default)]
    pub boot_file: Option<String>,
}

/// One entry of the append-only event log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventRecord {
    /// Sequence number, from 1, gap-free.
    pub seq: u64,
    /// Unix ms.
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub at: Millis,
    /// Who: `operator`, `agent`, `scheduler` or `server`.
    pub actor: String,
    /// What, e.g. `target.state`, `task.started`, `task.finished`, `job.submitted`.
    pub kind: String,
    /// Target MAC, where it concerns one.
    pub target: Option<MacAddr>,
    /// Job, where it concerns one.
    pub job: Option<JobId>,
    /// Task index, where it concerns one.
    pub task: Option<u32>,
    /// Details for people and scripts.
    pub detail: serde_json::Value,
}

// ---------------------------------------------------------------- agent API

/// Which run of which task: `(job, task index, attempt)`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskRef {
    /// Job.
    pub job: JobId,
    /// Task index in the job.
    pub task: u32,
    /// Attempt, from 1.
    pub attempt: u32,
}

/// First call of an agent after it starts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegisterRequest {
    /// The target's identity.
    pub mac: String,
    /// Environment the agent runs in (from the kernel command line or `--env`).
    pub env: String,
    /// The machine.
    pub inventory: Inventory,
    /// A task it is still running from before it lost the server.
    #[serde(default)]
    pub running: Option<TaskRef>,
    /// Agent version.
    #[serde(default)]
    pub version: String,
}

/// The answer to a registration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Registered {
    /// Token for this boot's further calls.
    pub token: String,
    /// Seconds the server holds a poll open when there is nothing to do.
    pub poll_wait: u64,
}

/// A long poll for the next directive.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PollRequest {
    /// The target's identity.
    pub mac: String,
    /// The task the agent is running now, if any.
    #[serde(default)]
    pub running: Option<TaskRef>,
    /// Seconds the server may hold the poll (capped by the server).
    #[serde(default)]
    pub wait: Option<u64>,
}

/// What the server tells an agent to do next.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "directive", rename_all = "kebab-case")]
pub enum Directive {
    /// Nothing now: poll again.
    Wait,
    /// Run this task.
    Run {
        /// Which run.
        task: TaskRef,
        /// What to do.
        work: Work,
        /// Seconds before the server fails the attempt.
        timeout: u64,
    },
    /// Set a one-time network boot into `env` and reboot (`local`: boot the disk).
    Reboot {
        /// Environment to boot next.
        env: String,
        /// When this reboot is itself a Reboot task, the run to report done first.
        task: Option<TaskRef>,
    },
    /// No work left: reboot into the local disk (local test agents exit).
    BootLocal,
    /// The agent's boot token is not known: register again.
    Register,
}

/// The work of a [`Directive::Run`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Work {
    /// Capture `disk` and upload it as `image`.
    Create {
        /// Image name.
        image: String,
        /// Disk (None: the agent's default disk).
        disk: Option<String>,
    },
    /// Join a cast session and write the image to `disk`.
    Distribute {
        /// Image name.
        image: String,
        /// The image root (hex): the receiver accepts only this image.
        root: String,
        /// Disk (None: the agent's default disk).
        disk: Option<String>,
        /// Read-back.
        verify: VerifyMode,
        /// The blocks the image leaves out.
        #[serde(default)]
        unused: UnusedBlocks,
        /// Grow the last partition and its filesystem to the disk's end.
        #[serde(default)]
        grow: bool,
        /// The NoCloud seed to write after the image, rendered for this
        /// target (boxed: directives stay small).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seed: Option<Box<NoCloudSeed>>,
        /// The session to join.
        cast: CastJoin,
    },
    /// Run a script.
    Script {
        /// Script text.
        script: String,
        /// Interpreter.
        interpreter: String,
        /// Exit code that counts as success.
        expect_exit: i32,
    },
}

/// How to join a cast session.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CastJoin {
    /// Multicast group and port, e.g. `239.255.42.1:7400`.
    pub group: String,
    /// The packet MAC key (hex).
    pub key: String,
    /// Seconds without a packet of the session after which the receiver
    /// fetches the chunks it still needs by unicast instead (`GET
    /// /agent/v1/images/by-root/{root}` with ranges); `None`: never (it
    /// asks for a new session).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unicast_after: Option<u32>,
    /// The wire session id: packets of any other session are dropped.
    pub session: u64,
    /// Receiver id to use (stable per target, so a restarted agent is the
    /// same receiver to the sender).
    pub receiver: u64,
}

impl CastJoin {
    /// What a unicast-only Distribute carries: no session to join, fetch
    /// at once (`unicast_after` 0).
    pub fn unicast(receiver: u64) -> CastJoin {
        CastJoin {
            group: String::new(),
            key: String::new(),
            unicast_after: Some(0),
            session: 0,
            receiver,
        }
    }

    /// Whether there is no session: the target fetches by unicast at once.
    pub fn unicast_only(&self) -> bool {
        self.unicast_after == Some(0)
    }
}

/// A report about a running task.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReportRequest {
    /// The target's identity.
    pub mac: String,
    /// Which run.
    pub task: TaskRef,
    /// What happened.
    pub report: TaskReport,
}

/// What an agent reports.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "report", rename_all = "kebab-case")]
pub enum TaskReport {
    /// The agent began (or, after losing the server, is still on) the task.
    Started,
    /// Progress.
    Progress(Progress),
    /// Output lines (Run Script), appended to the task's log.
    Log {
        /// Text.
        text: String,
    },
    /// The cast stream stalled or the session ended early: the agent wants a
    /// (new) session for the same task; what it wrote stays.
    Rejoin {
        /// Why.
        reason: String,
    },
    /// The task ended. The commit point: only this marks a task done.
    Finished {
        /// Success?
        ok: bool,
        /// Why not.
        #[serde(default)]
        error: Option<String>,
        /// A short result line (root, exit code, bytes...).
        #[serde(default)]
        summary: String,
        /// The image root the task wrote (Distribute) or captured (Create),
        /// hex: a Distribute task is done only when it is the root its job
        /// pinned.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        root: Option<String>,
        /// How a Distribute task's chunks came.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        transport: Option<Transport>,
    },
}

/// How a target received an image.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Every chunk from its cast session.
    Multicast,
    /// Every chunk by HTTP range requests from the server (the session was
    /// never heard).
    Unicast,
    /// Some of each: the session went silent part way.
    Mixed,
}

impl Transport {
    /// Its word, as reports and summaries give it.
    pub fn word(self) -> &'static str {
        match self {
            Transport::Multicast => "multicast",
            Transport::Unicast => "unicast",
            Transport::Mixed => "mixed",
        }
    }
}

/// The answer to a report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReportAck {
    /// False when the server no longer wants this run (cancelled, timed out,
    /// superseded): the agent stops it.
    pub keep_going: bool,
}

// ---------------------------------------------------------- operators

/// What an operator token may do.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Everything.
    Admin,
    /// Read only: every state-changing route answers 403.
    Viewer,
}

impl Role {
    /// The word the API and the CLI use.
    pub fn word(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "admin" => Ok(Role::Admin),
            "viewer" => Ok(Role::Viewer),
            other => Err(format!("unknown role {other:?}: admin or viewer")),
        }
    }
}

/// `POST /api/v1/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenRequest {
    /// A name for people and the audit log (letters, digits, `.`, `_`, `-`).
    pub name: String,
    /// What it may do.
    pub role: Role,
}

/// A named operator token, without its secret.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenView {
    /// Its name.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Unix ms.
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub created: Millis,
    /// Unix ms it was revoked, if it was.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>))]
    pub revoked: Option<Millis>,
}

/// The answer to `POST /api/v1/tokens`: the only time the token is shown.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenCreated {
    /// Its name.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The bearer token.
    pub token: String,
}

/// One operator action.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEntry {
    /// Order, from 1.
    pub seq: u64,
    /// Unix ms.
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub at: Millis,
    /// The token's name (`admin` for DATA/admin.token).
    pub token: String,
    /// Where it came from: `api`, or `console MAC` (a machine's preboot
    /// menu; `token` is then `pin`, the operator who logged in there, or
    /// what was typed as the user, marked `(refused)`).
    pub origin: String,
    /// `METHOD /route/template`.
    pub action: String,
    /// The request's path.
    pub path: String,
    /// The HTTP status it was answered with.
    pub status: u16,
}

/// A cast session, for the operator (never its key).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SessionView {
    /// Its id.
    pub id: u64,
    /// The job it serves.
    pub job: JobId,
    /// The image it sends.
    pub image: String,
    /// Its multicast group.
    pub group: String,
    /// `forming`, `running` or `ended`.
    pub phase: String,
    /// Targets in it.
    pub members: Vec<MacAddr>,
    /// Targets the sender saw finish.
    pub done: Vec<MacAddr>,
    /// What its sender measures while it runs, or said when it ended.
    #[serde(default)]
    pub live: Option<CastLive>,
}

/// A running (or just ended) sender's measurements.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CastLive {
    /// Receivers heard from.
    pub joined: u64,
    /// Receivers done.
    pub done: u64,
    /// Send rate now, bytes/s.
    pub rate: u64,
    /// Mean loss its receivers report (0..1).
    pub loss: f64,
    /// Repair symbols per source symbol so far.
    pub repair_overhead: f64,
    /// Receivers the sender counts as stragglers (far behind the rest).
    pub stragglers: u64,
}
