//! The seam between the control plane and the BPF maps.
//!
//! The control plane (services, Maglev, health) talks to the data plane only through the
//! [`Dataplane`] trait: typed writes of map entries and typed reads of counters. The real
//! implementation ([`bpf::BpfDataplane`]) loads, pins and attaches the XDP program; the
//! [`fake::FakeDataplane`] keeps the same state in memory so control-plane logic is testable
//! without a kernel.

pub mod bpf;
pub mod decap;
pub mod fake;
pub mod netlink;
pub mod sysctl;
pub mod tickle;
pub mod transient;

use lb_common::{
    passive::{BackendSuspect, PassiveEvent},
    BackendValue, FlowKey, FlowStats, GlobalConfig, ServiceKey, ServiceValue, VipValue,
    NUM_COUNTERS,
};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::pin::Pin;

/// The eBPF object built by `cargo xtask build-ebpf` (empty when it was not built first).
pub static EBPF_OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/lb-ebpf.o"));

/// The [`lb_common::MAP_LOCAL_ADDRS`] value of an address after `bit` is set (`set`) or
/// cleared in its current value `old` (`None`: no entry); `None` when no bit is left (the
/// entry is removed).
pub fn local_bits(old: Option<u32>, bit: u32, set: bool) -> Option<u32> {
    let v = if set {
        old.unwrap_or(0) | bit
    } else {
        old.unwrap_or(0) & !bit
    };
    (v != 0).then_some(v)
}

/// Errors of data-plane operations.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("the eBPF object is missing from this build; run `cargo xtask build` first")]
    NoObject,
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// Backend id 0 means "no backend" in the Maglev table and is never written.
    #[error("backend id 0 is reserved (\"no backend\") and cannot be written")]
    ReservedBackendId,
    /// A Maglev write past the end of the map.
    #[error(
        "Maglev write of {len} slots at offset {offset} exceeds the {size}-slot map; \
         limits.max_services or limits.maglev_table_size disagree with the loaded maps"
    )]
    MaglevOutOfRange { offset: u32, len: usize, size: u32 },
    /// A file-system step (pin directory) failed.
    #[error("{action} {}: {source}", path.display())]
    Fs {
        /// What was being done ("removing", "creating").
        action: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The kernel did not accept the eBPF object (aya's error, with the verifier log, is the
    /// source).
    #[error("loading the eBPF object: {source}")]
    Load {
        #[source]
        source: Box<aya::EbpfError>,
    },
    /// The embedded object lacks a program or map this build expects.
    #[error("the eBPF object has no {kind} {name}; rebuild it with `cargo xtask build-ebpf`")]
    MissingInObject { kind: &'static str, name: String },
    /// A program step (type conversion, verification, test run, link handling) failed.
    #[error("{action} {name}: {source}")]
    Program {
        /// What was being done ("loading program", "BPF_PROG_TEST_RUN of").
        action: &'static str,
        name: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// The kernel refused a program (after [`transient::ATTEMPTS`] attempts at most when the
    /// refusal looked transient). The verifier log comes first; the errno is repeated at the
    /// end, because a log can be long and only its tail may be shown.
    #[error(
        "the kernel rejected program {name} ({attempts} attempt(s)): {source} [{name}: {errno}]"
    )]
    ProgramLoad {
        name: String,
        attempts: usize,
        /// The errno of the last attempt.
        errno: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// Attaching XDP to an interface failed in the mode(s) tried.
    #[error("{mode} XDP attach to {iface} failed: {source}{hint}")]
    Attach {
        iface: String,
        /// "native", "generic" or "native and generic".
        mode: &'static str,
        /// What the operator can do (may be empty).
        hint: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// Pinning or re-opening a pinned XDP link failed.
    #[error("XDP link of {iface}: {what}: {source}")]
    Link {
        iface: String,
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An interface named in the configuration does not exist (or its name is invalid).
    #[error("interface {iface:?} does not exist; fix `interfaces` in the configuration")]
    NoInterface { iface: String },
    /// Limits the maps cannot be built with, or that differ from the pinned maps'.
    #[error("{0}")]
    Limits(String),
    /// A caller asked for something the data plane cannot do (a programming error of the
    /// caller, e.g. a test run with repeat 0).
    #[error("{0}")]
    Usage(String),
    /// An I/O step of the data plane outside the maps (ring buffer, raw socket, rtnetlink).
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = DataplaneError> = std::result::Result<T, E>;

/// What a conntrack sweep found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ConntrackSweep {
    /// Live flows (forward entries whose flow is not idle: the entry or its partner is
    /// fresh) per backend id.
    pub flows_by_backend: HashMap<u32, u64>,
    /// Live flows per service id.
    pub flows_by_service: HashMap<u32, u64>,
    /// Live full-NAT flows per destination (VIP:service port): the live forward entries
    /// (`FLOW_F_REPLY` clear, keyed by client, VIP, client port, service port) of both
    /// conntrack maps, by their key's destination. The controller flags a VIP DSR-only only
    /// once none is left on a port that still has a service (`controller/dsr_only.rs`).
    pub nat_flows_by_dest: HashMap<SocketAddrV4, u64>,
    /// Entries (both directions) deleted because their flow had expired.
    pub expired_removed: u64,
    /// Entries present after the sweep.
    pub entries: u64,
    /// Live DSR flows (entries of `LB_CT_DSR` not past their timeout), also counted in
    /// `flows_by_backend` and `flows_by_service`.
    pub dsr_flows: u64,
    /// SNAT ports held per backend endpoint and SNAT address: the live reply entries
    /// (`FLOW_F_REPLY`, keyed by backend address, SNAT address, backend port, SNAT port) of
    /// both conntrack maps (an embryonic flow's reservation holds its port too). Each holds
    /// one port of that endpoint's pool on that address. See [`ConntrackSweep::snat_ports`].
    pub snat_ports_by_address: HashMap<(SocketAddrV4, Ipv4Addr), u64>,
    /// The key filter in front of `LB_CONNTRACK` after this sweep's rebuild step (the BPF
    /// data plane reports it off when it could not map it); `None` from a data plane without
    /// one (the fake, unless a test sets it).
    pub ct_filter: Option<CtFilterStatus>,
}

/// The state of the key filter in front of `LB_CONNTRACK` (`lb_common::ct_filter`). A clear
/// bit lets a new flow skip two conntrack lookups; the set fraction is about the fraction
/// of new flows that make them anyway.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CtFilterStatus {
    /// The data plane reads the filter (it is off when its map could not be mapped, or when
    /// lbd re-adopted a conntrack map the filter had not seen; every lookup is then made).
    pub enabled: bool,
    /// Bits set in the generation lookups read (0 while off).
    pub bits_set: u64,
    /// Bits per generation (8 or more per `LB_CONNTRACK` entry; 0 when not mapped).
    pub bits_total: u64,
    /// Rebuilds completed since lbd opened the filter (one every second sweep: a clear, then
    /// a fill from the sweep's scan and a switch).
    pub rebuilds: u64,
}

impl CtFilterStatus {
    /// A fill ratio above this is high: a full, well-sized conntrack map sets about 1 bit
    /// in 8 (0.12); above this, the conntrack map is too small for the rate of new flows
    /// (evicted keys keep their bits until a rebuild) or the rebuild is not running.
    pub const HIGH_FILL_RATIO: f64 = 0.3;

    /// Set bits / bits (0 while off or not mapped).
    pub fn fill_ratio(&self) -> f64 {
        if self.bits_total == 0 {
            0.0
        } else {
            self.bits_set as f64 / self.bits_total as f64
        }
    }
}

/// SNAT ports one backend endpoint holds (from a [`ConntrackSweep`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SnatPortCount {
    /// Over every SNAT address.
    pub in_use: u64,
    /// On the SNAT address that holds the most. The data plane picks a flow's SNAT address
    /// by hash and searches ports only on it, so a pool runs dry address by address: this,
    /// against the ports of one address, is how close new flows are to
    /// `drop_snat_exhausted` when the addresses are unevenly used.
    pub busiest_address: u64,
}

impl ConntrackSweep {
    /// Counts the SNAT port held by the live reply entry `key` (`FLOW_F_REPLY` set).
    pub fn count_snat_port(&mut self, key: &FlowKey) {
        let endpoint = SocketAddrV4::new(
            lb_common::ipv4_from_be(key.src_addr_be),
            lb_common::port_from_be(key.src_port_be),
        );
        let snat = lb_common::ipv4_from_be(key.dst_addr_be);
        *self
            .snat_ports_by_address
            .entry((endpoint, snat))
            .or_default() += 1;
    }

    /// Counts the live DSR flow of entry `e` (one entry per flow).
    pub fn count_dsr_flow(&mut self, e: &lb_common::DsrEntry) {
        *self.flows_by_backend.entry(e.backend_id).or_default() += 1;
        *self.flows_by_service.entry(e.service_id).or_default() += 1;
        self.dsr_flows += 1;
        self.entries += 1;
    }

    /// Adds the counts of `other` (the sweep of another conntrack map).
    pub fn merge(&mut self, other: ConntrackSweep) {
        for (k, n) in other.flows_by_backend {
            *self.flows_by_backend.entry(k).or_default() += n;
        }
        for (k, n) in other.flows_by_service {
            *self.flows_by_service.entry(k).or_default() += n;
        }
        for (k, n) in other.nat_flows_by_dest {
            *self.nat_flows_by_dest.entry(k).or_default() += n;
        }
        for (k, n) in other.snat_ports_by_address {
            *self.snat_ports_by_address.entry(k).or_default() += n;
        }
        self.expired_removed += other.expired_removed;
        self.entries += other.entries;
        self.dsr_flows += other.dsr_flows;
        self.ct_filter = other.ct_filter.or(self.ct_filter);
    }

    /// SNAT ports held per backend endpoint (endpoints holding none are absent).
    pub fn snat_ports(&self) -> HashMap<SocketAddrV4, SnatPortCount> {
        let mut out: HashMap<SocketAddrV4, SnatPortCount> = HashMap::new();
        for (&(endpoint, _), &n) in &self.snat_ports_by_address {
            let c = out.entry(endpoint).or_default();
            c.in_use += n;
            c.busiest_address = c.busiest_address.max(n);
        }
        out
    }
}

/// Walks the conntrack map: deletes flows whose both entries expired (as of `now_ns`, on the
/// data plane's clock) and counts the live ones. See [`Dataplane::conntrack_sweeper`].
pub trait ConntrackSweeper: Send {
    /// One full pass over the map.
    fn sweep(&mut self, now_ns: u64, cfg: &GlobalConfig) -> Result<ConntrackSweep>;
}

/// The future of [`PassiveEventSource::next_batch`].
pub type EventBatch<'a> = Pin<Box<dyn Future<Output = Result<Vec<PassiveEvent>>> + Send + 'a>>;

/// Passive-detection events from the data plane ([`lb_common::MAP_EVENTS`], or the fake's
/// channel). Used from a tokio task.
pub trait PassiveEventSource: Send {
    /// Waits for the next events (at least one; an error when the source is gone).
    fn next_batch(&mut self) -> EventBatch<'_>;
}

/// Typed access to lb's BPF maps. Every write is a single map update, so the data plane sees
/// either the old or the new value, never a mix; ordering for make-before-break is the
/// caller's job (write backends, then Maglev table, then the service entry that points to it).
pub trait Dataplane: Send + 'static {
    /// Writes [`lb_common::MAP_CONFIG`] slot 0.
    fn set_global_config(&mut self, cfg: &GlobalConfig) -> Result<()>;
    /// Writes the SNAT address array (the count lives in [`GlobalConfig::snat_addr_count`]).
    fn set_snat_addrs(&mut self, addrs: &[Ipv4Addr]) -> Result<()>;
    /// Writes backend `id` (id 0 is reserved and rejected).
    fn set_backend(&mut self, id: u32, value: &BackendValue) -> Result<()>;
    /// Resets backend `id` to all zeroes (the id may then be reused).
    fn clear_backend(&mut self, id: u32) -> Result<()>;
    /// Writes `table` into [`lb_common::MAP_MAGLEV`] starting at `offset`.
    fn write_maglev(&mut self, offset: u32, table: &[u32]) -> Result<()>;
    /// Inserts or replaces a service entry.
    fn set_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<()>;
    /// Removes a service entry (absent is not an error).
    fn remove_service(&mut self, key: &ServiceKey) -> Result<()>;
    /// Inserts or replaces a VIP entry (`vip_be` in `_be` representation).
    fn set_vip(&mut self, vip_be: u32, value: &VipValue) -> Result<()>;
    /// Removes a VIP entry (absent is not an error).
    fn remove_vip(&mut self, vip_be: u32) -> Result<()>;
    /// Adds an interface to the redirect map.
    fn set_tx_port(&mut self, ifindex: u32) -> Result<()>;
    /// Removes an interface from the redirect map.
    fn remove_tx_port(&mut self, ifindex: u32) -> Result<()>;

    /// Global verdict counters summed over CPUs, indexed by [`lb_common::counters`].
    fn global_counters(&self) -> Result<[u64; NUM_COUNTERS as usize]>;
    /// Per-service stats summed over CPUs.
    fn service_stats(&self, service_id: u32) -> Result<FlowStats>;
    /// Per-backend stats summed over CPUs.
    fn backend_stats(&self, backend_id: u32) -> Result<FlowStats>;
    /// Zeroes the stats of a backend or service id about to be reused.
    fn reset_stats(&mut self, service_id: Option<u32>, backend_id: Option<u32>) -> Result<()>;
    /// Walks conntrack: deletes flows whose both entries expired (as of `now_ns`, the
    /// `CLOCK_MONOTONIC` time that `bpf_ktime_get_ns` uses) and counts the live ones.
    fn sweep_conntrack(&mut self, now_ns: u64, cfg: &GlobalConfig) -> Result<ConntrackSweep> {
        self.conntrack_sweeper()?.sweep(now_ns, cfg)
    }
    /// A handle on the conntrack map of its own, so a sweep (seconds for millions of
    /// entries) runs without borrowing the data plane and holds up no other map write.
    fn conntrack_sweeper(&self) -> Result<Box<dyn ConntrackSweeper>>;
    /// Resets every flow of backend `id` now rather than at its next packet: sends tickle
    /// ACKs ([`tickle`]) to both ends of each of its flows; their answers reach the data
    /// plane, which resets the flow (the backend must already carry `BACKEND_F_RESET`).
    /// Returns the number of flows tickled.
    fn reset_backend_flows(&mut self, id: u32) -> Result<usize>;

    /// Reads [`lb_common::MAP_CONFIG`] slot 0 (to undo a write).
    fn global_config(&self) -> Result<GlobalConfig>;
    /// Reads the SNAT address array up to its first empty slot (to undo a write).
    fn snat_addrs(&self) -> Result<Vec<Ipv4Addr>>;
    /// Reads backend `id` (all zeroes: unset).
    fn backend(&self, id: u32) -> Result<BackendValue>;
    /// Reads `len` slots of [`lb_common::MAP_MAGLEV`] from `offset` (to undo a table write).
    fn read_maglev(&self, offset: u32, len: usize) -> Result<Vec<u32>>;
    /// Reads one service entry.
    fn service(&self, key: &ServiceKey) -> Result<Option<ServiceValue>>;
    /// Reads one VIP entry.
    fn vip(&self, vip_be: u32) -> Result<Option<VipValue>>;

    /// Current services, for re-adoption after a restart.
    fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>>;
    /// Current non-zero backend entries, for re-adoption after a restart.
    fn backends(&self) -> Result<Vec<(u32, BackendValue)>>;
    /// Current VIP entries.
    fn vips(&self) -> Result<Vec<(u32, VipValue)>>;
    /// Current [`lb_common::MAP_LOCAL_ADDRS`]: address (`_be`) -> `LOCAL_F_*` bits. Kept in
    /// step by [`Dataplane::set_vip`], [`Dataplane::remove_vip`] and
    /// [`Dataplane::set_snat_addrs`] (bit set before the address is written, cleared after it
    /// is removed).
    fn local_addrs(&self) -> Result<BTreeMap<u32, u32>>;

    /// Reads the passive-detection suspicion of backend `id` ([`lb_common::passive`]).
    fn backend_suspect(&self, id: u32) -> Result<BackendSuspect>;
    /// Writes the suspicion of backend `id` (all zeroes clears it).
    fn set_backend_suspect(&mut self, id: u32, value: &BackendSuspect) -> Result<()>;
    /// Hands out the passive-detection event source; `None` once it was taken. Must be
    /// called inside a tokio runtime (the real source registers its ring buffer with it).
    fn take_passive_events(&mut self) -> Result<Option<Box<dyn PassiveEventSource>>>;
}

/// How the XDP program is attached to an interface.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Driver mode: fastest; needs driver support (veth, most 10G+ NICs).
    Native,
    /// skb mode: works on every interface, slower.
    Generic,
    /// Native, falling back to generic (logged) when the driver refuses.
    #[default]
    Auto,
}

/// The mode an attachment actually got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachedMode {
    Native,
    Generic,
}

/// Sizes and pinning of a data-plane load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// bpffs directory to pin maps and links under (`<root>/abi<ABI_VERSION>/`), re-adopting
    /// what is already pinned there. `None` loads unpinned (tests, benchmarks).
    pub pin_root: Option<std::path::PathBuf>,
    pub max_services: u32,
    pub max_backends: u32,
    pub maglev_table_size: u32,
    /// Tracked flows; the conntrack map gets `CONNTRACK_ENTRIES_PER_FLOW` times as many entries.
    pub conntrack_flows: u32,
    /// Embryonic flows (handshake not completed), in a map of their own sized likewise.
    pub embryonic_flows: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            pin_root: None,
            max_services: lb_common::DEFAULT_MAX_SERVICES,
            max_backends: lb_common::DEFAULT_MAX_BACKENDS,
            maglev_table_size: lb_common::DEFAULT_MAGLEV_TABLE_SIZE,
            conntrack_flows: lb_common::DEFAULT_CONNTRACK_FLOWS,
            embryonic_flows: lb_common::default_embryonic_flows(lb_common::DEFAULT_CONNTRACK_FLOWS),
        }
    }
}
