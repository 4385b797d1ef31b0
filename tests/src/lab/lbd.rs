//! The real `lbd` in the balancer namespace: its config file (rendered from
//! [`LbdConfig`] with the keys of `config/lb.example.yaml`), the process, its JSON API (one
//! JSON object per line over the Unix socket) and `lbctl`.

use super::sys::{self, ns_command, Proc};
use super::{LabError, Result};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// One backend of a service in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    /// `ip:port`.
    pub address: SocketAddrV4,
    /// 1..=1000.
    pub weight: u32,
    /// Gets traffic only while no primary is healthy.
    pub backup: bool,
    /// Keeps existing flows, gets no new ones.
    pub drain: bool,
}

impl BackendSpec {
    /// A primary backend of weight 1.
    pub fn new(address: SocketAddrV4) -> Self {
        Self {
            address,
            weight: 1,
            backup: false,
            drain: false,
        }
    }
}

/// Health-check settings of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSpec {
    /// `tcp`, `http` or `none`.
    pub kind: String,
    /// Interval in milliseconds.
    pub interval_ms: u64,
    /// Timeout in milliseconds.
    pub timeout_ms: u64,
    /// Successes to mark a backend up.
    pub rise: u32,
    /// Failures to mark it down.
    pub fall: u32,
}

impl Default for HealthSpec {
    /// The lab's fast checks: HTTP `GET /healthz` every 500 ms, fall 2, rise 2.
    fn default() -> Self {
        Self {
            kind: "http".into(),
            interval_ms: 500,
            timeout_ms: 300,
            rise: 2,
            fall: 2,
        }
    }
}

impl HealthSpec {
    /// The bound on failure detection: `interval x fall + interval`.
    pub fn detection_bound(&self) -> Duration {
        Duration::from_millis(self.interval_ms * (u64::from(self.fall) + 1))
    }

    /// The bound on recovery detection: `interval x rise + interval`.
    pub fn recovery_bound(&self) -> Duration {
        Duration::from_millis(self.interval_ms * (u64::from(self.rise) + 1))
    }
}

/// One service in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Service name.
    pub name: String,
    /// VIP.
    pub vip: Ipv4Addr,
    /// Port.
    pub port: u16,
    /// Health checks.
    pub health: HealthSpec,
    /// `on_backend_down` (`keep` or `reset`); `None` leaves lbd's default.
    pub on_backend_down: Option<String>,
    /// Backends.
    pub backends: Vec<BackendSpec>,
}

/// Everything the lab puts in an lbd config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbdConfig {
    /// Interfaces XDP is attached to.
    pub interfaces: Vec<String>,
    /// `native`, `generic` or `auto`.
    pub xdp_mode: String,
    /// bpffs pin root (unique per lab).
    pub bpffs_root: PathBuf,
    /// Control socket path.
    pub api_socket: PathBuf,
    /// Metrics listen address (loopback of the balancer namespace).
    pub metrics_listen: String,
    /// SNAT addresses.
    pub snat_addresses: Vec<Ipv4Addr>,
    /// SNAT port range (inclusive).
    pub snat_ports: (u16, u16),
    /// Conntrack timeouts (short closing states in the lab so SNAT ports recycle).
    pub conntrack: ConntrackSpec,
    /// Tracked flows.
    pub conntrack_flows: u32,
    /// Embryonic flows (`limits.embryonic_flows`); `None` leaves lbd's default.
    pub embryonic_flows: Option<u32>,
    /// Services.
    pub services: Vec<ServiceSpec>,
}

/// The `conntrack` section: one idle timeout per TCP state, in milliseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConntrackSpec {
    pub syn_ms: u64,
    pub syn_recv_ms: u64,
    pub established_ms: u64,
    pub fin_wait_ms: u64,
    pub close_wait_ms: u64,
    pub last_ack_ms: u64,
    pub time_wait_ms: u64,
    pub close_ms: u64,
}

impl Default for ConntrackSpec {
    /// The lab's values: short closing states, so SNAT ports recycle within a test.
    fn default() -> Self {
        Self {
            syn_ms: 10_000,
            syn_recv_ms: 10_000,
            established_ms: 600_000,
            fin_wait_ms: 30_000,
            close_wait_ms: 30_000,
            last_ack_ms: 5_000,
            time_wait_ms: 5_000,
            close_ms: 5_000,
        }
    }
}

impl ConntrackSpec {
    /// Every closing state (LAST_ACK, TIME_WAIT, CLOSE) after `ms` milliseconds.
    pub fn with_closing_ms(mut self, ms: u64) -> Self {
        self.last_ack_ms = ms;
        self.time_wait_ms = ms;
        self.close_ms = ms;
        self
    }

    /// The YAML section.
    pub fn to_yaml(&self) -> String {
        format!(
            "conntrack:\n  syn_timeout: {}ms\n  syn_recv_timeout: {}ms\n  established_timeout: {}ms\n  fin_wait_timeout: {}ms\n  close_wait_timeout: {}ms\n  last_ack_timeout: {}ms\n  time_wait_timeout: {}ms\n  close_timeout: {}ms\n",
            self.syn_ms,
            self.syn_recv_ms,
            self.established_ms,
            self.fin_wait_ms,
            self.close_wait_ms,
            self.last_ack_ms,
            self.time_wait_ms,
            self.close_ms
        )
    }
}

impl LbdConfig {
    /// The YAML text, with every key of `config/lb.example.yaml`.
    pub fn to_yaml(&self) -> String {
        let mut y = String::new();
        y.push_str("# Written by the lb network-namespace lab.\ninterfaces:\n");
        for i in &self.interfaces {
            y.push_str(&format!("  - {i}\n"));
        }
        y.push_str(&format!("xdp_mode: {}\n", self.xdp_mode));
        y.push_str(&format!("bpffs_root: {}\n", self.bpffs_root.display()));
        y.push_str(&format!("api_socket: {}\n", self.api_socket.display()));
        y.push_str(&format!("metrics_listen: {}\n", self.metrics_listen));
        let snat: Vec<String> = self
            .snat_addresses
            .iter()
            .map(ToString::to_string)
            .collect();
        y.push_str(&format!(
            "snat:\n  addresses: [{}]\n  port_min: {}\n  port_max: {}\n",
            snat.join(", "),
            self.snat_ports.0,
            self.snat_ports.1
        ));
        y.push_str(&self.conntrack.to_yaml());
        y.push_str(&format!(
            "limits:\n  conntrack_flows: {}\n  max_services: 16\n  max_backends: 256\n  maglev_table_size: 65537\n",
            self.conntrack_flows
        ));
        if let Some(n) = self.embryonic_flows {
            y.push_str(&format!("  embryonic_flows: {n}\n"));
        }
        y.push_str("services:\n");
        for s in &self.services {
            y.push_str(&format!(
                "  - name: {}\n    vip: {}\n    port: {}\n    protocol: tcp\n",
                s.name, s.vip, s.port
            ));
            let h = &s.health;
            y.push_str(&format!(
                "    health_check:\n      type: {}\n      interval: {}ms\n      timeout: {}ms\n      rise: {}\n      fall: {}\n",
                h.kind, h.interval_ms, h.timeout_ms, h.rise, h.fall
            ));
            if h.kind == "http" {
                y.push_str("      path: /healthz\n      expect_status: 200\n");
            }
            if let Some(v) = &s.on_backend_down {
                y.push_str(&format!("    on_backend_down: {v}\n"));
            }
            y.push_str("    backends:\n");
            for b in &s.backends {
                y.push_str(&format!(
                    "      - address: {}\n        weight: {}\n        backup: {}\n        drain: {}\n",
                    b.address, b.weight, b.backup, b.drain
                ));
            }
        }
        y
    }

    /// [`Self::to_yaml`] with every service in DSR mode (`forwarding: dsr`) and the `dsr`
    /// section's outer source `source` (lbd's address toward the backends).
    pub fn to_yaml_dsr(&self, source: Ipv4Addr) -> String {
        self.to_yaml()
            .replace(
                "    protocol: tcp\n",
                "    protocol: tcp\n    forwarding: dsr\n",
            )
            .replace(
                "\nservices:\n",
                &format!("\ndsr:\n  source: {source}\nservices:\n"),
            )
    }
}

/// Path of a release binary of the workspace (`lbd`, `lbctl`, `lb-testsrv`, ...).
///
/// Looks next to the running executable (and its parent, for test binaries in `deps/`),
/// then in `<workspace>/target/release`.
pub fn release_binary(name: &str) -> Result<PathBuf> {
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            candidates.push(dir.join(name));
            if let Some(up) = dir.parent() {
                candidates.push(up.join(name));
            }
        }
    }
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    candidates.push(ws.join("target/release").join(name));
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            LabError::Unavailable(format!(
                "binary `{name}` not found (looked in {candidates:?}); build it with `cargo xtask build`"
            ))
        })
}

/// The `lbd` of one lab: config file, process and API.
pub struct Lbd {
    ns: String,
    config_path: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    lbd_bin: PathBuf,
    lbctl_bin: PathBuf,
    proc: Option<Proc>,
}

impl Lbd {
    /// An lbd that will run in namespace `ns` with its config at `config_path` (the socket
    /// path must match the config's `api_socket`), logging to `log`.
    pub fn new(ns: &str, config_path: PathBuf, socket: PathBuf, log: PathBuf) -> Result<Lbd> {
        Ok(Lbd {
            ns: ns.to_string(),
            config_path,
            socket,
            log,
            lbd_bin: release_binary("lbd")?,
            lbctl_bin: release_binary("lbctl")?,
            proc: None,
        })
    }

    /// The config file path.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The log file path.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The running process's PID.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    /// Writes `text` as the config file.
    pub fn write_config(&self, text: &str) -> Result<()> {
        std::fs::write(&self.config_path, text).map_err(LabError::io(format!(
            "writing {}",
            self.config_path.display()
        )))
    }

    /// Starts lbd and waits until its API answers `status`.
    pub fn start(&mut self) -> Result<()> {
        if self.proc.is_some() {
            return Err(LabError::Api("lbd is already running".into()));
        }
        let _ = std::fs::remove_file(&self.socket);
        let mut cmd = ns_command(&self.ns, &self.lbd_bin);
        cmd.arg("--config").arg(&self.config_path);
        cmd.env("NO_COLOR", "1").env(
            "RUST_LOG",
            std::env::var("LB_LAB_LOG").unwrap_or_else(|_| "info".into()),
        );
        self.proc = Some(Proc::spawn(&mut cmd, "lbd", Some(&self.log))?);
        let r = sys::wait_for(
            "lbd's API to answer `status`",
            Duration::from_secs(20),
            Duration::from_millis(50),
            || {
                if let Some(st) = self.proc.as_mut().and_then(Proc::exited) {
                    return Some(Err(LabError::Api(format!(
                        "lbd exited during start-up ({st}); log:\n{}",
                        sys::log_tail(&self.log, 30)
                    ))));
                }
                self.api(&serde_json::json!({"command": "status"}))
                    .ok()
                    .map(Ok)
            },
        );
        match r {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                self.proc = None;
                Err(e)
            }
            Err(e) => Err(LabError::Timeout(format!(
                "{e}; lbd log:\n{}",
                sys::log_tail(&self.log, 30)
            ))),
        }
    }

    /// Stops lbd with `signal` (SIGTERM for a clean stop, SIGKILL for a crash); the pinned
    /// data plane keeps forwarding.
    pub fn stop(&mut self, signal: libc::c_int) -> Result<std::process::ExitStatus> {
        let mut p = self
            .proc
            .take()
            .ok_or_else(|| LabError::Api("lbd is not running".into()))?;
        Ok(p.stop(signal, Duration::from_secs(10)))
    }

    /// Whether lbd is running (not exited).
    pub fn running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(|p| p.exited().is_none())
    }

    /// Sends one request to the API and returns its `data`, or the `error` line as
    /// [`LabError::Api`].
    pub fn api(&self, request: &Value) -> Result<Value> {
        let mut s = UnixStream::connect(&self.socket).map_err(LabError::io(format!(
            "connecting to {}",
            self.socket.display()
        )))?;
        s.set_read_timeout(Some(Duration::from_secs(15)))
            .map_err(LabError::io("socket timeout"))?;
        let mut line = serde_json::to_string(request).expect("a Value serializes");
        line.push('\n');
        s.write_all(line.as_bytes())
            .map_err(LabError::io("writing an API request"))?;
        let mut resp = String::new();
        BufReader::new(&s)
            .read_line(&mut resp)
            .map_err(LabError::io("reading an API response"))?;
        let v: Value = serde_json::from_str(&resp)
            .map_err(|e| LabError::Api(format!("response {resp:?} is not JSON: {e}")))?;
        match v.get("ok").and_then(Value::as_bool) {
            Some(true) => Ok(v.get("data").cloned().unwrap_or(Value::Null)),
            Some(false) => Err(LabError::Api(
                v.get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("(no error text)")
                    .to_string(),
            )),
            None => Err(LabError::Api(format!("response without `ok`: {resp}"))),
        }
    }

    /// Runs `lbctl --socket <socket> <args>` and returns its output; a non-zero exit is an
    /// error carrying its stderr.
    pub fn lbctl(&self, args: &[&str]) -> Result<String> {
        sys::run(
            Command::new(&self.lbctl_bin)
                .arg("--socket")
                .arg(&self.socket)
                .args(args),
        )
    }

    /// `lbctl stats --output json`, parsed.
    pub fn stats(&self) -> Result<Value> {
        let out = self.lbctl(&["stats", "--output", "json"])?;
        serde_json::from_str(&out).map_err(|e| {
            LabError::Api(format!(
                "`lbctl stats --output json` printed non-JSON ({e}): {out}"
            ))
        })
    }

    /// The global counters of `lbctl stats --output json`, by name.
    pub fn counters(&self) -> Result<std::collections::BTreeMap<String, u64>> {
        let stats = self.stats()?;
        let c = stats
            .get("counters")
            .and_then(Value::as_object)
            .ok_or_else(|| LabError::Api(format!("stats without `counters`: {stats}")))?;
        Ok(c.iter()
            .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
            .collect())
    }

    /// The backend list (`backend_list`) as JSON objects.
    pub fn backends(&self) -> Result<Vec<Value>> {
        let v = self.api(&serde_json::json!({"command": "backend_list", "service": null}))?;
        v.as_array()
            .cloned()
            .ok_or_else(|| LabError::Api(format!("backend_list returned {v}")))
    }

    /// Health (`up`, `down`, `unknown`) of the backend at `address`.
    pub fn health_of(&self, address: SocketAddrV4) -> Result<String> {
        let want = address.to_string();
        self.backends()?
            .iter()
            .find(|b| b.get("address").and_then(Value::as_str) == Some(want.as_str()))
            .and_then(|b| b.get("health").and_then(Value::as_str).map(str::to_string))
            .ok_or_else(|| LabError::Api(format!("backend {want} not in backend_list")))
    }

    /// Waits until every listed backend has the wanted health.
    pub fn wait_health(&self, want: &[(SocketAddrV4, &str)], timeout: Duration) -> Result<()> {
        let mut last = String::new();
        sys::wait_for(
            "backend health",
            timeout,
            Duration::from_millis(100),
            || {
                let ok = want.iter().all(|(a, h)| match self.health_of(*a) {
                    Ok(got) => {
                        last = format!("{a} is {got}, want {h}");
                        got == *h
                    }
                    Err(e) => {
                        last = e.to_string();
                        false
                    }
                });
                ok.then_some(())
            },
        )
        .map_err(|e| LabError::Timeout(format!("{e}: {last}")))
    }

    /// `lbd --unload --config <path>`: detaches XDP and removes the pins.
    pub fn unload(&mut self) -> Result<()> {
        if let Some(mut p) = self.proc.take() {
            p.stop(libc::SIGTERM, Duration::from_secs(10));
        }
        sys::run(
            ns_command(&self.ns, &self.lbd_bin)
                .arg("--unload")
                .arg("--config")
                .arg(&self.config_path),
        )
        .map(|_| ())
    }
}

impl Drop for Lbd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "lab: lbd log ({}):\n{}",
                self.log.display(),
                sys::log_tail(&self.log, 40)
            );
        }
        if let Err(e) = self.unload() {
            eprintln!("lab: `lbd --unload` failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LbdConfig {
        LbdConfig {
            interfaces: vec!["pub0".into(), "bk1".into()],
            xdp_mode: "generic".into(),
            bpffs_root: "/sys/fs/bpf/x".into(),
            api_socket: "/tmp/x/lbd.sock".into(),
            metrics_listen: "127.0.0.1:9560".into(),
            snat_addresses: vec![Ipv4Addr::new(10, 0, 255, 1)],
            snat_ports: (1024, 32767),
            conntrack: ConntrackSpec::default(),
            conntrack_flows: 65536,
            embryonic_flows: None,
            services: vec![ServiceSpec {
                name: "web".into(),
                vip: Ipv4Addr::new(192, 0, 2, 10),
                port: 80,
                health: HealthSpec::default(),
                on_backend_down: Some("reset".into()),
                backends: vec![BackendSpec::new("10.1.1.2:8080".parse().unwrap())],
            }],
        }
    }

    #[test]
    fn config_has_every_section() {
        let y = sample().to_yaml();
        for key in [
            "interfaces:",
            "xdp_mode: generic",
            "bpffs_root:",
            "api_socket:",
            "metrics_listen:",
            "snat:",
            "conntrack:",
            "limits:",
            "services:",
            "interval: 500ms",
            "fall: 2",
            "address: 10.1.1.2:8080",
            "backup: false",
            "path: /healthz",
            "on_backend_down: reset",
        ] {
            assert!(y.contains(key), "{key} missing from\n{y}");
        }
        assert_eq!(
            HealthSpec::default().detection_bound(),
            Duration::from_millis(1500)
        );
    }

    /// The DSR variant of the YAML (the DSR scenarios and the bench's DSR rows) loads in lbd's
    /// own config loader with every service in DSR mode and the outer source set.
    #[test]
    fn dsr_config_loads_in_lbd() {
        let source = Ipv4Addr::new(10, 1, 1, 1);
        let mut c = sample();
        // lbd refuses `on_backend_down` on a DSR service (no conntrack to reset).
        c.services[0].on_backend_down = None;
        // A DSR backend listens on the service port.
        c.services[0].backends = vec![BackendSpec::new("10.1.1.2:80".parse().unwrap())];
        let y = c.to_yaml_dsr(source);
        let cfg = lb::config::Config::from_yaml_str(&y, "lab.yaml")
            .unwrap_or_else(|e| panic!("{e}\n{y}"));
        assert_eq!(cfg.dsr.as_ref().and_then(|d| d.source), Some(source), "{y}");
        assert_eq!(cfg.services.len(), 1, "{y}");
        assert_eq!(
            cfg.services[0].forwarding,
            lb::config::Forwarding::Dsr,
            "{y}"
        );
        // Full NAT is the default: the plain YAML has no DSR.
        let plain = lb::config::Config::from_yaml_str(&sample().to_yaml(), "lab.yaml").unwrap();
        assert_eq!(plain.services[0].forwarding, lb::config::Forwarding::Nat);
        assert!(plain.dsr.is_none());
    }
}
