//! Full-NAT rewrite of a tracked packet: addresses and ports from its conntrack entry, IPv4 and
//! TCP checksums updated incrementally (RFC 1624, `lb_common::checksum`).

use crate::parse::{Ipv4Hdr, TcpHdr};
use lb_common::{
    checksum::{csum_apply, csum_delta2, csum_delta4, csum_replace2},
    FlowEntry,
};

/// Rewrites source and destination address and port of `ip`/`tcp` to those of `entry`.
/// The address difference is computed once for both checksums (the TCP checksum covers the
/// pseudo-header addresses), so each checksum costs one fold.
#[inline(always)]
pub fn rewrite(ip: &mut Ipv4Hdr, tcp: &mut TcpHdr, entry: &FlowEntry) {
    let (new_src, new_dst) = (entry.new_src_addr_be, entry.new_dst_addr_be);
    let (new_sport, new_dport) = (entry.new_src_port_be, entry.new_dst_port_be);
    let addrs = csum_delta4(ip.src_be, new_src) + csum_delta4(ip.dst_be, new_dst);
    let ports = csum_delta2(tcp.src_port_be, new_sport) + csum_delta2(tcp.dst_port_be, new_dport);

    ip.check = csum_apply(ip.check, addrs);
    ip.src_be = new_src;
    ip.dst_be = new_dst;

    tcp.check = csum_apply(tcp.check, addrs + ports);
    tcp.src_port_be = new_sport;
    tcp.dst_port_be = new_dport;
}

/// Decrements the TTL, updating the header checksum.
#[inline(always)]
pub fn decrement_ttl(ip: &mut Ipv4Hdr) {
    // TTL and protocol form one 16-bit word of the header.
    let old = u16::from_ne_bytes([ip.ttl, ip.proto]);
    ip.ttl -= 1;
    let new = u16::from_ne_bytes([ip.ttl, ip.proto]);
    ip.check = csum_replace2(ip.check, old, new);
}
