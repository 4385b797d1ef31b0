//! The BPF maps of `lb_xdp`, exactly as `lb_common::maps` names and types them.
//!
//! Every map is declared pinnable by name: the loader pins them under
//! `<bpffs_root>/abi<ABI_VERSION>/` and re-adopts them on restart. Capacities here are the
//! object-file defaults; the loader overrides the configurable ones at load time.

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_COMMON_LRU},
    macros::map,
    maps::{Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use lb_common::{
    ct_filter_map_entries,
    decap::{DECAP_MAX_ADDRS, DECAP_MAX_SOURCES, DECAP_MAX_VIPS, DECAP_NUM_COUNTERS},
    dsr_flows_capacity, local_addrs_capacity,
    passive::BackendSuspect,
    BackendValue, CtFilterCtl, DsrEntry, FlowEntry, FlowKey, FlowStats, GlobalConfig, ServiceKey,
    ServiceValue, VipValue, CONFIG_ENTRIES, CONNTRACK_ENTRIES_PER_FLOW, DEFAULT_CONNTRACK_FLOWS,
    DEFAULT_MAGLEV_TABLE_SIZE, DEFAULT_MAX_BACKENDS, DEFAULT_MAX_SERVICES, EVENTS_RING_BYTES,
    MAX_SNAT_ADDRS, MAX_TX_PORTS, NUM_COUNTERS,
};

/// Services by (VIP, port, protocol): which Maglev table and stats slot a packet uses.
#[map]
pub static LB_SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::pinned(DEFAULT_MAX_SERVICES, 0);

/// Set of VIPs with their service counts: lbd's record; the program never reads it (it asks
/// `LB_LOCAL_ADDRS`), but declares it so the loader creates and pins it.
#[map]
pub static LB_VIPS: HashMap<u32, VipValue> = HashMap::pinned(DEFAULT_MAX_SERVICES, 0);

/// Every VIP and SNAT address, with `LOCAL_F_*` bits: one lookup decides whether a packet is
/// addressed to the balancer at all, before any conntrack lookup.
#[map]
pub static LB_LOCAL_ADDRS: HashMap<u32, u32> =
    HashMap::pinned(local_addrs_capacity(DEFAULT_MAX_SERVICES), 0);

/// Backends by id (id 0 = unset): address, port and `BACKEND_F_*` flags.
#[map]
pub static LB_BACKENDS: Array<BackendValue> = Array::pinned(DEFAULT_MAX_BACKENDS, 0);

/// All Maglev tables (two per service), slot -> backend id. Mmapable so user space can write a
/// whole table with memory stores instead of one syscall per slot.
#[map]
pub static LB_MAGLEV: Array<u32> = Array::pinned(
    DEFAULT_MAX_SERVICES * 2 * DEFAULT_MAGLEV_TABLE_SIZE,
    BPF_F_MMAPABLE,
);

/// Creation flags of the conntrack maps: none in the shipped build (one LRU list shared by
/// all CPUs); `BPF_F_NO_COMMON_LRU` in the `lru_percpu` ablation build.
const CT_FLAGS: u32 = if crate::ablate::LRU_PERCPU {
    BPF_F_NO_COMMON_LRU
} else {
    0
};

/// Connection tracking: forward (client -> VIP) and reply (backend -> SNAT) entries.
#[map]
pub static LB_CONNTRACK: LruHashMap<FlowKey, FlowEntry> = LruHashMap::pinned(
    DEFAULT_CONNTRACK_FLOWS * CONNTRACK_ENTRIES_PER_FLOW,
    CT_FLAGS,
);

/// Embryonic flows (handshake not completed), laid out like `LB_CONNTRACK`.
#[map]
pub static LB_CT_SYN: LruHashMap<FlowKey, FlowEntry> = LruHashMap::pinned(
    DEFAULT_CONNTRACK_FLOWS / 8 * CONNTRACK_ENTRIES_PER_FLOW,
    CT_FLAGS,
);

/// The key filter in front of `LB_CONNTRACK` (`crate::ct_filter`): both generations' bits.
/// Mmapable: lbd clears a generation and ORs in the keys its sweep saw with memory stores.
#[map]
pub static LB_CT_FILTER: Array<u64> = Array::pinned(
    ct_filter_map_entries(DEFAULT_CONNTRACK_FLOWS * CONNTRACK_ENTRIES_PER_FLOW),
    BPF_F_MMAPABLE,
);

/// The key filter's active generation and size (slot 0); all zero: the filter is off.
/// Mmapable: lbd switches the generation with a memory store.
#[map]
pub static LB_CT_FLT_CTL: Array<CtFilterCtl> = Array::pinned(1, BPF_F_MMAPABLE);

/// DSR flows: client -> VIP 5-tuple -> the backend the flow is pinned to (`crate::dsr`).
#[map]
pub static LB_CT_DSR: LruHashMap<FlowKey, DsrEntry> =
    LruHashMap::pinned(dsr_flows_capacity(DEFAULT_CONNTRACK_FLOWS), CT_FLAGS);

/// Global run-time settings in slot 0 (SNAT range, timeouts, hash seed).
#[map]
pub static LB_CONFIG: Array<GlobalConfig> = Array::pinned(CONFIG_ENTRIES, 0);

/// SNAT source addresses; the first `GlobalConfig::snat_addr_count` are valid.
#[map]
pub static LB_SNAT_ADDRS: Array<u32> = Array::pinned(MAX_SNAT_ADDRS, 0);

/// Interfaces lb may redirect to, keyed by ifindex.
#[map]
pub static LB_TX_PORTS: DevMapHash = DevMapHash::pinned(MAX_TX_PORTS, 0);

/// Global per-CPU verdict and event counters (`lb_common::counters`).
#[map]
pub static LB_STATS: PerCpuArray<u64> = PerCpuArray::pinned(NUM_COUNTERS, 0);

/// Per-CPU packet, byte and flow counters per service id.
#[map]
pub static LB_SVC_STATS: PerCpuArray<FlowStats> = PerCpuArray::pinned(DEFAULT_MAX_SERVICES, 0);

/// Per-CPU packet, byte and flow counters per backend id.
#[map]
pub static LB_BE_STATS: PerCpuArray<FlowStats> = PerCpuArray::pinned(DEFAULT_MAX_BACKENDS, 0);

/// Passive-detection suspicion per backend id (`lb_common::passive`): raised here, read by
/// the selection of new flows, cleared by lbd.
#[map]
pub static LB_BE_SUSPECT: Array<BackendSuspect> = Array::pinned(DEFAULT_MAX_BACKENDS, 0);

/// Passive-detection events for lbd (`lb_common::passive::PassiveEvent`).
#[map]
pub static LB_EVENTS: RingBuf = RingBuf::pinned(EVENTS_RING_BYTES, 0);

/// `lb_decap`'s decapsulation addresses (`lb_common::decap`); `lb_xdp` never reads it.
#[map]
pub static LB_DECAP_ADDRS: HashMap<u32, u32> = HashMap::with_max_entries(DECAP_MAX_ADDRS, 0);

/// `lb_decap`'s allowed outer sources, as prefixes (`lb_common::decap`).
#[map]
pub static LB_DECAP_SRCS: LpmTrie<u32, u32> = LpmTrie::with_max_entries(DECAP_MAX_SOURCES, 0);

/// `lb_decap`'s allowed inner destinations, the VIPs (`lb_common::decap`).
#[map]
pub static LB_DECAP_VIPS: HashMap<u32, u32> = HashMap::with_max_entries(DECAP_MAX_VIPS, 0);

/// `lb_decap`'s per-CPU counters (`lb_common::decap`).
#[map]
pub static LB_DECAP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DECAP_NUM_COUNTERS, 0);

/// Per backend id: until when (coarse-clock ns) new flows to it search only
/// `SNAT_PORT_ATTEMPTS_SHORT` SNAT port candidates (a full search found its pool full).
#[map]
pub static LB_SNAT_FULL: Array<u64> = Array::pinned(DEFAULT_MAX_BACKENDS, 0);

/// Compile-time string equality (the map symbols must be the lb-common names).
const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

const _: () = {
    assert!(same(lb_common::MAP_SERVICES, "LB_SERVICES"));
    assert!(same(lb_common::MAP_VIPS, "LB_VIPS"));
    assert!(same(lb_common::MAP_LOCAL_ADDRS, "LB_LOCAL_ADDRS"));
    assert!(same(lb_common::MAP_BACKENDS, "LB_BACKENDS"));
    assert!(same(lb_common::MAP_MAGLEV, "LB_MAGLEV"));
    assert!(same(lb_common::MAP_CONNTRACK, "LB_CONNTRACK"));
    assert!(same(lb_common::MAP_CT_SYN, "LB_CT_SYN"));
    assert!(same(lb_common::MAP_CT_DSR, "LB_CT_DSR"));
    assert!(same(lb_common::MAP_CONFIG, "LB_CONFIG"));
    assert!(same(lb_common::MAP_SNAT_ADDRS, "LB_SNAT_ADDRS"));
    assert!(same(lb_common::MAP_TX_PORTS, "LB_TX_PORTS"));
    assert!(same(lb_common::MAP_STATS, "LB_STATS"));
    assert!(same(lb_common::MAP_SERVICE_STATS, "LB_SVC_STATS"));
    assert!(same(lb_common::MAP_BACKEND_STATS, "LB_BE_STATS"));
    assert!(same(lb_common::MAP_BACKEND_SUSPECT, "LB_BE_SUSPECT"));
    assert!(same(lb_common::MAP_EVENTS, "LB_EVENTS"));
    assert!(same(lb_common::decap::MAP_DECAP_ADDRS, "LB_DECAP_ADDRS"));
    assert!(same(lb_common::decap::MAP_DECAP_STATS, "LB_DECAP_STATS"));
    assert!(same(lb_common::decap::MAP_DECAP_SOURCES, "LB_DECAP_SRCS"));
    assert!(same(lb_common::decap::MAP_DECAP_VIPS, "LB_DECAP_VIPS"));
    assert!(same(lb_common::MAP_SNAT_FULL, "LB_SNAT_FULL"));
};
