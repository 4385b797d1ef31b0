//! The balancers the bench compares on one lab: lb (native and generic XDP, full NAT; native
//! XDP with a DSR service, backends decapsulating with `lb_decap`), an nftables
//! DNAT + masquerade balancer (kube-proxy's nftables-mode fast path), HAProxy in TCP mode,
//! nginx stream, and direct routing to one backend with no balancer (the upper bound).
//!
//! [`prepare`] adapts a [`Lab`] for the comparison once; [`up`] brings one variant up and
//! [`Active::down`] takes it down again, so variants can be interleaved on the same lab. The
//! HAProxy and nginx processes run in the balancer namespace with configs generated into the
//! lab's temp dir and are killed by PID (also on drop).

use crate::lab::lbd::{release_binary, BackendSpec, HealthSpec};
use crate::lab::sys::{self, ns_command, Proc};
use crate::lab::{backend_addr, backend_ip, balancer_private_ip, Lab, BACKEND_PORT, VIP, VIP_PORT};
use std::net::SocketAddrV4;
use std::time::Duration;

/// One balancer under comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// lb, XDP in driver mode.
    LbNative,
    /// lb, XDP in driver mode, the service in DSR mode (`forwarding: dsr`): the backends are
    /// set up with `lbctl backend-setup --dsr VIP --decap xdp --iface e0` (lb's `lb_decap` on
    /// `e0`, the VIP on `lo`) and their servers listen on VIP:80.
    LbDsr,
    /// lb, XDP in skb (generic) mode.
    LbGeneric,
    /// nftables DNAT (`numgen random` over the backends) + masquerade.
    Nftables,
    /// HAProxy 2.6, TCP mode, round robin.
    Haproxy,
    /// nginx stream proxy, round robin.
    Nginx,
    /// No balancer: the client talks to backend 1 through plain IP forwarding.
    Direct,
}

impl Variant {
    /// Display name.
    pub fn name(self) -> &'static str {
        match self {
            Variant::LbNative => "lb native",
            Variant::LbDsr => "lb native DSR",
            Variant::LbGeneric => "lb generic",
            Variant::Nftables => "nftables DNAT",
            Variant::Haproxy => "HAProxy (TCP)",
            Variant::Nginx => "nginx stream",
            Variant::Direct => "direct (no balancer)",
        }
    }

    /// Where the client connects.
    pub fn target(self) -> SocketAddrV4 {
        match self {
            Variant::Direct => backend_addr(1),
            _ => SocketAddrV4::new(VIP, VIP_PORT),
        }
    }
}

/// Adapts a lab for the comparison: removes the lab's forward filter (it drops forwarded
/// client traffic that lb did not rewrite, which is exactly what nftables and direct routing
/// need) and routes the client to the backend networks through the balancer (direct).
pub fn prepare(lab: &Lab) -> Result<(), String> {
    let lb = lab.balancer_ns().to_string();
    let _ = sys::ns_run(&lb, "nft", &["delete", "table", "inet", "lab"]);
    sys::ip(&[
        "-n",
        lab.client_ns(),
        "route",
        "replace",
        "10.1.0.0/16",
        "via",
        "172.30.0.1",
    ])
    .map_err(|e| e.to_string())?;
    Ok(())
}

/// Sets GRO on the balancer's veths (`pub0`, `bk*`).
pub fn set_balancer_gro(lab: &Lab, on: bool) -> Result<(), String> {
    let lb = lab.balancer_ns().to_string();
    let state = if on { "on" } else { "off" };
    let devs = std::iter::once("pub0".to_string())
        .chain((1..=lab.backend_count()).map(|i| format!("bk{i}")));
    for d in devs {
        sys::ns_run(&lb, "ethtool", &["-K", &d, "gro", state]).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A variant that is up; [`Active::down`] undoes it.
pub struct Active {
    variant: Variant,
    procs: Vec<Proc>,
    /// [`Variant::LbDsr`]: the backends set up for DSR, with the sysctls the setup changed
    /// and their earlier values, restored by [`Active::down`].
    dsr_backends: Vec<(usize, Vec<(String, String)>)>,
    /// [`Variant::LbDsr`]: lbd was started (so [`Active::down`] unloads it).
    dsr_lbd: bool,
}

/// The sysctls `lbctl backend-setup --dsr VIP --decap xdp --iface e0` sets on a backend.
const DSR_SYSCTLS: [&str; 4] = [
    "net.ipv4.conf.e0.rp_filter",
    "net.ipv4.conf.all.rp_filter",
    "net.ipv4.conf.all.arp_ignore",
    "net.ipv4.conf.all.arp_announce",
];

/// The current values of [`DSR_SYSCTLS`] on backend `i`.
fn dsr_sysctls(lab: &Lab, i: usize) -> Result<Vec<(String, String)>, String> {
    let mut saved = Vec::new();
    for key in DSR_SYSCTLS {
        let v = lab
            .backend_run(i, "sysctl", &["-n", key])
            .map_err(|e| format!("b{i}: reading {key}: {e}"))?;
        saved.push((key.to_string(), v.trim().to_string()));
    }
    Ok(saved)
}

/// Sets backend `i` up for [`Variant::LbDsr`]: exactly the commands `lbctl backend-setup --dsr
/// VIP --decap xdp --iface e0` prints ([`Lab::setup_dsr_backend`]), then its server moves to
/// VIP:80 (a DSR backend gets the client's packet unchanged).
fn dsr_backend_up(lab: &mut Lab, i: usize) -> Result<(), String> {
    lab.setup_dsr_backend(i, VIP)
        .map_err(|e| format!("b{i}: running lbctl backend-setup's commands: {e}"))?;
    // After the set-up: it puts the VIP on lo.
    lab.start_backend_on(i, SocketAddrV4::new(VIP, VIP_PORT))
        .map_err(|e| format!("b{i}: starting the server on {VIP}:{VIP_PORT}: {e}"))?;
    Ok(())
}

/// Undoes [`dsr_backend_up`] on backend `i`: `lbctl decap detach e0`, the VIP off `lo`, the
/// sysctls back to `saved`, the server back on its own address.
fn dsr_backend_down(lab: &mut Lab, i: usize, saved: &[(String, String)]) -> Result<(), String> {
    let lbctl = release_binary("lbctl").map_err(|e| e.to_string())?;
    let root = lab.decap_pin_root().display().to_string();
    let detached = sys::run(ns_command(lab.backend_ns(i), &lbctl).args([
        "decap",
        "detach",
        "e0",
        "--pin-root",
        &root,
    ]))
    .map(|_| ())
    .map_err(|e| format!("b{i}: lbctl decap detach e0: {e}"));
    let vip = lab
        .backend_run(i, "ip", &["addr", "del", &format!("{VIP}/32"), "dev", "lo"])
        .map(|_| ())
        .map_err(|e| format!("b{i}: removing the VIP from lo: {e}"));
    let mut sysctl = Ok(());
    for (k, v) in saved {
        if let Err(e) = lab.backend_run(i, "sysctl", &["-qw", &format!("{k}={v}")]) {
            sysctl = Err(format!("b{i}: restoring {k}={v}: {e}"));
        }
    }
    let server = lab
        .start_backend(i)
        .map_err(|e| format!("b{i}: restarting the server on its own address: {e}"));
    detached.and(vip).and(sysctl).and(server)
}

/// The nftables ruleset: one chain per backend, `numgen random` picks one (as kube-proxy's
/// nftables mode does), masquerade toward the backends.
pub fn nft_ruleset(backends: &[SocketAddrV4]) -> String {
    let mut s = String::from("table ip lbbench {\n");
    for (i, b) in backends.iter().enumerate() {
        s.push_str(&format!(
            "  chain be{i} {{\n    meta l4proto tcp dnat to {}:{}\n  }}\n",
            b.ip(),
            b.port()
        ));
    }
    let map: Vec<String> = (0..backends.len())
        .map(|i| format!("{i} : goto be{i}"))
        .collect();
    s.push_str(&format!(
        "  chain pre {{\n    type nat hook prerouting priority dstnat; policy accept;\n    ip daddr {VIP} tcp dport {VIP_PORT} numgen random mod {} vmap {{ {} }}\n  }}\n",
        backends.len(),
        map.join(", ")
    ));
    s.push_str(
        "  chain post {\n    type nat hook postrouting priority srcnat; policy accept;\n    ct status dnat masquerade\n  }\n}\n",
    );
    s
}

/// HAProxy configuration (TCP mode, round robin, foreground).
pub fn haproxy_config(backends: &[SocketAddrV4]) -> String {
    let mut s = format!(
        "global\n  maxconn 8000\n\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\nfrontend fe\n  bind {VIP}:{VIP_PORT}\n  default_backend be\n\nbackend be\n  balance roundrobin\n"
    );
    for (i, b) in backends.iter().enumerate() {
        s.push_str(&format!("  server b{} {b}\n", i + 1));
    }
    s
}

/// nginx configuration (stream module, round robin, foreground).
pub fn nginx_config(backends: &[SocketAddrV4], dir: &std::path::Path) -> String {
    let servers: String = backends
        .iter()
        .map(|b| format!("    server {b};\n"))
        .collect();
    format!(
        "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\ndaemon off;\nworker_processes auto;\npid {dir}/nginx.pid;\nerror_log {dir}/nginx-error.log;\nevents {{\n  worker_connections 16384;\n}}\nstream {{\n  upstream be {{\n{servers}  }}\n  server {{\n    listen {VIP}:{VIP_PORT};\n    proxy_pass be;\n  }}\n}}\n",
        dir = dir.display()
    )
}

/// The programs the comparison runs, each with the Debian package that provides it.
pub const TOOLS: [(&str, &str); 7] = [
    ("nft", "nftables"),
    ("haproxy", "haproxy"),
    ("nginx", "nginx-light"),
    ("wrk", "wrk"),
    ("conntrack", "conntrack"),
    ("ss", "iproute2"),
    // The memory section reads map sizes with `bpftool map show`.
    ("bpftool", "bpftool"),
];

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// Checks, before anything is measured, that every alternative can start here: each program
/// of [`TOOLS`] is installed, HAProxy accepts the generated configuration (`haproxy -c`) and
/// nginx accepts its generated configuration including the stream module (`nginx -t`).
/// `dir` receives the configurations. The error names what is missing and how to fix it.
pub fn preflight(dir: &std::path::Path) -> Result<(), String> {
    let missing: Vec<String> = TOOLS
        .iter()
        .filter(|(prog, _)| !on_path(prog))
        .map(|(prog, pkg)| format!("`{prog}` (Debian package {pkg})"))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "the bench needs {}; `cargo xtask bench` installs them (or apt-get install them)",
            missing.join(", ")
        ));
    }
    let be: Vec<SocketAddrV4> = (1..=2).map(backend_addr).collect();
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let check = |cmd: &mut std::process::Command, what: &str, fix: &str| {
        let out = cmd
            .output()
            .map_err(|e| format!("cannot start {what}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{what} refuses the bench's configuration ({}): {}{}; {fix}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            ))
        }
    };
    let hcfg = dir.join("haproxy-check.cfg");
    std::fs::write(&hcfg, haproxy_config(&be))
        .map_err(|e| format!("writing {}: {e}", hcfg.display()))?;
    check(
        std::process::Command::new("haproxy")
            .arg("-c")
            .arg("-f")
            .arg(&hcfg),
        "haproxy -c",
        "the bench needs HAProxy >= 2.0 in TCP mode (Debian package haproxy)",
    )?;
    let ncfg = dir.join("nginx-check.conf");
    std::fs::write(&ncfg, nginx_config(&be, dir))
        .map_err(|e| format!("writing {}: {e}", ncfg.display()))?;
    // `nginx -t` binds the listen address: test in a throw-away namespace holding the VIP.
    let ns = sys::Netns::create(&format!("lbpf{}", std::process::id() % 100_000))
        .map_err(|e| format!("creating the preflight namespace: {e}"))?;
    sys::ip(&[
        "-n",
        ns.name(),
        "addr",
        "add",
        &format!("{VIP}/32"),
        "dev",
        "lo",
    ])
    .map_err(|e| e.to_string())?;
    check(
        ns_command(ns.name(), "nginx")
            .arg("-t")
            .arg("-q")
            .arg("-e")
            .arg(dir.join("nginx-check-error.log"))
            .arg("-c")
            .arg(&ncfg),
        "nginx -t",
        "the bench needs nginx with the stream module at \
         /usr/lib/nginx/modules/ngx_stream_module.so (Debian packages nginx-light and \
         libnginx-mod-stream)",
    )?;
    Ok(())
}

/// Every namespace of `lab`: client, balancer, backends.
fn lab_namespaces(lab: &Lab) -> Vec<String> {
    let mut ns = vec![lab.client_ns().to_string(), lab.balancer_ns().to_string()];
    ns.extend((1..=lab.backend_count()).map(|i| lab.backend_ns(i).to_string()));
    ns
}

/// Gives the next variant the same start as every other: flushes the balancer's kernel
/// conntrack table and destroys every TIME_WAIT socket in the lab (`ss -K`, needs
/// `CONFIG_INET_DIAG_DESTROY`), then checks that none is left.
///
/// Why: nftables (masquerade keeps the client's port), HAProxy and nginx all reach the
/// backends from the balancer's own address (`10.1.<i>.1:<ephemeral>`), so one variant's
/// connections leave TIME_WAIT sockets on the backends that the next variant's SYNs meet on
/// the same 4-tuple. Their TCP timestamps come from a different clock (the client's for
/// nftables, the balancer's for the proxies; Linux offsets timestamps per 4-tuple), so about
/// half of those SYNs fail the PAWS check (`TcpExtPAWSTimewait` on the backends) and are
/// retransmitted, through nftables often after 1 s (the retry picks a new random backend that
/// refuses it again): measured, nftables fell from 6.4k to 0.4k new connections/s in the
/// rounds after a proxy had run.
pub fn reset_host_state(lab: &Lab) -> Result<(), String> {
    sys::ns_run(lab.balancer_ns(), "conntrack", &["-F"])
        .map_err(|e| format!("flushing the balancer's conntrack: {e}"))?;
    for ns in lab_namespaces(lab) {
        sys::ns_run(&ns, "ss", &["-K", "-tan", "state", "time-wait"])
            .map_err(|e| format!("destroying TIME_WAIT sockets in {ns}: {e}"))?;
        let left = sys::ns_run(&ns, "ss", &["-H", "-tan", "state", "time-wait"])
            .map_err(|e| format!("listing TIME_WAIT sockets in {ns}: {e}"))?;
        let n = left.lines().filter(|l| !l.trim().is_empty()).count();
        if n > 0 {
            return Err(format!(
                "{n} TIME_WAIT socket(s) in {ns} survived `ss -K`: the kernel needs \
                 CONFIG_INET_DIAG_DESTROY for the bench to give every variant the same start"
            ));
        }
    }
    Ok(())
}

/// TCP counters of namespace `ns` from `/proc/net/netstat` and `/proc/net/snmp` (`TcpExt` and
/// `Tcp` lines), keyed `"TcpExt:PAWSTimewait"`, `"Tcp:RetransSegs"`, ...
pub fn tcp_counters(ns: &str) -> Result<std::collections::HashMap<String, u64>, String> {
    let mut out = std::collections::HashMap::new();
    for file in ["/proc/net/netstat", "/proc/net/snmp"] {
        let text = sys::ns_run(ns, "cat", &[file]).map_err(|e| format!("reading {file}: {e}"))?;
        parse_proc_net(&text, &mut out);
    }
    Ok(out)
}

/// Parses the header/value line pairs of `/proc/net/netstat` or `/proc/net/snmp` into `out`.
pub fn parse_proc_net(text: &str, out: &mut std::collections::HashMap<String, u64>) {
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [head, vals] = pair else { continue };
        let (Some((p1, names)), Some((p2, values))) = (head.split_once(':'), vals.split_once(':'))
        else {
            continue;
        };
        if p1 != p2 {
            continue;
        }
        for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Ok(v) = v.parse::<u64>() {
                out.insert(format!("{p1}:{n}"), v);
            }
        }
    }
}

/// Sum of counter `key` over `namespaces`.
pub fn counter_sum(namespaces: &[String], key: &str) -> Result<u64, String> {
    let mut sum = 0;
    for ns in namespaces {
        sum += tcp_counters(ns)?.get(key).copied().unwrap_or(0);
    }
    Ok(sum)
}

/// The namespaces whose TCP stacks open connections in a new-connection run: the client and
/// the balancer (where HAProxy and nginx connect to the backends).
pub fn connecting_namespaces(lab: &Lab) -> Vec<String> {
    vec![lab.client_ns().to_string(), lab.balancer_ns().to_string()]
}

/// The backends' namespaces.
pub fn backend_namespaces(lab: &Lab) -> Vec<String> {
    (1..=lab.backend_count())
        .map(|i| lab.backend_ns(i).to_string())
        .collect()
}

fn backends(lab: &Lab) -> Vec<SocketAddrV4> {
    (1..=lab.backend_count()).map(backend_addr).collect()
}

fn vip_local(lab: &Lab, add: bool) -> Result<(), String> {
    let verb = if add { "add" } else { "del" };
    sys::ip(&[
        "-n",
        lab.balancer_ns(),
        "addr",
        verb,
        &format!("{VIP}/32"),
        "dev",
        "lo",
    ])
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// Brings `v` up on `lab` (after [`reset_host_state`], so every round of every variant starts
/// without conntrack entries or TIME_WAIT sockets) and waits until a request through it
/// works. GRO on the balancer's
/// veths: on for every variant when `gro_all` (the SYN flood: a veth without a native XDP
/// program accepts XDP frames only with GRO on, and SYNs are never merged), otherwise off for
/// lb generic only (generic XDP must see wire-sized packets, not GRO super-packets).
pub fn up(lab: &mut Lab, v: Variant, gro_all: bool) -> Result<Active, String> {
    let n = lab.backend_count();
    up_with_backends(lab, v, gro_all, n)
}

/// [`up`] with only the lab's first `n` backends behind the balancer (the direct variant
/// always talks to backend 1).
pub fn up_with_backends(
    lab: &mut Lab,
    v: Variant,
    gro_all: bool,
    n: usize,
) -> Result<Active, String> {
    let e = |e: crate::lab::LabError| e.to_string();
    let mut active = Active {
        variant: v,
        procs: Vec::new(),
        dsr_backends: Vec::new(),
        dsr_lbd: false,
    };
    let mut be = backends(lab);
    be.truncate(n.max(1));
    let dir = lab.dir().to_path_buf();
    reset_host_state(lab)?;
    set_balancer_gro(lab, gro_all || v != Variant::LbGeneric)?;
    match v {
        Variant::LbNative | Variant::LbGeneric => {
            let mut cfg = lab.default_config();
            cfg.xdp_mode = if v == Variant::LbNative {
                "native"
            } else {
                "generic"
            }
            .into();
            cfg.conntrack_flows = lb_common::DEFAULT_CONNTRACK_FLOWS;
            cfg.services[0].backends.truncate(be.len());
            // No health checks: the bench must not depend on (or compete with) them, and the
            // packet-rate section drops everything at the backends.
            cfg.services[0].health = HealthSpec {
                kind: "none".into(),
                ..HealthSpec::default()
            };
            // More SNAT addresses and a short closing timeout, so SNAT ports recycle fast
            // enough for the new-connection rate (backends route the whole 10.0.255.0/24
            // back through the balancer).
            cfg.snat_addresses = (1..=lb_common::MAX_SNAT_ADDRS as u8)
                .map(|i| std::net::Ipv4Addr::new(10, 0, 255, i))
                .collect();
            cfg.conntrack = cfg.conntrack.clone().with_closing_ms(2000);
            std::fs::create_dir_all(&cfg.bpffs_root)
                .map_err(|e| format!("creating {}: {e}", cfg.bpffs_root.display()))?;
            lab.start_lbd_text(&cfg.to_yaml()).map_err(e)?;
        }
        Variant::LbDsr => {
            for i in 1..=be.len() {
                // Recorded before the set-up: a failed set-up is undone as far as it got.
                let r = dsr_sysctls(lab, i).and_then(|saved| {
                    active.dsr_backends.push((i, saved));
                    dsr_backend_up(lab, i)
                });
                if let Err(err) = r {
                    let _ = active.down(lab);
                    return Err(err);
                }
            }
            let mut cfg = lab.lbd_config(
                (1..=be.len())
                    .map(|i| BackendSpec::new(SocketAddrV4::new(backend_ip(i), VIP_PORT)))
                    .collect(),
                HealthSpec {
                    kind: "none".into(),
                    ..HealthSpec::default()
                },
            );
            cfg.xdp_mode = "native".into();
            cfg.conntrack_flows = lb_common::DEFAULT_CONNTRACK_FLOWS;
            std::fs::create_dir_all(&cfg.bpffs_root)
                .map_err(|e| format!("creating {}: {e}", cfg.bpffs_root.display()))?;
            // The outer source: lb's address toward backend 1 (the backends route the whole
            // balancer side back through the balancer).
            active.dsr_lbd = true;
            if let Err(err) = lab.start_lbd_text(&cfg.to_yaml_dsr(balancer_private_ip(1))) {
                let _ = active.down(lab);
                return Err(err.to_string());
            }
        }
        Variant::Nftables => {
            sys::run_with_input(
                ns_command(lab.balancer_ns(), "nft").args(["-f", "-"]),
                &nft_ruleset(&be),
            )
            .map_err(e)?;
        }
        Variant::Haproxy => {
            vip_local(lab, true)?;
            let cfg = dir.join("haproxy.cfg");
            std::fs::write(&cfg, haproxy_config(&be))
                .map_err(|e| format!("writing {}: {e}", cfg.display()))?;
            let mut cmd = ns_command(lab.balancer_ns(), "haproxy");
            cmd.arg("-db").arg("-f").arg(&cfg);
            active
                .procs
                .push(Proc::spawn(&mut cmd, "haproxy", Some(&dir.join("haproxy.log"))).map_err(e)?);
        }
        Variant::Nginx => {
            vip_local(lab, true)?;
            let cfg = dir.join("nginx.conf");
            std::fs::write(&cfg, nginx_config(&be, &dir))
                .map_err(|e| format!("writing {}: {e}", cfg.display()))?;
            let mut cmd = ns_command(lab.balancer_ns(), "nginx");
            cmd.arg("-c").arg(&cfg);
            active
                .procs
                .push(Proc::spawn(&mut cmd, "nginx", Some(&dir.join("nginx.log"))).map_err(e)?);
        }
        Variant::Direct => {}
    }
    if let Err(err) = wait_ready(lab, v) {
        let _ = active.down(lab);
        return Err(err);
    }
    Ok(active)
}

fn wait_ready(lab: &Lab, v: Variant) -> Result<(), String> {
    let target = v.target();
    let ns = lab.client_path();
    sys::wait_for(
        &format!("a request through {}", v.name()),
        Duration::from_secs(15),
        Duration::from_millis(100),
        || {
            crate::lab::client::run_in_netns(ns.clone(), move || async move {
                crate::lab::client::probe(target.into(), Duration::from_millis(500)).await
            })
            .ok()
        },
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

impl Active {
    /// The variant.
    pub fn variant(&self) -> Variant {
        self.variant
    }

    /// Takes the variant down (stops processes by PID, removes rules and addresses, unloads
    /// lb), leaving the lab as [`prepare`] left it.
    pub fn down(mut self, lab: &mut Lab) -> Result<(), String> {
        for mut p in self.procs.drain(..) {
            stop_tree(&mut p);
        }
        // Forget the kernel conntrack state (a SYN flood through nftables fills the table
        // and would refuse the next variant's connections); "0 flow entries" exits 0.
        let flushed = sys::ns_run(lab.balancer_ns(), "conntrack", &["-F"])
            .map(|_| ())
            .map_err(|e| format!("flushing the balancer's conntrack: {e}"));
        let r = match self.variant {
            Variant::LbNative | Variant::LbGeneric => lab
                .lbd_mut()
                .map_err(|e| e.to_string())?
                .unload()
                .map_err(|e| e.to_string()),
            Variant::LbDsr => {
                // A failed set-up is undone here too, lbd only if it was started.
                let mut r = if self.dsr_lbd {
                    lab.lbd_mut()
                        .map_err(|e| e.to_string())?
                        .unload()
                        .map_err(|e| e.to_string())
                } else {
                    Ok(())
                };
                for (i, saved) in std::mem::take(&mut self.dsr_backends) {
                    r = r.and(dsr_backend_down(lab, i, &saved));
                }
                r
            }
            Variant::Nftables => sys::ns_run(
                lab.balancer_ns(),
                "nft",
                &["delete", "table", "ip", "lbbench"],
            )
            .map(|_| ())
            .map_err(|e| e.to_string()),
            Variant::Haproxy | Variant::Nginx => vip_local(lab, false),
            Variant::Direct => Ok(()),
        };
        r.and(flushed)
    }
}

impl Drop for Active {
    /// Stops what [`Active::down`] did not (a failed or panicking round).
    fn drop(&mut self) {
        for mut p in self.procs.drain(..) {
            stop_tree(&mut p);
        }
    }
}

/// PIDs of the direct children of `pid` (all its threads), from `/proc`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

fn comm_of(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim().to_string())
}

/// Stops a proxy and its worker processes: SIGTERM to the master first (nginx's master stops
/// its workers on it; a SIGKILLed master leaves them running, orphaned in a deleted
/// namespace), SIGKILL after 5 s, then SIGKILL to any child recorded before that is still
/// alive under the master's name (checked, so a reused PID is left alone).
fn stop_tree(p: &mut Proc) {
    let name = comm_of(p.pid());
    let kids = children_of(p.pid());
    p.stop(libc::SIGTERM, Duration::from_secs(5));
    for k in kids {
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while comm_of(k).is_some() && comm_of(k) == name {
            if std::time::Instant::now() > deadline {
                // SAFETY: kill(2) on a PID we checked is still our proxy's worker.
                unsafe { libc::kill(k as libc::pid_t, libc::SIGKILL) };
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The backends' port (re-exported for the sections' method texts).
pub const PORT: u16 = BACKEND_PORT;

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn two() -> Vec<SocketAddrV4> {
        vec![
            SocketAddrV4::new(Ipv4Addr::new(10, 1, 1, 2), 8080),
            SocketAddrV4::new(Ipv4Addr::new(10, 1, 2, 2), 8080),
        ]
    }

    #[test]
    fn nft_ruleset_spreads_over_every_backend() {
        let r = nft_ruleset(&two());
        assert!(r.contains("numgen random mod 2 vmap { 0 : goto be0, 1 : goto be1 }"));
        assert!(r.contains("dnat to 10.1.2.2:8080"));
        assert!(r.contains("ct status dnat masquerade"));
    }

    #[test]
    fn proc_net_pairs_parse() {
        let text = "TcpExt: SyncookiesSent PAWSTimewait TCPSynRetrans\nTcpExt: 0 7 12\nIpExt: InNoRoutes\nIpExt: 3\n";
        let mut m = std::collections::HashMap::new();
        parse_proc_net(text, &mut m);
        assert_eq!(m.get("TcpExt:PAWSTimewait"), Some(&7));
        assert_eq!(m.get("TcpExt:TCPSynRetrans"), Some(&12));
        assert_eq!(m.get("IpExt:InNoRoutes"), Some(&3));
        assert_eq!(m.len(), 4);
    }

    #[test]
    fn proxies_listen_on_the_vip_and_list_backends() {
        let h = haproxy_config(&two());
        assert!(h.contains("bind 192.0.2.10:80"));
        assert!(h.contains("server b2 10.1.2.2:8080"));
        let n = nginx_config(&two(), std::path::Path::new("/tmp/x"));
        assert!(n.contains("listen 192.0.2.10:80;"));
        assert!(n.contains("server 10.1.1.2:8080;"));
        assert!(n.contains("daemon off;"));
    }
}
