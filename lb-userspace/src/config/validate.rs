//! Validation of a deserialized [`Config`]: everything serde cannot check (duplicates,
//! ranges, cross-field rules). Errors carry a key path; [`Config::from_yaml_str`] adds the line.

use super::*;

impl Config {
    /// Checks everything serde cannot: the returned error has a key path but no file/line.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_globals()?;
        self.validate_announce()?;
        db::validate_clusters(&self.db_clusters)?;
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut keys: HashMap<(Ipv4Addr, u16), usize> = HashMap::new();
        let mut total_backends = 0usize;
        for (i, svc) in self.services.iter().enumerate() {
            let p = format!("services[{i}]");
            validate_service(svc, &p)?;
            self.validate_forwarding(svc, &p)?;
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

    /// The `forwarding` rules of service `svc` (key path `p`): a DSR service needs an outer
    /// source address and backends on the service port, and cannot use what needs per-flow
    /// state (`db_cluster`, `on_backend_down: reset`); `dsr_source` only with DSR.
    fn validate_forwarding(&self, svc: &ServiceConfig, p: &str) -> Result<(), ConfigError> {
        if svc.forwarding == Forwarding::Nat {
            if svc.dsr_source.is_some() {
                return Err(ConfigError::new(
                    format!("{p}.dsr_source"),
                    "dsr_source is only used with forwarding: dsr; remove it or set forwarding: dsr",
                ));
            }
            if svc.health_check.dsr_tunnel.is_some() {
                return Err(ConfigError::new(
                    format!("{p}.health_check.dsr_tunnel"),
                    "dsr_tunnel is only used with forwarding: dsr (full NAT checks the backend's own address, which is the path its packets take); remove it",
                ));
            }
            return Ok(());
        }
        let global = self.dsr.as_ref().and_then(|d| d.source);
        let (source, sp) = match (svc.dsr_source, global) {
            (Some(a), _) => (a, format!("{p}.dsr_source")),
            (None, Some(a)) => (a, "dsr.source".to_string()),
            (None, None) => {
                return Err(ConfigError::new(
                    format!("{p}.forwarding"),
                    format!(
                        "forwarding: dsr needs the source address of the outer (IPIP) header: set dsr.source (this node's address toward the backends) or {p}.dsr_source"
                    ),
                ))
            }
        };
        if !is_unicast(source) || source.is_loopback() {
            return Err(ConfigError::new(
                sp,
                format!("{source} is not a unicast address; expected this node's address toward the backends"),
            ));
        }
        if let Some(other) = self.services.iter().find(|s| s.vip == source) {
            return Err(ConfigError::new(
                sp,
                format!(
                    "{source} is the VIP of service \"{}\"; the outer source must be this node's own address, which the backends can answer",
                    other.name
                ),
            ));
        }
        if svc.db_cluster.is_some() {
            return Err(ConfigError::new(
                format!("{p}.forwarding"),
                "forwarding: dsr cannot be used with db_cluster: a role change ends flows through connection tracking, which DSR services do not have; use forwarding: nat",
            ));
        }
        if svc.on_backend_down == OnBackendDown::Reset {
            return Err(ConfigError::new(
                format!("{p}.on_backend_down"),
                "on_backend_down: reset needs connection tracking, which forwarding: dsr does not keep (a backend that leaves the table loses its flows either way); remove on_backend_down",
            ));
        }
        for (j, b) in svc.backends.iter().enumerate() {
            if b.address.port() != svc.port {
                return Err(ConfigError::new(
                    format!("{p}.backends[{j}].address"),
                    format!(
                        "with forwarding: dsr the backend receives the client's packet unchanged (to {}:{}), so it must listen on the service port: use {}:{}",
                        svc.vip,
                        svc.port,
                        b.address.ip(),
                        svc.port
                    ),
                ));
            }
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
pub(super) fn check_timing(
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

pub(super) fn is_unicast(a: Ipv4Addr) -> bool {
    !(a.is_unspecified() || a.is_broadcast() || a.is_multicast())
}
