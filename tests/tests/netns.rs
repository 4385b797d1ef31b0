//! Network-namespace scenarios: real TCP through the real `lbd`/`lbctl` in the lab of
//! `lb_tests::lab` (see docs/lab.md), each in native and in generic XDP mode.
//!
//! Needs root, `cargo xtask build` first (lbd, lbctl and the eBPF object), and runs with
//! `cargo xtask test` (or `cargo test --release -p lb-tests --test netns`). Every lab has
//! unique names and removes its namespaces, processes and pins when dropped, also on panic.

use lb_common::counters as c;
use lb_common::COUNTER_NAMES;
use lb_tests::lab::client::{self, failures, probe, spread, tally, Prober};
use lb_tests::lab::http::{pattern_sha256, HttpConn};
use lb_tests::lab::lbd::{HealthSpec, LbdConfig};
use lb_tests::lab::packet::{self, Ipv4Spec, PacketSocket};
use lb_tests::lab::testsrv::{STREAM_CHUNK, STREAM_CHUNKS_PER_SEC};
use lb_tests::lab::{
    backend_addr, vip, Lab, LabOptions, Mode, CLIENT_ADDR, SNAT_ADDR, VIP, VIP_PORT,
};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "netns/pass_up.rs"]
mod pass_up;

/// Margin on top of lbd's detection bounds for check timeouts and scheduling on 2 cores.
const SLACK: Duration = Duration::from_millis(1200);
/// Timeout of one probe connection.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Held by the CPU-heavy scenarios (bulk transfers, thousands of connections) and by the
/// timing-sensitive ones (failover windows, restarts), so the two never overlap on 2 cores.
static EXCLUSIVE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    EXCLUSIVE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn vip_addr() -> SocketAddr {
    vip().into()
}

fn lab(backends: usize, mode: Mode) -> Lab {
    Lab::new(LabOptions::new(backends, mode)).unwrap_or_else(|e| panic!("building the lab: {e}"))
}

fn started(backends: usize, mode: Mode) -> Lab {
    let mut l = lab(backends, mode);
    let cfg = l.default_config();
    l.start_lbd(&cfg)
        .unwrap_or_else(|e| panic!("starting lbd: {e}"));
    l
}

fn spread_from(l: &Lab, count: usize) -> BTreeMap<String, usize> {
    l.in_client(move || spread(vip_addr(), count, 16, PROBE_TIMEOUT))
        .unwrap_or_else(|e| panic!("{count} connections through the VIP: {e}"))
}

fn with_config(l: &Lab, f: impl FnOnce(&mut LbdConfig)) -> LbdConfig {
    let mut cfg = l.default_config();
    f(&mut cfg);
    cfg
}

/// Runs each scenario in native and in generic mode.
macro_rules! both_modes {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;
            #[test]
            fn native() {
                super::$name(Mode::Native)
            }
            #[test]
            fn generic() {
                super::$name(Mode::Generic)
            }
        }
    )*};
}

both_modes!(
    rst_close_storm_frees_snat_ports,
    snat_pool_use_counts_open_connections,
    spoofed_syn_leaves_connection_intact,
    half_close_outlives_fin_wait_timeout,
    idle_keepalive_outlives_short_timeouts,
    syn_flood_spares_established_connections,
    lab_topology,
    forwarding,
    isolation,
    evenness,
    weighted_evenness,
    integrity,
    failover,
    backup,
    drain,
    restart_without_loss,
    reload,
    bad_traffic,
    path_mtu,
);

/// Issue 13's DSR end to end, backends decapsulating with lb_decap.
#[path = "netns/dsr.rs"]
mod dsr;

/// A reload that leaves a VIP with DSR services only keeps its open full-NAT connections.
#[path = "netns/dsr_reload.rs"]
mod dsr_reload;

#[path = "netns/decap_cli.rs"]
mod decap_cli;

/// Issue 10's failover scenarios (backend death, health-check flap).
#[path = "netns/backend_failure.rs"]
mod backend_failure;

/// 0. The lab itself (no lbd): the balancer reaches every backend, the client reaches none
///    (even with a route), offloads are as pitfalls 1-3 require, and dropping the lab removes
///    its namespaces.
fn lab_topology(mode: Mode) {
    let l = lab(3, mode);
    for i in 1..=3 {
        let p = client::run_in_netns(l.balancer_path(), move || async move {
            probe(backend_addr(i).into(), PROBE_TIMEOUT).await
        })
        .unwrap_or_else(|e| panic!("balancer -> backend {i}: {e}"));
        assert_eq!(p.backend, format!("b{i}"));
        assert!(p.seen_peer.starts_with(&format!("10.1.{i}.1:")), "{p:?}");
    }
    l.client_run("ip", &["route", "add", "10.1.0.0/16", "via", "172.30.0.1"])
        .expect("adding a route to the backends");
    let reached = l
        .in_client(|| async {
            let mut reached = Vec::new();
            for i in 1..=3 {
                if probe(backend_addr(i).into(), Duration::from_millis(500))
                    .await
                    .is_ok()
                {
                    reached.push(i);
                }
            }
            Ok(reached)
        })
        .unwrap();
    assert!(
        reached.is_empty(),
        "the client reached backends {reached:?} directly"
    );
    let k = l.client_run("ethtool", &["-k", "c0"]).unwrap();
    assert!(k.contains("tx-checksumming: off"), "{k}");
    assert!(k.contains("generic-receive-offload: on"), "{k}");
    let kb = l.balancer_run("ethtool", &["-k", "pub0"]).unwrap();
    if mode == Mode::Generic {
        // Generic XDP must see wire-sized packets (pitfall 3).
        assert!(
            kb.contains("generic-receive-offload: off"),
            "balancer GRO:\n{kb}"
        );
    }
    let prefix = l.prefix().to_string();
    drop(l);
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !left.iter().any(|n| n.starts_with(&format!("{prefix}-"))),
        "left behind: {left:?}"
    );
}

/// 1. The client reaches VIP:80 and sees the VIP as its peer; backends see the SNAT address;
///    the lab removes everything it created.
fn forwarding(mode: Mode) {
    let l = started(3, mode);
    let probes = l
        .in_client(|| async {
            let mut v = Vec::new();
            for _ in 0..30 {
                v.push(probe(vip_addr(), PROBE_TIMEOUT).await?);
            }
            Ok(v)
        })
        .expect("30 connections through the VIP");
    for p in &probes {
        assert_eq!(
            p.client_peer,
            vip_addr(),
            "the client's peer must be the VIP"
        );
        let (ip, port) = p.seen_peer.rsplit_once(':').expect("ip:port");
        assert_eq!(
            ip,
            SNAT_ADDR.to_string(),
            "backends must see the SNAT address"
        );
        let port: u16 = port.parse().expect("port");
        assert!(
            (1024..=32767).contains(&port),
            "SNAT port {port} out of range"
        );
        assert!(["b1", "b2", "b3"].contains(&p.backend.as_str()), "{p:?}");
    }
    // lbd samples the counters once a second.
    let counters = lb_tests::lab::sys::wait_for(
        "new_flow >= 30 in lbctl stats",
        Duration::from_secs(5),
        Duration::from_millis(200),
        || {
            let c = l
                .lbd()
                .unwrap()
                .counters()
                .expect("lbctl stats --output json");
            (c.get("new_flow").copied().unwrap_or(0) >= 30).then_some(c)
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}", l.lbd().unwrap().counters()));
    for name in COUNTER_NAMES {
        assert!(
            counters.contains_key(name),
            "counter {name} missing from {counters:?}"
        );
    }
    assert!(counters["new_flow"] >= 30, "{counters:?}");
    assert!(
        counters["fwd_to_backend"] > 0 && counters["fwd_to_client"] > 0,
        "{counters:?}"
    );
    let prefix = l.prefix().to_string();
    drop(l);
    for role in ["c", "lb", "b1", "b2", "b3"] {
        let p = format!("/run/netns/{prefix}-{role}");
        assert!(!std::path::Path::new(&p).exists(), "{p} left behind");
    }
    assert!(
        !std::path::Path::new("/sys/fs/bpf").join(&prefix).exists(),
        "pins left behind"
    );
}

/// 2. The client cannot reach any backend's private address, even with a route to it; the
///    balancer itself can (so the check is not vacuous) and the VIP keeps working.
fn isolation(mode: Mode) {
    let l = started(2, mode);
    let direct = |l: &Lab| {
        l.in_client(|| async {
            let mut reached = Vec::new();
            for i in 1..=2 {
                if probe(backend_addr(i).into(), Duration::from_millis(800))
                    .await
                    .is_ok()
                {
                    reached.push(i);
                }
            }
            Ok(reached)
        })
        .unwrap()
    };
    assert!(
        direct(&l).is_empty(),
        "client reached a backend without a route"
    );
    l.client_run("ip", &["route", "add", "10.1.0.0/16", "via", "172.30.0.1"])
        .expect("adding a route to the backends");
    assert!(
        direct(&l).is_empty(),
        "client reached a backend through the balancer"
    );
    let from_balancer = client::run_in_netns(l.balancer_path(), || async {
        probe(backend_addr(1).into(), PROBE_TIMEOUT).await
    })
    .expect("the balancer reaches backend 1 directly");
    assert_eq!(from_balancer.backend, "b1");
    let counts = spread_from(&l, 50);
    assert_eq!(counts.values().sum::<usize>(), 50);
}

fn assert_shares(counts: &BTreeMap<String, usize>, want: &[(&str, f64)], what: &str) {
    for (name, expect) in want {
        let got = counts.get(*name).copied().unwrap_or(0) as f64;
        assert!(
            (got - expect).abs() <= expect * 0.10,
            "{what}: {name} got {got}, want {expect} +-10%; all: {counts:?}"
        );
    }
    assert_eq!(
        counts.len(),
        want.len(),
        "{what}: unexpected backends in {counts:?}"
    );
}

/// 3a. 3000 new connections over 3 equal backends: each within +-10% of 1000.
fn evenness(mode: Mode) {
    let _serial = exclusive();
    let l = started(3, mode);
    let counts = spread_from(&l, 3000);
    assert_shares(
        &counts,
        &[("b1", 1000.0), ("b2", 1000.0), ("b3", 1000.0)],
        "equal weights",
    );
}

/// 3b. Weights 1:2:3 over 6000 connections: within +-10% of 1000, 2000, 3000.
fn weighted_evenness(mode: Mode) {
    let _serial = exclusive();
    let mut l = lab(3, mode);
    let cfg = with_config(&l, |c| {
        for (i, b) in c.services[0].backends.iter_mut().enumerate() {
            b.weight = i as u32 + 1;
        }
    });
    l.start_lbd(&cfg).expect("starting lbd");
    let counts = spread_from(&l, 6000);
    assert_shares(
        &counts,
        &[("b1", 1000.0), ("b2", 2000.0), ("b3", 3000.0)],
        "weights 1:2:3",
    );
}

/// 4. 100 MB down and 32 MB up through the VIP with equal SHA-256, and 200 concurrent
///    connections that all complete.
fn integrity(mode: Mode) {
    let _serial = exclusive();
    let l = started(3, mode);
    const DOWN: u64 = 100 * 1024 * 1024;
    const UP: u64 = 32 * 1024 * 1024;
    let (down, up) = l
        .in_client(|| async {
            let mut conn = HttpConn::connect(vip_addr(), PROBE_TIMEOUT).await?;
            let down = tokio::time::timeout(
                Duration::from_secs(120),
                conn.get_hashed(&format!("/bulk?bytes={DOWN}"), |_| {}),
            )
            .await
            .map_err(|_| lb_tests::lab::LabError::Timeout("100 MB download".into()))??;
            let up =
                tokio::time::timeout(Duration::from_secs(120), conn.post_pattern("/sha256", UP))
                    .await
                    .map_err(|_| lb_tests::lab::LabError::Timeout("32 MB upload".into()))??;
            Ok((down, up))
        })
        .expect("bulk transfers through the VIP");
    assert_eq!(down.0, 200);
    assert_eq!(down.1, DOWN, "downloaded length");
    assert_eq!(down.2, pattern_sha256(DOWN), "download SHA-256");
    assert_eq!(up.status, 200);
    assert_eq!(
        up.text(),
        pattern_sha256(UP),
        "upload SHA-256 as the backend computed it"
    );

    // 200 connections open at the same time, then each transfers 64 KiB.
    let results = l
        .in_client(|| async {
            let mut conns = Vec::new();
            for _ in 0..200 {
                conns.push(HttpConn::connect(vip_addr(), Duration::from_secs(5)).await?);
            }
            let mut set = tokio::task::JoinSet::new();
            for mut c in conns {
                set.spawn(async move { c.get_hashed("/bulk?bytes=65536", |_| {}).await });
            }
            client::bounded("200 concurrent transfers", Duration::from_secs(60), async {
                let mut out = Vec::new();
                while let Some(r) = set.join_next().await {
                    out.push(r.map_err(|e| lb_tests::lab::LabError::Http(e.to_string()))?);
                }
                Ok(out)
            })
            .await
        })
        .expect("200 concurrent connections");
    assert_eq!(results.len(), 200);
    let want = pattern_sha256(65536);
    let bad: Vec<_> = results
        .iter()
        .filter(|r| !matches!(r, Ok((200, 65536, s)) if *s == want))
        .collect();
    assert!(
        bad.is_empty(),
        "{} of 200 concurrent transfers failed: {:?}",
        bad.len(),
        bad.first()
    );
}

/// 5. Failover: a backend's server dies while the client opens connections continuously.
///    Failures happen only within interval x fall + interval (+ slack) and are bounded; after
///    that no connection fails or goes to it; restarted, it rejoins after `rise` successes.
fn failover(mode: Mode) {
    let _serial = exclusive();
    let mut l = started(3, mode);
    let health = HealthSpec::default();
    let period = Duration::from_millis(20);
    let prober = Prober::start(
        l.client_path(),
        vip_addr(),
        period,
        PROBE_TIMEOUT,
        Duration::from_secs(60),
    );
    // An attempt lasts at most PROBE_TIMEOUT: those started within it before the kill may be
    // in flight when b2 dies and fail from it (one started 3 ms before the kill did, under
    // load), so they count in the detection window, not before the kill.
    std::thread::sleep(Duration::from_secs(2) + PROBE_TIMEOUT);
    let t_kill = prober.elapsed();
    let t_quiet = t_kill.saturating_sub(PROBE_TIMEOUT);
    l.kill_backend(2);
    let detect = health.detection_bound() + SLACK;
    std::thread::sleep(detect);
    assert_eq!(
        l.lbd().unwrap().health_of(backend_addr(2)).unwrap(),
        "down",
        "lbd must mark b2 down within {detect:?}"
    );
    let t_settled = prober.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    let t_restart = prober.elapsed();
    l.start_backend(2).expect("restarting b2");
    let recover = health.recovery_bound() + SLACK;
    std::thread::sleep(recover);
    let t_back = prober.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let attempts = prober.finish().expect("prober");
    let end = attempts
        .last()
        .map(|a| a.at + Duration::from_millis(1))
        .unwrap();

    let before = tally(&attempts, Duration::ZERO, t_quiet);
    assert!(
        !before.contains_key("error"),
        "failures before the kill: {before:?}: {:?}",
        failures(&attempts)
    );
    assert_eq!(
        before.len(),
        3,
        "all three backends answer at first: {before:?}"
    );
    let window = tally(&attempts, t_quiet, t_settled);
    let in_window = window.values().sum::<usize>();
    let failed = window.get("error").copied().unwrap_or(0);
    // Roughly a third of the attempts in the window go to b2; allow twice that.
    assert!(
        failed <= in_window * 2 / 3,
        "{failed} of {in_window} attempts failed inside the detection window"
    );
    let after = tally(&attempts, t_settled, t_restart);
    assert!(
        !after.contains_key("error") && !after.contains_key("b2"),
        "after the detection window: {after:?}; failures: {:?}",
        failures(&attempts)
    );
    assert!(
        after.contains_key("b1") && after.contains_key("b3"),
        "{after:?}"
    );
    let rejoined = tally(&attempts, t_back, end);
    assert!(
        !rejoined.contains_key("error"),
        "failures after recovery: {rejoined:?}: {:?} (kill {t_kill:?}, settled {t_settled:?}, \
         restart {t_restart:?}, back {t_back:?})",
        failures(&attempts)
    );
    assert!(
        rejoined.contains_key("b2"),
        "b2 did not rejoin within {recover:?}: {rejoined:?}"
    );
    let recovering = tally(&attempts, t_restart, t_back);
    assert!(
        !recovering.contains_key("error"),
        "failures while b2 recovered: {recovering:?}: {:?}",
        failures(&attempts)
    );
    eprintln!("failover ({mode:?}): window {window:?}, after {after:?}, rejoined {rejoined:?}");
}

/// 6. All primaries down: new connections go to the backup; one primary back: they return.
fn backup(mode: Mode) {
    let _serial = exclusive();
    let mut l = lab(3, mode);
    let health = HealthSpec::default();
    let cfg = with_config(&l, |c| c.services[0].backends[2].backup = true);
    l.start_lbd(&cfg).expect("starting lbd");
    l.lbd()
        .unwrap()
        .wait_health(&[(backend_addr(3), "up")], Duration::from_secs(10))
        .expect("the backup is checked too");
    let primaries = spread_from(&l, 200);
    assert!(
        !primaries.contains_key("b3"),
        "backup used while primaries are up: {primaries:?}"
    );
    l.kill_backend(1);
    l.kill_backend(2);
    std::thread::sleep(health.detection_bound() + SLACK);
    let on_backup = spread_from(&l, 200);
    assert_eq!(
        on_backup.get("b3"),
        Some(&200),
        "all primaries down: {on_backup:?}"
    );
    l.start_backend(1).expect("restarting b1");
    std::thread::sleep(health.recovery_bound() + SLACK);
    let back = spread_from(&l, 200);
    assert_eq!(back.get("b1"), Some(&200), "one primary back: {back:?}");
}

/// 7. `lbctl backend drain` keeps a long transfer going to completion while no new connection
///    lands on the drained backend; `undrain` lets it take new connections again.
fn drain(mode: Mode) {
    let l = started(3, mode);
    let seconds = 6;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stream = l.spawn_in_client(move || async move {
        let mut c = HttpConn::connect(vip_addr(), PROBE_TIMEOUT).await?;
        let id = c.request("GET", "/id", b"").await?.text();
        let name = id.split(' ').next().unwrap_or_default().to_string();
        let _ = tx.send(name);
        client::bounded(
            "the long transfer",
            Duration::from_secs(seconds + 20),
            c.get_hashed(&format!("/stream?seconds={seconds}"), |_| {}),
        )
        .await
    });
    let name = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the long transfer started");
    let i: usize = name[1..].parse().expect("backend name b<i>");
    let addr = backend_addr(i).to_string();
    let started_at = Instant::now();
    l.lbd()
        .unwrap()
        .lbctl(&["backend", "drain", "web", &addr])
        .expect("lbctl backend drain");
    let during = spread_from(&l, 300);
    assert!(
        !during.contains_key(&name),
        "new connections reached drained {name}: {during:?}"
    );
    assert!(
        started_at.elapsed() < Duration::from_secs(seconds - 1),
        "the check must run while the transfer is still going"
    );
    let (status, len, sha) = client::join(stream).expect("the long transfer through a drain");
    assert_eq!(status, 200);
    assert_eq!(len, seconds * STREAM_CHUNKS_PER_SEC * STREAM_CHUNK);
    assert_eq!(sha, pattern_sha256(len), "drained transfer content");
    let listed = l.lbd().unwrap().backends().unwrap();
    let entry = listed
        .iter()
        .find(|b| b["address"] == addr.as_str())
        .expect("drained backend listed");
    assert_eq!(entry["drained"], true, "{entry}");
    l.lbd()
        .unwrap()
        .lbctl(&["backend", "undrain", "web", &addr])
        .expect("lbctl backend undrain");
    let after = spread_from(&l, 300);
    assert!(
        after.contains_key(&name),
        "{name} takes new connections after undrain: {after:?}"
    );
}

/// 8. Restarting lbd (SIGTERM, then separately SIGKILL) during a long transfer while the
///    client keeps opening connections: zero failed connections, transfer intact.
fn restart_without_loss(mode: Mode) {
    let _serial = exclusive();
    let mut l = started(3, mode);
    let seconds = 10;
    let stream = l.spawn_in_client(move || async move {
        let mut c = HttpConn::connect(vip_addr(), PROBE_TIMEOUT).await?;
        client::bounded(
            "the long transfer",
            Duration::from_secs(seconds + 20),
            c.get_hashed(&format!("/stream?seconds={seconds}"), |_| {}),
        )
        .await
    });
    let prober = Prober::start(
        l.client_path(),
        vip_addr(),
        Duration::from_millis(25),
        PROBE_TIMEOUT,
        Duration::from_secs(60),
    );
    std::thread::sleep(Duration::from_millis(1500));
    for signal in [libc::SIGTERM, libc::SIGKILL] {
        let lbd = l.lbd_mut().unwrap();
        lbd.stop(signal).expect("stopping lbd");
        std::thread::sleep(Duration::from_millis(700));
        lbd.start()
            .expect("starting lbd again on the pinned data plane");
        std::thread::sleep(Duration::from_millis(1500));
    }
    std::thread::sleep(Duration::from_secs(1));
    let attempts = prober.finish().expect("prober");
    let fails = failures(&attempts);
    assert!(attempts.len() > 100, "too few attempts: {}", attempts.len());
    assert!(
        fails.is_empty(),
        "{} of {} connections failed: {fails:?}",
        fails.len(),
        attempts.len()
    );
    let (status, len, sha) = client::join(stream).expect("the long transfer across restarts");
    assert_eq!(status, 200);
    assert_eq!(len, seconds * STREAM_CHUNKS_PER_SEC * STREAM_CHUNK);
    assert_eq!(sha, pattern_sha256(len));
}

/// 9. Adding and removing a backend in the file + `lbctl reload` changes where new
///    connections go, existing ones stay; an invalid file is refused with its error and the
///    running state is unchanged.
fn reload(mode: Mode) {
    let mut l = lab(3, mode);
    let only = |l: &Lab, set: &[usize]| {
        let mut c = l.default_config();
        c.services[0]
            .backends
            .retain(|b| set.iter().any(|i| backend_addr(*i) == b.address));
        c
    };
    l.start_lbd(&only(&l, &[1, 2])).expect("starting lbd");
    let first = spread_from(&l, 200);
    assert!(!first.contains_key("b3"), "{first:?}");

    // A long-lived keep-alive connection on b1, asking `GET /id` every 100 ms until stopped.
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let keeper = l.spawn_in_client(move || async move {
        let mut conn = loop {
            let mut c = HttpConn::connect(vip_addr(), PROBE_TIMEOUT).await?;
            if c.request("GET", "/id", b"")
                .await?
                .text()
                .starts_with("b1 ")
            {
                break c;
            }
        };
        let _ = ready_tx.send(());
        let start = Instant::now();
        let mut answers = Vec::new();
        while !s2.load(Ordering::Relaxed) {
            let at = start.elapsed();
            let r = tokio::time::timeout(Duration::from_secs(2), conn.request("GET", "/id", b""))
                .await
                .map_err(|_| {
                    lb_tests::lab::LabError::Timeout("GET /id on the kept connection".into())
                })
                .and_then(|r| r);
            let failed = r.is_err();
            answers.push((at, start.elapsed() - at, r.map(|r| r.text())));
            if failed {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(answers)
    });

    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("a kept connection on b1");
    let text = only(&l, &[1, 2, 3]).to_yaml();
    l.lbd().unwrap().write_config(&text).unwrap();
    let out = l
        .lbd()
        .unwrap()
        .lbctl(&["reload"])
        .expect("lbctl reload (add b3)");
    eprintln!("reload (add b3): {out}");
    l.lbd()
        .unwrap()
        .wait_health(&[(backend_addr(3), "up")], Duration::from_secs(10))
        .expect("b3 comes up after the reload");
    let added = spread_from(&l, 300);
    assert!(
        added.contains_key("b3"),
        "b3 gets new connections after being added: {added:?}"
    );

    let text = only(&l, &[2, 3]).to_yaml();
    l.lbd().unwrap().write_config(&text).unwrap();
    l.lbd()
        .unwrap()
        .lbctl(&["reload"])
        .expect("lbctl reload (remove b1)");
    let removed = spread_from(&l, 300);
    assert!(
        !removed.contains_key("b1"),
        "b1 still gets new connections: {removed:?}"
    );

    // An invalid file: refused, with the offending field named; nothing changes.
    let bad = only(&l, &[2, 3])
        .to_yaml()
        .replace("weight: 1", "weight: 0");
    l.lbd().unwrap().write_config(&bad).unwrap();
    let err = l
        .lbd()
        .unwrap()
        .lbctl(&["reload"])
        .expect_err("an invalid config must be refused");
    assert!(
        err.to_string().contains("weight"),
        "the error must name the field: {err}"
    );
    let listed: Vec<String> = l
        .lbd()
        .unwrap()
        .backends()
        .unwrap()
        .iter()
        .map(|b| b["address"].as_str().unwrap_or_default().to_string())
        .collect();
    let want: Vec<String> = [2, 3]
        .iter()
        .map(|i| backend_addr(*i).to_string())
        .collect();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(sorted, want, "running state changed by a refused reload");
    let still = spread_from(&l, 200);
    assert!(!still.contains_key("b1") && still.len() == 2, "{still:?}");

    // Let the kept connection ask a few more times after the last reload.
    std::thread::sleep(Duration::from_millis(400));
    stop.store(true, Ordering::Relaxed);
    let answers = client::join(keeper).expect("the long-lived connection");
    assert!(
        answers.len() >= 4,
        "too few answers on the long-lived connection: {answers:?}"
    );
    for (at, took, a) in &answers {
        assert!(
            matches!(a, Ok(t) if t.starts_with("b1 ")) && *took < Duration::from_secs(1),
            "the long-lived connection on b1 was disturbed at {at:?} (took {took:?}): {a:?}; \
             all: {answers:?}"
        );
    }
}

/// 10. Truncated headers, fragments, IP options and non-TCP packets to the VIP get their
///     documented verdicts (counters move in `lbctl stats --output json`) and normal traffic
///     keeps working throughout.
fn bad_traffic(mode: Mode) {
    let _serial = exclusive();
    let l = started(2, mode);
    let dst_mac =
        packet::mac_from_ip_link(&l.balancer_run("ip", &["link", "show", "pub0"]).unwrap())
            .expect("pub0's MAC");
    let src_mac = packet::mac_from_ip_link(&l.client_run("ip", &["link", "show", "c0"]).unwrap())
        .expect("c0's MAC");
    let tcp = lb_common::IPPROTO_TCP;
    let syn = packet::tcp_header(40000, VIP_PORT, lb_common::tcp_flags::SYN);
    let ack = packet::tcp_header(40001, VIP_PORT, lb_common::tcp_flags::ACK);
    let to_vip = |proto| Ipv4Spec::new(CLIENT_ADDR, VIP, proto);
    let frame = |ip: &Ipv4Spec, payload: &[u8]| packet::ipv4_frame(dst_mac, src_mac, ip, payload);
    // (description, frame, counter, exact): exact counters move only through these frames.
    let mut cases: Vec<(&str, Vec<u8>, u32, bool)> = Vec::new();
    let mut truncated = frame(&to_vip(tcp), &syn);
    truncated.truncate(14 + 12);
    cases.push(("truncated IPv4 header", truncated, c::DROP_MALFORMED, true));
    let mut long = to_vip(tcp);
    long.total_len = Some(1400);
    cases.push((
        "IPv4 total length beyond the frame",
        frame(&long, &syn),
        c::DROP_MALFORMED,
        true,
    ));
    let mut frag = to_vip(tcp);
    frag.more_fragments = true;
    cases.push((
        "first fragment (MF) to the VIP",
        frame(&frag, &syn),
        c::DROP_VIP_FRAGMENT,
        true,
    ));
    let mut frag2 = to_vip(tcp);
    frag2.frag_offset = 100;
    cases.push((
        "non-first fragment to the VIP",
        frame(&frag2, &syn),
        c::DROP_VIP_FRAGMENT,
        true,
    ));
    let mut opts = to_vip(tcp);
    opts.options = vec![1, 1, 1, 0];
    cases.push((
        "IP options to the VIP",
        frame(&opts, &syn),
        c::DROP_VIP_IP_OPTIONS,
        true,
    ));
    cases.push((
        "truncated TCP header",
        frame(&to_vip(tcp), &syn[..10]),
        c::DROP_MALFORMED_TCP,
        true,
    ));
    let mut bad_doff = syn.clone();
    bad_doff[12] = 4 << 4;
    cases.push((
        "TCP data offset 4",
        frame(&to_vip(tcp), &bad_doff),
        c::DROP_MALFORMED_TCP,
        true,
    ));
    cases.push((
        "ACK without a flow",
        frame(&to_vip(tcp), &ack),
        c::DROP_NO_CONNTRACK,
        false,
    ));
    let udp = [0x9c, 0x40, 0, 80, 0, 12, 0, 0, 1, 2, 3, 4];
    cases.push((
        "UDP to the VIP",
        frame(&to_vip(17), &udp),
        c::PASS_VIP_NON_TCP,
        false,
    ));
    let no_service = packet::tcp_header(40002, 81, lb_common::tcp_flags::SYN);
    cases.push((
        "SYN to a port without service",
        frame(&to_vip(tcp), &no_service),
        c::PASS_VIP_NO_SERVICE,
        false,
    ));
    let mut ttl1 = to_vip(tcp);
    ttl1.ttl = 1;
    cases.push((
        "SYN with TTL 1",
        frame(&ttl1, &syn),
        c::PASS_TTL_EXCEEDED,
        false,
    ));
    cases.push((
        "IPv6 frame",
        packet::ether_frame(dst_mac, src_mac, 0x86dd, &[0x60; 40]),
        c::PASS_IPV6,
        false,
    ));

    const REPEAT: u64 = 20;
    let prober = Prober::start(
        l.client_path(),
        vip_addr(),
        Duration::from_millis(20),
        PROBE_TIMEOUT,
        Duration::from_secs(60),
    );
    std::thread::sleep(Duration::from_millis(500));
    for (what, bytes, counter, exact) in cases {
        let name = COUNTER_NAMES[counter as usize];
        let before = l.lbd().unwrap().counters().expect("counters");
        let b2 = bytes.clone();
        l.in_client(move || async move {
            let s = PacketSocket::open("c0")?;
            for _ in 0..REPEAT {
                s.send(&b2)?;
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("sending {what}: {e}"));
        lb_tests::lab::sys::wait_for(
            &format!("counter {name} to move for {what}"),
            Duration::from_secs(5),
            Duration::from_millis(100),
            || {
                let now = l.lbd().unwrap().counters().ok()?;
                (now[name] >= before[name] + REPEAT).then_some(now)
            },
        )
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        // lbd samples counters every second; settle before the exact comparison.
        std::thread::sleep(Duration::from_millis(1100));
        let settled = l.lbd().unwrap().counters().expect("counters");
        let delta = settled[name] - before[name];
        if exact {
            assert_eq!(
                delta, REPEAT,
                "{what}: {name} moved by {delta}, want {REPEAT}"
            );
        } else {
            assert!(delta >= REPEAT, "{what}: {name} moved by {delta}");
        }
    }
    let attempts = prober.finish().expect("prober");
    let fails = failures(&attempts);
    assert!(attempts.len() > 50, "{}", attempts.len());
    assert!(
        fails.is_empty(),
        "normal traffic failed during bad traffic: {fails:?}"
    );
}

/// The demo runs end to end in its fast mode and removes what it created.
/// Opens a connection to the VIP, completes one `GET /id`, then resets it (SO_LINGER 0).
async fn open_and_reset(addr: SocketAddr) -> lb_tests::lab::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let err = |what: &str| {
        let what = what.to_string();
        move |e: std::io::Error| lb_tests::lab::LabError::Http(format!("{what}: {e}"))
    };
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(err("connect"))?;
        s.write_all(b"GET /id HTTP/1.1\r\nHost: lab\r\nContent-Length: 0\r\n\r\n")
            .await
            .map_err(err("request"))?;
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).await.map_err(err("response"))?;
        if n == 0 {
            return Err(lb_tests::lab::LabError::Http(
                "closed before the answer".into(),
            ));
        }
        s.set_zero_linger().map_err(err("SO_LINGER 0"))?;
        drop(s);
        Ok(())
    };
    tokio::time::timeout(PROBE_TIMEOUT, fut)
        .await
        .map_err(|_| lb_tests::lab::LabError::Timeout(format!("open and reset via {addr}")))?
}

/// Issue 9: connections closed by a client RST freed their SNAT ports only after the
/// established timeout. With 4 SNAT ports and close_timeout 2 s (the minimum), 4 connections
/// reset by the client, then (after the CLOSE timeout) 8 more connections in two rounds all
/// succeed.
fn rst_close_storm_frees_snat_ports(mode: Mode) {
    let mut l = lab(1, mode);
    let cfg = with_config(&l, |c| {
        c.snat_ports = (20000, 20003);
        c.conntrack = c.conntrack.clone().with_closing_ms(2000);
    });
    l.start_lbd(&cfg)
        .unwrap_or_else(|e| panic!("starting lbd: {e}"));
    l.wait_vip(Duration::from_secs(10)).expect("VIP reachable");
    // Wait for the VIP probe's own flow to leave (it closed normally: TIME_WAIT 2 s).
    std::thread::sleep(Duration::from_millis(2500));
    for round in 0..3 {
        let failed = l
            .in_client(|| async {
                let mut failed = Vec::new();
                for i in 0..4 {
                    if let Err(e) = open_and_reset(vip_addr()).await {
                        failed.push(format!("connection {i}: {e}"));
                    }
                }
                Ok(failed)
            })
            .unwrap();
        assert!(failed.is_empty(), "round {round}: {failed:?}");
        // The CLOSE timeout (2 s), plus the coarse clock's tick.
        std::thread::sleep(Duration::from_millis(2300));
    }
    let counters = l.lbd().unwrap().counters().expect("lbctl stats");
    let exhausted = counters.get("drop_snat_exhausted").copied().unwrap_or(0);
    assert_eq!(
        exhausted, 0,
        "SYNs dropped for want of a SNAT port: {counters:?}"
    );
}

/// The backend's `snat_ports` of `lbctl stats --output json` (`None` while absent).
fn snat_in_use(l: &Lab) -> Option<(u64, u64)> {
    let stats = l.lbd().ok()?.stats().ok()?;
    let p = &stats["services"][0]["backends"][0]["snat_ports"];
    Some((p["in_use"].as_u64()?, p["total"].as_u64()?))
}

/// Waits (sweeps run every 5 s) until the backend shows `want` SNAT ports in use of 10.
fn wait_snat_in_use(l: &Lab, want: u64, what: &str) {
    lb_tests::lab::sys::wait_for(
        what,
        Duration::from_secs(20),
        Duration::from_millis(250),
        || (snat_in_use(l) == Some((want, 10))).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}; last seen {:?}", snat_in_use(l)));
}

/// Issue 12: SNAT pool use per backend. With a 10-port pool (one SNAT address), 8 open
/// connections show exactly 8 ports in use in `lbctl stats` (JSON and table) and in the
/// metrics, lbd logs one warning at 80% naming the backend, and once they are closed the
/// ports come back (0 in use) with one notice.
fn snat_pool_use_counts_open_connections(mode: Mode) {
    const OPEN: usize = 8;
    let mut l = lab(1, mode);
    let cfg = with_config(&l, |c| {
        c.snat_ports = (20000, 20009);
        let mut ct = c.conntrack.clone().with_closing_ms(2000);
        ct.fin_wait_ms = 2000;
        ct.close_wait_ms = 2000;
        c.conntrack = ct;
    });
    l.start_lbd(&cfg)
        .unwrap_or_else(|e| panic!("starting lbd: {e}"));
    l.wait_vip(Duration::from_secs(10)).expect("VIP reachable");
    // The VIP probe's flows end (closing timeouts of 2 s) and a sweep says so.
    wait_snat_in_use(&l, 0, "the VIP probe's SNAT ports to be free");
    let (opened_tx, opened_rx) = std::sync::mpsc::channel::<()>();
    let (close_tx, close_rx) = std::sync::mpsc::channel::<()>();
    let conns = l.spawn_in_client(move || async move {
        let mut open = Vec::new();
        for _ in 0..OPEN {
            let mut c = HttpConn::connect(vip_addr(), PROBE_TIMEOUT).await?;
            client::bounded("GET /id", PROBE_TIMEOUT, c.request("GET", "/id", b"")).await?;
            open.push(c);
        }
        let _ = opened_tx.send(());
        // Bounded: closes by itself if the test side has gone.
        let _ = tokio::task::spawn_blocking(move || close_rx.recv_timeout(Duration::from_secs(60)))
            .await;
        drop(open);
        Ok(())
    });
    if opened_rx.recv_timeout(Duration::from_secs(20)).is_err() {
        client::join(conns).unwrap_or_else(|e| panic!("opening {OPEN} connections: {e}"));
        panic!("the connections did not open");
    }
    wait_snat_in_use(
        &l,
        OPEN as u64,
        "the open connections' SNAT ports to be counted",
    );
    let backend = lb_tests::lab::backend_addr(1).to_string();
    let table = l.lbd().unwrap().lbctl(&["stats"]).expect("lbctl stats");
    assert!(table.contains(" 8/10 80% "), "{table}");
    // The sweep reports the conntrack key filter too (fresh maps: on).
    assert!(table.contains("\nconntrack key filter: on, "), "{table}");
    let metrics = client::run_in_netns(l.balancer_path(), || async {
        let mut c = HttpConn::connect("127.0.0.1:9560".parse().unwrap(), PROBE_TIMEOUT).await?;
        Ok(c.request("GET", "/metrics", b"").await?.text())
    })
    .unwrap_or_else(|e| panic!("GET /metrics: {e}"));
    for (name, v) in [
        ("lb_backend_snat_ports_in_use", 8),
        ("lb_backend_snat_ports_pool", 10),
        ("lb_backend_snat_ports_in_use_busiest_address", 8),
    ] {
        let series = format!("{name}{{service=\"web\",backend=\"{backend}\"}} {v}\n");
        assert!(metrics.contains(&series), "{series} missing:\n{metrics}");
    }
    assert!(
        metrics.contains("\nlb_conntrack_filter_enabled 1\n"),
        "lb_conntrack_filter_enabled missing:\n{metrics}"
    );
    let log = || std::fs::read_to_string(l.lbd().unwrap().log_path()).unwrap_or_default();
    let warning = format!("SNAT ports to backend {backend} are running out: 8 of 10 in use");
    assert!(
        log().contains(&warning),
        "no {warning:?} in the log:\n{}",
        log()
    );
    close_tx.send(()).unwrap();
    client::join(conns).unwrap_or_else(|e| panic!("the connections: {e}"));
    wait_snat_in_use(&l, 0, "the closed connections' SNAT ports to be free");
    let log = log();
    assert_eq!(log.matches("are running out").count(), 1, "{log}");
    assert!(
        log.contains(&format!("SNAT ports to backend {backend} back below 70%")),
        "{log}"
    );
}

/// Issue 9: a blind spoofed SYN carrying a live connection's 4-tuple re-balanced the flow (and
/// so broke it once the Maglev table had changed). The connection's backend is drained (it
/// leaves the table but keeps its flows), a spoofed SYN with the connection's 4-tuple is sent
/// from the client namespace, and the connection must still answer from the same backend.
fn spoofed_syn_leaves_connection_intact(mode: Mode) {
    let _serial = exclusive();
    let l = started(2, mode);
    let dst_mac =
        packet::mac_from_ip_link(&l.balancer_run("ip", &["link", "show", "pub0"]).unwrap())
            .expect("pub0's MAC");
    let src_mac = packet::mac_from_ip_link(&l.client_run("ip", &["link", "show", "c0"]).unwrap())
        .expect("c0's MAC");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let conn = l.spawn_in_client(move || async move {
        let mut c = HttpConn::connect(vip_addr(), PROBE_TIMEOUT).await?;
        let first = c.request("GET", "/id", b"").await?.text();
        let _ = tx.send(first.split(' ').next().unwrap_or_default().to_string());
        let _ = go_rx.recv_timeout(Duration::from_secs(20));
        let syn = packet::tcp_header(c.local_addr().port(), VIP_PORT, lb_common::tcp_flags::SYN);
        let ip = Ipv4Spec::new(CLIENT_ADDR, VIP, lb_common::IPPROTO_TCP);
        PacketSocket::open("c0")?.send(&packet::ipv4_frame(dst_mac, src_mac, &ip, &syn))?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let second = client::bounded(
            "the request after the spoofed SYN",
            PROBE_TIMEOUT,
            c.request("GET", "/id", b""),
        )
        .await?;
        Ok((second.status, second.text()))
    });
    let name = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the connection answered");
    let i: usize = name[1..].parse().expect("backend name b<i>");
    let before = l.lbd().unwrap().counters().expect("counters");
    l.lbd()
        .unwrap()
        .lbctl(&["backend", "drain", "web", &backend_addr(i).to_string()])
        .expect("lbctl backend drain");
    go_tx.send(()).unwrap();
    let (status, text) = client::join(conn).unwrap_or_else(|e| panic!("the connection: {e}"));
    assert_eq!(status, 200);
    assert!(
        text.starts_with(&format!("{name} ")),
        "answered by {text:?}, not {name}"
    );
    let name_on_open = COUNTER_NAMES[c::CT_SYN_ON_OPEN as usize];
    lb_tests::lab::sys::wait_for(
        "ct_syn_on_open to count the spoofed SYN",
        Duration::from_secs(5),
        Duration::from_millis(100),
        || {
            let now = l.lbd().unwrap().counters().ok()?;
            (now[name_on_open] > before.get(name_on_open).copied().unwrap_or(0)).then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

/// Issue 9: a half-closed connection died closing_timeout after the client's FIN although
/// the server was still to answer. The client sends its request and shuts down its sending
/// side; the server answers 6 s later (3 x fin_wait_timeout) with 200 kB, all of which must
/// arrive: the acknowledged FIN moves the flow to CLOSE_WAIT, and traffic either way refreshes it.
fn half_close_outlives_fin_wait_timeout(mode: Mode) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const BYTES: u64 = 200_000;
    let mut l = lab(1, mode);
    let cfg = with_config(&l, |c| {
        c.conntrack.fin_wait_ms = 2000;
        c.conntrack.close_wait_ms = 10_000;
    });
    l.start_lbd(&cfg)
        .unwrap_or_else(|e| panic!("starting lbd: {e}"));
    l.wait_vip(Duration::from_secs(10)).expect("VIP reachable");
    let body = l
        .in_client(|| async {
            let err = |e: std::io::Error| lb_tests::lab::LabError::Http(e.to_string());
            let fut = async {
                let mut s = tokio::net::TcpStream::connect(vip_addr()).await.map_err(err)?;
                let req = format!(
                    "GET /after-eof?delay_ms=6000&bytes={BYTES} HTTP/1.1\r\nHost: lab\r\nContent-Length: 0\r\n\r\n"
                );
                s.write_all(req.as_bytes()).await.map_err(err)?;
                s.shutdown().await.map_err(err)?;
                let mut all = Vec::new();
                s.read_to_end(&mut all).await.map_err(err)?;
                Ok(all)
            };
            tokio::time::timeout(Duration::from_secs(15), fut)
                .await
                .map_err(|_| lb_tests::lab::LabError::Timeout("the late answer".into()))?
        })
        .unwrap_or_else(|e| panic!("half-closed request: {e}"));
    let split = body
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {} bytes", body.len()));
    let payload = &body[split + 4..];
    assert_eq!(
        payload.len() as u64,
        BYTES,
        "bytes received after the half-close"
    );
    let sha = lb_tests::lab::http::hex(&{
        use sha2::Digest;
        sha2::Sha256::digest(payload)
    });
    assert_eq!(sha, pattern_sha256(BYTES));
}

/// An idle keep-alive connection lives by the ESTABLISHED timeout alone: idle 4.5 s with
/// every other state's timeout at 2 s (the minimum), it still answers on its backend.
fn idle_keepalive_outlives_short_timeouts(mode: Mode) {
    let mut l = lab(1, mode);
    let cfg = with_config(&l, |c| {
        let mut ct = c.conntrack.clone().with_closing_ms(2000);
        ct.syn_ms = 2000;
        ct.syn_recv_ms = 2000;
        ct.fin_wait_ms = 2000;
        ct.close_wait_ms = 2000;
        ct.established_ms = 30_000;
        c.conntrack = ct;
    });
    l.start_lbd(&cfg)
        .unwrap_or_else(|e| panic!("starting lbd: {e}"));
    l.wait_vip(Duration::from_secs(10)).expect("VIP reachable");
    let (first, second) = l
        .in_client(|| async {
            let mut c = HttpConn::connect(vip_addr(), PROBE_TIMEOUT).await?;
            let first = c.request("GET", "/id", b"").await?.text();
            tokio::time::sleep(Duration::from_millis(4500)).await;
            let second = client::bounded(
                "the request after 4.5 s idle",
                PROBE_TIMEOUT,
                c.request("GET", "/id", b""),
            )
            .await?
            .text();
            Ok((first, second))
        })
        .unwrap_or_else(|e| panic!("idle keep-alive connection: {e}"));
    assert_eq!(first, second);
}

/// Issue 9: SYN-only and established flows shared one LRU, so a spoofed SYN flood evicted
/// established flows. 100 established connections keep answering while 50,000 SYNs from
/// random spoofed sources arrive, with conntrack_flows 1024 (2048 entries) and 256 embryonic
/// flows: the flood is 25 x the whole conntrack map.
fn syn_flood_spares_established_connections(mode: Mode) {
    const CONNS: usize = 100;
    const FLOOD: u32 = 50_000;
    let _serial = exclusive();
    let mut l = lab(2, mode);
    let cfg = with_config(&l, |c| {
        c.conntrack_flows = 1024;
        c.embryonic_flows = Some(256);
    });
    l.start_lbd(&cfg)
        .unwrap_or_else(|e| panic!("starting lbd: {e}"));
    l.wait_vip(Duration::from_secs(10)).expect("VIP reachable");
    let dst_mac =
        packet::mac_from_ip_link(&l.balancer_run("ip", &["link", "show", "pub0"]).unwrap())
            .expect("pub0's MAC");
    let src_mac = packet::mac_from_ip_link(&l.client_run("ip", &["link", "show", "c0"]).unwrap())
        .expect("c0's MAC");
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let flood = l.spawn_in_client(move || async move {
        let _ = go_rx.recv_timeout(Duration::from_secs(30));
        let s = PacketSocket::open("c0")?;
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..FLOOD {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Sources in 198.18.0.0/15 (the benchmarking range), random ports.
            let src = std::net::Ipv4Addr::from(0xc612_0000 | (x as u32 & 0x0001_ffff));
            let ip = Ipv4Spec::new(src, VIP, lb_common::IPPROTO_TCP);
            let syn =
                packet::tcp_header(1024 | (x >> 40) as u16, VIP_PORT, lb_common::tcp_flags::SYN);
            let frame = packet::ipv4_frame(dst_mac, src_mac, &ip, &syn);
            // The veth queue fills up (ENOBUFS) faster than native XDP drains it: back off.
            let mut tries = 0;
            while let Err(e) = s.send(&frame) {
                tries += 1;
                if tries > 1000 {
                    return Err(e);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        Ok(())
    });
    let lost = l
        .in_client(move || async move {
            let mut conns = Vec::new();
            for _ in 0..CONNS {
                let mut c = HttpConn::connect(vip_addr(), PROBE_TIMEOUT).await?;
                let id = c.request("GET", "/id", b"").await?.text();
                conns.push((c, id));
            }
            let _ = go_tx.send(());
            let mut lost = Vec::new();
            // Keep every connection transferring through and after the flood.
            for round in 0..6 {
                for (i, (c, id)) in conns.iter_mut().enumerate() {
                    let r = tokio::time::timeout(PROBE_TIMEOUT, c.request("GET", "/id", b"")).await;
                    match r {
                        Ok(Ok(r)) if r.text() == *id => {}
                        Ok(Ok(r)) => lost.push(format!("round {round} conn {i}: {}", r.text())),
                        Ok(Err(e)) => lost.push(format!("round {round} conn {i}: {e}")),
                        Err(_) => lost.push(format!("round {round} conn {i}: timed out")),
                    }
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Ok(lost)
        })
        .unwrap_or_else(|e| panic!("established connections: {e}"));
    client::join(flood).unwrap_or_else(|e| panic!("the flood: {e}"));
    assert!(
        lost.is_empty(),
        "{} lost: {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    let counters = l.lbd().unwrap().counters().expect("counters");
    assert!(
        counters["new_flow"] > u64::from(FLOOD) / 10,
        "the flood did not reach the data plane: {counters:?}"
    );
}

#[test]
fn demo_fast_mode() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lb-demo"))
        .arg("--fast")
        .output()
        .expect("running lb-demo");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "lb-demo --fast failed ({}):\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for phrase in ["spread", "fail", "recover", "drain", "removed"] {
        assert!(
            text.to_lowercase().contains(phrase),
            "demo output lacks {phrase:?}:\n{text}"
        );
    }
    let leftovers: Vec<_> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !leftovers.iter().any(|n: &String| n.starts_with("lbdemo")),
        "demo namespaces left behind: {leftovers:?}"
    );
}

/// Path MTU discovery through lb: the balancer's end of one link has MTU 1400 while every
/// host has 1500, so full-sized segments do not fit and lb answers them with ICMP
/// fragmentation needed (from the VIP to the client, from the SNAT address to the backend).
/// A 10 MB upload (client segments too big for `bk1`) and a 10 MB download (backend segments
/// too big for `pub0`) complete with the right SHA-256 / length, `tx_icmp_frag_needed` rose,
/// and the sender's route cache learned MTU 1400 toward lb's address (so the transfer went
/// through path MTU discovery, not some fallback). Native mode relies on the lab's
/// `lb_xdp_pass` on the host ends: without it the veth never delivers lb's `XDP_TX` answers.
fn path_mtu(mode: Mode) {
    let _serial = exclusive();
    const LEN: u64 = 10 * 1024 * 1024;
    const HOP_MTU: u32 = 1400;
    for (what, up) in [("upload", true), ("download", false)] {
        let mut opts = LabOptions::new(1, mode);
        if up {
            opts.backend_link_mtu = Some(HOP_MTU);
        } else {
            opts.pub0_mtu = Some(HOP_MTU);
        }
        let mut l = Lab::new(opts).unwrap_or_else(|e| panic!("building the lab: {e}"));
        let cfg = l.default_config();
        l.start_lbd(&cfg)
            .unwrap_or_else(|e| panic!("starting lbd: {e}"));
        // The sender of the big segments and the address it sends them to.
        let (sender_ns, toward) = if up {
            (l.client_ns().to_string(), VIP.to_string())
        } else {
            (l.backend_ns(1).to_string(), SNAT_ADDR.to_string())
        };
        let route = || {
            lb_tests::lab::sys::ns_run(&sender_ns, "ip", &["route", "get", &toward])
                .unwrap_or_else(|e| panic!("ip route get {toward}: {e}"))
        };
        let before = route();
        assert!(
            !before.contains("mtu"),
            "{what}: a path MTU is cached before the transfer: {before}"
        );
        let (len, sha) = l
            .in_client(move || async move {
                let mut conn = HttpConn::connect(vip_addr(), PROBE_TIMEOUT).await?;
                let timeout = Duration::from_secs(20);
                if up {
                    let r = tokio::time::timeout(timeout, conn.post_pattern("/sha256", LEN))
                        .await
                        .map_err(|_| lb_tests::lab::LabError::Timeout("10 MB upload".into()))??;
                    assert_eq!(r.status, 200);
                    Ok((LEN, r.text()))
                } else {
                    let (status, len, sha) = tokio::time::timeout(
                        timeout,
                        conn.get_hashed(&format!("/bulk?bytes={LEN}"), |_| {}),
                    )
                    .await
                    .map_err(|_| lb_tests::lab::LabError::Timeout("10 MB download".into()))??;
                    assert_eq!(status, 200);
                    Ok((len, sha))
                }
            })
            .unwrap_or_else(|e| panic!("10 MB {what} with a {HOP_MTU}-byte hop: {e}"));
        assert_eq!(len, LEN, "{what} length");
        assert_eq!(sha, pattern_sha256(LEN), "{what} SHA-256");
        let after = route();
        assert!(
            after.contains(&format!("mtu {HOP_MTU}")),
            "{what}: the sender did not learn the path MTU toward {toward}: {after}"
        );
        // lbd samples the counters every second.
        let counters = lb_tests::lab::sys::wait_for(
            "tx_icmp_frag_needed > 0 in lbctl stats",
            Duration::from_secs(5),
            Duration::from_millis(200),
            || {
                let c = l.lbd().unwrap().counters().ok()?;
                (c.get("tx_icmp_frag_needed").copied().unwrap_or(0) > 0).then_some(c)
            },
        )
        .unwrap_or_else(|e| {
            panic!(
                "{what}: no fragmentation-needed answer counted: {e}: {:?}",
                l.lbd().unwrap().counters()
            )
        });
        let fwd = if up {
            "fwd_to_backend"
        } else {
            "fwd_to_client"
        };
        assert!(counters[fwd] > 0, "{what}: {counters:?}");
    }
}

/// 12. The database lab itself (issue 11), without lbd: 1 primary + 2 replicas streaming in
///     backend namespaces 1-3, reachable from the balancer namespace (not from the client);
///     replication, replay pause and lag, a frozen member, a hard kill, promotion with the other
///     replica repointed, `pg_rewind` of the old primary into a replica, and cleanup by PID.
#[test]
fn db_lab_self_test() {
    use lb_tests::lab::postgres::{self as pg, member_addr, PgLab, Role};
    let _serial = exclusive();
    const T: Duration = Duration::from_secs(5);
    let started = Instant::now();
    let l = PgLab::new(Mode::Native).unwrap_or_else(|e| panic!("building the DB lab: {e}"));
    println!("DB lab up in {:?}", started.elapsed());
    let p = &l.pg;
    assert_eq!(p.role(1).unwrap(), Role::Primary);
    assert_eq!(p.role(2).unwrap(), Role::Replica);
    assert_eq!(p.role(3).unwrap(), Role::Replica);
    assert_eq!(p.timeline(1).unwrap(), 1);
    // Direct to members from the balancer namespace: each serves as itself (SCRAM over TCP);
    // a write on the primary reaches both replicas; a replica refuses writes.
    let written = client::run_in_netns(l.lab.balancer_path(), || async {
        let mut served = Vec::new();
        for i in 1..=3 {
            let s = pg::connect(member_addr(i).into(), T).await?;
            served.push(s.server(T).await?);
        }
        let s = pg::connect(member_addr(1).into(), T).await?;
        let on = s.write("selftest", 1, T).await?;
        let r = pg::connect(member_addr(2).into(), T).await?;
        let refused = r.write("selftest", 2, T).await.unwrap_err().to_string();
        Ok((served, on, refused))
    })
    .unwrap_or_else(|e| panic!("queries from the balancer namespace: {e}"));
    let (served, on, refused) = written;
    let want: Vec<_> = (1..=3).map(|i| *member_addr(i).ip()).collect();
    assert_eq!(served, want);
    assert_eq!(on, *member_addr(1).ip());
    assert!(refused.contains("25006"), "write on a replica: {refused}");
    for i in 2..=3 {
        p.wait_caught_up(1, i, Duration::from_secs(10)).unwrap();
        assert_eq!(p.rows_by(i, "selftest").unwrap(), 1, "n{i}");
    }
    // The client namespace cannot reach a member directly, even with a route.
    l.lab
        .client_run("ip", &["route", "add", "10.1.0.0/16", "via", "172.30.0.1"])
        .expect("adding a route to the members");
    let direct = l
        .lab
        .in_client(|| async {
            Ok(
                pg::connect(member_addr(1).into(), Duration::from_millis(700))
                    .await
                    .is_ok(),
            )
        })
        .unwrap();
    assert!(!direct, "the client reached n1 directly");
    // Replay paused on n3 while 64 MiB is written: n3 lags by about that much, n2 does not;
    // resumed, n3 catches up.
    p.pause_replay(3).unwrap();
    p.write_bulk(1, 64 << 20).unwrap();
    p.wait_caught_up(1, 2, Duration::from_secs(30)).unwrap();
    let lag3 = p.lag_bytes(1, 3).unwrap();
    assert!(lag3 >= 60 << 20, "n3 lags only {lag3} bytes");
    assert!(p.lag_bytes(1, 2).unwrap() < 1 << 20);
    p.resume_replay(3).unwrap();
    p.wait_caught_up(1, 3, Duration::from_secs(30)).unwrap();
    // A frozen member accepts no new session (the kernel completes the handshake, the
    // postmaster never answers); thawed, it does.
    p.freeze(2).unwrap();
    let frozen = client::run_in_netns(l.lab.balancer_path(), || async {
        Ok(
            pg::connect(member_addr(2).into(), Duration::from_millis(700))
                .await
                .is_err(),
        )
    })
    .unwrap();
    assert!(frozen, "a frozen n2 served a session");
    p.thaw(2).unwrap();
    client::run_in_netns(l.lab.balancer_path(), || async {
        pg::served_by(member_addr(2).into(), T).await
    })
    .expect("n2 after SIGCONT");
    // Failover: n1 killed hard, n2 promoted (timeline 2), n3 repointed to n2.
    let n1_pids = p.pids(1);
    assert!(n1_pids.len() > 3, "postmaster and children: {n1_pids:?}");
    p.kill(1).unwrap();
    assert!(!p.running(1));
    let t = Instant::now();
    p.promote(2).unwrap();
    println!("promotion took {:?}", t.elapsed());
    assert_eq!(p.role(2).unwrap(), Role::Primary);
    assert_eq!(p.timeline(2).unwrap(), 2);
    p.repoint(3, 2).unwrap();
    p.wait_streaming(3, 2, Duration::from_secs(30)).unwrap();
    client::run_in_netns(l.lab.balancer_path(), || async {
        let s = pg::connect(member_addr(2).into(), T).await?;
        s.write("after-failover", 1, T).await
    })
    .expect("a write on the new primary");
    p.wait_caught_up(2, 3, Duration::from_secs(10)).unwrap();
    assert_eq!(p.rows_by(3, "after-failover").unwrap(), 1);
    assert_eq!(p.timeline(3).unwrap(), 2);
    // The old primary, rewound, rejoins as a replica of n2 on timeline 2.
    p.rewind(1, 2).unwrap();
    assert_eq!(p.role(1).unwrap(), Role::Replica);
    p.wait_caught_up(2, 1, Duration::from_secs(10)).unwrap();
    assert_eq!(p.rows_by(1, "after-failover").unwrap(), 1);
    assert_eq!(p.timeline(1).unwrap(), 2);
    // Cleanup: every postgres process of the lab is gone after drop.
    let pids: Vec<i32> = (1..=3).flat_map(|i| p.pids(i)).collect();
    assert!(pids.len() >= 3);
    let prefix = l.lab.prefix().to_string();
    drop(l);
    let alive: Vec<i32> = pids
        .into_iter()
        .filter(|p| std::path::Path::new(&format!("/proc/{p}/comm")).exists())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .map(|s| !s.contains(") Z "))
                .unwrap_or(false)
        })
        .collect();
    assert!(alive.is_empty(), "postgres processes left: {alive:?}");
    assert!(!std::path::Path::new(&format!("/run/netns/{prefix}-b1")).exists());
}
