//! Failover scenarios of issue 10 (3 backends, clients opening 50 connections/s throughout,
//! one `GET /id` each, per-connection connect time and outcome recorded), in both XDP modes:
//!
//! - (a) `backend_process_killed`: a backend's server is killed (its kernel answers SYNs with
//!   RST). Asserts zero lost connections (a connection established with the backend in the
//!   moment it died is in flight, not lost: at most 3, see `in_flight_or_lost`) and p99 connect time <= 50 ms during the event,
//!   and that every refused SYN was retried in XDP (`ct_syn_retried` > 0,
//!   `drop_syn_refused` = 0: no client waited for its SYN retransmission).
//! - (b) `backend_link_down`: a backend's link goes down (SYNs vanish). Asserts zero lost
//!   connections (as in (a)) and p99 connect time <= 1.2 s (one client SYN retransmission) during the
//!   event.
//! - (c) `health_flap_keep` / `health_flap_reset`: the health endpoint of a backend fails for
//!   `fall` rounds while it keeps serving, with 100 long transfers running. Under `keep` not
//!   one transfer is cut; under `reset` the transfers of that backend end with a prompt RST
//!   (within 1 s of lbd marking it down), none hangs.
//!
//! - `idle_flows_reset_at_once`: under `reset`, idle keep-alive connections of a backend
//!   marked down are reset within 1 s of the marking (tickle ACKs), at both ends.
//!
//! (a) and (b) need passive detection and retry in the data plane (issue 10 points 1-3); until
//! those land they fail, with the numbers in the message. Their asserts are the issue's
//! targets and are not to be weakened.

use super::*;
use lb_tests::lab::failover::{
    finish_transfers, idle_connections, start_long_transfers, transfer_counts, ConnRecord,
    ConnSummary, RateLoad, TransferEnd,
};

/// New connections per second during every scenario.
const RATE: u32 = 50;
/// Timeout of one load connection (connect plus `GET /id`): long enough that a connection
/// whose SYNs vanish until lbd notices (checks every 2 s, fall 3: up to about 7 s) is counted
/// as slow (the p99 assert), not as failed; failed means refused, reset or a wrong answer,
/// as in issue 10's measurement.
const CONN_TIMEOUT: Duration = Duration::from_secs(15);
/// The event happens this long after the load started.
const EVENT_AT: Duration = Duration::from_secs(3);

/// A lab of 3 backends whose lbd config is the default one changed by `f`.
fn failover_lab(mode: Mode, f: impl FnOnce(&mut LbdConfig)) -> Lab {
    let mut l = lab(3, mode);
    let cfg = with_config(&l, f);
    l.start_lbd(&cfg)
        .unwrap_or_else(|e| panic!("starting lbd: {e}"));
    l.lbd()
        .unwrap()
        .wait_health(
            &[
                (backend_addr(1), "up"),
                (backend_addr(2), "up"),
                (backend_addr(3), "up"),
            ],
            Duration::from_secs(10),
        )
        .expect("all backends up before the scenario");
    l
}

/// Polls until lbd reports backend `i` as `health`; returns the load-relative time it was
/// seen (`None`: not within `limit`).
fn seen_health(
    l: &Lab,
    load: &RateLoad,
    i: usize,
    health: &str,
    limit: Duration,
) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if l.lbd().unwrap().health_of(backend_addr(i)).ok().as_deref() == Some(health) {
            return Some(load.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// The failed connections of `records`, one line each (for messages).
/// The failed connections of a death scenario, split: (in flight at the death, lost). In
/// flight: its handshake completed between 100 ms before the event and the moment the kill
/// command returned (`json["death_window_ms"]`), so it may have been established with the
/// dying backend, which then died holding it (its request unanswered, or reset by the
/// killed server's kernel). No L4 balancer can save such a connection (its state is on the
/// dead host); HAProxy loses them the same way in the failover bench. Every other failure is
/// lost to lb and must not happen.
fn in_flight_or_lost(
    records: &[ConnRecord],
    json: &serde_json::Value,
) -> (Vec<String>, Vec<String>) {
    let w = &json["death_window_ms"];
    let from = Duration::from_millis(w[0].as_u64().unwrap_or(0))
        .saturating_sub(Duration::from_millis(100));
    let to = Duration::from_millis(w[1].as_u64().unwrap_or(0));
    let mut in_flight = Vec::new();
    let mut lost = Vec::new();
    for r in records {
        let Err(e) = &r.result else { continue };
        let line = format!("  started {:?}, connect {:?}: {e}", r.at, r.connect);
        match r.connect {
            Some(c) if (from..=to).contains(&(r.at + c)) => in_flight.push(line),
            _ => lost.push(line),
        }
    }
    (in_flight, lost)
}

fn failed_lines(records: &[ConnRecord]) -> String {
    records
        .iter()
        .filter_map(|r| {
            r.result
                .as_ref()
                .err()
                .map(|e| format!("  {:?}: {e}", r.at))
        })
        .take(20)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The counters a scenario reports next to its numbers.
fn counter_line(l: &Lab) -> String {
    let c = l.lbd().unwrap().counters().unwrap_or_default();
    let pick = [
        "tx_rst_no_backend",
        "ct_backend_down",
        "ct_down_kept",
        "tx_rst_down_client",
        "tx_rst_down_backend",
        "ct_syn_retried",
        "ct_syn_retry_exhausted",
        "drop_syn_refused",
        "ct_syn_unanswered",
    ];
    pick.iter()
        .map(|n| format!("{n} {}", c.get(*n).copied().unwrap_or(0)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What [`backend_death`] measured: the event window's summary, the whole run's, every
/// connection, and b2's line of `lbctl backend list` with its `backend_list` JSON object, both
/// read after the load, and lbd's data-plane counters at the end.
type Death = (
    ConnSummary,
    ConnSummary,
    Vec<ConnRecord>,
    String,
    serde_json::Value,
    std::collections::BTreeMap<String, u64>,
);

/// `lbctl backend list`'s line of backend `i` and its `backend_list` JSON object.
fn backend_view(l: &Lab, i: usize) -> (String, serde_json::Value) {
    let addr = backend_addr(i).to_string();
    let text = l
        .lbd()
        .unwrap()
        .lbctl(&["backend", "list"])
        .expect("lbctl backend list");
    let line = text
        .lines()
        .find(|line| line.contains(&addr))
        .unwrap_or_else(|| panic!("{addr} not in `lbctl backend list`:\n{text}"))
        .to_string();
    let json = l
        .lbd()
        .unwrap()
        .backends()
        .expect("backend_list")
        .into_iter()
        .find(|b| b["address"] == addr.as_str())
        .unwrap_or_else(|| panic!("{addr} not in backend_list"));
    (line, json)
}

fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Asserts that lbd shows b2 suspect for `why` (`passive: RST to SYN`, ...) with
/// `passive_reason`, and that the suspicion began within `[from_ms, to_ms]` (Unix ms).
fn assert_suspect(
    what: &str,
    (line, json): (&str, &serde_json::Value),
    why: &str,
    passive_reason: &str,
    (from_ms, to_ms): (u64, u64),
) {
    assert!(
        line.contains(why),
        "{what}: `lbctl backend list` does not say {why:?} for b2:\n{line}"
    );
    let s = &json["suspect"];
    assert_eq!(s["passive_reason"], passive_reason, "{what}: {json}");
    assert!(
        s["why"].as_str().is_some_and(|w| w.starts_with(why)),
        "{what}: {json}"
    );
    let since = s["since_unix_ms"].as_u64().unwrap_or(0);
    assert!(
        (from_ms..=to_ms).contains(&since),
        "{what}: suspect since {since}, not between the death ({from_ms}) and detection ({to_ms}): {json}"
    );
}

/// (a) and (b): a backend dies `EVENT_AT` into 14 s of load; `kill` does it. Returns the
/// summary of the event window (death to detection plus 1 s) and of the whole run.
fn backend_death(mode: Mode, what: &str, kill: impl FnOnce(&mut Lab)) -> Death {
    let _serial = exclusive();
    // The measurement: TCP checks every 2 s, fall 3.
    let mut l = failover_lab(mode, |c| {
        c.services[0].health = HealthSpec {
            kind: "tcp".into(),
            interval_ms: 2000,
            timeout_ms: 1000,
            rise: 2,
            fall: 3,
        };
    });
    let total = Duration::from_secs(14);
    let load = RateLoad::start(l.client_path(), vip_addr(), RATE, total, CONN_TIMEOUT);
    std::thread::sleep(EVENT_AT);
    let t_event = load.elapsed();
    let event_ms = unix_ms_now();
    kill(&mut l);
    // The backend is dead once the command returned: a connection whose handshake completed
    // with it before then was in flight at the death (see `in_flight_or_lost`).
    let t_dead = load.elapsed();
    let bound = HealthSpec {
        kind: "tcp".into(),
        interval_ms: 2000,
        timeout_ms: 1000,
        rise: 2,
        fall: 3,
    }
    .detection_bound()
        + SLACK;
    let t_down = seen_health(&l, &load, 2, "down", bound);
    let down_ms = unix_ms_now();
    let records = load.finish().expect("load");
    let (line, json) = backend_view(&l, 2);
    let end = records
        .last()
        .map_or(total, |r| r.at + Duration::from_millis(1));
    let t_down = t_down.unwrap_or(end);
    let window = ConnSummary::of(
        &records,
        t_event,
        t_down + Duration::from_secs(1),
        CONN_TIMEOUT,
    );
    let all = ConnSummary::of(&records, Duration::ZERO, end, CONN_TIMEOUT);
    eprintln!(
        "{what} ({mode:?}): event at {t_event:?}, marked down at {t_down:?}; during the event: \
         {window}; whole run: {all}; {}",
        counter_line(&l)
    );
    eprintln!("{what} ({mode:?}): b2 after the load: {line}");
    let mut json = json;
    json["bounds_unix_ms"] = serde_json::json!([event_ms, down_ms]);
    json["death_window_ms"] =
        serde_json::json!([t_event.as_millis() as u64, t_dead.as_millis() as u64]);
    let counters = l.lbd().unwrap().counters().unwrap_or_default();
    (window, all, records, line, json, counters)
}

/// (a) The server process of backend 2 is killed: SYNs to it are answered with RST.
fn backend_process_killed(mode: Mode) {
    let (window, all, records, line, json, counters) =
        backend_death(mode, "process killed", |l| l.kill_backend(2));
    // lbd says why b2 is out: the data plane saw it refuse a SYN, after the death and no
    // later than it was marked down (lbctl and the API).
    let bounds = (
        json["bounds_unix_ms"][0].as_u64().unwrap_or(0),
        json["bounds_unix_ms"][1].as_u64().unwrap_or(0),
    );
    assert_suspect(
        "process killed",
        (&line, &json),
        "passive: RST to SYN",
        "rst_to_syn",
        bounds,
    );
    let (in_flight, lost) = in_flight_or_lost(&records, &json);
    assert!(
        lost.is_empty() && in_flight.len() <= 3,
        "process killed ({mode:?}): {all}; {} lost (must be 0), {} in flight at the death \
         (at most 3 at 50/s):\n{}\n{}\nall failures:\n{}",
        lost.len(),
        in_flight.len(),
        lost.join("\n"),
        in_flight.join("\n"),
        failed_lines(&records)
    );
    assert!(
        window.p99 <= Duration::from_millis(50),
        "process killed ({mode:?}): p99 connect during the event {:?} > 50 ms ({window})",
        window.p99
    );
    // The SYNs the dead backend refused before its suspicion were retried in XDP (its RST
    // became the SYN toward another backend), not left to the client's retransmission.
    // Every refusal was retried (none was left to the client's 1 s retransmission).
    let retried = counters.get("ct_syn_retried").copied().unwrap_or(0);
    let dropped = counters.get("drop_syn_refused").copied().unwrap_or(0);
    assert!(
        retried > 0 && dropped == 0,
        "process killed ({mode:?}): ct_syn_retried {retried}, drop_syn_refused {dropped} \
         (every refused SYN must be retried in XDP; {window})"
    );
}

/// (b) The link of backend 2 goes down: SYNs to it vanish.
fn backend_link_down(mode: Mode) {
    let (window, all, records, line, json, _) = backend_death(mode, "link down", |l| {
        l.set_backend_link(2, false).expect("link down")
    });
    // The data plane saw a client retransmit a SYN b2 never answered (listed first even when
    // a check timed out before), after the death and no later than b2 was marked down.
    let bounds = (
        json["bounds_unix_ms"][0].as_u64().unwrap_or(0),
        json["bounds_unix_ms"][1].as_u64().unwrap_or(0),
    );
    assert_suspect(
        "link down",
        (&line, &json),
        "passive: SYN unanswered",
        "syn_unanswered",
        bounds,
    );
    let (in_flight, lost) = in_flight_or_lost(&records, &json);
    assert!(
        lost.is_empty() && in_flight.len() <= 3,
        "link down ({mode:?}): {all}; {} lost (must be 0), {} in flight at the death \
         (at most 3 at 50/s):\n{}\n{}\nall failures:\n{}",
        lost.len(),
        in_flight.len(),
        lost.join("\n"),
        in_flight.join("\n"),
        failed_lines(&records)
    );
    assert!(
        window.p99 <= Duration::from_millis(1200),
        "link down ({mode:?}): p99 connect during the event {:?} > 1.2 s ({window})",
        window.p99
    );
}

/// (c) Backend 1's health endpoint fails for `fall` rounds (and some) while it keeps serving,
/// with 100 long transfers and 50 new connections/s running. `reset`: the service's
/// `on_backend_down`.
fn health_flap(mode: Mode, reset: bool) {
    let _serial = exclusive();
    let policy = if reset { "reset" } else { "keep" };
    let health = HealthSpec::default();
    let l = failover_lab(mode, |c| {
        c.services[0].on_backend_down = Some(policy.into());
        c.services[0].health = health.clone();
    });
    let stall = Duration::from_secs(3);
    let seconds = 10;
    let transfers = start_long_transfers(l.client_path(), vip_addr(), 100, seconds, stall);
    let load = RateLoad::start(
        l.client_path(),
        vip_addr(),
        RATE,
        Duration::from_secs(seconds),
        CONN_TIMEOUT,
    );
    std::thread::sleep(Duration::from_secs(2));
    l.set_backend_healthy(1, false)
        .expect("failing b1's checks");
    let t_down = seen_health(&l, &load, 1, "down", health.detection_bound() + SLACK)
        .unwrap_or_else(|| {
            panic!(
                "b1 not marked down within {:?}",
                health.detection_bound() + SLACK
            )
        });
    std::thread::sleep(Duration::from_millis(500));
    l.set_backend_healthy(1, true)
        .expect("passing b1's checks again");
    let t_up = seen_health(&l, &load, 1, "up", health.recovery_bound() + SLACK);
    let transfers = finish_transfers(transfers).expect("transfers");
    let records = load.finish().expect("load");
    let (complete, resets, hung, failed) = transfer_counts(&transfers);
    let conns = ConnSummary::of(
        &records,
        Duration::ZERO,
        Duration::from_secs(3600),
        CONN_TIMEOUT,
    );
    eprintln!(
        "health flap, {policy} ({mode:?}): b1 down at {t_down:?}, up at {t_up:?}; transfers: \
         {complete} complete, {resets} reset, {hung} hung, {failed} failed; new connections: \
         {conns}; {}",
        counter_line(&l)
    );
    let odd: Vec<String> = transfers
        .iter()
        .filter(|t| matches!(t.end, TransferEnd::Hung { .. } | TransferEnd::Failed(_)))
        .map(|t| format!("  {:?}: {:?}", t.at, t.end))
        .take(10)
        .collect();
    assert_eq!(
        hung + failed,
        0,
        "{policy} ({mode:?}): hung or failed transfers:\n{}",
        odd.join("\n")
    );
    if reset {
        assert!(resets > 0, "reset ({mode:?}): no transfer of b1 was reset");
        // The transfer load started slightly before the rate load: compare against the
        // transfers' own clock with a margin for that.
        let late: Vec<Duration> = transfers
            .iter()
            .filter_map(|t| t.reset_at())
            .filter(|at| *at > t_down + Duration::from_secs(1) + Duration::from_millis(200))
            .collect();
        assert!(
            late.is_empty(),
            "reset ({mode:?}): resets later than 1 s after b1 was marked down at {t_down:?}: {late:?}"
        );
    } else {
        assert_eq!(
            complete, 100,
            "keep ({mode:?}): {resets} transfers reset by a health-check flap"
        );
        assert_eq!(
            conns.failed,
            0,
            "keep ({mode:?}): {conns}:\n{}",
            failed_lines(&records)
        );
    }
}

fn health_flap_keep(mode: Mode) {
    health_flap(mode, false);
}

fn health_flap_reset(mode: Mode) {
    health_flap(mode, true);
}

/// Under `reset`, idle connections of a backend marked down are reset at once (lbd's tickle
/// ACKs): the client reads ECONNRESET within 1 s of the marking, and the backend's sockets are
/// gone too (each answered its tickle and got the exact RST).
fn idle_flows_reset_at_once(mode: Mode) {
    let _serial = exclusive();
    let health = HealthSpec::default();
    let l = failover_lab(mode, |c| {
        c.services[0].on_backend_down = Some("reset".into());
        c.services[0].health = health.clone();
    });
    let hold = Duration::from_secs(8);
    let idle = l.spawn_in_client(move || idle_connections(vip_addr(), 30, hold));
    std::thread::sleep(Duration::from_secs(1));
    l.set_backend_healthy(1, false)
        .expect("failing b1's checks");
    let limit = health.detection_bound() + SLACK;
    let t0 = Instant::now();
    let mut marked = None;
    while t0.elapsed() < limit {
        if l.lbd().unwrap().health_of(backend_addr(1)).ok().as_deref() == Some("down") {
            marked = Some(Instant::now());
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let marked = marked.unwrap_or_else(|| panic!("b1 not marked down within {limit:?}"));
    let conns = client::join(idle).expect("idle connections");
    let established_on_b1 = l
        .backend_run(
            1,
            "ss",
            &[
                "-Htn",
                "state",
                "established",
                "dst",
                &SNAT_ADDR.to_string(),
            ],
        )
        .expect("ss in b1");
    eprintln!(
        "idle reset ({mode:?}): {:?}; b1 established after: {:?}; {}",
        conns
            .iter()
            .map(|c| (
                c.backend.clone(),
                c.outcome.clone(),
                c.reset_at.map(|t| t.saturating_duration_since(marked))
            ))
            .collect::<Vec<_>>(),
        established_on_b1.lines().count(),
        counter_line(&l)
    );
    let on_b1: Vec<_> = conns.iter().filter(|c| c.backend == "b1").collect();
    assert!(
        !on_b1.is_empty(),
        "no idle connection landed on b1: {conns:?}"
    );
    for c in &on_b1 {
        let at = c
            .reset_at
            .unwrap_or_else(|| panic!("a connection of b1 was not reset: {c:?}"));
        assert!(
            at.saturating_duration_since(marked) <= Duration::from_secs(1),
            "reset {:?} after b1 was marked down",
            at.saturating_duration_since(marked)
        );
    }
    for c in conns.iter().filter(|c| c.backend != "b1") {
        assert_eq!(
            c.outcome, "open",
            "a connection of another backend was touched: {c:?}"
        );
    }
    assert_eq!(
        established_on_b1.lines().count(),
        0,
        "b1 still holds connections after the reset:\n{established_on_b1}"
    );
}

both_modes!(
    idle_flows_reset_at_once,
    backend_process_killed,
    backend_link_down,
    health_flap_keep,
    health_flap_reset,
);
