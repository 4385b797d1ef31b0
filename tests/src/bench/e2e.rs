//! Section 3: end to end in the lab, same topology and load for every variant (lb native, lb
//! native with a DSR service, lb generic, nftables DNAT, HAProxy, nginx stream, direct
//! routing): new connections per second
//! (one request per connection), keep-alive requests per second with p50/p99 latency, and
//! single-stream throughput. Load from `wrk` run inside the client namespace.

use super::alt::{self, Variant};
use super::report::{Goal, Measurement, Section, Target};
use super::stats::interleave;
use super::{BenchError, Scale};
use crate::lab::Lab;

/// The variants of this section, in interleaving order.
pub const VARIANTS: [Variant; 7] = [
    Variant::LbNative,
    Variant::LbDsr,
    Variant::LbGeneric,
    Variant::Nftables,
    Variant::Haproxy,
    Variant::Nginx,
    Variant::Direct,
];

/// Bytes of one `/bulk` response in the throughput case (full run).
pub const BULK_BYTES: u64 = 64 << 20;
/// Bytes of one `/bulk` response in the smoke run: its 1 s wrk run must complete a request
/// even on a loaded machine (64 MiB took 1.8 s at the 36 MB/s seen with the 2 cores busy, and
/// a wrk run that completes no request fails the round).
pub const SMOKE_BULK_BYTES: u64 = 4 << 20;
/// wrk connections for the request-rate cases.
pub const CONNECTIONS: u32 = 32;

const NEW_CONNS: &str = "new connections (1 request each)";
const KEEPALIVE: &str = "keep-alive requests";
const STREAM: &str = "single-stream throughput";
/// Kernel counter of SYN retransmissions (`/proc/net/netstat`).
const SYN_RETRANS: &str = "TcpExt:TCPSynRetrans";
/// Kernel counter of SYNs refused by PAWS against a TIME_WAIT socket.
const PAWS_TW: &str = "TcpExt:PAWSTimewait";

/// What one wrk run reported.
#[derive(Debug, Clone, PartialEq)]
pub struct WrkResult {
    /// `Requests/sec`.
    pub requests_per_s: f64,
    /// `Transfer/sec` in bytes.
    pub bytes_per_s: f64,
    /// 50th percentile latency in ms (with `--latency`).
    pub p50_ms: Option<f64>,
    /// 99th percentile latency in ms (with `--latency`).
    pub p99_ms: Option<f64>,
    /// Requests completed.
    pub requests: u64,
    /// Socket errors (connect + read + write + timeout) and non-2xx responses.
    pub errors: u64,
}

fn parse_size(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    let mul = match unit {
        "" | "B" => 1.0,
        "KB" => 1024.0,
        "MB" => 1024.0 * 1024.0,
        "GB" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some(n * mul)
}

fn parse_ms(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

/// Parses wrk's text output.
pub fn parse_wrk(out: &str) -> Result<WrkResult, BenchError> {
    let err = |d: &str| BenchError::Parse {
        tool: "wrk",
        detail: format!("{d} in: {}", out.trim()),
    };
    let mut r = WrkResult {
        requests_per_s: f64::NAN,
        bytes_per_s: f64::NAN,
        p50_ms: None,
        p99_ms: None,
        requests: 0,
        errors: 0,
    };
    for line in out.lines() {
        let l = line.trim();
        if let Some(v) = l.strip_prefix("Requests/sec:") {
            r.requests_per_s = v.trim().parse().map_err(|_| err("bad Requests/sec"))?;
        } else if let Some(v) = l.strip_prefix("Transfer/sec:") {
            r.bytes_per_s = parse_size(v).ok_or_else(|| err("bad Transfer/sec"))?;
        } else if let Some(v) = l.strip_prefix("50%") {
            r.p50_ms = parse_ms(v);
        } else if let Some(v) = l.strip_prefix("99%") {
            r.p99_ms = parse_ms(v);
        } else if l.contains(" requests in ") {
            r.requests = l
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| err("bad request count"))?;
        } else if let Some(v) = l.strip_prefix("Socket errors:") {
            r.errors += v
                .split(',')
                .filter_map(|p| {
                    p.split_whitespace()
                        .last()
                        .and_then(|n| n.parse::<u64>().ok())
                })
                .sum::<u64>();
        } else if let Some(v) = l.strip_prefix("Non-2xx or 3xx responses:") {
            r.errors += v.trim().parse::<u64>().unwrap_or(0);
        }
    }
    if !r.requests_per_s.is_finite() {
        return Err(err("no Requests/sec line"));
    }
    Ok(r)
}

fn wrk(lab: &Lab, args: &[String]) -> Result<WrkResult, String> {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = lab.client_run("wrk", &a).map_err(|e| e.to_string())?;
    let r = parse_wrk(&out).map_err(|e| e.to_string())?;
    if r.requests == 0 {
        return Err(format!("wrk completed no request: {}", out.trim()));
    }
    // More than 1% failed requests means the variant did not carry the load.
    if r.errors * 100 > r.requests {
        return Err(format!("{} errors in {} requests", r.errors, r.requests));
    }
    Ok(r)
}

/// The 1-minute load average of the machine (`/proc/loadavg`): other work running next to
/// the bench shows here.
fn load_average() -> Result<f64, String> {
    let text = std::fs::read_to_string("/proc/loadavg")
        .map_err(|e| format!("reading /proc/loadavg: {e}"))?;
    text.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("/proc/loadavg: unexpected {text:?}"))
}

/// The variants of the CPU rows (issue 12): lb (full NAT and DSR), nftables and HAProxy against
/// direct routing,
/// each with the lab's first backend only, so backend fan-out does not enter the comparison.
pub const CPU_VARIANTS: [Variant; 5] = [
    Variant::LbNative,
    Variant::LbDsr,
    Variant::Nftables,
    Variant::Haproxy,
    Variant::Direct,
];
const CPU_NEW: &str = "CPU per new connection (1 backend)";
const CPU_KA: &str = "CPU per keep-alive request (1 backend)";
/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`, 100 on every Linux architecture).
const USER_HZ: u64 = 100;

/// CPU time so far, in microseconds, of everything that works for the lab's traffic: every
/// process in one of the lab's network namespaces (balancer daemons, backend servers;
/// `utime` + `stime` of `/proc/<pid>/stat`), the kernel's `ksoftirqd` threads, and the
/// reaped children of this process (`wrk`, run and waited for in between; `getrusage`).
/// Packet work in softirq (XDP, forwarding, nftables) is charged to the task it interrupted
/// (this kernel has tick accounting without `IRQ_TIME_ACCOUNTING`), so it lands mostly in the
/// sending or receiving lab process or in `ksoftirqd` (softirq work that interrupts an idle CPU
/// or an unrelated process is missed). Work of other processes on the machine does not count.
/// Resolution: 10 ms ticks per process and sample.
fn lab_cpu_us(lab: &Lab) -> Result<u64, String> {
    let mut nets = Vec::new();
    for ns in alt::connecting_namespaces(lab)
        .into_iter()
        .chain(alt::backend_namespaces(lab))
    {
        let path = format!("/run/netns/{ns}");
        let meta = std::fs::metadata(&path).map_err(|e| format!("{path}: {e}"))?;
        nets.push(std::os::unix::fs::MetadataExt::ino(&meta));
    }
    let mut ticks = 0u64;
    let dir = std::fs::read_dir("/proc").map_err(|e| format!("reading /proc: {e}"))?;
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        // Processes come and go: any read error skips the process.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((comm, t)) = parse_pid_stat(&stat) else {
            continue;
        };
        let in_lab = std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .map(|m| nets.contains(&std::os::unix::fs::MetadataExt::ino(&m)))
            .unwrap_or(false);
        if in_lab || comm.starts_with("ksoftirqd/") {
            ticks += t;
        }
    }
    // SAFETY: getrusage fills the struct it is given.
    let children = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) != 0 {
            return Err(format!("getrusage: {}", std::io::Error::last_os_error()));
        }
        let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
        us(ru.ru_utime) + us(ru.ru_stime)
    };
    Ok(ticks * (1_000_000 / USER_HZ) + children)
}

/// The command name and `utime + stime` (ticks) of a `/proc/<pid>/stat` line.
fn parse_pid_stat(stat: &str) -> Option<(&str, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?;
    // After the command: state (field 3) ... utime (14) and stime (15).
    let f: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// One wrk run and the lab's CPU microseconds per completed request during it
/// ([`lab_cpu_us`]).
fn wrk_cpu(lab: &Lab, args: &[String]) -> Result<f64, String> {
    let before = lab_cpu_us(lab)?;
    let r = wrk(lab, args)?;
    let us = lab_cpu_us(lab)?.saturating_sub(before);
    Ok(us as f64 / r.requests as f64)
}

/// Values of one CPU round: CPU us per new connection, per keep-alive request, load before.
type CpuValues = [f64; 3];

/// One CPU round of `v` with one backend: the new-connection and keep-alive loads of the
/// main rows, each with the machine's busy CPU per completed request.
fn cpu_round(lab: &mut Lab, v: Variant, secs: u64) -> Result<CpuValues, String> {
    let load = load_average()?;
    let active = alt::up_with_backends(lab, v, false, 1)?;
    let t = v.target();
    let common = || {
        vec![
            "-t1".to_string(),
            format!("-c{CONNECTIONS}"),
            format!("-d{secs}s"),
            "--timeout".into(),
            "2s".into(),
        ]
    };
    let run = || -> Result<CpuValues, String> {
        let mut a = common();
        a.extend([
            "-H".into(),
            "Connection: close".into(),
            format!("http://{t}/id"),
        ]);
        let nc = wrk_cpu(lab, &a)?;
        let mut a = common();
        a.push(format!("http://{t}/id"));
        let ka = wrk_cpu(lab, &a)?;
        Ok([nc, ka, load])
    };
    let r = run();
    let d = active.down(lab);
    let r = r?;
    d?;
    Ok(r)
}

/// The CPU rows: per variant the CPU per connection and per request, and for each balancer
/// the extra CPU over direct routing, from the differences within each interleaved round.
fn cpu_rows(sec: &mut Section, lab: Result<&mut Lab, String>, secs: u64, rounds: usize) {
    let metrics = [
        (CPU_NEW, "CPU us per connection"),
        (CPU_KA, "CPU us per request"),
        (CPU_NEW, "machine load (1 min) before the round"),
    ];
    let extra = [
        (CPU_NEW, "extra CPU us per connection over direct"),
        (CPU_KA, "extra CPU us per request over direct"),
    ];
    let lab = match lab {
        Ok(lab) => lab,
        Err(e) => {
            for v in CPU_VARIANTS {
                for (case, m) in metrics.iter().chain(&extra) {
                    sec.push(case, v.name(), m, Measurement::not_measured(e.clone()));
                }
            }
            return;
        }
    };
    let names: Vec<&str> = CPU_VARIANTS.iter().map(|v| v.name()).collect();
    // per[variant][round]: None when that round of the variant failed.
    let mut per: Vec<Vec<Option<CpuValues>>> = vec![Vec::new(); CPU_VARIANTS.len()];
    let runs = interleave(&names, rounds, |i, round| {
        let r = cpu_round(lab, CPU_VARIANTS[i], secs);
        per[i].resize(round + 1, None);
        per[i][round] = r.as_ref().ok().copied();
        r.map(|r| r[0])
    });
    let direct = CPU_VARIANTS.len() - 1;
    for (i, v) in CPU_VARIANTS.iter().enumerate() {
        for (k, (case, m)) in metrics.iter().enumerate() {
            let values: Vec<f64> = per[i].iter().flatten().map(|r| r[k]).collect();
            let meas = if values.is_empty() {
                Measurement::from_variant(&runs[i])
            } else {
                Measurement::from_runs(values)
            };
            sec.push(case, v.name(), m, meas);
        }
        if i == direct {
            continue;
        }
        for (k, (case, m)) in extra.iter().enumerate() {
            let diffs: Vec<f64> = per[i]
                .iter()
                .zip(&per[direct])
                .filter_map(|(a, d)| Some(a.as_ref()?[k] - d.as_ref()?[k]))
                .collect();
            let meas = if diffs.is_empty() {
                Measurement::not_measured(format!(
                    "no round measured both {} and {}",
                    v.name(),
                    CPU_VARIANTS[direct].name()
                ))
            } else {
                Measurement::from_runs(diffs)
            };
            sec.push(case, v.name(), m, meas);
        }
    }
}

/// Values of one round, in the order of the section's metric rows.
type RoundValues = [f64; 8];

/// One round of one variant: new conns/s, keep-alive req/s, p50 ms, p99 ms, bytes/s, SYN
/// retransmissions per 1000 new connections (client and balancer stacks), and SYNs the
/// backends rejected by PAWS against a TIME_WAIT socket, both during the new-connection run.
fn round(lab: &mut Lab, v: Variant, secs: u64, bulk: u64) -> Result<RoundValues, String> {
    let load = load_average()?;
    let active = alt::up(lab, v, false)?;
    let t = v.target();
    let d = format!("{secs}s");
    let connecting = alt::connecting_namespaces(lab);
    let backends = alt::backend_namespaces(lab);
    let run = || -> Result<RoundValues, String> {
        let common = |c: u32| {
            vec![
                "-t1".to_string(),
                format!("-c{c}"),
                format!("-d{d}"),
                "--timeout".into(),
                "2s".into(),
            ]
        };
        let mut a = common(CONNECTIONS);
        a.extend([
            "-H".into(),
            "Connection: close".into(),
            format!("http://{t}/id"),
        ]);
        let syn_before = alt::counter_sum(&connecting, SYN_RETRANS)?;
        let paws_before = alt::counter_sum(&backends, PAWS_TW)?;
        let nc = wrk(lab, &a)?;
        let syn = alt::counter_sum(&connecting, SYN_RETRANS)? - syn_before;
        let paws = alt::counter_sum(&backends, PAWS_TW)? - paws_before;
        let mut a = common(CONNECTIONS);
        a.extend(["--latency".into(), format!("http://{t}/id")]);
        let ka = wrk(lab, &a)?;
        let mut a = common(1);
        a.push(format!("http://{t}/bulk?bytes={bulk}"));
        let st = wrk(lab, &a)?;
        Ok([
            nc.requests_per_s,
            ka.requests_per_s,
            ka.p50_ms.ok_or("wrk printed no 50% latency")?,
            ka.p99_ms.ok_or("wrk printed no 99% latency")?,
            st.bytes_per_s,
            syn as f64 * 1000.0 / nc.requests.max(1) as f64,
            paws as f64,
            load,
        ])
    };
    let r = run();
    let d = active.down(lab);
    let r = r?;
    d?;
    Ok(r)
}

/// Runs section 3 on `lab`, or reports `lab_error` for every row.
pub fn run(lab: Result<&mut Lab, String>, scale: Scale) -> (Section, Vec<Target>) {
    let secs = scale.pick(3, 1);
    let bulk = scale.pick(BULK_BYTES, SMOKE_BULK_BYTES);
    let mut sec = Section::new(
        "e2e",
        "3. End to end in the lab",
        format!(
            "The lab of `tests/src/lab` (client, balancer, 2 backends running `lb-testsrv`, \
             one veth per link, transmit checksum offload off on the hosts), the same for \
             every variant; variants are brought up and down in turn on the same lab, {} \
             rounds interleaved. Load is `wrk` (Debian) in the client namespace, one thread: \
             new connections = `-c{CONNECTIONS} -H 'Connection: close' GET /id` for {secs} s \
             (each request on its own connection); keep-alive = `-c{CONNECTIONS} --latency GET \
             /id` for {secs} s (p50/p99 from wrk's latency distribution); single stream = \
             `-c1 GET /bulk?bytes={}` for {secs} s. lb runs with 16 SNAT addresses, a 1 s \
             closing timeout (SNAT port reuse) and no health checks; lb generic gets GRO off on \
             the balancer (it must see wire-sized packets), all other variants GRO on. HAProxy \
             2.6 (TCP mode) and nginx 1.22 stream listen on the VIP in the balancer namespace; \
             nftables is `numgen random` DNAT + masquerade; direct = the client talks to \
             backend 1 through the balancer's plain IP forwarding. Before every round of \
             every variant the balancer's kernel conntrack table is flushed and every \
             TIME_WAIT socket in the lab is destroyed (`conntrack -F`, `ss -K state \
             time-wait`): nftables, HAProxy and nginx all reach the backends from the \
             balancer's own address, so without it a variant's SYNs meet the previous \
             variant's TIME_WAIT sockets on the same 4-tuples with timestamps from another \
             clock (Linux offsets them per 4-tuple), the backends refuse about half of them \
             by PAWS and the clients retransmit (this cut nftables from 6.4k to 0.4k \
             connections/s in earlier runs; see the method section). \
             The two counter rows check that, during the new-connection run: SYN \
             retransmissions of the client and balancer stacks per 1000 completed \
             connections, and SYNs the backends refused by PAWS (`TcpExtTCPSynRetrans`, \
             `TcpExtPAWSTimewait`). The load row is the machine's 1-minute load average \
             before each round (the bench's own previous round counts in it): a round whose \
             load stands out shared the 2 cores with other work. \
             Within a run a variant keeps its own TIME_WAIT sockets, as it would in \
             production. Client, balancer and backends share 2 cores. A run with more than 1% \
             failed requests is not counted. The CPU rows (issue 12) run after the others, \
             interleaved over lb native, lb native DSR, nftables, HAProxy and direct with the lab's first \
             backend only (so backend fan-out does not enter the comparison): the same \
             new-connection and keep-alive loads, each with the lab's CPU time during the \
             wrk run divided by the completed requests: user and system time of every \
             process in the lab's namespaces (balancer daemons, backend servers), of wrk and \
             of the kernel's ksoftirqd threads (this kernel charges softirq work, XDP and \
             forwarding included, to the task it interrupts: tick accounting without \
             IRQ_TIME_ACCOUNTING); the extra rows are each balancer's value minus direct's \
             within the same round, so what the balancer costs on top of the same client \
             and backend work. Other processes on the machine do not count (ksoftirqd \
             aside), but they slow the lab's processes through shared caches. Process times \
             come in 10 ms ticks per process and sample, so with about ten lab processes a \
             run's total is uncertain by up to about 0.1 s: a difference of a few us per \
             connection is resolved by the full run's 3 s rounds, not by the smoke run. \
             **lb native DSR** (issue 13) is lb native with the service in DSR mode \
             (`forwarding: dsr`, outer source the balancer's address toward backend 1, the \
             same lbd settings otherwise): for each of its rounds the backends are set up with \
             exactly the commands `lbctl backend-setup --dsr VIP --source NODE --decap xdp --iface \
             e0` prints (VIP on `lo`, arp_ignore 1, arp_announce 2, lb's XDP decapsulator \
             `lb_decap` on `e0` in native mode, accepting only the balancer's addresses as outer \
             sources: this kernel has no `ipip` module) and their \
             `lb-testsrv` listens on VIP:80 instead of its own address:8080; afterwards \
             `lbctl decap detach e0`, the VIP removed, the sysctls restored and the server back \
             on its address, so the other variants run on the lab as before. What differs \
             from full NAT in this lab: the client's packets reach the backend inside a \
             20-byte outer header, and the backend's answer goes to the client itself, but in \
             this one-balancer lab its route still crosses the balancer namespace: lb_xdp on \
             `bk<i>` passes it untouched (not a VIP or SNAT address) to that namespace's \
             kernel forwarding, where full NAT rewrites and redirects it in XDP. On a real \
             network the answer would bypass the balancer host.",
            scale.rounds(),
            bulk
        ),
    );
    let metrics = [
        (NEW_CONNS, "connections/s"),
        (KEEPALIVE, "requests/s"),
        (KEEPALIVE, "p50 latency ms"),
        (KEEPALIVE, "p99 latency ms"),
        (STREAM, "MB/s"),
        (NEW_CONNS, "SYN retransmits per 1000 conns"),
        (NEW_CONNS, "SYNs refused by PAWS at backends"),
        (NEW_CONNS, "machine load (1 min) before the round"),
    ];
    match lab {
        Err(e) => {
            for v in VARIANTS {
                for (case, m) in metrics {
                    sec.push(case, v.name(), m, Measurement::not_measured(e.clone()));
                }
            }
            cpu_rows(&mut sec, Err(e), secs, scale.rounds());
        }
        Ok(lab) => {
            let names: Vec<&str> = VARIANTS.iter().map(|v| v.name()).collect();
            let mut per: Vec<Vec<RoundValues>> = vec![Vec::new(); VARIANTS.len()];
            let runs = interleave(&names, scale.rounds(), |i, _| {
                let r = round(lab, VARIANTS[i], secs, bulk)?;
                per[i].push(r);
                Ok(r[0])
            });
            for (i, v) in VARIANTS.iter().enumerate() {
                for (k, (case, m)) in metrics.iter().enumerate() {
                    let values: Vec<f64> = per[i]
                        .iter()
                        .map(|r| if k == 4 { r[k] / 1e6 } else { r[k] })
                        .collect();
                    let meas = if values.is_empty() {
                        Measurement::from_variant(&runs[i])
                    } else {
                        Measurement::from_runs(values)
                    };
                    sec.push(case, v.name(), m, meas);
                }
            }
            cpu_rows(&mut sec, Ok(lab), secs, scale.rounds());
        }
    }
    let n = |v: Variant| v.name();
    for (num, den) in [
        (Variant::LbNative, Variant::Direct),
        (Variant::LbNative, Variant::Haproxy),
        (Variant::LbNative, Variant::Nftables),
        (Variant::LbNative, Variant::Nginx),
        (Variant::LbGeneric, Variant::Direct),
    ] {
        sec.add_ratio(
            &format!("{} / {}, new connections/s", n(num), n(den)),
            "connections/s",
            (NEW_CONNS, n(num)),
            (NEW_CONNS, n(den)),
        );
    }
    sec.add_ratio(
        "lb native / direct, keep-alive requests/s",
        "requests/s",
        (KEEPALIVE, n(Variant::LbNative)),
        (KEEPALIVE, n(Variant::Direct)),
    );
    sec.add_ratio(
        "lb native / direct, single-stream MB/s",
        "MB/s",
        (STREAM, n(Variant::LbNative)),
        (STREAM, n(Variant::Direct)),
    );
    // DSR next to full NAT (issue 13). Appended: the targets below index the ratios above.
    for (case, metric, what) in [
        (NEW_CONNS, "connections/s", "new connections/s"),
        (KEEPALIVE, "requests/s", "keep-alive requests/s"),
        (STREAM, "MB/s", "single-stream MB/s"),
    ] {
        sec.add_ratio(
            &format!(
                "{} / {} (full NAT), {what}",
                n(Variant::LbDsr),
                n(Variant::LbNative)
            ),
            metric,
            (case, n(Variant::LbDsr)),
            (case, n(Variant::LbNative)),
        );
    }
    sec.add_ratio(
        &format!(
            "{} / {} (full NAT), CPU us per connection",
            n(Variant::LbDsr),
            n(Variant::LbNative)
        ),
        "CPU us per connection",
        (CPU_NEW, n(Variant::LbDsr)),
        (CPU_NEW, n(Variant::LbNative)),
    );
    let cell = |v: Variant, case: &str, metric: &str| {
        sec.median(case, v.name(), metric)
            .map(super::report::fmt_num)
            .unwrap_or_else(|_| "?".into())
    };
    let lb_retrans = sec
        .median(
            NEW_CONNS,
            Variant::LbNative.name(),
            "SYN retransmits per 1000 conns",
        )
        .unwrap_or(0.0);
    let lb_cost = if lb_retrans >= 0.5 {
        format!(
            "; lb itself: {} SYN retransmissions per 1000 connections and {} PAWS refusals \
             per run at the backends: a SYN whose SNAT 4-tuple still has a TIME_WAIT socket \
             on the backend from an earlier connection with another timestamp clock is refused \
             by PAWS (a challenge ACK, a reset and a retry)",
            cell(
                Variant::LbNative,
                NEW_CONNS,
                "SYN retransmits per 1000 conns"
            ),
            cell(
                Variant::LbNative,
                NEW_CONNS,
                "SYNs refused by PAWS at backends"
            ),
        )
    } else {
        String::new()
    };
    let limit = format!(
        "client, balancer and backends share 2 cores and the user-space endpoints (wrk, \
         lb-testsrv) take most of them, so every variant is capped near the direct path \
         ({} connections/s without a balancer){lb_cost}",
        cell(Variant::Direct, NEW_CONNS, "connections/s"),
    );
    let targets = vec![
        Target::new(
            "new conns/s, lb native vs direct",
            Goal::AtLeast,
            0.9,
            "x",
            sec.ratios[0].value.clone(),
            limit.clone(),
        ),
        Target::new(
            "new conns/s, lb native vs HAProxy",
            Goal::AtLeast,
            2.0,
            "x",
            sec.ratios[1].value.clone(),
            limit.clone(),
        ),
        Target::new(
            "new conns/s, lb native vs nftables",
            Goal::Above,
            1.0,
            "x",
            sec.ratios[2].value.clone(),
            limit,
        ),
    ];
    (sec, targets)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Running 3s test @ http://192.0.2.10:80/id
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   730.12us  210.44us   5.21ms   80.00%
    Req/Sec    43.21k     1.02k   45.00k    70.00%
  Latency Distribution
     50%  700.00us
     75%  800.00us
     90%    1.00ms
     99%    1.50ms
  129630 requests in 3.00s, 10.51MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
Requests/sec:  43210.00
Transfer/sec:      3.50MB
";

    #[test]
    fn pid_stat_gives_command_and_cpu_ticks() {
        let stat = "4242 (lb-testsrv (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 17 23 0 0 20 0 \
                    2 0 123 1000 10 18446744073709551615";
        assert_eq!(parse_pid_stat(stat), Some(("lb-testsrv (x)", 17 + 23)));
        assert_eq!(parse_pid_stat("4242 (wrk) S 1 2"), None);
        assert_eq!(parse_pid_stat("garbage"), None);
    }

    #[test]
    fn wrk_output_parses() {
        let r = parse_wrk(SAMPLE).unwrap();
        assert_eq!(r.requests_per_s, 43210.0);
        assert_eq!(r.bytes_per_s, 3.5 * 1024.0 * 1024.0);
        assert_eq!(r.p50_ms, Some(0.7));
        assert_eq!(r.p99_ms, Some(1.5));
        assert_eq!(r.requests, 129_630);
        assert_eq!(r.errors, 3);
    }

    #[test]
    fn wrk_output_without_rate_is_an_error() {
        assert!(parse_wrk("unable to connect to 192.0.2.10:80 Connection refused").is_err());
    }
}
