//! Host tests of the decision: one table of cases, each a sequence of rounds (one probe per
//! member: A, B, C) and the expected outcome. No PostgreSQL needed.

use super::*;
use crate::config::db::{DbClusterConfig, PromoteConfig};
use crate::db::observation::MemberObservation;
use std::time::{Duration, SystemTime};

const SYS: u64 = 7_301_234_567_890_123_456;
const OTHER_SYS: u64 = 42;
const MAX_LAG: u64 = 1000;

fn a() -> SocketAddrV4 {
    "10.2.1.2:5432".parse().unwrap()
}
fn b() -> SocketAddrV4 {
    "10.2.2.2:5432".parse().unwrap()
}
fn c() -> SocketAddrV4 {
    "10.2.3.2:5432".parse().unwrap()
}
fn addrs() -> [SocketAddrV4; 3] {
    [a(), b(), c()]
}

fn cluster() -> DbClusterConfig {
    serde_yaml::from_str(&format!(
        "name: pg\nmembers:\n  - address: {}\n  - address: {}\n  - address: {}\n\
         check: {{user: lb_check, interval: 250ms, timeout: 200ms, rise: 2, fall: 2}}\n\
         max_lag_bytes: {MAX_LAG}\n",
        a(),
        b(),
        c()
    ))
    .unwrap()
}

fn with_promote(mut cfg: DbClusterConfig) -> DbClusterConfig {
    cfg.promote = Some(PromoteConfig {
        command: vec!["/bin/true".into()],
        after: Duration::from_secs(1),
        timeout: Duration::from_secs(5),
    });
    cfg
}

/// A primary on timeline `tl` at `lsn`.
fn p(tl: u32, lsn: u64) -> MemberProbe {
    MemberProbe::Observed(MemberObservation {
        in_recovery: false,
        current_lsn: Some(lsn),
        replay_lsn: None,
        timeline: Some(tl),
        system_identifier: SYS,
        ..Default::default()
    })
}

/// A replica streaming from `up` on timeline `tl`, replayed up to `replay`.
fn r(up: SocketAddrV4, tl: u32, replay: u64) -> MemberProbe {
    MemberProbe::Observed(MemberObservation {
        in_recovery: true,
        current_lsn: None,
        receive_lsn: Some(replay),
        replay_lsn: Some(replay),
        timeline: Some(tl),
        system_identifier: SYS,
        upstream: Some((up.ip().to_string(), up.port())),
        streaming: true,
        patroni_primary: None,
    })
}

fn map(probe: MemberProbe, f: impl FnOnce(&mut MemberObservation)) -> MemberProbe {
    match probe {
        MemberProbe::Observed(mut o) => {
            f(&mut o);
            MemberProbe::Observed(o)
        }
        other => other,
    }
}

fn fail() -> MemberProbe {
    MemberProbe::Failed("connection refused".into())
}
fn auth() -> MemberProbe {
    MemberProbe::AuthFailed("password authentication failed for user \"lb_check\"".into())
}
fn busy() -> MemberProbe {
    MemberProbe::Overloaded("sorry, too many clients already".into())
}
fn notrun() -> MemberProbe {
    MemberProbe::NotRun("emfile".into())
}
fn starting() -> MemberProbe {
    MemberProbe::NotUsable("the database system is starting up".into())
}

/// The steady state: A primary (tl 1, LSN 5000), B and C streaming from A with lag 100.
fn steady() -> [MemberProbe; 3] {
    [p(1, 5000), r(a(), 1, 4900), r(a(), 1, 4900)]
}

struct Run {
    state: ClusterState,
    /// Events of every round.
    events: Vec<Vec<DbEventKind>>,
    /// Promote decisions of every round.
    promote: Vec<Option<SocketAddrV4>>,
}

impl Run {
    fn all_events(&self) -> Vec<&DbEventKind> {
        self.events.iter().flatten().collect()
    }
    fn last_events(&self) -> &[DbEventKind] {
        self.events.last().map_or(&[], |e| e.as_slice())
    }
    fn names(&self) -> Vec<&'static str> {
        self.all_events().iter().map(|e| e.name()).collect()
    }
    fn role(&self, m: SocketAddrV4) -> MemberRole {
        self.state.member(m).unwrap().role
    }
    fn roles(&self) -> [MemberRole; 3] {
        addrs().map(|m| self.role(m))
    }
    fn reads(&self) -> [bool; 3] {
        addrs().map(|m| self.state.member(m).unwrap().read_eligible)
    }
    fn write_gates(&self) -> [DbGate; 3] {
        addrs().map(|m| write_gate(&self.state, m))
    }
    fn read_gates(&self, f: ReadFallback) -> [DbGate; 3] {
        addrs().map(|m| read_gate(&self.state, m, f))
    }
}

fn run_from(cfg: &DbClusterConfig, start: ClusterState, rounds: &[[MemberProbe; 3]]) -> Run {
    let mut state = start;
    let mut events = Vec::new();
    let mut promote = Vec::new();
    let base = state.rounds;
    for (i, round) in rounds.iter().enumerate() {
        let probes: Vec<(SocketAddrV4, MemberProbe)> =
            addrs().into_iter().zip(round.iter().cloned()).collect();
        let n = base + i as u64 + 1;
        let now = Now {
            mono: cfg.check.interval * n as u32,
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(n),
        };
        let d = decide(cfg, &state, &probes, now);
        state = d.state;
        events.push(d.events);
        promote.push(d.promote);
    }
    Run {
        state,
        events,
        promote,
    }
}

fn run(cfg: &DbClusterConfig, rounds: &[[MemberProbe; 3]]) -> Run {
    run_from(cfg, ClusterState::default(), rounds)
}

use DbGate::{Hold, Reset, Serve};
use MemberRole::{Down, Fenced, Foreign, Primary, Replica, Unknown};

/// One case: rounds fed in order, then the expected primary, roles, read eligibility, gates
/// and event names (each listed name must occur; `absent` ones must not).
struct Case {
    name: &'static str,
    cfg: fn() -> DbClusterConfig,
    rounds: Vec<[MemberProbe; 3]>,
    primary: Option<SocketAddrV4>,
    roles: [MemberRole; 3],
    reads: [bool; 3],
    write: [DbGate; 3],
    read_primary_fallback: [DbGate; 3],
    events: &'static [&'static str],
    absent: &'static [&'static str],
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "first round: the member not in recovery is primary, streaming replicas with small lag serve reads",
            cfg: cluster,
            rounds: vec![steady()],
            primary: Some(a()),
            roles: [Primary, Replica, Replica],
            reads: [false, true, true],
            write: [Serve, Reset, Reset],
            read_primary_fallback: [Hold, Serve, Serve],
            events: &["primary_elected", "replica_in"],
            absent: &["read_fallback", "split_brain", "fenced"],
        },
        Case {
            name: "one failed check (below fall) changes nothing",
            cfg: cluster,
            rounds: vec![steady(), [fail(), r(a(), 1, 4900), r(a(), 1, 4900)]],
            primary: Some(a()),
            roles: [Primary, Replica, Replica],
            reads: [false, true, true],
            write: [Serve, Reset, Reset],
            read_primary_fallback: [Hold, Serve, Serve],
            events: &[],
            absent: &["primary_lost", "member_down"],
        },
        Case {
            name: "fall failed checks: primary lost, its flows reset, the write service has no backend",
            cfg: cluster,
            rounds: vec![
                steady(),
                [fail(), r(a(), 1, 4900), r(a(), 1, 4900)],
                [fail(), r(a(), 1, 4900), r(a(), 1, 4900)],
            ],
            primary: None,
            roles: [Down, Replica, Replica],
            // No primary to measure lag against: eligibility stays.
            reads: [false, true, true],
            write: [Reset, Reset, Reset],
            read_primary_fallback: [Reset, Serve, Serve],
            events: &["member_down", "primary_lost"],
            absent: &["primary_elected_twice"],
        },
        Case {
            name: "not usable (starting up) counts as a failed check",
            cfg: cluster,
            rounds: vec![
                steady(),
                [starting(), r(a(), 1, 4900), r(a(), 1, 4900)],
                [starting(), r(a(), 1, 4900), r(a(), 1, 4900)],
            ],
            primary: None,
            roles: [Down, Replica, Replica],
            reads: [false, true, true],
            write: [Reset, Reset, Reset],
            read_primary_fallback: [Reset, Serve, Serve],
            events: &["member_down", "primary_lost"],
            absent: &[],
        },
        Case {
            name: "a down member needs rise successes to come back (one is not enough)",
            cfg: cluster,
            rounds: vec![
                steady(),
                [fail(), r(a(), 1, 4900), r(a(), 1, 4900)],
                [fail(), r(a(), 1, 4900), r(a(), 1, 4900)],
                steady(),
            ],
            primary: None,
            roles: [Down, Replica, Replica],
            reads: [false, true, true],
            write: [Reset, Reset, Reset],
            read_primary_fallback: [Reset, Serve, Serve],
            events: &["member_down"],
            absent: &["member_up"],
        },
        Case {
            name: "after rise successes the old primary is primary again (no other claimant)",
            cfg: cluster,
            rounds: vec![
                steady(),
                [fail(), r(a(), 1, 4900), r(a(), 1, 4900)],
                [fail(), r(a(), 1, 4900), r(a(), 1, 4900)],
                steady(),
                steady(),
            ],
            primary: Some(a()),
            roles: [Primary, Replica, Replica],
            reads: [false, true, true],
            write: [Serve, Reset, Reset],
            read_primary_fallback: [Hold, Serve, Serve],
            events: &["member_down", "member_up", "primary_lost"],
            absent: &[],
        },
        Case {
            name: "failover: the promoted replica (higher timeline) becomes primary; the replica still following the old primary leaves reads",
            cfg: cluster,
            rounds: vec![
                steady(),
                [fail(), r(a(), 1, 4900), r(a(), 1, 4950)],
                [fail(), r(a(), 1, 4900), r(a(), 1, 4950)],
                [fail(), p(2, 4900), r(a(), 1, 4950)],
            ],
            primary: Some(b()),
            roles: [Down, Primary, Replica],
            reads: [false, false, false],
            write: [Reset, Serve, Reset],
            read_primary_fallback: [Reset, Serve, Hold],
            events: &["primary_lost", "primary_elected", "replica_out", "read_fallback"],
            absent: &["split_brain", "fenced"],
        },
        Case {
            name: "after failover the other replica follows the new primary and serves reads again",
            cfg: cluster,
            rounds: vec![
                steady(),
                [fail(), r(a(), 1, 4900), r(a(), 1, 4950)],
                [fail(), r(a(), 1, 4900), r(a(), 1, 4950)],
                [fail(), p(2, 4900), r(a(), 1, 4950)],
                [fail(), p(2, 5100), r(b(), 2, 5050)],
            ],
            primary: Some(b()),
            roles: [Down, Primary, Replica],
            reads: [false, false, true],
            write: [Reset, Serve, Reset],
            read_primary_fallback: [Reset, Hold, Serve],
            events: &["replica_in"],
            absent: &[],
        },
        Case {
            name: "the old primary resumed on its old timeline is fenced; the new primary stays",
            cfg: cluster,
            rounds: vec![
                steady(),
                [fail(), r(a(), 1, 4900), r(a(), 1, 4950)],
                [fail(), r(a(), 1, 4900), r(a(), 1, 4950)],
                [fail(), p(2, 4900), r(b(), 2, 4900)],
                [p(1, 5000), p(2, 4950), r(b(), 2, 4950)],
                [p(1, 5000), p(2, 4960), r(b(), 2, 4950)],
            ],
            primary: Some(b()),
            roles: [Fenced, Primary, Replica],
            reads: [false, false, true],
            write: [Reset, Serve, Reset],
            read_primary_fallback: [Reset, Hold, Serve],
            events: &["fenced", "split_brain"],
            absent: &[],
        },
        Case {
            name: "current primary is sticky against a claimant with the same timeline",
            cfg: cluster,
            rounds: vec![steady(), [p(1, 5000), r(a(), 1, 4900), p(1, 4900)]],
            primary: Some(a()),
            roles: [Primary, Replica, Fenced],
            reads: [false, true, false],
            write: [Serve, Reset, Reset],
            read_primary_fallback: [Hold, Serve, Reset],
            events: &["split_brain", "fenced"],
            absent: &["primary_lost"],
        },
        Case {
            name: "current primary is sticky against a claimant with a lower timeline",
            cfg: cluster,
            rounds: vec![
                [p(3, 5000), r(a(), 3, 4900), r(a(), 3, 4900)],
                [p(3, 5000), r(a(), 3, 4900), p(2, 9000)],
            ],
            primary: Some(a()),
            roles: [Primary, Replica, Fenced],
            reads: [false, true, false],
            write: [Serve, Reset, Reset],
            read_primary_fallback: [Hold, Serve, Reset],
            events: &["fenced"],
            absent: &["primary_lost"],
        },
        Case {
            name: "a claimant with a higher timeline takes over from the current primary, which is fenced",
            cfg: cluster,
            rounds: vec![steady(), [p(1, 5000), p(2, 4900), r(a(), 1, 4900)]],
            primary: Some(b()),
            roles: [Fenced, Primary, Replica],
            reads: [false, false, false],
            write: [Reset, Serve, Reset],
            read_primary_fallback: [Reset, Serve, Hold],
            events: &["split_brain", "fenced", "primary_elected"],
            absent: &[],
        },
        Case {
            name: "quick promotion: the dead primary's last claim (its check failed this round) is no split brain; the promoted replica takes over and the old primary is fenced",
            cfg: cluster,
            rounds: vec![steady(), [fail(), p(2, 4900), r(a(), 1, 4950)]],
            primary: Some(b()),
            roles: [Fenced, Primary, Replica],
            reads: [false, false, false],
            write: [Reset, Serve, Reset],
            read_primary_fallback: [Reset, Serve, Hold],
            events: &["fenced", "primary_elected"],
            absent: &["split_brain"],
        },
        Case {
            name: "an overloaded primary's kept claim still counts: a second claimant is split brain",
            cfg: cluster,
            rounds: vec![steady(), [busy(), p(2, 4900), r(a(), 1, 4950)]],
            primary: Some(b()),
            roles: [Fenced, Primary, Replica],
            reads: [false, false, false],
            write: [Reset, Serve, Reset],
            read_primary_fallback: [Reset, Serve, Hold],
            events: &["split_brain", "fenced", "primary_elected"],
            absent: &[],
        },
        Case {
            name: "tie at the highest timeline without a current primary fails closed",
            cfg: cluster,
            rounds: vec![[fail(), p(2, 4900), p(2, 4800)]],
            primary: None,
            roles: [Down, Fenced, Fenced],
            reads: [false, false, false],
            write: [Reset, Reset, Reset],
            read_primary_fallback: [Reset, Reset, Reset],
            events: &["split_brain", "fenced"],
            absent: &["primary_elected"],
        },
        Case {
            name: "both replicas promoted while the old primary lives: tie above it fails closed, all three fenced",
            cfg: cluster,
            rounds: vec![steady(), [p(1, 5000), p(2, 4900), p(2, 4900)]],
            primary: None,
            roles: [Fenced, Fenced, Fenced],
            reads: [false, false, false],
            write: [Reset, Reset, Reset],
            read_primary_fallback: [Reset, Reset, Reset],
            events: &["split_brain", "primary_lost", "fenced"],
            absent: &[],
        },
        Case {
            name: "a member with a foreign system identifier is never used, even with a higher timeline",
            cfg: cluster,
            rounds: vec![
                steady(),
                [
                    p(1, 5000),
                    r(a(), 1, 4900),
                    map(p(9, 9000), |o| o.system_identifier = OTHER_SYS),
                ],
            ],
            primary: Some(a()),
            roles: [Primary, Replica, Foreign],
            reads: [false, true, false],
            write: [Serve, Reset, Reset],
            read_primary_fallback: [Hold, Serve, Reset],
            events: &["foreign_system_identifier"],
            absent: &["split_brain", "fenced"],
        },
        Case {
            name: "a configured system identifier excludes a primary that reports another one",
            cfg: || {
                let mut c = cluster();
                c.system_identifier = Some(OTHER_SYS.to_string());
                c
            },
            rounds: vec![steady()],
            primary: None,
            roles: [Foreign, Foreign, Foreign],
            reads: [false, false, false],
            write: [Reset, Reset, Reset],
            read_primary_fallback: [Reset, Reset, Reset],
            events: &["foreign_system_identifier"],
            absent: &["primary_elected"],
        },
        Case {
            name: "a replica with a foreign system identifier gets no reads",
            cfg: cluster,
            rounds: vec![[
                p(1, 5000),
                r(a(), 1, 4900),
                map(r(a(), 1, 4900), |o| o.system_identifier = OTHER_SYS),
            ]],
            primary: Some(a()),
            roles: [Primary, Replica, Foreign],
            reads: [false, true, false],
            write: [Serve, Reset, Reset],
            read_primary_fallback: [Hold, Serve, Reset],
            events: &["foreign_system_identifier"],
            absent: &[],
        },
        Case {
            name: "lag at max_lag_bytes: the replica leaves reads, flows kept (hold)",
            cfg: cluster,
            rounds: vec![steady(), [p(1, 6000), r(a(), 1, 5000), r(a(), 1, 5999)]],
            primary: Some(a()),
            roles: [Primary, Replica, Replica],
            reads: [false, false, true],
            write: [Serve, Reset, Reset],
            read_primary_fallback: [Hold, Hold, Serve],
            events: &["replica_out"],
            absent: &["read_fallback"],
        },
        Case {
            name: "hysteresis: a lagging replica stays out until its lag is below half of max_lag_bytes",
            cfg: cluster,
            rounds: vec![
                steady(),
                [p(1, 6000), r(a(), 1, 5000), r(a(), 1, 5999)],
                [p(1, 6000), r(a(), 1, 5400), r(a(), 1, 5999)],
            ],
            primary: Some(a()),
            roles: [Primary, Replica, Replica],
            reads: [false, false, true],
            write: [Serve, Reset, Reset],
            read_primary_fallback: [Hold, Hold, Serve],
            events: &["replica_out"],
            absent: &[],
        },
        Case {
            name: "hysteresis: below half of max_lag_bytes it re-enters",
            cfg: cluster,
            rounds: vec![
                steady(),
                [p(1, 6000), r(a(), 1, 5000), r(a(), 1, 5999)],
                [p(1, 6000), r(a(), 1, 5501), r(a(), 1, 5999)],
            ],
            primary: Some(a()),
            roles: [Primary, Replica, Replica],
            reads: [false, true, true],
            write: [Serve, Reset, Reset],
            read_primary_fallback: [Hold, Serve, Serve],
            events: &["replica_out", "replica_in"],
            absent: &[],
        },
        Case {
            name: "an eligible replica stays in while its lag is below max_lag_bytes",
            cfg: cluster,
            rounds: vec![steady(), [p(1, 6000), r(a(), 1, 5001), r(a(), 1, 5999)]],
            primary: Some(a()),
            roles: [Primary, Replica, Replica],
            reads: [false, true, true],
            write: [Serve, Reset, Reset],
            read_primary_fallback: [Hold, Serve, Serve],
            events: &[],
            absent: &["replica_out"],
        },
        Case {
            name: "a new replica needs lag below half of max_lag_bytes to enter",
            cfg: cluster,
            rounds: vec![[p(1, 6000), r(a(), 1, 5400), r(a(), 1, 5600)]],
            primary: Some(a()),
            roles: [Primary, Replica, Replica],
            reads: [false, false, true],
            write: [Serve, Reset, Reset],
            read_primary_fallback: [Hold, Hold, Serve],
            events: &[],
            absent: &[],
        },
        Case {
            name: "lag is only measured against the primary's LSN of the same round (primary overloaded: unchanged)",
            cfg: cluster,
            rounds: vec![steady(), [busy(), r(a(), 1, 0), r(a(), 1, 0)]],
            primary: Some(a()),
            roles: [Primary, Replica, Replica],
            reads: [false, true, true],
            write: [Serve, Reset, Reset],
            read_primary_fallback: [Hold, Serve, Serve],
            events: &[],
            absent: &["replica_out"],
        },
        Case {
            name: "a replica not streaming leaves reads (hold, not reset)",
            cfg: cluster,
            rounds: vec![
                steady(),
                [p(1, 5000), map(r(a(), 1, 4900), |o| o.streaming = false), r(a(), 1, 4900)],
            ],
            primary: Some(a()),
            roles: [Primary, Replica, Replica],
            reads: [false, false, true],
            write: [Serve, Reset, Reset],
            read_primary_fallback: [Hold, Hold, Serve],
            events: &["replica_out"],
            absent: &[],
        },
        Case {
            name: "a replica streaming from another member than the primary gets no reads",
            cfg: cluster,
            rounds: vec![[p(1, 5000), r(c(), 1, 4900), r(a(), 1, 4900)]],
            primary: Some(a()),
            roles: [Primary, Replica, Replica],
            reads: [false, false, true],
            write: [Serve, Reset, Reset],
            read_primary_fallback: [Hold, Hold, Serve],
            events: &[],
            absent: &[],
        },
        Case {
            name: "an upstream that is not a member address (separate replication network) is judged by timeline",
            cfg: cluster,
            rounds: vec![[
                p(1, 5000),
                map(r(a(), 1, 4900), |o| o.upstream = Some(("pg-a.repl".into(), 5432))),
                map(r(a(), 2, 4900), |o| o.upstream = Some(("192.168.7.1".into(), 5432))),
            ]],
            primary: Some(a()),
            roles: [Primary, Replica, Replica],
            reads: [false, true, false],
            write: [Serve, Reset, Reset],
            read_primary_fallback: [Hold, Serve, Hold],
            events: &[],
            absent: &[],
        },
        Case {
            name: "no replica eligible: read fallback to the primary, and back when one is",
            cfg: cluster,
            rounds: vec![
                steady(),
                [p(1, 5000), fail(), fail()],
                [p(1, 5000), fail(), fail()],
            ],
            primary: Some(a()),
            roles: [Primary, Down, Down],
            reads: [false, false, false],
            write: [Serve, Reset, Reset],
            read_primary_fallback: [Serve, Reset, Reset],
            events: &["read_fallback", "replica_out", "member_down"],
            absent: &[],
        },
        Case {
            name: "read fallback ends when a replica is eligible again",
            cfg: cluster,
            rounds: vec![
                steady(),
                [p(1, 5000), fail(), fail()],
                [p(1, 5000), fail(), fail()],
                steady(),
                steady(),
            ],
            primary: Some(a()),
            roles: [Primary, Replica, Replica],
            reads: [false, true, true],
            write: [Serve, Reset, Reset],
            read_primary_fallback: [Hold, Serve, Serve],
            events: &["read_fallback", "member_up", "replica_in"],
            absent: &[],
        },
        Case {
            name: "auth failure on the primary: role unchanged, no failure counted, an alert",
            cfg: cluster,
            rounds: vec![steady(), [auth(), r(a(), 1, 4900), r(a(), 1, 4900)], [
                auth(),
                r(a(), 1, 4900),
                r(a(), 1, 4900),
            ], [auth(), r(a(), 1, 4900), r(a(), 1, 4900)]],
            primary: Some(a()),
            roles: [Primary, Replica, Replica],
            reads: [false, true, true],
            write: [Serve, Reset, Reset],
            read_primary_fallback: [Hold, Serve, Serve],
            events: &["check_alert"],
            absent: &["member_down", "primary_lost", "replica_out"],
        },
        Case {
            name: "too many connections everywhere: alive, roles unchanged, no events",
            cfg: cluster,
            rounds: vec![steady(), [busy(), busy(), busy()], [busy(), busy(), busy()], [busy(), busy(), busy()]],
            primary: Some(a()),
            roles: [Primary, Replica, Replica],
            reads: [false, true, true],
            write: [Serve, Reset, Reset],
            read_primary_fallback: [Hold, Serve, Serve],
            events: &[],
            absent: &["member_down", "primary_lost", "replica_out", "check_alert"],
        },
        Case {
            name: "checks that could not run locally change nothing",
            cfg: cluster,
            rounds: vec![steady(), [notrun(), notrun(), notrun()], [notrun(), notrun(), notrun()], [notrun(), notrun(), notrun()]],
            primary: Some(a()),
            roles: [Primary, Replica, Replica],
            reads: [false, true, true],
            write: [Serve, Reset, Reset],
            read_primary_fallback: [Hold, Serve, Serve],
            events: &[],
            absent: &["member_down", "primary_lost", "replica_out"],
        },
        Case {
            name: "members never observed are undecided: held, not reset (a restarted lbd keeps sessions)",
            cfg: cluster,
            rounds: vec![[auth(), notrun(), busy()]],
            primary: None,
            roles: [Unknown, Unknown, Unknown],
            reads: [false, false, false],
            write: [Hold, Hold, Hold],
            read_primary_fallback: [Hold, Hold, Hold],
            events: &["check_alert"],
            absent: &["primary_elected", "member_down"],
        },
        Case {
            name: "Patroni saying replica vetoes a member not in recovery",
            cfg: cluster,
            rounds: vec![[
                map(p(1, 5000), |o| o.patroni_primary = Some(false)),
                r(a(), 1, 4900),
                r(a(), 1, 4900),
            ]],
            primary: None,
            roles: [Unknown, Replica, Replica],
            reads: [false, false, false],
            write: [Hold, Reset, Reset],
            read_primary_fallback: [Hold, Hold, Hold],
            events: &[],
            absent: &["primary_elected"],
        },
        Case {
            name: "Patroni agreeing: primary",
            cfg: cluster,
            rounds: vec![[
                map(p(1, 5000), |o| o.patroni_primary = Some(true)),
                map(r(a(), 1, 4900), |o| o.patroni_primary = Some(false)),
                r(a(), 1, 4900),
            ]],
            primary: Some(a()),
            roles: [Primary, Replica, Replica],
            reads: [false, true, true],
            write: [Serve, Reset, Reset],
            read_primary_fallback: [Hold, Serve, Serve],
            events: &["primary_elected"],
            absent: &[],
        },
    ]
}

#[test]
fn every_rule_in_the_table() {
    let mut failures = Vec::new();
    for case in cases() {
        let cfg = (case.cfg)();
        let out = run(&cfg, &case.rounds);
        let mut check = |what: &str, ok: bool, detail: String| {
            if !ok {
                failures.push(format!("{}: {what}: {detail}", case.name));
            }
        };
        check(
            "primary",
            out.state.primary == case.primary,
            format!("{:?} != {:?}", out.state.primary, case.primary),
        );
        check(
            "roles",
            out.roles() == case.roles,
            format!("{:?} != {:?}", out.roles(), case.roles),
        );
        check(
            "reads",
            out.reads() == case.reads,
            format!("{:?} != {:?}", out.reads(), case.reads),
        );
        check(
            "write gates",
            out.write_gates() == case.write,
            format!("{:?} != {:?}", out.write_gates(), case.write),
        );
        let rg = out.read_gates(ReadFallback::Primary);
        check(
            "read gates",
            rg == case.read_primary_fallback,
            format!("{rg:?} != {:?}", case.read_primary_fallback),
        );
        let names = out.names();
        for e in case.events {
            check(
                "event",
                names.contains(e),
                format!("{e} missing from {names:?}"),
            );
        }
        for e in case.absent {
            check("no event", !names.contains(e), format!("{e} in {names:?}"));
        }
        // Invariant of every case: at most one member serves the write service.
        let serving = out.write_gates().iter().filter(|g| **g == Serve).count();
        check("single writer", serving <= 1, format!("{serving} serve"));
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn failover_estimates_the_lost_bytes_and_counts_the_change() {
    let cfg = cluster();
    let out = run(
        &cfg,
        &[
            steady(),
            [p(1, 5000), r(a(), 1, 4900), r(a(), 1, 4950)],
            [fail(), r(a(), 1, 4900), r(a(), 1, 4950)],
            [fail(), r(a(), 1, 4900), r(a(), 1, 4950)],
            [fail(), r(a(), 1, 4900), p(2, 4960)],
        ],
    );
    assert_eq!(out.state.primary, Some(c()));
    assert_eq!(out.state.primary_changes, 1);
    // Old primary's last seen current LSN 5000 - new primary's LSN 4960.
    assert_eq!(out.state.lost_bytes_estimate, Some(40));
    let elected = out
        .last_events()
        .iter()
        .find(|e| e.name() == "primary_elected")
        .unwrap();
    assert_eq!(
        *elected,
        DbEventKind::PrimaryElected {
            member: c(),
            timeline: Some(2),
            previous: Some(a()),
            lost_bytes_estimate: Some(40),
        }
    );
    assert!(
        elected.to_string().contains("never received: 40"),
        "{elected}"
    );
    // The first election is not a change.
    let first = run(&cfg, &[steady()]);
    assert_eq!(first.state.primary_changes, 0);
    assert_eq!(first.state.lost_bytes_estimate, None);
}

#[test]
fn the_system_identifier_is_learned_from_the_first_primary() {
    let cfg = cluster();
    let out = run(&cfg, &[steady()]);
    assert_eq!(out.state.system_identifier, Some(SYS));
    // A later claimant with another identifier (a fresh cluster at the same address) is
    // foreign even after the primary is gone.
    let out = run_from(
        &cfg,
        out.state,
        &[
            [fail(), r(a(), 1, 4900), r(a(), 1, 4900)],
            [fail(), r(a(), 1, 4900), r(a(), 1, 4900)],
            [
                fail(),
                map(p(5, 10), |o| o.system_identifier = OTHER_SYS),
                r(a(), 1, 4900),
            ],
        ],
    );
    assert_eq!(out.state.primary, None);
    assert_eq!(out.role(b()), Foreign);
}

#[test]
fn split_brain_is_reported_once_and_its_end_too() {
    let cfg = cluster();
    let out = run(
        &cfg,
        &[
            steady(),
            [p(1, 5000), r(a(), 1, 4900), p(1, 4900)],
            [p(1, 5000), r(a(), 1, 4900), p(1, 4900)],
            [p(1, 5000), r(a(), 1, 4900), r(a(), 1, 4900)],
        ],
    );
    let names = out.names();
    assert_eq!(
        names.iter().filter(|n| **n == "split_brain").count(),
        1,
        "{names:?}"
    );
    assert_eq!(
        names.iter().filter(|n| **n == "fenced").count(),
        1,
        "{names:?}"
    );
    assert!(names.contains(&"split_brain_ended"));
    assert!(!out.state.split_brain);
    // C was demoted (rewound, back in recovery): an ordinary replica again.
    assert_eq!(out.role(c()), Replica);
    // While a fenced member fails fewer than `fall` checks it still claims: still fenced.
    let out = run(
        &cfg,
        &[
            steady(),
            [p(1, 5000), r(a(), 1, 4900), p(1, 4900)],
            [p(1, 5000), r(a(), 1, 4900), fail()],
        ],
    );
    assert_eq!(out.role(c()), Fenced);
    assert!(out.state.split_brain);
}

#[test]
fn auth_alerts_are_raised_once_per_message() {
    let cfg = cluster();
    let out = run(
        &cfg,
        &[
            steady(),
            [auth(), r(a(), 1, 4900), r(a(), 1, 4900)],
            [auth(), r(a(), 1, 4900), r(a(), 1, 4900)],
            steady(),
            [auth(), r(a(), 1, 4900), r(a(), 1, 4900)],
        ],
    );
    let alerts = out.names().iter().filter(|n| **n == "check_alert").count();
    assert_eq!(alerts, 2, "once per episode");
    assert!(out
        .state
        .member(a())
        .unwrap()
        .why
        .contains("alert: password"));
}

#[test]
fn read_fallback_none_gives_reads_no_backend() {
    let cfg = cluster();
    let out = run(
        &cfg,
        &[
            steady(),
            [p(1, 5000), fail(), fail()],
            [p(1, 5000), fail(), fail()],
        ],
    );
    assert!(out.state.read_fallback);
    assert_eq!(out.read_gates(ReadFallback::None), [Hold, Reset, Reset]);
    assert_eq!(out.read_gates(ReadFallback::Primary), [Serve, Reset, Reset]);
}

#[test]
fn promote_hook_picks_the_most_advanced_replica_once_after_the_delay() {
    let cfg = with_promote(cluster()); // after 1s = 4 rounds of 250ms
    let down = [fail(), r(a(), 1, 4900), r(a(), 1, 4950)];
    let mut rounds = vec![steady()];
    rounds.extend(std::iter::repeat_n(down.clone(), 8));
    let out = run(&cfg, &rounds);
    let fired: Vec<(usize, SocketAddrV4)> = out
        .promote
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.map(|p| (i, p)))
        .collect();
    // Primary lost at round index 2 (fall 2); 1s later is index 6.
    assert_eq!(fired, vec![(6, c())], "most advanced replica, once");
    assert!(out.names().contains(&"promote_hook"));
    // Not before `after`.
    let out = run(&cfg, &rounds[..6]);
    assert!(out.promote.iter().all(Option::is_none));
}

#[test]
fn promote_hook_never_runs_with_patroni_or_without_a_known_primary() {
    let mut cfg = with_promote(cluster());
    cfg.members[0].patroni = Some("10.2.1.2:8008".parse().unwrap());
    let down = [fail(), r(a(), 1, 4900), r(a(), 1, 4950)];
    let mut rounds = vec![steady()];
    rounds.extend(std::iter::repeat_n(down.clone(), 8));
    assert!(run(&cfg, &rounds).promote.iter().all(Option::is_none));
    // No primary was ever seen (lbd started while the cluster had none): no promotion.
    let cfg = with_promote(cluster());
    let rounds: Vec<_> = std::iter::repeat_n(down, 10).collect();
    assert!(run(&cfg, &rounds).promote.iter().all(Option::is_none));
}

#[test]
fn promote_hook_runs_again_only_after_a_primary_came_back() {
    let cfg = with_promote(cluster());
    let down = [fail(), r(a(), 1, 4900), r(a(), 1, 4950)];
    let mut rounds = vec![steady()];
    rounds.extend(std::iter::repeat_n(down.clone(), 8));
    // A primary returns (B promoted), then is lost again.
    rounds.push([fail(), p(2, 5000), r(b(), 2, 5000)]);
    rounds.extend(std::iter::repeat_n([fail(), fail(), r(b(), 2, 5000)], 8));
    let out = run(&cfg, &rounds);
    let fired: Vec<SocketAddrV4> = out.promote.iter().flatten().copied().collect();
    assert_eq!(fired, vec![c(), c()]);
}

#[test]
fn a_removed_member_loses_its_state_and_the_primary_role() {
    let cfg = cluster();
    let out = run(&cfg, &[steady()]);
    let mut smaller = cfg.clone();
    smaller.members.remove(0);
    let probes = vec![(b(), r(a(), 1, 4900)), (c(), r(a(), 1, 4900))];
    let now = Now {
        mono: Duration::from_secs(10),
        wall: SystemTime::UNIX_EPOCH,
    };
    let d = decide(&smaller, &out.state, &probes, now);
    assert_eq!(d.state.primary, None);
    assert_eq!(d.state.members.len(), 2);
    assert!(d.events.iter().any(|e| matches!(
        e,
        DbEventKind::PrimaryLost { member, reason } if *member == a() && reason.contains("removed")
    )));
}
