//! `lb_xdp`: lb's XDP data plane (the packet path of docs/architecture.md).
//!
//! The entry point is thin: [`try_lb`] decides a [`Verdict`], and the single exit in
//! [`lb_xdp`] records its counter and returns its action. Modules by concern: [`parse`]
//! (all pointer arithmetic), [`maps`], [`conntrack`], [`nat`], [`forward`], [`rst`], [`icmp`],
//! [`stats`].
//!
//! Every IPv4 packet starts with one lookup of its destination in `LB_LOCAL_ADDRS` (the VIPs
//! and SNAT addresses): a packet to any other address is passed there, without touching
//! conntrack. The common case (unfragmented TCP without IP options) then looks its 5-tuple up
//! in conntrack: a reply entry needs no other hash lookup, a forward entry one more (the
//! service). The verdicts are those of the documented order (VIP check first) as long as no
//! SNAT address is also a VIP (the configuration refuses that).
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

mod ablate;
mod conntrack;
mod ct_filter;
mod decap;
mod dsr;
mod forward;
mod fwd_mode;
mod icmp;
mod maps;
mod nat;
mod parse;
mod passive;
mod retry;
mod rst;
mod stats;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use conntrack::{now_ns, tcp_key, AllocError, Pair, Table};
use forward::Direction;
use fwd_mode::Forwarding;
use lb_common::{
    hash::flow_hash,
    passive::{select, REASON_SYN_UNANSWERED, SYN_RETRANSMIT_MIN_NS},
    retry::{rst_answers_syn, SynSaved},
    tcp_flags,
    tcp_state::{
        tcp_next_state, Transition, CLOSE, DIR_ORIG, DIR_REPLY, EV_NEW_CONNECTION, EV_NONE,
        EV_SYN_ON_OPEN, SYN_SENT,
    },
    BACKEND_F_DOWN, BACKEND_F_RESET, BACKEND_ID_NONE, FLOW_F_REPLY, IPPROTO_ICMP, IPPROTO_TCP,
    SERVICE_F_NO_BACKEND, *,
};
use maps::{LB_BACKENDS, LB_CONFIG, LB_LOCAL_ADDRS, LB_MAGLEV, LB_SERVICES};
use parse::{
    frame_len, ptr_at, EthHdr, Ipv4Hdr, TcpHdr, ETH_HLEN, ETH_P_IPV6_BE, ETH_P_IP_BE, IPV4_HLEN,
    TCP_HLEN,
};
use stats::Verdict;

/// The load balancer. Every packet increments exactly one verdict counter.
#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    let verdict = match try_lb(&ctx) {
        Ok(v) => v,
        Err(()) => Verdict::new(xdp_action::XDP_ABORTED, ABORTED),
    };
    stats::count(verdict.counter);
    verdict.action
}

/// Passes every packet: attached by the test lab to veth peers so native redirects into them
/// are delivered (see docs/maps.md).
#[xdp]
pub fn lb_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The backend side of DSR without the kernel's `ipip` module: strips the outer header of IPIP
/// packets to this host ([`decap`]). Not part of the balancer: `lbctl decap attach` puts it
/// on a backend's interface. Every frame increments exactly one of its own counters.
#[xdp]
pub fn lb_decap(ctx: XdpContext) -> u32 {
    let verdict = decap::try_decap(&ctx).unwrap_or(decap::ABORTED);
    decap::count(verdict.counter);
    verdict.action
}

/// Ethernet and IPv4 validation, then the tracked fast path, the new-flow path, or the
/// exception paths.
#[inline(always)]
fn try_lb(ctx: &XdpContext) -> Result<Verdict, ()> {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Ok(Verdict::drop(DROP_MALFORMED));
    };
    // SAFETY: bounds-checked by ptr_at.
    let ether_type = unsafe { (*eth).ether_type_be };
    if ether_type != ETH_P_IP_BE {
        return Ok(Verdict::pass(if ether_type == ETH_P_IPV6_BE {
            PASS_IPV6
        } else {
            PASS_NON_IP
        }));
    }
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN) else {
        return Ok(Verdict::drop(DROP_MALFORMED));
    };
    // SAFETY: bounds-checked by ptr_at; the frame is not aliased elsewhere.
    let (eth, ip) = unsafe { (&mut *eth, &mut *ip) };
    let hlen = ip.header_len();
    let tot_len = ip.tot_len();
    if ip.version() != 4
        || hlen < IPV4_HLEN
        || tot_len < hlen
        || tot_len > frame_len(ctx) - ETH_HLEN
    {
        return Ok(Verdict::drop(DROP_MALFORMED));
    }
    // The address pre-filter: neither a VIP nor a SNAT address, so no flow of ours (every
    // conntrack key's destination is one of them) and no service.
    // SAFETY: copy of a map value.
    let local = if ablate::NO_PREFILTER {
        Some(LOCAL_F_VIP)
    } else {
        (unsafe { LB_LOCAL_ADDRS.get(ip.dst_be) }).copied()
    };
    let Some(local) = local else {
        return Ok(Verdict::pass(PASS_NOT_SERVICE));
    };
    let is_vip = local & LOCAL_F_VIP != 0;
    if ip.proto == IPPROTO_TCP && hlen == IPV4_HLEN && !ip.is_fragment() {
        if let Some(tcp) = ptr_at::<TcpHdr>(ctx, ETH_HLEN + IPV4_HLEN) {
            // SAFETY: bounds-checked by ptr_at, disjoint from the IP header.
            let tcp = unsafe { &mut *tcp };
            return lb4_tcp(ctx, eth, ip, tcp, tot_len, local);
        }
    }
    if is_vip {
        lb4_vip_exception(ctx, eth, ip)
    } else {
        lb4_reply_exception(ctx, eth, ip, hlen, tot_len)
    }
}

/// Checks the TCP data offset against the header and the IP payload length.
#[inline(always)]
fn tcp_header_ok(tcp: &TcpHdr, l4_len: usize) -> bool {
    let doff = tcp.header_len();
    doff >= TCP_HLEN && doff <= l4_len
}

/// The service of a TCP packet to a VIP: `DROP_MALFORMED_TCP` for a bad data offset,
/// `PASS_VIP_NO_SERVICE` without a service (the VIP order of checks).
#[inline(always)]
fn vip_service(ip: &Ipv4Hdr, tcp: &TcpHdr, tot_len: usize) -> Result<ServiceValue, Verdict> {
    if !tcp_header_ok(tcp, tot_len - IPV4_HLEN) {
        return Err(Verdict::drop(DROP_MALFORMED_TCP));
    }
    // SAFETY: copy of a map value.
    match unsafe { LB_SERVICES.get(service_key(ip, tcp)) } {
        Some(svc) => Ok(*svc),
        None => Err(Verdict::pass(PASS_VIP_NO_SERVICE)),
    }
}

#[inline(always)]
fn service_key(ip: &Ipv4Hdr, tcp: &TcpHdr) -> ServiceKey {
    ServiceKey {
        vip_be: ip.dst_be,
        port_be: tcp.dst_port_be,
        proto: IPPROTO_TCP,
        _pad: 0,
    }
}

/// Unfragmented TCP without IP options and with a full TCP header, to a VIP or a SNAT address
/// (`local`, its `LOCAL_F_*` bits): the conntrack entry of its 5-tuple decides between the
/// reply path and the service path. A VIP flagged `LOCAL_F_DSR_ONLY` (all its services are
/// DSR) skips the full-NAT conntrack lookups and goes to its service first; a full-NAT
/// service found there anyway (lbd adds it before it clears the bit) is looked up then, so
/// a stale bit never changes a verdict of a full-NAT service (and lbd sets the bit only once
/// no full-NAT flow of a service switched to DSR is left, so none of them is missed:
/// docs/architecture.md, step 3).
#[inline(always)]
fn lb4_tcp(
    ctx: &XdpContext,
    eth: &mut EthHdr,
    ip: &mut Ipv4Hdr,
    tcp: &mut TcpHdr,
    tot_len: usize,
    local: u32,
) -> Result<Verdict, ()> {
    let is_vip = local & LOCAL_F_VIP != 0;
    let dsr_only = is_vip && local & LOCAL_F_DSR_ONLY != 0;
    let key = tcp_key(ip.src_be, ip.dst_be, tcp.src_port_be, tcp.dst_port_be);
    let mut found = if dsr_only
        || (ablate::NO_CT_MISS && tcp.flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN)
    {
        None
    } else if tcp.flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN {
        conntrack::lookup_syn(&key)
    } else {
        conntrack::lookup(&key)
    };
    if found.is_none() {
        if !is_vip {
            return Ok(Verdict::pass(PASS_NOT_SERVICE));
        }
        let svc = match vip_service(ip, tcp, tot_len) {
            Ok(svc) => svc,
            Err(v) => return Ok(v),
        };
        // DSR flows have no full-NAT conntrack entry: their packets always come here.
        if let Forwarding::Dsr { src_be } = Forwarding::of(&svc) {
            return dsr::lb4_dsr(ctx, eth, ip, tcp, &key, &svc, src_be);
        }
        if dsr_only {
            found = conntrack::lookup(&key);
        }
        if found.is_none() {
            return lb4_service(ctx, eth, ip, tcp, &key, &svc, None);
        }
    }
    let Some((table, entry)) = found else {
        return Err(());
    };
    // SAFETY: map value pointer; concurrent updates are benign (last writer wins).
    let entry = unsafe { &mut *entry };
    if entry.flags & FLOW_F_REPLY != 0 {
        return lb4_reply(ctx, eth, ip, tcp, (table, &key, entry), IPV4_HLEN, tot_len);
    }
    // A forward entry: the 5-tuple was addressed to a VIP. Look the service up first; only
    // without one does it matter whether the address is (still) a VIP.
    // SAFETY: copy of a map value.
    let svc = match unsafe { LB_SERVICES.get(service_key(ip, tcp)) } {
        Some(svc) => *svc,
        None if is_vip => {
            return Ok(match vip_service(ip, tcp, tot_len) {
                Ok(_) => Verdict::pass(PASS_VIP_NO_SERVICE),
                Err(v) => v,
            });
        }
        None => return Ok(Verdict::pass(PASS_NOT_SERVICE)),
    };
    if !tcp_header_ok(tcp, tot_len - IPV4_HLEN) {
        return Ok(Verdict::drop(DROP_MALFORMED_TCP));
    }
    lb4_service(ctx, eth, ip, tcp, &key, &svc, Some((table, entry)))
}

/// A VIP packet that cannot be balanced: a fragment, IP options, not TCP (an ICMP error about
/// a tracked flow is translated for its backend), or a truncated TCP header.
#[inline(always)]
fn lb4_vip_exception(ctx: &XdpContext, eth: &mut EthHdr, ip: &mut Ipv4Hdr) -> Result<Verdict, ()> {
    if ip.is_fragment() {
        return Ok(Verdict::drop(DROP_VIP_FRAGMENT));
    }
    if ip.header_len() != IPV4_HLEN {
        return Ok(Verdict::drop(DROP_VIP_IP_OPTIONS));
    }
    if ip.proto == IPPROTO_ICMP {
        return icmp::lb4_icmp_from_client(ctx, eth, ip);
    }
    if ip.proto != IPPROTO_TCP {
        return Ok(Verdict::pass(PASS_VIP_NON_TCP));
    }
    // Only a TCP header that does not fit is left (everything else took `lb4_tcp`).
    Ok(Verdict::drop(DROP_MALFORMED_TCP))
}

/// A TCP packet to a service (steps 4-8 of the packet path) with a valid header; `tracked` is
/// its forward conntrack entry (and the map holding it) if it has one.
#[inline(always)]
fn lb4_service(
    ctx: &XdpContext,
    eth: &mut EthHdr,
    ip: &mut Ipv4Hdr,
    tcp: &mut TcpHdr,
    key: &FlowKey,
    svc: &ServiceValue,
    tracked: Option<(Table, &mut FlowEntry)>,
) -> Result<Verdict, ()> {
    if ip.ttl <= 1 {
        return Ok(Verdict::pass(PASS_TTL_EXCEEDED));
    }
    let cfg = LB_CONFIG.get(0).ok_or(())?;
    let now = now_ns();

    if let Some((table, entry)) = tracked {
        if let Some(v) = lb4_tracked(ctx, eth, ip, tcp, (table, key, entry), cfg, now)? {
            return Ok(v);
        }
    }

    // A new flow: only a SYN without ACK may create one, and only a plain one: a SYN that
    // also carries FIN or RST opens no connection at any TCP (scanners send them) and would
    // only hold a SNAT port, so it is dropped as malformed.
    let open = tcp.flags & OPEN_MASK;
    if open & (tcp_flags::SYN | tcp_flags::ACK) != tcp_flags::SYN {
        return Ok(Verdict::drop(DROP_NO_CONNTRACK));
    }
    if open != tcp_flags::SYN {
        return Ok(Verdict::drop(DROP_MALFORMED_TCP));
    }
    if svc.flags & SERVICE_F_NO_BACKEND != 0 || svc.table_size == 0 {
        return rst::reply_rst(ctx, svc.service_id);
    }
    let table_offset = svc.table_offset;
    let sel = if ablate::NO_MAGLEV {
        lb_common::passive::Selection {
            backend_id: LB_MAGLEV.get(table_offset).copied().ok_or(())?,
            probe: 0,
            fallback: false,
        }
    } else {
        let h = flow_hash(
            key.src_addr_be,
            key.dst_addr_be,
            key.src_port_be,
            key.dst_port_be,
            cfg.hash_seed,
        );
        // The flow's own Maglev slot, or the first later probe with a usable backend when its
        // backend is suspect or down (lb_common::passive::select).
        select(
            h,
            svc.table_size,
            |slot| LB_MAGLEV.get(table_offset.wrapping_add(slot)).copied(),
            |id| passive::usable(id, now),
        )
        .ok_or(())?
    };
    let backend_id = sel.backend_id;
    if backend_id == BACKEND_ID_NONE {
        return rst::reply_rst(ctx, svc.service_id);
    }
    if sel.fallback {
        stats::count(SELECT_FALLBACK);
    } else if sel.probe != 0 {
        stats::count(SELECT_SKIPPED);
    }
    let backend = LB_BACKENDS.get(backend_id).ok_or(())?;
    if backend.addr_be == 0 {
        return rst::reply_rst(ctx, svc.service_id);
    }
    let (mut entry, rkey) =
        match conntrack::reserve(key, backend, backend_id, svc.service_id, cfg, now) {
            Ok(e) => e,
            Err(AllocError::SnatExhausted) => return Ok(Verdict::drop(DROP_SNAT_EXHAUSTED)),
            Err(AllocError::Full) => return Ok(Verdict::drop(DROP_CONNTRACK_FULL)),
        };
    nat::rewrite(ip, tcp, &entry);
    // Route before inserting the forward entry, so it is stored with its next hop.
    let hop = forward::resolve(ctx, ip, &mut entry);
    if conntrack::commit(key, &entry, &rkey).is_err() {
        return Ok(Verdict::drop(DROP_CONNTRACK_FULL));
    }
    stats::count(NEW_FLOW);
    stats::new_flow(svc.service_id, backend_id);
    let v = forward::transmit(ctx, eth, ip, key, &entry, hop, Direction::ToBackend);
    if !ablate::NO_KEEP_SYN {
        retry::keep_syn(ctx, &rkey, v.counter);
    }
    Ok(v)
}

/// What becomes of a packet of a tracked flow pinned to a backend, by the backend's flags.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Usable: forwarded.
    Up,
    /// `BACKEND_F_DOWN` without `BACKEND_F_RESET` (`on_backend_down: keep`): forwarded,
    /// counted `CT_DOWN_KEPT`, until the backend ends the flow itself.
    Keep,
    /// `BACKEND_F_RESET` (`on_backend_down: reset`, a removed backend), or the backend entry
    /// is gone (cleared, id out of range): the flow is reset toward the packet's sender.
    Reset,
}

/// SYN, ACK, FIN and RST: the flags that tell a plain SYN from anything else.
const OPEN_MASK: u8 = tcp_flags::SYN | tcp_flags::ACK | tcp_flags::FIN | tcp_flags::RST;

/// The [`Fate`] of packets of flows pinned to `backend_id`.
#[inline(always)]
fn backend_fate(backend_id: u32) -> Fate {
    match LB_BACKENDS.get(backend_id) {
        Some(b) if b.addr_be == 0 || b.flags & BACKEND_F_RESET != 0 => Fate::Reset,
        Some(b) if b.flags & BACKEND_F_DOWN != 0 => Fate::Keep,
        Some(_) => Fate::Up,
        None => Fate::Reset,
    }
}

/// Ends a flow whose backend is reset (`flow` = table, key and entry): both entries go to
/// CLOSE as if the backend had sent a RST (`close_dir` = reply, so a client SYN may reuse the
/// port at once), not released, so the other end's next packet (or the challenge ACK a tickle
/// elicits) still finds the flow and gets its own RST; `close_timeout` expires them.
#[inline(always)]
fn end_flow(flow: (Table, &FlowKey, &mut FlowEntry), cfg: &GlobalConfig, now: u64) {
    let (table, key, entry) = flow;
    let t = Transition {
        state: CLOSE,
        close_dir: DIR_REPLY,
        event: EV_NONE,
    };
    if conntrack::step(table, key, entry, &t, cfg, now) == Pair::Conflict {
        table.remove(key);
    }
}

/// A client packet of a tracked flow (`flow` = table, key and forward entry): the state
/// machine step, then forwarded to the flow's backend. `None` when the packet is to be
/// handled as a new flow instead, after both entries were released: the entry expired, the
/// SYN opens a new connection on a TIME_WAIT or CLOSE flow (`CT_SYN_REUSE`), or a SYN of a
/// flow in SYN_SENT whose backend is down or gone (`CT_BACKEND_DOWN`). A flow of a backend
/// that is down is forwarded under `keep` (`CT_DOWN_KEPT`) and reset under `reset` or
/// when the backend is gone (`TX_RST_DOWN_CLIENT`).
#[inline(always)]
fn lb4_tracked(
    ctx: &XdpContext,
    eth: &mut EthHdr,
    ip: &mut Ipv4Hdr,
    tcp: &mut TcpHdr,
    flow: (Table, &FlowKey, &mut FlowEntry),
    cfg: &GlobalConfig,
    now: u64,
) -> Result<Option<Verdict>, ()> {
    let (table, key, entry) = flow;
    if conntrack::flow_expired(table, key, entry, cfg, now) {
        conntrack::release(table, key, entry);
        return Ok(None);
    }
    let t = tcp_next_state(entry.state, entry.close_dir, DIR_ORIG, tcp.flags);
    if t.event == EV_NEW_CONNECTION {
        stats::count(CT_SYN_REUSE);
        conntrack::release(table, key, entry);
        return Ok(None);
    }
    if entry.state == SYN_SENT
        && tcp.flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN
        && now.saturating_sub(entry.last_seen_ns) >= SYN_RETRANSMIT_MIN_NS
    {
        // The client retransmits a SYN the backend never answered: a silent backend. Its
        // flow ends here and the SYN is balanced afresh, away from the now suspect backend.
        stats::count(CT_SYN_UNANSWERED);
        passive::raise(
            entry.backend_id,
            entry.service_id,
            REASON_SYN_UNANSWERED,
            now,
        );
        conntrack::release(table, key, entry);
        return Ok(None);
    }
    match backend_fate(entry.backend_id) {
        Fate::Up => {}
        // A SYN whose backend never answered opens nothing there: it is re-balanced.
        _ if entry.state == SYN_SENT && tcp.flags & OPEN_MASK == tcp_flags::SYN => {
            stats::count(CT_BACKEND_DOWN);
            conntrack::release(table, key, entry);
            return Ok(None);
        }
        Fate::Keep => stats::count(CT_DOWN_KEPT),
        // A RST is never answered with a RST: it ends the flow through the state machine.
        Fate::Reset if tcp.flags & tcp_flags::RST == 0 => {
            end_flow((table, key, entry), cfg, now);
            return rst::reset_backend_down(ctx, false).map(Some);
        }
        Fate::Reset => {}
    }
    if t.event == EV_SYN_ON_OPEN {
        stats::count(CT_SYN_ON_OPEN);
    }
    if conntrack::step(table, key, entry, &t, cfg, now) == Pair::Conflict {
        table.remove(key);
        return rst::reset_flow(ctx).map(Some);
    }
    nat::rewrite(ip, tcp, entry);
    let hop = forward::resolve(ctx, ip, entry);
    Ok(Some(forward::transmit(
        ctx,
        eth,
        ip,
        key,
        entry,
        hop,
        Direction::ToBackend,
    )))
}

/// A packet whose 5-tuple has a reply entry (backend -> SNAT address; `flow` = map, key and
/// entry): the state machine step, then rewritten to VIP -> client; `PASS_NOT_SERVICE` if the
/// entry expired, `DROP_CT_CONFLICT` if its client 5-tuple belongs to another flow now,
/// `TX_RST_DOWN_BACKEND` (the flow ended by [`end_flow`], the backend answered with a
/// RST) if its backend is down with `BACKEND_F_RESET` or gone.
#[inline(always)]
fn lb4_reply(
    ctx: &XdpContext,
    eth: &mut EthHdr,
    ip: &mut Ipv4Hdr,
    tcp: &mut TcpHdr,
    flow: (Table, &FlowKey, &mut FlowEntry),
    hlen: usize,
    tot_len: usize,
) -> Result<Verdict, ()> {
    let (table, key, entry) = flow;
    let cfg = LB_CONFIG.get(0).ok_or(())?;
    let now = now_ns();
    if entry.flags & FLOW_F_REPLY == 0 || conntrack::flow_expired(table, key, entry, cfg, now) {
        return Ok(Verdict::pass(PASS_NOT_SERVICE));
    }
    if !tcp_header_ok(tcp, tot_len - hlen) {
        return Ok(Verdict::drop(DROP_MALFORMED_TCP));
    }
    if ip.ttl <= 1 {
        return Ok(Verdict::pass(PASS_TTL_EXCEEDED));
    }
    match backend_fate(entry.backend_id) {
        Fate::Up => {}
        Fate::Keep => stats::count(CT_DOWN_KEPT),
        // The RST builder needs the plain header layout; a RST is never answered with one.
        Fate::Reset if hlen == IPV4_HLEN && tcp.flags & tcp_flags::RST == 0 => {
            end_flow((table, key, entry), cfg, now);
            return rst::reset_backend_down(ctx, true);
        }
        Fate::Reset => {}
    }
    if entry.state == SYN_SENT && tcp.flags & tcp_flags::RST != 0 {
        // A RST that does not acknowledge the SYN belongs to an older connection on this
        // backend 4-tuple (a re-used SNAT port): dropped, the attempt goes on, no suspicion.
        let ack = u32::from_be(tcp.ack_seq_be);
        if !rst_answers_syn(tcp.flags, ack, SynSaved::kept_isn(entry)) {
            return Ok(Verdict::drop(DROP_CT_EMBRYONIC_DATA));
        }
        // The backend refused the SYN (its host is up, the service is not): the client does
        // not see the RST, which becomes its SYN toward another backend when it can; else
        // its SYN retransmission finds no flow and is balanced away from the suspect backend.
        return retry::refused(ctx, (table, key, entry), hlen, cfg, now);
    }
    if entry.state == SYN_SENT && !syn_sent_reply_ok(tcp, tot_len - hlen) {
        return Ok(Verdict::drop(DROP_CT_EMBRYONIC_DATA));
    }
    let t = tcp_next_state(entry.state, entry.close_dir, DIR_REPLY, tcp.flags);
    if conntrack::step(table, key, entry, &t, cfg, now) == Pair::Conflict {
        table.remove(key);
        return Ok(Verdict::drop(DROP_CT_CONFLICT));
    }
    nat::rewrite(ip, tcp, entry);
    let hop = forward::resolve(ctx, ip, entry);
    Ok(forward::transmit(
        ctx,
        eth,
        ip,
        key,
        entry,
        hop,
        Direction::ToClient,
    ))
}

/// True when a backend packet (TCP header `tcp`, `l4_len` bytes of TCP segment) may reach the
/// client of a flow in SYN_SENT: a SYN-ACK or a pure ACK (no payload, SYN or FIN). A RST
/// never gets here: in SYN_SENT it is the backend refusing the SYN (passive detection, above).
///
/// The flow's SNAT port may have been held until moments ago by an established flow to the
/// same backend whose entries the LRU evicted; the backend still has that connection, on the
/// same 4-tuple, and keeps sending its data, which the new flow's reply entry would hand to
/// the new client (another host). Dropping everything but a SYN-ACK would also drop the
/// backend's answer to the new SYN on the old connection, the RFC 5961 challenge ACK (its
/// acknowledgment number is the OLD connection's, so no check against the new client's ISN
/// can tell it apart): the client answers it with a RST that frees the 4-tuple on the
/// backend, and its next SYN gets a SYN-ACK. So pure ACKs pass (they carry no data and are
/// what a direct connection would see) and segments with payload or FIN are dropped
/// (`DROP_CT_EMBRYONIC_DATA`). From SYN_RECV on the backend has answered the new SYN on this
/// 4-tuple, so the old connection is gone there (TCP Fast Open data after the SYN-ACK passes).
/// A port that was recently in `LB_CONNTRACK` cannot be refused by `reserve` instead: the
/// eviction leaves no trace of the key.
#[inline(always)]
fn syn_sent_reply_ok(tcp: &TcpHdr, l4_len: usize) -> bool {
    let f = tcp.flags;
    f & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN | tcp_flags::ACK
        || (f & (tcp_flags::SYN | tcp_flags::ACK | tcp_flags::FIN) == tcp_flags::ACK
            && l4_len == tcp.header_len())
}

/// A packet not addressed to a VIP that missed the fast path (IP options, a fragment, not
/// TCP, a short TCP header): a reply of a tracked flow, an ICMP error to a SNAT address about
/// one, or not ours.
#[inline(always)]
fn lb4_reply_exception(
    ctx: &XdpContext,
    eth: &mut EthHdr,
    ip: &mut Ipv4Hdr,
    hlen: usize,
    tot_len: usize,
) -> Result<Verdict, ()> {
    if ip.proto == IPPROTO_ICMP && hlen == IPV4_HLEN && !ip.is_fragment() {
        return icmp::lb4_icmp_from_backend(ctx, eth, ip);
    }
    if ip.proto != IPPROTO_TCP || ip.is_fragment() {
        return Ok(Verdict::pass(PASS_NOT_SERVICE));
    }
    // IHL is at most 15 words; the mask lets the verifier bound the offset.
    let l4_off = ETH_HLEN + (hlen & 0x3c);
    let Some(ports) = ptr_at::<[u16; 2]>(ctx, l4_off) else {
        return Ok(Verdict::pass(PASS_NOT_SERVICE));
    };
    // SAFETY: bounds-checked by ptr_at.
    let [sport, dport] = unsafe { *ports };
    let key = tcp_key(ip.src_be, ip.dst_be, sport, dport);
    let Some((table, entry)) = conntrack::lookup(&key) else {
        return Ok(Verdict::pass(PASS_NOT_SERVICE));
    };
    // SAFETY: map value pointer; concurrent updates are benign.
    let entry = unsafe { &mut *entry };
    let Some(tcp) = ptr_at::<TcpHdr>(ctx, l4_off) else {
        let cfg = LB_CONFIG.get(0).ok_or(())?;
        if entry.flags & FLOW_F_REPLY == 0
            || conntrack::flow_expired(table, &key, entry, cfg, now_ns())
        {
            return Ok(Verdict::pass(PASS_NOT_SERVICE));
        }
        return Ok(Verdict::drop(DROP_MALFORMED_TCP));
    };
    // SAFETY: bounds-checked by ptr_at, disjoint from the IP header.
    let tcp = unsafe { &mut *tcp };
    lb4_reply(ctx, eth, ip, tcp, (table, &key, entry), hlen, tot_len)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// License of the object (GPL-compatible: `bpf_fib_lookup` and friends are GPL-only helpers).
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
