//! The database lab (issue 11): PostgreSQL 15 streaming replication, 1 primary + 2 replicas,
//! each member in one of the lab's backend namespaces (`10.1.<i>.2:5432`, reachable only
//! through the balancer namespace, default route via the balancer), see
//! `/work/shared/docs/postgres-lab.md` for the recipe this follows.
//!
//! - Every member has its own data, socket and log paths under one directory owned by
//!   `postgres` (mode 0700) inside the lab's temp dir; `initdb`, `pg_ctl`, `pg_basebackup` and
//!   `pg_rewind` run as `postgres` inside the member's namespace ([`pg_command`]:
//!   `nsenter --net=.. --setuid --setgid`). Their PIDs come from `postmaster.pid`.
//! - Administration ([`PgCluster::sql`]) goes over each member's Unix socket (trust for local
//!   connections; the socket directories are only reachable by `postgres` and root), so it
//!   works whatever lbd or the namespaces' routes do. Clients (the scenarios, the demo) use
//!   TCP with SCRAM-SHA-256 from a namespace thread ([`connect`]).
//! - Roles: `postgres` (superuser), `replicator` (replication, via a pgpass file), `lb_check`
//!   (`pg_monitor`, its password in [`PgCluster::check_password_file`] for lbd), `app` (the
//!   clients; owns the table `t`).
//! - Failure injection: [`PgCluster::kill`] (SIGKILL of the postmaster and every child),
//!   [`PgCluster::freeze`]/[`PgCluster::thaw`] (SIGSTOP/SIGCONT of the same set),
//!   [`PgCluster::stop`], [`PgCluster::promote`], [`PgCluster::pause_replay`],
//!   [`PgCluster::rewind`] (an old primary rejoins as a replica).
//! - Cleanup on drop, also while unwinding: every postmaster and its children by PID (SIGCONT
//!   first, `pg_ctl stop -m immediate`, then SIGKILL of what is left), then the directory.
//!   Every wait is bounded.

use super::client::{bounded, run_in_netns};
use super::sys;
use super::topology::{Lab, LabOptions, Mode};
use super::{backend_ip, LabError, Result, SNAT_ADDR};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// PostgreSQL 15's server programs (Debian keeps them off the PATH).
pub const PG_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
const INITDB: &str = "/usr/lib/postgresql/15/bin/initdb";
const PG_CTL: &str = "/usr/lib/postgresql/15/bin/pg_ctl";
const PG_BASEBACKUP: &str = "/usr/lib/postgresql/15/bin/pg_basebackup";
const PG_REWIND: &str = "/usr/lib/postgresql/15/bin/pg_rewind";

/// The port every member listens on.
pub const PG_PORT: u16 = 5432;
/// Number of members: 1 primary + 2 replicas.
pub const MEMBERS: usize = 3;
/// The clients' role.
pub const APP_USER: &str = "app";
/// Its password.
pub const APP_PASSWORD: &str = "app-secret";
/// The check role lbd logs in as (member of `pg_monitor`).
pub const CHECK_USER: &str = "lb_check";
/// Its password (in [`PgCluster::check_password_file`]).
pub const CHECK_PASSWORD: &str = "check-secret";
/// The replication role.
const REPLICATION_USER: &str = "replicator";
const REPLICATION_PASSWORD: &str = "repl-secret";
const SUPERUSER_PASSWORD: &str = "postgres-secret";
/// `max_connections` of every member (3 of them reserved for superusers, so the lab's Unix
/// socket administration keeps working when the clients exhaust the rest).
pub const MAX_CONNECTIONS: u32 = 20;

/// How long a member may take to start, stop or promote.
const PG_CTL_TIMEOUT_SECS: u32 = 30;
/// Bound of one administrative query.
const SQL_TIMEOUT: Duration = Duration::from_secs(10);

/// Address of member `i` (1-based): the lab's backend `i` on [`PG_PORT`].
pub fn member_addr(i: usize) -> SocketAddrV4 {
    SocketAddrV4::new(backend_ip(i), PG_PORT)
}

/// A command running `program` as `postgres` inside namespace `ns` (nsenter enters the
/// namespace first, then drops to the user, and execs the program).
pub fn pg_command(ns: &str, program: &str, uid: u32, gid: u32) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{ns}"))
        .args(["--setuid", &uid.to_string(), "--setgid", &gid.to_string()])
        .arg("--")
        .arg(program)
        .env("HOME", "/tmp")
        .env("LC_ALL", "C.UTF-8")
        .env_remove("PGHOST")
        .env_remove("PGPORT");
    cmd
}

/// The uid and gid of the `postgres` user.
fn postgres_ids() -> Result<(u32, u32)> {
    let passwd =
        std::fs::read_to_string("/etc/passwd").map_err(LabError::io("reading /etc/passwd"))?;
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"postgres") && f.len() > 3)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
        .ok_or_else(|| {
            LabError::Unavailable(
                "no `postgres` user: install PostgreSQL 15 with `cargo xtask setup` (package \
                 postgresql-15)"
                    .into(),
            )
        })
}

/// Checks that PostgreSQL 15's programs are installed.
pub fn require_postgres() -> Result<()> {
    for p in [INITDB, PG_CTL, PG_BASEBACKUP, PG_REWIND] {
        if !Path::new(p).is_file() {
            return Err(LabError::Unavailable(format!(
                "{p} is missing: run `cargo xtask setup` (it installs postgresql-15)"
            )));
        }
    }
    postgres_ids().map(|_| ())
}

/// One member: where it lives and how it is started.
#[derive(Debug, Clone)]
pub struct Member {
    /// 1-based index (= the lab's backend index).
    pub index: usize,
    /// Its namespace's name.
    pub ns: String,
    /// Its address.
    pub addr: SocketAddrV4,
    /// Data directory.
    pub data: PathBuf,
    /// Unix socket directory.
    pub sock: PathBuf,
    /// Server log (pg_ctl -l).
    pub log: PathBuf,
}

/// Chooses `i`'s role when the cluster is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Not in recovery.
    Primary,
    /// In recovery (a hot standby).
    Replica,
}

/// The three PostgreSQL instances of a DB lab.
pub struct PgCluster {
    members: Vec<Member>,
    uid: u32,
    gid: u32,
    /// `<lab dir>/pg`, owned by postgres, mode 0700.
    dir: PathBuf,
    /// The pgpass file (replicator and postgres over TCP).
    pgpass: PathBuf,
    /// The check password for lbd (`password_file`).
    check_pass: PathBuf,
    rt: tokio::runtime::Runtime,
}

impl PgCluster {
    /// Builds the cluster in the lab's backend namespaces 1..=3: `initdb` + start of member 1
    /// (the primary, with the roles and the table `t`), `pg_basebackup -R` + start of 2 and 3,
    /// and waits until both stream from 1.
    pub fn new(lab: &Lab) -> Result<PgCluster> {
        require_postgres()?;
        if lab.backend_count() < MEMBERS {
            return Err(LabError::Unavailable(format!(
                "the DB lab needs {MEMBERS} backend namespaces, the lab has {}",
                lab.backend_count()
            )));
        }
        let (uid, gid) = postgres_ids()?;
        let dir = lab.dir().join("pg");
        let members = (1..=MEMBERS)
            .map(|i| Member {
                index: i,
                ns: lab.backend_ns(i).to_string(),
                addr: member_addr(i),
                data: dir.join(format!("n{i}/data")),
                sock: dir.join(format!("n{i}/sock")),
                log: dir.join(format!("n{i}/log")),
            })
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(LabError::io("building a tokio runtime"))?;
        let pg = PgCluster {
            members,
            uid,
            gid,
            pgpass: dir.join("pgpass"),
            check_pass: lab.dir().join("pg-check.pass"),
            dir,
            rt,
        };
        pg.make_dirs()?;
        pg.init_primary(1)?;
        for i in 2..=MEMBERS {
            pg.base_backup(i, 1)?;
            pg.start(i)?;
        }
        for i in 2..=MEMBERS {
            pg.wait_streaming(i, 1, Duration::from_secs(30))?;
        }
        Ok(pg)
    }

    fn chown(&self, path: &Path, mode: u32) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
            .map_err(LabError::io(format!("chown {}", path.display())))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(LabError::io(format!("chmod {}", path.display())))
    }

    fn make_dirs(&self) -> Result<()> {
        let mkdir = |p: &Path| {
            std::fs::create_dir_all(p).map_err(LabError::io(format!("creating {}", p.display())))
        };
        mkdir(&self.dir)?;
        self.chown(&self.dir, 0o700)?;
        for m in &self.members {
            let n = m.sock.parent().expect("sock has a parent");
            for d in [n, m.sock.as_path()] {
                mkdir(d)?;
                self.chown(d, 0o700)?;
            }
        }
        let pgpass = format!(
            "*:*:*:{REPLICATION_USER}:{REPLICATION_PASSWORD}\n*:*:*:postgres:{SUPERUSER_PASSWORD}\n"
        );
        std::fs::write(&self.pgpass, pgpass).map_err(LabError::io("writing pgpass"))?;
        self.chown(&self.pgpass, 0o600)?;
        // lbd runs as root and reads it; nobody else needs to.
        std::fs::write(&self.check_pass, format!("{CHECK_PASSWORD}\n"))
            .map_err(LabError::io("writing the check password file"))?;
        Ok(())
    }

    /// The members (index 1..=3 at positions 0..=2).
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Member `i` (1-based).
    pub fn member(&self, i: usize) -> &Member {
        &self.members[i - 1]
    }

    /// The file holding [`CHECK_PASSWORD`] (lbd's `password_file`).
    pub fn check_password_file(&self) -> &Path {
        &self.check_pass
    }

    /// Runs `program args` as postgres in member `i`'s namespace, bounded by `timeout`
    /// (`timeout` program semantics are not needed: pg_ctl waits are bounded by `-t`, the
    /// others by the sockets' own timeouts; this bound kills the command by PID).
    fn run_pg(&self, i: usize, program: &str, args: &[&str], timeout: Duration) -> Result<String> {
        let m = self.member(i);
        let mut cmd = pg_command(&m.ns, program, self.uid, self.gid);
        cmd.args(args)
            .env("PGPASSFILE", &self.pgpass)
            .env("PGCONNECT_TIMEOUT", "10")
            .current_dir(&self.dir);
        run_bounded(&mut cmd, timeout)
    }

    fn pg_ctl(&self, i: usize, args: &[&str]) -> Result<String> {
        let m = self.member(i);
        let data = m.data.to_string_lossy().to_string();
        let mut all = vec!["-D", &data, "-t"];
        let t = PG_CTL_TIMEOUT_SECS.to_string();
        all.push(&t);
        all.extend_from_slice(args);
        self.run_pg(
            i,
            PG_CTL,
            &all,
            Duration::from_secs(u64::from(PG_CTL_TIMEOUT_SECS) + 10),
        )
    }

    /// The per-instance settings (pg_basebackup copies the primary's files, so these go on
    /// the command line).
    fn instance_options(&self, i: usize) -> String {
        let m = self.member(i);
        format!(
            "-c listen_addresses={} -c port={PG_PORT} -c unix_socket_directories={} -c cluster_name=n{i}",
            m.addr.ip(),
            m.sock.display()
        )
    }

    fn init_primary(&self, i: usize) -> Result<()> {
        let m = self.member(i).clone();
        let data = m.data.to_string_lossy().to_string();
        let pwfile = self.dir.join("pwfile");
        std::fs::write(&pwfile, format!("{SUPERUSER_PASSWORD}\n"))
            .map_err(LabError::io("writing the initdb password file"))?;
        self.chown(&pwfile, 0o600)?;
        let pw = pwfile.to_string_lossy().to_string();
        self.run_pg(
            i,
            INITDB,
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--pwfile",
                &pw,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ],
            Duration::from_secs(120),
        )?;
        let _ = std::fs::remove_file(&pwfile);
        let conf = format!(
            "\n# lb's DB lab\nwal_level = replica\nmax_wal_senders = 10\nhot_standby = on\n\
             wal_keep_size = 512MB\nwal_log_hints = on\nmax_connections = {MAX_CONNECTIONS}\n\
             superuser_reserved_connections = 3\nshared_buffers = 16MB\nfsync = off\n\
             full_page_writes = on\nmax_wal_size = 1GB\nlog_connections = off\n\
             password_encryption = scram-sha-256\nhot_standby_feedback = on\n"
        );
        append(&m.data.join("postgresql.conf"), &conf)?;
        // Members, the balancer's own addresses (its checks, the self-test) and the SNAT
        // address (clients through lb).
        let hba = format!(
            "\n# lb's DB lab\nhost replication {REPLICATION_USER} 10.1.0.0/16 scram-sha-256\n\
             host all all 10.1.0.0/16 scram-sha-256\nhost all all {SNAT_ADDR}/32 scram-sha-256\n"
        );
        append(&m.data.join("pg_hba.conf"), &hba)?;
        self.start(i)?;
        self.sql(
            i,
            &format!(
                "CREATE ROLE {REPLICATION_USER} REPLICATION LOGIN PASSWORD '{REPLICATION_PASSWORD}';\
                 CREATE ROLE {CHECK_USER} LOGIN PASSWORD '{CHECK_PASSWORD}' IN ROLE pg_monitor;\
                 CREATE ROLE {APP_USER} LOGIN PASSWORD '{APP_PASSWORD}';\
                 CREATE TABLE t (id bigserial PRIMARY KEY, writer text NOT NULL, seq bigint NOT NULL, \
                   at timestamptz NOT NULL DEFAULT now());\
                 ALTER TABLE t OWNER TO {APP_USER};\
                 CREATE TABLE bulk (id bigint, pad text);\
                 ALTER TABLE bulk OWNER TO {APP_USER};"
            ),
        )?;
        Ok(())
    }

    /// `pg_basebackup -R` of member `i` from member `from`'s address (a replica).
    fn base_backup(&self, i: usize, from: usize) -> Result<()> {
        let data = self.member(i).data.to_string_lossy().to_string();
        let host = self.member(from).addr.ip().to_string();
        self.run_pg(
            i,
            PG_BASEBACKUP,
            &[
                "-h",
                &host,
                "-p",
                &PG_PORT.to_string(),
                "-U",
                REPLICATION_USER,
                "-D",
                &data,
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ],
            Duration::from_secs(120),
        )
        .map(|_| ())
    }

    /// Removes member `i`'s `postmaster.pid` when its postmaster is gone (killed, or a zombie
    /// not reaped yet: `kill(pid, 0)` succeeds on a zombie, so PostgreSQL would refuse to
    /// start on that data directory).
    fn clear_stale_pid(&self, i: usize) {
        if self.postmaster_pid(i).is_none() {
            let _ = std::fs::remove_file(self.member(i).data.join("postmaster.pid"));
            // The socket lock names the killed postmaster too; if nobody reaped it (a zombie
            // still "exists" for PostgreSQL's liveness check), a new start refuses it.
            let sock = &self.member(i).sock;
            let _ = std::fs::remove_file(sock.join(format!(".s.PGSQL.{PG_PORT}.lock")));
            let _ = std::fs::remove_file(sock.join(format!(".s.PGSQL.{PG_PORT}")));
        }
    }

    /// Starts member `i` (`pg_ctl start -w`).
    pub fn start(&self, i: usize) -> Result<()> {
        self.clear_stale_pid(i);
        let m = self.member(i);
        let log = m.log.to_string_lossy().to_string();
        let opts = self.instance_options(i);
        self.pg_ctl(i, &["-l", &log, "-w", "-o", &opts, "start"])
            .map_err(|e| self.with_log(i, e))?;
        Ok(())
    }

    /// Stops member `i` (`pg_ctl stop -w -m MODE`: `fast` or `immediate`).
    pub fn stop(&self, i: usize, mode: &str) -> Result<()> {
        self.pg_ctl(i, &["-w", "-m", mode, "stop"])
            .map(|_| ())
            .map_err(|e| self.with_log(i, e))
    }

    /// Promotes member `i` (`pg_ctl promote -w`) and waits until it is out of recovery.
    pub fn promote(&self, i: usize) -> Result<()> {
        self.pg_ctl(i, &["-w", "promote"])
            .map_err(|e| self.with_log(i, e))?;
        sys::wait_for(
            &format!("n{i} out of recovery"),
            Duration::from_secs(10),
            Duration::from_millis(20),
            || (self.role(i).ok() == Some(Role::Primary)).then_some(()),
        )
    }

    fn with_log(&self, i: usize, e: LabError) -> LabError {
        LabError::Unavailable(format!(
            "{e}\nn{i} log:\n{}",
            sys::log_tail(&self.member(i).log, 20)
        ))
    }

    /// PID of member `i`'s postmaster (from `postmaster.pid`), if it runs.
    pub fn postmaster_pid(&self, i: usize) -> Option<i32> {
        let text = std::fs::read_to_string(self.member(i).data.join("postmaster.pid")).ok()?;
        let pid: i32 = text.lines().next()?.trim().parse().ok()?;
        // A stale file after SIGKILL: the process must exist, be a postgres and not be a
        // zombie (a killed postmaster is reparented and may stay unreaped for a while).
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        (comm.trim().starts_with("postgres") && !is_zombie(pid)).then_some(pid)
    }

    /// The postmaster of member `i` and every child of it (backends, walsender, ...).
    pub fn pids(&self, i: usize) -> Vec<i32> {
        let Some(pm) = self.postmaster_pid(i) else {
            return Vec::new();
        };
        let mut out = vec![pm];
        out.extend(children_of(pm));
        out
    }

    fn signal_all(&self, i: usize, sig: libc::c_int) -> Result<Vec<i32>> {
        let pids = self.pids(i);
        if pids.is_empty() {
            return Err(LabError::Api(format!("n{i} is not running")));
        }
        for &p in &pids {
            // SAFETY: kill by the PID of a postgres process of this lab.
            unsafe {
                libc::kill(p, sig);
            }
        }
        Ok(pids)
    }

    /// Kills member `i` hard: SIGKILL to its postmaster and every child, then waits until they
    /// are gone. Its sockets vanish without FIN (the kernel closes them: peers see RST/FIN
    /// from the kernel, exactly what a crashed host's kernel would not send; for a silent
    /// member use [`PgCluster::freeze`]).
    pub fn kill(&self, i: usize) -> Result<()> {
        let pids = self.signal_all(i, libc::SIGKILL)?;
        sys::wait_for(
            &format!("n{i}'s processes to exit"),
            Duration::from_secs(10),
            Duration::from_millis(10),
            || {
                pids.iter()
                    .all(|p| !Path::new(&format!("/proc/{p}")).exists() || is_zombie(*p))
                    .then_some(())
            },
        )
    }

    /// Freezes member `i`: SIGSTOP to its postmaster and every child (each backend calls
    /// setsid, so a process-group signal would freeze the postmaster only).
    pub fn freeze(&self, i: usize) -> Result<()> {
        self.signal_all(i, libc::SIGSTOP).map(|_| ())
    }

    /// Resumes a frozen member (SIGCONT to the same set).
    pub fn thaw(&self, i: usize) -> Result<()> {
        self.signal_all(i, libc::SIGCONT).map(|_| ())
    }

    /// Runs `sql` (one or more statements) on member `i` over its Unix socket as `postgres`;
    /// returns the rows of every statement's results as text.
    pub fn sql(&self, i: usize, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        let sock = self.member(i).sock.clone();
        let sql = sql.to_string();
        self.rt.block_on(async move {
            bounded(&format!("SQL on n{i}"), SQL_TIMEOUT, async move {
                let mut cfg = tokio_postgres::Config::new();
                cfg.host_path(&sock)
                    .port(PG_PORT)
                    .user("postgres")
                    .dbname("postgres")
                    .connect_timeout(Duration::from_secs(5));
                let (client, conn) = cfg
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(|e| LabError::Api(format!("connecting to n{i}: {e}")))?;
                let task = tokio::spawn(conn);
                let msgs = client
                    .simple_query(&sql)
                    .await
                    .map_err(|e| LabError::Api(format!("n{i}: {sql}: {}", db_error(&e))))?;
                drop(client);
                let _ = task.await;
                Ok(rows_of(msgs))
            })
            .await
        })
    }

    /// The first column of the first row of `sql` on member `i`.
    pub fn sql_one(&self, i: usize, sql: &str) -> Result<Option<String>> {
        let rows = self.sql(i, sql)?;
        Ok(rows
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next())
            .flatten())
    }

    /// Whether member `i` is in recovery.
    pub fn role(&self, i: usize) -> Result<Role> {
        match self.sql_one(i, "SELECT pg_is_in_recovery()")?.as_deref() {
            Some("t") => Ok(Role::Replica),
            Some("f") => Ok(Role::Primary),
            other => Err(LabError::Api(format!(
                "pg_is_in_recovery() on n{i}: {other:?}"
            ))),
        }
    }

    /// The timeline member `i` is on (primary: from its WAL file name; replica: the one it
    /// receives).
    pub fn timeline(&self, i: usize) -> Result<u32> {
        let v = self.sql_one(
            i,
            "SELECT CASE WHEN pg_is_in_recovery() THEN (SELECT received_tli FROM pg_stat_wal_receiver) \
             ELSE ('x'||substr(pg_walfile_name(pg_current_wal_lsn()),1,8))::bit(32)::int END",
        )?;
        v.as_deref()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| LabError::Api(format!("timeline of n{i}: {v:?}")))
    }

    /// Waits until replica `i` streams from member `upstream` (pg_stat_wal_receiver).
    pub fn wait_streaming(&self, i: usize, upstream: usize, timeout: Duration) -> Result<()> {
        let host = self.member(upstream).addr.ip().to_string();
        let mut last = String::new();
        sys::wait_for(
            &format!("n{i} streaming from n{upstream}"),
            timeout,
            Duration::from_millis(50),
            || match self.sql(i, "SELECT status, sender_host FROM pg_stat_wal_receiver") {
                Ok(rows) => {
                    last = format!("{rows:?}");
                    rows.first()
                        .filter(|r| {
                            r.first().cloned().flatten().as_deref() == Some("streaming")
                                && r.get(1).cloned().flatten().as_deref() == Some(host.as_str())
                        })
                        .map(|_| ())
                }
                Err(e) => {
                    last = e.to_string();
                    None
                }
            },
        )
        .map_err(|e| self.with_log(i, LabError::Timeout(format!("{e}; last: {last}"))))
    }

    /// The current WAL LSN of primary `i`, as a u64 (`X/Y` = X<<32 | Y).
    pub fn current_lsn(&self, i: usize) -> Result<u64> {
        let v = self.sql_one(i, "SELECT pg_current_wal_lsn()")?;
        v.as_deref()
            .and_then(parse_lsn)
            .ok_or_else(|| LabError::Api(format!("pg_current_wal_lsn() on n{i}: {v:?}")))
    }

    /// The replay LSN of replica `i`.
    pub fn replay_lsn(&self, i: usize) -> Result<u64> {
        let v = self.sql_one(i, "SELECT pg_last_wal_replay_lsn()")?;
        v.as_deref()
            .and_then(parse_lsn)
            .ok_or_else(|| LabError::Api(format!("pg_last_wal_replay_lsn() on n{i}: {v:?}")))
    }

    /// The last WAL position replica `i` received and flushed (`pg_last_wal_receive_lsn()`;
    /// 0 when it has not streamed since it started).
    pub fn receive_lsn(&self, i: usize) -> Result<u64> {
        let v = self.sql_one(i, "SELECT pg_last_wal_receive_lsn()")?;
        Ok(v.as_deref().and_then(parse_lsn).unwrap_or(0))
    }

    /// Replay lag of replica `replica` behind primary `primary` in bytes (read back to back).
    pub fn lag_bytes(&self, primary: usize, replica: usize) -> Result<u64> {
        let p = self.current_lsn(primary)?;
        let r = self.replay_lsn(replica)?;
        Ok(p.saturating_sub(r))
    }

    /// Waits until replica `replica` has replayed everything primary `primary` had written
    /// when the wait started.
    pub fn wait_caught_up(&self, primary: usize, replica: usize, timeout: Duration) -> Result<()> {
        let target = self.current_lsn(primary)?;
        sys::wait_for(
            &format!("n{replica} to replay n{primary}'s WAL"),
            timeout,
            Duration::from_millis(20),
            || (self.replay_lsn(replica).ok()? >= target).then_some(()),
        )
    }

    /// Pauses WAL replay on replica `i` and waits for `pg_get_wal_replay_pause_state() =
    /// 'paused'`.
    pub fn pause_replay(&self, i: usize) -> Result<()> {
        self.sql(i, "SELECT pg_wal_replay_pause()")?;
        sys::wait_for(
            &format!("replay paused on n{i}"),
            Duration::from_secs(10),
            Duration::from_millis(20),
            || {
                (self
                    .sql_one(i, "SELECT pg_get_wal_replay_pause_state()")
                    .ok()
                    .flatten()
                    .as_deref()
                    == Some("paused"))
                .then_some(())
            },
        )
    }

    /// Resumes WAL replay on replica `i`.
    pub fn resume_replay(&self, i: usize) -> Result<()> {
        self.sql(i, "SELECT pg_wal_replay_resume()").map(|_| ())
    }

    /// Writes about `bytes` of WAL on primary `i` (rows of 200 bytes into `bulk`).
    pub fn write_bulk(&self, i: usize, bytes: u64) -> Result<()> {
        // ~250 bytes of WAL per 200-byte row (tuple header, record header).
        let rows = bytes / 250 + 1;
        self.sql(
            i,
            &format!(
                "INSERT INTO bulk SELECT g, repeat('x', 200) FROM generate_series(1, {rows}) g"
            ),
        )
        .map(|_| ())
    }

    /// Points replica `i` at member `upstream` (`ALTER SYSTEM SET primary_conninfo` +
    /// reload: PostgreSQL 15 follows without a restart).
    pub fn repoint(&self, i: usize, upstream: usize) -> Result<()> {
        let conninfo = self.conninfo(upstream, i);
        // Two round trips: ALTER SYSTEM cannot run in the implicit transaction of a
        // multi-statement simple query.
        self.sql(
            i,
            &format!("ALTER SYSTEM SET primary_conninfo = '{conninfo}'"),
        )?;
        self.sql(i, "SELECT pg_reload_conf()").map(|_| ())
    }

    fn conninfo(&self, upstream: usize, of: usize) -> String {
        format!(
            "host={} port={PG_PORT} user={REPLICATION_USER} passfile={} application_name=n{of}",
            self.member(upstream).addr.ip(),
            self.pgpass.display()
        )
    }

    /// Rejoins old primary `old` as a replica of `new_primary`: stops it (if it runs),
    /// `CHECKPOINT` on the new primary (otherwise pg_rewind sees the same timeline),
    /// `pg_rewind -R` from the new primary's Unix socket, a replication `primary_conninfo`,
    /// start, and waits until it streams from the new primary.
    pub fn rewind(&self, old: usize, new_primary: usize) -> Result<()> {
        if self.postmaster_pid(old).is_some() {
            // A frozen member would never stop.
            let _ = self.signal_all(old, libc::SIGCONT);
            self.stop(old, "fast")?;
        }
        self.clear_stale_pid(old);
        self.sql(new_primary, "CHECKPOINT")?;
        let data = self.member(old).data.to_string_lossy().to_string();
        let source = format!(
            "host={} port={PG_PORT} user=postgres dbname=postgres",
            self.member(new_primary).sock.display()
        );
        self.run_pg(
            old,
            PG_REWIND,
            &[
                "-D",
                &data,
                &format!("--source-server={source}"),
                "-R",
                "--no-sync",
            ],
            Duration::from_secs(120),
        )
        .map_err(|e| self.with_log(old, e))?;
        let auto = self.member(old).data.join("postgresql.auto.conf");
        append(
            &auto,
            &format!("primary_conninfo = '{}'\n", self.conninfo(new_primary, old)),
        )?;
        self.start(old)?;
        self.wait_streaming(old, new_primary, Duration::from_secs(30))
    }

    /// Whether member `i` runs (a postmaster exists).
    pub fn running(&self, i: usize) -> bool {
        self.postmaster_pid(i).is_some()
    }

    /// Rows of `t` written by `writer` on member `i`.
    pub fn rows_by(&self, i: usize, writer: &str) -> Result<u64> {
        let v = self.sql_one(
            i,
            &format!("SELECT count(*) FROM t WHERE writer = '{writer}'"),
        )?;
        v.as_deref()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| LabError::Api(format!("count on n{i}: {v:?}")))
    }

    /// Stops every member (SIGCONT first, `pg_ctl stop -m immediate`, SIGKILL by PID of what is
    /// left). Used by drop; idempotent.
    pub fn shutdown(&self) {
        for i in 1..=self.members.len() {
            if self.postmaster_pid(i).is_none() {
                continue;
            }
            let _ = self.signal_all(i, libc::SIGCONT);
            if let Err(e) = self.pg_ctl(i, &["-w", "-m", "immediate", "stop"]) {
                eprintln!("lab: stopping n{i}: {e}");
            }
            let left = self.pids(i);
            for p in left {
                // SAFETY: kill by the PID of a postgres process of this lab.
                unsafe {
                    libc::kill(p, libc::SIGKILL);
                }
            }
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for m in &self.members {
                eprintln!("lab: n{} log:\n{}", m.index, sys::log_tail(&m.log, 15));
            }
        }
        self.shutdown();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A lab with the DB cluster: lab backends 1..=3 are the members. Dropping it stops PostgreSQL
/// first, then the lab (lbd, namespaces, temp dir).
pub struct PgLab {
    /// The cluster (dropped first).
    pub pg: PgCluster,
    /// The lab.
    pub lab: Lab,
}

impl PgLab {
    /// Builds the lab (3 backends in `mode`) and the cluster (member 1 the primary).
    pub fn new(mode: Mode) -> Result<PgLab> {
        let lab = Lab::new(LabOptions::new(MEMBERS, mode))?;
        let pg = PgCluster::new(&lab)?;
        Ok(PgLab { pg, lab })
    }
}

/// The write VIP of the DB lab (`pg-write`) and the read service's VIP (`pg-read`).
pub const DB_VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 20);
/// `pg-write`'s port.
pub const WRITE_PORT: u16 = 5432;
/// `pg-read`'s port.
pub const READ_PORT: u16 = 5433;
/// The cluster's name in lbd's config.
pub const CLUSTER: &str = "pg";

/// `DB_VIP:WRITE_PORT`.
pub fn write_vip() -> SocketAddr {
    SocketAddr::from((DB_VIP, WRITE_PORT))
}

/// `DB_VIP:READ_PORT`.
pub fn read_vip() -> SocketAddr {
    SocketAddr::from((DB_VIP, READ_PORT))
}

/// The port of a member's Patroni REST API (or of what answers like it) in the lab.
pub const PATRONI_PORT: u16 = 8008;

/// The `db_clusters` settings the lab renders (issue 11's scenarios: checks every 250 ms,
/// fall 2, rise 2).
#[derive(Debug, Clone)]
pub struct DbSpec {
    /// `postgres`, `patroni` or `both` (the last two give every member a `patroni` address
    /// on [`PATRONI_PORT`]).
    pub check_type: String,
    /// Check interval (ms).
    pub interval_ms: u64,
    /// Check timeout (ms).
    pub timeout_ms: u64,
    /// Successes to count a member's observation.
    pub rise: u32,
    /// Failures to drop it.
    pub fall: u32,
    /// `max_lag_bytes`.
    pub max_lag_bytes: u64,
    /// `fallback` of the read service: `primary` or `none`.
    pub read_fallback: String,
    /// `promote:` (argv, after ms), off when `None`.
    pub promote: Option<(Vec<String>, u64)>,
}

impl Default for DbSpec {
    fn default() -> Self {
        Self {
            check_type: "postgres".into(),
            interval_ms: 250,
            timeout_ms: 200,
            rise: 2,
            fall: 2,
            max_lag_bytes: 16 << 20,
            read_fallback: "primary".into(),
            promote: None,
        }
    }
}

impl DbSpec {
    /// `interval x fall`: how long a failed member may keep its role.
    pub fn detection(&self) -> Duration {
        Duration::from_millis(self.interval_ms * u64::from(self.fall))
    }

    /// `interval x rise`.
    pub fn recovery(&self) -> Duration {
        Duration::from_millis(self.interval_ms * u64::from(self.rise))
    }
}

/// lbd's config for the DB lab (the contract of issue 11): the lab's interfaces, SNAT and
/// limits, no web service, the cluster `pg` of the three members, `pg-write` on
/// `DB_VIP:5432` (role primary) and `pg-read` on `DB_VIP:5433` (role replica).
pub fn db_lbd_yaml(lab: &Lab, pg: &PgCluster, spec: &DbSpec) -> String {
    let members: Vec<SocketAddrV4> = pg.members().iter().map(|m| m.addr).collect();
    db_config_yaml(
        lab.lbd_config(Vec::new(), super::lbd::HealthSpec::default()),
        &members,
        pg.check_password_file(),
        spec,
    )
}

/// The text of [`db_lbd_yaml`] from its parts: `base` (its services are dropped), the members'
/// addresses and the check's password file.
pub fn db_config_yaml(
    mut base: super::lbd::LbdConfig,
    members: &[SocketAddrV4],
    password_file: &Path,
    spec: &DbSpec,
) -> String {
    base.services.clear();
    let mut y = base.to_yaml();
    // `to_yaml` ends with an empty `services:` list; the DB services are its items.
    y.push_str(&format!(
        "  - name: pg-write\n    vip: {DB_VIP}\n    port: {WRITE_PORT}\n    protocol: tcp\n    db_cluster: {CLUSTER}\n    role: primary\n\
         \x20 - name: pg-read\n    vip: {DB_VIP}\n    port: {READ_PORT}\n    protocol: tcp\n    db_cluster: {CLUSTER}\n    role: replica\n    fallback: {}\n",
        spec.read_fallback
    ));
    y.push_str(&format!(
        "db_clusters:\n  - name: {CLUSTER}\n    members:\n"
    ));
    for m in members {
        y.push_str(&format!("      - address: {m}\n"));
        // `patroni` and `both` need each member's REST address.
        if spec.check_type != "postgres" {
            y.push_str(&format!("        patroni: {}:{PATRONI_PORT}\n", m.ip()));
        }
    }
    y.push_str(&format!(
        "    check:\n      type: {}\n      interval: {}ms\n      timeout: {}ms\n      rise: {}\n      fall: {}\n      user: {CHECK_USER}\n      database: postgres\n      password_file: {}\n    max_lag_bytes: {}\n",
        spec.check_type,
        spec.interval_ms,
        spec.timeout_ms,
        spec.rise,
        spec.fall,
        password_file.display(),
        spec.max_lag_bytes
    ));
    if let Some((argv, after_ms)) = &spec.promote {
        let argv: Vec<String> = argv.iter().map(|a| format!("{a:?}")).collect();
        y.push_str(&format!(
            "    promote:\n      command: [{}]\n      after: {after_ms}ms\n",
            argv.join(", ")
        ));
    }
    y
}

/// A client session: connect, query, observe which member serves it.
pub struct Session {
    client: tokio_postgres::Client,
    conn: tokio::task::JoinHandle<std::result::Result<(), tokio_postgres::Error>>,
}

/// Connects to `addr` as [`APP_USER`] (SCRAM-SHA-256), bounded by `timeout`. Must run inside
/// a tokio runtime (e.g. in [`Lab::in_client`]).
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Session> {
    connect_as(addr, APP_USER, APP_PASSWORD, timeout).await
}

/// Connects to `addr` as `user` with `password`.
pub async fn connect_as(
    addr: SocketAddr,
    user: &str,
    password: &str,
    timeout: Duration,
) -> Result<Session> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(addr.ip().to_string())
        .port(addr.port())
        .user(user)
        .password(password)
        .dbname("postgres")
        .connect_timeout(timeout);
    let fut = async {
        let (client, conn) = cfg
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| LabError::Api(format!("connecting to {addr}: {}", db_error(&e))))?;
        Ok(Session {
            client,
            conn: tokio::spawn(conn),
        })
    };
    bounded(&format!("connecting to {addr}"), timeout, fut).await
}

impl Session {
    /// Runs `sql` (simple protocol) and returns the rows as text, bounded by `timeout`.
    pub async fn query(&self, sql: &str, timeout: Duration) -> Result<Vec<Vec<Option<String>>>> {
        let fut = async {
            self.client
                .simple_query(sql)
                .await
                .map(rows_of)
                .map_err(|e| LabError::Api(format!("{sql}: {}", db_error(&e))))
        };
        bounded(sql, timeout, fut).await
    }

    /// The first column of the first row of `sql`.
    pub async fn query_one(&self, sql: &str, timeout: Duration) -> Result<Option<String>> {
        Ok(self
            .query(sql, timeout)
            .await?
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next())
            .flatten())
    }

    /// The member that serves this session (`inet_server_addr()`).
    pub async fn server(&self, timeout: Duration) -> Result<Ipv4Addr> {
        let v = self
            .query_one("SELECT host(inet_server_addr())", timeout)
            .await?;
        v.as_deref()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| LabError::Api(format!("inet_server_addr() = {v:?}")))
    }

    /// Inserts one row `(writer, seq)` into `t` and returns the member that committed it.
    pub async fn write(&self, writer: &str, seq: u64, timeout: Duration) -> Result<Ipv4Addr> {
        let v = self
            .query_one(
                &format!(
                    "INSERT INTO t (writer, seq) VALUES ('{writer}', {seq}) RETURNING host(inet_server_addr())"
                ),
                timeout,
            )
            .await?;
        v.as_deref()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| LabError::Api(format!("INSERT .. RETURNING inet_server_addr() = {v:?}")))
    }

    /// Whether the connection is closed (reset by the peer or by lb).
    pub fn is_closed(&self) -> bool {
        self.client.is_closed() || self.conn.is_finished()
    }

    /// Waits up to `timeout` for the connection to end; returns how it ended (the driver's
    /// error text, or `"closed"`), or `None` if it is still open.
    pub async fn wait_closed(&mut self, timeout: Duration) -> Option<String> {
        match tokio::time::timeout(timeout, &mut self.conn).await {
            Ok(Ok(Ok(()))) => Some("closed".into()),
            Ok(Ok(Err(e))) => Some(db_error(&e)),
            Ok(Err(e)) => Some(format!("connection task: {e}")),
            Err(_) => None,
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// Which member served one fresh connection: connects, asks `inet_server_addr()`, closes.
pub async fn served_by(addr: SocketAddr, timeout: Duration) -> Result<Ipv4Addr> {
    let s = connect(addr, timeout).await?;
    s.server(timeout).await
}

/// Opens `count` fresh connections to `addr` one after another and counts the members that
/// served them (by address), and the failures (key `"error"`).
pub async fn spread_members(
    addr: SocketAddr,
    count: usize,
    timeout: Duration,
) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for _ in 0..count {
        let key = match served_by(addr, timeout).await {
            Ok(ip) => ip.to_string(),
            Err(_) => "error".into(),
        };
        *m.entry(key).or_insert(0) += 1;
    }
    m
}

/// Runs [`spread_members`] from the namespace at `ns`.
pub fn spread_from(
    ns: PathBuf,
    addr: SocketAddr,
    count: usize,
    timeout: Duration,
) -> Result<std::collections::BTreeMap<String, usize>> {
    run_in_netns(ns, move || async move {
        Ok(spread_members(addr, count, timeout).await)
    })
}

/// The text of a tokio-postgres error with the server's message and SQLSTATE when it has one.
pub fn db_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => match std::error::Error::source(e) {
            Some(src) => format!("{e}: {src}"),
            None => e.to_string(),
        },
    }
}

fn rows_of(msgs: Vec<tokio_postgres::SimpleQueryMessage>) -> Vec<Vec<Option<String>>> {
    msgs.into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|k| r.get(k).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect()
}

/// Parses PostgreSQL's `X/Y` LSN text into `X << 32 | Y`.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    let hi = u64::from_str_radix(hi, 16).ok()?;
    let lo = u64::from_str_radix(lo, 16).ok()?;
    (hi <= u64::from(u32::MAX) && lo <= u64::from(u32::MAX)).then_some(hi << 32 | lo)
}

fn append(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(LabError::io(format!("opening {}", path.display())))?;
    f.write_all(text.as_bytes())
        .map_err(LabError::io(format!("writing {}", path.display())))
}

/// The PIDs whose parent is `ppid` (from /proc).
fn children_of(ppid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| stat_field(*pid, 1).and_then(|p| p.parse().ok()) == Some(ppid))
        .collect()
}

/// Field `n` (0 = state, 1 = ppid, ...) after the `(comm)` of /proc/PID/stat.
fn stat_field(pid: i32, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(n).map(str::to_string)
}

fn is_zombie(pid: i32) -> bool {
    stat_field(pid, 0).as_deref() == Some("Z")
}

/// Runs `cmd`, killing it (by PID) when it runs longer than `timeout`; returns stdout, or an
/// error with its stderr.
fn run_bounded(cmd: &mut Command, timeout: Duration) -> Result<String> {
    use std::io::Read;
    let line = format!("{cmd:?}");
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(LabError::io(format!("cannot start {line}")))?;
    // Read the pipes on threads so a chatty child cannot block on a full pipe.
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child
            .try_wait()
            .map_err(LabError::io(format!("waiting for {line}")))?
        {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(LabError::Timeout(format!("{line} within {timeout:?}")));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // pg_ctl start leaves the postmaster holding the pipes only if it inherits them: pg_ctl
    // redirects the server's output to the log file (-l), so these joins end.
    let stdout = t_out.join().unwrap_or_default();
    let stderr = t_err.join().unwrap_or_default();
    if !status.success() {
        return Err(LabError::Command {
            cmd: line,
            status: status.to_string(),
            stderr: format!("{}{}", stderr.trim(), stdout.trim()),
        });
    }
    Ok(stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_text_parses() {
        assert_eq!(parse_lsn("0/3000148"), Some(0x0300_0148));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374_D848));
        assert_eq!(parse_lsn("nonsense"), None);
        assert_eq!(parse_lsn("1/"), None);
    }

    /// Every variant of the DB lab's lbd config loads in lbd's own config loader (the bench's
    /// lb rows once failed at start-up because lbd did not know `db_cluster` yet; this catches
    /// any drift between the lab's YAML and the config schema without root).
    #[test]
    fn db_config_loads_in_lbd() {
        use super::super::lbd::{BackendSpec, ConntrackSpec, HealthSpec, LbdConfig, ServiceSpec};
        let base = LbdConfig {
            interfaces: vec!["pub0".into(), "bk1".into(), "bk2".into(), "bk3".into()],
            xdp_mode: "native".into(),
            bpffs_root: "/sys/fs/bpf/lbtest".into(),
            api_socket: "/tmp/lbtest/lbd.sock".into(),
            metrics_listen: "127.0.0.1:9560".into(),
            snat_addresses: vec![SNAT_ADDR],
            snat_ports: (1024, 32767),
            conntrack: ConntrackSpec::default(),
            conntrack_flows: 65536,
            embryonic_flows: None,
            // Dropped by db_config_yaml.
            services: vec![ServiceSpec {
                name: "web".into(),
                vip: Ipv4Addr::new(192, 0, 2, 10),
                port: 80,
                health: HealthSpec::default(),
                on_backend_down: None,
                backends: vec![BackendSpec::new("10.1.1.2:8080".parse().unwrap())],
            }],
        };
        let members: Vec<SocketAddrV4> = (1..=MEMBERS).map(member_addr).collect();
        let pass = Path::new("/tmp/lbtest/pg-check.pass");
        let variants = [
            DbSpec::default(),
            DbSpec {
                check_type: "both".into(),
                read_fallback: "none".into(),
                ..DbSpec::default()
            },
            DbSpec {
                check_type: "patroni".into(),
                ..DbSpec::default()
            },
            DbSpec {
                promote: Some((vec!["/bin/echo".into(), "promote".into()], 2000)),
                ..DbSpec::default()
            },
        ];
        for spec in variants {
            let y = db_config_yaml(base.clone(), &members, pass, &spec);
            let cfg = lb::config::Config::from_yaml_str(&y, "lab.yaml")
                .unwrap_or_else(|e| panic!("{e}\n{y}"));
            assert_eq!(cfg.db_clusters.len(), 1, "{y}");
            assert_eq!(cfg.db_clusters[0].members.len(), MEMBERS, "{y}");
            let names: Vec<&str> = cfg.services.iter().map(|s| s.name.as_str()).collect();
            assert_eq!(names, ["pg-write", "pg-read"], "{y}");
            let patroni = cfg.db_clusters[0].members[1].patroni;
            if spec.check_type == "postgres" {
                assert_eq!(patroni, None, "{y}");
            } else {
                assert_eq!(patroni, Some("10.1.2.2:8008".parse().unwrap()), "{y}");
            }
        }
    }

    #[test]
    fn member_addresses_are_the_lab_backends() {
        assert_eq!(member_addr(2).to_string(), "10.1.2.2:5432");
    }
}
