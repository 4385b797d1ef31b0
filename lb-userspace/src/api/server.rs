//! The control API server inside lbd: one JSON request per line over a Unix stream socket
//! (mode 0600), one response line each (see [`super::proto`]).
//!
//! Mutations change the running state only: each one edits a copy of the running
//! configuration and hands it to the controller, so API changes are validated exactly like the
//! config file and `config dump`/`config save` always reflect them.

use super::proto::{
    BackendListEntry, InterfaceInfo, Request, Response, StatusInfo, MAX_REQUEST_BYTES,
};
use crate::config::Config;
use crate::daemon::{save_atomically, Daemon};
use crate::dataplane::Dataplane;
use crate::limits::{accept_loop, API_MAX_CONNECTIONS};
use crate::model::Health;
use std::future::Future;
use std::net::SocketAddrV4;
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
pub async fn serve<D: Dataplane, S: Future<Output = ()>>(
    listener: UnixListener,
    daemon: Arc<Daemon<D>>,
    shutdown: S,
) {
    accept_loop(
        "api",
        API_MAX_CONNECTIONS,
        || async { listener.accept().await.map(|(s, _)| s) },
        |stream| serve_connection(stream, daemon.clone()),
        shutdown,
    )
    .await;
}

/// Answers request lines on one connection until the client closes it, sends a bad line, or
/// is too slow.
async fn serve_connection<D: Dataplane>(stream: UnixStream, daemon: Arc<Daemon<D>>) {
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
                let d = daemon.clone();
                tokio::task::spawn_blocking(move || handle(&d, req))
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

fn unknown_service(config: &Config, name: &str) -> String {
    let known: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
    if known.is_empty() {
        format!("no service named \"{name}\" (no services are configured)")
    } else {
        format!("no service named \"{name}\" (known: {})", known.join(", "))
    }
}

/// The service named `name`, or the "no service named" error listing the known ones.
fn service_mut<'a>(
    config: &'a mut Config,
    name: &str,
) -> Result<&'a mut crate::config::ServiceConfig, String> {
    match config.services.iter().position(|s| s.name == name) {
        Some(i) => Ok(&mut config.services[i]),
        None => Err(unknown_service(config, name)),
    }
}

/// Applies `edit` to a copy of the running configuration, then applies the copy.
fn mutate<D: Dataplane>(
    daemon: &Daemon<D>,
    edit: impl FnOnce(&mut Config) -> Result<String, String>,
) -> Response {
    match daemon.edit_config(edit) {
        Ok(message) => Response::success(&message),
        Err(e) => Response::failure(e),
    }
}

/// Edits backend `address` of service `service` in `config`.
fn edit_backend(
    config: &mut Config,
    service: &str,
    address: SocketAddrV4,
    f: impl FnOnce(&mut crate::config::BackendConfig) -> String,
) -> Result<String, String> {
    let svc = service_mut(config, service)?;
    let b = svc
        .backends
        .iter_mut()
        .find(|b| b.address == address)
        .ok_or_else(|| format!("service \"{service}\" has no backend {address}"))?;
    Ok(f(b))
}

/// Executes one request.
pub fn handle<D: Dataplane>(daemon: &Daemon<D>, req: Request) -> Response {
    let command = req.command();
    let response = match req {
        Request::Status => {
            let ctl = daemon.controller();
            let backends = ctl.services().iter().flat_map(|s| s.backends.iter());
            Response::success(&StatusInfo {
                version: env!("CARGO_PKG_VERSION").to_string(),
                pid: std::process::id(),
                uptime_secs: daemon.started.elapsed().as_secs(),
                config_path: daemon.config_path.clone(),
                interfaces: daemon.interfaces.iter().map(InterfaceInfo::clone).collect(),
                services: ctl.services().len(),
                backends: backends.clone().count(),
                healthy_backends: backends.filter(|b| b.health() == Health::Up).count(),
                pin_root: daemon.pin_root.clone(),
            })
        }
        Request::DbStatus { cluster } => {
            let ctl = daemon.controller();
            let db = daemon.db();
            match crate::db::supervisor::status(&ctl, &db, cluster.as_deref()) {
                Ok(list) => Response::success(&list),
                Err(e) => Response::failure(e),
            }
        }
        Request::DbEvents { cluster, limit } => {
            let ctl = daemon.controller();
            if let Some(name) = &cluster {
                if ctl.config().db_cluster(name).is_none() {
                    return Response::failure(crate::db::supervisor::unknown_cluster(
                        ctl.config(),
                        name,
                    ));
                }
            }
            let db = daemon.db();
            let list: Vec<_> = db
                .events(cluster.as_deref(), limit.unwrap_or(50))
                .iter()
                .map(crate::db::supervisor::event_info)
                .collect();
            Response::success(&list)
        }
        Request::ServiceList => {
            let ctl = daemon.controller();
            Response::success(&crate::stats::snapshot(&ctl, &daemon.sampler()).services)
        }
        Request::Stats => {
            let ctl = daemon.controller();
            Response::success(&crate::stats::snapshot(&ctl, &daemon.sampler()))
        }
        Request::BackendList { service } => {
            let ctl = daemon.controller();
            if let Some(name) = &service {
                if !ctl.services().iter().any(|s| &s.cfg.name == name) {
                    return Response::failure(unknown_service(ctl.config(), name));
                }
            }
            let sampler = daemon.sampler();
            let list: Vec<BackendListEntry> = ctl
                .services()
                .iter()
                .filter(|s| service.as_ref().is_none_or(|n| &s.cfg.name == n))
                .flat_map(|s| {
                    s.backends.iter().map(|b| BackendListEntry {
                        service: s.cfg.name.clone(),
                        backend: crate::stats::backend_stats(b, &s.cfg.health_check, &sampler),
                    })
                })
                .collect();
            Response::success(&list)
        }
        Request::ServiceAdd { service } => mutate(daemon, |c| {
            if c.services.iter().any(|s| s.name == service.name) {
                return Err(format!(
                    "service \"{}\" already exists; remove it first or change it in the config file and reload",
                    service.name
                ));
            }
            let msg = format!(
                "added service {} ({}:{}, {} backends)",
                service.name,
                service.vip,
                service.port,
                service.backends.len()
            );
            c.services.push(service);
            Ok(msg)
        }),
        Request::ServiceRemove { name } => mutate(daemon, |c| {
            let i = c
                .services
                .iter()
                .position(|s| s.name == name)
                .ok_or_else(|| unknown_service(c, &name))?;
            c.services.remove(i);
            Ok(format!("removed service {name}"))
        }),
        Request::BackendAdd { service, backend } => mutate(daemon, |c| {
            let svc = service_mut(c, &service)?;
            if svc.backends.iter().any(|b| b.address == backend.address) {
                return Err(format!(
                    "service \"{service}\" already has backend {}; use backend set-weight/drain to change it",
                    backend.address
                ));
            }
            let msg = format!("added backend {} to {service}", backend.address);
            svc.backends.push(backend);
            Ok(msg)
        }),
        Request::BackendRemove { service, address } => mutate(daemon, |c| {
            let svc = service_mut(c, &service)?;
            let i = svc
                .backends
                .iter()
                .position(|b| b.address == address)
                .ok_or_else(|| format!("service \"{service}\" has no backend {address}"))?;
            svc.backends.remove(i);
            Ok(format!(
                "removed backend {address} from {service} (it gets no new flows; its id is released when its flows end)"
            ))
        }),
        Request::BackendDrain { service, address } => mutate(daemon, |c| {
            edit_backend(c, &service, address, |b| {
                b.drain = true;
                format!("draining {address} in {service}: no new flows, existing flows stay")
            })
        }),
        Request::BackendUndrain { service, address } => mutate(daemon, |c| {
            edit_backend(c, &service, address, |b| {
                b.drain = false;
                format!("{address} in {service} is no longer draining")
            })
        }),
        Request::BackendSetWeight {
            service,
            address,
            weight,
        } => mutate(daemon, |c| {
            if !(1..=crate::config::MAX_WEIGHT).contains(&weight) {
                return Err(format!(
                    "weight must be between 1 and {}, got {weight}",
                    crate::config::MAX_WEIGHT
                ));
            }
            edit_backend(c, &service, address, |b| {
                b.weight = weight;
                format!("weight of {address} in {service} set to {weight}")
            })
        }),
        // `Daemon::reload` words the whole error: "unchanged" only when it is true.
        Request::Reload => match daemon.reload() {
            Ok(summary) => Response::success(&summary),
            Err(e) => Response::failure(e),
        },
        Request::ConfigDump => Response::success(&daemon.controller().config().to_yaml()),
        Request::ConfigSave => {
            let text = daemon.controller().config().to_yaml();
            match save_atomically(&daemon.config_path, &text) {
                Ok(()) => Response::success(&daemon.config_path.display().to_string()),
                Err(e) => Response::failure(format!(
                    "cannot write {}: {e}",
                    daemon.config_path.display()
                )),
            }
        }
        Request::Unload => {
            daemon.request_stop(true);
            Response::success(
                &"unloading: lbd detaches the XDP program, removes the pinned maps and exits",
            )
        }
    };
    if response.ok {
        if !matches!(
            command,
            "status" | "service_list" | "backend_list" | "stats" | "config_dump"
        ) {
            tracing::info!(command, "API request done");
        }
    } else {
        tracing::warn!(
            command,
            error = response.error.as_deref().unwrap_or(""),
            "API request failed"
        );
    }
    response
}
