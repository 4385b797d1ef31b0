//! The in-XDP SYN retry (`lb_common::retry`): a new flow's reply entry keeps the client's SYN
//! ([`saved_syn`]); a backend's RST answering it raises passive suspicion as before and, when
//! the RST acknowledges the kept SYN and another backend is usable, becomes that SYN toward
//! the other backend ([`refused`]): the flow moves there (same forward key, new rewrite and
//! reply entry) and the client sees only a slower handshake. Otherwise the flow is released
//! and the RST dropped (`DROP_SYN_REFUSED`): the client's SYN retransmission is balanced
//! afresh, away from the suspect backend.

use crate::{
    conntrack::{self, partner_key, Table},
    forward::{self, Direction, NextHop},
    maps::{LB_BACKENDS, LB_CT_SYN, LB_MAGLEV, LB_SERVICES},
    parse::{
        frame_len, ptr_at, EthHdr, Ipv4Hdr, TcpHdr, ETH_HLEN, ETH_P_IP_BE, IPV4_HLEN, TCP_HLEN,
    },
    passive,
    rst::sum_words,
    stats::{self, Verdict},
};
use aya_ebpf::{helpers::generated::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::{
    checksum::csum_fold,
    hash::flow_hash,
    passive::{select, REASON_RST_TO_SYN},
    retry::{parse_options, SynSaved, MAX_SYN_RETRIES, SYN_KEPT_FLAGS, SYN_OPT_SAVED},
    tcp_flags,
    tcp_state::SYN_SENT,
    FlowEntry, FlowKey, GlobalConfig, ServiceKey, BACKEND_ID_NONE, CT_SYN_RETRIED,
    CT_SYN_RETRY_EXHAUSTED, DROP_SYN_REFUSED, IPPROTO_TCP, SELECT_SKIPPED, SERVICE_F_NO_BACKEND,
    TX_ICMP_FRAG_NEEDED,
};

/// TTL of the rebuilt SYN before the forwarding hop (lb's own packets start at 64).
const SYN_TTL: u8 = 64;
/// IPv4 "don't fragment", network order.
const IP_DF_BE: u16 = 0x4000u16.to_be();

/// Keeps the SYN of a new flow, just sent with verdict `counter`, in its reply entry at
/// `rkey` ([`saved_syn`]); not when the SYN was turned into an ICMP error. Done last, on an
/// extra lookup: the verifier walks everything after the option parse once per distinct
/// parse outcome, and the parse once per distinct state reaching it, which it cannot afford
/// anywhere before the transmission.
#[inline(always)]
pub fn keep_syn(ctx: &XdpContext, rkey: &FlowKey, counter: u32) {
    if counter == TX_ICMP_FRAG_NEEDED {
        return;
    }
    let (Some(ip), Some(tcp)) = (
        ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN),
        ptr_at::<TcpHdr>(ctx, ETH_HLEN + IPV4_HLEN),
    ) else {
        return;
    };
    // SAFETY: bounds-checked by ptr_at.
    let syn = saved_syn(ctx, unsafe { &*ip }, unsafe { &*tcp });
    if syn.opts & SYN_OPT_SAVED == 0 {
        return;
    }
    if let Some(r) = LB_CT_SYN.get_ptr_mut(rkey) {
        // SAFETY: map value pointer; the entry was inserted by this packet just now.
        syn.write_to(unsafe { &mut *r });
    }
}

/// What a new flow keeps of its SYN: ISN, window, TOS, ECN flags and the options
/// `lb_common::retry::parse_options` can rebuild. Not kept ([`SYN_OPT_SAVED`] clear) when the
/// SYN carries payload (TCP Fast Open) or an option lb cannot rebuild.
#[inline(always)]
fn saved_syn(ctx: &XdpContext, ip: &Ipv4Hdr, tcp: &TcpHdr) -> SynSaved {
    let doff = tcp.header_len();
    if ip.tot_len() != IPV4_HLEN + doff {
        return SynSaved::default();
    }
    let words = (doff - TCP_HLEN) / 4;
    let word = |k: usize| {
        // SAFETY: bounds-checked by ptr_at (k < 10).
        ptr_at::<[u8; 4]>(ctx, ETH_HLEN + IPV4_HLEN + TCP_HLEN + (k & 15) * 4)
            .map(|p| unsafe { *p })
    };
    let Some((bits, mss, wscale, tsval)) = parse_options(word, words) else {
        return SynSaved::default();
    };
    SynSaved {
        opts: bits | SYN_OPT_SAVED,
        isn: u32::from_be(tcp.seq_be),
        mss,
        window: u16::from_be(tcp.window_be),
        wscale,
        tsval,
        tos: ip.tos,
        flags: tcp.flags & SYN_KEPT_FLAGS,
        retries: 0,
    }
}

/// A RST from the backend of a flow in SYN_SENT (`flow` = table, key and reply entry; `hlen`
/// the IPv4 header length): the backend is marked suspect, then the RST is turned into the
/// kept SYN toward the next usable backend ([`retry`]: `CT_SYN_RETRIED`, the verdict of its
/// transmission), or else both entries are released and the RST dropped
/// (`DROP_SYN_REFUSED`).
#[inline(always)]
pub fn refused(
    ctx: &XdpContext,
    flow: (Table, &FlowKey, &mut FlowEntry),
    hlen: usize,
    cfg: &GlobalConfig,
    now: u64,
) -> Result<Verdict, ()> {
    let (table, key, entry) = flow;
    passive::raise(entry.backend_id, entry.service_id, REASON_RST_TO_SYN, now);
    if hlen == IPV4_HLEN && table == Table::Embryonic {
        if let Some(v) = retry(ctx, key, entry, cfg, now) {
            return Ok(v);
        }
    }
    conntrack::release(table, key, entry);
    Ok(Verdict::drop(DROP_SYN_REFUSED))
}

/// The retry of [`refused`] (`key`/`reply`: the refused flow's reply entry, in `LB_CT_SYN`):
/// `None`, with nothing changed, when the entry keeps no SYN, the RST does not acknowledge
/// it (no ACK, or an acknowledgment other than ISN + 1), the retries are spent
/// (`CT_SYN_RETRY_EXHAUSTED`), the forward entry is gone, no other backend is usable, no
/// SNAT port is free for it, or no route leads to it (the frame may then already be rebuilt). On success the forward entry points at the new backend, its new
/// reply entry keeps the SYN (one more retry counted), the old reply entry is gone and the
/// packet is the SYN, transmitted.
#[inline(always)]
fn retry(
    ctx: &XdpContext,
    key: &FlowKey,
    reply: &FlowEntry,
    cfg: &GlobalConfig,
    now: u64,
) -> Option<Verdict> {
    let mut syn = SynSaved::read_from(reply)?;
    let tcp = ptr_at::<TcpHdr>(ctx, ETH_HLEN + IPV4_HLEN)?;
    // SAFETY: bounds-checked by ptr_at.
    let (flags, ack) = unsafe { ((*tcp).flags, u32::from_be((*tcp).ack_seq_be)) };
    if flags & tcp_flags::ACK == 0 || ack != syn.isn.wrapping_add(1) {
        return None;
    }
    if syn.retries >= MAX_SYN_RETRIES {
        stats::count(CT_SYN_RETRY_EXHAUSTED);
        return None;
    }
    let fkey = partner_key(reply);
    // SAFETY: read-only access to a map value.
    let fwd = unsafe { LB_CT_SYN.get(&fkey) }?;
    if partner_key(fwd) != *key || fwd.state != SYN_SENT {
        return None;
    }
    let skey = ServiceKey {
        vip_be: fkey.dst_addr_be,
        port_be: fkey.dst_port_be,
        proto: IPPROTO_TCP,
        _pad: 0,
    };
    // SAFETY: read-only access to a map value.
    let svc = unsafe { LB_SERVICES.get(skey) }?;
    if svc.flags & SERVICE_F_NO_BACKEND != 0
        || svc.table_size == 0
        || svc.service_id != reply.service_id
    {
        return None;
    }
    let h = flow_hash(
        fkey.src_addr_be,
        fkey.dst_addr_be,
        fkey.src_port_be,
        fkey.dst_port_be,
        cfg.hash_seed,
    );
    // The new-flow walk: the refused backend is suspect now, so it is skipped.
    let table_offset = svc.table_offset;
    let sel = select(
        h,
        svc.table_size,
        |slot| LB_MAGLEV.get(table_offset.wrapping_add(slot)).copied(),
        |id| passive::usable(id, now),
    )?;
    let id = sel.backend_id;
    if sel.fallback || id == BACKEND_ID_NONE || id == reply.backend_id {
        return None;
    }
    if sel.probe != 0 {
        stats::count(SELECT_SKIPPED);
    }
    let backend = LB_BACKENDS.get(id)?;
    if backend.addr_be == 0 {
        return None;
    }
    syn.retries += 1;
    let (mut fwd_new, rkey) =
        conntrack::reserve(&fkey, backend, id, svc.service_id, cfg, now).ok()?;
    // The new reply entry keeps the SYN for the next refusal, one more retry counted.
    let kept = match LB_CT_SYN.get_ptr_mut(&rkey) {
        // SAFETY: map value pointer to the entry reserve inserted just now.
        Some(r) => {
            syn.write_to(unsafe { &mut *r });
            true
        }
        None => false,
    };
    if !kept || build_syn(ctx, &fwd_new, &syn).is_err() {
        let _ = LB_CT_SYN.remove(&rkey);
        return None;
    }
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    let ip = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN)?;
    // SAFETY: bounds-checked pointers into the rebuilt frame, disjoint.
    let (eth, ip) = unsafe { (&mut *eth, &mut *ip) };
    let hop = forward::resolve(ctx, ip, &mut fwd_new);
    if matches!(hop, NextHop::Failed | NextHop::FragNeeded(_)) {
        // No way to the new backend: committing would count a retry whose SYN is dropped,
        // and the client's retransmitted SYN would then find a flow "unanswered" by a
        // backend it never reached (a false suspicion). Release the new reservation; the
        // caller ends the old flow and the client's retransmission starts afresh.
        let _ = LB_CT_SYN.remove(&rkey);
        return None;
    }
    // Same key: the forward entry now rewrites to the new backend (commit releases the new
    // reservation if this fails, and the caller releases the old flow).
    conntrack::commit(&fkey, &fwd_new, &rkey).ok()?;
    let _ = LB_CT_SYN.remove(key);
    stats::count(CT_SYN_RETRIED);
    Some(forward::transmit(
        ctx,
        eth,
        ip,
        &fkey,
        &fwd_new,
        hop,
        Direction::ToBackend,
    ))
}

/// Rebuilds the frame in `ctx` (the backend's RST, its Ethernet header kept so a frame passed
/// to the kernel is still addressed to this host) as the client's SYN `syn` rewritten by the
/// forward entry `fwd`: SNAT address:port -> backend address:port, IPv4 with TOS kept, ID 0,
/// DF, TTL 64; `seq` = ISN, no ACK, the kept window, ECN flags and options; both checksums
/// computed from scratch. The frame grows at the head (`bpf_xdp_adjust_head`, whose headroom
/// every driver has; tail growth it is not) or shrinks there.
#[inline(always)]
fn build_syn(ctx: &XdpContext, fwd: &FlowEntry, syn: &SynSaved) -> Result<(), ()> {
    let (words, n) = syn.option_words();
    let opt_len = n * 4;
    let tcp_len = TCP_HLEN + opt_len;
    let new_len = ETH_HLEN + IPV4_HLEN + tcp_len;
    let (dst_mac, src_mac) = {
        let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(())?;
        // SAFETY: bounds-checked by ptr_at.
        unsafe { ((*eth).dst, (*eth).src) }
    };
    // Opaque to the optimiser: folded into pointer arithmetic, the length would be shifted
    // as a packet pointer, which the verifier refuses.
    let len = core::hint::black_box(frame_len(ctx)) as i32;
    let delta = len - new_len as i32;
    if delta != 0 {
        // SAFETY: helper call on the program's own context; every packet pointer is fetched
        // again below.
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) } != 0 {
            return Err(());
        }
    }
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(())?;
    let ip = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN).ok_or(())?;
    let tcp = ptr_at::<TcpHdr>(ctx, ETH_HLEN + IPV4_HLEN).ok_or(())?;
    // SAFETY: bounds-checked pointers into the frame, disjoint.
    let (eth, ip, tcp) = unsafe { (&mut *eth, &mut *ip, &mut *tcp) };
    eth.set_macs(&dst_mac, &src_mac);
    eth.ether_type_be = ETH_P_IP_BE;

    let (src, dst) = (fwd.new_src_addr_be, fwd.new_dst_addr_be);
    ip.version_ihl = 0x45;
    ip.tos = syn.tos;
    ip.tot_len_be = ((IPV4_HLEN + tcp_len) as u16).to_be();
    ip.id_be = 0;
    ip.frag_off_be = IP_DF_BE;
    ip.ttl = SYN_TTL;
    ip.proto = IPPROTO_TCP;
    ip.check = 0;
    ip.src_be = src;
    ip.dst_be = dst;
    ip.check = !csum_fold(sum_words(
        ip as *const Ipv4Hdr as *const [u16; IPV4_HLEN / 2],
    ));

    tcp.src_port_be = fwd.new_src_port_be;
    tcp.dst_port_be = fwd.new_dst_port_be;
    tcp.seq_be = syn.isn.to_be();
    tcp.ack_seq_be = 0;
    tcp.doff_res = ((tcp_len / 4) as u8) << 4;
    tcp.flags = tcp_flags::SYN | syn.flags;
    tcp.window_be = syn.window.to_be();
    tcp.check = 0;
    tcp.urg_ptr_be = 0;

    let mut sum = (src & 0xffff) as u64
        + (src >> 16) as u64
        + (dst & 0xffff) as u64
        + (dst >> 16) as u64
        + u16::from_ne_bytes([0, IPPROTO_TCP]) as u64
        + u16::from_ne_bytes((tcp_len as u16).to_be_bytes()) as u64;
    sum += sum_words(tcp as *const TcpHdr as *const [u16; TCP_HLEN / 2]);
    let mut k = 0;
    while k < words.len() {
        if k < n {
            let p = ptr_at::<[u8; 4]>(ctx, ETH_HLEN + IPV4_HLEN + TCP_HLEN + k * 4).ok_or(())?;
            let w = words[k];
            // SAFETY: bounds-checked by ptr_at.
            unsafe { *p = w.to_ne_bytes() };
            sum += (w & 0xffff) as u64 + (w >> 16) as u64;
        }
        k += 1;
    }
    let tcp = ptr_at::<TcpHdr>(ctx, ETH_HLEN + IPV4_HLEN).ok_or(())?;
    // SAFETY: bounds-checked by ptr_at.
    unsafe { (*tcp).check = !csum_fold(sum) };
    Ok(())
}
