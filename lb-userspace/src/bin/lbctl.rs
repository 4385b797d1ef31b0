//! `lbctl`: the operator CLI of lbd. See `docs/cli.md`; the logic lives in [`lb::cli`].

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = lb::cli::Cli::parse();
    match lb::cli::run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes, e.g. "cannot reach lbd at PATH: is lbd
            // running? (connection refused)".
            eprintln!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
