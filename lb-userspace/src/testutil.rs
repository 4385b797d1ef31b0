//! Helpers shared by the tests that run lbd without a kernel ([`crate::daemon::run`] over
//! [`FakeDataplane`]): the unit tests of [`crate::daemon`] and the integration tests in
//! `tests/` (`local_abuse`, `lbd_logs`). Compiled for `cfg(test)` and with the `test-util`
//! feature, which the crate's own dev-dependency on itself turns on for `tests/`.

use crate::api::client::Client;
use crate::api::proto::Request;
use crate::config::Config;
use crate::daemon::{run, DaemonError, Outcome, RunOptions};
use crate::dataplane::fake::FakeDataplane;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A fresh directory under the system temp dir, removed with everything in it on drop (also
/// when the test panics).
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `<tmp>/<prefix>-<pid>-<n>` (unique within the process).
    pub fn new(prefix: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        TempDir(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The IPv4 address of a bound socket.
pub fn v4(addr: SocketAddr) -> SocketAddrV4 {
    match addr {
        SocketAddr::V4(a) => a,
        other => panic!("not IPv4: {other}"),
    }
}

/// A loopback address with nothing listening (bound, then closed): connections are refused.
pub fn dead_addr() -> SocketAddrV4 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    v4(l.local_addr().expect("local address"))
}

/// The config of a daemon with one service `web` (192.0.2.10:80) over `backends`, TCP checks
/// every 200 ms (timeout 100 ms, rise 2, fall 2), its API socket at `<dir>/lbd.sock` and
/// metrics on `metrics_listen`.
pub fn one_service_config(dir: &Path, metrics_listen: &str, backends: &[SocketAddrV4]) -> String {
    let mut text = format!(
        "interfaces: [lo]
api_socket: {dir}/lbd.sock
metrics_listen: {metrics_listen}
snat:
  addresses: [10.0.255.1]
limits:
  conntrack_flows: 32768
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
",
        dir = dir.display()
    );
    for b in backends {
        text.push_str(&format!("      - address: {b}\n"));
    }
    text
}

/// [`RunOptions`] for the config file at `path` (loaded and validated), without interfaces
/// or pins.
pub fn run_options(path: &Path) -> RunOptions {
    let config = Config::load(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    RunOptions {
        config_path: path.to_path_buf(),
        config,
        interfaces: vec![],
        pin_root: None,
        db_prober: crate::db::supervisor::default_prober(),
    }
}

/// One API request with a 2 s timeout; the answer's data, or the error as text.
pub fn call(sock: &Path, req: &Request) -> Result<serde_json::Value, String> {
    Client::connect_with_timeout(sock, Duration::from_secs(2))
        .and_then(|mut c| c.call(req))
        .map_err(|e| format!("{}: {e}", req.command()))
}

/// lbd running in this process's tokio runtime on the config file at `path`, until
/// [`Daemon::stop`]. Dropping it without `stop` aborts the task.
pub struct Daemon {
    /// The API socket (from the config).
    pub sock: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<Outcome, DaemonError>>,
}

impl Daemon {
    /// Starts [`run`] on `path` over `dp` and waits (at most 5 s) for the API socket.
    pub async fn start(path: &Path, dp: FakeDataplane) -> Daemon {
        Self::start_with(run_options(path), dp).await
    }

    /// [`Daemon::start`] with options of the caller's (e.g. [`run_options`] with another
    /// database prober).
    pub async fn start_with(opts: RunOptions, dp: FakeDataplane) -> Daemon {
        let sock = opts.config.api_socket.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run(opts, dp, async {
            let _ = stopped.await;
        }));
        let deadline = Instant::now() + Duration::from_secs(5);
        while !sock.exists() {
            assert!(
                !task.is_finished(),
                "lbd stopped before its API socket appeared"
            );
            assert!(Instant::now() < deadline, "API socket never appeared");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Daemon {
            sock,
            stop: Some(stop),
            task,
        }
    }

    /// Asks lbd to stop and returns how it ended (at most 5 s).
    pub async fn stop(mut self) -> Outcome {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .expect("lbd did not stop")
            .expect("lbd's task panicked")
            .unwrap_or_else(|e| panic!("lbd stopped with an error: {e}"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.task.abort();
    }
}
