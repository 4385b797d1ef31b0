//! Why a backend is suspect: the evidence lbd holds against it, and how the last suspicion
//! ended. Pure bookkeeping (no I/O); the controller feeds it and `lbctl` shows it.
//!
//! A suspicion begins with the first piece of evidence against a backend that lbd last knew as
//! good, and gathers every later one until the backend is known good again:
//! - **passive**: the data plane reported a detection ([`lb_common::passive`]: it answered a
//!   SYN with a RST, or left a SYN unanswered until the client retransmitted it);
//! - **active**: a health check failed (a scheduled one, or the immediate check lbd runs after
//!   a passive detection).
//!
//! It ends ([`SuspicionEnd`]) when the immediate check after a passive detection passes, when a
//! scheduled check passes and no passive detection is pending, when a backend marked down is
//! marked up again, or when the data plane's hold of a passive suspicion ran out
//! ([`lb_common::passive::SUSPECT_HOLD_NS`]) while no check failed. While the backend is
//! down the suspicion stays: it is why the backend is down.

use crate::api::proto::Health;
use std::time::SystemTime;

/// The operator's words for a passive detection reason (`REASON_*`).
pub fn passive_reason_text(reason: u32) -> &'static str {
    match reason {
        lb_common::passive::REASON_RST_TO_SYN => "RST to SYN",
        lb_common::passive::REASON_SYN_UNANSWERED => "SYN unanswered",
        _ => "unknown reason",
    }
}

/// The first passive detection of a suspicion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassiveDetection {
    /// `REASON_*` of the detection.
    pub reason: u32,
    /// When lbd received the event.
    pub at: SystemTime,
}

/// The evidence held against a backend now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suspicion {
    /// When the first evidence came.
    pub since: SystemTime,
    /// The first passive detection, if any (`None`: only checks failed).
    pub passive: Option<PassiveDetection>,
    /// Passive detections received during this suspicion.
    pub detections: u64,
    /// Active checks (scheduled or immediate) failed during this suspicion; a passing check
    /// while the backend is not down sets it back to 0.
    pub failed_checks: u32,
    /// The message of the last failed check.
    pub last_failure: Option<String>,
}

impl Suspicion {
    /// One line saying why: `passive: RST to SYN`, `passive: SYN unanswered`,
    /// `active: 3 checks failed`, or a passive reason and the failed checks joined by `; `.
    pub fn why(&self) -> String {
        let mut parts = Vec::new();
        if let Some(p) = self.passive {
            parts.push(format!("passive: {}", passive_reason_text(p.reason)));
        }
        match self.failed_checks {
            0 => {}
            1 => parts.push("active: 1 check failed".to_string()),
            n => parts.push(format!("active: {n} checks failed")),
        }
        if parts.is_empty() {
            // Only reachable after a pass reset the count of a passive-less suspicion, which
            // ends it instead; kept total for safety.
            "no evidence left".to_string()
        } else {
            parts.join("; ")
        }
    }
}

/// How a suspicion ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuspicionEnd {
    /// The immediate check lbd ran after a passive detection passed (the data plane's
    /// suspicion was cleared at once).
    ImmediateCheckPassed,
    /// A scheduled check passed and no passive detection was pending.
    CheckPassed,
    /// The backend had been marked down and was marked up again (`rise` checks passed).
    Recovered,
    /// The data plane's hold of the passive suspicion ran out unconfirmed, with no check
    /// failing.
    Expired,
}

impl SuspicionEnd {
    /// How, in the operator's words.
    pub fn text(self) -> &'static str {
        match self {
            SuspicionEnd::ImmediateCheckPassed => "cleared by a passing immediate check",
            SuspicionEnd::CheckPassed => "cleared by a passing check",
            SuspicionEnd::Recovered => "recovered: marked up again",
            SuspicionEnd::Expired => "expired: the data plane's hold ran out unconfirmed",
        }
    }
}

/// A suspicion that ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndedSuspicion {
    /// The suspicion as it was when it ended.
    pub suspicion: Suspicion,
    /// When it ended.
    pub ended: SystemTime,
    /// How.
    pub how: SuspicionEnd,
}

/// A backend's current suspicion and the last one that ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SuspectLog {
    /// The evidence held now (`None`: not suspect).
    pub current: Option<Suspicion>,
    /// The last suspicion that ended.
    pub last: Option<EndedSuspicion>,
}

impl SuspectLog {
    fn current_or_new(&mut self, now: SystemTime) -> &mut Suspicion {
        self.current.get_or_insert(Suspicion {
            since: now,
            passive: None,
            detections: 0,
            failed_checks: 0,
            last_failure: None,
        })
    }

    fn end(&mut self, how: SuspicionEnd, now: SystemTime) {
        if let Some(suspicion) = self.current.take() {
            self.last = Some(EndedSuspicion {
                suspicion,
                ended: now,
                how,
            });
        }
    }

    /// The data plane reported a passive detection (`reason`) at `now`.
    pub fn passive(&mut self, reason: u32, now: SystemTime) {
        let s = self.current_or_new(now);
        s.detections += 1;
        if s.passive.is_none() {
            s.passive = Some(PassiveDetection { reason, at: now });
        }
    }

    /// A check failed at `now` with `message`.
    pub fn check_failed(&mut self, message: &str, now: SystemTime) {
        let s = self.current_or_new(now);
        s.failed_checks = s.failed_checks.saturating_add(1);
        s.last_failure = Some(message.to_string());
    }

    /// A scheduled check passed at `now`; `health` is the backend's health after it was
    /// recorded and `recovered` says whether that check marked it up from down.
    pub fn check_passed(&mut self, health: Health, recovered: bool, now: SystemTime) {
        if recovered {
            return self.end(SuspicionEnd::Recovered, now);
        }
        if health == Health::Down {
            return; // still down: the suspicion is why
        }
        let Some(s) = self.current.as_mut() else {
            return;
        };
        if s.passive.is_some() {
            // The active evidence is gone; the passive one stands until the immediate check
            // clears it or the data plane's hold runs out.
            s.failed_checks = 0;
        } else {
            self.end(SuspicionEnd::CheckPassed, now);
        }
    }

    /// The immediate check after a passive detection passed at `now` (the data plane's
    /// suspicion was cleared). A backend that is down stays suspect.
    pub fn immediate_check_passed(&mut self, health: Health, now: SystemTime) {
        if health != Health::Down {
            self.end(SuspicionEnd::ImmediateCheckPassed, now);
        }
    }

    /// The data plane no longer holds the passive suspicion (its hold ran out): ends the
    /// suspicion when no check failed since and the backend is not down. Returns whether it
    /// ended.
    pub fn hold_ran_out(&mut self, health: Health, now: SystemTime) -> bool {
        let ends = health != Health::Down
            && self
                .current
                .as_ref()
                .is_some_and(|s| s.passive.is_some() && s.failed_checks == 0);
        if ends {
            self.end(SuspicionEnd::Expired, now);
        }
        ends
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::passive::{REASON_RST_TO_SYN, REASON_SYN_UNANSWERED};
    use std::time::Duration;

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s)
    }

    #[test]
    fn passive_detection_then_failed_checks_then_recovery() {
        let mut log = SuspectLog::default();
        log.passive(REASON_RST_TO_SYN, t(10));
        let s = log.current.clone().unwrap();
        assert_eq!(s.since, t(10));
        assert_eq!(s.why(), "passive: RST to SYN");
        // A later detection of another kind keeps the first reason and time.
        log.passive(REASON_SYN_UNANSWERED, t(11));
        log.check_failed("connect: Connection refused", t(11));
        let s = log.current.clone().unwrap();
        assert_eq!((s.since, s.detections), (t(10), 2));
        assert_eq!(s.why(), "passive: RST to SYN; active: 1 check failed");
        log.check_failed("connect: Connection refused", t(12));
        log.check_failed("connect: Connection refused", t(14));
        assert_eq!(
            log.current.as_ref().unwrap().why(),
            "passive: RST to SYN; active: 3 checks failed"
        );
        // Down now: passes short of `rise`, an immediate pass and the hold running out
        // change nothing.
        log.check_passed(Health::Down, false, t(16));
        log.immediate_check_passed(Health::Down, t(16));
        assert!(!log.hold_ran_out(Health::Down, t(20)));
        assert_eq!(log.current.as_ref().unwrap().failed_checks, 3);
        assert_eq!(log.last, None);
        // Marked up again: ended, kept as the last one.
        log.check_passed(Health::Up, true, t(18));
        assert_eq!(log.current, None);
        let last = log.last.clone().unwrap();
        assert_eq!(last.how, SuspicionEnd::Recovered);
        assert_eq!((last.suspicion.since, last.ended), (t(10), t(18)));
        assert_eq!(
            last.suspicion.last_failure.as_deref(),
            Some("connect: Connection refused")
        );
    }

    #[test]
    fn immediate_pass_clears_a_passive_suspicion() {
        let mut log = SuspectLog::default();
        log.passive(REASON_SYN_UNANSWERED, t(1));
        // A scheduled pass does not clear a passive suspicion (the check may have started
        // before the detection).
        log.check_passed(Health::Up, false, t(2));
        assert!(log.current.is_some());
        log.immediate_check_passed(Health::Up, t(2));
        let last = log.last.clone().unwrap();
        assert_eq!(last.how, SuspicionEnd::ImmediateCheckPassed);
        assert_eq!(last.suspicion.why(), "passive: SYN unanswered");
        assert_eq!(last.ended, t(2));
        assert_eq!(log.current, None);
    }

    #[test]
    fn failed_checks_alone_end_with_a_passing_check() {
        let mut log = SuspectLog::default();
        log.check_failed("timed out after 1s", t(5));
        log.check_failed("timed out after 1s", t(7));
        assert_eq!(
            log.current.as_ref().unwrap().why(),
            "active: 2 checks failed"
        );
        log.check_passed(Health::Up, false, t(9));
        let last = log.last.clone().unwrap();
        assert_eq!(last.how, SuspicionEnd::CheckPassed);
        assert_eq!((last.suspicion.since, last.ended), (t(5), t(9)));
        // Nothing to end: no change.
        log.check_passed(Health::Up, false, t(11));
        assert_eq!(log.last.unwrap().ended, t(9));
    }

    #[test]
    fn hold_runs_out_only_without_failed_checks() {
        let mut log = SuspectLog::default();
        log.passive(REASON_RST_TO_SYN, t(1));
        log.check_failed("connect: Connection refused", t(1));
        assert!(!log.hold_ran_out(Health::Up, t(11)));
        // The next scheduled pass takes the active evidence away; the passive one stays
        // until the hold runs out.
        log.check_passed(Health::Up, false, t(12));
        assert_eq!(log.current.as_ref().unwrap().why(), "passive: RST to SYN");
        assert!(log.hold_ran_out(Health::Up, t(13)));
        assert_eq!(log.last.as_ref().unwrap().how, SuspicionEnd::Expired);
        assert!(!log.hold_ran_out(Health::Up, t(14)));
        // An active-only suspicion has no hold.
        log.check_failed("x", t(15));
        assert!(!log.hold_ran_out(Health::Up, t(16)));
    }
}
