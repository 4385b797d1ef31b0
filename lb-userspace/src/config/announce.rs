//! The `maglev` and `announce` sections: Maglev determinism across nodes (the flow-hash seed
//! and the expected table digest) and the announcement of the VIPs through BIRD
//! (docs/scale-out.md, "Several nodes").

use super::*;

/// Maglev settings that must be equal on every node announcing the same VIPs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaglevConfig {
    /// Seed of the data plane's flow hash (`GlobalConfig::hash_seed`): which table slot, and
    /// so which backend, a flow's 5-tuple picks. Every node must use the same value.
    #[serde(default = "default_seed")]
    pub seed: u32,
    /// The table digest this node must compute (16 hex digits, as `lbctl status` prints
    /// it); when it differs lbd refuses to announce any VIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_digest: Option<String>,
}

fn default_seed() -> u32 {
    lb_common::GlobalConfig::default().hash_seed
}

impl Default for MaglevConfig {
    fn default() -> Self {
        Self {
            seed: default_seed(),
            expected_digest: None,
        }
    }
}

impl MaglevConfig {
    /// True when nothing differs from the defaults (the section is then left out of dumps).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// `expected_digest` as a number (validated: 16 hex digits).
    pub fn expected(&self) -> Option<u64> {
        self.expected_digest
            .as_deref()
            .and_then(|s| u64::from_str_radix(s, 16).ok())
    }
}

/// Announcing the VIPs through a BIRD 2 daemon on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnnounceConfig {
    /// BIRD's control socket (`bird -s`); lbd runs `birdc -s SOCKET configure`.
    pub bird_socket: PathBuf,
    /// The file lbd owns and BIRD's configuration includes (`include "FILE";`): one static
    /// protocol with a route per announced VIP.
    pub include_file: PathBuf,
    /// The `birdc` program.
    #[serde(default = "default_birdc")]
    pub birdc: PathBuf,
    /// Name of the static protocol in `include_file` (the node's BGP export filter names it).
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// The dead-man tun device lbd opens (not persistent: it vanishes with lbd, and BIRD
    /// withdraws the routes through it).
    #[serde(default = "default_device")]
    pub device: String,
    /// This node's address on `device` (a /30 with `peer`).
    #[serde(default = "default_address")]
    pub address: Ipv4Addr,
    /// The peer address of `device` (the announced routes are device routes on `device`).
    #[serde(default = "default_peer")]
    pub peer: Ipv4Addr,
    /// How long lbd keeps running (forwarding, checking) after withdrawing at shutdown, so
    /// the router moves the flows away before the node stops.
    #[serde(default = "default_drain", with = "duration_str")]
    pub drain: Duration,
}

fn default_birdc() -> PathBuf {
    PathBuf::from("birdc")
}
fn default_protocol() -> String {
    "vips".into()
}
fn default_device() -> String {
    "lbvip0".into()
}
fn default_address() -> Ipv4Addr {
    Ipv4Addr::new(169, 254, 77, 1)
}
fn default_peer() -> Ipv4Addr {
    Ipv4Addr::new(169, 254, 77, 2)
}
fn default_drain() -> Duration {
    Duration::from_secs(5)
}

/// Longest accepted `announce.drain`.
pub const MAX_DRAIN: Duration = Duration::from_secs(600);

/// True for `[A-Za-z_][A-Za-z0-9_]*`, a BIRD symbol.
fn is_bird_symbol(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 64
}

impl Config {
    /// Checks the `maglev` and `announce` sections.
    pub(super) fn validate_announce(&self) -> Result<(), ConfigError> {
        if let Some(d) = &self.maglev.expected_digest {
            if d.len() != 16 || !d.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(ConfigError::new(
                    "maglev.expected_digest",
                    format!("\"{d}\" is not a table digest: expected 16 hexadecimal digits as `lbctl status` prints them (e.g. 3f2a9c0d51e7b486)"),
                ));
            }
        }
        let Some(a) = &self.announce else {
            return Ok(());
        };
        for (key, path) in [
            ("announce.bird_socket", &a.bird_socket),
            ("announce.include_file", &a.include_file),
        ] {
            if !path.is_absolute() {
                return Err(ConfigError::new(
                    key,
                    format!("expected an absolute path, got \"{}\"", path.display()),
                ));
            }
        }
        for (key, other) in [
            ("api_socket", &self.api_socket),
            ("announce.bird_socket", &a.bird_socket),
        ] {
            if a.include_file == *other {
                return Err(ConfigError::new(
                    "announce.include_file",
                    format!(
                        "\"{}\" is also {key}; lbd rewrites the include file, give it a path of its own (e.g. /etc/bird/lb-vips.conf)",
                        a.include_file.display()
                    ),
                ));
            }
        }
        if a.include_file.file_name().is_none() {
            return Err(ConfigError::new(
                "announce.include_file",
                "expected a file path such as /etc/bird/lb-vips.conf",
            ));
        }
        if a.birdc.as_os_str().is_empty() {
            return Err(ConfigError::new(
                "announce.birdc",
                "expected the birdc program (a name on the PATH or an absolute path)",
            ));
        }
        if !is_bird_symbol(&a.protocol) {
            return Err(ConfigError::new(
                "announce.protocol",
                format!("\"{}\" is not a BIRD protocol name: expected letters, digits and '_', not starting with a digit", a.protocol),
            ));
        }
        let d = &a.device;
        if d.is_empty()
            || d.len() > 15
            || d.contains(['/', ' ', '\t', ':', '%', '"', '\\'])
            || d == "."
            || d == ".."
        {
            return Err(ConfigError::new(
                "announce.device",
                format!("\"{d}\" is not a valid interface name (1 to 15 characters, no '/', ':', '%', quotes, backslashes or spaces; the kernel would read '%' as a name template)"),
            ));
        }
        if self.interfaces.contains(d) {
            return Err(ConfigError::new(
                "announce.device",
                format!("\"{d}\" is one of `interfaces`; the dead-man device is a tun device lbd creates, give it a name of its own"),
            ));
        }
        let net = |ip: Ipv4Addr| u32::from(ip) & !3;
        let host = |ip: Ipv4Addr| u32::from(ip) & 3;
        if host(a.address) == 0 || host(a.address) == 3 || !is_unicast(a.address) {
            return Err(ConfigError::new(
                "announce.address",
                format!("{} cannot be a host of its /30 (the first and last addresses are the network and broadcast); e.g. 169.254.77.1", a.address),
            ));
        }
        if net(a.peer) != net(a.address)
            || a.peer == a.address
            || host(a.peer) == 0
            || host(a.peer) == 3
        {
            return Err(ConfigError::new(
                "announce.peer",
                format!(
                    "{} must be the other host of {}'s /30 ({})",
                    a.peer,
                    a.address,
                    Ipv4Addr::from(net(a.address) | (3 - host(a.address)))
                ),
            ));
        }
        // Other addresses of this node in the /30: the tun device would take them over.
        let mut others: Vec<(String, Ipv4Addr)> = self
            .snat
            .addresses
            .iter()
            .enumerate()
            .map(|(i, ip)| (format!("snat.addresses[{i}]"), *ip))
            .collect();
        if let Some(src) = self.dsr.as_ref().and_then(|d| d.source) {
            others.push(("dsr.source".into(), src));
        }
        for (i, s) in self.services.iter().enumerate() {
            if let Some(src) = s.dsr_source {
                others.push((format!("services[{i}].dsr_source"), src));
            }
        }
        if let Some((field, ip)) = others.iter().find(|(_, ip)| net(*ip) == net(a.address)) {
            return Err(ConfigError::new(
                "announce.address",
                format!(
                    "the /30 of {} (announce.address and announce.peer, the dead-man device's addresses) holds {field} {ip}; pick an unused /30 (e.g. in 169.254.0.0/16) or change {field}",
                    a.address
                ),
            ));
        }
        if let Some(s) = self.services.iter().find(|s| net(s.vip) == net(a.address)) {
            return Err(ConfigError::new(
                "announce.address",
                format!(
                    "the /30 of {} holds the VIP {} of service \"{}\"; pick an unused /30 (e.g. in 169.254.0.0/16)",
                    a.address, s.vip, s.name
                ),
            ));
        }
        if a.drain > MAX_DRAIN {
            return Err(ConfigError::new(
                "announce.drain",
                format!(
                    "{} is longer than the maximum {}; the router moves flows within a second or two",
                    format_duration(a.drain),
                    format_duration(MAX_DRAIN)
                ),
            ));
        }
        Ok(())
    }
}

impl Config {
    /// Checks against the configuration file itself (`config_path`): `announce.include_file`
    /// must not name it, or lbd would overwrite its own configuration with BIRD's routes.
    pub fn validate_against_file(&self, config_path: &Path) -> Result<(), ConfigError> {
        let Some(a) = &self.announce else {
            return Ok(());
        };
        let same = a.include_file == config_path
            || matches!(
                (a.include_file.canonicalize(), config_path.canonicalize()),
                (Ok(x), Ok(y)) if x == y
            );
        if same {
            return Err(ConfigError::new(
                "announce.include_file",
                format!(
                    "\"{}\" is this configuration file; lbd rewrites the include file and would overwrite its own configuration: give it a path of its own (e.g. /etc/bird/lb-vips.conf)",
                    a.include_file.display()
                ),
            ));
        }
        Ok(())
    }

    /// What [`Config::load`] checks on this host beyond the file itself: the directory of
    /// `announce.include_file` exists (lbd creates the file, not its directory).
    pub fn check_environment(&self) -> Result<(), ConfigError> {
        let Some(a) = &self.announce else {
            return Ok(());
        };
        let dir = a.include_file.parent().unwrap_or(Path::new("/"));
        if !dir.is_dir() {
            return Err(ConfigError::new(
                "announce.include_file",
                format!(
                    "the directory {} does not exist; create it (BIRD's configuration directory, e.g. /etc/bird) or point include_file into an existing one",
                    dir.display()
                ),
            ));
        }
        Ok(())
    }
}
