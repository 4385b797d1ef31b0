//! `cargo xtask`: set-up, build, test, demo and benchmark orchestration.
//!
//! - `setup`: idempotent installation of everything a fresh Debian machine lacks.
//! - `build`: the eBPF object (nightly, `bpfel-unknown-none`) and then the user-space binaries.
//! - `test`: every test tier (host, packet fixtures, network namespaces, bench smoke).
//! - `demo`: the guided tour in a network-namespace lab.
//! - `bench`: benchmarks; writes `docs/benchmarks.md` and a raw JSON file.

mod bench;
mod build;
mod demo;
mod setup;
mod test;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "lb's build, test, demo and benchmark tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what is missing: Debian packages, nightly rust-src, bpf-linker. Idempotent.
    Setup,
    /// Build the eBPF object and the user-space binaries (release).
    Build,
    /// Build only the eBPF object.
    BuildEbpf,
    /// Run every test tier: host unit tests, packet fixtures, network-namespace scenarios.
    Test(test::TestArgs),
    /// The guided tour: a lab with a client, the balancer and three backends; narrates
    /// spreading, failover, recovery and a drain with live numbers, then removes everything.
    Demo(demo::DemoArgs),
    /// Benchmarks: writes docs/benchmarks.md and docs/bench-results/*.json (`--smoke`: seconds, temp dir).
    Bench(bench::BenchArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Setup => setup::run(),
        Command::Build => {
            setup::run()?;
            build::all()
        }
        Command::BuildEbpf => build::ebpf(),
        Command::Test(args) => test::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Bench(args) => bench::run(args),
    }
}
