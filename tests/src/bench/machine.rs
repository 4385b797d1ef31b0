//! Where and when a benchmark ran: CPU, memory, kernel, commit, date.

use serde::Serialize;
use std::process::Command;

/// The header of a benchmark report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Meta {
    /// CPU model name (`/proc/cpuinfo`).
    pub cpu: String,
    /// Online CPUs.
    pub cores: usize,
    /// Total memory (`/proc/meminfo`), human readable.
    pub memory: String,
    /// `uname -sr` plus the kernel build string.
    pub kernel: String,
    /// Commit the bench ran on (`git describe --always --dirty`), as passed by xtask.
    pub commit: String,
    /// UTC date and time of the start of the run.
    pub date: String,
    /// "full" or "smoke".
    pub scale: String,
    /// Rounds of each interleaved comparison.
    pub rounds: usize,
    /// Wall time of the whole run, in seconds.
    pub duration_s: f64,
    /// Where the raw JSON was written (relative to the repository when inside it).
    pub json_path: String,
}

fn first_line_with(path: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

/// Collects the machine facts; `commit`, `scale`, `rounds` and `json_path` come from the
/// caller, `duration_s` is filled in at the end of the run.
pub fn collect(commit: &str, scale: &str, rounds: usize, json_path: &str) -> Meta {
    let cpu = first_line_with("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let memory = first_line_with("/proc/meminfo", "MemTotal")
        .and_then(|v| {
            v.split_whitespace()
                .next()
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| format!("{:.1} GiB", kb as f64 / (1024.0 * 1024.0)))
        .unwrap_or_else(|| "unknown".into());
    let kernel = Command::new("uname")
        .args(["-srv"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M:%S UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    Meta {
        cpu,
        cores,
        memory,
        kernel,
        commit: commit.into(),
        date,
        scale: scale.into(),
        rounds,
        duration_s: 0.0,
        json_path: json_path.into(),
    }
}
