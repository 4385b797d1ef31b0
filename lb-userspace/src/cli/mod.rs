//! `lbctl`, the operator CLI: argument parsing, request building and output.
//!
//! The binary (`src/bin/lbctl.rs`) only parses [`Cli`] and calls [`run`]. Requests go to lbd
//! through [`crate::api::client::Client`]; human output comes from the pure functions of
//! [`format`], JSON output is the response data as lbd sent it. This module is the CLI's edge,
//! so it reports errors with `anyhow` (one line, printed by the binary with `{:#}`).

pub mod backend_setup;
pub mod format;

use crate::api::client::Client;
use crate::api::proto::{
    BackendListEntry, Request, ServiceStats, StatsSnapshot, StatusInfo, DEFAULT_SOCKET_PATH,
};
use crate::config::{BackendConfig, ServiceConfig};
use crate::dataplane::decap::{self, DecapRules, Ipv4Prefix, DEFAULT_DECAP_PIN_ROOT};
use crate::dataplane::XdpMode;
use anyhow::{anyhow, bail, Context as _, Result};
use backend_setup::Decap;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{json, Map, Value};
use std::io::{ErrorKind, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Command line of `lbctl`.
#[derive(Debug, Parser)]
#[command(
    name = "lbctl",
    version,
    about = "Operate lbd, the lb layer-4 load balancer daemon",
    after_help = "Backends are addressed as SERVICE ADDR:PORT, e.g. `lbctl backend drain web 10.1.1.2:8080`.\n\
                  Changes apply to the running lbd only; `lbctl config save` persists them."
)]
pub struct Cli {
    /// lbd's control socket.
    #[arg(long, global = true, value_name = "PATH", default_value = DEFAULT_SOCKET_PATH)]
    pub socket: PathBuf,
    /// Output format: aligned tables for people, or the API's JSON data for scripts.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Human)]
    pub output: Output,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Output format of `lbctl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned tables with units.
    Human,
    /// The response data as JSON (pretty-printed; one compact line per sample with --watch).
    Json,
}

/// `lbctl` commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show lbd's version, uptime, interfaces and totals.
    Status,
    /// List, add or remove services.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// List, add, remove, drain, undrain or re-weight backends.
    #[command(subcommand)]
    Backend(BackendCommand),
    /// Show per-service and per-backend traffic and the global counters.
    Stats(StatsArgs),
    /// Make lbd re-read its config file and apply the difference.
    Reload,
    /// Print or persist the running configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Detach the XDP program, remove pinned maps and stop lbd (forwarding stops).
    Unload,
    /// Database clusters: roles, lag, events.
    #[command(subcommand)]
    Db(DbCommand),
    /// Print the commands a backend needs (run them on the backend; lbd is not contacted).
    BackendSetup(BackendSetupArgs),
    /// DSR backends without the ipip module: lb's XDP decapsulator on this host's interface
    /// (lbd is not contacted).
    #[command(subcommand)]
    Decap(DecapCommand),
}

/// `lbctl decap ...`: the XDP program `lb_decap`, which strips lb's IPIP header on a DSR
/// backend (docs/scale-out.md, "Backend setup").
#[derive(Debug, Subcommand)]
pub enum DecapCommand {
    /// Attach lb_decap to IFACE and pin it, so it keeps working after lbctl exits (replaces an
    /// earlier attachment to IFACE, an older lbctl's included).
    Attach {
        /// The interface lb's encapsulated packets arrive on.
        iface: String,
        /// XDP mode: native (driver), generic (skb) or auto (native, else generic).
        #[arg(long, value_enum, default_value_t = XdpMode::Auto)]
        xdp_mode: XdpMode,
        /// bpffs directory for the pins (`<DIR>/lb_decap/vN/net<netns>/<IFACE>/`; an older
        /// lbctl's attachment there, also `<DIR>/abiN/...`, is taken over).
        #[arg(long, value_name = "DIR", default_value = DEFAULT_DECAP_PIN_ROOT)]
        pin_root: PathBuf,
        /// Decapsulate IPIP addressed to ADDR (repeatable); default: IFACE's IPv4 addresses now.
        #[arg(long = "address", value_name = "ADDR")]
        addresses: Vec<Ipv4Addr>,
        /// Accept IPIP only from this outer source, ADDR or ADDR/LEN (repeatable; at least one
        /// unless --allow-any-source): lb's nodes' `dsr.source` addresses.
        #[arg(long = "allow-source", value_name = "CIDR")]
        sources: Vec<Ipv4Prefix>,
        /// Accept IPIP from any outer source (not recommended: anyone who reaches this host
        /// can then inject packets with spoofed sources to the VIPs).
        #[arg(long, conflicts_with = "sources")]
        allow_any_source: bool,
        /// Pass on only packets to this VIP (repeatable; at least one): the DSR VIPs this
        /// backend serves. Other inner destinations are dropped.
        #[arg(long = "vip", value_name = "ADDR")]
        vips: Vec<Ipv4Addr>,
    },
    /// Detach lb_decap from IFACE and remove its pins (in any lbctl version's layout).
    Detach {
        /// The interface.
        iface: String,
        /// bpffs directory of the pins.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_DECAP_PIN_ROOT)]
        pin_root: PathBuf,
    },
    /// Show lb_decap's counters on IFACE (decapsulated, passed, dropped).
    Stats {
        /// The interface.
        iface: String,
        /// bpffs directory of the pins.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_DECAP_PIN_ROOT)]
        pin_root: PathBuf,
    },
}

/// Arguments of `lbctl backend-setup`.
#[derive(Debug, Args)]
pub struct BackendSetupArgs {
    /// A backend of the DSR service(s) on this VIP (`forwarding: dsr`; repeatable, one script
    /// for every VIP of the backend): IPIP decapsulation, the VIP on lo, arp_ignore=1 and
    /// arp_announce=2 (and rp_filter off on tunl0 with `--decap ipip`).
    #[arg(long, value_name = "VIP", required = true)]
    pub dsr: Vec<Ipv4Addr>,
    /// How the backend strips the IPIP header: the kernel's tunl0 (ipip module) or lb's XDP
    /// program (`lbctl decap attach`; for kernels without the ipip module).
    #[arg(long, value_enum, default_value_t = Decap::Ipip)]
    pub decap: Decap,
    /// With `--decap xdp`: the backend interface lb's packets arrive on.
    #[arg(long, value_name = "IFACE")]
    pub iface: Option<String>,
    /// With `--decap xdp`: the XDP mode to attach in (default auto).
    #[arg(long, value_enum)]
    pub xdp_mode: Option<XdpMode>,
    /// With `--decap xdp`: the bpffs directory for the pins (default /sys/fs/bpf/lb-decap).
    #[arg(long, value_name = "DIR")]
    pub pin_root: Option<PathBuf>,
    /// With `--decap xdp`: an lb node's outer (IPIP) source, ADDR or ADDR/LEN (repeatable:
    /// every node's `dsr.source`); lb_decap accepts IPIP only from these. Default: the running
    /// lbd's (`--socket`) `dsr.source`/`dsr_source` of the services on the VIPs.
    #[arg(long = "source", value_name = "CIDR")]
    pub sources: Vec<Ipv4Prefix>,
    /// With `--decap xdp`: accept IPIP from any source (not recommended; the script warns).
    #[arg(long, conflicts_with = "sources")]
    pub allow_any_source: bool,
}

/// The script `lbctl backend-setup` prints for `args`. `lbd_sources` is asked for the outer
/// sources when `--decap xdp` has neither `--source` nor `--allow-any-source` (`lbctl` asks
/// the running lbd: [`lbd_dsr_sources`]).
pub fn backend_setup_script(
    args: &BackendSetupArgs,
    lbd_sources: impl FnOnce(&[Ipv4Addr]) -> Result<Vec<Ipv4Prefix>>,
) -> Result<String> {
    match args.decap {
        Decap::Ipip => {
            if args.iface.is_some()
                || args.xdp_mode.is_some()
                || args.pin_root.is_some()
                || !args.sources.is_empty()
                || args.allow_any_source
            {
                bail!("--iface, --xdp-mode, --pin-root, --source and --allow-any-source apply only to --decap xdp");
            }
            Ok(backend_setup::dsr_script(&args.dsr))
        }
        Decap::Xdp => {
            let Some(iface) = args.iface.clone() else {
                bail!("--iface: required with --decap xdp (the interface lb's packets arrive on)");
            };
            backend_setup::validate_iface(&iface).map_err(|e| anyhow!(e))?;
            let sources = if args.sources.is_empty() && !args.allow_any_source {
                lbd_sources(&args.dsr).context(
                    "--source: required with --decap xdp unless lbd runs here: the address(es) lb's nodes send IPIP from (their dsr.source); lb_decap accepts IPIP only from them",
                )?
            } else {
                args.sources.clone()
            };
            let decap = backend_setup::XdpDecap {
                iface,
                mode: args.xdp_mode,
                pin_root: args.pin_root.clone(),
                lbctl: "lbctl".into(),
                sources,
                any_source: args.allow_any_source,
            };
            Ok(backend_setup::dsr_xdp_script(&args.dsr, &decap))
        }
    }
}

/// The outer sources the running lbd at `socket` uses toward the backends of `vips`' DSR
/// services (each service's `dsr_source`, else `dsr.source`).
pub fn lbd_dsr_sources(socket: &Path, vips: &[Ipv4Addr]) -> Result<Vec<Ipv4Prefix>> {
    let mut client = Client::connect(socket)
        .with_context(|| format!("lbd's API at {} is not reachable", socket.display()))?;
    let data = client.call(&Request::ConfigDump)?;
    let yaml: String =
        serde_json::from_value(data).context("lbd's config_dump answer is not a string")?;
    let cfg = crate::config::Config::from_yaml_str(&yaml, "lbd's running configuration")?;
    dsr_sources(&cfg, vips)
}

/// The outer sources of `cfg`'s DSR services on `vips` (each service's `dsr_source`, else
/// `dsr.source`), without repeats; an error when a VIP has no DSR service in `cfg`.
pub fn dsr_sources(cfg: &crate::config::Config, vips: &[Ipv4Addr]) -> Result<Vec<Ipv4Prefix>> {
    let global = cfg.dsr.as_ref().and_then(|d| d.source);
    let mut out: Vec<Ipv4Prefix> = Vec::new();
    for vip in vips {
        let mut found = false;
        for svc in cfg
            .services
            .iter()
            .filter(|s| s.vip == *vip && s.forwarding == crate::config::Forwarding::Dsr)
        {
            found = true;
            if let Some(src) = svc.dsr_source.or(global) {
                let p = Ipv4Prefix::from(src);
                if !out.contains(&p) {
                    out.push(p);
                }
            }
        }
        if !found {
            bail!("the running lbd has no forwarding: dsr service on {vip}");
        }
    }
    if out.is_empty() {
        bail!("the running lbd has no dsr.source");
    }
    Ok(out)
}

/// Runs `lbctl decap ...` on this host.
fn run_decap(command: &DecapCommand, output: Output, out: &mut dyn Write) -> Result<()> {
    match command {
        DecapCommand::Attach {
            iface,
            xdp_mode,
            pin_root,
            addresses,
            sources,
            allow_any_source,
            vips,
        } => {
            let rules = DecapRules {
                addresses: addresses.clone(),
                sources: if *allow_any_source {
                    vec![Ipv4Prefix::ANY]
                } else {
                    sources.clone()
                },
                vips: vips.clone(),
            };
            let a = decap::attach(iface, *xdp_mode, pin_root, &rules)
                .with_context(|| format!("attaching lb_decap to {iface}"))?;
            let strings = |v: &[String]| v.join(", ");
            let addrs: Vec<String> = a.rules.addresses.iter().map(ToString::to_string).collect();
            let srcs: Vec<String> = a.rules.sources.iter().map(ToString::to_string).collect();
            let vip_strs: Vec<String> = a.rules.vips.iter().map(ToString::to_string).collect();
            if *allow_any_source {
                eprintln!("warning: lb_decap on {iface} accepts IPIP from any source (--allow-any-source)");
            }
            if output == Output::Json {
                let v = json!({
                    "iface": iface,
                    "mode": a.mode,
                    "addresses": addrs,
                    "sources": srcs,
                    "vips": vip_strs,
                    "pin_dir": a.dir.display().to_string(),
                    "link_id": a.link_id,
                    "replaced": a.replaced,
                    "adopted_from": a.adopted_from.as_ref().map(|d| d.display().to_string()),
                });
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
            } else {
                writeln!(
                    out,
                    "lb_decap {} {iface} ({} mode), decapsulating IPIP to {} from {} for VIP {}; pinned at {}",
                    if a.replaced {
                        "replaced in place (no gap) on"
                    } else {
                        "attached to"
                    },
                    match a.mode {
                        crate::dataplane::AttachedMode::Native => "native",
                        crate::dataplane::AttachedMode::Generic => "generic",
                    },
                    strings(&addrs),
                    strings(&srcs),
                    strings(&vip_strs),
                    a.dir.display()
                )?;
                if let Some(old) = &a.adopted_from {
                    writeln!(
                        out,
                        "taken over from an older lbctl's attachment (pins moved from {})",
                        old.display()
                    )?;
                }
            }
        }
        DecapCommand::Detach { iface, pin_root } => {
            let removed = decap::detach(pin_root, iface)
                .with_context(|| format!("detaching lb_decap from {iface}"))?;
            if removed {
                writeln!(out, "lb_decap detached from {iface}")?;
            } else {
                writeln!(out, "no lb_decap attachment on {iface} here; nothing to do")?;
            }
        }
        DecapCommand::Stats { iface, pin_root } => {
            let c = decap::read_counters(pin_root, iface)
                .with_context(|| format!("reading lb_decap's counters on {iface}"))?;
            if output == Output::Json {
                let m: Map<String, Value> = lb_common::decap::DECAP_COUNTER_NAMES
                    .iter()
                    .zip(c)
                    .map(|(n, v)| ((*n).to_string(), json!(v)))
                    .collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&Value::Object(m))?)?;
            } else {
                for (n, v) in lb_common::decap::DECAP_COUNTER_NAMES.iter().zip(c) {
                    writeln!(out, "{n:<18} {v:>12}")?;
                }
            }
        }
    }
    Ok(out.flush()?)
}

/// `lbctl db ...`
#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Primary, timeline and every member's role, state, LSN, lag, flows and why.
    Status {
        /// Only this cluster.
        cluster: Option<String>,
    },
    /// Recent events: primary changes (with the lost-bytes estimate), split brain, fencing,
    /// read fallback, members down and up.
    Events {
        /// Only this cluster.
        #[arg(long)]
        cluster: Option<String>,
        /// How many of the most recent events.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

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

/// Arguments of `lbctl stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Refresh in place until Ctrl-C (or --count samples).
    #[arg(long)]
    pub watch: bool,
    /// Seconds between refreshes (0.2..=3600).
    #[arg(long, requires = "watch", value_name = "SECS", default_value_t = 1.0, value_parser = parse_interval)]
    pub interval: f64,
    /// Stop after N samples (default: run until Ctrl-C).
    #[arg(long, requires = "watch", value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
}

/// `lbctl config ...`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the running configuration as YAML (lbd accepts it back as its config).
    Dump,
    /// Write the running configuration to lbd's config file (previous kept as .bak).
    Save,
}

fn parse_backend_addr(s: &str) -> Result<SocketAddrV4, String> {
    s.parse()
        .map_err(|_| format!("`{s}` is not IPV4:PORT (e.g. 10.1.1.2:8080)"))
}

fn parse_interval(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds (e.g. 1 or 0.5)"))?;
    if (0.2..=3600.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is out of range: use 0.2 to 3600 seconds"))
    }
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

/// Runs one `lbctl` invocation, writing its output to stdout.
pub fn run(cli: &Cli) -> Result<()> {
    let mut out = std::io::stdout().lock();
    write_or_pipe_closed(run_to(cli, &mut out))
}

/// A closed stdout (`lbctl stats | head`) ends the command quietly, like other Unix tools.
fn write_or_pipe_closed(r: Result<()>) -> Result<()> {
    match r {
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// Runs one `lbctl` invocation, writing its output to `out`.
pub fn run_to(cli: &Cli, out: &mut dyn Write) -> Result<()> {
    // Build the request first: bad arguments are reported without contacting lbd.
    let request = match &cli.command {
        Command::Stats(args) if args.watch => {
            return watch_stats(&cli.socket, cli.output, args.interval, args.count, out)
        }
        Command::BackendSetup(args) => {
            let script = backend_setup_script(args, |vips| lbd_dsr_sources(&cli.socket, vips))?;
            out.write_all(script.as_bytes())?;
            return Ok(out.flush()?);
        }
        Command::Decap(command) => return run_decap(command, cli.output, out),
        command => request_for(command)?,
    };
    let mut client = Client::connect(&cli.socket)?;
    let data = client.call(&request)?;
    if cli.output == Output::Json {
        writeln!(out, "{}", serde_json::to_string_pretty(&data)?)?;
        return Ok(());
    }
    let text = render_human(&request, data)?;
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// The request a (non-watch) command sends.
pub fn request_for(command: &Command) -> Result<Request> {
    Ok(match command {
        Command::Status => Request::Status,
        Command::Service(ServiceCommand::List) => Request::ServiceList,
        Command::Service(ServiceCommand::Add(args)) => Request::ServiceAdd {
            service: service_from_args(args)?,
        },
        Command::Service(ServiceCommand::Remove { name }) => {
            Request::ServiceRemove { name: name.clone() }
        }
        Command::Backend(BackendCommand::List { service }) => Request::BackendList {
            service: service.clone(),
        },
        Command::Backend(BackendCommand::Add {
            service,
            address,
            weight,
            backup,
            drain,
        }) => Request::BackendAdd {
            service: service.clone(),
            backend: serde_json::from_value(json!({
                "address": address.to_string(),
                "weight": weight,
                "backup": backup,
                "drain": drain,
            }))
            .context("backend add")?,
        },
        Command::Backend(BackendCommand::Remove(r)) => Request::BackendRemove {
            service: r.service.clone(),
            address: r.address,
        },
        Command::Backend(BackendCommand::Drain(r)) => Request::BackendDrain {
            service: r.service.clone(),
            address: r.address,
        },
        Command::Backend(BackendCommand::Undrain(r)) => Request::BackendUndrain {
            service: r.service.clone(),
            address: r.address,
        },
        Command::Backend(BackendCommand::SetWeight {
            service,
            address,
            weight,
        }) => Request::BackendSetWeight {
            service: service.clone(),
            address: *address,
            weight: *weight,
        },
        Command::Stats(_) => Request::Stats,
        Command::Reload => Request::Reload,
        Command::Config(ConfigCommand::Dump) => Request::ConfigDump,
        Command::Config(ConfigCommand::Save) => Request::ConfigSave,
        Command::Unload => Request::Unload,
        Command::BackendSetup(_) => bail!("backend-setup prints commands; it sends no request"),
        Command::Decap(_) => bail!("decap acts on this host; it sends no request"),
        Command::Db(DbCommand::Status { cluster }) => Request::DbStatus {
            cluster: cluster.clone(),
        },
        Command::Db(DbCommand::Events { cluster, limit }) => Request::DbEvents {
            cluster: cluster.clone(),
            limit: Some(*limit),
        },
    })
}

/// Human rendering of a response's data for `request`.
pub fn render_human(request: &Request, data: Value) -> Result<String> {
    let decode =
        |what: &'static str| move |e: serde_json::Error| anyhow!("unexpected {what} from lbd: {e}");
    Ok(match request {
        Request::Status => {
            let s: StatusInfo = serde_json::from_value(data).map_err(decode("status data"))?;
            format::status(&s)
        }
        Request::ServiceList => {
            let l: Vec<ServiceStats> =
                serde_json::from_value(data).map_err(decode("service list"))?;
            format::services(&l)
        }
        Request::BackendList { .. } => {
            let l: Vec<BackendListEntry> =
                serde_json::from_value(data).map_err(decode("backend list"))?;
            format::backend_list(&l)
        }
        Request::Stats => {
            let s: StatsSnapshot = serde_json::from_value(data).map_err(decode("stats data"))?;
            format::stats(&s, None, false)
        }
        Request::DbStatus { .. } => {
            let l: Vec<crate::api::proto::DbClusterInfo> =
                serde_json::from_value(data).map_err(decode("database status"))?;
            format::db_status(&l)
        }
        Request::DbEvents { .. } => {
            let l: Vec<crate::api::proto::DbEventInfo> =
                serde_json::from_value(data).map_err(decode("database events"))?;
            format::db_events(&l)
        }
        Request::ConfigSave => match data {
            Value::String(path) => format!("saved the running configuration to {path}\n"),
            other => format!("{other}\n"),
        },
        // Messages, summaries and the YAML dump are text.
        _ => match data {
            Value::String(s) if s.ends_with('\n') => s,
            Value::String(s) => s + "\n",
            other => serde_json::to_string_pretty(&other)? + "\n",
        },
    })
}

/// ANSI: cursor home. Each line is followed by "erase to end of line", the screen by "erase
/// below", so the view refreshes in place without flicker.
const HOME: &str = "\x1b[H";
const ERASE_LINE: &str = "\x1b[K";
const ERASE_BELOW: &str = "\x1b[J";
const CLEAR: &str = "\x1b[2J";

/// `lbctl stats --watch`: one sample per `interval` seconds until interrupted (or `count`
/// samples). Human output redraws the screen (and keeps retrying while lbd is unreachable);
/// JSON output prints one compact line per sample and stops at the first error.
fn watch_stats(
    socket: &Path,
    output: Output,
    interval: f64,
    count: Option<u64>,
    out: &mut dyn Write,
) -> Result<()> {
    let period = Duration::from_secs_f64(interval);
    let mut client: Option<Client> = None;
    let mut previous: Option<StatsSnapshot> = None;
    let mut next = Instant::now();
    if output == Output::Human {
        write!(out, "{CLEAR}")?;
    }
    let mut taken = 0u64;
    loop {
        let sample = (|| -> Result<StatsSnapshot> {
            // lbd closes connections idle for longer than its request timeout (5 s): when a
            // kept connection fails, try once more on a fresh one (`stats` is read-only).
            if let Some(c) = client.as_mut() {
                match c.call_typed::<StatsSnapshot>(&Request::Stats) {
                    Ok(snap) => return Ok(snap),
                    Err(_) => client = None,
                }
            }
            let c = client.insert(Client::connect(socket)?);
            Ok(c.call_typed::<StatsSnapshot>(&Request::Stats)?)
        })();
        match (output, sample) {
            (Output::Json, Ok(snap)) => {
                writeln!(out, "{}", serde_json::to_string(&snap)?)?;
            }
            (Output::Json, Err(e)) => return Err(e),
            (Output::Human, Ok(snap)) => {
                let body = format::stats(&snap, previous.as_ref(), true);
                let title = format!(
                    "lbctl stats: every {interval}s from {} (Ctrl-C to quit)\n\n",
                    socket.display()
                );
                write_screen(out, &(title + &body))?;
                previous = Some(snap);
            }
            (Output::Human, Err(e)) => {
                client = None;
                previous = None;
                let text =
                    format!("lbctl stats: {e:#}\nretrying every {interval}s (Ctrl-C to quit)\n");
                write_screen(out, &text)?;
            }
        }
        out.flush()?;
        taken += 1;
        if count.is_some_and(|c| taken >= c) {
            return Ok(());
        }
        next += period;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}

fn write_screen(out: &mut dyn Write, text: &str) -> std::io::Result<()> {
    let mut screen = String::with_capacity(text.len() + 256);
    screen.push_str(HOME);
    for line in text.lines() {
        screen.push_str(line);
        screen.push_str(ERASE_LINE);
        screen.push('\n');
    }
    screen.push_str(ERASE_BELOW);
    out.write_all(screen.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("lbctl").chain(args.iter().copied()))
    }

    fn request(args: &[&str]) -> Value {
        let cli = parse(args).unwrap();
        serde_json::to_value(request_for(&cli.command).unwrap()).unwrap()
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_and_defaults() {
        let cli = parse(&["status"]).unwrap();
        assert_eq!(cli.socket, Path::new("/run/lb/lbd.sock"));
        assert_eq!(cli.output, Output::Human);
        let cli = parse(&[
            "backend",
            "list",
            "--output",
            "json",
            "--socket",
            "/tmp/x.sock",
        ])
        .unwrap();
        assert_eq!(cli.socket, Path::new("/tmp/x.sock"));
        assert_eq!(cli.output, Output::Json);
    }

    #[test]
    fn commands_map_to_requests() {
        assert_eq!(request(&["status"]), json!({"command": "status"}));
        assert_eq!(
            request(&["service", "list"]),
            json!({"command": "service_list"})
        );
        assert_eq!(
            request(&["service", "remove", "web"]),
            json!({"command": "service_remove", "name": "web"})
        );
        assert_eq!(
            request(&["backend", "list"]),
            json!({"command": "backend_list", "service": null})
        );
        assert_eq!(
            request(&["backend", "list", "web"]),
            json!({"command": "backend_list", "service": "web"})
        );
        assert_eq!(
            request(&["backend", "drain", "web", "10.1.1.2:8080"]),
            json!({"command": "backend_drain", "service": "web", "address": "10.1.1.2:8080"})
        );
        assert_eq!(
            request(&["backend", "undrain", "web", "10.1.1.2:8080"]),
            json!({"command": "backend_undrain", "service": "web", "address": "10.1.1.2:8080"})
        );
        assert_eq!(
            request(&["backend", "remove", "web", "10.1.1.2:8080"]),
            json!({"command": "backend_remove", "service": "web", "address": "10.1.1.2:8080"})
        );
        assert_eq!(
            request(&["backend", "set-weight", "web", "10.1.1.2:8080", "7"]),
            json!({"command": "backend_set_weight", "service": "web",
                   "address": "10.1.1.2:8080", "weight": 7})
        );
        assert_eq!(
            request(&[
                "backend",
                "add",
                "web",
                "10.1.1.9:80",
                "--weight",
                "3",
                "--backup"
            ]),
            json!({"command": "backend_add", "service": "web", "backend":
                   {"address": "10.1.1.9:80", "weight": 3, "backup": true, "drain": false}})
        );
        assert_eq!(request(&["stats"]), json!({"command": "stats"}));
        assert_eq!(request(&["reload"]), json!({"command": "reload"}));
        assert_eq!(
            request(&["config", "dump"]),
            json!({"command": "config_dump"})
        );
        assert_eq!(
            request(&["config", "save"]),
            json!({"command": "config_save"})
        );
        assert_eq!(request(&["unload"]), json!({"command": "unload"}));
    }

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

    #[test]
    fn human_rendering_of_messages() {
        assert_eq!(
            render_human(&Request::Reload, json!("added service api")).unwrap(),
            "added service api\n"
        );
        assert_eq!(
            render_human(&Request::ConfigDump, json!("services: []\n")).unwrap(),
            "services: []\n"
        );
        assert_eq!(
            render_human(&Request::ConfigSave, json!("/etc/lb/lb.yaml")).unwrap(),
            "saved the running configuration to /etc/lb/lb.yaml\n"
        );
        let err = render_human(&Request::Status, json!({"version": 1})).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("unexpected status data from lbd:"),
            "{err}"
        );
    }

    #[test]
    fn unreachable_lbd_is_one_clear_line() {
        let cli = parse(&["--socket", "/nonexistent/lbd.sock", "status"]).unwrap();
        let mut out = Vec::new();
        let err = format!("{:#}", run_to(&cli, &mut out).unwrap_err());
        assert_eq!(
            err,
            "cannot reach lbd at /nonexistent/lbd.sock: is lbd running? (no such socket)"
        );
        assert!(out.is_empty());
    }

    /// Serves canned responses on a temporary socket: one connection, answers by command.
    struct FakeLbd {
        dir: PathBuf,
        thread: Option<std::thread::JoinHandle<Vec<String>>>,
    }

    impl FakeLbd {
        fn start(tag: &str, answer: fn(&Request) -> crate::api::proto::Response) -> Self {
            use std::io::BufRead;
            let dir = std::env::temp_dir().join(format!("lbctl-fake-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let listener = std::os::unix::net::UnixListener::bind(dir.join("lbd.sock")).unwrap();
            let thread = std::thread::spawn(move || {
                let (stream, _) = listener.accept().unwrap();
                let mut w = stream.try_clone().unwrap();
                let mut seen = Vec::new();
                for line in std::io::BufReader::new(stream).lines() {
                    let line = line.unwrap();
                    let req = Request::from_line(&line).unwrap();
                    w.write_all(answer(&req).to_line().as_bytes()).unwrap();
                    seen.push(line);
                }
                seen
            });
            Self {
                dir,
                thread: Some(thread),
            }
        }

        fn socket(&self) -> String {
            self.dir.join("lbd.sock").display().to_string()
        }

        /// Request lines the fake received (after the client disconnected).
        fn finish(mut self) -> Vec<String> {
            self.thread.take().unwrap().join().unwrap()
        }
    }

    impl Drop for FakeLbd {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn snapshot(ts: u64, fwd: u64) -> StatsSnapshot {
        let mut counters = std::collections::BTreeMap::new();
        for name in lb_common::COUNTER_NAMES {
            counters.insert(name.to_string(), 0);
        }
        counters.insert("fwd_to_backend".into(), fwd);
        StatsSnapshot {
            timestamp_ms: ts,
            services: vec![],
            counters,
        }
    }

    #[test]
    fn end_to_end_against_a_fake_lbd() {
        use crate::api::proto::Response;
        let fake = FakeLbd::start("e2e", |req| match req {
            Request::BackendDrain { service, address } => {
                Response::success(&format!("draining {address} of {service}"))
            }
            Request::Stats => Response::success(&snapshot(1000, 5)),
            _ => Response::failure("no service named `api` (known: web)"),
        });
        let sock = fake.socket();
        // A watch with two samples on one connection, JSON lines.
        let cli = parse(&[
            "--socket",
            &sock,
            "-o",
            "json",
            "stats",
            "--watch",
            "--interval",
            "0.2",
            "--count",
            "2",
        ])
        .unwrap();
        let mut out = Vec::new();
        run_to(&cli, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        let snap: StatsSnapshot = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(snap, snapshot(1000, 5));
        let seen = fake.finish();
        assert_eq!(seen, vec!["{\"command\":\"stats\"}"; 2]);

        let fake = FakeLbd::start("e2e2", |req| match req {
            Request::BackendDrain { service, address } => {
                Response::success(&format!("draining {address} of {service}"))
            }
            _ => Response::failure("no service named `api` (known: web)"),
        });
        let sock = fake.socket();
        let cli = parse(&[
            "--socket",
            &sock,
            "backend",
            "drain",
            "web",
            "10.1.1.2:8080",
        ])
        .unwrap();
        let mut out = Vec::new();
        run_to(&cli, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "draining 10.1.1.2:8080 of web\n"
        );
        let seen = fake.finish();
        assert_eq!(
            seen,
            vec![
                "{\"command\":\"backend_drain\",\"service\":\"web\",\"address\":\"10.1.1.2:8080\"}"
            ]
        );

        // A server-side error is the command's one-line error.
        let fake = FakeLbd::start("e2e3", |_| {
            Response::failure("no service named `api` (known: web)")
        });
        let sock = fake.socket();
        let cli = parse(&["--socket", &sock, "service", "remove", "api"]).unwrap();
        let mut out = Vec::new();
        let err = format!("{:#}", run_to(&cli, &mut out).unwrap_err());
        assert_eq!(err, "no service named `api` (known: web)");
        assert!(out.is_empty());
        fake.finish();
    }

    #[test]
    fn human_watch_redraws_with_counter_rates() {
        use crate::api::proto::Response;
        use std::sync::atomic::{AtomicU64, Ordering};
        static CALLS: AtomicU64 = AtomicU64::new(0);
        let fake = FakeLbd::start("watch", |_| {
            let n = CALLS.fetch_add(1, Ordering::SeqCst);
            Response::success(&snapshot(1000 + n * 1000, 100 + n * 250))
        });
        let sock = fake.socket();
        let cli = parse(&[
            "--socket",
            &sock,
            "stats",
            "--watch",
            "--interval",
            "0.2",
            "--count",
            "2",
        ])
        .unwrap();
        let mut out = Vec::new();
        run_to(&cli, &mut out).unwrap();
        fake.finish();
        let text = String::from_utf8(out).unwrap();
        let screens: Vec<&str> = text.split("\x1b[H").collect();
        assert_eq!(screens.len(), 3, "{text:?}");
        assert_eq!(screens[0], "\x1b[2J");
        assert!(
            screens[1].contains("fwd_to_backend          100    -\x1b[K\n"),
            "{:?}",
            screens[1]
        );
        assert!(
            screens[2].contains("fwd_to_backend          350    250\x1b[K\n"),
            "{:?}",
            screens[2]
        );
        assert!(screens[2].ends_with("\x1b[J"));
    }

    /// lbd closes idle API connections; `stats --watch` reconnects instead of failing.
    #[test]
    fn watch_reconnects_when_lbd_closed_the_connection() {
        use std::io::BufRead;
        let dir = std::env::temp_dir().join(format!("lbctl-rewatch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("lbd.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        // Answers one request per connection, then closes it (as lbd does after its idle
        // timeout between two samples).
        let server = std::thread::spawn(move || {
            for n in 0..3u64 {
                let (stream, _) = listener.accept().unwrap();
                let mut w = stream.try_clone().unwrap();
                let mut line = String::new();
                std::io::BufReader::new(stream)
                    .read_line(&mut line)
                    .unwrap();
                let reply = crate::api::proto::Response::success(&snapshot(1000 * (n + 1), n));
                w.write_all(reply.to_line().as_bytes()).unwrap();
            }
        });
        let cli = parse(&[
            "--socket",
            sock.to_str().unwrap(),
            "--output",
            "json",
            "stats",
            "--watch",
            "--interval",
            "0.2",
            "--count",
            "3",
        ])
        .unwrap();
        let mut out = Vec::new();
        let result = run_to(&cli, &mut out);
        let _ = std::fs::remove_dir_all(&dir);
        result.unwrap();
        server.join().unwrap();
        assert_eq!(String::from_utf8(out).unwrap().lines().count(), 3);
    }

    #[test]
    fn screen_redraw_erases_leftovers() {
        let mut out = Vec::new();
        write_screen(&mut out, "a\nbb\n").unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\x1b[Ha\x1b[K\nbb\x1b[K\n\x1b[J"
        );
    }

    fn setup_args(args: &[&str]) -> BackendSetupArgs {
        match parse(args).unwrap().command {
            Command::BackendSetup(a) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn backend_setup_xdp_needs_sources() {
        let no_lbd = |_: &[Ipv4Addr]| -> Result<Vec<Ipv4Prefix>> { bail!("no lbd here") };
        // Neither --source nor lbd: an error naming --source, not a script accepting any.
        let a = setup_args(&[
            "backend-setup",
            "--dsr",
            "192.0.2.10",
            "--decap",
            "xdp",
            "--iface",
            "eth0",
        ]);
        let e = format!("{:#}", backend_setup_script(&a, no_lbd).unwrap_err());
        assert!(e.starts_with("--source: required with --decap xdp"), "{e}");
        assert!(e.contains("no lbd here"), "{e}");
        // The sources lbd reports.
        let script = backend_setup_script(&a, |vips| {
            assert_eq!(vips, [Ipv4Addr::new(192, 0, 2, 10)]);
            Ok(vec!["10.0.255.2".parse().unwrap()])
        })
        .unwrap();
        assert!(
            script.contains("lbctl decap attach eth0 --vip 192.0.2.10 --allow-source 10.0.255.2\n"),
            "{script}"
        );
        // Given sources and several VIPs: lbd is not asked.
        let a = setup_args(&[
            "backend-setup",
            "--dsr",
            "192.0.2.10",
            "--dsr",
            "192.0.2.11",
            "--decap",
            "xdp",
            "--iface",
            "eth0",
            "--source",
            "10.0.255.0/24",
            "--source",
            "10.0.254.2",
        ]);
        let script = backend_setup_script(&a, no_lbd).unwrap();
        assert!(script.contains(
            "lbctl decap attach eth0 --vip 192.0.2.10 --vip 192.0.2.11 --allow-source 10.0.255.0/24 --allow-source 10.0.254.2\n"
        ), "{script}");
        // The explicit escape hatch warns; it cannot be combined with --source.
        let a = setup_args(&[
            "backend-setup",
            "--dsr",
            "192.0.2.10",
            "--decap",
            "xdp",
            "--iface",
            "eth0",
            "--allow-any-source",
        ]);
        let script = backend_setup_script(&a, no_lbd).unwrap();
        assert!(script.contains("WARNING") && script.contains("--allow-any-source\n"));
        assert!(parse(&[
            "backend-setup",
            "--dsr",
            "192.0.2.10",
            "--decap",
            "xdp",
            "--iface",
            "eth0",
            "--allow-any-source",
            "--source",
            "10.0.0.1",
        ])
        .is_err());
        // Host bits in a prefix are refused, naming the fix.
        let e = parse(&[
            "backend-setup",
            "--dsr",
            "192.0.2.10",
            "--source",
            "10.0.255.2/24",
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("did you mean 10.0.255.0/24"), "{e}");
        // An interface name that could break out of the script's lines is refused.
        let a = setup_args(&[
            "backend-setup",
            "--dsr",
            "192.0.2.10",
            "--decap",
            "xdp",
            "--iface",
            "eth0\nreboot",
            "--source",
            "10.0.0.1",
        ]);
        let e = backend_setup_script(&a, no_lbd).unwrap_err().to_string();
        assert!(
            e.starts_with("--iface: \"eth0\\nreboot\" is not a valid interface name"),
            "{e}"
        );
        // --source belongs to the XDP variant.
        let a = setup_args(&[
            "backend-setup",
            "--dsr",
            "192.0.2.10",
            "--source",
            "10.0.0.1",
        ]);
        assert!(backend_setup_script(&a, no_lbd).is_err());
    }

    #[test]
    fn dsr_sources_of_the_running_config() {
        let yaml = "interfaces: [eth0]\nsnat:\n  addresses: [10.0.255.9]\ndsr:\n  source: 10.0.255.2\n\
                    services:\n\
                    - name: a\n  vip: 192.0.2.10\n  port: 80\n  forwarding: dsr\n  backends: [{address: 10.1.1.2:80}]\n\
                    - name: b\n  vip: 192.0.2.10\n  port: 443\n  forwarding: dsr\n  dsr_source: 10.0.255.3\n  backends: [{address: 10.1.1.2:443}]\n\
                    - name: c\n  vip: 192.0.2.20\n  port: 80\n  backends: [{address: 10.1.1.2:80}]\n";
        let cfg = crate::config::Config::from_yaml_str(yaml, "test").unwrap();
        let got = dsr_sources(&cfg, &[Ipv4Addr::new(192, 0, 2, 10)]).unwrap();
        let want: Vec<Ipv4Prefix> =
            vec!["10.0.255.2".parse().unwrap(), "10.0.255.3".parse().unwrap()];
        assert_eq!(got, want);
        let e = dsr_sources(&cfg, &[Ipv4Addr::new(192, 0, 2, 20)])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no forwarding: dsr service on 192.0.2.20"),
            "{e}"
        );
    }

    #[test]
    fn decap_attach_refuses_empty_allow_lists() {
        let p = Path::new("/nonexistent");
        let rules = DecapRules {
            addresses: vec![],
            sources: vec![],
            vips: vec![Ipv4Addr::new(192, 0, 2, 10)],
        };
        let e = decap::attach("lo", XdpMode::Auto, p, &rules)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--allow-source: at least one is required"),
            "{e}"
        );
        let rules = DecapRules {
            addresses: vec![],
            sources: vec![Ipv4Prefix::ANY],
            vips: vec![],
        };
        let e = decap::attach("lo", XdpMode::Auto, p, &rules)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--vip: at least one is required"), "{e}");
        let cli = parse(&[
            "decap",
            "attach",
            "eth0",
            "--allow-any-source",
            "--vip",
            "192.0.2.10",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Decap(DecapCommand::Attach {
                allow_any_source: true,
                ..
            })
        ));
    }
}
