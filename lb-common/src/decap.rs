//! The ABI of `lb_decap`, the backend-side IPIP decapsulator (docs/scale-out.md, "Backend
//! setup"): its map names, capacities and counter indices.
//!
//! `lb_decap` is a second XDP program in lb's object, attached to a DSR backend's interface
//! by `lbctl decap attach` where the kernel has no `ipip` module (no `tunl0`). It does not
//! share a map with `lb_xdp`: each attachment loads its own two maps and pins them with its
//! link under `lbctl decap`'s pin directory (not lbd's).
//!
//! | map | type | key | value | writer |
//! |---|---|---|---|---|
//! | [`MAP_DECAP_ADDRS`] | hash | `u32` address (`_be`) | `u32` (unused, 0) | `lbctl decap attach` |
//! | [`MAP_DECAP_STATS`] | per-CPU array | `u32` counter index (below) | `u64` | XDP |

/// The addresses an IPIP packet may be addressed to for `lb_decap` to strip its outer header
/// (the backend's own addresses on the interface; the kernel's `tunl0` accepts any local
/// address). IPIP to any other address is passed untouched.
pub const MAP_DECAP_ADDRS: &str = "LB_DECAP_ADDRS";
/// Per-CPU counters of `lb_decap`, indexed by the `DECAP_*` constants.
pub const MAP_DECAP_STATS: &str = "LB_DECAP_STATS";
/// Capacity of [`MAP_DECAP_ADDRS`].
pub const DECAP_MAX_ADDRS: u32 = 64;
/// Name of the decapsulating XDP program in the object file.
pub const DECAP_PROGRAM_NAME: &str = "lb_decap";

/// IPIP to a decapsulation address: the outer header was stripped and the client's packet
/// passed to the kernel (`XDP_PASS`).
pub const DECAP_OK: u32 = 0;
/// Anything else (not IPv4, not IPIP, IPIP to an address not in [`MAP_DECAP_ADDRS`]):
/// passed untouched (`XDP_PASS`).
pub const DECAP_PASS_OTHER: u32 = 1;
/// IPIP to a decapsulation address whose outer or inner header is truncated or inconsistent
/// (version, header length, total lengths, outer checksum): `XDP_DROP`.
pub const DECAP_DROP_MALFORMED: u32 = 2;
/// IPIP to a decapsulation address that is an outer fragment or has outer IP options (lb
/// never sends either; XDP cannot reassemble): `XDP_DROP`.
pub const DECAP_DROP_UNSUPPORTED: u32 = 3;
/// The frame could not be shrunk (`bpf_xdp_adjust_head` failed): `XDP_ABORTED`.
pub const DECAP_ABORTED: u32 = 4;
/// Number of `lb_decap` counters.
pub const DECAP_NUM_COUNTERS: u32 = 5;

/// Counter names by index (`lbctl decap stats`).
pub const DECAP_COUNTER_NAMES: [&str; DECAP_NUM_COUNTERS as usize] = [
    "decapsulated",
    "pass_other",
    "drop_malformed",
    "drop_unsupported",
    "aborted",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_indices() {
        assert_eq!(DECAP_COUNTER_NAMES[DECAP_OK as usize], "decapsulated");
        assert_eq!(DECAP_COUNTER_NAMES[DECAP_PASS_OTHER as usize], "pass_other");
        assert_eq!(
            DECAP_COUNTER_NAMES[DECAP_DROP_MALFORMED as usize],
            "drop_malformed"
        );
        assert_eq!(
            DECAP_COUNTER_NAMES[DECAP_DROP_UNSUPPORTED as usize],
            "drop_unsupported"
        );
        assert_eq!(DECAP_COUNTER_NAMES[DECAP_ABORTED as usize], "aborted");
        assert!(MAP_DECAP_ADDRS.len() <= 15 && MAP_DECAP_STATS.len() <= 15);
    }
}
