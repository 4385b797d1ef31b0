//! `cargo xtask demo`: the guided tour in a network-namespace lab.
//!
//! Prepares the machine (`setup::run` with the base set: the lab needs nothing of the bench's),
//! builds everything (`build::all`, which also builds the lb-tests binaries `lb-demo` and
//! `lb-testsrv`), then runs `target/release/lb-demo` on
//! `config/demo.yaml`. lb-demo narrates traffic spreading, a failure, a recovery and a drain,
//! and removes everything it created at the end or on Ctrl-C.

use crate::build::{self, root};
use crate::setup;
use anyhow::{bail, Context, Result};
use std::process::Command;

/// Options of `cargo xtask demo`.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// Shorter phases (what the netns test tier runs).
    #[arg(long)]
    pub fast: bool,
    /// Skip set-up and build (the binaries must already be built).
    #[arg(long)]
    pub no_build: bool,
    /// The database tour instead (issue 11): PostgreSQL 15 primary + 2 replicas behind a
    /// write VIP and a read VIP, the primary killed and a replica promoted.
    #[arg(long, conflicts_with = "scale_out")]
    pub db: bool,
    /// The scale-out tour instead (issue 13): three balancer nodes announcing a DSR VIP to an
    /// ECMP router through BIRD, long-lived connections, one node's lbd killed and brought
    /// back.
    #[arg(long)]
    pub scale_out: bool,
}

/// Runs the demo.
pub fn run(args: DemoArgs) -> Result<()> {
    if !args.no_build {
        setup::run(setup::sets(false))?;
        build::all()?;
    }
    let root = root();
    let demo = root.join("target/release/lb-demo");
    if !demo.is_file() {
        bail!(
            "{} is missing; run `cargo xtask build` first",
            demo.display()
        );
    }
    let mut cmd = Command::new(&demo);
    cmd.arg("--config").arg(root.join("config/demo.yaml"));
    if args.fast {
        cmd.arg("--fast");
    }
    if args.db {
        cmd.arg("--db");
    }
    if args.scale_out {
        cmd.arg("--scale-out");
    }
    println!("[demo] {cmd:?}");
    // Ctrl-C reaches lb-demo too (same process group); it cleans up and exits, and we wait
    // for that instead of dying first.
    // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
    let status = cmd
        .status()
        .with_context(|| format!("starting {}", demo.display()))?;
    if !status.success() {
        bail!("lb-demo exited with {status}");
    }
    Ok(())
}
