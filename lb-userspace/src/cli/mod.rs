//! `lbctl`, the operator CLI: argument parsing, request building and output.
//!
//! The binary (`src/bin/lbctl.rs`) only parses [`Cli`] and calls [`run`]. Requests go to lbd
//! through [`crate::api::client::Client`]; human output comes from the pure functions of
//! [`format`], JSON output is the response data as lbd sent it. This module is the CLI's edge,
//! so it reports errors with `anyhow` (one line, printed by the binary with `{:#}`).
//!
//! One module per command group: `service` (`service`, `backend`), `watch` (`stats`,
//! `--watch`), `decap` (`decap`, acts on this host), [`backend_setup`] (`backend-setup`, prints
//! a script); this one holds the command line, the request of each command and its rendering.

pub mod backend_setup;
mod decap;
pub mod format;
mod service;
#[cfg(test)]
mod test_support;
mod watch;

pub use backend_setup::{backend_setup_script, dsr_sources, lbd_dsr_sources, BackendSetupArgs};
pub use decap::DecapCommand;
pub use service::{
    parse_backend_spec, service_from_args, service_from_yaml_file, service_from_yaml_str,
    BackendCommand, BackendRef, ServiceAddArgs, ServiceCommand,
};
pub use watch::StatsArgs;

use crate::api::client::Client;
use crate::api::proto::{
    BackendListEntry, Request, ServiceStats, StatsSnapshot, StatusInfo, DEFAULT_SOCKET_PATH,
};
use anyhow::{anyhow, bail, Context as _, Result};
use clap::{Parser, Subcommand, ValueEnum};
use decap::run_decap;
use serde_json::{json, Value};
use std::io::{ErrorKind, Write};
use std::path::PathBuf;
use watch::watch_stats;

/// Command line of `lbctl`.
#[derive(Debug, Parser)]
#[command(
    name = "lbctl",
    version,
    about = "Operate lbd, the lb layer-4 load balancer daemon",
    after_help = "Backends are addressed as SERVICE ADDR:PORT, e.g. `lbctl backend drain web 10.1.1.2:8080`.\n\
                  Changes apply to the running lbd only; `lbctl config save` persists them."
)]
pub struct Cli {
    /// lbd's control socket.
    #[arg(long, global = true, value_name = "PATH", default_value = DEFAULT_SOCKET_PATH)]
    pub socket: PathBuf,
    /// Output format: aligned tables for people, or the API's JSON data for scripts.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Human)]
    pub output: Output,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Output format of `lbctl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned tables with units.
    Human,
    /// The response data as JSON (pretty-printed; one compact line per sample with --watch).
    Json,
}

/// `lbctl` commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show lbd's version, uptime, interfaces and totals.
    Status,
    /// List, add or remove services.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// List, add, remove, drain, undrain or re-weight backends.
    #[command(subcommand)]
    Backend(BackendCommand),
    /// Show per-service and per-backend traffic and the global counters.
    Stats(StatsArgs),
    /// Make lbd re-read its config file and apply the difference.
    Reload,
    /// Print or persist the running configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Detach the XDP program, remove pinned maps and stop lbd (forwarding stops).
    Unload,
    /// Database clusters: roles, lag, events.
    #[command(subcommand)]
    Db(DbCommand),
    /// Print the commands a backend needs (run them on the backend; lbd is not contacted).
    BackendSetup(BackendSetupArgs),
    /// DSR backends without the ipip module: lb's XDP decapsulator on this host's interface
    /// (lbd is not contacted).
    #[command(subcommand)]
    Decap(DecapCommand),
}

/// `lbctl db ...`
#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Primary, timeline and every member's role, state, LSN, lag, flows and why.
    Status {
        /// Only this cluster.
        cluster: Option<String>,
    },
    /// Recent events: primary changes (with the lost-bytes estimate), split brain, fencing,
    /// read fallback, members down and up.
    Events {
        /// Only this cluster.
        #[arg(long)]
        cluster: Option<String>,
        /// How many of the most recent events.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

/// `lbctl config ...`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the running configuration as YAML (lbd accepts it back as its config).
    Dump,
    /// Write the running configuration to lbd's config file (previous kept as .bak).
    Save,
}

/// Runs one `lbctl` invocation, writing its output to stdout.
pub fn run(cli: &Cli) -> Result<()> {
    let mut out = std::io::stdout().lock();
    write_or_pipe_closed(run_to(cli, &mut out))
}

/// A closed stdout (`lbctl stats | head`) ends the command quietly, like other Unix tools.
fn write_or_pipe_closed(r: Result<()>) -> Result<()> {
    match r {
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// Runs one `lbctl` invocation, writing its output to `out`.
pub fn run_to(cli: &Cli, out: &mut dyn Write) -> Result<()> {
    // Build the request first: bad arguments are reported without contacting lbd.
    let request = match &cli.command {
        Command::Stats(args) if args.watch => {
            return watch_stats(&cli.socket, cli.output, args.interval, args.count, out)
        }
        Command::BackendSetup(args) => {
            let script = backend_setup_script(args, |vips| lbd_dsr_sources(&cli.socket, vips))?;
            out.write_all(script.as_bytes())?;
            return Ok(out.flush()?);
        }
        Command::Decap(command) => return run_decap(command, cli.output, out),
        command => request_for(command)?,
    };
    let mut client = Client::connect(&cli.socket)?;
    let data = client.call(&request)?;
    if cli.output == Output::Json {
        writeln!(out, "{}", serde_json::to_string_pretty(&data)?)?;
        return Ok(());
    }
    let text = render_human(&request, data)?;
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// The request a (non-watch) command sends.
pub fn request_for(command: &Command) -> Result<Request> {
    Ok(match command {
        Command::Status => Request::Status,
        Command::Service(ServiceCommand::List) => Request::ServiceList,
        Command::Service(ServiceCommand::Add(args)) => Request::ServiceAdd {
            service: service_from_args(args)?,
        },
        Command::Service(ServiceCommand::Remove { name }) => {
            Request::ServiceRemove { name: name.clone() }
        }
        Command::Backend(BackendCommand::List { service }) => Request::BackendList {
            service: service.clone(),
        },
        Command::Backend(BackendCommand::Add {
            service,
            address,
            weight,
            backup,
            drain,
        }) => Request::BackendAdd {
            service: service.clone(),
            backend: serde_json::from_value(json!({
                "address": address.to_string(),
                "weight": weight,
                "backup": backup,
                "drain": drain,
            }))
            .context("backend add")?,
        },
        Command::Backend(BackendCommand::Remove(r)) => Request::BackendRemove {
            service: r.service.clone(),
            address: r.address,
        },
        Command::Backend(BackendCommand::Drain(r)) => Request::BackendDrain {
            service: r.service.clone(),
            address: r.address,
        },
        Command::Backend(BackendCommand::Undrain(r)) => Request::BackendUndrain {
            service: r.service.clone(),
            address: r.address,
        },
        Command::Backend(BackendCommand::SetWeight {
            service,
            address,
            weight,
        }) => Request::BackendSetWeight {
            service: service.clone(),
            address: *address,
            weight: *weight,
        },
        Command::Stats(_) => Request::Stats,
        Command::Reload => Request::Reload,
        Command::Config(ConfigCommand::Dump) => Request::ConfigDump,
        Command::Config(ConfigCommand::Save) => Request::ConfigSave,
        Command::Unload => Request::Unload,
        Command::BackendSetup(_) => bail!("backend-setup prints commands; it sends no request"),
        Command::Decap(_) => bail!("decap acts on this host; it sends no request"),
        Command::Db(DbCommand::Status { cluster }) => Request::DbStatus {
            cluster: cluster.clone(),
        },
        Command::Db(DbCommand::Events { cluster, limit }) => Request::DbEvents {
            cluster: cluster.clone(),
            limit: Some(*limit),
        },
    })
}

/// Human rendering of a response's data for `request`.
pub fn render_human(request: &Request, data: Value) -> Result<String> {
    let decode =
        |what: &'static str| move |e: serde_json::Error| anyhow!("unexpected {what} from lbd: {e}");
    Ok(match request {
        Request::Status => {
            let s: StatusInfo = serde_json::from_value(data).map_err(decode("status data"))?;
            format::status(&s)
        }
        Request::ServiceList => {
            let l: Vec<ServiceStats> =
                serde_json::from_value(data).map_err(decode("service list"))?;
            format::services(&l)
        }
        Request::BackendList { .. } => {
            let l: Vec<BackendListEntry> =
                serde_json::from_value(data).map_err(decode("backend list"))?;
            format::backend_list(&l)
        }
        Request::Stats => {
            let s: StatsSnapshot = serde_json::from_value(data).map_err(decode("stats data"))?;
            format::stats(&s, None, false)
        }
        Request::DbStatus { .. } => {
            let l: Vec<crate::api::proto::DbClusterInfo> =
                serde_json::from_value(data).map_err(decode("database status"))?;
            format::db_status(&l)
        }
        Request::DbEvents { .. } => {
            let l: Vec<crate::api::proto::DbEventInfo> =
                serde_json::from_value(data).map_err(decode("database events"))?;
            format::db_events(&l)
        }
        Request::ConfigSave => match data {
            Value::String(path) => format!("saved the running configuration to {path}\n"),
            other => format!("{other}\n"),
        },
        // Messages, summaries and the YAML dump are text.
        _ => match data {
            Value::String(s) if s.ends_with('\n') => s,
            Value::String(s) => s + "\n",
            other => serde_json::to_string_pretty(&other)? + "\n",
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use std::path::Path;
    use test_support::{parse, request, snapshot, FakeLbd};

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_and_defaults() {
        let cli = parse(&["status"]).unwrap();
        assert_eq!(cli.socket, Path::new("/run/lb/lbd.sock"));
        assert_eq!(cli.output, Output::Human);
        let cli = parse(&[
            "backend",
            "list",
            "--output",
            "json",
            "--socket",
            "/tmp/x.sock",
        ])
        .unwrap();
        assert_eq!(cli.socket, Path::new("/tmp/x.sock"));
        assert_eq!(cli.output, Output::Json);
    }

    #[test]
    fn commands_map_to_requests() {
        assert_eq!(request(&["status"]), json!({"command": "status"}));
        assert_eq!(
            request(&["service", "list"]),
            json!({"command": "service_list"})
        );
        assert_eq!(
            request(&["service", "remove", "web"]),
            json!({"command": "service_remove", "name": "web"})
        );
        assert_eq!(
            request(&["backend", "list"]),
            json!({"command": "backend_list", "service": null})
        );
        assert_eq!(
            request(&["backend", "list", "web"]),
            json!({"command": "backend_list", "service": "web"})
        );
        assert_eq!(
            request(&["backend", "drain", "web", "10.1.1.2:8080"]),
            json!({"command": "backend_drain", "service": "web", "address": "10.1.1.2:8080"})
        );
        assert_eq!(
            request(&["backend", "undrain", "web", "10.1.1.2:8080"]),
            json!({"command": "backend_undrain", "service": "web", "address": "10.1.1.2:8080"})
        );
        assert_eq!(
            request(&["backend", "remove", "web", "10.1.1.2:8080"]),
            json!({"command": "backend_remove", "service": "web", "address": "10.1.1.2:8080"})
        );
        assert_eq!(
            request(&["backend", "set-weight", "web", "10.1.1.2:8080", "7"]),
            json!({"command": "backend_set_weight", "service": "web",
                   "address": "10.1.1.2:8080", "weight": 7})
        );
        assert_eq!(
            request(&[
                "backend",
                "add",
                "web",
                "10.1.1.9:80",
                "--weight",
                "3",
                "--backup"
            ]),
            json!({"command": "backend_add", "service": "web", "backend":
                   {"address": "10.1.1.9:80", "weight": 3, "backup": true, "drain": false}})
        );
        assert_eq!(request(&["stats"]), json!({"command": "stats"}));
        assert_eq!(request(&["reload"]), json!({"command": "reload"}));
        assert_eq!(
            request(&["config", "dump"]),
            json!({"command": "config_dump"})
        );
        assert_eq!(
            request(&["config", "save"]),
            json!({"command": "config_save"})
        );
        assert_eq!(request(&["unload"]), json!({"command": "unload"}));
    }

    #[test]
    fn human_rendering_of_messages() {
        assert_eq!(
            render_human(&Request::Reload, json!("added service api")).unwrap(),
            "added service api\n"
        );
        assert_eq!(
            render_human(&Request::ConfigDump, json!("services: []\n")).unwrap(),
            "services: []\n"
        );
        assert_eq!(
            render_human(&Request::ConfigSave, json!("/etc/lb/lb.yaml")).unwrap(),
            "saved the running configuration to /etc/lb/lb.yaml\n"
        );
        let err = render_human(&Request::Status, json!({"version": 1})).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("unexpected status data from lbd:"),
            "{err}"
        );
    }

    #[test]
    fn unreachable_lbd_is_one_clear_line() {
        let cli = parse(&["--socket", "/nonexistent/lbd.sock", "status"]).unwrap();
        let mut out = Vec::new();
        let err = format!("{:#}", run_to(&cli, &mut out).unwrap_err());
        assert_eq!(
            err,
            "cannot reach lbd at /nonexistent/lbd.sock: is lbd running? (no such socket)"
        );
        assert!(out.is_empty());
    }

    #[test]
    fn end_to_end_against_a_fake_lbd() {
        use crate::api::proto::Response;
        let fake = FakeLbd::start("e2e", |req| match req {
            Request::BackendDrain { service, address } => {
                Response::success(&format!("draining {address} of {service}"))
            }
            Request::Stats => Response::success(&snapshot(1000, 5)),
            _ => Response::failure("no service named `api` (known: web)"),
        });
        let sock = fake.socket();
        // A watch with two samples on one connection, JSON lines.
        let cli = parse(&[
            "--socket",
            &sock,
            "-o",
            "json",
            "stats",
            "--watch",
            "--interval",
            "0.2",
            "--count",
            "2",
        ])
        .unwrap();
        let mut out = Vec::new();
        run_to(&cli, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        let snap: StatsSnapshot = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(snap, snapshot(1000, 5));
        let seen = fake.finish();
        assert_eq!(seen, vec!["{\"command\":\"stats\"}"; 2]);

        let fake = FakeLbd::start("e2e2", |req| match req {
            Request::BackendDrain { service, address } => {
                Response::success(&format!("draining {address} of {service}"))
            }
            _ => Response::failure("no service named `api` (known: web)"),
        });
        let sock = fake.socket();
        let cli = parse(&[
            "--socket",
            &sock,
            "backend",
            "drain",
            "web",
            "10.1.1.2:8080",
        ])
        .unwrap();
        let mut out = Vec::new();
        run_to(&cli, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "draining 10.1.1.2:8080 of web\n"
        );
        let seen = fake.finish();
        assert_eq!(
            seen,
            vec![
                "{\"command\":\"backend_drain\",\"service\":\"web\",\"address\":\"10.1.1.2:8080\"}"
            ]
        );

        // A server-side error is the command's one-line error.
        let fake = FakeLbd::start("e2e3", |_| {
            Response::failure("no service named `api` (known: web)")
        });
        let sock = fake.socket();
        let cli = parse(&["--socket", &sock, "service", "remove", "api"]).unwrap();
        let mut out = Vec::new();
        let err = format!("{:#}", run_to(&cli, &mut out).unwrap_err());
        assert_eq!(err, "no service named `api` (known: web)");
        assert!(out.is_empty());
        fake.finish();
    }
}
