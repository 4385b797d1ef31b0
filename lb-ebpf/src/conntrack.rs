//! Connection tracking: lookup and refresh of flow entries, SNAT port allocation, expiry.
//!
//! A flow has two entries in `LB_CONNTRACK`: the forward entry keyed by the client's 5-tuple and
//! the reply entry keyed by (backend, SNAT address, backend port, SNAT port), which is also the
//! SNAT port reservation. Each entry's partner key is rebuilt from its rewrite: swap the new
//! source and destination ([`partner_key`]).

use crate::maps::{LB_CONNTRACK, LB_SNAT_ADDRS};
use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::generated::bpf_ktime_get_coarse_ns,
};
use lb_common::{
    hash::{flow_hash, snat_port_base, snat_port_candidate, SNAT_SEED_XOR},
    tcp_flags, BackendValue, FlowEntry, FlowKey, GlobalConfig, FLOW_F_CLOSING, FLOW_F_ESTABLISHED,
    FLOW_F_REPLY, FLOW_TOUCH_INTERVAL_NS, IPPROTO_TCP, MAX_SNAT_ADDRS, SNAT_PORT_ATTEMPTS,
};

/// `-EEXIST` as returned by a map insert with `BPF_NOEXIST` on an existing key.
const EEXIST: i32 = 17;

/// Why a new flow could not be tracked.
pub enum AllocError {
    /// No SNAT address configured or every port candidate taken: `DROP_SNAT_EXHAUSTED`.
    SnatExhausted,
    /// A conntrack insert failed with a map error: `DROP_CONNTRACK_FULL`.
    Full,
}

/// A TCP 5-tuple key.
#[inline(always)]
pub fn tcp_key(src_be: u32, dst_be: u32, sport_be: u16, dport_be: u16) -> FlowKey {
    FlowKey {
        src_addr_be: src_be,
        dst_addr_be: dst_be,
        src_port_be: sport_be,
        dst_port_be: dport_be,
        proto: IPPROTO_TCP,
        _pad: [0; 3],
    }
}

/// The key of the other direction of the flow `entry` belongs to.
#[inline(always)]
pub fn partner_key(entry: &FlowEntry) -> FlowKey {
    tcp_key(
        entry.new_dst_addr_be,
        entry.new_src_addr_be,
        entry.new_dst_port_be,
        entry.new_src_port_be,
    )
}

/// The clock of `last_seen_ns`: `bpf_ktime_get_coarse_ns` (`CLOCK_MONOTONIC_COARSE`, one
/// memory read instead of a clock-source read; it trails `CLOCK_MONOTONIC` by at most one
/// scheduler tick, a few ms, so user space comparing with `CLOCK_MONOTONIC` sees entries at
/// most that much older).
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Records a packet with TCP `flags` on `entry`: refreshes `last_seen_ns` at most every
/// `FLOW_TOUCH_INTERVAL_NS` (dropping the cached next hop, so the next lookup re-validates it),
/// marks FIN/RST as closing, and marks the direction established (any packet of the reply
/// direction, a non-SYN of the forward direction).
#[inline(always)]
pub fn touch(entry: &mut FlowEntry, flags: u8, now_ns: u64) {
    if now_ns.saturating_sub(entry.last_seen_ns) >= FLOW_TOUCH_INTERVAL_NS {
        entry.last_seen_ns = now_ns;
        entry.next_hop_max_len = 0;
    }
    let mut f = entry.flags;
    if flags & (tcp_flags::FIN | tcp_flags::RST) != 0 {
        f |= FLOW_F_CLOSING;
    }
    if f & FLOW_F_REPLY != 0 || flags & tcp_flags::SYN == 0 {
        f |= FLOW_F_ESTABLISHED;
    }
    if f != entry.flags {
        entry.flags = f;
    }
}

/// Drops the SNAT reservation (reply entry) of a forward entry that is being replaced.
#[inline(always)]
pub fn release(forward: &FlowEntry) {
    let _ = LB_CONNTRACK.remove(partner_key(forward));
}

/// True when the existing reply entry at `rkey` may be taken over by the flow `own`: it
/// vanished, or it expired and its forward entry is gone, expired, no longer points to it, or
/// is `own` itself.
#[inline(always)]
fn reclaimable(rkey: &FlowKey, own: &FlowKey, cfg: &GlobalConfig, now_ns: u64) -> bool {
    // SAFETY: read-only copy of a map value.
    let Some(old) = (unsafe { LB_CONNTRACK.get(rkey) }).copied() else {
        return true;
    };
    if !old.is_expired(now_ns, cfg) {
        return false;
    }
    let fkey = partner_key(&old);
    if fkey == *own {
        return true;
    }
    // SAFETY: read-only copy of a map value.
    match unsafe { LB_CONNTRACK.get(fkey) } {
        None => true,
        Some(f) => f.is_expired(now_ns, cfg) || partner_key(f) != *rkey,
    }
}

/// Reserves a SNAT address and port for a new flow `key` (client -> VIP) to `backend`: picks
/// the SNAT address by hash and the first free SNAT port among `SNAT_PORT_ATTEMPTS` candidates
/// (inserting the reply entry with `BPF_NOEXIST`, taking over expired flows). Returns the
/// forward entry to [`commit`] (without a next hop yet) and the reply entry's key.
#[inline(always)]
pub fn reserve(
    key: &FlowKey,
    backend: &BackendValue,
    backend_id: u32,
    service_id: u32,
    cfg: &GlobalConfig,
    now_ns: u64,
) -> Result<(FlowEntry, FlowKey), AllocError> {
    let count = if cfg.snat_addr_count > MAX_SNAT_ADDRS {
        MAX_SNAT_ADDRS
    } else {
        cfg.snat_addr_count
    };
    if count == 0 {
        return Err(AllocError::SnatExhausted);
    }
    let h = flow_hash(
        key.src_addr_be,
        key.dst_addr_be,
        key.src_port_be,
        key.dst_port_be,
        cfg.hash_seed ^ SNAT_SEED_XOR,
    );
    let snat_addr = match LB_SNAT_ADDRS.get(h % count) {
        Some(a) if *a != 0 => *a,
        _ => return Err(AllocError::SnatExhausted),
    };
    let reply = FlowEntry {
        last_seen_ns: now_ns,
        new_src_addr_be: key.dst_addr_be,
        new_dst_addr_be: key.src_addr_be,
        new_src_port_be: key.dst_port_be,
        new_dst_port_be: key.src_port_be,
        backend_id,
        service_id,
        flags: FLOW_F_REPLY,
        ..FlowEntry::default()
    };
    let port_base = snat_port_base(
        key.src_addr_be,
        key.src_port_be,
        cfg.hash_seed ^ SNAT_SEED_XOR,
    );
    let mut attempt = 0;
    while attempt < SNAT_PORT_ATTEMPTS {
        let port_be =
            snat_port_candidate(port_base, attempt, cfg.snat_port_min, cfg.snat_port_max).to_be();
        let rkey = tcp_key(backend.addr_be, snat_addr, backend.port_be, port_be);
        let reserved = match LB_CONNTRACK.insert(rkey, reply, BPF_NOEXIST as u64) {
            Ok(()) => true,
            Err(e) if e == -EEXIST => {
                if reclaimable(&rkey, key, cfg, now_ns) {
                    if LB_CONNTRACK.insert(rkey, reply, BPF_ANY as u64).is_err() {
                        return Err(AllocError::Full);
                    }
                    true
                } else {
                    false
                }
            }
            Err(_) => return Err(AllocError::Full),
        };
        if reserved {
            let forward = FlowEntry {
                last_seen_ns: now_ns,
                new_src_addr_be: snat_addr,
                new_dst_addr_be: backend.addr_be,
                new_src_port_be: port_be,
                new_dst_port_be: backend.port_be,
                backend_id,
                service_id,
                flags: 0,
                ..FlowEntry::default()
            };
            return Ok((forward, rkey));
        }
        attempt += 1;
    }
    Err(AllocError::SnatExhausted)
}

/// Writes the forward entry of a flow whose reply entry [`reserve`] inserted at `rkey`;
/// on failure the reservation is released (`DROP_CONNTRACK_FULL`).
#[inline(always)]
pub fn commit(key: &FlowKey, forward: &FlowEntry, rkey: &FlowKey) -> Result<(), AllocError> {
    if LB_CONNTRACK.insert(key, forward, BPF_ANY as u64).is_err() {
        let _ = LB_CONNTRACK.remove(rkey);
        return Err(AllocError::Full);
    }
    Ok(())
}
