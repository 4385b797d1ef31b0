//! Bringing the data plane in line with the model: one service (make-before-break) and the VIP map.

use super::*;

impl<D: Dataplane> Controller<D> {
    /// Brings service `i`'s backends, Maglev table and entry in line with its state.
    /// Returns whether the table or service entry was rewritten.
    pub(super) fn sync_service(&mut self, i: usize) -> Result<bool, ControllerError> {
        let m = self.config.limits.maglev_table_size;
        let svc = &self.services[i];
        let usable = |b: &&BackendState| !b.cfg.drain && is_usable(b.health());
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
        let mut late = Vec::new();
        for j in 0..self.services[i].backends.len() {
            let b = &self.services[i].backends[j];
            let flags_now = backend_flags(b);
            if flags_now == b.written_flags {
                continue;
            }
            let adds_down = flags_now & BACKEND_F_DOWN != 0
                && (b.written_flags == u32::MAX || b.written_flags & BACKEND_F_DOWN == 0);
            if adds_down && b.written_flags != u32::MAX {
                late.push(j);
            } else {
                let value = backend_value(b, service_id);
                self.dp.set_backend(b.id, &value)?;
                self.services[i].backends[j].written_flags = flags_now;
            }
        }

        // Phase 2: table and service entry.
        let svc = &self.services[i];
        let rewrite = svc.table_inputs.as_ref() != Some(&inputs) || svc.flags != flags;
        if rewrite {
            let mut value = ServiceValue {
                service_id,
                table_offset: lb_common::maglev_table_offset(service_id, svc.active_slot, m),
                table_size: m,
                flags,
            };
            let mut slot = svc.active_slot;
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
                slot = 1 - svc.active_slot;
                value.table_offset = lb_common::maglev_table_offset(service_id, slot, m);
                self.dp.write_maglev(value.table_offset, &table)?;
            }
            let key = svc.key;
            self.dp.set_service(&key, &value)?;
            let svc = &mut self.services[i];
            svc.active_slot = slot;
            svc.flags = flags;
            svc.table_inputs = Some(inputs);
        }
        for b in &mut self.services[i].backends {
            b.in_table = in_table.contains(&b.id);
        }

        // Phase 3: DOWN flags after the switch, so re-balanced flows cannot pick them again.
        for j in late {
            let b = &self.services[i].backends[j];
            let value = backend_value(b, service_id);
            self.dp.set_backend(b.id, &value)?;
            self.services[i].backends[j].written_flags = value.flags;
        }
        Ok(rewrite)
    }

    pub(super) fn sync_vips(&mut self) -> Result<(), ControllerError> {
        let mut want: BTreeMap<u32, u32> = BTreeMap::new();
        for s in &self.services {
            *want.entry(s.key.vip_be).or_insert(0) += 1;
        }
        for (&vip, &count) in &want {
            if self.vips.get(&vip) != Some(&count) {
                self.dp.set_vip(
                    vip,
                    &VipValue {
                        service_count: count,
                        flags: 0,
                    },
                )?;
            }
        }
        for &vip in self.vips.keys() {
            if !want.contains_key(&vip) {
                self.dp.remove_vip(vip)?;
            }
        }
        self.vips = want;
        Ok(())
    }
}
