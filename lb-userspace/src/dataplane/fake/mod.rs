//! In-memory data plane for control-plane tests.
//!
//! [`FakeDataplane`] keeps every map as a Rust collection and records each write in
//! [`FakeDataplane::ops`], so tests can check both the resulting state and the order of writes
//! (make-before-break). Clones share state, so a test can keep a handle while the controller
//! owns another; a "restart" is simulated by building a new controller over a clone.
//!
//! Like the kernel maps, the fake can be bounded ([`FakeDataplane::with_limits`]: a full hash
//! map refuses a new key with `E2BIG`, an array refuses an index past its end), and it can be
//! told to fail a chosen write ([`FaultPlan`]) so tests can check what a failure mid-way leaves.

mod handles;

use super::{
    local_bits, ConntrackSweeper, CtFilterStatus, Dataplane, DataplaneError, PassiveEventSource,
    Result,
};
use handles::{FakeEvents, FakeSweeper};
use lb_common::{
    passive::{BackendSuspect, PassiveEvent},
    BackendValue, FlowStats, GlobalConfig, ServiceKey, ServiceValue, VipValue, LOCAL_F_DSR_ONLY,
    LOCAL_F_SNAT, LOCAL_F_VIP, MAP_BACKENDS, MAP_BACKEND_STATS, MAP_BACKEND_SUSPECT, MAP_CONFIG,
    MAP_MAGLEV, MAP_SERVICES, MAP_SERVICE_STATS, MAP_SNAT_ADDRS, MAP_TX_PORTS, MAP_VIPS,
    NUM_COUNTERS, VIP_F_DSR_ONLY,
};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex, MutexGuard};

/// One recorded write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `set_global_config`.
    GlobalConfig,
    /// `set_snat_addrs` with the number of addresses.
    SnatAddrs(usize),
    /// `set_backend(id)` with the flags written.
    SetBackend(u32, u32),
    /// `clear_backend(id)`.
    ClearBackend(u32),
    /// `write_maglev(offset, len)`.
    WriteMaglev(u32, usize),
    /// `set_service` with the service id, table offset and flags written.
    SetService(u32, u32, u32),
    /// `remove_service` of the service with this key.
    RemoveService(ServiceKey),
    /// `set_vip`.
    SetVip(u32),
    /// `remove_vip`.
    RemoveVip(u32),
    /// `set_tx_port`.
    SetTxPort(u32),
    /// `remove_tx_port`.
    RemoveTxPort(u32),
    /// `reset_stats`.
    ResetStats(Option<u32>, Option<u32>),
    /// `set_backend_suspect(id)` with `since_ns` (0 = cleared).
    SetSuspect(u32, u64),
}

impl Op {
    /// The map this write goes to.
    pub fn map(&self) -> &'static str {
        match self {
            Op::GlobalConfig => MAP_CONFIG,
            Op::SnatAddrs(_) => MAP_SNAT_ADDRS,
            Op::SetBackend(..) | Op::ClearBackend(_) => MAP_BACKENDS,
            Op::WriteMaglev(..) => MAP_MAGLEV,
            Op::SetService(..) | Op::RemoveService(_) => MAP_SERVICES,
            Op::SetVip(_) | Op::RemoveVip(_) => MAP_VIPS,
            Op::SetTxPort(_) | Op::RemoveTxPort(_) => MAP_TX_PORTS,
            Op::ResetStats(Some(_), _) => MAP_SERVICE_STATS,
            Op::ResetStats(None, _) => MAP_BACKEND_STATS,
            Op::SetSuspect(..) => MAP_BACKEND_SUSPECT,
        }
    }
}

/// Map sizes the fake enforces, as [`super::LoadOptions`] sizes the kernel maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FakeLimits {
    /// Entries of `LB_SERVICES` and `LB_VIPS` (hash maps: a new key past this fails).
    pub max_services: u32,
    /// Entries of `LB_BACKENDS` (an array: ids `0..max_backends`).
    pub max_backends: u32,
    /// Slots of `LB_MAGLEV` (an array).
    pub maglev_slots: u32,
}

/// An injected write failure: of the writes `matching` accepts, the first `skip` succeed and
/// the next `times` fail (with an I/O error naming their map, like a real map error); then the
/// plan is spent.
#[derive(Debug, Clone, Copy)]
pub struct FaultPlan {
    /// Matching writes that still succeed before the first failing one.
    pub skip: usize,
    /// How many matching writes fail after that (`usize::MAX`: all of them).
    pub times: usize,
    /// Which writes count (`|_| true`: every write).
    pub matching: fn(&Op) -> bool,
}

impl FaultPlan {
    /// Fails the write after `skip` writes, once.
    pub fn nth_write(skip: usize) -> Self {
        Self {
            skip,
            times: 1,
            matching: |_| true,
        }
    }
}

/// Every map of the fake, comparable as a whole (the op log and test knobs left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeMaps {
    pub global: GlobalConfig,
    pub snat: Vec<Ipv4Addr>,
    pub backends: BTreeMap<u32, BackendValue>,
    pub maglev: BTreeMap<u32, u32>,
    /// Sorted by (VIP, port, protocol).
    pub services: Vec<(ServiceKey, ServiceValue)>,
    pub vips: BTreeMap<u32, VipValue>,
    pub local: BTreeMap<u32, u32>,
    pub tx_ports: Vec<u32>,
    pub counters: [u64; NUM_COUNTERS as usize],
    pub service_stats: BTreeMap<u32, FlowStats>,
    pub backend_stats: BTreeMap<u32, FlowStats>,
}

/// The fake's maps.
#[derive(Debug)]
pub struct FakeState {
    /// `LB_CONFIG` slot 0.
    pub global: GlobalConfig,
    /// `LB_SNAT_ADDRS`.
    pub snat: Vec<Ipv4Addr>,
    /// `LB_BACKENDS` (non-zero entries only).
    pub backends: BTreeMap<u32, BackendValue>,
    /// `LB_MAGLEV` (sparse: slot -> non-zero backend id; absent slots read as 0).
    pub maglev: HashMap<u32, u32>,
    /// `LB_SERVICES`.
    pub services: HashMap<ServiceKey, ServiceValue>,
    /// `LB_VIPS`.
    pub vips: BTreeMap<u32, VipValue>,
    /// `LB_LOCAL_ADDRS`.
    pub local: BTreeMap<u32, u32>,
    /// `LB_TX_PORTS`.
    pub tx_ports: Vec<u32>,
    /// `LB_STATS`.
    pub counters: [u64; NUM_COUNTERS as usize],
    /// `LB_SVC_STATS`.
    pub service_stats: HashMap<u32, FlowStats>,
    /// `LB_BE_STATS`.
    pub backend_stats: HashMap<u32, FlowStats>,
    /// `LB_BE_SUSPECT` (raised entries only).
    pub suspects: BTreeMap<u32, BackendSuspect>,
    /// Where [`FakeDataplane::emit_passive`] sends events once the source was taken.
    pub events_tx: Option<tokio::sync::mpsc::UnboundedSender<PassiveEvent>>,
    /// Events emitted before the source was taken (the kernel ring buffer keeps them too).
    pub events_pending: Vec<PassiveEvent>,
    /// True once [`Dataplane::take_passive_events`] handed the source out.
    pub events_taken: bool,
    /// Live flows per backend id that the next sweep reports (set by tests).
    pub live_flows: HashMap<u32, (u32, u64)>,
    /// Live DSR flows (`LB_CT_DSR` entries, one per flow) per backend id, as (service id,
    /// flows), that the next sweep reports (set by tests).
    pub live_dsr_flows: HashMap<u32, (u32, u64)>,
    /// Live full-NAT flows per destination (VIP:port) that the next sweep reports (set by
    /// tests; [`super::ConntrackSweep::nat_flows_by_dest`]; not derived from `live_flows`).
    pub live_nat_flows: HashMap<SocketAddrV4, u64>,
    /// SNAT ports held per (backend endpoint, SNAT address) that the next sweep reports
    /// (set by tests; [`ConntrackSweep::snat_ports_by_address`]).
    pub snat_ports: HashMap<(SocketAddrV4, Ipv4Addr), u64>,
    /// The conntrack key filter's state that the next sweep reports (set by tests; the fake
    /// has no filter: `None`).
    pub ct_filter: Option<CtFilterStatus>,
    /// Every write, in order.
    pub ops: Vec<Op>,
    /// Backend ids passed to `reset_backend_flows`, in order (not a map write).
    pub flow_resets: Vec<u32>,
    /// Map sizes to enforce (`None`: unbounded).
    pub limits: Option<FakeLimits>,
    /// A write to fail on purpose.
    pub fault: Option<FaultPlan>,
}

// By hand: `[u64; N]` has `Default` only up to N = 32.
impl Default for FakeState {
    fn default() -> Self {
        Self {
            global: GlobalConfig::default(),
            snat: Vec::new(),
            backends: BTreeMap::new(),
            maglev: HashMap::new(),
            services: HashMap::new(),
            vips: BTreeMap::new(),
            local: BTreeMap::new(),
            tx_ports: Vec::new(),
            counters: [0; NUM_COUNTERS as usize],
            service_stats: HashMap::new(),
            backend_stats: HashMap::new(),
            suspects: BTreeMap::new(),
            events_tx: None,
            events_pending: Vec::new(),
            events_taken: false,
            live_flows: HashMap::new(),
            live_dsr_flows: HashMap::new(),
            live_nat_flows: HashMap::new(),
            snat_ports: HashMap::new(),
            ct_filter: None,
            ops: Vec::new(),
            flow_resets: Vec::new(),
            limits: None,
            fault: None,
        }
    }
}

impl FakeState {
    /// A copy of every map, for before/after comparisons.
    pub fn maps(&self) -> FakeMaps {
        FakeMaps {
            global: self.global,
            snat: self.snat.clone(),
            backends: self.backends.clone(),
            maglev: self.maglev.iter().map(|(k, v)| (*k, *v)).collect(),
            services: {
                let mut v: Vec<_> = self.services.iter().map(|(k, v)| (*k, *v)).collect();
                v.sort_by_key(|(k, _)| (k.vip_be, k.port_be, k.proto));
                v
            },
            vips: self.vips.clone(),
            local: self.local.clone(),
            tx_ports: self.tx_ports.clone(),
            counters: self.counters,
            service_stats: self.service_stats.iter().map(|(k, v)| (*k, *v)).collect(),
            backend_stats: self.backend_stats.iter().map(|(k, v)| (*k, *v)).collect(),
        }
    }
}

fn map_error(map: &'static str, source: io::Error) -> DataplaneError {
    DataplaneError::Map { map, source }
}

/// In-memory [`Dataplane`]; clones share state.
#[derive(Debug, Clone, Default)]
pub struct FakeDataplane {
    state: Arc<Mutex<FakeState>>,
}

impl FakeDataplane {
    /// An empty data plane (no pinned state).
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty data plane whose maps are bounded like the kernel's would be for these limits.
    pub fn with_limits(limits: &crate::config::LimitsConfig) -> Self {
        let dp = Self::default();
        dp.state().limits = Some(FakeLimits {
            max_services: limits.max_services,
            max_backends: limits.max_backends,
            maglev_slots: 2 * limits.max_services * limits.maglev_table_size,
        });
        dp
    }

    /// Locks and returns the state for inspection or modification.
    pub fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The backend id the Maglev slot `slot` of the active table of `key` holds.
    pub fn lookup(&self, key: &ServiceKey, slot: u32) -> Option<u32> {
        let s = self.state();
        let svc = s.services.get(key)?;
        s.maglev.get(&(svc.table_offset + slot)).copied()
    }

    /// Backend ids of the active table of `key` with their slot counts.
    pub fn active_table(&self, key: &ServiceKey) -> BTreeMap<u32, u32> {
        let s = self.state();
        let mut out = BTreeMap::new();
        if let Some(svc) = s.services.get(key) {
            for slot in 0..svc.table_size {
                if let Some(&id) = s.maglev.get(&(svc.table_offset + slot)) {
                    *out.entry(id).or_insert(0) += 1;
                }
            }
        }
        out
    }

    /// Does what the data plane does on a passive detection: raises the suspicion of
    /// `event.backend_id` (unless one is active at `event.time_ns`) and, if raised, sends the
    /// event to the source.
    pub fn emit_passive(&self, event: PassiveEvent) {
        let mut s = self.state();
        let active = s
            .suspects
            .get(&event.backend_id)
            .is_some_and(|x| x.is_active(event.time_ns));
        if active {
            return;
        }
        s.suspects.insert(
            event.backend_id,
            BackendSuspect {
                since_ns: event.time_ns,
                reason: event.reason,
                _pad: 0,
            },
        );
        match &s.events_tx {
            Some(tx) => {
                let _ = tx.send(event);
            }
            None => s.events_pending.push(event),
        }
    }

    /// Records `op` unless an injected fault or `refuse` (a capacity check on the current
    /// state) fails it first; a failed write changes nothing.
    fn write_checked(
        &self,
        op: Op,
        refuse: impl FnOnce(&FakeState, &FakeLimits) -> Option<io::Error>,
    ) -> Result<MutexGuard<'_, FakeState>> {
        let mut s = self.state();
        if let Some(plan) = s.fault.as_mut() {
            if (plan.matching)(&op) {
                if plan.skip == 0 {
                    plan.times -= 1;
                    if plan.times == 0 {
                        s.fault = None;
                    }
                    return Err(map_error(
                        op.map(),
                        io::Error::other(format!("injected fault at {op:?}")),
                    ));
                }
                plan.skip -= 1;
            }
        }
        if let Some(limits) = s.limits {
            if let Some(e) = refuse(&s, &limits) {
                return Err(map_error(op.map(), e));
            }
        }
        s.ops.push(op);
        Ok(s)
    }

    fn write(&self, op: Op) -> Result<MutexGuard<'_, FakeState>> {
        self.write_checked(op, |_, _| None)
    }
}

impl Dataplane for FakeDataplane {
    fn set_global_config(&mut self, cfg: &GlobalConfig) -> Result<()> {
        self.write(Op::GlobalConfig)?.global = *cfg;
        Ok(())
    }

    fn set_snat_addrs(&mut self, addrs: &[Ipv4Addr]) -> Result<()> {
        let mut s = self.write(Op::SnatAddrs(addrs.len()))?;
        let old = std::mem::replace(&mut s.snat, addrs.to_vec());
        for a in addrs {
            update_local(&mut s.local, lb_common::ipv4_to_be(*a), LOCAL_F_SNAT, true);
        }
        for a in old.iter().filter(|a| !addrs.contains(a)) {
            update_local(&mut s.local, lb_common::ipv4_to_be(*a), LOCAL_F_SNAT, false);
        }
        Ok(())
    }

    fn set_backend(&mut self, id: u32, value: &BackendValue) -> Result<()> {
        if id == lb_common::BACKEND_ID_NONE {
            return Err(DataplaneError::ReservedBackendId);
        }
        let mut s = self.write_checked(Op::SetBackend(id, value.flags), |_, l| {
            out_of_bounds(id, 1, l.max_backends)
        })?;
        if *value == BackendValue::default() {
            s.backends.remove(&id);
        } else {
            s.backends.insert(id, *value);
        }
        Ok(())
    }

    fn clear_backend(&mut self, id: u32) -> Result<()> {
        self.write_checked(Op::ClearBackend(id), |_, l| {
            out_of_bounds(id, 1, l.max_backends)
        })?
        .backends
        .remove(&id);
        Ok(())
    }

    fn write_maglev(&mut self, offset: u32, table: &[u32]) -> Result<()> {
        let mut s = self.write_checked(Op::WriteMaglev(offset, table.len()), |_, l| {
            out_of_bounds(offset, table.len() as u64, l.maglev_slots)
        })?;
        for (i, &id) in table.iter().enumerate() {
            let slot = offset + i as u32;
            if id == lb_common::BACKEND_ID_NONE {
                s.maglev.remove(&slot);
            } else {
                s.maglev.insert(slot, id);
            }
        }
        Ok(())
    }

    fn set_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<()> {
        let op = Op::SetService(value.service_id, value.table_offset, value.flags);
        self.write_checked(op, |s, l| {
            hash_full(
                s.services.contains_key(key),
                s.services.len(),
                l.max_services,
            )
        })?
        .services
        .insert(*key, *value);
        Ok(())
    }

    fn remove_service(&mut self, key: &ServiceKey) -> Result<()> {
        self.write(Op::RemoveService(*key))?.services.remove(key);
        Ok(())
    }

    fn set_vip(&mut self, vip_be: u32, value: &VipValue) -> Result<()> {
        let mut s = self.write_checked(Op::SetVip(vip_be), |s, l| {
            hash_full(s.vips.contains_key(&vip_be), s.vips.len(), l.max_services)
        })?;
        update_local(&mut s.local, vip_be, LOCAL_F_VIP, true);
        update_local(
            &mut s.local,
            vip_be,
            LOCAL_F_DSR_ONLY,
            value.flags & VIP_F_DSR_ONLY != 0,
        );
        s.vips.insert(vip_be, *value);
        Ok(())
    }

    fn remove_vip(&mut self, vip_be: u32) -> Result<()> {
        let mut s = self.write(Op::RemoveVip(vip_be))?;
        s.vips.remove(&vip_be);
        update_local(&mut s.local, vip_be, LOCAL_F_VIP | LOCAL_F_DSR_ONLY, false);
        Ok(())
    }

    fn set_tx_port(&mut self, ifindex: u32) -> Result<()> {
        let mut s = self.write(Op::SetTxPort(ifindex))?;
        if !s.tx_ports.contains(&ifindex) {
            s.tx_ports.push(ifindex);
        }
        Ok(())
    }

    fn remove_tx_port(&mut self, ifindex: u32) -> Result<()> {
        self.write(Op::RemoveTxPort(ifindex))?
            .tx_ports
            .retain(|&i| i != ifindex);
        Ok(())
    }

    fn global_counters(&self) -> Result<[u64; NUM_COUNTERS as usize]> {
        Ok(self.state().counters)
    }

    fn reset_backend_flows(&mut self, id: u32) -> Result<usize> {
        let mut st = self.state();
        st.flow_resets.push(id);
        Ok(st.live_flows.get(&id).map_or(0, |&(_, n)| n as usize))
    }

    fn backend_suspect(&self, id: u32) -> Result<BackendSuspect> {
        Ok(self.state().suspects.get(&id).copied().unwrap_or_default())
    }

    fn set_backend_suspect(&mut self, id: u32, value: &BackendSuspect) -> Result<()> {
        let mut s = self.write_checked(Op::SetSuspect(id, value.since_ns), |_, l| {
            out_of_bounds(id, 1, l.max_backends)
        })?;
        if *value == BackendSuspect::default() {
            s.suspects.remove(&id);
        } else {
            s.suspects.insert(id, *value);
        }
        Ok(())
    }

    fn take_passive_events(&mut self) -> Result<Option<Box<dyn PassiveEventSource>>> {
        let mut s = self.state();
        if s.events_taken {
            return Ok(None);
        }
        s.events_taken = true;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        for e in s.events_pending.drain(..) {
            let _ = tx.send(e);
        }
        s.events_tx = Some(tx);
        Ok(Some(Box::new(FakeEvents { rx })))
    }

    fn service_stats(&self, service_id: u32) -> Result<FlowStats> {
        Ok(self
            .state()
            .service_stats
            .get(&service_id)
            .copied()
            .unwrap_or_default())
    }

    fn backend_stats(&self, backend_id: u32) -> Result<FlowStats> {
        Ok(self
            .state()
            .backend_stats
            .get(&backend_id)
            .copied()
            .unwrap_or_default())
    }

    fn reset_stats(&mut self, service_id: Option<u32>, backend_id: Option<u32>) -> Result<()> {
        let mut s = self.write(Op::ResetStats(service_id, backend_id))?;
        if let Some(id) = service_id {
            s.service_stats.remove(&id);
        }
        if let Some(id) = backend_id {
            s.backend_stats.remove(&id);
        }
        Ok(())
    }

    fn conntrack_sweeper(&self) -> Result<Box<dyn ConntrackSweeper>> {
        Ok(Box::new(FakeSweeper {
            state: self.state.clone(),
        }))
    }

    fn global_config(&self) -> Result<GlobalConfig> {
        Ok(self.state().global)
    }

    fn snat_addrs(&self) -> Result<Vec<Ipv4Addr>> {
        Ok(self.state().snat.clone())
    }

    fn backend(&self, id: u32) -> Result<BackendValue> {
        Ok(self.state().backends.get(&id).copied().unwrap_or_default())
    }

    fn read_maglev(&self, offset: u32, len: usize) -> Result<Vec<u32>> {
        let s = self.state();
        Ok((0..len as u32)
            .map(|i| s.maglev.get(&(offset + i)).copied().unwrap_or(0))
            .collect())
    }

    fn service(&self, key: &ServiceKey) -> Result<Option<ServiceValue>> {
        Ok(self.state().services.get(key).copied())
    }

    fn vip(&self, vip_be: u32) -> Result<Option<VipValue>> {
        Ok(self.state().vips.get(&vip_be).copied())
    }

    fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>> {
        Ok(self
            .state()
            .services
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect())
    }

    fn backends(&self) -> Result<Vec<(u32, BackendValue)>> {
        Ok(self
            .state()
            .backends
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect())
    }

    fn vips(&self) -> Result<Vec<(u32, VipValue)>> {
        Ok(self.state().vips.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn local_addrs(&self) -> Result<BTreeMap<u32, u32>> {
        Ok(self.state().local.clone())
    }
}

/// Sets or clears `bit` of `addr_be` in the fake's `LB_LOCAL_ADDRS`, as the real one does.
fn update_local(local: &mut BTreeMap<u32, u32>, addr_be: u32, bit: u32, set: bool) {
    match local_bits(local.get(&addr_be).copied(), bit, set) {
        Some(v) => local.insert(addr_be, v),
        None => local.remove(&addr_be),
    };
}

/// The kernel's answer to an array write past the end (`EINVAL` with aya's bounds message).
fn out_of_bounds(start: u32, len: u64, size: u32) -> Option<io::Error> {
    (u64::from(start) + len > u64::from(size)).then(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("index {start} (+{len}) out of bounds for {size} entries"),
        )
    })
}

/// The kernel's answer to a new key in a full hash map: `E2BIG`.
fn hash_full(exists: bool, len: usize, max: u32) -> Option<io::Error> {
    (!exists && len >= max as usize).then(|| io::Error::from_raw_os_error(libc::E2BIG))
}
