//! BIRD 2 as lbd drives it: the include file (one static protocol, a /32 device route per
//! announced VIP on the dead-man device), written atomically, and `birdc configure`.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

/// How long one `birdc configure` may take before it counts as failed.
pub const BIRDC_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of one announcement attempt.
#[derive(Debug, thiserror::Error)]
pub enum BirdError {
    /// The include file could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The include file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `birdc` could not be started.
    #[error("running {program}: {source}")]
    Spawn {
        /// The birdc program.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `birdc` did not finish in time.
    #[error("`birdc configure` did not answer within {0:?}")]
    Timeout(Duration),
    /// BIRD refused the configuration, or birdc could not reach it.
    #[error("`birdc configure` failed ({status}): {output}")]
    Refused {
        /// birdc's exit status.
        status: String,
        /// What birdc printed (both streams, trimmed).
        output: String,
    },
}

/// The include file announcing `vips` (sorted and deduplicated here) through static protocol
/// `protocol` as device routes on `device` (`via "DEVICE"`). With no VIP the protocol stays,
/// with no route: BIRD then withdraws what it announced and the BGP export filter naming the
/// protocol stays valid.
///
/// A device route is bound to the dead-man device itself: when the device goes, BIRD
/// withdraws the routes, whatever other interface might cover an address. A next hop given
/// as an address (`via 169.254.77.2`) could be resolved through another interface holding
/// that subnet, and BIRD would keep announcing. BGP sets the next hop to the session's own
/// address on export (eBGP, or iBGP with `next hop self`), so the router sees no difference.
/// `device` is a validated interface name (no quote or backslash).
pub fn include_text(protocol: &str, device: &str, vips: &[Ipv4Addr]) -> String {
    let mut vips = vips.to_vec();
    vips.sort();
    vips.dedup();
    let mut s = String::from(
        "# Written by lbd (lb): the VIPs this node announces. lbd rewrites this file; do not edit.\n",
    );
    s.push_str(&format!("protocol static {protocol} {{\n  ipv4;\n"));
    for v in vips {
        s.push_str(&format!("  route {v}/32 via \"{device}\";\n"));
    }
    s.push_str("}\n");
    s
}

/// Mode of the include file: BIRD runs as its own user (`bird` on Debian) and must read it.
pub const INCLUDE_MODE: u32 = 0o644;

/// Writes `text` to `path` atomically with mode [`INCLUDE_MODE`] (`config::write_atomically`:
/// BIRD never reads half a file).
pub fn write_atomically(path: &Path, text: &str) -> Result<(), BirdError> {
    crate::config::write_atomically(path, text, false, INCLUDE_MODE).map_err(|source| {
        BirdError::Write {
            path: path.display().to_string(),
            source,
        }
    })
}

/// Runs `birdc -s SOCKET configure`; success is exit status 0 with "Reconfigur..." in the
/// answer (BIRD prints the parse error and birdc exits 1 when the file is refused).
pub async fn configure(birdc: &Path, socket: &Path) -> Result<String, BirdError> {
    let child = tokio::process::Command::new(birdc)
        .arg("-s")
        .arg(socket)
        .arg("configure")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(BIRDC_TIMEOUT, child)
        .await
        .map_err(|_| BirdError::Timeout(BIRDC_TIMEOUT))?
        .map_err(|source| BirdError::Spawn {
            program: birdc.display().to_string(),
            source,
        })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = text
        .lines()
        .filter(|l| !l.starts_with("BIRD ") || !l.ends_with("ready."))
        .collect::<Vec<_>>()
        .join("; ");
    if out.status.success() && text.contains("Reconfigur") {
        Ok(text)
    } else {
        Err(BirdError::Refused {
            status: out.status.to_string(),
            output: text,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn include_file_golden() {
        let vips = [
            Ipv4Addr::new(192, 0, 2, 11),
            Ipv4Addr::new(192, 0, 2, 10),
            Ipv4Addr::new(192, 0, 2, 11),
        ];
        assert_eq!(
            include_text("vips", "lbvip0", &vips),
            "# Written by lbd (lb): the VIPs this node announces. lbd rewrites this file; do not edit.\n\
             protocol static vips {\n  ipv4;\n  route 192.0.2.10/32 via \"lbvip0\";\n  route 192.0.2.11/32 via \"lbvip0\";\n}\n"
        );
        assert_eq!(
            include_text("lb_vips", "lb-vip.1", &[]),
            "# Written by lbd (lb): the VIPs this node announces. lbd rewrites this file; do not edit.\n\
             protocol static lb_vips {\n  ipv4;\n}\n"
        );
    }

    #[test]
    fn write_replaces_the_file_and_leaves_no_temporary() {
        let dir = crate::testutil::TempDir::new("bird-include");
        let path = dir.path().join("vips.conf");
        write_atomically(&path, "one\n").unwrap();
        write_atomically(&path, "two\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two\n");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("vips.conf")]);
        let err = write_atomically(&dir.path().join("no/such/dir/f"), "x").unwrap_err();
        assert!(err.to_string().contains("no/such/dir/f"), "{err}");
    }

    #[tokio::test]
    async fn a_failing_birdc_is_an_error_with_its_output() {
        // `false` exits 1 like birdc does when BIRD refuses the file or is not running.
        let err = configure(Path::new("false"), Path::new("/nonexistent.ctl"))
            .await
            .unwrap_err();
        assert!(matches!(err, BirdError::Refused { .. }), "{err}");
        let err = configure(Path::new("/nonexistent/birdc"), Path::new("/x"))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("running /nonexistent/birdc"),
            "{err}"
        );
    }
}
