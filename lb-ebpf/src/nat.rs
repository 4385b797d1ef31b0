//! Full-NAT rewrite of a tracked packet: addresses and ports from its conntrack entry, IPv4 and
//! TCP checksums updated incrementally (RFC 1624, `lb_common::checksum`).

use crate::parse::{Ipv4Hdr, TcpHdr};
use lb_common::{
    checksum::{csum_replace2, csum_replace4},
    FlowEntry,
};

/// Rewrites source and destination address and port of `ip`/`tcp` to those of `entry`.
#[inline(always)]
pub fn rewrite(ip: &mut Ipv4Hdr, tcp: &mut TcpHdr, entry: &FlowEntry) {
    let (old_src, old_dst) = (ip.src_be, ip.dst_be);
    let (old_sport, old_dport) = (tcp.src_port_be, tcp.dst_port_be);
    let (new_src, new_dst) = (entry.new_src_addr_be, entry.new_dst_addr_be);
    let (new_sport, new_dport) = (entry.new_src_port_be, entry.new_dst_port_be);

    ip.check = csum_replace4(csum_replace4(ip.check, old_src, new_src), old_dst, new_dst);
    ip.src_be = new_src;
    ip.dst_be = new_dst;

    // The TCP checksum covers the pseudo-header addresses and the ports.
    let mut check = csum_replace4(tcp.check, old_src, new_src);
    check = csum_replace4(check, old_dst, new_dst);
    check = csum_replace2(check, old_sport, new_sport);
    check = csum_replace2(check, old_dport, new_dport);
    tcp.check = check;
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
