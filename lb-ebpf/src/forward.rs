//! Forwarding of a rewritten packet: `bpf_fib_lookup` on the new addresses, MAC rewrite, TTL
//! decrement, then `XDP_TX` (egress = ingress) or a redirect through `LB_TX_PORTS`.

use crate::{
    maps::LB_TX_PORTS,
    nat::decrement_ttl,
    parse::{frame_len, EthHdr, Ipv4Hdr},
    stats::{self, Verdict},
};
use aya_ebpf::{
    bindings::{bpf_fib_lookup, xdp_action, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS},
    helpers::generated::bpf_fib_lookup as fib_lookup,
    programs::XdpContext,
    EbpfContext,
};
use lb_common::{
    DROP_FIB_FAILED, FWD_TO_BACKEND, FWD_TO_CLIENT, IPPROTO_TCP, PASS_FIB_NO_NEIGH, PASS_NO_TX_PORT,
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

/// Routes the already rewritten packet and returns its verdict; accounts the frame in the
/// service's and backend's stats when it leaves (by lb or by the kernel).
///
/// Returns `FWD_TO_*` with `XDP_TX`/`XDP_REDIRECT`, `PASS_NO_TX_PORT` (egress not in
/// `LB_TX_PORTS`, packet untouched beyond the NAT), `PASS_FIB_NO_NEIGH` (TTL untouched) or
/// `DROP_FIB_FAILED`.
#[inline(always)]
pub fn forward(
    ctx: &XdpContext,
    eth: &mut EthHdr,
    ip: &mut Ipv4Hdr,
    service_id: u32,
    backend_id: u32,
    dir: Direction,
) -> Verdict {
    let ingress = ctx.ingress_ifindex() as u32;
    // SAFETY: plain-old-data struct of the kernel ABI; all zeroes is a valid request.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = IPPROTO_TCP;
    params.__bindgen_anon_1.tot_len = u16::from_be(ip.tot_len_be);
    params.ifindex = ingress;
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
    let bytes = frame_len(ctx) as u64;
    let to_backend = dir == Direction::ToBackend;
    let fwd_counter = if to_backend {
        FWD_TO_BACKEND
    } else {
        FWD_TO_CLIENT
    };
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {
            let egress = params.ifindex;
            if egress != ingress && LB_TX_PORTS.get(egress).is_none() {
                stats::forwarded(service_id, backend_id, bytes, to_backend);
                return Verdict::pass(PASS_NO_TX_PORT);
            }
            decrement_ttl(ip);
            eth.dst = params.dmac;
            eth.src = params.smac;
            stats::forwarded(service_id, backend_id, bytes, to_backend);
            if egress == ingress {
                return Verdict::new(xdp_action::XDP_TX, fwd_counter);
            }
            match LB_TX_PORTS.redirect(egress, 0) {
                Ok(action) => Verdict::new(action, fwd_counter),
                // The port vanished between the lookup and the redirect.
                Err(_) => Verdict::drop(DROP_FIB_FAILED),
            }
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => {
            stats::forwarded(service_id, backend_id, bytes, to_backend);
            Verdict::pass(PASS_FIB_NO_NEIGH)
        }
        _ => Verdict::drop(DROP_FIB_FAILED),
    }
}
