//! Adding and removing services of the running configuration.

use super::{mutate, unknown_service, ApiContext};
use crate::api::proto::{Request, Response};

/// Executes `service add` / `service remove`.
pub(super) fn handle(ctx: &dyn ApiContext, req: Request) -> Response {
    match req {
        Request::ServiceAdd { service } => mutate(ctx, move |c| {
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
        Request::ServiceRemove { name } => mutate(ctx, move |c| {
            let i = c
                .services
                .iter()
                .position(|s| s.name == name)
                .ok_or_else(|| unknown_service(c, &name))?;
            c.services.remove(i);
            Ok(format!("removed service {name}"))
        }),
        other => Response::failure(format!("{} is not a service request", other.command())),
    }
}
