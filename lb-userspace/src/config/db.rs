//! The database tier of the configuration: `db_clusters:` (PostgreSQL streaming-replication
//! clusters whose members lb checks itself) and the service keys that put a cluster behind a
//! VIP (`db_cluster`, `role`, `fallback`). See docs/database.md for the semantics.
//!
//! A service with `db_cluster` has no `backends:` or `health_check:` of its own: the cluster's
//! members are its backends, and which of them receive new flows is decided every check round
//! by [`crate::db::decide`].
//!
//! `password_file` is only checked for being an absolute path here: a file that is missing or
//! unreadable is not a configuration error (the file may be rotated or provisioned after lbd
//! starts) but an alert of the check (an `AuthFailed`-like result that changes no role),
//! visible in `lbctl db status` and the log.

use super::{check_timing, duration_str, format_duration, ConfigError};
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;
use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::time::Duration;

/// Largest accepted number of members of one cluster.
pub const MAX_DB_MEMBERS: usize = 64;

/// One PostgreSQL cluster: a primary and its streaming replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbClusterConfig {
    /// Unique name (same rules as service names), referenced by `services[].db_cluster`.
    pub name: String,
    /// The PostgreSQL servers of the cluster (1 to 64).
    pub members: Vec<DbMemberConfig>,
    /// How members are checked.
    pub check: DbCheckConfig,
    /// A replica receives reads while its lag behind the primary is below this many bytes of
    /// WAL; once out, it re-enters below half of it.
    #[serde(default = "default_max_lag_bytes")]
    pub max_lag_bytes: u64,
    /// Expected system identifier (`pg_control_system()`), a string of digits; when absent
    /// it is learned from the first primary lb elects. A member with another one is never used.
    #[serde(
        default,
        deserialize_with = "digits_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub system_identifier: Option<String>,
    /// Optional promote hook (off when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promote: Option<PromoteConfig>,
}

fn default_max_lag_bytes() -> u64 {
    16 << 20
}

/// One member of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbMemberConfig {
    /// Where lb forwards and what the PostgreSQL check connects to.
    pub address: SocketAddrV4,
    /// Patroni REST address (needed for `check.type: patroni` and `both`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patroni: Option<SocketAddrV4>,
}

/// Kind of member check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DbCheckKind {
    /// One SQL query per round over a fresh connection.
    #[default]
    Postgres,
    /// Patroni's REST API (`GET /primary`, `/replica`).
    Patroni,
    /// Both, AND-ed.
    Both,
}

impl fmt::Display for DbCheckKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DbCheckKind::Postgres => "postgres",
            DbCheckKind::Patroni => "patroni",
            DbCheckKind::Both => "both",
        })
    }
}

/// Check settings of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbCheckConfig {
    /// Kind of check.
    #[serde(rename = "type", default)]
    pub kind: DbCheckKind,
    /// Time between rounds (every member is checked once per round).
    #[serde(default = "default_interval", with = "duration_str")]
    pub interval: Duration,
    /// Time one member's check may take (shorter than `interval`).
    #[serde(default = "default_timeout", with = "duration_str")]
    pub timeout: Duration,
    /// Consecutive successful checks that bring a down member back.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Consecutive failed checks that take a member down.
    #[serde(default = "default_fall")]
    pub fall: u32,
    /// PostgreSQL role the check logs in as (a member of `pg_monitor`); required for
    /// `postgres` and `both`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Database the check connects to.
    #[serde(default = "default_database")]
    pub database: String,
    /// File holding the check role's password (first line); absent: no password (trust).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
}

fn default_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_timeout() -> Duration {
    Duration::from_millis(500)
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    2
}
fn default_database() -> String {
    "postgres".into()
}

/// The promote hook: run a command when the primary has been gone long enough.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromoteConfig {
    /// argv; the chosen member's address (`ip:port`) is appended.
    pub command: Vec<String>,
    /// How long the cluster must have had no primary before the hook runs.
    #[serde(default = "default_after", with = "duration_str")]
    pub after: Duration,
    /// How long the command may run before it is killed.
    #[serde(default = "default_hook_timeout", with = "duration_str")]
    pub timeout: Duration,
}

fn default_after() -> Duration {
    Duration::from_secs(10)
}
fn default_hook_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Which members a database service sends new flows to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DbRole {
    /// The write service: the one primary.
    Primary,
    /// The read service: replicas streaming from the primary with little lag.
    Replica,
}

impl fmt::Display for DbRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DbRole::Primary => "primary",
            DbRole::Replica => "replica",
        })
    }
}

/// What a read service does when no replica is eligible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadFallback {
    /// The primary serves reads.
    #[default]
    Primary,
    /// No backend: new connections are refused.
    None,
}

fn digits_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v = Option::<serde_yaml::Value>::deserialize(d)?;
    Ok(match v {
        None | Some(serde_yaml::Value::Null) => None,
        Some(serde_yaml::Value::String(s)) => Some(s),
        Some(serde_yaml::Value::Number(n)) => Some(n.to_string()),
        Some(_) => {
            return Err(serde::de::Error::custom(
                "expected the system identifier as a string of digits",
            ))
        }
    })
}

impl DbClusterConfig {
    /// The expected system identifier, when configured (validated to parse).
    pub fn expected_system_identifier(&self) -> Option<u64> {
        self.system_identifier
            .as_deref()
            .and_then(|s| s.parse().ok())
    }

    /// True when an HA manager (Patroni) is configured for the cluster: the promote hook
    /// never runs then, Patroni promotes.
    pub fn has_ha_manager(&self) -> bool {
        self.check.kind != DbCheckKind::Postgres || self.members.iter().any(|m| m.patroni.is_some())
    }

    /// The member with `address`, if any.
    pub fn member(&self, address: SocketAddrV4) -> Option<&DbMemberConfig> {
        self.members.iter().find(|m| m.address == address)
    }
}

/// True when `name` follows the service naming rules.
pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Validates `db_clusters` (their own rules and unique names).
pub(super) fn validate_clusters(clusters: &[DbClusterConfig]) -> Result<(), ConfigError> {
    for (i, c) in clusters.iter().enumerate() {
        let p = format!("db_clusters[{i}]");
        if !valid_name(&c.name) {
            return Err(ConfigError::new(
                format!("{p}.name"),
                format!(
                    "\"{}\" is not a valid cluster name (1 to 63 letters, digits, '-', '_' or '.')",
                    c.name
                ),
            ));
        }
        if let Some(first) = clusters[..i].iter().position(|o| o.name == c.name) {
            return Err(ConfigError::new(
                format!("{p}.name"),
                format!(
                    "cluster name \"{}\" is already used by db_clusters[{first}]; names must be unique",
                    c.name
                ),
            ));
        }
        validate_cluster(c, &p)?;
    }
    Ok(())
}

fn validate_cluster(c: &DbClusterConfig, p: &str) -> Result<(), ConfigError> {
    if c.members.is_empty() || c.members.len() > MAX_DB_MEMBERS {
        return Err(ConfigError::new(
            format!("{p}.members"),
            format!(
                "expected 1 to {MAX_DB_MEMBERS} members, got {}",
                c.members.len()
            ),
        ));
    }
    let ck = &c.check;
    let needs_patroni = ck.kind != DbCheckKind::Postgres;
    for (j, m) in c.members.iter().enumerate() {
        let mp = format!("{p}.members[{j}]");
        for (key, a) in [("address", Some(m.address)), ("patroni", m.patroni)] {
            let Some(a) = a else { continue };
            if !super::is_unicast(*a.ip()) || a.port() == 0 {
                return Err(ConfigError::new(
                    format!("{mp}.{key}"),
                    format!(
                        "{a} is not a usable address; expected unicast IPv4 address:port with a non-zero port"
                    ),
                ));
            }
        }
        if let Some(k) = c.members[..j].iter().position(|o| o.address == m.address) {
            return Err(ConfigError::new(
                format!("{mp}.address"),
                format!(
                    "member {} is already listed as members[{k}] of this cluster",
                    m.address
                ),
            ));
        }
        if needs_patroni && m.patroni.is_none() {
            return Err(ConfigError::new(
                format!("{mp}.patroni"),
                format!(
                    "check.type is {} but this member has no patroni address (its Patroni REST API, e.g. {}:8008)",
                    ck.kind,
                    m.address.ip()
                ),
            ));
        }
    }
    let hp = format!("{p}.check");
    check_timing(&hp, ck.interval, ck.timeout, ck.rise, ck.fall)?;
    let sql = ck.kind != DbCheckKind::Patroni;
    match &ck.user {
        None if sql => {
            return Err(ConfigError::new(
                format!("{hp}.user"),
                format!(
                    "check.type {} needs the PostgreSQL role to log in as (a member of pg_monitor, e.g. lb_check)",
                    ck.kind
                ),
            ))
        }
        Some(u) if u.is_empty() || u.len() > 63 || u.contains(['\0', '\n']) => {
            return Err(ConfigError::new(
                format!("{hp}.user"),
                format!("\"{u}\" is not a valid PostgreSQL role name (1 to 63 characters)"),
            ))
        }
        _ => {}
    }
    if ck.database.is_empty() || ck.database.len() > 63 || ck.database.contains(['\0', '\n']) {
        return Err(ConfigError::new(
            format!("{hp}.database"),
            format!(
                "\"{}\" is not a valid database name (1 to 63 characters)",
                ck.database
            ),
        ));
    }
    if let Some(f) = &ck.password_file {
        if !f.is_absolute() {
            return Err(ConfigError::new(
                format!("{hp}.password_file"),
                format!(
                    "expected an absolute path, got \"{}\" (lbd's working directory is not fixed)",
                    f.display()
                ),
            ));
        }
    }
    if c.max_lag_bytes == 0 {
        return Err(ConfigError::new(
            format!("{p}.max_lag_bytes"),
            "expected a number of bytes above 0 (e.g. 16777216); 0 would keep every replica out of reads",
        ));
    }
    if let Some(s) = &c.system_identifier {
        if s.is_empty() || !s.chars().all(|ch| ch.is_ascii_digit()) || s.parse::<u64>().is_err() {
            return Err(ConfigError::new(
                format!("{p}.system_identifier"),
                format!(
                    "\"{s}\" is not a system identifier; expected the digits of SELECT system_identifier FROM pg_control_system()"
                ),
            ));
        }
    }
    if let Some(pr) = &c.promote {
        let pp = format!("{p}.promote");
        if pr.command.is_empty() || pr.command[0].is_empty() {
            return Err(ConfigError::new(
                format!("{pp}.command"),
                "expected the command as a non-empty list (argv), e.g. [\"/usr/local/bin/promote-replica\"]",
            ));
        }
        if !std::path::Path::new(&pr.command[0]).is_absolute() {
            return Err(ConfigError::new(
                format!("{pp}.command"),
                format!(
                    "expected an absolute path to the program, got \"{}\"",
                    pr.command[0]
                ),
            ));
        }
        if needs_patroni || c.members.iter().any(|m| m.patroni.is_some()) {
            return Err(ConfigError::new(
                pp,
                "a promote hook cannot be combined with Patroni (patroni addresses or check.type patroni/both): Patroni promotes; remove one of them",
            ));
        }
        if pr.after < ck.interval * ck.fall {
            return Err(ConfigError::new(
                format!("{pp}.after"),
                format!(
                    "expected at least check.interval x check.fall ({}), got {}",
                    format_duration(ck.interval * ck.fall),
                    format_duration(pr.after)
                ),
            ));
        }
        if pr.timeout < Duration::from_secs(1) || pr.timeout > Duration::from_secs(3600) {
            return Err(ConfigError::new(
                format!("{pp}.timeout"),
                format!(
                    "expected a duration between 1s and 1h, got {}",
                    format_duration(pr.timeout)
                ),
            ));
        }
    }
    Ok(())
}

/// Validates the database keys of service `svc` at key path `p` against `clusters`.
pub(super) fn validate_db_service(
    svc: &super::ServiceConfig,
    p: &str,
    clusters: &[DbClusterConfig],
) -> Result<(), ConfigError> {
    let Some(name) = &svc.db_cluster else {
        for (key, set) in [
            ("role", svc.role.is_some()),
            ("fallback", svc.fallback.is_some()),
        ] {
            if set {
                return Err(ConfigError::new(
                    format!("{p}.{key}"),
                    "only valid with db_cluster; remove it or add db_cluster",
                ));
            }
        }
        return Ok(());
    };
    if !clusters.iter().any(|c| &c.name == name) {
        let known: Vec<&str> = clusters.iter().map(|c| c.name.as_str()).collect();
        return Err(ConfigError::new(
            format!("{p}.db_cluster"),
            format!(
                "no cluster named \"{name}\" in db_clusters (known: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ),
        ));
    }
    if !svc.backends.is_empty() {
        return Err(ConfigError::new(
            format!("{p}.backends"),
            "a service with db_cluster takes its backends from the cluster's members; remove backends",
        ));
    }
    if svc.health_check != super::HealthCheckConfig::default() {
        return Err(ConfigError::new(
            format!("{p}.health_check"),
            "a service with db_cluster is checked by the cluster's check (db_clusters[].check); remove health_check",
        ));
    }
    match svc.role {
        None => {
            return Err(ConfigError::new(
                format!("{p}.role"),
                "a service with db_cluster needs role: primary (writes) or role: replica (reads)",
            ))
        }
        Some(DbRole::Primary) if svc.fallback.is_some() => {
            return Err(ConfigError::new(
                format!("{p}.fallback"),
                "only valid with role: replica; remove it",
            ))
        }
        _ => {}
    }
    Ok(())
}
