//! The check of a `forwarding: dsr` service's backends (issue 13; docs/scale-out.md "DSR"):
//! a half-open TCP handshake that takes the clients' way, through the IPIP tunnel.
//!
//! A plain connect to the backend's own address tests none of what DSR needs on the backend
//! (decapsulation, the VIP on `lo`, the sysctls): after a reboot that lost that setup the
//! application still listens on `*:port`, so a TCP or HTTP check passes while every packet lb
//! encapsulates toward the backend is lost. This check sends what lb_xdp sends: an IPIP packet
//! from the service's DSR source (`dsr.source` or `dsr_source`) to the backend, holding a TCP
//! SYN from that source (a port reserved for the probe) to `VIP:port`. A backend set up for
//! DSR decapsulates it and answers from `VIP:port` straight to the "client", which is this
//! host: the check passes on a SYN-ACK that acknowledges its SYN. It fails on a RST (nothing
//! listens on the service port) or when nothing comes back in time (no decapsulation, no VIP
//! on `lo`, a filter). After the SYN-ACK it sends a RST through the tunnel, so the backend
//! drops the half-open connection at once.
//!
//! Sockets: the SYN and the RST go out through an `IPPROTO_RAW` socket (the whole packet,
//! outer header included, is built here: [`syn_packet`], [`rst_packet`]); the answer is read
//! from a raw TCP socket, which sees a copy of every TCP packet delivered to this host, with
//! a classic BPF filter that keeps only packets from `VIP` to the probe's port
//! ([`answer_filter`]). The kernel has no socket for the probe's port either: it answers the
//! SYN-ACK with a RST of its own toward `VIP:port` by its routing table, which is harmless
//! (no backend has that connection, or the one that has it drops it). Both raw sockets need
//! `CAP_NET_RAW`, which lbd has as it loads XDP programs. Outgoing packets do not cross
//! lb_xdp (XDP sees only received packets); the SYN-ACK does, and lb_xdp passes it to the
//! kernel: its destination is neither a VIP nor a SNAT address (`pass_not_service`).
//!
//! An ICMP error quoting the probe (the backend's kernel without an IPIP handler or tunnel
//! answers protocol or port unreachable) fails the check at once with its cause ([`icmp`];
//! a raw ICMP socket, filtered to errors).
//!
//! With `type: http` the HTTP request to the backend's own address follows a passing tunnel
//! probe; both must pass.

mod icmp;

use super::{io_error, CheckError, HttpCheck};
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;

/// IP protocol number of IPv4-in-IPv4 (IPIP).
const IPPROTO_IPIP: u8 = 4;
/// IP protocol number of TCP.
const IPPROTO_TCP: u8 = 6;
/// IPv4 header length without options.
const IPV4_HLEN: usize = 20;
/// TCP header length without options.
const TCP_HLEN: usize = 20;
/// TCP flags.
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// The tunnel a DSR service's packets take: what the check needs besides the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DsrPath {
    /// The service's `VIP:port` (the inner destination).
    pub vip: SocketAddrV4,
    /// The outer source (`dsr.source` or the service's `dsr_source`), also the inner source:
    /// an address of this host, where the backend's answer arrives.
    pub source: Ipv4Addr,
}

/// Succeeds when the backend answers a SYN sent to the VIP through the IPIP tunnel with a
/// SYN-ACK (and, with `http`, the HTTP check passes too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsrCheck {
    /// Backend address (the outer destination; its port is the service port).
    pub backend: SocketAddrV4,
    /// The service's tunnel.
    pub path: DsrPath,
    /// How long to wait for the answer (a little less than the check's timeout, so a
    /// missing answer is reported as such rather than as a bare timeout).
    pub wait: Duration,
    /// With `type: http`: the HTTP check to run after a passing probe.
    pub http: Option<HttpCheck>,
}

/// The time to wait for the answer within a check timeout of `timeout`: `timeout` less a
/// tenth (at most 50 ms) for the caller's own deadline.
pub fn answer_wait(timeout: Duration) -> Duration {
    timeout.saturating_sub((timeout / 10).min(Duration::from_millis(50)))
}

/// One probe: who sends, to where, with which initial sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// The inner source: the DSR source and the port reserved for this probe.
    pub local: SocketAddrV4,
    /// The inner destination, the service's `VIP:port`.
    pub vip: SocketAddrV4,
    /// The outer destination, the backend.
    pub backend: Ipv4Addr,
    /// The SYN's sequence number.
    pub isn: u32,
    /// The IP identification of the packets (outer and inner).
    pub ip_id: u16,
}

/// What came back to a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A SYN-ACK acknowledging the SYN: something listens on the VIP's port.
    SynAck,
    /// A RST acknowledging the SYN: the packet arrived, nothing listens on the port.
    Reset,
}

/// The Internet checksum (RFC 1071) of `data` with `initial` added to the sum.
fn checksum(initial: u32, data: &[u8]) -> u16 {
    let mut sum = u64::from(initial);
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(*last) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 header without options (DF set, TTL 64) carrying `payload_len` bytes of `proto`.
fn ipv4_header(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    id: u16,
    payload_len: usize,
) -> [u8; IPV4_HLEN] {
    let total = u16::try_from(IPV4_HLEN + payload_len).expect("a probe packet is small");
    let mut h = [0u8; IPV4_HLEN];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[4..6].copy_from_slice(&id.to_be_bytes());
    h[6] = 0x40; // DF
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let c = checksum(0, &h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

/// A TCP header without options from `src` to `dst`, its checksum over the IPv4
/// pseudo-header.
fn tcp_header(
    src: SocketAddrV4,
    dst: SocketAddrV4,
    seq: u32,
    flags: u8,
    window: u16,
) -> [u8; TCP_HLEN] {
    let mut t = [0u8; TCP_HLEN];
    t[0..2].copy_from_slice(&src.port().to_be_bytes());
    t[2..4].copy_from_slice(&dst.port().to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[12] = ((TCP_HLEN / 4) as u8) << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&window.to_be_bytes());
    let c = checksum(pseudo_header_sum(*src.ip(), *dst.ip(), TCP_HLEN), &t);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

/// The one's-complement sum of the TCP pseudo-header (addresses, protocol, TCP length).
fn pseudo_header_sum(src: Ipv4Addr, dst: Ipv4Addr, tcp_len: usize) -> u32 {
    let words = |a: Ipv4Addr| {
        let o = a.octets();
        u32::from(u16::from_be_bytes([o[0], o[1]])) + u32::from(u16::from_be_bytes([o[2], o[3]]))
    };
    words(src) + words(dst) + u32::from(IPPROTO_TCP) + tcp_len as u32
}

/// A TCP segment from `p.local` to `p.vip`, in its IPv4 header, in the outer IPIP header
/// from the DSR source to the backend: what lb_xdp would send for a client at `p.local`.
fn encapsulated(p: &Probe, seq: u32, flags: u8, window: u16) -> Vec<u8> {
    let tcp = tcp_header(p.local, p.vip, seq, flags, window);
    let inner = ipv4_header(*p.local.ip(), *p.vip.ip(), IPPROTO_TCP, p.ip_id, TCP_HLEN);
    let outer = ipv4_header(
        *p.local.ip(),
        p.backend,
        IPPROTO_IPIP,
        p.ip_id,
        IPV4_HLEN + TCP_HLEN,
    );
    [&outer[..], &inner[..], &tcp[..]].concat()
}

/// The probe's SYN, encapsulated.
pub fn syn_packet(p: &Probe) -> Vec<u8> {
    encapsulated(p, p.isn, TCP_SYN, 64240)
}

/// The RST that ends the half-open connection after a SYN-ACK, encapsulated (sequence
/// number `isn + 1`, the one the backend expects).
pub fn rst_packet(p: &Probe) -> Vec<u8> {
    encapsulated(p, p.isn.wrapping_add(1), TCP_RST, 0)
}

/// What `packet` (an IPv4 packet as a raw socket reads it, header first) says about probe
/// `p`: `None` unless it is TCP from `p.vip` to `p.local` acknowledging the SYN (`ack` =
/// `isn + 1`) with SYN-ACK or RST (a RST without that acknowledgement is ignored).
pub fn parse_answer(packet: &[u8], p: &Probe) -> Option<Answer> {
    let hlen = usize::from(packet.first()? & 0x0f) * 4;
    if packet[0] >> 4 != 4 || hlen < IPV4_HLEN || packet.len() < hlen + TCP_HLEN {
        return None;
    }
    let addr =
        |at: usize| Ipv4Addr::new(packet[at], packet[at + 1], packet[at + 2], packet[at + 3]);
    let port = |at: usize| u16::from_be_bytes([packet[at], packet[at + 1]]);
    if packet[9] != IPPROTO_TCP
        || addr(12) != *p.vip.ip()
        || addr(16) != *p.local.ip()
        || port(hlen) != p.vip.port()
        || port(hlen + 2) != p.local.port()
    {
        return None;
    }
    let t = &packet[hlen..];
    let ack = u32::from_be_bytes([t[8], t[9], t[10], t[11]]);
    let flags = t[13];
    if flags & TCP_ACK == 0 || ack != p.isn.wrapping_add(1) {
        return None;
    }
    if flags & TCP_RST != 0 {
        Some(Answer::Reset)
    } else if flags & TCP_SYN != 0 {
        Some(Answer::SynAck)
    } else {
        None
    }
}

/// A classic BPF program for a raw IPv4 TCP socket that keeps only packets from `vip`'s
/// address to local port `port` (the receive queue then holds the probe's answers only).
pub fn answer_filter(vip: Ipv4Addr, port: u16) -> [libc::sock_filter; 7] {
    let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    [
        // A = IP source address.
        op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, 12),
        op(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            0,
            4,
            u32::from(vip),
        ),
        // X = IP header length; A = TCP destination port.
        op(libc::BPF_LDX | libc::BPF_B | libc::BPF_MSH, 0, 0, 0),
        op(libc::BPF_LD | libc::BPF_H | libc::BPF_IND, 0, 0, 2),
        op(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            0,
            1,
            u32::from(port),
        ),
        op(libc::BPF_RET | libc::BPF_K, 0, 0, 0xffff),
        op(libc::BPF_RET | libc::BPF_K, 0, 0, 0),
    ]
}

/// Four random bytes from the kernel (for the sequence number and IP id).
fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: getrandom writes at most `b.len()` bytes into the valid buffer `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n == 4 {
        u32::from_ne_bytes(b)
    } else {
        // Without getrandom: the clock's nanoseconds (a sequence number need not be secret).
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x5eed_1234, |d| d.subsec_nanos() ^ d.as_secs() as u32)
    }
}

impl DsrCheck {
    /// Runs the check once: `Ok(detail)` on a SYN-ACK (and a passing HTTP check), or why not.
    pub async fn run(&self) -> Result<String, CheckError> {
        let tunnel = self.probe().await?;
        match &self.http {
            None => Ok(tunnel),
            Some(http) => {
                let h = http.run().await?;
                Ok(format!("{tunnel}; {h}"))
            }
        }
    }

    /// The tunnel probe alone.
    async fn probe(&self) -> Result<String, CheckError> {
        let source = self.path.source;
        // The probe's port: reserved by a bound (not listening, not connected) TCP socket for
        // as long as the probe runs, so no local connection or other probe uses it.
        let reserve = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .map_err(|e| io_error("socket", &e))?;
        if let Err(e) = reserve.bind(&SocketAddr::V4(SocketAddrV4::new(source, 0)).into()) {
            if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) {
                return Err(CheckError::Failed(format!(
                    "the DSR source {source} is not an address of this host, so the backend's answer to the tunnel probe cannot arrive here (set dsr.source to this node's address, or health_check.dsr_tunnel: false)"
                )));
            }
            return Err(io_error("bind", &e));
        }
        let port = reserve
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket_ipv4())
            .map(|a| a.port())
            .ok_or_else(|| CheckError::Failed("bind: no local port".into()))?;
        let r = random_u32();
        let p = Probe {
            local: SocketAddrV4::new(source, port),
            vip: self.path.vip,
            backend: *self.backend.ip(),
            isn: random_u32(),
            ip_id: (r >> 16) as u16,
        };
        let answers = answer_socket(&p)?;
        let errors = icmp::error_socket().map_err(|e| io_error("raw ICMP socket", &e))?;
        let sender = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::RAW,
            Some(socket2::Protocol::from(libc::IPPROTO_RAW)),
        )
        .map_err(|e| io_error("raw socket", &e))?;
        let to: socket2::SockAddr = SocketAddr::V4(SocketAddrV4::new(p.backend, 0)).into();
        let started = Instant::now();
        sender
            .send_to(&syn_packet(&p), &to)
            .map_err(|e| io_error("send", &e))?;
        let via = format!("{} via the IPIP tunnel from {source}", self.path.vip);
        let answer = tokio::time::timeout(self.wait, async {
            tokio::select! {
                a = read_answer(&answers, &p) => a.map(Ok),
                e = icmp::read_error(&errors, &p) => e.map(Err),
            }
        })
        .await;
        match answer {
            Ok(Ok(Ok(Answer::SynAck))) => {
                // Ends the half-open connection on the backend (best effort: it would time
                // out by itself).
                let _ = sender.send_to(&rst_packet(&p), &to);
                Ok(format!(
                    "SYN-ACK from {via} in {:.1} ms",
                    started.elapsed().as_secs_f64() * 1e3
                ))
            }
            Ok(Ok(Ok(Answer::Reset))) => Err(CheckError::Failed(format!(
                "RST from {via}: the tunnel works but nothing listens on the service port"
            ))),
            Ok(Ok(Err(e))) => Err(CheckError::Failed(format!(
                "ICMP error from {} to the probe of {via}: {} (lbctl backend-setup prints the backend's setup)",
                e.from,
                e.describe()
            ))),
            Ok(Err(e)) => Err(io_error("receive", &e)),
            Err(_) => Err(CheckError::Failed(format!(
                "no answer from {via} within {}: the backend does not decapsulate, lacks the VIP on lo or drops the packet (lbctl backend-setup prints its setup)",
                crate::config::format_duration(self.wait)
            ))),
        }
    }
}

/// The raw TCP socket that receives probe `p`'s answers (filtered to them).
fn answer_socket(p: &Probe) -> Result<AsyncFd<socket2::Socket>, CheckError> {
    let s = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::RAW,
        Some(socket2::Protocol::TCP),
    )
    .map_err(|e| io_error("raw socket", &e))?;
    s.attach_filter(&answer_filter(*p.vip.ip(), p.local.port()))
        .map_err(|e| io_error("attach filter", &e))?;
    s.set_nonblocking(true)
        .map_err(|e| io_error("nonblocking", &e))?;
    // SAFETY: the AsyncFd owns the socket, so its descriptor stays open for as long as it is
    // registered.
    unsafe { AsyncFd::register_with_interest(s, tokio::io::Interest::READABLE) }
        .map_err(|e| io_error("register", &std::io::Error::from(e)))
}

/// Reads packets until one answers probe `p`.
async fn read_answer(fd: &AsyncFd<socket2::Socket>, p: &Probe) -> std::io::Result<Answer> {
    let mut buf = [0u8; 1500];
    loop {
        let mut guard = fd.readable().await?;
        match guard.try_io(|s| s.get_ref().read(&mut buf)) {
            Ok(Ok(n)) => {
                if let Some(a) = parse_answer(&buf[..n], p) {
                    return Ok(a);
                }
            }
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn probe() -> Probe {
        Probe {
            local: "10.0.1.1:40000".parse().unwrap(),
            vip: "192.0.2.10:80".parse().unwrap(),
            backend: "10.0.2.2".parse().unwrap(),
            isn: 0x0102_0304,
            ip_id: 0xbeef,
        }
    }

    /// The checksum of a header with its checksum field in place is 0 (RFC 1071).
    fn verifies(initial: u32, data: &[u8]) -> bool {
        checksum(initial, data) == 0
    }

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 section 3: the sum of 00 01 f2 03 f4 f5 f6 f7 is ddf2; the checksum its
        // complement.
        assert_eq!(
            checksum(0, &[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
        // An odd length pads with a zero byte.
        assert_eq!(checksum(0, &[0x01]), !0x0100);
    }

    #[test]
    fn syn_is_ipip_from_the_source_to_the_backend_holding_a_syn_to_the_vip() {
        let p = probe();
        let pkt = syn_packet(&p);
        assert_eq!(pkt.len(), 60);
        // Outer header: IPIP, source -> backend, total length 60, DF, id, valid checksum.
        let outer = &pkt[..20];
        assert_eq!(outer[0], 0x45);
        assert_eq!(u16::from_be_bytes([outer[2], outer[3]]), 60);
        assert_eq!(u16::from_be_bytes([outer[4], outer[5]]), 0xbeef);
        assert_eq!(outer[6], 0x40);
        assert_eq!(outer[9], IPPROTO_IPIP);
        assert_eq!(&outer[12..16], &[10, 0, 1, 1]);
        assert_eq!(&outer[16..20], &[10, 0, 2, 2]);
        assert!(verifies(0, outer));
        // Inner header: TCP, source -> VIP, total length 40, valid checksum.
        let inner = &pkt[20..40];
        assert_eq!(u16::from_be_bytes([inner[2], inner[3]]), 40);
        assert_eq!(inner[9], IPPROTO_TCP);
        assert_eq!(&inner[12..16], &[10, 0, 1, 1]);
        assert_eq!(&inner[16..20], &[192, 0, 2, 10]);
        assert!(verifies(0, inner));
        // TCP: 40000 -> 80, seq = isn, ack 0, header 20 bytes, SYN only, valid checksum
        // over the pseudo-header.
        let tcp = &pkt[40..];
        assert_eq!(u16::from_be_bytes([tcp[0], tcp[1]]), 40000);
        assert_eq!(u16::from_be_bytes([tcp[2], tcp[3]]), 80);
        assert_eq!(u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]), p.isn);
        assert_eq!(&tcp[8..12], &[0, 0, 0, 0]);
        assert_eq!(tcp[12], 0x50);
        assert_eq!(tcp[13], TCP_SYN);
        let pseudo = pseudo_header_sum(*p.local.ip(), *p.vip.ip(), TCP_HLEN);
        assert!(verifies(pseudo, tcp));
        // A known value, computed independently (Python: the RFC 1071 sum of the
        // pseudo-header and the segment).
        assert_eq!(u16::from_be_bytes([tcp[16], tcp[17]]), 0x4750);
    }

    #[test]
    fn rst_carries_the_next_sequence_number() {
        let p = probe();
        let pkt = rst_packet(&p);
        let tcp = &pkt[40..];
        assert_eq!(tcp[13], TCP_RST);
        assert_eq!(
            u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
            p.isn + 1
        );
        assert!(verifies(0, &pkt[..20]));
        assert!(verifies(0, &pkt[20..40]));
        assert!(verifies(
            pseudo_header_sum(*p.local.ip(), *p.vip.ip(), TCP_HLEN),
            tcp
        ));
    }

    /// A segment from `from` to `to` as the raw socket reads it.
    fn answer(from: SocketAddrV4, to: SocketAddrV4, ack: u32, flags: u8) -> Vec<u8> {
        let mut tcp = tcp_header(from, to, 7, flags, 1000);
        tcp[8..12].copy_from_slice(&ack.to_be_bytes());
        let ip = ipv4_header(*from.ip(), *to.ip(), IPPROTO_TCP, 1, TCP_HLEN);
        [&ip[..], &tcp[..]].concat()
    }

    #[test]
    fn answers_are_matched_by_addresses_ports_and_acknowledgement() {
        let p = probe();
        let good = p.isn + 1;
        let syn_ack = TCP_SYN | TCP_ACK;
        assert_eq!(
            parse_answer(&answer(p.vip, p.local, good, syn_ack), &p),
            Some(Answer::SynAck)
        );
        assert_eq!(
            parse_answer(&answer(p.vip, p.local, good, TCP_RST | TCP_ACK), &p),
            Some(Answer::Reset)
        );
        // Wrong acknowledgement, a blind RST, a plain ACK: not an answer.
        assert_eq!(
            parse_answer(&answer(p.vip, p.local, good + 1, syn_ack), &p),
            None
        );
        assert_eq!(parse_answer(&answer(p.vip, p.local, 0, TCP_RST), &p), None);
        assert_eq!(
            parse_answer(&answer(p.vip, p.local, good, TCP_ACK), &p),
            None
        );
        // From the backend's own address (not the VIP), another port, another local port.
        let other = |a: &str| a.parse::<SocketAddrV4>().unwrap();
        assert_eq!(
            parse_answer(&answer(other("10.0.2.2:80"), p.local, good, syn_ack), &p),
            None
        );
        assert_eq!(
            parse_answer(&answer(other("192.0.2.10:81"), p.local, good, syn_ack), &p),
            None
        );
        assert_eq!(
            parse_answer(&answer(p.vip, other("10.0.1.1:40001"), good, syn_ack), &p),
            None
        );
        // Not TCP, truncated, options honoured.
        let mut udp = answer(p.vip, p.local, good, syn_ack);
        udp[9] = 17;
        assert_eq!(parse_answer(&udp, &p), None);
        let full = answer(p.vip, p.local, good, syn_ack);
        assert_eq!(parse_answer(&full[..39], &p), None);
        assert_eq!(parse_answer(&[], &p), None);
        let mut with_options = full[..20].to_vec();
        with_options[0] = 0x46;
        with_options.extend_from_slice(&[1, 1, 1, 0]);
        with_options.extend_from_slice(&full[20..]);
        assert_eq!(parse_answer(&with_options, &p), Some(Answer::SynAck));
    }

    /// Runs classic BPF program `prog` on `pkt` (the few instructions `answer_filter` and
    /// `icmp::error_filter` use).
    pub(super) fn run_filter(prog: &[libc::sock_filter], pkt: &[u8]) -> u32 {
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        loop {
            let i = prog[pc];
            let code = u32::from(i.code);
            pc += 1;
            if code == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS {
                let k = i.k as usize;
                a = u32::from_be_bytes(pkt[k..k + 4].try_into().unwrap());
            } else if code == libc::BPF_LDX | libc::BPF_B | libc::BPF_MSH {
                x = u32::from(pkt[i.k as usize] & 0x0f) * 4;
            } else if code == libc::BPF_LD | libc::BPF_B | libc::BPF_IND {
                a = u32::from(pkt[(x + i.k) as usize]);
            } else if code == libc::BPF_LD | libc::BPF_H | libc::BPF_IND {
                let k = (x + i.k) as usize;
                a = u32::from(u16::from_be_bytes([pkt[k], pkt[k + 1]]));
            } else if code == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K {
                pc += usize::from(if a == i.k { i.jt } else { i.jf });
            } else if code == libc::BPF_RET | libc::BPF_K {
                return i.k;
            } else {
                panic!("unexpected instruction {code:#x}");
            }
        }
    }

    #[test]
    fn filter_keeps_only_packets_from_the_vip_to_the_probe_port() {
        let p = probe();
        let prog = answer_filter(*p.vip.ip(), p.local.port());
        let ok = answer(p.vip, p.local, p.isn + 1, TCP_SYN | TCP_ACK);
        assert_eq!(run_filter(&prog, &ok), 0xffff);
        let other_port = answer(p.vip, "10.0.1.1:40001".parse().unwrap(), 1, TCP_ACK);
        assert_eq!(run_filter(&prog, &other_port), 0);
        let other_src = answer("10.0.2.2:80".parse().unwrap(), p.local, 1, TCP_ACK);
        assert_eq!(run_filter(&prog, &other_src), 0);
    }

    #[test]
    fn the_answer_wait_leaves_room_for_the_callers_deadline() {
        assert_eq!(
            answer_wait(Duration::from_secs(1)),
            Duration::from_millis(950)
        );
        assert_eq!(
            answer_wait(Duration::from_millis(300)),
            Duration::from_millis(270)
        );
        assert_eq!(answer_wait(Duration::ZERO), Duration::ZERO);
    }
}
