//! Client code inside a namespace: a dedicated thread enters the namespace (`setns` affects
//! only the calling thread) and runs a current-thread tokio runtime there.
//!
//! Also the load helpers the scenarios share: probes (`GET /id` on a new connection), counted
//! spreads over backends, and a continuous prober that records every attempt with its time.

use super::http::HttpConn;
use super::{LabError, Result};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Moves the calling thread into the network namespace at `path` (`setns`; other threads
/// are unaffected).
pub(crate) fn enter_netns(path: &Path) -> Result<()> {
    let f =
        std::fs::File::open(path).map_err(LabError::io(format!("opening {}", path.display())))?;
    // SAFETY: setns on a valid namespace fd; it changes only this thread's namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(LabError::io(format!("setns into {}", path.display()))(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Spawns a thread that enters the namespace at `ns_path` and runs `f()` to completion on a
/// current-thread runtime.
pub fn spawn_in_netns<F, Fut, T>(ns_path: PathBuf, f: F) -> JoinHandle<Result<T>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>>,
    T: Send + 'static,
{
    std::thread::spawn(move || {
        enter_netns(&ns_path)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(LabError::io("building a tokio runtime"))?;
        rt.block_on(f())
    })
}

/// Runs `f()` in the namespace at `ns_path` and waits for its result.
pub fn run_in_netns<F, Fut, T>(ns_path: PathBuf, f: F) -> Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>>,
    T: Send + 'static,
{
    join(spawn_in_netns(ns_path, f))
}

/// Joins a thread from [`spawn_in_netns`], turning its panic into a panic here.
pub fn join<T>(h: JoinHandle<Result<T>>) -> Result<T> {
    match h.join() {
        Ok(r) => r,
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// Runs `fut` with a time limit; running over is a [`LabError::Timeout`] naming `what`.
pub async fn bounded<T>(
    what: &str,
    limit: Duration,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| LabError::Timeout(format!("{what} within {limit:?}")))?
}

/// What `GET /id` on a fresh connection returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The backend's name (`b1`, ...).
    pub backend: String,
    /// The client's peer as the backend saw it (the SNAT address and port).
    pub seen_peer: String,
    /// The peer address as the client saw it (the VIP).
    pub client_peer: SocketAddr,
}

/// Opens a connection to `addr`, sends `GET /id`, closes. Bounded by `timeout`.
pub async fn probe(addr: SocketAddr, timeout: Duration) -> Result<Probe> {
    let fut = async {
        let mut c = HttpConn::connect(addr, timeout).await?;
        let r = c.request("GET", "/id", b"").await?;
        if r.status != 200 {
            return Err(LabError::Http(format!("GET /id: status {}", r.status)));
        }
        let text = r.text();
        let (backend, seen_peer) = text
            .split_once(' ')
            .ok_or_else(|| LabError::Http(format!("GET /id: unexpected body {text:?}")))?;
        Ok(Probe {
            backend: backend.to_string(),
            seen_peer: seen_peer.to_string(),
            client_peer: c.peer_addr(),
        })
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| LabError::Timeout(format!("GET /id via {addr} within {timeout:?}")))?
}

/// Opens `count` connections (at most `concurrency` at a time), one `GET /id` each, and
/// counts the answers per backend. Any failed connection is an error naming how many failed.
pub async fn spread(
    addr: SocketAddr,
    count: usize,
    concurrency: usize,
    timeout: Duration,
) -> Result<BTreeMap<String, usize>> {
    let mut counts = BTreeMap::new();
    let mut failures = Vec::new();
    let mut set = tokio::task::JoinSet::new();
    let mut started = 0;
    while started < count || !set.is_empty() {
        while started < count && set.len() < concurrency {
            set.spawn(probe(addr, timeout));
            started += 1;
        }
        match set.join_next().await {
            Some(Ok(Ok(p))) => *counts.entry(p.backend).or_insert(0) += 1,
            Some(Ok(Err(e))) => failures.push(e.to_string()),
            Some(Err(e)) => failures.push(format!("task: {e}")),
            None => break,
        }
    }
    if !failures.is_empty() {
        return Err(LabError::Http(format!(
            "{} of {count} connections failed; first: {}",
            failures.len(),
            failures[0]
        )));
    }
    Ok(counts)
}

/// One attempt of [`continuous`].
#[derive(Debug, Clone)]
pub struct Attempt {
    /// When the attempt started, relative to the prober's start.
    pub at: Duration,
    /// The backend that answered, or the error.
    pub result: std::result::Result<String, String>,
}

/// Opens a new connection (`GET /id`) every `period` until `stop` is set or `max_duration`
/// passes (whichever first); records every attempt. Attempts run concurrently so a slow one
/// does not delay the schedule.
pub async fn continuous(
    addr: SocketAddr,
    period: Duration,
    timeout: Duration,
    stop: Arc<AtomicBool>,
    max_duration: Duration,
) -> Result<Vec<Attempt>> {
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) && start.elapsed() < max_duration {
        tick.tick().await;
        let at = start.elapsed();
        set.spawn(async move {
            let result = probe(addr, timeout)
                .await
                .map(|p| p.backend)
                .map_err(|e| e.to_string());
            Attempt { at, result }
        });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        out.push(r.map_err(|e| LabError::Http(format!("prober task: {e}")))?);
    }
    out.sort_by_key(|a| a.at);
    Ok(out)
}

/// A [`continuous`] prober running in a namespace thread; stop it with [`Prober::finish`].
pub struct Prober {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<Vec<Attempt>>>>,
    started: Instant,
}

impl Prober {
    /// Starts probing `addr` from the namespace at `ns_path` every `period`, for at most
    /// `max_duration`.
    pub fn start(
        ns_path: PathBuf,
        addr: SocketAddr,
        period: Duration,
        timeout: Duration,
        max_duration: Duration,
    ) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = spawn_in_netns(ns_path, move || {
            continuous(addr, period, timeout, s, max_duration)
        });
        Prober {
            stop,
            handle: Some(handle),
            started: Instant::now(),
        }
    }

    /// Time since the prober started (attempt times are relative to about this instant).
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stops probing and returns every attempt.
    pub fn finish(mut self) -> Result<Vec<Attempt>> {
        self.stop.store(true, Ordering::Relaxed);
        join(self.handle.take().expect("finish is called once"))
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Counts of attempts per backend (and `"error"`) within the time window `[from, to)`.
pub fn tally(attempts: &[Attempt], from: Duration, to: Duration) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for a in attempts.iter().filter(|a| a.at >= from && a.at < to) {
        let key = match &a.result {
            Ok(b) => b.clone(),
            Err(_) => "error".to_string(),
        };
        *m.entry(key).or_insert(0) += 1;
    }
    m
}

/// The failed attempts, formatted one per line (for assertion messages).
pub fn failures(attempts: &[Attempt]) -> Vec<String> {
    attempts
        .iter()
        .filter_map(|a| a.result.as_ref().err().map(|e| format!("{:?}: {e}", a.at)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_windows() {
        let a = |ms, r: std::result::Result<&str, &str>| Attempt {
            at: Duration::from_millis(ms),
            result: r.map(str::to_string).map_err(str::to_string),
        };
        let v = vec![
            a(0, Ok("b1")),
            a(10, Err("x")),
            a(20, Ok("b2")),
            a(30, Ok("b1")),
        ];
        let t = tally(&v, Duration::ZERO, Duration::from_millis(25));
        assert_eq!(t.get("b1"), Some(&1));
        assert_eq!(t.get("error"), Some(&1));
        assert_eq!(t.get("b2"), Some(&1));
        assert_eq!(failures(&v).len(), 1);
    }
}
