//! `lbctl backend-setup --dsr VIP`: the commands a backend of a DSR service needs
//! (docs/scale-out.md, "DSR"), and the command's arguments ([`BackendSetupArgs`]). The script
//! comes from pure functions, so the netns lab can run exactly what an operator is told to
//! run; only [`lbd_dsr_sources`] talks to lbd (the outer sources, when not given).
//!
//! Why each command: lb sends the client's packet inside an IPIP header addressed to the
//! backend; the `tunl0` device decapsulates it; the inner packet is addressed to the VIP, so the
//! VIP must be a local address (on `lo`, a /32); the inner source is the client, which `tunl0`
//! does not route back to, so reverse-path filtering must be off on `tunl0` and in `all` (the
//! kernel uses the larger of the two); and the backend must never answer ARP for the VIP (it
//! would steal the VIP from the balancer on a shared segment): `arp_ignore=1` answers only for
//! addresses on the receiving interface, `arp_announce=2` never uses the VIP as the source of
//! its own ARP requests.
//!
//! Without the `ipip` module (`CONFIG_NET_IPIP` unset: no `tunl0`, `modprobe ipip` fails),
//! lb's own XDP decapsulator does `tunl0`'s job ([`Decap::Xdp`], [`dsr_xdp_commands`]):
//! `lbctl decap attach IFACE` puts `lb_decap` on the interface the encapsulated packets
//! arrive on and pins it, accepting IPIP only from lb's nodes (`--allow-source`, their
//! `dsr.source`) and only to the VIPs (`--vip`). The inner packet then arrives on that
//! interface with the client's source, and the backend's route to the client leaves through
//! that same interface, so reverse-path filtering passes it: the XDP variant leaves
//! `rp_filter` as it is (disabling it would only widen what a spoofed packet can do).

use crate::api::client::Client;
use crate::api::proto::Request;
use crate::dataplane::decap::Ipv4Prefix;
use crate::dataplane::XdpMode;
use anyhow::{anyhow, bail, Context as _, Result};
use clap::Args;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// How a DSR backend strips lb's IPIP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Decap {
    /// The kernel's `tunl0` device (the `ipip` module).
    #[default]
    Ipip,
    /// lb's XDP program `lb_decap` on the receiving interface (`lbctl decap attach`): no
    /// kernel module needed.
    Xdp,
}

/// Where and how `lbctl decap attach` puts the XDP decapsulator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdpDecap {
    /// The interface the encapsulated packets arrive on.
    pub iface: String,
    /// `--xdp-mode` to pass (`None`: the default, auto).
    pub mode: Option<XdpMode>,
    /// `--pin-root` to pass (`None`: the default).
    pub pin_root: Option<PathBuf>,
    /// How to invoke lbctl on the backend (`lbctl` for the printed script).
    pub lbctl: String,
    /// The lb nodes' outer sources (`--allow-source`); empty only with `any_source`.
    pub sources: Vec<Ipv4Prefix>,
    /// `--allow-any-source`: accept IPIP from any source (the script warns).
    pub any_source: bool,
}

/// Checks `--iface` as the kernel names interfaces (and as `announce.device` is checked):
/// 1 to 15 characters, no '/', ':', '%' or whitespace, not `.` or `..`. The name goes into
/// commands and comment lines of the script, so this also keeps it from breaking out of them.
pub fn validate_iface(iface: &str) -> Result<(), String> {
    if iface.is_empty()
        || iface.len() > 15
        || iface.contains(['/', ':', '%'])
        || iface.chars().any(|c| c.is_whitespace() || c.is_control())
        || iface == "."
        || iface == ".."
    {
        return Err(format!(
            "--iface: {iface:?} is not a valid interface name (1 to 15 characters, no '/', ':', '%' or whitespace)"
        ));
    }
    Ok(())
}

/// `s` as one shell word: unchanged when it holds only characters the shell never
/// interprets, else in single quotes (a `'` inside as `'\''`).
pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./=:,+@".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The commands, in order, for a backend of `vips` that decapsulates with `lb_decap` on
/// `decap.iface`. Idempotent like [`dsr_commands`] (`lbctl decap attach` replaces an earlier
/// attachment, its VIP and source lists included).
pub fn dsr_xdp_commands(vips: &[Ipv4Addr], decap: &XdpDecap) -> Vec<String> {
    let mut attach = format!("{} decap attach {}", decap.lbctl, decap.iface);
    for vip in vips {
        attach.push_str(&format!(" --vip {vip}"));
    }
    for s in &decap.sources {
        attach.push_str(&format!(" --allow-source {s}"));
    }
    if decap.any_source {
        attach.push_str(" --allow-any-source");
    }
    match decap.mode {
        Some(XdpMode::Native) => attach.push_str(" --xdp-mode native"),
        Some(XdpMode::Generic) => attach.push_str(" --xdp-mode generic"),
        Some(XdpMode::Auto) | None => {}
    }
    if let Some(root) = &decap.pin_root {
        attach.push_str(&format!(
            " --pin-root {}",
            shell_quote(&root.display().to_string())
        ));
    }
    let mut c: Vec<String> = vips
        .iter()
        .map(|vip| format!("ip addr replace {vip}/32 dev lo"))
        .collect();
    c.extend([
        "sysctl -w net.ipv4.conf.all.arp_ignore=1".to_string(),
        "sysctl -w net.ipv4.conf.all.arp_announce=2".to_string(),
        attach,
    ]);
    c
}

/// The commands, in order, each one line for `sh -c`. Idempotent: running them twice is
/// harmless (`ip addr replace`, `sysctl -w`).
pub fn dsr_commands(vips: &[Ipv4Addr]) -> Vec<String> {
    let mut c = vec![
        "modprobe ipip".to_string(),
        "ip link set dev tunl0 up".to_string(),
    ];
    c.extend(
        vips.iter()
            .map(|vip| format!("ip addr replace {vip}/32 dev lo")),
    );
    c.extend([
        "sysctl -w net.ipv4.conf.tunl0.rp_filter=0".to_string(),
        "sysctl -w net.ipv4.conf.all.rp_filter=0".to_string(),
        "sysctl -w net.ipv4.conf.all.arp_ignore=1".to_string(),
        "sysctl -w net.ipv4.conf.all.arp_announce=2".to_string(),
    ]);
    c
}

/// `A, B and C` of the VIPs, for the scripts' comments.
fn vip_list(vips: &[Ipv4Addr]) -> String {
    let v: Vec<String> = vips.iter().map(ToString::to_string).collect();
    v.join(", ")
}

/// `--dsr A --dsr B` of the VIPs, for the scripts' comments.
fn dsr_args(vips: &[Ipv4Addr]) -> String {
    let v: Vec<String> = vips.iter().map(|v| format!("--dsr {v}")).collect();
    v.join(" ")
}

/// The text `lbctl backend-setup --dsr VIP` prints: a shell script of [`dsr_commands`] with
/// comments, including the MSS advice (lb adds 20 bytes toward the backend).
pub fn dsr_script(vips: &[Ipv4Addr]) -> String {
    let (list, args) = (vip_list(vips), dsr_args(vips));
    let mut s = format!(
        "#!/bin/sh\n\
         # Backend setup for the DSR service(s) on VIP {list} (lb, docs/scale-out.md \"DSR\").\n\
         # Run as root on every backend. lb encapsulates the client's packets in IPIP; the\n\
         # backend decapsulates them on tunl0, owns the VIP on lo and answers the client directly.\n\
         # Without the ipip module (CONFIG_NET_IPIP unset: modprobe ipip fails, no tunl0), use\n\
         # lb's XDP decapsulator instead: lbctl backend-setup {args} --decap xdp --iface IFACE\n\
         set -e\n"
    );
    for c in dsr_commands(vips) {
        s.push_str(&c);
        s.push('\n');
    }
    s.push_str(MTU_ADVICE);
    s
}

/// The text `lbctl backend-setup --dsr VIP --decap xdp --iface IFACE` prints: a shell script
/// of [`dsr_xdp_commands`] with comments.
pub fn dsr_xdp_script(vips: &[Ipv4Addr], decap: &XdpDecap) -> String {
    let iface = &decap.iface;
    let list = vip_list(vips);
    let mut s = format!(
        "#!/bin/sh\n\
         # Backend setup for the DSR service(s) on VIP {list} (lb, docs/scale-out.md \"DSR\").\n\
         # Run as root on every backend. lb encapsulates the client's packets in IPIP; lb's XDP\n\
         # program lb_decap strips the outer header on {iface} (no ipip module needed); the\n\
         # backend owns the VIP on lo and answers the client directly.\n\
         # lb_decap accepts IPIP only from lb's nodes (--allow-source) carrying packets to the\n\
         # VIPs (--vip); it drops the rest (counted). Each run replaces both lists: give every\n\
         # VIP of this backend (--dsr repeated) and every lb node's dsr.source (--source).\n\
         # rp_filter is left as it is: the client's packet arrives on {iface} and the route back\n\
         # to the clients must leave through {iface} too (with strict rp_filter; loose, 2, if not).\n\
         # The attachment is pinned (it outlives lbctl) but not kept across a reboot or the\n\
         # interface being recreated: run this again then. `lbctl decap stats {iface}` shows\n\
         # its counters, `lbctl decap detach {iface}` removes it.\n"
    );
    if decap.any_source {
        s.push_str(
            "# WARNING: --allow-any-source: lb_decap decapsulates IPIP from ANY source, so any host\n\
             # that reaches this backend can inject packets with spoofed sources to the VIPs.\n\
             echo 'warning: lb_decap accepts IPIP from any source (--allow-any-source)' >&2\n",
        );
    }
    s.push_str("set -e\n");
    for c in dsr_xdp_commands(vips, decap) {
        s.push_str(&c);
        s.push('\n');
    }
    s.push_str(MTU_ADVICE);
    s
}

/// The MTU and listening advice at the end of both scripts.
const MTU_ADVICE: &str =
    "# MTU: the balancer adds 20 bytes toward this backend. Advertise an MSS that leaves room\n\
         # for them, e.g. on the route to the clients (MTU 1500: 1500 - 20 - 40 = 1440):\n\
         #   ip route change default via <gateway> advmss 1440\n\
         # Larger client segments are answered by lb with ICMP fragmentation needed.\n\
         # The service's backends must listen on the VIP's port on all addresses, or on both the\n\
         # VIP and the backend's own address (lb's health checks connect to the latter).\n";

/// Arguments of `lbctl backend-setup`.
#[derive(Debug, Args)]
pub struct BackendSetupArgs {
    /// A backend of the DSR service(s) on this VIP (`forwarding: dsr`; repeatable, one script
    /// for every VIP of the backend): IPIP decapsulation, the VIP on lo, arp_ignore=1 and
    /// arp_announce=2 (and rp_filter off on tunl0 with `--decap ipip`).
    #[arg(long, value_name = "VIP", required = true)]
    pub dsr: Vec<Ipv4Addr>,
    /// How the backend strips the IPIP header: the kernel's tunl0 (ipip module) or lb's XDP
    /// program (`lbctl decap attach`; for kernels without the ipip module).
    #[arg(long, value_enum, default_value_t = Decap::Ipip)]
    pub decap: Decap,
    /// With `--decap xdp`: the backend interface lb's packets arrive on.
    #[arg(long, value_name = "IFACE")]
    pub iface: Option<String>,
    /// With `--decap xdp`: the XDP mode to attach in (default auto).
    #[arg(long, value_enum)]
    pub xdp_mode: Option<XdpMode>,
    /// With `--decap xdp`: the bpffs directory for the pins (default /sys/fs/bpf/lb-decap).
    #[arg(long, value_name = "DIR")]
    pub pin_root: Option<PathBuf>,
    /// With `--decap xdp`: an lb node's outer (IPIP) source, ADDR or ADDR/LEN (repeatable:
    /// every node's `dsr.source`); lb_decap accepts IPIP only from these. Default: the running
    /// lbd's (`--socket`) `dsr.source`/`dsr_source` of the services on the VIPs.
    #[arg(long = "source", value_name = "CIDR")]
    pub sources: Vec<Ipv4Prefix>,
    /// With `--decap xdp`: accept IPIP from any source (not recommended; the script warns).
    #[arg(long, conflicts_with = "sources")]
    pub allow_any_source: bool,
}

/// The script `lbctl backend-setup` prints for `args`. `lbd_sources` is asked for the outer
/// sources when `--decap xdp` has neither `--source` nor `--allow-any-source` (`lbctl` asks
/// the running lbd: [`lbd_dsr_sources`]).
pub fn backend_setup_script(
    args: &BackendSetupArgs,
    lbd_sources: impl FnOnce(&[Ipv4Addr]) -> Result<Vec<Ipv4Prefix>>,
) -> Result<String> {
    match args.decap {
        Decap::Ipip => {
            if args.iface.is_some()
                || args.xdp_mode.is_some()
                || args.pin_root.is_some()
                || !args.sources.is_empty()
                || args.allow_any_source
            {
                bail!("--iface, --xdp-mode, --pin-root, --source and --allow-any-source apply only to --decap xdp");
            }
            Ok(dsr_script(&args.dsr))
        }
        Decap::Xdp => {
            let Some(iface) = args.iface.clone() else {
                bail!("--iface: required with --decap xdp (the interface lb's packets arrive on)");
            };
            validate_iface(&iface).map_err(|e| anyhow!(e))?;
            let sources = if args.sources.is_empty() && !args.allow_any_source {
                lbd_sources(&args.dsr).context(
                    "--source: required with --decap xdp unless lbd runs here: the address(es) lb's nodes send IPIP from (their dsr.source); lb_decap accepts IPIP only from them",
                )?
            } else {
                args.sources.clone()
            };
            let decap = XdpDecap {
                iface,
                mode: args.xdp_mode,
                pin_root: args.pin_root.clone(),
                lbctl: "lbctl".into(),
                sources,
                any_source: args.allow_any_source,
            };
            Ok(dsr_xdp_script(&args.dsr, &decap))
        }
    }
}

/// The outer sources the running lbd at `socket` uses toward the backends of `vips`' DSR
/// services (each service's `dsr_source`, else `dsr.source`).
pub fn lbd_dsr_sources(socket: &Path, vips: &[Ipv4Addr]) -> Result<Vec<Ipv4Prefix>> {
    let mut client = Client::connect(socket)
        .with_context(|| format!("lbd's API at {} is not reachable", socket.display()))?;
    let data = client.call(&Request::ConfigDump)?;
    let yaml: String =
        serde_json::from_value(data).context("lbd's config_dump answer is not a string")?;
    let cfg = crate::config::Config::from_yaml_str(&yaml, "lbd's running configuration")?;
    dsr_sources(&cfg, vips)
}

/// The outer sources of `cfg`'s DSR services on `vips` (each service's `dsr_source`, else
/// `dsr.source`), without repeats; an error when a VIP has no DSR service in `cfg`.
pub fn dsr_sources(cfg: &crate::config::Config, vips: &[Ipv4Addr]) -> Result<Vec<Ipv4Prefix>> {
    let global = cfg.dsr.as_ref().and_then(|d| d.source);
    let mut out: Vec<Ipv4Prefix> = Vec::new();
    for vip in vips {
        let mut found = false;
        for svc in cfg
            .services
            .iter()
            .filter(|s| s.vip == *vip && s.forwarding == crate::config::Forwarding::Dsr)
        {
            found = true;
            if let Some(src) = svc.dsr_source.or(global) {
                let p = Ipv4Prefix::from(src);
                if !out.contains(&p) {
                    out.push(p);
                }
            }
        }
        if !found {
            bail!("the running lbd has no forwarding: dsr service on {vip}");
        }
    }
    if out.is_empty() {
        bail!("the running lbd has no dsr.source");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::test_support::parse;
    use crate::cli::Command;

    #[test]
    fn commands_for_a_vip() {
        let vip = Ipv4Addr::new(192, 0, 2, 10);
        assert_eq!(
            dsr_commands(&[vip]),
            [
                "modprobe ipip",
                "ip link set dev tunl0 up",
                "ip addr replace 192.0.2.10/32 dev lo",
                "sysctl -w net.ipv4.conf.tunl0.rp_filter=0",
                "sysctl -w net.ipv4.conf.all.rp_filter=0",
                "sysctl -w net.ipv4.conf.all.arp_ignore=1",
                "sysctl -w net.ipv4.conf.all.arp_announce=2",
            ]
        );
        let script = dsr_script(&[vip]);
        assert!(script.starts_with("#!/bin/sh\n"));
        // Every command appears as its own line, in order, after `set -e`.
        let lines: Vec<&str> = script.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(lines[0], "set -e");
        assert_eq!(&lines[1..], dsr_commands(&[vip]).as_slice());
        assert!(script.contains("advmss 1440"));
        assert!(script.contains("--dsr 192.0.2.10 --decap xdp --iface IFACE"));
        // A VIP-only listener fails the health checks (they connect to the backend address).
        assert!(script
            .contains("on all addresses, or on both the\n# VIP and the backend's own address"));
        assert!(!script.contains("on the VIP or on all addresses"));
    }

    fn eth0_decap() -> XdpDecap {
        XdpDecap {
            iface: "eth0".into(),
            mode: None,
            pin_root: None,
            lbctl: "lbctl".into(),
            sources: vec![
                "10.0.255.2".parse().unwrap(),
                "10.0.254.0/24".parse().unwrap(),
            ],
            any_source: false,
        }
    }

    #[test]
    fn xdp_commands_for_a_vip() {
        let vip = Ipv4Addr::new(192, 0, 2, 10);
        let mut decap = eth0_decap();
        // No rp_filter change: the decapsulated packet arrives on eth0, the client's route.
        assert_eq!(
            dsr_xdp_commands(&[vip], &decap),
            [
                "ip addr replace 192.0.2.10/32 dev lo",
                "sysctl -w net.ipv4.conf.all.arp_ignore=1",
                "sysctl -w net.ipv4.conf.all.arp_announce=2",
                "lbctl decap attach eth0 --vip 192.0.2.10 --allow-source 10.0.255.2 --allow-source 10.0.254.0/24",
            ]
        );
        let script = dsr_xdp_script(&[vip], &decap);
        let lines: Vec<&str> = script.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(lines[0], "set -e");
        assert_eq!(&lines[1..], dsr_xdp_commands(&[vip], &decap).as_slice());
        assert!(!script.contains("modprobe") && !script.contains("rp_filter="));
        assert!(!script.contains("WARNING"));
        decap.iface = "eth0.100".into();
        decap.mode = Some(XdpMode::Generic);
        decap.pin_root = Some("/sys/fs/bpf/x".into());
        let c = dsr_xdp_commands(&[vip, Ipv4Addr::new(192, 0, 2, 11)], &decap);
        assert_eq!(c[1], "ip addr replace 192.0.2.11/32 dev lo");
        assert_eq!(
            c[4],
            "lbctl decap attach eth0.100 --vip 192.0.2.10 --vip 192.0.2.11 --allow-source 10.0.255.2 --allow-source 10.0.254.0/24 --xdp-mode generic --pin-root /sys/fs/bpf/x"
        );
    }

    #[test]
    fn iface_is_checked_and_paths_quoted() {
        for bad in [
            "",
            "eth0\nreboot",
            "a/b",
            "eth0:1",
            "eth%d",
            "a b",
            "sixteen-chars-xx",
            "..",
        ] {
            let e = validate_iface(bad).unwrap_err();
            assert!(e.starts_with("--iface: "), "{e}");
        }
        for good in ["eth0", "eth0.100", "enp3s0f1", "bond0-x"] {
            validate_iface(good).unwrap();
        }
        assert_eq!(shell_quote("/sys/fs/bpf/x"), "/sys/fs/bpf/x");
        assert_eq!(shell_quote("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(shell_quote("/x;reboot"), "'/x;reboot'");
        assert_eq!(shell_quote("/x'y\nz"), "'/x'\\''y\nz'");
        let mut decap = eth0_decap();
        decap.pin_root = Some("/sys/fs/bpf/my pins;$(id)".into());
        let c = dsr_xdp_commands(&[Ipv4Addr::new(192, 0, 2, 10)], &decap);
        assert!(
            c[3].ends_with(" --pin-root '/sys/fs/bpf/my pins;$(id)'"),
            "{}",
            c[3]
        );
    }

    #[test]
    fn any_source_warns() {
        let vip = Ipv4Addr::new(192, 0, 2, 10);
        let mut decap = eth0_decap();
        decap.sources.clear();
        decap.any_source = true;
        let script = dsr_xdp_script(&[vip], &decap);
        assert!(script.contains("# WARNING: --allow-any-source"), "{script}");
        assert!(script.contains("echo 'warning: lb_decap accepts IPIP from any source"));
        assert!(script.contains("lbctl decap attach eth0 --vip 192.0.2.10 --allow-any-source\n"));
    }

    fn setup_args(args: &[&str]) -> BackendSetupArgs {
        match parse(args).unwrap().command {
            Command::BackendSetup(a) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn backend_setup_xdp_needs_sources() {
        let no_lbd = |_: &[Ipv4Addr]| -> Result<Vec<Ipv4Prefix>> { bail!("no lbd here") };
        // Neither --source nor lbd: an error naming --source, not a script accepting any.
        let a = setup_args(&[
            "backend-setup",
            "--dsr",
            "192.0.2.10",
            "--decap",
            "xdp",
            "--iface",
            "eth0",
        ]);
        let e = format!("{:#}", backend_setup_script(&a, no_lbd).unwrap_err());
        assert!(e.starts_with("--source: required with --decap xdp"), "{e}");
        assert!(e.contains("no lbd here"), "{e}");
        // The sources lbd reports.
        let script = backend_setup_script(&a, |vips| {
            assert_eq!(vips, [Ipv4Addr::new(192, 0, 2, 10)]);
            Ok(vec!["10.0.255.2".parse().unwrap()])
        })
        .unwrap();
        assert!(
            script.contains("lbctl decap attach eth0 --vip 192.0.2.10 --allow-source 10.0.255.2\n"),
            "{script}"
        );
        // Given sources and several VIPs: lbd is not asked.
        let a = setup_args(&[
            "backend-setup",
            "--dsr",
            "192.0.2.10",
            "--dsr",
            "192.0.2.11",
            "--decap",
            "xdp",
            "--iface",
            "eth0",
            "--source",
            "10.0.255.0/24",
            "--source",
            "10.0.254.2",
        ]);
        let script = backend_setup_script(&a, no_lbd).unwrap();
        assert!(script.contains(
            "lbctl decap attach eth0 --vip 192.0.2.10 --vip 192.0.2.11 --allow-source 10.0.255.0/24 --allow-source 10.0.254.2\n"
        ), "{script}");
        // The explicit escape hatch warns; it cannot be combined with --source.
        let a = setup_args(&[
            "backend-setup",
            "--dsr",
            "192.0.2.10",
            "--decap",
            "xdp",
            "--iface",
            "eth0",
            "--allow-any-source",
        ]);
        let script = backend_setup_script(&a, no_lbd).unwrap();
        assert!(script.contains("WARNING") && script.contains("--allow-any-source\n"));
        assert!(parse(&[
            "backend-setup",
            "--dsr",
            "192.0.2.10",
            "--decap",
            "xdp",
            "--iface",
            "eth0",
            "--allow-any-source",
            "--source",
            "10.0.0.1",
        ])
        .is_err());
        // Host bits in a prefix are refused, naming the fix.
        let e = parse(&[
            "backend-setup",
            "--dsr",
            "192.0.2.10",
            "--source",
            "10.0.255.2/24",
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("did you mean 10.0.255.0/24"), "{e}");
        // An interface name that could break out of the script's lines is refused.
        let a = setup_args(&[
            "backend-setup",
            "--dsr",
            "192.0.2.10",
            "--decap",
            "xdp",
            "--iface",
            "eth0\nreboot",
            "--source",
            "10.0.0.1",
        ]);
        let e = backend_setup_script(&a, no_lbd).unwrap_err().to_string();
        assert!(
            e.starts_with("--iface: \"eth0\\nreboot\" is not a valid interface name"),
            "{e}"
        );
        // --source belongs to the XDP variant.
        let a = setup_args(&[
            "backend-setup",
            "--dsr",
            "192.0.2.10",
            "--source",
            "10.0.0.1",
        ]);
        assert!(backend_setup_script(&a, no_lbd).is_err());
    }

    #[test]
    fn dsr_sources_of_the_running_config() {
        let yaml = "interfaces: [eth0]\nsnat:\n  addresses: [10.0.255.9]\ndsr:\n  source: 10.0.255.2\n\
                    services:\n\
                    - name: a\n  vip: 192.0.2.10\n  port: 80\n  forwarding: dsr\n  backends: [{address: 10.1.1.2:80}]\n\
                    - name: b\n  vip: 192.0.2.10\n  port: 443\n  forwarding: dsr\n  dsr_source: 10.0.255.3\n  backends: [{address: 10.1.1.2:443}]\n\
                    - name: c\n  vip: 192.0.2.20\n  port: 80\n  backends: [{address: 10.1.1.2:80}]\n";
        let cfg = crate::config::Config::from_yaml_str(yaml, "test").unwrap();
        let got = dsr_sources(&cfg, &[Ipv4Addr::new(192, 0, 2, 10)]).unwrap();
        let want: Vec<Ipv4Prefix> =
            vec!["10.0.255.2".parse().unwrap(), "10.0.255.3".parse().unwrap()];
        assert_eq!(got, want);
        let e = dsr_sources(&cfg, &[Ipv4Addr::new(192, 0, 2, 20)])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no forwarding: dsr service on 192.0.2.20"),
            "{e}"
        );
    }
}
