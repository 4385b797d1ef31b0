//! `lb-bench-compare`: section 1 (per-packet cost of `lb_xdp`) of two builds side by side.
//!
//! Normally started by `cargo xtask bench-compare REV`, which builds REV's `lb-bench` in a
//! temporary git worktree. Runs the two `lb-bench` binaries in alternating process rounds
//! (each `--only xdp_cost`), then writes the comparison table (Markdown) and the raw JSON
//! (every value of every round, and every process round's own report). See
//! `lb_tests::bench::compare`. Needs root, as `lb-bench` does.

use anyhow::{bail, Context, Result};
use clap::Parser;
use lb_tests::bench::compare::{
    load_rounds, run_rounds, to_markdown, Build, CompareRow, ProcessRound,
};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "lb-bench-compare",
    about = "per-packet cost of two lb builds, interleaved (run through `cargo xtask bench-compare`)"
)]
struct Args {
    /// The baseline's `lb-bench` binary.
    #[arg(long)]
    baseline: PathBuf,
    /// Label of the baseline (its commit).
    #[arg(long)]
    baseline_label: String,
    /// The current build's `lb-bench` binary.
    #[arg(long)]
    current: PathBuf,
    /// Label of the current build.
    #[arg(long)]
    current_label: String,
    /// Process rounds per side (each runs the section's own inner rounds, 3 in a full run).
    #[arg(long, default_value_t = 4)]
    rounds: usize,
    /// Regression budget as a fraction: a ratio above 1 + budget is reported as a miss.
    #[arg(long, default_value_t = 0.10)]
    budget: f64,
    /// Directory for every process round's JSON report and log.
    #[arg(long)]
    dir: PathBuf,
    /// Run nothing: read the process rounds already in `--dir` (e.g. of a comparison that
    /// was stopped early) and write the table from them.
    #[arg(long)]
    from_dir: bool,
    /// Where to write the comparison's raw JSON.
    #[arg(long)]
    json: PathBuf,
    /// Where to write the comparison table (Markdown).
    #[arg(long)]
    markdown: PathBuf,
}

#[derive(Serialize)]
struct Output<'a> {
    baseline: &'a str,
    current: &'a str,
    process_rounds: usize,
    budget: f64,
    duration_s: f64,
    rows: &'a [CompareRow],
    rounds: &'a [ProcessRound],
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !(0.0..1.0).contains(&args.budget) {
        bail!("--budget must be a fraction in [0, 1), got {}", args.budget);
    }
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let start = Instant::now();
    let baseline = Build {
        bench: args.baseline.clone(),
        label: args.baseline_label.clone(),
    };
    let current = Build {
        bench: args.current.clone(),
        label: args.current_label.clone(),
    };
    let cwd = std::env::current_dir().context("current directory")?;
    let (cmp, rounds, process_rounds) = if args.from_dir {
        let (cmp, n) = load_rounds(&args.dir).map_err(|e| anyhow::anyhow!(e))?;
        (cmp, Vec::new(), n)
    } else {
        let (cmp, rounds) = run_rounds(&baseline, &current, args.rounds, &args.dir, &cwd, |m| {
            println!("[compare] {m} ({:.0} s)", start.elapsed().as_secs_f64());
        })
        .map_err(|e| anyhow::anyhow!(e))?;
        (cmp, rounds, args.rounds)
    };
    let rows = cmp.rows();
    let duration_s = start.elapsed().as_secs_f64();
    let table = to_markdown(&rows, args.budget);
    let md = format!(
        "Per-packet cost of `lb_xdp`, {} (baseline) vs {} (current): {} process rounds per \
         side, alternating (the side that starts alternates too), each `lb-bench --only \
         xdp_cost` of that revision (its own object and bench code); {:.0} s.\n\n{table}",
        args.baseline_label, args.current_label, process_rounds, duration_s
    );
    std::fs::write(&args.markdown, &md)
        .with_context(|| format!("writing {}", args.markdown.display()))?;
    let out = Output {
        baseline: &args.baseline_label,
        current: &args.current_label,
        process_rounds,
        budget: args.budget,
        duration_s,
        rows: &rows,
        rounds: &rounds,
    };
    let json = serde_json::to_string_pretty(&out).context("serialising the comparison")?;
    std::fs::write(&args.json, json).with_context(|| format!("writing {}", args.json.display()))?;
    println!("{md}");
    println!(
        "[compare] table: {}, raw: {}",
        args.markdown.display(),
        args.json.display()
    );
    Ok(())
}
