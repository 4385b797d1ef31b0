//! Packet-fixture tier: a table of `{description, input frame, expected verdict, expected
//! output frame, expected counter deltas}` run through BPF_PROG_TEST_RUN on the compiled
//! `lb_xdp` with real maps, inside a throw-away network namespace with fixed routes and
//! neighbours. Output frames are compared byte for byte against frames built independently
//! (checksums from scratch, backend from `flow_hash` over a hand-built Maglev table).
//!
//! Needs root. Run: `cargo xtask build-ebpf && cargo test --release -p lb-tests --test fixtures
//! -- --test-threads=1`.

use lb::dataplane::{bpf::BpfDataplane, Dataplane, LoadOptions};
use lb_common::hash::{flow_hash, snat_port_base, snat_port_candidate, SNAT_SEED_XOR};
use lb_common::*;
use lb_tests::fixture::frame::{arp_request, ipv6_syn, Mac, TcpFrame};
use lb_tests::fixture::netns::FixtureNetns;
use lb_tests::fixture::require_root;
use std::net::Ipv4Addr;

#[path = "fixtures/backend_down.rs"]
mod backend_down;
#[path = "fixtures/ct_filter.rs"]
mod ct_filter;
#[path = "fixtures/decap.rs"]
mod decap;
#[path = "fixtures/dsr.rs"]
mod dsr;
#[path = "fixtures/failover.rs"]
mod failover;
#[path = "fixtures/fuzz.rs"]
mod fuzz;
#[path = "fixtures/icmp.rs"]
mod icmp;
#[path = "fixtures/lifecycle.rs"]
mod lifecycle;
#[path = "fixtures/prefilter.rs"]
mod prefilter;
#[path = "fixtures/refresh.rs"]
mod refresh;
#[path = "fixtures/retry.rs"]
mod retry;
#[path = "fixtures/snat_pool.rs"]
mod snat_pool;

// XDP actions.
const ABORTED_ACT: u32 = 0;
const DROP: u32 = 1;
const PASS: u32 = 2;
const TX: u32 = 3;
const REDIRECT: u32 = 4;

// The fixture network (inside the namespace only).
const PUB_MAC: Mac = [0x02, 0, 0, 0, 0x01, 0x01];
const ROUTER_MAC: Mac = [0x02, 0, 0, 0, 0x01, 0xfe];
const PRIV_MAC: Mac = [0x02, 0, 0, 0, 0x02, 0x01];
const SIDE_MAC: Mac = [0x02, 0, 0, 0, 0x03, 0x01];
const BE1_MAC: Mac = [0x02, 0, 0, 0, 0x02, 0x0b];
const BE2_MAC: Mac = [0x02, 0, 0, 0, 0x02, 0x0c];
const BE_TX_MAC: Mac = [0x02, 0, 0, 0, 0x01, 0x32];
const BE_SIDE_MAC: Mac = [0x02, 0, 0, 0, 0x03, 0x05];

const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const SNAT: Ipv4Addr = Ipv4Addr::new(10, 20, 0, 100);
const BE1: Ipv4Addr = Ipv4Addr::new(10, 20, 0, 11);
const BE2: Ipv4Addr = Ipv4Addr::new(10, 20, 0, 12);
const BE_NO_NEIGH: Ipv4Addr = Ipv4Addr::new(10, 20, 0, 99);
const BE_NO_ROUTE: Ipv4Addr = Ipv4Addr::new(10, 40, 0, 5);
const BE_TX: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 50);
const BE_SIDE: Ipv4Addr = Ipv4Addr::new(10, 30, 0, 5);
const CLIENT_A: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const CLIENT_B: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 8);
const CLIENT_C: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 9);

const TABLE: u32 = 13;
const SEED: u32 = 0x5eed_1b01;
const PORT_MIN: u16 = 20000;
const PORT_MAX: u16 = 20999;
const BE_PORT: u16 = 8080;

fn be(a: Ipv4Addr) -> u32 {
    ipv4_to_be(a)
}

fn base_config() -> GlobalConfig {
    GlobalConfig {
        snat_port_min: PORT_MIN,
        snat_port_max: PORT_MAX,
        snat_addr_count: 1,
        hash_seed: SEED,
        ..GlobalConfig::default()
    }
}

/// MACs the neighbour 10.20.0.99 gets during the next-hop cache cases.
const NEIGH_MAC_1: Mac = [0x02, 0, 0, 0, 0x02, 0x63];
const NEIGH_MAC_2: Mac = [0x02, 0, 0, 0, 0x02, 0x64];

fn mac_str(m: Mac) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Sets (or with `None` deletes) the permanent neighbour `addr` on priv0 of the namespace the
/// calling thread is in (fixture hooks run inside it).
fn set_neighbour(addr: &str, mac: Option<Mac>) {
    match mac {
        Some(m) => lb_tests::fixture::netns::ip(&[
            "neigh",
            "replace",
            addr,
            "lladdr",
            &mac_str(m),
            "nud",
            "permanent",
            "dev",
            "priv0",
        ]),
        None => lb_tests::fixture::netns::ip(&["neigh", "del", addr, "dev", "priv0"]),
    }
}

/// Sets the MTU of `dev` in the calling thread's namespace.
fn set_mtu(dev: &str, mtu: u32) {
    lb_tests::fixture::netns::ip(&["link", "set", dev, "mtu", &mtu.to_string()]);
}

/// The web service's hand-built Maglev table (backends 1 and 2).
const WEB_TABLE: [u32; TABLE as usize] = [1, 2, 2, 1, 2, 1, 1, 2, 1, 2, 2, 1, 1];

fn syn(src: Ipv4Addr, sport: u16, dport: u16) -> TcpFrame {
    TcpFrame::syn(ROUTER_MAC, PUB_MAC, src, sport, VIP, dport)
}

fn maglev_pick(table: &[u32], src: Ipv4Addr, sport: u16, dport: u16) -> u32 {
    let h = flow_hash(be(src), be(VIP), sport.to_be(), dport.to_be(), SEED);
    table[(h % TABLE) as usize]
}

fn snat_candidate(src: Ipv4Addr, sport: u16, _dport: u16, attempt: u32, min: u16, max: u16) -> u16 {
    let base = snat_port_base(be(src), sport.to_be(), SEED ^ SNAT_SEED_XOR);
    snat_port_candidate(base, attempt, min, max)
}

fn backend_of(id: u32) -> (Ipv4Addr, Mac) {
    match id {
        1 => (BE1, BE1_MAC),
        2 => (BE2, BE2_MAC),
        _ => panic!("no backend {id}"),
    }
}

/// `f` as it leaves lb toward `(addr, port)` from SNAT `snat_port`, routed out of `out_mac` to
/// `next_mac` (TTL decremented when `routed`).
fn to_backend(
    f: &TcpFrame,
    addr: Ipv4Addr,
    port: u16,
    snat_port: u16,
    macs: Option<(Mac, Mac)>,
) -> Vec<u8> {
    let mut o = f.clone();
    o.src = SNAT;
    o.sport = snat_port;
    o.dst = addr;
    o.dport = port;
    if let Some((src_mac, dst_mac)) = macs {
        o.src_mac = src_mac;
        o.dst_mac = dst_mac;
        o.ttl -= 1;
    }
    o.build()
}

type Hook = Box<dyn Fn(&mut BpfDataplane)>;
type Check = Box<dyn Fn(&BpfDataplane) -> Result<(), String>>;

struct Case {
    name: String,
    /// Keep the SNAT short-search windows (`LB_SNAT_FULL`) the cases before left; every other
    /// case starts without any, so its counters do not depend on the time since an earlier
    /// case found a pool full.
    keep_snat_window: bool,
    setup: Option<Hook>,
    input: Vec<u8>,
    ingress: u32,
    verdict: u32,
    output: Vec<u8>,
    counters: Vec<u32>,
    check: Option<Check>,
}

struct Ifs {
    pub0: u32,
    priv0: u32,
}

fn case(
    name: impl Into<String>,
    input: Vec<u8>,
    ingress: u32,
    verdict: u32,
    output: Option<Vec<u8>>,
    counters: &[u32],
) -> Case {
    Case {
        name: name.into(),
        keep_snat_window: false,
        setup: None,
        output: output.unwrap_or_else(|| input.clone()),
        input,
        ingress,
        verdict,
        counters: counters.to_vec(),
        check: None,
    }
}

impl Case {
    fn setup(mut self, f: impl Fn(&mut BpfDataplane) + 'static) -> Self {
        self.setup = Some(Box::new(f));
        self
    }
    fn check(mut self, f: impl Fn(&BpfDataplane) -> Result<(), String> + 'static) -> Self {
        self.check = Some(Box::new(f));
        self
    }
    fn keep_snat_window(mut self) -> Self {
        self.keep_snat_window = true;
        self
    }
}

fn find_entry(dp: &BpfDataplane, key: &FlowKey) -> Option<FlowEntry> {
    dp.conntrack_entries()
        .unwrap()
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, e)| e)
}

fn tcp_key(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> FlowKey {
    FlowKey {
        src_addr_be: be(src),
        dst_addr_be: be(dst),
        src_port_be: sport.to_be(),
        dst_port_be: dport.to_be(),
        proto: IPPROTO_TCP,
        _pad: [0; 3],
    }
}

fn set_table(dp: &mut BpfDataplane, service_id: u32, table: &[u32]) {
    dp.write_maglev(maglev_table_offset(service_id, 0, TABLE), table)
        .unwrap();
}

fn service(dp: &mut BpfDataplane, id: u32, port: u16, flags: u32, offset: Option<u32>) {
    let key = ServiceKey {
        vip_be: be(VIP),
        port_be: port.to_be(),
        proto: IPPROTO_TCP,
        _pad: 0,
    };
    let value = ServiceValue {
        service_id: id,
        table_offset: offset.unwrap_or(maglev_table_offset(id, 0, TABLE)),
        table_size: TABLE,
        flags,
        forwarding: FORWARDING_NAT,
        dsr_src_be: 0,
    };
    dp.set_service(&key, &value).unwrap();
}

fn backend(dp: &mut BpfDataplane, id: u32, addr: Ipv4Addr, port: u16, service_id: u32, flags: u32) {
    dp.set_backend(
        id,
        &BackendValue {
            addr_be: be(addr),
            port_be: port.to_be(),
            _pad: 0,
            flags,
            service_id,
        },
    )
    .unwrap();
}

fn setup_network(ns: &FixtureNetns) {
    for (dev, mac, addr) in [
        ("pub0", "02:00:00:00:01:01", "10.10.0.1/24"),
        ("priv0", "02:00:00:00:02:01", "10.20.0.1/24"),
        ("side0", "02:00:00:00:03:01", "10.30.0.1/24"),
    ] {
        let peer = format!("{dev}p");
        ns.ip(&[
            "link", "add", dev, "address", mac, "type", "veth", "peer", "name", &peer,
        ]);
        ns.ip(&["addr", "add", addr, "dev", dev]);
        ns.ip(&["link", "set", dev, "up"]);
        ns.ip(&["link", "set", &peer, "up"]);
    }
    for (addr, mac, dev) in [
        ("10.10.0.254", "02:00:00:00:01:fe", "pub0"),
        ("10.10.0.50", "02:00:00:00:01:32", "pub0"),
        ("10.20.0.11", "02:00:00:00:02:0b", "priv0"),
        ("10.20.0.12", "02:00:00:00:02:0c", "priv0"),
        ("10.30.0.5", "02:00:00:00:03:05", "side0"),
    ] {
        ns.ip(&[
            "neigh",
            "replace",
            addr,
            "lladdr",
            mac,
            "nud",
            "permanent",
            "dev",
            dev,
        ]);
    }
    ns.ip(&[
        "route",
        "add",
        "198.51.100.0/24",
        "via",
        "10.10.0.254",
        "dev",
        "pub0",
    ]);
    ns.sysctl("net/ipv4/ip_forward", "1");
}

fn populate(dp: &mut BpfDataplane, ifs: &Ifs) {
    dp.set_global_config(&base_config()).unwrap();
    dp.set_snat_addrs(&[SNAT]).unwrap();
    dp.set_vip(
        be(VIP),
        &VipValue {
            service_count: 8,
            flags: 0,
        },
    )
    .unwrap();
    dp.set_tx_port(ifs.pub0).unwrap();
    dp.set_tx_port(ifs.priv0).unwrap();
    backend(dp, 1, BE1, BE_PORT, 0, 0);
    backend(dp, 2, BE2, BE_PORT, 0, 0);
    backend(dp, 3, BE_NO_NEIGH, 80, 3, 0);
    backend(dp, 4, BE_NO_ROUTE, 80, 4, 0);
    backend(dp, 5, BE_TX, 80, 5, 0);
    backend(dp, 6, BE_SIDE, 80, 6, 0);
    backend(dp, 8, BE2, 9000, 8, 0);
    service(dp, 0, 80, 0, None);
    set_table(dp, 0, &WEB_TABLE);
    service(dp, 1, 81, SERVICE_F_NO_BACKEND, None);
    service(dp, 2, 82, 0, None);
    set_table(dp, 2, &[0; TABLE as usize]);
    for (id, port) in [(3u32, 83u16), (4, 84), (5, 85), (6, 86), (8, 88)] {
        service(dp, id, port, 0, None);
        set_table(dp, id, &[id; TABLE as usize]);
    }
    // Points past the end of LB_MAGLEV: a control-plane bug the data plane must survive.
    service(dp, 7, 87, 0, Some(1_000_000));
}

/// The RST lb sends the sender of `f` (a segment with ACK) when it ends `f`'s flow: from
/// `f`'s destination, `seq = f.ack`, no options or payload.
fn rst_for_ack(f: &TcpFrame) -> Vec<u8> {
    let mut r = f.clone();
    r.src_mac = f.dst_mac;
    r.dst_mac = f.src_mac;
    r.src = f.dst;
    r.dst = f.src;
    r.sport = f.dport;
    r.dport = f.sport;
    r.ttl = 64;
    r.tos = 0;
    r.ip_id = 0;
    r.frag = 0x4000;
    r.seq = f.ack;
    r.ack = 0;
    r.flags = tcp_flags::RST;
    r.window = 0;
    r.tcp_options.clear();
    r.payload.clear();
    r.trailer.clear();
    r.build()
}

fn rst_for(syn: &TcpFrame) -> Vec<u8> {
    let mut r = syn.clone();
    r.src_mac = syn.dst_mac;
    r.dst_mac = syn.src_mac;
    r.src = syn.dst;
    r.dst = syn.src;
    r.sport = syn.dport;
    r.dport = syn.sport;
    r.ttl = 64;
    r.tos = 0;
    r.ip_id = 0;
    r.frag = 0x4000;
    r.seq = 0;
    r.ack = syn
        .seq
        .wrapping_add(1)
        .wrapping_add(syn.payload.len() as u32);
    r.flags = tcp_flags::RST | tcp_flags::ACK;
    r.window = 0;
    r.tcp_options.clear();
    r.payload.clear();
    r.trailer.clear();
    r.build()
}

fn cases(ifs: &Ifs) -> Vec<Case> {
    let (pub0, priv0) = (ifs.pub0, ifs.priv0);
    let mut v = Vec::new();

    // --- Malformed input and things that are not ours. ---
    let web_syn = syn(CLIENT_A, 40000, 80);
    let good = web_syn.build();
    v.push(case(
        "IPv4 ethertype, truncated IP header",
        good[..24].to_vec(),
        pub0,
        DROP,
        None,
        &[DROP_MALFORMED],
    ));
    let mut f = web_syn.clone();
    f.version_override = Some(6);
    v.push(case(
        "IPv4 ethertype, IP version 6",
        f.build(),
        pub0,
        DROP,
        None,
        &[DROP_MALFORMED],
    ));
    let mut f = web_syn.clone();
    f.ihl_override = Some(4);
    v.push(case(
        "IHL 4 (< 5)",
        f.build(),
        pub0,
        DROP,
        None,
        &[DROP_MALFORMED],
    ));
    let mut f = web_syn.clone();
    f.tot_len_override = Some(200);
    v.push(case(
        "IP total length larger than the frame",
        f.build(),
        pub0,
        DROP,
        None,
        &[DROP_MALFORMED],
    ));
    let mut f = web_syn.clone();
    f.tot_len_override = Some(16);
    v.push(case(
        "IP total length smaller than the header",
        f.build(),
        pub0,
        DROP,
        None,
        &[DROP_MALFORMED],
    ));
    v.push(case(
        "ARP request",
        arp_request(
            ROUTER_MAC,
            Ipv4Addr::new(10, 10, 0, 254),
            Ipv4Addr::new(10, 10, 0, 1),
        ),
        pub0,
        PASS,
        None,
        &[PASS_NON_IP],
    ));
    v.push(case(
        "IPv6 SYN",
        ipv6_syn(ROUTER_MAC, PUB_MAC),
        pub0,
        PASS,
        None,
        &[PASS_IPV6],
    ));
    let mut f = web_syn.clone();
    f.dst = Ipv4Addr::new(10, 10, 0, 1);
    f.dport = 22;
    v.push(case(
        "TCP to a non-VIP address without conntrack",
        f.build(),
        pub0,
        PASS,
        None,
        &[PASS_NOT_SERVICE],
    ));
    let mut f = web_syn.clone();
    f.dst = Ipv4Addr::new(10, 10, 0, 1);
    f.proto = 17;
    v.push(case(
        "UDP to a non-VIP address",
        f.build(),
        pub0,
        PASS,
        None,
        &[PASS_NOT_SERVICE],
    ));
    let mut f = web_syn.clone();
    f.frag = 0x2000;
    v.push(case(
        "VIP: first fragment (MF)",
        f.build(),
        pub0,
        DROP,
        None,
        &[DROP_VIP_FRAGMENT],
    ));
    let mut f = web_syn.clone();
    f.frag = 0x0010;
    v.push(case(
        "VIP: later fragment (offset != 0)",
        f.build(),
        pub0,
        DROP,
        None,
        &[DROP_VIP_FRAGMENT],
    ));
    let mut f = web_syn.clone();
    f.ip_options = vec![1, 1, 1, 0];
    v.push(case(
        "VIP: IPv4 options",
        f.build(),
        pub0,
        DROP,
        None,
        &[DROP_VIP_IP_OPTIONS],
    ));
    let mut f = web_syn.clone();
    f.proto = 1;
    v.push(case(
        "VIP: ICMP",
        f.build(),
        pub0,
        PASS,
        None,
        &[PASS_VIP_NON_TCP],
    ));
    let mut f = web_syn.clone();
    f.tot_len_override = Some(30);
    f.truncate_to = Some(44);
    v.push(case(
        "VIP: truncated TCP header",
        f.build(),
        pub0,
        DROP,
        None,
        &[DROP_MALFORMED_TCP],
    ));
    let mut f = web_syn.clone();
    f.doff_override = Some(4);
    v.push(case(
        "VIP: TCP data offset 4",
        f.build(),
        pub0,
        DROP,
        None,
        &[DROP_MALFORMED_TCP],
    ));
    let mut f = web_syn.clone();
    f.doff_override = Some(15);
    v.push(case(
        "VIP: TCP data offset beyond the packet",
        f.build(),
        pub0,
        DROP,
        None,
        &[DROP_MALFORMED_TCP],
    ));
    v.push(case(
        "VIP: port without a service",
        syn(CLIENT_A, 40000, 9999).build(),
        pub0,
        PASS,
        None,
        &[PASS_VIP_NO_SERVICE],
    ));
    let mut f = web_syn.clone();
    f.ttl = 1;
    v.push(case(
        "VIP: SYN with TTL 1",
        f.build(),
        pub0,
        PASS,
        None,
        &[PASS_TTL_EXCEEDED],
    ));
    for (what, extra) in [("FIN", tcp_flags::FIN), ("RST", tcp_flags::RST)] {
        let odd = web_syn.clone().with_flags(tcp_flags::SYN | extra, b"");
        v.push(case(
            format!("VIP: SYN+{what} without a conntrack entry opens no flow (malformed)"),
            odd.build(),
            pub0,
            DROP,
            None,
            &[DROP_MALFORMED_TCP],
        ));
    }
    let ack_a = web_syn.clone().with_flags(tcp_flags::ACK, b"");
    v.push(case(
        "VIP: ACK without a conntrack entry",
        ack_a.build(),
        pub0,
        DROP,
        None,
        &[DROP_NO_CONNTRACK],
    ));

    // --- A flow through the web service, both directions. ---
    let first = maglev_pick(&WEB_TABLE, CLIENT_A, 40000, 80);
    let other = 3 - first;
    let (be_addr, be_mac) = backend_of(first);
    let port_a = snat_candidate(CLIENT_A, 40000, 80, 0, PORT_MIN, PORT_MAX);
    let fwd_macs = Some((PRIV_MAC, be_mac));
    let len_syn = good.len() as u64;
    v.push(
        case(
            format!("web SYN -> backend {first} (Maglev) via SNAT port {port_a}"),
            good.clone(),
            pub0,
            REDIRECT,
            Some(to_backend(&web_syn, be_addr, BE_PORT, port_a, fwd_macs)),
            &[NEW_FLOW, FWD_TO_BACKEND],
        )
        .check(move |dp| {
            let s = dp.service_stats(0).map_err(|e| e.to_string())?;
            let b = dp.backend_stats(first).map_err(|e| e.to_string())?;
            if s.new_flows != 1 || s.packets_in != 1 || s.bytes_in != len_syn || b.new_flows != 1 {
                return Err(format!(
                    "stats after the first SYN: service {s:?} backend {b:?}"
                ));
            }
            let e = find_entry(dp, &tcp_key(CLIENT_A, 40000, VIP, 80)).ok_or("no forward entry")?;
            let r =
                find_entry(dp, &tcp_key(be_addr, BE_PORT, SNAT, port_a)).ok_or("no reply entry")?;
            if e.flags != 0
                || r.flags != FLOW_F_REPLY
                || e.state != tcp_state::SYN_SENT
                || r.state != tcp_state::SYN_SENT
                || r.new_dst_addr_be != be(CLIENT_A)
                || r.new_src_addr_be != be(VIP)
            {
                return Err(format!("entries after SYN: forward {e:?} reply {r:?}"));
            }
            Ok(())
        }),
    );
    v.push(case(
        "a retransmitted SYN (flow still SYN-only) keeps its backend and SNAT port",
        good.clone(),
        pub0,
        REDIRECT,
        Some(to_backend(&web_syn, be_addr, BE_PORT, port_a, fwd_macs)),
        &[FWD_TO_BACKEND],
    ));
    v.push(
        case(
            "web ACK of the same flow -> same backend and port",
            ack_a.build(),
            pub0,
            REDIRECT,
            Some(to_backend(&ack_a, be_addr, BE_PORT, port_a, fwd_macs)),
            &[FWD_TO_BACKEND],
        )
        .check(|dp| {
            let e = find_entry(dp, &tcp_key(CLIENT_A, 40000, VIP, 80)).ok_or("no forward entry")?;
            // The backend has not answered yet: the handshake is still at SYN_SENT.
            if e.state != tcp_state::SYN_SENT {
                return Err(format!("forward entry left SYN_SENT: {e:?}"));
            }
            Ok(())
        }),
    );
    let mut synack = TcpFrame::syn(be_mac, PRIV_MAC, be_addr, BE_PORT, SNAT, port_a);
    synack.flags = tcp_flags::SYN | tcp_flags::ACK;
    synack.ack = web_syn.seq.wrapping_add(1);
    let mut back = synack.clone();
    back.src = VIP;
    back.sport = 80;
    back.dst = CLIENT_A;
    back.dport = 40000;
    back.src_mac = PUB_MAC;
    back.dst_mac = ROUTER_MAC;
    back.ttl -= 1;
    v.push(
        case(
            "reply SYN-ACK backend -> SNAT is rewritten to VIP -> client",
            synack.build(),
            priv0,
            REDIRECT,
            Some(back.build()),
            &[FWD_TO_CLIENT],
        )
        .check(move |dp| {
            let r =
                find_entry(dp, &tcp_key(be_addr, BE_PORT, SNAT, port_a)).ok_or("no reply entry")?;
            let s = dp.service_stats(0).map_err(|e| e.to_string())?;
            if r.state != tcp_state::SYN_RECV || s.packets_out != 1 {
                return Err(format!("reply entry {r:?}, service stats {s:?}"));
            }
            Ok(())
        }),
    );
    let mut reply_ttl1 = synack.clone();
    reply_ttl1.ttl = 1;
    v.push(case(
        "reply with TTL 1",
        reply_ttl1.build(),
        priv0,
        PASS,
        None,
        &[PASS_TTL_EXCEEDED],
    ));
    let mut reply_bad = synack.clone();
    reply_bad.doff_override = Some(3);
    v.push(case(
        "reply with TCP data offset 3",
        reply_bad.build(),
        priv0,
        DROP,
        None,
        &[DROP_MALFORMED_TCP],
    ));

    // --- Maglev change, drain, FIN, backend down. ---
    let data_a = ack_a
        .clone()
        .with_flags(tcp_flags::ACK | tcp_flags::PSH, b"GET / HTTP/1.0\r\n\r\n");
    v.push(
        case(
            "after a Maglev change the tracked flow stays on its backend",
            data_a.build(),
            pub0,
            REDIRECT,
            Some(to_backend(&data_a, be_addr, BE_PORT, port_a, fwd_macs)),
            &[FWD_TO_BACKEND],
        )
        .setup(move |dp| set_table(dp, 0, &[other; TABLE as usize])),
    );
    let syn_b = syn(CLIENT_B, 41000, 80);
    let (other_addr, other_mac) = backend_of(other);
    let port_b = snat_candidate(CLIENT_B, 41000, 80, 0, PORT_MIN, PORT_MAX);
    v.push(case(
        format!("a new flow after the change goes to backend {other}"),
        syn_b.build(),
        pub0,
        REDIRECT,
        Some(to_backend(
            &syn_b,
            other_addr,
            BE_PORT,
            port_b,
            Some((PRIV_MAC, other_mac)),
        )),
        &[NEW_FLOW, FWD_TO_BACKEND],
    ));
    v.push(
        case(
            "a draining backend keeps its flow",
            data_a.build(),
            pub0,
            REDIRECT,
            Some(to_backend(&data_a, be_addr, BE_PORT, port_a, fwd_macs)),
            &[FWD_TO_BACKEND],
        )
        .setup(move |dp| backend(dp, first, be_addr, BE_PORT, 0, BACKEND_F_DRAINING)),
    );
    let fin_a = data_a
        .clone()
        .with_flags(tcp_flags::FIN | tcp_flags::ACK, b"");
    v.push(
        case(
            "FIN is forwarded and moves both entries to FIN_WAIT",
            fin_a.build(),
            pub0,
            REDIRECT,
            Some(to_backend(&fin_a, be_addr, BE_PORT, port_a, fwd_macs)),
            &[FWD_TO_BACKEND],
        )
        .check(move |dp| {
            let e = find_entry(dp, &tcp_key(CLIENT_A, 40000, VIP, 80)).ok_or("no forward entry")?;
            let r =
                find_entry(dp, &tcp_key(be_addr, BE_PORT, SNAT, port_a)).ok_or("no reply entry")?;
            if e.state != tcp_state::FIN_WAIT || r.state != tcp_state::FIN_WAIT || e.close_dir != 0
            {
                return Err(format!("not FIN_WAIT: {e:?} {r:?}"));
            }
            Ok(())
        }),
    );
    v.push(
        case(
            "backend down with reset: a non-SYN of its flow is answered with a RST",
            data_a.build(),
            pub0,
            TX,
            Some(rst_for_ack(&data_a)),
            &[TX_RST_DOWN_CLIENT],
        )
        .setup(move |dp| {
            backend(
                dp,
                first,
                be_addr,
                BE_PORT,
                0,
                BACKEND_F_DOWN | BACKEND_F_RESET,
            )
        })
        .check(move |dp| {
            let r = find_entry(dp, &tcp_key(be_addr, BE_PORT, SNAT, port_a))
                .ok_or("the reset flow's reply entry vanished (the backend would get no RST)")?;
            let f = find_entry(dp, &tcp_key(CLIENT_A, 40000, VIP, 80))
                .ok_or("the reset flow's forward entry vanished")?;
            if (f.state, f.close_dir, r.state, r.close_dir)
                != (tcp_state::CLOSE, 1, tcp_state::CLOSE, 1)
            {
                return Err(format!("not CLOSE as if the backend reset it: {f:?} {r:?}"));
            }
            Ok(())
        }),
    );
    v.push(case(
        format!("a SYN on the port of the reset flow is a new connection: balanced to {other}"),
        good.clone(),
        pub0,
        REDIRECT,
        Some(to_backend(
            &web_syn,
            other_addr,
            BE_PORT,
            port_a,
            Some((PRIV_MAC, other_mac)),
        )),
        &[CT_SYN_REUSE, NEW_FLOW, FWD_TO_BACKEND],
    ));

    // --- Refusals. ---
    let mut syn81 = syn(CLIENT_A, 40001, 81);
    syn81.payload = b"early data".to_vec();
    syn81.trailer = vec![0; 6];
    v.push(
        case(
            "SYN to a service flagged no-backend is answered with RST+ACK",
            syn81.build(),
            pub0,
            TX,
            Some(rst_for(&syn81)),
            &[TX_RST_NO_BACKEND],
        )
        .check(|dp| {
            let s = dp.service_stats(1).map_err(|e| e.to_string())?;
            if s.refused != 1 {
                return Err(format!("refused = {}", s.refused));
            }
            Ok(())
        }),
    );
    let syn82 = syn(CLIENT_A, 40002, 82);
    v.push(case(
        "SYN whose Maglev slot holds backend 0 gets RST+ACK",
        syn82.build(),
        pub0,
        TX,
        Some(rst_for(&syn82)),
        &[TX_RST_NO_BACKEND],
    ));

    // --- Forwarding outcomes. ---
    let s83 = syn(CLIENT_A, 40003, 83);
    let p83 = snat_candidate(CLIENT_A, 40003, 83, 0, PORT_MIN, PORT_MAX);
    v.push(case(
        "backend without a neighbour entry: rewritten packet passed (TTL kept)",
        s83.build(),
        pub0,
        PASS,
        Some(to_backend(&s83, BE_NO_NEIGH, 80, p83, None)),
        &[NEW_FLOW, PASS_FIB_NO_NEIGH],
    ));
    let s84 = syn(CLIENT_A, 40004, 84);
    let p84 = snat_candidate(CLIENT_A, 40004, 84, 0, PORT_MIN, PORT_MAX);
    v.push(case(
        "backend without a route: dropped",
        s84.build(),
        pub0,
        DROP,
        Some(to_backend(&s84, BE_NO_ROUTE, 80, p84, None)),
        &[NEW_FLOW, DROP_FIB_FAILED],
    ));
    let s85 = syn(CLIENT_A, 40005, 85);
    let p85 = snat_candidate(CLIENT_A, 40005, 85, 0, PORT_MIN, PORT_MAX);
    v.push(case(
        "backend behind the ingress interface: XDP_TX",
        s85.build(),
        pub0,
        TX,
        Some(to_backend(&s85, BE_TX, 80, p85, Some((PUB_MAC, BE_TX_MAC)))),
        &[NEW_FLOW, FWD_TO_BACKEND],
    ));
    let s86 = syn(CLIENT_A, 40006, 86);
    let p86 = snat_candidate(CLIENT_A, 40006, 86, 0, PORT_MIN, PORT_MAX);
    let _ = (SIDE_MAC, BE_SIDE_MAC);
    v.push(case(
        "egress interface not in LB_TX_PORTS: rewritten packet passed",
        s86.build(),
        pub0,
        PASS,
        Some(to_backend(&s86, BE_SIDE, 80, p86, None)),
        &[NEW_FLOW, PASS_NO_TX_PORT],
    ));
    // --- The next hop cached in the conntrack entry (flow s83, backend 10.20.0.99). ---
    let ack83 = s83.clone().with_flags(tcp_flags::ACK, b"");
    let key83 = tcp_key(CLIENT_A, 40003, VIP, 83);
    v.push(
        case(
            "no neighbour is not cached: the flow's next packet asks the FIB again",
            ack83.build(),
            pub0,
            PASS,
            Some(to_backend(&ack83, BE_NO_NEIGH, 80, p83, None)),
            &[PASS_FIB_NO_NEIGH],
        )
        .check(move |dp| {
            let e = find_entry(dp, &key83).ok_or("no forward entry")?;
            if e.next_hop_max_len != 0 {
                return Err(format!("a failed lookup left a next hop: {e:?}"));
            }
            Ok(())
        }),
    );
    let ack83_len = (ack83.build().len() - 14) as u16;
    v.push(
        case(
            "the neighbour appears: forwarded, and the next hop is cached in the entry",
            ack83.build(),
            pub0,
            REDIRECT,
            Some(to_backend(
                &ack83,
                BE_NO_NEIGH,
                80,
                p83,
                Some((PRIV_MAC, NEIGH_MAC_1)),
            )),
            &[FWD_TO_BACKEND],
        )
        .setup(|_| set_neighbour("10.20.0.99", Some(NEIGH_MAC_1)))
        .check(move |dp| {
            let e = find_entry(dp, &key83).ok_or("no forward entry")?;
            if e.next_hop_max_len != ack83_len
                || e.next_hop_dst_mac != NEIGH_MAC_1
                || e.next_hop_src_mac != PRIV_MAC
                || e.next_hop_ifindex != priv0
            {
                return Err(format!("next hop not cached: {e:?}"));
            }
            Ok(())
        }),
    );
    v.push(
        case(
            "a neighbour change within the refresh interval: the cached MAC is still used",
            ack83.build(),
            pub0,
            REDIRECT,
            Some(to_backend(
                &ack83,
                BE_NO_NEIGH,
                80,
                p83,
                Some((PRIV_MAC, NEIGH_MAC_1)),
            )),
            &[FWD_TO_BACKEND],
        )
        .setup(|_| set_neighbour("10.20.0.99", Some(NEIGH_MAC_2))),
    );
    v.push(
        case(
            "after the refresh interval the next hop is re-validated: the new MAC is used",
            ack83.build(),
            pub0,
            REDIRECT,
            Some(to_backend(
                &ack83,
                BE_NO_NEIGH,
                80,
                p83,
                Some((PRIV_MAC, NEIGH_MAC_2)),
            )),
            &[FWD_TO_BACKEND],
        )
        .setup(move |dp| {
            // Age the entry past FLOW_TOUCH_INTERVAL_NS instead of sleeping a second.
            let mut e = find_entry(dp, &key83).expect("forward entry of flow 83");
            e.last_seen_ns = e.last_seen_ns.saturating_sub(2 * FLOW_TOUCH_INTERVAL_NS);
            dp.set_conntrack_entry(&key83, &e).unwrap();
        })
        .check(move |dp| {
            let e = find_entry(dp, &key83).ok_or("no forward entry")?;
            if e.next_hop_dst_mac != NEIGH_MAC_2 || e.next_hop_max_len != ack83_len {
                return Err(format!("next hop not re-validated: {e:?}"));
            }
            Ok(())
        }),
    );
    let big83 = s83
        .clone()
        .with_flags(tcp_flags::ACK | tcp_flags::PSH, &[0x55; 200]);
    v.push(
        case(
            "a packet longer than the cached next hop was validated for asks the FIB (MTU): \
             answered with frag-needed",
            big83.build(),
            pub0,
            TX,
            Some(icmp::frag_needed_for(&big83, 100)),
            &[TX_ICMP_FRAG_NEEDED],
        )
        .setup(|_| set_mtu("priv0", 100))
        .check(move |dp| {
            set_mtu("priv0", 1500);
            set_neighbour("10.20.0.99", None);
            let e = find_entry(dp, &key83).ok_or("no forward entry")?;
            if e.next_hop_max_len != 0 {
                return Err(format!("a failed lookup left a next hop: {e:?}"));
            }
            Ok(())
        }),
    );
    v.push(case(
        "service whose table lies outside LB_MAGLEV: aborted",
        syn(CLIENT_A, 40007, 87).build(),
        pub0,
        ABORTED_ACT,
        None,
        &[ABORTED],
    ));

    // --- SNAT: no address, collisions, exhaustion, expired reuse (service 88, one backend). ---
    v.push(
        case(
            "no SNAT address configured",
            syn(CLIENT_A, 40008, 88).build(),
            pub0,
            DROP,
            None,
            &[DROP_SNAT_EXHAUSTED],
        )
        .setup(|dp| {
            dp.set_global_config(&GlobalConfig {
                snat_addr_count: 0,
                ..base_config()
            })
            .unwrap()
        }),
    );
    let (lo, hi) = (30000u16, 30001u16);
    let tiny = move |dp: &mut BpfDataplane| {
        dp.set_global_config(&GlobalConfig {
            snat_port_min: lo,
            snat_port_max: hi,
            ..base_config()
        })
        .unwrap()
    };
    let s_c = syn(CLIENT_C, 42000, 88);
    let pc = snat_candidate(CLIENT_C, 42000, 88, 0, lo, hi);
    v.push(
        case(
            format!("two-port SNAT range: first flow gets port {pc}"),
            s_c.build(),
            pub0,
            REDIRECT,
            Some(to_backend(&s_c, BE2, 9000, pc, Some((PRIV_MAC, BE2_MAC)))),
            &[NEW_FLOW, FWD_TO_BACKEND],
        )
        .setup(tiny),
    );
    // A second client whose first candidate is the same port.
    let sport_d = (43000u16..44000)
        .find(|p| snat_candidate(CLIENT_C, *p, 88, 0, lo, hi) == pc)
        .expect("a colliding source port exists");
    let s_d = syn(CLIENT_C, sport_d, 88);
    let pd = snat_candidate(CLIENT_C, sport_d, 88, 1, lo, hi);
    assert_ne!(pd, pc);
    v.push(case(
        format!("SNAT collision: second flow moves from port {pc} to {pd}"),
        s_d.build(),
        pub0,
        REDIRECT,
        Some(to_backend(&s_d, BE2, 9000, pd, Some((PRIV_MAC, BE2_MAC)))),
        &[NEW_FLOW, FWD_TO_BACKEND],
    ));
    let s_e = syn(CLIENT_C, 45000, 88);
    v.push(case(
        "SNAT exhaustion: every candidate port is live",
        s_e.build(),
        pub0,
        DROP,
        None,
        &[DROP_SNAT_EXHAUSTED, SNAT_POOL_FULL],
    ));
    let pe = snat_candidate(CLIENT_C, 45000, 88, 0, lo, hi);
    v.push(
        case(
            format!("expired flows free their SNAT port {pe} for reuse"),
            s_e.build(),
            pub0,
            REDIRECT,
            Some(to_backend(&s_e, BE2, 9000, pe, Some((PRIV_MAC, BE2_MAC)))),
            &[NEW_FLOW, FWD_TO_BACKEND],
        )
        .setup(move |dp| {
            dp.set_global_config(&GlobalConfig {
                snat_port_min: lo,
                snat_port_max: hi,
                tcp_timeouts_ns: {
                    let mut t = base_config().tcp_timeouts_ns;
                    t[tcp_state::SYN_SENT as usize] = 1;
                    t
                },
                ..base_config()
            })
            .unwrap();
            // Let the SYN-only flows age past the 1 ns timeout on the data plane's coarse
            // clock (it advances once per scheduler tick: up to 10 ms at HZ=100).
            std::thread::sleep(std::time::Duration::from_millis(25));
        })
        .check(move |dp| {
            let r = find_entry(dp, &tcp_key(BE2, 9000, SNAT, pe)).ok_or("no reply entry")?;
            if r.new_dst_addr_be != be(CLIENT_C) || r.new_dst_port_be != 45000u16.to_be() {
                return Err(format!("port {pe} not taken over by the new flow: {r:?}"));
            }
            Ok(())
        }),
    );
    v
}

fn run_cases(dp: &mut BpfDataplane, cases: Vec<Case>) -> Vec<String> {
    let mut failures = Vec::new();
    for (i, c) in cases.into_iter().enumerate() {
        if !c.keep_snat_window {
            dp.clear_snat_full().unwrap();
        }
        if let Some(s) = &c.setup {
            s(dp);
        }
        let before = dp.global_counters().unwrap();
        let res = match dp.test_run(&c.input, Some(c.ingress), 1) {
            Ok(r) => r,
            Err(e) => {
                println!("[FAIL] {i:2} {}", c.name);
                failures.push(format!("case {i} ({}): test run failed: {e}", c.name));
                continue;
            }
        };
        let after = dp.global_counters().unwrap();
        let mut problems = Vec::new();
        if res.verdict != c.verdict {
            problems.push(format!("verdict {} (want {})", res.verdict, c.verdict));
        }
        if res.output != c.output {
            problems.push(format!(
                "output differs:\n      got  {}\n      want {}",
                hex(&res.output),
                hex(&c.output)
            ));
        }
        for idx in 0..NUM_COUNTERS as usize {
            let want = c.counters.iter().filter(|&&x| x as usize == idx).count() as u64;
            let got = after[idx] - before[idx];
            if got != want {
                problems.push(format!(
                    "counter {} += {got} (want {want})",
                    COUNTER_NAMES[idx]
                ));
            }
        }
        if let Some(check) = &c.check {
            if let Err(e) = check(dp) {
                problems.push(e);
            }
        }
        let status = if problems.is_empty() { "ok  " } else { "FAIL" };
        println!("[{status}] {i:2} {}", c.name);
        if !problems.is_empty() {
            failures.push(format!(
                "case {i} ({}):\n    {}",
                c.name,
                problems.join("\n    ")
            ));
        }
    }
    failures
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn packet_fixtures() {
    require_root();
    let ns = FixtureNetns::create();
    setup_network(&ns);
    let ifs = Ifs {
        pub0: ns.ifindex("pub0"),
        priv0: ns.ifindex("priv0"),
    };
    let failures = ns.run_inside(move || {
        let opts = LoadOptions {
            max_services: 16,
            max_backends: 32,
            maglev_table_size: TABLE,
            conntrack_flows: 1024,
            embryonic_flows: 1024,
            pin_root: None,
        };
        let mut dp =
            BpfDataplane::load(&opts).unwrap_or_else(|e| panic!("loading the data plane: {e}"));
        populate(&mut dp, &ifs);
        let mut cases = cases(&ifs);
        cases.extend(icmp::icmp_cases(&ifs));
        assert!(
            cases.len() >= 30,
            "the fixture table must have at least 30 cases"
        );
        cases.extend(lifecycle::cases(&ifs));
        cases.extend(backend_down::cases(&ifs));
        cases.extend(failover::cases(&ifs));
        cases.extend(prefilter::cases(&ifs));
        cases.extend(refresh::cases(&ifs));
        cases.extend(retry::cases(&ifs));
        cases.extend(dsr::cases(&ifs));
        cases.extend(snat_pool::cases(&ifs));
        let mut failures = run_cases(&mut dp, cases);
        // Every verdict and event counter must have been exercised, except the one the kernel
        // cannot be made to produce on an LRU map (insert failure) and the unused placeholders.
        let totals = dp.global_counters().unwrap();
        for (idx, name) in COUNTER_NAMES.iter().enumerate() {
            let expect_zero = idx as u32 == DROP_CONNTRACK_FULL || name.starts_with("reserved_");
            if expect_zero != (totals[idx] == 0) {
                failures.push(format!(
                    "counter {name} total {} after all cases",
                    totals[idx]
                ));
            }
        }
        failures
    });
    assert!(
        failures.is_empty(),
        "{} fixture failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// `LB_LOCAL_ADDRS` keeps room for a reload that replaces every SNAT address while every
/// service has its own VIP: `set_snat_addrs` adds the new addresses before it removes the old
/// ones (make-before-break), so for a moment the map holds old and new. Sized for
/// `max_services + MAX_SNAT_ADDRS` the second call failed (map full) and the reload was
/// rolled back.
#[test]
fn local_addrs_hold_a_full_snat_replacement() {
    require_root();
    let ns = FixtureNetns::create();
    ns.run_inside(|| {
        let opts = LoadOptions {
            max_services: 2,
            max_backends: 8,
            maglev_table_size: TABLE,
            conntrack_flows: 64,
            embryonic_flows: 64,
            pin_root: None,
        };
        let mut dp = BpfDataplane::load(&opts).unwrap();
        for last in [10u8, 11] {
            dp.set_vip(
                be(Ipv4Addr::new(192, 0, 2, last)),
                &VipValue {
                    service_count: 1,
                    flags: 0,
                },
            )
            .unwrap();
        }
        let n = lb_common::MAX_SNAT_ADDRS as u8;
        let old: Vec<Ipv4Addr> = (1..=n).map(|i| Ipv4Addr::new(10, 1, 0, i)).collect();
        let new: Vec<Ipv4Addr> = (1..=n).map(|i| Ipv4Addr::new(10, 2, 0, i)).collect();
        dp.set_snat_addrs(&old).unwrap();
        dp.set_snat_addrs(&new)
            .expect("replacing every SNAT address must fit in LB_LOCAL_ADDRS");
        assert_eq!(dp.local_addrs().unwrap().len(), 2 + usize::from(n));
    });
}

static SIGNALS_HANDLED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

extern "C" fn count_signal(_: libc::c_int) {
    SIGNALS_HANDLED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// The verifier gives up with `EAGAIN` when a signal is pending for the loading thread, and
/// lb_xdp takes about a second to verify; aya does not retry that. A process that handles
/// signals (lbd handles SIGHUP and SIGTERM, the test harness's tokio runtimes SIGCHLD) could
/// fail to start on a busy host: CI once failed building the lab this way. Here a burst of
/// handled signals hits the loading thread during its first attempts; the load must still
/// succeed (`dataplane::transient` retries EAGAIN with a back-off).
#[test]
fn load_survives_signals_during_verification() {
    require_root();
    let ns = FixtureNetns::create();
    ns.run_inside(|| {
        // SAFETY: installs a handler that only bumps an atomic counter (async-signal-safe).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = count_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
        }
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let burst = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let start = std::time::Instant::now();
                while start.elapsed() < std::time::Duration::from_millis(150)
                    && !stop.load(std::sync::atomic::Ordering::Relaxed)
                {
                    // SAFETY: `me` is alive: the loading thread waits for this thread's join.
                    unsafe { libc::pthread_kill(me, libc::SIGUSR1) };
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            })
        };
        let opts = LoadOptions {
            max_services: 1,
            max_backends: 2,
            maglev_table_size: TABLE,
            conntrack_flows: 16,
            embryonic_flows: 16,
            pin_root: None,
        };
        let loaded = BpfDataplane::load(&opts);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        burst.join().unwrap();
        let handled = SIGNALS_HANDLED.load(std::sync::atomic::Ordering::Relaxed);
        assert!(handled > 0, "no signal reached the loading thread");
        if let Err(e) = loaded {
            panic!("loading under {handled} handled signals failed: {e}");
        }
    });
}

#[test]
fn test_run_reports_duration_and_repeats() {
    require_root();
    let ns = FixtureNetns::create();
    setup_network(&ns);
    let ifs = Ifs {
        pub0: ns.ifindex("pub0"),
        priv0: ns.ifindex("priv0"),
    };
    ns.run_inside(move || {
        let opts = LoadOptions {
            max_services: 16,
            max_backends: 32,
            maglev_table_size: TABLE,
            conntrack_flows: 1024,
            embryonic_flows: 1024,
            pin_root: None,
        };
        let mut dp = BpfDataplane::load(&opts).unwrap();
        populate(&mut dp, &ifs);
        // An ACK without a flow is dropped unmodified, so every repetition takes the same path.
        let f = syn(CLIENT_A, 50000, 80)
            .with_flags(tcp_flags::ACK, b"")
            .build();
        let r = dp.test_run(&f, Some(ifs.pub0), 1000).unwrap();
        assert_eq!(r.verdict, DROP);
        assert_eq!(r.output, f);
        assert!(
            r.duration_ns > 0 && r.duration_ns < 1_000_000,
            "duration {} ns",
            r.duration_ns
        );
        let c = dp.global_counters().unwrap();
        assert_eq!(c[DROP_NO_CONNTRACK as usize], 1000);
        assert_eq!(c.iter().sum::<u64>(), 1000);
        assert!(
            dp.test_run(&f, None, 0).is_err(),
            "repeat 0 must be refused"
        );
        // Frames shorter than an Ethernet header cannot be fed to the program: the kernel
        // refuses them, so the data plane's short-frame check is only reachable on real NICs.
        assert!(dp.test_run(&f[..10], None, 1).is_err());
        // Without an ingress ifindex the program runs against the namespace's loopback.
        let r = dp.test_run(&f, None, 1).unwrap();
        assert_eq!(r.verdict, DROP);
    });
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[test]
fn conntrack_sweep_counts_and_expires_pairs() {
    require_root();
    let ns = FixtureNetns::create();
    setup_network(&ns);
    let ifs = Ifs {
        pub0: ns.ifindex("pub0"),
        priv0: ns.ifindex("priv0"),
    };
    ns.run_inside(move || {
        let opts = LoadOptions {
            max_services: 16,
            max_backends: 32,
            maglev_table_size: TABLE,
            conntrack_flows: 1024,
            embryonic_flows: 1024,
            pin_root: None,
        };
        let mut dp = BpfDataplane::load(&opts).unwrap();
        populate(&mut dp, &ifs);
        for sport in [51000u16, 51001, 51002] {
            let r = dp
                .test_run(&syn(CLIENT_A, sport, 80).build(), Some(ifs.pub0), 1)
                .unwrap();
            assert_eq!(r.verdict, REDIRECT);
        }
        let cfg = base_config();
        let live = dp.sweep_conntrack(monotonic_ns(), &cfg).unwrap();
        assert_eq!(live.expired_removed, 0);
        assert_eq!(live.entries, 6);
        assert_eq!(live.flows_by_service.get(&0), Some(&3));
        let per_backend: u64 = live.flows_by_backend.values().sum();
        assert_eq!(per_backend, 3);
        // Full-NAT flows per destination: the forward entries (here embryonic, in LB_CT_SYN)
        // by VIP:port; what keeps lbd from flagging the VIP DSR-only.
        assert_eq!(
            live.nat_flows_by_dest,
            std::collections::HashMap::from([(std::net::SocketAddrV4::new(VIP, 80), 3)])
        );
        // Refresh one reply entry as of `later`: its pair must survive (the SNAT port is still
        // in use) while the two fully expired pairs go.
        let syn_timeout = cfg.tcp_timeouts_ns[tcp_state::SYN_SENT as usize];
        let later = monotonic_ns() + syn_timeout + 1_000_000_000;
        let (rkey, mut rentry) = dp
            .conntrack_entries()
            .unwrap()
            .into_iter()
            .find(|(_, e)| e.flags & FLOW_F_REPLY != 0 && e.new_dst_port_be == 51001u16.to_be())
            .expect("reply entry of the second flow");
        rentry.last_seen_ns = later;
        dp.set_conntrack_entry(&rkey, &rentry).unwrap();
        let partial = dp.sweep_conntrack(later, &cfg).unwrap();
        assert_eq!(partial.expired_removed, 4, "{partial:?}");
        assert_eq!(partial.entries, 2);
        // The forward entry is stale but its partner is fresh: the flow is live (one direction
        // alone keeps a pair alive, docs/maps.md) and counted.
        assert_eq!(partial.flows_by_service.get(&0), Some(&1), "{partial:?}");
        assert_eq!(
            partial.nat_flows_by_dest,
            std::collections::HashMap::from([(std::net::SocketAddrV4::new(VIP, 80), 1)])
        );
        let all = dp.sweep_conntrack(later + syn_timeout + 1, &cfg).unwrap();
        assert_eq!(all.expired_removed, 2, "{all:?}");
        assert_eq!(all.entries, 0);
        assert!(all.nat_flows_by_dest.is_empty(), "{all:?}");
        assert!(dp.conntrack_entries().unwrap().is_empty());
    });
}

/// The sweep counts one SNAT port per live reply entry for its backend endpoint
/// (address:port), in both maps: established pairs in `LB_CONNTRACK` and handshakes in
/// progress in `LB_CT_SYN` (the reservation holds the port); expired pairs free theirs.
#[test]
fn conntrack_sweep_counts_snat_ports_per_backend_endpoint() {
    require_root();
    let ns = FixtureNetns::create();
    setup_network(&ns);
    let ifs = Ifs {
        pub0: ns.ifindex("pub0"),
        priv0: ns.ifindex("priv0"),
    };
    ns.run_inside(move || {
        let opts = LoadOptions {
            max_services: 16,
            max_backends: 32,
            maglev_table_size: TABLE,
            conntrack_flows: 1024,
            embryonic_flows: 1024,
            pin_root: None,
        };
        let mut dp = BpfDataplane::load(&opts).unwrap();
        populate(&mut dp, &ifs);
        let cfg = base_config();
        // An established flow CLIENT_C:53000 -> BE1:8080 from SNAT port PORT_MAX, written
        // first so that no SYN below can pick its port.
        let fwd_key = tcp_key(CLIENT_C, 53000, VIP, 80);
        let reply_key = tcp_key(BE1, BE_PORT, SNAT, PORT_MAX);
        dp.set_conntrack_entry(&fwd_key, &hot_entry(SNAT, PORT_MAX, BE1, BE_PORT, 0))
            .unwrap();
        dp.set_conntrack_entry(
            &reply_key,
            &hot_entry(VIP, 80, CLIENT_C, 53000, FLOW_F_REPLY),
        )
        .unwrap();
        let mut want: std::collections::HashMap<std::net::SocketAddrV4, u64> =
            [(std::net::SocketAddrV4::new(BE1, BE_PORT), 1)].into();
        // Seven SYNs to service 0 (BE1:8080 or BE2:8080 by Maglev) and one to service 8
        // (BE2:9000: same address, another endpoint).
        for sport in 51000u16..51007 {
            let r = dp
                .test_run(&syn(CLIENT_A, sport, 80).build(), Some(ifs.pub0), 1)
                .unwrap();
            assert_eq!(r.verdict, REDIRECT);
            let (addr, _) = backend_of(maglev_pick(&WEB_TABLE, CLIENT_A, sport, 80));
            *want
                .entry(std::net::SocketAddrV4::new(addr, BE_PORT))
                .or_default() += 1;
        }
        let r = dp
            .test_run(&syn(CLIENT_B, 52000, 88).build(), Some(ifs.pub0), 1)
            .unwrap();
        assert_eq!(r.verdict, REDIRECT);
        want.insert(std::net::SocketAddrV4::new(BE2, 9000), 1);
        let live = dp.sweep_conntrack(monotonic_ns(), &cfg).unwrap();
        assert_eq!(live.entries, 18, "{live:?}");
        let got: std::collections::HashMap<_, u64> = live
            .snat_ports()
            .into_iter()
            .map(|(e, c)| {
                // One SNAT address: its count is the whole count.
                assert_eq!(c.busiest_address, c.in_use, "{e}");
                (e, c.in_use)
            })
            .collect();
        assert_eq!(got, want, "{live:?}");
        assert!(
            live.snat_ports_by_address.keys().all(|(_, a)| *a == SNAT),
            "{live:?}"
        );
        // Past the SYN timeout the handshakes expire and free their ports; the established
        // flow keeps its one.
        let syn_timeout = cfg.tcp_timeouts_ns[tcp_state::SYN_SENT as usize];
        let later = monotonic_ns() + syn_timeout + 1_000_000_000;
        assert!(cfg.tcp_timeouts_ns[tcp_state::ESTABLISHED as usize] > syn_timeout + 2_000_000_000);
        let after = dp.sweep_conntrack(later, &cfg).unwrap();
        assert_eq!(after.expired_removed, 16, "{after:?}");
        let left: Vec<_> = after
            .snat_ports()
            .into_iter()
            .map(|(e, c)| (e, c.in_use))
            .collect();
        assert_eq!(left, vec![(std::net::SocketAddrV4::new(BE1, BE_PORT), 1)]);
    });
}

/// A SYN flood from spoofed sources fills only the embryonic map: an established flow in a
/// conntrack map that the flood would have overflowed many times keeps both entries and its
/// backend. (Before LB_CT_SYN, SYN-only and established flows shared one LRU.)
#[test]
fn syn_flood_never_evicts_an_established_flow() {
    require_root();
    let ns = FixtureNetns::create();
    setup_network(&ns);
    let ifs = Ifs {
        pub0: ns.ifindex("pub0"),
        priv0: ns.ifindex("priv0"),
    };
    ns.run_inside(move || {
        let opts = LoadOptions {
            max_services: 16,
            max_backends: 32,
            maglev_table_size: TABLE,
            conntrack_flows: 1024,
            embryonic_flows: 256,
            pin_root: None,
        };
        let mut dp = BpfDataplane::load(&opts).unwrap();
        populate(&mut dp, &ifs);
        let s = syn(CLIENT_A, 52000, 80);
        let be_id = maglev_pick(&WEB_TABLE, CLIENT_A, 52000, 80);
        let (be_addr, be_mac) = backend_of(be_id);
        let port = snat_candidate(CLIENT_A, 52000, 80, 0, PORT_MIN, PORT_MAX);
        let mut synack = TcpFrame::syn(be_mac, PRIV_MAC, be_addr, BE_PORT, SNAT, port);
        synack.flags = tcp_flags::SYN | tcp_flags::ACK;
        let ack = s.clone().with_flags(tcp_flags::ACK, b"");
        for (f, ingress) in [
            (s.build(), ifs.pub0),
            (synack.build(), ifs.priv0),
            (ack.build(), ifs.pub0),
        ] {
            assert_eq!(dp.test_run(&f, Some(ingress), 1).unwrap().verdict, REDIRECT);
        }
        let fkey = tcp_key(CLIENT_A, 52000, VIP, 80);
        let rkey = tcp_key(be_addr, BE_PORT, SNAT, port);
        // 8 x the whole conntrack map's capacity in spoofed SYNs.
        let flood = 8 * 2 * opts.conntrack_flows;
        for i in 0..flood {
            let src = Ipv4Addr::from(0x6440_0000 | (i >> 4));
            let f = syn(src, 1024 + (i & 0xf) as u16 * 97, 80).build();
            let r = dp.test_run(&f, Some(ifs.pub0), 1).unwrap();
            // Forwarded, or dropped when its 16 SNAT port candidates are taken.
            assert!(r.verdict == REDIRECT || r.verdict == DROP, "flood SYN {i}");
        }
        let c = dp.global_counters().unwrap();
        assert!(
            c[NEW_FLOW as usize] > u64::from(flood) / 2,
            "only {} of {flood} flood SYNs became flows",
            c[NEW_FLOW as usize]
        );
        let embryonic = dp.embryonic_entries().unwrap().len() as u32;
        assert!(
            embryonic <= 2 * opts.embryonic_flows,
            "{embryonic} embryonic entries"
        );
        let f = find_entry(&dp, &fkey).expect("the established forward entry was evicted");
        let r = find_entry(&dp, &rkey).expect("the established reply entry was evicted");
        assert_eq!(f.state, tcp_state::ESTABLISHED);
        assert_eq!(r.state, tcp_state::ESTABLISHED);
        let data = ack.with_flags(tcp_flags::ACK | tcp_flags::PSH, b"still here");
        let before = dp.global_counters().unwrap();
        let out = dp.test_run(&data.build(), Some(ifs.pub0), 1).unwrap();
        assert_eq!(out.verdict, REDIRECT);
        assert_eq!(
            out.output,
            to_backend(&data, be_addr, BE_PORT, port, Some((PRIV_MAC, be_mac)))
        );
        let after = dp.global_counters().unwrap();
        assert_eq!(after[NEW_FLOW as usize], before[NEW_FLOW as usize]);
    });
}

#[test]
fn pinned_maps_and_links_survive_reload_and_unload_removes_them() {
    use lb::dataplane::{AttachedMode, XdpMode};
    require_root();
    let ns = FixtureNetns::create();
    setup_network(&ns);
    let root =
        std::path::PathBuf::from(format!("/sys/fs/bpf/lb-fixture-pin-{}", std::process::id()));
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = BpfDataplane::unload(&self.0);
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(root.clone());
    ns.run_inside(move || {
        let xdp_state = || {
            let out = std::process::Command::new("ip")
                .args(["-d", "link", "show", "pub0"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).to_string()
        };
        let opts = LoadOptions {
            max_services: 4,
            max_backends: 8,
            maglev_table_size: TABLE,
            conntrack_flows: 64,
            embryonic_flows: 64,
            pin_root: Some(root.clone()),
        };
        let mut dp = BpfDataplane::load(&opts).unwrap();
        let key = ServiceKey {
            vip_be: be(VIP),
            port_be: 80u16.to_be(),
            proto: IPPROTO_TCP,
            _pad: 0,
        };
        dp.set_service(
            &key,
            &ServiceValue {
                service_id: 1,
                table_offset: 0,
                table_size: TABLE,
                flags: 0,
                forwarding: FORWARDING_NAT,
                dsr_src_be: 0,
            },
        )
        .unwrap();
        assert_eq!(
            dp.attach("pub0", XdpMode::Generic).unwrap(),
            AttachedMode::Generic
        );
        let dir = root.join(format!("abi{ABI_VERSION}"));
        assert!(dir.join("links/pub0").exists());
        for name in ALL_MAPS {
            assert!(dir.join(name).exists(), "{name} not pinned");
        }
        drop(dp);
        assert!(
            xdp_state().contains("xdpgeneric"),
            "the pinned link must keep the program attached: {}",
            xdp_state()
        );

        // Re-adoption: the service written by the first instance is still there, and attaching
        // again replaces the program through the pinned link (keeping its generic mode).
        let mut dp = BpfDataplane::load(&opts).unwrap();
        assert_eq!(
            dp.services().unwrap(),
            vec![(
                key,
                ServiceValue {
                    service_id: 1,
                    table_offset: 0,
                    table_size: TABLE,
                    flags: 0,
                    forwarding: FORWARDING_NAT,
                    dsr_src_be: 0,
                }
            )]
        );
        assert_eq!(
            dp.attach("pub0", XdpMode::Auto).unwrap(),
            AttachedMode::Generic
        );
        drop(dp);

        // Different limits against the pinned maps: a clear error naming the fix.
        let err = BpfDataplane::load(&LoadOptions {
            conntrack_flows: 128,
            embryonic_flows: 64,
            ..opts.clone()
        })
        .err()
        .expect("size mismatch must fail");
        let msg = err.to_string();
        assert!(
            msg.contains("LB_CONNTRACK") && msg.contains("lbd --unload"),
            "{msg}"
        );

        BpfDataplane::unload(&root).unwrap();
        assert!(!dir.exists());
        assert!(
            !root.exists(),
            "the empty pin root {} is left behind",
            root.display()
        );
        assert!(
            !xdp_state().contains("xdp"),
            "still attached after unload: {}",
            xdp_state()
        );
        // Unloading twice is fine.
        BpfDataplane::unload(&root).unwrap();
        // A pin root that holds something else is kept (only lb's abi directory goes).
        let dp = BpfDataplane::load(&opts).unwrap();
        drop(dp);
        let other = root.join("someone-else");
        std::fs::create_dir(&other).unwrap();
        BpfDataplane::unload(&root).unwrap();
        assert!(!dir.exists() && other.exists());
        std::fs::remove_dir(&other).unwrap();
        std::fs::remove_dir(&root).unwrap();
    });
}

#[test]
fn attach_takes_over_the_link_of_another_abi_version() {
    use lb::dataplane::{AttachedMode, XdpMode};
    require_root();
    let ns = FixtureNetns::create();
    setup_network(&ns);
    let root =
        std::path::PathBuf::from(format!("/sys/fs/bpf/lb-fixture-abi-{}", std::process::id()));
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = BpfDataplane::unload(&self.0);
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(root.clone());
    ns.run_inside(move || {
        let prog_id = || {
            let out = std::process::Command::new("ip")
                .args(["-d", "link", "show", "pub0"])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            text.split_whitespace()
                .skip_while(|w| *w != "id")
                .nth(1)
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or_else(|| panic!("no XDP program id on pub0: {text}"))
        };
        let opts = LoadOptions {
            max_services: 4,
            max_backends: 8,
            maglev_table_size: TABLE,
            conntrack_flows: 64,
            embryonic_flows: 64,
            pin_root: Some(root.clone()),
        };
        // An lbd of the previous ABI version left its program attached through a pinned link
        // (made here by pinning with this build and renaming its directory).
        let mut dp = BpfDataplane::load(&opts).unwrap();
        assert_eq!(
            dp.attach("pub0", XdpMode::Generic).unwrap(),
            AttachedMode::Generic
        );
        drop(dp);
        let own = root.join(format!("abi{ABI_VERSION}"));
        let old = root.join(format!("abi{}", ABI_VERSION - 1));
        std::fs::rename(&own, &old).unwrap();
        let old_prog = prog_id();

        // The new build attaches: the kernel would refuse a second attachment, so it takes the
        // old link over and replaces its program, in the mode the link had.
        let mut dp = BpfDataplane::load(&opts).unwrap();
        let got = dp.attach("pub0", XdpMode::Auto);
        assert_eq!(
            got.as_ref().map_err(|e| e.to_string()),
            Ok(&AttachedMode::Generic),
            "attaching over another ABI version's link"
        );
        assert_eq!(prog_id(), dp.xdp_program_id().unwrap());
        assert_ne!(prog_id(), old_prog);
        assert!(own.join("links/pub0").exists());
        assert!(!old.exists(), "the other version's pin directory is left");
        drop(dp);
        // Still attached through the pin; unload removes every version's directory.
        let dp = BpfDataplane::load(&opts).unwrap();
        drop(dp);
        std::fs::create_dir_all(old.join("links")).unwrap();
        BpfDataplane::unload(&root).unwrap();
        assert!(!own.exists() && !old.exists());
        let out = std::process::Command::new("ip")
            .args(["-d", "link", "show", "pub0"])
            .output()
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("xdp"),
            "still attached after unload"
        );
    });
}

#[test]
fn unpinned_attach_native_auto_and_pass_program() {
    use lb::dataplane::{AttachedMode, XdpMode};
    require_root();
    let ns = FixtureNetns::create();
    setup_network(&ns);
    ns.run_inside(|| {
        let opts = LoadOptions {
            max_services: 4,
            max_backends: 8,
            maglev_table_size: TABLE,
            conntrack_flows: 64,
            embryonic_flows: 64,
            pin_root: None,
        };
        let mut dp = BpfDataplane::load(&opts).unwrap();
        // veth supports driver mode: Auto must pick native without falling back.
        assert_eq!(
            dp.attach("priv0", XdpMode::Auto).unwrap(),
            AttachedMode::Native
        );
        assert_eq!(
            dp.attach_pass("priv0p", XdpMode::Native).unwrap(),
            AttachedMode::Native
        );
        let err = dp
            .attach("nosuchdev0", XdpMode::Auto)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("nosuchdev0") && err.contains("interfaces"),
            "{err}"
        );
        let show = |dev: &str| {
            let out = std::process::Command::new("ip")
                .args(["-d", "link", "show", dev])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).to_string()
        };
        assert!(
            show("priv0").contains("prog/xdp") && show("priv0p").contains("prog/xdp"),
            "{}",
            show("priv0")
        );
        drop(dp);
        // Unpinned links go away with the data plane.
        assert!(!show("priv0").contains("prog/xdp"), "{}", show("priv0"));
        assert!(!show("priv0p").contains("prog/xdp"), "{}", show("priv0p"));
    });
}

// ---------------------------------------------------------------------------------------------
// Hot-path cost: a measurement, not a check (ignored by default). It times each packet path of
// `lb_xdp` with `repeat` > 1 by making the program's own output the next run's input:
// crafted conntrack entry pairs whose rewrites ping-pong (forward -> forward, reply -> reply,
// forward -> reply -> forward), and a SYN chain whose backend is the VIP itself, so every
// rewritten SYN is again a new flow. TTL 255 allows 250 forwarded runs per call; each call's
// counter deltas are checked, so a run that left its path is an error, not a number.
//
// Run: cargo test --release -p lb-tests --test fixtures hot_path_cost -- --ignored --nocapture
// Env: LB_HOT_FILL=<conntrack entries to pre-fill, default 0>, LB_HOT_ROUNDS=<default 5>,
// LB_HOT_FLOWS=<conntrack size in flows, default DEFAULT_CONNTRACK_FLOWS>,
// LB_HOT_EMBRYONIC=<embryonic map size in flows, default 1024>, LB_HOT_FILTER_OFF=1 (each
// object also with the conntrack key filter off),
// LB_HOT_OBJECT=<comma-separated paths of lb-ebpf builds to compare instead of the embedded
// one>, LB_HOT_NOCHECK=1 (skip the counter checks: for scratch builds that cut a path short),
// LB_HOT_CASES=<comma-separated substrings of case names: measure only those cases, e.g.
// "SYN chain" for the ablation builds of lb-ebpf/src/ablate.rs>.
// ---------------------------------------------------------------------------------------------

/// Runs per test-run call (TTL 255 leaves 254 forwarded runs on one buffer).
const HOT_REPEAT: u32 = 250;
/// Calls per case per round.
const HOT_CALLS: u32 = 100;
/// The SYN-chain service: port 89 on the VIP, whose only backend is VIP:89 itself.
const CHAIN_PORT: u16 = 89;
const CHAIN_ID: u32 = 9;
const CHAIN_SNAT_COUNT: u32 = 16;
const CHAIN_PORT_MIN: u16 = 1024;
const CHAIN_PORT_MAX: u16 = 65535;

fn chain_snat(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 20, 0, 100 + i as u8)
}

fn chain_config() -> GlobalConfig {
    GlobalConfig {
        snat_port_min: CHAIN_PORT_MIN,
        snat_port_max: CHAIN_PORT_MAX,
        snat_addr_count: CHAIN_SNAT_COUNT,
        ..base_config()
    }
}

/// The conntrack keys (forward, reply) a SYN chain of `n` runs starting at `(src, sport)`
/// creates, or `None` if the chain revisits a tuple (it would leave the new-flow path).
fn syn_chain(src: Ipv4Addr, sport: u16, n: u32) -> Option<Vec<FlowKey>> {
    let mut seen = std::collections::HashSet::new();
    let mut keys = Vec::new();
    let (mut a, mut p) = (src, sport);
    seen.insert((a, p));
    for _ in 0..n {
        let h = flow_hash(
            be(a),
            be(VIP),
            p.to_be(),
            CHAIN_PORT.to_be(),
            SEED ^ SNAT_SEED_XOR,
        );
        let na = chain_snat(h % CHAIN_SNAT_COUNT);
        let np = snat_port_candidate(
            snat_port_base(be(a), p.to_be(), SEED ^ SNAT_SEED_XOR),
            0,
            CHAIN_PORT_MIN,
            CHAIN_PORT_MAX,
        );
        keys.push(tcp_key(a, p, VIP, CHAIN_PORT));
        keys.push(tcp_key(VIP, CHAIN_PORT, na, np));
        if !seen.insert((na, np)) {
            return None;
        }
        (a, p) = (na, np);
    }
    Some(keys)
}

fn hot_entry(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u32) -> FlowEntry {
    FlowEntry {
        state: tcp_state::ESTABLISHED,
        last_seen_ns: monotonic_ns(),
        new_src_addr_be: be(src),
        new_dst_addr_be: be(dst),
        new_src_port_be: sport.to_be(),
        new_dst_port_be: dport.to_be(),
        backend_id: 1,
        service_id: 0,
        flags,
        ..FlowEntry::default()
    }
}

/// One measured case: name, frame, ingress, counters each run adds (per run, averaged over
/// the call), and whether it runs the pass program (harness floor).
struct HotCase {
    name: &'static str,
    frame: Vec<u8>,
    ingress: u32,
    /// (counter, runs per call that must hit it)
    expect: Vec<(u32, u64)>,
    pass_program: bool,
    syn_chain: bool,
}

fn hot_measure(dp: &mut BpfDataplane, c: &HotCase, calls: u32) -> Result<f64, String> {
    let mut total_ns = 0u128;
    let mut runs = 0u64;
    let mut start_port = 2000u16;
    for _ in 0..calls {
        let mut frame = c.frame.clone();
        let mut chain_keys = None;
        if c.syn_chain {
            // Find a start port whose chain stays on the new-flow path for the whole call.
            let keys = loop {
                start_port = start_port.wrapping_add(1).max(2000);
                if let Some(k) = syn_chain(chain_snat(0), start_port, HOT_REPEAT) {
                    break k;
                }
            };
            let mut f = TcpFrame::syn(ROUTER_MAC, PUB_MAC, chain_snat(0), start_port, VIP, 89);
            f.ttl = 255;
            frame = f.build();
            chain_keys = Some(keys);
        }
        let before = dp.global_counters().unwrap();
        let r = if c.pass_program {
            dp.test_run_pass(&frame, Some(c.ingress), HOT_REPEAT)
        } else {
            dp.test_run(&frame, Some(c.ingress), HOT_REPEAT)
        }
        .map_err(|e| e.to_string())?;
        let after = dp.global_counters().unwrap();
        if !c.pass_program && std::env::var_os("LB_HOT_NOCHECK").is_none() {
            let mut want = [0u64; NUM_COUNTERS as usize];
            for &(idx, n) in &c.expect {
                want[idx as usize] += n;
            }
            for idx in 0..NUM_COUNTERS as usize {
                if after[idx] - before[idx] != want[idx] {
                    return Err(format!(
                        "{}: counter {} += {} (want {})",
                        c.name,
                        COUNTER_NAMES[idx],
                        after[idx] - before[idx],
                        want[idx]
                    ));
                }
            }
        }
        if let Some(keys) = chain_keys {
            let check = std::env::var_os("LB_HOT_NOCHECK").is_none();
            for k in keys {
                match dp.remove_conntrack_entry(&k) {
                    Err(e) if check => return Err(format!("{}: chain entry {k:?}: {e}", c.name)),
                    _ => {}
                }
            }
        }
        total_ns += u128::from(r.duration_ns) * u128::from(HOT_REPEAT);
        runs += u64::from(HOT_REPEAT);
    }
    Ok(total_ns as f64 / runs as f64)
}

/// Loads one build of the data plane (`object`; the embedded one when `None`) and installs
/// the hot-path scenario: the SYN-chain service, `fill` unrelated flows, and the ping-pong
/// entry pairs.
fn hot_dataplane(ifs: &Ifs, object: Option<&[u8]>, fill: u32, flows: u32) -> BpfDataplane {
    let opts = LoadOptions {
        max_services: 16,
        max_backends: 32,
        maglev_table_size: TABLE,
        conntrack_flows: flows,
        embryonic_flows: env_number("LB_HOT_EMBRYONIC", 1024) as u32,
        pin_root: None,
    };
    let mut dp = match object {
        Some(obj) => BpfDataplane::load_object(&opts, obj),
        None => BpfDataplane::load(&opts),
    }
    .unwrap_or_else(|e| panic!("loading the data plane: {e}"));
    populate(&mut dp, ifs);
    dp.set_global_config(&chain_config()).unwrap();
    let snats: Vec<Ipv4Addr> = (0..CHAIN_SNAT_COUNT).map(chain_snat).collect();
    dp.set_snat_addrs(&snats).unwrap();
    backend(&mut dp, CHAIN_ID, VIP, CHAIN_PORT, CHAIN_ID, 0);
    service(&mut dp, CHAIN_ID, CHAIN_PORT, 0, None);
    set_table(&mut dp, CHAIN_ID, &[CHAIN_ID; TABLE as usize]);

    // Pre-fill with unrelated flows (sources in 100.64.0.0/10, never used by a case).
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..fill {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let src = Ipv4Addr::from(0x6440_0000 | (x as u32 & 0x003f_ffff));
        let k = tcp_key(src, (x >> 32) as u16, BE1, (x >> 48) as u16);
        dp.set_conntrack_entry(&k, &hot_entry(SNAT, 1, BE1, 8080, 0))
            .unwrap();
    }

    let est = 0;
    let rep = FLOW_F_REPLY;
    let pairs = [
        // Forward ping-pong: A:40000 <-> A:40001, both to VIP:80.
        (
            tcp_key(CLIENT_A, 40000, VIP, 80),
            hot_entry(CLIENT_A, 40001, VIP, 80, est),
        ),
        (
            tcp_key(CLIENT_A, 40001, VIP, 80),
            hot_entry(CLIENT_A, 40000, VIP, 80, est),
        ),
        // Reply ping-pong: B:8080 -> A:50001 <-> B:8080 -> A:50002 (out of pub0).
        (
            tcp_key(CLIENT_B, 8080, CLIENT_A, 50001),
            hot_entry(CLIENT_B, 8080, CLIENT_A, 50002, rep),
        ),
        (
            tcp_key(CLIENT_B, 8080, CLIENT_A, 50002),
            hot_entry(CLIENT_B, 8080, CLIENT_A, 50001, rep),
        ),
        // A real flow pair: C:40000 -> VIP:80 becomes SNAT:30000 -> BE1:8080, and that tuple
        // is looked up as the reply and rewritten back to C:40000 -> VIP:80.
        (
            tcp_key(CLIENT_C, 40000, VIP, 80),
            hot_entry(SNAT, 30000, BE1, BE_PORT, est),
        ),
        (
            tcp_key(SNAT, 30000, BE1, BE_PORT),
            hot_entry(CLIENT_C, 40000, VIP, 80, rep),
        ),
    ];
    for (k, e) in pairs {
        dp.set_conntrack_entry(&k, &e).unwrap();
    }
    // The reply ping-pong's and the real pair's reply entries are keyed by CLIENT_A and BE1:
    // they pass the address pre-filter only when marked local, as a SNAT address is.
    for a in [CLIENT_A, BE1] {
        dp.add_local_addr(be(a), LOCAL_F_SNAT).unwrap();
    }
    dp
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v}: expected a number"))
        })
        .unwrap_or(default)
}

#[test]
#[ignore = "measurement; run explicitly with --ignored --nocapture"]
fn hot_path_cost() {
    require_root();
    let fill = env_number("LB_HOT_FILL", 0) as u32;
    let rounds = env_number("LB_HOT_ROUNDS", 5) as usize;
    let flows = env_number("LB_HOT_FLOWS", u64::from(DEFAULT_CONNTRACK_FLOWS)) as u32;
    let objects: Vec<(String, Option<Vec<u8>>)> = match std::env::var("LB_HOT_OBJECT") {
        Ok(list) => list
            .split(',')
            .map(|path| {
                let obj = std::fs::read(path)
                    .unwrap_or_else(|e| panic!("LB_HOT_OBJECT: cannot read {path}: {e}"));
                (path.rsplit('/').next().unwrap().to_string(), Some(obj))
            })
            .collect(),
        Err(_) => vec![("embedded".to_string(), None)],
    };
    // LB_HOT_FILTER_OFF=1: each object twice, the second with the conntrack key filter off.
    let filter_off = std::env::var("LB_HOT_FILTER_OFF").is_ok_and(|v| v == "1");
    let objects: Vec<(String, Option<Vec<u8>>, bool)> = objects
        .into_iter()
        .flat_map(|(name, obj)| {
            let off = filter_off.then(|| (format!("{name}/no-filter"), obj.clone(), true));
            std::iter::once((name, obj, false)).chain(off)
        })
        .collect();
    let ns = FixtureNetns::create();
    setup_network(&ns);
    // Rewritten packets addressed to the VIP (forward ping-pong, SYN chain) leave via priv0.
    ns.ip(&[
        "route",
        "add",
        "192.0.2.0/24",
        "via",
        "10.20.0.11",
        "dev",
        "priv0",
    ]);
    let ifs = Ifs {
        pub0: ns.ifindex("pub0"),
        priv0: ns.ifindex("priv0"),
    };
    ns.run_inside(move || {
        let mut dps: Vec<BpfDataplane> = objects
            .iter()
            .map(|(_, obj, off)| {
                let dp = hot_dataplane(&ifs, obj.as_deref(), fill, flows);
                if *off {
                    dp.ct_filter().expect("the key filter is mapped").turn_off();
                }
                dp
            })
            .collect();
        let ack = |src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16| {
            let mut f = TcpFrame::syn(ROUTER_MAC, PUB_MAC, src, sport, dst, dport)
                .with_flags(tcp_flags::ACK, b"");
            f.ttl = 255;
            f.build()
        };
        let n = u64::from(HOT_REPEAT);
        let hot = |name, frame, ingress, expect| HotCase {
            name,
            frame,
            ingress,
            expect,
            pass_program: false,
            syn_chain: false,
        };
        let cases = [
            HotCase {
                pass_program: true,
                ..hot(
                    "harness floor (lb_xdp_pass)",
                    ack(CLIENT_A, 40000, VIP, 80),
                    ifs.pub0,
                    vec![],
                )
            },
            hot(
                "non-VIP TCP, conntrack miss",
                ack(CLIENT_A, 40000, Ipv4Addr::new(10, 10, 0, 1), 22),
                ifs.pub0,
                vec![(PASS_NOT_SERVICE, n)],
            ),
            hot(
                "established forward (fwd -> fwd)",
                ack(CLIENT_A, 40000, VIP, 80),
                ifs.pub0,
                vec![(FWD_TO_BACKEND, n)],
            ),
            hot(
                "established reply (reply -> reply)",
                ack(CLIENT_B, 8080, CLIENT_A, 50001),
                ifs.priv0,
                vec![(FWD_TO_CLIENT, n)],
            ),
            hot(
                "established pair (fwd -> reply -> fwd)",
                ack(CLIENT_C, 40000, VIP, 80),
                ifs.pub0,
                vec![(FWD_TO_BACKEND, n / 2), (FWD_TO_CLIENT, n / 2)],
            ),
            HotCase {
                syn_chain: true,
                ..hot(
                    "new flow (SYN chain)",
                    vec![],
                    ifs.pub0,
                    vec![(NEW_FLOW, n), (FWD_TO_BACKEND, n)],
                )
            },
        ];
        let cases: Vec<HotCase> = match std::env::var("LB_HOT_CASES") {
            Ok(want) => cases
                .into_iter()
                .filter(|c| want.split(',').any(|w| c.name.contains(w)))
                .collect(),
            Err(_) => cases.into_iter().collect(),
        };
        assert!(!cases.is_empty(), "LB_HOT_CASES matches no case");
        // results[object][case] = one value per round; objects and cases interleaved.
        let mut results = vec![vec![Vec::new(); cases.len()]; dps.len()];
        for _ in 0..rounds {
            for (o, dp) in dps.iter_mut().enumerate() {
                for (i, c) in cases.iter().enumerate() {
                    let calls = if c.syn_chain {
                        HOT_CALLS / 4
                    } else {
                        HOT_CALLS
                    };
                    let v = hot_measure(dp, c, calls)
                        .unwrap_or_else(|e| panic!("{}: {e}", objects[o].0));
                    results[o][i].push(v);
                }
            }
        }
        println!(
            "hot path: ns per run, conntrack of {flows} flows pre-filled with {fill} entries, {rounds} rounds x \
             {HOT_CALLS} calls x repeat {HOT_REPEAT} (new flow: {} calls), interleaved",
            HOT_CALLS / 4
        );
        for (i, c) in cases.iter().enumerate() {
            println!("{}", c.name);
            for (o, (name, _, _)) in objects.iter().enumerate() {
                let r = &results[o][i];
                let mut s = r.clone();
                s.sort_by(f64::total_cmp);
                println!(
                    "  {name:<14} median {:7.1}  min {:7.1}  (rounds {})",
                    s[s.len() / 2],
                    s[0],
                    r.iter()
                        .map(|v| format!("{v:.1}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
    });
}

/// Every map helper call of `lb_xdp` names its map at verification time, so the verifier
/// inlines the lookup or calls the map type's function directly. A map pointer chosen at run
/// time (e.g. `LB_CONNTRACK` or `LB_CT_SYN` by the table a flow was found in) leaves the call
/// with the generic helper and an indirect call per use; there were 25 such calls (10
/// lookups, 14 deletes, 1 update, all on the conntrack maps) before `conntrack::Table`
/// named each map at its own call site.
#[test]
fn map_calls_are_direct() {
    use lb_tests::fixture::xlated::{helper_calls, GENERIC_MAP_HELPERS};
    require_root();
    let opts = LoadOptions {
        max_services: 16,
        max_backends: 32,
        maglev_table_size: TABLE,
        conntrack_flows: 1024,
        embryonic_flows: 1024,
        pin_root: None,
    };
    let dp = BpfDataplane::load(&opts).unwrap();
    let id = dp.xdp_program_id().unwrap();
    // The reader must see helper calls at all: the FIB lookup is one.
    let fib = helper_calls(id, &["bpf_xdp_fib_lookup"]).unwrap();
    assert!(
        !fib.is_empty(),
        "no bpf_xdp_fib_lookup call found in lb_xdp (id {id})"
    );
    let generic = helper_calls(id, &GENERIC_MAP_HELPERS).unwrap();
    assert!(
        generic.is_empty(),
        "lb_xdp (id {id}) calls generic map helpers (poisoned map pointers) at xlated \
         instructions {generic:?}; `bpftool prog dump xlated id {id}` shows where"
    );
}
