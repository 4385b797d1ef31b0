//! Kernel settings lb's interfaces need for the packets the XDP program passes up already
//! rewritten (`PASS_FIB_NO_NEIGH`, `PASS_NO_TX_PORT`): their source is a SNAT address or a
//! VIP, and when those are assigned to the host the kernel drops them as martians unless
//! `accept_local` is on for the ingress interface; strict reverse-path filtering drops them in
//! every set-up; `bpf_fib_lookup` and the kernel's forwarding both need `forwarding` on the
//! ingress interface (docs/architecture.md, "Pass-up requirements").
//!
//! [`prepare_pass_up`] sets what is scoped to lb's own interfaces and reports what it cannot
//! fix without changing the whole host (`conf/all/rp_filter = 1`).

use std::io;
use std::path::{Path, PathBuf};

/// What [`prepare_pass_up`] did or found, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// `key` (relative to the sysctl root, e.g. `net/ipv4/conf/pub0/accept_local`) was changed.
    Set {
        key: String,
        from: String,
        to: String,
    },
    /// `key` has a value that breaks the pass-up path and lbd leaves it alone.
    Warn {
        key: String,
        value: String,
        reason: &'static str,
    },
}

fn conf(root: &Path, iface: &str, name: &str) -> PathBuf {
    root.join("net/ipv4/conf").join(iface).join(name)
}

fn key_of(root: &Path, p: &Path) -> String {
    p.strip_prefix(root).unwrap_or(p).display().to_string()
}

fn read(p: &Path) -> io::Result<String> {
    std::fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .map_err(|e| io::Error::new(e.kind(), format!("reading {}: {e}", p.display())))
}

fn set(root: &Path, p: &Path, want: &str, out: &mut Vec<Finding>) -> io::Result<()> {
    let from = read(p)?;
    if from != want {
        std::fs::write(p, want)
            .map_err(|e| io::Error::new(e.kind(), format!("writing {}: {e}", p.display())))?;
        out.push(Finding::Set {
            key: key_of(root, p),
            from,
            to: want.to_string(),
        });
    }
    Ok(())
}

/// Makes the pass-up path work on `ifaces` under the sysctl tree `root` (`/proc/sys`):
/// `forwarding = 1` and `accept_local = 1` on each interface, and where reverse-path filtering
/// is strict (`max(all, iface) = 1`) the interface's `rp_filter` set to 0; a strict
/// `conf/all/rp_filter` is reported, not changed. Loose filtering (2) is kept: it passes as
/// long as the VIPs and SNAT addresses are local or routed on the balancer.
pub fn prepare_pass_up(root: &Path, ifaces: &[String]) -> io::Result<Vec<Finding>> {
    let mut out = Vec::new();
    let all_rp_path = conf(root, "all", "rp_filter");
    let all_rp = read(&all_rp_path)?;
    for iface in ifaces {
        set(root, &conf(root, iface, "forwarding"), "1", &mut out)?;
        set(root, &conf(root, iface, "accept_local"), "1", &mut out)?;
        let rp_path = conf(root, iface, "rp_filter");
        if read(&rp_path)? == "1" {
            set(root, &rp_path, "0", &mut out)?;
        }
    }
    if all_rp == "1" {
        out.push(Finding::Warn {
            key: key_of(root, &all_rp_path),
            value: all_rp,
            reason: "strict reverse-path filtering host-wide drops every packet lb passes up \
                     rewritten (first packets to a backend whose neighbour is unresolved); set \
                     it to 0 or 2",
        });
    }
    Ok(out)
}

/// [`prepare_pass_up`] on `/proc/sys`, logging each change and warning.
pub fn prepare_pass_up_logged(ifaces: &[String]) -> io::Result<()> {
    for f in prepare_pass_up(Path::new("/proc/sys"), ifaces)? {
        match f {
            Finding::Set { key, from, to } => {
                tracing::info!(sysctl = %key, from = %from, to = %to, "set for packets passed up rewritten");
            }
            Finding::Warn { key, value, reason } => {
                tracing::warn!(sysctl = %key, value = %value, reason, "pass-up path will drop");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(all_rp: &str, ifs: &[(&str, &str, &str, &str)]) -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let root = std::env::temp_dir().join(format!(
            "lb-sysctl-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let all = root.join("net/ipv4/conf/all");
        std::fs::create_dir_all(&all).unwrap();
        std::fs::write(all.join("rp_filter"), format!("{all_rp}\n")).unwrap();
        for (name, fwd, local, rp) in ifs {
            let d = root.join("net/ipv4/conf").join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("forwarding"), format!("{fwd}\n")).unwrap();
            std::fs::write(d.join("accept_local"), format!("{local}\n")).unwrap();
            std::fs::write(d.join("rp_filter"), format!("{rp}\n")).unwrap();
        }
        root
    }

    fn value(root: &Path, iface: &str, name: &str) -> String {
        read(&conf(root, iface, name)).unwrap()
    }

    #[test]
    fn sets_forwarding_accept_local_and_relaxes_strict_rp_filter() {
        let root = tree("0", &[("pub0", "0", "0", "1"), ("bk1", "1", "1", "2")]);
        let got = prepare_pass_up(&root, &["pub0".into(), "bk1".into()]).unwrap();
        assert_eq!(
            got,
            vec![
                Finding::Set {
                    key: "net/ipv4/conf/pub0/forwarding".into(),
                    from: "0".into(),
                    to: "1".into()
                },
                Finding::Set {
                    key: "net/ipv4/conf/pub0/accept_local".into(),
                    from: "0".into(),
                    to: "1".into()
                },
                Finding::Set {
                    key: "net/ipv4/conf/pub0/rp_filter".into(),
                    from: "1".into(),
                    to: "0".into()
                },
            ]
        );
        assert_eq!(value(&root, "pub0", "accept_local"), "1");
        assert_eq!(value(&root, "pub0", "rp_filter"), "0");
        // Loose filtering is kept.
        assert_eq!(value(&root, "bk1", "rp_filter"), "2");
        // A second run changes nothing.
        assert!(prepare_pass_up(&root, &["pub0".into(), "bk1".into()])
            .unwrap()
            .is_empty());
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn strict_all_is_reported_not_changed() {
        let root = tree("1", &[("pub0", "1", "1", "0")]);
        let got = prepare_pass_up(&root, &["pub0".into()]).unwrap();
        assert!(
            matches!(&got[..], [Finding::Warn { key, value, .. }]
                if key == "net/ipv4/conf/all/rp_filter" && value == "1"),
            "{got:?}"
        );
        assert_eq!(value(&root, "all", "rp_filter"), "1");
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn missing_interface_names_the_file() {
        let root = tree("0", &[]);
        let e = prepare_pass_up(&root, &["nope0".into()]).unwrap_err();
        assert!(e.to_string().contains("nope0/forwarding"), "{e}");
        std::fs::remove_dir_all(root).unwrap();
    }
}
