//! Bringing the data plane in line with the model: one service (make-before-break) and the VIP map.

use super::*;
use lb_common::VIP_F_DSR_ONLY;

/// True when writing `new` flags over `written` ones sets `BACKEND_F_RESET` on a backend that
/// may have flows (a backend never written has none).
fn adds_reset(written: Option<u32>, new: u32) -> bool {
    new & BACKEND_F_RESET != 0 && written.is_some_and(|w| w & BACKEND_F_RESET == 0)
}

impl<D: Dataplane> Controller<D> {
    /// Resets the flows of backend `id` (just flagged `BACKEND_F_RESET`) now, not at their
    /// next packet: tickle ACKs toward both ends ([`Dataplane::reset_backend_flows`]). Best
    /// effort: a failure is logged, and the flows are then reset at their next packet.
    pub(super) fn reset_flows_now(&mut self, id: u32) {
        match self.dp.reset_backend_flows(id) {
            Ok(n) => tracing::info!(backend_id = id, flows = n, "reset the flows of a backend"),
            Err(e) => {
                tracing::warn!(backend_id = id, error = %e, "tickling flows failed; they are reset at their next packet")
            }
        }
    }

    /// Brings service `i`'s backends, Maglev table and entry in line with its state.
    /// Returns whether the table or service entry was rewritten.
    pub(super) fn sync_service(&mut self, i: usize) -> Result<bool, ControllerError> {
        let m = self.config.limits.maglev_table_size;
        let svc = &self.services[i];
        let usable = |b: &&BackendState| match b.db {
            Some(gate) => gate == DbGate::Serve,
            None => !b.cfg.drain && is_usable(b.health()),
        };
        let primaries: Vec<&BackendState> = svc
            .backends
            .iter()
            .filter(|b| !b.cfg.backup)
            .filter(usable)
            .collect();
        let chosen = if primaries.is_empty() {
            svc.backends
                .iter()
                .filter(|b| b.cfg.backup)
                .filter(usable)
                .collect()
        } else {
            primaries
        };
        let mut inputs: Vec<(String, u32, u32)> = chosen
            .iter()
            .map(|b| (b.identity(), b.cfg.weight, b.id))
            .collect();
        inputs.sort();
        let in_table: BTreeSet<u32> = inputs.iter().map(|x| x.2).collect();
        let flags = if inputs.is_empty() {
            SERVICE_F_NO_BACKEND
        } else {
            0
        };

        // Phase 1: backends whose new flags do not add DOWN (new ones, recovered ones,
        // drain changes) are written before the table that may point at them.
        let service_id = svc.id;
        let reset = svc.cfg.on_backend_down == OnBackendDown::Reset;
        let mut late = Vec::new();
        for j in 0..self.services[i].backends.len() {
            let b = &self.services[i].backends[j];
            let flags_now = backend_flags(b, reset);
            if Some(flags_now) == b.written_flags {
                continue;
            }
            // A backend that was written without DOWN gets DOWN only after the switch; a new
            // one is written at once (nothing points at it yet).
            let adds_down = flags_now & BACKEND_F_DOWN != 0
                && b.written_flags.is_some_and(|w| w & BACKEND_F_DOWN == 0);
            if adds_down {
                late.push(j);
            } else {
                let value = backend_value(b, service_id, reset);
                let adds_reset = adds_reset(b.written_flags, flags_now);
                let id = b.id;
                self.write_backend(id, &value)?;
                self.services[i].backends[j].written_flags = Some(flags_now);
                if adds_reset {
                    self.reset_flows_now(id);
                }
            }
        }

        // Phase 2: table and service entry.
        let svc = &self.services[i];
        let forwarding = self.config.forwarding_value(&svc.cfg);
        let rewrite = svc.table_inputs.as_ref() != Some(&inputs)
            || svc.flags != Some(flags)
            || svc.forwarding != Some(forwarding);
        let (key, active_slot) = (svc.key, svc.active_slot);
        if rewrite {
            let mut value = ServiceValue {
                service_id,
                table_offset: lb_common::maglev_table_offset(service_id, active_slot, m),
                table_size: m,
                flags,
                forwarding: forwarding.0,
                dsr_src_be: forwarding.1,
            };
            let mut slot = active_slot;
            if !inputs.is_empty() {
                let mb: Vec<MaglevBackend> = inputs
                    .iter()
                    .map(|(identity, weight, id)| MaglevBackend {
                        identity: identity.clone(),
                        weight: *weight,
                        id: *id,
                    })
                    .collect();
                let table = maglev::build_table(&mb, m)?;
                slot = 1 - active_slot;
                value.table_offset = lb_common::maglev_table_offset(service_id, slot, m);
                self.write_maglev(value.table_offset, &table)?;
            }
            self.write_service(&key, &value)?;
            let svc = &mut self.services[i];
            svc.active_slot = slot;
            svc.flags = Some(flags);
            svc.forwarding = Some(forwarding);
            svc.table_inputs = Some(inputs);
        }
        for b in &mut self.services[i].backends {
            b.in_table = in_table.contains(&b.id);
        }

        // Phase 3: DOWN flags after the switch, so re-balanced flows cannot pick them again.
        for j in late {
            let b = &self.services[i].backends[j];
            let value = backend_value(b, service_id, reset);
            let adds_reset = adds_reset(b.written_flags, value.flags);
            let id = b.id;
            self.write_backend(id, &value)?;
            self.services[i].backends[j].written_flags = Some(value.flags);
            if adds_reset {
                self.reset_flows_now(id);
            }
        }
        Ok(rewrite)
    }

    /// Brings `LB_VIPS` in line with the services (and the DSR-only bit with the latest
    /// conntrack sweep: [`super::dsr_only`]). Stale VIPs (whose services are already
    /// gone) are removed before new ones are inserted, so moving a service to a new VIP fits
    /// in a full map (`limits.max_services` entries).
    pub(super) fn sync_vips(&mut self) -> Result<(), ControllerError> {
        // Per VIP: its service count and whether every one of them is DSR.
        let mut want: BTreeMap<u32, (u32, bool)> = BTreeMap::new();
        for s in &self.services {
            let w = want.entry(s.key.vip_be).or_insert((0, true));
            w.0 += 1;
            w.1 &= s.cfg.forwarding == crate::config::Forwarding::Dsr;
        }
        self.track_nat_vips(&want);
        let stale: Vec<u32> = self
            .vips
            .keys()
            .filter(|v| !want.contains_key(v))
            .copied()
            .collect();
        for vip in stale {
            self.write_remove_vip(vip)?;
            self.vips.remove(&vip);
        }
        for (vip, (count, all_dsr)) in want {
            // Not while full-NAT flows to it may be open: its packets skip their conntrack.
            let dsr_only = all_dsr && !self.nat_vips.contains_key(&vip);
            let value = VipValue {
                service_count: count,
                flags: if dsr_only { VIP_F_DSR_ONLY } else { 0 },
            };
            if self.vips.get(&vip) != Some(&Some(value)) {
                self.write_vip(vip, &value)?;
                self.vips.insert(vip, Some(value));
            }
        }
        Ok(())
    }
}
