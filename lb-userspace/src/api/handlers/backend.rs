//! Backend changes of the running configuration: add, remove, drain, undrain, weight.

use super::{mutate, unknown_service, ApiContext};
use crate::api::proto::{Request, Response};
use crate::config::{BackendConfig, Config, ServiceConfig};
use std::net::SocketAddrV4;

/// Executes a backend request.
pub(super) fn handle(ctx: &dyn ApiContext, req: Request) -> Response {
    match req {
        Request::BackendAdd { service, backend } => mutate(ctx, move |c| {
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
        Request::BackendRemove { service, address } => mutate(ctx, move |c| {
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
        Request::BackendDrain { service, address } => mutate(ctx, move |c| {
            edit_backend(c, &service, address, |b| {
                b.drain = true;
                format!("draining {address} in {service}: no new flows, existing flows stay")
            })
        }),
        Request::BackendUndrain { service, address } => mutate(ctx, move |c| {
            edit_backend(c, &service, address, |b| {
                b.drain = false;
                format!("{address} in {service} is no longer draining")
            })
        }),
        Request::BackendSetWeight {
            service,
            address,
            weight,
        } => mutate(ctx, move |c| {
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
        other => Response::failure(format!("{} is not a backend request", other.command())),
    }
}

/// The service named `name`, or the "no service named" error listing the known ones.
fn service_mut<'a>(config: &'a mut Config, name: &str) -> Result<&'a mut ServiceConfig, String> {
    match config.services.iter().position(|s| s.name == name) {
        Some(i) => Ok(&mut config.services[i]),
        None => Err(unknown_service(config, name)),
    }
}

/// Edits backend `address` of service `service` in `config`.
fn edit_backend(
    config: &mut Config,
    service: &str,
    address: SocketAddrV4,
    f: impl FnOnce(&mut BackendConfig) -> String,
) -> Result<String, String> {
    let svc = service_mut(config, service)?;
    let b = svc
        .backends
        .iter_mut()
        .find(|b| b.address == address)
        .ok_or_else(|| format!("service \"{service}\" has no backend {address}"))?;
    Ok(f(b))
}
