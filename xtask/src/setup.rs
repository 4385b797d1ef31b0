//! `cargo xtask setup`: makes a fresh Debian machine able to build and test lb.
//!
//! Every step checks first and acts only when something is missing, printing what it does,
//! so a second run is a fast no-op.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::{Command, Stdio};

/// Debian packages needed to build bpf-linker (LLVM 22) and to run the test labs.
pub const BASE_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "iproute2",
    "ethtool",
    "procps",
];

/// Extra packages for `cargo xtask bench` (the alternatives we compare against).
pub const BENCH_PACKAGES: &[&str] = &["nftables", "haproxy", "nginx-light", "wrk"];

const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

fn step(msg: &str) {
    println!("[setup] {msg}");
}

pub fn run() -> Result<()> {
    check_root()?;
    check_kernel()?;
    install_packages(BASE_PACKAGES)?;
    ensure_rust_src()?;
    ensure_bpf_linker()?;
    step("ready");
    Ok(())
}

fn check_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "lb's set-up, tests and demo need root (they install packages, load XDP programs and \
             create network namespaces); run them as root, e.g. `sudo -E cargo xtask test`"
        );
    }
    step("running as root");
    Ok(())
}

fn check_kernel() -> Result<()> {
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!(
            "this kernel has no BTF (/sys/kernel/btf/vmlinux is missing); lb needs a kernel \
             built with CONFIG_BPF_SYSCALL and CONFIG_DEBUG_INFO_BTF (Linux >= 5.15)"
        );
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if !mounts
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("bpf"))
    {
        step("mounting bpffs on /sys/fs/bpf");
        run_cmd(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
            .context("the kernel lacks BPF support: cannot mount bpffs on /sys/fs/bpf")?;
    }
    step("kernel has BTF and bpffs");
    Ok(())
}

fn package_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// Installs the Debian packages of `pkgs` that are not installed yet.
pub fn install_packages(pkgs: &[&str]) -> Result<()> {
    let missing: Vec<&str> = pkgs
        .iter()
        .copied()
        .filter(|p| !package_installed(p))
        .collect();
    if missing.is_empty() {
        step(&format!("Debian packages present: {}", pkgs.join(" ")));
        return Ok(());
    }
    step(&format!(
        "installing Debian packages: {}",
        missing.join(" ")
    ));
    run_cmd(Command::new("apt-get").args(["update", "-q"]))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn ensure_rust_src() -> Result<()> {
    let out = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output();
    let have = out
        .map(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| l.starts_with("rust-src"))
        })
        .unwrap_or(false);
    if have {
        step("nightly toolchain with rust-src present");
        return Ok(());
    }
    step("adding the nightly toolchain's rust-src component");
    // `component add` only fetches the component; `toolchain install` would also try to
    // update an existing nightly, which needs more than the package registries.
    run_cmd(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"])).context(
        "the eBPF crate needs a nightly toolchain with rust-src (`rustup toolchain install nightly \
         --component rust-src`)",
    )
}

fn ensure_bpf_linker() -> Result<()> {
    let ok = Command::new("bpf-linker")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        step("bpf-linker present");
        return Ok(());
    }
    step("building bpf-linker against LLVM 22 (about a minute)");
    run_cmd(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                "^0.13",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX),
    )
}

/// Runs a command inheriting stdio; fails with the command line when it exits non-zero.
pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    let line = format!("{cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {line}"))?;
    if !status.success() {
        bail!("{line} failed with {status}");
    }
    Ok(())
}
