//! Tickle ACKs: resetting the flows of a backend now, not at their next packet.
//!
//! A flow of a backend flagged `BACKEND_F_RESET` is reset by the data plane when its next
//! packet arrives, from either side (the RST carries the packet's ack as its seq, so it is
//! exact). An idle flow sends nothing, so lbd provokes a packet: a bare ACK with a sequence
//! number far outside the window, sent from the balancer's namespace toward both ends (to the
//! client from the VIP, to the backend from the SNAT address). A TCP that receives an
//! out-of-window segment answers with an ACK carrying its exact seq and ack (RFC 793 3.9,
//! RFC 5961 challenge ACK); that answer reaches lb's XDP program, which turns it into the
//! exact RST. This is how CTDB releases TCP connections of a failed-over IP address.
//!
//! The segments are sent through a raw IPv4 socket (`IPPROTO_RAW`, header included), so their
//! source may be an address that is not local (the VIP, the SNAT address); they leave through
//! the kernel's routing like any locally generated packet.

use lb_common::checksum::csum_fold;
#[cfg(test)]
use std::net::Ipv4Addr;
use std::net::SocketAddrV4;

/// Sequence number of a tickle: any value works unless it falls in the receiver's window (then
/// the segment is an old duplicate ACK and ignored, and that flow is reset at its next packet
/// instead). Half the sequence space away from zero makes that unlikely for typical ISNs.
pub const TICKLE_SEQ: u32 = 0x8000_0000;

/// The IPv4 packet of one tickle: `src` -> `dst`, TCP ACK, `seq` [`TICKLE_SEQ`], ack 0, no
/// options, both checksums set.
pub fn tickle_packet(src: SocketAddrV4, dst: SocketAddrV4) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64; // TTL
    p[9] = lb_common::IPPROTO_TCP;
    p[12..16].copy_from_slice(&src.ip().octets());
    p[16..20].copy_from_slice(&dst.ip().octets());
    let ip_sum = !csum_fold(sum_be(&p[..20]));
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    let t = &mut p[20..];
    t[0..2].copy_from_slice(&src.port().to_be_bytes());
    t[2..4].copy_from_slice(&dst.port().to_be_bytes());
    t[4..8].copy_from_slice(&TICKLE_SEQ.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = lb_common::tcp_flags::ACK;
    t[14..16].copy_from_slice(&1024u16.to_be_bytes());
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src.ip().octets());
    pseudo[4..8].copy_from_slice(&dst.ip().octets());
    pseudo[9] = lb_common::IPPROTO_TCP;
    pseudo[10..12].copy_from_slice(&20u16.to_be_bytes());
    let tcp_sum = !csum_fold(sum_be(&pseudo) + sum_be(&p[20..]));
    p[36..38].copy_from_slice(&tcp_sum.to_be_bytes());
    p
}

/// Sum of the big-endian 16-bit words of `b` (even length).
fn sum_be(b: &[u8]) -> u64 {
    b.chunks(2)
        .map(|w| u64::from(u16::from_be_bytes([w[0], w[1]])))
        .sum()
}

/// Sends one tickle per `(src, dst)` pair through a raw socket; returns how many were sent.
/// Needs `CAP_NET_RAW` (lbd has it: it loads XDP programs).
pub fn send_tickles(pairs: &[(SocketAddrV4, SocketAddrV4)]) -> std::io::Result<usize> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    if pairs.is_empty() {
        return Ok(0);
    }
    let sock = Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(Protocol::from(libc::IPPROTO_RAW)),
    )?;
    let mut sent = 0;
    for (src, dst) in pairs {
        let pkt = tickle_packet(*src, *dst);
        let to = SockAddr::from(SocketAddrV4::new(*dst.ip(), 0));
        sock.send_to(&pkt, &to)?;
        sent += 1;
    }
    Ok(sent)
}

/// The two tickles of a flow from its forward entry: to the client (from the VIP) and to the
/// backend (from the SNAT address).
pub fn flow_tickles(
    key: &lb_common::FlowKey,
    entry: &lb_common::FlowEntry,
) -> [(SocketAddrV4, SocketAddrV4); 2] {
    let sa = |addr_be: u32, port_be: u16| {
        SocketAddrV4::new(
            lb_common::ipv4_from_be(addr_be),
            lb_common::port_from_be(port_be),
        )
    };
    [
        (
            sa(key.dst_addr_be, key.dst_port_be),
            sa(key.src_addr_be, key.src_port_be),
        ),
        (
            sa(entry.new_src_addr_be, entry.new_src_port_be),
            sa(entry.new_dst_addr_be, entry.new_dst_port_be),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn tickle_is_a_valid_out_of_window_ack() {
        let p = tickle_packet(addr("192.0.2.10:80"), addr("172.30.0.2:40000"));
        assert_eq!(p.len(), 40);
        // Both checksums verify (sum including the checksum folds to 0xffff).
        assert_eq!(csum_fold(sum_be(&p[..20])), 0xffff);
        let mut pseudo = vec![192, 0, 2, 10, 172, 30, 0, 2, 0, 6, 0, 20];
        pseudo.extend_from_slice(&p[20..]);
        assert_eq!(csum_fold(sum_be(&pseudo)), 0xffff);
        assert_eq!(&p[20..22], &80u16.to_be_bytes());
        assert_eq!(&p[22..24], &40000u16.to_be_bytes());
        assert_eq!(p[33], lb_common::tcp_flags::ACK);
        assert_eq!(u32::from_be_bytes([p[24], p[25], p[26], p[27]]), TICKLE_SEQ);
        assert_eq!(
            Ipv4Addr::new(p[12], p[13], p[14], p[15]),
            Ipv4Addr::new(192, 0, 2, 10)
        );
    }

    #[test]
    fn flow_tickles_go_to_both_ends() {
        let key = lb_common::FlowKey {
            src_addr_be: lb_common::ipv4_to_be(Ipv4Addr::new(172, 30, 0, 2)),
            dst_addr_be: lb_common::ipv4_to_be(Ipv4Addr::new(192, 0, 2, 10)),
            src_port_be: lb_common::port_to_be(40000),
            dst_port_be: lb_common::port_to_be(80),
            proto: lb_common::IPPROTO_TCP,
            _pad: [0; 3],
        };
        let entry = lb_common::FlowEntry {
            new_src_addr_be: lb_common::ipv4_to_be(Ipv4Addr::new(10, 0, 255, 1)),
            new_dst_addr_be: lb_common::ipv4_to_be(Ipv4Addr::new(10, 1, 1, 2)),
            new_src_port_be: lb_common::port_to_be(2000),
            new_dst_port_be: lb_common::port_to_be(8080),
            ..Default::default()
        };
        assert_eq!(
            flow_tickles(&key, &entry),
            [
                (addr("192.0.2.10:80"), addr("172.30.0.2:40000")),
                (addr("10.0.255.1:2000"), addr("10.1.1.2:8080")),
            ]
        );
    }
}
