//! Health checks: one tokio task per backend that runs a [`HealthCheck`] every `interval`
//! (after a random start jitter within one interval) and reports each result on a channel.
//! The controller owns the rise/fall state machine ([`crate::model::HealthTracker`]); this
//! module only produces results.
//!
//! Checkers: [`TcpCheck`] (a TCP connect), [`HttpCheck`] (a minimal HTTP/1.1 GET written by
//! hand over a tokio `TcpStream`, expecting a status code), and no check at all for
//! `type: none` (no task is spawned; backends are up).

use crate::config::{CheckKind, HealthCheckConfig};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddrV4;
use std::pin::Pin;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The future a check returns: `Ok(detail)` on success, `Err(reason)` on failure.
pub type CheckFuture<'a> = Pin<Box<dyn Future<Output = Result<String, String>> + Send + 'a>>;

/// One kind of health check against one backend.
pub trait HealthCheck: Send + Sync {
    /// Runs one check (the caller applies the timeout).
    fn check(&self) -> CheckFuture<'_>;
}

/// Succeeds when a TCP connection to the backend can be opened.
#[derive(Debug, Clone)]
pub struct TcpCheck {
    /// Backend address.
    pub address: SocketAddrV4,
}

impl HealthCheck for TcpCheck {
    fn check(&self) -> CheckFuture<'_> {
        Box::pin(async move {
            TcpStream::connect(self.address)
                .await
                .map(|_| "connected".to_string())
                .map_err(|e| format!("connect: {e}"))
        })
    }
}

/// Succeeds when `GET path HTTP/1.1` answers with the expected status.
#[derive(Debug, Clone)]
pub struct HttpCheck {
    /// Backend address.
    pub address: SocketAddrV4,
    /// Request path.
    pub path: String,
    /// Expected status code.
    pub expect_status: u16,
}

/// Parses the status code of an HTTP/1.x status line (`HTTP/1.1 200 OK`).
pub fn parse_status_line(line: &str) -> Option<u16> {
    let mut parts = line.split_ascii_whitespace();
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

impl HealthCheck for HttpCheck {
    fn check(&self) -> CheckFuture<'_> {
        Box::pin(async move {
            let mut stream = TcpStream::connect(self.address)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let request = format!(
                "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: lbd-health/{}\r\nConnection: close\r\n\r\n",
                self.path,
                self.address,
                env!("CARGO_PKG_VERSION")
            );
            stream
                .write_all(request.as_bytes())
                .await
                .map_err(|e| format!("send: {e}"))?;
            // Only the status line matters; read until its end (bounded).
            let mut buf = Vec::with_capacity(256);
            let mut chunk = [0u8; 256];
            while !buf.contains(&b'\n') {
                if buf.len() > 4096 {
                    return Err("status line longer than 4096 bytes".into());
                }
                let n = stream
                    .read(&mut chunk)
                    .await
                    .map_err(|e| format!("receive: {e}"))?;
                if n == 0 {
                    return Err("connection closed before a status line".into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
            let line = String::from_utf8_lossy(&buf[..end]);
            let status = parse_status_line(line.trim_end())
                .ok_or_else(|| format!("not an HTTP status line: {:?}", line.trim_end()))?;
            if status == self.expect_status {
                Ok(format!("HTTP {status}"))
            } else {
                Err(format!("HTTP {status}, expected {}", self.expect_status))
            }
        })
    }
}

/// Builds the checker `cfg` asks for (`None` for `type: none`).
pub fn checker_for(cfg: &HealthCheckConfig, address: SocketAddrV4) -> Option<Box<dyn HealthCheck>> {
    match cfg.kind {
        CheckKind::Tcp => Some(Box::new(TcpCheck { address })),
        CheckKind::Http => Some(Box::new(HttpCheck {
            address,
            path: cfg.http_path().to_string(),
            expect_status: cfg.http_expect_status(),
        })),
        CheckKind::None => None,
    }
}

/// One check result, sent to the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// Service name.
    pub service: String,
    /// Backend address.
    pub backend: SocketAddrV4,
    /// Generation of the task that produced it (stale results are ignored).
    pub generation: u64,
    /// Passed or not.
    pub ok: bool,
    /// Detail or failure reason.
    pub reason: String,
}

/// A start delay in `[0, interval)` derived from the backend identity and the clock, so
/// checks of many backends do not fire in lockstep.
pub fn start_jitter(service: &str, backend: SocketAddrV4, interval: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ u64::from(nanos) ^ u64::from(std::process::id());
    for b in service.bytes().chain(backend.to_string().bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 29;
    let ms = interval.as_millis().max(1) as u64;
    Duration::from_millis(h % ms)
}

/// Runs `checker` every `cfg.interval` (first after `jitter`), sending each result.
pub async fn run_checker(
    checker: Box<dyn HealthCheck>,
    cfg: HealthCheckConfig,
    service: String,
    backend: SocketAddrV4,
    generation: u64,
    jitter: Duration,
    tx: mpsc::Sender<CheckResult>,
) {
    tokio::time::sleep(jitter).await;
    let mut ticker = tokio::time::interval(cfg.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let result = match tokio::time::timeout(cfg.timeout, checker.check()).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "timed out after {}",
                crate::config::format_duration(cfg.timeout)
            )),
        };
        let (ok, reason) = match result {
            Ok(d) => (true, d),
            Err(e) => (false, e),
        };
        let msg = CheckResult {
            service: service.clone(),
            backend,
            generation,
            ok,
            reason,
        };
        if tx.send(msg).await.is_err() {
            return; // the daemon is shutting down
        }
    }
}

/// The set of running check tasks, kept in line with the configuration by [`Self::sync`].
#[derive(Default)]
pub struct HealthSupervisor {
    tasks: HashMap<(String, SocketAddrV4), (u64, HealthCheckConfig, JoinHandle<()>)>,
    next_generation: u64,
}

impl HealthSupervisor {
    /// An empty supervisor.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts tasks for new backends, stops tasks of removed ones, and restarts tasks whose
    /// check settings changed. `wanted` lists (service, backend, check settings).
    pub fn sync(
        &mut self,
        wanted: &[(String, SocketAddrV4, HealthCheckConfig)],
        tx: &mpsc::Sender<CheckResult>,
    ) {
        let mut keep = std::collections::HashSet::new();
        for (service, backend, cfg) in wanted {
            let key = (service.clone(), *backend);
            if cfg.kind == CheckKind::None {
                continue;
            }
            keep.insert(key.clone());
            if let Some((_, old, _)) = self.tasks.get(&key) {
                if old == cfg {
                    continue;
                }
            }
            if let Some((_, _, handle)) = self.tasks.remove(&key) {
                handle.abort();
            }
            let Some(checker) = checker_for(cfg, *backend) else {
                continue;
            };
            self.next_generation += 1;
            let generation = self.next_generation;
            let jitter = start_jitter(service, *backend, cfg.interval);
            let handle = tokio::spawn(run_checker(
                checker,
                cfg.clone(),
                service.clone(),
                *backend,
                generation,
                jitter,
                tx.clone(),
            ));
            self.tasks.insert(key, (generation, cfg.clone(), handle));
        }
        self.tasks.retain(|key, (_, _, handle)| {
            let k = keep.contains(key);
            if !k {
                handle.abort();
            }
            k
        });
    }

    /// Whether `result` comes from a task that is still current.
    pub fn is_current(&self, result: &CheckResult) -> bool {
        self.tasks
            .get(&(result.service.clone(), result.backend))
            .is_some_and(|(generation, _, _)| *generation == result.generation)
    }

    /// Number of running tasks.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// True when no task runs.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Stops every task.
    pub fn stop_all(&mut self) {
        for (_, (_, _, handle)) in self.tasks.drain() {
            handle.abort();
        }
    }
}

impl Drop for HealthSupervisor {
    fn drop(&mut self) {
        self.stop_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn local(listener: &TcpListener) -> SocketAddrV4 {
        match listener.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line("HTTP/1.1 200 OK"), Some(200));
        assert_eq!(
            parse_status_line("HTTP/1.0 503 Service Unavailable"),
            Some(503)
        );
        assert_eq!(parse_status_line("HTTP/2 200"), None);
        assert_eq!(parse_status_line("SSH-2.0-OpenSSH"), None);
        assert_eq!(parse_status_line("HTTP/1.1 20 OK"), None);
    }

    #[test]
    fn jitter_stays_within_the_interval() {
        let a: SocketAddrV4 = "10.0.0.1:80".parse().unwrap();
        for _ in 0..100 {
            assert!(
                start_jitter("web", a, Duration::from_millis(500)) < Duration::from_millis(500)
            );
        }
    }

    #[tokio::test]
    async fn tcp_check_connects_or_fails() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = local(&listener);
        assert!(TcpCheck { address: addr }.check().await.is_ok());
        drop(listener);
        let err = TcpCheck { address: addr }.check().await.unwrap_err();
        assert!(err.starts_with("connect:"), "{err}");
    }

    async fn http_server(status: &'static str) -> (SocketAddrV4, JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = local(&listener);
        let handle = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            s.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                .await
                .unwrap();
            String::from_utf8_lossy(&buf[..n]).to_string()
        });
        (addr, handle)
    }

    #[tokio::test]
    async fn http_check_expects_the_status() {
        let (addr, server) = http_server("204 No Content").await;
        let check = HttpCheck {
            address: addr,
            path: "/healthz".into(),
            expect_status: 204,
        };
        assert_eq!(check.check().await.unwrap(), "HTTP 204");
        let request = server.await.unwrap();
        assert!(
            request.starts_with("GET /healthz HTTP/1.1\r\n"),
            "{request}"
        );

        let (addr, _server) = http_server("500 Internal Server Error").await;
        let check = HttpCheck {
            address: addr,
            path: "/".into(),
            expect_status: 200,
        };
        assert_eq!(check.check().await.unwrap_err(), "HTTP 500, expected 200");
    }

    #[tokio::test]
    async fn checker_task_reports_and_times_out() {
        // A listener that accepts but never answers: the HTTP check must time out.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = local(&listener);
        let _keep = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let cfg = HealthCheckConfig {
            kind: CheckKind::Http,
            interval: Duration::from_millis(200),
            timeout: Duration::from_millis(100),
            ..Default::default()
        };
        let (tx, mut rx) = mpsc::channel(8);
        let mut sup = HealthSupervisor::new();
        sup.sync(&[("web".into(), addr, cfg.clone())], &tx);
        assert_eq!(sup.len(), 1);
        let r = tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(!r.ok);
        assert_eq!(r.reason, "timed out after 100ms");
        assert!(sup.is_current(&r));
        // A settings change restarts the task with a new generation.
        let mut cfg2 = cfg;
        cfg2.kind = CheckKind::Tcp;
        sup.sync(&[("web".into(), addr, cfg2)], &tx);
        assert!(!sup.is_current(&r));
        sup.sync(&[], &tx);
        assert!(sup.is_empty());
    }
}
