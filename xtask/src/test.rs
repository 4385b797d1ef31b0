//! `cargo xtask test`: every tier, in order, stopping at the first failing tier.

use crate::bench;
use crate::build::{self, root};
use crate::setup::{self, run_cmd};
use anyhow::Result;
use std::process::Command;

#[derive(clap::Args)]
pub struct TestArgs {
    /// Skip the network-namespace tier and the bench smoke, and so the bench's packages (quick
    /// local iteration only; CI runs everything).
    #[arg(long)]
    pub skip_netns: bool,
}

fn tier(name: &str) {
    println!("\n===== test tier: {name} =====");
}

pub fn run(args: TestArgs) -> Result<()> {
    // The bench's packages too, before building: the last tier (bench smoke) needs them, and
    // a package that cannot be installed fails here, not after every other tier ran.
    setup::run(setup::sets(!args.skip_netns))?;
    build::all()?;
    let cargo_test = |extra: &[&str]| -> Result<()> {
        run_cmd(
            Command::new("cargo")
                .current_dir(root())
                .args(["test", "--release"])
                .args(extra),
        )
    };
    tier("host unit tests");
    cargo_test(&["--workspace", "--exclude", "lb-tests"])?;
    cargo_test(&["-p", "lb-tests", "--lib", "--bins"])?;
    tier("packet fixtures (BPF_PROG_TEST_RUN)");
    cargo_test(&[
        "-p",
        "lb-tests",
        "--test",
        "fixtures",
        "--",
        "--test-threads=1",
    ])?;
    if !args.skip_netns {
        tier("network-namespace scenarios");
        cargo_test(&["-p", "lb-tests", "--test", "netns"])?;
        tier("database scenarios (PostgreSQL 15 behind lbd, issue 11)");
        cargo_test(&[
            "-p",
            "lb-tests",
            "--test",
            "netns_db",
            "--",
            "--test-threads=1",
        ])?;
        tier("BGP scenarios (lbd announcing through BIRD 2, issue 13)");
        cargo_test(&[
            "-p",
            "lb-tests",
            "--test",
            "netns_bgp",
            "--",
            "--test-threads=1",
        ])?;
        tier("scale-out scenarios (three nodes behind an ECMP router, issue 13)");
        cargo_test(&[
            "-p",
            "lb-tests",
            "--test",
            "netns_scale",
            "--",
            "--test-threads=1",
        ])?;
        tier("bench smoke (cargo xtask bench --smoke)");
        bench::run_built(&bench::BenchArgs {
            smoke: true,
            only: Vec::new(),
            out_dir: None,
        })?;
    }
    println!("\nall test tiers passed");
    Ok(())
}
