//! lbd keeps working when local clients misbehave (issue 8).
//!
//! The daemon ([`lb::daemon::run`] over the in-memory data plane, so no kernel or root is
//! needed) runs in a child process of this binary with `RLIMIT_NOFILE` = [`FD_LIMIT`]; this
//! process, with its normal limit, is the misbehaving local client: it opens more idle
//! connections to `metrics_listen` than the child has descriptors, then idles and trickles on
//! the API socket. Meanwhile a backend (a TCP listener here) must stay up, the API must keep
//! answering and `/metrics` must answer again once the idle connections are refused or timed
//! out.
//!
//! `harness = false`: the resource limit must apply to the daemon's process only, and the
//! idle connections must not count against it, so the two sides live in two processes (libtest
//! would run other tests in the daemon's process).

use lb::api::client::Client;
use lb::api::proto::{BackendListEntry, Request, StatusInfo};
use lb::config::Config;
use lb::daemon::{run, RunOptions};
use lb::dataplane::fake::FakeDataplane;
use lb::model::Health;
use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Descriptors the daemon may hold: room for its listeners, runtime, both connection caps and
/// the health checks, far fewer than [`IDLE_CONNECTIONS`].
const FD_LIMIT: u64 = 128;
/// Idle connections opened to `metrics_listen`.
const IDLE_CONNECTIONS: usize = 400;
/// Idle connections opened to the API socket (more than its cap).
const IDLE_API_CONNECTIONS: usize = 60;
/// The environment variable that turns this binary into the daemon (value: config path).
const DAEMON_ENV: &str = "LB_TEST_ABUSE_DAEMON_CONFIG";

fn main() {
    if let Some(config) = std::env::var_os(DAEMON_ENV) {
        daemon(Path::new(&config));
        return;
    }
    // libtest-style arguments (filters, --nocapture, ...) are accepted and ignored.
    let name = "local_clients_cannot_starve_lbd";
    println!("\nrunning 1 test");
    local_clients_cannot_starve_lbd();
    println!("test {name} ... ok\n");
}

/// The child: runs lbd until its stdin closes (the parent exited or is done).
fn daemon(config_path: &Path) {
    let config = Config::load(config_path).expect("child: config");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("child: runtime");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        let _ = tx.send(());
    });
    let opts = RunOptions {
        config_path: config_path.to_path_buf(),
        config,
        interfaces: vec![],
        pin_root: None,
        db_prober: lb::db::supervisor::default_prober(),
    };
    runtime
        .block_on(run(opts, FakeDataplane::new(), async {
            let _ = rx.await;
        }))
        .expect("child: lbd stopped with an error");
}

/// A temporary directory and the daemon child, both removed on drop (also on panic).
struct Lab {
    dir: PathBuf,
    child: Option<Child>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn v4(l: &TcpListener) -> SocketAddrV4 {
    match l.local_addr().unwrap() {
        std::net::SocketAddr::V4(a) => a,
        other => panic!("not IPv4: {other}"),
    }
}

fn call(sock: &Path, req: &Request) -> Result<serde_json::Value, String> {
    Client::connect_with_timeout(sock, Duration::from_secs(2))
        .and_then(|mut c| c.call(req))
        .map_err(|e| format!("{}: {e}", req.command()))
}

fn backend_health(sock: &Path, backend: SocketAddrV4) -> Result<Health, String> {
    let list: Vec<BackendListEntry> =
        serde_json::from_value(call(sock, &Request::BackendList { service: None })?)
            .map_err(|e| e.to_string())?;
    list.iter()
        .find(|e| e.backend.address == backend)
        .map(|e| e.backend.health)
        .ok_or_else(|| format!("backend {backend} missing from {list:?}"))
}

/// One `GET /metrics`; the body on a 200.
fn scrape(addr: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: lbd\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
    if resp.starts_with("HTTP/1.1 200") {
        Ok(resp)
    } else {
        Err(format!("answer: {resp:?}"))
    }
}

fn metric(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

fn local_clients_cannot_starve_lbd() {
    let dir = std::env::temp_dir().join(format!("lb-abuse-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut lab = Lab {
        dir: dir.clone(),
        child: None,
    };
    // The backend: accepts and closes (a TCP check passes).
    let backend_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = v4(&backend_listener);
    std::thread::spawn(move || {
        for s in backend_listener.incoming() {
            drop(s);
        }
    });
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let sock = dir.join("lbd.sock");
    let config = dir.join("lb.yaml");
    std::fs::write(
        &config,
        format!(
            "interfaces: [lo]
api_socket: {sock}
metrics_listen: {metrics_addr}
snat:
  addresses: [10.0.255.1]
limits:
  maglev_table_size: 1009
services:
  - name: web
    vip: 192.0.2.10
    port: 80
    health_check:
      type: tcp
      interval: 200ms
      timeout: 100ms
      rise: 2
      fall: 2
    backends:
      - address: {backend}
",
            sock = sock.display()
        ),
    )
    .unwrap();

    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env(DAEMON_ENV, &config)
        .stdin(Stdio::piped())
        .stdout(Stdio::null());
    // SAFETY: setrlimit is async-signal-safe; the closure touches no allocator or lock.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: FD_LIMIT,
                rlim_max: FD_LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    lab.child = Some(cmd.spawn().expect("spawning the daemon child"));

    // The backend comes up.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Health::Up) = backend_health(&sock, backend) {
            break;
        }
        if let Some(status) = lab.child.as_mut().unwrap().try_wait().unwrap() {
            panic!("the daemon exited: {status}");
        }
        assert!(Instant::now() < deadline, "the backend never came up");
        std::thread::sleep(Duration::from_millis(50));
    }

    // A local client opens more idle connections to metrics_listen than lbd has descriptors.
    let mut idle = Vec::new();
    for i in 0..IDLE_CONNECTIONS {
        match TcpStream::connect(&metrics_addr) {
            Ok(s) => idle.push(s),
            Err(e) => panic!("idle connection {i}: {e}"),
        }
    }
    // For 3 s (15 check intervals, fall = 2) the backend stays up and the API answers.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let health = backend_health(&sock, backend)
            .unwrap_or_else(|e| panic!("the API stopped answering during the flood: {e}"));
        assert_eq!(
            health,
            Health::Up,
            "the backend was marked down by a local metrics flood"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // /metrics answers again once the idle connections are refused or timed out (the idle
    // ones are still held open by this process).
    let deadline = Instant::now() + Duration::from_secs(15);
    let text = loop {
        match scrape(&metrics_addr) {
            Ok(t) => break t,
            Err(e) => assert!(
                Instant::now() < deadline,
                "/metrics never answered while idle clients stayed connected: {e}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let up = format!("lb_backend_health{{service=\"web\",backend=\"{backend}\",state=\"up\"}}");
    assert_eq!(metric(&text, &up), Some(1), "{text}");
    let rejected = metric(
        &text,
        "lb_control_connections_rejected_total{listener=\"metrics\"}",
    );
    assert!(
        rejected.is_some_and(|n| n >= (IDLE_CONNECTIONS - 16) as u64),
        "{rejected:?}"
    );
    assert!(
        !text.contains("lb_health_checks_not_run_total{"),
        "checks could not run: {text}"
    );
    drop(idle);

    // The API socket: idle connections beyond the cap are closed at once, the others after
    // the request timeout; a client trickling a request is cut off too; then the API answers.
    let mut api_idle: Vec<std::os::unix::net::UnixStream> = (0..IDLE_API_CONNECTIONS)
        .map(|_| std::os::unix::net::UnixStream::connect(&sock).unwrap())
        .collect();
    let mut trickle = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    let started = Instant::now();
    let trickler = std::thread::spawn(move || {
        for b in b"{\"command\":\"status\"}".iter().cycle().take(40) {
            if trickle.write_all(&[*b]).is_err() {
                return Some(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        None
    });
    let mut closed = 0;
    for s in &mut api_idle {
        s.set_read_timeout(Some(Duration::from_secs(12))).unwrap();
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Ok(0) => closed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => closed += 1,
            other => panic!("an idle API connection was not closed: {other:?}"),
        }
    }
    assert_eq!(closed, IDLE_API_CONNECTIONS);
    let cut_after = trickler.join().unwrap();
    assert!(
        cut_after.is_some_and(|d| d < Duration::from_secs(11)),
        "a trickling API client was not cut off: {cut_after:?}"
    );
    let status: StatusInfo =
        serde_json::from_value(call(&sock, &Request::Status).unwrap()).unwrap();
    assert_eq!(status.healthy_backends, 1);
    let text = scrape(&metrics_addr).unwrap();
    for series in [
        "lb_control_connections_rejected_total{listener=\"api\"}",
        "lb_control_connections_timed_out_total{listener=\"api\"}",
        "lb_control_connections_timed_out_total{listener=\"metrics\"}",
    ] {
        assert!(
            metric(&text, series).is_some_and(|n| n > 0),
            "{series} missing or 0"
        );
    }
    drop(lab);
}
