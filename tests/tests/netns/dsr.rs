//! DSR end to end (issue 13, part 1; docs/scale-out.md "DSR"): a `forwarding: dsr` service
//! whose two backends are configured with exactly the commands `lbctl backend-setup --dsr VIP
//! --decap xdp --iface e0 --source <lb's addresses>` prints (VIP on `lo`, ARP sysctls, lb's XDP
//! decapsulator `lb_decap` on `e0`, accepting IPIP from lb's addresses to the VIP: this kernel
//! has no `ipip` module, so no `tunl0`). The backends run with strict reverse-path filtering
//! (`rp_filter=1` on `e0` and `all`), which the script leaves alone: the decapsulated packet
//! arrives on `e0`, the interface of the route back to the client.
//!
//! The packets' way: client -> `pub0` -> lb_xdp encapsulates toward the Maglev backend
//! (`fwd_dsr`) -> `bk<i>` -> `e0`, where lb_decap strips the outer header -> the backend's
//! socket on the VIP. The answer goes from the VIP straight to the client: in this single-node
//! lab its route is the balancer namespace's kernel (the backend's default route), so it
//! crosses lb_xdp on `bk<i>`, which passes it untouched (`PASS_NOT_SERVICE`, not a VIP or
//! SNAT address) to the kernel's forwarding; lb never rewrites it (`fwd_to_client` stays 0).

use super::*;
use lb_tests::lab::lbd::{release_binary, BackendSpec};
use lb_tests::lab::sys::wait_for;
use lb_tests::lab::{backend_ip, balancer_private_ip};
use std::net::SocketAddrV4;

/// Connections of the first phase.
const CONNECTIONS: usize = 40;
/// Upload of the path-MTU phase: many segments of a full 1500-byte packet each.
const UPLOAD: u64 = 2 * 1024 * 1024;
/// The lab's MTU (every veth) and the MTU lb announces once it encapsulates.
const LAB_MTU: u32 = 1500;
const DSR_MTU: u32 = LAB_MTU - 20;

#[test]
fn native() {
    dsr_end_to_end(Mode::Native)
}

#[test]
fn generic() {
    dsr_end_to_end(Mode::Generic)
}

/// The client namespace's TCP segments sent and received (`/proc/net/snmp`: `OutSegs` +
/// `RetransSegs`, since `OutSegs` leaves out retransmissions as RFC 1213 defines it; `InSegs`).
fn client_tcp_segs(l: &Lab) -> (u64, u64) {
    let snmp = l
        .client_run("cat", &["/proc/net/snmp"])
        .unwrap_or_else(|e| panic!("reading the client's /proc/net/snmp: {e}"));
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let names: Vec<&str> = tcp.next().expect("Tcp header").split_whitespace().collect();
    let values: Vec<&str> = tcp.next().expect("Tcp values").split_whitespace().collect();
    let get = |n: &str| -> u64 {
        let i = names.iter().position(|x| *x == n).expect(n);
        values[i].parse().expect("a number")
    };
    (get("OutSegs") + get("RetransSegs"), get("InSegs"))
}

/// lbd's counters once its DSR counters stop moving (lbd samples the data plane once a
/// second; the health checks keep `pass_not_service` moving).
fn settled_counters(l: &Lab) -> BTreeMap<String, u64> {
    let dsr = |c: &BTreeMap<String, u64>| (c["fwd_dsr"], c["tx_icmp_frag_needed"]);
    let mut last = dsr(&l.lbd().unwrap().counters().expect("lbctl stats"));
    for _ in 0..10 {
        // Longer than lbd's sampling period, so two equal reads are two samples.
        std::thread::sleep(Duration::from_millis(1100));
        let now = l.lbd().unwrap().counters().expect("lbctl stats");
        if dsr(&now) == last {
            return now;
        }
        last = dsr(&now);
    }
    panic!("lbd's DSR counters kept moving for 11 s without client traffic: {last:?}");
}

fn decap_total(l: &Lab, name: &str) -> u64 {
    (1..=l.backend_count())
        .map(|i| {
            l.decap_counters(i)
                .unwrap_or_else(|e| panic!("lbctl decap stats on b{i}: {e}"))[name]
        })
        .sum()
}

fn delta(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>, name: &str) -> u64 {
    after[name] - before[name]
}

/// What one phase moved.
struct Moved {
    client_out: u64,
    client_in: u64,
    fwd_dsr: u64,
    tx_icmp: u64,
    decapsulated: u64,
    counters: BTreeMap<String, u64>,
    before: BTreeMap<String, u64>,
}

/// Runs `traffic`, then waits until lbd's counters account for every segment the client sent
/// (`fwd_dsr` + `tx_icmp_frag_needed` = the client's `OutSegs`; they settle within lbd's
/// sampling period) and returns what moved.
fn measure(l: &Lab, what: &str, traffic: impl FnOnce()) -> Moved {
    let before = settled_counters(l);
    let (out0, in0) = client_tcp_segs(l);
    let dec0 = decap_total(l, "decapsulated");
    traffic();
    let (out1, in1) = client_tcp_segs(l);
    let client_out = out1 - out0;
    let counters = wait_for(
        "fwd_dsr + tx_icmp_frag_needed to reach the client's segment count",
        Duration::from_secs(10),
        Duration::from_millis(250),
        || {
            let c = l.lbd().unwrap().counters().ok()?;
            (delta(&c, &before, "fwd_dsr") + delta(&c, &before, "tx_icmp_frag_needed")
                >= client_out)
                .then_some(c)
        },
    )
    .unwrap_or_else(|e| {
        let c = l.lbd().unwrap().counters().unwrap_or_default();
        panic!(
            "{what}: {e}: the client sent {client_out} TCP segments, lb counted fwd_dsr +{} and tx_icmp_frag_needed +{}",
            c.get("fwd_dsr").map_or(0, |v| v - before["fwd_dsr"]),
            c.get("tx_icmp_frag_needed").map_or(0, |v| v - before["tx_icmp_frag_needed"]),
        )
    });
    // One more sample: nothing further may arrive (a count above the client's is as wrong).
    let counters = {
        std::thread::sleep(Duration::from_millis(1100));
        let again = l.lbd().unwrap().counters().expect("lbctl stats");
        assert_eq!(
            (again["fwd_dsr"], again["tx_icmp_frag_needed"]),
            (counters["fwd_dsr"], counters["tx_icmp_frag_needed"]),
            "{what}: lb's DSR counters still moved after the client's traffic"
        );
        again
    };
    Moved {
        client_out,
        client_in: in1 - in0,
        fwd_dsr: delta(&counters, &before, "fwd_dsr"),
        tx_icmp: delta(&counters, &before, "tx_icmp_frag_needed"),
        decapsulated: decap_total(l, "decapsulated") - dec0,
        counters,
        before,
    }
}

/// No full-NAT path ran, no packet was dropped for size or aborted, over the whole test.
fn assert_no_full_nat(what: &str, c: &BTreeMap<String, u64>) {
    for name in [
        "fwd_to_backend",
        "fwd_to_client",
        "new_flow",
        "drop_no_conntrack",
        "drop_snat_exhausted",
        "drop_too_big",
        "drop_fib_failed",
        "drop_dsr_no_backend",
        "aborted",
    ] {
        assert_eq!(
            c[name], 0,
            "{what}: counter {name} is {} (want 0): {c:?}",
            c[name]
        );
    }
}

/// A lab with the DSR service up: two backends set up with the printed commands, servers on
/// `*:80`, lbd with one `forwarding: dsr` service, both backends healthy, the VIP answering.
/// `tunnel_check` keeps lbd's default for DSR services (health checks through the IPIP
/// tunnel); without it the checks go to the backends' own addresses only
/// (`health_check.dsr_tunnel: false`), so every packet lb_decap counts is a client's.
fn dsr_lab(mode: Mode, tunnel_check: bool) -> Lab {
    let mut opts = LabOptions::new(2, mode);
    opts.backends_xdp_pass = false;
    let mut l = Lab::new(opts).unwrap_or_else(|e| panic!("building the lab: {e}"));

    // Backends: the test server on *:80 (the packet reaches it unchanged, to VIP:80), set up
    // with the printed commands.
    for i in 1..=2 {
        l.start_backend_on(
            i,
            SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, VIP_PORT),
        )
        .unwrap_or_else(|e| panic!("starting b{i}'s server on port {VIP_PORT}: {e}"));
        for key in [
            "net.ipv4.conf.all.rp_filter=1",
            "net.ipv4.conf.e0.rp_filter=1",
        ] {
            l.backend_run(i, "sysctl", &["-w", key])
                .unwrap_or_else(|e| panic!("b{i}: sysctl -w {key}: {e}"));
        }
        let script = l
            .setup_dsr_backend(i, VIP)
            .unwrap_or_else(|e| panic!("running lbctl backend-setup's commands on b{i}: {e}"));
        assert!(
            script.contains("decap attach e0 --vip") && !script.contains("modprobe"),
            "{script}"
        );
        for key in ["net.ipv4.conf.all.rp_filter", "net.ipv4.conf.e0.rp_filter"] {
            let v = l.backend_run(i, "sysctl", &["-n", key]).unwrap();
            assert_eq!(v.trim(), "1", "b{i}: the script changed {key}");
        }
        let lo = l
            .backend_run(i, "ip", &["-4", "addr", "show", "dev", "lo"])
            .unwrap();
        assert!(
            lo.contains(&format!("{VIP}/32")),
            "b{i}: VIP not on lo: {lo}"
        );
        let link = l
            .backend_run(i, "ip", &["link", "show", "dev", "e0"])
            .unwrap();
        assert!(
            link.contains("lb_decap"),
            "b{i}: lb_decap not on e0: {link}"
        );
    }

    // lbd with one DSR service on VIP:80; the outer source is lb's address toward b1.
    let mut cfg = l.lbd_config(
        (1..=2)
            .map(|i| BackendSpec::new(SocketAddrV4::new(backend_ip(i), VIP_PORT)))
            .collect(),
        HealthSpec::default(),
    );
    cfg.services[0].name = "dsr".into();
    let yaml = cfg.to_yaml_dsr(balancer_private_ip(1));
    assert!(
        yaml.contains("forwarding: dsr") && yaml.contains("dsr:\n  source:"),
        "{yaml}"
    );
    let yaml = if tunnel_check {
        yaml
    } else {
        yaml.replace(
            "    health_check:\n",
            "    health_check:\n      dsr_tunnel: false\n",
        )
    };
    l.start_lbd_text(&yaml)
        .unwrap_or_else(|e| panic!("starting lbd: {e}"));
    let addrs: Vec<_> = (1..=2)
        .map(|i| (SocketAddrV4::new(backend_ip(i), VIP_PORT), "up"))
        .collect();
    l.lbd()
        .unwrap()
        .wait_health(&addrs, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("DSR backends healthy: {e}"));
    l.wait_vip(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("a connection through the DSR VIP: {e}"));

    l
}

fn dsr_end_to_end(mode: Mode) {
    let _serial = exclusive();
    // The packet accounting below (lb_decap's count = lb's fwd_dsr) leaves no room for the
    // tunnel checks' own packets; `tunnel_check_*` covers those.
    let l = dsr_lab(mode, false);

    // 1. N connections: correct answers from both backends, which see the client itself.
    let mut probes = Vec::new();
    let m = measure(&l, "connections", || {
        probes = l
            .in_client(|| async {
                let mut v = Vec::new();
                for _ in 0..CONNECTIONS {
                    v.push(probe(vip_addr(), PROBE_TIMEOUT).await?);
                }
                Ok(v)
            })
            .unwrap_or_else(|e| panic!("{CONNECTIONS} connections through the DSR VIP: {e}"));
    });
    let mut per_backend: BTreeMap<String, usize> = BTreeMap::new();
    for p in &probes {
        assert_eq!(
            p.client_peer,
            vip_addr(),
            "the client's peer must be the VIP"
        );
        let (ip, _) = p.seen_peer.rsplit_once(':').expect("ip:port");
        assert_eq!(
            ip,
            CLIENT_ADDR.to_string(),
            "a DSR backend must see the client's own address: {p:?}"
        );
        *per_backend.entry(p.backend.clone()).or_default() += 1;
    }
    assert_eq!(
        per_backend.keys().collect::<Vec<_>>(),
        ["b1", "b2"],
        "{CONNECTIONS} connections must reach both backends: {per_backend:?}"
    );
    assert_eq!(
        m.fwd_dsr, m.client_out,
        "connections: fwd_dsr rose by {} but the client sent {} TCP segments ({per_backend:?})",
        m.fwd_dsr, m.client_out
    );
    assert_eq!(m.tx_icmp, 0, "connections: small packets need no ICMP");
    assert_eq!(
        m.decapsulated, m.fwd_dsr,
        "connections: the backends' lb_decap decapsulated {} packets, lb sent {} by DSR",
        m.decapsulated, m.fwd_dsr
    );
    let passed = delta(&m.counters, &m.before, "pass_not_service");
    assert!(
        passed >= m.client_in,
        "connections: the client received {} segments but lb_xdp passed only {passed} packets \
         as PASS_NOT_SERVICE (the backends' answers cross it untouched)",
        m.client_in
    );
    assert_no_full_nat("connections", &m.counters);

    // 2. An upload of full-size segments: 1500-byte packets no longer fit toward the backend
    //    once encapsulated; lb answers with ICMP fragmentation needed (MTU 1480), the client
    //    lowers its path MTU and the upload completes intact.
    let route = || {
        l.client_run("ip", &["route", "get", &VIP.to_string()])
            .unwrap_or_else(|e| panic!("ip route get {VIP}: {e}"))
    };
    let before_route = route();
    assert!(
        !before_route.contains("mtu"),
        "a path MTU is cached before the upload: {before_route}"
    );
    let m = measure(&l, "upload", || {
        let sha = l
            .in_client(|| async {
                let mut conn = HttpConn::connect(vip_addr(), PROBE_TIMEOUT).await?;
                let r = tokio::time::timeout(
                    Duration::from_secs(30),
                    conn.post_pattern("/sha256", UPLOAD),
                )
                .await
                .map_err(|_| lb_tests::lab::LabError::Timeout("DSR upload".into()))??;
                assert_eq!(r.status, 200);
                Ok(r.text())
            })
            .unwrap_or_else(|e| panic!("{UPLOAD}-byte upload through the DSR VIP: {e}"));
        assert_eq!(
            sha,
            pattern_sha256(UPLOAD),
            "upload SHA-256 as the backend computed it"
        );
    });
    let after_route = route();
    assert!(
        after_route.contains(&format!("mtu {DSR_MTU}")),
        "the client did not learn the path MTU {DSR_MTU} toward the VIP: {after_route}"
    );
    assert!(
        m.tx_icmp > 0,
        "upload: no fragmentation-needed answer counted (fwd_dsr +{}, client segments {})",
        m.fwd_dsr,
        m.client_out
    );
    assert_eq!(
        m.fwd_dsr + m.tx_icmp,
        m.client_out,
        "upload: fwd_dsr +{} and tx_icmp_frag_needed +{} must account for the client's {} segments",
        m.fwd_dsr,
        m.tx_icmp,
        m.client_out
    );
    assert_eq!(
        m.decapsulated, m.fwd_dsr,
        "upload: lb_decap decapsulated {} packets, lb sent {} by DSR",
        m.decapsulated, m.fwd_dsr
    );
    assert_no_full_nat("upload", &m.counters);
    for i in 1..=2 {
        let d = l.decap_counters(i).unwrap();
        assert_eq!(
            (
                d["drop_malformed"],
                d["drop_unsupported"],
                d["aborted"],
                d["drop_source"],
                d["drop_not_vip"]
            ),
            (0, 0, 0, 0, 0),
            "b{i}: lb_decap dropped packets: {d:?}"
        );
    }
    eprintln!(
        "dsr {mode:?}: {CONNECTIONS} connections {per_backend:?}; upload {UPLOAD} B: client segments {}, fwd_dsr {}, tx_icmp_frag_needed {}, decapsulated {}; route after: {}",
        m.client_out,
        m.fwd_dsr,
        m.tx_icmp,
        m.decapsulated,
        after_route.split_whitespace().collect::<Vec<_>>().join(" ")
    );
}

#[test]
fn tunnel_check_native() {
    tunnel_check(Mode::Native)
}

#[test]
fn tunnel_check_generic() {
    tunnel_check(Mode::Generic)
}

/// The API's `last_transition` of the backend at `address` ("up 3s ago: <reason>").
fn last_transition(l: &Lab, address: SocketAddrV4) -> String {
    let want = address.to_string();
    l.lbd()
        .unwrap()
        .backends()
        .expect("backend_list")
        .iter()
        .find(|b| b["address"].as_str() == Some(want.as_str()))
        .and_then(|b| b["last_transition"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Waits until the backend at `address` is in (or out of) the Maglev table.
fn wait_in_table(l: &Lab, address: SocketAddrV4, want: bool) {
    let a = address.to_string();
    wait_for(
        &format!("{a} in_table = {want}"),
        Duration::from_secs(5),
        Duration::from_millis(100),
        || {
            let list = l.lbd().unwrap().backends().ok()?;
            let b = list
                .iter()
                .find(|b| b["address"].as_str() == Some(a.as_str()))?;
            (b["in_table"].as_bool() == Some(want)).then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

/// `CONNECTIONS` new connections through the VIP: every one must succeed, all on `backend`.
fn all_reach(l: &Lab, backend: &str, what: &str) {
    let probes = l
        .in_client(|| async {
            let mut v = Vec::new();
            for _ in 0..CONNECTIONS {
                v.push(probe(vip_addr(), PROBE_TIMEOUT).await?);
            }
            Ok(v)
        })
        .unwrap_or_else(|e| panic!("{what}: {CONNECTIONS} connections through the VIP: {e}"));
    let elsewhere: Vec<_> = probes.iter().filter(|p| p.backend != backend).collect();
    assert!(
        elsewhere.is_empty(),
        "{what}: connections reached another backend than {backend}: {elsewhere:?}"
    );
}

/// The review of issue 13: a DSR backend that lost its DSR setup (as after a reboot: the
/// decapsulation and the VIP on `lo` are not persistent) while its server still listens on
/// `*:80` answers a check at its own address, but loses every packet lb encapsulates toward
/// it. lbd's default check for DSR services goes through the tunnel, so it marks such a
/// backend down within `interval x fall` (+ slack), new connections all go to the other
/// backend, and the restored setup brings it back. Two ways to lose the setup: lb_decap
/// detached from `e0` (the IPIP packets reach a kernel without an IPIP handler) and the VIP
/// removed from `lo` (the decapsulated SYN is to an address the backend does not have).
fn tunnel_check(mode: Mode) {
    let _serial = exclusive();
    let l = dsr_lab(mode, true);
    let health = HealthSpec::default();
    let b = |i| SocketAddrV4::new(backend_ip(i), VIP_PORT);
    let tunnel = format!("{VIP}:{VIP_PORT} via the IPIP tunnel");
    let up = last_transition(&l, b(1));
    assert!(
        up.starts_with("up")
            && up.contains(&format!("SYN-ACK from {tunnel}"))
            && up.contains("HTTP 200"),
        "b1 passed its check through the tunnel and its HTTP check: {up}"
    );
    let lbctl = release_binary("lbctl").expect("lbctl");
    let lbctl = lbctl.display().to_string();
    let pin_root = l.decap_pin_root().display().to_string();
    let slack = Duration::from_secs(3);

    // 1. b1 loses lb_decap; its server keeps listening on *:80.
    let out = l
        .backend_run(
            1,
            &lbctl,
            &["decap", "detach", "e0", "--pin-root", &pin_root],
        )
        .unwrap_or_else(|e| panic!("lbctl decap detach e0 on b1: {e}"));
    assert!(out.contains("detached"), "{out}");
    l.lbd()
        .unwrap()
        .wait_health(
            &[(b(1), "down"), (b(2), "up")],
            health.detection_bound() + slack,
        )
        .unwrap_or_else(|e| panic!("b1 without decapsulation must be marked down: {e}"));
    // Its kernel answers the IPIP probe with ICMP protocol unreachable: the check fails on
    // that at once and names the cause (before: "no answer" after the answer wait).
    let down = last_transition(&l, b(1));
    assert!(
        down.contains(&format!(
            "ICMP error from {} to the probe of {tunnel}",
            backend_ip(1)
        )) && down.contains("protocol unreachable: the backend's kernel has no IPIP handler"),
        "the reason names the tunnel and the ICMP error: {down}"
    );
    wait_in_table(&l, b(1), false);
    all_reach(&l, "b2", "b1 without lb_decap");

    // 2. The printed setup again (as after the reboot): b1 comes back.
    l.setup_dsr_backend(1, VIP)
        .unwrap_or_else(|e| panic!("b1's setup again: {e}"));
    l.lbd()
        .unwrap()
        .wait_health(
            &[(b(1), "up"), (b(2), "up")],
            health.recovery_bound() + slack,
        )
        .unwrap_or_else(|e| panic!("b1 restored must be marked up: {e}"));

    // 3. b2 loses the VIP on lo (lb_decap stays).
    let vip_lo = format!("{VIP}/32");
    l.backend_run(2, "ip", &["addr", "del", &vip_lo, "dev", "lo"])
        .unwrap_or_else(|e| panic!("removing the VIP from b2's lo: {e}"));
    l.lbd()
        .unwrap()
        .wait_health(
            &[(b(1), "up"), (b(2), "down")],
            health.detection_bound() + slack,
        )
        .unwrap_or_else(|e| panic!("b2 without the VIP on lo must be marked down: {e}"));
    wait_in_table(&l, b(2), false);
    all_reach(&l, "b1", "b2 without the VIP on lo");
    l.backend_run(2, "ip", &["addr", "add", &vip_lo, "dev", "lo"])
        .unwrap_or_else(|e| panic!("restoring the VIP on b2's lo: {e}"));
    l.lbd()
        .unwrap()
        .wait_health(
            &[(b(1), "up"), (b(2), "up")],
            health.recovery_bound() + slack,
        )
        .unwrap_or_else(|e| panic!("b2 restored must be marked up: {e}"));
    wait_in_table(&l, b(2), true);
    eprintln!("dsr tunnel check {mode:?}: b1 down without lb_decap ({down}), b2 down without the VIP on lo, both back up");
}

/// A measurement, not a check (run by hand: `cargo test --release -p lb-tests --test netns --
/// --ignored dsr::throughput_dsr_vs_nat --nocapture`): through the DSR service and through the lab's default
/// full-NAT service, native mode, alternating fresh labs for `ROUNDS` rounds: `CONNS`
/// sequential connections (one `GET /id` each; connections per second), a 64 MiB upload
/// (`POST /sha256`, checked) and a 64 MiB download (`GET /bulk`, checked), in MB/s. Fails
/// only when a transfer fails or its SHA-256 differs.
#[test]
#[ignore = "a measurement (prints numbers); run by hand"]
fn throughput_dsr_vs_nat() {
    const ROUNDS: usize = 3;
    const CONNS: usize = 500;
    const LEN: u64 = 64 << 20;
    let _serial = exclusive();
    for round in 1..=ROUNDS {
        for dsr in [true, false] {
            let l = if dsr {
                dsr_lab(Mode::Native, false)
            } else {
                started(2, Mode::Native)
            };
            let (conns, up, down) = l
                .in_client(|| async {
                    let t = std::time::Instant::now();
                    for _ in 0..CONNS {
                        probe(vip_addr(), PROBE_TIMEOUT).await?;
                    }
                    let conns = CONNS as f64 / t.elapsed().as_secs_f64();
                    let timeout = Duration::from_secs(60);
                    let mut conn = HttpConn::connect(vip_addr(), PROBE_TIMEOUT).await?;
                    let t = std::time::Instant::now();
                    let r = tokio::time::timeout(timeout, conn.post_pattern("/sha256", LEN))
                        .await
                        .map_err(|_| lb_tests::lab::LabError::Timeout("upload".into()))??;
                    let up = LEN as f64 / t.elapsed().as_secs_f64();
                    assert_eq!(r.text(), pattern_sha256(LEN), "upload SHA-256");
                    let t = std::time::Instant::now();
                    let (status, len, sha) = tokio::time::timeout(
                        timeout,
                        conn.get_hashed(&format!("/bulk?bytes={LEN}"), |_| {}),
                    )
                    .await
                    .map_err(|_| lb_tests::lab::LabError::Timeout("download".into()))??;
                    let down = LEN as f64 / t.elapsed().as_secs_f64();
                    assert_eq!((status, len), (200, LEN));
                    assert_eq!(sha, pattern_sha256(LEN), "download SHA-256");
                    Ok((conns, up, down))
                })
                .unwrap_or_else(|e| panic!("measuring: {e}"));
            eprintln!(
                "round {round} {}: {conns:.0} sequential connections/s; upload {:.0} MB/s; download {:.0} MB/s",
                if dsr { "DSR (lb_decap)" } else { "full NAT" },
                up / 1e6,
                down / 1e6
            );
        }
    }
}
