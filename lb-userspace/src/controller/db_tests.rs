//! Controller tests of database services against the fake data plane: decisions from
//! [`crate::db::decide`] applied through [`Controller::db_apply`].

use super::*;
use crate::dataplane::fake::{FakeDataplane, Op};
use crate::db::observation::{MemberObservation, MemberProbe};
use crate::db::{decide, ClusterState, MemberRole, Now};
use std::time::Duration;

const CONFIG: &str = r#"
interfaces: [eth0]
snat:
  addresses: [10.0.255.1]
limits:
  maglev_table_size: 1009
db_clusters:
  - name: pg
    members:
      - address: 10.2.1.2:5432
      - address: 10.2.2.2:5432
      - address: 10.2.3.2:5432
    check: {user: lb_check, interval: 250ms, timeout: 200ms, rise: 2, fall: 2}
    max_lag_bytes: 1000
services:
  - name: pg-write
    vip: 192.0.2.20
    port: 5432
    db_cluster: pg
    role: primary
  - name: pg-read
    vip: 192.0.2.20
    port: 5433
    db_cluster: pg
    role: replica
"#;

const RESET: u32 = BACKEND_F_DOWN | BACKEND_F_RESET;

fn a() -> SocketAddrV4 {
    "10.2.1.2:5432".parse().unwrap()
}
fn b() -> SocketAddrV4 {
    "10.2.2.2:5432".parse().unwrap()
}
fn c() -> SocketAddrV4 {
    "10.2.3.2:5432".parse().unwrap()
}

fn p(tl: u32, lsn: u64) -> MemberProbe {
    MemberProbe::Observed(MemberObservation {
        current_lsn: Some(lsn),
        timeline: Some(tl),
        system_identifier: 1,
        ..Default::default()
    })
}

fn r(up: SocketAddrV4, tl: u32, replay: u64) -> MemberProbe {
    MemberProbe::Observed(MemberObservation {
        in_recovery: true,
        replay_lsn: Some(replay),
        timeline: Some(tl),
        system_identifier: 1,
        upstream: Some((up.ip().to_string(), up.port())),
        streaming: true,
        ..Default::default()
    })
}

fn fail() -> MemberProbe {
    MemberProbe::Failed("refused".into())
}

struct Db {
    ctl: Controller<FakeDataplane>,
    dp: FakeDataplane,
    state: ClusterState,
    round: u32,
}

impl Db {
    fn start() -> Self {
        let dp = FakeDataplane::new();
        let config = Config::from_yaml_str(CONFIG, "test.yaml").unwrap_or_else(|e| panic!("{e}"));
        let ctl = Controller::new(dp.clone(), config).unwrap();
        Db {
            ctl,
            dp,
            state: ClusterState::default(),
            round: 0,
        }
    }

    fn round(&mut self, probes: [MemberProbe; 3]) -> Vec<GateChange> {
        self.round += 1;
        let cfg = self.ctl.config().db_cluster("pg").unwrap().clone();
        let probes: Vec<_> = [a(), b(), c()].into_iter().zip(probes).collect();
        let now = Now {
            mono: Duration::from_millis(250) * self.round,
            wall: std::time::SystemTime::UNIX_EPOCH,
        };
        let d = decide(&cfg, &self.state, &probes, now);
        self.state = d.state;
        self.ctl.db_apply("pg", &self.state).unwrap()
    }

    /// Records `flows` live flows for `m` in `svc`, as a conntrack sweep would.
    fn set_flows(&mut self, svc: &str, m: SocketAddrV4, flows: u64) {
        let id = self.id(svc, m);
        let mut sweep = self.ctl.last_sweep.clone().unwrap_or_default();
        sweep.flows_by_backend.insert(id, flows);
        self.ctl.finish_sweep(sweep, 0).unwrap();
    }

    fn svc(&self, name: &str) -> &ServiceState {
        self.ctl
            .services()
            .iter()
            .find(|s| s.cfg.name == name)
            .unwrap()
    }

    fn id(&self, svc: &str, m: SocketAddrV4) -> u32 {
        self.svc(svc).backend(m).unwrap().id
    }

    /// Backend ids in the service's active Maglev table.
    fn table(&self, svc: &str) -> BTreeSet<u32> {
        self.dp
            .active_table(&self.svc(svc).key)
            .keys()
            .copied()
            .collect()
    }

    fn flags(&self, svc: &str, m: SocketAddrV4) -> u32 {
        self.dp.state().backends[&self.id(svc, m)].flags
    }

    fn no_backend(&self, svc: &str) -> bool {
        self.dp.state().services[&self.svc(svc).key].flags & SERVICE_F_NO_BACKEND != 0
    }
}

#[test]
fn members_are_the_backends_and_nothing_serves_before_the_first_round() {
    let db = Db::start();
    for svc in ["pg-write", "pg-read"] {
        let s = db.svc(svc);
        let members: Vec<SocketAddrV4> = s.backends.iter().map(|b| b.cfg.address).collect();
        assert_eq!(members, vec![a(), b(), c()]);
        assert!(
            db.no_backend(svc),
            "{svc}: no writes or reads before a decision"
        );
        for m in [a(), b(), c()] {
            assert_eq!(db.flags(svc, m), 0, "held: flows kept, not reset");
        }
    }
    // The dump is the configuration as written: no expanded backends.
    let dump = db.ctl.config().to_yaml();
    assert!(!dump.contains("backends:\n      - address: 10.2"), "{dump}");
    Config::from_yaml_str(&dump, "dump").unwrap();
}

#[test]
fn the_write_service_has_exactly_the_primary_and_reads_go_to_replicas() {
    let mut db = Db::start();
    db.round([p(1, 5000), r(a(), 1, 4900), r(a(), 1, 4900)]);
    assert_eq!(db.table("pg-write"), [db.id("pg-write", a())].into());
    assert_eq!(
        db.table("pg-read"),
        [db.id("pg-read", b()), db.id("pg-read", c())].into()
    );
    assert_eq!(db.flags("pg-write", a()), 0);
    assert_eq!(db.flags("pg-write", b()), RESET);
    assert_eq!(
        db.flags("pg-read", a()),
        0,
        "the primary's read flows are kept"
    );
}

#[test]
fn failover_moves_the_write_backend_and_resets_the_demoted_primary_after_the_switch() {
    let mut db = Db::start();
    db.round([p(1, 5000), r(a(), 1, 4900), r(a(), 1, 4950)]);
    db.round([fail(), r(a(), 1, 4900), r(a(), 1, 4950)]);
    assert_eq!(
        db.table("pg-write"),
        [db.id("pg-write", a())].into(),
        "below fall"
    );
    db.round([fail(), r(a(), 1, 4900), r(a(), 1, 4950)]);
    assert!(
        db.no_backend("pg-write"),
        "primary lost: writes fail closed"
    );
    assert_eq!(db.flags("pg-write", a()), RESET);
    assert_eq!(db.flags("pg-read", a()), RESET, "down: its read flows too");
    // C is promoted.
    let before = db.dp.state().ops.len();
    db.round([fail(), r(a(), 1, 4900), p(2, 4960)]);
    assert_eq!(db.table("pg-write"), [db.id("pg-write", c())].into());
    assert!(!db.no_backend("pg-write"));
    assert_eq!(db.flags("pg-write", c()), 0);
    // Make-before-break: the new primary's flags are cleared before the table points at it.
    let ops = db.dp.state().ops[before..].to_vec();
    let cid = db.id("pg-write", c());
    let set_c = ops
        .iter()
        .position(|o| *o == Op::SetBackend(cid, 0))
        .expect("C's write backend written");
    let table = ops
        .iter()
        .position(|o| matches!(o, Op::WriteMaglev(..)))
        .unwrap();
    assert!(set_c < table, "{ops:?}");
    // C's read flows (it was a replica) stay; B still follows the old primary, so no replica
    // is eligible and the new primary serves reads (fallback: primary).
    assert_eq!(db.flags("pg-read", c()), 0);
    assert_eq!(db.table("pg-read"), [db.id("pg-read", c())].into());
    // Once B follows C, reads go back to B.
    db.round([fail(), r(c(), 2, 4960), p(2, 4960)]);
    assert_eq!(db.table("pg-read"), [db.id("pg-read", b())].into());
}

#[test]
fn a_demoted_primary_gets_down_and_reset_after_the_table_switch() {
    let mut db = Db::start();
    db.round([p(1, 5000), r(a(), 1, 4900), r(a(), 1, 4900)]);
    let before = db.dp.state().ops.len();
    // B promoted while A still runs: B has the higher timeline, A is fenced.
    db.round([p(1, 5000), p(2, 4900), r(a(), 1, 4900)]);
    assert_eq!(db.table("pg-write"), [db.id("pg-write", b())].into());
    assert_eq!(db.flags("pg-write", a()), RESET);
    assert_eq!(db.flags("pg-read", a()), RESET, "fenced: reads too");
    let ops = db.dp.state().ops[before..].to_vec();
    let aid = db.id("pg-write", a());
    let down = ops
        .iter()
        .position(|o| *o == Op::SetBackend(aid, RESET))
        .unwrap();
    let switch = ops
        .iter()
        .position(|o| matches!(o, Op::SetService(..)))
        .unwrap();
    assert!(switch < down, "DOWN|RESET only after the switch: {ops:?}");
}

#[test]
fn reads_fall_back_to_the_primary_and_return_to_replicas() {
    let mut db = Db::start();
    db.round([p(1, 5000), r(a(), 1, 4900), r(a(), 1, 4900)]);
    db.round([p(1, 5000), fail(), fail()]);
    db.round([p(1, 5000), fail(), fail()]);
    assert_eq!(db.table("pg-read"), [db.id("pg-read", a())].into());
    assert_eq!(
        db.flags("pg-read", b()),
        RESET,
        "a dead replica's sessions are reset"
    );
    db.round([p(1, 5000), r(a(), 1, 4900), fail()]);
    assert_eq!(
        db.table("pg-read"),
        [db.id("pg-read", a())].into(),
        "rise 2"
    );
    db.round([p(1, 5000), r(a(), 1, 4900), fail()]);
    assert_eq!(db.table("pg-read"), [db.id("pg-read", b())].into());
    assert_eq!(db.flags("pg-read", b()), 0);
    assert_eq!(
        db.flags("pg-read", a()),
        0,
        "the primary's read flows drain, not reset"
    );
}

#[test]
fn a_lagging_replica_leaves_the_read_table_and_keeps_its_flows() {
    let mut db = Db::start();
    db.round([p(1, 5000), r(a(), 1, 4900), r(a(), 1, 4900)]);
    db.round([p(1, 9000), r(a(), 1, 4900), r(a(), 1, 8990)]);
    assert_eq!(db.table("pg-read"), [db.id("pg-read", c())].into());
    assert_eq!(db.flags("pg-read", b()), 0, "drained, not reset");
}

#[test]
fn read_fallback_none_leaves_reads_without_a_backend() {
    let text = CONFIG.replace(
        "    role: replica\n",
        "    role: replica\n    fallback: none\n",
    );
    let dp = FakeDataplane::new();
    let ctl = Controller::new(dp.clone(), Config::from_yaml_str(&text, "t").unwrap()).unwrap();
    let mut db = Db {
        ctl,
        dp,
        state: ClusterState::default(),
        round: 0,
    };
    db.round([p(1, 5000), fail(), fail()]);
    assert!(db.no_backend("pg-read"));
    assert!(!db.no_backend("pg-write"));
}

#[test]
fn a_restart_keeps_reset_members_reset_and_holds_the_others() {
    let mut db = Db::start();
    db.round([p(1, 5000), r(a(), 1, 4900), r(a(), 1, 4900)]);
    db.round([p(1, 5000), p(2, 4900), r(a(), 1, 4900)]);
    let config = db.ctl.config().clone();
    let dp = db.dp.clone();
    drop(db.ctl);
    let ctl = Controller::new(dp.clone(), config).unwrap();
    let restarted = Db {
        ctl,
        dp,
        state: ClusterState::default(),
        round: 0,
    };
    // A was fenced (DOWN|RESET): stays so; B (the primary) is held until the first round,
    // its flows kept.
    assert_eq!(restarted.flags("pg-write", a()), RESET);
    assert_eq!(restarted.flags("pg-write", b()), 0);
    assert!(restarted.no_backend("pg-write"));
}

/// The reset orders of one round: (service, member, reason, flows at the last sweep).
fn resets(changes: &[GateChange]) -> BTreeSet<(String, SocketAddrV4, &'static str, u64)> {
    changes
        .iter()
        .filter_map(|g| {
            assert_eq!(g.reset.is_some(), g.to == DbGate::Reset, "{g:?}");
            g.reset.map(|r| (g.service.clone(), g.backend, r, g.flows))
        })
        .collect()
}

fn set(
    items: &[(&str, SocketAddrV4, &'static str, u64)],
) -> BTreeSet<(String, SocketAddrV4, &'static str, u64)> {
    items
        .iter()
        .map(|(s, m, r, f)| (s.to_string(), *m, *r, *f))
        .collect()
}

#[test]
fn reset_orders_name_their_reason_and_the_flows_they_end() {
    let mut db = Db::start();
    // First round: the replicas are reset in the write service (they have no write flows).
    let first = db.round([p(1, 5000), r(a(), 1, 4900), r(a(), 1, 4950)]);
    assert_eq!(
        resets(&first),
        set(&[
            ("pg-write", b(), "demoted", 0),
            ("pg-write", c(), "demoted", 0)
        ])
    );
    db.set_flows("pg-write", a(), 7);
    db.set_flows("pg-read", b(), 3);
    db.set_flows("pg-read", c(), 4);
    // Replica B dies: its read flows are reset (down), once.
    db.round([p(1, 5000), fail(), r(a(), 1, 4950)]);
    let down = db.round([p(1, 5000), fail(), r(a(), 1, 4950)]);
    assert_eq!(resets(&down), set(&[("pg-read", b(), "down", 3)]));
    assert!(
        resets(&db.round([p(1, 5000), fail(), r(a(), 1, 4950)])).is_empty(),
        "ordered once"
    );
    // C is promoted on a higher timeline while A still claims primary: A is fenced in both
    // services (its 7 write flows end), C's read flows stay (no reset order for it).
    let fenced = db.round([p(1, 5000), fail(), p(2, 4960)]);
    assert_eq!(
        resets(&fenced),
        set(&[
            ("pg-write", a(), "fenced", 7),
            ("pg-read", a(), "fenced", 0)
        ])
    );
    // A restarts as a replica of C: no longer fenced, but still out of the write service,
    // now as demoted (the gate stays reset: no new order).
    db.set_flows("pg-write", a(), 0);
    let rejoined = db.round([r(c(), 2, 4960), fail(), p(2, 4960)]);
    assert!(resets(&rejoined).is_empty(), "{rejoined:?}");
    assert_eq!(db.flags("pg-write", a()), RESET);
}

#[test]
fn reset_reasons_by_role() {
    assert_eq!(reset_reason(MemberRole::Fenced), "fenced");
    assert_eq!(reset_reason(MemberRole::Down), "down");
    assert_eq!(reset_reason(MemberRole::Foreign), "foreign");
    assert_eq!(reset_reason(MemberRole::Replica), "demoted");
}
