//! `lbd`: the lb control-plane daemon.
//!
//! Loads and validates the configuration, loads (or re-adopts) the pinned XDP program and maps,
//! attaches to the configured interfaces and runs [`lb::daemon::run`] until SIGTERM/SIGINT.
//! Stopping lbd leaves the program forwarding; `lbd --unload` (or `lbctl unload`) detaches it.

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use lb::api::proto::InterfaceInfo;
use lb::config::Config;
use lb::daemon::{run, Outcome, RunOptions};
use lb::dataplane::bpf::BpfDataplane;
use std::path::PathBuf;
use std::process::ExitCode;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line (for log shippers).
    Json,
}

/// lb's control-plane daemon (XDP Layer-4 load balancer).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Configuration file.
    #[arg(long, default_value = "/etc/lb/lb.yaml")]
    config: PathBuf,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    /// Detach the XDP program from every interface, remove the pinned maps and links, exit.
    #[arg(long)]
    unload: bool,
    /// Validate the configuration and exit (0 when valid).
    #[arg(long)]
    check: bool,
}

fn init_logging(format: LogFormat) {
    // LB_LOG, else RUST_LOG, else `info`.
    let filter = tracing_subscriber::EnvFilter::try_from_env("LB_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_format);
    match real_main(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lbd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn ifindex(name: &str) -> Result<u32> {
    nix::net::if_::if_nametoindex(name).with_context(|| {
        format!("interface {name:?} does not exist; fix `interfaces` in the configuration")
    })
}

fn real_main(args: Args) -> Result<()> {
    if args.unload {
        // The pin root comes from the config when it is readable; otherwise the default.
        let root = Config::load(&args.config)
            .map(|c| c.bpffs_root)
            .unwrap_or_else(|_| PathBuf::from("/sys/fs/bpf/lb"));
        BpfDataplane::unload(&root).with_context(|| format!("unloading {}", root.display()))?;
        tracing::info!(pin_root = %root.display(), "detached and removed the pinned program and maps");
        return Ok(());
    }
    let config = Config::load(&args.config)?;
    if args.check {
        println!(
            "{}: ok ({} services, {} backends)",
            args.config.display(),
            config.services.len(),
            config
                .services
                .iter()
                .map(|s| s.backends.len())
                .sum::<usize>()
        );
        return Ok(());
    }
    let opts = config.load_options();
    let mut dp = BpfDataplane::load(&opts).context("loading the XDP program")?;
    let mut interfaces = Vec::new();
    for name in &config.interfaces {
        let index = ifindex(name)?;
        let mode = dp
            .attach(name, config.xdp_mode)
            .with_context(|| format!("attaching to {name}"))?;
        tracing::info!(iface = %name, ifindex = index, mode = ?mode, "XDP attached");
        interfaces.push(InterfaceInfo {
            name: name.clone(),
            ifindex: index,
            mode,
        });
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let run_opts = RunOptions {
        config_path: args.config.clone(),
        config: config.clone(),
        interfaces,
        pin_root: opts.pin_root.clone(),
    };
    let outcome = runtime.block_on(run(run_opts, dp, std::future::pending()))?;
    if outcome == Outcome::UnloadRequested {
        BpfDataplane::unload(&config.bpffs_root)
            .with_context(|| format!("unloading {}", config.bpffs_root.display()))?;
        tracing::info!("unloaded: XDP detached, pinned maps removed");
    } else {
        tracing::info!("stopped; the pinned XDP program keeps forwarding");
    }
    Ok(())
}
