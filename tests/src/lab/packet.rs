//! Hand-built Ethernet frames for the bad-traffic scenario, sent with an `AF_PACKET` socket
//! from inside a namespace (the socket is created by a thread that entered it).

use super::{LabError, Result};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A MAC address.
pub type Mac = [u8; 6];

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Result<Mac> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| LabError::Unavailable(format!("bad MAC address {s:?}")))?;
    parts
        .try_into()
        .map_err(|_| LabError::Unavailable(format!("bad MAC address {s:?}")))
}

/// Extracts the `link/ether` address from `ip link show DEV` output.
pub fn mac_from_ip_link(output: &str) -> Result<Mac> {
    let word = output
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .ok_or_else(|| LabError::Unavailable(format!("no link/ether in {output:?}")))?;
    parse_mac(word)
}

/// Full Internet checksum of `data`.
pub fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(w);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The fields of an IPv4 header the scenarios vary.
#[derive(Debug, Clone)]
pub struct Ipv4Spec {
    /// Source.
    pub src: Ipv4Addr,
    /// Destination.
    pub dst: Ipv4Addr,
    /// Protocol number.
    pub proto: u8,
    /// TTL.
    pub ttl: u8,
    /// More-fragments flag.
    pub more_fragments: bool,
    /// Fragment offset in 8-byte units.
    pub frag_offset: u16,
    /// Option bytes (padded to a multiple of 4 with NOPs-terminating zeros).
    pub options: Vec<u8>,
    /// Override of the total-length field (else computed).
    pub total_len: Option<u16>,
}

impl Ipv4Spec {
    /// A plain header `src -> dst` of protocol `proto`, TTL 64.
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, proto: u8) -> Self {
        Self {
            src,
            dst,
            proto,
            ttl: 64,
            more_fragments: false,
            frag_offset: 0,
            options: Vec::new(),
            total_len: None,
        }
    }
}

/// Ethernet + IPv4 (+ `payload`) frame.
pub fn ipv4_frame(dst_mac: Mac, src_mac: Mac, ip: &Ipv4Spec, payload: &[u8]) -> Vec<u8> {
    let mut opts = ip.options.clone();
    while !opts.len().is_multiple_of(4) {
        opts.push(0);
    }
    let ihl = 5 + opts.len() / 4;
    let total = ip
        .total_len
        .unwrap_or(u16::try_from(ihl * 4 + payload.len()).expect("frame fits"));
    let mut h = vec![0u8; 20];
    h[0] = 0x40 | u8::try_from(ihl).expect("ihl fits");
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    let frag = (u16::from(ip.more_fragments) << 13) | (ip.frag_offset & 0x1fff);
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[8] = ip.ttl;
    h[9] = ip.proto;
    h[12..16].copy_from_slice(&ip.src.octets());
    h[16..20].copy_from_slice(&ip.dst.octets());
    h.extend_from_slice(&opts);
    let c = inet_checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = Vec::with_capacity(14 + h.len() + payload.len());
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&h);
    f.extend_from_slice(payload);
    f
}

/// A 20-byte TCP header (checksum left zero: the data plane does not verify it, and these
/// packets are all dropped or passed to a stack that discards them).
pub fn tcp_header(src_port: u16, dst_port: u16, flags: u8) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&src_port.to_be_bytes());
    t[2..4].copy_from_slice(&dst_port.to_be_bytes());
    t[4..8].copy_from_slice(&0x0102_0304u32.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&1024u16.to_be_bytes());
    t
}

/// Ethernet frame of another ether type (e.g. `0x86dd`) with `payload`.
pub fn ether_frame(dst_mac: Mac, src_mac: Mac, ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&ether_type.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An `AF_PACKET` socket bound to one interface of the calling thread's namespace.
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
}

impl PacketSocket {
    /// Opens a raw packet socket on `ifname` (in the namespace of the calling thread).
    pub fn open(ifname: &str) -> Result<PacketSocket> {
        let name = std::ffi::CString::new(ifname).expect("no NUL in interface names");
        // SAFETY: plain libc calls with valid arguments; the fd is owned right away.
        unsafe {
            let ifindex = libc::if_nametoindex(name.as_ptr());
            if ifindex == 0 {
                return Err(LabError::io(format!("if_nametoindex({ifname})"))(
                    std::io::Error::last_os_error(),
                ));
            }
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            if fd < 0 {
                return Err(LabError::io("socket(AF_PACKET)")(
                    std::io::Error::last_os_error(),
                ));
            }
            Ok(PacketSocket {
                fd: OwnedFd::from_raw_fd(fd),
                ifindex: ifindex as i32,
            })
        }
    }

    /// Sends `frame` as is.
    pub fn send(&self, frame: &[u8]) -> Result<()> {
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid starting value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = self.ifindex;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: buffer and address are valid for the given lengths.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 {
            return Err(LabError::io(format!(
                "sending a {}-byte frame",
                frame.len()
            ))(std::io::Error::last_os_error()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_checksum_verifies() {
        let mut ip = Ipv4Spec::new(Ipv4Addr::new(1, 2, 3, 4), Ipv4Addr::new(5, 6, 7, 8), 6);
        ip.options = vec![1, 1, 1];
        let f = ipv4_frame([1; 6], [2; 6], &ip, &tcp_header(1, 80, 2));
        assert_eq!(f[14] & 0x0f, 6);
        assert_eq!(inet_checksum(&f[14..14 + 24]), 0);
        assert_eq!(u16::from_be_bytes([f[16], f[17]]), 44);
        assert_eq!(f.len(), 14 + 24 + 20);
    }

    #[test]
    fn macs_parse() {
        let out = "2: pub0@if2: <BROADCAST> mtu 1500\n    link/ether 0a:1b:2c:3d:4e:5f brd ff:ff:ff:ff:ff:ff";
        assert_eq!(
            mac_from_ip_link(out).unwrap(),
            [0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f]
        );
        assert!(parse_mac("zz").is_err());
    }
}
