//! lbd's log lines carry no ANSI colour codes when stderr is not a terminal (a pipe, a file,
//! journald). Runs the built `lbd` binary; needs no root and touches no BPF state (`--unload`
//! of a pin root that does not exist only logs).

use std::path::PathBuf;
use std::process::Command;

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn logs_to_a_pipe_have_no_colour_codes() {
    let dir = TempDir(std::env::temp_dir().join(format!("lbd-logs-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let config = dir.0.join("lb.yaml");
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
            root = dir.0.join("bpf-not-there").display(),
            dir = dir.0.display()
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
