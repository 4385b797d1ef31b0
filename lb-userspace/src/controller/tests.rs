//! Controller tests against the fake data plane.

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
