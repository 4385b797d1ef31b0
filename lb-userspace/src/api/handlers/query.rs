//! Read-only requests: status, stats, the service and backend lists, database status and
//! events.

use super::{unknown_service, ApiContext};
use crate::api::proto::{BackendListEntry, Request, Response};

/// Executes a read-only request.
pub(super) fn handle(ctx: &dyn ApiContext, req: Request) -> Response {
    match req {
        Request::Status => Response::success(&ctx.status()),
        Request::Stats => Response::success(&ctx.stats()),
        Request::ServiceList => Response::success(&ctx.stats().services),
        Request::BackendList { service } => {
            if let Some(name) = &service {
                let config = ctx.running_config();
                if !config.services.iter().any(|s| &s.name == name) {
                    return Response::failure(unknown_service(&config, name));
                }
            }
            let list: Vec<BackendListEntry> = ctx
                .backends()
                .into_iter()
                .filter(|e| service.as_ref().is_none_or(|n| &e.service == n))
                .collect();
            Response::success(&list)
        }
        Request::DbStatus { cluster } => match ctx.db_status(cluster.as_deref()) {
            Ok(list) => Response::success(&list),
            Err(e) => Response::failure(e),
        },
        Request::DbEvents { cluster, limit } => {
            match ctx.db_events(cluster.as_deref(), limit.unwrap_or(50)) {
                Ok(list) => Response::success(&list),
                Err(e) => Response::failure(e),
            }
        }
        other => Response::failure(format!("{} is not a query", other.command())),
    }
}
