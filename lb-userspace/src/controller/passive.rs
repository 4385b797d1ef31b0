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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::dataplane::fake::FakeDataplane;
    use crate::model::Health;
    use lb_common::passive::{REASON_RST_TO_SYN, REASON_SYN_UNANSWERED};

    const CFG: &str = r#"
interfaces: [eth0]
snat:
  addresses: [10.0.255.1]
limits:
  maglev_table_size: 1009
services:
  - name: web
    vip: 192.0.2.10
    port: 80
    health_check: {type: tcp, rise: 1, fall: 2}
    backends:
      - address: 10.1.1.2:8080
      - address: 10.1.2.2:8080
"#;

    fn start() -> (Controller<FakeDataplane>, FakeDataplane) {
        let dp = FakeDataplane::new();
        let cfg = Config::from_yaml_str(CFG, "test.yaml").unwrap_or_else(|e| panic!("{e}"));
        (Controller::new(dp.clone(), cfg).unwrap(), dp)
    }

    fn a(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    fn id_of(ctl: &Controller<FakeDataplane>, s: &str) -> u32 {
        ctl.services()[0].backend(a(s)).unwrap().id
    }

    fn event(id: u32, reason: u32) -> PassiveEvent {
        PassiveEvent {
            time_ns: 1_000_000_000,
            backend_id: id,
            service_id: 0,
            reason,
            _pad: 0,
        }
    }

    /// Raises the suspicion in the fake data plane like XDP does and hands it to lbd.
    fn detect(
        ctl: &mut Controller<FakeDataplane>,
        dp: &FakeDataplane,
        id: u32,
        reason: u32,
    ) -> Option<PassiveCheck> {
        dp.emit_passive(event(id, reason));
        ctl.passive_event(&event(id, reason))
    }

    #[test]
    fn failing_immediate_check_counts_as_a_failure_and_keeps_the_suspicion() {
        let (mut ctl, dp) = start();
        let b = a("10.1.1.2:8080");
        ctl.health_result("web", b, true, "ok").unwrap();
        // One scheduled failure: still up with fall 2.
        assert_eq!(ctl.health_result("web", b, false, "refused").unwrap(), None);
        let id = id_of(&ctl, "10.1.1.2:8080");
        let check = detect(&mut ctl, &dp, id, REASON_RST_TO_SYN).unwrap();
        assert_eq!(check.service, "web");
        assert_eq!(check.backend, b);
        let suspect = ctl.services()[0]
            .backend(b)
            .unwrap()
            .suspect
            .clone()
            .unwrap();
        assert_eq!(suspect.reason, REASON_RST_TO_SYN);
        // The immediate check's failure is the second: down now, not a whole interval later.
        let change = ctl
            .passive_check_done(&check, false, "connect: refused")
            .unwrap()
            .unwrap();
        assert_eq!(change.to, Health::Down);
        assert!(ctl.services()[0].backend(b).unwrap().suspect.is_some());
        assert_ne!(dp.backend_suspect(id).unwrap(), BackendSuspect::default());
    }

    #[test]
    fn passing_immediate_check_clears_the_suspicion() {
        let (mut ctl, dp) = start();
        let b = a("10.1.2.2:8080");
        let id = id_of(&ctl, "10.1.2.2:8080");
        let check = detect(&mut ctl, &dp, id, REASON_SYN_UNANSWERED).unwrap();
        assert_ne!(dp.backend_suspect(id).unwrap(), BackendSuspect::default());
        assert_eq!(ctl.passive_check_done(&check, true, "ok").unwrap(), None);
        assert_eq!(dp.backend_suspect(id).unwrap(), BackendSuspect::default());
        assert!(ctl.services()[0].backend(b).unwrap().suspect.is_none());
        // The other backend was not touched.
        assert_eq!(
            ctl.services()[0]
                .backend(a("10.1.1.2:8080"))
                .unwrap()
                .suspect,
            None
        );
    }

    #[test]
    fn events_for_ids_that_are_not_live_are_ignored() {
        let (mut ctl, _dp) = start();
        assert_eq!(ctl.passive_event(&event(999, REASON_RST_TO_SYN)), None);
        assert!(ctl
            .services()
            .iter()
            .flat_map(|s| &s.backends)
            .all(|b| b.suspect.is_none()));
    }

    #[test]
    fn a_check_of_a_backend_removed_meanwhile_changes_nothing() {
        let (mut ctl, dp) = start();
        let id = id_of(&ctl, "10.1.2.2:8080");
        let check = detect(&mut ctl, &dp, id, REASON_RST_TO_SYN).unwrap();
        let smaller = CFG.replace("      - address: 10.1.2.2:8080\n", "");
        ctl.apply(Config::from_yaml_str(&smaller, "t.yaml").unwrap())
            .unwrap();
        assert_eq!(ctl.passive_check_done(&check, true, "ok").unwrap(), None);
        // Not cleared by a stale verdict: the id's suspicion is the data plane's own.
        assert_ne!(dp.backend_suspect(id).unwrap(), BackendSuspect::default());
    }

    #[test]
    fn a_new_backend_id_starts_without_a_suspicion() {
        let (mut ctl, dp) = start();
        let used: Vec<u32> = ctl.services()[0].backends.iter().map(|b| b.id).collect();
        let next = (1..).find(|i| !used.contains(i)).unwrap();
        // A leftover suspicion in the slot the next backend gets (an earlier owner's).
        dp.emit_passive(event(next, REASON_RST_TO_SYN));
        let bigger = CFG.replace(
            "      - address: 10.1.2.2:8080\n",
            "      - address: 10.1.2.2:8080\n      - address: 10.1.3.2:8080\n",
        );
        ctl.apply(Config::from_yaml_str(&bigger, "t.yaml").unwrap())
            .unwrap();
        assert_eq!(id_of(&ctl, "10.1.3.2:8080"), next);
        assert_eq!(dp.backend_suspect(next).unwrap(), BackendSuspect::default());
    }

    #[test]
    fn backends_of_a_new_controller_start_without_a_suspicion() {
        let dp = FakeDataplane::new();
        dp.emit_passive(event(1, REASON_SYN_UNANSWERED));
        let cfg = Config::from_yaml_str(CFG, "test.yaml").unwrap();
        let ctl = Controller::new(dp.clone(), cfg).unwrap();
        assert_eq!(id_of(&ctl, "10.1.1.2:8080"), 1);
        assert_eq!(dp.backend_suspect(1).unwrap(), BackendSuspect::default());
    }
}
