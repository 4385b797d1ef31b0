//! The YAML configuration: serde types matching `config/lb.example.yaml`, parsing, and
//! validation with error messages that name the file, the line, the key path and what is
//! expected.
//!
//! Loading is two steps: [`Config::from_yaml_str`] deserializes (unknown keys are errors
//! everywhere) and then runs [`Config::validate`], which checks everything serde cannot
//! (duplicates, ranges, cross-field rules). Semantic errors are located in the source text by
//! [`locate`], a small indentation-based walker over the block-style YAML, so they carry a line
//! number like parse errors do.

pub mod db;

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
    /// Conntrack idle timeouts.
    #[serde(default)]
    pub conntrack: ConntrackConfig,
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

    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: Some(path.display().to_string()),
            line: None,
            path: String::new(),
            message: format!("cannot read the configuration file: {e}"),
        })?;
        Config::from_yaml_str(&text, &path.display().to_string())
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

    /// The [`lb_common::GlobalConfig`] these settings describe (hash seed left at default).
    pub fn global_config(&self) -> lb_common::GlobalConfig {
        lb_common::GlobalConfig {
            snat_port_min: self.snat.port_min,
            snat_port_max: self.snat.port_max,
            snat_addr_count: self.snat.addresses.len() as u32,
            tcp_timeouts_ns: self.conntrack.by_state().map(|(_, d)| duration_ns(d)),
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

    /// Checks everything serde cannot: the returned error has a key path but no file/line.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_globals()?;
        db::validate_clusters(&self.db_clusters)?;
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut keys: HashMap<(Ipv4Addr, u16), usize> = HashMap::new();
        let mut total_backends = 0usize;
        for (i, svc) in self.services.iter().enumerate() {
            let p = format!("services[{i}]");
            validate_service(svc, &p)?;
            db::validate_db_service(svc, &p, &self.db_clusters)?;
            if let Some(first) = names.insert(svc.name.as_str(), i) {
                return Err(ConfigError::new(
                    format!("{p}.name"),
                    format!(
                        "service name \"{}\" is already used by services[{first}]; names must be unique",
                        svc.name
                    ),
                ));
            }
            if let Some(first) = keys.insert((svc.vip, svc.port), i) {
                return Err(ConfigError::new(
                    format!("{p}.port"),
                    format!(
                        "{}:{} is already used by services[{first}] (\"{}\"); each VIP:port must be unique",
                        svc.vip, svc.port, self.services[first].name
                    ),
                ));
            }
            if self.snat.addresses.contains(&svc.vip) {
                return Err(ConfigError::new(
                    format!("{p}.vip"),
                    format!(
                        "{} is also a SNAT address (snat.addresses); a VIP must differ from every SNAT address, or replies to the SNAT address would be taken for service traffic",
                        svc.vip
                    ),
                ));
            }
            let count = self.service_backends(svc).len();
            let needed = count as u64 * 100;
            if needed > u64::from(self.limits.maglev_table_size) {
                return Err(ConfigError::new(
                    format!("{p}.backends"),
                    format!(
                        "{} backends need limits.maglev_table_size >= {needed} (100 x backends), it is {}; raise it to a prime such as {}",
                        count,
                        self.limits.maglev_table_size,
                        next_prime(needed as u32)
                    ),
                ));
            }
            total_backends += count;
        }
        if self.services.len() > self.limits.max_services as usize {
            return Err(ConfigError::new(
                "services",
                format!(
                    "{} services configured but limits.max_services is {}; raise the limit",
                    self.services.len(),
                    self.limits.max_services
                ),
            ));
        }
        if total_backends >= self.limits.max_backends as usize {
            return Err(ConfigError::new(
                "services",
                format!(
                    "{total_backends} backends configured but limits.max_backends is {} (id 0 is reserved, so at most {}); raise the limit",
                    self.limits.max_backends,
                    self.limits.max_backends - 1
                ),
            ));
        }
        Ok(())
    }

    fn validate_globals(&self) -> Result<(), ConfigError> {
        if self.interfaces.is_empty() {
            return Err(ConfigError::new(
                "interfaces",
                "at least one interface is required (the client-facing and backend-facing ones)",
            ));
        }
        let mut seen = HashSet::new();
        for (i, name) in self.interfaces.iter().enumerate() {
            let p = format!("interfaces[{i}]");
            if name.is_empty()
                || name.len() > 15
                || name.contains(['/', ' ', '\t'])
                || name == "."
                || name == ".."
            {
                return Err(ConfigError::new(
                    p,
                    format!("\"{name}\" is not a valid interface name (1 to 15 characters, no '/' or spaces)"),
                ));
            }
            if !seen.insert(name.as_str()) {
                return Err(ConfigError::new(
                    p,
                    format!("interface \"{name}\" is listed twice; list each interface once"),
                ));
            }
        }
        if !self.bpffs_root.is_absolute() {
            return Err(ConfigError::new(
                "bpffs_root",
                "expected an absolute path under a bpffs mount, e.g. /sys/fs/bpf/lb",
            ));
        }
        if !self.api_socket.is_absolute() {
            return Err(ConfigError::new(
                "api_socket",
                "expected an absolute path, e.g. /run/lb/lbd.sock",
            ));
        }
        let snat = &self.snat;
        if snat.addresses.is_empty() || snat.addresses.len() > lb_common::MAX_SNAT_ADDRS as usize {
            return Err(ConfigError::new(
                "snat.addresses",
                format!(
                    "expected 1 to {} SNAT addresses, got {}",
                    lb_common::MAX_SNAT_ADDRS,
                    snat.addresses.len()
                ),
            ));
        }
        for (i, a) in snat.addresses.iter().enumerate() {
            if !is_unicast(*a) {
                return Err(ConfigError::new(
                    format!("snat.addresses[{i}]"),
                    format!("{a} is not a unicast address; expected the balancer's private-side address"),
                ));
            }
            if snat.addresses[..i].contains(a) {
                return Err(ConfigError::new(
                    format!("snat.addresses[{i}]"),
                    format!("{a} is listed twice"),
                ));
            }
        }
        if snat.port_min == 0 {
            return Err(ConfigError::new(
                "snat.port_min",
                "expected a port between 1 and 65535, got 0",
            ));
        }
        if snat.port_max < snat.port_min {
            return Err(ConfigError::new(
                "snat.port_max",
                format!(
                    "expected port_max >= port_min ({}), got {}",
                    snat.port_min, snat.port_max
                ),
            ));
        }
        let ct = &self.conntrack;
        if ct.closing_timeout.is_some() {
            return Err(ConfigError::new(
                "conntrack.closing_timeout",
                "this key was replaced by one timeout per TCP state: fin_wait_timeout, close_wait_timeout, last_ack_timeout, time_wait_timeout (after FIN) and close_timeout (after RST)",
            ));
        }
        for (key, d) in ct.by_state() {
            if d < MIN_CONNTRACK_TIMEOUT {
                return Err(ConfigError::new(
                    format!("conntrack.{key}"),
                    format!(
                        "expected at least {}, got {}: the data plane refreshes a flow's last-seen time at most once every {}, so a shorter timeout can expire a flow that is still in use",
                        format_duration(MIN_CONNTRACK_TIMEOUT),
                        format_duration(d),
                        format_duration(Duration::from_nanos(lb_common::FLOW_TOUCH_INTERVAL_NS)),
                    ),
                ));
            }
            if d > Duration::from_secs(7 * 86400) {
                return Err(ConfigError::new(
                    format!("conntrack.{key}"),
                    format!(
                        "expected a duration between {} and 7d, got {}",
                        format_duration(MIN_CONNTRACK_TIMEOUT),
                        format_duration(d)
                    ),
                ));
            }
        }
        let l = &self.limits;
        check_range(
            "limits.conntrack_flows",
            l.conntrack_flows,
            1024,
            MAX_CONNTRACK_FLOWS,
        )?;
        if let Some(n) = l.embryonic_flows {
            check_range("limits.embryonic_flows", n, 256, l.conntrack_flows)?;
        }
        check_range("limits.max_services", l.max_services, 1, MAX_SERVICES_LIMIT)?;
        check_range("limits.max_backends", l.max_backends, 2, MAX_BACKENDS_LIMIT)?;
        if !is_prime(l.maglev_table_size)
            || l.maglev_table_size < 101
            || l.maglev_table_size > MAX_MAGLEV_TABLE_SIZE
        {
            return Err(ConfigError::new(
                "limits.maglev_table_size",
                format!(
                    "expected a prime between 101 and {MAX_MAGLEV_TABLE_SIZE}, got {} (e.g. 65537)",
                    l.maglev_table_size
                ),
            ));
        }
        let slots = 2 * u64::from(l.max_services) * u64::from(l.maglev_table_size);
        if slots > u64::from(u32::MAX) / 4 {
            return Err(ConfigError::new(
                "limits.maglev_table_size",
                format!(
                    "2 x max_services x maglev_table_size = {slots} slots is too large (at most {}); lower one of them",
                    u32::MAX / 4
                ),
            ));
        }
        Ok(())
    }
}

fn validate_service(svc: &ServiceConfig, p: &str) -> Result<(), ConfigError> {
    if svc.name.is_empty()
        || svc.name.len() > 63
        || !svc
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(ConfigError::new(
            format!("{p}.name"),
            format!(
                "\"{}\" is not a valid service name (1 to 63 letters, digits, '-', '_' or '.')",
                svc.name
            ),
        ));
    }
    if !is_unicast(svc.vip) {
        return Err(ConfigError::new(
            format!("{p}.vip"),
            format!(
                "{} is not a unicast address; expected the VIP clients connect to",
                svc.vip
            ),
        ));
    }
    if svc.port == 0 {
        return Err(ConfigError::new(
            format!("{p}.port"),
            "expected a port between 1 and 65535, got 0",
        ));
    }
    let hc = &svc.health_check;
    let hp = format!("{p}.health_check");
    check_timing(&hp, hc.interval, hc.timeout, hc.rise, hc.fall)?;
    if hc.kind == CheckKind::Http {
        if let Some(path) = &hc.path {
            if !path.starts_with('/')
                || path
                    .chars()
                    .any(|c| c.is_ascii_whitespace() || c.is_control())
            {
                return Err(ConfigError::new(
                    format!("{hp}.path"),
                    format!("\"{path}\" is not a valid HTTP path (starts with '/', no spaces)"),
                ));
            }
        }
        if let Some(status) = hc.expect_status {
            if !(100..=599).contains(&status) {
                return Err(ConfigError::new(
                    format!("{hp}.expect_status"),
                    format!("expected an HTTP status between 100 and 599, got {status}"),
                ));
            }
        }
    } else {
        for (key, set) in [
            ("path", hc.path.is_some()),
            ("expect_status", hc.expect_status.is_some()),
        ] {
            if set {
                return Err(ConfigError::new(
                    format!("{hp}.{key}"),
                    format!(
                        "only valid with type: http (type is {}); remove it",
                        hc.kind
                    ),
                ));
            }
        }
    }
    for (j, b) in svc.backends.iter().enumerate() {
        let bp = format!("{p}.backends[{j}]");
        if !is_unicast(*b.address.ip()) || b.address.port() == 0 {
            return Err(ConfigError::new(
                format!("{bp}.address"),
                format!(
                    "{} is not a usable backend address; expected unicast IPv4 address:port with a non-zero port",
                    b.address
                ),
            ));
        }
        if let Some(k) = svc.backends[..j]
            .iter()
            .position(|o| o.address == b.address)
        {
            return Err(ConfigError::new(
                format!("{bp}.address"),
                format!(
                    "backend {} is already listed as backends[{k}] of this service",
                    b.address
                ),
            ));
        }
        check_range(&format!("{bp}.weight"), b.weight, 1, MAX_WEIGHT)?;
    }
    Ok(())
}

/// The timing of a check at `hp` (a service's `health_check`, a database cluster's `check`):
/// interval 100ms..=1h, timeout above 0 and below the interval, rise and fall in range.
fn check_timing(
    hp: &str,
    interval: Duration,
    timeout: Duration,
    rise: u32,
    fall: u32,
) -> Result<(), ConfigError> {
    if interval < Duration::from_millis(100) || interval > Duration::from_secs(3600) {
        return Err(ConfigError::new(
            format!("{hp}.interval"),
            format!(
                "expected a duration between 100ms and 1h, got {}",
                format_duration(interval)
            ),
        ));
    }
    if timeout.is_zero() || timeout >= interval {
        return Err(ConfigError::new(
            format!("{hp}.timeout"),
            format!(
                "expected a duration above 0 and shorter than interval ({}), got {}",
                format_duration(interval),
                format_duration(timeout)
            ),
        ));
    }
    check_range(&format!("{hp}.rise"), rise, 1, MAX_RISE_FALL)?;
    check_range(&format!("{hp}.fall"), fall, 1, MAX_RISE_FALL)
}

fn check_range(path: &str, v: u32, min: u32, max: u32) -> Result<(), ConfigError> {
    if v < min || v > max {
        return Err(ConfigError::new(
            path,
            format!("expected a value between {min} and {max}, got {v}"),
        ));
    }
    Ok(())
}

fn is_unicast(a: Ipv4Addr) -> bool {
    !(a.is_unspecified() || a.is_broadcast() || a.is_multicast())
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

/// Converts a serde_yaml error into a [`ConfigError`] with line and key path.
fn yaml_error(e: &serde_yaml::Error, text: &str) -> ConfigError {
    let mut msg = e.to_string();
    // The location is reported separately; drop serde_yaml's " at line N column M" suffix.
    if let Some(idx) = msg.rfind(" at line ") {
        if msg[idx..].contains(" column ") {
            msg.truncate(idx);
        }
    }
    // serde_yaml prefixes the key path ("services[0].port: ..."); split it off.
    let (path, message) = match msg.split_once(": ") {
        Some((p, m)) if !p.contains(' ') && !p.is_empty() => (p.to_string(), m.to_string()),
        _ => (String::new(), msg.clone()),
    };
    let mut err = ConfigError {
        file: None,
        line: e.location().map(|l| l.line()),
        path,
        message,
    };
    refine_duration_error(&mut err, text);
    err
}

/// serde reports a bad duration at the enclosing mapping; point at the duration key itself.
fn refine_duration_error(err: &mut ConfigError, text: &str) {
    let Some(rest) = err.message.strip_prefix("invalid duration \"") else {
        return;
    };
    let Some(bad) = rest.split('"').next() else {
        return;
    };
    let lines: Vec<&str> = text.lines().collect();
    for key in [
        "interval",
        "timeout",
        "after",
        "syn_timeout",
        "syn_recv_timeout",
        "established_timeout",
        "fin_wait_timeout",
        "close_wait_timeout",
        "last_ack_timeout",
        "time_wait_timeout",
        "close_timeout",
    ] {
        let path = if err.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", err.path)
        };
        let Some(line) = locate(text, &path) else {
            continue;
        };
        let value = lines[line - 1]
            .split_once(':')
            .map(|(_, v)| {
                v.split(" #")
                    .next()
                    .unwrap_or("")
                    .trim()
                    .trim_matches(['"', '\''])
            })
            .unwrap_or("");
        let key_here = lines[line - 1]
            .trim_start()
            .trim_start_matches("- ")
            .starts_with(key);
        if key_here && value == bad {
            err.path = path;
            err.line = Some(line);
            return;
        }
    }
}

/// Durations as strings with a unit: `500ms`, `2s`, `5m`, `1h`, `7d`.
pub mod duration_str {
    use super::*;

    /// Serializes a duration in the largest unit that represents it exactly.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    /// Deserializes `<integer><unit>` with unit `ms`, `s`, `m`, `h` or `d`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

/// Parses `<integer><unit>` (units `ms`, `s`, `m`, `h`, `d`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let bad = || {
        format!(
            "invalid duration \"{s}\": expected a whole number with a unit, e.g. 500ms, 2s, 5m, 1h"
        )
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let ms = match unit.trim() {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => return Err(bad()),
    }
    .ok_or_else(bad)?;
    Ok(Duration::from_millis(ms))
}

/// Formats a duration in the largest unit that represents it exactly.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms != 0 && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// Finds the 1-based line of the node at key path `path` (e.g. `services[1].backends[0].weight`)
/// in block-style YAML `text`; falls back to the deepest ancestor found.
pub fn locate(text: &str, path: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let mut region = Region {
        start: 0,
        end: lines.len(),
        col: None,
    };
    let mut found = None;
    for seg in parse_path(path) {
        let next = match seg {
            PathSeg::Key(k) => find_key(&lines, &region, &k),
            PathSeg::Index(i) => find_index(&lines, &region, i),
        };
        match next {
            Some((line, r)) => {
                found = Some(line + 1);
                match r {
                    Some(r) => region = r,
                    None => break,
                }
            }
            None => break,
        }
    }
    found
}

enum PathSeg {
    Key(String),
    Index(usize),
}

fn parse_path(path: &str) -> Vec<PathSeg> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, rest) = part.split_at(part.find('[').unwrap_or(part.len()));
        if !key.is_empty() {
            out.push(PathSeg::Key(key.to_string()));
        }
        for idx in rest.split('[').filter(|s| !s.is_empty()) {
            if let Ok(i) = idx.trim_end_matches(']').parse() {
                out.push(PathSeg::Index(i));
            }
        }
    }
    out
}

/// Lines `[start, end)` holding a node's block content; `col` is the column of its mapping
/// keys or sequence dashes (unknown until the first content line is seen).
struct Region {
    start: usize,
    end: usize,
    col: Option<usize>,
}

fn is_content(line: &str) -> bool {
    let t = line.trim_start();
    !t.is_empty() && !t.starts_with('#') && t != "---"
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// Columns at which a node may start on this line: the first non-space column and, after
/// each leading `- `, the column after it.
fn starts(line: &str) -> Vec<usize> {
    let mut cols = vec![indent(line)];
    let mut c = indent(line);
    while line[c..].starts_with("- ") || &line[c..] == "-" {
        c += 1;
        c += line[c..].len() - line[c..].trim_start_matches(' ').len();
        cols.push(c);
    }
    cols
}

fn first_col(lines: &[&str], r: &Region) -> Option<usize> {
    r.col.or_else(|| {
        lines[r.start..r.end]
            .iter()
            .find(|l| is_content(l))
            .map(|l| indent(l))
    })
}

/// End (exclusive) of the block that starts after line `from` and is indented deeper than
/// `col` (or is a sequence at `col` when `seq_at_col`).
fn block_end(lines: &[&str], from: usize, end: usize, col: usize, seq_at_col: bool) -> usize {
    for (i, line) in lines.iter().enumerate().take(end).skip(from + 1) {
        if !is_content(line) {
            continue;
        }
        let ind = indent(line);
        if ind < col || (ind == col && !(seq_at_col && line[ind..].starts_with('-'))) {
            return i;
        }
    }
    end
}

fn value_region(
    lines: &[&str],
    line: usize,
    key_col: usize,
    after: &str,
    end: usize,
) -> Option<Region> {
    let after = after.trim();
    if !after.is_empty() && !after.starts_with('#') {
        return None; // inline scalar or flow collection: cannot descend further
    }
    let next = (line + 1..end).find(|&i| is_content(lines[i]))?;
    let seq_at_col = indent(lines[next]) == key_col && lines[next].trim_start().starts_with('-');
    if indent(lines[next]) < key_col || (indent(lines[next]) == key_col && !seq_at_col) {
        return None;
    }
    Some(Region {
        start: next,
        end: block_end(lines, line, end, key_col, seq_at_col),
        col: Some(indent(lines[next])),
    })
}

fn find_key(lines: &[&str], r: &Region, key: &str) -> Option<(usize, Option<Region>)> {
    let col = first_col(lines, r)?;
    // Mapping keys of this node sit at `col`, or right after a dash when the node is a
    // sequence item whose first key shares the dash's line.
    for i in r.start..r.end {
        let line = lines[i];
        if !is_content(line) {
            continue;
        }
        for c in starts(line) {
            if c != col && !(i == r.start && c > col) {
                continue;
            }
            let rest = &line[c..];
            for k in [key.to_string(), format!("\"{key}\""), format!("'{key}'")] {
                if let Some(after) = rest.strip_prefix(&k) {
                    if let Some(after) = after.trim_start().strip_prefix(':') {
                        if after.is_empty() || after.starts_with(' ') {
                            return Some((i, value_region(lines, i, c, after, r.end)));
                        }
                    }
                }
            }
        }
    }
    None
}

fn find_index(lines: &[&str], r: &Region, idx: usize) -> Option<(usize, Option<Region>)> {
    let col = first_col(lines, r)?;
    let mut n = 0;
    for i in r.start..r.end {
        let line = lines[i];
        if !is_content(line) || indent(line) != col || !line[col..].starts_with('-') {
            continue;
        }
        if n == idx {
            let item_col = starts(line).get(1).copied();
            let end = block_end(lines, i, r.end, col, false);
            let region = item_col.map(|c| Region {
                start: i,
                end,
                col: Some(c),
            });
            return Some((i, region));
        }
        n += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn testdata() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/testdata")
    }

    fn yaml_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        files
    }

    #[test]
    fn valid_configs_load_and_round_trip() {
        let mut files = yaml_files(&testdata().join("valid"));
        files.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/lb.example.yaml"));
        assert!(files.len() >= 4, "expected several valid configs");
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            let cfg = Config::from_yaml_str(&text, &f.display().to_string())
                .unwrap_or_else(|e| panic!("{e}"));
            let dump = cfg.to_yaml();
            let again = Config::from_yaml_str(&dump, "dump")
                .unwrap_or_else(|e| panic!("dump of {} does not load: {e}\n{dump}", f.display()));
            assert_eq!(again, cfg, "{}", f.display());
            assert_eq!(
                again.to_yaml(),
                dump,
                "dump -> load -> dump differs for {}",
                f.display()
            );
        }
    }

    #[test]
    fn invalid_configs_fail_with_the_golden_message() {
        let files = yaml_files(&testdata().join("invalid"));
        assert!(
            files.len() >= 15,
            "expected at least 15 invalid cases, found {}",
            files.len()
        );
        let mut failures = Vec::new();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            let name = f.file_name().unwrap().to_string_lossy().to_string();
            let expected_path = f.with_extension("err");
            let expected = std::fs::read_to_string(&expected_path)
                .unwrap_or_else(|e| panic!("missing {}: {e}", expected_path.display()));
            match Config::from_yaml_str(&text, &name) {
                Ok(_) => failures.push(format!("{name}: loaded but must fail")),
                Err(e) => {
                    let got = e.to_string();
                    if got != expected.trim_end() {
                        failures.push(format!(
                            "{name}:\n  expected: {}\n  got:      {got}",
                            expected.trim_end()
                        ));
                    }
                    if e.line.is_none() {
                        failures.push(format!("{name}: error has no line: {got}"));
                    }
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn durations_parse_and_format() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("1.5s").is_err());
        assert!(parse_duration("-1s").is_err());
        assert_eq!(format_duration(Duration::from_secs(600)), "10m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::ZERO), "0ms");
    }

    #[test]
    fn locate_finds_nested_keys() {
        let text = "a: 1\nservices:\n  - name: x\n    backends:\n      - address: 1.2.3.4:1\n      - address: 1.2.3.5:1\n        weight: 0\n  - name: y\n    port: 3\n";
        assert_eq!(locate(text, "services[0].backends[1].weight"), Some(7));
        assert_eq!(locate(text, "services[0].backends[1]"), Some(6));
        assert_eq!(locate(text, "services[1].port"), Some(9));
        assert_eq!(locate(text, "services[1].name"), Some(8));
        assert_eq!(locate(text, "a"), Some(1));
        // Missing leaf: the deepest ancestor.
        assert_eq!(locate(text, "services[1].vip"), Some(8));
    }

    #[test]
    fn primes() {
        assert!(is_prime(65537));
        assert!(!is_prime(65536));
        assert_eq!(next_prime(100), 101);
    }
}
