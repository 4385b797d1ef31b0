//! Reloads: applying a new configuration (services and backends added, changed, removed).

use super::*;

impl<D: Dataplane> Controller<D> {
    /// Retires backend `b` of service `service_id` removed from the configuration; `cfg` is
    /// the service's configuration deciding what becomes of its flows: under
    /// `on_backend_down: keep` (the default) they keep going to it until they end, like a
    /// drained backend's; under `reset` (and for database services) they are reset.
    fn retire(&mut self, service_id: u32, b: &BackendState, cfg: &ServiceConfig) {
        self.retired.push(RetiredBackend {
            id: b.id,
            service_id,
            address: b.cfg.address,
            retired_at_sweep: self.sweep_generation,
            marked: false,
            reset: cfg.on_backend_down == OnBackendDown::Reset || cfg.db_cluster.is_some(),
        });
    }

    /// Marks every retired backend not yet marked `BACKEND_F_DOWN` (with `BACKEND_F_RESET`
    /// when its flows are to be reset, which then happens at once): called after the tables
    /// were switched away from them (make-before-break: a new flow never lands on a backend
    /// whose flows are being reset).
    pub(super) fn mark_retired(&mut self) -> Result<(), ControllerError> {
        for i in 0..self.retired.len() {
            if self.retired[i].marked {
                continue;
            }
            let value = retired_value(&self.retired[i]);
            let id = self.retired[i].id;
            self.write_backend(id, &value)?;
            self.retired[i].marked = true;
            if self.retired[i].reset {
                self.reset_flows_now(id);
            }
        }
        Ok(())
    }

    /// Applies a new desired configuration, changing only what differs. All or nothing:
    /// validation and capacity ([`Self::check_capacity`]) are checked before any write, and
    /// a map error mid-way rolls back every write made before it (see
    /// [`Self::transaction`]); the error says which happened.
    pub fn apply(&mut self, new: Config) -> Result<ApplySummary, ControllerError> {
        new.validate()?;
        let old = &self.config;
        for (field, same) in [
            ("interfaces", old.interfaces == new.interfaces),
            ("xdp_mode", old.xdp_mode == new.xdp_mode),
            ("bpffs_root", old.bpffs_root == new.bpffs_root),
            ("api_socket", old.api_socket == new.api_socket),
            ("metrics_listen", old.metrics_listen == new.metrics_listen),
            ("limits", old.limits == new.limits),
            ("announce", old.announce == new.announce),
        ] {
            if !same {
                return Err(ControllerError::Rejected(format!(
                    "{field}: changing it needs a restart of lbd (limits also need `lbd --unload` first); the running configuration is unchanged"
                )));
            }
        }
        self.check_capacity(&new)?;
        self.transaction(|ctl| ctl.apply_checked(new))
    }

    /// Refuses `new` before any write when it needs more service or backend ids than are
    /// free. Mirrors what [`Self::apply_checked`] allocates: removed services free their ids
    /// first, new services take the lowest free ids in configuration order, and a backend
    /// re-added to the service id it was retired from revives its old id.
    ///
    /// The other bounded maps need no check of their own: `LB_SERVICES` and `LB_VIPS` hold
    /// `limits.max_services` entries and never hold more than the larger of the old and new
    /// service counts (removals and stale VIPs go first; [`Config::validate`] bounds the
    /// count), each service id owns its two Maglev tables, and [`Config::validate`] bounds
    /// the SNAT addresses.
    fn check_capacity(&self, new: &Config) -> Result<(), ControllerError> {
        let new_services = new.expanded_services();
        let same =
            |r: &ServiceState, s: &ServiceConfig| r.cfg.name == s.name && r.key == service_key(s);
        let kept: Vec<&ServiceState> = self
            .services
            .iter()
            .filter(|r| new_services.iter().any(|s| same(r, s)))
            .collect();
        let mut free_ids: BTreeSet<u32> = (0..new.limits.max_services)
            .filter(|id| !self.used_service_ids.contains(id) || !kept.iter().any(|r| r.id == *id))
            .collect();
        // Retired (service id, address) pairs a re-added backend revives, including the
        // backends of services this change removes.
        let mut revivable: BTreeSet<(u32, SocketAddrV4)> = self
            .retired
            .iter()
            .map(|r| (r.service_id, r.address))
            .collect();
        for r in &self.services {
            if !kept.iter().any(|k| k.id == r.id) {
                revivable.extend(r.backends.iter().map(|b| (r.id, b.cfg.address)));
            }
        }
        let mut need_services = 0u32;
        let mut need_backends = 0u32;
        for s in &new_services {
            let existing = kept.iter().find(|r| same(r, s));
            let id = match existing {
                Some(r) => Some(r.id),
                None => {
                    need_services += 1;
                    free_ids.pop_first()
                }
            };
            for b in &s.backends {
                if existing.is_some_and(|r| r.backend(b.address).is_some()) {
                    continue;
                }
                if !id.is_some_and(|id| revivable.remove(&(id, b.address))) {
                    need_backends += 1;
                }
            }
        }
        let free_services = new.limits.max_services
            - (self.used_service_ids.len() - (self.services.len() - kept.len())) as u32;
        if need_services > free_services {
            return Err(ControllerError::Capacity {
                limit: "limits.max_services",
                message: format!(
                    "{need_services} new services need ids but only {free_services} of {} are free; \
                     remove services, or raise limits.max_services (a limits change needs \
                     `lbd --unload` and a restart); nothing was changed",
                    new.limits.max_services
                ),
            });
        }
        let free_backends = new.limits.max_backends - 1 - self.used_backend_ids.len() as u32;
        if need_backends > free_backends {
            return Err(ControllerError::Capacity {
                limit: "limits.max_backends",
                message: format!(
                    "{need_backends} new backends need ids but only {free_backends} are free \
                     (limits.max_backends is {}, id 0 is reserved, and {} ids of removed \
                     backends wait for their flows to end: a conntrack sweep releases them); \
                     add fewer backends, retry once the flows of removed backends ended, or \
                     raise limits.max_backends (a limits change needs `lbd --unload` and a \
                     restart); nothing was changed",
                    new.limits.max_backends,
                    self.retired.len()
                ),
            });
        }
        Ok(())
    }

    /// [`Self::apply`] after the checks; runs inside a transaction.
    fn apply_checked(&mut self, new: Config) -> Result<ApplySummary, ControllerError> {
        let old = &self.config;
        let new_services = new.expanded_services();
        let removed_services: Vec<usize> = (0..self.services.len())
            .filter(|&i| {
                let r = &self.services[i];
                !new_services
                    .iter()
                    .any(|s| s.name == r.cfg.name && service_key(s) == r.key)
            })
            .collect();
        let mut summary = ApplySummary {
            warnings: new.advice().iter().map(|a| a.to_string()).collect(),
            ..ApplySummary::default()
        };
        if !self.globals_written
            || old.snat != new.snat
            || old.conntrack != new.conntrack
            || old.maglev.seed != new.maglev.seed
        {
            self.config.snat = new.snat.clone();
            self.config.conntrack = new.conntrack.clone();
            self.config.maglev.seed = new.maglev.seed;
            self.write_globals()?;
            summary.globals_changed = true;
        }

        // Removed services: entry first, then their backends wait for their flows.
        for &i in removed_services.iter().rev() {
            let svc = self.services.remove(i);
            self.write_remove_service(&svc.key)?;
            for b in &svc.backends {
                self.retire(svc.id, b, &svc.cfg);
            }
            self.used_service_ids.remove(&svc.id);
            summary.services_removed.push(svc.cfg.name.clone());
        }

        let mut next: Vec<ServiceState> = Vec::with_capacity(new_services.len());
        let mut current = std::mem::take(&mut self.services);
        for s in &new_services {
            let idx = current.iter().position(|r| r.cfg.name == s.name);
            let state = match idx {
                Some(k) => {
                    let mut svc = current.remove(k);
                    self.update_service(&mut svc, s, &mut summary)?;
                    svc
                }
                None => {
                    let id = self.alloc_service_id()?;
                    self.dp.reset_stats(Some(id), None)?;
                    let mut svc = ServiceState {
                        cfg: s.clone(),
                        id,
                        key: service_key(s),
                        active_slot: 1,
                        table_inputs: None,
                        flags: None,
                        forwarding: None,
                        backends: Vec::new(),
                        active_flows: 0,
                    };
                    svc.cfg.backends.clear();
                    self.update_service(&mut svc, s, &mut summary)?;
                    summary.services_added.push(s.name.clone());
                    svc
                }
            };
            next.push(state);
        }
        self.services = next;
        self.config = new;
        for i in 0..self.services.len() {
            if self.sync_service(i)? {
                let name = self.services[i].cfg.name.clone();
                if !summary.services_added.contains(&name) {
                    summary.tables_rewritten.push(name);
                }
            }
        }
        self.sync_vips()?;
        self.mark_retired()?;
        Ok(summary)
    }

    /// Updates `svc`'s backends to `new` (ids for new backends, retirement of removed ones).
    fn update_service(
        &mut self,
        svc: &mut ServiceState,
        new: &ServiceConfig,
        summary: &mut ApplySummary,
    ) -> Result<(), ControllerError> {
        let mut backends = Vec::with_capacity(new.backends.len());
        let mut old = std::mem::take(&mut svc.backends);
        for b in &new.backends {
            let label = format!("{}/{}", new.name, b.address);
            if let Some(k) = old.iter().position(|o| o.cfg.address == b.address) {
                let mut state = old.remove(k);
                if state.cfg != *b {
                    summary.backends_changed.push(label);
                    state.cfg = b.clone();
                }
                if new.health_check.kind == CheckKind::None && state.health() != Health::Up {
                    state.tracker = HealthTracker::new(Health::Up);
                }
                if new.health_check != svc.cfg.health_check {
                    // Its check task restarts: staleness counts from now.
                    state.verdicts = VerdictClock::new(std::time::Instant::now());
                }
                match (&new.db_cluster, state.db) {
                    (Some(_), None) => state.db = Some(DbGate::Hold),
                    (None, Some(_)) => state.db = None,
                    _ => {}
                }
                backends.push(state);
                continue;
            }
            // Re-added before its flows ended: revive the retired id (flows keep working).
            let revived = self
                .retired
                .iter()
                .position(|r| r.service_id == svc.id && r.address == b.address);
            let id = match revived {
                Some(r) => self.retired.remove(r).id,
                None => self.fresh_backend_id()?,
            };
            let mut state =
                new_backend_state(b.clone(), id, initial_health(new.health_check.kind), None);
            state.db = new.db_cluster.as_ref().map(|_| DbGate::Hold);
            backends.push(state);
            summary.backends_added.push(label);
        }
        for gone in old {
            summary
                .backends_removed
                .push(format!("{}/{}", new.name, gone.cfg.address));
            self.retire(svc.id, &gone, new);
        }
        svc.backends = backends;
        svc.cfg = new.clone();
        Ok(())
    }
}
