//! Map names, default capacities, and the key/value layouts of every BPF map.
//!
//! | map | type | key | value | writer |
//! |---|---|---|---|---|
//! | [`MAP_SERVICES`] | hash | [`ServiceKey`] | [`ServiceValue`] | lbd |
//! | [`MAP_VIPS`] | hash | `u32` VIP (`_be`) | [`VipValue`] | lbd |
//! | [`MAP_LOCAL_ADDRS`] | hash | `u32` address (`_be`) | `u32` `LOCAL_F_*` bits | lbd |
//! | [`MAP_BACKENDS`] | array | `u32` backend id | [`BackendValue`] | lbd |
//! | [`MAP_MAGLEV`] | array | `u32` slot | `u32` backend id | lbd |
//! | [`MAP_CONNTRACK`] | LRU hash | [`FlowKey`] | [`FlowEntry`] | XDP (lbd deletes expired) |
//! | [`MAP_CT_SYN`] | LRU hash | [`FlowKey`] | [`FlowEntry`] | XDP (lbd deletes expired) |
//! | [`MAP_CT_DSR`] | LRU hash | [`FlowKey`] | [`DsrEntry`] | XDP (lbd deletes expired) |
//! | [`MAP_CONFIG`] | array (1) | `u32` 0 | [`GlobalConfig`] | lbd |
//! | [`MAP_SNAT_ADDRS`] | array | `u32` index | `u32` address (`_be`) | lbd |
//! | [`MAP_TX_PORTS`] | devmap hash | `u32` ifindex | `u32` ifindex | lbd |
//! | [`MAP_STATS`] | per-CPU array | `u32` [`crate::counters`] index | `u64` | XDP |
//! | [`MAP_SERVICE_STATS`] | per-CPU array | `u32` service id | [`FlowStats`] | XDP |
//! | [`MAP_BACKEND_STATS`] | per-CPU array | `u32` backend id | [`FlowStats`] | XDP |
//! | [`MAP_BACKEND_SUSPECT`] | array | `u32` backend id | [`crate::passive::BackendSuspect`] | XDP raises, lbd clears |
//! | [`MAP_EVENTS`] | ring buffer | - | [`crate::passive::PassiveEvent`] records | XDP (lbd reads) |
//! | [`MAP_SNAT_FULL`] | array | `u32` backend id | `u64` coarse-clock ns | XDP |
//! | [`crate::ct_filter::MAP_CT_FILTER`] | array, mmapable | `u32` word | `u64` bits | every writer of [`MAP_CONNTRACK`] sets, lbd clears |
//! | [`crate::ct_filter::MAP_CT_FILTER_CTL`] | array (1) | `u32` 0 | [`crate::ct_filter::CtFilterCtl`] | lbd |
//!
//! Capacities marked "default" are set by lbd at load time from the configuration
//! (`aya::EbpfLoader::set_max_entries`); the values here are what the object file declares.

// ---------------------------------------------------------------------------------------------
// Map names (symbol names in the object file; also the file names under the pin directory).
// The kernel keeps at most 15 characters of a map name, so every name fits in 15.
// ---------------------------------------------------------------------------------------------

/// Services by (VIP, port, protocol).
pub const MAP_SERVICES: &str = "LB_SERVICES";
/// The set of VIPs with the number of services on each: lbd's record (read back on restart
/// and rollback). The data plane asks [`MAP_LOCAL_ADDRS`] instead.
pub const MAP_VIPS: &str = "LB_VIPS";
/// Every address lb answers for: the VIPs ([`LOCAL_F_VIP`]) and the SNAT addresses
/// ([`LOCAL_F_SNAT`]). The data plane's first lookup of an IPv4 packet: a packet to any other
/// address is passed (`PASS_NOT_SERVICE`) without a conntrack lookup. lbd keeps it in step
/// with [`MAP_VIPS`] and [`MAP_SNAT_ADDRS`] (the bit is set before the address is written
/// there and cleared after it is removed there).
pub const MAP_LOCAL_ADDRS: &str = "LB_LOCAL_ADDRS";
/// Backends by id. Id 0 is the "unset" sentinel and is never allocated.
pub const MAP_BACKENDS: &str = "LB_BACKENDS";
/// All Maglev lookup tables, two per service (double buffering), each `table_size` long.
pub const MAP_MAGLEV: &str = "LB_MAGLEV";
/// Connection tracking: two entries per flow (client->VIP and backend->SNAT), for flows past
/// their handshake.
pub const MAP_CONNTRACK: &str = "LB_CONNTRACK";
/// Embryonic flows (SYN_SENT, SYN_RECV), laid out like [`MAP_CONNTRACK`]: a SYN flood evicts
/// only other embryonic flows. A flow moves to [`MAP_CONNTRACK`] when its handshake completes.
pub const MAP_CT_SYN: &str = "LB_CT_SYN";
/// DSR flows ([`FORWARDING_DSR`]): one entry per flow, keyed by the client -> VIP 5-tuple,
/// pinning the flow to the backend it started on ([`DsrEntry`]), so a Maglev table change
/// moves no open DSR flow. Separate from [`MAP_CONNTRACK`] and [`MAP_CT_SYN`]: the full-NAT
/// pair invariant, sweep and SYN-flood split are untouched.
pub const MAP_CT_DSR: &str = "LB_CT_DSR";
/// Global settings ([`GlobalConfig`]) in slot 0.
pub const MAP_CONFIG: &str = "LB_CONFIG";
/// SNAT source addresses on the private side; `GlobalConfig::snat_addr_count` are valid.
pub const MAP_SNAT_ADDRS: &str = "LB_SNAT_ADDRS";
/// Redirect targets: every interface lb forwards out of, keyed by ifindex.
pub const MAP_TX_PORTS: &str = "LB_TX_PORTS";
/// Global per-CPU counters indexed by [`crate::counters`].
pub const MAP_STATS: &str = "LB_STATS";
/// Per-CPU [`FlowStats`] per service id.
pub const MAP_SERVICE_STATS: &str = "LB_SVC_STATS";
/// Per-CPU [`FlowStats`] per backend id.
pub const MAP_BACKEND_STATS: &str = "LB_BE_STATS";
/// Passive-detection suspicion per backend id ([`crate::passive`]): raised by the data plane,
/// consulted by the selection of new flows, cleared by lbd (or expiring by itself).
pub const MAP_BACKEND_SUSPECT: &str = "LB_BE_SUSPECT";
/// Ring buffer of [`crate::passive::PassiveEvent`] records, read by lbd.
pub const MAP_EVENTS: &str = "LB_EVENTS";
/// Per backend id: until when (coarse-clock ns, `bpf_ktime_get_coarse_ns`) a new flow's SNAT
/// port search tries only [`SNAT_PORT_ATTEMPTS_SHORT`] candidates, because a full search
/// toward that backend found no free port (0: never). Written by the data plane alone: set
/// by a failed full search, cleared by a short search that finds a port.
pub const MAP_SNAT_FULL: &str = "LB_SNAT_FULL";
/// Size in bytes of [`MAP_EVENTS`] (a power-of-two multiple of the page size): room for
/// about 2000 events, far more than one failure episode raises (one per suspicion).
pub const EVENTS_RING_BYTES: u32 = 64 * 1024;

/// Every map name, in a stable order (used for pinning and re-adoption).
pub const ALL_MAPS: [&str; 19] = [
    MAP_SERVICES,
    MAP_VIPS,
    MAP_LOCAL_ADDRS,
    MAP_BACKENDS,
    MAP_MAGLEV,
    MAP_CONNTRACK,
    MAP_CT_SYN,
    MAP_CT_DSR,
    MAP_CONFIG,
    MAP_SNAT_ADDRS,
    MAP_TX_PORTS,
    MAP_STATS,
    MAP_SERVICE_STATS,
    MAP_BACKEND_STATS,
    MAP_BACKEND_SUSPECT,
    MAP_EVENTS,
    MAP_SNAT_FULL,
    crate::ct_filter::MAP_CT_FILTER,
    crate::ct_filter::MAP_CT_FILTER_CTL,
];

// ---------------------------------------------------------------------------------------------
// Capacities.
// ---------------------------------------------------------------------------------------------

/// Default number of services (ids 0..N). Each costs two Maglev tables.
pub const DEFAULT_MAX_SERVICES: u32 = 64;
/// Default number of backend ids (id 0 is reserved, so N-1 usable).
pub const DEFAULT_MAX_BACKENDS: u32 = 4096;
/// Default Maglev table size: a prime >= 65537 as the Maglev paper recommends (M >> 100 N).
pub const DEFAULT_MAGLEV_TABLE_SIZE: u32 = 65537;
/// Default number of tracked flows; the conntrack map holds two entries per flow.
pub const DEFAULT_CONNTRACK_FLOWS: u32 = 1 << 20;
/// Default number of embryonic flows for `conntrack_flows` tracked flows: an eighth, at least
/// 1024 and at most 2^20 (a SYN flood fills only this map).
pub const fn default_embryonic_flows(conntrack_flows: u32) -> u32 {
    let n = conntrack_flows / 8;
    if n < 1024 {
        1024
    } else if n > 1 << 20 {
        1 << 20
    } else {
        n
    }
}
/// Entries in the conntrack map per tracked flow.
pub const CONNTRACK_ENTRIES_PER_FLOW: u32 = 2;
/// Capacity of [`MAP_CT_DSR`] for `conntrack_flows` tracked flows: one entry per DSR flow,
/// so the same number of DSR flows as full-NAT flows (each of those takes two entries of
/// [`MAP_CONNTRACK`]); a DSR entry is 24 bytes against two 56-byte NAT entries.
pub const fn dsr_flows_capacity(conntrack_flows: u32) -> u32 {
    conntrack_flows
}
/// Maximum number of SNAT addresses.
pub const MAX_SNAT_ADDRS: u32 = 16;
/// Capacity of [`MAP_LOCAL_ADDRS`]: one VIP per service plus every SNAT address, twice, since
/// lbd adds new addresses before it removes old ones (a reload replacing every SNAT address or
/// every VIP holds both sets for a moment).
pub const fn local_addrs_capacity(max_services: u32) -> u32 {
    2 * (max_services + MAX_SNAT_ADDRS)
}
/// Maximum number of interfaces in the redirect map.
pub const MAX_TX_PORTS: u32 = 64;
/// Entries in the config map.
pub const CONFIG_ENTRIES: u32 = 1;
/// Attempts at finding a free SNAT port for a new flow before giving up (verdict
/// `DROP_SNAT_EXHAUSTED`). Each attempt is a lookup of the candidate's reply key in
/// [`MAP_CONNTRACK`] and an insert into [`MAP_CT_SYN`].
pub const SNAT_PORT_ATTEMPTS: u32 = 16;
/// Candidates a new flow's SNAT port search tries while its backend's pool is known to be
/// full ([`MAP_SNAT_FULL`]): the first two of the flow's [`SNAT_PORT_ATTEMPTS`]. Bounds what a
/// SYN that finds no port costs (two probes instead of sixteen) while still finding a port
/// freed since; finding one ends the short searches.
pub const SNAT_PORT_ATTEMPTS_SHORT: u32 = 2;
/// How long after a full SNAT port search toward a backend found no free port the new flows
/// to it search only [`SNAT_PORT_ATTEMPTS_SHORT`] candidates (unless one finds a port first,
/// which ends the window; CPUs racing before the slot is written may each search fully).
pub const SNAT_FULL_HOLD_NS: u64 = 100_000_000;

/// Default SNAT port range (inclusive). Kept below the kernel's default ephemeral range
/// (32768-60999) so lbd's own health-check connections never collide with SNAT flows.
pub const DEFAULT_SNAT_PORT_MIN: u16 = 1024;
pub const DEFAULT_SNAT_PORT_MAX: u16 = 32767;

const SEC: u64 = 1_000_000_000;

/// Default idle timeout of each TCP state ([`crate::tcp_state`]), indexed by state.
///
/// ESTABLISHED (7440 s) outlasts Linux's default keepalive time (7200 s), so a keepalive probe
/// refreshes an idle flow before it expires. TIME_WAIT (60 s) is the backends' own TIME_WAIT
/// length: holding the SNAT port longer (nf_conntrack uses 120 s) would halve the SNAT
/// capacity for short connections and protect nothing the backend still remembers.
pub const DEFAULT_TCP_TIMEOUTS_NS: [u64; crate::tcp_state::NUM_STATES] = [
    30 * SEC,   // SYN_SENT
    60 * SEC,   // SYN_RECV
    7440 * SEC, // ESTABLISHED
    120 * SEC,  // FIN_WAIT
    120 * SEC,  // CLOSE_WAIT
    30 * SEC,   // LAST_ACK
    60 * SEC,   // TIME_WAIT
    10 * SEC,   // CLOSE
];

/// Backend id meaning "no backend" (Maglev slots of a service with no usable backend).
pub const BACKEND_ID_NONE: u32 = 0;

// ---------------------------------------------------------------------------------------------
// Layouts.
// ---------------------------------------------------------------------------------------------

/// Key of [`MAP_SERVICES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    pub vip_be: u32,
    pub port_be: u16,
    /// IP protocol number ([`crate::IPPROTO_TCP`]).
    pub proto: u8,
    pub _pad: u8,
}

/// The service has no usable backend: new connections are refused with a TCP RST.
pub const SERVICE_F_NO_BACKEND: u32 = 1 << 0;

/// Value of [`MAP_SERVICES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceValue {
    /// Index into the per-service stats map; also selects the service's Maglev tables.
    pub service_id: u32,
    /// Index in [`MAP_MAGLEV`] of slot 0 of the active table. lbd fills the inactive table
    /// completely, then switches this field with one map update (make-before-break).
    pub table_offset: u32,
    /// Length of the active table (a prime).
    pub table_size: u32,
    /// `SERVICE_F_*` bits.
    pub flags: u32,
    /// How packets of the service reach their backend: [`FORWARDING_NAT`] (0, full NAT with
    /// connection tracking) or [`FORWARDING_DSR`] (IPIP encapsulation, the backend answers the
    /// client directly).
    pub forwarding: u32,
    /// With [`FORWARDING_DSR`]: source address of the outer IPv4 header (this node's address
    /// toward the backends). 0 with [`FORWARDING_NAT`].
    pub dsr_src_be: u32,
}

/// [`ServiceValue::forwarding`]: full NAT (SNAT + DNAT, both directions through lb). The
/// default: an all-zero value is a full-NAT service.
pub const FORWARDING_NAT: u32 = 0;
/// [`ServiceValue::forwarding`]: direct server return. The client's packet is encapsulated
/// unchanged in an outer IPv4 header (IPIP) toward the backend, chosen by Maglev when the flow
/// starts and then pinned in [`MAP_CT_DSR`]; the backend decapsulates and answers the client
/// directly.
pub const FORWARDING_DSR: u32 = 1;

/// Offset in [`MAP_MAGLEV`] of table `slot` (0 or 1) of a service.
#[inline(always)]
pub const fn maglev_table_offset(service_id: u32, slot: u32, table_size: u32) -> u32 {
    (service_id * 2 + slot) * table_size
}

/// Value of [`MAP_VIPS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipValue {
    /// Number of services on this VIP (informational; the entry exists while > 0).
    pub service_count: u32,
    pub flags: u32,
}

/// [`MAP_LOCAL_ADDRS`] value bit: the address is a VIP (it has an entry in [`MAP_VIPS`]).
pub const LOCAL_F_VIP: u32 = 1 << 0;
/// [`MAP_LOCAL_ADDRS`] value bit: the address is a SNAT address (in [`MAP_SNAT_ADDRS`]).
pub const LOCAL_F_SNAT: u32 = 1 << 1;
/// [`MAP_LOCAL_ADDRS`] value bit, with [`LOCAL_F_VIP`]: every service on this VIP is a DSR
/// service (lbd sets it from [`VIP_F_DSR_ONLY`]). A TCP packet to it skips the two full-NAT
/// conntrack lookups and goes straight to its service; a full-NAT service found there anyway
/// (lbd adding one before the bit is cleared) takes the usual path, so a stale bit never
/// breaks a full-NAT service. After a VIP's last full-NAT service is gone (switched to DSR or
/// removed), lbd sets the bit only once a conntrack sweep found no live full-NAT flow to a port
/// of the VIP that still has a service, so the open flows of a service switched to DSR keep
/// their conntrack lookups until they end (docs/architecture.md, step 3).
pub const LOCAL_F_DSR_ONLY: u32 = 1 << 2;
/// [`VipValue::flags`] bit: every service on this VIP is a DSR service and no full-NAT flow to
/// one of them is open (as of the last conntrack sweep); lbd mirrors it into
/// [`MAP_LOCAL_ADDRS`] as [`LOCAL_F_DSR_ONLY`].
pub const VIP_F_DSR_ONLY: u32 = 1 << 0;

/// The backend failed its health check or was removed as failed: flows pinned to it by
/// conntrack are re-balanced instead of forwarded to it.
pub const BACKEND_F_DOWN: u32 = 1 << 0;
/// The backend is draining: informational for the data plane (a draining backend is absent
/// from the Maglev table but keeps its conntrack flows).
pub const BACKEND_F_DRAINING: u32 = 1 << 1;
/// Flows pinned to this backend are ended with a TCP RST toward both ends instead of being
/// forwarded (`on_backend_down: reset`, or a database member demoted from primary). Set
/// together with [`BACKEND_F_DOWN`] by lbd.
pub const BACKEND_F_RESET: u32 = 1 << 2;

/// Value of [`MAP_BACKENDS`], indexed by backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendValue {
    pub addr_be: u32,
    pub port_be: u16,
    pub _pad: u16,
    /// `BACKEND_F_*` bits.
    pub flags: u32,
    /// Service this backend belongs to.
    pub service_id: u32,
}

/// Key of [`MAP_CONNTRACK`]: the packet's 5-tuple as it arrives at the balancer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src_addr_be: u32,
    pub dst_addr_be: u32,
    pub src_port_be: u16,
    pub dst_port_be: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// This entry is the reply direction (backend -> SNAT address).
pub const FLOW_F_REPLY: u32 = 1 << 0;

/// Value of [`MAP_CONNTRACK`]: how to rewrite and where to send packets of this direction of
/// a flow.
///
/// For the forward entry (client -> VIP) the rewrite is `src = SNAT addr:port`,
/// `dst = backend addr:port`; for the reply entry (backend -> SNAT) it is `src = VIP:port`,
/// `dst = client addr:port`. The `next_hop_*` fields cache the FIB answer for the rewritten
/// destination so established packets skip `bpf_fib_lookup`; the data plane fills them and
/// drops them at every `last_seen_ns` refresh. User space writing an entry sets them to zero.
/// While a flow is in SYN_SENT its reply entry's cache is empty (nothing goes to the client
/// before the SYN-ACK) and holds the client's SYN instead, marked by `syn_opts`
/// ([`crate::retry`]; the first FIB answer stored there clears the mark).
///
/// Both entries of a flow carry the same `state` and `close_dir`: the data plane writes both
/// whenever the state changes. `last_seen_ns` is each entry's own: a packet refreshes its own
/// entry (at most every [`FLOW_TOUCH_INTERVAL_NS`]) and writes the time into the partner only
/// on a state change and on every [`PARTNER_SYNC_REFRESHES`]-th refresh, so a flow is idle
/// only when both entries are ([`FlowEntry::is_expired`] is one entry's view; the data plane
/// and lbd's sweep consult the partner before treating a stale entry as expired). The pair
/// invariant of docs/maps.md.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEntry {
    /// `bpf_ktime_get_coarse_ns()` of the last packet of the flow, either direction
    /// (refreshed at most every [`FLOW_TOUCH_INTERVAL_NS`] to spare the cache line).
    pub last_seen_ns: u64,
    pub new_src_addr_be: u32,
    pub new_dst_addr_be: u32,
    pub new_src_port_be: u16,
    pub new_dst_port_be: u16,
    pub backend_id: u32,
    pub service_id: u32,
    /// `FLOW_F_*` bits.
    pub flags: u32,
    /// Cached next hop of the rewritten packets (the answer of the last successful
    /// `bpf_fib_lookup`): egress interface index.
    pub next_hop_ifindex: u32,
    /// Largest IPv4 total length the cached next hop was validated for (the FIB lookup checks
    /// the route's MTU against it); 0 = no cached next hop, look it up. Larger packets take a
    /// fresh lookup, so an MTU violation is still detected.
    pub next_hop_max_len: u16,
    /// Destination MAC of the cached next hop (the neighbour's).
    pub next_hop_dst_mac: [u8; 6],
    /// Source MAC of the cached next hop (the egress interface's).
    pub next_hop_src_mac: [u8; 6],
    /// TCP state of the flow ([`crate::tcp_state`]); also the index of its idle timeout.
    pub state: u8,
    /// Direction of the first FIN ([`crate::tcp_state::DIR_ORIG`] or `DIR_REPLY`); meaningful
    /// from FIN_WAIT on.
    pub close_dir: u8,
    /// Time refreshes of this entry since it last synced its partner (the data plane's
    /// [`PARTNER_SYNC_REFRESHES`] rule); 0 for a new entry.
    pub refreshes: u8,
    /// `SYN_OPT_*` bits ([`crate::retry`]): non-zero only on the reply entry of a flow whose
    /// client SYN is kept for an in-XDP retry; the `next_hop_*` fields then hold the SYN
    /// ([`crate::retry::SynSaved`]) instead of a next hop. 0 on every other entry.
    pub syn_opts: u8,
    pub _pad: [u8; 2],
}

/// Minimum interval between `last_seen_ns` refreshes of a conntrack entry. Each refresh also
/// drops the entry's cached next hop, so route and neighbour changes reach established flows
/// within about this interval.
pub const FLOW_TOUCH_INTERVAL_NS: u64 = 1_000_000_000;

/// Every this many time refreshes of an entry (without a state change) the refresh also
/// checks its partner entry (the pair invariant: repaired when missing, the flow ended when
/// its key belongs to another flow) and writes the time into it. The other refreshes write
/// only the packet's own entry: the partner of a flow with a packet a second or less often
/// is usually not in the cache, and its lookup was most of a refresh's cost.
pub const PARTNER_SYNC_REFRESHES: u8 = 4;

impl FlowEntry {
    /// Idle timeout that applies to this entry under `cfg`.
    #[inline(always)]
    pub fn timeout_ns(&self, cfg: &GlobalConfig) -> u64 {
        cfg.tcp_timeouts_ns[(self.state & 7) as usize]
    }

    /// True when the entry has been idle longer than its timeout at time `now_ns`.
    #[inline(always)]
    pub fn is_expired(&self, now_ns: u64, cfg: &GlobalConfig) -> bool {
        now_ns.saturating_sub(self.last_seen_ns) > self.timeout_ns(cfg)
    }
}

/// [`DsrEntry::flags`]: the client sent a FIN on this flow (the flow is closing: its entry
/// lives [`crate::tcp_state::FIN_WAIT`]'s timeout after its last packet, as IPVS's `tcpfin`:
/// the backend may still be sending after the client's half-close, and the client's ACKs keep
/// refreshing it; a SYN opens a new connection).
pub const DSR_F_FIN: u32 = 1 << 0;
/// [`DsrEntry::flags`]: the client sent a RST on this flow (closed: [`crate::tcp_state::CLOSE`]'s
/// timeout, and a SYN opens a new connection).
pub const DSR_F_RST: u32 = 1 << 1;

/// Value of [`MAP_CT_DSR`]: the backend a DSR flow is pinned to.
///
/// lb sees only the client's side of a DSR flow, so there is no TCP state machine: the entry
/// records the backend (id and address: ids are reused by lbd, so a hit whose
/// `LB_BACKENDS[backend_id]` no longer holds `backend_addr_be` re-picks), when the flow last
/// sent a packet and whether the client sent a FIN or RST. It is live for the ESTABLISHED
/// timeout after the last packet, the FIN_WAIT timeout once a FIN was seen, the CLOSE
/// timeout once a RST was seen ([`DsrEntry::timeout_ns`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DsrEntry {
    /// `bpf_ktime_get_coarse_ns()` of the flow's last packet (refreshed at most every
    /// [`FLOW_TOUCH_INTERVAL_NS`]).
    pub last_seen_ns: u64,
    pub backend_id: u32,
    /// The backend's address when the entry was written (`LB_BACKENDS[backend_id].addr_be`).
    pub backend_addr_be: u32,
    /// `DSR_F_*` bits.
    pub flags: u32,
    /// Service id (for the flow counts of lbd's sweep).
    pub service_id: u32,
}

impl DsrEntry {
    /// True once the client sent a FIN or a RST.
    #[inline(always)]
    pub fn closing(&self) -> bool {
        self.flags & (DSR_F_FIN | DSR_F_RST) != 0
    }

    /// Idle timeout of this entry under `cfg`: ESTABLISHED's, FIN_WAIT's once a FIN was
    /// seen, CLOSE's once a RST was seen.
    #[inline(always)]
    pub fn timeout_ns(&self, cfg: &GlobalConfig) -> u64 {
        let state = if self.flags & DSR_F_RST != 0 {
            crate::tcp_state::CLOSE
        } else if self.flags & DSR_F_FIN != 0 {
            crate::tcp_state::FIN_WAIT
        } else {
            crate::tcp_state::ESTABLISHED
        };
        cfg.tcp_timeouts_ns[(state & 7) as usize]
    }

    /// True when the entry has been idle longer than its timeout at time `now_ns`.
    #[inline(always)]
    pub fn is_expired(&self, now_ns: u64, cfg: &GlobalConfig) -> bool {
        now_ns.saturating_sub(self.last_seen_ns) > self.timeout_ns(cfg)
    }
}

/// Value of [`MAP_CONFIG`] slot 0: settings the control plane can change at run time.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GlobalConfig {
    /// Inclusive SNAT port range, host order.
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    /// Number of valid entries in [`MAP_SNAT_ADDRS`] (0 = no SNAT address: new flows are
    /// dropped with `DROP_SNAT_EXHAUSTED`).
    pub snat_addr_count: u32,
    /// Idle timeout of a flow in each TCP state ([`crate::tcp_state`]), indexed by state.
    pub tcp_timeouts_ns: [u64; crate::tcp_state::NUM_STATES],
    /// Seed of the flow hash ([`crate::hash::flow_hash`]).
    pub hash_seed: u32,
    pub flags: u32,
}

impl Default for GlobalConfig {
    fn default() -> Self {
        Self {
            snat_port_min: DEFAULT_SNAT_PORT_MIN,
            snat_port_max: DEFAULT_SNAT_PORT_MAX,
            snat_addr_count: 0,
            tcp_timeouts_ns: DEFAULT_TCP_TIMEOUTS_NS,
            hash_seed: 0x5eed_1b01,
            flags: 0,
        }
    }
}

/// Value of [`MAP_SERVICE_STATS`] and [`MAP_BACKEND_STATS`] (per CPU; user space sums).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Packets and bytes (whole frames) forwarded client -> backend.
    pub packets_in: u64,
    pub bytes_in: u64,
    /// Packets and bytes forwarded backend -> client.
    pub packets_out: u64,
    pub bytes_out: u64,
    /// New flows (conntrack entries created).
    pub new_flows: u64,
    /// SYNs refused with a RST because no backend was usable (service stats only).
    pub refused: u64,
}

impl FlowStats {
    /// Adds `other` into `self` (summing per-CPU values).
    pub fn accumulate(&mut self, other: &FlowStats) {
        self.packets_in += other.packets_in;
        self.bytes_in += other.bytes_in;
        self.packets_out += other.packets_out;
        self.bytes_out += other.bytes_out;
        self.new_flows += other.new_flows;
        self.refused += other.refused;
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C), Copy, with explicit padding and no invalid bit patterns.
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for VipValue {}
    unsafe impl aya::Pod for BackendValue {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowEntry {}
    unsafe impl aya::Pod for DsrEntry {}
    unsafe impl aya::Pod for GlobalConfig {}
    unsafe impl aya::Pod for FlowStats {}
}

const _: () = {
    use core::mem::{align_of, size_of};
    assert!(size_of::<ServiceKey>() == 8);
    assert!(size_of::<ServiceValue>() == 24);
    assert!(size_of::<VipValue>() == 8);
    assert!(size_of::<BackendValue>() == 16);
    assert!(size_of::<FlowKey>() == 16);
    assert!(size_of::<FlowEntry>() == 56);
    assert!(align_of::<FlowEntry>() == 8);
    assert!(size_of::<DsrEntry>() == 24);
    assert!(size_of::<GlobalConfig>() == 80);
    assert!(size_of::<FlowStats>() == 48);
};

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn map_names_fit_the_kernel_limit() {
        for name in ALL_MAPS {
            assert!(name.len() <= 15, "{name} is longer than 15 characters");
        }
    }

    #[test]
    fn field_offsets_are_stable() {
        assert_eq!(offset_of!(ServiceKey, port_be), 4);
        assert_eq!(offset_of!(ServiceKey, proto), 6);
        assert_eq!(offset_of!(ServiceValue, forwarding), 16);
        assert_eq!(offset_of!(ServiceValue, dsr_src_be), 20);
        assert_eq!(offset_of!(FlowKey, src_port_be), 8);
        assert_eq!(offset_of!(FlowKey, proto), 12);
        assert_eq!(offset_of!(FlowEntry, new_src_addr_be), 8);
        assert_eq!(offset_of!(FlowEntry, backend_id), 20);
        assert_eq!(offset_of!(FlowEntry, flags), 28);
        assert_eq!(offset_of!(FlowEntry, next_hop_ifindex), 32);
        assert_eq!(offset_of!(FlowEntry, next_hop_max_len), 36);
        assert_eq!(offset_of!(FlowEntry, next_hop_dst_mac), 38);
        assert_eq!(offset_of!(FlowEntry, next_hop_src_mac), 44);
        assert_eq!(offset_of!(FlowEntry, state), 50);
        assert_eq!(offset_of!(FlowEntry, close_dir), 51);
        assert_eq!(offset_of!(FlowEntry, refreshes), 52);
        assert_eq!(offset_of!(FlowEntry, syn_opts), 53);
        assert_eq!(offset_of!(GlobalConfig, tcp_timeouts_ns), 8);
        assert_eq!(offset_of!(GlobalConfig, hash_seed), 72);
        assert_eq!(offset_of!(BackendValue, flags), 8);
    }

    #[test]
    fn expiry_follows_state() {
        use crate::tcp_state::*;
        let mut cfg = GlobalConfig::default();
        for (i, t) in cfg.tcp_timeouts_ns.iter_mut().enumerate() {
            *t = (i as u64 + 1) * 1_000;
        }
        let mut e = FlowEntry {
            last_seen_ns: 1_000,
            ..Default::default()
        };
        for state in 0..NUM_STATES as u8 {
            e.state = state;
            let t = (state as u64 + 1) * 1_000;
            assert_eq!(e.timeout_ns(&cfg), t);
            assert!(!e.is_expired(1_000 + t, &cfg), "{state}");
            assert!(e.is_expired(1_001 + t, &cfg), "{state}");
        }
        // The reply flag does not change the timeout: both entries share the state.
        e.state = ESTABLISHED;
        e.flags = FLOW_F_REPLY;
        assert_eq!(e.timeout_ns(&cfg), 3_000);
        // A clock that went backwards never expires an entry.
        assert!(!e.is_expired(0, &cfg));
        // Defaults: the documented values.
        let d = GlobalConfig::default().tcp_timeouts_ns;
        assert_eq!(d[ESTABLISHED as usize], 7440 * SEC);
        assert_eq!(d[TIME_WAIT as usize], 60 * SEC);
        assert_eq!(d[CLOSE as usize], 10 * SEC);
    }

    #[test]
    fn dsr_expiry_follows_flags() {
        use crate::tcp_state::*;
        let cfg = GlobalConfig::default();
        let t = cfg.tcp_timeouts_ns;
        let mut e = DsrEntry {
            last_seen_ns: 1_000,
            ..Default::default()
        };
        assert!(!e.closing());
        assert_eq!(e.timeout_ns(&cfg), t[ESTABLISHED as usize]);
        assert!(!e.is_expired(1_000 + t[ESTABLISHED as usize], &cfg));
        assert!(e.is_expired(1_001 + t[ESTABLISHED as usize], &cfg));
        e.flags = DSR_F_FIN;
        assert!(e.closing());
        assert_eq!(e.timeout_ns(&cfg), t[FIN_WAIT as usize]);
        // A RST wins over a FIN seen before it.
        e.flags = DSR_F_FIN | DSR_F_RST;
        assert_eq!(e.timeout_ns(&cfg), t[CLOSE as usize]);
        assert!(e.is_expired(1_001 + t[CLOSE as usize], &cfg));
        // A clock that went backwards never expires an entry.
        assert!(!e.is_expired(0, &cfg));
        assert_eq!(offset_of!(DsrEntry, backend_id), 8);
        assert_eq!(offset_of!(DsrEntry, flags), 16);
    }

    #[test]
    fn table_offsets_do_not_overlap() {
        let m = DEFAULT_MAGLEV_TABLE_SIZE;
        assert_eq!(maglev_table_offset(0, 1, m), m);
        assert_eq!(maglev_table_offset(1, 0, m), 2 * m);
        assert_eq!(
            maglev_table_offset(DEFAULT_MAX_SERVICES - 1, 1, m) + m,
            DEFAULT_MAX_SERVICES * 2 * m
        );
    }
}
