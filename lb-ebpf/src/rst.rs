//! TCP resets sent back to the sender of a packet: the RST+ACK answer to a SYN for a service
//! with no usable backend ([`reply_rst`]), the RST that ends a flow whose SNAT port another flow
//! holds ([`reset_flow`]), and the RST that ends a flow of a backend that is down with
//! `BACKEND_F_RESET` or gone ([`reset_backend_down`]: to the client from the VIP, or to the
//! backend from the SNAT address, whichever sent the packet).
//!
//! The packet is turned into the reply in place: MACs, addresses and ports swapped, options and
//! payload cut with `bpf_xdp_adjust_tail`, sequence numbers by RFC 793 reset generation (a
//! segment with ACK: `seq = its ack`, flags RST; without: `seq = 0`, `ack = seq + segment
//! length` counting SYN and FIN, flags RST+ACK), both checksums computed from scratch, and sent
//! back out of the ingress interface with `XDP_TX`.

use crate::parse::{frame_len, ptr_at, EthHdr, Ipv4Hdr, TcpHdr, ETH_HLEN, IPV4_HLEN, TCP_HLEN};
use crate::stats::{self, Verdict};
use aya_ebpf::{
    bindings::xdp_action, helpers::generated::bpf_xdp_adjust_tail, programs::XdpContext,
};
use lb_common::{
    checksum::csum_fold, tcp_flags, IPPROTO_TCP, TX_RST_DOWN_BACKEND,
    TX_RST_DOWN_CLIENT, TX_RST_CT_CONFLICT, TX_RST_NO_BACKEND,
};

/// Length of the RST frame: Ethernet + IPv4 + TCP, no options.
const RST_FRAME_LEN: usize = ETH_HLEN + IPV4_HLEN + TCP_HLEN;
/// TTL of the generated RST.
const RST_TTL: u8 = 64;
/// IPv4 "don't fragment", network order.
const IP_DF_BE: u16 = 0x4000u16.to_be();

/// Sum of `N` 16-bit words read natively from `p`.
#[inline(always)]
pub fn sum_words<const N: usize>(p: *const [u16; N]) -> u64 {
    // SAFETY: the caller passes a pointer bounds-checked by `ptr_at`.
    let words = unsafe { &*p };
    let mut sum = 0u64;
    let mut i = 0;
    while i < N {
        sum += words[i] as u64;
        i += 1;
    }
    sum
}

/// Rewrites the SYN in `ctx` (already validated: IPv4 without options, full TCP header) into
/// the RST+ACK reply. `Err` only if the frame cannot be shrunk (internal error).
#[inline(always)]
pub fn reply_rst(ctx: &XdpContext, service_id: u32) -> Result<Verdict, ()> {
    to_rst(ctx)?;
    stats::refused(service_id);
    Ok(Verdict::new(xdp_action::XDP_TX, TX_RST_NO_BACKEND))
}

/// Rewrites the client packet in `ctx` (validated like [`reply_rst`]'s) into the reset that
/// ends its flow (`TX_RST_CT_CONFLICT`).
#[inline(always)]
pub fn reset_flow(ctx: &XdpContext) -> Result<Verdict, ()> {
    to_rst(ctx)?;
    Ok(Verdict::new(xdp_action::XDP_TX, TX_RST_CT_CONFLICT))
}

/// Rewrites the packet in `ctx` (IPv4 without options, full TCP header, not itself a RST) into
/// the reset that ends its flow because the flow's backend is down with `BACKEND_F_RESET` or
/// gone: `TX_RST_DOWN_CLIENT` when the packet came from the client (the RST leaves from
/// the VIP), `TX_RST_DOWN_BACKEND` when it came from the backend (from the SNAT
/// address). Its sequence number is the packet's acknowledgment, so the receiver accepts it
/// (an exact RST, RFC 5961), which also holds for the challenge ACK a tickle elicits.
#[inline(always)]
pub fn reset_backend_down(ctx: &XdpContext, from_backend: bool) -> Result<Verdict, ()> {
    to_rst(ctx)?;
    Ok(Verdict::new(
        xdp_action::XDP_TX,
        if from_backend {
            TX_RST_DOWN_BACKEND
        } else {
            TX_RST_DOWN_CLIENT
        },
    ))
}

/// The RST answering the segment in `ctx`, in place.
#[inline(always)]
fn to_rst(ctx: &XdpContext) -> Result<(), ()> {
    let (seq, ack, flags) = {
        let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_HLEN).ok_or(())?;
        let tcp: *mut TcpHdr = ptr_at(ctx, ETH_HLEN + IPV4_HLEN).ok_or(())?;
        // SAFETY: bounds-checked pointers.
        let (ip, tcp) = unsafe { (&*ip, &*tcp) };
        let mut len = ip.tot_len().saturating_sub(IPV4_HLEN + tcp.header_len()) as u32;
        len +=
            u32::from(tcp.flags & tcp_flags::SYN != 0) + u32::from(tcp.flags & tcp_flags::FIN != 0);
        if tcp.flags & tcp_flags::ACK != 0 {
            (u32::from_be(tcp.ack_seq_be), 0, tcp_flags::RST)
        } else {
            let ack = u32::from_be(tcp.seq_be).wrapping_add(len);
            (0, ack, tcp_flags::RST | tcp_flags::ACK)
        }
    };
    let len = frame_len(ctx);
    if len > RST_FRAME_LEN {
        let delta = RST_FRAME_LEN as i32 - len as i32;
        // SAFETY: helper call on the program's own context.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
            return Err(());
        }
    }
    // Pointers are invalid after adjust_tail: fetch them again.
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(())?;
    let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_HLEN).ok_or(())?;
    let tcp: *mut TcpHdr = ptr_at(ctx, ETH_HLEN + IPV4_HLEN).ok_or(())?;
    // SAFETY: bounds-checked pointers into the frame, not aliased.
    let (eth, ip, tcp) = unsafe { (&mut *eth, &mut *ip, &mut *tcp) };

    core::mem::swap(&mut eth.dst, &mut eth.src);

    let (src, dst) = (ip.src_be, ip.dst_be);
    ip.version_ihl = 0x45;
    ip.tos = 0;
    ip.tot_len_be = ((IPV4_HLEN + TCP_HLEN) as u16).to_be();
    ip.id_be = 0;
    ip.frag_off_be = IP_DF_BE;
    ip.ttl = RST_TTL;
    ip.proto = IPPROTO_TCP;
    ip.check = 0;
    ip.src_be = dst;
    ip.dst_be = src;
    ip.check = !csum_fold(sum_words(
        ip as *const Ipv4Hdr as *const [u16; IPV4_HLEN / 2],
    ));

    core::mem::swap(&mut tcp.src_port_be, &mut tcp.dst_port_be);
    tcp.seq_be = seq.to_be();
    tcp.ack_seq_be = ack.to_be();
    tcp.doff_res = ((TCP_HLEN / 4) as u8) << 4;
    tcp.flags = flags;
    tcp.window_be = 0;
    tcp.check = 0;
    tcp.urg_ptr_be = 0;
    let pseudo = (dst & 0xffff) as u64
        + (dst >> 16) as u64
        + (src & 0xffff) as u64
        + (src >> 16) as u64
        + u16::from_ne_bytes([0, IPPROTO_TCP]) as u64
        + u16::from_ne_bytes((TCP_HLEN as u16).to_be_bytes()) as u64;
    let sum = pseudo + sum_words(tcp as *const TcpHdr as *const [u16; TCP_HLEN / 2]);
    tcp.check = !csum_fold(sum);
    Ok(())
}
