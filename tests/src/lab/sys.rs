//! Commands, network namespaces and spawned processes, each as a guard that cleans up on drop
//! (also while unwinding from a panic).

use super::{LabError, Result};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Runs `cmd`, failing with its command line and stderr when it exits non-zero; returns stdout.
pub fn run(cmd: &mut Command) -> Result<String> {
    let line = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(LabError::io(format!("cannot start {line}")))?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd: line,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` feeding `input` on its stdin; fails like [`run`].
pub fn run_with_input(cmd: &mut Command, input: &str) -> Result<String> {
    let line = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(LabError::io(format!("cannot start {line}")))?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input.as_bytes())
        .map_err(LabError::io(format!("writing stdin of {line}")))?;
    let out = child
        .wait_with_output()
        .map_err(LabError::io(format!("waiting for {line}")))?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd: line,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip <args>` (callers always pass `-n NS` so nothing happens in the root namespace).
pub fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args))
}

/// A command that runs `program args` inside namespace `ns` (`nsenter --net`, which execs the
/// program, so the spawned PID is the program's own). Not `ip netns exec`: it remounts `/sys`
/// in a private mount namespace, which hides bpffs at `/sys/fs/bpf` from the program (lbd
/// could not pin its maps).
pub fn ns_command(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{ns}"))
        .arg("--")
        .arg(program);
    cmd
}

/// Runs `program args` inside `ns` and returns its stdout.
pub fn ns_run(ns: &str, program: &str, args: &[&str]) -> Result<String> {
    run(ns_command(ns, program).args(args))
}

/// Fails with a clear message unless the process runs as root with the lab's tools present.
pub fn require_root_and_tools() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(LabError::Unavailable(
            "the network-namespace lab needs root (it creates namespaces and loads XDP); run \
             `sudo -E cargo xtask test`"
                .into(),
        ));
    }
    for tool in ["ip", "ethtool", "nft", "sysctl"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).exists()))
            .unwrap_or(false)
            || ["/usr/sbin", "/sbin", "/usr/bin"]
                .iter()
                .any(|d| Path::new(d).join(tool).exists());
        if !found {
            return Err(LabError::Unavailable(format!(
                "`{tool}` is missing; run `cargo xtask setup` (it installs iproute2, ethtool, \
                 nftables, procps)"
            )));
        }
    }
    Ok(())
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name prefix unique to this process and call: `lbt<pid % 10000>x<counter>`.
///
/// With roles such as `-lb` or `-b12` appended it stays within 15 characters.
pub fn unique_prefix() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("lbt{}x{n}", std::process::id() % 10_000)
}

/// A network namespace, deleted on drop (with every interface in it).
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates namespace `name` with its loopback up; a stale one of the same name is
    /// replaced.
    pub fn create(name: &str) -> Result<Netns> {
        if Path::new("/run/netns").join(name).exists() {
            let _ = ip(&["netns", "del", name]);
        }
        ip(&["netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
        };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, the handle `setns` takes.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("lab: cannot delete namespace {}: {e}", self.name);
        }
    }
}

/// A spawned process, killed (SIGKILL, by PID) and reaped on drop.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    what: String,
    log: Option<PathBuf>,
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr appended to `log` (or discarded when `None`).
    pub fn spawn(cmd: &mut Command, what: &str, log: Option<&Path>) -> Result<Proc> {
        let (out, err) = match log {
            Some(path) => {
                let f = File::options()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(LabError::io(format!("opening log {}", path.display())))?;
                let f2 = f
                    .try_clone()
                    .map_err(LabError::io(format!("cloning log {}", path.display())))?;
                (Stdio::from(f), Stdio::from(f2))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(LabError::io(format!("cannot start {what}: {cmd:?}")))?;
        Ok(Proc {
            child,
            what: what.to_string(),
            log: log.map(Path::to_path_buf),
        })
    }

    /// Wraps an already spawned child.
    pub fn from_child(child: Child, what: &str, log: Option<PathBuf>) -> Proc {
        Proc {
            child,
            what: what.to_string(),
            log,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Mutable access to the child (for its pipes).
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Whether the process has exited (reaping it if so).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends `signal` to the process (by PID).
    pub fn signal(&mut self, signal: libc::c_int) {
        if self.exited().is_none() {
            // SAFETY: kill with the pid of our own unreaped child.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, signal);
            }
        }
    }

    /// Sends `signal` and waits up to `timeout` for the exit; SIGKILL after that.
    pub fn stop(&mut self, signal: libc::c_int, timeout: Duration) -> std::process::ExitStatus {
        self.signal(signal);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(st) = self.exited() {
                return st;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "lab: {} (pid {}) ignored signal {signal} for {timeout:?}; killing it",
            self.what,
            self.pid()
        );
        self.signal(libc::SIGKILL);
        self.child.wait().expect("waiting for a killed child")
    }

    /// The last `n` lines of the process's log, if it has one.
    pub fn log_tail(&self, n: usize) -> String {
        self.log
            .as_deref()
            .map(|p| log_tail(p, n))
            .unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_none() {
            self.signal(libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// The last `n` lines of the file at `path` (empty if unreadable).
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A directory removed (recursively) on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `/tmp/<name>` (replacing a stale one).
    pub fn create(name: &str) -> Result<TempDir> {
        let path = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .map_err(LabError::io(format!("creating {}", path.display())))?;
        Ok(TempDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Polls `f` every `step` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    step: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(LabError::Timeout(format!("{what} (waited {timeout:?})")));
        }
        std::thread::sleep(step);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_unique_and_short() {
        let a = unique_prefix();
        let b = unique_prefix();
        assert_ne!(a, b);
        assert!(format!("{a}-b12").len() <= 15, "{a}");
    }

    #[test]
    fn failing_command_names_itself() {
        let err = run(Command::new("sh").args(["-c", "echo oops >&2; exit 3"])).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("oops") && text.contains("sh"), "{text}");
    }
}
