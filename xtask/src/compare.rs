//! `cargo xtask bench-compare REV`: section 1 of the bench (per-packet cost of `lb_xdp`) of
//! revision REV and of the working tree (or `--current REV2`), side by side in one run.
//!
//! A revision is built in a temporary git worktree (`target/bench-compare/wt-<hash>`, removed
//! afterwards, also on failure) whose `target` is a symlink to one cargo target directory
//! shared by every compared revision (`target/bench-compare/target`), so dependencies are
//! compiled once; its `lb-bench` (which embeds that revision's `lb_xdp`) is kept as
//! `target/bench-compare/bin/lb-bench-<hash>` and reused by later comparisons (`--rebuild`
//! builds it again). The working tree is built as by `cargo xtask build`. Then
//! `lb-bench-compare` alternates the two binaries (see `tests/src/bench/compare.rs`) and
//! writes the table and the raw JSON.

use crate::build::{self, root};
use crate::setup::run_cmd;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(clap::Args)]
pub struct CompareArgs {
    /// The baseline revision (anything `git rev-parse` accepts), e.g. the commit before a change.
    pub baseline: String,
    /// Measure this revision instead of the working tree as the current side.
    #[arg(long)]
    pub current: Option<String>,
    /// Process rounds per side; each runs the section's own 3 inner rounds, so a side gets
    /// 3 x ROUNDS values per row.
    #[arg(long, default_value_t = 4)]
    pub rounds: usize,
    /// Regression budget as a fraction (0.10: a ratio above 1.10 is reported as a miss).
    #[arg(long, default_value_t = 0.10)]
    pub budget: f64,
    /// Where to write the table, the raw JSON and every process round's report
    /// (default: target/bench-compare/out-<date>-<baseline>-<current>).
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Build the baseline's (and `--current`'s) `lb-bench` again even if a kept binary exists.
    #[arg(long)]
    pub rebuild: bool,
}

fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .output()
        .with_context(|| format!("running git {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The directory everything of `bench-compare` lives under.
fn compare_dir() -> PathBuf {
    root().join("target/bench-compare")
}

/// Removes the worktree when dropped (also when the build failed).
struct Worktree(PathBuf);

impl Worktree {
    fn add(rev: &str, path: &Path) -> Result<Worktree> {
        if path.exists() {
            // Left over by an interrupted run.
            remove_worktree(path);
        }
        let p = path.to_str().context("worktree path is not UTF-8")?;
        git(&root(), &["worktree", "add", "--detach", p, rev])?;
        Ok(Worktree(path.to_path_buf()))
    }
}

fn remove_worktree(path: &Path) {
    if let Some(p) = path.to_str() {
        if let Err(e) = git(&root(), &["worktree", "remove", "--force", p]) {
            eprintln!("[compare] warning: {e}");
        }
    }
    let _ = std::fs::remove_dir_all(path);
    let _ = git(&root(), &["worktree", "prune"]);
}

impl Drop for Worktree {
    fn drop(&mut self) {
        println!("[compare] removing the worktree {}", self.0.display());
        remove_worktree(&self.0);
    }
}

/// The `lb-bench` of revision `hash`, built in a temporary worktree unless already kept.
fn build_revision(hash: &str, rebuild: bool) -> Result<PathBuf> {
    let dir = compare_dir();
    let bin = dir.join("bin").join(format!("lb-bench-{hash}"));
    if bin.exists() && !rebuild {
        println!(
            "[compare] reusing {} (--rebuild to build it again)",
            bin.display()
        );
        return Ok(bin);
    }
    let shared_target = dir.join("target");
    std::fs::create_dir_all(&shared_target)?;
    std::fs::create_dir_all(dir.join("bin"))?;
    let wt = Worktree::add(hash, &dir.join(format!("wt-{hash}")))?;
    // The revision's `lb-userspace/build.rs` embeds `<checkout>/target/bpfel-unknown-none/
    // release/lb-ebpf`, so `<checkout>/target` must be the target dir: a symlink to the
    // shared one. Builds of revisions run one after the other, so the object of one is
    // embedded before the next overwrites it.
    std::os::unix::fs::symlink(&shared_target, wt.0.join("target"))
        .context("linking the worktree's target dir")?;
    println!("[compare] building {hash} in {}", wt.0.display());
    build::ebpf_in(&wt.0)?;
    run_cmd(
        Command::new("cargo")
            .current_dir(&wt.0)
            .env("CARGO_TARGET_DIR", wt.0.join("target"))
            .args(["build", "--release", "-p", "lb-tests", "--bin", "lb-bench"]),
    )
    .with_context(|| format!("building lb-bench of {hash}"))?;
    // Copied out at once: the next revision's build overwrites target/release/lb-bench.
    std::fs::copy(shared_target.join("release/lb-bench"), &bin)
        .with_context(|| format!("keeping {}", bin.display()))?;
    Ok(bin)
}

/// `cargo xtask bench-compare`.
pub fn run(args: CompareArgs) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("bench-compare needs root (lb-bench loads XDP programs in a network namespace)");
    }
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let repo = root();
    let resolve = |rev: &str| {
        git(
            &repo,
            &["rev-parse", "--short=9", &format!("{rev}^{{commit}}")],
        )
    };
    let base_hash = resolve(&args.baseline)
        .with_context(|| format!("baseline revision {:?}", args.baseline))?;
    let base_bin = build_revision(&base_hash, args.rebuild)?;
    // The comparer always comes from the working tree.
    let (cur_bin, cur_label) = match &args.current {
        Some(rev) => {
            let h = resolve(rev).with_context(|| format!("current revision {rev:?}"))?;
            let bin = build_revision(&h, args.rebuild)?;
            build_bins(&["lb-bench-compare"])?;
            (bin, h)
        }
        None => {
            build::ebpf()?;
            build_bins(&["lb-bench", "lb-bench-compare"])?;
            let label = git(&repo, &["describe", "--always", "--dirty"])?;
            (repo.join("target/release/lb-bench"), label)
        }
    };
    let date = Command::new("date")
        .args(["-u", "+%Y%m%d-%H%M%S"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "undated".into());
    let out = args
        .out_dir
        .clone()
        .unwrap_or_else(|| compare_dir().join(format!("out-{date}-{base_hash}-{cur_label}")));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    run_cmd(
        Command::new(repo.join("target/release/lb-bench-compare"))
            .current_dir(&repo)
            .arg("--baseline")
            .arg(&base_bin)
            .args(["--baseline-label", &base_hash])
            .arg("--current")
            .arg(&cur_bin)
            .args(["--current-label", &cur_label])
            .args(["--rounds", &args.rounds.to_string()])
            .args(["--budget", &args.budget.to_string()])
            .arg("--dir")
            .arg(out.join("rounds"))
            .arg("--json")
            .arg(out.join("compare.json"))
            .arg("--markdown")
            .arg(out.join("compare.md")),
    )
    .context("the comparison failed")
}

/// Builds these binaries of `lb-tests` from the working tree (release).
fn build_bins(bins: &[&str]) -> Result<()> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root())
        .args(["build", "--release", "-p", "lb-tests"]);
    for b in bins {
        cmd.args(["--bin", b]);
    }
    run_cmd(&mut cmd)
}
