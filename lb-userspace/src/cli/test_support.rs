//! Helpers of the CLI's unit tests: parsing a command line, a fake lbd, a stats sample.

use super::{request_for, Cli};
use crate::api::proto::{Request, StatsSnapshot};
use clap::Parser;
use serde_json::Value;
use std::io::Write;
use std::path::PathBuf;

pub(super) fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("lbctl").chain(args.iter().copied()))
}

/// Serves canned responses on a temporary socket: one connection, answers by command.
pub(super) struct FakeLbd {
    dir: PathBuf,
    thread: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl FakeLbd {
    pub(super) fn start(tag: &str, answer: fn(&Request) -> crate::api::proto::Response) -> Self {
        use std::io::BufRead;
        let dir = std::env::temp_dir().join(format!("lbctl-fake-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let listener = std::os::unix::net::UnixListener::bind(dir.join("lbd.sock")).unwrap();
        let thread = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut w = stream.try_clone().unwrap();
            let mut seen = Vec::new();
            for line in std::io::BufReader::new(stream).lines() {
                let line = line.unwrap();
                let req = Request::from_line(&line).unwrap();
                w.write_all(answer(&req).to_line().as_bytes()).unwrap();
                seen.push(line);
            }
            seen
        });
        Self {
            dir,
            thread: Some(thread),
        }
    }

    pub(super) fn socket(&self) -> String {
        self.dir.join("lbd.sock").display().to_string()
    }

    /// Request lines the fake received (after the client disconnected).
    pub(super) fn finish(mut self) -> Vec<String> {
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for FakeLbd {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(super) fn snapshot(ts: u64, fwd: u64) -> StatsSnapshot {
    let mut counters = std::collections::BTreeMap::new();
    for name in lb_common::COUNTER_NAMES {
        counters.insert(name.to_string(), 0);
    }
    counters.insert("fwd_to_backend".into(), fwd);
    StatsSnapshot {
        timestamp_ms: ts,
        services: vec![],
        counters,
        conntrack_filter: None,
    }
}

/// The request `lbctl ARGS` sends, as JSON.
pub(super) fn request(args: &[&str]) -> Value {
    let cli = parse(args).unwrap();
    serde_json::to_value(request_for(&cli.command).unwrap()).unwrap()
}
