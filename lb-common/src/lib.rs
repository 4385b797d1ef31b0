//! The kernel/user ABI of lb.
//!
//! Everything that crosses the boundary between the XDP program (`lb-ebpf`) and the control
//! plane (`lb-userspace`) is defined here exactly once: map names and default capacities, map
//! key and value layouts, counter indices, flag bits, and the pure functions both sides must
//! compute identically (the flow hash and the checksum arithmetic).
//!
//! Layout rules (checked by the `const` asserts at the bottom of each module):
//! - every type is `#[repr(C)]`, `Copy`, with explicit padding fields and no `bool`, `enum` or
//!   `Option` inside;
//! - fields that hold network-byte-order values end in `_be`: they hold the packet's bytes as a
//!   native integer (`u32::from_ne_bytes(addr.octets())`), so the data plane can compare them
//!   with packet fields without swapping;
//! - all other integers are in host byte order.
//!
//! When a pinned layout changes, bump [`ABI_VERSION`]: maps are pinned under a directory named
//! after it, so a new `lbd` never reinterprets an old layout.
#![no_std]

pub mod checksum;
pub mod counters;
pub mod ct_filter;
pub mod decap;
pub mod hash;
pub mod maps;
pub mod passive;
pub mod retry;
pub mod tcp_state;

pub use counters::*;
pub use ct_filter::*;
pub use maps::*;

/// Version of the pinned map layout; part of the pin directory name (`abi9`).
///
/// 2: [`FlowEntry`] grew the cached next hop (32 -> 56 bytes).
/// 3: [`FlowEntry`] holds the shared TCP state (`state`, `close_dir`; the ESTABLISHED and
///    CLOSING flags are gone), [`GlobalConfig`] one timeout per state, and embryonic flows
///    live in their own map [`MAP_CT_SYN`]. `LB_STATS` grew the ICMP and MTU counters and the
///    lifecycle events (23 -> 32 entries).
/// 4: passive failure detection: [`MAP_BACKEND_SUSPECT`] and the [`MAP_EVENTS`] ring buffer
///    are new; `LB_STATS` grew the passive-detection, backend-down, SYN_SENT-data and
///    small-MTU counters (32 -> 42 entries); a flow of a down backend is kept or reset
///    (`BACKEND_F_RESET`).
/// 5: [`MAP_LOCAL_ADDRS`] is new (the data plane's address pre-filter; it no longer reads
///    [`MAP_VIPS`]); [`FlowEntry`] counts its refreshes (`refreshes`, in former padding): the
///    partner entry is synced on every [`PARTNER_SYNC_REFRESHES`]-th refresh. In-XDP SYN
///    retry: [`FlowEntry`] has `syn_opts` (the reply entry of an embryonic flow keeps the
///    client's SYN in its next-hop cache, [`retry`]); `LB_STATS` grew the retry counters
///    (42 -> 44 entries).
/// 6: DSR: [`ServiceValue`] carries the forwarding mode and the outer source address
///    (`forwarding`, `dsr_src_be`; 16 -> 24 bytes); `LB_STATS` grew to 56 entries (the DSR
///    counters at 50-51).
/// 7: the object holds the backend-side decapsulator `lb_decap` and its two maps
///    ([`decap`]; lbd creates them unpinned and never uses them, `lbctl decap` pins its own);
///    [`MAP_SNAT_FULL`] is new (per backend id, until when a new flow's SNAT port search is
///    cut short after a full search found the pool full); `LB_STATS` grew the SNAT pool
///    counters.
/// 8: DSR connection tracking: [`MAP_CT_DSR`] is new (one [`DsrEntry`] per DSR flow, pinning
///    it to its backend across table changes); [`MAP_LOCAL_ADDRS`] may carry
///    [`LOCAL_F_DSR_ONLY`]; `LB_STATS` grew the DSR conntrack counters.
/// 9: the key filter in front of [`MAP_CONNTRACK`] ([`ct_filter`]): [`MAP_CT_FILTER`] and
///    [`MAP_CT_FILTER_CTL`] are new.
pub const ABI_VERSION: u32 = 9;

/// Name of the XDP program in the object file.
pub const PROGRAM_NAME: &str = "lb_xdp";

/// IANA protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IANA protocol number of ICMP.
pub const IPPROTO_ICMP: u8 = 1;
/// IANA protocol number of IPv4-in-IPv4 encapsulation (the outer header of a DSR packet).
pub const IPPROTO_IPIP: u8 = 4;

/// Smallest MTU an ICMP fragmentation-needed error from the client side may announce to be
/// translated for the backend: Linux's default `net.ipv4.route.min_pmtu` (512 + 20 + 20).
/// A smaller one (0 included) is dropped (`DROP_ICMP_SMALL_MTU`): the backend would clamp it
/// to its `min_pmtu` anyway, and the path MTU it learns holds toward the SNAT address that
/// many clients share (docs/architecture.md, "ICMP and path MTU").
pub const ICMP_MIN_PMTU: u16 = 552;

/// TCP header flag bits (byte 13 of the TCP header).
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// Converts an address to the `_be` representation used in map keys and values.
#[inline(always)]
pub fn ipv4_to_be(addr: core::net::Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

/// Converts a `_be` address back to an [`core::net::Ipv4Addr`].
#[inline(always)]
pub fn ipv4_from_be(addr_be: u32) -> core::net::Ipv4Addr {
    core::net::Ipv4Addr::from(addr_be.to_ne_bytes())
}

/// Converts a host-order port to the `_be` representation.
#[inline(always)]
pub fn port_to_be(port: u16) -> u16 {
    port.to_be()
}

/// Converts a `_be` port to host order.
#[inline(always)]
pub fn port_from_be(port_be: u16) -> u16 {
    u16::from_be(port_be)
}

#[cfg(test)]
extern crate std;

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::Ipv4Addr;

    #[test]
    fn be_round_trip() {
        let a = Ipv4Addr::new(192, 0, 2, 10);
        assert_eq!(ipv4_from_be(ipv4_to_be(a)), a);
        assert_eq!(ipv4_to_be(a).to_ne_bytes(), [192, 0, 2, 10]);
        assert_eq!(port_from_be(port_to_be(8080)), 8080);
        assert_eq!(port_to_be(0x1234).to_ne_bytes(), [0x12, 0x34]);
    }
}
