//! Failover load for the lab: clients opening new connections at a fixed rate (one `GET /id`
//! each, connect time and outcome recorded per connection) and long transfers
//! (`GET /stream`) whose fate (complete, reset, hung) is recorded, so a scenario can say how
//! many connections a backend's death or a health-check flap cost and how long connecting
//! took while it happened. Everything is bounded in count and time.

use super::client::{join, spawn_in_netns};
use super::http::HttpConn;
use super::{LabError, Result};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One connection opened by [`open_at_rate`].
#[derive(Debug, Clone)]
pub struct ConnRecord {
    /// When it started, relative to the load's start.
    pub at: Duration,
    /// Time until the TCP handshake completed (`None`: it never did).
    pub connect: Option<Duration>,
    /// Time until the answer to `GET /id` was read (`None`: there was none).
    pub answered: Option<Duration>,
    /// The backend that answered `GET /id`, or the error.
    pub result: std::result::Result<String, String>,
}

/// Opens `rate` connections per second for `duration` (at most `rate x duration` in all, and
/// fewer if `stop` is set), each bounded by `timeout`; returns them sorted by start time.
pub async fn open_at_rate(
    addr: SocketAddr,
    rate: u32,
    duration: Duration,
    timeout: Duration,
    stop: Arc<AtomicBool>,
) -> Vec<ConnRecord> {
    let start = Instant::now();
    let period = Duration::from_secs(1) / rate.max(1);
    let max = (u128::from(rate) * duration.as_millis() / 1000) as usize;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut set = tokio::task::JoinSet::new();
    let mut started = 0;
    while started < max && !stop.load(Ordering::Relaxed) && start.elapsed() < duration {
        tick.tick().await;
        started += 1;
        let at = start.elapsed();
        set.spawn(async move {
            let t0 = Instant::now();
            let conn = HttpConn::connect(addr, timeout).await;
            let connect = conn.as_ref().ok().map(|_| t0.elapsed());
            let mut answered = None;
            let result = match conn {
                Err(e) => Err(e.to_string()),
                Ok(mut c) => {
                    let left = timeout.saturating_sub(t0.elapsed());
                    match tokio::time::timeout(left, c.request("GET", "/id", b"")).await {
                        Err(_) => Err(format!("GET /id: no answer within {timeout:?}")),
                        Ok(Err(e)) => Err(e.to_string()),
                        Ok(Ok(r)) if r.status == 200 => {
                            answered = Some(t0.elapsed());
                            Ok(r.text().split(' ').next().unwrap_or_default().to_string())
                        }
                        Ok(Ok(r)) => Err(format!("GET /id: status {}", r.status)),
                    }
                }
            };
            ConnRecord {
                at,
                connect,
                answered,
                result,
            }
        });
    }
    let mut out = Vec::with_capacity(started);
    while let Some(r) = set.join_next().await {
        if let Ok(r) = r {
            out.push(r);
        }
    }
    out.sort_by_key(|r| r.at);
    out
}

/// [`open_at_rate`] running in a namespace thread.
pub struct RateLoad {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<Vec<ConnRecord>>>>,
    started: Instant,
}

impl RateLoad {
    /// Starts the load from the namespace at `ns_path`.
    pub fn start(
        ns_path: PathBuf,
        addr: SocketAddr,
        rate: u32,
        duration: Duration,
        timeout: Duration,
    ) -> RateLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = spawn_in_netns(ns_path, move || async move {
            Ok(open_at_rate(addr, rate, duration, timeout, s).await)
        });
        RateLoad {
            stop,
            handle: Some(handle),
            started: Instant::now(),
        }
    }

    /// Time since the load started (connection times are relative to about this instant).
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Waits for the load to end by itself (its duration) and returns every connection.
    pub fn finish(mut self) -> Result<Vec<ConnRecord>> {
        join(self.handle.take().expect("finish is called once"))
    }
}

impl Drop for RateLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Failed connections and the connect-time distribution of the connections started in a
/// window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnSummary {
    /// Connections started in the window.
    pub total: usize,
    /// Of which failed (refused, reset, timed out, wrong answer).
    pub failed: usize,
    /// Median connect time of those that connected.
    pub p50: Duration,
    /// 99th percentile (nearest rank) of the connect time; a connection that never connected
    /// counts as its full timeout here, so failures cannot hide in it.
    pub p99: Duration,
    /// Longest connect time.
    pub max: Duration,
}

impl ConnSummary {
    /// The connections of `records` started in `[from, to)`; `timeout` stands in for the
    /// connect time of one that never connected.
    pub fn of(records: &[ConnRecord], from: Duration, to: Duration, timeout: Duration) -> Self {
        let window: Vec<&ConnRecord> = records
            .iter()
            .filter(|r| r.at >= from && r.at < to)
            .collect();
        let mut times: Vec<Duration> = window
            .iter()
            .map(|r| r.connect.unwrap_or(timeout))
            .collect();
        times.sort();
        ConnSummary {
            total: window.len(),
            failed: window.iter().filter(|r| r.result.is_err()).count(),
            p50: percentile(&times, 50),
            p99: percentile(&times, 99),
            max: times.last().copied().unwrap_or_default(),
        }
    }
}

impl std::fmt::Display for ConnSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of {} failed, connect p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.failed,
            self.total,
            ms(self.p50),
            ms(self.p99),
            ms(self.max)
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile `p` (0..=100) of sorted `v` (zero when empty).
pub fn percentile(v: &[Duration], p: usize) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * v.len()).div_ceil(100).max(1);
    v[rank.min(v.len()) - 1]
}

/// How one long transfer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferEnd {
    /// Every byte arrived and the server closed.
    Complete,
    /// The connection was reset (`ECONNRESET`) `after` its start.
    Reset {
        /// Time from the transfer's start to the reset.
        after: Duration,
    },
    /// No byte for the stall limit: the connection hangs.
    Hung {
        /// Time from the transfer's start to the last byte.
        after: Duration,
    },
    /// Anything else (connect failed, short body, other error).
    Failed(String),
}

/// One long transfer of [`long_transfers`].
#[derive(Debug, Clone)]
pub struct Transfer {
    /// When it started, relative to the transfers' start.
    pub at: Duration,
    /// How it ended.
    pub end: TransferEnd,
}

impl Transfer {
    /// When the connection was reset, relative to the transfers' start.
    pub fn reset_at(&self) -> Option<Duration> {
        match self.end {
            TransferEnd::Reset { after } => Some(self.at + after),
            _ => None,
        }
    }
}

/// Runs `count` concurrent `GET /stream?seconds=S` transfers (a 4 KiB chunk every 100 ms from
/// the backend), each ending complete, reset, hung (no byte for `stall`) or failed; bounded by
/// `seconds + stall + 5 s`.
pub async fn long_transfers(
    addr: SocketAddr,
    count: usize,
    seconds: u64,
    stall: Duration,
) -> Vec<Transfer> {
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..count {
        set.spawn(async move {
            let at = start.elapsed();
            let end = one_transfer(addr, seconds, stall).await;
            Transfer { at, end }
        });
        // Spread the handshakes a little.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut out = Vec::with_capacity(count);
    while let Some(r) = set.join_next().await {
        if let Ok(t) = r {
            out.push(t);
        }
    }
    out.sort_by_key(|t| t.at);
    out
}

async fn one_transfer(addr: SocketAddr, seconds: u64, stall: Duration) -> TransferEnd {
    let t0 = Instant::now();
    let mut s =
        match tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr))
            .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return TransferEnd::Failed(format!("connect: {e}")),
            Err(_) => return TransferEnd::Failed("connect: timed out".into()),
        };
    let req =
        format!("GET /stream?seconds={seconds} HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n");
    if let Err(e) = s.write_all(req.as_bytes()).await {
        return TransferEnd::Failed(format!("request: {e}"));
    }
    let want = seconds * super::testsrv::STREAM_CHUNKS_PER_SEC * super::testsrv::STREAM_CHUNK;
    let mut got = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let mut last = t0.elapsed();
    loop {
        match tokio::time::timeout(stall, s.read(&mut buf)).await {
            Err(_) => return TransferEnd::Hung { after: last },
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => {
                got += n as u64;
                last = t0.elapsed();
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return TransferEnd::Reset {
                    after: t0.elapsed(),
                };
            }
            Ok(Err(e)) => return TransferEnd::Failed(format!("read: {e}")),
        }
    }
    if got < want {
        return TransferEnd::Failed(format!("closed after {got} of at least {want} bytes"));
    }
    TransferEnd::Complete
}

/// [`long_transfers`] running in a namespace thread.
pub fn start_long_transfers(
    ns_path: PathBuf,
    addr: SocketAddr,
    count: usize,
    seconds: u64,
    stall: Duration,
) -> JoinHandle<Result<Vec<Transfer>>> {
    spawn_in_netns(ns_path, move || async move {
        Ok(long_transfers(addr, count, seconds, stall).await)
    })
}

/// Counts of transfer ends: (complete, reset, hung, failed).
pub fn transfer_counts(ts: &[Transfer]) -> (usize, usize, usize, usize) {
    let mut c = (0, 0, 0, 0);
    for t in ts {
        match t.end {
            TransferEnd::Complete => c.0 += 1,
            TransferEnd::Reset { .. } => c.1 += 1,
            TransferEnd::Hung { .. } => c.2 += 1,
            TransferEnd::Failed(_) => c.3 += 1,
        }
    }
    c
}

/// Waits for `h` (a [`start_long_transfers`] thread).
pub fn finish_transfers(h: JoinHandle<Result<Vec<Transfer>>>) -> Result<Vec<Transfer>> {
    join(h).map_err(|e| LabError::Http(format!("long transfers: {e}")))
}

/// One idle keep-alive connection of [`idle_connections`].
#[derive(Debug, Clone)]
pub struct IdleConn {
    /// The backend that answered its `GET /id`.
    pub backend: String,
    /// When a read on it failed with `ECONNRESET` (`None`: it did not).
    pub reset_at: Option<Instant>,
    /// How the wait ended: `reset`, `open` (still open at the end), `eof` or an error.
    pub outcome: String,
}

/// Opens `count` keep-alive connections to `addr`, one `GET /id` each, then leaves them idle
/// and waits up to `hold` for each to be reset, recording when.
pub async fn idle_connections(
    addr: SocketAddr,
    count: usize,
    hold: Duration,
) -> Result<Vec<IdleConn>> {
    let mut conns = Vec::with_capacity(count);
    for _ in 0..count {
        let mut s =
            tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|_| LabError::Http("connect: timed out".into()))?
                .map_err(|e| LabError::Http(format!("connect: {e}")))?;
        s.write_all(b"GET /id HTTP/1.1\r\nHost: lab\r\n\r\n")
            .await
            .map_err(|e| LabError::Http(format!("GET /id: {e}")))?;
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        let body = loop {
            let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
                .await
                .map_err(|_| LabError::Http("GET /id: no answer".into()))?
                .map_err(|e| LabError::Http(format!("GET /id: {e}")))?;
            if n == 0 {
                return Err(LabError::Http("GET /id: closed".into()));
            }
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>())
                    })
                    .and_then(std::result::Result::ok)
                    .unwrap_or(0);
                if body.len() >= len {
                    break body.to_string();
                }
            }
        };
        let backend = body.split(' ').next().unwrap_or_default().to_string();
        conns.push((backend, s));
    }
    let mut set = tokio::task::JoinSet::new();
    for (i, (backend, mut s)) in conns.into_iter().enumerate() {
        set.spawn(async move {
            let mut buf = [0u8; 64];
            let (reset_at, outcome) = match tokio::time::timeout(hold, s.read(&mut buf)).await {
                Err(_) => (None, "open".to_string()),
                Ok(Ok(0)) => (None, "eof".to_string()),
                Ok(Ok(n)) => (None, format!("{n} unexpected bytes")),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    (Some(Instant::now()), "reset".to_string())
                }
                Ok(Err(e)) => (None, format!("error: {e}")),
            };
            (
                i,
                IdleConn {
                    backend,
                    reset_at,
                    outcome,
                },
            )
        });
    }
    let mut out: Vec<(usize, IdleConn)> = Vec::with_capacity(count);
    while let Some(r) = set.join_next().await {
        out.push(r.map_err(|e| LabError::Http(format!("idle connection task: {e}")))?);
    }
    out.sort_by_key(|(i, _)| *i);
    Ok(out.into_iter().map(|(_, c)| c).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_windows() {
        let ms = Duration::from_millis;
        let v: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(percentile(&v, 50), ms(50));
        assert_eq!(percentile(&v, 99), ms(99));
        assert_eq!(percentile(&v, 100), ms(100));
        assert_eq!(percentile(&[ms(7)], 99), ms(7));
        let r = |at, c: Option<u64>, ok: bool| ConnRecord {
            at: ms(at),
            connect: c.map(ms),
            answered: c.map(ms),
            result: if ok { Ok("b1".into()) } else { Err("x".into()) },
        };
        let recs = vec![
            r(0, Some(1), true),
            r(10, None, false),
            r(20, Some(3), true),
        ];
        let s = ConnSummary::of(&recs, ms(5), ms(30), ms(2000));
        assert_eq!((s.total, s.failed), (2, 1));
        assert_eq!(s.max, ms(2000), "a failed connect counts as its timeout");
        assert_eq!(s.p50, ms(3));
    }
}
