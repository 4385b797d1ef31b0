//! lbd announcing its VIP through BIRD 2 (issue 13, part 2): a router namespace running BIRD
//! and the lab's balancer namespace running BIRD and lbd (`lb_tests::lab::bgp`). Every
//! assertion reads the router's kernel table, where ECMP would take its next hops from.
//!
//! Needs root, bird2 (`cargo xtask setup`) and `cargo xtask build`; runs with
//! `cargo xtask test` (or `cargo test --release -p lb-tests --test netns_bgp -- --test-threads=1`).
//! Namespaces, BIRDs and lbd are removed / killed by PID when the guards drop, also on panic.

use lb_tests::lab::bgp::{node_addr, BirdNode, Router};
use lb_tests::lab::lbd::HealthSpec;
use lb_tests::lab::{Lab, LabOptions, Mode};
use std::time::{Duration, Instant};

const PREFIX: &str = "192.0.2.10/32";
/// The withdrawal bound of the dead-man switch the issue asks for.
const KILL_BOUND: Duration = Duration::from_secs(1);

/// A lab with 2 backends, a router, and the balancer wired to it with its BIRD up.
fn bgp_lab(mode: Mode) -> (Lab, Router, BirdNode) {
    let lab =
        Lab::new(LabOptions::new(2, mode)).unwrap_or_else(|e| panic!("building the lab: {e}"));
    let mut router = Router::new(lab.prefix(), 1, "192.0.2.0/24")
        .unwrap_or_else(|e| panic!("starting the router: {e}"));
    let node = router
        .add_node(1, lab.balancer_ns(), "vips")
        .unwrap_or_else(|e| panic!("wiring the node: {e}"));
    router
        .wait_established(1, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}\nrouter log:\n{}", router.bird().log_tail(20)));
    (lab, router, node)
}

fn announced(hops: &[std::net::Ipv4Addr]) -> bool {
    hops == [node_addr(1)]
}

fn withdrawn(hops: &[std::net::Ipv4Addr]) -> bool {
    hops.is_empty()
}

/// Announce after start; SIGKILL withdraws within 1 s (the dead-man device); a restart
/// re-announces; all backends unhealthy withdraws within interval x fall + 1 s and healthy
/// again re-announces; SIGTERM withdraws first and keeps lbd running for the drain period.
fn announce_lifecycle(mode: Mode) {
    let (mut lab, router, node) = bgp_lab(mode);
    let health = HealthSpec::default();
    let drain = Duration::from_millis(1500);
    let text = format!(
        "{}{}",
        lab.default_config().to_yaml(),
        node.announce_yaml("lbvip0", drain.as_millis() as u64)
    );
    let t = Instant::now();
    lab.start_lbd_text(&text)
        .unwrap_or_else(|e| panic!("starting lbd: {e}"));
    let up = router
        .wait_route(PREFIX, Duration::from_secs(20), announced)
        .unwrap_or_else(|e| {
            panic!(
                "never announced: {e}\nnode bird:\n{}",
                node.bird.log_tail(20)
            )
        });
    println!(
        "{mode:?}: announced {:?} after starting lbd (route seen {:?} after the API answered; includes rise {} x {} ms)",
        t.elapsed(),
        up,
        health.rise,
        health.interval_ms
    );
    let status = lab.lbd().unwrap().lbctl(&["status"]).unwrap();
    assert!(
        status.contains("maglev digest") && status.contains("192.0.2.10  yes"),
        "{status}"
    );
    lab.wait_vip(Duration::from_secs(10)).unwrap();

    // kill -9: no lbd code runs; the tun device vanishes and BIRD withdraws.
    let t = Instant::now();
    lab.lbd_mut().unwrap().stop(libc::SIGKILL).unwrap();
    let gone = router
        .wait_route(PREFIX, Duration::from_secs(5), withdrawn)
        .unwrap_or_else(|e| panic!("not withdrawn after SIGKILL: {e}"));
    let kill_withdraw = t.elapsed();
    println!("{mode:?}: SIGKILL -> route withdrawn in {kill_withdraw:?} (after the kill returned: {gone:?})");
    assert!(
        kill_withdraw <= KILL_BOUND,
        "withdrawal after SIGKILL took {kill_withdraw:?}, bound {KILL_BOUND:?}"
    );

    // Restart: re-adopts the pinned state (health included) and announces again. The killed
    // lbd's include file still lists the VIP: the new one must configure BIRD with an empty
    // file before its device exists, or that stale file would announce at once.
    let log_path = lab.lbd().unwrap().log_path().to_path_buf();
    let before = std::fs::read_to_string(&log_path).unwrap_or_default().len();
    let t = Instant::now();
    lab.lbd_mut().unwrap().start().unwrap();
    router
        .wait_route(PREFIX, Duration::from_secs(20), announced)
        .unwrap_or_else(|e| panic!("not re-announced after restart: {e}"));
    println!(
        "{mode:?}: restart -> re-announced {:?} after starting lbd",
        t.elapsed()
    );
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let new = &log[before.min(log.len())..];
    let empty = new.find("announced=[] ");
    let device = new.find("dead-man device up");
    assert!(
        matches!((empty, device), (Some(e), Some(d)) if e < d),
        "the restarted lbd did not configure an empty file before creating its device:\n{new}"
    );

    // Every backend of the only service unhealthy: withdrawn within interval x fall + 1 s.
    let bound =
        Duration::from_millis(health.interval_ms * u64::from(health.fall)) + Duration::from_secs(1);
    let t = Instant::now();
    lab.set_backend_healthy(1, false).unwrap();
    lab.set_backend_healthy(2, false).unwrap();
    router
        .wait_route(PREFIX, Duration::from_secs(10), withdrawn)
        .unwrap_or_else(|e| panic!("not withdrawn with every backend down: {e}"));
    let health_withdraw = t.elapsed();
    println!(
        "{mode:?}: all backends unhealthy -> withdrawn in {health_withdraw:?} (bound {bound:?})"
    );
    assert!(
        health_withdraw <= bound,
        "withdrawal after every backend failed took {health_withdraw:?}, bound interval x fall + 1 s = {bound:?}"
    );
    let status = lab.lbd().unwrap().lbctl(&["status"]).unwrap();
    assert!(
        status.contains("no service of the VIP has a healthy backend"),
        "{status}"
    );
    let t = Instant::now();
    lab.set_backend_healthy(1, true).unwrap();
    router
        .wait_route(PREFIX, Duration::from_secs(10), announced)
        .unwrap_or_else(|e| panic!("not re-announced with a backend up again: {e}"));
    println!(
        "{mode:?}: one backend healthy again -> re-announced in {:?}",
        t.elapsed()
    );
    lab.set_backend_healthy(2, true).unwrap();

    // SIGTERM: withdrawn first, lbd keeps running (forwarding, checking) for the drain.
    let pid = lab.lbd().unwrap().pid().expect("running") as libc::pid_t;
    let t = Instant::now();
    // SAFETY: signals the lbd process this test started (its PID, still a live child).
    unsafe { libc::kill(pid, libc::SIGTERM) };
    router
        .wait_route(PREFIX, Duration::from_secs(5), withdrawn)
        .unwrap_or_else(|e| panic!("not withdrawn after SIGTERM: {e}"));
    let term_withdraw = t.elapsed();
    assert!(
        lab.lbd_mut().unwrap().running(),
        "lbd exited right after withdrawing ({term_withdraw:?}); it must drain for {drain:?}"
    );
    lab.wait_vip(Duration::from_secs(1))
        .unwrap_or_else(|e| panic!("the VIP stopped forwarding during the drain: {e}"));
    // Signal 0 sends nothing (a second SIGTERM would cut the drain short): just wait.
    let status = lab.lbd_mut().unwrap().stop(0).unwrap();
    let ran = t.elapsed();
    println!(
        "{mode:?}: SIGTERM -> withdrawn in {term_withdraw:?}, lbd exited after {ran:?} (drain {drain:?}), {status}"
    );
    assert!(
        ran >= drain,
        "lbd exited {ran:?} after SIGTERM, before its drain period {drain:?}"
    );
}

#[test]
fn bgp_announce_lifecycle_generic() {
    announce_lifecycle(Mode::Generic);
}

#[test]
fn bgp_announce_lifecycle_native() {
    announce_lifecycle(Mode::Native);
}

/// A node whose configured Maglev digest differs from `maglev.expected_digest` never
/// announces, although it is healthy; with the right digest (read from `lbctl status`) the
/// same node announces after a reload, so the test can see an announcement.
#[test]
fn bgp_digest_mismatch_is_never_announced() {
    let (mut lab, router, node) = bgp_lab(Mode::Generic);
    let base = format!(
        "{}{}",
        lab.default_config().to_yaml(),
        node.announce_yaml("lbvip0", 0)
    );
    lab.start_lbd_text(&format!(
        "{base}maglev:\n  expected_digest: 0000000000000001\n"
    ))
    .unwrap_or_else(|e| panic!("starting lbd: {e}"));
    let backends = [
        (lb_tests::lab::backend_addr(1), "up"),
        (lb_tests::lab::backend_addr(2), "up"),
    ];
    lab.lbd()
        .unwrap()
        .wait_health(&backends, Duration::from_secs(20))
        .unwrap();
    // Healthy and attached: 3 s of watching (30 announcer ticks) must show no route.
    let watch = Duration::from_secs(3);
    let end = Instant::now() + watch;
    while Instant::now() < end {
        let hops = router.next_hops(PREFIX).unwrap();
        assert!(
            hops.is_empty(),
            "announced despite the digest mismatch: {hops:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = lab
        .lbd()
        .unwrap()
        .api(&serde_json::json!({"command": "status"}))
        .unwrap();
    let digest = status["maglev"]["configured_digest"]
        .as_str()
        .unwrap_or_else(|| panic!("status without maglev.configured_digest: {status}"))
        .to_string();
    let reason = status["announce"]["vips"][0]["reason"]
        .as_str()
        .unwrap_or("");
    assert!(
        reason.contains("differs from maglev.expected_digest 0000000000000001"),
        "{status}"
    );
    println!("digest mismatch: not announced for {watch:?}; configured digest {digest}; reason: {reason}");
    let log = std::fs::read_to_string(lab.lbd().unwrap().log_path()).unwrap_or_default();
    assert!(
        log.contains("ERROR") && log.contains("differs from maglev.expected_digest"),
        "no error logged:\n{log}"
    );

    // The right digest: announced after a reload.
    lab.lbd()
        .unwrap()
        .write_config(&format!("{base}maglev:\n  expected_digest: {digest}\n"))
        .unwrap();
    let t = Instant::now();
    lab.lbd().unwrap().lbctl(&["reload"]).unwrap();
    router
        .wait_route(PREFIX, Duration::from_secs(10), announced)
        .unwrap_or_else(|e| panic!("not announced with the matching digest: {e}"));
    println!(
        "matching digest: announced {:?} after the reload",
        t.elapsed()
    );
}
