//! The wire protocol between `lbd` (server) and `lbctl` (client).
//!
//! Framing: one JSON object per line (`\n`-terminated, UTF-8) over a Unix stream socket
//! (default [`DEFAULT_SOCKET_PATH`], mode 0600). Each request line gets exactly one response
//! line; a connection may carry several request/response pairs in sequence.
//!
//! - A [`Request`] is tagged by its `"command"` field (snake_case), e.g.
//!   `{"command":"backend_drain","service":"web","address":"10.1.1.2:8080"}`. Unknown
//!   commands and unknown fields are errors, so a typo never does something else.
//! - A [`Response`] is `{"ok":true,"data":<value>}` or `{"ok":false,"error":"one clear line"}`.
//!   The type of `data` depends on the command; [`Request`]'s variant docs say which.
//!
//! Response data types ([`StatusInfo`], [`StatsSnapshot`], ...) ignore unknown fields when
//! decoded, so a newer `lbd` may add fields without breaking an older `lbctl`.
//!
//! Rates (`*_per_sec`) are computed by `lbd` from its 1-second samples of the per-CPU
//! counters; totals are cumulative since the service or backend was created.
//! `docs/api.md` documents every request and response with examples.

use crate::config::{BackendConfig, ServiceConfig};
use crate::dataplane::{AttachedMode, CtFilterStatus};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;

/// Where `lbd` listens and `lbctl` connects unless told otherwise.
pub const DEFAULT_SOCKET_PATH: &str = "/run/lb/lbd.sock";

/// Longest request line (bytes, newline included) a server should accept. A full service
/// with thousands of backends fits easily.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

/// Longest response line (bytes, newline included) a client accepts: a stats snapshot of
/// the largest configuration (4096 backends at roughly 500 bytes each) fits with room.
pub const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// Errors of encoding or decoding protocol lines.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The line is not valid JSON for the expected type; the message names the field.
    #[error("invalid {what}: {source}")]
    Json {
        /// What was being decoded ("request", "response", "status data", ...).
        what: &'static str,
        /// serde_json's message (names the field, the line and the column).
        #[source]
        source: serde_json::Error,
    },
    /// A response that is neither `{"ok":true,"data":..}` nor `{"ok":false,"error":..}`.
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    /// The server answered `{"ok":false,"error":..}`; the message is the server's, verbatim.
    #[error("{0}")]
    Server(String),
}

/// One request to `lbd`. Serialized as a JSON object tagged by `"command"`.
///
/// Mutating commands change the running state only (like `ipvsadm`); `config_save` persists
/// the running state to the config file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Daemon overview. Data: [`StatusInfo`].
    Status,
    /// All services with their backends and stats. Data: `Vec<`[`ServiceStats`]`>`.
    ServiceList,
    /// Adds a service (same shape as an entry of `services:` in the config).
    /// Data: a short message (string).
    ServiceAdd {
        /// The complete service, validated like the config file.
        service: ServiceConfig,
    },
    /// Removes a service and its backends. Data: a short message (string).
    ServiceRemove {
        /// Service name.
        name: String,
    },
    /// Backends of one service, or of all services when `service` is absent or null.
    /// Data: `Vec<`[`BackendListEntry`]`>`.
    BackendList {
        /// Service name; `None` lists the backends of every service.
        #[serde(default)]
        service: Option<String>,
    },
    /// Adds a backend to a service. Data: a short message (string).
    BackendAdd {
        /// Service name.
        service: String,
        /// The backend, as in the config file.
        backend: BackendConfig,
    },
    /// Removes a backend; its flows move to other backends. Data: a short message.
    BackendRemove {
        /// Service name.
        service: String,
        /// Backend address, `IP:PORT`.
        address: SocketAddrV4,
    },
    /// Drains a backend: no new flows, existing flows stay. Data: a short message.
    BackendDrain {
        /// Service name.
        service: String,
        /// Backend address, `IP:PORT`.
        address: SocketAddrV4,
    },
    /// Ends draining of a backend. Data: a short message.
    BackendUndrain {
        /// Service name.
        service: String,
        /// Backend address, `IP:PORT`.
        address: SocketAddrV4,
    },
    /// Changes a backend's Maglev weight (1..=1000). Data: a short message.
    BackendSetWeight {
        /// Service name.
        service: String,
        /// Backend address, `IP:PORT`.
        address: SocketAddrV4,
        /// New weight.
        weight: u32,
    },
    /// Per-service and per-backend stats plus the global verdict counters.
    /// Data: [`StatsSnapshot`].
    Stats,
    /// Re-reads the config file and applies the difference. Data: a summary (string).
    Reload,
    /// The running state as config YAML (accepted back by `lbd --config`). Data: string.
    ConfigDump,
    /// Writes the running state to the config file atomically (previous file kept as
    /// `<path>.bak`). Data: the path written (string).
    ConfigSave,
    /// Detaches the XDP program, removes the pinned maps and links, and stops `lbd`.
    /// Data: a short message.
    Unload,
    /// Database clusters: primary, timeline and every member's role, LSN, lag and flows.
    /// Data: `Vec<`[`DbClusterInfo`]`>`.
    DbStatus {
        /// Cluster name; `None` shows every cluster.
        #[serde(default)]
        cluster: Option<String>,
    },
    /// Recent database events (primary changes, split brain, fencing, read fallback...),
    /// oldest first. Data: `Vec<`[`DbEventInfo`]`>`.
    DbEvents {
        /// Cluster name; `None` shows every cluster's.
        #[serde(default)]
        cluster: Option<String>,
        /// Most recent events to return (default 50).
        #[serde(default)]
        limit: Option<usize>,
    },
}

/// One database cluster as `db_status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbClusterInfo {
    /// Cluster name.
    pub name: String,
    /// The elected primary (the write services' backend).
    pub primary: Option<SocketAddrV4>,
    /// Its timeline.
    pub timeline: Option<u32>,
    /// When it was elected (Unix milliseconds).
    pub primary_since_unix_ms: Option<u64>,
    /// More than one member claims to be primary.
    pub split_brain: bool,
    /// No replica is eligible for reads.
    pub read_fallback: bool,
    /// The cluster's system identifier (configured or learned).
    pub system_identifier: Option<String>,
    /// Primary changes since lbd started.
    pub primary_changes: u64,
    /// Estimated bytes lost at the last primary change.
    pub lost_bytes_estimate: Option<u64>,
    /// Check rounds decided.
    pub rounds: u64,
    /// Members in configuration order.
    pub members: Vec<DbMemberInfo>,
}

/// One member of a database cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbMemberInfo {
    /// Its address.
    pub address: SocketAddrV4,
    /// Role: unknown, primary, replica, fenced, down, foreign.
    pub role: String,
    /// Check state: up, down or unknown.
    pub state: String,
    /// Outcome of the last check (observed, failed, auth_failed, overloaded, ...).
    pub probe: String,
    /// Latest LSN (`X/Y`): current for the primary, replay for replicas.
    pub lsn: Option<String>,
    /// Lag behind the primary in bytes, when measured.
    pub lag_bytes: Option<u64>,
    /// Timeline it reports.
    pub timeline: Option<u32>,
    /// Eligible for reads.
    pub read_eligible: bool,
    /// Live flows to it over every service of the cluster (last conntrack sweep).
    pub flows: u64,
    /// Why it has this role and eligibility.
    pub why: String,
}

/// One database event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbEventInfo {
    /// Sequence number.
    pub seq: u64,
    /// When (Unix milliseconds).
    pub at_unix_ms: u64,
    /// Cluster name.
    pub cluster: String,
    /// Event name (`primary_elected`, `split_brain`, ...).
    pub event: String,
    /// The member concerned, if one.
    pub member: Option<SocketAddrV4>,
    /// What happened, one line.
    pub message: String,
}

impl Request {
    /// The `"command"` tag of this request (for logs and error messages).
    pub fn command(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::ServiceList => "service_list",
            Request::ServiceAdd { .. } => "service_add",
            Request::ServiceRemove { .. } => "service_remove",
            Request::BackendList { .. } => "backend_list",
            Request::BackendAdd { .. } => "backend_add",
            Request::BackendRemove { .. } => "backend_remove",
            Request::BackendDrain { .. } => "backend_drain",
            Request::BackendUndrain { .. } => "backend_undrain",
            Request::BackendSetWeight { .. } => "backend_set_weight",
            Request::Stats => "stats",
            Request::Reload => "reload",
            Request::ConfigDump => "config_dump",
            Request::ConfigSave => "config_save",
            Request::Unload => "unload",
            Request::DbStatus { .. } => "db_status",
            Request::DbEvents { .. } => "db_events",
        }
    }

    /// True for commands that change lbd's state (or the config file).
    pub fn is_mutating(&self) -> bool {
        !matches!(
            self,
            Request::Status
                | Request::ServiceList
                | Request::BackendList { .. }
                | Request::Stats
                | Request::ConfigDump
                | Request::DbStatus { .. }
                | Request::DbEvents { .. }
        )
    }

    /// Encodes this request as one protocol line (JSON + `\n`).
    pub fn to_line(&self) -> String {
        to_line(self)
    }

    /// Decodes one request line (surrounding whitespace and the newline are ignored).
    pub fn from_line(line: &str) -> Result<Self, ProtoError> {
        serde_json::from_str(line.trim()).map_err(|source| ProtoError::Json {
            what: "request",
            source,
        })
    }
}

/// One response line: `{"ok":true,"data":..}` or `{"ok":false,"error":".."}`.
///
/// Build it with [`Response::success`] or [`Response::failure`]; read it with
/// [`Response::into_data`], which checks that the shape is one of the two.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request succeeded.
    pub ok: bool,
    /// The command's result (present when `ok`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    /// One clear line saying what went wrong and, where possible, how to fix it (present
    /// when not `ok`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    /// A successful response carrying `data`.
    ///
    /// Serializing the protocol's data types cannot fail (no maps with non-string keys);
    /// should a caller pass something that does, the failure becomes an error response.
    pub fn success<T: Serialize>(data: &T) -> Self {
        match serde_json::to_value(data) {
            Ok(value) => Self {
                ok: true,
                data: Some(value),
                error: None,
            },
            Err(e) => Self::failure(format!("internal error: cannot encode the result: {e}")),
        }
    }

    /// A failed response. Newlines in `message` are replaced by spaces: the error is one line.
    pub fn failure(message: impl Into<String>) -> Self {
        let message: String = message.into();
        let message = message.replace(['\n', '\r'], " ");
        Self {
            ok: false,
            data: None,
            error: Some(message),
        }
    }

    /// Encodes this response as one protocol line (JSON + `\n`).
    pub fn to_line(&self) -> String {
        to_line(self)
    }

    /// Decodes one response line.
    pub fn from_line(line: &str) -> Result<Self, ProtoError> {
        serde_json::from_str(line.trim()).map_err(|source| ProtoError::Json {
            what: "response",
            source,
        })
    }

    /// The data of a successful response, [`ProtoError::Server`] for a failure, or
    /// [`ProtoError::Malformed`] for a response that is neither.
    pub fn into_data(self) -> Result<serde_json::Value, ProtoError> {
        match (self.ok, self.data, self.error) {
            (true, Some(data), None) => Ok(data),
            (true, None, None) => Err(ProtoError::Malformed("\"ok\":true without \"data\"")),
            (true, _, Some(_)) => Err(ProtoError::Malformed("\"ok\":true with an \"error\"")),
            (false, _, Some(error)) => Err(ProtoError::Server(error)),
            (false, _, None) => Err(ProtoError::Malformed("\"ok\":false without \"error\"")),
        }
    }

    /// Like [`Response::into_data`], then decodes the data as `T` (`what` names it in errors).
    pub fn into_typed<T: DeserializeOwned>(self, what: &'static str) -> Result<T, ProtoError> {
        let data = self.into_data()?;
        serde_json::from_value(data).map_err(|source| ProtoError::Json { what, source })
    }
}

/// Encodes any serializable value as one compact JSON line with a trailing `\n`.
fn to_line<T: Serialize>(value: &T) -> String {
    // The protocol types serialize infallibly (string map keys, finite floats become
    // numbers, non-finite ones null).
    let mut line = serde_json::to_string(value).unwrap_or_else(|e| {
        serde_json::to_string(&Response::failure(format!("cannot encode: {e}"))).unwrap_or_default()
    });
    line.push('\n');
    line
}

/// Data of `status`: an overview of the daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusInfo {
    /// lbd's version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// lbd's process id.
    pub pid: u32,
    /// Seconds since lbd started.
    pub uptime_secs: u64,
    /// The config file lbd loaded (and `reload`/`config_save` use).
    pub config_path: PathBuf,
    /// Interfaces the XDP program is attached to.
    pub interfaces: Vec<InterfaceInfo>,
    /// Number of services.
    pub services: usize,
    /// Number of backends over all services.
    pub backends: usize,
    /// Backends whose health is [`Health::Up`].
    pub healthy_backends: usize,
    /// bpffs directory the maps and links are pinned under (`None`: not pinned).
    pub pin_root: Option<PathBuf>,
    /// The flow-hash seed and the Maglev table digests (absent from lbd before 0.1 of
    /// issue 13).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maglev: Option<MaglevInfo>,
    /// The VIP announcement through BIRD (`None`: no `announce` section).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<AnnounceInfo>,
}

/// Maglev determinism across nodes (docs/scale-out.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaglevInfo {
    /// The flow-hash seed (`maglev.seed`).
    pub seed: u32,
    /// Digest of the tables with every backend healthy (16 hex digits); what
    /// `maglev.expected_digest` is compared with. An error text when it cannot be computed.
    pub configured_digest: String,
    /// Digest of the tables as written now (after health checks).
    pub live_digest: String,
    /// `maglev.expected_digest`, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_digest: Option<String>,
}

/// The announcer's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnounceInfo {
    /// BIRD's control socket.
    pub bird_socket: PathBuf,
    /// The include file lbd writes.
    pub include_file: PathBuf,
    /// The dead-man device and whether it exists.
    pub device: String,
    /// Whether the dead-man device is up.
    pub device_up: bool,
    /// The last failure (birdc, device), until the next success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Per VIP.
    pub vips: Vec<VipAnnounceInfo>,
}

/// One VIP's announcement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipAnnounceInfo {
    /// The VIP.
    pub vip: std::net::Ipv4Addr,
    /// Whether the rule wants it announced.
    pub wanted: bool,
    /// Whether BIRD was last configured with its route.
    pub announced: bool,
    /// Why (the rule's reason).
    pub reason: String,
}

/// One interface the XDP program is attached to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceInfo {
    /// Interface name, e.g. `eth0`.
    pub name: String,
    /// Kernel interface index.
    pub ifindex: u32,
    /// The attach mode it actually got (`native` or `generic`).
    pub mode: AttachedMode,
}

/// Health of a backend as seen by lbd's checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Passing checks (or checks disabled with `type: none`).
    Up,
    /// Failing checks: out of the Maglev table, its flows move.
    Down,
    /// Not yet enough results to decide (after start or add).
    Unknown,
}

/// Data of `stats`: one sample of everything lbd counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// When the sample was taken, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Every service with its backends.
    pub services: Vec<ServiceStats>,
    /// Global verdict and event counters summed over CPUs, keyed by
    /// [`lb_common::COUNTER_NAMES`] (every name is present).
    pub counters: BTreeMap<String, u64>,
    /// The key filter in front of `LB_CONNTRACK` at the last conntrack sweep; `None` before
    /// the first sweep or from an older lbd.
    #[serde(default)]
    pub conntrack_filter: Option<CtFilterStatus>,
}

/// One service with its configuration summary, stats and backends (also the element of
/// `service_list`'s data).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStats {
    /// Service name.
    pub name: String,
    /// Virtual IP.
    pub vip: Ipv4Addr,
    /// TCP port on the VIP.
    pub port: u16,
    /// Health check type: `tcp`, `http` or `none`.
    pub health_check: String,
    /// Live flows (from the last conntrack sweep).
    pub active_flows: u64,
    /// Flows created (cumulative).
    pub new_flows: u64,
    /// SYNs refused with a RST because no backend was usable (cumulative).
    pub refused: u64,
    /// Packets forwarded client -> backend (cumulative).
    pub packets_in: u64,
    /// Bytes (whole frames) forwarded client -> backend (cumulative).
    pub bytes_in: u64,
    /// Packets forwarded backend -> client (cumulative).
    pub packets_out: u64,
    /// Bytes (whole frames) forwarded backend -> client (cumulative).
    pub bytes_out: u64,
    /// New flows per second (last sample).
    pub new_flows_per_sec: f64,
    /// Packets per second, both directions (last sample).
    pub packets_per_sec: f64,
    /// Bytes per second, both directions (last sample).
    pub bytes_per_sec: f64,
    /// The service's backends.
    pub backends: Vec<BackendStats>,
}

/// One backend with its state and stats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendStats {
    /// Backend address.
    pub address: SocketAddrV4,
    /// Backend id in the data plane (stable for the backend's life).
    pub id: u32,
    /// Maglev weight.
    pub weight: u32,
    /// Gets traffic only while no primary backend is healthy.
    pub backup: bool,
    /// Health check verdict.
    pub health: Health,
    /// Drained by config or by `backend_drain`: no new flows.
    pub drained: bool,
    /// Whether the backend is currently in the service's Maglev table (gets new flows).
    pub in_table: bool,
    /// Live flows (from the last conntrack sweep).
    pub active_flows: u64,
    /// Flows created (cumulative).
    pub new_flows: u64,
    /// Packets forwarded client -> backend (cumulative).
    pub packets_in: u64,
    /// Bytes (whole frames) forwarded client -> backend (cumulative).
    pub bytes_in: u64,
    /// Packets forwarded backend -> client (cumulative).
    pub packets_out: u64,
    /// Bytes (whole frames) forwarded backend -> client (cumulative).
    pub bytes_out: u64,
    /// New flows per second (last sample).
    pub new_flows_per_sec: f64,
    /// Packets per second, both directions (last sample).
    pub packets_per_sec: f64,
    /// Bytes per second, both directions (last sample).
    pub bytes_per_sec: f64,
    /// Health transitions (up <-> down) since the backend was added.
    pub transitions: u64,
    /// The last transition, human readable (e.g. `down 12s ago: connect refused`), if any.
    pub last_transition: Option<String>,
    /// Seconds since the health checks last gave a verdict (passed or failed), or since they
    /// started; `None` when the service has no checks (`type: none`) or from an older lbd.
    #[serde(default)]
    pub last_verdict_secs: Option<u64>,
    /// True when no verdict came for longer than `interval x (fall + 1)` (every round could
    /// not run, see `lb_health_checks_not_run_total`): `health` is the last known state.
    #[serde(default)]
    pub health_stale: bool,
    /// Why the backend is suspect now (passive detections by the data plane, failed checks);
    /// `None` when it is not (or from an older lbd).
    #[serde(default)]
    pub suspect: Option<SuspectInfo>,
    /// The last suspicion that ended, and how; `None` when there was none.
    #[serde(default)]
    pub last_suspicion: Option<SuspicionEndInfo>,
    /// Its endpoint's SNAT port pool at the last conntrack sweep; `None` before the first
    /// sweep, for a backend of a `forwarding: dsr` service, or from an older lbd.
    #[serde(default)]
    pub snat_ports: Option<SnatPortsInfo>,
}

/// SNAT ports held by the flows to one backend endpoint (address:port), counted by the
/// conntrack sweep. The pool belongs to the endpoint: services sharing an endpoint share it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnatPortsInfo {
    /// Ports in use over every SNAT address (live reply entries, embryonic ones included).
    pub in_use: u64,
    /// Ports in the pool: `addresses x ports_per_address`.
    pub total: u64,
    /// Ports in use on the SNAT address that holds the most. A flow's SNAT address is picked
    /// by hash, so new flows are dropped (`drop_snat_exhausted`) as this address fills, even
    /// while others have room.
    pub busiest_address_in_use: u64,
    /// Ports per SNAT address (`snat.port_max - snat.port_min + 1`).
    pub ports_per_address: u64,
    /// SNAT addresses configured.
    pub addresses: u64,
}

/// Why a backend is suspect (see `lb::suspicion`): the evidence gathered since the first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuspectInfo {
    /// One line: `passive: RST to SYN`, `passive: SYN unanswered`, `active: 3 checks failed`,
    /// or the passive reason and the failed checks joined by `; `.
    pub why: String,
    /// The first passive detection's reason (`rst_to_syn`, `syn_unanswered`: the `reason`
    /// label of `lb_passive_detections_total`); `None` when only checks failed.
    pub passive_reason: Option<String>,
    /// Passive detections received during it.
    pub detections: u64,
    /// Checks (scheduled or immediate) failed during it.
    pub failed_checks: u32,
    /// The last failed check's message.
    pub last_failure: Option<String>,
    /// When the first evidence came (Unix milliseconds).
    pub since_unix_ms: u64,
    /// Seconds since then.
    pub age_secs: u64,
}

/// A suspicion that ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuspicionEndInfo {
    /// Why it was suspect, as [`SuspectInfo::why`] said when it ended.
    pub why: String,
    /// When it began (Unix milliseconds).
    pub since_unix_ms: u64,
    /// When it ended (Unix milliseconds).
    pub ended_unix_ms: u64,
    /// How long it lasted (milliseconds).
    pub lasted_ms: u64,
    /// Seconds since it ended.
    pub ago_secs: u64,
    /// How it ended: `cleared by a passing immediate check`, `cleared by a passing check`,
    /// `recovered: marked up again`, `expired: the data plane's hold ran out unconfirmed`.
    pub how: String,
}

/// An element of `backend_list`'s data: a backend with the name of its service.
///
/// On the wire the backend's fields sit next to `service` in one flat object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendListEntry {
    /// The service the backend belongs to.
    pub service: String,
    /// The backend.
    #[serde(flatten)]
    pub backend: BackendStats,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn backend(addr: &str) -> BackendStats {
        BackendStats {
            address: addr.parse().unwrap(),
            id: 7,
            weight: 2,
            backup: false,
            health: Health::Up,
            drained: false,
            in_table: true,
            active_flows: 402,
            new_flows: 12034,
            packets_in: 1,
            bytes_in: 2,
            packets_out: 3,
            bytes_out: 4,
            new_flows_per_sec: 117.0,
            packets_per_sec: 4000.5,
            bytes_per_sec: 3.25e6,
            transitions: 1,
            last_transition: Some("up 3s ago".into()),
            last_verdict_secs: Some(1),
            health_stale: false,
            suspect: None,
            last_suspicion: None,
            snat_ports: Some(SnatPortsInfo {
                in_use: 5,
                total: 2048,
                busiest_address_in_use: 3,
                ports_per_address: 1024,
                addresses: 2,
            }),
        }
    }

    fn service() -> ServiceStats {
        ServiceStats {
            name: "web".into(),
            vip: Ipv4Addr::new(192, 0, 2, 10),
            port: 80,
            health_check: "http".into(),
            active_flows: 1200,
            new_flows: 5,
            refused: 0,
            packets_in: 10,
            bytes_in: 20,
            packets_out: 30,
            bytes_out: 40,
            new_flows_per_sec: 350.0,
            packets_per_sec: 12100.0,
            bytes_per_sec: 1.0e7,
            backends: vec![backend("10.1.1.2:8080")],
        }
    }

    /// serialize -> deserialize -> serialize gives the same JSON, and decoding the JSON
    /// back gives an equal value where the type has `PartialEq`.
    fn round_trip_request(req: &Request) -> serde_json::Value {
        let line = req.to_line();
        assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
        let back = Request::from_line(&line).unwrap();
        assert_eq!(back.command(), req.command());
        assert_eq!(back.to_line(), line);
        serde_json::from_str(&line).unwrap()
    }

    #[test]
    fn simple_requests_have_the_documented_json() {
        let cases = [
            (Request::Status, json!({"command": "status"})),
            (Request::ServiceList, json!({"command": "service_list"})),
            (Request::Stats, json!({"command": "stats"})),
            (Request::Reload, json!({"command": "reload"})),
            (Request::ConfigDump, json!({"command": "config_dump"})),
            (Request::ConfigSave, json!({"command": "config_save"})),
            (Request::Unload, json!({"command": "unload"})),
            (
                Request::ServiceRemove { name: "web".into() },
                json!({"command": "service_remove", "name": "web"}),
            ),
            (
                Request::BackendList { service: None },
                json!({"command": "backend_list", "service": null}),
            ),
            (
                Request::BackendDrain {
                    service: "web".into(),
                    address: "10.1.1.2:8080".parse().unwrap(),
                },
                json!({"command": "backend_drain", "service": "web", "address": "10.1.1.2:8080"}),
            ),
            (
                Request::BackendUndrain {
                    service: "web".into(),
                    address: "10.1.1.2:8080".parse().unwrap(),
                },
                json!({"command": "backend_undrain", "service": "web", "address": "10.1.1.2:8080"}),
            ),
            (
                Request::BackendRemove {
                    service: "web".into(),
                    address: "10.1.1.2:8080".parse().unwrap(),
                },
                json!({"command": "backend_remove", "service": "web", "address": "10.1.1.2:8080"}),
            ),
            (
                Request::BackendSetWeight {
                    service: "web".into(),
                    address: "10.1.1.2:8080".parse().unwrap(),
                    weight: 5,
                },
                json!({"command": "backend_set_weight", "service": "web",
                       "address": "10.1.1.2:8080", "weight": 5}),
            ),
        ];
        for (req, want) in cases {
            assert_eq!(round_trip_request(&req), want, "{}", req.command());
        }
    }

    #[test]
    fn exact_line_of_a_drain_request() {
        let req = Request::BackendDrain {
            service: "web".into(),
            address: "10.1.1.2:8080".parse().unwrap(),
        };
        assert_eq!(
            req.to_line(),
            "{\"command\":\"backend_drain\",\"service\":\"web\",\"address\":\"10.1.1.2:8080\"}\n"
        );
    }

    #[test]
    fn backend_add_and_service_add_carry_config_types() {
        let backend: BackendConfig = serde_json::from_value(json!({
            "address": "10.1.1.2:8080", "weight": 3, "backup": true, "drain": false
        }))
        .unwrap();
        let req = Request::BackendAdd {
            service: "web".into(),
            backend,
        };
        let v = round_trip_request(&req);
        assert_eq!(v["command"], "backend_add");
        assert_eq!(v["service"], "web");
        assert_eq!(v["backend"]["address"], "10.1.1.2:8080");
        assert_eq!(v["backend"]["weight"], 3);
        assert_eq!(v["backend"]["backup"], true);

        // A service exactly as in config/lb.example.yaml (minus optional keys).
        let service: ServiceConfig = serde_json::from_value(json!({
            "name": "web", "vip": "192.0.2.10", "port": 80,
            "backends": [{"address": "10.1.1.2:8080"}]
        }))
        .unwrap();
        let v = round_trip_request(&Request::ServiceAdd { service });
        assert_eq!(v["command"], "service_add");
        assert_eq!(v["service"]["name"], "web");
        assert_eq!(v["service"]["vip"], "192.0.2.10");
        assert_eq!(v["service"]["backends"][0]["address"], "10.1.1.2:8080");
        assert_eq!(v["service"]["backends"][0]["weight"], 1);
    }

    #[test]
    fn backend_list_service_may_be_omitted() {
        match Request::from_line("{\"command\":\"backend_list\"}").unwrap() {
            Request::BackendList { service: None } => {}
            other => panic!("unexpected {other:?}"),
        }
        match Request::from_line("{\"command\":\"backend_list\",\"service\":\"web\"}\n").unwrap() {
            Request::BackendList { service: Some(s) } => assert_eq!(s, "web"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn bad_requests_are_errors_naming_the_problem() {
        let err = Request::from_line("{\"command\":\"stop\"}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown variant `stop`"), "{err}");
        let err = Request::from_line(
            "{\"command\":\"backend_drain\",\"service\":\"web\",\"adress\":\"10.1.1.2:80\"}",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("adress"), "{err}");
        let err = Request::from_line(
            "{\"command\":\"backend_drain\",\"service\":\"web\",\"address\":\"10.1.1.2\"}",
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("invalid request:"), "{err}");
        let err = Request::from_line("{\"service\":\"web\"}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("command"), "{err}");
        assert!(Request::from_line("not json").is_err());
    }

    #[test]
    fn responses_have_the_documented_shape() {
        let ok = Response::success(&"drained 10.1.1.2:8080");
        assert_eq!(
            ok.to_line(),
            "{\"ok\":true,\"data\":\"drained 10.1.1.2:8080\"}\n"
        );
        let err = Response::failure("no service named `api`\n(known: web)");
        assert_eq!(
            err.to_line(),
            "{\"ok\":false,\"error\":\"no service named `api` (known: web)\"}\n"
        );
        assert_eq!(Response::from_line(&ok.to_line()).unwrap(), ok);
        assert_eq!(Response::from_line(&err.to_line()).unwrap(), err);
        assert_eq!(ok.into_data().unwrap(), json!("drained 10.1.1.2:8080"));
        match err.into_data() {
            Err(ProtoError::Server(m)) => assert_eq!(m, "no service named `api` (known: web)"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn malformed_responses_are_rejected() {
        for line in [
            "{\"ok\":true}",
            "{\"ok\":false}",
            "{\"ok\":true,\"data\":1,\"error\":\"x\"}",
        ] {
            let r = Response::from_line(line).unwrap();
            assert!(
                matches!(r.into_data(), Err(ProtoError::Malformed(_))),
                "{line}"
            );
        }
        assert!(Response::from_line("{\"data\":1}").is_err());
    }

    #[test]
    fn data_types_round_trip() {
        let status = StatusInfo {
            version: "0.1.0".into(),
            pid: 42,
            uptime_secs: 7384,
            config_path: "/etc/lb/lb.yaml".into(),
            interfaces: vec![InterfaceInfo {
                name: "eth0".into(),
                ifindex: 2,
                mode: AttachedMode::Native,
            }],
            services: 1,
            backends: 3,
            healthy_backends: 2,
            pin_root: Some("/sys/fs/bpf/lb".into()),
            maglev: None,
            announce: None,
        };
        let line = Response::success(&status).to_line();
        let back: StatusInfo = Response::from_line(&line)
            .unwrap()
            .into_typed("status data")
            .unwrap();
        assert_eq!(back, status);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["data"]["interfaces"][0]["mode"], "native");
        assert_eq!(v["data"]["pin_root"], "/sys/fs/bpf/lb");

        let mut counters = BTreeMap::new();
        for name in lb_common::COUNTER_NAMES {
            counters.insert(name.to_string(), 1);
        }
        let snap = StatsSnapshot {
            timestamp_ms: 1_700_000_000_000,
            services: vec![service()],
            counters,
            conntrack_filter: Some(CtFilterStatus {
                enabled: true,
                bits_set: 3,
                bits_total: 16384,
                rebuilds: 2,
            }),
        };
        let back: StatsSnapshot = Response::from_line(&Response::success(&snap).to_line())
            .unwrap()
            .into_typed("stats data")
            .unwrap();
        assert_eq!(back, snap);
        // From an older lbd: no filter.
        let mut v = serde_json::to_value(&snap).unwrap();
        v.as_object_mut().unwrap().remove("conntrack_filter");
        let old: StatsSnapshot = serde_json::from_value(v).unwrap();
        assert_eq!(old.conntrack_filter, None);

        let list = vec![service()];
        let back: Vec<ServiceStats> = Response::from_line(&Response::success(&list).to_line())
            .unwrap()
            .into_typed("service list")
            .unwrap();
        assert_eq!(back, list);
    }

    #[test]
    fn backend_list_entry_is_flat_and_health_lowercase() {
        let mut b = backend("10.1.1.2:8080");
        b.health = Health::Down;
        let entry = BackendListEntry {
            service: "web".into(),
            backend: b,
        };
        let v = serde_json::to_value(&entry).unwrap();
        assert_eq!(v["service"], "web");
        assert_eq!(v["address"], "10.1.1.2:8080");
        assert_eq!(v["health"], "down");
        assert!(v.get("backend").is_none());
        let back: BackendListEntry = serde_json::from_value(v).unwrap();
        assert_eq!(back, entry);
        for (h, s) in [
            (Health::Up, "\"up\""),
            (Health::Down, "\"down\""),
            (Health::Unknown, "\"unknown\""),
        ] {
            assert_eq!(serde_json::to_string(&h).unwrap(), s);
        }
    }

    #[test]
    fn data_tolerates_unknown_fields_from_newer_servers() {
        let mut v = serde_json::to_value(backend("10.1.1.2:8080")).unwrap();
        v["added_in_a_later_version"] = json!(1);
        let b: BackendStats = serde_json::from_value(v).unwrap();
        assert_eq!(b, backend("10.1.1.2:8080"));
    }

    #[test]
    fn backend_from_an_older_lbd_has_no_snat_ports() {
        let mut v = serde_json::to_value(backend("10.1.1.2:8080")).unwrap();
        assert_eq!(v["snat_ports"]["busiest_address_in_use"], 3);
        v.as_object_mut().unwrap().remove("snat_ports");
        let b: BackendStats = serde_json::from_value(v).unwrap();
        assert_eq!(b.snat_ports, None);
    }

    #[test]
    fn mutating_classification() {
        assert!(!Request::Status.is_mutating());
        assert!(!Request::Stats.is_mutating());
        assert!(!Request::ConfigDump.is_mutating());
        assert!(Request::ConfigSave.is_mutating());
        assert!(Request::Unload.is_mutating());
        assert!(Request::ServiceRemove { name: "x".into() }.is_mutating());
    }
}
