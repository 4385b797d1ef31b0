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
use std::io::IsTerminal;
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
    // Colour only on a terminal: journald and log files get plain text. NO_COLOR (non-empty)
    // turns it off on a terminal too.
    let ansi = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
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

/// Fails with a hint when `root` would not be on a bpf filesystem: pins elsewhere either fail
/// or do not survive lbd, which breaks hitless restarts.
fn check_bpffs(root: &std::path::Path) -> Result<()> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    // The deepest existing ancestor decides which filesystem the pin directory lands on.
    let mut probe = root;
    while !probe.exists() {
        probe = probe.parent().unwrap_or(std::path::Path::new("/"));
    }
    if probe == std::path::Path::new("/sys/fs") || probe == std::path::Path::new("/sys") {
        anyhow::bail!(
            "bpffs_root {}: /sys/fs/bpf does not exist in this mount namespace (is lbd started with `ip netns exec`, which remounts /sys? use `nsenter --net=/run/netns/NAME` or mount bpffs: `mount -t bpf bpf /sys/fs/bpf`)",
            root.display()
        );
    }
    let c = std::ffi::CString::new(probe.as_os_str().as_encoded_bytes())
        .context("bpffs_root contains a NUL byte")?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statfs buffer.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("statfs {}", probe.display()));
    }
    if st.f_type as i64 != BPF_FS_MAGIC {
        anyhow::bail!(
            "bpffs_root {} is not on a bpf filesystem ({} is not bpffs); mount one (`mount -t bpf bpf /sys/fs/bpf`) or point bpffs_root below an existing bpffs mount (under `ip netns exec`, /sys is remounted without it: use `nsenter --net=/run/netns/NAME`)",
            root.display(),
            probe.display()
        );
    }
    Ok(())
}

fn real_main(args: Args) -> Result<()> {
    if args.unload {
        // The pin root comes from the config when it is readable; otherwise the default.
        let root = Config::load_unchecked(&args.config)
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
        for a in config.advice() {
            println!("warning: {a}");
        }
        return Ok(());
    }
    for a in config.advice() {
        tracing::warn!(field = %a.field, "{}", a.message);
    }
    check_bpffs(&config.bpffs_root)?;
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
    // Packets passed up rewritten carry a VIP or SNAT source: see dataplane::sysctl.
    lb::dataplane::sysctl::prepare_pass_up_logged(&config.interfaces)
        .context("setting the interfaces' sysctls for packets passed up rewritten")?;
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
        db_prober: lb::db::supervisor::default_prober(),
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
