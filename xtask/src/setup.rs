//! `cargo xtask setup`: makes a fresh Debian machine able to build and test lb.
//!
//! Every step checks first and acts only when something is missing, printing what it does,
//! so a second run is a fast no-op. `cargo xtask setup --check` reports the same requirements
//! as a table and changes nothing.
//!
//! [`PACKAGES`] is the one list of Debian packages the project needs, with the programs it
//! runs from each. The guard test in `programs.rs` scans the workspace for every program the
//! code starts and fails when one is neither provided by a package of this list nor part of
//! every Debian install (its allow-list), so this list stays complete.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Which command installs a package.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Set {
    /// `cargo xtask setup`, and so every command that runs it first (`build`, `demo`, `test`,
    /// `bench`): what building lb and running the lab (demo, network-namespace tests) need.
    Base,
    /// `cargo xtask setup --bench`, `cargo xtask bench` and `cargo xtask test` (its last tier is
    /// the bench smoke): the alternatives the bench compares against and its measuring tools.
    Bench,
}

impl Set {
    /// The command that installs this set, as messages name it.
    pub fn installed_by(self) -> &'static str {
        match self {
            Set::Base => "cargo xtask setup",
            Set::Bench => "cargo xtask setup --bench (or bench, test)",
        }
    }
}

/// A Debian package the project needs.
#[derive(Debug)]
pub struct Package {
    /// The Debian package name.
    pub name: &'static str,
    /// Which command installs it.
    pub set: Set,
    /// The programs the project runs from it (empty for libraries). `--check` verifies they are
    /// on the PATH; the guard test maps every program the code starts to one of these lists.
    pub programs: &'static [&'static str],
    /// The system service the package enables, if any. When setup installs the package, the
    /// service is disabled again: the bench starts its own instances in its own namespaces,
    /// and nothing of lb's should leave a daemon listening in the root namespace.
    pub service: Option<&'static str>,
    /// Why the project needs it.
    pub why: &'static str,
}

/// Every Debian package the project needs; `Set::Base` ones first.
///
/// Programs of Essential packages (coreutils, dash, util-linux, ...) are not listed: every
/// Debian install has them (see the allow-list of the guard test in `programs.rs`).
pub const PACKAGES: &[Package] = &[
    Package {
        name: "llvm-22-dev",
        set: Set::Base,
        programs: &[],
        service: None,
        why:
            "bpf-linker is built against LLVM 22, the LLVM of the nightly rustc that builds lb-ebpf",
    },
    Package {
        name: "libpolly-22-dev",
        set: Set::Base,
        programs: &[],
        service: None,
        why: "linked into bpf-linker with LLVM 22",
    },
    Package {
        name: "libzstd-dev",
        set: Set::Base,
        programs: &[],
        service: None,
        why: "linked into bpf-linker with LLVM 22",
    },
    Package {
        name: "zlib1g-dev",
        set: Set::Base,
        programs: &[],
        service: None,
        why: "linked into bpf-linker with LLVM 22",
    },
    Package {
        name: "mount",
        set: Set::Base,
        programs: &["mount"],
        service: None,
        why: "setup mounts bpffs on /sys/fs/bpf when it is not mounted",
    },
    Package {
        name: "iproute2",
        set: Set::Base,
        programs: &["ip", "ss"],
        service: None,
        why: "the lab and fixtures create namespaces, veths, addresses and routes (ip); the bench \
              clears TIME_WAIT sockets between variants (ss -K)",
    },
    Package {
        name: "ethtool",
        set: Set::Base,
        programs: &["ethtool"],
        service: None,
        why: "the lab turns checksum and segmentation offloads off on its veths",
    },
    Package {
        name: "nftables",
        set: Set::Base,
        programs: &["nft"],
        service: None,
        why: "the lab's balancer namespace drops client packets that bypass lb (demo and netns \
              tests); the bench's nftables alternative",
    },
    Package {
        name: "procps",
        set: Set::Base,
        programs: &["sysctl"],
        service: None,
        why: "the lab enables forwarding in the balancer namespace",
    },
    Package {
        name: "postgresql-15",
        set: Set::Base,
        programs: &["initdb", "pg_ctl", "pg_basebackup", "pg_rewind", "psql"],
        service: Some("postgresql"),
        why: "the database tier: role checks tested against real PostgreSQL 15 \
              (lb-userspace/tests/postgres_probe.rs), the netns DB scenarios of `cargo xtask test` \
              and the database phase of `cargo xtask demo --db`, which runs setup's base set only; \
              the programs live in /usr/lib/postgresql/15/bin",
    },
    Package {
        name: "bird2",
        set: Set::Base,
        programs: &["bird", "birdc"],
        service: Some("bird"),
        why: "lbd announces its VIPs through BIRD 2 (docs/scale-out.md); the netns BGP scenarios \
              run a router and a balancer BIRD in their own namespaces. The package's own `bird` \
              service would run a routing daemon in the root namespace: policy-rc.d keeps it from \
              starting during the install and setup disables it afterwards",
    },
    Package {
        name: "haproxy",
        set: Set::Bench,
        programs: &["haproxy"],
        service: Some("haproxy"),
        why: "the bench's HAProxy alternative",
    },
    Package {
        name: "nginx-light",
        set: Set::Bench,
        programs: &["nginx"],
        service: Some("nginx"),
        why: "the bench's nginx alternative",
    },
    Package {
        name: "libnginx-mod-stream",
        set: Set::Bench,
        programs: &[],
        service: None,
        why: "nginx's TCP proxy (stream) module, packaged apart from nginx-light",
    },
    Package {
        name: "wrk",
        set: Set::Bench,
        programs: &["wrk"],
        service: None,
        why: "the bench's HTTP load generator",
    },
    Package {
        name: "conntrack",
        set: Set::Bench,
        programs: &["conntrack"],
        service: None,
        why: "the bench flushes the balancer's kernel conntrack table between variants",
    },
    Package {
        name: "bpftool",
        set: Set::Bench,
        programs: &["bpftool"],
        service: None,
        why: "the bench's memory section reads the names of lb's maps",
    },
];

/// The sets a command needs.
pub fn sets(bench: bool) -> &'static [Set] {
    if bench {
        &[Set::Base, Set::Bench]
    } else {
        &[Set::Base]
    }
}

const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BTF: &str = "/sys/kernel/btf/vmlinux";
const BPFFS: &str = "/sys/fs/bpf";

fn step(msg: &str) {
    println!("[setup] {msg}");
}

/// Installs what is missing for `sets`: checks root and the kernel, mounts bpffs, installs the
/// Debian packages (one `apt-get update` and one install for all sets), rust-src, bpf-linker.
pub fn run(sets: &[Set]) -> Result<()> {
    check_root()?;
    check_kernel()?;
    let pkgs: Vec<&Package> = PACKAGES.iter().filter(|p| sets.contains(&p.set)).collect();
    install_packages(&pkgs)?;
    ensure_rust_src()?;
    ensure_bpf_linker()?;
    step("ready");
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn check_root() -> Result<()> {
    if !is_root() {
        bail!(
            "lb's set-up, tests and demo need root (they install packages, load XDP programs and \
             create network namespaces); run them as root, e.g. `sudo -E cargo xtask test`"
        );
    }
    step("running as root");
    Ok(())
}

fn bpffs_mounted() -> bool {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (_, dir, fstype) = (f.next(), f.next(), f.next());
        dir == Some(BPFFS) && fstype == Some("bpf")
    })
}

fn check_kernel() -> Result<()> {
    if !Path::new(BTF).exists() {
        bail!(
            "this kernel has no BTF ({BTF} is missing); lb needs a kernel built with \
             CONFIG_BPF_SYSCALL and CONFIG_DEBUG_INFO_BTF (Linux >= 5.15)"
        );
    }
    if !bpffs_mounted() {
        step(&format!("mounting bpffs on {BPFFS}"));
        run_cmd(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS])).with_context(|| {
            format!("the kernel lacks BPF support: cannot mount bpffs on {BPFFS}")
        })?;
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

/// Where PostgreSQL 15's server programs live (Debian keeps them off the PATH); the lab starts
/// them by this path.
pub const POSTGRES_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// Where a program is found: the PATH, the sbin directories a non-login root shell may lack
/// on its PATH (the code starts programs by name; `Command` searches the PATH), and
/// [`POSTGRES_BIN_DIR`] (started by path).
fn program_found(program: &str) -> bool {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false);
    on_path
        || ["/usr/sbin", "/sbin", "/usr/bin", "/bin", POSTGRES_BIN_DIR]
            .iter()
            .any(|d| Path::new(d).join(program).is_file())
}

/// Installs the packages of `pkgs` that are not installed yet (nothing, not even `apt-get
/// update`, when all are), with no prompt and no service started or left enabled.
fn install_packages(pkgs: &[&Package]) -> Result<()> {
    let missing: Vec<&Package> = pkgs
        .iter()
        .copied()
        .filter(|p| !package_installed(p.name))
        .collect();
    let names = |ps: &[&Package]| ps.iter().map(|p| p.name).collect::<Vec<_>>().join(" ");
    if missing.is_empty() {
        step(&format!("Debian packages present: {}", names(pkgs)));
        return Ok(());
    }
    step(&format!("installing Debian packages: {}", names(&missing)));
    for p in &missing {
        step(&format!("  {}: {}", p.name, p.why));
    }
    let apt = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.args(args)
            .args(["-q", "-o", "DPkg::Lock::Timeout=300"])
            .env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    run_cmd(&mut apt(&["update"]))?;
    {
        let _no_start = NoServiceStart::new()?;
        run_cmd(
            apt(&[
                "install",
                "-y",
                "--no-install-recommends",
                // Keep a changed configuration file of an upgraded dependency, never ask.
                "-o",
                "Dpkg::Options::=--force-confdef",
                "-o",
                "Dpkg::Options::=--force-confold",
            ])
            .args(missing.iter().map(|p| p.name)),
        )?;
    }
    for p in &missing {
        if let Some(service) = p.service {
            disable_service(p.name, service);
        }
    }
    Ok(())
}

/// `/usr/sbin/policy-rc.d` answering 101 ("action forbidden") while it lives: the package
/// scripts then start no service (nginx-light's would listen on port 80 in the root
/// namespace). An existing policy-rc.d is left as it is (Debian's container images ship
/// one that forbids everything already).
struct NoServiceStart {
    /// The policy-rc.d this guard created (and removes), if it created one.
    created: Option<PathBuf>,
    /// The SIGINT and SIGTERM dispositions to restore (`SIG_ERR`: none changed).
    previous: [libc::sighandler_t; 2],
}

const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

impl NoServiceStart {
    fn new() -> Result<Self> {
        Self::at(Path::new(POLICY_RC_D))
    }

    fn at(path: &Path) -> Result<Self> {
        if path.exists() {
            return Ok(Self {
                created: None,
                previous: [libc::SIG_ERR; 2],
            });
        }
        use std::io::Write;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        f.write_all(
            b"#!/bin/sh\n# Written by lb's `cargo xtask setup` for the duration of its apt-get \
              install, so the packages it installs start no service.\n# setup removes it \
              afterwards; if it is still here, setup was killed: delete this file.\nexit 101\n",
        )
        .with_context(|| format!("writing {}", path.display()))?;
        // Executable whatever the umask: invoke-rc.d runs it only when it is.
        f.set_permissions(std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("making {} executable", path.display()))?;
        // Ctrl-C (or SIGTERM) reaches apt-get, which stops; this process must live on to
        // remove the file. A handler (unlike SIG_IGN) is not inherited across exec, so
        // apt-get keeps the default reaction.
        extern "C" fn keep_running(_: libc::c_int) {}
        let handler = keep_running as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SAFETY: installs a handler that does nothing, which is async-signal-safe.
        let previous = unsafe {
            [
                libc::signal(libc::SIGINT, handler),
                libc::signal(libc::SIGTERM, handler),
            ]
        };
        Ok(Self {
            created: Some(path.to_path_buf()),
            previous,
        })
    }
}

impl Drop for NoServiceStart {
    fn drop(&mut self) {
        if let Some(path) = &self.created {
            let _ = std::fs::remove_file(path);
        }
        for (sig, prev) in [libc::SIGINT, libc::SIGTERM].into_iter().zip(self.previous) {
            if prev != libc::SIG_ERR {
                // SAFETY: restores the disposition `signal` returned before.
                unsafe {
                    libc::signal(sig, prev);
                }
            }
        }
    }
}

/// Disables the system service a just installed package enabled (so it does not start at the
/// next boot either). Only with systemd's `systemctl`, when it exists; a failure is reported,
/// not fatal: the service is not in lb's way, the bench's instances run in their own namespaces.
fn disable_service(package: &str, service: &str) {
    if !program_found("systemctl") {
        return;
    }
    step(&format!(
        "{package} enables the system service {service}; disabling it (the bench starts its own \
         {service} in a namespace; `systemctl enable --now {service}` if you want it)"
    ));
    let mut cmd = Command::new("systemctl");
    cmd.arg("disable").arg("--quiet");
    if Path::new("/run/systemd/system").is_dir() {
        // systemd runs: also stop it, in case a policy-rc.d let it start.
        cmd.arg("--now");
    }
    if let Err(e) = run_cmd(cmd.arg(service)) {
        step(&format!("warning: {e}"));
    }
}

fn rust_src_installed() -> bool {
    Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| l.starts_with("rust-src"))
        })
        .unwrap_or(false)
}

fn ensure_rust_src() -> Result<()> {
    if rust_src_installed() {
        step("nightly toolchain with rust-src present");
        return Ok(());
    }
    step("adding the nightly toolchain's rust-src component");
    // `component add` only fetches the component; `toolchain install` would also try to
    // update an existing nightly, which needs more than the package registries.
    run_cmd(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
        .context(
            "the eBPF crate needs a nightly toolchain with rust-src (`rustup toolchain install \
             nightly --component rust-src`)",
        )
}

fn bpf_linker_works() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn ensure_bpf_linker() -> Result<()> {
    if bpf_linker_works() {
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

/// One line of `setup --check`.
struct Requirement {
    what: String,
    present: bool,
    /// What provides it, or what is wrong when it is missing.
    how: String,
}

/// `cargo xtask setup --check`: prints every requirement as `present` or `missing` in a table
/// and returns how many are missing. Installs, mounts and writes nothing.
pub fn check() -> usize {
    let mut reqs = vec![
        Requirement {
            what: "running as root".into(),
            present: is_root(),
            how: "run the xtask commands as root (sudo -E cargo xtask ...)".into(),
        },
        Requirement {
            what: format!("kernel BTF ({BTF})"),
            present: Path::new(BTF).exists(),
            how: "a kernel built with CONFIG_DEBUG_INFO_BTF (Linux >= 5.15)".into(),
        },
        Requirement {
            what: format!("bpffs mounted on {BPFFS}"),
            present: bpffs_mounted(),
            how: Set::Base.installed_by().into(),
        },
    ];
    for p in PACKAGES {
        let installed = package_installed(p.name);
        let absent: Vec<&str> = p
            .programs
            .iter()
            .copied()
            .filter(|prog| !program_found(prog))
            .collect();
        let how = if installed && !absent.is_empty() {
            format!(
                "dpkg lists {} as installed but {} is not found",
                p.name,
                absent.join(", ")
            )
        } else {
            p.set.installed_by().to_string()
        };
        let provides = if p.programs.is_empty() {
            String::new()
        } else {
            format!(" ({})", p.programs.join(", "))
        };
        reqs.push(Requirement {
            what: format!("Debian package {}{provides}", p.name),
            present: installed && absent.is_empty(),
            how,
        });
    }
    reqs.push(Requirement {
        what: "nightly toolchain with rust-src".into(),
        present: rust_src_installed(),
        how: Set::Base.installed_by().into(),
    });
    reqs.push(Requirement {
        what: "bpf-linker".into(),
        present: bpf_linker_works(),
        how: Set::Base.installed_by().into(),
    });
    print!("{}", check_table(&reqs));
    reqs.iter().filter(|r| !r.present).count()
}

/// The aligned table of `setup --check`.
fn check_table(reqs: &[Requirement]) -> String {
    let width = reqs
        .iter()
        .map(|r| r.what.len())
        .chain(std::iter::once("REQUIREMENT".len()))
        .max()
        .unwrap_or(0);
    let mut out = format!(
        "{:width$}  {:7}  {}\n",
        "REQUIREMENT", "STATUS", "PROVIDED BY"
    );
    for r in reqs {
        let status = if r.present { "present" } else { "missing" };
        out.push_str(&format!("{:width$}  {status:7}  {}\n", r.what, r.how));
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_package_is_listed_once_and_base_comes_first() {
        let mut names: Vec<&str> = PACKAGES.iter().map(|p| p.name).collect();
        let first_bench = PACKAGES.iter().position(|p| p.set == Set::Bench).unwrap();
        assert!(PACKAGES[first_bench..].iter().all(|p| p.set == Set::Bench));
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "a package is listed twice");
    }

    /// The package table of docs/operations.md, generated from [`PACKAGES`].
    fn package_table_markdown() -> String {
        let mut t = String::from(
            "| Debian package | set | programs lb runs from it | why |\n|---|---|---|---|\n",
        );
        for p in PACKAGES {
            let set = match p.set {
                Set::Base => "base",
                Set::Bench => "bench",
            };
            let mut programs: Vec<String> = p.programs.iter().map(|x| format!("`{x}`")).collect();
            if programs.is_empty() {
                programs.push("none (a library)".into());
            }
            t.push_str(&format!(
                "| `{}` | {set} | {} | {} |\n",
                p.name,
                programs.join(", "),
                p.why
            ));
        }
        t
    }

    #[test]
    fn operations_doc_lists_every_package() {
        let path = crate::build::root().join("docs/operations.md");
        let doc = std::fs::read_to_string(&path).unwrap();
        let table = package_table_markdown();
        assert!(
            doc.contains(&table),
            "{} does not hold setup::PACKAGES as a table; replace its package table with:\n\n{table}",
            path.display()
        );
    }

    #[test]
    fn a_package_that_does_not_exist_is_not_installed() {
        // What `--check` relies on to say `missing` (and, on Debian, `present`).
        assert!(!package_installed("lb-no-such-package-frobnicate"));
        if program_found("dpkg-query") {
            assert!(package_installed("dpkg"));
        }
    }

    #[test]
    fn policy_rc_d_forbids_starts_while_it_lives_and_an_existing_one_is_kept() {
        let dir = std::env::temp_dir().join(format!("lb-xtask-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("policy-rc.d");
        {
            let _guard = NoServiceStart::at(&path).unwrap();
            // invoke-rc.d and deb-systemd-invoke run it; 101 means "forbidden".
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o111, 0o111, "policy-rc.d must be executable");
            let status = Command::new("sh")
                .arg(&path)
                .args(["nginx", "start"])
                .status()
                .unwrap();
            assert_eq!(status.code(), Some(101));
        }
        assert!(
            !path.exists(),
            "the guard removes the policy-rc.d it created"
        );
        std::fs::write(&path, "#!/bin/sh\nexit 0\n").unwrap();
        drop(NoServiceStart::at(&path).unwrap());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "#!/bin/sh\nexit 0\n",
            "an existing policy-rc.d is neither replaced nor removed"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn check_table_is_aligned_and_says_present_or_missing() {
        let reqs = [
            Requirement {
                what: "short".into(),
                present: true,
                how: "x".into(),
            },
            Requirement {
                what: "a much longer requirement".into(),
                present: false,
                how: "cargo xtask setup".into(),
            },
        ];
        let t = check_table(&reqs);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        let col = lines[0].find("STATUS").unwrap();
        assert_eq!(lines[1].find("present"), Some(col), "{t}");
        assert_eq!(lines[2].find("missing"), Some(col), "{t}");
        assert!(lines[2].ends_with("cargo xtask setup"));
    }
}
