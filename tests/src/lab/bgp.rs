//! BGP in the lab: a router namespace running BIRD 2 (ECMP: `merge paths`) and, per balancer
//! node, a BIRD speaking eBGP to it and exporting the static protocol that lbd writes
//! (docs/scale-out.md; the configs are the tested recipe of the scale-out notes).
//!
//! ```text
//!  [router ns]                        [node i ns] (a Lab's balancer namespace)
//!  rt<i> 10.88.1.1 peer .<10+i>/32 --- up0 10.88.1.<10+i>/24   BIRD AS 6500<i>, lbd
//!  BIRD AS 65000, kernel export
//! ```
//!
//! [`Router`] owns the router namespace and its BIRD; [`Router::add_node`] wires one node
//! namespace to it and starts the node's BIRD ([`BirdNode`]). A lab with several nodes calls
//! `add_node` once per node (the router's address is on every link, point to point toward
//! that link's node). Every BIRD runs in the foreground (`bird -f`) as a
//! [`Proc`], killed by PID on drop; the namespaces go with their [`Netns`] guards.

use super::sys::{self, ip, ns_command, ns_run, Netns, Proc, TempDir};
use super::{LabError, Result};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The router's address on its links.
pub const ROUTER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 88, 1, 1);
/// The router's AS.
pub const ROUTER_AS: u32 = 65000;

/// Address of node `i` (1-based) toward the router.
pub fn node_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 88, 1, 10 + u8::try_from(i).expect("few nodes"))
}

/// AS of node `i`.
pub fn node_as(i: usize) -> u32 {
    65000 + u32::try_from(i).expect("few nodes")
}

/// The router's bird.conf: kernel export with multipath merge, a BGP session per node
/// (short timers so a dead node is noticed in seconds), accepting only /32s of `vip_net`.
pub fn router_conf(nodes: usize, vip_net: &str) -> String {
    let mut s = format!(
        "router id {ROUTER_ADDR};\nlog stderr all;\nprotocol device {{}}\n\
         protocol kernel {{ ipv4 {{ import none; export all; }}; merge paths on limit 16; }}\n\
         template bgp lb {{\n  local {ROUTER_ADDR} as {ROUTER_AS};\n  hold time 3; keepalive time 1; graceful restart off;\n  \
         connect delay time 1; connect retry time 5; error wait time 1, 10;\n  \
         ipv4 {{ import where net ~ [{vip_net}{{32,32}}]; export none; }};\n}}\n"
    );
    for i in 1..=nodes {
        s.push_str(&format!(
            "protocol bgp n{i} from lb {{ neighbor {} as {}; }}\n",
            node_addr(i),
            node_as(i)
        ));
    }
    s
}

/// A node's bird.conf: includes lbd's file and exports its static protocol `protocol`.
pub fn node_conf(i: usize, include: &Path, protocol: &str) -> String {
    format!(
        "router id {id};\nlog stderr all;\nprotocol device {{}}\ninclude \"{inc}\";\n\
         protocol bgp up {{\n  local {id} as {asn}; neighbor {ROUTER_ADDR} as {ROUTER_AS};\n  \
         hold time 3; keepalive time 1; graceful restart off;\n  \
         connect delay time 1; connect retry time 5; error wait time 1, 10;\n  \
         ipv4 {{ import none; export where proto = \"{protocol}\"; }};\n}}\n",
        id = node_addr(i),
        asn = node_as(i),
        inc = include.display(),
    )
}

/// One BIRD process in a namespace, with its config, control socket and log.
pub struct Bird {
    ns: String,
    dir: PathBuf,
    proc: Option<Proc>,
}

impl Bird {
    /// Writes `conf` to `dir/bird.conf` and starts `bird -f` in `ns`.
    pub fn start(ns: &str, dir: &Path, conf: &str) -> Result<Bird> {
        std::fs::create_dir_all(dir)
            .map_err(LabError::io(format!("creating {}", dir.display())))?;
        let conf_path = dir.join("bird.conf");
        std::fs::write(&conf_path, conf)
            .map_err(LabError::io(format!("writing {}", conf_path.display())))?;
        let mut b = Bird {
            ns: ns.to_string(),
            dir: dir.to_path_buf(),
            proc: None,
        };
        b.spawn()?;
        Ok(b)
    }

    fn spawn(&mut self) -> Result<()> {
        let _ = std::fs::remove_file(self.socket());
        let mut cmd = ns_command(&self.ns, "bird");
        cmd.arg("-f")
            .arg("-c")
            .arg(self.dir.join("bird.conf"))
            .arg("-s")
            .arg(self.socket());
        self.proc = Some(Proc::spawn(
            &mut cmd,
            "bird",
            Some(&self.dir.join("bird.log")),
        )?);
        let sock = self.socket();
        sys::wait_for(
            "BIRD's control socket",
            Duration::from_secs(10),
            Duration::from_millis(20),
            || sock.exists().then_some(()),
        )
        .map_err(|e| {
            LabError::Timeout(format!(
                "{e}; bird log:\n{}",
                sys::log_tail(&self.dir.join("bird.log"), 20)
            ))
        })
    }

    /// The control socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("bird.ctl")
    }

    /// `birdc -s SOCK ARGS`.
    pub fn birdc(&self, args: &[&str]) -> Result<String> {
        let sock = self.socket();
        let mut all = vec!["-s", sock.to_str().expect("utf-8 path")];
        all.extend_from_slice(args);
        ns_run(&self.ns, "birdc", &all)
    }

    /// Its log so far (the last `n` lines).
    pub fn log_tail(&self, n: usize) -> String {
        sys::log_tail(&self.dir.join("bird.log"), n)
    }

    /// Sends `signal` to the running BIRD (by PID; SIGSTOP freezes it, SIGCONT resumes it).
    pub fn signal(&mut self, signal: libc::c_int) {
        if let Some(p) = self.proc.as_mut() {
            p.signal(signal);
        }
    }

    /// Kills BIRD with SIGKILL and reaps it (its BGP sessions close with it).
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop(libc::SIGKILL, Duration::from_secs(2));
        }
    }

    /// Starts BIRD again on the same config (after [`Bird::kill`]).
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            if std::thread::panicking() {
                eprintln!("lab: bird in {} log:\n{}", self.ns, p.log_tail(15));
            }
            p.stop(libc::SIGKILL, Duration::from_secs(2));
        }
    }
}

/// A balancer node's side: its BIRD and the include file lbd owns.
pub struct BirdNode {
    /// The node's BIRD.
    pub bird: Bird,
    /// The include file (lbd's `announce.include_file`).
    pub include: PathBuf,
    /// The static protocol's name.
    pub protocol: String,
}

impl BirdNode {
    /// The YAML `announce` section for this node's lbd (`device`, `address`, `peer` and
    /// `drain` as given).
    pub fn announce_yaml(&self, device: &str, drain_ms: u64) -> String {
        format!(
            "announce:\n  bird_socket: {}\n  include_file: {}\n  protocol: {}\n  device: {device}\n  \
             address: 169.254.77.1\n  peer: 169.254.77.2\n  drain: {drain_ms}ms\n",
            self.bird.socket().display(),
            self.include.display(),
            self.protocol
        )
    }
}

/// The router namespace and its BIRD.
pub struct Router {
    nodes: Vec<String>,
    bird: Option<Bird>,
    ns: Netns,
    tmp: TempDir,
}

impl Router {
    /// Creates the router namespace `<prefix>-rt` (forwarding on, L4 multipath hash) and its
    /// BIRD configured for `nodes` nodes and VIPs in `vip_net` (e.g. `192.0.2.0/24`).
    pub fn new(prefix: &str, nodes: usize, vip_net: &str) -> Result<Router> {
        sys::require_root_and_tools()?;
        let tmp = TempDir::create(&format!("{prefix}-rt"))?;
        let ns = Netns::create(&format!("{prefix}-rt"))?;
        ns_run(
            ns.name(),
            "sysctl",
            &[
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.ipv4.fib_multipath_hash_policy=1",
                "net.ipv4.fib_multipath_use_neigh=1",
            ],
        )?;
        let mut r = Router {
            nodes: Vec::new(),
            bird: None,
            ns,
            tmp,
        };
        let dir = r.tmp.path().join("router");
        r.bird = Some(Bird::start(
            r.ns.name(),
            &dir,
            &router_conf(nodes, vip_net),
        )?);
        Ok(r)
    }

    /// The router namespace's name.
    pub fn ns(&self) -> &str {
        self.ns.name()
    }

    /// The router's BIRD.
    pub fn bird(&self) -> &Bird {
        self.bird.as_ref().expect("started in new")
    }

    /// Wires node namespace `node_ns` as node `i` (1-based: `up0` 10.88.1.<10+i>/24 there,
    /// `rt<i>` here), writes an empty include file and starts the node's BIRD.
    pub fn add_node(&mut self, i: usize, node_ns: &str, protocol: &str) -> Result<BirdNode> {
        let rt = format!("rt{i}");
        let r = self.ns.name().to_string();
        ip(&[
            "-n", &r, "link", "add", &rt, "type", "veth", "peer", "name", "up0", "netns", node_ns,
        ])?;
        // The router's address on every link, point-to-point toward that link's node: BIRD
        // then sees each node as a neighbour on its own interface and installs `nexthop via
        // <node> dev rt<i>` (with one /24 on the first link, it resolved every node onto that
        // link and ECMP sent all flows to node 1).
        ip(&[
            "-n",
            &r,
            "addr",
            "add",
            &ROUTER_ADDR.to_string(),
            "peer",
            &format!("{}/32", node_addr(i)),
            "dev",
            &rt,
        ])?;
        ip(&["-n", &r, "link", "set", &rt, "up"])?;
        ip(&[
            "-n",
            node_ns,
            "addr",
            "add",
            &format!("{}/24", node_addr(i)),
            "dev",
            "up0",
        ])?;
        ip(&["-n", node_ns, "link", "set", "up0", "up"])?;
        self.nodes.push(node_ns.to_string());
        let dir = self.tmp.path().join(format!("node{i}"));
        std::fs::create_dir_all(&dir)
            .map_err(LabError::io(format!("creating {}", dir.display())))?;
        let include = dir.join("vips.conf");
        std::fs::write(
            &include,
            format!("protocol static {protocol} {{ ipv4; }}\n"),
        )
        .map_err(LabError::io(format!("writing {}", include.display())))?;
        let bird = Bird::start(node_ns, &dir, &node_conf(i, &include, protocol))?;
        Ok(BirdNode {
            bird,
            include,
            protocol: protocol.to_string(),
        })
    }

    /// Waits until the router's BGP session with node `i` is established.
    pub fn wait_established(&self, i: usize, timeout: Duration) -> Result<()> {
        let name = format!("n{i}");
        let mut last = String::new();
        sys::wait_for(
            "the BGP session",
            timeout,
            Duration::from_millis(100),
            || {
                last = self
                    .bird()
                    .birdc(&["show", "protocols", &name])
                    .unwrap_or_default();
                last.contains("Established").then_some(())
            },
        )
        .map_err(|e| LabError::Timeout(format!("{e} with node {i}: {last}")))
    }

    /// The next hops of `prefix` (e.g. `192.0.2.10/32`) in the router's kernel table.
    pub fn next_hops(&self, prefix: &str) -> Result<Vec<Ipv4Addr>> {
        let out = ns_run(
            self.ns.name(),
            "ip",
            &["-4", "route", "show", "exact", prefix],
        )?;
        let mut hops: Vec<Ipv4Addr> = out
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] == "via")
            .filter_map(|w| w[1].parse().ok())
            .collect();
        hops.sort();
        Ok(hops)
    }

    /// Polls [`Self::next_hops`] every 5 ms until `pred` holds; returns the time it took.
    pub fn wait_route(
        &self,
        prefix: &str,
        timeout: Duration,
        pred: impl Fn(&[Ipv4Addr]) -> bool,
    ) -> Result<Duration> {
        let start = Instant::now();
        let mut last = Vec::new();
        while start.elapsed() < timeout {
            last = self.next_hops(prefix)?;
            if pred(&last) {
                return Ok(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Err(LabError::Timeout(format!(
            "route {prefix} in the router still has next hops {last:?} after {timeout:?}"
        )))
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        // The router's BIRD goes first (its Drop kills it by PID); the namespace and the
        // temporary directory follow as fields.
        self.bird = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_follow_the_recipe() {
        let r = router_conf(3, "192.0.2.0/24");
        for want in [
            "router id 10.88.1.1;",
            "merge paths on limit 16;",
            "import where net ~ [192.0.2.0/24{32,32}];",
            "protocol bgp n3 from lb { neighbor 10.88.1.13 as 65003; }",
            "graceful restart off;",
        ] {
            assert!(r.contains(want), "{want} missing from\n{r}");
        }
        let n = node_conf(2, Path::new("/tmp/x/vips.conf"), "vips");
        for want in [
            "router id 10.88.1.12;",
            "include \"/tmp/x/vips.conf\";",
            "local 10.88.1.12 as 65002; neighbor 10.88.1.1 as 65000;",
            "export where proto = \"vips\";",
        ] {
            assert!(n.contains(want), "{want} missing from\n{n}");
        }
    }
}
