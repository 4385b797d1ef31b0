//! The YAML configuration: serde types matching `config/lb.example.yaml`, parsing, and
//! validation with error messages that name the file, the line, the key path and what is
//! expected.
//!
//! Loading is two steps: [`Config::from_yaml_str`] deserializes (unknown keys are errors
//! everywhere) and then runs [`Config::validate`], which checks everything serde cannot
//! (duplicates, ranges, cross-field rules). Semantic errors are located in the source text by
//! [`locate`], a small indentation-based walker over the block-style YAML, so they carry a line
//! number like parse errors do.

mod advice;
mod announce;
pub mod db;
mod duration;
mod locate;
mod save;
#[cfg(test)]
mod tests;
mod validate;

pub use advice::Advice;
pub use announce::{AnnounceConfig, MaglevConfig, MAX_DRAIN};
pub use duration::{duration_str, format_duration, parse_duration};
pub use locate::locate;
use locate::yaml_error;
pub use save::{save_atomically, write_atomically};
use validate::{check_timing, is_unicast};

pub use db::{DbClusterConfig, DbRole, ReadFallback};

use crate::dataplane::{LoadOptions, XdpMode};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest accepted Maglev table size (the map holds `2 x max_services` tables of this size).
pub const MAX_MAGLEV_TABLE_SIZE: u32 = 1 << 24;
/// Largest accepted `limits.max_services`.
pub const MAX_SERVICES_LIMIT: u32 = 4096;
/// Largest accepted `limits.max_backends`.
pub const MAX_BACKENDS_LIMIT: u32 = 1 << 20;
/// Largest accepted `limits.conntrack_flows`.
pub const MAX_CONNTRACK_FLOWS: u32 = 1 << 26;
/// Largest accepted backend weight.
pub const MAX_WEIGHT: u32 = 1000;
/// Largest accepted `rise` / `fall`.
pub const MAX_RISE_FALL: u32 = 100;

/// A configuration error: where it is and what is expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// File the configuration came from (as given by the caller), if any.
    pub file: Option<String>,
    /// 1-based line of the offending key or value, when known.
    pub line: Option<usize>,
    /// Key path such as `services[1].backends[0].weight` (empty for whole-document errors).
    pub path: String,
    /// What is wrong and what is expected.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "{file}:{line}: ")?,
            (Some(file), None) => write!(f, "{file}: ")?,
            (None, Some(line)) => write!(f, "line {line}: ")?,
            (None, None) => {}
        }
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl ConfigError {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            file: None,
            line: None,
            path: path.into(),
            message: message.into(),
        }
    }
}

/// The whole lbd configuration. See `config/lb.example.yaml` for every key with its default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Interfaces the XDP program is attached to (client side and backend side).
    pub interfaces: Vec<String>,
    /// How the program is attached.
    #[serde(default)]
    pub xdp_mode: XdpMode,
    /// bpffs directory maps and links are pinned under.
    #[serde(default = "default_bpffs_root")]
    pub bpffs_root: PathBuf,
    /// Unix socket of the control API.
    #[serde(default = "default_api_socket")]
    pub api_socket: PathBuf,
    /// Address of the Prometheus endpoint.
    #[serde(default = "default_metrics_listen")]
    pub metrics_listen: SocketAddr,
    /// Source NAT toward the backends.
    pub snat: SnatConfig,
    /// Settings of services with `forwarding: dsr` (docs/scale-out.md, "DSR").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dsr: Option<DsrConfig>,
    /// Conntrack idle timeouts.
    #[serde(default)]
    pub conntrack: ConntrackConfig,
    /// Maglev determinism across nodes: the flow-hash seed and the expected table digest.
    #[serde(default, skip_serializing_if = "MaglevConfig::is_default")]
    pub maglev: MaglevConfig,
    /// Announcing the VIPs through BIRD (docs/scale-out.md, "Several nodes"); absent: lbd
    /// announces nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<AnnounceConfig>,
    /// Capacities fixed at first load.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// PostgreSQL clusters whose members lb checks for their role (see docs/database.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub db_clusters: Vec<DbClusterConfig>,
    /// Load-balanced services.
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
}

fn default_bpffs_root() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/lb")
}
fn default_api_socket() -> PathBuf {
    PathBuf::from("/run/lb/lbd.sock")
}
fn default_metrics_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9560))
}

/// Source NAT settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnatConfig {
    /// Source addresses backends see (1 to `lb_common::MAX_SNAT_ADDRS`).
    pub addresses: Vec<Ipv4Addr>,
    /// Lowest SNAT port.
    #[serde(default = "default_port_min")]
    pub port_min: u16,
    /// Highest SNAT port (inclusive).
    #[serde(default = "default_port_max")]
    pub port_max: u16,
}

/// Settings shared by the services with `forwarding: dsr`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DsrConfig {
    /// Source address of the outer (IPIP) header: this node's address toward the backends.
    /// A service's `dsr_source` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Ipv4Addr>,
}

fn default_port_min() -> u16 {
    lb_common::DEFAULT_SNAT_PORT_MIN
}
fn default_port_max() -> u16 {
    lb_common::DEFAULT_SNAT_PORT_MAX
}

/// The shortest conntrack timeout: twice the data plane's refresh interval
/// (`FLOW_TOUCH_INTERVAL_NS`). A flow's `last_seen_ns` trails its last packet by up to one
/// interval, so a flow idle for less than `timeout - interval` never expires; below two
/// intervals a flow with a packet every second could be expired between two packets.
pub const MIN_CONNTRACK_TIMEOUT: Duration =
    Duration::from_nanos(2 * lb_common::FLOW_TOUCH_INTERVAL_NS);

/// Conntrack idle timeouts, one per TCP state (see docs/architecture.md for the state table).
/// A flow's two entries share the state, so each timeout applies to the whole flow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConntrackConfig {
    /// SYN_SENT: the client's SYN was forwarded, no SYN-ACK seen yet.
    #[serde(default = "default_syn", with = "duration_str")]
    pub syn_timeout: Duration,
    /// SYN_RECV: the backend's SYN-ACK was seen, the client's ACK is pending.
    #[serde(default = "default_syn_recv", with = "duration_str")]
    pub syn_recv_timeout: Duration,
    /// ESTABLISHED: an open connection with no traffic either way.
    #[serde(default = "default_established", with = "duration_str")]
    pub established_timeout: Duration,
    /// FIN_WAIT: one side sent a FIN that is not acknowledged yet.
    #[serde(default = "default_fin_wait", with = "duration_str")]
    pub fin_wait_timeout: Duration,
    /// CLOSE_WAIT: the first FIN was acknowledged; the other side may still send.
    #[serde(default = "default_close_wait", with = "duration_str")]
    pub close_wait_timeout: Duration,
    /// LAST_ACK: both sides sent a FIN, the last ACK is pending.
    #[serde(default = "default_last_ack", with = "duration_str")]
    pub last_ack_timeout: Duration,
    /// TIME_WAIT: both FINs acknowledged; holds the SNAT port as long as the backend's own
    /// TIME_WAIT.
    #[serde(default = "default_time_wait", with = "duration_str")]
    pub time_wait_timeout: Duration,
    /// CLOSE: a RST was seen.
    #[serde(default = "default_close", with = "duration_str")]
    pub close_timeout: Duration,
    /// Removed key (one `closing_timeout` for FIN and RST); kept only to reject it with an
    /// error naming its replacements.
    #[serde(default, skip_serializing)]
    closing_timeout: Option<serde_yaml::Value>,
}

fn state_default(state: u8) -> Duration {
    Duration::from_nanos(lb_common::DEFAULT_TCP_TIMEOUTS_NS[state as usize])
}
fn default_syn() -> Duration {
    state_default(lb_common::tcp_state::SYN_SENT)
}
fn default_syn_recv() -> Duration {
    state_default(lb_common::tcp_state::SYN_RECV)
}
fn default_established() -> Duration {
    state_default(lb_common::tcp_state::ESTABLISHED)
}
fn default_fin_wait() -> Duration {
    state_default(lb_common::tcp_state::FIN_WAIT)
}
fn default_close_wait() -> Duration {
    state_default(lb_common::tcp_state::CLOSE_WAIT)
}
fn default_last_ack() -> Duration {
    state_default(lb_common::tcp_state::LAST_ACK)
}
fn default_time_wait() -> Duration {
    state_default(lb_common::tcp_state::TIME_WAIT)
}
fn default_close() -> Duration {
    state_default(lb_common::tcp_state::CLOSE)
}

impl Default for ConntrackConfig {
    fn default() -> Self {
        Self {
            syn_timeout: default_syn(),
            syn_recv_timeout: default_syn_recv(),
            established_timeout: default_established(),
            fin_wait_timeout: default_fin_wait(),
            close_wait_timeout: default_close_wait(),
            last_ack_timeout: default_last_ack(),
            time_wait_timeout: default_time_wait(),
            close_timeout: default_close(),
            closing_timeout: None,
        }
    }
}

impl ConntrackConfig {
    /// The timeouts by state (the order of `lb_common::tcp_state`), with their key names.
    pub fn by_state(&self) -> [(&'static str, Duration); lb_common::tcp_state::NUM_STATES] {
        [
            ("syn_timeout", self.syn_timeout),
            ("syn_recv_timeout", self.syn_recv_timeout),
            ("established_timeout", self.established_timeout),
            ("fin_wait_timeout", self.fin_wait_timeout),
            ("close_wait_timeout", self.close_wait_timeout),
            ("last_ack_timeout", self.last_ack_timeout),
            ("time_wait_timeout", self.time_wait_timeout),
            ("close_timeout", self.close_timeout),
        ]
    }
}

/// Capacities, fixed when the program is first loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Tracked flows (two conntrack entries each).
    #[serde(default = "default_conntrack_flows")]
    pub conntrack_flows: u32,
    /// Embryonic flows (handshake not completed), kept apart so a SYN flood cannot evict
    /// established flows. Default: an eighth of `conntrack_flows` (1024 to 2^20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embryonic_flows: Option<u32>,
    /// Number of service ids.
    #[serde(default = "default_max_services")]
    pub max_services: u32,
    /// Number of backend ids (id 0 is reserved).
    #[serde(default = "default_max_backends")]
    pub max_backends: u32,
    /// Maglev table size: a prime >= 100 x the largest backend count of any service.
    #[serde(default = "default_maglev_table_size")]
    pub maglev_table_size: u32,
}

fn default_conntrack_flows() -> u32 {
    lb_common::DEFAULT_CONNTRACK_FLOWS
}
fn default_max_services() -> u32 {
    lb_common::DEFAULT_MAX_SERVICES
}
fn default_max_backends() -> u32 {
    lb_common::DEFAULT_MAX_BACKENDS
}
fn default_maglev_table_size() -> u32 {
    lb_common::DEFAULT_MAGLEV_TABLE_SIZE
}

impl LimitsConfig {
    /// `embryonic_flows`, or its default for `conntrack_flows`.
    pub fn embryonic_flows(&self) -> u32 {
        self.embryonic_flows
            .unwrap_or(lb_common::default_embryonic_flows(self.conntrack_flows))
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            conntrack_flows: default_conntrack_flows(),
            embryonic_flows: None,
            max_services: default_max_services(),
            max_backends: default_max_backends(),
            maglev_table_size: default_maglev_table_size(),
        }
    }
}

/// Transport protocol of a service (only TCP for now).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    #[default]
    Tcp,
}

/// One load-balanced service: a VIP:port and its backends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Unique name (letters, digits, `-`, `_`, `.`; at most 63 characters).
    pub name: String,
    /// Virtual IP clients connect to.
    pub vip: Ipv4Addr,
    /// Port clients connect to.
    pub port: u16,
    /// Transport protocol.
    #[serde(default)]
    pub protocol: Protocol,
    /// How packets reach the backends: `nat` (full NAT, the default) or `dsr` (IPIP
    /// encapsulation; the backends answer the clients directly, docs/scale-out.md).
    #[serde(default, skip_serializing_if = "Forwarding::is_nat")]
    pub forwarding: Forwarding,
    /// With `forwarding: dsr`: the outer source address for this service (default
    /// `dsr.source`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dsr_source: Option<Ipv4Addr>,
    /// How backends are checked.
    #[serde(default)]
    pub health_check: HealthCheckConfig,
    /// What happens to the established flows of a backend its health check marks down
    /// (`keep`, the default, or `reset`; see docs/operations.md).
    #[serde(default)]
    pub on_backend_down: OnBackendDown,
    /// Backends (may be empty: new connections are then refused with a RST).
    #[serde(default)]
    pub backends: Vec<BackendConfig>,
    /// A database cluster (`db_clusters[].name`) whose members are this service's backends;
    /// excludes `backends` and `health_check`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_cluster: Option<String>,
    /// With `db_cluster`: `primary` (the write service) or `replica` (the read service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<DbRole>,
    /// With `role: replica`: who serves reads when no replica is eligible (default `primary`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<ReadFallback>,
}

impl ServiceConfig {
    /// The database cluster and role of a database service.
    pub fn db(&self) -> Option<(&str, DbRole)> {
        Some((self.db_cluster.as_deref()?, self.role?))
    }

    /// The read fallback of a database read service (default `primary`).
    pub fn read_fallback(&self) -> ReadFallback {
        self.fallback.unwrap_or_default()
    }
}

/// How a service's packets reach its backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Forwarding {
    /// Full NAT: lb rewrites both addresses and ports, tracks every flow and forwards the
    /// backends' answers.
    #[default]
    Nat,
    /// Direct server return: lb encapsulates the client's packet unchanged in IPIP toward the
    /// backend, which answers the client directly. Stateless per packet (Maglev only), so any
    /// node with the same configuration forwards any packet of a flow alike.
    Dsr,
}

impl Forwarding {
    /// True for the default, full NAT.
    pub fn is_nat(&self) -> bool {
        *self == Forwarding::Nat
    }
}

impl fmt::Display for Forwarding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Forwarding::Nat => "nat",
            Forwarding::Dsr => "dsr",
        })
    }
}

/// Fate of the established flows of a backend marked down by its health check. New flows
/// never go to a down backend either way; a backend removed from the configuration always has
/// its flows reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnBackendDown {
    /// Flows keep going to the backend until it ends or refuses them itself: a flapping
    /// health check cuts no live connection.
    #[default]
    Keep,
    /// The next packet of such a flow, from either side, is answered with a TCP RST and the
    /// flow released: both ends learn at once.
    Reset,
}

impl fmt::Display for OnBackendDown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OnBackendDown::Keep => "keep",
            OnBackendDown::Reset => "reset",
        })
    }
}

/// Kind of health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// A TCP connect to the backend address.
    #[default]
    Tcp,
    /// An HTTP/1.1 GET of `path` expecting `expect_status`.
    Http,
    /// No check: backends are always up.
    None,
}

impl fmt::Display for CheckKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CheckKind::Tcp => "tcp",
            CheckKind::Http => "http",
            CheckKind::None => "none",
        })
    }
}

/// Health check settings of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// Kind of check.
    #[serde(rename = "type", default)]
    pub kind: CheckKind,
    /// Time between checks.
    #[serde(default = "default_interval", with = "duration_str")]
    pub interval: Duration,
    /// Time a check may take (must be shorter than `interval`).
    #[serde(default = "default_timeout", with = "duration_str")]
    pub timeout: Duration,
    /// Consecutive successes that mark a down backend up.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Consecutive failures that mark an up backend down.
    #[serde(default = "default_fall")]
    pub fall: u32,
    /// HTTP path (http only; default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Expected HTTP status (http only; default 200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<u16>,
    /// With `forwarding: dsr`: whether the check goes through the IPIP tunnel (a SYN to the
    /// VIP, encapsulated as lb_xdp does, answered by the backend directly; default true).
    /// `false` checks the backend's own address only, which tests none of the DSR setup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dsr_tunnel: Option<bool>,
}

fn default_interval() -> Duration {
    Duration::from_secs(2)
}
fn default_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        Self {
            kind: CheckKind::Tcp,
            interval: default_interval(),
            timeout: default_timeout(),
            rise: default_rise(),
            fall: default_fall(),
            path: None,
            expect_status: None,
            dsr_tunnel: None,
        }
    }
}

impl HealthCheckConfig {
    /// HTTP path to request (`/` when unset).
    pub fn http_path(&self) -> &str {
        self.path.as_deref().unwrap_or("/")
    }
    /// HTTP status expected (200 when unset).
    pub fn http_expect_status(&self) -> u16 {
        self.expect_status.unwrap_or(200)
    }
    /// Whether a DSR service's backends are checked through the tunnel (true when unset).
    pub fn dsr_tunnel(&self) -> bool {
        self.dsr_tunnel.unwrap_or(true)
    }
}

/// One backend of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Private address and port of the backend.
    pub address: SocketAddrV4,
    /// Relative share of new flows (1..=1000).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Receives new flows only while no primary backend is usable.
    #[serde(default)]
    pub backup: bool,
    /// Keeps existing flows but receives no new ones.
    #[serde(default)]
    pub drain: bool,
}

fn default_weight() -> u32 {
    1
}

impl Config {
    /// Parses and validates `text`; `path_for_errors` is the file name used in messages.
    pub fn from_yaml_str(text: &str, path_for_errors: &str) -> Result<Config, ConfigError> {
        let config: Config = serde_yaml::from_str(text).map_err(|e| {
            let mut err = yaml_error(&e, text);
            err.file = Some(path_for_errors.to_string());
            err
        })?;
        config.validate().map_err(|mut err| {
            err.file = Some(path_for_errors.to_string());
            err.line = locate(text, &err.path);
            err
        })?;
        Ok(config)
    }

    /// Reads, parses and validates the file at `path`, and checks what it names on this host
    /// ([`Config::check_environment`]): what lbd's start, a reload and `lbd --check` accept.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::read(path, true)
    }

    /// [`Config::load`] without the host checks (`lbd --unload` needs only `bpffs_root`).
    pub fn load_unchecked(path: &Path) -> Result<Config, ConfigError> {
        Self::read(path, false)
    }

    fn read(path: &Path, check_host: bool) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: Some(path.display().to_string()),
            line: None,
            path: String::new(),
            message: format!("cannot read the configuration file: {e}"),
        })?;
        let config = Config::from_yaml_str(&text, &path.display().to_string())?;
        config
            .validate_against_file(path)
            .and_then(|()| match check_host {
                true => config.check_environment(),
                false => Ok(()),
            })
            .map_err(|mut err| {
                err.file = Some(path.display().to_string());
                err.line = locate(&text, &err.path);
                err
            })?;
        Ok(config)
    }

    /// Serializes to YAML that [`Config::from_yaml_str`] accepts back unchanged.
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).expect("configuration types always serialize")
    }

    /// The data-plane load options these limits and `bpffs_root` ask for.
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            pin_root: Some(self.bpffs_root.clone()),
            max_services: self.limits.max_services,
            max_backends: self.limits.max_backends,
            maglev_table_size: self.limits.maglev_table_size,
            conntrack_flows: self.limits.conntrack_flows,
            embryonic_flows: self.limits.embryonic_flows(),
        }
    }

    /// `ServiceValue::forwarding` and `dsr_src_be` of service `svc` (validated: a DSR service
    /// has a source, its own or `dsr.source`).
    pub fn forwarding_value(&self, svc: &ServiceConfig) -> (u32, u32) {
        match svc.forwarding {
            Forwarding::Nat => (lb_common::FORWARDING_NAT, 0),
            Forwarding::Dsr => (
                lb_common::FORWARDING_DSR,
                self.dsr_source(svc).map_or(0, lb_common::ipv4_to_be),
            ),
        }
    }

    /// The outer source address of a `forwarding: dsr` service (its own `dsr_source` or
    /// `dsr.source`); `None` for full NAT.
    pub fn dsr_source(&self, svc: &ServiceConfig) -> Option<Ipv4Addr> {
        match svc.forwarding {
            Forwarding::Nat => None,
            Forwarding::Dsr => svc
                .dsr_source
                .or_else(|| self.dsr.as_ref().and_then(|d| d.source)),
        }
    }

    /// The [`lb_common::GlobalConfig`] these settings describe.
    pub fn global_config(&self) -> lb_common::GlobalConfig {
        lb_common::GlobalConfig {
            snat_port_min: self.snat.port_min,
            snat_port_max: self.snat.port_max,
            snat_addr_count: self.snat.addresses.len() as u32,
            tcp_timeouts_ns: self.conntrack.by_state().map(|(_, d)| duration_ns(d)),
            hash_seed: self.maglev.seed,
            ..lb_common::GlobalConfig::default()
        }
    }

    /// The backends of `svc`: its own, or for a database service its cluster's members
    /// (weight 1, in member order).
    pub fn service_backends(&self, svc: &ServiceConfig) -> Vec<BackendConfig> {
        let Some(name) = &svc.db_cluster else {
            return svc.backends.clone();
        };
        self.db_clusters
            .iter()
            .find(|c| &c.name == name)
            .map(|c| {
                c.members
                    .iter()
                    .map(|m| BackendConfig {
                        address: m.address,
                        weight: 1,
                        backup: false,
                        drain: false,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The services as the controller runs them: a database service gets its cluster's
    /// members as backends and no health-check tasks of its own (`type: none`; the cluster's
    /// check rounds decide, see [`crate::db`]).
    pub fn expanded_services(&self) -> Vec<ServiceConfig> {
        self.services
            .iter()
            .map(|s| {
                if s.db_cluster.is_none() {
                    return s.clone();
                }
                let mut e = s.clone();
                e.backends = self.service_backends(s);
                e.health_check.kind = CheckKind::None;
                e
            })
            .collect()
    }

    /// The database cluster named `name`.
    pub fn db_cluster(&self, name: &str) -> Option<&DbClusterConfig> {
        self.db_clusters.iter().find(|c| c.name == name)
    }
}

/// True when `n` is prime (trial division; `n` is at most a few million here).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3u32;
    while u64::from(d) * u64::from(d) <= u64::from(n) {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

/// Smallest prime >= `n`.
pub fn next_prime(n: u32) -> u32 {
    let mut c = n.max(2);
    while !is_prime(c) {
        c += 1;
    }
    c
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
