//! The three-node scale-out lab (issue 13, part 2; docs/scale-out.md "The three-node lab"):
//! a router running BIRD with ECMP, three balancer nodes each running BIRD and lbd with the
//! same configuration and Maglev seed, backends decapsulating with lb's `lb_decap`, and a
//! client on the far side of the router.
//!
//! ```text
//!  [client ns]              [router ns]                          [node i ns], i = 1..3
//!  c0 172.30.0.2/24 ------- cl0 172.30.0.1/24
//!  192.0.2.0/24 via .1      rt<i> 10.88.1.1 -------------------- up0 10.88.1.1<i>/24
//!                           BIRD AS 65000, merge paths            default via 10.88.1.1
//!                           192.0.2.10/32: ECMP over the nodes    BIRD AS 6500<i>, lbd, lb_xdp on up0
//!                           10.0.255.<i>/32 via node i (SNAT)
//!                           bk<j> 10.1.<j>.1/24 ----------------- [backend j ns] e0 10.1.<j>.2/24
//!                                                                 default via 10.1.<j>.1; DSR: VIP on
//!                                                                 lo, lb_decap on e0; lb-testsrv *:80
//! ```
//!
//! The nodes are one-armed: a client packet arrives on `up0`, lb_xdp encapsulates it (DSR)
//! or rewrites it (full NAT) and sends it back out of `up0` (`XDP_TX`) to the router, which
//! forwards it to the backend. A DSR backend answers from the VIP through its default route,
//! the router, straight to the client: no balancer is on the return path. A full-NAT backend
//! answers the node's SNAT address, which the router routes to that node (static routes).
//!
//! Every node's lbd has the same service, backends, health checks and `maglev.seed`; only the
//! outer source (`dsr.source`, the node's address), the SNAT address and the `announce`
//! section differ. Everything is removed when [`ScaleOut`] drops, also on panic: backend
//! servers and lbds (unloaded) first, then BIRDs, then the namespaces (guards, by PID).

use super::bgp::{node_addr, Bird, BirdNode, Router};
use super::client::{run_in_netns, spawn_in_netns};
use super::lbd::{
    release_binary, BackendSpec, ConntrackSpec, HealthSpec, Lbd, LbdConfig, ServiceSpec,
};
use super::sys::{self, ip, ns_command, ns_run, Netns, Proc, TempDir};
use super::topology::{
    attach_xdp_pass, decap_counters_in, host_side_offloads, setup_dsr_backend_in, spawn_testsrv,
    Mode,
};
use super::{backend_ip, backend_name, LabError, Result, VIP, VIP_PORT};
use lb::dataplane::bpf::BpfDataplane;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Balancer nodes in the lab.
pub const NODES: usize = 3;
/// The VIP range the router accepts from the nodes.
pub const VIP_NET: &str = "192.0.2.0/24";
/// The VIP's route at the router.
pub const VIP_PREFIX: &str = "192.0.2.10/32";
/// `maglev.seed` of every node.
pub const MAGLEV_SEED: u32 = 1_592_597_249;
/// The router's address toward the client.
pub const ROUTER_CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);
/// The BGP hold time of the lab's BIRDs (tests/src/lab/bgp.rs).
pub const HOLD_TIME: Duration = Duration::from_secs(3);

/// Node `i`'s SNAT address (full NAT), routed to it by the router: `10.0.255.<i>`.
pub fn snat_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 255, u8::try_from(i).expect("few nodes"))
}

/// Backend `j`'s address in the service: `10.1.<j>.2:80` (a DSR backend listens on the
/// service port; the full-NAT servers listen there too).
pub fn backend_service_addr(j: usize) -> SocketAddrV4 {
    SocketAddrV4::new(backend_ip(j), VIP_PORT)
}

/// Backend `j`'s entry in the service (weight 1, not drained).
pub fn backend_spec(j: usize) -> BackendSpec {
    BackendSpec::new(backend_service_addr(j))
}

/// Every node's address, in order.
pub fn all_nodes() -> Vec<Ipv4Addr> {
    (1..=NODES).map(node_addr).collect()
}

/// Every node's address but node `i`'s.
pub fn nodes_without(i: usize) -> Vec<Ipv4Addr> {
    (1..=NODES).filter(|&n| n != i).map(node_addr).collect()
}

/// How the service forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarding {
    /// `forwarding: dsr`, backends set up by `lbctl backend-setup --dsr --decap xdp`.
    Dsr,
    /// `forwarding: nat` (full NAT, lbd's default), a SNAT address per node.
    FullNat,
}

/// What to build.
#[derive(Debug, Clone)]
pub struct ScaleOutOptions {
    /// XDP mode of every lbd and decapsulator.
    pub mode: Mode,
    /// The service's forwarding.
    pub forwarding: Forwarding,
    /// Backends (1..=254): namespaces set up (DSR decapsulation included) with their
    /// servers running.
    pub backends: usize,
    /// How many of them (the first ones) the nodes' first configuration lists; the others
    /// wait for a scenario that adds them ([`ScaleOut::set_config_backends`]).
    pub configured: usize,
    /// The service's health checks.
    pub health: HealthSpec,
}

impl ScaleOutOptions {
    /// Three backends, the lab's default health checks.
    pub fn new(mode: Mode, forwarding: Forwarding) -> Self {
        Self {
            mode,
            forwarding,
            backends: 3,
            configured: 3,
            health: HealthSpec::default(),
        }
    }
}

struct Node {
    lbd: Option<Lbd>,
    bird: BirdNode,
    ns: Netns,
}

struct Backend {
    ns: Netns,
    server: Option<Proc>,
}

/// A running three-node lab (see the module docs).
pub struct ScaleOut {
    prefix: String,
    opts: ScaleOutOptions,
    nodes: Vec<Node>,
    backends: Vec<Backend>,
    host_xdp: Option<BpfDataplane>,
    router: Option<Router>,
    client: Netns,
    tmp: TempDir,
    bpffs_root: PathBuf,
    /// The backends every node's configuration lists ([`ScaleOut::node_yaml`]).
    config_backends: Vec<BackendSpec>,
}

/// No transmit checksum or segmentation offload on a veth end (xdp-environment pitfalls 2
/// and 3); GRO left as it is.
fn no_tx_offloads(ns: &str, dev: &str) -> Result<()> {
    ns_run(
        ns,
        "ethtool",
        &["-K", dev, "tx", "off", "tso", "off", "gso", "off"],
    )
    .map(|_| ())
}

impl ScaleOut {
    /// Builds the namespaces and links, starts the router's and every node's BIRD (waiting
    /// for the sessions) and the backends' servers (DSR: set up with `lbctl backend-setup`'s
    /// script). lbd is started separately ([`ScaleOut::start_all`]).
    pub fn new(opts: ScaleOutOptions) -> Result<ScaleOut> {
        sys::require_root_and_tools()?;
        if !(1..=254).contains(&opts.backends) {
            return Err(LabError::Unavailable(format!(
                "backends must be 1..=254, got {}",
                opts.backends
            )));
        }
        if !(1..=opts.backends).contains(&opts.configured) {
            return Err(LabError::Unavailable(format!(
                "configured must be 1..=backends ({}), got {}",
                opts.backends, opts.configured
            )));
        }
        let prefix = sys::unique_prefix();
        let testsrv = release_binary("lb-testsrv")?;
        let tmp = TempDir::create(&prefix)?;
        let client = Netns::create(&format!("{prefix}-c"))?;
        let mut lab = ScaleOut {
            bpffs_root: Path::new("/sys/fs/bpf").join(&prefix),
            config_backends: (1..=opts.configured).map(backend_spec).collect(),
            prefix: prefix.clone(),
            opts,
            nodes: Vec::new(),
            backends: Vec::new(),
            host_xdp: None,
            router: None,
            client,
            tmp,
        };
        lab.router = Some(Router::new(&prefix, NODES, VIP_NET)?);
        let rt = lab.router().ns().to_string();
        ns_run(
            &rt,
            "sysctl",
            &[
                "-qw",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            ],
        )?;

        // Client <-> router.
        let c = lab.client.name().to_string();
        ip(&[
            "-n", &rt, "link", "add", "cl0", "type", "veth", "peer", "name", "c0", "netns", &c,
        ])?;
        ip(&["-n", &rt, "addr", "add", "172.30.0.1/24", "dev", "cl0"])?;
        ip(&["-n", &c, "addr", "add", "172.30.0.2/24", "dev", "c0"])?;
        ip(&["-n", &rt, "link", "set", "cl0", "up"])?;
        ip(&["-n", &c, "link", "set", "c0", "up"])?;
        ip(&["-n", &c, "route", "add", VIP_NET, "via", "172.30.0.1"])?;
        host_side_offloads(&c, "c0")?;
        no_tx_offloads(&rt, "cl0")?;

        // Router <-> each backend.
        for j in 1..=lab.opts.backends {
            let b = Netns::create(&format!("{prefix}-b{j}"))?;
            let bn = b.name().to_string();
            lab.backends.push(Backend {
                ns: b,
                server: None,
            });
            let bk = format!("bk{j}");
            ip(&[
                "-n", &rt, "link", "add", &bk, "type", "veth", "peer", "name", "e0", "netns", &bn,
            ])?;
            let gw = Ipv4Addr::new(10, 1, u8::try_from(j).expect("checked"), 1);
            ip(&["-n", &rt, "addr", "add", &format!("{gw}/24"), "dev", &bk])?;
            ip(&[
                "-n",
                &bn,
                "addr",
                "add",
                &format!("{}/24", backend_ip(j)),
                "dev",
                "e0",
            ])?;
            ip(&["-n", &rt, "link", "set", &bk, "up"])?;
            ip(&["-n", &bn, "link", "set", "e0", "up"])?;
            ip(&["-n", &bn, "route", "add", "default", "via", &gw.to_string()])?;
            host_side_offloads(&bn, "e0")?;
            no_tx_offloads(&rt, &bk)?;
        }

        // Router <-> each node (BGP), the node's default route, the SNAT route.
        for i in 1..=NODES {
            let n = Netns::create(&format!("{prefix}-n{i}"))?;
            let nn = n.name().to_string();
            let bird = lab
                .router
                .as_mut()
                .expect("set above")
                .add_node(i, &nn, "vips")?;
            lab.nodes.push(Node {
                lbd: None,
                bird,
                ns: n,
            });
            ip(&[
                "-n",
                &nn,
                "route",
                "add",
                "default",
                "via",
                &super::bgp::ROUTER_ADDR.to_string(),
            ])?;
            ns_run(
                &nn,
                "sysctl",
                &[
                    "-qw",
                    "net.ipv4.ip_forward=1",
                    "net.ipv4.conf.all.rp_filter=0",
                    "net.ipv4.conf.default.rp_filter=0",
                    "net.ipv4.conf.up0.rp_filter=0",
                ],
            )?;
            no_tx_offloads(&nn, "up0")?;
            if lab.opts.mode == Mode::Generic {
                // Generic XDP must see wire-sized packets (pitfall 3).
                ns_run(&nn, "ethtool", &["-K", "up0", "gro", "off"])?;
            }
            let rti = format!("rt{i}");
            no_tx_offloads(&rt, &rti)?;
            ip(&[
                "-n",
                &rt,
                "route",
                "add",
                &format!("{}/32", snat_addr(i)),
                "via",
                &node_addr(i).to_string(),
            ])?;
        }

        if lab.opts.mode == Mode::Native {
            // The nodes send with native XDP_TX: the router's ends need an XDP program to
            // receive those frames (topology.rs, `attach_host_xdp_pass`). The client's c0
            // gets nothing from XDP, the backends' e0 carry lb_decap.
            let rt_path = Path::new("/run/netns").join(&rt);
            let ends: Vec<(PathBuf, String)> = (1..=NODES)
                .map(|i| (rt_path.clone(), format!("rt{i}")))
                .collect();
            let targets: Vec<(PathBuf, &str)> =
                ends.iter().map(|(p, d)| (p.clone(), d.as_str())).collect();
            lab.host_xdp = Some(attach_xdp_pass(&targets)?);
        }

        for j in 1..=lab.opts.backends {
            let ns = lab.backends[j - 1].ns.name().to_string();
            let listen = match lab.opts.forwarding {
                // The DSR packet reaches the backend unchanged, to VIP:80.
                Forwarding::Dsr => SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, VIP_PORT),
                Forwarding::FullNat => SocketAddrV4::new(backend_ip(j), VIP_PORT),
            };
            let log = lab.tmp.path().join(format!("b{j}.log"));
            let proc = spawn_testsrv(
                &ns,
                &testsrv,
                listen,
                &backend_name(j),
                &lab.health_file(j),
                &log,
            )?;
            lab.backends[j - 1].server = Some(proc);
            if lab.opts.forwarding == Forwarding::Dsr {
                // Every node's outer source (its `dsr.source`) may send to the backends.
                let sources: Vec<String> = (1..=NODES).map(|i| node_addr(i).to_string()).collect();
                setup_dsr_backend_in(
                    &ns,
                    &[VIP],
                    &sources,
                    lab.opts.mode,
                    &lab.decap_pin_root(j),
                    &[],
                )?;
            }
        }

        for i in 1..=NODES {
            lab.router()
                .wait_established(i, Duration::from_secs(20))
                .map_err(|e| {
                    LabError::Timeout(format!(
                        "{e}\nrouter bird:\n{}\nnode bird:\n{}",
                        lab.router().bird().log_tail(15),
                        lab.nodes[i - 1].bird.bird.log_tail(15)
                    ))
                })?;
        }
        Ok(lab)
    }

    /// The name prefix of the lab's namespaces (`<prefix>-rt`, `-n1`, `-b1`, `-c`, ...).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The router's kernel route to the VIP as `ip route` prints it.
    pub fn route_text(&self) -> Result<String> {
        ns_run(
            self.router().ns(),
            "ip",
            &["-4", "route", "show", "exact", VIP_PREFIX],
        )
    }

    /// The options it was built with.
    pub fn options(&self) -> &ScaleOutOptions {
        &self.opts
    }

    /// The router (namespace, BIRD, kernel routes).
    pub fn router(&self) -> &Router {
        self.router.as_ref().expect("set in new")
    }

    /// Node `i`'s (1-based) namespace name.
    pub fn node_ns(&self, i: usize) -> &str {
        self.nodes[i - 1].ns.name()
    }

    /// Backend `j`'s (1-based) namespace name.
    pub fn backend_ns(&self, j: usize) -> &str {
        self.backends[j - 1].ns.name()
    }

    /// Number of backends.
    pub fn backend_count(&self) -> usize {
        self.backends.len()
    }

    /// The client namespace's path.
    pub fn client_path(&self) -> PathBuf {
        self.client.path()
    }

    /// The lab's temp dir.
    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    fn node_dir(&self, i: usize) -> PathBuf {
        self.tmp.path().join(format!("n{i}"))
    }

    fn health_file(&self, j: usize) -> PathBuf {
        self.tmp.path().join(format!("b{j}.unhealthy"))
    }

    /// Where backend `j`'s `lbctl decap attach` pins (under the lab's bpffs root).
    pub fn decap_pin_root(&self, j: usize) -> PathBuf {
        self.bpffs_root.join(format!("decap-b{j}"))
    }

    /// `lbctl decap stats e0` on DSR backend `j`.
    pub fn decap_counters(&self, j: usize) -> Result<std::collections::BTreeMap<String, u64>> {
        decap_counters_in(self.backend_ns(j), &self.decap_pin_root(j))
    }

    /// Node `i`'s lbd config: the shared service (DSR: `forwarding: dsr` with the node's
    /// address as outer source), its SNAT address, the shared `maglev.seed`, its `announce`
    /// section.
    pub fn node_yaml(&self, i: usize) -> String {
        let dir = self.node_dir(i);
        let cfg = LbdConfig {
            interfaces: vec!["up0".into()],
            xdp_mode: self.opts.mode.as_str().into(),
            bpffs_root: self.bpffs_root.join(format!("n{i}")),
            api_socket: dir.join("lbd.sock"),
            metrics_listen: "127.0.0.1:9560".into(),
            snat_addresses: vec![snat_addr(i)],
            snat_ports: (1024, 32767),
            conntrack: ConntrackSpec::default(),
            conntrack_flows: 65536,
            embryonic_flows: None,
            services: vec![ServiceSpec {
                name: "web".into(),
                vip: VIP,
                port: VIP_PORT,
                health: self.opts.health.clone(),
                on_backend_down: None,
                backends: self.config_backends.clone(),
            }],
        };
        let mut y = cfg.to_yaml();
        if self.opts.forwarding == Forwarding::Dsr {
            y = y
                .replace(
                    "    protocol: tcp\n",
                    "    protocol: tcp\n    forwarding: dsr\n",
                )
                .replace(
                    "services:\n",
                    &format!("dsr:\n  source: {}\nservices:\n", node_addr(i)),
                );
        }
        y.push_str(&format!("maglev:\n  seed: {MAGLEV_SEED}\n"));
        y.push_str(&self.nodes[i - 1].bird.announce_yaml("lbvip0", 0));
        y
    }

    /// Starts (or restarts) node `i`'s lbd on [`Self::node_yaml`] and waits until its API
    /// answers (not for the announcement).
    pub fn start_lbd(&mut self, i: usize) -> Result<()> {
        let yaml = self.node_yaml(i);
        let dir = self.node_dir(i);
        std::fs::create_dir_all(&dir)
            .map_err(LabError::io(format!("creating {}", dir.display())))?;
        if self.nodes[i - 1].lbd.is_none() {
            let lbd = Lbd::new(
                self.nodes[i - 1].ns.name(),
                dir.join("lb.yaml"),
                dir.join("lbd.sock"),
                dir.join("lbd.log"),
            )?;
            self.nodes[i - 1].lbd = Some(lbd);
        }
        let lbd = self.nodes[i - 1].lbd.as_mut().expect("just set");
        lbd.write_config(&yaml)?;
        lbd.start()
    }

    /// Starts every node's lbd and waits until the router's route to the VIP has every node
    /// as a next hop; returns how long the announcements took after the last start.
    pub fn start_all(&mut self, timeout: Duration) -> Result<Duration> {
        for i in 1..=NODES {
            self.start_lbd(i)?;
        }
        self.wait_hops(&all_nodes(), timeout).map_err(|e| {
            let logs: Vec<String> = (1..=NODES)
                .map(|i| {
                    format!(
                        "node {i} lbd:\n{}\nnode {i} bird:\n{}",
                        self.lbd(i)
                            .map(|l| sys::log_tail(l.log_path(), 10))
                            .unwrap_or_default(),
                        self.nodes[i - 1].bird.bird.log_tail(5)
                    )
                })
                .collect();
            LabError::Timeout(format!("{e}\n{}", logs.join("\n")))
        })
    }

    /// Node `i`'s lbd.
    pub fn lbd(&self, i: usize) -> Result<&Lbd> {
        self.nodes[i - 1]
            .lbd
            .as_ref()
            .ok_or_else(|| LabError::Api(format!("node {i}'s lbd was not started")))
    }

    /// Node `i`'s lbd, mutably (to stop or kill it).
    pub fn lbd_mut(&mut self, i: usize) -> Result<&mut Lbd> {
        self.nodes[i - 1]
            .lbd
            .as_mut()
            .ok_or_else(|| LabError::Api(format!("node {i}'s lbd was not started")))
    }

    /// Node `i`'s BIRD (to kill, freeze or restart it).
    pub fn bird_mut(&mut self, i: usize) -> &mut Bird {
        &mut self.nodes[i - 1].bird.bird
    }

    /// The router's next hops for the VIP, sorted.
    pub fn next_hops(&self) -> Result<Vec<Ipv4Addr>> {
        self.router().next_hops(VIP_PREFIX)
    }

    /// Polls the router's route to the VIP every 5 ms until its next hops are exactly `want`
    /// (sorted); returns how long that took.
    pub fn wait_hops(&self, want: &[Ipv4Addr], timeout: Duration) -> Result<Duration> {
        let mut want = want.to_vec();
        want.sort();
        self.router()
            .wait_route(VIP_PREFIX, timeout, |h| h == want.as_slice())
    }

    /// Packets the router sent to node `i` (`rt<i>`'s TX counter).
    pub fn router_tx_packets(&self, i: usize) -> Result<u64> {
        let out = ns_run(
            self.router().ns(),
            "ip",
            &["-s", "-j", "link", "show", "dev", &format!("rt{i}")],
        )?;
        let v: serde_json::Value = serde_json::from_str(&out)
            .map_err(|e| LabError::Api(format!("`ip -s -j link` printed non-JSON ({e}): {out}")))?;
        v[0]["stats64"]["tx"]["packets"]
            .as_u64()
            .ok_or_else(|| LabError::Api(format!("no stats64.tx.packets in {out}")))
    }

    /// Cuts node `i` off from every backend network (`false`: an nftables rule in the
    /// router drops what the node sends to `10.1.0.0/16`, its health checks and its
    /// encapsulated or rewritten packets alike) or connects it again (`true`). The node
    /// sees every backend fail its checks, as when its own link toward them breaks.
    pub fn set_node_backend_path(&self, i: usize, connected: bool) -> Result<()> {
        let rt = self.router().ns();
        let table = format!("lab_cut_n{i}");
        if connected {
            ns_run(rt, "nft", &["delete", "table", "inet", &table]).map(|_| ())
        } else {
            let rules = format!(
                "table inet {table} {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n    iifname \"rt{i}\" ip daddr 10.1.0.0/16 drop\n  }}\n}}\n"
            );
            sys::run_with_input(ns_command(rt, "nft").args(["-f", "-"]), &rules).map(|_| ())
        }
    }

    /// The backends every node's configuration lists, in order.
    pub fn config_backends(&self) -> &[BackendSpec] {
        &self.config_backends
    }

    /// Sets the backends of every node's configuration: the next [`Self::start_lbd`] or
    /// [`Self::reload_all`] writes them.
    pub fn set_config_backends(&mut self, backends: Vec<BackendSpec>) {
        self.config_backends = backends;
    }

    /// Rewrites every running node's configuration file ([`Self::node_yaml`]) and runs
    /// `lbctl reload` on each, node 1 first; returns lbctl's answers in node order.
    pub fn reload_all(&self) -> Result<Vec<String>> {
        (1..=NODES)
            .map(|i| {
                let lbd = self.lbd(i)?;
                lbd.write_config(&self.node_yaml(i))?;
                lbd.lbctl(&["reload"])
                    .map_err(|e| LabError::Api(format!("node {i}: lbctl reload: {e}")))
            })
            .collect()
    }

    /// Makes backend `j`'s `GET /healthz` fail (`false`: its health file exists, every
    /// node's HTTP check fails while the server keeps serving) or pass again (`true`).
    pub fn set_backend_healthy(&self, j: usize, healthy: bool) -> Result<()> {
        super::topology::set_health_file(&self.health_file(j), healthy)
    }

    /// Blocks node `i`'s health checks of backend `j` only (`true`: an nftables rule in the
    /// backend's namespace drops TCP from the node's address to port 80, which is what both
    /// checks are, the DSR probe once `lb_decap` has decapsulated it and the HTTP request)
    /// or lets them through again (`false`). The clients' packets, which the node forwards
    /// with the client's source, and the other nodes' checks pass: node `i` alone sees the
    /// backend fail, its forwarding intact.
    pub fn set_checks_blocked(&self, i: usize, j: usize, blocked: bool) -> Result<()> {
        let ns = self.backend_ns(j);
        let table = format!("lab_checks_n{i}");
        if blocked {
            let rules = format!(
                "table inet {table} {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    ip saddr {} tcp dport {VIP_PORT} drop\n  }}\n}}\n",
                node_addr(i)
            );
            sys::run_with_input(ns_command(ns, "nft").args(["-f", "-"]), &rules).map(|_| ())
        } else {
            ns_run(ns, "nft", &["delete", "table", "inet", &table]).map(|_| ())
        }
    }

    /// Runs `f()` in the client namespace and waits for it.
    pub fn in_client<F, Fut, T>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>>,
        T: Send + 'static,
    {
        run_in_netns(self.client.path(), f)
    }

    /// Starts `f()` in the client namespace on its own thread.
    pub fn spawn_in_client<F, Fut, T>(&self, f: F) -> JoinHandle<Result<T>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>>,
        T: Send + 'static,
    {
        spawn_in_netns(self.client.path(), f)
    }

    /// Waits until a new connection through the VIP answers from the client.
    pub fn wait_vip(&self, timeout: Duration) -> Result<()> {
        let ns = self.client.path();
        sys::wait_for(
            "a connection through the VIP",
            timeout,
            Duration::from_millis(100),
            || {
                run_in_netns(ns.clone(), || async {
                    super::client::probe(super::vip().into(), Duration::from_millis(500)).await
                })
                .ok()
            },
        )
        .map(|_| ())
    }

    /// Measures how long `event` takes to bring the router's next hops to `want`: runs
    /// `event`, then polls; the time counts from just before `event`.
    pub fn time_to_hops(
        &mut self,
        want: &[Ipv4Addr],
        timeout: Duration,
        event: impl FnOnce(&mut Self) -> Result<()>,
    ) -> Result<Duration> {
        let t = Instant::now();
        event(self)?;
        self.wait_hops(want, timeout)?;
        Ok(t.elapsed())
    }
}

impl Drop for ScaleOut {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        for (j, b) in self.backends.iter_mut().enumerate() {
            if let Some(mut p) = b.server.take() {
                if panicking {
                    eprintln!("lab: backend {} log:\n{}", j + 1, p.log_tail(10));
                }
                p.stop(libc::SIGKILL, Duration::from_secs(2));
            }
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if panicking {
                if let Some(l) = &n.lbd {
                    eprintln!(
                        "lab: node {} lbd log:\n{}",
                        i + 1,
                        sys::log_tail(l.log_path(), 20)
                    );
                }
            }
        }
        // Each node: lbd (unloaded inside its namespace), its BIRD, then the namespace.
        self.nodes.clear();
        self.host_xdp = None;
        // The router's BIRD, then its namespace.
        self.router = None;
        self.backends.clear();
        if self.bpffs_root.exists() {
            if let Err(e) = std::fs::remove_dir_all(&self.bpffs_root) {
                eprintln!("lab: cannot remove {}: {e}", self.bpffs_root.display());
            }
        }
        // The client namespace and the temp dir drop after this body.
    }
}
