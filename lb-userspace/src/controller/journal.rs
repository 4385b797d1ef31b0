//! All-or-nothing changes: every map write of the controller goes through the methods here,
//! which (inside [`Controller::transaction`]) first read the entry's current value and keep an
//! undo step. When a step of the change fails, the undo steps run in reverse order (so the
//! rollback is make-before-break too: the service entry points back at its old table before
//! a backend it used is touched) and the controller's model is restored from a copy.
//!
//! Not undone: zeroed per-id stats of ids that were free (no service or backend owned them).

use super::*;
use lb_common::VipValue;

/// The write that restores one map entry (or range) to what it held before a change.
#[derive(Debug)]
pub(super) enum Undo {
    Global(GlobalConfig),
    Snat(Vec<Ipv4Addr>),
    Backend(u32, BackendValue),
    Maglev(u32, Vec<u32>),
    Service(ServiceKey, Option<ServiceValue>),
    Vip(u32, Option<VipValue>),
}

/// The controller's model as it was before a change.
pub(super) struct Saved {
    config: Config,
    services: Vec<ServiceState>,
    retired: Vec<RetiredBackend>,
    used_backend_ids: BTreeSet<u32>,
    used_service_ids: BTreeSet<u32>,
    global: GlobalConfig,
    vips: BTreeMap<u32, Option<VipValue>>,
    nat_vips: BTreeMap<u32, super::dsr_only::NatFlows>,
}

impl<D: Dataplane> Controller<D> {
    /// Runs `change` so that it is applied completely or not at all: on an error every map
    /// write it made is undone and the model restored. The error says which happened
    /// ([`ControllerError::RolledBack`], or [`ControllerError::RollbackFailed`] when an undo
    /// write failed too; the model then forgets what it wrote, so the next change rewrites
    /// every entry). An error before the first write is returned as it is.
    pub(super) fn transaction<T>(
        &mut self,
        change: impl FnOnce(&mut Self) -> Result<T, ControllerError>,
    ) -> Result<T, ControllerError> {
        let saved = Saved {
            config: self.config.clone(),
            services: self.services.clone(),
            retired: self.retired.clone(),
            used_backend_ids: self.used_backend_ids.clone(),
            used_service_ids: self.used_service_ids.clone(),
            global: self.global,
            vips: self.vips.clone(),
            nat_vips: self.nat_vips.clone(),
        };
        self.journal = Some(Vec::new());
        let result = change(self);
        let journal = self.journal.take().unwrap_or_default();
        let error = match result {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let Saved {
            config,
            services,
            retired,
            used_backend_ids,
            used_service_ids,
            global,
            vips,
            nat_vips,
        } = saved;
        self.config = config;
        self.services = services;
        self.retired = retired;
        self.used_backend_ids = used_backend_ids;
        self.used_service_ids = used_service_ids;
        self.global = global;
        self.vips = vips;
        self.nat_vips = nat_vips;
        if journal.is_empty() {
            return Err(error);
        }
        let steps = journal.len();
        let mut failures = Vec::new();
        for undo in journal.into_iter().rev() {
            if let Err(e) = self.run_undo(undo) {
                failures.push(e);
            }
        }
        if failures.is_empty() {
            tracing::warn!(error = %error, steps, "change failed; rolled back");
            return Err(ControllerError::RolledBack {
                source: Box::new(error),
            });
        }
        self.forget_written();
        let undo_failures = failures.len();
        Err(ControllerError::RollbackFailed {
            source: Box::new(error),
            first: failures.swap_remove(0),
            undo_failures,
        })
    }

    /// After a failed rollback the maps may hold anything: mark every entry as unknown so the
    /// next change (or health transition) writes it again.
    fn forget_written(&mut self) {
        for svc in &mut self.services {
            svc.table_inputs = None;
            svc.flags = None;
            for b in &mut svc.backends {
                b.written_flags = None;
            }
        }
        for v in self.vips.values_mut() {
            *v = None;
        }
        self.globals_written = false;
    }

    fn run_undo(&mut self, undo: Undo) -> Result<(), DataplaneError> {
        match undo {
            Undo::Global(g) => self.dp.set_global_config(&g),
            Undo::Snat(a) => self.dp.set_snat_addrs(&a),
            Undo::Backend(id, v) if v == BackendValue::default() => self.dp.clear_backend(id),
            Undo::Backend(id, v) => self.dp.set_backend(id, &v),
            Undo::Maglev(offset, table) => self.dp.write_maglev(offset, &table),
            Undo::Service(key, Some(v)) => self.dp.set_service(&key, &v),
            Undo::Service(key, None) => self.dp.remove_service(&key),
            Undo::Vip(vip, Some(v)) => self.dp.set_vip(vip, &v),
            Undo::Vip(vip, None) => self.dp.remove_vip(vip),
        }
    }

    /// Inside a transaction, reads what a write is about to replace.
    fn record(
        &mut self,
        read: impl FnOnce(&D) -> Result<Undo, DataplaneError>,
    ) -> Result<(), DataplaneError> {
        if let Some(journal) = self.journal.as_mut() {
            journal.push(read(&self.dp)?);
        }
        Ok(())
    }

    pub(super) fn write_global_config(&mut self, cfg: &GlobalConfig) -> Result<(), DataplaneError> {
        self.record(|dp| dp.global_config().map(Undo::Global))?;
        self.dp.set_global_config(cfg)
    }

    pub(super) fn write_snat_addrs(&mut self, addrs: &[Ipv4Addr]) -> Result<(), DataplaneError> {
        self.record(|dp| dp.snat_addrs().map(Undo::Snat))?;
        self.dp.set_snat_addrs(addrs)
    }

    pub(super) fn write_backend(
        &mut self,
        id: u32,
        value: &BackendValue,
    ) -> Result<(), DataplaneError> {
        self.record(|dp| dp.backend(id).map(|v| Undo::Backend(id, v)))?;
        self.dp.set_backend(id, value)
    }

    pub(super) fn write_clear_backend(&mut self, id: u32) -> Result<(), DataplaneError> {
        self.record(|dp| dp.backend(id).map(|v| Undo::Backend(id, v)))?;
        self.dp.clear_backend(id)
    }

    pub(super) fn write_maglev(
        &mut self,
        offset: u32,
        table: &[u32],
    ) -> Result<(), DataplaneError> {
        self.record(|dp| {
            dp.read_maglev(offset, table.len())
                .map(|old| Undo::Maglev(offset, old))
        })?;
        self.dp.write_maglev(offset, table)
    }

    pub(super) fn write_service(
        &mut self,
        key: &ServiceKey,
        value: &ServiceValue,
    ) -> Result<(), DataplaneError> {
        self.record(|dp| dp.service(key).map(|v| Undo::Service(*key, v)))?;
        self.dp.set_service(key, value)
    }

    pub(super) fn write_remove_service(&mut self, key: &ServiceKey) -> Result<(), DataplaneError> {
        self.record(|dp| dp.service(key).map(|v| Undo::Service(*key, v)))?;
        self.dp.remove_service(key)
    }

    pub(super) fn write_vip(&mut self, vip: u32, value: &VipValue) -> Result<(), DataplaneError> {
        self.record(|dp| dp.vip(vip).map(|v| Undo::Vip(vip, v)))?;
        self.dp.set_vip(vip, value)
    }

    pub(super) fn write_remove_vip(&mut self, vip: u32) -> Result<(), DataplaneError> {
        self.record(|dp| dp.vip(vip).map(|v| Undo::Vip(vip, v)))?;
        self.dp.remove_vip(vip)
    }
}
