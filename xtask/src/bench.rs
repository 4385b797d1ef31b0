//! `cargo xtask bench`: lb's benchmarks.
//!
//! Installs the base and bench Debian packages (`setup::run` with both sets), builds
//! everything, and runs the `lb-bench` binary
//! (`tests/src/bin/lb-bench.rs`), which measures and writes:
//! - full run: `docs/benchmarks.md` and `docs/bench-results/<date>-<commit>.json` (about 15-20
//!   minutes on 2 cores);
//! - `--smoke`: every section with tiny counts into a temp dir (seconds; never touches
//!   `docs/`). `cargo xtask test` runs it as its last tier.

use crate::build::{self, root};
use crate::setup::{self, run_cmd};
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::Command;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Seconds-long run of every section with tiny counts, written to a temp dir.
    #[arg(long)]
    pub smoke: bool,
    /// Run only these sections (comma separated: xdp_cost, pktrate, e2e, control, memory).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Directory for the outputs instead of docs/ and docs/bench-results/ (or the smoke temp dir).
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
}

/// `cargo xtask bench`: set-up (base and bench packages) and build, then [`run_built`].
pub fn run(args: BenchArgs) -> Result<()> {
    setup::run(setup::sets(true))?;
    build::all()?;
    run_built(&args)
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .current_dir(root())
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Runs the already built `lb-bench` (the caller ran `setup::run` with the bench set).
pub fn run_built(args: &BenchArgs) -> Result<()> {
    let commit = git(&["describe", "--always", "--dirty"]).unwrap_or_else(|| "unknown".into());
    let bin = root().join("target/release/lb-bench");
    // Verify what was installed: every compared balancer must start with the bench's
    // configuration (e.g. nginx without its stream module fails here, with the fix named).
    run_cmd(Command::new(&bin).arg("--preflight"))
        .context("the bench's alternatives are not usable on this machine (see above)")?;
    let mut cmd = Command::new(&bin);
    cmd.current_dir(root()).arg("--commit").arg(&commit);
    if !args.only.is_empty() {
        cmd.arg("--only").arg(args.only.join(","));
    }
    let smoke_dir;
    if args.smoke {
        smoke_dir = args.out_dir.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("lb-bench-smoke-{}", std::process::id()))
        });
        std::fs::create_dir_all(&smoke_dir)
            .with_context(|| format!("creating {}", smoke_dir.display()))?;
        // The smoke fails when lb could not be measured: that is what it is for. An
        // alternative that fails at run time (after the preflight passed) is a warning, so
        // the smoke fails only when lb itself is broken.
        cmd.arg("--smoke")
            .arg("--require-lb")
            .arg("--json")
            .arg(smoke_dir.join("bench.json"))
            .arg("--markdown")
            .arg(smoke_dir.join("benchmarks.md"));
        println!("[bench] smoke run, output in {}", smoke_dir.display());
    } else {
        // Relative paths: lb-bench runs in the repository root, and the report then names
        // its raw data by a path that holds in every checkout.
        let (docs, results) = match &args.out_dir {
            Some(d) => (d.clone(), d.clone()),
            None => (PathBuf::from("docs"), PathBuf::from("docs/bench-results")),
        };
        std::fs::create_dir_all(root().join(&docs))?;
        std::fs::create_dir_all(root().join(&results))?;
        let date = Command::new("date")
            .args(["-u", "+%Y%m%d-%H%M%S"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|_| "undated".into());
        let json = results.join(format!("{date}-{commit}.json"));
        cmd.arg("--json")
            .arg(&json)
            .arg("--markdown")
            .arg(docs.join("benchmarks.md"));
    }
    run_cmd(&mut cmd).context("the benchmark failed")
}
