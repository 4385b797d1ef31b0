//! [`Lab`]: builds the namespaces and veths of one lab and owns everything started in them.
//!
//! Drop order (also on panic): backend servers, then lbd (`lbd --unload` detaches XDP and
//! removes the pins), then the namespaces, then the temp dir and the bpffs directory.

use super::client::{enter_netns, run_in_netns, spawn_in_netns};
use super::lbd::{
    release_binary, BackendSpec, ConntrackSpec, HealthSpec, Lbd, LbdConfig, ServiceSpec,
};
use super::sys::{self, ip, ns_command, ns_run, Netns, Proc, TempDir};
use super::{
    backend_addr, backend_ip, backend_name, balancer_private_ip, LabError, Result, SNAT_ADDR, VIP,
    VIP_PORT,
};
use lb::dataplane::{bpf::BpfDataplane, LoadOptions, XdpMode};
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::thread::JoinHandle;
use std::time::Duration;

/// How lbd attaches XDP in a lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Driver mode on the veths.
    Native,
    /// skb mode.
    Generic,
}

impl Mode {
    /// The config file's `xdp_mode` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Native => "native",
            Mode::Generic => "generic",
        }
    }
}

/// What to build.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// Number of backends (1..=254).
    pub backends: usize,
    /// XDP mode lbd is configured with (also decides the balancer veths' GRO setting).
    pub mode: Mode,
    /// Name prefix; unique per lab (default [`sys::unique_prefix`]).
    pub prefix: Option<String>,
    /// MTU of the balancer's end of the client link (`pub0`; `c0` keeps 1500), so packets
    /// from the backends do not fit toward the client (path MTU discovery through lb).
    pub pub0_mtu: Option<u32>,
    /// MTU of the balancer's end of every backend link (`bk<i>`; `e0` keeps 1500), so
    /// packets from the client do not fit toward the backends.
    pub backend_link_mtu: Option<u32>,
    /// Native mode: attach `lb_xdp_pass` to the host ends (`c0`, every `e0`) so lb's `XDP_TX`
    /// answers are delivered (default true). The bench turns it off: its packet-rate
    /// section attaches its own counting program (which passes every packet) to `e0`.
    pub host_xdp_pass: bool,
    /// With `host_xdp_pass`: also on every backend's `e0` (default true). The DSR scenarios
    /// turn it off: the backend's own XDP program (`lb_decap`, attached by the commands
    /// `lbctl backend-setup` prints) takes `e0`'s XDP slot and serves the same purpose.
    pub backends_xdp_pass: bool,
}

impl LabOptions {
    /// `backends` backends in `mode`.
    pub fn new(backends: usize, mode: Mode) -> Self {
        Self {
            backends,
            mode,
            prefix: None,
            pub0_mtu: None,
            backend_link_mtu: None,
            host_xdp_pass: true,
            backends_xdp_pass: true,
        }
    }
}

/// One backend host: its namespace and its test server.
struct Backend {
    ns: Netns,
    server: Option<Proc>,
}

/// A running lab. See the module docs of [`crate::lab`] for the topology.
pub struct Lab {
    prefix: String,
    mode: Mode,
    backends: Vec<Backend>,
    lbd: Option<Lbd>,
    /// Native mode: `lb_xdp_pass` on the host ends (`c0`, every `e0`), see
    /// [`attach_host_xdp_pass`]; detached when dropped.
    host_xdp: Option<BpfDataplane>,
    client: Netns,
    balancer: Netns,
    tmp: TempDir,
    bpffs_root: PathBuf,
    testsrv_bin: PathBuf,
}

impl Lab {
    /// Builds the namespaces and veths and starts a test server on every backend (lbd is
    /// started separately, see [`Lab::start_lbd`]).
    pub fn new(opts: LabOptions) -> Result<Lab> {
        sys::require_root_and_tools()?;
        if !(1..=254).contains(&opts.backends) {
            return Err(LabError::Unavailable(format!(
                "backends must be 1..=254, got {}",
                opts.backends
            )));
        }
        let prefix = opts.prefix.clone().unwrap_or_else(sys::unique_prefix);
        let testsrv_bin = release_binary("lb-testsrv")?;
        let tmp = TempDir::create(&prefix)?;
        let client = Netns::create(&format!("{prefix}-c"))?;
        let balancer = Netns::create(&format!("{prefix}-lb"))?;
        let mut lab = Lab {
            bpffs_root: Path::new("/sys/fs/bpf").join(&prefix),
            prefix,
            mode: opts.mode,
            backends: Vec::new(),
            lbd: None,
            host_xdp: None,
            client,
            balancer,
            tmp,
            testsrv_bin,
        };
        lab.wire(opts.backends)?;
        let lb = lab.balancer.name().to_string();
        if let Some(mtu) = opts.pub0_mtu {
            ip(&["-n", &lb, "link", "set", "pub0", "mtu", &mtu.to_string()])?;
        }
        if let Some(mtu) = opts.backend_link_mtu {
            for i in 1..=opts.backends {
                ip(&[
                    "-n",
                    &lb,
                    "link",
                    "set",
                    &format!("bk{i}"),
                    "mtu",
                    &mtu.to_string(),
                ])?;
            }
        }
        if opts.mode == Mode::Native && opts.host_xdp_pass {
            lab.host_xdp = Some(lab.attach_host_xdp_pass(opts.backends_xdp_pass)?);
        }
        for i in 1..=opts.backends {
            lab.start_backend(i)?;
        }
        Ok(lab)
    }

    fn wire(&mut self, n: usize) -> Result<()> {
        let c = self.client.name().to_string();
        let lb = self.balancer.name().to_string();
        // Client <-> balancer.
        ip(&[
            "-n", &lb, "link", "add", "pub0", "type", "veth", "peer", "name", "c0", "netns", &c,
        ])?;
        ip(&["-n", &lb, "addr", "add", "172.30.0.1/24", "dev", "pub0"])?;
        ip(&["-n", &c, "addr", "add", "172.30.0.2/24", "dev", "c0"])?;
        ip(&["-n", &lb, "link", "set", "pub0", "up"])?;
        ip(&["-n", &c, "link", "set", "c0", "up"])?;
        ip(&[
            "-n",
            &c,
            "route",
            "add",
            "192.0.2.0/24",
            "via",
            "172.30.0.1",
        ])?;
        host_side_offloads(&c, "c0")?;
        // Balancer <-> each backend: one veth per backend network (no bridge).
        for i in 1..=n {
            let b = Netns::create(&format!("{}-b{i}", self.prefix))?;
            let bn = b.name().to_string();
            self.backends.push(Backend {
                ns: b,
                server: None,
            });
            let bk = format!("bk{i}");
            ip(&[
                "-n", &lb, "link", "add", &bk, "type", "veth", "peer", "name", "e0", "netns", &bn,
            ])?;
            ip(&[
                "-n",
                &lb,
                "addr",
                "add",
                &format!("{}/24", balancer_private_ip(i)),
                "dev",
                &bk,
            ])?;
            ip(&[
                "-n",
                &bn,
                "addr",
                "add",
                &format!("{}/24", backend_ip(i)),
                "dev",
                "e0",
            ])?;
            ip(&["-n", &lb, "link", "set", &bk, "up"])?;
            ip(&["-n", &bn, "link", "set", "e0", "up"])?;
            ip(&[
                "-n",
                &bn,
                "route",
                "add",
                "default",
                "via",
                &balancer_private_ip(i).to_string(),
            ])?;
            host_side_offloads(&bn, "e0")?;
        }
        // The balancer forwards (bpf_fib_lookup needs it) without reverse-path filtering.
        let mut sysctls = vec![
            "net.ipv4.ip_forward=1".to_string(),
            "net.ipv4.conf.all.rp_filter=0".to_string(),
            "net.ipv4.conf.default.rp_filter=0".to_string(),
            "net.ipv4.conf.pub0.rp_filter=0".to_string(),
        ];
        sysctls.extend((1..=n).map(|i| format!("net.ipv4.conf.bk{i}.rp_filter=0")));
        let mut args = vec!["-qw"];
        args.extend(sysctls.iter().map(String::as_str));
        ns_run(&lb, "sysctl", &args)?;
        if self.mode == Mode::Generic {
            // Generic XDP must see wire-sized packets, not GRO super-packets (pitfall 3).
            for dev in std::iter::once("pub0".to_string()).chain((1..=n).map(|i| format!("bk{i}")))
            {
                ns_run(&lb, "ethtool", &["-K", &dev, "gro", "off"])?;
            }
        }
        // The client must not reach backends directly, even with a route: only packets whose
        // source is the SNAT address (lb's own NO_NEIGH pass-ups) may be forwarded from pub0.
        let rules = format!(
            "table inet lab {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n    iifname \"pub0\" ip saddr != {SNAT_ADDR} drop\n  }}\n}}\n"
        );
        sys::run_with_input(ns_command(&lb, "nft").args(["-f", "-"]), &rules)?;
        Ok(())
    }

    /// Native mode: attaches `lb_xdp_pass` (native) to the host end of every link (`c0` and
    /// each `e0`). A veth delivers the frames its peer sends with native `XDP_TX` (lb's RST
    /// and fragmentation-needed answers) only when the receiving end has an XDP program of
    /// its own: `veth_xdp_flush` wakes the receiver only then, and GRO alone (enough for
    /// `XDP_REDIRECT`, whose flush always wakes it) leaves those frames queued until some
    /// redirected frame happens to arrive. On a NIC `XDP_TX` needs nothing of the kind.
    /// Without `backends`, only `c0`.
    fn attach_host_xdp_pass(&self, backends: bool) -> Result<BpfDataplane> {
        let hosts: Vec<(PathBuf, &str)> = std::iter::once((self.client.path(), "c0"))
            .chain(
                self.backends
                    .iter()
                    .filter(|_| backends)
                    .map(|b| (b.ns.path(), "e0")),
            )
            .collect();
        attach_xdp_pass(&hosts)
    }

    /// The name prefix of this lab's namespaces.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The XDP mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Number of backends.
    pub fn backend_count(&self) -> usize {
        self.backends.len()
    }

    /// The client namespace's name.
    pub fn client_ns(&self) -> &str {
        self.client.name()
    }

    /// The balancer namespace's name.
    pub fn balancer_ns(&self) -> &str {
        self.balancer.name()
    }

    /// Namespace name of backend `i` (1-based).
    pub fn backend_ns(&self, i: usize) -> &str {
        self.backends[i - 1].ns.name()
    }

    /// The lab's temp dir (config, socket, logs).
    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// Starts (or restarts) the test server of backend `i` (1-based) and waits until it
    /// listens.
    pub fn start_backend(&mut self, i: usize) -> Result<()> {
        self.start_backend_on(i, backend_addr(i))
    }

    /// [`Lab::start_backend`] with the server listening on `listen` (e.g. `0.0.0.0:80` for a
    /// DSR backend, which receives the client's packets to the VIP unchanged).
    pub fn start_backend_on(&mut self, i: usize, listen: SocketAddrV4) -> Result<()> {
        self.kill_backend(i);
        let ns = self.backends[i - 1].ns.name().to_string();
        let log = self.tmp.path().join(format!("b{i}.log"));
        let proc = spawn_testsrv(
            &ns,
            &self.testsrv_bin,
            listen,
            &backend_name(i),
            &self.health_file(i),
            &log,
        )?;
        self.backends[i - 1].server = Some(proc);
        Ok(())
    }

    /// The file whose existence makes backend `i`'s `GET /healthz` fail.
    fn health_file(&self, i: usize) -> PathBuf {
        self.tmp.path().join(format!("b{i}.unhealthy"))
    }

    /// Makes backend `i`'s health endpoint fail (`false`) or pass again (`true`) while every
    /// other endpoint keeps serving: a health-check flap.
    pub fn set_backend_healthy(&self, i: usize, healthy: bool) -> Result<()> {
        set_health_file(&self.health_file(i), healthy)
    }

    /// Takes backend `i`'s link down (`e0` in its namespace) or up again: packets to it vanish
    /// without any answer (a host or link failure, unlike [`Lab::kill_backend`]).
    pub fn set_backend_link(&self, i: usize, up: bool) -> Result<()> {
        let ns = self.backends[i - 1].ns.name().to_string();
        ns_run(
            &ns,
            "ip",
            &["link", "set", "e0", if up { "up" } else { "down" }],
        )?;
        if up {
            // Taking the link down flushed its routes.
            let gw = balancer_private_ip(i).to_string();
            ns_run(&ns, "ip", &["route", "replace", "default", "via", &gw])?;
        }
        Ok(())
    }

    /// Where the DSR backends' `lbctl decap attach` pins (under the lab's bpffs root, so
    /// dropping the lab removes it).
    pub fn decap_pin_root(&self) -> PathBuf {
        self.bpffs_root.join("decap")
    }

    /// Configures backend `i` for the DSR service(s) on `vip` with lb's XDP decapsulator on
    /// `e0` (this kernel has no `ipip` module): runs `lbctl backend-setup --dsr VIP --decap xdp
    /// --iface e0 --xdp-mode <the lab's mode> --pin-root <[`Lab::decap_pin_root`]> --source
    /// <each of the balancer's backend-side addresses>` (the addresses lbd's `dsr.source` may
    /// be in this lab) and then exactly the script it printed, with `sh` in the backend's
    /// namespace (`lbctl` on its `PATH`). Returns the script.
    pub fn setup_dsr_backend(&self, i: usize, vip: std::net::Ipv4Addr) -> Result<String> {
        let sources: Vec<String> = (1..=self.backend_count())
            .map(|b| super::balancer_private_ip(b).to_string())
            .collect();
        self.setup_dsr_backend_with(i, &[vip], &sources, &[])
    }

    /// [`Lab::setup_dsr_backend`] for the VIPs `vips`, with `--source` for each of `sources`
    /// and `extra` arguments to `lbctl backend-setup`. Returns the script (it may also fail,
    /// for tests of the script's own failures).
    pub fn setup_dsr_backend_with(
        &self,
        i: usize,
        vips: &[std::net::Ipv4Addr],
        sources: &[String],
        extra: &[&str],
    ) -> Result<String> {
        setup_dsr_backend_in(
            self.backends[i - 1].ns.name(),
            vips,
            sources,
            self.mode,
            &self.decap_pin_root(),
            extra,
        )
    }

    /// `lbctl decap stats e0` on backend `i` (set up by [`Lab::setup_dsr_backend`]): counter
    /// name -> value.
    pub fn decap_counters(&self, i: usize) -> Result<std::collections::BTreeMap<String, u64>> {
        decap_counters_in(self.backends[i - 1].ns.name(), &self.decap_pin_root())
    }

    /// Runs `program args` in backend `i`'s namespace; returns its standard output.
    pub fn backend_run(&self, i: usize, program: &str, args: &[&str]) -> Result<String> {
        ns_run(self.backends[i - 1].ns.name(), program, args)
    }

    /// Kills the test server of backend `i` (SIGKILL, by PID); the host stays up, so new
    /// connections to it are refused with RST.
    pub fn kill_backend(&mut self, i: usize) {
        if let Some(mut p) = self.backends[i - 1].server.take() {
            p.stop(libc::SIGKILL, Duration::from_secs(2));
        }
    }

    /// The lab's default lbd config: every interface, the lab's mode, a unique bpffs root,
    /// the socket in the temp dir, one service `web` on VIP:80 with `backends`.
    pub fn lbd_config(&self, backends: Vec<BackendSpec>, health: HealthSpec) -> LbdConfig {
        let mut interfaces = vec!["pub0".to_string()];
        interfaces.extend((1..=self.backends.len()).map(|i| format!("bk{i}")));
        LbdConfig {
            interfaces,
            xdp_mode: self.mode.as_str().to_string(),
            bpffs_root: self.bpffs_root.clone(),
            api_socket: self.socket_path(),
            metrics_listen: "127.0.0.1:9560".into(),
            snat_addresses: vec![SNAT_ADDR],
            snat_ports: (1024, 32767),
            conntrack: ConntrackSpec::default(),
            conntrack_flows: 65536,
            embryonic_flows: None,
            services: vec![ServiceSpec {
                name: "web".into(),
                vip: VIP,
                port: VIP_PORT,
                health,
                on_backend_down: None,
                backends,
            }],
        }
    }

    /// The default config with every backend as an equal primary.
    pub fn default_config(&self) -> LbdConfig {
        let backends = (1..=self.backends.len())
            .map(|i| BackendSpec::new(backend_addr(i)))
            .collect();
        self.lbd_config(backends, HealthSpec::default())
    }

    /// lbd's control socket in this lab.
    pub fn socket_path(&self) -> PathBuf {
        self.tmp.path().join("lbd.sock")
    }

    /// Path of the lab's config file.
    pub fn config_path(&self) -> PathBuf {
        self.tmp.path().join("lb.yaml")
    }

    /// Writes `config` and starts lbd on it, then waits until every primary backend of the
    /// config is up and a connection through the VIP works.
    pub fn start_lbd(&mut self, config: &LbdConfig) -> Result<()> {
        self.start_lbd_text(&config.to_yaml())?;
        let primaries: Vec<_> = config.services[0]
            .backends
            .iter()
            .filter(|b| !b.backup && !b.drain)
            .map(|b| (b.address, "up"))
            .collect();
        self.lbd()?
            .wait_health(&primaries, Duration::from_secs(20))?;
        self.wait_vip(Duration::from_secs(10))
    }

    /// Writes `text` as the config file and starts lbd on it (no waiting for health).
    pub fn start_lbd_text(&mut self, text: &str) -> Result<()> {
        if self.lbd.is_none() {
            self.lbd = Some(Lbd::new(
                self.balancer.name(),
                self.config_path(),
                self.socket_path(),
                self.tmp.path().join("lbd.log"),
            )?);
        }
        let lbd = self.lbd.as_mut().expect("just set");
        lbd.write_config(text)?;
        lbd.start()
    }

    /// Starts lbd on an existing config file (e.g. `config/demo.yaml`) whose `api_socket` is
    /// `socket` and `bpffs_root` is `bpffs_root` (removed with the lab).
    pub fn start_lbd_file(
        &mut self,
        path: &Path,
        socket: PathBuf,
        bpffs_root: PathBuf,
    ) -> Result<()> {
        self.bpffs_root = bpffs_root;
        let mut lbd = Lbd::new(
            self.balancer.name(),
            path.to_path_buf(),
            socket,
            self.tmp.path().join("lbd.log"),
        )?;
        lbd.start()?;
        self.lbd = Some(lbd);
        Ok(())
    }

    /// The lab's lbd (started with [`Lab::start_lbd`]): API calls, `lbctl`.
    pub fn lbd(&self) -> Result<&Lbd> {
        self.lbd
            .as_ref()
            .ok_or_else(|| LabError::Api("lbd was not started in this lab".into()))
    }

    /// The lab's lbd, mutably (to stop, start or unload it).
    pub fn lbd_mut(&mut self) -> Result<&mut Lbd> {
        self.lbd
            .as_mut()
            .ok_or_else(|| LabError::Api("lbd was not started in this lab".into()))
    }

    /// Waits until `GET /id` through the VIP succeeds from the client.
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

    /// The client namespace's path (for [`super::client::Prober`]).
    pub fn client_path(&self) -> PathBuf {
        self.client.path()
    }

    /// The balancer namespace's path.
    pub fn balancer_path(&self) -> PathBuf {
        self.balancer.path()
    }

    /// Runs `program args` in the client namespace.
    pub fn client_run(&self, program: &str, args: &[&str]) -> Result<String> {
        ns_run(self.client.name(), program, args)
    }

    /// Runs `program args` in the balancer namespace.
    pub fn balancer_run(&self, program: &str, args: &[&str]) -> Result<String> {
        ns_run(self.balancer.name(), program, args)
    }
}

/// Offloads on a host-side veth end: no checksum/segmentation offload (pitfalls 2 and 3), GRO
/// on so native `XDP_REDIRECT` into it delivers (pitfall 1).
pub(crate) fn host_side_offloads(ns: &str, dev: &str) -> Result<()> {
    ns_run(
        ns,
        "ethtool",
        &[
            "-K", dev, "tx", "off", "tso", "off", "gso", "off", "gro", "on",
        ],
    )
    .map(|_| ())
}

/// Attaches `lb_xdp_pass` (native) to every `(namespace path, device)` of `targets`, from one
/// loaded object (see [`Lab`]'s `attach_host_xdp_pass` for why a veth needs it); the programs
/// stay attached while the returned data plane lives.
pub(crate) fn attach_xdp_pass(targets: &[(PathBuf, &str)]) -> Result<BpfDataplane> {
    let opts = LoadOptions {
        pin_root: None,
        max_services: 1,
        max_backends: 2,
        maglev_table_size: 7,
        conntrack_flows: 16,
        embryonic_flows: 16,
    };
    let mut dp = BpfDataplane::load(&opts)
        .map_err(|e| LabError::Unavailable(format!("loading lb_xdp_pass: {e}")))?;
    for (ns, dev) in targets {
        let dp = &mut dp;
        std::thread::scope(|s| {
            s.spawn(move || {
                enter_netns(ns)?;
                dp.attach_pass(dev, XdpMode::Native)
                    .map(|_| ())
                    .map_err(|e| {
                        LabError::Unavailable(format!(
                            "attaching lb_xdp_pass to {dev} in {}: {e}",
                            ns.display()
                        ))
                    })
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })?;
    }
    Ok(dp)
}

/// Starts `lb-testsrv` (`bin`) in namespace `ns` listening on `listen` as `name`, its
/// `/healthz` failing while `health_file` exists, logging to `log`; returns once it listens.
pub(crate) fn spawn_testsrv(
    ns: &str,
    bin: &Path,
    listen: SocketAddrV4,
    name: &str,
    health_file: &Path,
    log: &Path,
) -> Result<Proc> {
    let mut cmd = ns_command(ns, bin);
    cmd.args([
        "--listen",
        &listen.to_string(),
        "--name",
        name,
        "--health-file",
        &health_file.display().to_string(),
    ]);
    let stderr = std::fs::File::options()
        .create(true)
        .append(true)
        .open(log)
        .map_err(LabError::io(format!("opening {}", log.display())))?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .map_err(LabError::io("starting lb-testsrv"))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut proc = Proc::from_child(
        child,
        &format!("lb-testsrv {name}"),
        Some(log.to_path_buf()),
    );
    // The server prints one line once it listens.
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(LabError::io("reading lb-testsrv's ready line"))?;
    if !line.starts_with("listening") {
        let st = proc.stop(libc::SIGKILL, Duration::from_secs(1));
        return Err(LabError::Unavailable(format!(
            "lb-testsrv {name} did not start ({st}): {}",
            sys::log_tail(log, 10)
        )));
    }
    Ok(proc)
}

/// Configures the backend in namespace `ns` for the DSR service(s) on `vip` with lb's XDP
/// decapsulator on `e0`: runs `lbctl backend-setup --dsr VIP --decap xdp --iface e0
/// --xdp-mode MODE --pin-root PIN_ROOT` and then exactly the script it printed, with `sh` in
/// the namespace (`lbctl` on its `PATH`). Returns the script.
pub fn setup_dsr_backend_in(
    ns: &str,
    vips: &[std::net::Ipv4Addr],
    sources: &[String],
    mode: Mode,
    pin_root: &Path,
    extra: &[&str],
) -> Result<String> {
    let lbctl = release_binary("lbctl")?;
    let mut args: Vec<String> = vec!["backend-setup".into()];
    for vip in vips {
        args.extend(["--dsr".into(), vip.to_string()]);
    }
    for s in sources {
        args.extend(["--source".into(), s.clone()]);
    }
    args.extend(
        [
            "--decap",
            "xdp",
            "--iface",
            "e0",
            "--xdp-mode",
            mode.as_str(),
            "--pin-root",
            &pin_root.display().to_string(),
        ]
        .map(String::from),
    );
    args.extend(extra.iter().map(|a| (*a).to_string()));
    // No lbd is asked for the sources: a socket that cannot exist.
    let script = sys::run(
        std::process::Command::new(&lbctl)
            .args(&args)
            .args(["--socket", "/nonexistent/lbd.sock"]),
    )?;
    let bin_dir = lbctl.parent().unwrap_or(Path::new("/"));
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
    );
    let mut cmd = ns_command(ns, "sh");
    cmd.arg("-s").env("PATH", path);
    sys::run_with_input(&mut cmd, &script)?;
    Ok(script)
}

/// `lbctl decap stats e0 --pin-root PIN_ROOT` in namespace `ns` (set up by
/// [`setup_dsr_backend_in`]): counter name -> value.
pub fn decap_counters_in(
    ns: &str,
    pin_root: &Path,
) -> Result<std::collections::BTreeMap<String, u64>> {
    let lbctl = release_binary("lbctl")?;
    let root = pin_root.display().to_string();
    let out = sys::run(ns_command(ns, &lbctl).args([
        "decap",
        "stats",
        "e0",
        "--pin-root",
        &root,
        "--output",
        "json",
    ]))?;
    serde_json::from_str(&out)
        .map_err(|e| LabError::Api(format!("`lbctl decap stats` printed non-JSON ({e}): {out}")))
}

impl Drop for Lab {
    fn drop(&mut self) {
        for b in &mut self.backends {
            if let Some(mut p) = b.server.take() {
                if std::thread::panicking() {
                    eprintln!("lab: {} log:\n{}", b.ns.name(), p.log_tail(10));
                }
                p.stop(libc::SIGKILL, Duration::from_secs(2));
            }
        }
        // Unload before the namespaces go away (it runs inside the balancer namespace).
        self.lbd = None;
        self.host_xdp = None;
        self.backends.clear();
        // client and balancer Netns, then tmp, drop after this body; the bpffs dir:
        if self.bpffs_root.exists() {
            if let Err(e) = std::fs::remove_dir_all(&self.bpffs_root) {
                eprintln!("lab: cannot remove {}: {e}", self.bpffs_root.display());
            }
        }
    }
}

/// Removes (`healthy`) or creates a backend's health file `f`: while it exists, the test
/// server's `GET /healthz` fails and every other endpoint keeps serving.
pub(crate) fn set_health_file(f: &std::path::Path, healthy: bool) -> Result<()> {
    if healthy {
        match std::fs::remove_file(f) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(LabError::io(format!("removing {}", f.display()))(e))
            }
            _ => Ok(()),
        }
    } else {
        std::fs::write(f, b"").map_err(LabError::io(format!("creating {}", f.display())))
    }
}
