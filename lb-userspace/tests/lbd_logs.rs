//! lbd's log lines carry no ANSI colour codes when stderr is not a terminal (a pipe, a file,
//! journald). Runs the built `lbd` binary; needs no root and touches no BPF state (`--unload`
//! of a pin root that does not exist only logs).

use lb::testutil::TempDir;
use std::process::Command;

#[test]
fn logs_to_a_pipe_have_no_colour_codes() {
    let dir = TempDir::new("lbd-logs");
    let config = dir.path().join("lb.yaml");
    std::fs::write(
        &config,
        format!(
            "interfaces: [lo]
bpffs_root: {root}
api_socket: {dir}/lbd.sock
snat:
  addresses: [10.0.255.1]
services: []
",
            root = dir.path().join("bpf-not-there").display(),
            dir = dir.path().display()
        ),
    )
    .unwrap();
    for format in ["human", "json"] {
        let out = Command::new(env!("CARGO_BIN_EXE_lbd"))
            .args(["--config", config.to_str().unwrap(), "--unload"])
            .args(["--log-format", format])
            .env("LB_LOG", "info")
            .env_remove("NO_COLOR")
            .output()
            .expect("running lbd");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{format}: {stderr}");
        assert!(
            stderr.contains("detached and removed the pinned program and maps"),
            "{format}: no log line: {stderr:?}"
        );
        assert!(
            !stderr.contains('\x1b'),
            "{format}: colour codes in piped logs: {stderr:?}"
        );
    }
}
