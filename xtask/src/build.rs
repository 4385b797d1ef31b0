//! Builds the eBPF object and the user-space binaries.

use crate::setup::run_cmd;
use anyhow::Result;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent")
        .to_path_buf()
}

/// Where the eBPF object lands; `lb-userspace/build.rs` embeds it from here.
pub fn ebpf_object() -> PathBuf {
    root().join("target/bpfel-unknown-none/release/lb-ebpf")
}

/// Builds `lb-ebpf` with nightly for `bpfel-unknown-none` into the workspace's target dir.
pub fn ebpf() -> Result<()> {
    ebpf_in(&root())?;
    println!("[build] eBPF object at {}", ebpf_object().display());
    Ok(())
}

/// Builds `lb-ebpf` of the checkout at `root` into `root/target` (where that checkout's
/// `lb-userspace/build.rs` embeds it from).
pub fn ebpf_in(root: &Path) -> Result<()> {
    println!(
        "[build] eBPF object (nightly, bpfel-unknown-none) in {}",
        root.display()
    );
    run_cmd(
        Command::new("cargo")
            .current_dir(root.join("lb-ebpf"))
            // The outer `cargo run` pins the stable toolchain through these; the eBPF crate
            // needs nightly.
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("RUSTC")
            .env_remove("RUSTC_WRAPPER")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env("CARGO_TARGET_DIR", root.join("target"))
            .args([
                "+nightly",
                "build",
                "--release",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
            ]),
    )
}

/// Builds the eBPF object, then the user-space workspace (release) which embeds it.
pub fn all() -> Result<()> {
    ebpf()?;
    println!("[build] user space (release)");
    run_cmd(Command::new("cargo").current_dir(root()).args([
        "build",
        "--release",
        "--workspace",
        "--bins",
    ]))
}
