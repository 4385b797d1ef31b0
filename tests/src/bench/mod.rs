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
//! - [`alt`]: the balancers we compare against (nftables, HAProxy, nginx stream);
//! - [`dbfailover`]: the database tier's write-VIP failover, lb next to HAProxy with
//!   Patroni-style checks (issue 11);
//! - [`failover`]: failed connections and connect/answer times while a backend dies, lb next
//!   to HAProxy with checks, `retries 3` and `option redispatch` (issue 10).
//! - [`compare`]: section 1 of two builds side by side (`cargo xtask bench-compare REV`).

pub mod alt;
pub mod compare;
pub mod control;
pub mod dbfailover;
pub mod e2e;
pub mod failover;
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

/// A data plane loaded for a benchmark under its own bpffs directory
/// (`/sys/fs/bpf/lbbench-<pid>-<n>`), removed again on drop.
pub struct PrivateDataplane {
    dp: Option<lb::dataplane::bpf::BpfDataplane>,
    root: std::path::PathBuf,
}

impl PrivateDataplane {
    /// Loads `lb_xdp` with `opts` (its `pin_root` is replaced by a fresh private directory).
    pub fn load(opts: &lb::dataplane::LoadOptions) -> Result<PrivateDataplane, String> {
        Self::load_object(opts, None)
    }

    /// [`Self::load`] with another build of the eBPF object (`object`; the embedded one when
    /// `None`): lets a measurement compare builds side by side.
    pub fn load_object(
        opts: &lb::dataplane::LoadOptions,
        object: Option<&[u8]>,
    ) -> Result<PrivateDataplane, String> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // bpffs refuses names with a dot.
        let root =
            std::path::Path::new("/sys/fs/bpf").join(format!("lbbench-{}-{n}", std::process::id()));
        let mut opts = opts.clone();
        opts.pin_root = Some(root.clone());
        // The guard removes a half-created directory when the load fails.
        let mut guard = PrivateDataplane { dp: None, root };
        let dp = match object {
            Some(obj) => lb::dataplane::bpf::BpfDataplane::load_object(&opts, obj),
            None => lb::dataplane::bpf::BpfDataplane::load(&opts),
        };
        guard.dp = Some(dp.map_err(|e| format!("loading lb_xdp: {e}"))?);
        Ok(guard)
    }

    /// The loaded data plane.
    pub fn get(&self) -> &lb::dataplane::bpf::BpfDataplane {
        self.dp.as_ref().expect("present until drop")
    }

    /// The loaded data plane, mutably.
    pub fn get_mut(&mut self) -> &mut lb::dataplane::bpf::BpfDataplane {
        self.dp.as_mut().expect("present until drop")
    }
}

impl Drop for PrivateDataplane {
    fn drop(&mut self) {
        self.dp = None;
        if let Err(e) = lb::dataplane::bpf::BpfDataplane::unload(&self.root) {
            eprintln!("bench: cannot unload {}: {e}", self.root.display());
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

impl std::ops::Deref for PrivateDataplane {
    type Target = lb::dataplane::bpf::BpfDataplane;
    fn deref(&self) -> &Self::Target {
        self.get()
    }
}

impl std::ops::DerefMut for PrivateDataplane {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.get_mut()
    }
}
