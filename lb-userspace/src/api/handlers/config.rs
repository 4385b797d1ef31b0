//! The configuration as a whole: reload from the file, dump, save, and unload.

use super::ApiContext;
use crate::api::proto::{Request, Response};

/// Executes `reload`, `config dump`, `config save` and `unload`.
pub(super) fn handle(ctx: &dyn ApiContext, req: Request) -> Response {
    match req {
        // `reload` words the whole error: "unchanged" only when it is true.
        Request::Reload => match ctx.reload() {
            Ok(summary) => Response::success(&summary),
            Err(e) => Response::failure(e),
        },
        Request::ConfigDump => Response::success(&ctx.running_config().to_yaml()),
        Request::ConfigSave => {
            let text = ctx.running_config().to_yaml();
            let path = ctx.config_path();
            match crate::config::save_atomically(&path, &text) {
                Ok(()) => Response::success(&path.display().to_string()),
                Err(e) => Response::failure(format!("cannot write {}: {e}", path.display())),
            }
        }
        Request::Unload => {
            ctx.request_unload();
            Response::success(
                &"unloading: lbd detaches the XDP program, removes the pinned maps and exits",
            )
        }
        other => Response::failure(format!("{} is not a config request", other.command())),
    }
}
