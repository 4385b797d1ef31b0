//! ICMP for tracked flows: translation of ICMP errors through the full NAT, and the
//! fragmentation-needed answer to a packet too big for the egress MTU (docs/architecture.md,
//! "ICMP and path MTU").
//!
//! An ICMP error (type 3 destination unreachable, any code including 4 fragmentation needed;
//! type 11 time exceeded) quotes the IPv4 header and at least 8 bytes of the packet that caused
//! it. When that packet is one lb sent, the quote's reversed 5-tuple is the conntrack key of
//! the other direction of the flow, whose rewrite gives both the new outer addresses and the
//! quote the far end recognises:
//!
//! - from the backend side, to a SNAT address, quoting SNAT -> backend: the reply entry; the
//!   error leaves as VIP -> client quoting client -> VIP ([`lb4_icmp_from_backend`]);
//! - from the client side, to a VIP, quoting VIP -> client: the forward entry; the error leaves
//!   as SNAT address -> backend quoting backend -> SNAT address ([`lb4_icmp_from_client`]);
//! - from the client side, to a DSR VIP, quoting VIP -> client with no full-NAT entry: the
//!   backend answered directly, so the error goes unchanged, encapsulated like the flow's
//!   packets, to the flow's backend: its `LB_CT_DSR` entry's, else its Maglev slot's
//!   ([`crate::dsr::icmp_to_backend`]).
//!
//! The outer source becomes the flow's own address on that side (VIP or SNAT address), not the
//! router that generated the error: the receiver accepts an ICMP error from any source, and
//! the flow's address is always routable back through lb. A fragmentation-needed MTU is kept
//! (full NAT changes no header size). ICMP never refreshes a flow's timers.

use crate::{
    conntrack::{self, now_ns, tcp_key},
    dsr,
    fwd_mode::Forwarding,
    forward::{self, Direction, NextHop},
    maps::{LB_CONFIG, LB_SERVICES, LB_SNAT_ADDRS},
    parse::{
        frame_len, ptr_at, EthHdr, IcmpHdr, Ipv4Hdr, ETH_HLEN, ETH_P_IP_BE, ICMP_HLEN, IPV4_HLEN,
    },
    rst::sum_words,
    stats::Verdict,
};
use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{
    checksum::{csum_apply, csum_delta2, csum_delta4, csum_fold},
    FlowEntry, FlowKey, GlobalConfig, ServiceKey, ABORTED, DROP_ICMP_MALFORMED, DROP_ICMP_SMALL_MTU,
    DROP_TOO_BIG, ICMP_MIN_PMTU, FLOW_F_REPLY,
    FWD_TO_BACKEND, FWD_TO_CLIENT, ICMP_TO_BACKEND, ICMP_TO_CLIENT, IPPROTO_ICMP, IPPROTO_TCP,
    MAX_SNAT_ADDRS, PASS_NOT_SERVICE, PASS_TTL_EXCEEDED, PASS_VIP_NON_TCP, TX_ICMP_FRAG_NEEDED,
};

/// ICMP destination unreachable.
const ICMP_DEST_UNREACH: u8 = 3;
/// ICMP time exceeded.
const ICMP_TIME_EXCEEDED: u8 = 11;
/// Code of destination unreachable: fragmentation needed and DF set.
const ICMP_FRAG_NEEDED: u8 = 4;
/// Offset of the ICMP header in a frame whose outer IPv4 header has no options.
const ICMP_OFF: usize = ETH_HLEN + IPV4_HLEN;
/// Offset of the quoted IPv4 header.
const QUOTE_IP_OFF: usize = ICMP_OFF + ICMP_HLEN;
/// Offset of the quoted transport header (the quote has no IP options).
const QUOTE_L4_OFF: usize = QUOTE_IP_OFF + IPV4_HLEN;
/// Offset of the TCP checksum within a TCP header.
const TCP_CHECK_OFF: usize = 16;
/// Bytes of the original packet an ICMP error quotes after its IPv4 header (RFC 792).
const QUOTE_L4_LEN: usize = 8;
/// IPv4 length of the generated fragmentation-needed message.
const FRAG_NEEDED_IP_LEN: usize = IPV4_HLEN + ICMP_HLEN + IPV4_HLEN + QUOTE_L4_LEN;
/// How far the frame's front grows to hold the new Ethernet + IPv4 + ICMP headers in front of
/// the original IPv4 header (which stays where it is and becomes the quote).
const FRAG_NEEDED_GROW: usize = IPV4_HLEN + ICMP_HLEN;
/// TTL of a generated ICMP message.
const ICMP_TTL: u8 = 64;
/// TOS of a generated ICMP message: precedence "internetwork control", as Linux sends.
const ICMP_TOS: u8 = 0xc0;
/// IPv4 "don't fragment", network order.
const IP_DF_BE: u16 = 0x4000u16.to_be();

/// True for the ICMP types lb translates.
#[inline(always)]
fn is_error(kind: u8) -> bool {
    kind == ICMP_DEST_UNREACH || kind == ICMP_TIME_EXCEEDED
}

/// True when `addr` is one of the configured SNAT addresses (at most `MAX_SNAT_ADDRS`
/// lookups, on the ICMP path only).
#[inline(always)]
fn is_snat_addr(addr: u32, cfg: &GlobalConfig) -> bool {
    let mut i = 0;
    while i < MAX_SNAT_ADDRS && i < cfg.snat_addr_count {
        if let Some(a) = LB_SNAT_ADDRS.get(i) {
            if *a == addr && addr != 0 {
                return true;
            }
        }
        i += 1;
    }
    false
}

/// An ICMP packet addressed to a VIP (IPv4 without options, not a fragment). Returns
/// `ICMP_TO_BACKEND` (or another verdict of [`forward::transmit`]) for a translated error,
/// `DROP_ICMP_MALFORMED` for a truncated one, and `PASS_VIP_NON_TCP` for anything else (echo
/// requests, errors about flows lb does not track): the kernel sees it as before.
#[inline(always)]
pub fn lb4_icmp_from_client(
    ctx: &XdpContext,
    eth: &mut EthHdr,
    ip: &mut Ipv4Hdr,
) -> Result<Verdict, ()> {
    translate(ctx, eth, ip, Direction::ToBackend, PASS_VIP_NON_TCP)
}

/// An ICMP packet not addressed to a VIP (IPv4 without options, not a fragment). Errors
/// addressed to a SNAT address are translated (`ICMP_TO_CLIENT`, ...) or dropped when
/// truncated (`DROP_ICMP_MALFORMED`); everything else is `PASS_NOT_SERVICE`.
#[inline(always)]
pub fn lb4_icmp_from_backend(
    ctx: &XdpContext,
    eth: &mut EthHdr,
    ip: &mut Ipv4Hdr,
) -> Result<Verdict, ()> {
    let cfg = LB_CONFIG.get(0).ok_or(())?;
    if !is_snat_addr(ip.dst_be, cfg) {
        return Ok(Verdict::pass(PASS_NOT_SERVICE));
    }
    translate(ctx, eth, ip, Direction::ToClient, PASS_NOT_SERVICE)
}

/// Translates the ICMP error in `ctx` for the flow whose entry of direction `dir` its quote
/// names, and forwards it; `untracked` is the verdict of an ICMP packet that is not such an
/// error.
#[inline(always)]
fn translate(
    ctx: &XdpContext,
    eth: &mut EthHdr,
    ip: &mut Ipv4Hdr,
    dir: Direction,
    untracked: u32,
) -> Result<Verdict, ()> {
    let Some(icmp) = ptr_at::<IcmpHdr>(ctx, ICMP_OFF) else {
        return Ok(Verdict::drop(DROP_ICMP_MALFORMED));
    };
    // SAFETY: bounds-checked by ptr_at, disjoint from the outer IP header.
    let icmp = unsafe { &mut *icmp };
    if !is_error(icmp.kind) {
        return Ok(Verdict::pass(untracked));
    }
    let tot_len = ip.tot_len();
    let (Some(q), Some(qports)) = (
        ptr_at::<Ipv4Hdr>(ctx, QUOTE_IP_OFF),
        ptr_at::<[u16; 2]>(ctx, QUOTE_L4_OFF),
    ) else {
        return Ok(Verdict::drop(DROP_ICMP_MALFORMED));
    };
    // SAFETY: bounds-checked by ptr_at, disjoint from the outer headers and from each other.
    let (q, qports) = unsafe { (&mut *q, &mut *qports) };
    if tot_len < IPV4_HLEN + ICMP_HLEN + IPV4_HLEN + QUOTE_L4_LEN
        || q.version() != 4
        || q.header_len() < IPV4_HLEN
    {
        return Ok(Verdict::drop(DROP_ICMP_MALFORMED));
    }
    // lb sends no IP options and tracks only TCP: a quote with options is not one of ours.
    if q.proto != IPPROTO_TCP || q.header_len() != IPV4_HLEN {
        return Ok(Verdict::pass(untracked));
    }
    // The quoted packet is one lb sent: reversed, its 5-tuple is the key of the entry for
    // the direction the error travels.
    let key = tcp_key(q.dst_be, q.src_be, qports[1], qports[0]);
    // Either map: an error may well answer a handshake packet (an embryonic flow).
    let Some((table, entry)) = conntrack::lookup(&key) else {
        if dir == Direction::ToBackend {
            let (vip_be, vport_be) = (q.src_be, qports[0]);
            return dsr_error(ctx, eth, ip, (vip_be, vport_be), &key, untracked);
        }
        return Ok(Verdict::pass(untracked));
    };
    // SAFETY: map value pointer; concurrent updates are benign (last writer wins).
    let entry = unsafe { &mut *entry };
    let cfg = LB_CONFIG.get(0).ok_or(())?;
    let is_reply = entry.flags & FLOW_F_REPLY != 0;
    if is_reply != (dir == Direction::ToClient)
        || conntrack::flow_expired(table, &key, entry, cfg, now_ns())
    {
        return Ok(Verdict::pass(untracked));
    }
    // A client-side frag-needed lowers the backend's path MTU toward the SNAT address, which
    // many clients share: an MTU below Linux's min_pmtu (0 included) is not passed on.
    if dir == Direction::ToBackend
        && icmp.kind == ICMP_DEST_UNREACH
        && icmp.code == ICMP_FRAG_NEEDED
        && u16::from_be(icmp.rest_be[1]) < ICMP_MIN_PMTU
    {
        return Ok(Verdict::drop(DROP_ICMP_SMALL_MTU));
    }
    if ip.ttl <= 1 {
        return Ok(Verdict::pass(PASS_TTL_EXCEEDED));
    }
    rewrite(ctx, ip, icmp, q, qports, entry, tot_len);
    let hop = forward::resolve(ctx, ip, entry);
    if let NextHop::FragNeeded(_) = hop {
        // Never an ICMP error about an ICMP error (RFC 1122 3.2.2).
        return Ok(Verdict::drop(DROP_TOO_BIG));
    }
    let v = forward::transmit(ctx, eth, ip, &key, entry, hop, dir);
    Ok(match v.counter {
        FWD_TO_CLIENT => Verdict::new(v.action, ICMP_TO_CLIENT),
        FWD_TO_BACKEND => Verdict::new(v.action, ICMP_TO_BACKEND),
        _ => v,
    })
}

/// An error addressed to a VIP whose quote names no tracked flow: when the quoted packet left
/// the DSR service `vip`:port (the backend answered the client directly), the error goes to
/// that flow's backend ([`dsr::icmp_to_backend`]); anything else is `untracked`.
#[inline(always)]
fn dsr_error(
    ctx: &XdpContext,
    eth: &mut EthHdr,
    ip: &mut Ipv4Hdr,
    vip: (u32, u16),
    key: &FlowKey,
    untracked: u32,
) -> Result<Verdict, ()> {
    if vip.0 != ip.dst_be {
        return Ok(Verdict::pass(untracked));
    }
    let skey = ServiceKey {
        vip_be: vip.0,
        port_be: vip.1,
        proto: IPPROTO_TCP,
        _pad: 0,
    };
    // SAFETY: copy of a map value.
    let Some(svc) = (unsafe { LB_SERVICES.get(&skey) }).copied() else {
        return Ok(Verdict::pass(untracked));
    };
    match Forwarding::of(&svc) {
        Forwarding::Dsr { src_be } => dsr::icmp_to_backend(ctx, eth, ip, key, &svc, src_be),
        Forwarding::Nat => Ok(Verdict::pass(untracked)),
    }
}

/// Rewrites the outer addresses to `entry`'s new source and destination and the quote to the
/// reverse (what the receiver sent, as it knows it), updating the outer IPv4, quoted IPv4,
/// quoted TCP (only when quoted in full) and ICMP checksums incrementally.
#[inline(always)]
fn rewrite(
    ctx: &XdpContext,
    ip: &mut Ipv4Hdr,
    icmp: &mut IcmpHdr,
    q: &mut Ipv4Hdr,
    qports: &mut [u16; 2],
    entry: &FlowEntry,
    tot_len: usize,
) {
    let (new_src, new_dst) = (entry.new_src_addr_be, entry.new_dst_addr_be);
    let (new_sport, new_dport) = (entry.new_src_port_be, entry.new_dst_port_be);
    // The ICMP checksum has no pseudo-header: outer addresses change only the IP checksum.
    ip.check = csum_apply(
        ip.check,
        csum_delta4(ip.src_be, new_src) + csum_delta4(ip.dst_be, new_dst),
    );
    ip.src_be = new_src;
    ip.dst_be = new_dst;

    let q_addrs = csum_delta4(q.src_be, new_dst) + csum_delta4(q.dst_be, new_src);
    let q_ports = csum_delta2(qports[0], new_dport) + csum_delta2(qports[1], new_sport);
    let q_check = csum_apply(q.check, q_addrs);
    let mut icmp_delta = q_addrs + q_ports + csum_delta2(q.check, q_check);
    q.check = q_check;
    q.src_be = new_dst;
    q.dst_be = new_src;
    qports[0] = new_dport;
    qports[1] = new_sport;
    // Routers usually quote more than 8 bytes (Linux up to 576 in all): a quoted TCP
    // checksum is kept consistent with the quoted pseudo-header and ports.
    if tot_len >= IPV4_HLEN + ICMP_HLEN + IPV4_HLEN + TCP_CHECK_OFF + 2 {
        if let Some(c) = ptr_at::<u16>(ctx, QUOTE_L4_OFF + TCP_CHECK_OFF) {
            // SAFETY: bounds-checked by ptr_at, inside the quote.
            let c = unsafe { &mut *c };
            let new = csum_apply(*c, q_addrs + q_ports);
            icmp_delta += csum_delta2(*c, new);
            *c = new;
        }
    }
    icmp.check = csum_apply(icmp.check, icmp_delta);
}

/// Turns the packet in `ctx` (already NAT-rewritten, too big for the egress MTU `mtu`) into
/// ICMP fragmentation needed to its sender: the quote is the original IPv4 header and first 8
/// bytes as the sender sent them (the NAT undone from `key`, the packet's 5-tuple as it
/// arrived: no partner lookup, so it works while the partner entry is missing), the outer
/// source the address the sender sent to, and it leaves out of the ingress interface
/// (`TX_ICMP_FRAG_NEEDED`). Without DF or with IP options: `DROP_TOO_BIG`.
#[inline(always)]
pub fn frag_needed(
    ctx: &XdpContext,
    eth: &mut EthHdr,
    ip: &mut Ipv4Hdr,
    key: &FlowKey,
    mtu: u16,
) -> Verdict {
    match build_frag_needed(ctx, eth, ip, key, mtu) {
        Ok(v) => v,
        Err(()) => Verdict::new(xdp_action::XDP_ABORTED, ABORTED),
    }
}

#[inline(always)]
fn build_frag_needed(
    ctx: &XdpContext,
    eth: &mut EthHdr,
    ip: &mut Ipv4Hdr,
    key: &FlowKey,
    mtu: u16,
) -> Result<Verdict, ()> {
    if ip.frag_off_be & IP_DF_BE == 0 || ip.header_len() != IPV4_HLEN || ip.proto != IPPROTO_TCP
    {
        return Ok(Verdict::drop(DROP_TOO_BIG));
    }
    let Some(ports) = ptr_at::<[u16; 2]>(ctx, ETH_HLEN + IPV4_HLEN) else {
        return Ok(Verdict::drop(DROP_TOO_BIG));
    };
    // SAFETY: bounds-checked by ptr_at, after the IP header.
    let ports = unsafe { &mut *ports };
    // The sender's packet: its 5-tuple is the conntrack key it was looked up with.
    let (orig_src, orig_dst) = (key.src_addr_be, key.dst_addr_be);
    ip.check = csum_apply(
        ip.check,
        csum_delta4(ip.src_be, orig_src) + csum_delta4(ip.dst_be, orig_dst),
    );
    ip.src_be = orig_src;
    ip.dst_be = orig_dst;
    // The quote ends before the TCP checksum: only the ports need restoring.
    ports[0] = key.src_port_be;
    ports[1] = key.dst_port_be;
    let (mac_a, mac_b) = (eth.src, eth.dst);

    // Keep the original Ethernet + IPv4 header + 8 bytes, then grow the front: the original
    // IPv4 header lands right after the new Ethernet, IPv4 and ICMP headers.
    let len = frame_len(ctx);
    let keep = ETH_HLEN + IPV4_HLEN + QUOTE_L4_LEN;
    if len > keep {
        // SAFETY: helper call on the program's own context.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, keep as i32 - len as i32) } != 0 {
            return Err(());
        }
    }
    // SAFETY: helper call on the program's own context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(FRAG_NEEDED_GROW as i32)) } != 0 {
        return Err(());
    }
    // Pointers are invalid after the adjustments: fetch them again.
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(())?;
    let ip = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN).ok_or(())?;
    let icmp = ptr_at::<IcmpHdr>(ctx, ICMP_OFF).ok_or(())?;
    let msg = ptr_at::<[u16; (ICMP_HLEN + IPV4_HLEN + QUOTE_L4_LEN) / 2]>(ctx, ICMP_OFF)
        .ok_or(())?;
    // SAFETY: bounds-checked pointers into the frame; `msg` is only read after the writes.
    let (eth, ip, icmp) = unsafe { (&mut *eth, &mut *ip, &mut *icmp) };
    eth.dst = mac_a;
    eth.src = mac_b;
    eth.ether_type_be = ETH_P_IP_BE;

    ip.version_ihl = 0x45;
    ip.tos = ICMP_TOS;
    ip.tot_len_be = (FRAG_NEEDED_IP_LEN as u16).to_be();
    ip.id_be = 0;
    ip.frag_off_be = 0;
    ip.ttl = ICMP_TTL;
    ip.proto = IPPROTO_ICMP;
    ip.check = 0;
    ip.src_be = orig_dst;
    ip.dst_be = orig_src;
    ip.check = !csum_fold(sum_words(
        ip as *const Ipv4Hdr as *const [u16; IPV4_HLEN / 2],
    ));

    icmp.kind = ICMP_DEST_UNREACH;
    icmp.code = ICMP_FRAG_NEEDED;
    icmp.check = 0;
    icmp.rest_be = [0, mtu.to_be()];
    icmp.check = !csum_fold(sum_words(msg));
    Ok(Verdict::new(xdp_action::XDP_TX, TX_ICMP_FRAG_NEEDED))
}
