//! ICMP errors about the tunnel probe ([`super::DsrCheck`]): a backend whose kernel cannot
//! decapsulate the probe answers it with ICMP destination unreachable (protocol unreachable
//! without an IPIP handler, port unreachable when no tunnel device takes it, e.g. `tunl0`
//! down and no `lb_decap`), and a router on the way may answer with its own error. Each
//! quotes the probe's outer header, so the check fails at once, naming the cause, instead
//! of waiting out its timeout for an answer that cannot come.

use super::{Probe, IPPROTO_IPIP, IPV4_HLEN};
use std::io::Read;
use std::net::Ipv4Addr;
use tokio::io::unix::AsyncFd;

/// ICMP type destination unreachable.
const ICMP_DEST_UNREACH: u8 = 3;
/// ICMP type time exceeded.
const ICMP_TIME_EXCEEDED: u8 = 11;
/// The ICMP header before the quoted packet.
const ICMP_HLEN: usize = 8;

/// An ICMP error that quotes probe `p`'s outer packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcmpError {
    /// Who sent it (the backend itself, or a router on the way).
    pub from: Ipv4Addr,
    /// ICMP type and code.
    pub kind: u8,
    /// ICMP code.
    pub code: u8,
}

impl IcmpError {
    /// What the error means for the tunnel.
    pub fn describe(&self) -> String {
        match (self.kind, self.code) {
            (ICMP_DEST_UNREACH, 2) => "protocol unreachable: the backend's kernel has no IPIP handler (no lb_decap on its interface, ipip module not loaded)".into(),
            (ICMP_DEST_UNREACH, 3) => "port unreachable: no tunnel on the backend takes the IPIP packet (no lb_decap, tunl0 down or missing)".into(),
            (ICMP_DEST_UNREACH, 0 | 1) => "network or host unreachable: no route to the backend".into(),
            (ICMP_DEST_UNREACH, 9 | 10 | 13) => "administratively prohibited: a filter rejects the IPIP packets".into(),
            (ICMP_DEST_UNREACH, 4) => "fragmentation needed on the way to the backend".into(),
            (ICMP_TIME_EXCEEDED, _) => "time exceeded on the way to the backend (a routing loop?)".into(),
            (kind, code) => format!("ICMP type {kind} code {code}"),
        }
    }
}

/// What `packet` (an IPv4 packet as a raw ICMP socket reads it) says about probe `p`: an
/// ICMP destination unreachable or time exceeded whose quote is `p`'s outer header (IPIP
/// from `p.local`'s address to `p.backend` with `p.ip_id`), else `None`.
///
/// Off-path spoofing: the addresses are guessable and the id is 16 bits, so that alone would
/// let anyone fail probes with a flood of forged errors. When the quote reaches into the
/// inner packet (Linux quotes up to 576 bytes, so the backend's and most routers' errors
/// hold all of it), the inner addresses, ports and the SYN's random sequence number must
/// match too (48 more bits); a quote of the outer header only (RFC 792's minimum) is
/// accepted only from the backend itself.
pub fn parse_icmp(packet: &[u8], p: &Probe) -> Option<IcmpError> {
    let hlen = usize::from(packet.first()? & 0x0f) * 4;
    if packet[0] >> 4 != 4
        || hlen < IPV4_HLEN
        || packet.len() < hlen + ICMP_HLEN + IPV4_HLEN
        || packet[9] != libc::IPPROTO_ICMP as u8
    {
        return None;
    }
    let (kind, code) = (packet[hlen], packet[hlen + 1]);
    if kind != ICMP_DEST_UNREACH && kind != ICMP_TIME_EXCEEDED {
        return None;
    }
    let q = &packet[hlen + ICMP_HLEN..];
    let addr = |b: &[u8], at: usize| Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]);
    if q[0] >> 4 != 4
        || q[9] != IPPROTO_IPIP
        || addr(q, 12) != *p.local.ip()
        || addr(q, 16) != p.backend
        || u16::from_be_bytes([q[4], q[5]]) != p.ip_id
    {
        return None;
    }
    let from = addr(packet, 12);
    // The inner IPv4 header and the TCP ports and sequence number (8 bytes).
    let inner = &q[IPV4_HLEN..];
    if inner.len() >= IPV4_HLEN + 8 {
        let ihl = usize::from(inner[0] & 0x0f) * 4;
        let t = inner.get(ihl..ihl + 8)?;
        let port = |at: usize| u16::from_be_bytes([t[at], t[at + 1]]);
        if inner[9] != super::IPPROTO_TCP
            || addr(inner, 12) != *p.local.ip()
            || addr(inner, 16) != *p.vip.ip()
            || port(0) != p.local.port()
            || port(2) != p.vip.port()
            || u32::from_be_bytes([t[4], t[5], t[6], t[7]]) != p.isn
        {
            return None;
        }
    } else if from != p.backend {
        return None;
    }
    Some(IcmpError { from, kind, code })
}

/// A classic BPF program for a raw ICMP socket that keeps only destination unreachable and
/// time exceeded messages (the queue then holds candidate errors only).
pub fn error_filter() -> [libc::sock_filter; 6] {
    let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    [
        // X = IP header length; A = ICMP type.
        op(libc::BPF_LDX | libc::BPF_B | libc::BPF_MSH, 0, 0, 0),
        op(libc::BPF_LD | libc::BPF_B | libc::BPF_IND, 0, 0, 0),
        op(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            1,
            0,
            u32::from(ICMP_DEST_UNREACH),
        ),
        op(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            0,
            1,
            u32::from(ICMP_TIME_EXCEEDED),
        ),
        op(libc::BPF_RET | libc::BPF_K, 0, 0, 0xffff),
        op(libc::BPF_RET | libc::BPF_K, 0, 0, 0),
    ]
}

/// The raw ICMP socket that receives errors about the probe (filtered by [`error_filter`]).
pub fn error_socket() -> std::io::Result<AsyncFd<socket2::Socket>> {
    let s = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::RAW,
        Some(socket2::Protocol::ICMPV4),
    )?;
    s.attach_filter(&error_filter())?;
    s.set_nonblocking(true)?;
    // SAFETY: as for the answer socket: the AsyncFd owns the socket.
    unsafe { AsyncFd::register_with_interest(s, tokio::io::Interest::READABLE) }
        .map_err(std::io::Error::from)
}

/// Reads ICMP errors until one is about probe `p`.
pub async fn read_error(fd: &AsyncFd<socket2::Socket>, p: &Probe) -> std::io::Result<IcmpError> {
    let mut buf = [0u8; 1500];
    loop {
        let mut guard = fd.readable().await?;
        match guard.try_io(|s| s.get_ref().read(&mut buf)) {
            Ok(Ok(n)) => {
                if let Some(e) = parse_icmp(&buf[..n], p) {
                    return Ok(e);
                }
            }
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{probe, run_filter};
    use super::super::{ipv4_header, syn_packet};
    use super::*;

    /// An ICMP error of `kind`/`code` from `from` to the probe's source, quoting `quote`.
    fn error(from: Ipv4Addr, to: Ipv4Addr, kind: u8, code: u8, quote: &[u8]) -> Vec<u8> {
        let mut icmp = vec![kind, code, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(quote);
        let ip = ipv4_header(from, to, libc::IPPROTO_ICMP as u8, 9, icmp.len());
        [&ip[..], &icmp[..]].concat()
    }

    #[test]
    fn errors_quoting_the_probe_are_matched_and_explained() {
        let p = probe();
        let syn = syn_packet(&p);
        let quote = &syn[..IPV4_HLEN + 8];
        let src = *p.local.ip();
        let e = parse_icmp(&error(p.backend, src, 3, 2, quote), &p).expect("matched");
        assert_eq!((e.from, e.kind, e.code), (p.backend, 3, 2));
        assert!(e.describe().contains("no IPIP handler"), "{}", e.describe());
        let e = parse_icmp(&error(p.backend, src, 3, 3, &syn), &p).expect("whole quote");
        assert!(e.describe().contains("tunl0"), "{}", e.describe());
        let router = Ipv4Addr::new(10, 0, 9, 1);
        let e = parse_icmp(&error(router, src, 11, 0, &syn), &p).expect("router");
        assert_eq!(e.from, router);
        // A quote of the outer header only: from the backend only (anyone can guess the
        // addresses and try 65536 ids).
        let outer_only = &syn[..IPV4_HLEN + 8];
        assert_eq!(parse_icmp(&error(router, src, 11, 0, outer_only), &p), None);
        // A quote reaching the inner packet must match its addresses, ports and sequence
        // number, from anyone (a forged error with the right id but a guessed ISN fails).
        for at in [20 + 12, 20 + 16, 40, 42, 44, 47] {
            let mut forged = syn.clone();
            forged[at] ^= 1;
            assert_eq!(
                parse_icmp(&error(p.backend, src, 3, 2, &forged), &p),
                None,
                "byte {at} changed"
            );
        }
        // Another packet quoted: other id, other backend, not IPIP; not an error type;
        // truncated.
        let mut other = quote.to_vec();
        other[5] ^= 1;
        assert_eq!(parse_icmp(&error(p.backend, src, 3, 3, &other), &p), None);
        let mut other = quote.to_vec();
        other[19] ^= 1;
        assert_eq!(parse_icmp(&error(p.backend, src, 3, 3, &other), &p), None);
        let mut other = quote.to_vec();
        other[9] = 6;
        assert_eq!(parse_icmp(&error(p.backend, src, 3, 3, &other), &p), None);
        assert_eq!(parse_icmp(&error(p.backend, src, 0, 0, quote), &p), None);
        let full = error(p.backend, src, 3, 3, quote);
        assert_eq!(parse_icmp(&full[..IPV4_HLEN + 8 + 19], &p), None);
        assert_eq!(parse_icmp(&[], &p), None);
    }

    #[test]
    fn filter_keeps_unreachable_and_time_exceeded_only() {
        let p = probe();
        let quote = &syn_packet(&p)[..28];
        let prog = error_filter();
        for (kind, keep) in [(3, 0xffff), (11, 0xffff), (0, 0), (8, 0), (5, 0)] {
            let pkt = error(p.backend, *p.local.ip(), kind, 0, quote);
            assert_eq!(run_filter(&prog, &pkt), keep, "type {kind}");
        }
    }
}
