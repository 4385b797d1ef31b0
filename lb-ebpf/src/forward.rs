//! Forwarding of a rewritten packet: the next hop ([`resolve`]: the flow's cached one, or
//! `bpf_fib_lookup` on the new addresses, cached in the conntrack entry), then MAC rewrite,
//! TTL decrement and `XDP_TX` (egress = ingress) or a redirect through `LB_TX_PORTS`
//! ([`transmit`]). A packet too big for the egress MTU is answered with ICMP fragmentation
//! needed ([`crate::icmp::frag_needed`]).

use crate::{
    ablate, icmp,
    maps::LB_TX_PORTS,
    nat::decrement_ttl,
    parse::{frame_len, EthHdr, Ipv4Hdr},
    stats::{self, Verdict},
};
use aya_ebpf::{
    bindings::{
        bpf_fib_lookup, xdp_action, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS,
    },
    helpers::generated::bpf_fib_lookup as fib_lookup,
    programs::XdpContext,
    EbpfContext,
};
use lb_common::{
    FlowEntry, FlowKey, DROP_FIB_FAILED, FWD_TO_BACKEND, FWD_TO_CLIENT, IPPROTO_TCP,
    PASS_FIB_NO_NEIGH, PASS_NO_TX_PORT,
};

/// `AF_INET`.
const AF_INET: u8 = 2;

/// Which way a packet of a flow travels.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client -> backend (forward entry).
    ToBackend,
    /// Backend -> client (reply entry).
    ToClient,
}

/// Where the rewritten packet goes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum NextHop {
    /// The entry's `next_hop_*` fields hold a next hop valid for this packet.
    Ready,
    /// The route is known but the neighbour is not resolved (`BPF_FIB_LKUP_RET_NO_NEIGH`).
    NoNeigh,
    /// The packet is longer than the egress MTU (`BPF_FIB_LKUP_RET_FRAG_NEEDED`), which this
    /// holds (host order).
    FragNeeded(u16),
    /// No route, forwarding disabled, ...
    Failed,
}

/// Makes `entry`'s cached next hop valid for the (already rewritten) packet `ip`: kept if it
/// was validated for a packet at least this long, else looked up with `bpf_fib_lookup` and
/// stored (or dropped when the lookup fails, so the next packet asks again).
#[inline(always)]
pub fn resolve(ctx: &XdpContext, ip: &Ipv4Hdr, entry: &mut FlowEntry) -> NextHop {
    let tot_len = u16::from_be(ip.tot_len_be);
    if entry.next_hop_max_len >= tot_len {
        return NextHop::Ready;
    }
    if ablate::NO_FIB {
        entry.next_hop_ifindex = ctx.ingress_ifindex() as u32;
        entry.next_hop_max_len = tot_len;
        return NextHop::Ready;
    }
    match fib_v4(ctx, IPPROTO_TCP, ip.tos, ip.src_be, ip.dst_be, tot_len) {
        Fib::Ready { ifindex, dst, src } => {
            entry.next_hop_ifindex = ifindex;
            entry.next_hop_dst_mac = dst;
            entry.next_hop_src_mac = src;
            entry.next_hop_max_len = tot_len;
            // The cache held the client's SYN until now (lb_common::retry): no longer.
            entry.syn_opts = 0;
            NextHop::Ready
        }
        Fib::NoNeigh => {
            entry.next_hop_max_len = 0;
            NextHop::NoNeigh
        }
        Fib::FragNeeded(mtu) => {
            entry.next_hop_max_len = 0;
            NextHop::FragNeeded(mtu)
        }
        Fib::Failed => {
            entry.next_hop_max_len = 0;
            NextHop::Failed
        }
    }
}

/// The answer of [`fib_v4`].
pub enum Fib {
    /// Out of `ifindex` from MAC `src` to MAC `dst`.
    Ready {
        ifindex: u32,
        dst: [u8; 6],
        src: [u8; 6],
    },
    /// Route known, neighbour not resolved (`BPF_FIB_LKUP_RET_NO_NEIGH`).
    NoNeigh,
    /// Longer than the route's MTU (`BPF_FIB_LKUP_RET_FRAG_NEEDED`), which this holds (host
    /// order).
    FragNeeded(u16),
    /// No route, forwarding disabled, ...
    Failed,
}

/// `bpf_fib_lookup` for an IPv4 packet `src_be` -> `dst_be` of protocol `proto` and
/// `tot_len` bytes that arrived on the program's ingress interface: the one route lookup of
/// the NAT path ([`resolve`]) and of DSR's outer packet (`crate::dsr`).
#[inline(always)]
pub fn fib_v4(ctx: &XdpContext, proto: u8, tos: u8, src_be: u32, dst_be: u32, tot_len: u16) -> Fib {
    // SAFETY: plain-old-data struct of the kernel ABI; all zeroes is a valid request.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = proto;
    params.__bindgen_anon_1.tot_len = tot_len;
    params.ifindex = ctx.ingress_ifindex() as u32;
    params.__bindgen_anon_2.tos = tos;
    params.__bindgen_anon_3.ipv4_src = src_be;
    params.__bindgen_anon_4.ipv4_dst = dst_be;
    // SAFETY: helper call with a valid context and a stack buffer of the declared size.
    let rc = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            &mut params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => Fib::Ready {
            ifindex: params.ifindex,
            dst: params.dmac,
            src: params.smac,
        },
        BPF_FIB_LKUP_RET_NO_NEIGH => Fib::NoNeigh,
        // SAFETY: on FRAG_NEEDED the kernel stores the egress MTU in this union member.
        BPF_FIB_LKUP_RET_FRAG_NEEDED => {
            Fib::FragNeeded(unsafe { params.__bindgen_anon_1.mtu_result })
        }
        _ => Fib::Failed,
    }
}

/// The XDP action that sends a frame out of `egress`: `XDP_TX` when it is the ingress
/// interface, else a redirect through `LB_TX_PORTS`; `None` when `egress` is not a redirect
/// target (the caller passes the packet to the kernel, `PASS_NO_TX_PORT`).
#[inline(always)]
pub fn egress_action(ctx: &XdpContext, egress: u32) -> Option<u32> {
    if ablate::NO_REDIRECT || egress == ctx.ingress_ifindex() as u32 {
        return Some(xdp_action::XDP_TX);
    }
    // One devmap lookup: the redirect answers XDP_PASS (the flags' low bits) when the egress
    // is not a redirect target.
    LB_TX_PORTS
        .redirect(egress, u64::from(xdp_action::XDP_PASS))
        .ok()
}

/// Sends the rewritten packet to `hop` (resolved for `entry`, the flow's entry at `key`, the
/// packet's 5-tuple as it arrived) and returns its verdict;
/// accounts the frame in the service's and backend's stats when it leaves (by lb or by the
/// kernel).
///
/// Returns `FWD_TO_*` with `XDP_TX`/`XDP_REDIRECT`, `PASS_NO_TX_PORT` (egress not in
/// `LB_TX_PORTS`, packet untouched beyond the NAT), `PASS_FIB_NO_NEIGH` (TTL untouched),
/// `TX_ICMP_FRAG_NEEDED` (the packet turned into the ICMP answer to its sender),
/// `DROP_TOO_BIG` or `DROP_FIB_FAILED`.
#[inline(always)]
pub fn transmit(
    ctx: &XdpContext,
    eth: &mut EthHdr,
    ip: &mut Ipv4Hdr,
    key: &FlowKey,
    entry: &FlowEntry,
    hop: NextHop,
    dir: Direction,
) -> Verdict {
    let bytes = frame_len(ctx) as u64;
    let to_backend = dir == Direction::ToBackend;
    let (service_id, backend_id) = (entry.service_id, entry.backend_id);
    match hop {
        NextHop::Ready => {}
        NextHop::NoNeigh => {
            stats::forwarded(service_id, backend_id, bytes, to_backend);
            return Verdict::pass(PASS_FIB_NO_NEIGH);
        }
        NextHop::FragNeeded(mtu) => return icmp::frag_needed(ctx, eth, ip, key, mtu),
        NextHop::Failed => return Verdict::drop(DROP_FIB_FAILED),
    }
    let fwd_counter = if to_backend {
        FWD_TO_BACKEND
    } else {
        FWD_TO_CLIENT
    };
    // Not a redirect target: the packet is left as the NAT made it.
    let Some(action) = egress_action(ctx, entry.next_hop_ifindex) else {
        stats::forwarded(service_id, backend_id, bytes, to_backend);
        return Verdict::pass(PASS_NO_TX_PORT);
    };
    decrement_ttl(ip);
    eth.set_macs(&entry.next_hop_dst_mac, &entry.next_hop_src_mac);
    stats::forwarded(service_id, backend_id, bytes, to_backend);
    Verdict::new(action, fwd_counter)
}
