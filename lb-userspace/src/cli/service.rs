//! `lbctl service ...` and `lbctl backend ...`: their arguments and the services and
//! backends they build from flags, `--backend` specs or a YAML file.

use crate::config::{BackendConfig, ServiceConfig};
use anyhow::{anyhow, bail, Context as _, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};

/// `lbctl service ...`
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// List services with their health summary and rates.
    List,
    /// Add a service from flags or from a YAML file.
    Add(ServiceAddArgs),
    /// Remove a service and all its backends.
    Remove {
        /// Service name.
        name: String,
    },
}

/// Arguments of `lbctl service add`.
#[derive(Debug, Args)]
pub struct ServiceAddArgs {
    /// Read the whole service from FILE: one entry of `services:` as in lb.example.yaml.
    #[arg(long, value_name = "FILE", conflicts_with_all = [
        "name", "vip", "port", "health", "interval", "timeout", "rise", "fall", "path",
        "expect_status", "backend",
    ])]
    pub from_yaml: Option<PathBuf>,
    /// Service name.
    #[arg(long, required_unless_present = "from_yaml")]
    pub name: Option<String>,
    /// Virtual IP clients connect to.
    #[arg(long, required_unless_present = "from_yaml")]
    pub vip: Option<Ipv4Addr>,
    /// TCP port on the VIP.
    #[arg(long, required_unless_present = "from_yaml")]
    pub port: Option<u16>,
    /// Health check type (default tcp).
    #[arg(long, value_parser = ["tcp", "http", "none"])]
    pub health: Option<String>,
    /// Time between checks, with a unit (e.g. 2s, 500ms).
    #[arg(long)]
    pub interval: Option<String>,
    /// Time a check may take, with a unit (shorter than --interval).
    #[arg(long)]
    pub timeout: Option<String>,
    /// Consecutive successes that mark a backend up.
    #[arg(long)]
    pub rise: Option<u32>,
    /// Consecutive failures that mark a backend down.
    #[arg(long)]
    pub fall: Option<u32>,
    /// HTTP path to check (http only).
    #[arg(long)]
    pub path: Option<String>,
    /// HTTP status expected (http only).
    #[arg(long)]
    pub expect_status: Option<u16>,
    /// A backend: ADDR:PORT[,weight=N][,backup][,drain]; repeat for more.
    #[arg(long = "backend", value_name = "SPEC")]
    pub backend: Vec<String>,
}

/// `lbctl backend ...`
#[derive(Debug, Subcommand)]
pub enum BackendCommand {
    /// List backends (of one service, or of all) with state and totals.
    List {
        /// Only this service's backends.
        service: Option<String>,
    },
    /// Add a backend to a service.
    Add {
        /// Service name.
        service: String,
        /// Backend address.
        #[arg(value_parser = parse_backend_addr)]
        address: SocketAddrV4,
        /// Maglev weight, 1..=1000.
        #[arg(long, default_value_t = 1)]
        weight: u32,
        /// Only gets traffic while no primary backend is healthy.
        #[arg(long)]
        backup: bool,
        /// Add it drained (no new flows until `backend undrain`).
        #[arg(long)]
        drain: bool,
    },
    /// Remove a backend (its flows move to other backends).
    Remove(BackendRef),
    /// Stop sending new flows to a backend; its existing flows stay.
    Drain(BackendRef),
    /// Let a drained backend take new flows again.
    Undrain(BackendRef),
    /// Change a backend's Maglev weight.
    SetWeight {
        /// Service name.
        service: String,
        /// Backend address.
        #[arg(value_parser = parse_backend_addr)]
        address: SocketAddrV4,
        /// New weight, 1..=1000.
        weight: u32,
    },
}

/// A backend addressed as `SERVICE ADDR:PORT`.
#[derive(Debug, Args)]
pub struct BackendRef {
    /// Service name.
    pub service: String,
    /// Backend address.
    #[arg(value_parser = parse_backend_addr)]
    pub address: SocketAddrV4,
}

fn parse_backend_addr(s: &str) -> Result<SocketAddrV4, String> {
    s.parse()
        .map_err(|_| format!("`{s}` is not IPV4:PORT (e.g. 10.1.1.2:8080)"))
}

/// Parses a `--backend` spec `ADDR:PORT[,weight=N][,backup][,drain]` into a backend.
pub fn parse_backend_spec(spec: &str) -> Result<BackendConfig> {
    let mut parts = spec.split(',').map(str::trim);
    let addr = parts.next().unwrap_or_default();
    let address = parse_backend_addr(addr).map_err(|e| anyhow!("--backend {spec}: {e}"))?;
    let mut obj = Map::new();
    obj.insert("address".into(), json!(address.to_string()));
    for opt in parts {
        match opt.split_once('=') {
            Some(("weight", w)) => {
                let w: u32 = w.parse().map_err(|_| {
                    anyhow!("--backend {spec}: weight `{w}` is not a number (use weight=1..1000)")
                })?;
                obj.insert("weight".into(), json!(w));
            }
            None if opt == "backup" => {
                obj.insert("backup".into(), json!(true));
            }
            None if opt == "drain" => {
                obj.insert("drain".into(), json!(true));
            }
            _ => bail!(
                "--backend {spec}: unknown option `{opt}` (expected weight=N, backup or drain)"
            ),
        }
    }
    serde_json::from_value(Value::Object(obj)).with_context(|| format!("--backend {spec}"))
}

/// Builds the service of `lbctl service add` from its flags or its `--from-yaml` file.
///
/// Flags not given are left out, so the config's defaults apply exactly as in the file;
/// durations are passed through as text and parsed by the config's own parser.
pub fn service_from_args(args: &ServiceAddArgs) -> Result<ServiceConfig> {
    if let Some(file) = &args.from_yaml {
        return service_from_yaml_file(file);
    }
    let (Some(name), Some(vip), Some(port)) = (&args.name, args.vip, args.port) else {
        bail!("service add needs --name, --vip and --port (or --from-yaml FILE)");
    };
    let mut check = Map::new();
    let mut put = |key: &str, v: Option<Value>| {
        if let Some(v) = v {
            check.insert(key.into(), v);
        }
    };
    put("type", args.health.clone().map(Value::from));
    put("interval", args.interval.clone().map(Value::from));
    put("timeout", args.timeout.clone().map(Value::from));
    put("rise", args.rise.map(Value::from));
    put("fall", args.fall.map(Value::from));
    put("path", args.path.clone().map(Value::from));
    put("expect_status", args.expect_status.map(Value::from));
    let backends = args
        .backend
        .iter()
        .map(|s| parse_backend_spec(s))
        .collect::<Result<Vec<_>>>()?;
    let mut svc = json!({
        "name": name,
        "vip": vip.to_string(),
        "port": port,
        "backends": backends,
    });
    if !check.is_empty() {
        svc["health_check"] = Value::Object(check);
    }
    serde_json::from_value(svc).map_err(|e| anyhow!("service add: {e}"))
}

/// Reads one service (an entry of `services:`) from a YAML file.
pub fn service_from_yaml_file(file: &Path) -> Result<ServiceConfig> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    service_from_yaml_str(&text).map_err(|e| anyhow!("{}: {e}", file.display()))
}

/// Parses one service from YAML text, with an error naming the offending key.
pub fn service_from_yaml_str(text: &str) -> Result<ServiceConfig> {
    serde_yaml::from_str::<ServiceConfig>(text).map_err(|e| {
        anyhow!(
            "{} (expected one service mapping, as an entry of `services:` in lb.example.yaml)",
            one_line(&e.to_string())
        )
    })
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::request_for;
    use crate::cli::test_support::{parse, request};
    use std::time::Duration;

    #[test]
    fn service_add_from_flags_uses_config_defaults() {
        let v = request(&[
            "service",
            "add",
            "--name",
            "web",
            "--vip",
            "192.0.2.10",
            "--port",
            "80",
            "--health",
            "http",
            "--interval",
            "500ms",
            "--path",
            "/healthz",
            "--backend",
            "10.1.1.2:8080",
            "--backend",
            "10.1.1.3:8080,weight=5,backup",
        ]);
        assert_eq!(v["command"], "service_add");
        let s = &v["service"];
        assert_eq!(s["name"], "web");
        assert_eq!(s["vip"], "192.0.2.10");
        assert_eq!(s["port"], 80);
        assert_eq!(s["health_check"]["type"], "http");
        assert_eq!(s["health_check"]["path"], "/healthz");
        // Given durations are parsed by the config's parser; others take its defaults.
        let cfg: ServiceConfig = serde_json::from_value(s.clone()).unwrap();
        assert_eq!(cfg.health_check.interval, Duration::from_millis(500));
        assert_eq!(cfg.health_check.timeout, Duration::from_secs(1));
        assert_eq!(cfg.backends.len(), 2);
        assert_eq!(cfg.backends[0].weight, 1);
        assert!(!cfg.backends[0].backup);
        assert_eq!(cfg.backends[1].weight, 5);
        assert!(cfg.backends[1].backup);
    }

    #[test]
    fn service_add_errors_name_the_flag() {
        let cli = parse(&[
            "service",
            "add",
            "--name",
            "web",
            "--vip",
            "192.0.2.10",
            "--port",
            "80",
            "--interval",
            "2 fortnights",
        ])
        .unwrap();
        let err = format!("{:#}", request_for(&cli.command).unwrap_err());
        assert!(err.starts_with("service add:"), "{err}");
        assert!(err.contains("2 fortnights"), "{err}");

        let err = format!(
            "{:#}",
            parse_backend_spec("10.1.1.2:80,wieght=2").unwrap_err()
        );
        assert_eq!(
            err,
            "--backend 10.1.1.2:80,wieght=2: unknown option `wieght=2` (expected weight=N, backup or drain)"
        );
        let err = format!("{:#}", parse_backend_spec("10.1.1.2").unwrap_err());
        assert_eq!(
            err,
            "--backend 10.1.1.2: `10.1.1.2` is not IPV4:PORT (e.g. 10.1.1.2:8080)"
        );
        let err = format!(
            "{:#}",
            parse_backend_spec("10.1.1.2:80,weight=x").unwrap_err()
        );
        assert!(err.contains("weight `x` is not a number"), "{err}");

        // Missing required flags and conflicting --from-yaml are usage errors.
        assert!(parse(&["service", "add", "--name", "web"]).is_err());
        assert!(parse(&["service", "add", "--from-yaml", "f.yaml", "--name", "web"]).is_err());
        assert!(parse(&["backend", "drain", "web", "10.1.1.2"]).is_err());
        assert!(parse(&["stats", "--interval", "2"]).is_err());
        assert!(parse(&["stats", "--watch", "--interval", "0"]).is_err());
        assert!(parse(&["stats", "--watch", "--interval", "0.5"]).is_ok());
    }

    #[test]
    fn service_from_yaml_reads_one_service() {
        let text = "\
name: api
vip: 192.0.2.11
port: 443
health_check:
  type: tcp
  interval: 1s
backends:
  - address: 10.2.0.20:443
    weight: 3
";
        let s = service_from_yaml_str(text).unwrap();
        assert_eq!(s.name, "api");
        assert_eq!(s.port, 443);
        assert_eq!(s.backends[0].weight, 3);
        let err = service_from_yaml_str("name: api\nvip: 192.0.2.11\nport: 443\nbakends: []\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bakends"), "{err}");
        assert!(err.contains("expected one service mapping"), "{err}");
        assert!(!err.contains('\n'), "{err}");

        let dir = std::env::temp_dir().join(format!("lbctl-yaml-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("svc.yaml");
        std::fs::write(&file, text).unwrap();
        let cli = parse(&["service", "add", "--from-yaml", file.to_str().unwrap()]).unwrap();
        let v = serde_json::to_value(request_for(&cli.command).unwrap()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(v["service"]["name"], "api");
        let missing = dir.join("nope.yaml");
        let err = format!("{:#}", service_from_yaml_file(&missing).unwrap_err());
        assert!(
            err.starts_with(&format!("cannot read {}", missing.display())),
            "{err}"
        );
    }
}
