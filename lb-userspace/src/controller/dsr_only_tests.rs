//! The DSR-only bit of a VIP against the fake data plane ([`super::dsr_only`]): a reload that
//! leaves a VIP with DSR services only sets it only once a sweep begun after the reload found
//! no full-NAT flow to a port of the VIP that still has a service.

use super::*;
use crate::dataplane::fake::FakeDataplane;
use lb_common::{LOCAL_F_DSR_ONLY, LOCAL_F_VIP, VIP_F_DSR_ONLY};

/// VIP 192.0.2.10: full NAT on :80, DSR on :443. VIP 192.0.2.20: DSR only.
const MIXED: &str = r#"
interfaces: [eth0]
snat:
  addresses: [10.0.255.1]
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
      - address: 10.1.1.2:80
  - name: direct
    vip: 192.0.2.10
    port: 443
    forwarding: dsr
    backends:
      - address: 10.1.3.2:443
  - name: solo
    vip: 192.0.2.20
    port: 443
    forwarding: dsr
    backends:
      - address: 10.1.4.2:443
"#;

const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const SOLO: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 20);
const DSR_ONLY: u32 = LOCAL_F_VIP | LOCAL_F_DSR_ONLY;

/// A full-NAT flow's destination: the VIP's port 80 (`web`).
fn web() -> SocketAddrV4 {
    SocketAddrV4::new(VIP, 80)
}

fn start() -> (Controller<FakeDataplane>, FakeDataplane) {
    let dp = FakeDataplane::new();
    let config = Config::from_yaml_str(MIXED, "test.yaml").unwrap_or_else(|e| panic!("{e}"));
    let ctl = Controller::new(dp.clone(), config).unwrap_or_else(|e| panic!("{e}"));
    (ctl, dp)
}

/// `LB_LOCAL_ADDRS` bits of `addr`, and the `LB_VIPS` flags it agrees with.
fn bits(dp: &FakeDataplane, addr: Ipv4Addr) -> u32 {
    let be = lb_common::ipv4_to_be(addr);
    let local = dp.local_addrs().unwrap().get(&be).copied().unwrap_or(0);
    let vip_flags = dp.vip(be).unwrap().map_or(0, |v| v.flags);
    assert_eq!(
        local & LOCAL_F_DSR_ONLY != 0,
        vip_flags & VIP_F_DSR_ONLY != 0,
        "{addr}: LB_LOCAL_ADDRS {local:#x} disagrees with LB_VIPS flags {vip_flags:#x}"
    );
    local
}

/// The running configuration without the service `name`.
fn without(ctl: &Controller<FakeDataplane>, name: &str) -> Config {
    let mut c = ctl.config().clone();
    c.services.retain(|s| s.name != name);
    c
}

/// The running configuration with the service `name` switched to DSR.
fn switched(ctl: &Controller<FakeDataplane>, name: &str) -> Config {
    let mut c = ctl.config().clone();
    for s in c.services.iter_mut().filter(|s| s.name == name) {
        s.forwarding = crate::config::Forwarding::Dsr;
    }
    c
}

/// The issue's case: VIP 192.0.2.10 has NAT :80 and DSR :443; a reload switches :80 to DSR
/// while a full-NAT connection to it is open (it keeps its NAT path through its conntrack
/// entries, so the VIP's packets must keep looking conntrack up). The bit stays off while
/// sweeps find the flow and comes on at the first sweep that finds none. A VIP that never had
/// a full-NAT service has the bit at once.
#[test]
fn reload_keeps_the_bit_off_while_full_nat_flows_to_the_vip_live() {
    let (mut ctl, dp) = start();
    assert_eq!(
        bits(&dp, SOLO),
        DSR_ONLY,
        "DSR services only, no flows: at once"
    );
    assert_eq!(bits(&dp, VIP), LOCAL_F_VIP);
    dp.state().live_nat_flows.insert(web(), 1);
    ctl.sweep(0).unwrap();

    ctl.apply(switched(&ctl, "web"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        bits(&dp, VIP),
        LOCAL_F_VIP,
        "the VIP's services are all DSR now, but a full-NAT flow to it is open"
    );
    ctl.sweep(0).unwrap();
    assert_eq!(
        bits(&dp, VIP),
        LOCAL_F_VIP,
        "the sweep still found the flow"
    );

    dp.state().live_nat_flows.clear();
    ctl.sweep(0).unwrap();
    assert_eq!(bits(&dp, VIP), DSR_ONLY, "no full-NAT flow left");
    assert_eq!(bits(&dp, SOLO), DSR_ONLY);
    // A new DSR-only VIP gets the bit with the reload that adds it.
    let mut c = ctl.config().clone();
    let mut extra = c
        .services
        .iter()
        .find(|s| s.name == "solo")
        .unwrap()
        .clone();
    extra.name = "extra".into();
    extra.vip = Ipv4Addr::new(192, 0, 2, 30);
    c.services.push(extra);
    ctl.apply(c).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(bits(&dp, Ipv4Addr::new(192, 0, 2, 30)), DSR_ONLY);
}

/// Removing the full-NAT service instead: its flows' packets find no service
/// (`PASS_VIP_NO_SERVICE`) with or without the bit, so they do not hold it; the first sweep
/// after the reload sets it.
#[test]
fn flows_of_a_removed_service_do_not_hold_the_bit() {
    let (mut ctl, dp) = start();
    dp.state().live_nat_flows.insert(web(), 3);
    ctl.sweep(0).unwrap();
    ctl.apply(without(&ctl, "web"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        bits(&dp, VIP),
        LOCAL_F_VIP,
        "until a sweep after the reload"
    );
    ctl.sweep(0).unwrap();
    assert_eq!(bits(&dp, VIP), DSR_ONLY);
}

/// A sweep that found no full-NAT flow before the reload proves nothing about flows opened
/// since, and neither does one whose walk began before the reload: only a sweep begun after
/// it sets the bit.
#[test]
fn only_a_sweep_begun_after_the_reload_sets_the_bit() {
    let (mut ctl, dp) = start();
    ctl.sweep(0).unwrap();
    let with_web = ctl.config().clone();
    ctl.apply(without(&ctl, "web"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        bits(&dp, VIP),
        LOCAL_F_VIP,
        "flows may have opened since the sweep"
    );
    ctl.sweep(0).unwrap();
    assert_eq!(bits(&dp, VIP), DSR_ONLY);

    // The full-NAT service back: the bit goes with the reload.
    ctl.apply(with_web).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(bits(&dp, VIP), LOCAL_F_VIP);
    // A sweep walks (finding nothing), then a reload removes the service, then the sweep
    // finishes: its walk may have missed flows opened before the reload.
    let (mut sweeper, cfg, generation) = ctl.begin_sweep().unwrap();
    let walked = sweeper.sweep(0, &cfg).unwrap();
    ctl.apply(without(&ctl, "web"))
        .unwrap_or_else(|e| panic!("{e}"));
    ctl.finish_sweep(walked, generation).unwrap();
    assert_eq!(
        bits(&dp, VIP),
        LOCAL_F_VIP,
        "the walk began before the reload"
    );
    ctl.sweep(0).unwrap();
    assert_eq!(bits(&dp, VIP), DSR_ONLY);
}

/// After a restart, a pinned VIP found without the bit may have full-NAT flows (lbd knows
/// nothing of the sweeps before): it gets the bit at the first sweep that finds none; a VIP
/// pinned with the bit keeps it.
#[test]
fn restart_waits_for_a_sweep_before_setting_the_bit() {
    let (ctl, dp) = start();
    let config = switched(&ctl, "web");
    drop(ctl);
    dp.state().live_nat_flows.insert(web(), 2);
    let mut ctl = Controller::new(dp.clone(), config).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(bits(&dp, VIP), LOCAL_F_VIP);
    assert_eq!(bits(&dp, SOLO), DSR_ONLY);
    ctl.sweep(0).unwrap();
    assert_eq!(bits(&dp, VIP), LOCAL_F_VIP, "the sweep found 2 flows");
    dp.state().live_nat_flows.clear();
    ctl.sweep(0).unwrap();
    assert_eq!(bits(&dp, VIP), DSR_ONLY);
}

/// A reload that fails (and is rolled back) leaves the bookkeeping as it was: the DSR-only
/// VIP it would have given a full-NAT service keeps its bit, also through the next sweep.
#[test]
fn a_rolled_back_reload_leaves_the_bit_as_it_was() {
    use crate::dataplane::fake::{FaultPlan, Op};
    let (mut ctl, dp) = start();
    let mut c = ctl.config().clone();
    let mut nat = c.services.iter().find(|s| s.name == "web").unwrap().clone();
    nat.name = "web2".into();
    nat.vip = SOLO;
    c.services.push(nat);
    dp.state().fault = Some(FaultPlan {
        skip: 0,
        times: 1,
        matching: |op| matches!(op, Op::SetVip(_)),
    });
    let err = ctl.apply(c).unwrap_err();
    assert!(matches!(err, ControllerError::RolledBack { .. }), "{err}");
    assert_eq!(bits(&dp, SOLO), DSR_ONLY);
    dp.state().ops.clear();
    ctl.sweep(0).unwrap();
    assert_eq!(bits(&dp, SOLO), DSR_ONLY);
    assert!(
        !dp.state()
            .ops
            .contains(&Op::SetVip(lb_common::ipv4_to_be(SOLO))),
        "the sweep rewrote the VIP: {:?}",
        dp.state().ops
    );
}
