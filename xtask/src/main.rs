//! `cargo xtask`: set-up, build, test, demo and benchmark orchestration.
//!
//! - `setup`: idempotent installation of everything a fresh Debian machine lacks (`--bench`:
//!   also the bench's packages; `--check`: report only).
//! - `build`: the eBPF object (nightly, `bpfel-unknown-none`) and then the user-space binaries.
//! - `test`: every test tier (host, packet fixtures, network namespaces, bench smoke).
//! - `demo`: the guided tour in a network-namespace lab.
//! - `bench`: benchmarks; writes `docs/benchmarks.md` and a raw JSON file.
//! - `bench-compare REV`: the per-packet cost of REV and of the working tree, interleaved.

mod bench;
mod build;
mod compare;
mod demo;
#[cfg(test)]
mod programs;
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
    /// Install what is missing: the base Debian packages (LLVM 22 for bpf-linker, the lab's
    /// iproute2, ethtool, nftables, procps), bpffs, nightly rust-src, bpf-linker. Idempotent.
    /// `demo` and `build` run it first; `test` and `bench` run it with `--bench`.
    Setup(SetupArgs),
    /// Build the eBPF object and the user-space binaries (release).
    Build,
    /// Build only the eBPF object.
    BuildEbpf,
    /// Run every test tier: host unit tests, packet fixtures, network-namespace scenarios, bench
    /// smoke. Installs the base and bench packages first (`setup --bench`).
    Test(test::TestArgs),
    /// The guided tour: a lab with a client, the balancer and three backends; narrates
    /// spreading, failover, recovery and a drain with live numbers, then removes everything.
    Demo(demo::DemoArgs),
    /// Benchmarks: writes docs/benchmarks.md and docs/bench-results/*.json (`--smoke`: seconds,
    /// temp dir). Installs the base and bench packages first (`setup --bench`).
    Bench(bench::BenchArgs),
    /// Per-packet cost of lb_xdp (bench section 1) of revision REV and of the working tree
    /// (or `--current REV2`), interleaved in one run: builds REV in a temporary git worktree,
    /// alternates the two builds' `lb-bench --only xdp_cost`, writes a table of medians,
    /// ratios and their spread.
    BenchCompare(compare::CompareArgs),
}

/// Options of `cargo xtask setup`.
#[derive(clap::Args)]
struct SetupArgs {
    /// Only report: print every requirement (root, BTF, bpffs, each Debian package of the base
    /// and bench sets, nightly rust-src, bpf-linker) as present or missing, change nothing,
    /// exit non-zero when something is missing.
    #[arg(long)]
    check: bool,
    /// Also install the bench's packages (haproxy, nginx-light, libnginx-mod-stream, wrk,
    /// conntrack, bpftool), as `cargo xtask test` and `cargo xtask bench` do.
    #[arg(long, conflicts_with = "check")]
    bench: bool,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Setup(args) if args.check => {
            let missing = setup::check();
            if missing > 0 {
                eprintln!(
                    "{missing} requirement(s) missing; the last column names the command that \
                     installs each"
                );
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Setup(args) => setup::run(setup::sets(args.bench)),
        Command::Build => {
            setup::run(setup::sets(false))?;
            build::all()
        }
        Command::BuildEbpf => build::ebpf(),
        Command::Test(args) => test::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Bench(args) => bench::run(args),
        Command::BenchCompare(args) => compare::run(args),
    }
}
