//! `lb-testsrv --listen ADDR --name NAME [--health-file PATH]`: the lab's backend server (see
//! `lb_tests::lab::testsrv` for its endpoints; `GET /healthz` fails while PATH exists). Prints `listening on ADDR` once bound; stops
//! on SIGTERM or SIGINT.

use anyhow::{bail, Context, Result};
use std::io::Write;

fn main() -> Result<()> {
    let mut listen = None;
    let mut name = None;
    let mut health_file = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next(),
            "--name" => name = args.next(),
            "--health-file" => {
                health_file = Some(std::path::PathBuf::from(
                    args.next().context("--health-file needs a PATH")?,
                ));
            }
            other => {
                bail!(
                    "unknown argument {other:?}; usage: lb-testsrv --listen ADDR --name NAME [--health-file PATH]"
                )
            }
        }
    }
    let listen = listen.context("--listen ADDR is required (e.g. 0.0.0.0:8080)")?;
    let name = name.context("--name NAME is required (what GET /id answers)")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        println!("listening on {}", listener.local_addr()?);
        std::io::stdout().flush()?;
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("installing a SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        lb_tests::lab::testsrv::serve_with_health_file(listener, name, health_file, shutdown).await;
        Ok(())
    })
}
