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
//! - **Failure vs drain vs removal.** A failed backend gets `BACKEND_F_DOWN` (plus
//!   `BACKEND_F_RESET` under `on_backend_down: reset`: its flows are reset; under `keep` they
//!   stay until the backend ends them); a drained one leaves the table only (flows stay); a
//!   removed one leaves the table at once, then (after the table switch) gets `BACKEND_F_DOWN`
//!   (its flows keep going to it until they end) or, under `on_backend_down: reset` and for
//!   database services, `BACKEND_F_DOWN | BACKEND_F_RESET` (its flows are reset at once), and
//!   keeps its id and entry until a conntrack sweep shows no live flow, then is cleared.
//! - **Minimal reloads.** [`Controller::apply`] changes only what differs; a service whose
//!   usable set is unchanged is not rewritten. A configuration that fails validation changes
//!   nothing.

mod db;
#[cfg(test)]
mod db_tests;
mod dsr_only;
#[cfg(test)]
mod dsr_only_tests;

pub use db::{reset_reason, GateChange};
mod journal;
mod passive;
pub use passive::PassiveCheck;
mod reload;
mod sweep;
mod sync;
#[cfg(test)]
mod tests;

use crate::config::{CheckKind, Config, ConfigError, OnBackendDown, ServiceConfig};
use crate::dataplane::{ConntrackSweep, ConntrackSweeper, Dataplane, DataplaneError};
use crate::maglev::{self, MaglevBackend};
use crate::model::{
    is_usable, service_key, BackendState, DbGate, Health, HealthTracker, ServiceState, Transition,
    VerdictClock,
};
use lb_common::{
    BackendValue, GlobalConfig, ServiceKey, ServiceValue, VipValue, BACKEND_F_DOWN,
    BACKEND_F_DRAINING, BACKEND_F_RESET, SERVICE_F_NO_BACKEND,
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
    /// The change needs more of a bounded resource (ids, map entries) than is free; nothing
    /// was written.
    #[error("{limit}: {message}")]
    Capacity {
        /// The configuration key of the limit (`limits.max_services`, ...).
        limit: &'static str,
        /// What was needed, what is free, and how to fix it.
        message: String,
    },
    /// A step failed mid-way and every write made before it was undone.
    #[error(
        "{source}; every write made before it was undone: the data plane and the running \
         configuration are as before"
    )]
    RolledBack {
        #[source]
        source: Box<ControllerError>,
    },
    /// A step failed mid-way and undoing the writes made before it failed too.
    #[error(
        "{source}; rolling the change back failed too ({undo_failures} undo steps failed, the \
         first with: {first}): the data plane may hold a mix of the old and the new \
         configuration; lbd keeps the old configuration as the running one and the next \
         successful reload rewrites every entry"
    )]
    RollbackFailed {
        #[source]
        source: Box<ControllerError>,
        /// The first undo step that failed.
        first: DataplaneError,
        /// How many undo steps failed.
        undo_failures: usize,
    },
}

impl ControllerError {
    /// False only when a failed change could not be rolled back, i.e. when the data plane may
    /// no longer match the running configuration.
    pub fn state_unchanged(&self) -> bool {
        !matches!(self, ControllerError::RollbackFailed { .. })
    }
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
    /// Whether its entry was rewritten as retired (`BACKEND_F_DOWN`, plus `BACKEND_F_RESET`
    /// when `reset`), which happens only after every table stopped pointing at it.
    pub marked: bool,
    /// Its flows are reset (its service had `on_backend_down: reset`, or is a database
    /// service); otherwise they keep going to it until they end.
    pub reset: bool,
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
    /// Advice on the applied configuration ([`crate::config::Config::advice`]).
    pub warnings: Vec<String>,
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
            parts.push("no changes".into());
        }
        for w in &self.warnings {
            parts.push(format!("warning: {w}"));
        }
        f.write_str(&parts.join("; "))
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

/// A backend whose health became stale (no verdict for longer than
/// [`crate::model::stale_after`]) or fresh again, reported by [`Controller::stale_health`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleChange {
    /// Service name.
    pub service: String,
    /// Backend address.
    pub backend: SocketAddrV4,
    /// The health it keeps.
    pub health: Health,
    /// Time since its last verdict.
    pub age: std::time::Duration,
    /// True: became stale; false: a verdict came again.
    pub stale: bool,
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
    /// Whether `global` and the SNAT addresses are known to be in the maps.
    globals_written: bool,
    /// VIP entries as written (`None`: unknown, rewrite it).
    vips: BTreeMap<u32, Option<VipValue>>,
    /// Undo steps of the running [`Self::transaction`].
    journal: Option<Vec<journal::Undo>>,
    sweep_generation: u64,
    last_sweep: Option<ConntrackSweep>,
    /// The generation of `last_sweep` (0: none yet).
    last_sweep_generation: u64,
    /// VIPs that have, or may still have flows of, a full-NAT service: they do not get the
    /// DSR-only bit ([`dsr_only`]).
    nat_vips: BTreeMap<u32, dsr_only::NatFlows>,
    /// SNAT pool warnings per backend endpoint (see [`crate::snat_pool::Alarm`]).
    snat_alarms: BTreeMap<SocketAddrV4, crate::snat_pool::Alarm>,
}

/// The `BACKEND_F_*` flags of `b`; `reset_on_down` is its service's `on_backend_down: reset`.
fn backend_flags(b: &BackendState, reset_on_down: bool) -> u32 {
    match b.db {
        Some(DbGate::Reset) => return BACKEND_F_DOWN | BACKEND_F_RESET,
        Some(DbGate::Serve | DbGate::Hold) => return 0,
        None => {}
    }
    let mut flags = 0;
    if b.health() == Health::Down {
        flags |= BACKEND_F_DOWN;
        if reset_on_down {
            flags |= BACKEND_F_RESET;
        }
    }
    if b.cfg.drain {
        flags |= BACKEND_F_DRAINING;
    }
    flags
}

fn backend_value(b: &BackendState, service_id: u32, reset_on_down: bool) -> BackendValue {
    BackendValue {
        addr_be: lb_common::ipv4_to_be(*b.cfg.address.ip()),
        port_be: lb_common::port_to_be(b.cfg.address.port()),
        _pad: 0,
        flags: backend_flags(b, reset_on_down),
        service_id,
    }
}

/// The entry of a removed backend: out of every table, its remaining flows are reset (it no
/// longer exists as far as the configuration is concerned).
fn retired_value(r: &RetiredBackend) -> BackendValue {
    BackendValue {
        addr_be: lb_common::ipv4_to_be(*r.address.ip()),
        port_be: lb_common::port_to_be(r.address.port()),
        _pad: 0,
        flags: if r.reset {
            BACKEND_F_DOWN | BACKEND_F_RESET
        } else {
            BACKEND_F_DOWN
        },
        service_id: r.service_id,
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
            globals_written: false,
            vips: BTreeMap::new(),
            journal: None,
            sweep_generation: 0,
            last_sweep: None,
            last_sweep_generation: 0,
            nat_vips: BTreeMap::new(),
            snat_alarms: BTreeMap::new(),
        };
        // All or nothing: a failure restores the pinned state as it was.
        ctl.transaction(|ctl| ctl.adopt(&config, pinned_services, pinned_backends, pinned_vips))?;
        Ok(ctl)
    }

    /// Re-adopts the pinned entries that `config` still wants and programs the rest.
    fn adopt(
        &mut self,
        config: &Config,
        pinned_services: Vec<(ServiceKey, ServiceValue)>,
        pinned_backends: Vec<(u32, BackendValue)>,
        pinned_vips: Vec<(u32, VipValue)>,
    ) -> Result<(), ControllerError> {
        let m = config.limits.maglev_table_size;
        let services = config.expanded_services();
        let ctl = self;
        // Adopt services whose key is still configured; remove the others.
        let mut adopted: HashMap<ServiceKey, ServiceValue> = HashMap::new();
        for (key, value) in pinned_services {
            let wanted = services.iter().any(|s| service_key(s) == key);
            if wanted && value.service_id < config.limits.max_services {
                ctl.used_service_ids.insert(value.service_id);
                adopted.insert(key, value);
            } else {
                ctl.write_remove_service(&key)?;
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
                && services.iter().any(|s| {
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
                    marked: value.flags & BACKEND_F_DOWN != 0,
                    reset: value.flags & BACKEND_F_RESET != 0,
                });
            }
        }

        ctl.write_globals()?;
        for svc_cfg in &services {
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
                        let mut state =
                            new_backend_state(b.clone(), bid, health, Some(value.flags));
                        if svc_cfg.db_cluster.is_some() {
                            // Until the cluster's first round: a member whose flows were
                            // being reset stays so, the others are held (flows kept).
                            state.db = Some(if value.flags & BACKEND_F_RESET != 0 {
                                DbGate::Reset
                            } else {
                                DbGate::Hold
                            });
                        }
                        state
                    }
                    None => {
                        let bid = ctl.fresh_backend_id()?;
                        let mut state = new_backend_state(
                            b.clone(),
                            bid,
                            initial_health(svc_cfg.health_check.kind),
                            None,
                        );
                        state.db = svc_cfg.db_cluster.as_ref().map(|_| DbGate::Hold);
                        state
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
                flags: None,
                forwarding: None,
                backends,
                active_flows: 0,
            });
        }
        for i in 0..ctl.services.len() {
            ctl.sync_service(i)?;
        }
        for (vip, value) in pinned_vips {
            ctl.vips.insert(vip, Some(value)); // kept if right, else rewritten or removed
            if value.flags & lb_common::VIP_F_DSR_ONLY == 0 {
                // It may have full-NAT flows: no DSR-only bit before a sweep found none.
                ctl.nat_vips.insert(vip, dsr_only::NatFlows::Possible);
            }
        }
        ctl.sync_vips()?;
        ctl.mark_retired()?;
        Ok(())
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

    /// Backend endpoints whose SNAT pool is in warning (crossed
    /// [`crate::snat_pool::WARN_PERCENT`] and not yet back below
    /// [`crate::snat_pool::CLEAR_PERCENT`]).
    pub fn snat_pools_in_warning(&self) -> Vec<SocketAddrV4> {
        self.snat_alarms
            .iter()
            .filter(|(_, a)| a.raised)
            .map(|(e, _)| *e)
            .collect()
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

    /// A newly allocated backend id with its stats zeroed and its `LB_BE_SUSPECT` slot
    /// cleared, so a new backend inherits neither from the id's last owner.
    fn fresh_backend_id(&mut self) -> Result<u32, ControllerError> {
        let id = self.alloc_backend_id()?;
        self.dp.reset_stats(None, Some(id))?;
        self.dp
            .set_backend_suspect(id, &lb_common::passive::BackendSuspect::default())?;
        Ok(id)
    }

    fn write_globals(&mut self) -> Result<(), ControllerError> {
        let addrs = self.config.snat.addresses.clone();
        self.write_snat_addrs(&addrs)?;
        self.global = self.config.global_config();
        let global = self.global;
        self.write_global_config(&global)?;
        self.globals_written = true;
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
        self.health_result_at(service, backend, ok, reason, std::time::Instant::now())
    }

    /// [`Self::health_result`] for a result that came at `now`.
    pub fn health_result_at(
        &mut self,
        service: &str,
        backend: SocketAddrV4,
        ok: bool,
        reason: &str,
        now: std::time::Instant,
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
        b.verdicts.verdict(now);
        let changed = b.tracker.record(ok, hc.rise, hc.fall);
        let wall = SystemTime::now();
        if ok {
            let recovered = from == Health::Down && changed == Some(Health::Up);
            b.suspect.check_passed(b.health(), recovered, wall);
        } else {
            b.suspect.check_failed(reason, wall);
        }
        let Some(to) = changed else {
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

    /// Backends whose health became stale at `now` (their checks gave no verdict for longer
    /// than `interval x (fall + 1)`: every round could not run) or fresh again since the last
    /// call; each change is reported once, for the log. The health itself is kept.
    pub fn stale_health(&mut self, now: std::time::Instant) -> Vec<StaleChange> {
        let mut out = Vec::new();
        for svc in &mut self.services {
            let hc = &svc.cfg.health_check;
            for b in &mut svc.backends {
                if let Some(stale) = b.verdicts.observe(hc, now) {
                    out.push(StaleChange {
                        service: svc.cfg.name.clone(),
                        backend: b.cfg.address,
                        health: b.health(),
                        age: b.verdicts.age(now),
                        stale,
                    });
                }
            }
        }
        out
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
    written_flags: Option<u32>,
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
        snat_pool: None,
        verdicts: VerdictClock::new(std::time::Instant::now()),
        db: None,
        suspect: crate::model::SuspectLog::default(),
    }
}
