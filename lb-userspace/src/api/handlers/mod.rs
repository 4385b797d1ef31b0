//! The API's request handlers, one file per group: [`query`] (status, stats, lists, database
//! status), [`service`] and [`backend`] (mutations of the running configuration), [`config`]
//! (reload, dump, save, unload). They reach lbd only through [`ApiContext`], which the daemon
//! implements, so the API server and the daemon do not import each other and the handlers can
//! be driven by any implementation.

mod backend;
mod config;
mod query;
mod service;

use super::proto::{
    BackendListEntry, DbClusterInfo, DbEventInfo, Request, Response, StatsSnapshot, StatusInfo,
};
use crate::config::Config;
use std::path::PathBuf;

/// An edit of the running configuration: returns the message for the caller, or an error
/// that aborts the request without changes.
pub type ConfigEdit<'a> = Box<dyn FnOnce(&mut Config) -> Result<String, String> + 'a>;

/// What the handlers need from lbd, and nothing more.
pub trait ApiContext: Send + Sync {
    /// `status`: the process, its interfaces and the service/backend counts.
    fn status(&self) -> StatusInfo;
    /// One sample of everything lbd counts.
    fn stats(&self) -> StatsSnapshot;
    /// Every backend of every service, in configuration order.
    fn backends(&self) -> Vec<BackendListEntry>;
    /// The database clusters (all, or `only`); an error names an unknown cluster.
    fn db_status(&self, only: Option<&str>) -> Result<Vec<DbClusterInfo>, String>;
    /// The latest `limit` database events (of all clusters, or `only`).
    fn db_events(&self, only: Option<&str>, limit: usize) -> Result<Vec<DbEventInfo>, String>;
    /// A copy of the running configuration.
    fn running_config(&self) -> Config;
    /// Applies `edit` to a copy of the running configuration, then the copy, atomically with
    /// respect to other edits.
    fn edit_config(&self, edit: ConfigEdit<'_>) -> Result<String, String>;
    /// Re-reads the configuration file and applies it; the error is the whole message.
    fn reload(&self) -> Result<String, String>;
    /// The configuration file (`config save` writes it).
    fn config_path(&self) -> PathBuf;
    /// Asks lbd to detach, remove its pinned state and exit.
    fn request_unload(&self);
}

/// Executes one request.
pub fn handle(ctx: &dyn ApiContext, req: Request) -> Response {
    let command = req.command();
    let mutating = req.is_mutating();
    let response = match req {
        Request::Status
        | Request::Stats
        | Request::ServiceList
        | Request::BackendList { .. }
        | Request::DbStatus { .. }
        | Request::DbEvents { .. } => query::handle(ctx, req),
        Request::ServiceAdd { .. } | Request::ServiceRemove { .. } => service::handle(ctx, req),
        Request::BackendAdd { .. }
        | Request::BackendRemove { .. }
        | Request::BackendDrain { .. }
        | Request::BackendUndrain { .. }
        | Request::BackendSetWeight { .. } => backend::handle(ctx, req),
        Request::Reload | Request::ConfigDump | Request::ConfigSave | Request::Unload => {
            config::handle(ctx, req)
        }
    };
    if response.ok {
        if mutating {
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

/// The "no service named" error, listing the known ones.
fn unknown_service(config: &Config, name: &str) -> String {
    let known: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
    if known.is_empty() {
        format!("no service named \"{name}\" (no services are configured)")
    } else {
        format!("no service named \"{name}\" (known: {})", known.join(", "))
    }
}

/// Applies `edit` through `ctx` and words the response.
fn mutate<'a>(
    ctx: &dyn ApiContext,
    edit: impl FnOnce(&mut Config) -> Result<String, String> + 'a,
) -> Response {
    match ctx.edit_config(Box::new(edit)) {
        Ok(message) => Response::success(&message),
        Err(e) => Response::failure(e),
    }
}
