//! The PostgreSQL role probe (`lb::health::postgres::probe`) against real PostgreSQL 15: a
//! primary and one replica (`pg_basebackup -R`) in a network namespace of their own with
//! loopback only, created by the test and removed at the end (also on failure). Needs root
//! (namespaces; initdb and pg_ctl run as the postgres user) and the `postgresql-15` package,
//! which `cargo xtask setup` installs.
//!
//! The start/stop helpers ([`Instance`], [`Lab`]) are self-contained in this file (the
//! network-namespace lab in `tests/src/lab/` has its own).

use lb::health::postgres::{probe, MemberObservation, MemberProbe, PostgresCheck};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const PRIMARY_PORT: u16 = 5432;
const REPLICA_PORT: u16 = 5433;
/// max_connections of the primary: with 3 slots reserved for superusers, 5 for the rest.
const MAX_CONNECTIONS: usize = 8;
const RESERVED: usize = 3;

/// One PostgreSQL instance: data, socket directory and log under the lab's scratch directory.
struct Instance {
    name: &'static str,
    port: u16,
    dir: PathBuf,
}

impl Instance {
    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }
    fn sock(&self) -> PathBuf {
        self.dir.join("sock")
    }
    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
    /// The postmaster's PID (first line of postmaster.pid), while it runs.
    fn postmaster_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.data().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }
}

/// The namespace, the scratch directory and the instances; dropping it kills every
/// postmaster by PID (after SIGCONT, in case a test stopped one), deletes the namespace and
/// the scratch directory.
struct Lab {
    ns: String,
    scratch: PathBuf,
    instances: Vec<Instance>,
    /// Postmaster PIDs seen after each start.
    pids: Vec<i32>,
}

fn check_output(what: &str, out: std::io::Result<Output>) -> Output {
    let out = out.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Lab {
    fn new() -> Lab {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root (network namespaces; runs PostgreSQL as the postgres user)"
        );
        assert!(
            Path::new(PG_BIN).join("initdb").exists(),
            "PostgreSQL 15 is missing ({PG_BIN}/initdb): run `cargo xtask setup`, which installs \
             the postgresql-15 package"
        );
        let ns = format!("lbpgprobe-{}", std::process::id());
        let scratch = std::env::temp_dir().join(&ns);
        let lab = Lab {
            ns,
            scratch,
            instances: Vec::new(),
            pids: Vec::new(),
        };
        check_output(
            "ip netns add",
            Command::new("ip").args(["netns", "add", &lab.ns]).output(),
        );
        check_output(
            "ip link set lo up",
            Command::new("ip")
                .args(["netns", "exec", &lab.ns, "ip", "link", "set", "lo", "up"])
                .output(),
        );
        std::fs::create_dir_all(&lab.scratch).unwrap();
        lab.chown_postgres(&lab.scratch);
        std::fs::set_permissions(&lab.scratch, std::fs::Permissions::from_mode(0o700)).unwrap();
        lab
    }

    fn chown_postgres(&self, path: &Path) {
        let user = nix::unistd::User::from_name("postgres")
            .unwrap()
            .expect("the postgres user (created by the postgresql-15 package)");
        nix::unistd::chown(path, Some(user.uid), Some(user.gid)).unwrap();
    }

    /// Runs `program args` (a PostgreSQL binary) as postgres in the namespace.
    fn pg_run(&self, what: &str, program: &str, args: &[&str]) -> Output {
        let path = format!("{PG_BIN}/{program}");
        let mut all = vec![
            "netns", "exec", &self.ns, "runuser", "-u", "postgres", "--", "env",
        ];
        let passfile = format!("PGPASSFILE={}", self.scratch.join("pgpass").display());
        all.push(&passfile);
        all.push(&path);
        all.extend_from_slice(args);
        check_output(what, Command::new("ip").args(&all).output())
    }

    fn add(&mut self, name: &'static str, port: u16) -> usize {
        let dir = self.scratch.join(name);
        for d in [dir.clone(), dir.join("sock")] {
            std::fs::create_dir_all(&d).unwrap();
            self.chown_postgres(&d);
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        self.instances.push(Instance { name, port, dir });
        self.instances.len() - 1
    }

    fn start(&mut self, i: usize) {
        self.start_with(i, "");
    }

    /// Starts instance `i` with `extra` server options (`-c name=value ...`).
    fn start_with(&mut self, i: usize, extra: &str) {
        let inst = &self.instances[i];
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={} {extra}",
            inst.port,
            inst.sock().display()
        );
        let (data, log) = (inst.data(), inst.dir.join("log"));
        self.pg_run(
            &format!("start {}", inst.name),
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "30",
                "-o",
                &opts,
                "start",
            ],
        );
        let pid = self.instances[i]
            .postmaster_pid()
            .expect("postmaster.pid after start");
        self.pids.push(pid);
    }

    fn stop(&self, i: usize, mode: &str, wait: bool) {
        let inst = &self.instances[i];
        let data = inst.data();
        let w = if wait { "-w" } else { "-W" };
        self.pg_run(
            &format!("stop {}", inst.name),
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-m", mode, w, "stop"],
        );
    }

    /// Runs SQL as the postgres superuser over the instance's socket; returns the output.
    fn sql(&self, i: usize, sql: &str) -> String {
        let inst = &self.instances[i];
        let sock = inst.sock();
        let port = inst.port.to_string();
        let out = self.pg_run(
            &format!("psql {}: {sql}", inst.name),
            "psql",
            &[
                "-h",
                sock.to_str().unwrap(),
                "-p",
                &port,
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-XAtq",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ],
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn write_file(&self, name: &str, content: &str, mode: u32) -> PathBuf {
        let path = self.scratch.join(name);
        std::fs::write(&path, content).unwrap();
        self.chown_postgres(&path);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let mut pids = self.pids.clone();
        pids.extend(self.instances.iter().filter_map(Instance::postmaster_pid));
        pids.sort_unstable();
        pids.dedup();
        for pid in pids {
            let pid = nix::unistd::Pid::from_raw(pid);
            // Only postmasters this test started (their data directories are ours).
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
        // Backends exit when they notice the postmaster is gone; give them a moment so the
        // namespace and the directories are not in use.
        std::thread::sleep(Duration::from_millis(300));
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// Runs `f` on a thread that joined the lab's network namespace, on a current-thread runtime
/// (every socket the probes open is created on that thread, so inside the namespace).
fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>> + Send + 'static,
) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f())
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

fn check(user: &str, password_file: Option<&Path>, timeout_ms: u64) -> PostgresCheck {
    PostgresCheck {
        user: user.into(),
        database: "postgres".into(),
        password_file: password_file.map(Path::to_path_buf),
        timeout: Duration::from_millis(timeout_ms),
    }
}

fn observed(p: MemberProbe) -> MemberObservation {
    match p {
        MemberProbe::Observed(o) => o,
        other => panic!("expected an observation, got {other:?}"),
    }
}

/// Probes in the namespace.
fn probe_in(lab: &Lab, spec: PostgresCheck, addr: SocketAddr) -> MemberProbe {
    in_ns(&lab.ns, move || {
        Box::pin(async move { probe(&spec, addr).await })
    })
}

#[test]
fn role_probe_against_postgresql_15() {
    let mut lab = Lab::new();
    let primary = lab.add("primary", PRIMARY_PORT);
    let replica = lab.add("replica", REPLICA_PORT);

    // Passwords: checker (SCRAM), checker_md5 (md5-stored, md5 in pg_hba), replicator.
    let scram_pass = lab.write_file("checker.pass", "scram-secret\n", 0o600);
    let md5_pass = lab.write_file("checker_md5.pass", "md5-secret\n", 0o600);
    let wrong_pass = lab.write_file("wrong.pass", "not-the-password\n", 0o600);
    lab.write_file(
        "pgpass",
        &format!("127.0.0.1:{PRIMARY_PORT}:*:replicator:repl-secret\n"),
        0o600,
    );

    let pdata = lab.instances[primary].data();
    lab.pg_run(
        "initdb",
        "initdb",
        &[
            "-D",
            pdata.to_str().unwrap(),
            "-U",
            "postgres",
            "--auth-local=peer",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        ],
    );
    let conf = pdata.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str(&format!(
        "\nwal_level = replica\nmax_wal_senders = 4\nhot_standby = on\nwal_keep_size = 64MB\n\
         max_connections = {MAX_CONNECTIONS}\nsuperuser_reserved_connections = {RESERVED}\n\
         fsync = off\n"
    ));
    std::fs::write(&conf, text).unwrap();
    // The first matching line wins: md5 for checker_md5, trust for checker_trust, SCRAM
    // for everyone else.
    std::fs::write(
        pdata.join("pg_hba.conf"),
        "local all all peer\n\
         host replication replicator 127.0.0.1/32 scram-sha-256\n\
         host all checker_md5 127.0.0.1/32 md5\n\
         host all checker_trust 127.0.0.1/32 trust\n\
         host all all 127.0.0.1/32 scram-sha-256\n",
    )
    .unwrap();
    lab.start(primary);
    lab.sql(
        primary,
        "CREATE ROLE replicator REPLICATION LOGIN PASSWORD 'repl-secret'; \
         CREATE ROLE checker LOGIN PASSWORD 'scram-secret' IN ROLE pg_monitor; \
         CREATE ROLE checker_trust LOGIN IN ROLE pg_monitor; \
         SET password_encryption = 'md5'; \
         CREATE ROLE checker_md5 LOGIN PASSWORD 'md5-secret' IN ROLE pg_monitor;",
    );
    assert!(lab
        .sql(
            primary,
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'checker_md5'"
        )
        .starts_with("md5"));

    let rdata = lab.instances[replica].data();
    lab.pg_run(
        "pg_basebackup",
        "pg_basebackup",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &PRIMARY_PORT.to_string(),
            "-U",
            "replicator",
            "-D",
            rdata.to_str().unwrap(),
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
        ],
    );
    lab.start(replica);
    let paddr = lab.instances[primary].addr();
    let raddr = lab.instances[replica].addr();

    // The primary, with each authentication method.
    let p = observed(probe_in(
        &lab,
        check("checker", Some(&scram_pass), 2000),
        paddr,
    ));
    assert!(!p.in_recovery, "{p:?}");
    assert!(p.current_lsn.is_some_and(|l| l > 0), "{p:?}");
    assert_eq!(p.timeline, Some(1), "{p:?}");
    assert_ne!(p.system_identifier, 0);
    assert_eq!((p.upstream.clone(), p.streaming), (None, false));
    assert_eq!(p.patroni_primary, None);
    let sysid: u64 = lab
        .sql(primary, "SELECT system_identifier FROM pg_control_system()")
        .parse()
        .unwrap();
    assert_eq!(p.system_identifier, sysid);
    let m = observed(probe_in(
        &lab,
        check("checker_md5", Some(&md5_pass), 2000),
        paddr,
    ));
    assert!(!m.in_recovery);
    let t = observed(probe_in(&lab, check("checker_trust", None, 2000), paddr));
    assert!(!t.in_recovery);

    // The replica: in recovery, streaming from the primary (the receiver may need a moment).
    let deadline = Instant::now() + Duration::from_secs(20);
    let r = loop {
        let r = observed(probe_in(
            &lab,
            check("checker", Some(&scram_pass), 2000),
            raddr,
        ));
        if r.streaming || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(r.in_recovery, "{r:?}");
    assert!(r.streaming, "{r:?}");
    assert_eq!(r.upstream, Some(("127.0.0.1".to_string(), PRIMARY_PORT)));
    assert_eq!(r.current_lsn, None);
    assert!(r.receive_lsn.is_some() && r.replay_lsn.is_some(), "{r:?}");
    assert_eq!(r.timeline, Some(1));
    assert_eq!(r.system_identifier, sysid);
    // Its LSNs follow the primary's: after a write and a short wait, replay reaches the
    // primary's current LSN of before.
    lab.sql(
        primary,
        "CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g",
    );
    let before = observed(probe_in(
        &lab,
        check("checker", Some(&scram_pass), 2000),
        paddr,
    ))
    .current_lsn
    .unwrap();
    assert!(before > p.current_lsn.unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = observed(probe_in(
            &lab,
            check("checker", Some(&scram_pass), 2000),
            raddr,
        ));
        if r.replay_lsn.unwrap() >= before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replica never replayed to {before:#x}: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The LSN text and ours agree.
    let lsn_text = lab.sql(primary, "SELECT pg_current_wal_lsn()");
    let (hi, lo) = lsn_text.split_once('/').unwrap();
    let lsn_now = u64::from_str_radix(hi, 16).unwrap() << 32 | u64::from_str_radix(lo, 16).unwrap();
    let p2 = observed(probe_in(
        &lab,
        check("checker", Some(&scram_pass), 2000),
        paddr,
    ));
    assert!(p2.current_lsn.unwrap() >= lsn_now);

    // Wrong password (SCRAM and md5), and no password at all: auth failures.
    for (user, file) in [
        ("checker", Some(&wrong_pass)),
        ("checker_md5", Some(&wrong_pass)),
    ] {
        match probe_in(&lab, check(user, file.map(|p| p.as_path()), 2000), paddr) {
            MemberProbe::AuthFailed(why) => assert!(why.contains("28P01"), "{why}"),
            other => panic!("{user}: {other:?}"),
        }
    }
    assert_eq!(
        probe_in(&lab, check("checker", None, 2000), paddr).kind(),
        "auth_failed"
    );
    // A database that does not exist (3D000): the check's own configuration.
    let mut nodb = check("checker", Some(&scram_pass), 2000);
    nodb.database = "nope".into();
    assert_eq!(probe_in(&lab, nodb, paddr).kind(), "auth_failed");

    // max_connections exhausted: hold every non-reserved slot, then probe.
    let spec = check("checker", Some(&scram_pass), 2000);
    let held = MAX_CONNECTIONS - RESERVED;
    let overloaded = in_ns(&lab.ns, move || {
        Box::pin(async move {
            let mut config = tokio_postgres::Config::new();
            config
                .hostaddr(paddr.ip())
                .port(paddr.port())
                .user("checker")
                .password("scram-secret")
                .dbname("postgres");
            let mut clients = Vec::new();
            for _ in 0..held {
                let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
                tokio::spawn(connection);
                clients.push(client);
            }
            let p = probe(&spec, paddr).await;
            drop(clients);
            p
        })
    });
    match overloaded {
        MemberProbe::Overloaded(why) => assert!(why.contains("53300"), "{why}"),
        other => panic!("expected Overloaded, got {other:?}"),
    }

    // A stopped instance: refused, a failed check.
    lab.stop(replica, "fast", true);
    match probe_in(&lab, check("checker", Some(&scram_pass), 1000), raddr) {
        MemberProbe::Failed(why) => assert!(why.starts_with("connect: "), "{why}"),
        other => panic!("expected Failed, got {other:?}"),
    }

    // A standby that accepts no connections while it recovers (hot_standby off): 57P03,
    // as while starting up.
    lab.start_with(replica, "-c hot_standby=off");
    match probe_in(&lab, check("checker", Some(&scram_pass), 2000), raddr) {
        MemberProbe::NotUsable(why) => assert!(why.contains("57P03"), "{why}"),
        other => panic!("expected NotUsable, got {other:?}"),
    }
    lab.stop(replica, "fast", true);

    // A SIGSTOPped postmaster: the kernel accepts the connection, nobody answers; the probe
    // fails at its timeout (bounded generously: this is about not hanging, not speed).
    let pm = nix::unistd::Pid::from_raw(lab.instances[primary].postmaster_pid().unwrap());
    nix::sys::signal::kill(pm, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let started = Instant::now();
    let hung = probe_in(&lab, check("checker", Some(&scram_pass), 300), paddr);
    let took = started.elapsed();
    nix::sys::signal::kill(pm, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert_eq!(hung, MemberProbe::Failed("timed out after 300ms".into()));
    assert!(took < Duration::from_secs(5), "{took:?}");
    // And it answers again once resumed.
    observed(probe_in(
        &lab,
        check("checker", Some(&scram_pass), 2000),
        paddr,
    ));

    // Shutting down: a smart shutdown waits for open sessions; meanwhile new connections get
    // 57P03 "the database system is shutting down".
    let spec = check("checker", Some(&scram_pass), 2000);
    let (held_tx, held_rx) = std::sync::mpsc::channel::<()>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let ns = lab.ns.clone();
    let prober = std::thread::spawn(move || {
        in_ns(&ns, move || {
            Box::pin(async move {
                let mut config = tokio_postgres::Config::new();
                config
                    .hostaddr(paddr.ip())
                    .port(paddr.port())
                    .user("checker")
                    .password("scram-secret")
                    .dbname("postgres");
                let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
                let conn = tokio::spawn(connection);
                held_tx.send(()).unwrap();
                // Wait (off the runtime thread) for the shutdown to begin.
                tokio::task::spawn_blocking(move || go_rx.recv().unwrap())
                    .await
                    .unwrap();
                let mut p = probe(&spec, paddr).await;
                for _ in 0..50 {
                    if p.kind() != "observed" {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    p = probe(&spec, paddr).await;
                }
                drop(client);
                let _ = conn.await;
                p
            })
        })
    });
    held_rx.recv().unwrap();
    lab.stop(primary, "smart", false);
    go_tx.send(()).unwrap();
    let shutting = prober.join().unwrap();
    match shutting {
        MemberProbe::NotUsable(why) => assert!(why.contains("57P03"), "{why}"),
        other => panic!("expected NotUsable, got {other:?}"),
    }
    drop(lab);
}
