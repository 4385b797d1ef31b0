//! lbd's wiring: given a loaded (and attached) data plane and a configuration, run the
//! controller, the health-check tasks, the 1-second stats sampler, the 5-second conntrack
//! sweeper, the control API and the metrics endpoint until shutdown.
//!
//! Shutdown (SIGTERM/SIGINT, or the future passed to [`run`]) stops lbd but leaves the pinned
//! program and maps forwarding; only an `unload` request (or `lbd --unload`) detaches. SIGHUP
//! reloads the configuration file and applies the difference.

use crate::api::proto::InterfaceInfo;
use crate::api::server;
use crate::config::Config;
use crate::controller::{Controller, ControllerError};
use crate::dataplane::Dataplane;
use crate::db::supervisor::{DbRuntime, MemberProber};
use crate::health::{CheckResult, HealthSupervisor};
use crate::model::Health;
use crate::stats::StatsSampler;
use std::future::Future;
use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};

mod api;

/// Interval of the stats sampler.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// Interval of the conntrack sweeper.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Errors that stop lbd.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The configuration could not be applied at start.
    #[error("{0}")]
    Controller(#[from] ControllerError),
    /// A socket could not be created.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A data-plane write at start failed.
    #[error("data plane: {0}")]
    Dataplane(#[from] crate::dataplane::DataplaneError),
}

/// How [`run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Normal stop: the pinned program keeps forwarding.
    Stopped,
    /// An `unload` request: the caller must detach and remove the pinned state.
    UnloadRequested,
}

/// What [`run`] needs besides the data plane.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The configuration file (for reload and `config save`).
    pub config_path: PathBuf,
    /// The configuration, already loaded and validated from `config_path`.
    pub config: Config,
    /// Interfaces the program is attached to (added to the redirect map).
    pub interfaces: Vec<InterfaceInfo>,
    /// Pin root reported by `status` (`None`: unpinned).
    pub pin_root: Option<PathBuf>,
    /// Checks database cluster members ([`crate::db::supervisor::default_prober`] in lbd).
    pub db_prober: Arc<dyn MemberProber>,
}

/// State shared by lbd's tasks and the API server.
pub struct Daemon<D: Dataplane> {
    ctl: Mutex<Controller<D>>,
    sampler: Mutex<StatsSampler>,
    health: Mutex<HealthSupervisor>,
    health_tx: mpsc::Sender<CheckResult>,
    db: Mutex<DbRuntime>,
    db_prober: Arc<dyn MemberProber>,
    db_start_tx: mpsc::UnboundedSender<(String, u64)>,
    runtime: tokio::runtime::Handle,
    /// The configuration file.
    pub config_path: PathBuf,
    /// When lbd started.
    pub started: Instant,
    /// Attached interfaces.
    pub interfaces: Vec<InterfaceInfo>,
    /// Pin root.
    pub pin_root: Option<PathBuf>,
    stop: Notify,
    unload: AtomicBool,
    /// The announcer's state (default while no `announce` section is configured).
    pub announce: Arc<Mutex<crate::announce::AnnounceStatus>>,
    /// The configured Maglev digest of the configuration it was computed for.
    digest_cache: Mutex<Option<(Config, Result<u64, String>)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<D: Dataplane> Daemon<D> {
    /// The controller, locked.
    pub fn controller(&self) -> MutexGuard<'_, Controller<D>> {
        lock(&self.ctl)
    }

    /// The stats sampler, locked.
    pub fn sampler(&self) -> MutexGuard<'_, StatsSampler> {
        lock(&self.sampler)
    }

    /// The configured Maglev digest of the running configuration ([`crate::digest::configured`]),
    /// recomputed only when the configuration changed.
    pub fn configured_digest(&self) -> Result<u64, String> {
        let config = self.controller().config().clone();
        let mut cache = lock(&self.digest_cache);
        if let Some((c, d)) = cache.as_ref() {
            if *c == config {
                return d.clone();
            }
        }
        let d = crate::digest::configured(&config).map_err(|e| e.to_string());
        *cache = Some((config, d.clone()));
        d
    }

    /// What the announcer decides on: the data plane attached, the digest checked, the
    /// services' usable backends.
    pub fn announce_inputs(&self) -> crate::announce::Inputs {
        let dataplane = if self.interfaces.is_empty() {
            Err("the XDP program is attached to no interface".to_string())
        } else {
            self.interfaces.iter().try_for_each(
                |i| match crate::dataplane::netlink::query_xdp_mode(i.ifindex) {
                    Ok(Some(_)) => Ok(()),
                    Ok(None) => Err(format!("no XDP program attached to {}", i.name)),
                    Err(e) => Err(format!("cannot query the XDP program of {}: {e}", i.name)),
                },
            )
        };
        let expected = self.controller().config().maglev.expected();
        let digest = match (self.configured_digest(), expected) {
            (Err(e), _) => Err(format!("maglev digest: {e}")),
            (Ok(_), None) => Ok(()),
            (Ok(d), Some(want)) if d == want => Ok(()),
            (Ok(d), Some(want)) => Err(format!(
                "maglev digest {} differs from maglev.expected_digest {}: this node would send flows to other backends than its peers (check maglev.seed, limits.maglev_table_size and the services' backends and weights)",
                crate::digest::format(d),
                crate::digest::format(want)
            )),
        };
        crate::announce::Inputs {
            dataplane,
            digest,
            services: crate::announce::service_inputs(self.controller().services()),
        }
    }

    /// Asks lbd to stop; with `unload`, [`run`] returns [`Outcome::UnloadRequested`].
    pub fn request_stop(&self, unload: bool) {
        if unload {
            self.unload.store(true, Ordering::SeqCst);
        }
        self.stop.notify_one();
    }

    /// The database tier's runtime state (cluster states, event log), locked.
    pub fn db(&self) -> MutexGuard<'_, DbRuntime> {
        lock(&self.db)
    }

    /// Starts a round task for every database cluster of the running configuration that has
    /// none; tasks of removed clusters stop at their next round.
    pub fn sync_db(&self) {
        let wanted: Vec<String> = self
            .controller()
            .config()
            .db_clusters
            .iter()
            .map(|c| c.name.clone())
            .collect();
        let start = self.db().sync(&wanted);
        for s in start {
            // The receiver (in `run`) spawns the task; it lives as long as lbd runs.
            let _ = self.db_start_tx.send(s);
        }
    }

    async fn db_task(self: Arc<Self>, name: String, generation: u64) {
        loop {
            if !self.db().is_current(&name, generation) {
                return;
            }
            let Some(cfg) = self.controller().config().db_cluster(&name).cloned() else {
                return;
            };
            let started = Instant::now();
            let probes = crate::db::supervisor::probe_round(&self.db_prober, &cfg).await;
            let d = self.clone();
            let cfg2 = cfg.clone();
            let n = name.clone();
            let promote =
                tokio::task::spawn_blocking(move || d.db_round(&n, generation, &cfg2, &probes))
                    .await
                    .ok()
                    .flatten();
            if let (Some(member), Some(pr)) = (promote, cfg.promote.clone()) {
                let n = name.clone();
                tokio::spawn(async move {
                    let _ = crate::db::supervisor::run_promote_hook(
                        &n,
                        &pr.command,
                        member,
                        pr.timeout,
                    )
                    .await;
                });
            }
            tokio::time::sleep(cfg.check.interval.saturating_sub(started.elapsed())).await;
        }
    }

    /// Decides one round of cluster `name` and applies it; returns the member the promote
    /// hook must run for, if any.
    fn db_round(
        &self,
        name: &str,
        generation: u64,
        cfg: &crate::config::DbClusterConfig,
        probes: &[(std::net::SocketAddrV4, crate::db::MemberProbe)],
    ) -> Option<std::net::SocketAddrV4> {
        let now = crate::db::Now {
            mono: Duration::from_nanos(monotonic_ns()),
            wall: std::time::SystemTime::now(),
        };
        // Lock order: controller, then db (as the API handlers take them).
        let mut ctl = self.controller();
        let mut db = self.db();
        if !db.is_current(name, generation) {
            return None;
        }
        let prev = db.clusters.get(name)?.state.clone();
        let decision = crate::db::decide(cfg, &prev, probes, now);
        let changes = decision.state.primary_changes - prev.primary_changes;
        for e in &decision.events {
            let member = e.member().map(|m| m.to_string()).unwrap_or_default();
            if e.is_warning() {
                tracing::warn!(cluster = name, event = e.name(), member, "{e}");
            } else {
                tracing::info!(cluster = name, event = e.name(), member, "{e}");
            }
            db.record(name, now.wall, e.clone());
        }
        crate::metrics::local().db_cluster_state(name, &decision.state, changes);
        match ctl.db_apply(name, &decision.state) {
            Ok(gates) => {
                for g in gates {
                    tracing::info!(cluster = name, service = %g.service, backend = %g.backend, from = g.from.map_or("none", |f| f.name()), to = g.to.name(), reason = g.reset.unwrap_or(""), flows = g.flows, "database gate changed");
                    if let Some(reason) = g.reset {
                        crate::metrics::local().db_flows_reset(name, &g.service, reason, g.flows);
                    }
                }
            }
            Err(e) => {
                tracing::error!(cluster = name, error = %e, "applying a database decision failed")
            }
        }
        if let Some(c) = db.clusters.get_mut(name) {
            c.state = decision.state;
        }
        decision.promote
    }

    /// Starts, stops or restarts health-check tasks to match the running configuration.
    pub fn sync_health(&self) {
        let controller = self.controller();
        let config = controller.config();
        let wanted: Vec<_> = controller
            .services()
            .iter()
            .flat_map(|s| {
                let dsr = config
                    .dsr_source(&s.cfg)
                    .map(|source| crate::health::DsrPath {
                        vip: SocketAddrV4::new(s.cfg.vip, s.cfg.port),
                        source,
                    });
                s.backends.iter().map(move |b| {
                    (
                        s.cfg.name.clone(),
                        b.cfg.address,
                        s.cfg.health_check.clone(),
                        dsr,
                    )
                })
            })
            .collect();
        drop(controller);
        let _guard = self.runtime.enter();
        lock(&self.health).sync(&wanted, &self.health_tx);
    }

    /// Applies `config` (reload or API mutation) and re-syncs health tasks.
    pub fn apply(&self, config: Config) -> Result<String, ControllerError> {
        let summary = self.controller().apply(config)?;
        self.sync_health();
        self.sync_db();
        tracing::info!(summary = %summary, "configuration applied");
        for w in &summary.warnings {
            tracing::warn!("{w}");
        }
        Ok(summary.to_string())
    }

    /// Edits a copy of the running configuration with `edit` and applies it, holding the
    /// controller lock throughout so concurrent API mutations cannot lose each other's edits.
    /// `edit` returns the message for the caller, or an error that aborts without changes.
    pub fn edit_config(
        &self,
        edit: impl FnOnce(&mut Config) -> Result<String, String>,
    ) -> Result<String, String> {
        let summary = {
            let mut ctl = self.controller();
            let mut config = ctl.config().clone();
            let message = edit(&mut config)?;
            let summary = ctl.apply(config).map_err(|e| e.to_string())?;
            (message, summary)
        };
        self.sync_health();
        self.sync_db();
        tracing::info!(summary = %summary.1, "configuration applied");
        Ok(summary.0)
    }

    /// Re-reads the configuration file and applies it. The error is the whole message for
    /// the operator (`lbctl reload` prints it): whether the running configuration is
    /// unchanged, or a failed change could not be rolled back.
    pub fn reload(&self) -> Result<String, String> {
        let config = Config::load(&self.config_path)
            .map_err(|e| format!("reload rejected, the running configuration is unchanged: {e}"))?;
        self.apply(config).map_err(|e| {
            if e.state_unchanged() {
                format!("reload rejected, the running configuration is unchanged: {e}")
            } else {
                format!("reload failed and could not be rolled back: {e}")
            }
        })
    }

    fn on_check(&self, r: CheckResult) {
        if !lock(&self.health).is_current(&r) {
            return;
        }
        let change = self
            .controller()
            .health_result(&r.service, r.backend, r.ok, &r.reason);
        match change {
            Ok(Some(c)) => {
                let (from, to) = (health_name(c.from), health_name(c.to));
                if c.to == Health::Down {
                    tracing::warn!(service = %c.service, backend = %c.backend, reason = %r.reason, from, to, "backend health changed");
                } else {
                    tracing::info!(service = %c.service, backend = %c.backend, reason = %r.reason, from, to, "backend health changed");
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(service = %r.service, backend = %r.backend, error = %e, "applying a health transition failed")
            }
        }
    }
}

/// Logs each backend whose health became stale (a warning: its checks could not run for
/// `interval x (fall + 1)`, the state is kept) or fresh again.
fn log_stale_health(changes: &[crate::controller::StaleChange]) {
    for c in changes {
        let (service, backend, health) = (&c.service, c.backend, health_name(c.health));
        let age_secs = c.age.as_secs();
        if c.stale {
            tracing::warn!(%service, %backend, health, age_secs, "no health-check verdict for {age_secs}s (checks could not run, see lb_health_checks_not_run_total); keeping the last state");
        } else {
            tracing::info!(%service, %backend, health, "health checks give verdicts again");
        }
    }
}

/// Lowercase name of a health state (as in logs, JSON and metrics).
pub fn health_name(h: Health) -> &'static str {
    match h {
        Health::Up => "up",
        Health::Down => "down",
        Health::Unknown => "unknown",
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock `bpf_ktime_get_ns` uses.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Runs lbd on `dp` until `shutdown` resolves, SIGTERM/SIGINT arrives, or an `unload`
/// request. Must be called inside a multi-threaded tokio runtime.
pub async fn run<D, S>(opts: RunOptions, mut dp: D, shutdown: S) -> Result<Outcome, DaemonError>
where
    D: Dataplane,
    S: Future<Output = ()>,
{
    for iface in &opts.interfaces {
        dp.set_tx_port(iface.ifindex)?;
    }
    let passive_events = dp.take_passive_events()?;
    let ctl = Controller::new(dp, opts.config.clone())?;
    let api_listener = server::bind(&opts.config.api_socket).map_err(|source| DaemonError::Io {
        what: format!(
            "cannot create the API socket {}",
            opts.config.api_socket.display()
        ),
        source,
    })?;
    let metrics_listener = tokio::net::TcpListener::bind(opts.config.metrics_listen)
        .await
        .map_err(|source| DaemonError::Io {
            what: format!(
                "cannot listen on metrics_listen {} (in use? change metrics_listen)",
                opts.config.metrics_listen
            ),
            source,
        })?;
    let (health_tx, mut health_rx) = mpsc::channel::<CheckResult>(1024);
    let (db_start_tx, mut db_start_rx) = mpsc::unbounded_channel::<(String, u64)>();
    let daemon = Arc::new(Daemon {
        ctl: Mutex::new(ctl),
        sampler: Mutex::new(StatsSampler::new()),
        health: Mutex::new(HealthSupervisor::new()),
        health_tx,
        db: Mutex::new(DbRuntime::default()),
        db_prober: opts.db_prober.clone(),
        db_start_tx,
        runtime: tokio::runtime::Handle::current(),
        config_path: opts.config_path.clone(),
        started: Instant::now(),
        interfaces: opts.interfaces.clone(),
        pin_root: opts.pin_root.clone(),
        stop: Notify::new(),
        unload: AtomicBool::new(false),
        announce: Arc::default(),
        digest_cache: Mutex::new(None),
    });
    daemon.sync_health();
    daemon.sync_db();
    {
        let ctl = daemon.controller();
        tracing::info!(
            services = ctl.services().len(),
            backends = ctl.services().iter().map(|s| s.backends.len()).sum::<usize>(),
            api = %opts.config.api_socket.display(),
            metrics = %opts.config.metrics_listen,
            "lbd running"
        );
    }

    let mut tasks = tokio::task::JoinSet::new();
    if let Some(source) = passive_events {
        tasks.spawn(crate::passive::run(daemon.clone(), source));
    }
    {
        let d = daemon.clone();
        tasks.spawn(async move {
            let mut rounds = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    Some((name, generation)) = db_start_rx.recv() => {
                        let d = d.clone();
                        rounds.spawn(async move { d.db_task(name, generation).await });
                    }
                    Some(_) = rounds.join_next(), if !rounds.is_empty() => {}
                    else => break,
                }
            }
        });
    }
    {
        let d = daemon.clone();
        tasks.spawn(async move {
            while let Some(r) = health_rx.recv().await {
                let d = d.clone();
                let _ = tokio::task::spawn_blocking(move || d.on_check(r)).await;
            }
        });
    }
    {
        let d = daemon.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
            loop {
                tick.tick().await;
                let d = d.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    let mut ctl = d.controller();
                    if let Err(e) = d.sampler().sample(&ctl) {
                        tracing::warn!(error = %e, "stats sample failed");
                    }
                    log_stale_health(&ctl.stale_health(Instant::now()));
                    for (service, backend) in ctl.passive_holds(monotonic_ns()) {
                        tracing::info!(%service, %backend, "passive suspicion expired unconfirmed (no check failed)");
                    }
                })
                .await;
            }
        });
    }
    {
        let d = daemon.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            loop {
                tick.tick().await;
                let d = d.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    let started = Instant::now();
                    // The walk runs without the controller lock: health transitions and API
                    // calls are not held up by a large conntrack table.
                    let begun = d.controller().begin_sweep();
                    let result = begun.and_then(|(mut sweeper, cfg, generation)| {
                        let sweep = sweeper.sweep(monotonic_ns(), &cfg)?;
                        d.controller().finish_sweep(sweep.clone(), generation)?;
                        Ok(sweep)
                    });
                    match result {
                        Ok(s) => tracing::debug!(
                            entries = s.entries,
                            dsr_flows = s.dsr_flows,
                            expired_removed = s.expired_removed,
                            took_ms = started.elapsed().as_millis() as u64,
                            "conntrack sweep"
                        ),
                        Err(e) => tracing::warn!(error = %e, "conntrack sweep failed"),
                    }
                })
                .await;
            }
        });
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    {
        let d = daemon.clone();
        let mut rx = stop_rx.clone();
        tasks.spawn(async move {
            server::serve(api_listener, d, async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await;
        });
    }
    {
        let d = daemon.clone();
        let mut rx = stop_rx.clone();
        tasks.spawn(async move {
            let snapshot = move || {
                let ctl = d.controller();
                crate::stats::snapshot(&ctl, &d.sampler())
            };
            crate::metrics::serve(metrics_listener, snapshot, async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await;
        });
    }

    let (announce_stop_tx, announce_stop_rx) = tokio::sync::watch::channel(false);
    let announcer = opts.config.announce.clone().map(|cfg| {
        let d = daemon.clone();
        let inputs: Arc<dyn Fn() -> crate::announce::Inputs + Send + Sync> =
            Arc::new(move || d.announce_inputs());
        let drain = cfg.drain;
        let task = tokio::spawn(crate::announce::run(
            cfg,
            daemon.announce.clone(),
            inputs,
            announce_stop_rx,
        ));
        (task, drain)
    });

    use tokio::signal::unix::{signal, SignalKind};
    let sig = |k: SignalKind| {
        signal(k).map_err(|source| DaemonError::Io {
            what: "cannot install signal handlers".into(),
            source,
        })
    };
    let mut hup = sig(SignalKind::hangup())?;
    let mut term = sig(SignalKind::terminate())?;
    let mut int = sig(SignalKind::interrupt())?;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = term.recv() => { tracing::info!("SIGTERM: stopping; the pinned program keeps forwarding"); break }
            _ = int.recv() => { tracing::info!("SIGINT: stopping; the pinned program keeps forwarding"); break }
            _ = daemon.stop.notified() => break,
            _ = hup.recv() => {
                let d = daemon.clone();
                match tokio::task::spawn_blocking(move || d.reload()).await {
                    Ok(Ok(summary)) => tracing::info!(summary = %summary, "SIGHUP: configuration reloaded"),
                    Ok(Err(e)) => tracing::error!(error = %e, "SIGHUP: reload failed"),
                    Err(e) => tracing::error!(error = %e, "SIGHUP: reload task failed"),
                }
            }
        }
    }
    if let Some((task, drain)) = announcer {
        // Withdraw first, keep forwarding and checking for the drain period, then stop.
        let _ = announce_stop_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        tracing::info!(
            drain_ms = drain.as_millis() as u64,
            "VIPs withdrawn; draining before stopping (SIGTERM or SIGINT again stops at once)"
        );
        tokio::select! {
            _ = tokio::time::sleep(drain) => {}
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    let _ = stop_tx.send(true);
    // Give the API a moment to flush the response to an `unload` request.
    tokio::time::sleep(Duration::from_millis(50)).await;
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    lock(&daemon.health).stop_all();
    daemon.db().stop_all();
    let _ = std::fs::remove_file(&opts.config.api_socket);
    Ok(if daemon.unload.load(Ordering::SeqCst) {
        Outcome::UnloadRequested
    } else {
        Outcome::Stopped
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_clock_advances() {
        let a = monotonic_ns();
        std::thread::sleep(Duration::from_millis(2));
        assert!(monotonic_ns() > a);
    }
}

#[cfg(test)]
mod run_tests {
    use super::*;
    use crate::api::client::Client;
    use crate::api::proto::{BackendListEntry, Request, StatsSnapshot, StatusInfo};
    use crate::dataplane::fake::FakeDataplane;
    use crate::testutil::{self, dead_addr, one_service_config, v4, TempDir};
    use std::net::SocketAddrV4;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use tokio::net::TcpListener;

    fn call(sock: &Path, req: Request) -> serde_json::Value {
        testutil::call(sock, &req).unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn daemon_serves_the_api_and_follows_health() {
        let dir = TempDir::new("lbd-run");
        let live = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ok = v4(live.local_addr().unwrap());
        let _acceptor = tokio::spawn(async move {
            while let Ok((s, _)) = live.accept().await {
                drop(s);
            }
        });
        let dead = dead_addr();
        let path = dir.path().join("lb.yaml");
        std::fs::write(
            &path,
            one_service_config(dir.path(), "127.0.0.1:0", &[ok, dead]),
        )
        .unwrap();
        let dp = FakeDataplane::new();
        let daemon = testutil::Daemon::start(&path, dp.clone()).await;
        let sock = daemon.sock.clone();
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let sock2 = sock.clone();
        tokio::task::spawn_blocking(move || {
            let sock = sock2;
            let status: StatusInfo = serde_json::from_value(call(&sock, Request::Status)).unwrap();
            assert_eq!((status.services, status.backends), (1, 2));
            // Health: the dead backend goes down within interval x fall + interval (+ jitter).
            let deadline = Instant::now() + Duration::from_secs(3);
            loop {
                let list: Vec<BackendListEntry> =
                    serde_json::from_value(call(&sock, Request::BackendList { service: None }))
                        .unwrap();
                let by = |a: SocketAddrV4| list.iter().find(|e| e.backend.address == a).unwrap();
                if by(dead).backend.health == Health::Down && by(ok).backend.health == Health::Up {
                    assert!(!by(dead).backend.in_table);
                    assert!(by(ok).backend.in_table);
                    break;
                }
                assert!(Instant::now() < deadline, "health never settled: {list:?}");
                std::thread::sleep(Duration::from_millis(50));
            }
            // Mutations through the API, reflected in dump and stats.
            call(
                &sock,
                Request::BackendDrain {
                    service: "web".into(),
                    address: ok,
                },
            );
            let dump: String = serde_json::from_value(call(&sock, Request::ConfigDump)).unwrap();
            let dumped = Config::from_yaml_str(&dump, "dump").unwrap();
            assert!(dumped.services[0].backends[0].drain);
            let err = Client::connect(&sock)
                .unwrap()
                .call(&Request::BackendSetWeight {
                    service: "nope".into(),
                    address: ok,
                    weight: 2,
                })
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("no service named \"nope\" (known: web)"),
                "{err}"
            );
            let stats: StatsSnapshot = serde_json::from_value(call(&sock, Request::Stats)).unwrap();
            // Every counter but the unused placeholders (`reserved_*`).
            let named = lb_common::COUNTER_NAMES
                .iter()
                .filter(|n| !n.starts_with(lb_common::RESERVED_PREFIX))
                .count();
            assert_eq!(stats.counters.len(), named);
            // Save, then a reload of the saved file changes nothing.
            let saved: String = serde_json::from_value(call(&sock, Request::ConfigSave)).unwrap();
            assert_eq!(saved, path.display().to_string());
            assert!(path.with_file_name("lb.yaml.bak").exists());
            let summary: String = serde_json::from_value(call(&sock, Request::Reload)).unwrap();
            assert_eq!(summary, "no changes");
            // A broken file is rejected and the running state stays.
            std::fs::write(&path, "interfaces: []\nsnat: {addresses: [10.0.255.1]}\n").unwrap();
            let err = Client::connect(&sock)
                .unwrap()
                .call(&Request::Reload)
                .unwrap_err()
                .to_string();
            assert!(err.contains("lb.yaml:1: interfaces"), "{err}");
            let status: StatusInfo = serde_json::from_value(call(&sock, Request::Status)).unwrap();
            assert_eq!(status.backends, 2);
        })
        .await
        .unwrap();
        assert_eq!(daemon.stop().await, Outcome::Stopped);
        assert!(!sock.exists(), "socket removed on exit");
        // The data plane keeps its state (pinned maps would keep forwarding).
        assert_eq!(dp.state().services.len(), 1);
    }

    /// What `lbctl reload` gets back when a map write fails mid-way: the truth about
    /// whether the running configuration (and the data plane) stayed as they were.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reload_reports_rollbacks_truthfully() {
        use crate::dataplane::fake::{FaultPlan, Op};
        let dir = TempDir::new("lbd-rb");
        let dir_name = dir.path().display().to_string();
        let text = move |extra: &str| {
            format!(
                "interfaces: [lo]\napi_socket: {}/lbd.sock\nmetrics_listen: 127.0.0.1:0\n\
                 snat: {{addresses: [10.0.255.1]}}\nlimits: {{maglev_table_size: 1009, max_services: 2}}\n\
                 services:\n  - name: web\n    vip: 192.0.2.10\n    port: 80\n    \
                 health_check: {{type: none}}\n    backends: [{{address: 10.1.1.2:8080}}]\n{extra}",
                dir_name
            )
        };
        let api = "  - name: api\n    vip: 192.0.2.11\n    port: 443\n    health_check: {type: none}\n    backends: [{address: 10.2.1.2:8443}]\n";
        let path = dir.path().join("lb.yaml");
        std::fs::write(&path, text("")).unwrap();
        let dp = FakeDataplane::with_limits(&testutil::run_options(&path).config.limits);
        let daemon = testutil::Daemon::start(&path, dp.clone()).await;
        let sock = daemon.sock.clone();
        let dp2 = dp.clone();
        tokio::task::spawn_blocking(move || {
            let dp = dp2;
            let reload_err = || {
                Client::connect(&sock)
                    .unwrap()
                    .call(&Request::Reload)
                    .unwrap_err()
                    .to_string()
            };
            let services = || -> usize {
                let status: StatusInfo =
                    serde_json::from_value(call(&sock, Request::Status)).unwrap();
                status.services
            };
            let before = dp.state().maps();
            std::fs::write(&path, text(api)).unwrap();
            // The new service's entry cannot be written: rolled back, and said so.
            dp.state().fault = Some(FaultPlan {
                skip: 0,
                times: 1,
                matching: |op| matches!(op, Op::SetService(..)),
            });
            let err = reload_err();
            assert!(
                err.contains("reload rejected, the running configuration is unchanged")
                    && err.contains("injected fault")
                    && err.contains("undone"),
                "{err}"
            );
            assert_eq!(services(), 1);
            assert!(dp.state().maps() == before, "maps as before");
            // Every write fails, the undo steps too: the answer must not claim "unchanged".
            dp.state().fault = Some(FaultPlan {
                skip: 3,
                times: usize::MAX,
                matching: |_| true,
            });
            let err = reload_err();
            assert!(
                err.contains("reload failed and could not be rolled back")
                    && !err.contains("unchanged"),
                "{err}"
            );
            // Once the data plane works again the same reload succeeds.
            dp.state().fault = None;
            let summary: String = serde_json::from_value(call(&sock, Request::Reload)).unwrap();
            assert!(summary.contains("services added: api"), "{summary}");
            assert_eq!(services(), 2);
        })
        .await
        .unwrap();
        daemon.stop().await;
    }
}

#[cfg(test)]
mod db_run_tests {
    use super::*;
    use crate::api::client::Client;
    use crate::api::proto::{DbClusterInfo, DbEventInfo, Request};
    use crate::config::db::{DbClusterConfig, DbMemberConfig};
    use crate::dataplane::fake::FakeDataplane;
    use crate::db::observation::{MemberObservation, MemberProbe};
    use crate::db::supervisor::ProbeFuture;
    use crate::testutil;
    use std::net::SocketAddrV4;
    use std::path::Path;

    /// A fake check layer: the member on port 5432 of 10.2.1.2 is the primary until
    /// `failed` is set, the others replicas of it.
    #[derive(Debug, Default)]
    struct FakeProber {
        failed: AtomicBool,
    }

    impl MemberProber for FakeProber {
        fn probe(&self, _c: &DbClusterConfig, m: &DbMemberConfig) -> ProbeFuture {
            let primary: SocketAddrV4 = "10.2.1.2:5432".parse().unwrap();
            let probe = if m.address == primary {
                if self.failed.load(Ordering::SeqCst) {
                    MemberProbe::Failed("connection refused".into())
                } else {
                    MemberProbe::Observed(MemberObservation {
                        current_lsn: Some(5000),
                        timeline: Some(1),
                        system_identifier: 7,
                        ..Default::default()
                    })
                }
            } else {
                MemberProbe::Observed(MemberObservation {
                    in_recovery: true,
                    replay_lsn: Some(4990),
                    timeline: Some(1),
                    system_identifier: 7,
                    upstream: Some(("10.2.1.2".into(), 5432)),
                    streaming: true,
                    ..Default::default()
                })
            };
            Box::pin(async move { probe })
        }
    }

    fn call<T: serde::de::DeserializeOwned>(sock: &Path, req: Request) -> T {
        let v = testutil::call(sock, &req).unwrap_or_else(|e| panic!("{e}"));
        serde_json::from_value(v).unwrap()
    }

    /// lbd runs a cluster's rounds through the prober trait, applies them to the data plane
    /// and shows them in `db status` and `db events`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rounds_run_through_the_prober_and_show_in_the_api() {
        let dir = testutil::TempDir::new("lbd-db");
        let text = format!(
            "interfaces: [lo]\napi_socket: {}/lbd.sock\nmetrics_listen: 127.0.0.1:0\n\
             snat: {{addresses: [10.0.255.1]}}\nlimits: {{maglev_table_size: 1009}}\n\
             db_clusters:\n  - name: pg\n    members: [{{address: 10.2.1.2:5432}}, {{address: 10.2.2.2:5432}}]\n\
             \x20   check: {{user: lb_check, interval: 100ms, timeout: 50ms, rise: 1, fall: 1}}\n\
             services:\n  - name: pg-write\n    vip: 192.0.2.20\n    port: 5432\n    db_cluster: pg\n    role: primary\n\
             \x20 - name: pg-read\n    vip: 192.0.2.20\n    port: 5433\n    db_cluster: pg\n    role: replica\n",
            dir.path().display()
        );
        let path = dir.path().join("lb.yaml");
        std::fs::write(&path, &text).unwrap();
        let prober = Arc::new(FakeProber::default());
        let opts = RunOptions {
            db_prober: prober.clone(),
            ..testutil::run_options(&path)
        };
        let dp = FakeDataplane::new();
        let daemon = testutil::Daemon::start_with(opts, dp.clone()).await;
        let sock = daemon.sock.clone();
        tokio::task::spawn_blocking(move || {
            let wait_for = |what: &str, f: &dyn Fn(&DbClusterInfo) -> bool| {
                let deadline = Instant::now() + Duration::from_secs(5);
                loop {
                    let list: Vec<DbClusterInfo> = call(&sock, Request::DbStatus { cluster: None });
                    if f(&list[0]) {
                        return list[0].clone();
                    }
                    assert!(Instant::now() < deadline, "{what} never happened: {list:?}");
                    std::thread::sleep(Duration::from_millis(20));
                }
            };
            let a: SocketAddrV4 = "10.2.1.2:5432".parse().unwrap();
            let c = wait_for("election", &|c| {
                c.primary == Some(a) && c.members[1].read_eligible
            });
            assert_eq!(c.members[0].role, "primary");
            assert_eq!(c.members[0].lsn.as_deref(), Some("0/1388"));
            assert_eq!(c.members[1].lag_bytes, Some(10));
            prober.failed.store(true, Ordering::SeqCst);
            wait_for("primary loss", &|c| c.primary.is_none());
            let events: Vec<DbEventInfo> = call(
                &sock,
                Request::DbEvents {
                    cluster: Some("pg".into()),
                    limit: None,
                },
            );
            let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
            assert!(names.contains(&"primary_elected"), "{names:?}");
            assert!(names.contains(&"primary_lost"), "{names:?}");
            let err = Client::connect(&sock)
                .unwrap()
                .call(&Request::DbStatus {
                    cluster: Some("nope".into()),
                })
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("no database cluster named \"nope\" (known: pg)"),
                "{err}"
            );
        })
        .await
        .unwrap();
        // The write service's backend for A is DOWN|RESET now.
        let flags: Vec<u32> = dp.state().backends.values().map(|b| b.flags).collect();
        assert!(
            flags.contains(&(lb_common::BACKEND_F_DOWN | lb_common::BACKEND_F_RESET)),
            "{flags:?}"
        );
        daemon.stop().await;
    }
}
