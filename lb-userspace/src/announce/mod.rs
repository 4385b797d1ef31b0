//! Announcing this node's VIPs through BIRD 2 (docs/scale-out.md, "Several nodes").
//!
//! - [`decide`] is the rule, a pure function: a VIP is announced when lbd is not stopping,
//!   the XDP program is attached to every configured interface (the maps are loaded: the
//!   controller runs), the dead-man device exists, the configured Maglev digest equals
//!   `maglev.expected_digest` (when set), and **at least one** service of the VIP has a
//!   backend that is in its Maglev table with a confirmed `up` health (a backend not yet
//!   checked, `unknown`, gets traffic but does not make lbd announce). A VIP not announced
//!   yet also waits while a backend of its services is **rising** (`down` with a passed check
//!   since): a node whose backends come back one by one (after a partition, say) would
//!   otherwise announce with a Maglev table that lacks the backends still rising, and the
//!   flows the router moves to it (DSR: no entry on this node, so their Maglev slot) would
//!   reach other backends than on every other node, which reset them. An announced VIP stays announced while it can serve.
//! - [`bird`] writes the include file and runs `birdc configure`.
//! - [`tun`] is the dead-man switch: the routes are device routes on a tun device that dies
//!   with lbd.
//! - [`run`] is the task: it re-decides every [`TICK`], rewrites the include file only when
//!   the announced set changes, retries failures with a backoff, and on stop withdraws
//!   everything. It runs beside the controller and takes the controller's lock only to read
//!   the inputs, never while `birdc` runs.
//!
//! Several ports on one VIP: the route is per VIP, so a VIP is announced while any of its
//! services can serve. Requiring every service would let one port without backends take the
//! healthy ports of the VIP off this node, and since every node usually sees the same
//! backends, off every node at once: the whole VIP would vanish for one broken port. A port
//! without a usable backend is answered with a RST by every node alike.

pub mod bird;
pub mod tun;

use crate::config::AnnounceConfig;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the announcer re-decides.
pub const TICK: Duration = Duration::from_millis(100);
/// First retry delay after a failed `birdc configure` or device creation; doubles per
/// failure up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(500);
/// Longest retry delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Longest wait for the inputs (they take the controller's lock); after it the tick counts
/// nothing as ready and withdraws every VIP.
pub const INPUTS_TIMEOUT: Duration = Duration::from_secs(1);

/// One service as the rule sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInput {
    /// Service name.
    pub name: String,
    /// Its VIP.
    pub vip: Ipv4Addr,
    /// Backends in its table whose health is confirmed up.
    pub usable: usize,
    /// Backends `down` with at least one passed check since ([`crate::model::HealthTracker::rising`]).
    pub rising: usize,
    /// All its backends.
    pub backends: usize,
}

/// The node-wide conditions of the rule; `Err` carries the reason for the log and status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// lbd is stopping (the drain period runs).
    pub stopping: bool,
    /// The XDP program is attached to every interface and the maps are loaded.
    pub dataplane: Result<(), String>,
    /// The dead-man device exists.
    pub device: Result<(), String>,
    /// The configured Maglev digest matches `maglev.expected_digest` (or none is set).
    pub digest: Result<(), String>,
}

/// The decision for one VIP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipDecision {
    /// The VIP.
    pub vip: Ipv4Addr,
    /// Whether it should be announced.
    pub announce: bool,
    /// Why, for the log and `lbctl status`.
    pub reason: String,
}

/// Applies the rule (module documentation) to every VIP of `services`, in VIP order;
/// `announced` are the VIPs the previous decision announced (a VIP among them does not wait
/// for rising backends).
pub fn decide(
    ready: &Readiness,
    services: &[ServiceInput],
    announced: &[Ipv4Addr],
) -> Vec<VipDecision> {
    let mut vips: Vec<Ipv4Addr> = services.iter().map(|s| s.vip).collect();
    vips.sort();
    vips.dedup();
    let node_wide = if ready.stopping {
        Some("lbd is stopping (withdrawn before the drain period)".to_string())
    } else if let Err(e) = &ready.dataplane {
        Some(format!("data plane not ready: {e}"))
    } else if let Err(e) = &ready.device {
        Some(format!("dead-man device not up: {e}"))
    } else if let Err(e) = &ready.digest {
        Some(e.clone())
    } else {
        None
    };
    vips.into_iter()
        .map(|vip| {
            if let Some(reason) = &node_wide {
                return VipDecision {
                    vip,
                    announce: false,
                    reason: reason.clone(),
                };
            }
            let of_vip: Vec<&ServiceInput> = services.iter().filter(|s| s.vip == vip).collect();
            let list = of_vip
                .iter()
                .map(|s| format!("{}: {} of {} up", s.name, s.usable, s.backends))
                .collect::<Vec<_>>()
                .join(", ");
            let serving = of_vip.iter().filter(|s| s.usable > 0).count();
            let rising: usize = of_vip.iter().map(|s| s.rising).sum();
            if serving > 0 && rising > 0 && !announced.contains(&vip) {
                VipDecision {
                    vip,
                    announce: false,
                    reason: format!(
                        "waiting for {rising} rising backends so that this node's Maglev table matches the other nodes' ({list})"
                    ),
                }
            } else if serving > 0 {
                VipDecision {
                    vip,
                    announce: true,
                    reason: format!("{serving} of {} services can serve ({list})", of_vip.len()),
                }
            } else {
                VipDecision {
                    vip,
                    announce: false,
                    reason: format!("no service of the VIP has a healthy backend ({list})"),
                }
            }
        })
        .collect()
}

/// The service inputs of the running services.
pub fn service_inputs(services: &[crate::model::ServiceState]) -> Vec<ServiceInput> {
    services
        .iter()
        .map(|s| ServiceInput {
            name: s.cfg.name.clone(),
            vip: s.cfg.vip,
            usable: s
                .backends
                .iter()
                .filter(|b| b.in_table && b.health() == crate::model::Health::Up)
                .count(),
            rising: s.backends.iter().filter(|b| b.tracker.rising()).count(),
            backends: s.backends.len(),
        })
        .collect()
}

/// What the announcer reads each tick (taken by the daemon under its locks).
#[derive(Debug, Clone)]
pub struct Inputs {
    /// Node-wide conditions; `device` and `stopping` are filled in by the announcer.
    pub dataplane: Result<(), String>,
    /// See [`Readiness::digest`].
    pub digest: Result<(), String>,
    /// The services.
    pub services: Vec<ServiceInput>,
}

/// Inputs under which nothing is ready and no VIP is announced, for when they cannot be
/// read: a node that does not know its state withdraws rather than keep its last routes.
fn nothing(why: &str) -> Inputs {
    Inputs {
        dataplane: Err(format!("announcer inputs failed: {why}")),
        digest: Err("announcer inputs failed".into()),
        services: Vec::new(),
    }
}

/// The inputs of one tick, or [`nothing`] when the blocking task that reads them panicked.
fn inputs_or_nothing(read: Result<Inputs, tokio::task::JoinError>) -> Inputs {
    match read {
        Ok(inp) => inp,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the announcer's inputs; withdrawing every VIP");
            nothing(&e.to_string())
        }
    }
}

/// A read of the inputs in flight: when it started and the blocking task doing it.
type PendingRead = (Instant, tokio::task::JoinHandle<Inputs>);

/// Reads the inputs, waiting at most [`INPUTS_TIMEOUT`] from the start of the read. A read
/// that takes longer (the controller lock held by a hung task) gives [`nothing`] and stays
/// `pending`: the next ticks wait for the same read (without starting another one, which
/// would only pile up blocked threads) and use its answer once it comes.
async fn read_inputs(
    inputs: &Arc<dyn Fn() -> Inputs + Send + Sync>,
    pending: &mut Option<PendingRead>,
) -> Inputs {
    let (started, task) = pending.get_or_insert_with(|| {
        let f = inputs.clone();
        (Instant::now(), tokio::task::spawn_blocking(move || f()))
    });
    let left = INPUTS_TIMEOUT.saturating_sub(started.elapsed());
    let read = tokio::time::timeout(left, task).await;
    match read {
        Ok(r) => {
            *pending = None;
            inputs_or_nothing(r)
        }
        Err(_) => {
            let waited = started.elapsed();
            if !left.is_zero() {
                tracing::error!(
                    waited_ms = waited.as_millis() as u64,
                    "the announcer's inputs did not come within {INPUTS_TIMEOUT:?} (is the controller lock held by a hung task?); withdrawing every VIP until they come"
                );
            }
            nothing(&format!(
                "no answer for {} ms (controller lock held?)",
                waited.as_millis()
            ))
        }
    }
}

/// The announcer's state, shown by `lbctl status`.
#[derive(Debug, Clone, Default)]
pub struct AnnounceStatus {
    /// The last decision per VIP.
    pub decisions: Vec<VipDecision>,
    /// The VIPs BIRD was last configured with (`None`: not configured yet).
    pub announced: Option<Vec<Ipv4Addr>>,
    /// Whether the dead-man device exists.
    pub device_up: bool,
    /// The last failure, until the next success.
    pub last_error: Option<String>,
}

/// Exponential retry delay.
#[derive(Debug)]
struct Backoff {
    next: Duration,
    failures: u32,
    not_before: Instant,
}

impl Backoff {
    fn new() -> Self {
        Backoff {
            next: MIN_BACKOFF,
            failures: 0,
            not_before: Instant::now(),
        }
    }
    fn ready(&self) -> bool {
        Instant::now() >= self.not_before
    }
    fn failed(&mut self) -> Duration {
        let d = self.next;
        self.failures += 1;
        self.not_before = Instant::now() + d;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        d
    }
    fn succeeded(&mut self) {
        *self = Backoff::new();
    }
}

/// Writes the include file for `vips` and reconfigures BIRD.
async fn apply(cfg: &AnnounceConfig, vips: &[Ipv4Addr]) -> Result<String, bird::BirdError> {
    let text = bird::include_text(&cfg.protocol, &cfg.device, vips);
    let path = cfg.include_file.clone();
    tokio::task::spawn_blocking(move || bird::write_atomically(&path, &text))
        .await
        .unwrap_or_else(|e| {
            Err(bird::BirdError::Write {
                path: cfg.include_file.display().to_string(),
                source: std::io::Error::other(e.to_string()),
            })
        })?;
    bird::configure(&cfg.birdc, &cfg.bird_socket).await
}

/// What the announcer drives: BIRD and the dead-man device. [`System`] is the real one; the
/// tests drive [`run_with`] through fakes.
pub trait Backend: Send + Sync + 'static {
    /// An open dead-man device; dropping it removes the device.
    type Device: Send;
    /// Creates the dead-man device.
    fn open_device(&self) -> std::io::Result<Self::Device>;
    /// True while `device` exists.
    fn device_exists(&self, device: &Self::Device) -> bool;
    /// Writes the include file for `vips` and reconfigures BIRD; `Ok` carries birdc's answer.
    fn apply(
        &self,
        vips: &[Ipv4Addr],
    ) -> impl std::future::Future<Output = Result<String, bird::BirdError>> + Send;
}

/// The real [`Backend`]: [`tun::DeadMan`] and `birdc configure`.
#[derive(Debug, Clone)]
pub struct System(pub AnnounceConfig);

impl Backend for System {
    type Device = tun::DeadMan;
    fn open_device(&self) -> std::io::Result<tun::DeadMan> {
        tun::DeadMan::open(&self.0.device, self.0.address, self.0.peer)
    }
    fn device_exists(&self, device: &tun::DeadMan) -> bool {
        device.exists()
    }
    async fn apply(&self, vips: &[Ipv4Addr]) -> Result<String, bird::BirdError> {
        apply(&self.0, vips).await
    }
}

/// The announcer task: runs until `stop` turns true, then withdraws every VIP (and returns;
/// the dead-man device goes with it).
///
/// At start it first configures BIRD with no route (a previous lbd's file may still list
/// VIPs, which BIRD would announce again as soon as the device reappears), and only then
/// creates the device.
pub async fn run(
    cfg: AnnounceConfig,
    status: Arc<Mutex<AnnounceStatus>>,
    inputs: Arc<dyn Fn() -> Inputs + Send + Sync>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let backend = System(cfg.clone());
    run_with(cfg, backend, status, inputs, stop).await;
}

/// [`run`] with the BIRD and device side given as `backend`.
pub async fn run_with<B: Backend>(
    cfg: AnnounceConfig,
    backend: B,
    status: Arc<Mutex<AnnounceStatus>>,
    inputs: Arc<dyn Fn() -> Inputs + Send + Sync>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut device: Option<B::Device> = None;
    let mut device_error: Option<String> = None;
    let mut device_backoff = Backoff::new();
    let mut applied: Option<Vec<Ipv4Addr>> = None;
    let mut backoff = Backoff::new();
    let mut last: Vec<VipDecision> = Vec::new();
    let mut last_error: Option<String> = None;
    let mut pending_read: Option<PendingRead> = None;
    // Set when the device was dropped because a withdrawal could not be applied: the device
    // is re-created only after BIRD accepted a configuration again (the reason, for status).
    let mut withheld: Option<String> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        // The first successful (empty) configure comes before the device.
        if applied.is_some() && device.is_none() && withheld.is_none() && device_backoff.ready() {
            match backend.open_device() {
                Ok(d) => {
                    tracing::info!(device = %cfg.device, address = %cfg.address, peer = %cfg.peer, "dead-man device up: the announced routes go via its peer and vanish with lbd");
                    device = Some(d);
                    device_error = None;
                    device_backoff.succeeded();
                }
                Err(e) => {
                    let retry = device_backoff.failed();
                    tracing::error!(device = %cfg.device, error = %e, retry_in_ms = retry.as_millis() as u64, "cannot create the dead-man device; announcing nothing");
                    device_error = Some(e.to_string());
                }
            }
        }
        let inp = read_inputs(&inputs, &mut pending_read).await;
        let device_state = match &device {
            Some(d) if backend.device_exists(d) => Ok(()),
            Some(_) => Err(format!("{} vanished", cfg.device)),
            None => Err(withheld
                .clone()
                .or_else(|| device_error.clone())
                .unwrap_or_else(|| {
                    format!("{} not created yet (BIRD not configured yet)", cfg.device)
                })),
        };
        if device.as_ref().is_some_and(|d| !backend.device_exists(d)) {
            tracing::error!(device = %cfg.device, "the dead-man device vanished (deleted by hand?); recreating it");
            device = None;
        }
        let ready = Readiness {
            stopping: false,
            dataplane: inp.dataplane,
            device: device_state,
            digest: inp.digest,
        };
        let announced: Vec<Ipv4Addr> = last.iter().filter(|d| d.announce).map(|d| d.vip).collect();
        let decisions = decide(&ready, &inp.services, &announced);
        // The digest is the reason only when everything before it in the rule holds.
        let digest_blocks =
            ready.dataplane.is_ok() && ready.device.is_ok() && ready.digest.is_err();
        let starting = device.is_none() && device_error.is_none() && withheld.is_none();
        for d in &decisions {
            let before = last.iter().find(|l| l.vip == d.vip);
            let changed = match before {
                None => true,
                Some(b) => b.announce != d.announce || (!d.announce && b.reason != d.reason),
            };
            if !changed {
                continue;
            }
            if d.announce {
                tracing::info!(vip = %d.vip, reason = %d.reason, "VIP to be announced");
            } else if digest_blocks {
                tracing::error!(vip = %d.vip, reason = %d.reason, "VIP not announced");
            } else if starting {
                tracing::info!(vip = %d.vip, reason = %d.reason, "VIP not announced yet");
            } else {
                tracing::warn!(vip = %d.vip, reason = %d.reason, "VIP not announced");
            }
        }
        let wanted: Vec<Ipv4Addr> = if applied.is_none() {
            Vec::new()
        } else {
            decisions
                .iter()
                .filter(|d| d.announce)
                .map(|d| d.vip)
                .collect()
        };
        last = decisions;
        if applied.as_ref() != Some(&wanted) && backoff.ready() {
            let started = Instant::now();
            match backend.apply(&wanted).await {
                Ok(answer) => {
                    tracing::info!(announced = ?wanted, took_ms = started.elapsed().as_millis() as u64, birdc = %answer, "BIRD reconfigured");
                    applied = Some(wanted);
                    backoff.succeeded();
                    last_error = None;
                    if withheld.take().is_some() {
                        tracing::info!(device = %cfg.device, "BIRD accepts configurations again; re-creating the dead-man device");
                    }
                }
                Err(e) => {
                    let retry = backoff.failed();
                    let withdrawing: Vec<Ipv4Addr> = applied
                        .iter()
                        .flatten()
                        .filter(|v| !wanted.contains(v))
                        .copied()
                        .collect();
                    if withdrawing.is_empty() {
                        tracing::error!(error = %e, attempt = backoff.failures, retry_in_ms = retry.as_millis() as u64, socket = %cfg.bird_socket.display(), "announcing through BIRD failed; retrying");
                    } else {
                        // BIRD keeps announcing what it was last configured with. Without
                        // the device the next hop of every route is gone and BIRD withdraws
                        // them all by itself, no reconfiguration needed.
                        let had_device = device.take().is_some();
                        tracing::warn!(error = %e, withdraw = ?withdrawing, attempt = backoff.failures, retry_in_ms = retry.as_millis() as u64, socket = %cfg.bird_socket.display(), device = %cfg.device, device_dropped = had_device,
                            "cannot withdraw through BIRD; dropped the dead-man device, so BIRD withdraws every route of this node; it is re-created once `birdc configure` succeeds again");
                        withheld = Some(format!(
                            "{} removed because BIRD could not be reconfigured to withdraw {withdrawing:?} ({e}); re-created once `birdc configure` succeeds",
                            cfg.device
                        ));
                    }
                    last_error = Some(e.to_string());
                }
            }
        }
        let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
        s.decisions = last.clone();
        s.announced = applied.clone();
        s.device_up = device.is_some();
        s.last_error = last_error.clone().or_else(|| device_error.clone());
    }
    // Stopping: withdraw everything, then let the device go.
    let started = Instant::now();
    let result = backend.apply(&[]).await;
    let took_ms = started.elapsed().as_millis() as u64;
    match &result {
        Ok(_) => tracing::info!(took_ms, "withdrew every VIP from BIRD"),
        Err(e) => {
            tracing::error!(error = %e, "withdrawing through BIRD failed; the dead-man device goes now, which withdraws the routes too")
        }
    }
    let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
    for d in &mut s.decisions {
        d.announce = false;
        d.reason = "lbd is stopping (withdrawn before the drain period)".into();
    }
    if result.is_ok() {
        s.announced = Some(Vec::new());
    }
    drop(device);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, vip: [u8; 4], usable: usize, backends: usize) -> ServiceInput {
        ServiceInput {
            name: name.into(),
            vip: Ipv4Addr::from(vip),
            usable,
            rising: 0,
            backends,
        }
    }

    fn ready() -> Readiness {
        Readiness {
            stopping: false,
            dataplane: Ok(()),
            device: Ok(()),
            digest: Ok(()),
        }
    }

    /// The decision table: each row changes one input from "everything fine".
    #[test]
    fn decision_table() {
        let services = vec![
            svc("web", [192, 0, 2, 10], 2, 2),
            svc("web-tls", [192, 0, 2, 10], 0, 2),
            svc("api", [192, 0, 2, 11], 0, 3),
            svc("empty", [192, 0, 2, 12], 0, 0),
        ];
        let rows: Vec<(&str, Readiness, [bool; 3], &str)> = vec![
            (
                "all ready",
                ready(),
                [true, false, false],
                "1 of 2 services can serve (web: 2 of 2 up, web-tls: 0 of 2 up)",
            ),
            (
                "stopping",
                Readiness {
                    stopping: true,
                    ..ready()
                },
                [false; 3],
                "lbd is stopping",
            ),
            (
                "xdp detached",
                Readiness {
                    dataplane: Err("no XDP program on eth0".into()),
                    ..ready()
                },
                [false; 3],
                "data plane not ready: no XDP program on eth0",
            ),
            (
                "device gone",
                Readiness {
                    device: Err("lbvip0 vanished".into()),
                    ..ready()
                },
                [false; 3],
                "dead-man device not up: lbvip0 vanished",
            ),
            (
                "digest mismatch",
                Readiness {
                    digest: Err("maglev digest 1 differs".into()),
                    ..ready()
                },
                [false; 3],
                "maglev digest 1 differs",
            ),
        ];
        for (what, r, want, reason0) in rows {
            let got = decide(&r, &services, &[]);
            assert_eq!(
                got.iter().map(|d| d.vip.to_string()).collect::<Vec<_>>(),
                ["192.0.2.10", "192.0.2.11", "192.0.2.12"],
                "{what}"
            );
            let announce: Vec<bool> = got.iter().map(|d| d.announce).collect();
            assert_eq!(announce, want, "{what}: {got:?}");
            assert!(
                got[0].reason.starts_with(reason0),
                "{what}: {}",
                got[0].reason
            );
        }
        let got = decide(&ready(), &services, &[]);
        assert_eq!(
            got[1].reason,
            "no service of the VIP has a healthy backend (api: 0 of 3 up)"
        );
        // The VIP goes when its last serving service loses its last backend.
        let mut down = services.clone();
        down[0].usable = 0;
        assert!(!decide(&ready(), &down, &[])[0].announce);
    }

    /// A VIP not announced waits while a backend rises (its table would lack that backend
    /// while the other nodes' have it); an announced VIP keeps its route meanwhile.
    #[test]
    fn a_new_announcement_waits_for_rising_backends() {
        let vip = Ipv4Addr::new(192, 0, 2, 10);
        let mut web = svc("web", [192, 0, 2, 10], 1, 3);
        web.rising = 2;
        let got = decide(&ready(), std::slice::from_ref(&web), &[]);
        assert!(!got[0].announce, "{got:?}");
        assert_eq!(
            got[0].reason,
            "waiting for 2 rising backends so that this node's Maglev table matches the other nodes' (web: 1 of 3 up)"
        );
        let got = decide(&ready(), std::slice::from_ref(&web), &[vip]);
        assert!(got[0].announce, "already announced: {got:?}");
        web.rising = 0;
        assert!(decide(&ready(), std::slice::from_ref(&web), &[])[0].announce);
        // Rising backends alone do not make a VIP announced.
        let mut none_up = svc("web", [192, 0, 2, 10], 0, 3);
        none_up.rising = 3;
        assert!(!decide(&ready(), &[none_up], &[vip])[0].announce);
    }

    /// What the fake backend saw, in order.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Ev {
        Applied(Vec<Ipv4Addr>),
        ApplyFailed(Vec<Ipv4Addr>),
        Opened,
        Dropped,
    }

    /// A BIRD that can be made unreachable and a device that logs its creation and removal.
    #[derive(Clone, Default)]
    struct Fake {
        log: Arc<Mutex<Vec<Ev>>>,
        bird_down: Arc<std::sync::atomic::AtomicBool>,
    }

    struct FakeDevice(Arc<Mutex<Vec<Ev>>>);

    impl Drop for FakeDevice {
        fn drop(&mut self) {
            self.0.lock().unwrap().push(Ev::Dropped);
        }
    }

    impl Backend for Fake {
        type Device = FakeDevice;
        fn open_device(&self) -> std::io::Result<FakeDevice> {
            self.log.lock().unwrap().push(Ev::Opened);
            Ok(FakeDevice(self.log.clone()))
        }
        fn device_exists(&self, _: &FakeDevice) -> bool {
            true
        }
        async fn apply(&self, vips: &[Ipv4Addr]) -> Result<String, bird::BirdError> {
            if self.bird_down.load(std::sync::atomic::Ordering::SeqCst) {
                self.log
                    .lock()
                    .unwrap()
                    .push(Ev::ApplyFailed(vips.to_vec()));
                Err(bird::BirdError::Timeout(bird::BIRDC_TIMEOUT))
            } else {
                self.log.lock().unwrap().push(Ev::Applied(vips.to_vec()));
                Ok("Reconfigured".into())
            }
        }
    }

    /// How the fake inputs behave on the next reads.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Reads {
        /// Return the services.
        Answer,
        /// Block (a hung task holding the controller lock) until set back to `Answer`.
        Hang,
        /// Panic.
        Panic,
    }

    /// [`run_with`] over a [`Fake`], with inputs the test sets.
    struct Harness {
        fake: Fake,
        services: Arc<Mutex<Vec<ServiceInput>>>,
        reads: Arc<(Mutex<Reads>, std::sync::Condvar)>,
        status: Arc<Mutex<AnnounceStatus>>,
        stop: tokio::sync::watch::Sender<bool>,
        task: tokio::task::JoinHandle<()>,
    }

    const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);

    impl Harness {
        fn start(usable: usize) -> Self {
            let cfg = AnnounceConfig {
                bird_socket: "/run/bird/bird.ctl".into(),
                include_file: "/etc/bird/lb-vips.conf".into(),
                birdc: "birdc".into(),
                protocol: "vips".into(),
                device: "lbvip0".into(),
                address: Ipv4Addr::new(169, 254, 77, 1),
                peer: Ipv4Addr::new(169, 254, 77, 2),
                drain: Duration::from_secs(1),
            };
            let fake = Fake::default();
            let services = Arc::new(Mutex::new(vec![svc("web", VIP.octets(), usable, 1)]));
            let reads = Arc::new((Mutex::new(Reads::Answer), std::sync::Condvar::new()));
            let (s, r) = (services.clone(), reads.clone());
            let inputs: Arc<dyn Fn() -> Inputs + Send + Sync> = Arc::new(move || {
                let (mode, cv) = &*r;
                let mut m = mode.lock().unwrap();
                // Bounded, so that a failing test cannot leave a blocked thread behind.
                let until = Instant::now() + Duration::from_secs(30);
                while *m == Reads::Hang && Instant::now() < until {
                    m = cv.wait_timeout(m, Duration::from_millis(100)).unwrap().0;
                }
                let broken = *m == Reads::Panic;
                drop(m); // not poisoned by the panic below
                assert!(!broken, "the inputs broke");
                Inputs {
                    dataplane: Ok(()),
                    digest: Ok(()),
                    services: s.lock().unwrap().clone(),
                }
            });
            let status = Arc::new(Mutex::new(AnnounceStatus::default()));
            let (stop, stop_rx) = tokio::sync::watch::channel(false);
            let task = tokio::spawn(run_with(cfg, fake.clone(), status.clone(), inputs, stop_rx));
            Harness {
                fake,
                services,
                reads,
                status,
                stop,
                task,
            }
        }

        fn set_usable(&self, usable: usize) {
            self.services.lock().unwrap()[0].usable = usable;
        }

        fn set_reads(&self, reads: Reads) {
            *self.reads.0.lock().unwrap() = reads;
            self.reads.1.notify_all();
        }

        fn set_bird_down(&self, down: bool) {
            self.fake
                .bird_down
                .store(down, std::sync::atomic::Ordering::SeqCst);
        }

        fn log(&self) -> Vec<Ev> {
            self.fake.log.lock().unwrap().clone()
        }

        /// Waits (10 s at most) until `done` holds for the event log.
        async fn wait_for(&self, what: &str, done: impl Fn(&[Ev]) -> bool) {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let log = self.log();
                if done(&log) {
                    return;
                }
                assert!(Instant::now() < deadline, "{what}; events: {log:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }

        async fn stop(self) -> Vec<Ev> {
            self.set_reads(Reads::Answer);
            let _ = self.stop.send(true);
            let log = self.fake.log.clone();
            tokio::time::timeout(Duration::from_secs(10), self.task)
                .await
                .expect("the announcer stops")
                .unwrap();
            let log = log.lock().unwrap().clone();
            log
        }
    }

    /// The events after the last `Dropped`, failed attempts left out.
    fn after_drop(log: &[Ev]) -> Vec<Ev> {
        let i = log
            .iter()
            .rposition(|e| *e == Ev::Dropped)
            .map_or(0, |i| i + 1);
        log[i..]
            .iter()
            .filter(|e| !matches!(e, Ev::ApplyFailed(_)))
            .cloned()
            .collect()
    }

    /// M1: when BIRD cannot be reconfigured and a VIP must go, the dead-man device goes (BIRD
    /// withdraws every route via it by itself); it comes back only after BIRD accepted a
    /// configuration again, as at start. A failed *addition* keeps the device.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_withdrawal_birdc_cannot_apply_drops_the_device() {
        let h = Harness::start(0);
        h.wait_for("start: empty configure, then the device", |l| {
            l == [Ev::Applied(vec![]), Ev::Opened]
        })
        .await;
        // Announcing fails: nothing to withdraw, the device stays.
        h.set_bird_down(true);
        h.set_usable(1);
        h.wait_for("two failed additions", |l| {
            l.iter()
                .filter(|e| **e == Ev::ApplyFailed(vec![VIP]))
                .count()
                >= 2
        })
        .await;
        assert!(!h.log().contains(&Ev::Dropped), "{:?}", h.log());
        h.set_bird_down(false);
        h.wait_for("announced", |l| l.contains(&Ev::Applied(vec![VIP])))
            .await;
        // Now the VIP must go and BIRD does not answer: the device goes.
        h.set_bird_down(true);
        h.set_usable(0);
        h.wait_for("the device dropped after the failed withdrawal", |l| {
            l.contains(&Ev::Dropped)
        })
        .await;
        let log = h.log();
        let drop_at = log.iter().position(|e| *e == Ev::Dropped).unwrap();
        assert_eq!(log[drop_at - 1], Ev::ApplyFailed(vec![]), "{log:?}");
        {
            let s = h.status.lock().unwrap();
            assert!(!s.device_up, "{s:?}");
            assert!(s.last_error.is_some(), "{s:?}");
        }
        // BIRD is back and the backend healthy: empty configure, device, then the VIP.
        h.set_usable(1);
        h.set_bird_down(false);
        h.wait_for("announced again", |l| {
            after_drop(l).contains(&Ev::Applied(vec![VIP]))
        })
        .await;
        assert_eq!(
            after_drop(&h.log()),
            [Ev::Applied(vec![]), Ev::Opened, Ev::Applied(vec![VIP])],
            "{:?}",
            h.log()
        );
        let log = h.stop().await;
        assert_eq!(log[log.len() - 2..], [Ev::Applied(vec![]), Ev::Dropped]);
    }

    fn count(log: &[Ev], e: &Ev) -> usize {
        log.iter().filter(|x| *x == e).count()
    }

    /// Inputs that cannot be read (the blocking read panics) withdraw every VIP, and the VIP
    /// comes back once they can be read again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unreadable_inputs_withdraw_every_vip() {
        let h = Harness::start(1);
        h.wait_for("announced", |l| l.contains(&Ev::Applied(vec![VIP])))
            .await;
        h.set_reads(Reads::Panic);
        h.wait_for("withdrawn", |l| count(l, &Ev::Applied(vec![])) == 2)
            .await;
        h.set_reads(Reads::Answer);
        h.wait_for("announced again", |l| {
            count(l, &Ev::Applied(vec![VIP])) == 2
        })
        .await;
        h.stop().await;
    }

    /// L1: inputs that do not come within [`INPUTS_TIMEOUT`] (a hung task holding the
    /// controller lock) count as nothing ready: every VIP is withdrawn; when BIRD cannot take
    /// the withdrawal either, the device goes (M1).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hung_inputs_withdraw_every_vip() {
        let h = Harness::start(1);
        h.wait_for("announced", |l| l.contains(&Ev::Applied(vec![VIP])))
            .await;
        h.set_reads(Reads::Hang);
        h.wait_for("withdrawn", |l| count(l, &Ev::Applied(vec![])) == 2)
            .await;
        assert!(h.status.lock().unwrap().device_up);
        h.set_reads(Reads::Answer);
        h.wait_for("announced again", |l| {
            count(l, &Ev::Applied(vec![VIP])) == 2
        })
        .await;
        h.set_bird_down(true);
        h.set_reads(Reads::Hang);
        h.wait_for("the device dropped", |l| l.contains(&Ev::Dropped))
            .await;
        assert!(!h.status.lock().unwrap().device_up);
        h.set_bird_down(false);
        h.stop().await;
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new();
        let delays: Vec<Duration> = (0..7).map(|_| b.failed()).collect();
        assert_eq!(
            delays,
            [500, 1000, 2000, 4000, 8000, 10000, 10000].map(Duration::from_millis)
        );
        assert!(!b.ready());
        b.succeeded();
        assert!(b.ready());
        assert_eq!(b.failed(), MIN_BACKOFF);
    }
}
