//! `lb-bench`: runs lb's benchmarks and writes the raw JSON and the Markdown report.
//!
//! Normally started by `cargo xtask bench` (full run, writes `docs/benchmarks.md` and
//! `docs/bench-results/<date>-<commit>.json`) or `cargo xtask bench --smoke` (seconds, temp dir).
//! Needs root: it loads XDP programs and builds network namespaces.

use anyhow::{bail, Context, Result};
use clap::Parser;
use lb_tests::bench::alt::{self, prepare as alt_prepare, Variant};
use lb_tests::bench::{
    control, dbfailover, e2e, failover, machine, memory, pktrate, xdp_cost, Report, Scale,
};
use lb_tests::lab::{Lab, LabOptions, Mode};
use std::path::PathBuf;
use std::time::Instant;

/// The hand-written method section appended to the generated report.
const METHOD: &str = include_str!("../bench/method.md");

#[derive(Parser)]
#[command(
    name = "lb-bench",
    about = "lb's benchmarks (run through `cargo xtask bench`)"
)]
struct Args {
    /// Seconds-long run of every section with tiny counts (numbers are meaningless).
    #[arg(long)]
    smoke: bool,
    /// Where to write the raw JSON (required unless --preflight).
    #[arg(long, required_unless_present = "preflight")]
    json: Option<PathBuf>,
    /// Where to write the Markdown report (omit to skip it).
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// The commit being measured (`git describe --always --dirty`).
    #[arg(long, default_value = "unknown")]
    commit: String,
    /// Run only these sections (comma separated: xdp_cost, pktrate, e2e, control, db_failover,
    /// failover, memory; xdp_snat_pool: section 1's SNAT pool rows alone).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Fail (after writing the outputs) when any row or target was not measured.
    #[arg(long)]
    require_all: bool,
    /// Fail (after writing the outputs) when any row of lb itself was not measured; rows of
    /// the alternatives (nftables, HAProxy, nginx, direct) that could not be measured are
    /// printed as warnings. The smoke run uses this: it must fail only when lb is broken
    /// (the preflight already failed hard if an alternative cannot start here).
    #[arg(long, conflicts_with = "require_all")]
    require_lb: bool,
    /// Only check that every compared balancer can start here (programs installed, HAProxy
    /// and nginx accept their generated configurations), then exit.
    #[arg(long)]
    preflight: bool,
}

/// Runs [`alt::preflight`] in a scratch directory that is removed again.
fn preflight() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("lb-bench-preflight-{}", std::process::id()));
    let r = alt::preflight(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    r.map_err(|e| anyhow::anyhow!("bench set-up incomplete: {e}"))
}

fn main() -> Result<()> {
    let args = Args::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("lb-bench needs root (XDP programs, network namespaces); run `sudo -E cargo xtask bench`");
    }
    let scale = if args.smoke {
        Scale::Smoke
    } else {
        Scale::Full
    };
    let want = |s: &str| args.only.is_empty() || args.only.iter().any(|o| o == s);
    if args.preflight {
        preflight()?;
        println!("[bench] preflight: every compared balancer can start");
        return Ok(());
    }
    // A missing alternative is a set-up error, reported before anything runs.
    if want("pktrate") || want("e2e") {
        preflight()?;
    }
    let start = Instant::now();
    let json_path = args
        .json
        .clone()
        .expect("clap requires --json without --preflight");
    let json_display = json_path.display().to_string();
    let mut meta = machine::collect(
        &args.commit,
        if args.smoke { "smoke" } else { "full" },
        scale.rounds(),
        &json_display,
    );
    let mut sections = Vec::new();
    let mut targets = Vec::new();
    let step = |name: &str| println!("[bench] {name} ({:.0} s)", start.elapsed().as_secs_f64());

    if want("xdp_cost") || args.only.iter().any(|o| o == "xdp_snat_pool") {
        step("1. per-packet cost (BPF_PROG_TEST_RUN)");
        // `--only xdp_snat_pool`: section 1's SNAT pool rows alone.
        let parts = xdp_cost::Parts {
            levels: want("xdp_cost"),
            pool: true,
        };
        let (s, t) = xdp_cost::run_parts(scale, parts);
        sections.push(s);
        targets.extend(t);
    }
    let need_lab = want("pktrate") || want("e2e") || want("control");
    let mut lab: Result<Lab, String> = if need_lab {
        step("building the lab");
        Lab::new(LabOptions {
            // The packet-rate section attaches its own counter to each backend's `e0`.
            host_xdp_pass: false,
            ..LabOptions::new(2, Mode::Native)
        })
        .map_err(|e| format!("the lab could not be built: {e}"))
        .and_then(|l| alt_prepare(&l).map(|()| l))
    } else {
        Err("not requested".into())
    };
    if want("pktrate") {
        step("2. packet rate (SYN flood)");
        let (s, t) = pktrate::run(lab.as_mut().ok(), scale);
        sections.push(s);
        targets.extend(t);
    }
    if want("e2e") {
        step("3. end to end (wrk)");
        let (s, t) = e2e::run(lab.as_mut().map_err(|e| e.clone()), scale);
        sections.push(s);
        targets.extend(t);
    }
    if want("control") {
        step("4. control plane");
        let (s, t) = control::run(lab.as_mut().map_err(|e| e.clone()), scale);
        sections.push(s);
        targets.extend(t);
    }
    drop(lab);
    // Database failover: a fresh PostgreSQL lab per round; about 30 s per round and balancer,
    // so the smoke run includes it only when asked for by name.
    let named = |s: &str| args.only.iter().any(|o| o == s);
    if (want("db_failover") && !args.smoke) || named("db_failover") {
        step("6. database failover (PostgreSQL, lb vs HAProxy + Patroni-style checks)");
        sections.push(dbfailover::run(scale));
    }
    // Backend failover: a fresh lab per round, about 25 s per round and (death, balancer), so
    // the smoke run includes it only when asked for by name too.
    if (want("failover") && !args.smoke) || named("failover") {
        step("7. failover (a backend dies: lb vs HAProxy with retries and redispatch)");
        sections.push(failover::run(scale));
    }
    if want("memory") {
        step("5. memory");
        sections.push(memory::run());
    }
    meta.duration_s = start.elapsed().as_secs_f64();
    let report = Report {
        meta,
        targets,
        sections,
    };
    if let Some(dir) = json_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let json = serde_json::to_string_pretty(&report).context("serialising the report")?;
    std::fs::write(&json_path, json).with_context(|| format!("writing {}", json_path.display()))?;
    println!("[bench] raw results: {}", json_path.display());
    let md = report.to_markdown(METHOD);
    if let Some(path) = &args.markdown {
        std::fs::write(path, &md).with_context(|| format!("writing {}", path.display()))?;
        println!("[bench] report: {}", path.display());
    }
    for t in &report.targets {
        println!("[bench] target {}: {}", t.name, t.verdict());
    }
    println!("[bench] done in {:.0} s", start.elapsed().as_secs_f64());
    let missing = report.not_measured();
    if args.require_lb {
        let alternatives = [
            Variant::Nftables,
            Variant::Haproxy,
            Variant::Nginx,
            Variant::Direct,
        ]
        .map(Variant::name);
        let (lb, alt) = report.not_measured_split(|v| alternatives.contains(&v));
        for line in &alt {
            eprintln!("[bench] warning: an alternative was not measured: {line}");
        }
        if !lb.is_empty() {
            bail!(
                "{} measurement(s) of lb could not be taken:\n  {}",
                lb.len(),
                lb.join("\n  ")
            );
        }
    }
    if args.require_all && !missing.is_empty() {
        bail!(
            "{} measurement(s) could not be taken:\n  {}",
            missing.len(),
            missing.join("\n  ")
        );
    }
    Ok(())
}
