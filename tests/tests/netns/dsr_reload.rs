//! A reload that leaves a VIP with DSR services only must not break its open full-NAT
//! connections (docs/architecture.md, step 3): lbd flags such a VIP DSR-only
//! (`LOCAL_F_DSR_ONLY`, its packets then skip the full-NAT conntrack lookups) only once a
//! conntrack sweep found no full-NAT flow to it left.
//!
//! The VIP's one service `web` (port 80) starts in full NAT over two backends whose servers
//! listen on `*:80` and which run the printed DSR setup (VIP on `lo`, `lb_decap` on `e0`;
//! plain packets pass it). A keep-alive connection to `web` is open when a reload switches
//! `web` to `forwarding: dsr`: the connection keeps its NAT path (small requests over more
//! than one sweep interval, then a checked download, the backend seeing the SNAT address)
//! while new connections go by DSR and the VIP stays without the bit; once the connection is
//! closed and its entries expired, a sweep sets the bit and DSR keeps answering.

use super::*;
use lb_tests::lab::lbd::BackendSpec;
use lb_tests::lab::sys::wait_for;
use lb_tests::lab::{backend_ip, balancer_private_ip};
use std::net::{Ipv4Addr, SocketAddrV4};

/// The download on the kept connection after the reload.
const DOWNLOAD: u64 = 4 * 1024 * 1024;
/// Requests on the kept connection after the reload, `GAP` apart: longer than lbd's sweep
/// interval (5 s), so at least one sweep runs while the connection is open.
const REQUESTS: usize = 30;
const GAP: Duration = Duration::from_millis(250);
/// Closing states' timeout (LAST_ACK, TIME_WAIT, CLOSE; lbd's minimum): the closed
/// connection's entries expire after this, and the next sweep finds no full-NAT flow.
const CLOSING_MS: u64 = 2000;

#[test]
fn native() {
    open_nat_flow_survives(Mode::Native)
}

#[test]
fn generic() {
    open_nat_flow_survives(Mode::Generic)
}

/// `cfg` in DSR mode, checked at the backends' own addresses (not through the tunnel).
fn dsr_yaml(cfg: &LbdConfig) -> String {
    cfg.to_yaml_dsr(balancer_private_ip(1)).replace(
        "    health_check:\n",
        "    health_check:\n      dsr_tunnel: false\n",
    )
}

/// The `LOCAL_F_*` bits of the VIP in lbd's pinned `LB_LOCAL_ADDRS`.
fn vip_bits(cfg: &LbdConfig) -> u32 {
    use aya::maps::{HashMap, Map, MapData, MapError};
    let pin = cfg
        .bpffs_root
        .join(format!("abi{}", lb_common::ABI_VERSION))
        .join(lb_common::MAP_LOCAL_ADDRS);
    let md = MapData::from_pin(&pin).unwrap_or_else(|e| panic!("opening {}: {e}", pin.display()));
    let map: HashMap<MapData, u32, u32> =
        HashMap::try_from(Map::HashMap(md)).unwrap_or_else(|e| panic!("{}: {e}", pin.display()));
    match map.get(&lb_common::ipv4_to_be(VIP), 0) {
        Ok(bits) => bits,
        Err(MapError::KeyNotFound) => 0,
        Err(e) => panic!("{VIP} in {}: {e}", pin.display()),
    }
}

/// What the kept connection saw after the reload.
struct Kept {
    /// Each request's answer (or error).
    answers: Vec<Result<String, String>>,
    /// The download's (status, length, SHA-256), or its error.
    download: Result<(u16, u64, String), String>,
}

fn open_nat_flow_survives(mode: Mode) {
    let _serial = exclusive();
    let mut opts = LabOptions::new(2, mode);
    opts.backends_xdp_pass = false;
    let mut l = Lab::new(opts).unwrap_or_else(|e| panic!("building the lab: {e}"));
    for i in 1..=2 {
        l.start_backend_on(i, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, VIP_PORT))
            .unwrap_or_else(|e| panic!("starting b{i}'s server on port {VIP_PORT}: {e}"));
        l.setup_dsr_backend(i, VIP)
            .unwrap_or_else(|e| panic!("b{i}'s DSR setup: {e}"));
    }
    let backends: Vec<SocketAddrV4> = (1..=2)
        .map(|i| SocketAddrV4::new(backend_ip(i), VIP_PORT))
        .collect();
    let mut cfg = l.lbd_config(
        backends.iter().map(|a| BackendSpec::new(*a)).collect(),
        HealthSpec::default(),
    );
    cfg.conntrack = cfg.conntrack.with_closing_ms(CLOSING_MS);
    l.start_lbd(&cfg)
        .unwrap_or_else(|e| panic!("starting lbd: {e}"));
    assert_eq!(
        vip_bits(&cfg),
        lb_common::LOCAL_F_VIP,
        "a VIP with a full-NAT service is not DSR-only"
    );

    // The kept connection: one answer through full NAT, then wait for the reload, then
    // `REQUESTS` more and a download, each bounded.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let keeper = l.spawn_in_client(move || async move {
        let mut conn = HttpConn::connect(vip_addr(), PROBE_TIMEOUT).await?;
        let first = client::bounded("GET /id", PROBE_TIMEOUT, conn.request("GET", "/id", b""))
            .await?
            .text();
        let _ = ready_tx.send(first);
        let _ = go_rx.await;
        let mut answers = Vec::new();
        for _ in 0..REQUESTS {
            let r =
                client::bounded("GET /id", PROBE_TIMEOUT, conn.request("GET", "/id", b"")).await;
            let failed = r.is_err();
            answers.push(r.map(|r| r.text()).map_err(|e| e.to_string()));
            if failed {
                return Ok(Kept {
                    answers,
                    download: Err("not tried".into()),
                });
            }
            tokio::time::sleep(GAP).await;
        }
        let download = client::bounded(
            "the download",
            Duration::from_secs(20),
            conn.get_hashed(&format!("/bulk?bytes={DOWNLOAD}"), |_| {}),
        )
        .await
        .map_err(|e| e.to_string());
        Ok(Kept { answers, download })
    });
    let first = ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("a kept connection through full NAT");
    let snat_peer = format!(" {SNAT_ADDR}:");
    assert!(
        first.contains(&snat_peer),
        "the backend sees the SNAT address in full NAT: {first:?}"
    );

    // The reload switches `web` to DSR: the VIP's services are all DSR now.
    l.lbd().unwrap().write_config(&dsr_yaml(&cfg)).unwrap();
    let out = l
        .lbd()
        .unwrap()
        .lbctl(&["reload"])
        .unwrap_or_else(|e| panic!("lbctl reload (web to DSR): {e}"));
    eprintln!("reload (web to DSR): {out}");
    let _ = go_tx.send(());
    // New connections go by DSR meanwhile: the backend sees the client itself.
    let p = l
        .in_client(|| probe(vip_addr(), PROBE_TIMEOUT))
        .unwrap_or_else(|e| panic!("a new connection after the switch to DSR: {e}"));
    assert!(
        p.seen_peer.starts_with(&format!("{CLIENT_ADDR}:")),
        "a new connection goes by DSR: {p:?}"
    );
    let kept = client::join(keeper).unwrap_or_else(|e| panic!("the kept connection: {e}"));
    let bits_while_open = vip_bits(&cfg);
    let broken: Vec<_> = kept
        .answers
        .iter()
        .filter(|a| !a.as_ref().is_ok_and(|t| t.contains(&snat_peer)))
        .collect();
    assert!(
        broken.is_empty() && kept.answers.len() == REQUESTS,
        "the open full-NAT connection broke after the reload switched its service to DSR: \
         {} of {REQUESTS} requests answered through full NAT, then {broken:?}",
        kept.answers.len() - broken.len()
    );
    let download = kept
        .download
        .unwrap_or_else(|e| panic!("the download on the kept connection: {e}"));
    assert_eq!(
        download,
        (200, DOWNLOAD, pattern_sha256(DOWNLOAD)),
        "the download on the kept connection"
    );
    assert_eq!(
        bits_while_open,
        lb_common::LOCAL_F_VIP,
        "the VIP must not be DSR-only while a full-NAT flow to it is open"
    );

    // Closed (the keeper's thread dropped it): its entries expire after the closing
    // timeout, a sweep (every 5 s) finds no full-NAT flow, and the VIP becomes DSR-only.
    let want = lb_common::LOCAL_F_VIP | lb_common::LOCAL_F_DSR_ONLY;
    wait_for(
        "the VIP flagged DSR-only",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || (vip_bits(&cfg) == want).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}: bits {:#x}", vip_bits(&cfg)));
    let p = l
        .in_client(|| probe(vip_addr(), PROBE_TIMEOUT))
        .unwrap_or_else(|e| panic!("DSR on the DSR-only VIP: {e}"));
    assert!(
        p.seen_peer.starts_with(&format!("{CLIENT_ADDR}:")),
        "DSR on the DSR-only VIP: {p:?}"
    );
    eprintln!(
        "dsr reload {mode:?}: the full-NAT connection kept answering {REQUESTS} requests and a \
         {DOWNLOAD}-byte download through full NAT after its service switched to DSR; the VIP \
         became DSR-only once it closed"
    );
}
