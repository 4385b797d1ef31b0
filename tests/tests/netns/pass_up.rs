//! Pass-up paths: packets lb rewrites but cannot send itself because the next hop's neighbour
//! is unresolved (`PASS_FIB_NO_NEIGH`) go to the kernel with their rewrite complete (source =
//! SNAT address toward a backend, VIP toward a client), and the kernel resolves the neighbour
//! and forwards them. Run with the VIP and SNAT address not assigned on the balancer (the lab's
//! default) and assigned on it (VIP on `pub0`, SNAT address on `lo`: the natural set-up, where
//! the kernel drops them as martians unless `accept_local` is on; see docs/architecture.md,
//! "Pass-up requirements").

use super::*;
use lb_tests::lab::sys::{ns_run, wait_for};

/// Where the VIP and SNAT address live on the balancer host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Host {
    /// Assigned to no interface (reached by routes only).
    NotLocal,
    /// VIP `/32` on `pub0`, SNAT address `/32` on `lo`.
    Local,
}

/// Which of the balancer's neighbour entries a round deletes before its connections.
#[derive(Debug, Clone, Copy)]
enum Flush {
    /// The backend's (on `bk1`): the client's SYN is passed up.
    Backend,
    /// The client's (on `pub0`): the backend's SYN-ACK is passed up.
    Client,
    /// Both.
    Both,
}

/// Connections per round; only the first meets the deleted neighbour entry.
const PER_ROUND: usize = 5;

macro_rules! pass_up_cases {
    ($($name:ident: $mode:expr, $host:expr;)*) => {$(
        #[test]
        fn $name() {
            pass_up($mode, $host)
        }
    )*};
}

pass_up_cases!(
    native_not_local: Mode::Native, Host::NotLocal;
    native_local: Mode::Native, Host::Local;
    generic_not_local: Mode::Generic, Host::NotLocal;
    generic_local: Mode::Generic, Host::Local;
);

/// The kernel's SNMP counters of namespace `ns` (`/proc/net/snmp` and `/proc/net/netstat`),
/// keyed `Group.Name` (`Tcp.RetransSegs`, `TcpExt.IPReversePathFilter`, ...).
fn kernel_counters(ns: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for file in ["/proc/net/snmp", "/proc/net/netstat"] {
        let text = ns_run(ns, "cat", &[file]).unwrap_or_else(|e| panic!("{ns}: {file}: {e}"));
        let lines: Vec<&str> = text.lines().collect();
        for pair in lines.chunks(2) {
            let [names, values] = pair else { continue };
            let (group, names) = names.split_once(':').expect("`Group: names`");
            let (_, values) = values.split_once(':').expect("`Group: values`");
            for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
                // Signed values (`Tcp.MaxConn` = -1) are of no interest here.
                if let Ok(v) = v.parse() {
                    out.insert(format!("{group}.{n}"), v);
                }
            }
        }
    }
    out
}

/// `after[key] - before[key]` for every key in `keys`.
fn deltas(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
    keys: &[&str],
) -> BTreeMap<String, u64> {
    keys.iter()
        .map(|k| {
            let get = |m: &BTreeMap<String, u64>| {
                *m.get(*k)
                    .unwrap_or_else(|| panic!("kernel counter {k} missing"))
            };
            ((*k).to_string(), get(after).saturating_sub(get(before)))
        })
        .collect()
}

/// lbd's `pass_fib_no_neigh` counter (sampled by lbd once a second).
fn no_neigh(l: &Lab) -> u64 {
    l.lbd()
        .unwrap()
        .counters()
        .expect("lbctl stats")
        .get("pass_fib_no_neigh")
        .copied()
        .expect("pass_fib_no_neigh in lbctl stats")
}

/// For each round of [`Flush`]: delete the balancer's neighbour entries, open [`PER_ROUND`]
/// connections through the VIP, and check that every one succeeded, that lb passed packets up
/// (its counter rose by at least the number of flushed directions), that the kernel forwarded
/// them (`Ip.ForwDatagrams` rose at least as much: nothing was dropped as a martian or by
/// reverse-path filtering) and that nothing was retransmitted or arrived with a bad checksum
/// anywhere (zero loss, complete rewrite).
fn pass_up(mode: Mode, host: Host) {
    let _serial = exclusive();
    let mut l = lab(1, mode);
    let lb = l.balancer_ns().to_string();
    if host == Host::Local {
        l.balancer_run("ip", &["addr", "add", &format!("{VIP}/32"), "dev", "pub0"])
            .expect("VIP on pub0");
        l.balancer_run(
            "ip",
            &["addr", "add", &format!("{SNAT_ADDR}/32"), "dev", "lo"],
        )
        .expect("SNAT address on lo");
    }
    // No health checks: their connections from the balancer would resolve the backend's
    // neighbour entry between a flush and the test's connection.
    let cfg = with_config(&l, |c| {
        c.services[0].health = HealthSpec {
            kind: "none".into(),
            ..HealthSpec::default()
        };
    });
    l.start_lbd(&cfg)
        .unwrap_or_else(|e| panic!("starting lbd: {e}"));
    let namespaces = [
        l.client_ns().to_string(),
        lb.clone(),
        l.backend_ns(1).to_string(),
    ];
    let snapshot = || -> Vec<BTreeMap<String, u64>> {
        namespaces.iter().map(|ns| kernel_counters(ns)).collect()
    };
    for flush in [Flush::Backend, Flush::Client, Flush::Both] {
        let what = format!("{mode:?}, {host:?}, flush {flush:?}");
        let devs: &[&str] = match flush {
            Flush::Backend => &["bk1"],
            Flush::Client => &["pub0"],
            Flush::Both => &["bk1", "pub0"],
        };
        // lbd samples the counters once a second: let the previous traffic (the start-up
        // probe's own pass-ups, the previous round) reach the sample first.
        std::thread::sleep(Duration::from_millis(1500));
        let passed_before = no_neigh(&l);
        let kernel_before = snapshot();
        for dev in devs {
            ns_run(&lb, "ip", &["neigh", "flush", "dev", dev])
                .unwrap_or_else(|e| panic!("{what}: flushing {dev}'s neighbours: {e}"));
            let left = ns_run(&lb, "ip", &["neigh", "show", "dev", dev]).unwrap();
            assert!(
                !left.contains("REACHABLE") && !left.contains("STALE"),
                "{what}: {dev} still has neighbours: {left}"
            );
        }
        let probes = l
            .in_client(|| async {
                let mut v = Vec::new();
                for _ in 0..PER_ROUND {
                    v.push(probe(vip_addr(), PROBE_TIMEOUT).await?);
                }
                Ok(v)
            })
            .unwrap_or_else(|e| panic!("{what}: {PER_ROUND} connections: {e}"));
        for p in &probes {
            assert_eq!(p.client_peer, vip_addr(), "{what}: {p:?}");
            assert!(
                p.seen_peer.starts_with(&format!("{SNAT_ADDR}:")),
                "{what}: {p:?}"
            );
        }
        let want = devs.len() as u64;
        let passed = wait_for(
            "pass_fib_no_neigh to rise",
            Duration::from_secs(5),
            Duration::from_millis(200),
            || {
                let d = no_neigh(&l) - passed_before;
                (d >= want).then_some(d)
            },
        )
        .unwrap_or_else(|e| {
            panic!(
                "{what}: {e} by {want} (the test did not exercise the pass-up path): {:?}",
                l.lbd().unwrap().counters()
            )
        });
        let kernel_after = snapshot();
        let keys = [
            "Tcp.RetransSegs",
            "Tcp.InCsumErrors",
            "TcpExt.TCPSynRetrans",
        ];
        for (i, ns) in namespaces.iter().enumerate() {
            let d = deltas(&kernel_before[i], &kernel_after[i], &keys);
            assert!(
                d.values().all(|&v| v == 0),
                "{what}: losses or bad checksums in {ns}: {d:?}"
            );
        }
        let d = deltas(
            &kernel_before[1],
            &kernel_after[1],
            &[
                "Ip.ForwDatagrams",
                "Ip.InReceives",
                "Ip.InDiscards",
                "Ip.InAddrErrors",
                "Ip.OutDiscards",
                "TcpExt.IPReversePathFilter",
            ],
        );
        assert_eq!(d["TcpExt.IPReversePathFilter"], 0, "{what}: {d:?}");
        assert!(
            d["Ip.ForwDatagrams"] >= passed,
            "{what}: lb passed {passed} packets up but the kernel forwarded {} (dropped as \
             martians?): {d:?}",
            d["Ip.ForwDatagrams"]
        );
    }
}
