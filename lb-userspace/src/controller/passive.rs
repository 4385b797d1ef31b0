//! Passive detections from the data plane ([`lb_common::passive`]): the suspicion is recorded
//! in the backend's state and confirmed or cleared by one immediate active check, whose
//! result comes back through [`Controller::passive_check_done`].

use super::{Controller, ControllerError, HealthChange};
use crate::config::HealthCheckConfig;
use crate::dataplane::Dataplane;
use crate::model::Suspicion;
use lb_common::passive::{BackendSuspect, PassiveEvent};
use std::net::SocketAddrV4;
use std::time::SystemTime;

/// The immediate active check one passive event asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassiveCheck {
    /// Backend id the event named.
    pub id: u32,
    /// Its service.
    pub service: String,
    /// Its address.
    pub backend: SocketAddrV4,
    /// The service's health-check settings.
    pub health_check: HealthCheckConfig,
}

impl<D: Dataplane> Controller<D> {
    /// Records the suspicion `event` raised and returns the check that confirms or clears
    /// it; `None` when the id is not a live backend (retired, or unknown: a stale event).
    pub fn passive_event(&mut self, event: &PassiveEvent) -> Option<PassiveCheck> {
        for svc in &mut self.services {
            if let Some(b) = svc.backends.iter_mut().find(|b| b.id == event.backend_id) {
                if b.suspect.is_none() {
                    b.suspect = Some(Suspicion {
                        reason: event.reason,
                        since: SystemTime::now(),
                    });
                }
                return Some(PassiveCheck {
                    id: b.id,
                    service: svc.cfg.name.clone(),
                    backend: b.cfg.address,
                    health_check: svc.cfg.health_check.clone(),
                });
            }
        }
        None
    }

    /// Applies the immediate check's verdict: a failure goes to the health tracker like a
    /// scheduled check's (so `fall` is reached sooner) and the suspicion stays; a success
    /// clears the suspicion in the data plane and in the state. Nothing happens when the
    /// backend was removed (or its id given to another backend) meanwhile.
    pub fn passive_check_done(
        &mut self,
        check: &PassiveCheck,
        ok: bool,
        reason: &str,
    ) -> Result<Option<HealthChange>, ControllerError> {
        let same = self
            .services
            .iter()
            .find(|s| s.cfg.name == check.service)
            .and_then(|s| s.backends.iter().find(|b| b.id == check.id))
            .is_some_and(|b| b.cfg.address == check.backend);
        if !same {
            return Ok(None);
        }
        if !ok {
            return self.health_result(&check.service, check.backend, false, reason);
        }
        self.dp
            .set_backend_suspect(check.id, &BackendSuspect::default())?;
        for svc in &mut self.services {
            if let Some(b) = svc.backends.iter_mut().find(|b| b.id == check.id) {
                b.suspect = None;
            }
        }
        Ok(None)
    }
}
