//! In-memory data plane for control-plane tests.
//!
//! [`FakeDataplane`] keeps every map as a Rust collection and records each write in
//! [`FakeDataplane::ops`], so tests can check both the resulting state and the order of writes
//! (make-before-break). Clones share state, so a test can keep a handle while the controller
//! owns another; a "restart" is simulated by building a new controller over a clone.

use super::{ConntrackSweep, ConntrackSweeper, Dataplane, DataplaneError, Result};
use lb_common::{
    BackendValue, FlowStats, GlobalConfig, ServiceKey, ServiceValue, VipValue, NUM_COUNTERS,
};
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
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
}

/// The fake's maps.
#[derive(Debug, Default)]
pub struct FakeState {
    /// `LB_CONFIG` slot 0.
    pub global: GlobalConfig,
    /// `LB_SNAT_ADDRS`.
    pub snat: Vec<Ipv4Addr>,
    /// `LB_BACKENDS` (non-zero entries only).
    pub backends: BTreeMap<u32, BackendValue>,
    /// `LB_MAGLEV` (sparse: slot -> backend id).
    pub maglev: HashMap<u32, u32>,
    /// `LB_SERVICES`.
    pub services: HashMap<ServiceKey, ServiceValue>,
    /// `LB_VIPS`.
    pub vips: BTreeMap<u32, VipValue>,
    /// `LB_TX_PORTS`.
    pub tx_ports: Vec<u32>,
    /// `LB_STATS`.
    pub counters: [u64; NUM_COUNTERS as usize],
    /// `LB_SVC_STATS`.
    pub service_stats: HashMap<u32, FlowStats>,
    /// `LB_BE_STATS`.
    pub backend_stats: HashMap<u32, FlowStats>,
    /// Live flows per backend id that the next sweep reports (set by tests).
    pub live_flows: HashMap<u32, (u32, u64)>,
    /// Every write, in order.
    pub ops: Vec<Op>,
    /// When set, the next write fails with this message (then the flag clears).
    pub fail_next_write: Option<String>,
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

    fn write(&self, op: Op) -> Result<MutexGuard<'_, FakeState>> {
        let mut s = self.state();
        if let Some(msg) = s.fail_next_write.take() {
            return Err(DataplaneError::Other(msg));
        }
        s.ops.push(op);
        Ok(s)
    }
}

impl Dataplane for FakeDataplane {
    fn set_global_config(&mut self, cfg: &GlobalConfig) -> Result<()> {
        self.write(Op::GlobalConfig)?.global = *cfg;
        Ok(())
    }

    fn set_snat_addrs(&mut self, addrs: &[Ipv4Addr]) -> Result<()> {
        self.write(Op::SnatAddrs(addrs.len()))?.snat = addrs.to_vec();
        Ok(())
    }

    fn set_backend(&mut self, id: u32, value: &BackendValue) -> Result<()> {
        if id == lb_common::BACKEND_ID_NONE {
            return Err(DataplaneError::Other("backend id 0 is reserved".into()));
        }
        self.write(Op::SetBackend(id, value.flags))?
            .backends
            .insert(id, *value);
        Ok(())
    }

    fn clear_backend(&mut self, id: u32) -> Result<()> {
        self.write(Op::ClearBackend(id))?.backends.remove(&id);
        Ok(())
    }

    fn write_maglev(&mut self, offset: u32, table: &[u32]) -> Result<()> {
        let mut s = self.write(Op::WriteMaglev(offset, table.len()))?;
        for (i, &id) in table.iter().enumerate() {
            s.maglev.insert(offset + i as u32, id);
        }
        Ok(())
    }

    fn set_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<()> {
        self.write(Op::SetService(
            value.service_id,
            value.table_offset,
            value.flags,
        ))?
        .services
        .insert(*key, *value);
        Ok(())
    }

    fn remove_service(&mut self, key: &ServiceKey) -> Result<()> {
        self.write(Op::RemoveService(*key))?.services.remove(key);
        Ok(())
    }

    fn set_vip(&mut self, vip_be: u32, value: &VipValue) -> Result<()> {
        self.write(Op::SetVip(vip_be))?.vips.insert(vip_be, *value);
        Ok(())
    }

    fn remove_vip(&mut self, vip_be: u32) -> Result<()> {
        self.write(Op::RemoveVip(vip_be))?.vips.remove(&vip_be);
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
}

/// The fake's sweeper: reports [`FakeState::live_flows`].
struct FakeSweeper {
    state: Arc<Mutex<FakeState>>,
}

impl ConntrackSweeper for FakeSweeper {
    fn sweep(&mut self, _now_ns: u64, _cfg: &GlobalConfig) -> Result<ConntrackSweep> {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut sweep = ConntrackSweep::default();
        for (&backend, &(service, flows)) in &s.live_flows {
            if flows == 0 {
                continue;
            }
            *sweep.flows_by_backend.entry(backend).or_insert(0) += flows;
            *sweep.flows_by_service.entry(service).or_insert(0) += flows;
            sweep.entries += 2 * flows;
        }
        Ok(sweep)
    }
}
