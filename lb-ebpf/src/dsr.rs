//! DSR forwarding (direct server return, docs/architecture.md "DSR"): the client's packet is
//! encapsulated unchanged in an outer IPv4 header (IPIP, protocol 4) toward the backend; the
//! backend decapsulates it on its `tunl0` device, owns the VIP on its loopback and answers the
//! client directly, so lb sees only the client -> VIP direction.
//!
//! Connection tracking without a state machine (`LB_CT_DSR`, one [`DsrEntry`] per flow keyed
//! by its client -> VIP 5-tuple): a flow is pinned to the backend it started on, so a Maglev
//! table change (a backend added, removed, down or drained) moves no open flow. A flow
//! without an entry takes the backend of its own Maglev slot (`flow_hash` of the 5-tuple with
//! the global seed, slot `h % table_size`, probe 0): any node with the same configuration and
//! seed picks the same backend, whether or not it saw the SYN. Passive suspicion and the
//! selection walk are not used (they are per node, and DSR never sees the backend's answers).
//!
//! - An entry is written for the first packet of a flow that is neither a SYN nor a RST (the
//!   handshake's ACK, or any packet of a flow ECMP moved here): a spoofed SYN flood inserts
//!   nothing and evicts no pinned flow. The price: a table change between a SYN and its ACK
//!   moves that one handshake.
//! - A hit is live for the ESTABLISHED timeout after its last packet (FIN_WAIT's once the
//!   client sent a FIN, CLOSE's once it sent a RST, [`DsrEntry::timeout_ns`]), refreshed at
//!   most once a second. Its backend is kept while `LB_BACKENDS[id]` still holds the address
//!   the entry recorded, down or draining included (`CT_DOWN_KEPT` when flagged down: the
//!   full-NAT `on_backend_down: keep`, the only mode DSR allows); a cleared entry or an id
//!   reused for another address re-picks from the slot (`CT_DSR_REPICK`).
//! - A SYN on a live entry that saw a FIN or RST opens a new connection (`CT_SYN_REUSE`): it
//!   is balanced from its slot and the entry overwritten; so is any packet on an expired
//!   entry. A SYN on a live open entry keeps its backend (`CT_SYN_ON_OPEN`; the backend's
//!   kernel answers it with a challenge ACK, RFC 5961), unless that backend is marked down:
//!   then it is a new connection on a port whose old flow ended unseen (the backend died, the
//!   client gave up without a FIN or RST lb saw), and it is re-balanced like a SYN after a FIN
//!   (`CT_SYN_REUSE`) instead of being sent to a down backend until the entry expires.
//! - An entry the LRU evicts falls back to its slot: the same backend while the table is
//!   unchanged. lbd's sweep deletes expired entries and counts the live ones.

//! The outer header: version 4, IHL 5, TOS and identification copied from the inner header,
//! DF copied from the inner header, TTL 64, protocol IPIP, source the service's configured
//! node address, destination the backend; only its checksum is computed (the inner packet,
//! TTL included, is byte-identical). The next hop comes from `bpf_fib_lookup` for the outer
//! packet; a packet whose outer length exceeds the route's MTU is answered with ICMP
//! fragmentation needed carrying the MTU minus the 20 bytes of encapsulation
//! ([`crate::icmp::frag_needed`]).

use crate::{
    conntrack::now_ns,
    forward::{egress_action, fib_v4, Fib},
    icmp,
    maps::{LB_BACKENDS, LB_CONFIG, LB_CT_DSR, LB_MAGLEV},
    parse::{frame_len, ptr_at, EthHdr, Ipv4Hdr, TcpHdr, ETH_HLEN, ETH_P_IP_BE, IPV4_HLEN},
    rst::{self, sum_words},
    stats::{self, Verdict},
};
use aya_ebpf::{
    bindings::BPF_ANY, helpers::generated::bpf_xdp_adjust_head, programs::XdpContext,
};
use lb_common::{
    checksum::csum_fold, hash::flow_hash, passive::probe_slot, tcp_flags, DsrEntry, FlowKey,
    GlobalConfig, ServiceValue, BACKEND_F_DOWN, BACKEND_ID_NONE, CT_DOWN_KEPT, CT_DSR_NEW,
    CT_DSR_REPICK, CT_SYN_ON_OPEN, CT_SYN_REUSE, DROP_DSR_NO_BACKEND, DROP_FIB_FAILED,
    DROP_TOO_BIG, DSR_F_FIN, DSR_F_RST, FLOW_TOUCH_INTERVAL_NS, FWD_DSR, ICMP_TO_BACKEND,
    IPPROTO_IPIP, PASS_FIB_NO_NEIGH, PASS_NO_TX_PORT, SERVICE_F_NO_BACKEND,
};

/// Bytes the encapsulation adds: the outer IPv4 header.
pub const DSR_ENCAP_LEN: usize = IPV4_HLEN;
/// TTL of the outer header.
const OUTER_TTL: u8 = 64;
/// IPv4 "don't fragment", network order.
const IP_DF_BE: u16 = 0x4000u16.to_be();

/// A TCP packet to the DSR service `svc` (IPv4 without options, full TCP header; `key` its
/// 5-tuple), outer source `src_be`: to the flow's pinned backend, or its slot's
/// ([`flow_backend`]). Returns `FWD_DSR` (sent), `PASS_FIB_NO_NEIGH` or `PASS_NO_TX_PORT`
/// (the encapsulated packet is passed to the kernel, which forwards it),
/// `TX_ICMP_FRAG_NEEDED` / `DROP_TOO_BIG` (too big once encapsulated), `DROP_FIB_FAILED`,
/// and without a backend `TX_RST_NO_BACKEND` for a SYN, `DROP_DSR_NO_BACKEND` otherwise.
#[inline(always)]
pub fn lb4_dsr(
    ctx: &XdpContext,
    eth: &mut EthHdr,
    ip: &mut Ipv4Hdr,
    tcp: &TcpHdr,
    key: &FlowKey,
    svc: &ServiceValue,
    src_be: u32,
) -> Result<Verdict, ()> {
    let is_syn = tcp.flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN;
    let Some((backend_id, backend_addr)) = flow_backend(svc, key, tcp.flags)? else {
        if is_syn {
            return rst::reply_rst(ctx, svc.service_id);
        }
        return Ok(Verdict::drop(DROP_DSR_NO_BACKEND));
    };
    let hop = match outer_hop(ctx, ip, src_be, backend_addr) {
        // The packet is still the client's: the quote is what it sent.
        Ok(Fib::FragNeeded(mtu)) => return Ok(icmp::frag_needed(ctx, eth, ip, key, mtu)),
        Ok(hop) => hop,
        Err(counter) => return Ok(Verdict::drop(counter)),
    };
    if is_syn {
        stats::new_flow(svc.service_id, backend_id);
    }
    send_encapsulated(ctx, eth, ip, svc, (backend_id, backend_addr), src_be, hop)
}

/// An ICMP error addressed to a DSR VIP (a router on the client's path, e.g. fragmentation
/// needed for the backend's answer) quoting the backend's packet VIP:port -> client, `key`
/// the flow's client -> VIP 5-tuple: the backend sent that packet directly, so the error goes
/// to the flow's backend (its live `LB_CT_DSR` entry's, else its Maglev slot's; the entry is
/// neither written nor refreshed), encapsulated like the flow's packets, and the backend's
/// kernel learns the path MTU (or the error) for its socket. Returns `ICMP_TO_BACKEND`
/// (sent), the pass verdicts of [`lb4_dsr`], `DROP_DSR_NO_BACKEND`, `DROP_FIB_FAILED`, and
/// `DROP_TOO_BIG` when it no longer fits once encapsulated (never an ICMP error about an ICMP
/// error, RFC 1122 3.2.2).
#[inline(always)]
pub fn icmp_to_backend(
    ctx: &XdpContext,
    eth: &mut EthHdr,
    ip: &mut Ipv4Hdr,
    key: &FlowKey,
    svc: &ServiceValue,
    src_be: u32,
) -> Result<Verdict, ()> {
    let cfg = LB_CONFIG.get(0).ok_or(())?;
    // SAFETY: read-only map value, valid while the program runs.
    let pinned = match unsafe { LB_CT_DSR.get(key) } {
        Some(e) if !e.is_expired(now_ns(), cfg) => pinned_backend(e).map(|(b, _)| b),
        _ => None,
    };
    let backend = match pinned {
        Some(b) => b,
        None => match slot_backend(svc, key, cfg)? {
            Some(b) => b,
            None => return Ok(Verdict::drop(DROP_DSR_NO_BACKEND)),
        },
    };
    let hop = match outer_hop(ctx, ip, src_be, backend.1) {
        Ok(Fib::FragNeeded(_)) => return Ok(Verdict::drop(DROP_TOO_BIG)),
        Ok(hop) => hop,
        Err(counter) => return Ok(Verdict::drop(counter)),
    };
    let v = send_encapsulated(ctx, eth, ip, svc, backend, src_be, hop)?;
    Ok(if v.counter == FWD_DSR {
        Verdict::new(v.action, ICMP_TO_BACKEND)
    } else {
        v
    })
}

/// The next hop of the packet `ip` once encapsulated from `src_be` to `dst_be` (one
/// `bpf_fib_lookup` for the outer packet): `Fib::Ready`, `Fib::NoNeigh`, or
/// `Fib::FragNeeded` with the route's MTU less the outer header (what the inner packet may
/// be); `Err` with the drop counter when it cannot be sent: `DROP_TOO_BIG` (the outer length
/// would exceed 65535), `DROP_FIB_FAILED`.
#[inline(always)]
fn outer_hop(ctx: &XdpContext, ip: &Ipv4Hdr, src_be: u32, dst_be: u32) -> Result<Fib, u32> {
    let outer_len = ip.tot_len() + DSR_ENCAP_LEN;
    if outer_len > u16::MAX as usize {
        return Err(DROP_TOO_BIG);
    }
    match fib_v4(ctx, IPPROTO_IPIP, ip.tos, src_be, dst_be, outer_len as u16) {
        Fib::FragNeeded(mtu) => Ok(Fib::FragNeeded(mtu.saturating_sub(DSR_ENCAP_LEN as u16))),
        Fib::Failed => Err(DROP_FIB_FAILED),
        hop => Ok(hop),
    }
}

/// The `DSR_F_*` bits a packet with TCP `flags` records.
#[inline(always)]
fn close_bits(flags: u8) -> u32 {
    let mut bits = 0;
    if flags & tcp_flags::FIN != 0 {
        bits |= DSR_F_FIN;
    }
    if flags & tcp_flags::RST != 0 {
        bits |= DSR_F_RST;
    }
    bits
}

/// The backend (id, address) a live entry `e` pins its flow to, with its `BACKEND_F_*` flags,
/// while `LB_BACKENDS` still holds the address the entry recorded for that id (down and
/// draining backends included); `None` when the backend is gone (cleared, or its id reused
/// for another address).
#[inline(always)]
fn pinned_backend(e: &DsrEntry) -> Option<((u32, u32), u32)> {
    match LB_BACKENDS.get(e.backend_id) {
        Some(b) if b.addr_be == e.backend_addr_be && b.addr_be != 0 => {
            Some(((e.backend_id, e.backend_addr_be), b.flags))
        }
        _ => None,
    }
}

/// The backend (id, address) of a packet with TCP `flags` of the DSR flow `key` of `svc`,
/// maintaining the flow's `LB_CT_DSR` entry (the module's rules): the pinned backend of a live
/// entry, refreshed; else the flow's Maglev slot's, written into the entry when there was one
/// (expired, closing and a SYN, or its backend gone) or when the packet is neither a SYN nor
/// a RST. `None` without a backend (none in the service, the slot empty, the backend cleared).
#[inline(always)]
fn flow_backend(svc: &ServiceValue, key: &FlowKey, flags: u8) -> Result<Option<(u32, u32)>, ()> {
    let cfg = LB_CONFIG.get(0).ok_or(())?;
    let now = now_ns();
    let is_syn = flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN;
    let mut overwrite = false;
    if let Some(e) = LB_CT_DSR.get_ptr_mut(key) {
        // SAFETY: map value pointer; concurrent updates are benign (last writer wins).
        let e = unsafe { &mut *e };
        if !e.is_expired(now, cfg) {
            let pinned = pinned_backend(e);
            let down = matches!(pinned, Some((_, f)) if f & BACKEND_F_DOWN != 0);
            if is_syn && (e.closing() || down) {
                stats::count(CT_SYN_REUSE);
            } else if let Some((b, backend_flags)) = pinned {
                if is_syn {
                    stats::count(CT_SYN_ON_OPEN);
                }
                if backend_flags & BACKEND_F_DOWN != 0 {
                    stats::count(CT_DOWN_KEPT);
                }
                let bits = e.flags | close_bits(flags);
                if bits != e.flags || now.saturating_sub(e.last_seen_ns) >= FLOW_TOUCH_INTERVAL_NS
                {
                    e.flags = bits;
                    e.last_seen_ns = now;
                }
                return Ok(Some(b));
            } else {
                stats::count(CT_DSR_REPICK);
            }
        }
        overwrite = true;
    }
    let Some((id, addr)) = slot_backend(svc, key, cfg)? else {
        return Ok(None);
    };
    if overwrite || flags & (tcp_flags::SYN | tcp_flags::RST) == 0 {
        let entry = DsrEntry {
            last_seen_ns: now,
            backend_id: id,
            backend_addr_be: addr,
            flags: close_bits(flags),
            service_id: svc.service_id,
        };
        if LB_CT_DSR.insert(key, &entry, BPF_ANY as u64).is_ok() {
            stats::count(CT_DSR_NEW);
        }
    }
    Ok(Some((id, addr)))
}

/// Encapsulates the IPv4 packet in `ctx` toward `backend` (id, address) from `src_be` and
/// sends it to `hop` (see [`transmit`]); the packet's length plus the outer header fits u16
/// (the callers checked).
#[inline(always)]
fn send_encapsulated(
    ctx: &XdpContext,
    eth: &mut EthHdr,
    ip: &mut Ipv4Hdr,
    svc: &ServiceValue,
    backend: (u32, u32),
    src_be: u32,
    hop: Fib,
) -> Result<Verdict, ()> {
    let (backend_id, backend_addr) = backend;
    let outer_len = ip.tot_len() + DSR_ENCAP_LEN;
    // Read before the head moves: the frame's MACs (kept for a packet passed to the kernel)
    // and the inner fields the outer header copies.
    let (mac_dst, mac_src) = (eth.dst, eth.src);
    let tos_id = (ip.tos, ip.id_be);
    let df_be = ip.frag_off_be & IP_DF_BE;
    let bytes = (frame_len(ctx) + DSR_ENCAP_LEN) as u64;
    let outer = encapsulate(ctx)?;
    // SAFETY: bounds-checked pointers into the frame after the adjustment.
    let (eth, ip) = unsafe { (&mut *outer.0, &mut *outer.1) };
    eth.dst = mac_dst;
    eth.src = mac_src;
    eth.ether_type_be = ETH_P_IP_BE;
    ip.version_ihl = 0x45;
    ip.tos = tos_id.0;
    ip.tot_len_be = (outer_len as u16).to_be();
    ip.id_be = tos_id.1;
    ip.frag_off_be = df_be;
    ip.ttl = OUTER_TTL;
    ip.proto = IPPROTO_IPIP;
    ip.check = 0;
    ip.src_be = src_be;
    ip.dst_be = backend_addr;
    ip.check = !csum_fold(sum_words(
        ip as *const Ipv4Hdr as *const [u16; IPV4_HLEN / 2],
    ));
    stats::forwarded(svc.service_id, backend_id, bytes, true);
    transmit(ctx, hop)
}

/// The backend of `key`'s own Maglev slot in `svc`'s active table, with its address; `None`
/// when the service has no backend, the slot is empty or the backend entry is cleared.
#[inline(always)]
fn slot_backend(
    svc: &ServiceValue,
    key: &FlowKey,
    cfg: &GlobalConfig,
) -> Result<Option<(u32, u32)>, ()> {
    if svc.flags & SERVICE_F_NO_BACKEND != 0 || svc.table_size == 0 {
        return Ok(None);
    }
    let h = flow_hash(
        key.src_addr_be,
        key.dst_addr_be,
        key.src_port_be,
        key.dst_port_be,
        cfg.hash_seed,
    );
    let slot = svc
        .table_offset
        .wrapping_add(probe_slot(h, 0, svc.table_size));
    let id = *LB_MAGLEV.get(slot).ok_or(())?;
    if id == BACKEND_ID_NONE {
        return Ok(None);
    }
    match LB_BACKENDS.get(id) {
        Some(b) if b.addr_be != 0 => Ok(Some((id, b.addr_be))),
        _ => Ok(None),
    }
}

/// Grows the frame's front by the outer header's 20 bytes and returns the (re-fetched)
/// Ethernet and outer IPv4 header pointers, to be filled in by the caller; the inner IPv4
/// packet now follows the outer header untouched.
#[inline(always)]
fn encapsulate(ctx: &XdpContext) -> Result<(*mut EthHdr, *mut Ipv4Hdr), ()> {
    // SAFETY: helper call on the program's own context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(DSR_ENCAP_LEN as i32)) } != 0 {
        return Err(());
    }
    // Pointers are invalid after the adjustment: fetch them again.
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(())?;
    let ip = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN).ok_or(())?;
    Ok((eth, ip))
}

/// Sends the encapsulated frame to `hop` (`XDP_TX` when the egress is the ingress, else a
/// redirect through `LB_TX_PORTS`), or passes it to the kernel (`PASS_FIB_NO_NEIGH`,
/// `PASS_NO_TX_PORT`) with its Ethernet header as it arrived.
#[inline(always)]
fn transmit(ctx: &XdpContext, hop: Fib) -> Result<Verdict, ()> {
    let Fib::Ready { ifindex, dst, src } = hop else {
        return Ok(Verdict::pass(PASS_FIB_NO_NEIGH));
    };
    let Some(action) = egress_action(ctx, ifindex) else {
        return Ok(Verdict::pass(PASS_NO_TX_PORT));
    };
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(())?;
    // SAFETY: bounds-checked by ptr_at.
    let eth = unsafe { &mut *eth };
    eth.dst = dst;
    eth.src = src;
    Ok(Verdict::new(action, FWD_DSR))
}
