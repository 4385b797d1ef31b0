//! Controller tests against the fake data plane.

use super::*;
use crate::dataplane::fake::{FakeDataplane, Op};

const BASE: &str = r#"
interfaces: [eth0]
snat:
  addresses: [10.0.255.1]
limits:
  conntrack_flows: 65536
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
fn removed_backend_of_a_reset_service_has_its_flows_reset() {
    let text = BASE.replace(
        "    port: 80\n",
        "    port: 80\n    on_backend_down: reset\n",
    );
    let (mut ctl, dp) = start(&text);
    let id2 = id_of(&ctl, "web", "10.1.2.2:8080");
    let mut c = ctl.config().clone();
    c.services[0].backends.remove(1);
    ctl.apply(c).unwrap();
    assert_eq!(
        dp.state().backends[&id2].flags,
        BACKEND_F_DOWN | BACKEND_F_RESET
    );
    assert_eq!(dp.state().flow_resets, vec![id2], "its flows reset at once");
}

#[test]
fn removed_backend_keeps_its_id_until_its_flows_end() {
    let (mut ctl, dp) = start(BASE);
    let id2 = id_of(&ctl, "web", "10.1.2.2:8080");
    dp.state().live_flows.insert(id2, (0, 4));
    let mut c = ctl.config().clone();
    c.services[0].backends.remove(1);
    let before = dp.state().ops.len();
    let summary = ctl.apply(c.clone()).unwrap();
    assert_eq!(
        summary.backends_removed,
        vec!["web/10.1.2.2:8080".to_string()]
    );
    assert!(!table_ids(&dp, &ctl, "web").contains(&id2));
    assert_eq!(
        dp.state().backends[&id2].flags,
        BACKEND_F_DOWN,
        "entry kept (the id stays reserved), its flows keep going (on_backend_down: keep)"
    );
    // Make-before-break: the reset flag only after the table no longer points at it.
    let ops = dp.state().ops[before..].to_vec();
    let switch = ops
        .iter()
        .position(|o| matches!(o, Op::SetService(0, ..)))
        .expect("table switch");
    let mark = ops
        .iter()
        .position(|o| *o == Op::SetBackend(id2, BACKEND_F_DOWN))
        .expect("retired backend marked");
    assert!(switch < mark, "{ops:?}");
    assert!(
        dp.state().flow_resets.is_empty(),
        "no flow reset under keep"
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

/// `LB_LOCAL_ADDRS` (the data plane's address pre-filter) as a map of addresses.
fn local_addrs(dp: &FakeDataplane) -> BTreeMap<Ipv4Addr, u32> {
    dp.local_addrs()
        .unwrap()
        .into_iter()
        .map(|(a, bits)| (lb_common::ipv4_from_be(a), bits))
        .collect()
}

#[test]
fn reload_keeps_the_address_prefilter_in_step_with_vips_and_snat_addresses() {
    use lb_common::{LOCAL_F_SNAT, LOCAL_F_VIP};
    let (mut ctl, dp) = start(BASE);
    let vip = Ipv4Addr::new(192, 0, 2, 10);
    let vip2 = Ipv4Addr::new(192, 0, 2, 20);
    let snat = Ipv4Addr::new(10, 0, 255, 1);
    let snat2 = Ipv4Addr::new(10, 0, 255, 2);
    assert_eq!(
        local_addrs(&dp),
        BTreeMap::from([(snat, LOCAL_F_SNAT), (vip, LOCAL_F_VIP)])
    );
    // A second VIP (api moves) and a second SNAT address.
    let mut c = ctl.config().clone();
    c.services[1].vip = vip2;
    c.snat.addresses.push(snat2);
    ctl.apply(c).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        local_addrs(&dp),
        BTreeMap::from([
            (snat, LOCAL_F_SNAT),
            (snat2, LOCAL_F_SNAT),
            (vip, LOCAL_F_VIP),
            (vip2, LOCAL_F_VIP)
        ])
    );
    // Both services on the second VIP, only the second SNAT address: the first VIP and the
    // first SNAT address leave the filter.
    let mut c = ctl.config().clone();
    c.services[0].vip = vip2;
    c.snat.addresses = vec![snat2];
    ctl.apply(c).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        local_addrs(&dp),
        BTreeMap::from([(snat2, LOCAL_F_SNAT), (vip2, LOCAL_F_VIP)])
    );
    // A change that fails half-way is rolled back, the filter with it.
    let before = local_addrs(&dp);
    let mut c = ctl.config().clone();
    c.services[0].vip = vip;
    c.services[1].vip = vip;
    c.snat.addresses = vec![snat];
    dp.state().fault = Some(crate::dataplane::fake::FaultPlan {
        skip: 0,
        times: 1,
        matching: |op| matches!(op, Op::RemoveVip(_)),
    });
    let ops_before = dp.state().ops.len();
    assert!(ctl.apply(c).is_err());
    assert!(
        dp.state().ops[ops_before..]
            .iter()
            .any(|op| matches!(op, Op::SnatAddrs(_))),
        "the SNAT addresses were written (and restored) around the failing write"
    );
    assert_eq!(local_addrs(&dp), before);
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

mod atomic_reloads {
    //! A reload is applied completely or not at all: capacity is checked before any write,
    //! and a map error mid-way rolls the maps and the controller back.
    use super::*;
    use crate::dataplane::fake::FaultPlan;

    /// Everything observable about the controller's running state.
    fn ctl_state(ctl: &Controller<FakeDataplane>) -> String {
        // The verdict clocks hold the instant each backend was created: equal controllers
        // built at different times differ only there.
        static T: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        let t = *T.get_or_init(std::time::Instant::now);
        let services: Vec<ServiceState> = ctl
            .services()
            .iter()
            .cloned()
            .map(|mut s| {
                for b in &mut s.backends {
                    b.verdicts = VerdictClock::new(t);
                }
                s
            })
            .collect();
        format!(
            "{:?}\n{:?}\n{:?}\n{:?}\n{:?}",
            ctl.config(),
            services,
            ctl.retired(),
            ctl.vips(),
            ctl.global_config()
        )
    }

    /// Two services on two VIPs with `limits.max_services: 2`: the VIP and service maps are full.
    const FULL: &str = r#"
interfaces: [eth0]
snat:
  addresses: [10.0.255.1]
limits:
  maglev_table_size: 1009
  max_services: 2
  max_backends: 16
services:
  - name: web
    vip: 192.0.2.10
    port: 80
    health_check: {type: none}
    backends:
      - address: 10.1.1.2:8080
      - address: 10.1.2.2:8080
  - name: api
    vip: 192.0.2.11
    port: 443
    health_check: {type: none}
    backends:
      - address: 10.2.1.2:8443
"#;

    fn start_bounded(text: &str) -> (Controller<FakeDataplane>, FakeDataplane) {
        let c = cfg(text);
        let dp = FakeDataplane::with_limits(&c.limits);
        let ctl = Controller::new(dp.clone(), c).unwrap();
        (ctl, dp)
    }

    /// `FULL` with web moved to a third VIP, a backend of api re-weighted and one added, and
    /// the SNAT address changed: touches every kind of map entry.
    fn moved() -> Config {
        let mut c = cfg(FULL);
        c.services[0].vip = Ipv4Addr::new(192, 0, 2, 20);
        c.services[1].backends[0].weight = 3;
        c.services[1].backends.push(crate::config::BackendConfig {
            address: addr("10.2.2.2:8443"),
            weight: 1,
            backup: false,
            drain: false,
        });
        c.snat.addresses = vec![Ipv4Addr::new(10, 0, 255, 2)];
        c
    }

    #[test]
    fn moving_a_service_to_a_new_vip_at_max_services_capacity() {
        let (mut ctl, dp) = start_bounded(FULL);
        let summary = ctl.apply(moved()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(summary.services_added, vec!["web".to_string()]);
        assert_eq!(
            ctl.vips(),
            vec![Ipv4Addr::new(192, 0, 2, 11), Ipv4Addr::new(192, 0, 2, 20)]
        );
        {
            let s = dp.state();
            assert_eq!(s.vips.len(), 2);
            assert_eq!(s.services.len(), 2);
            let web = &ctl.services()[0];
            assert_eq!(s.services[&web.key].service_id, web.id);
        }
        // And back again; then a restart over the same maps adopts them.
        ctl.apply(cfg(FULL)).unwrap_or_else(|e| panic!("{e}"));
        let before = live_view(&dp);
        drop(ctl);
        let ctl = Controller::new(dp.clone(), cfg(FULL)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ctl.services().len(), 2);
        assert_eq!(live_view(&dp), before, "restart with the same config");
        // A restart straight into the moved config works at capacity too.
        drop(ctl);
        Controller::new(dp.clone(), moved()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(dp.state().vips.len(), 2);
    }

    #[test]
    fn a_new_service_beyond_the_free_service_ids_is_refused_up_front() {
        // Three ids but two used, and a retired one holds backend ids: adding two services
        // at once needs two service ids (only one is free).
        let mut text = FULL.replace("max_services: 2", "max_services: 3");
        text = text.replace("max_backends: 16", "max_backends: 6");
        let (mut ctl, dp) = start_bounded(&text);
        let before = dp.state().maps();
        let ops = dp.state().ops.len();
        let state = ctl_state(&ctl);
        let mut c = ctl.config().clone();
        let mut extra = c.services[1].clone();
        extra.name = "extra".into();
        extra.port = 444;
        extra.backends[0].address = addr("10.3.1.2:1");
        extra.backends.push(extra.backends[0].clone());
        extra.backends[1].address = addr("10.3.1.3:1");
        c.services.push(extra);
        // 3 + 2 = 5 backends need ids 1..=5 with max_backends 6: fits exactly.
        let mut too_many = c.clone();
        let first = too_many.services[2].backends[0].clone();
        too_many.services[2].backends.push(first);
        too_many.services[2].backends[2].address = addr("10.3.1.4:1");
        let err = ctl.apply(too_many).unwrap_err().to_string();
        assert!(err.contains("limits.max_backends"), "{err}");
        assert!(err.contains("6"), "{err}");
        assert_eq!(dp.state().ops.len(), ops, "refused before any write");
        assert_same_maps(&dp.state().maps(), &before, "refused");
        assert_eq!(ctl_state(&ctl), state);
        ctl.apply(c).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn a_map_error_mid_reload_leaves_everything_as_before() {
        // How many writes the reload makes when nothing fails.
        let (mut ctl, dp) = start_bounded(FULL);
        let start_ops = dp.state().ops.len();
        ctl.apply(moved()).unwrap();
        let writes = dp.state().ops.len() - start_ops;
        let after = dp.state().maps();
        let after_state = ctl_state(&ctl);
        assert!(writes > 10, "{writes}");

        for n in 0..writes {
            let (mut ctl, dp) = start_bounded(FULL);
            let before = dp.state().maps();
            let state = ctl_state(&ctl);
            dp.state().fault = Some(FaultPlan::nth_write(n));
            let err = ctl.apply(moved()).unwrap_err();
            assert!(dp.state().fault.is_none(), "write {n}: the fault fired");
            let text = err.to_string();
            assert!(text.contains("injected fault"), "write {n}: {text}");
            assert!(err.state_unchanged(), "write {n}: {text}");
            assert_same_maps(
                &dp.state().maps(),
                &before,
                &format!("write {n}: rolled back"),
            );
            assert_eq!(ctl_state(&ctl), state, "write {n}: controller rolled back");
            // The next reload succeeds and ends where an undisturbed one does.
            ctl.apply(moved())
                .unwrap_or_else(|e| panic!("write {n}: retry: {e}"));
            assert_same_maps(&dp.state().maps(), &after, &format!("write {n}: retry"));
            assert_eq!(ctl_state(&ctl), after_state, "write {n}: retry");
            // A restart over these maps (with either config) works.
            drop(ctl);
            Controller::new(dp.clone(), cfg(FULL))
                .unwrap_or_else(|e| panic!("write {n}: restart: {e}"));
        }
    }

    #[test]
    fn restart_after_a_failed_reload_adopts_the_old_state() {
        let (mut ctl, dp) = start_bounded(FULL);
        let before = dp.state().maps();
        let seen = live_view(&dp);
        dp.state().fault = Some(FaultPlan {
            skip: 0,
            times: 1,
            matching: |op| matches!(op, Op::SetVip(_)),
        });
        ctl.apply(moved()).unwrap_err();
        assert_same_maps(&dp.state().maps(), &before, "rolled back");
        drop(ctl);
        let ctl = Controller::new(dp.clone(), cfg(FULL)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(live_view(&dp), seen, "restart adopts the old state");
        drop(ctl);
        let ctl = Controller::new(dp.clone(), moved()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ctl.vips().len(), 2);
    }

    #[test]
    fn a_failed_rollback_is_reported_and_the_next_reload_repairs_it() {
        let (mut ctl, dp) = start_bounded(FULL);
        let model = |ctl: &Controller<FakeDataplane>| {
            let ids: Vec<_> = ctl
                .services()
                .iter()
                .map(|s| {
                    (
                        s.cfg.clone(),
                        s.id,
                        s.backends.iter().map(|b| b.id).collect::<Vec<_>>(),
                    )
                })
                .collect();
            format!(
                "{:?} {ids:?} {:?} {:?}",
                ctl.config(),
                ctl.retired(),
                ctl.vips()
            )
        };
        let state = model(&ctl);
        // Every write from the fifth on fails, so the undo steps fail too.
        dp.state().fault = Some(FaultPlan {
            skip: 5,
            times: usize::MAX,
            matching: |_| true,
        });
        let err = ctl.apply(moved()).unwrap_err();
        let text = err.to_string();
        assert!(!err.state_unchanged(), "{text}");
        assert!(text.contains("rolling the change back failed"), "{text}");
        assert_eq!(model(&ctl), state, "the model stays the old one");
        // The data plane recovers: the same reload again, then back.
        dp.state().fault = None;
        ctl.apply(moved()).unwrap_or_else(|e| panic!("{e}"));
        let (mut reference, ref_dp) = start_bounded(FULL);
        reference.apply(moved()).unwrap();
        assert_eq!(live_view(&dp), live_view(&ref_dp));
        ctl.apply(cfg(FULL)).unwrap_or_else(|e| panic!("{e}"));
        ctl.sweep(0).unwrap(); // releases the id of the backend `moved` added
        let (_, fresh_dp) = start_bounded(FULL);
        assert_eq!(live_view(&dp), live_view(&fresh_dp));
    }

    /// `a == b`, naming the maps that differ (the Maglev map is too large to print).
    fn assert_same_maps(
        a: &crate::dataplane::fake::FakeMaps,
        b: &crate::dataplane::fake::FakeMaps,
        what: &str,
    ) {
        let mut differ = Vec::new();
        if a.global != b.global {
            differ.push(format!("global {:?} vs {:?}", a.global, b.global));
        }
        if a.snat != b.snat {
            differ.push(format!("snat {:?} vs {:?}", a.snat, b.snat));
        }
        if a.backends != b.backends {
            differ.push(format!("backends {:?} vs {:?}", a.backends, b.backends));
        }
        if a.maglev != b.maglev {
            let slots = a
                .maglev
                .keys()
                .chain(b.maglev.keys())
                .filter(|k| a.maglev.get(k) != b.maglev.get(k))
                .count();
            differ.push(format!("maglev ({slots} slots)"));
        }
        if a.services != b.services {
            differ.push(format!("services {:?} vs {:?}", a.services, b.services));
        }
        if a.vips != b.vips {
            differ.push(format!("vips {:?} vs {:?}", a.vips, b.vips));
        }
        if a.tx_ports != b.tx_ports || a.counters != b.counters {
            differ.push("tx_ports or counters".into());
        }
        if a.service_stats != b.service_stats || a.backend_stats != b.backend_stats {
            differ.push("stats".into());
        }
        assert!(
            differ.is_empty(),
            "{what}: maps differ: {}",
            differ.join("; ")
        );
        assert_eq!(a, b);
    }

    /// What the XDP program can see: entries, and for each service its active table.
    fn live_view(dp: &FakeDataplane) -> String {
        let maps = dp.state().maps();
        let tables: Vec<_> = maps
            .services
            .iter()
            .map(|(k, v)| (v.service_id, v.flags, dp.active_table(k)))
            .collect();
        format!(
            "{:?} {:?} {:?} {:?} {:?}",
            maps.global, maps.snat, maps.backends, maps.vips, tables
        )
    }
}

#[test]
fn on_backend_down_reset_adds_the_reset_flag_and_keep_does_not() {
    let text = BASE.replace(
        "    port: 80\n",
        "    port: 80\n    on_backend_down: reset\n",
    );
    let (mut ctl, dp) = start(&text);
    let p1 = addr("10.1.1.2:8080");
    let id1 = id_of(&ctl, "web", "10.1.1.2:8080");
    ctl.health_result("web", p1, true, "ok").unwrap();
    let before = dp.state().ops.len();
    for _ in 0..3 {
        ctl.health_result("web", p1, false, "refused").unwrap();
    }
    let ops = dp.state().ops[before..].to_vec();
    assert!(matches!(ops[1], Op::SetService(0, ..)), "{ops:?}");
    assert_eq!(
        ops[2],
        Op::SetBackend(id1, BACKEND_F_DOWN | BACKEND_F_RESET),
        "reset flag with DOWN, after the switch"
    );
    assert_eq!(dp.state().flow_resets, vec![id1], "its flows reset at once");
    // Switching the service to keep clears the reset flag of the down backend at once.
    let mut c = ctl.config().clone();
    c.services[0].on_backend_down = OnBackendDown::Keep;
    ctl.apply(c.clone()).unwrap();
    assert_eq!(dp.state().backends[&id1].flags, BACKEND_F_DOWN);
    // Recovery clears both.
    ctl.health_result("web", p1, true, "ok").unwrap();
    ctl.health_result("web", p1, true, "ok").unwrap();
    assert_eq!(dp.state().backends[&id1].flags, 0);
    // The default is keep.
    assert_eq!(cfg(BASE).services[0].on_backend_down, OnBackendDown::Keep);
}

#[test]
fn checks_that_never_run_leave_health_alone_but_stale() {
    let (mut ctl, dp) = start(BASE);
    let t0 = std::time::Instant::now();
    let at = |s: u64| t0 + std::time::Duration::from_secs(s);
    let (p1, p2, b3) = (
        addr("10.1.1.2:8080"),
        addr("10.1.2.2:8080"),
        addr("10.1.3.2:8080"),
    );
    // Default checks: interval 2s, fall 3, so stale after 8 s without a verdict.
    assert_eq!(ctl.stale_health(t0), vec![]);
    ctl.health_result_at("web", p1, true, "ok", at(20)).unwrap();
    ctl.health_result_at("web", p2, true, "ok", at(1)).unwrap();
    let table = table_ids(&dp, &ctl, "web");
    let ops = dp.state().ops.len();
    // Every round of p2 and b3 could not run since: stale, reported once; p1 is fresh and
    // `api` (type: none) never goes stale.
    let stale = ctl.stale_health(at(25));
    let got: Vec<_> = stale
        .iter()
        .map(|c| (c.backend, c.health, c.age.as_secs(), c.stale))
        .collect();
    assert_eq!(
        got,
        vec![(p2, Health::Up, 24, true), (b3, Health::Unknown, 25, true)],
        "{stale:?}"
    );
    assert_eq!(ctl.stale_health(at(26)), vec![]);
    // The health and the data plane are left alone.
    assert_eq!(table_ids(&dp, &ctl, "web"), table);
    assert_eq!(dp.state().ops.len(), ops);
    let web = &ctl.services()[0];
    assert_eq!(web.backend(p2).unwrap().health(), Health::Up);
    assert!(web
        .backend(p2)
        .unwrap()
        .verdicts
        .is_stale(&web.cfg.health_check, at(26)));
    // A verdict, even a failure, makes it fresh again: reported once.
    ctl.health_result_at("web", p2, false, "refused", at(27))
        .unwrap();
    let fresh = ctl.stale_health(at(28));
    assert_eq!(fresh.len(), 1, "{fresh:?}");
    assert_eq!((fresh[0].backend, fresh[0].stale), (p2, false));
}

/// The forwarding mode reaches the service entry: full NAT is the all-zero default, DSR
/// carries the outer source (the service's own or `dsr.source`), and a reload that only
/// switches the mode or the source rewrites the entry.
#[test]
fn forwarding_mode_and_source_are_written_and_reloaded() {
    let (mut ctl, dp) = start(BASE);
    let key = ctl.services()[0].key;
    let v = dp.state().services[&key];
    assert_eq!((v.forwarding, v.dsr_src_be), (lb_common::FORWARDING_NAT, 0));

    let mut c = ctl.config().clone();
    c.dsr = Some(crate::config::DsrConfig {
        source: Some("10.0.255.2".parse().unwrap()),
    });
    c.services[1].forwarding = crate::config::Forwarding::Dsr;
    c.services[1].backends[0].address = addr("10.2.1.2:443");
    let summary = ctl.apply(c).unwrap();
    assert!(summary.tables_rewritten.contains(&"api".to_string()));
    let api = ctl.services()[1].key;
    let v = dp.state().services[&api];
    assert_eq!(
        (v.forwarding, v.dsr_src_be),
        (
            lb_common::FORWARDING_DSR,
            lb_common::ipv4_to_be("10.0.255.2".parse().unwrap())
        )
    );
    assert_eq!(
        dp.state().services[&key].forwarding,
        lb_common::FORWARDING_NAT
    );

    // Only the source changes: the entry is rewritten with it.
    let mut c = ctl.config().clone();
    c.services[1].dsr_source = Some("10.0.255.3".parse().unwrap());
    let summary = ctl.apply(c).unwrap();
    assert_eq!(summary.tables_rewritten, vec!["api".to_string()]);
    assert_eq!(
        dp.state().services[&api].dsr_src_be,
        lb_common::ipv4_to_be("10.0.255.3".parse().unwrap())
    );
}

/// Two SNAT addresses of 100 ports each; endpoint 10.1.1.2:8080 is shared by two full-NAT
/// services; a DSR service uses no SNAT.
const SNAT_POOL: &str = r#"
interfaces: [eth0]
snat:
  addresses: [10.0.255.1, 10.0.255.2]
  port_min: 1024
  port_max: 1123
dsr:
  source: 10.0.255.9
limits:
  conntrack_flows: 1024
  maglev_table_size: 1009
services:
  - name: web
    vip: 192.0.2.10
    port: 80
    backends:
      - address: 10.1.1.2:8080
      - address: 10.1.2.2:8080
  - name: alt
    vip: 192.0.2.10
    port: 81
    backends:
      - address: 10.1.1.2:8080
  - name: direct
    vip: 192.0.2.10
    port: 82
    forwarding: dsr
    backends:
      - address: 10.1.3.2:82
"#;

fn snat_pool_of(
    ctl: &Controller<FakeDataplane>,
    svc: &str,
    a: &str,
) -> Option<crate::snat_pool::SnatPool> {
    ctl.services()
        .iter()
        .find(|s| s.cfg.name == svc)
        .unwrap()
        .backend(addr(a))
        .unwrap()
        .snat_pool
}

#[test]
fn sweep_reports_snat_pool_use_per_endpoint_and_warns_once_per_crossing() {
    let (mut ctl, dp) = start(SNAT_POOL);
    assert_eq!(
        snat_pool_of(&ctl, "web", "10.1.1.2:8080"),
        None,
        "no sweep yet"
    );
    let (a1, a2): (Ipv4Addr, Ipv4Addr) =
        ("10.0.255.1".parse().unwrap(), "10.0.255.2".parse().unwrap());
    let set = |e: &str, a: Ipv4Addr, n: u64| {
        dp.state().snat_ports.insert((addr(e), a), n);
    };
    set("10.1.1.2:8080", a1, 60);
    set("10.1.1.2:8080", a2, 20);
    set("10.1.2.2:8080", a2, 3);
    ctl.sweep(0).unwrap();
    let shared = snat_pool_of(&ctl, "web", "10.1.1.2:8080").unwrap();
    assert_eq!(
        (shared.in_use, shared.busiest_address, shared.total()),
        (80, 60, 200)
    );
    assert_eq!((shared.addresses, shared.ports_per_address), (2, 100));
    // The pool is the endpoint's: the other service with the same endpoint sees the same.
    assert_eq!(snat_pool_of(&ctl, "alt", "10.1.1.2:8080"), Some(shared));
    let other = snat_pool_of(&ctl, "web", "10.1.2.2:8080").unwrap();
    assert_eq!((other.in_use, other.busiest_address), (3, 3));
    assert_eq!(
        snat_pool_of(&ctl, "direct", "10.1.3.2:82"),
        None,
        "DSR: no SNAT"
    );
    assert!(ctl.snat_pools_in_warning().is_empty());
    // 80 of 100 on one address (120 of 200 overall): warned, whatever the average says.
    set("10.1.1.2:8080", a1, 80);
    set("10.1.1.2:8080", a2, 40);
    ctl.sweep(0).unwrap();
    assert_eq!(ctl.snat_pools_in_warning(), vec![addr("10.1.1.2:8080")]);
    // Hysteresis: still in warning between 70% and 80%, cleared below 70%.
    set("10.1.1.2:8080", a1, 75);
    ctl.sweep(0).unwrap();
    assert_eq!(ctl.snat_pools_in_warning(), vec![addr("10.1.1.2:8080")]);
    set("10.1.1.2:8080", a1, 69);
    ctl.sweep(0).unwrap();
    assert!(ctl.snat_pools_in_warning().is_empty());
    // Flows gone: the pool reads empty, not stale.
    dp.state().snat_ports.clear();
    ctl.sweep(0).unwrap();
    let empty = snat_pool_of(&ctl, "web", "10.1.1.2:8080").unwrap();
    assert_eq!(
        (empty.in_use, empty.busiest_address, empty.total()),
        (0, 0, 200)
    );
    // A warned endpoint removed from the configuration leaves the warning list.
    set("10.1.2.2:8080", a1, 100);
    ctl.sweep(0).unwrap();
    assert_eq!(ctl.snat_pools_in_warning(), vec![addr("10.1.2.2:8080")]);
    let mut c = ctl.config().clone();
    c.services[0].backends.remove(1);
    ctl.apply(c).unwrap();
    ctl.sweep(0).unwrap();
    assert!(ctl.snat_pools_in_warning().is_empty());
}

#[test]
fn snat_pool_follows_a_reloaded_port_range() {
    let (mut ctl, dp) = start(SNAT_POOL);
    dp.state()
        .snat_ports
        .insert((addr("10.1.2.2:8080"), "10.0.255.1".parse().unwrap()), 50);
    ctl.sweep(0).unwrap();
    assert_eq!(
        snat_pool_of(&ctl, "web", "10.1.2.2:8080").unwrap().total(),
        200
    );
    let mut c = ctl.config().clone();
    c.snat.port_max = 1223;
    ctl.apply(c).unwrap();
    ctl.sweep(0).unwrap();
    let p = snat_pool_of(&ctl, "web", "10.1.2.2:8080").unwrap();
    assert_eq!((p.in_use, p.ports_per_address, p.total()), (50, 200, 400));
}

/// A VIP whose services are all DSR carries `LOCAL_F_DSR_ONLY` (its packets skip the full-NAT
/// conntrack lookups); a full-NAT service on it clears the bit, removing that service sets it
/// again (after a sweep), and removing the VIP drops both bits.
#[test]
fn dsr_only_vips_carry_the_dsr_only_bit() {
    use lb_common::{LOCAL_F_DSR_ONLY, LOCAL_F_SNAT, LOCAL_F_VIP, VIP_F_DSR_ONLY};
    let (mut ctl, dp) = start(SNAT_POOL);
    let (vip, snat) = (Ipv4Addr::new(192, 0, 2, 10), Ipv4Addr::new(10, 0, 255, 1));
    let dsr_vip = Ipv4Addr::new(192, 0, 2, 20);
    // Mixed VIP: no bit.
    assert_eq!(local_addrs(&dp)[&vip], LOCAL_F_VIP);
    // The DSR service alone on its own VIP: the bit, in LB_VIPS and LB_LOCAL_ADDRS.
    let mut c = ctl.config().clone();
    c.services[2].vip = dsr_vip;
    ctl.apply(c.clone()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(local_addrs(&dp)[&vip], LOCAL_F_VIP);
    assert_eq!(local_addrs(&dp)[&dsr_vip], LOCAL_F_VIP | LOCAL_F_DSR_ONLY);
    let be = lb_common::ipv4_to_be(dsr_vip);
    assert_eq!(dp.vip(be).unwrap().unwrap().flags, VIP_F_DSR_ONLY);
    // A full-NAT service joins it: the bit goes.
    c.services[1].vip = dsr_vip;
    ctl.apply(c.clone()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(local_addrs(&dp)[&dsr_vip], LOCAL_F_VIP);
    assert_eq!(dp.vip(be).unwrap().unwrap().flags, 0);
    // It leaves again: the bit is back once a sweep found no full-NAT flow to the VIP
    // (dsr_only_tests.rs).
    c.services[1].vip = vip;
    ctl.apply(c.clone()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(local_addrs(&dp)[&dsr_vip], LOCAL_F_VIP);
    ctl.sweep(0).unwrap();
    assert_eq!(local_addrs(&dp)[&dsr_vip], LOCAL_F_VIP | LOCAL_F_DSR_ONLY);
    // The DSR service moves back: its old VIP leaves the filter entirely (no bit left over).
    c.services[2].vip = vip;
    ctl.apply(c).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        local_addrs(&dp),
        BTreeMap::from([
            (snat, LOCAL_F_SNAT),
            (Ipv4Addr::new(10, 0, 255, 2), LOCAL_F_SNAT),
            (vip, LOCAL_F_VIP)
        ])
    );
}

/// Live DSR entries count as their service's and backend's active flows, and hold a removed
/// DSR backend's id like full-NAT flows do (its flows keep going to it until they end).
#[test]
fn sweep_counts_dsr_flows_and_they_hold_a_removed_backend() {
    let (mut ctl, dp) = start(SNAT_POOL);
    let mut c = ctl.config().clone();
    c.services[2].backends.push(crate::config::BackendConfig {
        address: addr("10.1.4.2:82"),
        weight: 1,
        backup: false,
        drain: false,
    });
    ctl.apply(c.clone()).unwrap_or_else(|e| panic!("{e}"));
    let sid = ctl
        .services()
        .iter()
        .find(|s| s.cfg.name == "direct")
        .unwrap()
        .id;
    let b1 = id_of(&ctl, "direct", "10.1.3.2:82");
    let b2 = id_of(&ctl, "direct", "10.1.4.2:82");
    dp.state().live_dsr_flows.insert(b1, (sid, 3));
    dp.state().live_dsr_flows.insert(b2, (sid, 2));
    let sweep = ctl.sweep(0).unwrap();
    assert_eq!(sweep.dsr_flows, 5);
    let svc = ctl
        .services()
        .iter()
        .find(|s| s.cfg.name == "direct")
        .unwrap();
    assert_eq!(svc.active_flows, 5);
    assert_eq!(svc.backend(addr("10.1.4.2:82")).unwrap().active_flows, 2);
    // b2 removed while it has DSR flows: kept (flagged down) until they end.
    c.services[2].backends.pop();
    ctl.apply(c).unwrap_or_else(|e| panic!("{e}"));
    ctl.sweep(0).unwrap();
    assert_eq!(dp.state().backends[&b2].flags, BACKEND_F_DOWN);
    assert_eq!(ctl.retired().len(), 1);
    dp.state().live_dsr_flows.remove(&b2);
    ctl.sweep(0).unwrap();
    assert!(!dp.state().backends.contains_key(&b2));
    assert!(ctl.retired().is_empty());
}
