//! The backend test server (`lb-testsrv`): minimal HTTP/1.1 with keep-alive.
//!
//! | request | response |
//! |---|---|
//! | `GET /id` | `<name> <peer ip:port>` (the peer is the balancer's SNAT address) |
//! | `GET /healthz` | 200 `ok`; 503 `unhealthy` while the `--health-file` exists (a health-check flap while the service keeps serving) |
//! | `GET /bulk?bytes=N` | N bytes of [`super::http::pattern_byte`] |
//! | `POST /sha256` | SHA-256 hex of the body |
//! | `GET /after-eof?delay_ms=D&bytes=N` | waits for the client's EOF (half-close), sleeps D ms, sends N pattern bytes and closes |
//! | `GET /stream?seconds=S` | S x [`STREAM_CHUNKS_PER_SEC`] chunks of [`STREAM_CHUNK`] pattern bytes, one every 1/10 s |
//!
//! Anything else gets 404; a malformed request gets 400 and the connection is closed.

use super::http::{fill_pattern, hex, read_head};
use sha2::{Digest, Sha256};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Bytes per chunk of `/stream`.
pub const STREAM_CHUNK: u64 = 4096;
/// Chunks per second of `/stream`.
pub const STREAM_CHUNKS_PER_SEC: u64 = 10;
/// Largest `/bulk` size served (1 GiB).
pub const MAX_BULK: u64 = 1 << 30;
/// Longest `/stream` served.
pub const MAX_STREAM_SECS: u64 = 600;
/// Largest `delay_ms` of `/after-eof`.
pub const MAX_DELAY_MS: u64 = 60_000;

/// Serves connections on `listener` as `name` until `shutdown` completes.
pub async fn serve(listener: TcpListener, name: String, shutdown: impl Future<Output = ()>) {
    serve_with_health_file(listener, name, None, shutdown).await;
}

/// [`serve`], with `GET /healthz` failing (503) while `health_file` exists: the lab makes a
/// backend's health check fail while every other endpoint keeps serving.
pub async fn serve_with_health_file(
    listener: TcpListener,
    name: String,
    health_file: Option<PathBuf>,
    shutdown: impl Future<Output = ()>,
) {
    let health_file = Arc::new(health_file);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let name = name.clone();
                    let health_file = health_file.clone();
                    tokio::spawn(async move {
                        let _ = connection(stream, peer, &name, health_file.as_deref()).await;
                    });
                }
                Err(e) => {
                    eprintln!("lb-testsrv {name}: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

fn query_u64(target: &str, key: &str) -> Option<u64> {
    let (_, query) = target.split_once('?')?;
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
}

async fn respond(
    w: &mut (impl AsyncWriteExt + Unpin),
    status: &str,
    body: &[u8],
    close: bool,
) -> std::io::Result<()> {
    let conn = if close { "close" } else { "keep-alive" };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: {conn}\r\n\r\n",
        body.len()
    );
    w.write_all(head.as_bytes()).await?;
    w.write_all(body).await
}

async fn send_pattern(
    w: &mut (impl AsyncWriteExt + Unpin),
    len: u64,
    pace: Option<Duration>,
    chunk: u64,
) -> std::io::Result<()> {
    let head =
        format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: keep-alive\r\n\r\n");
    w.write_all(head.as_bytes()).await?;
    let mut buf = vec![0u8; chunk as usize];
    let mut off = 0u64;
    let mut tick = pace.map(tokio::time::interval);
    while off < len {
        if let Some(t) = tick.as_mut() {
            t.tick().await;
        }
        let n = (len - off).min(chunk) as usize;
        fill_pattern(off, &mut buf[..n]);
        w.write_all(&buf[..n]).await?;
        off += n as u64;
    }
    w.flush().await
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    name: &str,
    health_file: Option<&Path>,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut stream = BufReader::with_capacity(64 * 1024, stream);
    loop {
        let head = match read_head(&mut stream).await {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(()),
            Err(e) => {
                let msg = format!("{e}\n");
                return respond(stream.get_mut(), "400 Bad Request", msg.as_bytes(), true).await;
            }
        };
        let method = head.start[0].as_str();
        let target = head.start[1].as_str();
        let path = target.split('?').next().unwrap_or_default();
        let close = head.close;
        // Read (and hash) any request body first, so keep-alive stays in sync.
        let mut hasher = Sha256::new();
        let mut left = head.content_length;
        let mut buf = vec![0u8; 64 * 1024];
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = stream.read(&mut buf[..want]).await?;
            if n == 0 {
                return Ok(());
            }
            hasher.update(&buf[..n]);
            left -= n as u64;
        }
        let w = stream.get_mut();
        match (method, path) {
            ("GET", "/id") => {
                respond(w, "200 OK", format!("{name} {peer}").as_bytes(), close).await?;
            }
            ("GET", "/healthz") if health_file.is_some_and(Path::exists) => {
                respond(w, "503 Service Unavailable", b"unhealthy", close).await?;
            }
            ("GET", "/healthz") => respond(w, "200 OK", b"ok", close).await?,
            ("GET", "/bulk") => match query_u64(target, "bytes") {
                Some(n) if n <= MAX_BULK => send_pattern(w, n, None, 64 * 1024).await?,
                _ => {
                    let msg = format!("bytes=N required, N <= {MAX_BULK}\n");
                    respond(w, "400 Bad Request", msg.as_bytes(), close).await?;
                }
            },
            ("GET", "/stream") => match query_u64(target, "seconds") {
                Some(s) if s <= MAX_STREAM_SECS => {
                    let len = s * STREAM_CHUNKS_PER_SEC * STREAM_CHUNK;
                    let pace = Duration::from_millis(1000 / STREAM_CHUNKS_PER_SEC);
                    send_pattern(w, len, Some(pace), STREAM_CHUNK).await?;
                }
                _ => {
                    let msg = format!("seconds=S required, S <= {MAX_STREAM_SECS}\n");
                    respond(w, "400 Bad Request", msg.as_bytes(), close).await?;
                }
            },
            ("GET", "/after-eof") => {
                match (query_u64(target, "delay_ms"), query_u64(target, "bytes")) {
                    (Some(d), Some(n)) if d <= MAX_DELAY_MS && n <= MAX_BULK => {
                        // The client half-closes after its request: wait for its EOF, then
                        // answer late and close.
                        let mut sink = [0u8; 1024];
                        while stream.read(&mut sink).await? > 0 {}
                        tokio::time::sleep(Duration::from_millis(d)).await;
                        send_pattern(stream.get_mut(), n, None, 64 * 1024).await?;
                        return Ok(());
                    }
                    _ => {
                        let msg = format!(
                            "delay_ms=D and bytes=N required, D <= {MAX_DELAY_MS}, N <= {MAX_BULK}\n"
                        );
                        respond(w, "400 Bad Request", msg.as_bytes(), close).await?;
                    }
                }
            }
            ("POST", "/sha256") => {
                let digest = hex(&hasher.finalize());
                respond(w, "200 OK", digest.as_bytes(), close).await?;
            }
            _ => respond(w, "404 Not Found", b"not found\n", close).await?,
        }
        if close {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::http::{pattern_sha256, HttpConn};

    #[test]
    fn query_parsing() {
        assert_eq!(query_u64("/bulk?bytes=10", "bytes"), Some(10));
        assert_eq!(query_u64("/bulk?x=1&bytes=7", "bytes"), Some(7));
        assert_eq!(query_u64("/bulk", "bytes"), None);
        assert_eq!(query_u64("/bulk?bytes=x", "bytes"), None);
    }

    /// Every endpoint over loopback, on one keep-alive connection.
    #[test]
    fn endpoints_over_loopback() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let server = tokio::spawn(serve(listener, "b7".into(), async {
                let _ = rx.await;
            }));
            let mut c = HttpConn::connect(addr, Duration::from_secs(2))
                .await
                .unwrap();
            let r = c.request("GET", "/id", b"").await.unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(r.text(), format!("b7 {}", c.local_addr()));
            assert_eq!(c.request("GET", "/healthz", b"").await.unwrap().status, 200);
            assert_eq!(c.request("GET", "/nope", b"").await.unwrap().status, 404);
            assert_eq!(c.request("GET", "/bulk", b"").await.unwrap().status, 400);
            let (st, len, sha) = c.get_hashed("/bulk?bytes=300001", |_| {}).await.unwrap();
            assert_eq!((st, len), (200, 300_001));
            assert_eq!(sha, pattern_sha256(300_001));
            let r = c.post_pattern("/sha256", 200_003).await.unwrap();
            assert_eq!(r.text(), pattern_sha256(200_003));
            let started = std::time::Instant::now();
            let (st, len, sha) = c.get_hashed("/stream?seconds=1", |_| {}).await.unwrap();
            assert_eq!((st, len), (200, STREAM_CHUNKS_PER_SEC * STREAM_CHUNK));
            assert_eq!(sha, pattern_sha256(len));
            assert!(started.elapsed() >= Duration::from_millis(850));
            tx.send(()).unwrap();
            server.await.unwrap();
        });
    }
}
