//! Limits that keep lbd working when local clients misbehave: a cap on concurrent connections
//! per listener (the metrics endpoint and the API socket), back-off on accept errors, and
//! rate-limited logging for errors that can repeat many times a second.
//!
//! Without them, a few hundred idle connections to `metrics_listen` use up lbd's file
//! descriptors; health-check sockets then fail with EMFILE and every backend is marked down.
//! With them, each listener holds at most its cap of descriptors, an excess connection is
//! accepted and closed at once (counted in `lb_control_connections_rejected_total`), and the
//! per-connection timeouts of [`crate::metrics`] and [`crate::api::server`] free idle slots.
//! See "Limits" in docs/operations.md.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Concurrent connections to `metrics_listen` (scrapers are few; one connection each).
pub const METRICS_MAX_CONNECTIONS: usize = 16;
/// Concurrent connections to the API socket (lbctl calls are short; `stats --watch` keeps one).
pub const API_MAX_CONNECTIONS: usize = 32;
/// First sleep after an accept error; doubles up to [`ACCEPT_BACKOFF_MAX`].
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest sleep after consecutive accept errors.
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Rate-limited messages are logged at most once per this period.
pub const LOG_PERIOD: Duration = Duration::from_secs(10);

/// A log message allowed at most once per period; the calls in between are counted and
/// reported with the next one that is logged. Usable as a `static`.
#[derive(Debug)]
pub struct LogLimiter {
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
    period: Duration,
}

impl LogLimiter {
    /// A limiter allowing one message per `period`.
    pub const fn new(period: Duration) -> Self {
        Self {
            last: Mutex::new(None),
            suppressed: AtomicU64::new(0),
            period,
        }
    }

    /// `Some(n)` when a message may be logged now (`n` earlier ones were suppressed since the
    /// last one logged), `None` when this one is suppressed.
    pub fn allow(&self) -> Option<u64> {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match *last {
            Some(t) if now.duration_since(t) < self.period => {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                None
            }
            _ => {
                *last = Some(now);
                Some(self.suppressed.swap(0, Ordering::Relaxed))
            }
        }
    }
}

/// Sleep lengths after consecutive accept errors: [`ACCEPT_BACKOFF_MIN`] doubling up to
/// [`ACCEPT_BACKOFF_MAX`]; a successful accept starts over.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: ACCEPT_BACKOFF_MIN,
        }
    }
}

impl Backoff {
    /// The sleep for this error; the next one is twice as long (capped).
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(ACCEPT_BACKOFF_MAX);
        d
    }

    /// Back to the shortest sleep (after a successful accept).
    pub fn reset(&mut self) {
        self.next = ACCEPT_BACKOFF_MIN;
    }
}

/// Accepts connections with `accept` until `shutdown` resolves and runs `handle` on each in
/// its own task, at most `max_connections` at a time. A connection over the cap is closed at
/// once (counted in `lb_control_connections_rejected_total{listener}`); an accept error
/// (EMFILE, ...) is counted in `lb_control_accept_errors_total{listener}`, logged at most
/// once per [`LOG_PERIOD`] and followed by a [`Backoff`] sleep, never a busy loop.
pub async fn accept_loop<T, A, AF, H, HF, S>(
    listener: &'static str,
    max_connections: usize,
    mut accept: A,
    handle: H,
    shutdown: S,
) where
    T: Send + 'static,
    A: FnMut() -> AF,
    AF: Future<Output = std::io::Result<T>>,
    H: Fn(T) -> HF,
    HF: Future<Output = ()> + Send + 'static,
    S: Future<Output = ()>,
{
    let slots = Arc::new(Semaphore::new(max_connections));
    let mut backoff = Backoff::default();
    let errors = LogLimiter::new(LOG_PERIOD);
    let rejections = LogLimiter::new(LOG_PERIOD);
    let metrics = crate::metrics::local();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            a = accept() => a,
        };
        let conn = match accepted {
            Ok(conn) => {
                backoff.reset();
                conn
            }
            Err(e) => {
                metrics.accept_error(listener);
                let delay = backoff.next_delay();
                if let Some(suppressed) = errors.allow() {
                    tracing::warn!(listener, error = %e, retry_in_ms = delay.as_millis() as u64, suppressed, "accept failed");
                }
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(conn);
            metrics.connection_rejected(listener);
            if let Some(suppressed) = rejections.allow() {
                tracing::warn!(
                    listener,
                    max_connections,
                    suppressed,
                    "connection limit reached; closing new connections until others end"
                );
            }
            continue;
        };
        let task = handle(conn);
        tokio::spawn(async move {
            task.await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_one_second_and_resets() {
        let mut b = Backoff::default();
        let got: Vec<u64> = (0..6).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(got, [100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.next_delay(), ACCEPT_BACKOFF_MIN);
    }

    #[test]
    fn log_limiter_counts_what_it_suppresses() {
        let l = LogLimiter::new(Duration::from_secs(3600));
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), None);
        assert_eq!(l.allow(), None);
        let l0 = LogLimiter::new(Duration::ZERO);
        assert_eq!(l0.allow(), Some(0));
        assert_eq!(l0.allow(), Some(0));
        // After the period the next message reports the suppressed count.
        *l.last.lock().unwrap() = Some(Instant::now() - Duration::from_secs(3601));
        assert_eq!(l.allow(), Some(2));
    }

    /// Accept errors sleep with back-off instead of spinning: a listener whose accept always
    /// fails is polled a handful of times per second, not millions.
    #[tokio::test]
    async fn accept_errors_back_off() {
        let calls = Arc::new(AtomicU64::new(0));
        let c = calls.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(accept_loop(
            "test-backoff",
            1,
            move || {
                c.fetch_add(1, Ordering::Relaxed);
                std::future::ready(Err::<(), _>(std::io::Error::from_raw_os_error(
                    libc::EMFILE,
                )))
            },
            |()| async {},
            async {
                let _ = rx.await;
            },
        ));
        tokio::time::sleep(Duration::from_millis(1000)).await;
        tx.send(()).unwrap();
        task.await.unwrap();
        // 0 + 100 + 200 + 400 (+ 800 would end at 1500 ms): 4 or 5 calls in one second.
        let n = calls.load(Ordering::Relaxed);
        assert!((3..=6).contains(&n), "accept called {n} times in 1 s");
        assert!(crate::metrics::local().accept_errors("test-backoff") >= n - 1);
    }

    /// Over the cap, a connection is accepted and closed at once; when a slot frees up, new
    /// connections are served again.
    #[tokio::test]
    async fn connections_over_the_cap_are_closed_at_once() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let listener = Arc::new(listener);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let l = listener.clone();
        let task = tokio::spawn(accept_loop(
            "test-cap",
            2,
            move || {
                let l = l.clone();
                async move { l.accept().await.map(|(s, _)| s) }
            },
            |mut s: tokio::net::TcpStream| async move {
                // Echo one byte, then close.
                let mut b = [0u8; 1];
                if s.read_exact(&mut b).await.is_ok() {
                    let _ = s.write_all(&b).await;
                }
            },
            async {
                let _ = rx.await;
            },
        ));
        let before = crate::metrics::local().connections_rejected("test-cap");
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        // The third is over the cap: closed without an answer, at once.
        let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(2), third.read(&mut b))
            .await
            .expect("an over-the-cap connection is closed at once");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        assert_eq!(
            crate::metrics::local().connections_rejected("test-cap"),
            before + 1
        );
        // Finish one held connection: its slot frees and a new connection is served.
        let mut first = held.remove(0);
        first.write_all(b"x").await.unwrap();
        first.read_exact(&mut b).await.unwrap();
        drop(first);
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(b"y").await.unwrap();
            if s.read_exact(&mut b).await.is_ok() {
                assert_eq!(&b, b"y");
                break;
            }
            assert!(Instant::now() < deadline, "the freed slot was never reused");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tx.send(()).unwrap();
        task.await.unwrap();
    }
}
