//! The reconciler: turns the desired configuration plus health results into data-plane state.
//!
//! It owns the [`Dataplane`] and the model ([`ServiceState`] per service) and guarantees:
//! - **Stable ids.** Service and backend ids are allocated here (backend id 0 is reserved) and
//!   re-adopted from the pinned maps on start, so conntrack entries stay valid across restarts.
//! - **Make-before-break.** Backends that become usable are written first, then the inactive
//!   half of the service's double-buffered Maglev table, then the service entry is switched
//!   with one write; backends that become `DOWN` get the flag only after the switch.
//! - **Who gets new flows.** Healthy (or not yet checked), non-drained primaries; if there is
//!   none, healthy non-drained backups; if none at all, the service is flagged
//!   `SERVICE_F_NO_BACKEND` (SYNs are refused with a RST).
//! - **Failure vs drain vs removal.** A failed backend gets `BACKEND_F_DOWN` (its flows move);
//!   a drained one leaves the table only (flows stay); a removed one leaves the table at once
//!   and keeps its id and entry until a conntrack sweep shows no live flow, then is cleared.
//! - **Minimal reloads.** [`Controller::apply`] changes only what differs; a service whose
//!   usable set is unchanged is not rewritten. A configuration that fails validation changes
//!   nothing.

use crate::config::{CheckKind, Config, ConfigError, ServiceConfig};
use crate::dataplane::{ConntrackSweep, ConntrackSweeper, Dataplane, DataplaneError};
use crate::maglev::{self, MaglevBackend};
use crate::model::{
    is_usable, service_key, BackendState, Health, HealthTracker, ServiceState, Transition,
};
use lb_common::{
    BackendValue, GlobalConfig, ServiceKey, ServiceValue, VipValue, BACKEND_F_DOWN,
    BACKEND_F_DRAINING, SERVICE_F_NO_BACKEND,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::SystemTime;

/// Errors of the controller.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The new configuration is invalid; nothing was changed.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The change is valid but cannot be applied to a running lbd.
    #[error("{0}")]
    Rejected(String),
    /// A map write failed.
    #[error("data plane: {0}")]
    Dataplane(#[from] DataplaneError),
    /// Maglev population failed (cannot happen with a validated config).
    #[error("maglev: {0}")]
    Maglev(#[from] maglev::MaglevError),
}

/// A backend removed from the configuration that still has (or may have) live flows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetiredBackend {
    /// Its id (still reserved).
    pub id: u32,
    /// The service id it belonged to.
    pub service_id: u32,
    /// Its address.
    pub address: SocketAddrV4,
    /// Sweep generation at retirement: only a later sweep may clear it.
    pub retired_at_sweep: u64,
}

/// What [`Controller::apply`] changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ApplySummary {
    /// Services added.
    pub services_added: Vec<String>,
    /// Services removed.
    pub services_removed: Vec<String>,
    /// Backends added, as `service/address`.
    pub backends_added: Vec<String>,
    /// Backends removed (retired), as `service/address`.
    pub backends_removed: Vec<String>,
    /// Backends whose weight, backup or drain changed, as `service/address`.
    pub backends_changed: Vec<String>,
    /// Services whose Maglev table or flags were rewritten.
    pub tables_rewritten: Vec<String>,
    /// Global settings (SNAT, timeouts) rewritten.
    pub globals_changed: bool,
}

impl std::fmt::Display for ApplySummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        for (what, list) in [
            ("services added", &self.services_added),
            ("services removed", &self.services_removed),
            ("backends added", &self.backends_added),
            ("backends removed", &self.backends_removed),
            ("backends changed", &self.backends_changed),
            ("tables rewritten", &self.tables_rewritten),
        ] {
            if !list.is_empty() {
                parts.push(format!("{what}: {}", list.join(", ")));
            }
        }
        if self.globals_changed {
            parts.push("global settings rewritten".into());
        }
        if parts.is_empty() {
            f.write_str("no changes")
        } else {
            f.write_str(&parts.join("; "))
        }
    }
}

/// A health transition reported by [`Controller::health_result`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthChange {
    /// Service name.
    pub service: String,
    /// Backend address.
    pub backend: SocketAddrV4,
    /// Previous health.
    pub from: Health,
    /// New health.
    pub to: Health,
}

/// Owns the data plane and the running state.
pub struct Controller<D: Dataplane> {
    dp: D,
    config: Config,
    services: Vec<ServiceState>,
    retired: Vec<RetiredBackend>,
    used_backend_ids: BTreeSet<u32>,
    used_service_ids: BTreeSet<u32>,
    global: GlobalConfig,
    vips: BTreeMap<u32, u32>,
    sweep_generation: u64,
    last_sweep: Option<ConntrackSweep>,
}

fn backend_flags(b: &BackendState) -> u32 {
    let mut flags = 0;
    if b.health() == Health::Down {
        flags |= BACKEND_F_DOWN;
    }
    if b.cfg.drain {
        flags |= BACKEND_F_DRAINING;
    }
    flags
}

fn backend_value(b: &BackendState, service_id: u32) -> BackendValue {
    BackendValue {
        addr_be: lb_common::ipv4_to_be(*b.cfg.address.ip()),
        port_be: lb_common::port_to_be(b.cfg.address.port()),
        _pad: 0,
        flags: backend_flags(b),
        service_id,
    }
}

fn initial_health(kind: CheckKind) -> Health {
    if kind == CheckKind::None {
        Health::Up
    } else {
        Health::Unknown
    }
}

impl<D: Dataplane> Controller<D> {
    /// Validates `config`, re-adopts whatever the data plane already holds (ids, health,
    /// table halves) and programs the data plane to match `config`.
    pub fn new(dp: D, config: Config) -> Result<Self, ControllerError> {
        config.validate()?;
        let m = config.limits.maglev_table_size;
        let pinned_services = dp.services()?;
        let pinned_backends = dp.backends()?;
        let pinned_vips = dp.vips()?;
        let mut ctl = Controller {
            dp,
            config: config.clone(),
            services: Vec::new(),
            retired: Vec::new(),
            used_backend_ids: BTreeSet::new(),
            used_service_ids: BTreeSet::new(),
            global: config.global_config(),
            vips: BTreeMap::new(),
            sweep_generation: 0,
            last_sweep: None,
        };

        // Adopt services whose key is still configured; remove the others.
        let mut adopted: HashMap<ServiceKey, ServiceValue> = HashMap::new();
        for (key, value) in pinned_services {
            let wanted = config.services.iter().any(|s| service_key(s) == key);
            if wanted && value.service_id < config.limits.max_services {
                ctl.used_service_ids.insert(value.service_id);
                adopted.insert(key, value);
            } else {
                ctl.dp.remove_service(&key)?;
            }
        }
        // Adopt backends of adopted services that are still configured; retire the others.
        let mut adopted_backends: HashMap<(u32, SocketAddrV4), (u32, BackendValue)> =
            HashMap::new();
        for (id, value) in pinned_backends {
            if id == lb_common::BACKEND_ID_NONE || id >= config.limits.max_backends {
                continue;
            }
            ctl.used_backend_ids.insert(id);
            let address = SocketAddrV4::new(
                lb_common::ipv4_from_be(value.addr_be),
                lb_common::port_from_be(value.port_be),
            );
            let configured = adopted.values().any(|s| s.service_id == value.service_id)
                && config.services.iter().any(|s| {
                    adopted.get(&service_key(s)).map(|v| v.service_id) == Some(value.service_id)
                        && s.backends.iter().any(|b| b.address == address)
                });
            if configured {
                adopted_backends.insert((value.service_id, address), (id, value));
            } else {
                ctl.retired.push(RetiredBackend {
                    id,
                    service_id: value.service_id,
                    address,
                    retired_at_sweep: 0,
                });
            }
        }

        ctl.write_globals()?;
        for svc_cfg in &config.services {
            let key = service_key(svc_cfg);
            let (id, active_slot) = match adopted.get(&key) {
                Some(v) => {
                    let slot = if v.table_size == m
                        && v.table_offset == lb_common::maglev_table_offset(v.service_id, 1, m)
                    {
                        1
                    } else {
                        0
                    };
                    (v.service_id, slot)
                }
                None => {
                    let id = ctl.alloc_service_id()?;
                    ctl.dp.reset_stats(Some(id), None)?;
                    (id, 1) // the first write goes to slot 0
                }
            };
            let mut backends = Vec::new();
            for b in &svc_cfg.backends {
                let state = match adopted_backends.get(&(id, b.address)) {
                    Some(&(bid, value)) => {
                        let health = if svc_cfg.health_check.kind == CheckKind::None {
                            Health::Up
                        } else if value.flags & BACKEND_F_DOWN != 0 {
                            Health::Down
                        } else {
                            Health::Up
                        };
                        new_backend_state(b.clone(), bid, health, value.flags)
                    }
                    None => {
                        let bid = ctl.alloc_backend_id()?;
                        ctl.dp.reset_stats(None, Some(bid))?;
                        new_backend_state(
                            b.clone(),
                            bid,
                            initial_health(svc_cfg.health_check.kind),
                            u32::MAX,
                        )
                    }
                };
                backends.push(state);
            }
            ctl.services.push(ServiceState {
                cfg: svc_cfg.clone(),
                id,
                key,
                active_slot,
                table_inputs: None,
                flags: u32::MAX,
                backends,
                active_flows: 0,
            });
        }
        for i in 0..ctl.services.len() {
            ctl.sync_service(i)?;
        }
        for (vip, _) in pinned_vips {
            ctl.vips.insert(vip, u32::MAX); // forces a rewrite or a removal
        }
        ctl.sync_vips()?;
        Ok(ctl)
    }

    /// The running configuration (what `config dump` shows).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The running services, in configuration order.
    pub fn services(&self) -> &[ServiceState] {
        &self.services
    }

    /// Backends removed from the configuration that still wait for their flows to end.
    pub fn retired(&self) -> &[RetiredBackend] {
        &self.retired
    }

    /// The data plane (for reading counters).
    pub fn dataplane(&self) -> &D {
        &self.dp
    }

    /// The global settings last written.
    pub fn global_config(&self) -> &GlobalConfig {
        &self.global
    }

    /// The last conntrack sweep, if any ran.
    pub fn last_sweep(&self) -> Option<&ConntrackSweep> {
        self.last_sweep.as_ref()
    }

    /// Consumes the controller, returning the data plane.
    pub fn into_dataplane(self) -> D {
        self.dp
    }

    fn alloc_service_id(&mut self) -> Result<u32, ControllerError> {
        let id = (0..self.config.limits.max_services)
            .find(|id| !self.used_service_ids.contains(id))
            .ok_or_else(|| {
                ControllerError::Rejected(format!(
                    "no free service id (limits.max_services is {})",
                    self.config.limits.max_services
                ))
            })?;
        self.used_service_ids.insert(id);
        Ok(id)
    }

    fn alloc_backend_id(&mut self) -> Result<u32, ControllerError> {
        let id = (1..self.config.limits.max_backends)
            .find(|id| !self.used_backend_ids.contains(id))
            .ok_or_else(|| {
                ControllerError::Rejected(format!(
                    "no free backend id (limits.max_backends is {}; {} ids wait for their flows to end)",
                    self.config.limits.max_backends,
                    self.retired.len()
                ))
            })?;
        self.used_backend_ids.insert(id);
        Ok(id)
    }

    fn write_globals(&mut self) -> Result<(), ControllerError> {
        self.dp.set_snat_addrs(&self.config.snat.addresses)?;
        self.global = self.config.global_config();
        self.dp.set_global_config(&self.global)?;
        Ok(())
    }

    /// Brings service `i`'s backends, Maglev table and entry in line with its state.
    /// Returns whether the table or service entry was rewritten.
    fn sync_service(&mut self, i: usize) -> Result<bool, ControllerError> {
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

    fn sync_vips(&mut self) -> Result<(), ControllerError> {
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

    fn retire(&mut self, service_id: u32, b: &BackendState) {
        self.retired.push(RetiredBackend {
            id: b.id,
            service_id,
            address: b.cfg.address,
            retired_at_sweep: self.sweep_generation,
        });
    }

    /// Applies a new desired configuration, changing only what differs. On a validation
    /// error nothing changes.
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
        ] {
            if !same {
                return Err(ControllerError::Rejected(format!(
                    "{field}: changing it needs a restart of lbd (limits also need `lbd --unload` first); the running configuration is unchanged"
                )));
            }
        }
        // Ids needed up front, so running out of them fails before anything is written.
        let mut need_services = 0u32;
        let mut need_backends = 0u32;
        for s in &new.services {
            match self
                .services
                .iter()
                .find(|r| r.cfg.name == s.name && r.key == service_key(s))
            {
                Some(r) => {
                    need_backends += s
                        .backends
                        .iter()
                        .filter(|b| r.backend(b.address).is_none())
                        .count() as u32
                }
                None => {
                    need_services += 1;
                    need_backends += s.backends.len() as u32;
                }
            }
        }
        let removed_services: Vec<usize> = (0..self.services.len())
            .filter(|&i| {
                let r = &self.services[i];
                !new.services
                    .iter()
                    .any(|s| s.name == r.cfg.name && service_key(s) == r.key)
            })
            .collect();
        let free_services = new.limits.max_services - self.used_service_ids.len() as u32
            + removed_services.len() as u32;
        let free_backends = new.limits.max_backends - 1 - self.used_backend_ids.len() as u32;
        if need_services > free_services {
            return Err(ControllerError::Rejected(format!(
                "{need_services} new services need ids but only {free_services} are free (limits.max_services)"
            )));
        }
        if need_backends > free_backends {
            return Err(ControllerError::Rejected(format!(
                "{need_backends} new backends need ids but only {free_backends} are free (limits.max_backends; {} ids wait for flows of removed backends to end)",
                self.retired.len()
            )));
        }

        let mut summary = ApplySummary::default();
        if old.snat != new.snat || old.conntrack != new.conntrack {
            self.config.snat = new.snat.clone();
            self.config.conntrack = new.conntrack.clone();
            self.write_globals()?;
            summary.globals_changed = true;
        }

        // Removed services: entry first, then their backends wait for their flows.
        for &i in removed_services.iter().rev() {
            let svc = self.services.remove(i);
            self.dp.remove_service(&svc.key)?;
            for b in &svc.backends {
                self.retire(svc.id, b);
            }
            self.used_service_ids.remove(&svc.id);
            summary.services_removed.push(svc.cfg.name.clone());
        }

        let mut next: Vec<ServiceState> = Vec::with_capacity(new.services.len());
        let mut current = std::mem::take(&mut self.services);
        for s in &new.services {
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
                        flags: u32::MAX,
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
                None => {
                    let id = self.alloc_backend_id()?;
                    self.dp.reset_stats(None, Some(id))?;
                    id
                }
            };
            backends.push(new_backend_state(
                b.clone(),
                id,
                initial_health(new.health_check.kind),
                u32::MAX,
            ));
            summary.backends_added.push(label);
        }
        for gone in old {
            summary
                .backends_removed
                .push(format!("{}/{}", new.name, gone.cfg.address));
            self.retire(svc.id, &gone);
        }
        svc.backends = backends;
        svc.cfg = new.clone();
        Ok(())
    }

    /// Feeds one health-check result; on a transition updates the data plane and returns it.
    pub fn health_result(
        &mut self,
        service: &str,
        backend: SocketAddrV4,
        ok: bool,
        reason: &str,
    ) -> Result<Option<HealthChange>, ControllerError> {
        let Some(i) = self.services.iter().position(|s| s.cfg.name == service) else {
            return Ok(None); // stale result of a removed service
        };
        let hc = self.services[i].cfg.health_check.clone();
        let Some(b) = self.services[i]
            .backends
            .iter_mut()
            .find(|b| b.cfg.address == backend)
        else {
            return Ok(None);
        };
        let from = b.health();
        let Some(to) = b.tracker.record(ok, hc.rise, hc.fall) else {
            return Ok(None);
        };
        b.transitions += 1;
        b.last_transition = Some(Transition {
            at: SystemTime::now(),
            to,
            reason: reason.to_string(),
        });
        self.sync_service(i)?;
        Ok(Some(HealthChange {
            service: service.to_string(),
            backend,
            from,
            to,
        }))
    }

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
        for svc in &mut self.services {
            svc.active_flows = sweep.flows_by_service.get(&svc.id).copied().unwrap_or(0);
            for b in &mut svc.backends {
                b.active_flows = sweep.flows_by_backend.get(&b.id).copied().unwrap_or(0);
            }
        }
        let mut keep = Vec::new();
        for r in std::mem::take(&mut self.retired) {
            let live = sweep.flows_by_backend.get(&r.id).copied().unwrap_or(0);
            if live == 0 && r.retired_at_sweep < generation {
                self.dp.clear_backend(r.id)?;
                self.used_backend_ids.remove(&r.id);
                tracing::info!(backend = %r.address, id = r.id, "removed backend has no flows left; id released");
            } else {
                keep.push(r);
            }
        }
        self.retired = keep;
        self.last_sweep = Some(sweep);
        Ok(())
    }

    /// Current live VIPs (for tests and status).
    pub fn vips(&self) -> Vec<Ipv4Addr> {
        self.vips
            .keys()
            .map(|&v| lb_common::ipv4_from_be(v))
            .collect()
    }
}

fn new_backend_state(
    cfg: crate::config::BackendConfig,
    id: u32,
    health: Health,
    written_flags: u32,
) -> BackendState {
    BackendState {
        cfg,
        id,
        tracker: HealthTracker::new(health),
        transitions: 0,
        last_transition: None,
        in_table: false,
        written_flags,
        active_flows: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::fake::{FakeDataplane, Op};

    const BASE: &str = r#"
interfaces: [eth0]
snat:
  addresses: [10.0.255.1]
limits:
  maglev_table_size: 1009
services:
  - name: web
    vip: 192.0.2.10
    port: 80
    backends:
      - address: 10.1.1.2:8080
      - address: 10.1.2.2:8080
      - address: 10.1.3.2:8080
        backup: true
  - name: api
    vip: 192.0.2.10
    port: 443
    health_check: {type: none}
    backends:
      - address: 10.2.1.2:8443
"#;

    fn cfg(text: &str) -> Config {
        Config::from_yaml_str(text, "test.yaml").unwrap_or_else(|e| panic!("{e}"))
    }

    fn addr(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    fn start(text: &str) -> (Controller<FakeDataplane>, FakeDataplane) {
        let dp = FakeDataplane::new();
        let ctl = Controller::new(dp.clone(), cfg(text)).unwrap();
        (ctl, dp)
    }

    fn id_of(ctl: &Controller<FakeDataplane>, svc: &str, a: &str) -> u32 {
        ctl.services()
            .iter()
            .find(|s| s.cfg.name == svc)
            .unwrap()
            .backend(addr(a))
            .unwrap()
            .id
    }

    fn table_ids(dp: &FakeDataplane, ctl: &Controller<FakeDataplane>, svc: &str) -> BTreeSet<u32> {
        let s = ctl.services().iter().find(|s| s.cfg.name == svc).unwrap();
        dp.active_table(&s.key).keys().copied().collect()
    }

    #[test]
    fn ids_are_allocated_from_one_and_services_from_zero() {
        let (ctl, dp) = start(BASE);
        let ids: Vec<u32> = ctl.services().iter().map(|s| s.id).collect();
        assert_eq!(ids, vec![0, 1]);
        let mut bids: Vec<u32> = ctl
            .services()
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| b.id))
            .collect();
        bids.sort();
        assert_eq!(bids, vec![1, 2, 3, 4]);
        assert!(!dp.state().backends.contains_key(&0));
        assert_eq!(dp.state().vips.len(), 1);
        assert_eq!(dp.state().vips.values().next().unwrap().service_count, 2);
        assert_eq!(dp.state().snat, vec![Ipv4Addr::new(10, 0, 255, 1)]);
    }

    #[test]
    fn new_service_is_written_make_before_break() {
        let (ctl, dp) = start(BASE);
        let web = &ctl.services()[0];
        let ops = dp.state().ops.clone();
        let pos = |pred: &dyn Fn(&Op) -> bool| ops.iter().position(pred).unwrap();
        let first_table = pos(&|o| matches!(o, Op::WriteMaglev(..)));
        let last_backend = ops
            .iter()
            .rposition(
                |o| matches!(o, Op::SetBackend(id, _) if web.backends.iter().any(|b| b.id == *id)),
            )
            .unwrap();
        let service = pos(&|o| matches!(o, Op::SetService(0, ..)));
        assert!(
            last_backend < first_table && first_table < service,
            "{ops:?}"
        );
        // Slot 0 is written first; the service then points at it.
        assert_eq!(ops[first_table], Op::WriteMaglev(0, 1009));
        assert_eq!(ops[service], Op::SetService(0, 0, 0));
        // Backups are not in the table while primaries are usable.
        assert_eq!(
            table_ids(&dp, &ctl, "web"),
            [
                id_of(&ctl, "web", "10.1.1.2:8080"),
                id_of(&ctl, "web", "10.1.2.2:8080")
            ]
            .into()
        );
    }

    #[test]
    fn failure_moves_to_backups_and_sets_down_after_the_switch() {
        let (mut ctl, dp) = start(BASE);
        let p1 = addr("10.1.1.2:8080");
        let p2 = addr("10.1.2.2:8080");
        let id1 = id_of(&ctl, "web", "10.1.1.2:8080");
        let id3 = id_of(&ctl, "web", "10.1.3.2:8080");
        // Unknown -> Up on the first success, no table change.
        let change = ctl.health_result("web", p1, true, "ok").unwrap().unwrap();
        assert_eq!((change.from, change.to), (Health::Unknown, Health::Up));
        ctl.health_result("web", p2, true, "ok").unwrap();
        let before = dp.state().ops.len();
        // Up -> Down after fall (3) failures.
        assert!(ctl
            .health_result("web", p1, false, "refused")
            .unwrap()
            .is_none());
        assert!(ctl
            .health_result("web", p1, false, "refused")
            .unwrap()
            .is_none());
        assert_eq!(
            dp.state().ops.len(),
            before,
            "no writes before the transition"
        );
        let change = ctl
            .health_result("web", p1, false, "refused")
            .unwrap()
            .unwrap();
        assert_eq!(change.to, Health::Down);
        let ops = dp.state().ops[before..].to_vec();
        assert!(matches!(ops[0], Op::WriteMaglev(1009, 1009)), "{ops:?}");
        assert!(matches!(ops[1], Op::SetService(0, 1009, 0)), "{ops:?}");
        assert_eq!(ops[2], Op::SetBackend(id1, BACKEND_F_DOWN));
        assert!(!table_ids(&dp, &ctl, "web").contains(&id1));
        // Second primary fails: the backup takes over.
        for _ in 0..3 {
            ctl.health_result("web", p2, false, "timeout").unwrap();
        }
        assert_eq!(table_ids(&dp, &ctl, "web"), [id3].into());
        // A primary recovers after rise (2) successes: backup leaves the table.
        assert!(ctl.health_result("web", p1, true, "ok").unwrap().is_none());
        let before = dp.state().ops.len();
        ctl.health_result("web", p1, true, "ok").unwrap().unwrap();
        let ops = dp.state().ops[before..].to_vec();
        assert_eq!(
            ops[0],
            Op::SetBackend(id1, 0),
            "flag cleared before the table: {ops:?}"
        );
        assert!(matches!(ops[1], Op::WriteMaglev(..)));
        assert_eq!(table_ids(&dp, &ctl, "web"), [id1].into());
        let b = ctl.services()[0].backend(p1).unwrap();
        assert_eq!(b.transitions, 3);
        assert_eq!(b.last_transition.as_ref().unwrap().to, Health::Up);
    }

    #[test]
    fn no_usable_backend_flags_the_service() {
        let (mut ctl, dp) = start(BASE);
        for a in ["10.1.1.2:8080", "10.1.2.2:8080", "10.1.3.2:8080"] {
            ctl.health_result("web", addr(a), false, "down").unwrap();
        }
        let key = ctl.services()[0].key;
        assert_eq!(dp.state().services[&key].flags, SERVICE_F_NO_BACKEND);
        ctl.health_result("web", addr("10.1.3.2:8080"), true, "ok")
            .unwrap();
        ctl.health_result("web", addr("10.1.3.2:8080"), true, "ok")
            .unwrap();
        assert_eq!(dp.state().services[&key].flags, 0);
    }

    #[test]
    fn drain_leaves_the_table_but_keeps_the_entry() {
        let (mut ctl, dp) = start(BASE);
        let id1 = id_of(&ctl, "web", "10.1.1.2:8080");
        let mut c = ctl.config().clone();
        c.services[0].backends[0].drain = true;
        let summary = ctl.apply(c).unwrap();
        assert_eq!(
            summary.backends_changed,
            vec!["web/10.1.1.2:8080".to_string()]
        );
        assert_eq!(summary.tables_rewritten, vec!["web".to_string()]);
        assert!(!table_ids(&dp, &ctl, "web").contains(&id1));
        let flags = dp.state().backends[&id1].flags;
        assert_eq!(flags, BACKEND_F_DRAINING, "drained, not down");
    }

    #[test]
    fn reload_touches_only_what_changed() {
        let (mut ctl, dp) = start(BASE);
        let before = dp.state().ops.len();
        assert_eq!(ctl.apply(cfg(BASE)).unwrap(), ApplySummary::default());
        assert_eq!(dp.state().ops.len(), before, "identical config: no writes");

        let mut c = ctl.config().clone();
        c.services[0].backends[1].weight = 5;
        let summary = ctl.apply(c).unwrap();
        assert_eq!(summary.tables_rewritten, vec!["web".to_string()]);
        let ops = dp.state().ops[before..].to_vec();
        assert!(
            ops.iter().all(|o| !matches!(o, Op::SetService(1, ..))),
            "api untouched: {ops:?}"
        );
        // A change to a backup that is not in the table rewrites nothing.
        let before = dp.state().ops.len();
        let mut c = ctl.config().clone();
        c.services[0].backends[2].weight = 7;
        let summary = ctl.apply(c).unwrap();
        assert!(summary.tables_rewritten.is_empty());
        assert_eq!(dp.state().ops.len(), before);
    }

    #[test]
    fn removed_backend_keeps_its_id_until_its_flows_end() {
        let (mut ctl, dp) = start(BASE);
        let id2 = id_of(&ctl, "web", "10.1.2.2:8080");
        dp.state().live_flows.insert(id2, (0, 4));
        let mut c = ctl.config().clone();
        c.services[0].backends.remove(1);
        let summary = ctl.apply(c.clone()).unwrap();
        assert_eq!(
            summary.backends_removed,
            vec!["web/10.1.2.2:8080".to_string()]
        );
        assert!(!table_ids(&dp, &ctl, "web").contains(&id2));
        assert_eq!(
            dp.state().backends[&id2].flags,
            0,
            "entry kept, not down: flows stay"
        );
        ctl.sweep(0).unwrap();
        assert!(dp.state().backends.contains_key(&id2));
        assert_eq!(ctl.retired().len(), 1);
        // A new backend cannot take the id while it is retired.
        c.services[0].backends.push(crate::config::BackendConfig {
            address: addr("10.1.9.2:8080"),
            weight: 1,
            backup: false,
            drain: false,
        });
        ctl.apply(c).unwrap();
        assert_ne!(id_of(&ctl, "web", "10.1.9.2:8080"), id2);
        dp.state().live_flows.clear();
        ctl.sweep(0).unwrap();
        assert!(!dp.state().backends.contains_key(&id2));
        assert!(ctl.retired().is_empty());
    }

    #[test]
    fn backend_retired_during_a_walk_outlives_that_sweep() {
        let (mut ctl, dp) = start(BASE);
        let id2 = id_of(&ctl, "web", "10.1.2.2:8080");
        // The walk starts (off-lock in the daemon) and sees no flow of b2 yet...
        let (mut sweeper, cfg, generation) = ctl.begin_sweep().unwrap();
        let walked = sweeper.sweep(0, &cfg).unwrap();
        // ...while b2 is removed and gets flows the walk could not see.
        let mut c = ctl.config().clone();
        c.services[0].backends.remove(1);
        ctl.apply(c).unwrap();
        ctl.finish_sweep(walked, generation).unwrap();
        assert!(
            dp.state().backends.contains_key(&id2),
            "a sweep that began before the removal must not clear the backend"
        );
        assert_eq!(ctl.retired().len(), 1);
        // The next full sweep sees no live flow and releases it.
        ctl.sweep(0).unwrap();
        assert!(!dp.state().backends.contains_key(&id2));
    }

    #[test]
    fn re_added_backend_gets_its_old_id_back() {
        let (mut ctl, dp) = start(BASE);
        let id2 = id_of(&ctl, "web", "10.1.2.2:8080");
        dp.state().live_flows.insert(id2, (0, 1));
        let orig = ctl.config().clone();
        let mut c = orig.clone();
        c.services[0].backends.remove(1);
        ctl.apply(c).unwrap();
        ctl.apply(orig).unwrap();
        assert_eq!(id_of(&ctl, "web", "10.1.2.2:8080"), id2);
        assert!(ctl.retired().is_empty());
    }

    #[test]
    fn bad_reload_changes_nothing() {
        let (mut ctl, dp) = start(BASE);
        let before_ops = dp.state().ops.len();
        let before = ctl.config().clone();
        let mut c = before.clone();
        c.services[0].backends[0].weight = 0;
        let err = ctl.apply(c).unwrap_err().to_string();
        assert!(err.contains("services[0].backends[0].weight"), "{err}");
        let mut c = before.clone();
        c.limits.max_backends = 10;
        let err = ctl.apply(c).unwrap_err().to_string();
        assert!(err.starts_with("limits:"), "{err}");
        assert_eq!(ctl.config(), &before);
        assert_eq!(dp.state().ops.len(), before_ops);
    }

    #[test]
    fn services_are_added_and_removed_with_their_vips() {
        let (mut ctl, dp) = start(BASE);
        let mut c = ctl.config().clone();
        c.services.remove(1);
        c.services[0].vip = Ipv4Addr::new(192, 0, 2, 20);
        let summary = ctl.apply(c).unwrap();
        assert_eq!(summary.services_removed.len(), 2, "{summary}");
        assert_eq!(summary.services_added, vec!["web".to_string()]);
        assert_eq!(ctl.vips(), vec![Ipv4Addr::new(192, 0, 2, 20)]);
        let s = dp.state();
        assert_eq!(s.services.len(), 1);
        assert_eq!(s.vips.len(), 1);
        // The re-created service got id 0 back, so its backends revived their retired ids;
        // the api backend waits for a sweep.
        assert_eq!(ctl.services()[0].id, 0);
        assert_eq!(ctl.retired().len(), 1);
        assert_eq!(ctl.retired()[0].address, addr("10.2.1.2:8443"));
    }

    #[test]
    fn restart_re_adopts_ids_health_and_table() {
        let (mut ctl, dp) = start(BASE);
        let p1 = addr("10.1.1.2:8080");
        for _ in 0..1 {
            ctl.health_result("web", p1, false, "refused").unwrap();
        }
        let ids_before: Vec<(String, u32, Health)> = ctl
            .services()
            .iter()
            .flat_map(|s| {
                s.backends
                    .iter()
                    .map(move |b| (s.cfg.name.clone(), b.id, b.health()))
            })
            .collect();
        let key = ctl.services()[0].key;
        let table_before = dp.active_table(&key);
        drop(ctl);

        // New controller over the same (pinned) maps and the same config.
        let ctl2 = Controller::new(dp.clone(), cfg(BASE)).unwrap();
        let ids_after: Vec<(String, u32, Health)> = ctl2
            .services()
            .iter()
            .flat_map(|s| {
                s.backends
                    .iter()
                    .map(move |b| (s.cfg.name.clone(), b.id, b.health()))
            })
            .collect();
        // Same ids; the down backend stays down; the never-checked Unknown ones re-adopt as Up.
        for (b, a) in ids_before.iter().zip(&ids_after) {
            assert_eq!(b.1, a.1);
            if b.2 == Health::Down {
                assert_eq!(a.2, Health::Down);
            } else {
                assert_eq!(a.2, Health::Up);
            }
        }
        assert_eq!(
            dp.active_table(&key),
            table_before,
            "same usable set, same table"
        );
        assert_eq!(ctl2.services()[0].id, 0);
        assert!(ctl2.retired().is_empty());
    }

    #[test]
    fn restart_with_a_smaller_config_retires_leftovers() {
        let (ctl, dp) = start(BASE);
        let api_backend = id_of(&ctl, "api", "10.2.1.2:8443");
        drop(ctl);
        let mut c = cfg(BASE);
        c.services.remove(1);
        let ctl2 = Controller::new(dp.clone(), c).unwrap();
        assert_eq!(ctl2.retired().len(), 1);
        assert_eq!(ctl2.retired()[0].id, api_backend);
        assert_eq!(dp.state().services.len(), 1);
        assert_eq!(dp.state().vips.values().next().unwrap().service_count, 1);
    }
}
