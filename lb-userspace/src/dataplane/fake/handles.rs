//! What the fake hands out: its conntrack sweeper and its passive-event source.

use super::FakeState;
use crate::dataplane::{
    ConntrackSweep, ConntrackSweeper, DataplaneError, EventBatch, PassiveEventSource, Result,
};
use lb_common::{passive::PassiveEvent, GlobalConfig};
use std::sync::{Arc, Mutex};

/// The fake's sweeper: reports [`FakeState::live_flows`], [`FakeState::live_dsr_flows`],
/// [`FakeState::live_nat_flows`], [`FakeState::snat_ports`] and [`FakeState::ct_filter`].
pub(super) struct FakeSweeper {
    pub(super) state: Arc<Mutex<FakeState>>,
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
        for (&backend, &(service, flows)) in &s.live_dsr_flows {
            let e = lb_common::DsrEntry {
                backend_id: backend,
                service_id: service,
                ..Default::default()
            };
            for _ in 0..flows {
                sweep.count_dsr_flow(&e);
            }
        }
        sweep.nat_flows_by_dest = s
            .live_nat_flows
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| (*k, *n))
            .collect();
        sweep.snat_ports_by_address = s
            .snat_ports
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| (*k, *n))
            .collect();
        sweep.ct_filter = s.ct_filter;
        Ok(sweep)
    }
}

/// The fake's [`PassiveEventSource`]: events sent by [`super::FakeDataplane::emit_passive`].
pub(super) struct FakeEvents {
    pub(super) rx: tokio::sync::mpsc::UnboundedReceiver<PassiveEvent>,
}

impl PassiveEventSource for FakeEvents {
    fn next_batch(&mut self) -> EventBatch<'_> {
        Box::pin(async move {
            let first = self.rx.recv().await.ok_or_else(|| DataplaneError::Io {
                what: "the fake data plane's event source".into(),
                source: std::io::Error::from(std::io::ErrorKind::BrokenPipe),
            })?;
            let mut batch = vec![first];
            while let Ok(e) = self.rx.try_recv() {
                batch.push(e);
            }
            Ok(batch)
        })
    }
}
