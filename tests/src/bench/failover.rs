//! Section 7: failover (issue 10). Failed connections and connect/answer times while a backend
//! dies, lb next to HAProxy with `retries 3`, `option redispatch` and health checks, in the
//! same lab and under the same load as the netns scenarios of `tests/tests/netns/
//! backend_failure.rs`.
//!
//! One round: a fresh lab (3 backends, native mode), the balancer up with TCP checks every
//! 2 s (timeout 1 s, fall 3, rise 2), a client opening 50 connections/s for 14 s (one
//! `GET /id` each, 15 s timeout per connection); 3 s in, backend 2 dies: its server process is
//! killed (its kernel answers SYNs with RST) or its link goes down (SYNs vanish). Counted:
//! failed connections of all; from the connections started from the death to the end of the
//! load: the time to connect and the time to the answer.
//!
//! Connect time means different things: through lb (which forwards packets) the client's
//! handshake is with the backend itself, so a lost SYN shows in it; through HAProxy (a full
//! proxy) the client's handshake is with HAProxy and always fast, and HAProxy's own retries
//! show only in the time to the answer. The answer time (connect plus `GET /id` answered) is
//! the one to compare.

use super::report::{Measurement, Section};
use super::Scale;
use crate::lab::failover::{percentile, ConnRecord, RateLoad};
use crate::lab::lbd::HealthSpec;
use crate::lab::sys::{self, ns_command, Proc};
use crate::lab::{backend_addr, Lab, LabOptions, Mode, VIP, VIP_PORT};
use std::net::SocketAddrV4;
use std::time::Duration;

/// New connections per second.
pub const RATE: u32 = 50;
/// Length of the load.
pub const LOAD: Duration = Duration::from_secs(14);
/// When the backend dies, from the start of the load.
pub const EVENT_AT: Duration = Duration::from_secs(3);
/// Timeout of one connection (connect and answer).
pub const CONN_TIMEOUT: Duration = Duration::from_secs(15);
/// The backend that dies (1-based).
pub const VICTIM: usize = 2;
/// Backends in the lab.
pub const BACKENDS: usize = 3;

/// The health checks both balancers run: issue 10's measurement.
pub fn health() -> HealthSpec {
    HealthSpec {
        kind: "tcp".into(),
        interval_ms: 2000,
        timeout_ms: 1000,
        rise: 2,
        fall: 3,
    }
}

/// HAProxy in TCP mode with the same checks as lb (`inter 2s fall 3 rise 2`, connect timeout
/// 1 s), `retries 3` and `option redispatch`: a failed connect to a server is retried, the last
/// retry on another server.
pub fn haproxy_config(backends: &[SocketAddrV4]) -> String {
    let mut c = format!(
        "global\n  maxconn 4000\n\ndefaults\n  mode tcp\n  timeout connect 1s\n  timeout client 30s\n  \
         timeout server 30s\n  retries 3\n  option redispatch\n\nfrontend fe\n  bind {VIP}:{VIP_PORT}\n  \
         default_backend be\n\nbackend be\n  balance roundrobin\n  default-server inter 2s fall 3 rise 2\n"
    );
    for (i, b) in backends.iter().enumerate() {
        c.push_str(&format!("  server b{} {b} check\n", i + 1));
    }
    c
}

/// How the backend dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Death {
    /// Its server process is killed: SYNs are answered with RST.
    ProcessKilled,
    /// Its link goes down: SYNs vanish.
    LinkDown,
}

impl Death {
    /// The row's case.
    pub fn name(self) -> &'static str {
        match self {
            Death::ProcessKilled => "server process killed (RST to SYN)",
            Death::LinkDown => "link down (SYNs vanish)",
        }
    }
}

/// The balancer under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balancer {
    /// lb, native XDP.
    Lb,
    /// HAProxy with checks, retries and redispatch.
    Haproxy,
}

impl Balancer {
    /// The row's variant.
    pub fn name(self) -> &'static str {
        match self {
            Balancer::Lb => "lb native",
            Balancer::Haproxy => "HAProxy (check, retries 3, redispatch)",
        }
    }
}

/// What one round measured.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundResult {
    /// Connections opened in the whole run.
    pub total: usize,
    /// Of which failed (refused, reset, timed out, wrong answer).
    pub failed: usize,
    /// Connections started from the death to the end of the load.
    pub during: usize,
    /// Their connect time percentiles p50, p99 and the max, in ms (a failed connect counts
    /// as the timeout).
    pub connect_ms: [f64; 3],
    /// Their time to the answer of `GET /id`, same percentiles, in ms (a failed connection
    /// counts as the timeout).
    pub answer_ms: [f64; 3],
    /// Each failed connection: when it started relative to the death (negative: before it),
    /// in ms, and its error with its connect time (a connection whose handshake completed
    /// before the death and whose request was then lost is told apart from one that never
    /// connected).
    pub failures: Vec<(f64, String)>,
}

fn ms(d: Duration) -> f64 {
    d.as_micros() as f64 / 1e3
}

/// p50, p99 and max of `v` (sorted here), in ms.
fn spread_ms(mut v: Vec<Duration>) -> [f64; 3] {
    v.sort();
    [
        ms(percentile(&v, 50)),
        ms(percentile(&v, 99)),
        ms(v.last().copied().unwrap_or_default()),
    ]
}

/// Summarises `records` of a load whose event happened at `event` (load-relative).
pub fn summarise(records: &[ConnRecord], event: Duration, timeout: Duration) -> RoundResult {
    let during: Vec<&ConnRecord> = records.iter().filter(|r| r.at >= event).collect();
    RoundResult {
        total: records.len(),
        failed: records.iter().filter(|r| r.result.is_err()).count(),
        during: during.len(),
        connect_ms: spread_ms(
            during
                .iter()
                .map(|r| r.connect.unwrap_or(timeout))
                .collect(),
        ),
        failures: records
            .iter()
            .filter_map(|r| {
                let at = ms(r.at) - ms(event);
                let connect = match r.connect {
                    Some(c) => format!("connected in {:.1} ms", ms(c)),
                    None => "never connected".to_string(),
                };
                r.result
                    .as_ref()
                    .err()
                    .map(|e| (at, format!("{e} ({connect})")))
            })
            .collect(),
        answer_ms: spread_ms(
            during
                .iter()
                .map(|r| match (&r.result, r.answered) {
                    (Ok(_), Some(t)) => t,
                    _ => timeout,
                })
                .collect(),
        ),
    }
}

/// Brings `b` up on `lab` and waits until a request through the VIP works.
fn up(lab: &mut Lab, b: Balancer) -> Result<Option<Proc>, String> {
    let e = |e: crate::lab::LabError| e.to_string();
    match b {
        Balancer::Lb => {
            let mut cfg = lab.default_config();
            cfg.services[0].health = health();
            lab.start_lbd(&cfg).map_err(e)?;
            let want: Vec<(SocketAddrV4, &str)> =
                (1..=BACKENDS).map(|i| (backend_addr(i), "up")).collect();
            lab.lbd()
                .map_err(e)?
                .wait_health(&want, Duration::from_secs(10))
                .map_err(e)?;
            Ok(None)
        }
        Balancer::Haproxy => {
            sys::ip(&[
                "-n",
                lab.balancer_ns(),
                "addr",
                "add",
                &format!("{VIP}/32"),
                "dev",
                "lo",
            ])
            .map_err(e)?;
            let backends: Vec<SocketAddrV4> = (1..=BACKENDS).map(backend_addr).collect();
            let cfg = lab.dir().join("haproxy-failover.cfg");
            std::fs::write(&cfg, haproxy_config(&backends))
                .map_err(|x| format!("writing {}: {x}", cfg.display()))?;
            let mut cmd = ns_command(lab.balancer_ns(), "haproxy");
            cmd.arg("-db").arg("-f").arg(&cfg);
            let p = Proc::spawn(
                &mut cmd,
                "haproxy",
                Some(&lab.dir().join("haproxy-failover.log")),
            )
            .map_err(e)?;
            let target = std::net::SocketAddr::from(SocketAddrV4::new(VIP, VIP_PORT));
            let ns = lab.client_path();
            sys::wait_for(
                "a request through HAProxy",
                Duration::from_secs(10),
                Duration::from_millis(100),
                || {
                    crate::lab::client::run_in_netns(ns.clone(), move || async move {
                        crate::lab::client::probe(target, Duration::from_secs(1)).await
                    })
                    .ok()
                },
            )
            .map_err(|x| x.to_string())?;
            // HAProxy's first checks run within `inter` of its start: let every server be
            // checked once, so the death is detected by checks of a known-up server.
            std::thread::sleep(Duration::from_millis(2500));
            Ok(Some(p))
        }
    }
}

/// One round in a fresh lab.
pub fn round(b: Balancer, death: Death, load: Duration) -> Result<RoundResult, String> {
    let e = |e: crate::lab::LabError| e.to_string();
    let mut lab = Lab::new(LabOptions::new(BACKENDS, Mode::Native)).map_err(e)?;
    let mut proc = up(&mut lab, b)?;
    let rl = RateLoad::start(
        lab.client_path(),
        std::net::SocketAddr::from(SocketAddrV4::new(VIP, VIP_PORT)),
        RATE,
        load,
        CONN_TIMEOUT,
    );
    std::thread::sleep(EVENT_AT);
    let event = rl.elapsed();
    let killed = match death {
        Death::ProcessKilled => {
            lab.kill_backend(VICTIM);
            Ok(())
        }
        Death::LinkDown => lab.set_backend_link(VICTIM, false).map_err(e),
    };
    let records = rl.finish().map_err(e);
    if let Some(p) = proc.as_mut() {
        p.stop(libc::SIGTERM, Duration::from_secs(5));
    }
    killed?;
    let records = records?;
    if records.is_empty() {
        return Err("the load opened no connection".into());
    }
    Ok(summarise(&records, event, CONN_TIMEOUT))
}

/// Runs the section: `rounds` rounds of each (death, balancer), interleaved.
pub fn run(scale: Scale) -> Section {
    let mut sec = Section::new(
        "failover",
        "Failover: failed connections and connect time while a backend dies",
        format!(
            "Issue 10's measurement. A fresh lab per round (3 backends, lb in native mode); both \
             balancers check every backend over TCP every 2 s (timeout 1 s, fall 3, rise 2). \
             HAProxy runs in TCP mode with `retries 3`, `option redispatch` and `timeout \
             connect 1s`. A client opens {RATE} connections/s for {} s (one `GET /id` each, \
             {} s timeout); {} s in, backend 2 dies: its server process is killed (its kernel \
             answers SYNs with RST) or its link goes down (SYNs vanish). Reported per round: \
             failed connections of all, and over the connections started from the death to \
             the end of the load, the connect time and the time to the answer (connect plus \
             `GET /id` answered), p50/p99/max in ms; a failed connection counts as the \
             timeout. Through HAProxy, a full proxy, the client's handshake is with HAProxy and \
             always fast: compare the answer times. The variants alternate.",
            LOAD.as_secs(),
            CONN_TIMEOUT.as_secs(),
            EVENT_AT.as_secs()
        ),
    );
    let load = scale.pick(LOAD, Duration::from_secs(6));
    let rounds = scale.rounds();
    let combos = [
        (Death::ProcessKilled, Balancer::Lb),
        (Death::ProcessKilled, Balancer::Haproxy),
        (Death::LinkDown, Balancer::Lb),
        (Death::LinkDown, Balancer::Haproxy),
    ];
    let mut results: Vec<(Vec<RoundResult>, Option<String>)> =
        combos.iter().map(|_| (Vec::new(), None)).collect();
    for _ in 0..rounds {
        for (k, (death, b)) in combos.iter().enumerate() {
            match round(*b, *death, load) {
                Ok(r) => {
                    println!(
                        "[bench] failover {} / {}: {} of {} failed; from the death: {} \
                         connections, connect p50/p99/max {:.1}/{:.1}/{:.1} ms, answer \
                         {:.1}/{:.1}/{:.1} ms",
                        death.name(),
                        b.name(),
                        r.failed,
                        r.total,
                        r.during,
                        r.connect_ms[0],
                        r.connect_ms[1],
                        r.connect_ms[2],
                        r.answer_ms[0],
                        r.answer_ms[1],
                        r.answer_ms[2]
                    );
                    for (at, err) in &r.failures {
                        println!("[bench]   failed: started {at:+.0} ms from the death: {err}");
                    }
                    results[k].0.push(r);
                }
                Err(err) => results[k].1 = Some(err),
            }
        }
    }
    type Get = fn(&RoundResult) -> f64;
    let metrics: [(&str, Get); 8] = [
        ("failed connections", |r| r.failed as f64),
        ("connections", |r| r.total as f64),
        ("connect p50 ms", |r| r.connect_ms[0]),
        ("connect p99 ms", |r| r.connect_ms[1]),
        ("connect max ms", |r| r.connect_ms[2]),
        ("answer p50 ms", |r| r.answer_ms[0]),
        ("answer p99 ms", |r| r.answer_ms[1]),
        ("answer max ms", |r| r.answer_ms[2]),
    ];
    for ((death, b), (runs, err)) in combos.iter().zip(&results) {
        for (metric, get) in metrics {
            let m = if runs.is_empty() {
                Measurement::not_measured(err.clone().unwrap_or_else(|| "no round ran".into()))
            } else {
                Measurement::from_runs(runs.iter().map(get).collect())
            };
            sec.push(death.name(), b.name(), metric, m);
        }
        for (round, r) in runs.iter().enumerate() {
            for (at, err) in &r.failures {
                sec.notes.push(format!(
                    "{} / {}, round {}: a connection started {at:+.0} ms from the death failed: {err}",
                    death.name(),
                    b.name(),
                    round + 1
                ));
            }
        }
    }
    sec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haproxy_config_checks_retries_and_redispatches() {
        let be: Vec<SocketAddrV4> = (1..=3).map(backend_addr).collect();
        let c = haproxy_config(&be);
        assert!(c.contains("bind 192.0.2.10:80"), "{c}");
        assert!(c.contains("  mode tcp\n"), "{c}");
        assert!(c.contains("  retries 3\n"), "{c}");
        assert!(c.contains("  option redispatch\n"), "{c}");
        assert!(c.contains("  timeout connect 1s\n"), "{c}");
        assert!(c.contains("default-server inter 2s fall 3 rise 2"), "{c}");
        for i in 1..=3 {
            assert!(
                c.contains(&format!("  server b{i} 10.1.{i}.2:8080 check\n")),
                "{c}"
            );
        }
        // The checks match lb's in the same round.
        let h = health();
        assert_eq!((h.interval_ms, h.fall, h.rise), (2000, 3, 2));
    }

    #[test]
    fn summary_counts_failures_and_times_from_the_death() {
        let ms = Duration::from_millis;
        let r = |at, connect: Option<u64>, answered: Option<u64>, ok: bool| ConnRecord {
            at: ms(at),
            connect: connect.map(ms),
            answered: answered.map(ms),
            result: if ok {
                Ok("b1".into())
            } else {
                Err("reset".into())
            },
        };
        let recs = vec![
            r(0, Some(1), Some(2), true),
            r(100, Some(1), None, false),
            r(3000, Some(1000), Some(1001), true),
            r(3020, Some(2), Some(3), true),
            r(3040, None, None, false),
        ];
        let s = summarise(&recs, ms(3000), ms(15000));
        assert_eq!((s.total, s.failed, s.during), (5, 2, 3));
        assert_eq!(s.connect_ms, [1000.0, 15000.0, 15000.0]);
        assert_eq!(s.answer_ms, [1001.0, 15000.0, 15000.0]);
        assert_eq!(
            s.failures,
            vec![
                (-2900.0, "reset (connected in 1.0 ms)".to_string()),
                (40.0, "reset (never connected)".to_string())
            ]
        );
    }
}
