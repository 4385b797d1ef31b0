//! Ablation switches for measurement builds: each removes one stage of the packet path at
//! compile time, so a build without it can be timed against the shipped one
//! (docs/benchmarks.md, "Where a new flow's time goes"). The shipped build has every stage:
//! the switches come from the build-time variable `LB_ABLATE` (a comma-separated list of the
//! names below), unset in every build lb ships, tests or benches by default. A build with any
//! switch on is a measurement object only: it breaks the flow lifecycle on purpose.
//!
//! ```text
//! LB_ABLATE=snat_probe CARGO_TARGET_DIR=/tmp/abl cargo +nightly build --release \
//!     --target bpfel-unknown-none -Z build-std=core   # in lb-ebpf/
//! ```

/// The switches of this build.
const SPEC: &str = match option_env!("LB_ABLATE") {
    Some(s) => s,
    None => "",
};

/// True when `name` is one of the comma-separated names of [`SPEC`].
const fn on(name: &str) -> bool {
    let (s, n) = (SPEC.as_bytes(), name.as_bytes());
    let mut start = 0;
    while start <= s.len() {
        let mut end = start;
        while end < s.len() && s[end] != b',' {
            end += 1;
        }
        if end - start == n.len() {
            let mut i = 0;
            while i < n.len() && s[start + i] == n[i] {
                i += 1;
            }
            if i == n.len() {
                return true;
            }
        }
        start = end + 1;
    }
    false
}

/// `prefilter`: no `LB_LOCAL_ADDRS` lookup; every IPv4 packet counts as addressed to a VIP.
pub const NO_PREFILTER: bool = on("prefilter");
/// `ct_miss`: a SYN without ACK skips the conntrack lookups of its 5-tuple (both maps) and is
/// taken as a new flow.
pub const NO_CT_MISS: bool = on("ct_miss");
/// `maglev`: the backend is the service's Maglev slot 0 (one array read), without the flow
/// hash, the slot of the flow, or the passive-detection check of the backend.
pub const NO_MAGLEV: bool = on("maglev");
/// `snat_probe`: the SNAT port is the first candidate, inserted into `LB_CT_SYN` without
/// checking `LB_CONNTRACK` or `BPF_NOEXIST` (no free-port probing).
pub const NO_SNAT_PROBE: bool = on("snat_probe");
/// `reply_insert`: no reply entry (and no free-port check): the SNAT port is the first
/// candidate and nothing is reserved.
pub const NO_REPLY_INSERT: bool = on("reply_insert");
/// `fwd_insert`: no forward entry is written.
pub const NO_FWD_INSERT: bool = on("fwd_insert");
/// `fib`: no `bpf_fib_lookup`: the packet leaves by `XDP_TX` on its ingress interface, MACs
/// swapped (so no redirect either).
pub const NO_FIB: bool = on("fib");
/// `redirect`: no devmap redirect: `XDP_TX` instead (the FIB lookup stays).
pub const NO_REDIRECT: bool = on("redirect");
/// `keep_syn`: the SYN is not kept in the reply entry for the in-XDP retry.
pub const NO_KEEP_SYN: bool = on("keep_syn");
/// `stats`: no per-CPU counter is written (verdict, event, service and backend counters).
pub const NO_STATS: bool = on("stats");
/// `clock`: `bpf_ktime_get_coarse_ns` is not called; the time is a constant.
pub const NO_CLOCK: bool = on("clock");
/// `lru_percpu`: both conntrack maps are created with `BPF_F_NO_COMMON_LRU` (an LRU list per
/// CPU instead of one shared list).
pub const LRU_PERCPU: bool = on("lru_percpu");
/// `snat_window`: every new flow's SNAT port search tries all `SNAT_PORT_ATTEMPTS`
/// candidates, as before `LB_SNAT_FULL` (the "before" of docs/benchmarks.md, "SNAT pool use").
pub const NO_SNAT_WINDOW: bool = on("snat_window");
