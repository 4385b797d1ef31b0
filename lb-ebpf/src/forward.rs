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
    FlowEntry, FlowKey, DROP_FIB_FAILED, FWD_TO_BACKEND, FWD_TO_CLIENT, IPPROTO_TCP, PASS_FIB_NO_NEIGH,
    PASS_NO_TX_PORT,
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
    // SAFETY: plain-old-data struct of the kernel ABI; all zeroes is a valid request.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = IPPROTO_TCP;
    params.__bindgen_anon_1.tot_len = tot_len;
    params.ifindex = ctx.ingress_ifindex() as u32;
    params.__bindgen_anon_2.tos = ip.tos;
    params.__bindgen_anon_3.ipv4_src = ip.src_be;
    params.__bindgen_anon_4.ipv4_dst = ip.dst_be;
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
        BPF_FIB_LKUP_RET_SUCCESS => {
            entry.next_hop_ifindex = params.ifindex;
            entry.next_hop_dst_mac = params.dmac;
            entry.next_hop_src_mac = params.smac;
            entry.next_hop_max_len = tot_len;
            // The cache held the client's SYN until now (lb_common::retry): no longer.
            entry.syn_opts = 0;
            NextHop::Ready
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => {
            entry.next_hop_max_len = 0;
            NextHop::NoNeigh
        }
        BPF_FIB_LKUP_RET_FRAG_NEEDED => {
            entry.next_hop_max_len = 0;
            // SAFETY: on FRAG_NEEDED the kernel stores the egress MTU in this union member.
            NextHop::FragNeeded(unsafe { params.__bindgen_anon_1.mtu_result })
        }
        _ => {
            entry.next_hop_max_len = 0;
            NextHop::Failed
        }
    }
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
    let egress = entry.next_hop_ifindex;
    let action = if ablate::NO_REDIRECT || egress == ctx.ingress_ifindex() as u32 {
        xdp_action::XDP_TX
    } else {
        // One devmap lookup: the redirect answers XDP_PASS (the flags' low bits) when the
        // egress is not a redirect target; the packet is then left as the NAT made it.
        match LB_TX_PORTS.redirect(egress, u64::from(xdp_action::XDP_PASS)) {
            Ok(action) => action,
            Err(_) => {
                stats::forwarded(service_id, backend_id, bytes, to_backend);
                return Verdict::pass(PASS_NO_TX_PORT);
            }
        }
    };
    decrement_ttl(ip);
    eth.set_macs(&entry.next_hop_dst_mac, &entry.next_hop_src_mac);
    stats::forwarded(service_id, backend_id, bytes, to_backend);
    Verdict::new(action, fwd_counter)
}
