//! Section 1: per-packet cost of `lb_xdp` through `BPF_PROG_TEST_RUN`, as the kernel reports
//! it (ns per run).
//!
//! Cases: a non-VIP packet passed to the stack; a new flow (SYN: service lookup, Maglev,
//! conntrack insert, SNAT port allocation); an established flow forward (ACK) and its reply;
//! each with conntrack holding about 0, 100k and 1M entries. The program runs in a private
//! namespace holding two veth pairs, routes and permanent neighbours, so `bpf_fib_lookup`
//! succeeds and every forward case takes the real fast path to `XDP_REDIRECT`.
//!
//! Rewriting cases (SYN, forward, reply) run with `repeat = 1` on a fresh frame each time
//! (with `repeat > 1` the kernel would run the program again on the already rewritten
//! buffer); the value of a round is the mean over its packets. `repeat = 1` includes the
//! kernel's timer read around the single run, so the non-VIP case is measured both with
//! `repeat = 1` and with one large `repeat`, and the difference is that overhead.

use super::report::{Goal, Measurement, Section, Target};
use super::stats::interleave;
use super::PrivateDataplane;
use super::Scale;
use crate::lab::packet::{ipv4_frame, tcp_header, Ipv4Spec};
use crate::lab::sys::{ip, ns_run, Netns};
use lb::dataplane::{Dataplane, LoadOptions};
use lb_common::{
    ipv4_to_be, maglev_table_offset, port_to_be, tcp_flags, BackendValue, GlobalConfig, ServiceKey,
    ServiceValue, VipValue, IPPROTO_TCP,
};
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

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

/// The measured cases.
pub const CASES: [&str; 5] = [
    "non-VIP pass (repeat = N)",
    "non-VIP pass (repeat = 1)",
    "new flow (SYN)",
    "established forward",
    "established reply",
];

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
            "-n", &n, "link", "add", "b0", "type", "veth", "peer", "name", "b1",
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

impl Bed {
    fn new(entries: u32) -> Result<Bed, String> {
        let mut pdp = PrivateDataplane::load(&LoadOptions::default())?;
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
        dp.set_tx_port(a0).map_err(e)?;
        dp.set_tx_port(b0).map_err(e)?;
        let mut bed = Bed {
            dp: pdp,
            a0,
            b0,
            flows: Vec::new(),
            next_new: 0,
        };
        // At least one established flow, so the established cases have something to hit.
        let flows = (entries / 2).max(1);
        for _ in 0..flows {
            let t = bed.syn()?.1;
            let i = bed.next_new - 1;
            let (c, p) = client_of(i);
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

    /// Mean ns/packet of `case` over `packets` packets.
    fn measure(&mut self, case: usize, packets: u32) -> Result<f64, String> {
        let n = self.flows.len();
        // Visit established flows in a scattered order (stride coprime with n).
        let stride = [7919usize, 104_729, 1_299_709]
            .into_iter()
            .find(|s| !n.is_multiple_of(*s))
            .unwrap_or(1);
        let mut total: u64 = 0;
        match case {
            0 => {
                let f = tcp_frame(client_of(0).0, 5555, BACKENDS[0], 22, tcp_flags::ACK);
                let r = self
                    .dp
                    .test_run(&f, Some(self.a0), packets)
                    .map_err(|e| e.to_string())?;
                expect(r.verdict, XDP_PASS, "non-VIP")?;
                return Ok(r.duration_ns as f64);
            }
            1 => {
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
            2 => {
                for _ in 0..packets {
                    total += self.syn()?.0;
                }
            }
            3 => {
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
            _ => {
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
        }
        Ok(total as f64 / f64::from(packets))
    }
}

/// Runs section 1. Returns the section and its targets.
pub fn run(scale: Scale) -> (Section, Vec<Target>) {
    let packets = scale.pick(350_000u32, 2_000);
    let rounds = scale.pick(3, 1);
    let levels: Vec<u32> = match scale {
        Scale::Full => LEVELS.to_vec(),
        Scale::Smoke => vec![0, 2_000],
    };
    let mut sec = Section::new(
        "xdp_cost",
        "1. Per-packet cost of lb_xdp (BPF_PROG_TEST_RUN)",
        format!(
            "Kernel-reported ns per run of the JIT-compiled `lb_xdp` (`BPF_PROG_TEST_RUN`), \
             {packets} packets per case per round, {rounds} rounds interleaved over cases and \
             fill levels (>= 1M packets per case in total for the full run). The data plane is \
             loaded with the default sizes (1M flows = 2M conntrack entries), one service with \
             4 backends and 16 SNAT addresses (ports 1024-65535), in a private namespace whose routes and permanent \
             neighbours make `bpf_fib_lookup` succeed, so every forward case ends in \
             `XDP_REDIRECT` (the verdict of every run is checked). Rewriting cases run with \
             `repeat = 1` on a fresh frame (the value is the mean over the round's packets); \
             established packets visit the filled flows in a scattered order, so a large table \
             costs its cache misses. The new-flow case adds 2 entries per packet, so the table \
             grows by {} entries during it. \"non-VIP pass (repeat = N)\" is one run with \
             `repeat = {packets}`; the difference to its `repeat = 1` twin is the kernel's \
             per-call timer overhead included in every `repeat = 1` number.",
            2 * packets
        ),
    );
    let mut targets = Vec::new();
    let fib = match FibNs::create() {
        Ok(f) => f,
        Err(e) => {
            for l in &levels {
                for c in CASES {
                    sec.push(
                        c,
                        &level_name(*l),
                        "ns/packet",
                        Measurement::not_measured(format!("cannot create the namespace: {e}")),
                    );
                }
            }
            let t = est_targets(&sec);
            return (sec, t);
        }
    };
    // Everything runs on one thread inside the namespace (setns is per thread).
    let results: Result<Vec<super::stats::VariantRuns>, String> = std::thread::scope(|s| {
        s.spawn(|| {
            enter(&fib.ns)?;
            let names: Vec<String> = levels.iter().map(|l| level_name(*l)).collect();
            let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
            // One variant per (level, case); a round loads a fresh data plane per level.
            let mut per: HashMap<(usize, usize), Vec<f64>> = HashMap::new();
            let mut errors: HashMap<usize, String> = HashMap::new();
            let _ = interleave(&name_refs, rounds, |li, _round| {
                let mut bed = match Bed::new(levels[li]) {
                    Ok(b) => b,
                    Err(e) => {
                        errors.entry(li).or_insert(e.clone());
                        return Err(e);
                    }
                };
                for c in 0..CASES.len() {
                    match bed.measure(c, packets) {
                        Ok(v) => per.entry((li, c)).or_default().push(v),
                        Err(e) => {
                            errors.entry(li * 100 + c + 1000).or_insert(e);
                        }
                    }
                }
                Ok(0.0)
            });
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
            Ok(out)
        })
        .join()
        .unwrap_or_else(|_| Err("the measuring thread panicked".into()))
    });
    match results {
        Ok(runs) => {
            for r in runs {
                let (case, level) = r.name.split_once('\u{0}').expect("joined above");
                sec.push(case, level, "ns/packet", Measurement::from_variant(&r));
            }
        }
        Err(e) => {
            for l in &levels {
                for c in CASES {
                    sec.push(
                        c,
                        &level_name(*l),
                        "ns/packet",
                        Measurement::not_measured(e.clone()),
                    );
                }
            }
        }
    }
    drop(fib);
    let l100 = level_name(levels[1.min(levels.len() - 1)]);
    sec.add_ratio(
        &format!("established forward / non-VIP pass (repeat = 1), {l100}"),
        "ns/packet",
        ("established forward", &l100),
        ("non-VIP pass (repeat = 1)", &l100),
    );
    targets.extend(est_targets(&sec));
    (sec, targets)
}

fn est_targets(sec: &Section) -> Vec<Target> {
    // Judge at the largest fill level measured (the conservative one).
    let level = sec
        .rows
        .last()
        .map(|r| r.variant.clone())
        .unwrap_or_default();
    let limit = "not profiled yet (bpftool prog profile was not run); every repeat = 1 run \
                 starts cold right after its syscall: compare the non-VIP repeat = 1 and \
                 repeat = N rows for the share of timer read and cold caches";
    vec![
        Target::new(
            &format!("per packet, established forward ({level})"),
            Goal::AtMost,
            60.0,
            "ns",
            sec.median("established forward", &level, "ns/packet"),
            limit,
        ),
        Target::new(
            &format!("per packet, new flow ({level})"),
            Goal::AtMost,
            150.0,
            "ns",
            sec.median("new flow (SYN)", &level, "ns/packet"),
            limit,
        ),
    ]
}
