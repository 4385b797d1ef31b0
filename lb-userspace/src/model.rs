//! The control plane's model of services and backends: what the controller knows about each
//! one beyond its configuration (data-plane ids, health, whether it is in the Maglev table,
//! live flows).

use crate::config::{BackendConfig, CheckKind, HealthCheckConfig, ServiceConfig};
use lb_common::ServiceKey;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant, SystemTime};

pub use crate::api::proto::Health;
pub use crate::suspicion::{SuspectLog, Suspicion};

/// Rise/fall state machine of one backend's health checks (pure; see [`HealthTracker::record`]).
///
/// Policy (documented in docs/operations.md):
/// - `Up`: `fall` consecutive failures mark it `Down`; a success resets the failure count.
/// - `Down`: `rise` consecutive successes mark it `Up`; a failure resets the success count.
/// - `Unknown` (a new backend whose checks have not run yet): usable, like Katran's "added as
///   up"; its first result decides at once (success -> `Up`, failure -> `Down`), so a dead new
///   backend leaves the table after a single check instead of `fall` of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthTracker {
    health: Health,
    successes: u32,
    failures: u32,
}

impl HealthTracker {
    /// A tracker starting in `health`.
    pub fn new(health: Health) -> Self {
        Self {
            health,
            successes: 0,
            failures: 0,
        }
    }

    /// Current verdict.
    pub fn health(&self) -> Health {
        self.health
    }

    /// `Down` with at least one passed check since: on its way to `Up` unless a check fails.
    pub fn rising(&self) -> bool {
        self.health == Health::Down && self.successes > 0
    }

    /// Records one check result; returns the new health when it changed.
    pub fn record(&mut self, ok: bool, rise: u32, fall: u32) -> Option<Health> {
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
        }
        let next = match self.health {
            Health::Unknown => {
                if ok {
                    Health::Up
                } else {
                    Health::Down
                }
            }
            Health::Up if self.failures >= fall => Health::Down,
            Health::Down if self.successes >= rise => Health::Up,
            h => h,
        };
        if next == self.health {
            return None;
        }
        self.health = next;
        self.successes = 0;
        self.failures = 0;
        Some(next)
    }
}

/// When a backend's health checks last gave a verdict (passed or failed). A check that could
/// not run (a shortage on this host, `lb_health_checks_not_run_total`) gives none and leaves
/// the backend's health as it was, on purpose: marking backends down for a local problem would
/// turn it into an outage. The clock makes that visible instead: past [`stale_after`] without
/// a verdict the health is *stale* (shown by `lbctl backend list`, the
/// `lb_backend_health_stale` metric and one warning in the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerdictClock {
    /// The last verdict, or when checking started (no verdict yet).
    since: Instant,
    /// Whether the stale warning was logged (and the recovery not yet).
    warned: bool,
}

impl VerdictClock {
    /// A clock whose checks start at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            since: now,
            warned: false,
        }
    }

    /// Records a verdict at `now`.
    pub fn verdict(&mut self, now: Instant) {
        self.since = self.since.max(now);
    }

    /// Time since the last verdict (or since checking started).
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.since)
    }

    /// Whether the health is stale at `now` under checks `hc`.
    pub fn is_stale(&self, hc: &HealthCheckConfig, now: Instant) -> bool {
        stale_after(hc).is_some_and(|limit| self.age(now) > limit)
    }

    /// Updates the warned flag to the staleness at `now`; returns the new staleness when it
    /// changed since the last call (to log once each way).
    pub fn observe(&mut self, hc: &HealthCheckConfig, now: Instant) -> Option<bool> {
        let stale = self.is_stale(hc, now);
        (stale != self.warned).then(|| {
            self.warned = stale;
            stale
        })
    }
}

/// How long a backend may go without a verdict before its health counts as stale:
/// `interval x (fall + 1)`, the bound in which a failing backend would have been marked down.
/// `None` for `type: none` (no checks, never stale).
pub fn stale_after(hc: &HealthCheckConfig) -> Option<Duration> {
    (hc.kind != CheckKind::None).then(|| hc.interval.saturating_mul(hc.fall.saturating_add(1)))
}

/// True when a backend in this health may receive new flows (`Unknown` counts as usable).
pub fn is_usable(health: Health) -> bool {
    health != Health::Down
}

/// What the database decision lets a member do in one database service (see
/// [`crate::db::decide::write_gate`] and [`crate::db::decide::read_gate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbGate {
    /// In the Maglev table: receives new flows.
    Serve,
    /// Out of the table, existing flows kept (a lagging replica, an undecided member).
    Hold,
    /// Out of the table and `BACKEND_F_DOWN | BACKEND_F_RESET`: its flows are reset (a
    /// demoted or fenced primary, a down member).
    Reset,
}

impl DbGate {
    /// Lowercase name (logs, JSON).
    pub fn name(self) -> &'static str {
        match self {
            DbGate::Serve => "serve",
            DbGate::Hold => "hold",
            DbGate::Reset => "reset",
        }
    }
}

/// A health transition, kept for `lbctl` and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// When it happened.
    pub at: SystemTime,
    /// The new health.
    pub to: Health,
    /// Why (the check's last message).
    pub reason: String,
}

/// A backend of a running service.
#[derive(Debug, Clone)]
pub struct BackendState {
    /// Its configuration (weight, backup, drain).
    pub cfg: BackendConfig,
    /// Data-plane id (never 0), stable for the backend's life.
    pub id: u32,
    /// Health state machine.
    pub tracker: HealthTracker,
    /// Transitions since it was added.
    pub transitions: u64,
    /// The last transition.
    pub last_transition: Option<Transition>,
    /// Whether it is in the service's active Maglev table.
    pub in_table: bool,
    /// `BACKEND_F_*` flags last written to the data plane (`None`: not written yet, or
    /// unknown after a failed rollback).
    pub written_flags: Option<u32>,
    /// Live flows at the last conntrack sweep.
    pub active_flows: u64,
    /// Its endpoint's SNAT port pool at the last conntrack sweep (shared with every full-NAT
    /// service that has the same endpoint); `None` before the first sweep and for a backend
    /// of a `forwarding: dsr` service (no SNAT).
    pub snat_pool: Option<crate::snat_pool::SnatPool>,
    /// When its health checks last gave a verdict (staleness of `tracker`).
    pub verdicts: VerdictClock,
    /// For a backend of a database service: what the cluster's last decision lets it do
    /// (health and drain are then not used). `None` for ordinary services.
    pub db: Option<DbGate>,
    /// Why it is suspect (passive detections, failed checks) and how its last suspicion
    /// ended; see [`crate::suspicion`].
    pub suspect: SuspectLog,
}

impl BackendState {
    /// The backend's address.
    pub fn address(&self) -> SocketAddrV4 {
        self.cfg.address
    }
    /// Current health.
    pub fn health(&self) -> Health {
        self.tracker.health()
    }
    /// Identity string its Maglev permutation derives from.
    pub fn identity(&self) -> String {
        self.cfg.address.to_string()
    }
}

/// A running service.
#[derive(Debug, Clone)]
pub struct ServiceState {
    /// Its configuration (backends list mirrors `backends`).
    pub cfg: ServiceConfig,
    /// Data-plane service id.
    pub id: u32,
    /// Key in `LB_SERVICES`.
    pub key: ServiceKey,
    /// Which half (0 or 1) of the double-buffered table is active.
    pub active_slot: u32,
    /// The Maglev input (identity, weight, id) of the active table, `None` when it must be
    /// (re)written regardless.
    pub table_inputs: Option<Vec<(String, u32, u32)>>,
    /// `SERVICE_F_*` flags last written (`None`: not written yet, or unknown).
    pub flags: Option<u32>,
    /// `ServiceValue::forwarding` and `dsr_src_be` last written (`None`: not written yet).
    pub forwarding: Option<(u32, u32)>,
    /// Backends in configuration order.
    pub backends: Vec<BackendState>,
    /// Live flows at the last conntrack sweep.
    pub active_flows: u64,
}

impl ServiceState {
    /// The backend with `address`, if any.
    pub fn backend(&self, address: SocketAddrV4) -> Option<&BackendState> {
        self.backends.iter().find(|b| b.cfg.address == address)
    }
}

/// The data-plane key of a service.
pub fn service_key(cfg: &ServiceConfig) -> ServiceKey {
    ServiceKey {
        vip_be: lb_common::ipv4_to_be(cfg.vip),
        port_be: lb_common::port_to_be(cfg.port),
        proto: lb_common::IPPROTO_TCP,
        _pad: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn up_goes_down_after_fall_failures() {
        let mut t = HealthTracker::new(Health::Up);
        assert_eq!(t.record(false, 2, 3), None);
        assert_eq!(t.record(false, 2, 3), None);
        assert_eq!(t.record(false, 2, 3), Some(Health::Down));
        assert_eq!(t.health(), Health::Down);
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let mut t = HealthTracker::new(Health::Up);
        t.record(false, 2, 3);
        t.record(false, 2, 3);
        assert_eq!(t.record(true, 2, 3), None);
        t.record(false, 2, 3);
        assert_eq!(t.record(false, 2, 3), None);
        assert_eq!(t.health(), Health::Up);
        assert_eq!(t.record(false, 2, 3), Some(Health::Down));
    }

    #[test]
    fn down_rises_after_rise_successes() {
        let mut t = HealthTracker::new(Health::Down);
        assert!(!t.rising());
        assert_eq!(t.record(true, 2, 3), None);
        assert!(t.rising(), "down with one passed check");
        assert_eq!(t.record(false, 2, 3), None);
        assert!(!t.rising(), "a failed check ends the rise");
        assert_eq!(t.record(true, 2, 3), None);
        assert_eq!(t.record(true, 2, 3), Some(Health::Up));
        assert!(!t.rising(), "up is not rising");
        // rise = 1 and fall = 1 flip on every differing result.
        let mut t = HealthTracker::new(Health::Up);
        assert_eq!(t.record(false, 1, 1), Some(Health::Down));
        assert_eq!(t.record(true, 1, 1), Some(Health::Up));
    }

    fn checks(kind: CheckKind) -> HealthCheckConfig {
        HealthCheckConfig {
            kind,
            interval: Duration::from_secs(2),
            fall: 3,
            ..HealthCheckConfig::default()
        }
    }

    #[test]
    fn health_without_verdicts_goes_stale_once_and_recovers_once() {
        let hc = checks(CheckKind::Tcp);
        assert_eq!(stale_after(&hc), Some(Duration::from_secs(8)));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut c = VerdictClock::new(t0);
        // Checks that could not run give no verdict: within interval x (fall + 1) it is fresh.
        assert!(!c.is_stale(&hc, at(8)));
        assert_eq!(c.observe(&hc, at(8)), None);
        // Past it, stale: reported once.
        assert!(c.is_stale(&hc, at(9)));
        assert_eq!(c.observe(&hc, at(9)), Some(true));
        assert_eq!(c.observe(&hc, at(60)), None);
        assert_eq!(c.age(at(60)), Duration::from_secs(60));
        // A verdict (pass or fail) makes it fresh again: reported once.
        c.verdict(at(61));
        assert_eq!(c.age(at(62)), Duration::from_secs(1));
        assert_eq!(c.observe(&hc, at(62)), Some(false));
        assert_eq!(c.observe(&hc, at(63)), None);
        // No checks, never stale.
        let none = checks(CheckKind::None);
        assert_eq!(stale_after(&none), None);
        assert!(!VerdictClock::new(t0).is_stale(&none, at(100_000)));
    }

    #[test]
    fn unknown_is_decided_by_the_first_result() {
        let mut t = HealthTracker::new(Health::Unknown);
        assert!(is_usable(t.health()));
        assert_eq!(t.record(true, 5, 5), Some(Health::Up));
        let mut t = HealthTracker::new(Health::Unknown);
        assert_eq!(t.record(false, 5, 5), Some(Health::Down));
        assert!(!is_usable(t.health()));
        // Then the normal thresholds apply.
        for _ in 0..4 {
            assert_eq!(t.record(true, 5, 5), None);
        }
        assert_eq!(t.record(true, 5, 5), Some(Health::Up));
    }
}
