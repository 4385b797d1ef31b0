//! Connection tracking: the flow state machine applied to both entries of a flow, the pair
//! invariant, SNAT port allocation and expiry.
//!
//! A flow has two entries: the forward entry keyed by the client's 5-tuple and the reply entry
//! keyed by (backend, SNAT address, backend port, SNAT port), which is also the SNAT port
//! reservation. Each entry's partner key is rebuilt from its rewrite: swap the new source and
//! destination ([`partner_key`]); each entry can be rebuilt from its partner ([`mirror`]).
//! Both carry the same TCP state and `last_seen_ns` ([`step`]).
//!
//! Both entries live in the same map: `LB_CT_SYN` while the handshake is in progress (a SYN
//! flood evicts only embryonic flows), `LB_CONNTRACK` from the handshake's completion on
//! ([`promote`]). A SNAT port is free only when neither map holds it ([`reserve`]); a
//! backend whose pool a full search found full gets short searches for a while
//! ([`search_start`]).

use crate::{
    ablate, ct_filter,
    maps::{LB_CONNTRACK, LB_CT_SYN, LB_SNAT_ADDRS, LB_SNAT_FULL},
    stats,
};
use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::generated::bpf_ktime_get_coarse_ns,
};
use lb_common::{
    hash::{flow_hash, snat_port_base, snat_port_candidate, SNAT_SEED_XOR},
    tcp_state::{is_embryonic, Transition, CLOSE},
    BackendValue, FlowEntry, FlowKey, GlobalConfig, CT_PAIR_REPAIRED, FLOW_F_REPLY,
    FLOW_TOUCH_INTERVAL_NS, IPPROTO_TCP, MAX_SNAT_ADDRS, PARTNER_SYNC_REFRESHES, SNAT_FULL_HOLD_NS,
    SNAT_POOL_FULL, SNAT_PORT_ATTEMPTS, SNAT_PORT_ATTEMPTS_SHORT, SNAT_SEARCH_SHORT,
};

/// Which conntrack map a flow lives in.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// `LB_CONNTRACK`: flows past their handshake.
    Main,
    /// `LB_CT_SYN`: embryonic flows (and those a RST closed before the handshake completed).
    Embryonic,
}

impl Table {
    /// The other map (a key must never be live in both).
    #[inline(always)]
    pub fn other(self) -> Table {
        match self {
            Table::Main => Table::Embryonic,
            Table::Embryonic => Table::Main,
        }
    }

    // The map operations below name each map at its own call site. A map pointer chosen at
    // run time (`if main { &LB_CONNTRACK } else { &LB_CT_SYN }` passed to one helper call)
    // makes the verifier mark that call's map as "poisoned": it can then neither inline the
    // lookup nor call the map type's function directly, and every such call goes through the
    // generic helper and an indirect call (docs/benchmarks.md, issue 9 section). The
    // `map_calls_are_direct` fixture checks the loaded program for such calls.

    /// A pointer to the entry at `key` in this map.
    #[inline(always)]
    pub fn get_ptr_mut(self, key: &FlowKey) -> Option<*mut FlowEntry> {
        match self {
            Table::Main => {
                let e = LB_CONNTRACK.get_ptr_mut(key);
                call_site_barrier::<2>();
                e
            }
            Table::Embryonic => {
                let e = LB_CT_SYN.get_ptr_mut(key);
                call_site_barrier::<3>();
                e
            }
        }
    }

    /// The entry at `key` in this map, to read.
    #[inline(always)]
    pub fn get(self, key: &FlowKey) -> Option<&'static FlowEntry> {
        // SAFETY: map value pointer, valid while the program runs; concurrent updates are
        // benign (last writer wins).
        self.get_ptr_mut(key).map(|e| unsafe { &*e })
    }

    /// Removes `key` from this map (absent or not).
    #[inline(always)]
    pub fn remove(self, key: &FlowKey) {
        match self {
            Table::Main => {
                let _ = LB_CONNTRACK.remove(key);
                call_site_barrier::<0>();
            }
            Table::Embryonic => {
                let _ = LB_CT_SYN.remove(key);
                call_site_barrier::<1>();
            }
        }
    }

    /// Inserts `entry` at `key` in this map with `flags` (`BPF_ANY`, `BPF_NOEXIST`).
    #[inline(always)]
    pub fn insert(self, key: &FlowKey, entry: &FlowEntry, flags: u64) -> Result<(), i32> {
        match self {
            Table::Main => {
                ct_filter::mark(key);
                let r = LB_CONNTRACK.insert(key, entry, flags);
                call_site_barrier::<4>();
                r
            }
            Table::Embryonic => {
                let r = LB_CT_SYN.insert(key, entry, flags);
                call_site_barrier::<5>();
                r
            }
        }
    }
}

/// Keeps the map call just before it at its own call site: LLVM merges the calls of both
/// arms of a `match` on the table into one call with the map pointer chosen at run time (the
/// verifier then poisons that call site), unless the arms end in code it cannot merge. An
/// inline assembly block with a text of its own per `ID` is such code; it emits a jump to
/// the next instruction, which the verifier removes as a no-op.
#[inline(always)]
fn call_site_barrier<const ID: u32>() {
    // SAFETY: `goto +0` jumps to the next instruction: no registers, memory or flags touched.
    unsafe {
        core::arch::asm!("goto +0 // {id}", id = const ID, options(nomem, nostack, preserves_flags));
    }
}

/// The entry of `key`: `LB_CONNTRACK` first (the established fast path's single lookup), then
/// `LB_CT_SYN`.
#[inline(always)]
pub fn lookup(key: &FlowKey) -> Option<(Table, *mut FlowEntry)> {
    if let Some(e) = LB_CONNTRACK.get_ptr_mut(key) {
        return Some((Table::Main, e));
    }
    LB_CT_SYN.get_ptr_mut(key).map(|e| (Table::Embryonic, e))
}

/// [`lookup`] for a bare SYN (the first packet of most new flows): `LB_CONNTRACK` only when
/// its key filter says it may hold `key` ([`ct_filter::may_hold`]), so a new flow's own
/// 5-tuple costs no miss in that map's bucket array. Every other packet keeps [`lookup`]
/// (an established packet's entry is there; the filter would be one more access).
#[inline(always)]
pub fn lookup_syn(key: &FlowKey) -> Option<(Table, *mut FlowEntry)> {
    if ct_filter::may_hold(key) {
        if let Some(e) = LB_CONNTRACK.get_ptr_mut(key) {
            return Some((Table::Main, e));
        }
    }
    LB_CT_SYN.get_ptr_mut(key).map(|e| (Table::Embryonic, e))
}

/// `-EEXIST` as returned by a map insert with `BPF_NOEXIST` on an existing key.
const EEXIST: i32 = 17;

/// Why a new flow could not be tracked.
pub enum AllocError {
    /// No SNAT address configured or every port candidate taken: `DROP_SNAT_EXHAUSTED`.
    SnatExhausted,
    /// A conntrack insert failed with a map error: `DROP_CONNTRACK_FULL`.
    Full,
}

/// Outcome of bringing a flow's partner entry in line ([`advance`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Pair {
    /// The partner exists (or was re-inserted) with the flow's state.
    Ok,
    /// The partner's key belongs to another live flow: this entry must go.
    Conflict,
}

/// A TCP 5-tuple key.
///
/// Built from four 32-bit words rather than field by field: LLVM lowers the zeroing of the
/// three-byte `_pad` array into a call of the `memset` subprogram (a BPF-to-BPF call and a
/// byte loop on every packet that builds a key); the words are the same bytes on this
/// little-endian target (`sport` and `dport` in memory order, then `proto` and three zero
/// bytes).
#[inline(always)]
pub fn tcp_key(src_be: u32, dst_be: u32, sport_be: u16, dport_be: u16) -> FlowKey {
    let words: [u32; 4] = [
        src_be,
        dst_be,
        u32::from(sport_be) | (u32::from(dport_be) << 16),
        u32::from(IPPROTO_TCP),
    ];
    // SAFETY: FlowKey is repr(C), 16 bytes, 4-aligned, every bit pattern valid; the layout
    // (lb_common's offset asserts) puts the fields at exactly these bytes.
    unsafe { core::mem::transmute::<[u32; 4], FlowKey>(words) }
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

/// The partner entry of `entry` stored at `key`: it rewrites packets of the other direction
/// back to `key`'s addresses and shares the flow's backend, state and `last_seen_ns`.
#[inline(always)]
pub fn mirror(key: &FlowKey, entry: &FlowEntry) -> FlowEntry {
    FlowEntry {
        last_seen_ns: entry.last_seen_ns,
        new_src_addr_be: key.dst_addr_be,
        new_dst_addr_be: key.src_addr_be,
        new_src_port_be: key.dst_port_be,
        new_dst_port_be: key.src_port_be,
        backend_id: entry.backend_id,
        service_id: entry.service_id,
        flags: entry.flags ^ FLOW_F_REPLY,
        state: entry.state,
        close_dir: entry.close_dir,
        ..FlowEntry::default()
    }
}

/// The clock of `last_seen_ns`: `bpf_ktime_get_coarse_ns` (`CLOCK_MONOTONIC_COARSE`, one
/// memory read instead of a clock-source read; it trails `CLOCK_MONOTONIC` by at most one
/// scheduler tick, a few ms, so user space comparing with `CLOCK_MONOTONIC` sees entries at
/// most that much older).
#[inline(always)]
pub fn now_ns() -> u64 {
    if ablate::NO_CLOCK {
        return 1_000_000_000_000;
    }
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Applies transition `t` of a packet to `entry` (stored at `key` in `table`): an embryonic
/// flow that leaves the handshake states (other than by a RST) is promoted to `LB_CONNTRACK`,
/// anything else is an [`advance`].
#[inline(always)]
pub fn step(
    table: Table,
    key: &FlowKey,
    entry: &mut FlowEntry,
    t: &Transition,
    cfg: &GlobalConfig,
    now_ns: u64,
) -> Pair {
    if table == Table::Embryonic && !is_embryonic(t.state) && t.state != CLOSE {
        return promote(key, entry, t, cfg, now_ns);
    }
    advance(table, key, entry, t, cfg, now_ns)
}

/// Moves the flow of `entry` (at `key` in `LB_CT_SYN`) into `LB_CONNTRACK` in state `t`: both
/// entries written there (the partner rebuilt from `entry`), then removed from `LB_CT_SYN`.
/// The partner key must not be held by another live flow in either map (its entry may have
/// been evicted from `LB_CT_SYN` and its SNAT port reserved by a new flow since,
/// [`partner_key_free`]): [`Pair::Conflict`] then, and nothing is written. If an insert fails
/// the flow stays embryonic.
#[inline(always)]
fn promote(
    key: &FlowKey,
    entry: &mut FlowEntry,
    t: &Transition,
    cfg: &GlobalConfig,
    now_ns: u64,
) -> Pair {
    let pkey = partner_key(entry);
    if !partner_key_free(&pkey, key, cfg, now_ns) {
        return Pair::Conflict;
    }
    entry.state = t.state;
    entry.close_dir = t.close_dir;
    entry.last_seen_ns = now_ns;
    entry.refreshes = 0;
    ct_filter::mark(key);
    ct_filter::mark(&pkey);
    if LB_CONNTRACK.insert(key, &*entry, BPF_ANY as u64).is_err() {
        return Pair::Ok;
    }
    if LB_CONNTRACK
        .insert(&pkey, &mirror(key, entry), BPF_ANY as u64)
        .is_err()
    {
        let _ = LB_CONNTRACK.remove(key);
        return Pair::Ok;
    }
    // The partner key in LB_CT_SYN is ours or a taken-over expired flow's: gone either way.
    let _ = LB_CT_SYN.remove(&pkey);
    let _ = LB_CT_SYN.remove(key);
    Pair::Ok
}

/// True when no live flow other than `own`'s holds `pkey` (the partner key of `own`'s
/// entry) in either map: an entry there is `own`'s (it points back at `own`), or is gone, or
/// belongs to an expired flow that may be taken over ([`take_over`], which removes that
/// flow's stale forward entry; the caller overwrites or removes the key itself). The one
/// check behind [`promote`] and [`sync_partner`]: `LB_CONNTRACK` first, then `LB_CT_SYN`.
#[inline(always)]
fn partner_key_free(pkey: &FlowKey, own: &FlowKey, cfg: &GlobalConfig, now_ns: u64) -> bool {
    held_by_other(Table::Main, pkey, own, cfg, now_ns).is_none()
        && held_by_other(Table::Embryonic, pkey, own, cfg, now_ns).is_none()
}

/// `Some(())` when `table` holds `pkey` for a live flow other than `own`'s
/// ([`partner_key_free`]).
#[inline(always)]
fn held_by_other(
    table: Table,
    pkey: &FlowKey,
    own: &FlowKey,
    cfg: &GlobalConfig,
    now_ns: u64,
) -> Option<()> {
    let o = *table.get(pkey)?;
    if partner_key(&o) == *own || take_over(table, pkey, own, cfg, now_ns) {
        return None;
    }
    Some(())
}

/// Applies transition `t` of a packet to `entry` (stored at `key` in `map`): a state change
/// writes this entry and the partner ([`sync_partner`]); a due refresh (at most every
/// `FLOW_TOUCH_INTERVAL_NS`, dropping the cached next hop so the next lookup re-validates it)
/// writes this entry, and the partner only every `PARTNER_SYNC_REFRESHES`-th time (the
/// partner's own time may lag meanwhile: [`flow_expired`] consults it). Any other packet
/// costs no write and no lookup.
#[inline(always)]
pub fn advance(
    table: Table,
    key: &FlowKey,
    entry: &mut FlowEntry,
    t: &Transition,
    cfg: &GlobalConfig,
    now_ns: u64,
) -> Pair {
    let changed = t.state != entry.state || t.close_dir != entry.close_dir;
    let due = now_ns.saturating_sub(entry.last_seen_ns) >= FLOW_TOUCH_INTERVAL_NS;
    if !changed && !due {
        return Pair::Ok;
    }
    if due {
        entry.next_hop_max_len = 0;
    }
    entry.last_seen_ns = now_ns;
    entry.state = t.state;
    entry.close_dir = t.close_dir;
    if !changed {
        entry.refreshes = entry.refreshes.saturating_add(1);
        if entry.refreshes < PARTNER_SYNC_REFRESHES {
            return Pair::Ok;
        }
    }
    entry.refreshes = 0;
    sync_partner(table, key, entry, cfg, now_ns)
}

/// True when the flow of `entry` (stored at `key` in `map`) has been idle past its timeout:
/// its own time is stale and so is its partner's (or the partner is gone or belongs to
/// another flow). A refresh writes the partner's time only now and then ([`advance`]), so
/// while one direction alone sends, the other entry's own time lags: the pair lives as long
/// as either entry is fresh. Costs a lookup only for a stale entry.
#[inline(always)]
pub fn flow_expired(
    table: Table,
    key: &FlowKey,
    entry: &FlowEntry,
    cfg: &GlobalConfig,
    now_ns: u64,
) -> bool {
    if !entry.is_expired(now_ns, cfg) {
        return false;
    }
    match table.get(&partner_key(entry)) {
        Some(p) => partner_key(p) != *key || p.is_expired(now_ns, cfg),
        None => true,
    }
}

/// Writes `entry`'s state and `last_seen_ns` into its partner. A missing partner (LRU
/// eviction) is re-inserted (`CT_PAIR_REPAIRED`); a partner key held by an expired other flow
/// is taken over (that flow's stale entries removed); one held by a live other flow, in this
/// map or in the other one (a reply key evicted from `LB_CONNTRACK` may have been reserved
/// by a new embryonic flow since), is a [`Pair::Conflict`] ([`partner_key_free`]).
#[inline(always)]
fn sync_partner(
    table: Table,
    key: &FlowKey,
    entry: &FlowEntry,
    cfg: &GlobalConfig,
    now_ns: u64,
) -> Pair {
    let pkey = partner_key(entry);
    if let Some(p) = table.get_ptr_mut(&pkey) {
        // SAFETY: map value pointer; concurrent updates are benign (last writer wins).
        let p = unsafe { &mut *p };
        if partner_key(p) == *key {
            p.state = entry.state;
            p.close_dir = entry.close_dir;
            if p.last_seen_ns != entry.last_seen_ns {
                p.last_seen_ns = entry.last_seen_ns;
                p.next_hop_max_len = 0;
            }
            return Pair::Ok;
        }
    }
    if !partner_key_free(&pkey, key, cfg, now_ns) {
        return Pair::Conflict;
    }
    // A copy of ours, or an expired flow's entry, in the other map: the key lives in one map.
    table.other().remove(&pkey);
    if table
        .insert(&pkey, &mirror(key, entry), BPF_ANY as u64)
        .is_ok()
    {
        stats::count(CT_PAIR_REPAIRED);
    }
    Pair::Ok
}

/// Removes the entry at `key` if its partner is `partner` (it belongs to that flow).
#[inline(always)]
fn remove_if_partner(table: Table, key: &FlowKey, partner: &FlowKey) {
    if let Some(e) = table.get(key) {
        if partner_key(e) == *partner {
            table.remove(key);
        }
    }
}

/// Releases both entries of the flow of `entry` (stored at `key`): its partner, if it still
/// belongs to this flow, and `key` itself.
#[inline(always)]
pub fn release(table: Table, key: &FlowKey, entry: &FlowEntry) {
    remove_if_partner(table, &partner_key(entry), key);
    table.remove(key);
}

/// True when the reply entry at `rkey` may be taken over by the new flow `own`: it vanished,
/// or it expired and its forward entry is gone, expired, no longer points to it, or is `own`.
/// Taking over removes that stale forward entry, so no forward entry is ever left pointing
/// at a port another flow holds.
///
/// A BPF-to-BPF call (not inlined): it runs only when a key is found taken (a new flow's
/// port candidate, a pair repair), and inlined at its ~26 call sites it pushed `lb_xdp`'s
/// stack past BPF's 512 bytes once every map operation had its own call site.
#[inline(never)]
fn take_over(table: Table, rkey: &FlowKey, own: &FlowKey, cfg: &GlobalConfig, now_ns: u64) -> bool {
    let Some(old) = table.get(rkey).copied() else {
        return true;
    };
    if !old.is_expired(now_ns, cfg) {
        return false;
    }
    let fkey = partner_key(&old);
    if fkey == *own {
        return true;
    }
    match table.get(&fkey).copied() {
        None => true,
        Some(f) if partner_key(&f) != *rkey => true,
        Some(f) if f.is_expired(now_ns, cfg) => {
            table.remove(&fkey);
            true
        }
        Some(_) => false,
    }
}

/// True when no live flow of `LB_CONNTRACK` holds the reply key `rkey`; an expired one that
/// may be taken over ([`take_over`]) is removed. A key the filter has never seen costs no
/// lookup ([`ct_filter::may_hold`]).
#[inline(always)]
fn free_in_main(rkey: &FlowKey, own: &FlowKey, cfg: &GlobalConfig, now_ns: u64) -> bool {
    if !ct_filter::may_hold(rkey) {
        return true;
    }
    // SAFETY: read-only presence check.
    if unsafe { LB_CONNTRACK.get(rkey) }.is_none() {
        return true;
    }
    if !take_over(Table::Main, rkey, own, cfg, now_ns) {
        return false;
    }
    let _ = LB_CONNTRACK.remove(rkey);
    true
}

/// Reserves a SNAT address and port for a new flow `key` (client -> VIP) to `backend`: picks
/// the SNAT address by hash and the first free SNAT port among `SNAT_PORT_ATTEMPTS` candidates
/// (free in `LB_CONNTRACK`, then inserted into `LB_CT_SYN` with `BPF_NOEXIST`, taking over
/// expired flows in either). Returns the forward entry to [`commit`] (without a next hop yet)
/// and the reply entry's key.
///
/// No cliff when the backend's pool runs short ([`search_start`]): a full search that finds no
/// free port makes the next `SNAT_FULL_HOLD_NS` of searches toward that backend try only
/// `SNAT_PORT_ATTEMPTS_SHORT` candidates; a short search that finds a port ends that early.
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
    let mut forward = FlowEntry {
        last_seen_ns: now_ns,
        new_src_addr_be: snat_addr,
        new_dst_addr_be: backend.addr_be,
        new_dst_port_be: backend.port_be,
        backend_id,
        service_id,
        ..FlowEntry::default()
    };
    // The search tries candidates `attempt - start` for `attempt` in `start..ATTEMPTS`: the
    // offset is folded into the base so no other value lives across the loop (the program's
    // stack is at its limit).
    let start = search_start(backend_id, now_ns);
    let port_base = snat_port_base(
        key.src_addr_be,
        key.src_port_be,
        cfg.hash_seed ^ SNAT_SEED_XOR,
    )
    .wrapping_sub(start);
    let mut attempt = start;
    while attempt < SNAT_PORT_ATTEMPTS {
        let port_be =
            snat_port_candidate(port_base, attempt, cfg.snat_port_min, cfg.snat_port_max).to_be();
        forward.new_src_port_be = port_be;
        let rkey = tcp_key(backend.addr_be, snat_addr, backend.port_be, port_be);
        let reply = mirror(key, &forward);
        if ablate::NO_REPLY_INSERT {
            return Ok((forward, rkey));
        }
        if ablate::NO_SNAT_PROBE {
            if LB_CT_SYN.insert(rkey, reply, BPF_ANY as u64).is_err() {
                return Err(AllocError::Full);
            }
            return Ok((forward, rkey));
        }
        let reserved = free_in_main(&rkey, key, cfg, now_ns)
            && match LB_CT_SYN.insert(rkey, reply, BPF_NOEXIST as u64) {
                Ok(()) => true,
                Err(e) if e == -EEXIST => {
                    if take_over(Table::Embryonic, &rkey, key, cfg, now_ns) {
                        if LB_CT_SYN.insert(rkey, reply, BPF_ANY as u64).is_err() {
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
            pool_not_full(backend_id, now_ns);
            return Ok((forward, rkey));
        }
        attempt += 1;
    }
    pool_full(backend_id, now_ns);
    Err(AllocError::SnatExhausted)
}

/// The first attempt of a new flow's SNAT port search toward `backend_id` at `now_ns`:
/// `SNAT_PORT_ATTEMPTS - SNAT_PORT_ATTEMPTS_SHORT` (a short search of the flow's first
/// `SNAT_PORT_ATTEMPTS_SHORT` candidates, counted `SNAT_SEARCH_SHORT`) while the backend's
/// `LB_SNAT_FULL` time lies ahead (a full search found its pool full less than
/// `SNAT_FULL_HOLD_NS` ago), 0 (a full search) otherwise. Without the cut, every SYN to a
/// full pool paid sixteen probes of `LB_CONNTRACK` (each a cache and TLB miss at the default
/// size) and was dropped anyway (docs/benchmarks.md, "SNAT pool use").
#[inline(always)]
fn search_start(backend_id: u32, now_ns: u64) -> u32 {
    if !short_window(backend_id, now_ns) {
        return 0;
    }
    stats::count(SNAT_SEARCH_SHORT);
    SNAT_PORT_ATTEMPTS - SNAT_PORT_ATTEMPTS_SHORT
}

/// True while backend `backend_id`'s `LB_SNAT_FULL` time lies ahead of `now_ns`.
#[inline(always)]
fn short_window(backend_id: u32, now_ns: u64) -> bool {
    if ablate::NO_SNAT_WINDOW {
        return false;
    }
    LB_SNAT_FULL
        .get(backend_id)
        .is_some_and(|until| now_ns < *until)
}

/// A search toward `backend_id` found no free port: a full one (no window open) opens the
/// backend's window of short searches (`SNAT_POOL_FULL`); a short one leaves it as it is.
#[inline(always)]
fn pool_full(backend_id: u32, now_ns: u64) {
    if ablate::NO_SNAT_WINDOW || short_window(backend_id, now_ns) {
        return;
    }
    stats::count(SNAT_POOL_FULL);
    if let Some(until) = LB_SNAT_FULL.get_ptr_mut(backend_id) {
        // SAFETY: map value pointer; concurrent writers store the same kind of value.
        unsafe { *until = now_ns.wrapping_add(SNAT_FULL_HOLD_NS) };
    }
}

/// A search toward `backend_id` found a free port: an open window (this was a short search)
/// ends, so the next search is a full one. No write when none is open.
#[inline(always)]
fn pool_not_full(backend_id: u32, now_ns: u64) {
    if !short_window(backend_id, now_ns) {
        return;
    }
    if let Some(until) = LB_SNAT_FULL.get_ptr_mut(backend_id) {
        // SAFETY: as in `pool_full`.
        unsafe { *until = 0 };
    }
}

/// Writes the forward entry of a new flow whose reply entry [`reserve`] inserted at `rkey`
/// (both in `LB_CT_SYN`); on failure the reservation is released (`DROP_CONNTRACK_FULL`).
#[inline(always)]
pub fn commit(key: &FlowKey, forward: &FlowEntry, rkey: &FlowKey) -> Result<(), AllocError> {
    if ablate::NO_FWD_INSERT {
        return Ok(());
    }
    if LB_CT_SYN.insert(key, forward, BPF_ANY as u64).is_err() {
        let _ = LB_CT_SYN.remove(rkey);
        return Err(AllocError::Full);
    }
    Ok(())
}
