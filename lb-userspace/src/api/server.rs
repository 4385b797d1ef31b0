//! The control API server inside lbd: one JSON request per line over a Unix stream socket
//! (mode 0600), one response line each (see [`super::proto`]).
//!
//! Mutations change the running state only: each one edits a copy of the running
//! configuration and hands it to the controller, so API changes are validated exactly like the
//! config file and `config dump`/`config save` always reflect them.

use super::handlers::{handle, ApiContext};
use super::proto::{Request, Response, MAX_REQUEST_BYTES};
use crate::limits::{accept_loop, API_MAX_CONNECTIONS};
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// Creates the API socket at `path`: the parent directory if missing, a stale socket file
/// removed, the socket restricted to its owner (0600).
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // Create the socket with no group/other access from the start (no window at 0755).
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let listener = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = listener?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Time a client has to send a complete request line, counted from when lbd starts waiting
/// for it (after the connection is accepted or the previous response is written). An idle or
/// trickling client is disconnected after it; `lbctl` reconnects when it needs to.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client has to take in a response (a client that does not read is disconnected).
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves connections on `listener` until `shutdown` resolves: at most
/// [`API_MAX_CONNECTIONS`] at a time (see [`crate::limits::accept_loop`]), each bounded by
/// [`REQUEST_TIMEOUT`] and [`RESPONSE_TIMEOUT`].
pub async fn serve<H: ApiContext + 'static, S: Future<Output = ()>>(
    listener: UnixListener,
    ctx: Arc<H>,
    shutdown: S,
) {
    accept_loop(
        "api",
        API_MAX_CONNECTIONS,
        || async { listener.accept().await.map(|(s, _)| s) },
        |stream| serve_connection(stream, ctx.clone()),
        shutdown,
    )
    .await;
}

/// Answers request lines on one connection until the client closes it, sends a bad line, or
/// is too slow.
async fn serve_connection<H: ApiContext + 'static>(stream: UnixStream, ctx: Arc<H>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    loop {
        let mut line = String::new();
        let mut bounded = (&mut lines).take(MAX_REQUEST_BYTES as u64);
        let n = match tokio::time::timeout(REQUEST_TIMEOUT, bounded.read_line(&mut line)).await {
            Err(_) => {
                crate::metrics::local().connection_timed_out("api");
                return;
            }
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                let r = Response::failure(format!("invalid request: {e}"));
                let _ =
                    tokio::time::timeout(RESPONSE_TIMEOUT, write.write_all(r.to_line().as_bytes()))
                        .await;
                return;
            }
        };
        if n == 0 {
            return;
        }
        if !line.ends_with('\n') && n >= MAX_REQUEST_BYTES {
            let r = Response::failure(format!("request longer than {MAX_REQUEST_BYTES} bytes"));
            let _ = tokio::time::timeout(RESPONSE_TIMEOUT, write.write_all(r.to_line().as_bytes()))
                .await;
            return;
        }
        if line.trim().is_empty() {
            continue;
        }
        let response = match Request::from_line(&line) {
            Err(e) => Response::failure(e.to_string()),
            Ok(req) => {
                let ctx = ctx.clone();
                tokio::task::spawn_blocking(move || handle(&*ctx, req))
                    .await
                    .unwrap_or_else(|e| Response::failure(format!("internal error: {e}")))
            }
        };
        let written = tokio::time::timeout(
            RESPONSE_TIMEOUT,
            write.write_all(response.to_line().as_bytes()),
        )
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                crate::metrics::local().connection_timed_out("api");
                return;
            }
        }
    }
}
