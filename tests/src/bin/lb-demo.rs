//! `lb-demo [--fast] [--config PATH]`: the guided tour `cargo xtask demo` runs.
//!
//! Builds the lab of `lb_tests::lab` (a client, the balancer, three backends), starts the real
//! lbd on `config/demo.yaml` and narrates, with live numbers, traffic spreading over the
//! backends, a backend failing and its traffic moving, the backend recovering, and a drain.
//! Removes everything it created at the end, on error and on Ctrl-C. `--fast` shortens every
//! phase (the netns test tier runs it that way).
//!
//! `--db` runs the database tour instead (issue 11): PostgreSQL 15 with a primary and two
//! streaming replicas in the backend namespaces, lbd with a write VIP and a read VIP
//! (`lb_tests::lab::postgres::db_lbd_yaml`), writes and reads through them, then the primary
//! killed and a replica promoted: the time from the kill to lbd switching the write VIP and
//! lbd's estimate of the bytes the new primary never received.

use anyhow::{bail, Context, Result};
use lb_tests::lab::client::{self, tally, Attempt, Prober};
use lb_tests::lab::http::{pattern_sha256, HttpConn};
use lb_tests::lab::lbd::HealthSpec;
use lb_tests::lab::testsrv::{STREAM_CHUNK, STREAM_CHUNKS_PER_SEC};
use lb_tests::lab::{backend_addr, vip, Lab, LabOptions, Mode};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Sleeps `d`, returning early with an error on Ctrl-C.
fn nap(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if INTERRUPTED.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        std::thread::sleep(Duration::from_millis(50).min(end - Instant::now()));
    }
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// The keys of the demo config the harness needs (a line scan; lbd validates the file).
struct DemoConfig {
    path: PathBuf,
    mode: Mode,
    socket: PathBuf,
    bpffs_root: PathBuf,
    health: HealthSpec,
}

fn value_of(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let l = l.split('#').next().unwrap_or_default().trim();
        l.strip_prefix(key)
            .and_then(|r| r.strip_prefix(':'))
            .map(|v| v.trim().to_string())
    })
}

fn duration_ms(v: &str) -> Option<u64> {
    if let Some(ms) = v.strip_suffix("ms") {
        ms.parse().ok()
    } else {
        v.strip_suffix('s')
            .and_then(|s| s.parse::<u64>().ok())
            .map(|s| s * 1000)
    }
}

fn read_config(path: &Path) -> Result<DemoConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let need = |k: &str| {
        value_of(&text, k).with_context(|| format!("{}: key `{k}` is missing", path.display()))
    };
    let mode = match need("xdp_mode")?.as_str() {
        "generic" => Mode::Generic,
        "native" | "auto" => Mode::Native,
        other => bail!(
            "{}: xdp_mode {other:?}: use native or generic",
            path.display()
        ),
    };
    let mut health = HealthSpec::default();
    if let Some(ms) = value_of(&text, "interval").as_deref().and_then(duration_ms) {
        health.interval_ms = ms;
    }
    if let Some(n) = value_of(&text, "fall").and_then(|v| v.parse().ok()) {
        health.fall = n;
    }
    if let Some(n) = value_of(&text, "rise").and_then(|v| v.parse().ok()) {
        health.rise = n;
    }
    Ok(DemoConfig {
        path: path.to_path_buf(),
        mode,
        socket: need("api_socket")?.into(),
        bpffs_root: need("bpffs_root")?.into(),
        health,
    })
}

fn say(text: &str) {
    println!("\n==> {text}");
}

fn note(text: &str) {
    println!("    {text}");
}

fn show_counts(what: &str, counts: &BTreeMap<String, usize>) {
    let total: usize = counts.values().sum();
    let parts: Vec<String> = counts
        .iter()
        .map(|(k, v)| format!("{k}: {v} ({:.0}%)", *v as f64 * 100.0 / total.max(1) as f64))
        .collect();
    note(&format!(
        "{what}: {total} connections -> {}",
        parts.join(", ")
    ));
}

fn show_stats(lab: &Lab) -> Result<()> {
    let out = lab.lbd()?.lbctl(&["stats"]).context("lbctl stats")?;
    println!("    --- lbctl stats ---");
    for line in out.lines() {
        println!("    {line}");
    }
    Ok(())
}

fn vip_addr() -> SocketAddr {
    vip().into()
}

/// A prober at 50 new connections per second.
fn prober(lab: &Lab) -> Prober {
    Prober::start(
        lab.client_path(),
        vip_addr(),
        Duration::from_millis(20),
        Duration::from_secs(2),
        Duration::from_secs(120),
    )
}

fn main() {
    let mut fast = false;
    let mut db = false;
    let mut config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/demo.yaml");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--fast" => fast = true,
            "--db" => db = true,
            "--config" => config = args.next().map(PathBuf::from).unwrap_or(config),
            other => {
                eprintln!(
                    "unknown argument {other:?}; usage: lb-demo [--fast] [--db] [--config PATH]"
                );
                std::process::exit(2);
            }
        }
    }
    // SAFETY: installing an async-signal-safe handler (it only stores to an atomic).
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let result = if db { run_db(fast) } else { run(&config, fast) };
    match result {
        Ok(()) => {}
        Err(_) if INTERRUPTED.load(Ordering::SeqCst) => {
            println!("\n==> Interrupted: everything the demo created was removed.");
            std::process::exit(130);
        }
        Err(e) => {
            eprintln!("\nlb-demo failed: {e:#}");
            std::process::exit(1);
        }
    }
}

/// Data-plane counters of connections lb retried on another backend after the first one
/// refused the SYN with a RST (`ct_syn_retried`: the RST became the client's SYN toward
/// another backend in XDP at once; `drop_syn_refused`: the RST is kept from the client, whose
/// retransmitted SYN goes elsewhere) or left it unanswered (`ct_syn_unanswered`); the failure
/// phase prints their sum.
const RETRY_COUNTERS: &[&str] = &["ct_syn_retried", "drop_syn_refused", "ct_syn_unanswered"];

/// Connections lb retried so far (`None` while lbd has none of [`RETRY_COUNTERS`]).
fn retried(lab: &Lab) -> Option<u64> {
    let counters = lab.lbd().ok()?.counters().ok()?;
    let present: Vec<u64> = RETRY_COUNTERS
        .iter()
        .filter_map(|n| counters.get(*n).copied())
        .collect();
    (!present.is_empty()).then(|| present.iter().sum())
}

fn run(config_path: &Path, fast: bool) -> Result<()> {
    let cfg = read_config(config_path)?;
    let scale = |secs: f64| Duration::from_secs_f64(if fast { secs / 2.0 } else { secs });
    say("Building the lab: a client, the balancer and three backends, each in its own network namespace");
    let mut opts = LabOptions::new(3, cfg.mode);
    opts.prefix = Some(format!("lbdemo{}", std::process::id() % 1000));
    let mut lab = Lab::new(opts).context("building the lab")?;
    note(&format!(
        "client   {}-c : 172.30.0.2, route to the VIP network via the balancer",
        lab.prefix()
    ));
    note(&format!(
        "balancer {}-lb: pub0 172.30.0.1, bk1..bk3 10.1.i.1 (XDP: {:?})",
        lab.prefix(),
        cfg.mode
    ));
    for i in 1..=3 {
        note(&format!(
            "backend  {}: {} runs lb-testsrv `b{i}`",
            lab.backend_ns(i),
            backend_addr(i)
        ));
    }
    note("VIP 192.0.2.10:80 is assigned nowhere: only lb's XDP program answers for it");
    let _run_dir = RunDir::create(&cfg.socket)?;
    let _ = std::fs::remove_dir_all(&cfg.bpffs_root);

    say(&format!("Starting lbd on {}", cfg.path.display()));
    lab.start_lbd_file(&cfg.path, cfg.socket.clone(), cfg.bpffs_root.clone())
        .context("starting lbd")?;
    let all_up: Vec<_> = (1..=3).map(|i| (backend_addr(i), "up")).collect();
    lab.lbd()?.wait_health(&all_up, Duration::from_secs(20))?;
    lab.wait_vip(Duration::from_secs(10))?;
    note("all three backends passed their health checks (GET /healthz every 500 ms)");
    nap(Duration::ZERO)?;

    // 1. Spreading.
    say("Traffic spreads over the three backends (Maglev consistent hashing)");
    note("the client opens 50 new connections per second to 192.0.2.10:80, one GET /id each");
    let p = prober(&lab);
    nap(scale(4.0))?;
    let spread = finish(p)?;
    show_counts(
        "answered by",
        &tally(&spread, Duration::ZERO, Duration::MAX),
    );
    show_stats(&lab)?;

    // 2. Failure.
    let bound = cfg.health.detection_bound();
    say("Backend b2 fails: its server is killed while the client keeps connecting");
    note(&format!(
        "detection bound: interval x fall + interval = {} ms x {} + {} ms = {bound:?}",
        cfg.health.interval_ms, cfg.health.fall, cfg.health.interval_ms
    ));
    let p = prober(&lab);
    nap(scale(1.0))?;
    let t_kill = p.elapsed();
    let killed_at = Instant::now();
    lab.kill_backend(2);
    let detected = lb_tests::lab::sys::wait_for(
        "b2 marked down",
        bound * 4,
        Duration::from_millis(25),
        || {
            (lab.lbd().ok()?.health_of(backend_addr(2)).ok()? == "down")
                .then_some(killed_at.elapsed())
        },
    )?;
    note(&format!(
        "lbd marked b2 down after {} ms",
        detected.as_millis()
    ));
    let t_detected = p.elapsed();
    nap(scale(3.0))?;
    let failing = finish(p)?;
    let window = tally(&failing, t_kill, t_detected + Duration::from_millis(300));
    let after = tally(
        &failing,
        t_detected + Duration::from_millis(300),
        Duration::MAX,
    );
    show_counts("between the kill and detection", &window);
    note(&format!(
        "{} connection(s) failed in that window (b2 refused SYNs; lb kept the RSTs from the clients and sent their retried SYNs elsewhere)",
        window.get("error").copied().unwrap_or(0)
    ));
    show_counts("after detection", &after);
    let failed = failing.iter().filter(|a| a.result.is_err()).count();
    note(&format!(
        "failure phase: {failed} of {} connection(s) failed",
        failing.len()
    ));
    match retried(&lab) {
        Some(n) => note(&format!(
            "{n} connection(s) lb retried on another backend (the client never saw b2 fail)"
        )),
        None => note("retried connections: lbd reports no retry counters"),
    }
    show_stats(&lab)?;

    // 3. Recovery.
    say("Backend b2 recovers: its server is restarted");
    let restarted_at = Instant::now();
    lab.start_backend(2)?;
    let p = prober(&lab);
    let up = lb_tests::lab::sys::wait_for(
        "b2 marked up",
        cfg.health.recovery_bound() * 4,
        Duration::from_millis(25),
        || {
            (lab.lbd().ok()?.health_of(backend_addr(2)).ok()? == "up")
                .then_some(restarted_at.elapsed())
        },
    )?;
    note(&format!(
        "lbd marked b2 up after {} ms ({} consecutive successful checks)",
        up.as_millis(),
        cfg.health.rise
    ));
    let t_up = p.elapsed();
    nap(scale(3.0))?;
    let recovered = finish(p)?;
    show_counts("after recovery", &tally(&recovered, t_up, Duration::MAX));

    // 4. Drain.
    say("Draining b1: its existing connections finish, new ones go elsewhere");
    let seconds = if fast { 3 } else { 6 };
    let progress = Arc::new(AtomicU64::new(0));
    let prog = progress.clone();
    let stream = lab.spawn_in_client(move || async move {
        // Keep connecting until one lands on b1, then stream from it.
        let mut conn = loop {
            let mut c = HttpConn::connect(vip_addr(), Duration::from_secs(2)).await?;
            if c.request("GET", "/id", b"")
                .await?
                .text()
                .starts_with("b1 ")
            {
                break c;
            }
        };
        client::bounded(
            "the drained download",
            Duration::from_secs(seconds + 20),
            conn.get_hashed(&format!("/stream?seconds={seconds}"), |n| {
                prog.store(n, Ordering::Relaxed)
            }),
        )
        .await
    });
    lb_tests::lab::sys::wait_for(
        "the stream to start",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || (progress.load(Ordering::Relaxed) > 0).then_some(()),
    )?;
    note(&format!(
        "a {seconds} s download from b1 is running (GET /stream)"
    ));
    let addr = backend_addr(1).to_string();
    let out = lab.lbd()?.lbctl(&["backend", "drain", "web", &addr])?;
    note(&format!("$ lbctl backend drain web {addr}: {}", out.trim()));
    let p = prober(&lab);
    nap(scale(2.0))?;
    let drained = finish(p)?;
    show_counts(
        "new connections while b1 drains",
        &tally(&drained, Duration::ZERO, Duration::MAX),
    );
    note(&format!(
        "the download from b1 has received {} bytes so far",
        progress.load(Ordering::Relaxed)
    ));
    let (status, len, sha) = client::join(stream)?;
    let ok = status == 200
        && len == seconds * STREAM_CHUNKS_PER_SEC * STREAM_CHUNK
        && sha == pattern_sha256(len);
    note(&format!(
        "the download finished: {len} bytes, SHA-256 {}",
        if ok { "matches" } else { "DOES NOT match" }
    ));
    if !ok {
        bail!("the drained transfer was damaged: status {status}, {len} bytes");
    }
    let out = lab.lbd()?.lbctl(&["backend", "undrain", "web", &addr])?;
    note(&format!(
        "$ lbctl backend undrain web {addr}: {}",
        out.trim()
    ));
    show_stats(&lab)?;

    say("Done: removing everything the demo created (lbd --unload, processes, namespaces)");
    let prefix = lab.prefix().to_string();
    drop(lab);
    note(&format!(
        "removed the namespaces {prefix}-*, the pins under {}",
        cfg.bpffs_root.display()
    ));
    Ok(())
}

fn finish(p: Prober) -> Result<Vec<Attempt>> {
    Ok(p.finish()?)
}

/// The directory of the demo's control socket, created for the run and removed after it.
struct RunDir(Option<PathBuf>);

impl RunDir {
    fn create(socket: &Path) -> Result<RunDir> {
        let dir = socket.parent().context("api_socket has no directory")?;
        if dir.exists() {
            return Ok(RunDir(None));
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(RunDir(Some(dir.to_path_buf())))
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if let Some(d) = &self.0 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// The database tour (`--db`).
fn run_db(fast: bool) -> Result<()> {
    use lb_tests::lab::postgres::{self as pg, member_addr, read_vip, write_vip, DbSpec, PgLab};
    let scale = |secs: f64| Duration::from_secs_f64(if fast { secs / 2.0 } else { secs });
    let t = Duration::from_secs(3);
    say("Building the database lab: PostgreSQL 15, a primary (n1) and two streaming replicas (n2, n3), each in its own namespace behind the balancer");
    let started = Instant::now();
    let mut l = PgLab::new(Mode::Native).context("building the database lab")?;
    for i in 1..=3 {
        note(&format!(
            "n{i} {} in {}: {:?}",
            member_addr(i),
            l.pg.member(i).ns,
            l.pg.role(i)?
        ));
    }
    note(&format!("up in {:.1} s", started.elapsed().as_secs_f64()));
    let spec = DbSpec::default();
    let yaml = pg::db_lbd_yaml(&l.lab, &l.pg, &spec);
    say(&format!(
        "Starting lbd: write VIP {} (role primary), read VIP {} (role replica, fallback primary), PostgreSQL checks every {} ms, fall {}, rise {}",
        write_vip(),
        read_vip(),
        spec.interval_ms,
        spec.fall,
        spec.rise
    ));
    for line in yaml.lines().skip_while(|x| !x.starts_with("services:")) {
        note(line);
    }
    l.lab.start_lbd_text(&yaml).context("starting lbd")?;
    let client_ns = l.lab.client_path();
    lb_tests::lab::sys::wait_for(
        "a write through the write VIP",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            client::run_in_netns(client_ns.clone(), move || async move {
                pg::connect(write_vip(), t).await?.write("demo", 0, t).await
            })
            .ok()
        },
    )?;
    say("Writes through the write VIP: every one lands on the primary (inet_server_addr())");
    let writes = client::run_in_netns(client_ns.clone(), move || async move {
        let mut on = BTreeMap::new();
        for seq in 1..=20 {
            let s = pg::connect(write_vip(), t).await?;
            *on.entry(s.write("demo", seq, t).await?.to_string())
                .or_insert(0) += 1;
        }
        Ok(on)
    })?;
    show_counts("writes", &writes);
    say("Reads through the read VIP: spread over the replicas");
    let reads = pg::spread_from(client_ns.clone(), read_vip(), 30, t)?;
    show_counts("reads", &reads);
    nap(scale(2.0))?;
    say("A writer commits every 10 ms through the write VIP; now the primary n1 dies (SIGKILL of every postgres process) and n2 is promoted (pg_ctl promote), n3 follows n2");
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let begin = Instant::now();
    let writer = client::spawn_in_netns(client_ns.clone(), move || async move {
        let mut log: Vec<(Duration, std::result::Result<std::net::Ipv4Addr, String>)> = Vec::new();
        let mut session = None;
        let mut seq = 1000;
        while !s2.load(Ordering::Relaxed) && begin.elapsed() < Duration::from_secs(60) {
            seq += 1;
            if session.as_ref().is_none_or(pg::Session::is_closed) {
                session = pg::connect(write_vip(), Duration::from_millis(500))
                    .await
                    .ok();
            }
            let r = match &session {
                Some(s) => s
                    .write("demo-writer", seq, Duration::from_millis(500))
                    .await
                    .map_err(|e| e.to_string()),
                None => Err("connect failed".into()),
            };
            if r.is_err() {
                session = None;
            }
            log.push((begin.elapsed(), r));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(log)
    });
    nap(scale(2.0))?;
    let killed_at = begin.elapsed();
    l.pg.kill(1)?;
    l.pg.promote(2)?;
    let promoted_at = begin.elapsed();
    l.pg.repoint(3, 2)?;
    note(&format!(
        "n1 killed at {:.0} ms, n2 promoted at {:.0} ms (writer clock)",
        killed_at.as_secs_f64() * 1e3,
        promoted_at.as_secs_f64() * 1e3
    ));
    nap(scale(4.0))?;
    stop.store(true, Ordering::Relaxed);
    let log = client::join(writer)?;
    let new_ip = *member_addr(2).ip();
    let failed = log
        .iter()
        .filter(|(at, r)| *at >= killed_at && r.is_err())
        .count();
    match log
        .iter()
        .find(|(at, r)| *at >= killed_at && *r == Ok(new_ip))
    {
        Some((at, _)) => {
            note(&format!(
                "first write on n2 {:.0} ms after the kill ({:.0} ms after the promotion); {failed} write(s) failed in between",
                (*at - killed_at).as_secs_f64() * 1e3,
                at.saturating_sub(promoted_at).as_secs_f64() * 1e3
            ));
        }
        None => note("no write reached n2 (lbd did not switch the write VIP)"),
    }
    let lbd = l.lab.lbd()?;
    match lbd.lbctl(&["db", "events", "--output", "json"]) {
        Ok(events) => {
            say("lbd's failover event (lbctl db events): detection-to-switch and the lost-bytes estimate");
            for line in events.lines().take(40) {
                note(line);
            }
        }
        Err(e) => note(&format!("lbctl db events: {e}")),
    }
    if let Ok(status) = lbd.lbctl(&["db", "status", pg::CLUSTER]) {
        say("lbctl db status");
        for line in status.lines() {
            note(line);
        }
    }
    let reads = pg::spread_from(client_ns.clone(), read_vip(), 20, t)?;
    show_counts("reads after the failover", &reads);
    say("Done: removing everything the demo created (PostgreSQL, lbd --unload, namespaces)");
    drop(l);
    Ok(())
}
