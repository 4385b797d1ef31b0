//! Passive detections from the data plane ([`lb_common::passive`]): the suspicion is recorded
//! in the backend's state and confirmed or cleared by one immediate active check, whose
//! result comes back through [`Controller::passive_check_done`].

use super::{Controller, ControllerError, HealthChange};
use crate::config::HealthCheckConfig;
use crate::dataplane::Dataplane;
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
                b.suspect.passive(event.reason, SystemTime::now());
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
        let now = SystemTime::now();
        for svc in &mut self.services {
            if let Some(b) = svc.backends.iter_mut().find(|b| b.id == check.id) {
                let health = b.health();
                b.suspect.immediate_check_passed(health, now);
            }
        }
        Ok(None)
    }

    /// Ends the passive suspicions whose hold in the data plane ran out by `now_ns`
    /// (`CLOCK_MONOTONIC`, the data plane's clock) while no check failed and the backend is not
    /// down ([`crate::suspicion::SuspectLog::hold_ran_out`]); returns them as
    /// `(service, backend)` for the log. A backend whose entry cannot be read is left as it is.
    pub fn passive_holds(&mut self, now_ns: u64) -> Vec<(String, SocketAddrV4)> {
        let now = SystemTime::now();
        let mut ended = Vec::new();
        for svc in &mut self.services {
            for b in &mut svc.backends {
                let pending = b
                    .suspect
                    .current
                    .as_ref()
                    .is_some_and(|s| s.passive.is_some());
                if !pending {
                    continue;
                }
                let Ok(held) = self.dp.backend_suspect(b.id) else {
                    continue;
                };
                if !held.is_active(now_ns) && b.suspect.hold_ran_out(b.health(), now) {
                    ended.push((svc.cfg.name.clone(), b.cfg.address));
                }
            }
        }
        ended
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
            .current
            .clone()
            .unwrap();
        assert_eq!(suspect.passive.unwrap().reason, REASON_RST_TO_SYN);
        // The immediate check's failure is the second: down now, not a whole interval later.
        let change = ctl
            .passive_check_done(&check, false, "connect: refused")
            .unwrap()
            .unwrap();
        assert_eq!(change.to, Health::Down);
        assert!(ctl.services()[0]
            .backend(b)
            .unwrap()
            .suspect
            .current
            .is_some());
        assert_ne!(dp.backend_suspect(id).unwrap(), BackendSuspect::default());
    }

    fn suspect_of(ctl: &Controller<FakeDataplane>, s: &str) -> crate::model::SuspectLog {
        ctl.services()[0].backend(a(s)).unwrap().suspect.clone()
    }

    /// A backend killed (RST to SYN): the suspicion says why from the first detection, keeps
    /// its start time while the checks fail and the backend goes down, and ends (kept as the
    /// last one) when the backend is marked up again.
    #[test]
    fn suspicion_says_why_and_since_when_through_down_and_recovery() {
        let (mut ctl, dp) = start();
        let b = a("10.1.1.2:8080");
        ctl.health_result("web", b, true, "ok").unwrap();
        assert_eq!(suspect_of(&ctl, "10.1.1.2:8080"), Default::default());
        let id = id_of(&ctl, "10.1.1.2:8080");
        let before = SystemTime::now();
        let check = detect(&mut ctl, &dp, id, REASON_RST_TO_SYN).unwrap();
        let after = SystemTime::now();
        let s = suspect_of(&ctl, "10.1.1.2:8080").current.unwrap();
        assert_eq!(s.why(), "passive: RST to SYN");
        assert!(s.since >= before && s.since <= after, "{s:?}");
        let since = s.since;
        // The immediate check fails, then a scheduled one: down (fall 2).
        ctl.passive_check_done(&check, false, "connect: Connection refused")
            .unwrap();
        let s = suspect_of(&ctl, "10.1.1.2:8080").current.unwrap();
        assert_eq!(s.why(), "passive: RST to SYN; active: 1 check failed");
        let change = ctl
            .health_result("web", b, false, "connect: Connection refused")
            .unwrap()
            .unwrap();
        assert_eq!(change.to, Health::Down);
        let s = suspect_of(&ctl, "10.1.1.2:8080").current.unwrap();
        assert_eq!(s.why(), "passive: RST to SYN; active: 2 checks failed");
        assert_eq!(s.since, since);
        assert_eq!(
            s.last_failure.as_deref(),
            Some("connect: Connection refused")
        );
        // Down: the data plane's hold running out changes nothing (down is why).
        assert!(ctl.passive_holds(u64::MAX).is_empty());
        assert!(suspect_of(&ctl, "10.1.1.2:8080").current.is_some());
        // The other backend is not suspect.
        assert_eq!(suspect_of(&ctl, "10.1.2.2:8080"), Default::default());
        // Back up (rise 1): ended as "recovered", with its times.
        let back = SystemTime::now();
        ctl.health_result("web", b, true, "ok").unwrap().unwrap();
        let log = suspect_of(&ctl, "10.1.1.2:8080");
        assert_eq!(log.current, None);
        let last = log.last.unwrap();
        assert_eq!(last.how, crate::suspicion::SuspicionEnd::Recovered);
        assert_eq!(last.suspicion.since, since);
        assert!(last.ended >= back, "{last:?}");
        assert_eq!(
            last.suspicion.why(),
            "passive: RST to SYN; active: 2 checks failed"
        );
    }

    /// A passive suspicion that no check confirms ends when the data plane's hold runs out,
    /// not before; failed checks alone end with the next passing check.
    #[test]
    fn unconfirmed_suspicion_expires_with_the_data_plane_hold() {
        let (mut ctl, dp) = start();
        let id = id_of(&ctl, "10.1.2.2:8080");
        let t0 = event(id, REASON_SYN_UNANSWERED).time_ns;
        detect(&mut ctl, &dp, id, REASON_SYN_UNANSWERED).unwrap();
        // The immediate check could not run: the suspicion waits for the hold.
        assert!(ctl.passive_holds(t0 + 1).is_empty());
        assert!(ctl
            .passive_holds(t0 + lb_common::passive::SUSPECT_HOLD_NS - 1)
            .is_empty());
        assert_eq!(
            suspect_of(&ctl, "10.1.2.2:8080").current.unwrap().why(),
            "passive: SYN unanswered"
        );
        let ended = ctl.passive_holds(t0 + lb_common::passive::SUSPECT_HOLD_NS);
        assert_eq!(ended, vec![("web".to_string(), a("10.1.2.2:8080"))]);
        let last = suspect_of(&ctl, "10.1.2.2:8080").last.unwrap();
        assert_eq!(last.how, crate::suspicion::SuspicionEnd::Expired);
        assert_eq!(last.suspicion.why(), "passive: SYN unanswered");
        // Failed checks alone: "active: 1 check failed", ended by a pass.
        let b = a("10.1.1.2:8080");
        ctl.health_result("web", b, true, "ok").unwrap();
        ctl.health_result("web", b, false, "timed out after 1s")
            .unwrap();
        assert_eq!(
            suspect_of(&ctl, "10.1.1.2:8080").current.unwrap().why(),
            "active: 1 check failed"
        );
        ctl.health_result("web", b, true, "ok").unwrap();
        let log = suspect_of(&ctl, "10.1.1.2:8080");
        assert_eq!(log.current, None);
        assert_eq!(
            log.last.unwrap().how,
            crate::suspicion::SuspicionEnd::CheckPassed
        );
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
        assert!(ctl.services()[0]
            .backend(b)
            .unwrap()
            .suspect
            .current
            .is_none());
        let last = ctl.services()[0].backend(b).unwrap().suspect.last.clone();
        assert_eq!(
            last.map(|l| (l.how, l.suspicion.why())),
            Some((
                crate::suspicion::SuspicionEnd::ImmediateCheckPassed,
                "passive: SYN unanswered".to_string()
            ))
        );
        // The other backend was not touched.
        assert_eq!(
            ctl.services()[0]
                .backend(a("10.1.1.2:8080"))
                .unwrap()
                .suspect
                .current,
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
            .all(|b| b.suspect.current.is_none()));
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
