//! Long-lived keep-alive connections driven in rounds: [`LongConns`] opens many connections
//! from a client namespace (one thread, one current-thread tokio runtime, one task per
//! connection), each answering `GET /id` once, and then sends one more `GET /id` on every
//! live connection per round. Each answer names the backend; a connection whose backend
//! changes, that is reset, closed or times out is failed and stops.
//!
//! Rounds are numbered: [`LongConns::round`] starts one and waits until every live connection
//! answered it; [`LongConns::start_ticker`] starts one every period from a thread of its own,
//! so traffic flows while the test changes the network (a task busy with a request takes the
//! newest round when it is done, so a slow connection skips rounds rather than queueing them).

use super::client::spawn_in_netns;
use super::{LabError, Result};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// How a connection failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// `ECONNRESET`, `ECONNABORTED` or `EPIPE`: the peer (or lb) reset it.
    Reset,
    /// No complete answer within the request timeout.
    Timeout,
    /// The peer closed it (EOF).
    Closed,
    /// `GET /id` answered by another backend than the first answer.
    BackendChanged {
        /// The first answer's backend.
        from: String,
        /// This answer's.
        to: String,
    },
    /// Anything else (a malformed answer, another I/O error).
    Other(String),
}

/// One connection's record.
#[derive(Debug, Clone, Default)]
pub struct ConnState {
    /// The backend of its first answer (`b1`, ...).
    pub backend: String,
    /// The client address as the backend saw it in the first answer (the node's SNAT
    /// address in full NAT, the client itself in DSR).
    pub seen_peer: String,
    /// Answers received (the first included).
    pub answers: u64,
    /// The newest round it answered.
    pub last_round: u64,
    /// The round it failed in, and how.
    pub failure: Option<(u64, Failure)>,
}

/// Counts over every connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Connections opened.
    pub total: usize,
    /// Not failed.
    pub alive: usize,
    /// Failed by [`Failure::Reset`].
    pub resets: usize,
    /// Failed by [`Failure::Timeout`].
    pub timeouts: usize,
    /// Failed by [`Failure::Closed`].
    pub closed: usize,
    /// Failed by [`Failure::BackendChanged`].
    pub changed: usize,
    /// Failed otherwise.
    pub other: usize,
    /// Answers received over all connections.
    pub answers: u64,
    /// Connections per first backend.
    pub per_backend: BTreeMap<String, usize>,
    /// Up to three failures, for the assertion messages.
    pub examples: Vec<String>,
}

impl Summary {
    /// Failed connections.
    pub fn failed(&self) -> usize {
        self.total - self.alive
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of {} alive; failed: {} reset, {} timed out, {} closed, {} backend changed, {} other; {} answers; per backend {:?}",
            self.alive,
            self.total,
            self.resets,
            self.timeouts,
            self.closed,
            self.changed,
            self.other,
            self.answers,
            self.per_backend
        )?;
        if !self.examples.is_empty() {
            write!(f, "; e.g. {}", self.examples.join("; "))?;
        }
        Ok(())
    }
}

/// The connections, their tasks' thread and the round counter.
pub struct LongConns {
    tick: Option<Arc<watch::Sender<u64>>>,
    round: Arc<AtomicU64>,
    state: Arc<Mutex<Vec<ConnState>>>,
    thread: Option<JoinHandle<Result<()>>>,
    ticker: Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>,
}

/// `GET /id` on `s`: the answer's backend name and seen peer.
async fn get_id(s: &mut TcpStream) -> std::result::Result<(String, String), Failure> {
    let io = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::ConnectionReset
        | std::io::ErrorKind::ConnectionAborted
        | std::io::ErrorKind::BrokenPipe => Failure::Reset,
        _ => Failure::Other(e.to_string()),
    };
    s.write_all(b"GET /id HTTP/1.1\r\nHost: lab\r\n\r\n")
        .await
        .map_err(io)?;
    let mut got = Vec::with_capacity(160);
    let mut buf = [0u8; 256];
    loop {
        let n = s.read(&mut buf).await.map_err(io)?;
        if n == 0 {
            return Err(Failure::Closed);
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let len = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .and_then(|v| v.trim().parse::<usize>().ok())
            })
            .ok_or_else(|| Failure::Other(format!("answer without Content-Length: {head:?}")))?;
        if body.len() < len {
            continue;
        }
        if !head.starts_with("HTTP/1.1 200") {
            return Err(Failure::Other(format!("answer {head:?}")));
        }
        return body
            .split_once(' ')
            .map(|(b, p)| (b.to_string(), p.to_string()))
            .ok_or_else(|| Failure::Other(format!("GET /id body {body:?}")));
    }
}

impl LongConns {
    /// Opens `count` connections to `addr` from the namespace at `ns` (at most `concurrency`
    /// connecting at a time), one `GET /id` each; every later request is bounded by
    /// `request_timeout`. Fails when any connection cannot be opened within `open_timeout`.
    pub fn open(
        ns: PathBuf,
        addr: SocketAddr,
        count: usize,
        concurrency: usize,
        request_timeout: Duration,
        open_timeout: Duration,
    ) -> Result<LongConns> {
        let (tick, _) = watch::channel(0u64);
        let tick = Arc::new(tick);
        let state = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let thread = {
            let tick = tick.clone();
            let state = state.clone();
            spawn_in_netns(ns, move || async move {
                let opened = tokio::time::timeout(open_timeout, async {
                    let mut set = tokio::task::JoinSet::new();
                    let mut conns = Vec::with_capacity(count);
                    let mut started = 0;
                    while started < count || !set.is_empty() {
                        while started < count && set.len() < concurrency {
                            let i = started;
                            set.spawn(async move {
                                let mut s =
                                    tokio::time::timeout(request_timeout, TcpStream::connect(addr))
                                        .await
                                        .map_err(|_| format!("connection {i}: connect timed out"))?
                                        .map_err(|e| format!("connection {i}: connect: {e}"))?;
                                let _ = s.set_nodelay(true);
                                let (backend, peer) =
                                    tokio::time::timeout(request_timeout, get_id(&mut s))
                                        .await
                                        .map_err(|_| {
                                            format!("connection {i}: first GET /id timed out")
                                        })?
                                        .map_err(|f| {
                                            format!("connection {i}: first GET /id: {f:?}")
                                        })?;
                                Ok::<_, String>((i, s, backend, peer))
                            });
                            started += 1;
                        }
                        match set.join_next().await {
                            Some(Ok(Ok(c))) => conns.push(c),
                            Some(Ok(Err(e))) => return Err(e),
                            Some(Err(e)) => return Err(format!("task: {e}")),
                            None => break,
                        }
                    }
                    conns.sort_by_key(|c| c.0);
                    Ok(conns)
                })
                .await;
                let conns = match opened {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => {
                        let e =
                            LabError::Http(format!("opening {count} connections to {addr}: {e}"));
                        let _ = ready_tx.send(Err(LabError::Http(e.to_string())));
                        return Err(e);
                    }
                    Err(_) => {
                        let e = LabError::Timeout(format!(
                            "opening {count} connections to {addr} within {open_timeout:?}"
                        ));
                        let _ = ready_tx.send(Err(LabError::Timeout(e.to_string())));
                        return Err(e);
                    }
                };
                *state.lock().expect("state lock") = conns
                    .iter()
                    .map(|(_, _, backend, peer)| ConnState {
                        backend: backend.clone(),
                        seen_peer: peer.clone(),
                        answers: 1,
                        last_round: 0,
                        failure: None,
                    })
                    .collect();
                let mut set = tokio::task::JoinSet::new();
                for (i, mut s, backend, _) in conns {
                    let mut rx = tick.subscribe();
                    let state = state.clone();
                    set.spawn(async move {
                        while rx.changed().await.is_ok() {
                            let round = *rx.borrow_and_update();
                            let r = tokio::time::timeout(request_timeout, get_id(&mut s))
                                .await
                                .unwrap_or(Err(Failure::Timeout));
                            let mut st = state.lock().expect("state lock");
                            let c = &mut st[i];
                            match r {
                                Ok((b, _)) if b == backend => {
                                    c.answers += 1;
                                    c.last_round = round;
                                }
                                Ok((b, _)) => {
                                    c.failure = Some((
                                        round,
                                        Failure::BackendChanged {
                                            from: backend.clone(),
                                            to: b,
                                        },
                                    ));
                                    return;
                                }
                                Err(f) => {
                                    c.failure = Some((round, f));
                                    return;
                                }
                            }
                        }
                    });
                }
                drop(tick);
                let _ = ready_tx.send(Ok(()));
                while set.join_next().await.is_some() {}
                Ok(())
            })
        };
        let ready = ready_rx
            .recv_timeout(open_timeout + Duration::from_secs(5))
            .unwrap_or_else(|_| {
                Err(LabError::Timeout(format!(
                    "the connection thread did not report within {open_timeout:?}"
                )))
            });
        let conns = LongConns {
            tick: Some(tick),
            round: Arc::new(AtomicU64::new(0)),
            state,
            thread: Some(thread),
            ticker: None,
        };
        ready.map(|()| conns)
    }

    /// Starts the next round without waiting; returns its number.
    fn start_round(tick: &watch::Sender<u64>, counter: &AtomicU64) -> u64 {
        let r = counter.fetch_add(1, Ordering::SeqCst) + 1;
        tick.send_replace(r);
        r
    }

    /// Starts a round and waits until every live connection answered it or failed (bounded by
    /// `timeout`); returns the summary after it.
    pub fn round(&self, timeout: Duration) -> Result<Summary> {
        let tick = self.tick.as_ref().expect("open until dropped");
        let r = Self::start_round(tick, &self.round);
        let start = Instant::now();
        loop {
            let pending = self
                .state
                .lock()
                .expect("state lock")
                .iter()
                .filter(|c| c.failure.is_none() && c.last_round < r)
                .count();
            if pending == 0 {
                return Ok(self.summary());
            }
            if start.elapsed() > timeout {
                return Err(LabError::Timeout(format!(
                    "round {r}: {pending} connections did not answer within {timeout:?} ({})",
                    self.summary()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a round every `period` from a thread of its own until [`Self::stop_ticker`].
    pub fn start_ticker(&mut self, period: Duration) {
        self.stop_ticker();
        let stop = Arc::new(AtomicBool::new(false));
        let tick = self.tick.clone().expect("open until dropped");
        let counter = self.round.clone();
        let flag = stop.clone();
        let h = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                Self::start_round(&tick, &counter);
                let until = Instant::now() + period;
                while Instant::now() < until && !flag.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        });
        self.ticker = Some((stop, h));
    }

    /// Stops the ticker thread, if any.
    pub fn stop_ticker(&mut self) {
        if let Some((stop, h)) = self.ticker.take() {
            stop.store(true, Ordering::SeqCst);
            let _ = h.join();
        }
    }

    /// Every connection's record.
    pub fn states(&self) -> Vec<ConnState> {
        self.state.lock().expect("state lock").clone()
    }

    /// Counts over every connection.
    pub fn summary(&self) -> Summary {
        let st = self.state.lock().expect("state lock");
        let mut s = Summary {
            total: st.len(),
            ..Summary::default()
        };
        for c in st.iter() {
            *s.per_backend.entry(c.backend.clone()).or_default() += 1;
            s.answers += c.answers;
            match &c.failure {
                None => s.alive += 1,
                Some((round, f)) => {
                    match f {
                        Failure::Reset => s.resets += 1,
                        Failure::Timeout => s.timeouts += 1,
                        Failure::Closed => s.closed += 1,
                        Failure::BackendChanged { .. } => s.changed += 1,
                        Failure::Other(_) => s.other += 1,
                    }
                    if s.examples.len() < 3 {
                        s.examples.push(format!(
                            "{} via {} in round {round}: {f:?}",
                            c.backend, c.seen_peer
                        ));
                    }
                }
            }
        }
        s
    }

    /// Closes every connection and waits for the thread; the final summary.
    pub fn close(mut self) -> Result<Summary> {
        let s = self.summary();
        self.shutdown()?;
        Ok(s)
    }

    fn shutdown(&mut self) -> Result<()> {
        self.stop_ticker();
        // Dropping the only sender ends every task's wait (each finishes its request first).
        self.tick = None;
        match self.thread.take() {
            Some(h) => super::client::join(h),
            None => Ok(()),
        }
    }
}

impl Drop for LongConns {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            eprintln!("lab: long-lived connections: {e}");
        }
    }
}
