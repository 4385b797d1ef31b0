//! The benchmarks behind `cargo xtask bench` (binary `lb-bench`).
//!
//! Each section measures one question of issue 5 and returns a [`Section`]: rows of
//! [`Measurement`]s (every run kept, plus the median), ratios between variants and the
//! published [`Target`]s. A comparison runs its variants interleaved (A B A B ...) for several
//! rounds, so slow drift of the machine (thermal, other tenants) spreads over all variants
//! instead of biasing the last one. Anything that could not be measured is reported as
//! "not measured: <reason>", never as a number.
//!
//! Layout:
//! - [`stats`]: medians, interleaved rounds;
//! - [`report`]: the [`Report`] (raw JSON) and its Markdown rendering (`docs/benchmarks.md`);
//! - [`machine`]: CPU, kernel, commit and date of the run;
//! - [`rawbpf`]: the tiny hand-assembled XDP programs of the packet-rate section (SYN
//!   generator, per-backend counter) and the raw `bpf(2)` calls they need;
//! - [`xdp_cost`], [`pktrate`], [`e2e`], [`control`], [`memory`]: the five sections;
//! - [`alt`]: the balancers we compare against (nftables, HAProxy, nginx stream).

pub mod alt;
pub mod control;
pub mod e2e;
pub mod machine;
pub mod memory;
pub mod pktrate;
pub mod rawbpf;
pub mod report;
pub mod stats;
pub mod xdp_cost;

pub use report::{Measurement, Report, Row, Section, Target};

/// How big a benchmark run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// The full run that writes `docs/benchmarks.md` (about 15-20 minutes on 2 cores).
    Full,
    /// A seconds-long run of every section with tiny counts, so `cargo xtask test` proves the
    /// bench still works. Its numbers mean nothing and are never published.
    Smoke,
}

impl Scale {
    /// Rounds of every interleaved comparison.
    pub fn rounds(self) -> usize {
        match self {
            Scale::Full => 3,
            Scale::Smoke => 1,
        }
    }

    /// Picks `full` or `smoke` by scale.
    pub fn pick<T>(self, full: T, smoke: T) -> T {
        match self {
            Scale::Full => full,
            Scale::Smoke => smoke,
        }
    }
}

/// Errors of the benchmark harness itself (a failed measurement is a [`Measurement`], not an
/// error).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A `bpf(2)` call failed.
    #[error("bpf({cmd}): {source}")]
    Bpf {
        /// The command name.
        cmd: &'static str,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// A tool's output could not be parsed.
    #[error("cannot parse the output of {tool}: {detail}")]
    Parse {
        /// The tool.
        tool: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// Anything else, with its context.
    #[error("{0}")]
    Other(String),
}

/// Result of harness operations.
pub type Result<T, E = BenchError> = std::result::Result<T, E>;
