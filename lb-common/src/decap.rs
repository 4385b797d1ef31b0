//! The ABI of `lb_decap`, the backend-side IPIP decapsulator (docs/scale-out.md, "Backend
//! setup"): its map names, capacities and counter indices.
//!
//! `lb_decap` is a second XDP program in lb's object, attached to a DSR backend's interface
//! by `lbctl decap attach` where the kernel has no `ipip` module (no `tunl0`). It does not
//! share a map with `lb_xdp`: each attachment loads its own four maps and pins them with its
//! link under `lbctl decap`'s pin directory (not lbd's).
//!
//! Unlike `tunl0`, it decapsulates only what lb sends: the outer source must be in
//! [`MAP_DECAP_SOURCES`] (the lb nodes' `dsr.source`) and the inner destination in
//! [`MAP_DECAP_VIPS`]; anything else to a decapsulation address is a counted drop, so a host
//! that can reach the backend cannot inject packets with spoofed inner sources or relay them
//! to other destinations. Empty lists accept nothing.
//!
//! | map | type | key | value | writer |
//! |---|---|---|---|---|
//! | [`MAP_DECAP_ADDRS`] | hash | `u32` address (`_be`) | `u32` (unused, 0) | `lbctl decap attach` |
//! | [`MAP_DECAP_SOURCES`] | LPM trie | prefix length `u32` + `u32` address (`_be`) | `u32` (unused, 0) | `lbctl decap attach` |
//! | [`MAP_DECAP_VIPS`] | hash | `u32` address (`_be`) | `u32` (unused, 0) | `lbctl decap attach` |
//! | [`MAP_DECAP_STATS`] | per-CPU array | `u32` counter index (below) | `u64` | XDP |
//!
//! The pinned layout of an attachment (which files, which maps, their key/value shapes,
//! capacities and counter indices) is versioned by [`DECAP_ABI_VERSION`], not by
//! [`crate::ABI_VERSION`]: that one is `lb_xdp`'s, and a change to the balancer's maps must not
//! move the backends' attachments.

/// The addresses an IPIP packet may be addressed to for `lb_decap` to strip its outer header
/// (the backend's own addresses on the interface; the kernel's `tunl0` accepts any local
/// address). IPIP to any other address is passed untouched.
pub const MAP_DECAP_ADDRS: &str = "LB_DECAP_ADDRS";
/// The outer sources (prefixes) `lb_decap` accepts IPIP from: the lb nodes' `dsr.source`
/// addresses. An LPM trie; `0.0.0.0/0` accepts any source (`--allow-any-source`).
pub const MAP_DECAP_SOURCES: &str = "LB_DECAP_SRCS";
/// The inner destinations `lb_decap` passes on: the DSR VIPs this backend serves.
pub const MAP_DECAP_VIPS: &str = "LB_DECAP_VIPS";
/// Per-CPU counters of `lb_decap`, indexed by the `DECAP_*` constants.
pub const MAP_DECAP_STATS: &str = "LB_DECAP_STATS";
/// Capacity of [`MAP_DECAP_ADDRS`].
pub const DECAP_MAX_ADDRS: u32 = 64;
/// Capacity of [`MAP_DECAP_SOURCES`].
pub const DECAP_MAX_SOURCES: u32 = 64;
/// Capacity of [`MAP_DECAP_VIPS`].
pub const DECAP_MAX_VIPS: u32 = 256;
/// Name of the decapsulating XDP program in the object file.
pub const DECAP_PROGRAM_NAME: &str = "lb_decap";

/// Version of `lb_decap`'s pinned layout: `lbctl decap attach` pins an attachment under
/// `<pin_root>/lb_decap/v<DECAP_ABI_VERSION>/net<netns inode>/<iface>/`. Bump it when what an
/// attachment pins changes shape (a map added, removed or renamed, a key, value or capacity,
/// a counter index's meaning), and only then; `lb_xdp`'s [`crate::ABI_VERSION`] is independent.
/// `lbctl decap` finds and takes over attachments of older layouts (lower versions, and the
/// `abi<N>/net<netns inode>/<iface>/` directories of lbctl builds before this constant, which
/// used `ABI_VERSION`); the test `layout_is_versioned` records what version 1 is.
pub const DECAP_ABI_VERSION: u32 = 1;

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
/// IPIP to a decapsulation address whose outer source is not in [`MAP_DECAP_SOURCES`] (not
/// from an lb node): `XDP_DROP`.
pub const DECAP_DROP_SOURCE: u32 = 5;
/// IPIP to a decapsulation address from an allowed source whose inner destination is not in
/// [`MAP_DECAP_VIPS`]: `XDP_DROP`.
pub const DECAP_DROP_NOT_VIP: u32 = 6;
/// Number of `lb_decap` counters.
pub const DECAP_NUM_COUNTERS: u32 = 7;

/// Counter names by index (`lbctl decap stats`).
pub const DECAP_COUNTER_NAMES: [&str; DECAP_NUM_COUNTERS as usize] = [
    "decapsulated",
    "pass_other",
    "drop_malformed",
    "drop_unsupported",
    "aborted",
    "drop_source",
    "drop_not_vip",
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
        assert_eq!(
            DECAP_COUNTER_NAMES[DECAP_DROP_SOURCE as usize],
            "drop_source"
        );
        assert_eq!(
            DECAP_COUNTER_NAMES[DECAP_DROP_NOT_VIP as usize],
            "drop_not_vip"
        );
        for name in [
            MAP_DECAP_ADDRS,
            MAP_DECAP_SOURCES,
            MAP_DECAP_VIPS,
            MAP_DECAP_STATS,
        ] {
            assert!(name.len() <= 15, "{name}");
        }
    }

    /// What pin layout `DECAP_ABI_VERSION` 1 is. A change here without a bump would let a new
    /// lbctl adopt pins whose shape it does not expect: change the layout, bump
    /// `DECAP_ABI_VERSION`, then record the new layout here.
    #[test]
    fn layout_is_versioned() {
        assert_eq!(
            (
                DECAP_ABI_VERSION,
                [
                    MAP_DECAP_ADDRS,
                    MAP_DECAP_SOURCES,
                    MAP_DECAP_VIPS,
                    MAP_DECAP_STATS
                ],
                [DECAP_MAX_ADDRS, DECAP_MAX_SOURCES, DECAP_MAX_VIPS],
                DECAP_COUNTER_NAMES,
            ),
            (
                1,
                [
                    "LB_DECAP_ADDRS",
                    "LB_DECAP_SRCS",
                    "LB_DECAP_VIPS",
                    "LB_DECAP_STATS"
                ],
                [64, 64, 256],
                [
                    "decapsulated",
                    "pass_other",
                    "drop_malformed",
                    "drop_unsupported",
                    "aborted",
                    "drop_source",
                    "drop_not_vip",
                ],
            ),
            "lb_decap's pinned layout changed: bump DECAP_ABI_VERSION and record the new layout"
        );
    }
}
