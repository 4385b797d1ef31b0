//! Conntrack sweeps: live-flow counts, SNAT pool use per backend endpoint (and its warning),
//! and the release of retired backend ids.

use super::*;
use crate::snat_pool::{self, Crossing, SnatPool};

impl<D: Dataplane> Controller<D> {
    /// Sweeps conntrack, records live flows per service/backend, and clears retired backends
    /// that have no live flow left. The daemon splits this into [`Self::begin_sweep`], the walk
    /// (without the controller lock) and [`Self::finish_sweep`].
    pub fn sweep(&mut self, now_ns: u64) -> Result<ConntrackSweep, ControllerError> {
        let (mut sweeper, cfg, generation) = self.begin_sweep()?;
        let sweep = sweeper.sweep(now_ns, &cfg)?;
        self.finish_sweep(sweep.clone(), generation)?;
        Ok(sweep)
    }

    /// Starts a sweep: a conntrack handle to walk, the settings to judge expiry by, and the
    /// generation to hand to [`Self::finish_sweep`]. A backend retired after this call is
    /// stamped with that generation, so this sweep (whose walk may have missed its newest
    /// flows) never clears it; the next one may.
    pub fn begin_sweep(
        &mut self,
    ) -> Result<(Box<dyn ConntrackSweeper>, GlobalConfig, u64), ControllerError> {
        let sweeper = self.dp.conntrack_sweeper()?;
        self.sweep_generation += 1;
        Ok((sweeper, self.global, self.sweep_generation))
    }

    /// Applies the result of a walk started by [`Self::begin_sweep`] with `generation`.
    pub fn finish_sweep(
        &mut self,
        sweep: ConntrackSweep,
        generation: u64,
    ) -> Result<(), ControllerError> {
        let ports = sweep.snat_ports();
        let mut pools = BTreeMap::new();
        for svc in &mut self.services {
            svc.active_flows = sweep.flows_by_service.get(&svc.id).copied().unwrap_or(0);
            let full_nat = svc.cfg.forwarding != crate::config::Forwarding::Dsr;
            for b in &mut svc.backends {
                b.active_flows = sweep.flows_by_backend.get(&b.id).copied().unwrap_or(0);
                b.snat_pool = full_nat.then(|| {
                    let count = ports.get(&b.cfg.address).copied().unwrap_or_default();
                    SnatPool::new(count, &self.config.snat)
                });
                if let Some(pool) = b.snat_pool {
                    pools.insert(b.cfg.address, pool);
                }
            }
        }
        self.snat_alarms.retain(|e, _| pools.contains_key(e));
        for (endpoint, pool) in pools {
            match self.snat_alarms.entry(endpoint).or_default().observe(&pool) {
                Some(Crossing::Warn) => tracing::warn!(
                    backend = %endpoint,
                    in_use = pool.in_use,
                    total = pool.total(),
                    busiest_address = pool.busiest_address,
                    ports_per_address = pool.ports_per_address,
                    "{}",
                    snat_pool::warning(endpoint, &pool)
                ),
                Some(Crossing::Clear) => tracing::info!(
                    backend = %endpoint,
                    in_use = pool.in_use,
                    total = pool.total(),
                    busiest_address = pool.busiest_address,
                    "SNAT ports to backend {endpoint} back below {}% on every SNAT address",
                    snat_pool::CLEAR_PERCENT
                ),
                None => {}
            }
        }
        let mut keep = Vec::new();
        for r in std::mem::take(&mut self.retired) {
            let live = sweep.flows_by_backend.get(&r.id).copied().unwrap_or(0);
            if live == 0 && r.retired_at_sweep < generation {
                self.write_clear_backend(r.id)?;
                self.used_backend_ids.remove(&r.id);
                tracing::info!(backend = %r.address, id = r.id, "removed backend has no flows left; id released");
            } else {
                keep.push(r);
            }
        }
        self.retired = keep;
        self.last_sweep = Some(sweep);
        self.last_sweep_generation = generation;
        // A VIP left with DSR services only gets its DSR-only bit once its full-NAT flows ended.
        self.sync_vips()
    }
}
