//! Packet parsing: the only module that does pointer arithmetic on the frame.
//!
//! Every access goes through [`ptr_at`], which checks `[offset, offset + size_of::<T>())`
//! against `data_end` so the verifier accepts the dereference. Header types are
//! `#[repr(C)]` views of the wire format; multi-byte fields hold network byte order as native
//! integers (the `_be` convention of lb-common).

use aya_ebpf::programs::XdpContext;
use core::mem::size_of;

/// Length of an Ethernet header.
pub const ETH_HLEN: usize = 14;
/// Ethertype of IPv4 (network order as a native `u16`).
pub const ETH_P_IP_BE: u16 = 0x0800u16.to_be();
/// Ethertype of IPv6 (network order as a native `u16`).
pub const ETH_P_IPV6_BE: u16 = 0x86DDu16.to_be();
/// Length of an IPv4 header without options.
pub const IPV4_HLEN: usize = 20;
/// Length of a TCP header without options.
pub const TCP_HLEN: usize = 20;

/// Ethernet header.
#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ether_type_be: u16,
}

impl EthHdr {
    /// Sets both MAC addresses. Copied as 16-bit words: a plain `self.dst = dst` of the
    /// 6-byte arrays becomes a call of the `memmove` subprogram (a BPF-to-BPF call and a byte
    /// loop per forwarded packet; LLVM turns the copy through a temporary into a `memmove`,
    /// which the BPF backend does not expand inline).
    #[inline(always)]
    pub fn set_macs(&mut self, dst: &[u8; 6], src: &[u8; 6]) {
        let w = |m: &[u8; 6], i: usize| u16::from_ne_bytes([m[2 * i], m[2 * i + 1]]);
        let words = [
            w(dst, 0),
            w(dst, 1),
            w(dst, 2),
            w(src, 0),
            w(src, 1),
            w(src, 2),
        ];
        let p = (self as *mut EthHdr).cast::<u16>();
        for (i, v) in words.into_iter().enumerate() {
            // SAFETY: EthHdr is repr(C) with a u16 field, so 2-aligned; its first 12 bytes
            // are the two addresses, i.e. words 0..6.
            unsafe { p.add(i).write(v) };
        }
    }
}

/// IPv4 header (without options).
#[repr(C)]
pub struct Ipv4Hdr {
    /// Version (high nibble) and IHL (low nibble).
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len_be: u16,
    pub id_be: u16,
    /// Flags (3 bits) and fragment offset (13 bits).
    pub frag_off_be: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub src_be: u32,
    pub dst_be: u32,
}

/// IPv4 "more fragments" flag and fragment offset mask, host order.
const IP_MF: u16 = 0x2000;
const IP_OFFSET: u16 = 0x1fff;

impl Ipv4Hdr {
    /// IP version from the header.
    #[inline(always)]
    pub fn version(&self) -> u8 {
        self.version_ihl >> 4
    }
    /// Header length in bytes (IHL * 4).
    #[inline(always)]
    pub fn header_len(&self) -> usize {
        ((self.version_ihl & 0x0f) as usize) * 4
    }
    /// Total length, host order.
    #[inline(always)]
    pub fn tot_len(&self) -> usize {
        u16::from_be(self.tot_len_be) as usize
    }
    /// True for any fragment (MF set or a non-zero offset).
    #[inline(always)]
    pub fn is_fragment(&self) -> bool {
        u16::from_be(self.frag_off_be) & (IP_MF | IP_OFFSET) != 0
    }
}

/// TCP header (without options).
#[repr(C)]
pub struct TcpHdr {
    pub src_port_be: u16,
    pub dst_port_be: u16,
    pub seq_be: u32,
    pub ack_seq_be: u32,
    /// Data offset (high nibble) and reserved bits.
    pub doff_res: u8,
    /// Flag bits ([`lb_common::tcp_flags`]).
    pub flags: u8,
    pub window_be: u16,
    pub check: u16,
    pub urg_ptr_be: u16,
}

impl TcpHdr {
    /// Header length in bytes (data offset * 4).
    #[inline(always)]
    pub fn header_len(&self) -> usize {
        ((self.doff_res >> 4) as usize) * 4
    }
}

/// Length of an ICMP header (type, code, checksum, 4 type-specific bytes).
pub const ICMP_HLEN: usize = 8;

/// ICMP header. For destination unreachable and time exceeded it is followed by the quoted
/// IPv4 header and at least 8 bytes of its payload.
#[repr(C)]
pub struct IcmpHdr {
    pub kind: u8,
    pub code: u8,
    pub check: u16,
    /// Unused, except for fragmentation needed: the next-hop MTU in the second word.
    pub rest_be: [u16; 2],
}

/// Returns a pointer to a `T` at `offset` bytes into the frame, or `None` if it does not fit.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Length of the frame in bytes.
#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data()
}
