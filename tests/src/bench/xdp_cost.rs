//! Section 1: per-packet cost of `lb_xdp` through `BPF_PROG_TEST_RUN`, as the kernel reports
//! it (ns per run).
//!
//! Cases: a non-VIP packet passed to the stack; a new flow (SYN: service lookup, Maglev,
//! conntrack insert, SNAT port allocation); an established flow forward (ACK) and its reply;
//! each with conntrack holding about 0, 100k and 1M entries. The program runs in a private
//! namespace holding two veth pairs, routes and permanent neighbours, so `bpf_fib_lookup`
//! succeeds and every forward case takes the real fast path to `XDP_REDIRECT`.
//!
//! Rewriting cases are measured two ways:
//! - `repeat = 1` on a fresh frame each time (the value of a round is the mean over its
//!   packets). Each number includes the kernel's timer reads around the single run and a
//!   start right after the syscall; the non-VIP case measured with `repeat = 1` and with one
//!   large `repeat` shows that overhead.
//! - chains with `repeat = 254`: the kernel runs the program again on the buffer the previous
//!   run rewrote, so the bed makes every rewritten packet the next real packet of the same
//!   path. Established: flow `f`'s forward entry rewrites `client_f -> VIP` into
//!   `SNAT_f -> backend_f`; a crafted reply-direction entry keyed by exactly that tuple (the
//!   reply path looks the packet up as is) rewrites it into `client_g -> VIP` of the next flow
//!   `g`, so runs alternate forward and reply lookups over distinct flows. New flow: the
//!   backends' addresses are also VIPs with a service on the backend port, so every rewritten
//!   SYN (`SNAT -> backend:port`) is the SYN of a new flow on the next run. TTL 255 bounds a
//!   chain to 254 forwards; the output frame (TTL 1, expected addresses) and the counter
//!   deltas prove that every run took the intended path.
//!
//! DSR (issue 13): a `forwarding: dsr` service in the same bed, `repeat = 1` with every output
//! compared byte for byte with the expected IPIP frame (a DSR forward prepends an outer header,
//! so it cannot chain); the backend side, `lb_decap`, chained over nested outer headers.

use super::report::{ratio, Goal, Measurement, Section, Target};
use super::stats::interleave;
use super::PrivateDataplane;
use super::Scale;
use crate::lab::packet::{ipv4_frame, tcp_header, Ipv4Spec};
use crate::lab::sys::{ip, ns_run, Netns};
use lb::dataplane::{Dataplane, LoadOptions};
use lb_common::{
    ipv4_to_be, maglev_table_offset, port_to_be, tcp_flags, BackendValue, FlowEntry, FlowKey,
    GlobalConfig, ServiceKey, ServiceValue, VipValue, FLOW_F_REPLY, FORWARDING_DSR, FORWARDING_NAT,
    IPPROTO_TCP,
};
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const VIP_PORT: u16 = 80;
const SNAT: Ipv4Addr = Ipv4Addr::new(10, 9, 255, 1);
/// Four backends and 16 SNAT addresses over ports 1024-65535: 4 x 16 x 64512 = 4M SNAT
/// ports, so filling 500k flows plus 350k new ones never exhausts them (which would turn SYNs
/// into `DROP_SNAT_EXHAUSTED`).
const BACKENDS: [Ipv4Addr; 4] = [
    Ipv4Addr::new(10, 9, 1, 2),
    Ipv4Addr::new(10, 9, 1, 3),
    Ipv4Addr::new(10, 9, 1, 4),
    Ipv4Addr::new(10, 9, 1, 5),
];
const BACKEND_PORT: u16 = 8080;
const CLIENT_GW: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 2);
const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0xa0, 0x01];
const MAC_PEER: [u8; 6] = [0x02, 0, 0, 0, 0xa0, 0x02];
/// `b0`'s own MAC (the source of every frame redirected toward the backends).
const MAC_B0: [u8; 6] = [0x02, 0, 0, 0, 0xb0, 0x01];
/// The DSR service: its VIP (port [`VIP_PORT`]), its service id and the outer source (the
/// node's address on `b0`). It shares the full-NAT service's backends and Maglev table.
const DSR_VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
const DSR_SERVICE_ID: u32 = 2;
const DSR_SRC: Ipv4Addr = Ipv4Addr::new(10, 9, 1, 1);
/// The MAC of backend `i` (0-based): its permanent neighbour entry on `b0`.
fn backend_mac(i: usize) -> [u8; 6] {
    [0x02, 0, 0, 0, 0xb0, 2 + i as u8]
}

/// Conntrack fill levels (entries, two per flow).
pub const LEVELS: [u32; 3] = [0, 100_000, 1_000_000];

/// Label of a fill level.
pub fn level_name(entries: u32) -> String {
    match entries {
        0 => "empty conntrack".into(),
        n if n >= 1_000_000 => format!("{}M entries", n / 1_000_000),
        n => format!("{}k entries", n / 1000),
    }
}

/// The measured cases, in report order.
pub const CASES: [&str; 10] = [
    CASE_FLOOR,
    "non-VIP pass (repeat = N)",
    "non-VIP pass (repeat = 1)",
    CASE_EST_CHAIN,
    CASE_SYN_CHAIN,
    CASE_EST_FWD,
    "established reply (repeat = 1)",
    CASE_SYN,
    CASE_DSR_EST,
    CASE_DSR_SYN,
];

/// Full NAT, established forward, one packet per `BPF_PROG_TEST_RUN`.
pub const CASE_EST_FWD: &str = "established forward (repeat = 1)";
/// Full NAT, new flow, one SYN per `BPF_PROG_TEST_RUN`.
pub const CASE_SYN: &str = "new flow, SYN (repeat = 1)";
/// DSR, a packet of an open flow (an ACK whose flow is pinned in `LB_CT_DSR`: a hit),
/// `repeat = 1`.
pub const CASE_DSR_EST: &str = "DSR established forward, IPIP out (repeat = 1)";
/// DSR, the SYN of a new flow (no `LB_CT_DSR` entry; a SYN writes none), `repeat = 1`.
pub const CASE_DSR_SYN: &str = "DSR new flow, SYN, IPIP out (repeat = 1)";

/// The test-run harness alone: `lb_xdp_pass` (returns `XDP_PASS`), `repeat = N`.
pub const CASE_FLOOR: &str = "harness floor, XDP_PASS-only program (repeat = N)";
/// Established flows, forward and reply alternating, chained with `repeat = CHAIN`.
pub const CASE_EST_CHAIN: &str = "established fwd/reply (chain, repeat = 254)";
/// New flows, each run's rewritten SYN the next new flow, `repeat = CHAIN`.
pub const CASE_SYN_CHAIN: &str = "new flow, SYN (chain, repeat = 254)";

/// Order in which a round measures the cases (indices into [`CASES`]): the `repeat = 1`
/// established and DSR cases (DSR adds no full-NAT conntrack entry; each DSR case empties
/// `LB_CT_DSR` first), the established chain, then the
/// SYN chain (it turns the backends into VIPs, which the established chain's crafted entries
/// must not meet; it adds 10k flows), then the `repeat = 1` SYNs, which grow the table by
/// 700k entries, so every other case sees the nominal fill level.
const MEASURE_ORDER: [usize; 10] = [0, 1, 2, 5, 6, 9, 8, 3, 4, 7];

/// Runs per chained `BPF_PROG_TEST_RUN`: a frame sent with TTL 255 can be forwarded 254 times.
pub const CHAIN: u32 = 254;
/// TTL of chained frames.
const CHAIN_TTL: u8 = 255;
/// Next-hop neighbour for the VIP on `b0` (the crafted reply entries rewrite to `-> VIP`).
const VIP_NEXT_HOP: Ipv4Addr = Ipv4Addr::new(10, 9, 1, 9);

/// Client address and port of flow `i`: 198.18.0.0/15, ports 10000..11023.
fn client_of(i: u32) -> (Ipv4Addr, u16) {
    let base = u32::from(Ipv4Addr::new(198, 18, 0, 0));
    (Ipv4Addr::from(base + (i >> 10)), 10_000 + (i & 1023) as u16)
}

fn tcp_frame(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Vec<u8> {
    ipv4_frame(
        MAC_A,
        MAC_PEER,
        &Ipv4Spec::new(src, dst, IPPROTO_TCP),
        &tcp_header(sport, dport, flags),
    )
}

/// Like [`tcp_frame`] with TTL [`CHAIN_TTL`], for chained runs.
fn chain_frame(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Vec<u8> {
    let mut ip = Ipv4Spec::new(src, dst, IPPROTO_TCP);
    ip.ttl = CHAIN_TTL;
    ipv4_frame(MAC_A, MAC_PEER, &ip, &tcp_header(sport, dport, flags))
}

/// (source, source port, destination, destination port, TTL, TCP flags) of an output frame.
fn frame_tuple(out: &[u8]) -> Result<(Ipv4Addr, u16, Ipv4Addr, u16, u8, u8), String> {
    if out.len() < 54 {
        return Err(format!("a {}-byte output frame", out.len()));
    }
    let a = |o: usize| Ipv4Addr::new(out[o], out[o + 1], out[o + 2], out[o + 3]);
    let p = |o: usize| u16::from_be_bytes([out[o], out[o + 1]]);
    Ok((a(26), p(34), a(30), p(36), out[22], out[47]))
}

/// `CLOCK_MONOTONIC` in ns, the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn flow_key(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> FlowKey {
    FlowKey {
        src_addr_be: ipv4_to_be(src),
        dst_addr_be: ipv4_to_be(dst),
        src_port_be: port_to_be(sport),
        dst_port_be: port_to_be(dport),
        proto: IPPROTO_TCP,
        _pad: [0; 3],
    }
}

/// The rewritten reply tuple of a flow: (backend, backend port, SNAT address, SNAT port).
#[derive(Clone, Copy)]
struct ReplyTuple {
    backend: Ipv4Addr,
    snat: Ipv4Addr,
    snat_port: u16,
}

fn reply_tuple(out: &[u8]) -> ReplyTuple {
    let ip = 14;
    let a = |o: usize| Ipv4Addr::new(out[o], out[o + 1], out[o + 2], out[o + 3]);
    ReplyTuple {
        snat: a(ip + 12),
        backend: a(ip + 16),
        snat_port: u16::from_be_bytes([out[34], out[35]]),
    }
}

/// The private namespace for `bpf_fib_lookup`: `a0` faces the clients (route to
/// 198.18.0.0/15 via a permanent neighbour), `b0` faces the backends.
struct FibNs {
    ns: Netns,
}

impl FibNs {
    fn create() -> Result<FibNs, String> {
        let name = format!("lbbx{}", std::process::id() % 100_000);
        let ns = Netns::create(&name).map_err(|e| e.to_string())?;
        let n = ns.name().to_string();
        let mac_a = "02:00:00:00:a0:01";
        let run = |args: &[&str]| ip(args).map(|_| ()).map_err(|e| e.to_string());
        run(&[
            "-n", &n, "link", "add", "a0", "address", mac_a, "type", "veth", "peer", "name", "a1",
        ])?;
        run(&[
            "-n",
            &n,
            "link",
            "add",
            "b0",
            "address",
            "02:00:00:00:b0:01",
            "type",
            "veth",
            "peer",
            "name",
            "b1",
        ])?;
        for d in ["a0", "a1", "b0", "b1"] {
            run(&["-n", &n, "link", "set", d, "up"])?;
        }
        run(&["-n", &n, "addr", "add", "172.31.0.1/24", "dev", "a0"])?;
        run(&["-n", &n, "addr", "add", "10.9.1.1/24", "dev", "b0"])?;
        run(&[
            "-n",
            &n,
            "neigh",
            "add",
            &CLIENT_GW.to_string(),
            "lladdr",
            "02:00:00:00:a0:02",
            "dev",
            "a0",
            "nud",
            "permanent",
        ])?;
        for (i, b) in BACKENDS.iter().enumerate() {
            let mac = format!("02:00:00:00:b0:{:02x}", i + 2);
            run(&[
                "-n",
                &n,
                "neigh",
                "add",
                &b.to_string(),
                "lladdr",
                &mac,
                "dev",
                "b0",
                "nud",
                "permanent",
            ])?;
        }
        run(&[
            "-n",
            &n,
            "route",
            "add",
            "198.18.0.0/15",
            "via",
            &CLIENT_GW.to_string(),
            "dev",
            "a0",
        ])?;
        // The crafted reply entries of the established chain rewrite to `-> VIP`: route the
        // VIP out of b0, so those runs end in a redirect like a real reply.
        run(&[
            "-n",
            &n,
            "neigh",
            "add",
            &VIP_NEXT_HOP.to_string(),
            "lladdr",
            "02:00:00:00:b0:09",
            "dev",
            "b0",
            "nud",
            "permanent",
        ])?;
        run(&[
            "-n",
            &n,
            "route",
            "add",
            &format!("{VIP}/32"),
            "via",
            &VIP_NEXT_HOP.to_string(),
            "dev",
            "b0",
        ])?;
        ns_run(&n, "sysctl", &["-qw", "net.ipv4.ip_forward=1"]).map_err(|e| e.to_string())?;
        Ok(FibNs { ns })
    }
}

fn enter(ns: &Netns) -> Result<(), String> {
    let f = std::fs::File::open(ns.path()).map_err(|e| format!("opening {}: {e}", ns.name()))?;
    // SAFETY: setns on a valid namespace fd changes only the calling thread's namespace.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(format!("setns: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn ifindex(name: &str) -> Result<u32, String> {
    let c = std::ffi::CString::new(name).expect("no NUL");
    // SAFETY: a valid C string; if_nametoindex only reads it.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(format!("no interface {name}")),
        i => Ok(i),
    }
}

/// A loaded and configured data plane with `flows` established flows.
struct Bed {
    dp: PrivateDataplane,
    a0: u32,
    b0: u32,
    flows: Vec<ReplyTuple>,
    next_new: u32,
    /// The Maglev table of every service (backend ids) and the hash seed: the DSR cases
    /// compute each packet's backend from them.
    table: Vec<u32>,
    seed: u32,
    /// Written before every timed chain so no map entry, program text or TLB entry is left
    /// in the CPU caches from the set-up (twice the 32 MiB L3 of the bench machine).
    thrash: Vec<u8>,
}

/// Bytes of [`Bed::thrash`].
const THRASH_BYTES: usize = 64 << 20;

/// The beds' one full-NAT service: VIP:VIP_PORT (service 0) on the Maglev table already written
/// at offset 0 with `m` slots, its VIP, and the two veth ends as redirect targets.
fn bed_service(
    dp: &mut lb::dataplane::bpf::BpfDataplane,
    m: u32,
    tx_ports: [u32; 2],
) -> Result<(), String> {
    let e = |e: lb::dataplane::DataplaneError| e.to_string();
    dp.set_service(
        &ServiceKey {
            vip_be: ipv4_to_be(VIP),
            port_be: port_to_be(VIP_PORT),
            proto: IPPROTO_TCP,
            _pad: 0,
        },
        &ServiceValue {
            service_id: 0,
            table_offset: maglev_table_offset(0, 0, m),
            table_size: m,
            flags: 0,
            forwarding: FORWARDING_NAT,
            dsr_src_be: 0,
        },
    )
    .map_err(e)?;
    dp.set_vip(
        ipv4_to_be(VIP),
        &VipValue {
            service_count: 1,
            flags: 0,
        },
    )
    .map_err(e)?;
    for port in tx_ports {
        dp.set_tx_port(port).map_err(e)?;
    }
    Ok(())
}

/// The beds' DSR service: [`DSR_VIP`]:[`VIP_PORT`] (service [`DSR_SERVICE_ID`]) over the
/// full-NAT service's Maglev table (same backends), outer source [`DSR_SRC`], its VIP flagged
/// DSR-only.
fn dsr_service(dp: &mut lb::dataplane::bpf::BpfDataplane, m: u32) -> Result<(), String> {
    let e = |e: lb::dataplane::DataplaneError| e.to_string();
    dp.set_service(
        &ServiceKey {
            vip_be: ipv4_to_be(DSR_VIP),
            port_be: port_to_be(VIP_PORT),
            proto: IPPROTO_TCP,
            _pad: 0,
        },
        &ServiceValue {
            service_id: DSR_SERVICE_ID,
            table_offset: maglev_table_offset(0, 0, m),
            table_size: m,
            flags: 0,
            forwarding: FORWARDING_DSR,
            dsr_src_be: ipv4_to_be(DSR_SRC),
        },
    )
    .map_err(e)?;
    // As lbd sets it for a VIP whose services are all DSR: its packets skip the full-NAT
    // conntrack lookups.
    dp.set_vip(
        ipv4_to_be(DSR_VIP),
        &VipValue {
            service_count: 1,
            flags: lb_common::VIP_F_DSR_ONLY,
        },
    )
    .map_err(e)
}

/// The frame `lb_xdp` sends for the client frame `input` of a DSR flow whose backend is
/// `BACKENDS[backend]`: Ethernet `b0` -> the backend's neighbour, the outer IPv4 header (TOS
/// and id copied, DF copied, TTL 64, protocol IPIP, [`DSR_SRC`] -> backend, checksum from
/// scratch), then `input`'s IPv4 packet byte for byte.
fn dsr_expected(input: &[u8], backend: usize) -> Vec<u8> {
    let inner = &input[14..];
    let inner_len = u16::from_be_bytes([inner[2], inner[3]]);
    let mut out = Vec::with_capacity(input.len() + 20);
    out.extend_from_slice(&backend_mac(backend));
    out.extend_from_slice(&MAC_B0);
    out.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut h = vec![0x45, inner[1]];
    h.extend_from_slice(&(inner_len + 20).to_be_bytes());
    h.extend_from_slice(&inner[4..6]);
    h.extend_from_slice(&[inner[6] & 0x40, 0, 64, lb_common::IPPROTO_IPIP, 0, 0]);
    h.extend_from_slice(&DSR_SRC.octets());
    h.extend_from_slice(&BACKENDS[backend].octets());
    let c = crate::lab::packet::inet_checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(inner);
    out
}

fn verdict_name(v: u32) -> &'static str {
    ["ABORTED", "DROP", "PASS", "TX", "REDIRECT"]
        .get(v as usize)
        .copied()
        .unwrap_or("?")
}

fn expect(v: u32, want: u32, what: &str) -> Result<(), String> {
    if v == want {
        Ok(())
    } else {
        Err(format!(
            "{what}: lb_xdp answered XDP_{} instead of XDP_{}",
            verdict_name(v),
            verdict_name(want)
        ))
    }
}

/// The bed's load options: the defaults, but `LB_BENCH_EMBRYONIC_FLOWS` (an ablation knob,
/// docs/benchmarks.md "The conntrack key filter") sets the embryonic map's size.
fn bed_options() -> Result<LoadOptions, String> {
    let mut o = LoadOptions::default();
    if let Ok(v) = std::env::var("LB_BENCH_EMBRYONIC_FLOWS") {
        o.embryonic_flows = v
            .parse()
            .map_err(|_| format!("LB_BENCH_EMBRYONIC_FLOWS={v}: expected a number of flows"))?;
    }
    Ok(o)
}

impl Bed {
    fn new(entries: u32) -> Result<Bed, String> {
        let mut pdp = PrivateDataplane::load(&bed_options()?)?;
        let dp = pdp.get_mut();
        let a0 = ifindex("a0")?;
        let b0 = ifindex("b0")?;
        let e = |e: lb::dataplane::DataplaneError| e.to_string();
        let snat: Vec<Ipv4Addr> = (0..lb_common::MAX_SNAT_ADDRS)
            .map(|i| Ipv4Addr::from(u32::from(SNAT) + i))
            .collect();
        let cfg = GlobalConfig {
            snat_addr_count: lb_common::MAX_SNAT_ADDRS,
            snat_port_max: u16::MAX,
            ..GlobalConfig::default()
        };
        dp.set_global_config(&cfg).map_err(e)?;
        dp.set_snat_addrs(&snat).map_err(e)?;
        let mut mb = Vec::new();
        for (i, b) in BACKENDS.iter().enumerate() {
            let id = i as u32 + 1;
            dp.set_backend(
                id,
                &BackendValue {
                    addr_be: ipv4_to_be(*b),
                    port_be: port_to_be(BACKEND_PORT),
                    service_id: 0,
                    ..BackendValue::default()
                },
            )
            .map_err(e)?;
            mb.push(lb::maglev::MaglevBackend {
                identity: format!("{b}:{BACKEND_PORT}"),
                weight: 1,
                id,
            });
        }
        let m = lb_common::DEFAULT_MAGLEV_TABLE_SIZE;
        let table = lb::maglev::build_table(&mb, m).map_err(|e| e.to_string())?;
        dp.write_maglev(maglev_table_offset(0, 0, m), &table)
            .map_err(e)?;
        bed_service(dp, m, [a0, b0])?;
        dsr_service(dp, m)?;
        let mut bed = Bed {
            dp: pdp,
            a0,
            b0,
            flows: Vec::new(),
            next_new: 0,
            table,
            seed: cfg.hash_seed,
            thrash: vec![0u8; THRASH_BYTES],
        };
        // At least one established flow, so the established cases have something to hit.
        let flows = (entries / 2).max(1);
        for _ in 0..flows {
            let t = bed.syn()?.1;
            let i = bed.next_new - 1;
            let (c, p) = client_of(i);
            // The backend's SYN-ACK, so the client's ACK completes the handshake and the flow
            // is ESTABLISHED in LB_CONNTRACK (a SYN_SENT flow would expire after syn_timeout).
            let synack = tcp_frame(
                t.backend,
                BACKEND_PORT,
                t.snat,
                t.snat_port,
                tcp_flags::SYN | tcp_flags::ACK,
            );
            let r = bed
                .dp
                .test_run(&synack, Some(bed.b0), 1)
                .map_err(|e| e.to_string())?;
            expect(r.verdict, XDP_REDIRECT, "SYN-ACK (fill)")?;
            let r = bed
                .dp
                .test_run(&tcp_frame(c, p, VIP, VIP_PORT, tcp_flags::ACK), Some(a0), 1)
                .map_err(|e| e.to_string())?;
            expect(r.verdict, XDP_REDIRECT, "established forward (fill)")?;
            bed.flows.push(t);
        }
        Ok(bed)
    }

    /// One new flow; returns the kernel's ns and the flow's reply tuple.
    fn syn(&mut self) -> Result<(u64, ReplyTuple), String> {
        let (c, p) = client_of(self.next_new);
        self.next_new += 1;
        let r = self
            .dp
            .test_run(
                &tcp_frame(c, p, VIP, VIP_PORT, tcp_flags::SYN),
                Some(self.a0),
                1,
            )
            .map_err(|e| e.to_string())?;
        expect(r.verdict, XDP_REDIRECT, "new flow (SYN)")?;
        Ok((r.duration_ns, reply_tuple(&r.output)))
    }

    /// Mean ns/packet of case `CASES[case]` over `packets` packets (`repeat = 1` cases) or
    /// `chains` chained calls of [`CHAIN`] runs each.
    fn measure(&mut self, case: usize, packets: u32, chains: u32) -> Result<f64, String> {
        let n = self.flows.len();
        let stride = self.stride();
        let mut total: u64 = 0;
        match case {
            0 => {
                let f = tcp_frame(client_of(0).0, 5555, BACKENDS[0], 22, tcp_flags::ACK);
                let r = self
                    .dp
                    .test_run_pass(&f, Some(self.a0), packets)
                    .map_err(|e| e.to_string())?;
                expect(r.verdict, XDP_PASS, "harness floor")?;
                return Ok(r.duration_ns as f64);
            }
            1 => {
                let f = tcp_frame(client_of(0).0, 5555, BACKENDS[0], 22, tcp_flags::ACK);
                let r = self
                    .dp
                    .test_run(&f, Some(self.a0), packets)
                    .map_err(|e| e.to_string())?;
                expect(r.verdict, XDP_PASS, "non-VIP")?;
                return Ok(r.duration_ns as f64);
            }
            2 => {
                let f = tcp_frame(client_of(0).0, 5555, BACKENDS[0], 22, tcp_flags::ACK);
                for _ in 0..packets {
                    let r = self
                        .dp
                        .test_run(&f, Some(self.a0), 1)
                        .map_err(|e| e.to_string())?;
                    expect(r.verdict, XDP_PASS, "non-VIP")?;
                    total += r.duration_ns;
                }
            }
            3 => return self.established_chain(chains),
            4 => return self.syn_chain(chains),
            5 => {
                for k in 0..packets as usize {
                    let i = ((k * stride) % n) as u32;
                    let (c, p) = client_of(i);
                    let f = tcp_frame(c, p, VIP, VIP_PORT, tcp_flags::ACK);
                    let r = self
                        .dp
                        .test_run(&f, Some(self.a0), 1)
                        .map_err(|e| e.to_string())?;
                    expect(r.verdict, XDP_REDIRECT, "established forward")?;
                    total += r.duration_ns;
                }
            }
            8 => return self.dsr(packets, tcp_flags::ACK),
            9 => return self.dsr(packets, tcp_flags::SYN),
            6 => {
                for k in 0..packets as usize {
                    let t = self.flows[(k * stride) % n];
                    let f = tcp_frame(t.backend, BACKEND_PORT, t.snat, t.snat_port, tcp_flags::ACK);
                    let r = self
                        .dp
                        .test_run(&f, Some(self.b0), 1)
                        .map_err(|e| e.to_string())?;
                    expect(r.verdict, XDP_REDIRECT, "established reply")?;
                    total += r.duration_ns;
                }
            }
            _ => {
                for _ in 0..packets {
                    total += self.syn()?.0;
                }
            }
        }
        Ok(total as f64 / f64::from(packets))
    }

    /// `packets` packets of distinct DSR flows (client `client_of(k)` -> [`DSR_VIP`], TCP flags
    /// `flags`), one `BPF_PROG_TEST_RUN` each; returns the mean ns per packet. `LB_CT_DSR` is
    /// emptied first; for SYNs that is the state measured (a new flow: a miss, and a SYN writes
    /// no entry); for ACKs an unmeasured pass first pins every flow (the handshake's ACK
    /// writes its entry), so the measured pass is what an open flow's packets do (a hit).
    /// Every output must be exactly the encapsulated frame toward the flow's Maglev backend
    /// (computed here from the table and `flow_hash`), and the counters of the measured pass
    /// must show every packet on the DSR path: `FWD_DSR` + packets, `NEW_FLOW` unchanged (no
    /// full-NAT conntrack), `CT_DSR_NEW` unchanged (SYNs write no entry, ACKs hit theirs), the
    /// DSR service's packets + packets and new flows + packets for SYNs, + 0 otherwise.
    fn dsr(&mut self, packets: u32, flags: u8) -> Result<f64, String> {
        let what = if flags == tcp_flags::SYN {
            "DSR new flow"
        } else {
            "DSR established forward"
        };
        let e = |e: lb::dataplane::DataplaneError| e.to_string();
        self.dp.clear_dsr().map_err(e)?;
        if flags != tcp_flags::SYN {
            self.dsr_pass(packets, flags, what)?;
            let pinned = self.dp.dsr_entries().map_err(e)?.len();
            if pinned != packets as usize {
                return Err(format!(
                    "{what}: the pinning pass left {pinned} LB_CT_DSR entries, {packets} expected"
                ));
            }
        }
        let before = self.counters()?;
        let svc_before = self.dp.service_stats(DSR_SERVICE_ID).map_err(e)?;
        let total = self.dsr_pass(packets, flags, what)?;
        let after = self.counters()?;
        let svc = self.dp.service_stats(DSR_SERVICE_ID).map_err(e)?;
        let d = |c: u32| after[c as usize] - before[c as usize];
        let new = if flags == tcp_flags::SYN { packets } else { 0 };
        let got = (
            d(lb_common::FWD_DSR),
            d(lb_common::NEW_FLOW),
            d(lb_common::CT_DSR_NEW),
            svc.packets_in - svc_before.packets_in,
            svc.new_flows - svc_before.new_flows,
        );
        let want = (u64::from(packets), 0, 0, u64::from(packets), u64::from(new));
        if got != want {
            return Err(format!(
                "{what}: FWD_DSR, NEW_FLOW, CT_DSR_NEW, the service's packets and new flows \
                 rose by {got:?}, expected {want:?}"
            ));
        }
        Ok(total as f64 / f64::from(packets))
    }

    /// One pass of [`Bed::dsr`]: the packets sent and their outputs checked; returns the
    /// total ns.
    fn dsr_pass(&mut self, packets: u32, flags: u8, what: &str) -> Result<u64, String> {
        let m = self.table.len() as u32;
        let mut total = 0u64;
        for k in 0..packets {
            let (c, p) = client_of(k);
            let f = tcp_frame(c, p, DSR_VIP, VIP_PORT, flags);
            let r = self
                .dp
                .test_run(&f, Some(self.a0), 1)
                .map_err(|e| e.to_string())?;
            expect(r.verdict, XDP_REDIRECT, what)?;
            let h = lb_common::hash::flow_hash(
                ipv4_to_be(c),
                ipv4_to_be(DSR_VIP),
                port_to_be(p),
                port_to_be(VIP_PORT),
                self.seed,
            );
            let id = self.table[lb_common::passive::probe_slot(h, 0, m) as usize];
            let want = dsr_expected(&f, id as usize - 1);
            if r.output != want {
                return Err(format!(
                    "{what}: the output of packet {k} ({c}:{p}) is not the IPIP frame toward \
                     backend {id} ({} bytes, {} expected; first difference at byte {:?})",
                    r.output.len(),
                    want.len(),
                    r.output.iter().zip(&want).position(|(a, b)| a != b)
                ));
            }
            total += r.duration_ns;
        }
        Ok(total)
    }

    /// A step coprime with the number of flows, so `k * stride % n` visits every flow in a
    /// scattered order.
    fn stride(&self) -> usize {
        let n = self.flows.len();
        [7919usize, 104_729, 1_299_709]
            .into_iter()
            .find(|s| !n.is_multiple_of(*s))
            .unwrap_or(1)
    }

    /// Evicts the CPU caches by writing [`Bed::thrash`].
    fn flush_caches(&mut self) {
        let v = self.thrash[0].wrapping_add(1);
        self.thrash.fill(v);
        std::hint::black_box(&self.thrash);
    }

    fn counters(&self) -> Result<[u64; lb_common::NUM_COUNTERS as usize], String> {
        self.dp.global_counters().map_err(|e| e.to_string())
    }

    /// `calls` chains over established flows: each chain visits 127 flows in a scattered
    /// order (every filled flow when there are fewer), each once by a forward run and once by
    /// a reply run (see the module docs).
    #[allow(clippy::field_reassign_with_default)] // see the FlowEntry below
    fn established_chain(&mut self, calls: u32) -> Result<f64, String> {
        let n = self.flows.len();
        let stride = self.stride();
        let per_call = (CHAIN / 2) as usize;
        let calls = calls as usize;
        let next = |f: usize| (f + stride) % n;
        // The crafted entries are keyed by (SNAT address -> backend): the backends must pass
        // the data plane's address pre-filter (LB_LOCAL_ADDRS) for the lookup to happen, as
        // a real reply to a SNAT address does. Setup only; one lookup either way.
        for b in BACKENDS {
            self.dp
                .add_local_addr(ipv4_to_be(b), lb_common::LOCAL_F_SNAT)
                .map_err(|e| format!("marking backend {b} local: {e}"))?;
        }
        // Install the crafted entries of every flow the chains will visit before timing, so
        // none is cache-hot from its own insertion.
        let visits = (calls * per_call).min(n);
        let now = monotonic_ns();
        let mut f = 0usize;
        for _ in 0..visits {
            let t = self.flows[f];
            let (gc, gp) = client_of(next(f) as u32);
            let backend_id = BACKENDS
                .iter()
                .position(|b| *b == t.backend)
                .ok_or_else(|| format!("flow {f} went to unknown backend {}", t.backend))?
                as u32
                + 1;
            // Field by field from the default, so fields the data plane adds later (e.g. a
            // cached next hop) keep their "unset" value.
            let mut e = FlowEntry::default();
            e.last_seen_ns = now;
            e.new_src_addr_be = ipv4_to_be(gc);
            e.new_src_port_be = port_to_be(gp);
            e.new_dst_addr_be = ipv4_to_be(VIP);
            e.new_dst_port_be = port_to_be(VIP_PORT);
            e.backend_id = backend_id;
            e.service_id = 0;
            e.flags = FLOW_F_REPLY;
            e.state = lb_common::tcp_state::ESTABLISHED;
            self.dp
                .set_conntrack_entry(&flow_key(t.snat, t.snat_port, t.backend, BACKEND_PORT), &e)
                .map_err(|e| format!("crafting the reply-direction entry of flow {f}: {e}"))?;
            f = next(f);
        }
        let before = self.counters()?;
        let mut total = 0u64;
        let mut f = 0usize;
        for _ in 0..calls {
            let (c, p) = client_of(f as u32);
            let frame = chain_frame(c, p, VIP, VIP_PORT, tcp_flags::ACK);
            // Untimed warm-up of the same chain: an established flow's entries were touched
            // within the last second and cache their next hop (the fill was longer ago, so
            // this run takes the once-a-second refresh and FIB lookup); then the caches are
            // flushed, so the timed run still pays the memory misses of a large table.
            self.dp
                .test_run(&frame, Some(self.a0), CHAIN)
                .map_err(|e| e.to_string())?;
            self.flush_caches();
            let r = self
                .dp
                .test_run(&frame, Some(self.a0), CHAIN)
                .map_err(|e| e.to_string())?;
            for _ in 0..per_call {
                f = next(f);
            }
            let (ec, ep) = client_of(f as u32);
            let got = frame_tuple(&r.output)?;
            let want = (ec, ep, VIP, VIP_PORT, CHAIN_TTL - CHAIN as u8);
            if r.verdict != XDP_REDIRECT || (got.0, got.1, got.2, got.3, got.4) != want {
                return Err(format!(
                    "established chain: XDP_{} with {}:{} -> {}:{} TTL {}, expected XDP_REDIRECT \
                     with {}:{} -> {}:{} TTL {} (a run left the forward/reply path)",
                    verdict_name(r.verdict),
                    got.0,
                    got.1,
                    got.2,
                    got.3,
                    got.4,
                    want.0,
                    want.1,
                    want.2,
                    want.3,
                    want.4
                ));
            }
            total += r.duration_ns * u64::from(CHAIN);
        }
        let after = self.counters()?;
        // Forward and reply runs of the warm-up and the timed chains.
        let runs = 2 * (calls * per_call) as u64;
        for (idx, what) in [
            (lb_common::FWD_TO_BACKEND, "FWD_TO_BACKEND"),
            (lb_common::FWD_TO_CLIENT, "FWD_TO_CLIENT"),
        ] {
            let d = after[idx as usize] - before[idx as usize];
            if d != runs {
                return Err(format!(
                    "established chain: {what} rose by {d}, expected {runs}"
                ));
            }
        }
        Ok(total as f64 / (calls as f64 * f64::from(CHAIN)))
    }

    /// Makes every backend address also a VIP with a service on the backend port (the same
    /// Maglev table), so a rewritten SYN is the SYN of a new flow on the next chained run.
    fn backends_as_vips(&mut self) -> Result<(), String> {
        let e = |e: lb::dataplane::DataplaneError| e.to_string();
        let m = lb_common::DEFAULT_MAGLEV_TABLE_SIZE;
        for b in BACKENDS {
            self.dp
                .set_service(
                    &ServiceKey {
                        vip_be: ipv4_to_be(b),
                        port_be: port_to_be(BACKEND_PORT),
                        proto: IPPROTO_TCP,
                        _pad: 0,
                    },
                    &ServiceValue {
                        service_id: 1,
                        table_offset: maglev_table_offset(0, 0, m),
                        table_size: m,
                        flags: 0,
                        forwarding: FORWARDING_NAT,
                        dsr_src_be: 0,
                    },
                )
                .map_err(e)?;
            self.dp
                .set_vip(
                    ipv4_to_be(b),
                    &VipValue {
                        service_count: 1,
                        flags: 0,
                    },
                )
                .map_err(e)?;
        }
        Ok(())
    }

    /// New flows chained: every run creates a flow (conntrack insert, SNAT port) and its
    /// rewritten SYN is the next run's new flow.
    fn syn_chain(&mut self, calls: u32) -> Result<f64, String> {
        self.backends_as_vips()?;
        let before = self.counters()?;
        let mut total = 0u64;
        for _ in 0..calls {
            let (c, p) = client_of(self.next_new);
            self.next_new += 1;
            let frame = chain_frame(c, p, VIP, VIP_PORT, tcp_flags::SYN);
            self.flush_caches();
            let r = self
                .dp
                .test_run(&frame, Some(self.a0), CHAIN)
                .map_err(|e| e.to_string())?;
            let got = frame_tuple(&r.output)?;
            let ok = r.verdict == XDP_REDIRECT
                && BACKENDS.contains(&got.2)
                && got.3 == BACKEND_PORT
                && got.4 == CHAIN_TTL - CHAIN as u8
                && got.5 == tcp_flags::SYN;
            if !ok {
                return Err(format!(
                    "SYN chain: XDP_{} with {}:{} -> {}:{} TTL {} flags {:#04x}, expected \
                     XDP_REDIRECT of a SYN to a backend with TTL {}",
                    verdict_name(r.verdict),
                    got.0,
                    got.1,
                    got.2,
                    got.3,
                    got.4,
                    got.5,
                    CHAIN_TTL - CHAIN as u8
                ));
            }
            total += r.duration_ns * u64::from(CHAIN);
        }
        let after = self.counters()?;
        let runs = calls as u64 * u64::from(CHAIN);
        let d = after[lb_common::NEW_FLOW as usize] - before[lb_common::NEW_FLOW as usize];
        if d != runs {
            return Err(format!(
                "SYN chain: NEW_FLOW rose by {d}, expected {runs} (some run was not a new flow)"
            ));
        }
        Ok(total as f64 / runs as f64)
    }
}

/// The backend side of DSR: `lb_decap`'s cases, in report order. It has no conntrack, so
/// they are measured once per round (with the first fill level's bed), not per fill level.
pub const DECAP_CASES: [&str; 3] = [CASE_DECAP_CHAIN, CASE_DECAP_ONE, CASE_DECAP_PASS];
/// IPIP to the backend, chained: one of [`DECAP_CHAIN`] nested outer headers stripped per run.
pub const CASE_DECAP_CHAIN: &str = "lb_decap, IPIP to this host (chain, repeat = 128)";
/// IPIP to the backend, one `BPF_PROG_TEST_RUN` per packet.
pub const CASE_DECAP_ONE: &str = "lb_decap, IPIP to this host (repeat = 1)";
/// A plain (not encapsulated) TCP packet, passed untouched: what `lb_decap` costs every other
/// packet the backend receives.
pub const CASE_DECAP_PASS: &str = "lb_decap, not IPIP, passed (repeat = N)";
/// The variant (column) of the `lb_decap` rows.
pub const DECAP_VARIANT: &str = "backend side (lb_decap)";
/// Nested outer headers of a decap chain (runs per call): the frame, 14 + 128 x 20 + 40
/// bytes, fits the page `BPF_PROG_TEST_RUN` gives an XDP frame.
pub const DECAP_CHAIN: u32 = 128;

/// The frame a DSR backend receives from `b0` for the client's IPv4 packet `inner` wrapped
/// in `n` outer IPIP headers ([`DSR_SRC`] -> `BACKENDS[0]`, DF, TTL 64, checksum from
/// scratch), the outermost first; `n = 0` is the plain packet, what `lb_decap` leaves.
fn ipip_nested(inner: &[u8], n: u32) -> Vec<u8> {
    let mut pkt = inner.to_vec();
    for i in 0..n {
        let len = u16::try_from(20 + pkt.len()).expect("the nested frame fits");
        let mut h = vec![0x45, 0];
        h.extend_from_slice(&len.to_be_bytes());
        h.extend_from_slice(&(i as u16).to_be_bytes());
        h.extend_from_slice(&[0x40, 0, 64, lb_common::IPPROTO_IPIP, 0, 0]);
        h.extend_from_slice(&DSR_SRC.octets());
        h.extend_from_slice(&BACKENDS[0].octets());
        let c = crate::lab::packet::inet_checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h.extend_from_slice(&pkt);
        pkt = h;
    }
    let mut f = crate::fixture::frame::eth_header(backend_mac(0), MAC_B0, 0x0800);
    f.extend_from_slice(&pkt);
    f
}

/// `lb_decap`'s rows ([`DECAP_CASES`], ns per packet): a fresh load with `BACKENDS[0]` as its
/// one decapsulation address, `DSR_SRC` as allowed outer source and `DSR_VIP` (and, for the
/// chain's inner layers, `BACKENDS[0]`) as allowed inner destinations; `chains` chained calls of [`DECAP_CHAIN`] runs, `packets`
/// single runs, one call of `packets` runs on a plain packet. Every output must be exactly the
/// client's packet behind the frame's own Ethernet header (the plain frame unchanged for the
/// pass case), and `decapsulated` (resp. `pass_other`) must rise by exactly the number of
/// runs and no other counter move.
fn decap_rows(packets: u32, chains: u32) -> Result<[f64; 3], String> {
    use lb_common::decap::{DECAP_COUNTER_NAMES, DECAP_OK, DECAP_PASS_OTHER};
    let e = |e: lb::dataplane::DataplaneError| e.to_string();
    let mut d =
        lb::dataplane::decap::Decap::load().map_err(|e| format!("loading lb_decap: {e}"))?;
    d.set_addresses(&[BACKENDS[0]]).map_err(e)?;
    // The allow-lists a backend gets from `lbctl backend-setup`: the balancer's outer source,
    // and the VIP as inner destination. The chain's inner layers are IPIP to the backend
    // itself, so the backend's address is an allowed inner destination too (one more entry,
    // the same lookups per packet).
    d.set_sources(&[lb::dataplane::decap::Ipv4Prefix::from(DSR_SRC)])
        .map_err(e)?;
    d.set_vips(&[DSR_VIP, BACKENDS[0]]).map_err(e)?;
    let (c, p) = client_of(0);
    let client = tcp_frame(c, p, DSR_VIP, VIP_PORT, tcp_flags::ACK);
    let plain = ipip_nested(&client[14..], 0);
    // Runs `frame` `calls` times with `repeat`; checks verdict, output and counters.
    let run = |frame: &[u8], calls: u32, repeat: u32, counter: u32, what: &str| {
        let before = d.counters().map_err(e)?;
        let mut total = 0u64;
        for _ in 0..calls {
            let r = d.test_run_repeat(frame, repeat).map_err(e)?;
            if r.verdict != XDP_PASS || r.output != plain {
                return Err(format!(
                    "{what}: lb_decap answered XDP_{} with a {}-byte frame, expected XDP_PASS \
                     of the {}-byte client packet (first difference at byte {:?})",
                    verdict_name(r.verdict),
                    r.output.len(),
                    plain.len(),
                    r.output.iter().zip(&plain).position(|(a, b)| a != b)
                ));
            }
            total += r.duration_ns * u64::from(repeat);
        }
        let after = d.counters().map_err(e)?;
        let runs = u64::from(calls) * u64::from(repeat);
        for (i, name) in DECAP_COUNTER_NAMES.iter().enumerate() {
            let want = if i == counter as usize { runs } else { 0 };
            if after[i] - before[i] != want {
                return Err(format!(
                    "{what}: lb_decap's counter {name} rose by {}, expected {want}",
                    after[i] - before[i]
                ));
            }
        }
        Ok(total as f64 / runs as f64)
    };
    let chain = run(
        &ipip_nested(&client[14..], DECAP_CHAIN),
        chains,
        DECAP_CHAIN,
        DECAP_OK,
        "lb_decap chain",
    )?;
    let one = run(
        &ipip_nested(&client[14..], 1),
        packets,
        1,
        DECAP_OK,
        "lb_decap, repeat = 1",
    )?;
    let pass = run(&plain, 1, packets, DECAP_PASS_OTHER, "lb_decap, not IPIP")?;
    Ok([chain, one, pass])
}

/// SNAT pool use levels of the pool rows (percent of one backend's SNAT ports held by live
/// established flows).
pub const POOL_LEVELS: [u32; 5] = [0, 50, 90, 99, 100];
/// The pool rows' case (`ns/packet` and [`POOL_GOT`] per level).
pub const CASE_POOL: &str = "new flow, SYN, one backend's SNAT pool in use (repeat = 1)";
/// Metric of the pool rows: the share of the measured SYNs that got a SNAT port.
pub const POOL_GOT: &str = "% of SYNs that got a port";

/// Label of a pool use level.
pub fn pool_level_name(pct: u32) -> String {
    format!("pool {pct}% used")
}

/// A data plane (default sizes) whose one service has one backend (`BACKENDS[0]`) and
/// `addrs` SNAT addresses with `ports` ports each (1024 ..), `pct`% of these (address, port)
/// pairs held by live established flows (both entries in `LB_CONNTRACK`, picked at random).
struct PoolBed {
    dp: PrivateDataplane,
    a0: u32,
    next: u32,
}

impl PoolBed {
    fn new(addrs: u32, ports: u32, pct: u32, object: Option<&[u8]>) -> Result<PoolBed, String> {
        let mut pdp = PrivateDataplane::load_object(&LoadOptions::default(), object)?;
        let dp = pdp.get_mut();
        let a0 = ifindex("a0")?;
        let b0 = ifindex("b0")?;
        let e = |e: lb::dataplane::DataplaneError| e.to_string();
        let port_min = 1024u16;
        let port_max = u16::try_from(u32::from(port_min) + ports - 1)
            .map_err(|_| format!("{ports} ports do not fit above {port_min}"))?;
        dp.set_global_config(&GlobalConfig {
            snat_addr_count: addrs,
            snat_port_min: port_min,
            snat_port_max: port_max,
            ..GlobalConfig::default()
        })
        .map_err(e)?;
        let snat: Vec<Ipv4Addr> = (0..addrs)
            .map(|i| Ipv4Addr::from(u32::from(SNAT) + i))
            .collect();
        dp.set_snat_addrs(&snat).map_err(e)?;
        let backend = BACKENDS[0];
        dp.set_backend(
            1,
            &BackendValue {
                addr_be: ipv4_to_be(backend),
                port_be: port_to_be(BACKEND_PORT),
                service_id: 0,
                ..BackendValue::default()
            },
        )
        .map_err(e)?;
        let m = lb_common::DEFAULT_MAGLEV_TABLE_SIZE;
        dp.write_maglev(maglev_table_offset(0, 0, m), &vec![1u32; m as usize])
            .map_err(e)?;
        bed_service(dp, m, [a0, b0])?;
        // The held ports: a random `pct`% of the pool (Fisher-Yates with a fixed seed).
        let mut pool: Vec<(Ipv4Addr, u16)> = snat
            .iter()
            .flat_map(|a| (port_min..=port_max).map(move |p| (*a, p)))
            .collect();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in (1..pool.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            pool.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let held = pool.len() * pct as usize / 100;
        let now = monotonic_ns();
        for (i, &(addr, port)) in pool[..held].iter().enumerate() {
            // Filler clients in 100.64.0.0/10, never a measured client.
            let client = Ipv4Addr::from(0x6440_0000 + (i as u32 >> 10));
            let cport = 20_000 + (i & 1023) as u16;
            let fwd = FlowEntry {
                last_seen_ns: now,
                new_src_addr_be: ipv4_to_be(addr),
                new_dst_addr_be: ipv4_to_be(backend),
                new_src_port_be: port_to_be(port),
                new_dst_port_be: port_to_be(BACKEND_PORT),
                backend_id: 1,
                service_id: 0,
                state: lb_common::tcp_state::ESTABLISHED,
                ..FlowEntry::default()
            };
            let reply = FlowEntry {
                new_src_addr_be: ipv4_to_be(VIP),
                new_dst_addr_be: ipv4_to_be(client),
                new_src_port_be: port_to_be(VIP_PORT),
                new_dst_port_be: port_to_be(cport),
                flags: FLOW_F_REPLY,
                ..fwd
            };
            dp.set_conntrack_entry(&flow_key(client, cport, VIP, VIP_PORT), &fwd)
                .map_err(|e| format!("filling the pool: {e}"))?;
            dp.set_conntrack_entry(&flow_key(backend, BACKEND_PORT, addr, port), &reply)
                .map_err(|e| format!("filling the pool: {e}"))?;
        }
        Ok(PoolBed {
            dp: pdp,
            a0,
            next: 0,
        })
    }

    /// `syns` new flows' SYNs, one `BPF_PROG_TEST_RUN` each: (mean ns per SYN, % that got a
    /// port). A flow that got a port is removed again (untimed), so the pool's use stays at
    /// its level.
    fn measure(&mut self, syns: u32) -> Result<(f64, f64), String> {
        let before = self.dp.global_counters().map_err(|e| e.to_string())?;
        let (mut total, mut got) = (0u64, 0u32);
        for _ in 0..syns {
            let (c, p) = client_of(self.next);
            self.next += 1;
            let r = self
                .dp
                .test_run(
                    &tcp_frame(c, p, VIP, VIP_PORT, tcp_flags::SYN),
                    Some(self.a0),
                    1,
                )
                .map_err(|e| e.to_string())?;
            total += r.duration_ns;
            match r.verdict {
                XDP_REDIRECT => {
                    got += 1;
                    let t = reply_tuple(&r.output);
                    for k in [
                        flow_key(c, p, VIP, VIP_PORT),
                        flow_key(t.backend, BACKEND_PORT, t.snat, t.snat_port),
                    ] {
                        self.dp
                            .remove_conntrack_entry(&k)
                            .map_err(|e| format!("removing a measured flow: {e}"))?;
                    }
                }
                XDP_DROP => {}
                v => expect(v, XDP_REDIRECT, "new flow on a pool in use")?,
            }
        }
        let after = self.dp.global_counters().map_err(|e| e.to_string())?;
        let d = |c: u32| after[c as usize] - before[c as usize];
        if d(lb_common::NEW_FLOW) != u64::from(got)
            || d(lb_common::DROP_SNAT_EXHAUSTED) != u64::from(syns - got)
        {
            return Err(format!(
                "pool: {got} of {syns} SYNs redirected, but NEW_FLOW rose by {} and \
                 DROP_SNAT_EXHAUSTED by {}",
                d(lb_common::NEW_FLOW),
                d(lb_common::DROP_SNAT_EXHAUSTED)
            ));
        }
        Ok((
            total as f64 / f64::from(syns),
            100.0 * f64::from(got) / f64::from(syns),
        ))
    }
}

/// The pool rows: per level (interleaved over rounds, a fresh data plane per level and
/// round), the mean ns per SYN and the share of SYNs that got a port. Runs in the thread
/// that entered the namespace. `LB_BENCH_POOL_OBJECTS` (comma-separated paths of lb-ebpf
/// builds, e.g. the `snat_window` ablation build of lb-ebpf/src/ablate.rs) measures those
/// builds side by side instead of the embedded one, each row's level labelled with the
/// file name.
fn pool_rows(sec: &mut Section, (addrs, ports): (u32, u32), syns: u32, rounds: usize) {
    let mut objects: Vec<(String, Option<Vec<u8>>)> = Vec::new();
    match std::env::var("LB_BENCH_POOL_OBJECTS") {
        Ok(list) => {
            for path in list.split(',') {
                match std::fs::read(path) {
                    Ok(obj) => {
                        let name = path.rsplit('/').next().unwrap_or(path);
                        objects.push((format!(" ({name})"), Some(obj)));
                    }
                    Err(e) => {
                        sec.notes
                            .push(format!("LB_BENCH_POOL_OBJECTS: cannot read {path}: {e}"));
                        return;
                    }
                }
            }
        }
        Err(_) => objects.push((String::new(), None)),
    }
    let level = |pct: u32, label: &str| format!("{}{label}", pool_level_name(pct));
    // Variants: every level of every object, the objects adjacent in time.
    let variants: Vec<(u32, usize)> = POOL_LEVELS
        .iter()
        .flat_map(|&pct| (0..objects.len()).map(move |o| (pct, o)))
        .collect();
    let names: Vec<String> = variants
        .iter()
        .map(|&(pct, o)| level(pct, &objects[o].0))
        .collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut got: HashMap<usize, Vec<f64>> = HashMap::new();
    let ns = interleave(&name_refs, rounds, |vi, _| {
        let (pct, o) = variants[vi];
        let mut bed = PoolBed::new(addrs, ports, pct, objects[o].1.as_deref())?;
        let (ns, share) = bed.measure(syns)?;
        got.entry(vi).or_default().push(share);
        Ok(ns)
    });
    for (vi, r) in ns.iter().enumerate() {
        sec.push(
            CASE_POOL,
            &names[vi],
            "ns/packet",
            Measurement::from_variant(r),
        );
        let share = match got.remove(&vi) {
            Some(v) => Measurement::from_runs(v),
            None => Measurement::not_measured(r.error.clone().unwrap_or_default()),
        };
        sec.push(CASE_POOL, &names[vi], POOL_GOT, share);
    }
    for (label, _) in &objects {
        for pct in [50, 90, 99, 100] {
            sec.add_ratio(
                &format!("new flow at {pct}% SNAT pool use / at 0%{label}"),
                "ns/packet",
                (CASE_POOL, &level(pct, label)),
                (CASE_POOL, &level(0, label)),
            );
        }
    }
}

/// The SNAT pool target of issue 12: a new flow at 99% pool use costs at most twice the
/// empty pool's.
fn pool_target(sec: &Section) -> Target {
    Target::new(
        "new flow SYN, SNAT pool 99% used / empty pool",
        Goal::AtMost,
        2.0,
        "x",
        ratio(
            sec.median(CASE_POOL, &pool_level_name(99), "ns/packet"),
            sec.median(CASE_POOL, &pool_level_name(0), "ns/packet"),
        ),
        "each SNAT port candidate is a lookup of its reply key in LB_CONNTRACK (a random \
         bucket of a 32 MiB table); after a full search (16 candidates) finds the backend's \
         pool full, new flows to it try 2 candidates for 100 ms (LB_SNAT_FULL)",
    )
}

/// Which parts of section 1 to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parts {
    /// The fill-level cases ([`CASES`] x [`LEVELS`]).
    pub levels: bool,
    /// The SNAT pool rows ([`CASE_POOL`] x [`POOL_LEVELS`]).
    pub pool: bool,
}

/// Runs section 1 (every part). Returns the section and its targets.
pub fn run(scale: Scale) -> (Section, Vec<Target>) {
    run_parts(
        scale,
        Parts {
            levels: true,
            pool: true,
        },
    )
}

/// Runs `parts` of section 1. Returns the section and its targets.
pub fn run_parts(scale: Scale, parts: Parts) -> (Section, Vec<Target>) {
    let packets = scale.pick(350_000u32, 2_000);
    // Like the measurement (4 SNAT addresses, each backend's pool nearly full in a
    // large table): the probed reply keys do not fit in the CPU caches.
    let pool = scale.pick((4u32, 64_512u32), (1, 1_024));
    let pool_syns = scale.pick(20_000u32, 500);
    // Each call with repeat > 1 makes the kernel switch the XDP dispatcher twice (an RCU
    // grace period each, tens of ms on a busy machine), so chains are fewer and long.
    let chains = scale.pick(40u32, 2);
    let rounds = scale.pick(3, 1);
    let levels: Vec<u32> = match scale {
        _ if !parts.levels => Vec::new(),
        Scale::Full => LEVELS.to_vec(),
        Scale::Smoke => vec![0, 2_000],
    };
    let mut sec = Section::new(
        "xdp_cost",
        "1. Per-packet cost of lb_xdp (BPF_PROG_TEST_RUN)",
        format!(
            "Kernel-reported ns per run of the JIT-compiled `lb_xdp` (`BPF_PROG_TEST_RUN`), \
             {rounds} rounds interleaved over fill levels; each round loads a fresh data plane \
             with the default sizes (1M flows = 2M conntrack entries), one service with 4 \
             backends and 16 SNAT addresses (ports 1024-65535), fills it, and measures every \
             case, in a private namespace whose routes and permanent neighbours make \
             `bpf_fib_lookup` succeed, so every forward ends in `XDP_REDIRECT`. Two methods. \
             **Chains** (the headline): one `BPF_PROG_TEST_RUN` with `repeat = {CHAIN}` runs \
             the program again on the packet the previous run rewrote, and the bed makes that \
             packet the next real packet of the path, so the kernel's mean per run is exact \
             (its timer is read once per {CHAIN} runs). Established: flow f's forward entry \
             rewrites client_f -> VIP into SNAT_f -> backend_f; a crafted reply-direction \
             entry keyed by exactly that tuple (the reply path looks the packet up as is) \
             rewrites it into client_g -> VIP of the next flow g in a scattered order, so \
             forward and reply lookups alternate over 127 distinct flows per call. Each timed \
             chain follows an untimed run of the same chain (so, as for a flow with steady \
             traffic, its entries were touched within the last second and cache their next \
             hop) and a 64 MiB write that evicts the CPU caches, so a large table still pays \
             its cache and TLB misses. New flow: the backends' addresses are also VIPs \
             with a service on the backend port, so each rewritten SYN (SNAT -> backend) is \
             a SYN of a new flow on the next run (service lookup, Maglev, SNAT port, two \
             conntrack inserts, rewrite, fib, redirect); each chain also starts after the \
             cache-evicting write. Every chain starts with TTL 255 and \
             must end with TTL 1 and the expected addresses, and the FWD_TO_BACKEND / \
             FWD_TO_CLIENT / NEW_FLOW counters must rise by exactly the number of runs, so \
             every run took the intended path. {chains} chains per case per round. \
             **repeat = 1** (the earlier method, kept for comparison): {packets} packets per \
             case per round, each one `BPF_PROG_TEST_RUN` on a fresh frame; each number \
             includes the kernel's timer reads around the single run and a start right after \
             the syscall (see the non-VIP pass with repeat = 1 vs repeat = {packets}; the \
             harness floor is `lb_xdp_pass`, a program that only returns XDP_PASS, with \
             repeat = {packets}); an \
             established packet that is its flow's first since the fill (more than 1 s \
             earlier) also pays the once-a-second refresh and FIB lookup: every packet at 1M \
             entries (a round visits each flow at most once), one in seven at 100k. The \
             repeat = 1 new-flow case adds 2 entries per packet, so the table grows by {} \
             entries during it. **DSR** (issue 13): the bed also holds a `forwarding: dsr` \
             service on {DSR_VIP}:{VIP_PORT} over the same 4 backends and Maglev table (outer \
             source {DSR_SRC}; its VIP flagged DSR-only as lbd flags it, so its packets skip \
             the full-NAT conntrack maps); {packets} packets per case per round, `repeat = 1`, \
             each of a distinct flow client_k -> DSR VIP: the SYNs with `LB_CT_DSR` emptied (a \
             miss, the flow's Maglev slot; a SYN writes no entry), then an ACK of each of the \
             same flows, timed in a second pass after an untimed first pass pinned every flow \
             (each timed ACK hits its `LB_CT_DSR` entry, whose backend is checked against \
             `LB_BACKENDS`). No chain: a DSR forward puts a 20-byte outer header in front of \
             the packet, so its output is never again a packet of the same path (and a chain \
             would run out of headroom after a dozen runs). Every output must be byte for byte \
             the IPIP frame toward the flow's Maglev backend (computed by the bench from the \
             table and `flow_hash`: the outer header with its checksum, the client's packet \
             unchanged behind it), FWD_DSR and the service's packet count must rise by exactly \
             the packets, NEW_FLOW and CT_DSR_NEW not at all. Unlike a full-NAT established \
             packet, a DSR packet has no cached next hop: each one pays a `bpf_fib_lookup`. **Backend side** \
             (`lb_decap`, no conntrack, so once per round, not per fill level): a chain of \
             `repeat = {DECAP_CHAIN}` on a frame with {DECAP_CHAIN} nested IPIP headers to the \
             backend's address, each run stripping one (the checks, address lookup, checksum \
             and head adjustment of a single packet; the last output must be exactly the \
             client's packet), {chains} chains per round; {packets} single runs on one-header \
             frames; a plain TCP packet passed untouched with `repeat = {packets}` (what \
             `lb_decap` adds to every other packet the backend receives). Its counters must \
             rise by exactly the runs. **SNAT pool use** (issue 12): a separate bed per level and \
             round, the default sizes, one service with one backend and {} SNAT addresses \
             with {} ports each (1024-{}), so a pool of {} (address, port) pairs, of which 0, \
             50, 90, 99 or 100% are held by live established flows (both entries in \
             `LB_CONNTRACK`, picked at random: at 99% the probed reply keys are about 2 x {} \
             entries, far more than the CPU caches hold); {pool_syns} \
             SYNs of new clients per level and round, `repeat = 1`, each a new flow whose \
             entries are removed again (untimed) when it got a port, so the use stays at its \
             level. Rows: mean ns per SYN (those that got a port and those dropped \
             `DROP_SNAT_EXHAUSTED` alike) and the share that got a port.",
            2 * packets,
            pool.0,
            pool.1,
            1023 + pool.1,
            pool.0 * pool.1,
            pool.0 * pool.1
        ),
    );
    let mut targets = Vec::new();
    // Every level row and the lb_decap rows, not measured for `reason`.
    let not_measured = |sec: &mut Section, reason: &str| {
        for l in &levels {
            for c in CASES {
                sec.push(
                    c,
                    &level_name(*l),
                    "ns/packet",
                    Measurement::not_measured(reason),
                );
            }
        }
        if !levels.is_empty() {
            for c in DECAP_CASES {
                sec.push(
                    c,
                    DECAP_VARIANT,
                    "ns/packet",
                    Measurement::not_measured(reason),
                );
            }
        }
    };
    let fib = match FibNs::create() {
        Ok(f) => f,
        Err(e) => {
            not_measured(&mut sec, &format!("cannot create the namespace: {e}"));
            let t = est_targets(&sec);
            return (sec, t);
        }
    };
    // Everything runs on one thread inside the namespace (setns is per thread).
    let results: Result<(Vec<super::stats::VariantRuns>, Section), String> =
        std::thread::scope(|s| {
            s.spawn(|| {
                enter(&fib.ns)?;
                let names: Vec<String> = levels.iter().map(|l| level_name(*l)).collect();
                let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
                // One variant per (level, case); a round loads a fresh data plane per level.
                let mut per: HashMap<(usize, usize), Vec<f64>> = HashMap::new();
                let mut errors: HashMap<usize, String> = HashMap::new();
                let mut decap: Vec<Vec<f64>> = vec![Vec::new(); DECAP_CASES.len()];
                let mut decap_error: Option<String> = None;
                let _ = interleave(&name_refs, rounds, |li, _round| {
                    let mut bed = match Bed::new(levels[li]) {
                        Ok(b) => b,
                        Err(e) => {
                            errors.entry(li).or_insert(e.clone());
                            return Err(e);
                        }
                    };
                    for c in MEASURE_ORDER {
                        match bed.measure(c, packets, chains) {
                            Ok(v) => per.entry((li, c)).or_default().push(v),
                            Err(e) => {
                                errors.entry(li * 100 + c + 1000).or_insert(e);
                            }
                        }
                    }
                    // lb_decap: once per round (no fill level), next to the first level.
                    if li == 0 {
                        match decap_rows(packets, chains) {
                            Ok(v) => {
                                for (k, x) in v.into_iter().enumerate() {
                                    decap[k].push(x);
                                }
                            }
                            Err(e) => {
                                decap_error.get_or_insert(e);
                            }
                        }
                    }
                    Ok(0.0)
                });
                let mut pool_sec = Section::new("", "", "");
                if parts.pool {
                    pool_rows(&mut pool_sec, pool, pool_syns, rounds);
                }
                let mut out = Vec::new();
                for (li, name) in names.iter().enumerate() {
                    for (c, case) in CASES.iter().enumerate() {
                        out.push(super::stats::VariantRuns {
                            name: format!("{case}\u{0}{name}"),
                            values: per.remove(&(li, c)).unwrap_or_default(),
                            error: errors
                                .get(&(li * 100 + c + 1000))
                                .or_else(|| errors.get(&li))
                                .cloned(),
                        });
                    }
                }
                if !levels.is_empty() {
                    for (k, case) in DECAP_CASES.iter().enumerate() {
                        out.push(super::stats::VariantRuns {
                            name: format!("{case}\u{0}{DECAP_VARIANT}"),
                            values: std::mem::take(&mut decap[k]),
                            error: decap_error.clone(),
                        });
                    }
                }
                Ok((out, pool_sec))
            })
            .join()
            .unwrap_or_else(|_| Err("the measuring thread panicked".into()))
        });
    match results {
        Ok((runs, pool_sec)) => {
            for r in runs {
                let (case, level) = r.name.split_once('\u{0}').expect("joined above");
                sec.push(case, level, "ns/packet", Measurement::from_variant(&r));
            }
            sec.rows.extend(pool_sec.rows);
            sec.ratios.extend(pool_sec.ratios);
        }
        Err(e) => not_measured(&mut sec, &e),
    }
    drop(fib);
    if parts.pool {
        targets.push(pool_target(&sec));
    }
    if levels.is_empty() {
        return (sec, targets);
    }
    let l100 = level_name(levels[1.min(levels.len() - 1)]);
    sec.add_ratio(
        &format!("established chain / non-VIP pass (repeat = N), {l100}"),
        "ns/packet",
        (CASE_EST_CHAIN, &l100),
        ("non-VIP pass (repeat = N)", &l100),
    );
    sec.add_ratio(
        &format!("established forward (repeat = 1) / established chain, {l100}"),
        "ns/packet",
        ("established forward (repeat = 1)", &l100),
        (CASE_EST_CHAIN, &l100),
    );
    sec.add_ratio(
        &format!("new flow (repeat = 1) / new flow chain, {l100}"),
        "ns/packet",
        (CASE_SYN, &l100),
        (CASE_SYN_CHAIN, &l100),
    );
    sec.add_ratio(
        &format!("DSR established forward / full-NAT established forward (repeat = 1), {l100}"),
        "ns/packet",
        (CASE_DSR_EST, &l100),
        (CASE_EST_FWD, &l100),
    );
    sec.add_ratio(
        &format!("DSR new flow / full-NAT new flow (repeat = 1), {l100}"),
        "ns/packet",
        (CASE_DSR_SYN, &l100),
        (CASE_SYN, &l100),
    );
    targets.extend(est_targets(&sec));
    (sec, targets)
}

fn est_targets(sec: &Section) -> Vec<Target> {
    // Judge at the largest fill level measured (the conservative one).
    // The fill-level rows only (the SNAT pool rows follow them).
    let level_rows = || sec.rows.iter().filter(|r| CASES.contains(&r.case.as_str()));
    let level = level_rows()
        .next_back()
        .map(|r| r.variant.clone())
        .unwrap_or_default();
    let first = level_rows()
        .next()
        .map(|r| r.variant.clone())
        .unwrap_or_default();
    let ns = |case: &str, lvl: &str| {
        sec.median(case, lvl, "ns/packet")
            .map(super::report::fmt_num)
            .unwrap_or_else(|_| "?".into())
    };
    let limit = format!(
        "no hardware counters in this VM (\"PMU not available due to virtualization\"), so \
         `bpftool prog profile` and `perf` cycles cannot attribute the time; what the rows \
         show: the same chain (same instructions) costs {} ns/packet with {} (its two entries \
         in cache) and {} ns with {} (each run a different flow, whose conntrack bucket and \
         entry come from memory after the cache eviction), so memory latency, not \
         instruction count, dominates at scale; a new flow (service lookup, Maglev, SNAT port \
         search, two LRU inserts) costs {} vs {} ns; the test-run harness alone (a program \
         that only returns XDP_PASS) is {} ns",
        ns(CASE_EST_CHAIN, &first),
        first,
        ns(CASE_EST_CHAIN, &level),
        level,
        ns(CASE_SYN_CHAIN, &first),
        ns(CASE_SYN_CHAIN, &level),
        ns(CASE_FLOOR, &level),
    );
    vec![
        Target::new(
            &format!("per packet, established flow (chain, {level})"),
            Goal::AtMost,
            60.0,
            "ns",
            sec.median(CASE_EST_CHAIN, &level, "ns/packet"),
            limit.clone(),
        ),
        Target::new(
            &format!("per packet, new flow (chain, {level})"),
            Goal::AtMost,
            150.0,
            "ns",
            sec.median(CASE_SYN_CHAIN, &level, "ns/packet"),
            limit,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::packet::inet_checksum;

    /// The IPv4 header at `off` of `f`: its total length, protocol and whether its checksum
    /// verifies.
    fn header(f: &[u8], off: usize) -> (usize, u8, bool) {
        let h = &f[off..off + 20];
        (
            usize::from(u16::from_be_bytes([h[2], h[3]])),
            h[9],
            inet_checksum(h) == 0,
        )
    }

    #[test]
    fn nested_ipip_headers_are_each_a_valid_packet_to_the_backend() {
        let client = tcp_frame(
            Ipv4Addr::new(198, 18, 0, 1),
            10_000,
            DSR_VIP,
            VIP_PORT,
            0x10,
        );
        let inner = &client[14..];
        let f = ipip_nested(inner, 3);
        assert_eq!(f.len(), 14 + 3 * 20 + inner.len());
        for k in 0..3 {
            let (len, proto, ok) = header(&f, 14 + 20 * k);
            assert_eq!(len, (3 - k) * 20 + inner.len(), "header {k}");
            assert_eq!(proto, lb_common::IPPROTO_IPIP, "header {k}");
            assert!(ok, "header {k}: checksum");
            assert_eq!(
                &f[14 + 20 * k + 16..14 + 20 * k + 20],
                &BACKENDS[0].octets()
            );
        }
        assert_eq!(&f[14 + 60..], inner, "the client's packet, unchanged");
        assert_eq!(ipip_nested(inner, 0)[14..], *inner);
    }

    #[test]
    fn expected_dsr_frame_wraps_the_client_packet() {
        let client = tcp_frame(
            Ipv4Addr::new(198, 18, 0, 1),
            10_000,
            DSR_VIP,
            VIP_PORT,
            0x02,
        );
        let out = dsr_expected(&client, 2);
        assert_eq!(&out[..6], &backend_mac(2));
        assert_eq!(&out[6..12], &MAC_B0);
        let (len, proto, ok) = header(&out, 14);
        assert_eq!((len, proto, ok), (client.len() - 14 + 20, 4, true));
        assert_eq!(&out[14 + 12..14 + 16], &DSR_SRC.octets());
        assert_eq!(&out[14 + 16..14 + 20], &BACKENDS[2].octets());
        assert_eq!(out[14 + 8], 64, "outer TTL");
        assert_eq!(&out[34..], &client[14..]);
    }
}
