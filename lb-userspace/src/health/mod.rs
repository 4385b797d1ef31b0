//! Health checks: one tokio task per backend that runs a [`HealthCheck`] every `interval`
//! (after a random start jitter within one interval) and reports each result on a channel.
//! The controller owns the rise/fall state machine ([`crate::model::HealthTracker`]); this
//! module only produces results.
//!
//! One file per kind of check, one variant of [`CheckSpec`] per kind: [`tcp::TcpCheck`] (a TCP
//! connect) and [`http::HttpCheck`] (a minimal HTTP/1.1 GET expecting a status code);
//! `type: none` runs no task (backends are up). The backends of a `forwarding: dsr` service
//! get [`dsr::DsrCheck`] instead (unless `health_check.dsr_tunnel: false`): a SYN to the VIP
//! through the IPIP tunnel, as the clients' packets go, followed by the HTTP request for
//! `type: http`. Adding a kind is one new module plus one variant (and its arm in
//! [`CheckSpec::from_config`] and [`CheckSpec::run`]).
//!
//! Database role probes ([`role::RoleCheck`]: [`postgres`], [`patroni`], or both) answer a
//! different question: not "is it up" but "which role does this member have, how far is its
//! WAL" ([`role::MemberProbe`]); the database decision layer runs them once per round for every
//! member of a cluster.
//!
//! A check ends in one of three ways: success, failure ([`CheckError::Failed`]: the backend
//! refused, reset, timed out or answered wrongly), or "could not run"
//! ([`CheckError::NotRun`]: the balancer itself is short of a resource, e.g. out of file
//! descriptors). A check that could not run says nothing about the backend: it is counted in
//! `lb_health_checks_not_run_total{service,reason}`, logged (rate-limited) and not reported,
//! so the backend's state and rise/fall counters stay as they were.

pub mod dsr;
pub mod http;
pub mod patroni;
pub mod postgres;
pub mod role;
pub mod tcp;

pub use dsr::{DsrCheck, DsrPath};
pub use http::{parse_status_line, HttpCheck};
pub use tcp::TcpCheck;

use crate::config::{CheckKind, HealthCheckConfig};
use crate::limits::{LogLimiter, LOG_PERIOD};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddrV4;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Why a check did not pass.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// The backend failed the check; the reason as logged and shown by `lbctl`.
    #[error("{0}")]
    Failed(String),
    /// The check could not run because of a shortage local to the balancer (see
    /// [`local_shortage`]); neither a failure nor a success of the backend.
    #[error("check could not run ({reason}): {detail}")]
    NotRun {
        /// Short errno name (`emfile`, `enfile`, `enobufs`, `eaddrnotavail`, `enomem`),
        /// the `reason` label of `lb_health_checks_not_run_total`.
        reason: &'static str,
        /// What failed, with the OS error.
        detail: String,
    },
}

/// The `reason` when `e` is a shortage on the balancer rather than an answer of the backend:
/// out of file descriptors (EMFILE per process, ENFILE system-wide), out of socket buffers
/// (ENOBUFS) or memory (ENOMEM), or out of local ports/addresses (EADDRNOTAVAIL).
/// Everything else (ECONNREFUSED, ETIMEDOUT, EHOSTUNREACH, ECONNRESET, ...) is the backend's
/// or the network's answer and counts as a failure.
pub fn local_shortage(e: &std::io::Error) -> Option<&'static str> {
    match e.raw_os_error()? {
        libc::EMFILE => Some("emfile"),
        libc::ENFILE => Some("enfile"),
        libc::ENOBUFS => Some("enobufs"),
        libc::EADDRNOTAVAIL => Some("eaddrnotavail"),
        libc::ENOMEM => Some("enomem"),
        _ => None,
    }
}

/// Classifies an I/O error of step `what` (`connect`, `send`, `receive`) of a check.
pub fn io_error(what: &str, e: &std::io::Error) -> CheckError {
    let detail = format!("{what}: {e}");
    match local_shortage(e) {
        Some(reason) => CheckError::NotRun { reason, detail },
        None => CheckError::Failed(detail),
    }
}

/// The future a check returns: `Ok(detail)` on success.
pub type CheckFuture<'a> = Pin<Box<dyn Future<Output = Result<String, CheckError>> + Send + 'a>>;

/// One kind of health check against one backend.
pub trait HealthCheck: Send + Sync {
    /// Runs one check (the caller applies the timeout).
    fn check(&self) -> CheckFuture<'_>;
}

/// One health check of one backend, by kind: the supervisor builds one from the service's
/// settings and dispatches on the variant. Each variant's type lives in its own module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckSpec {
    /// `type: tcp`.
    Tcp(TcpCheck),
    /// `type: http`.
    Http(HttpCheck),
    /// A `forwarding: dsr` service's backend: the SYN through the IPIP tunnel (then the HTTP
    /// request for `type: http`).
    Dsr(DsrCheck),
}

impl CheckSpec {
    /// The check `cfg` asks for against `address` (`None` for `type: none`); `dsr` is the
    /// tunnel of a `forwarding: dsr` service, whose backends get the tunnel check unless
    /// `cfg.dsr_tunnel` is false.
    pub fn from_config(
        cfg: &HealthCheckConfig,
        address: SocketAddrV4,
        dsr: Option<DsrPath>,
    ) -> Option<Self> {
        let http = || HttpCheck {
            address,
            path: cfg.http_path().to_string(),
            expect_status: cfg.http_expect_status(),
        };
        let tunnel = |http: Option<HttpCheck>| {
            dsr.filter(|_| cfg.dsr_tunnel()).map(|path| {
                Self::Dsr(DsrCheck {
                    backend: address,
                    path,
                    wait: dsr::answer_wait(cfg.timeout),
                    http,
                })
            })
        };
        match cfg.kind {
            CheckKind::Tcp => tunnel(None).or(Some(Self::Tcp(TcpCheck { address }))),
            CheckKind::Http => tunnel(Some(http())).or_else(|| Some(Self::Http(http()))),
            CheckKind::None => None,
        }
    }

    /// Runs the check once (the caller applies the timeout): `Ok(detail)` on success.
    pub async fn run(&self) -> Result<String, CheckError> {
        match self {
            Self::Tcp(c) => c.run().await,
            Self::Http(c) => c.run().await,
            Self::Dsr(c) => c.run().await,
        }
    }
}

impl HealthCheck for CheckSpec {
    fn check(&self) -> CheckFuture<'_> {
        Box::pin(self.run())
    }
}

/// One check result, sent to the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// Service name.
    pub service: String,
    /// Backend address.
    pub backend: SocketAddrV4,
    /// Generation of the task that produced it (stale results are ignored).
    pub generation: u64,
    /// Passed or not.
    pub ok: bool,
    /// Detail or failure reason.
    pub reason: String,
}

/// A start delay in `[0, interval)` derived from the backend identity and the clock, so
/// checks of many backends do not fire in lockstep.
pub fn start_jitter(service: &str, backend: SocketAddrV4, interval: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ u64::from(nanos) ^ u64::from(std::process::id());
    for b in service.bytes().chain(backend.to_string().bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 29;
    let ms = interval.as_millis().max(1) as u64;
    Duration::from_millis(h % ms)
}

/// Messages about checks that could not run: one per [`LOG_PERIOD`] for the whole process
/// (when lbd is out of descriptors, every backend's check hits it at once).
static NOT_RUN_LOG: LogLimiter = LogLimiter::new(LOG_PERIOD);

/// Counts and logs (rate-limited) a check that could not run; nothing is reported to the
/// controller, so the backend's state and rise/fall counters stay as they were.
fn not_run(service: &str, backend: SocketAddrV4, reason: &'static str, detail: &str) {
    crate::metrics::local().health_check_not_run(service, reason);
    if let Some(suppressed) = NOT_RUN_LOG.allow() {
        tracing::warn!(
            service,
            backend = %backend,
            reason,
            error = detail,
            suppressed,
            "health check could not run (shortage on this host); the backend's state is unchanged"
        );
    }
}

/// Runs `checker` every `cfg.interval` (first after `jitter`), sending each result.
pub async fn run_checker(
    checker: Box<dyn HealthCheck>,
    cfg: HealthCheckConfig,
    service: String,
    backend: SocketAddrV4,
    generation: u64,
    jitter: Duration,
    tx: mpsc::Sender<CheckResult>,
) {
    tokio::time::sleep(jitter).await;
    let mut ticker = tokio::time::interval(cfg.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let result = match tokio::time::timeout(cfg.timeout, checker.check()).await {
            Ok(r) => r,
            Err(_) => Err(CheckError::Failed(format!(
                "timed out after {}",
                crate::config::format_duration(cfg.timeout)
            ))),
        };
        let (ok, reason) = match result {
            Ok(d) => (true, d),
            Err(CheckError::Failed(e)) => (false, e),
            Err(CheckError::NotRun { reason, detail }) => {
                not_run(&service, backend, reason, &detail);
                continue;
            }
        };
        let msg = CheckResult {
            service: service.clone(),
            backend,
            generation,
            ok,
            reason,
        };
        if tx.send(msg).await.is_err() {
            return; // the daemon is shutting down
        }
    }
}

/// One running check task.
struct Task {
    /// Its generation (results of older ones are stale).
    generation: u64,
    /// What it checks.
    spec: CheckSpec,
    /// Its settings.
    cfg: HealthCheckConfig,
    handle: JoinHandle<()>,
}

/// The set of running check tasks, kept in line with the configuration by [`Self::sync`].
#[derive(Default)]
pub struct HealthSupervisor {
    tasks: HashMap<(String, SocketAddrV4), Task>,
    next_generation: u64,
}

impl HealthSupervisor {
    /// An empty supervisor.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts tasks for new backends, stops tasks of removed ones, and restarts tasks whose
    /// check settings changed. `wanted` lists (service, backend, check settings, the
    /// service's DSR tunnel if it has `forwarding: dsr`).
    pub fn sync(
        &mut self,
        wanted: &[(String, SocketAddrV4, HealthCheckConfig, Option<DsrPath>)],
        tx: &mpsc::Sender<CheckResult>,
    ) {
        let mut keep = std::collections::HashSet::new();
        for (service, backend, cfg, dsr) in wanted {
            let key = (service.clone(), *backend);
            let Some(spec) = CheckSpec::from_config(cfg, *backend, *dsr) else {
                continue;
            };
            keep.insert(key.clone());
            if let Some(old) = self.tasks.get(&key) {
                if old.cfg == *cfg && old.spec == spec {
                    continue;
                }
            }
            if let Some(old) = self.tasks.remove(&key) {
                old.handle.abort();
            }
            self.next_generation += 1;
            let generation = self.next_generation;
            let jitter = start_jitter(service, *backend, cfg.interval);
            let handle = tokio::spawn(run_checker(
                Box::new(spec.clone()),
                cfg.clone(),
                service.clone(),
                *backend,
                generation,
                jitter,
                tx.clone(),
            ));
            self.tasks.insert(
                key,
                Task {
                    generation,
                    spec,
                    cfg: cfg.clone(),
                    handle,
                },
            );
        }
        self.tasks.retain(|key, task| {
            let k = keep.contains(key);
            if !k {
                task.handle.abort();
            }
            k
        });
    }

    /// Whether `result` comes from a task that is still current.
    pub fn is_current(&self, result: &CheckResult) -> bool {
        self.tasks
            .get(&(result.service.clone(), result.backend))
            .is_some_and(|t| t.generation == result.generation)
    }

    /// Number of running tasks.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// True when no task runs.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Stops every task.
    pub fn stop_all(&mut self) {
        for (_, task) in self.tasks.drain() {
            task.handle.abort();
        }
    }
}

impl Drop for HealthSupervisor {
    fn drop(&mut self) {
        self.stop_all();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::net::TcpListener;

    pub(crate) fn local(listener: &TcpListener) -> SocketAddrV4 {
        match listener.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn local_shortages_are_not_backend_failures() {
        let os = std::io::Error::from_raw_os_error;
        for (errno, reason) in [
            (libc::EMFILE, "emfile"),
            (libc::ENFILE, "enfile"),
            (libc::ENOBUFS, "enobufs"),
            (libc::EADDRNOTAVAIL, "eaddrnotavail"),
            (libc::ENOMEM, "enomem"),
        ] {
            match io_error("connect", &os(errno)) {
                CheckError::NotRun { reason: r, detail } => {
                    assert_eq!(r, reason);
                    assert!(detail.starts_with("connect: "), "{detail}");
                }
                other => panic!("errno {errno}: {other:?}"),
            }
        }
        for errno in [
            libc::ECONNREFUSED,
            libc::ETIMEDOUT,
            libc::EHOSTUNREACH,
            libc::ENETUNREACH,
            libc::ECONNRESET,
        ] {
            assert!(
                matches!(io_error("connect", &os(errno)), CheckError::Failed(_)),
                "errno {errno}"
            );
        }
        // Errors without an errno (e.g. from a parser) are failures too.
        assert!(matches!(
            io_error("receive", &std::io::Error::other("bad")),
            CheckError::Failed(_)
        ));
    }

    /// A `forwarding: dsr` service's backends get the tunnel check (with the HTTP request for
    /// `type: http`) unless `dsr_tunnel: false`; full-NAT services keep their kind.
    #[test]
    fn dsr_services_are_checked_through_the_tunnel() {
        let backend: SocketAddrV4 = "10.1.1.2:80".parse().unwrap();
        let path = DsrPath {
            vip: "192.0.2.10:80".parse().unwrap(),
            source: "10.0.255.2".parse().unwrap(),
        };
        let cfg = |kind, dsr_tunnel| HealthCheckConfig {
            kind,
            timeout: Duration::from_millis(300),
            dsr_tunnel,
            ..Default::default()
        };
        let http = HttpCheck {
            address: backend,
            path: "/".into(),
            expect_status: 200,
        };
        let tunnel = |http| {
            Some(CheckSpec::Dsr(DsrCheck {
                backend,
                path,
                wait: Duration::from_millis(270),
                http,
            }))
        };
        let tcp = Some(CheckSpec::Tcp(TcpCheck { address: backend }));
        let spec = |c: &HealthCheckConfig, dsr| CheckSpec::from_config(c, backend, dsr);
        assert_eq!(spec(&cfg(CheckKind::Tcp, None), Some(path)), tunnel(None));
        assert_eq!(
            spec(&cfg(CheckKind::Tcp, Some(true)), Some(path)),
            tunnel(None)
        );
        assert_eq!(
            spec(&cfg(CheckKind::Http, None), Some(path)),
            tunnel(Some(http.clone()))
        );
        assert_eq!(spec(&cfg(CheckKind::Tcp, Some(false)), Some(path)), tcp);
        assert_eq!(
            spec(&cfg(CheckKind::Http, Some(false)), Some(path)),
            Some(CheckSpec::Http(http))
        );
        assert_eq!(spec(&cfg(CheckKind::None, None), Some(path)), None);
        assert_eq!(spec(&cfg(CheckKind::Tcp, None), None), tcp);
    }

    /// A changed tunnel (another VIP or source) restarts the backend's task.
    #[tokio::test]
    async fn a_changed_dsr_path_restarts_the_check() {
        let backend: SocketAddrV4 = "10.1.1.2:80".parse().unwrap();
        let path = DsrPath {
            vip: "192.0.2.10:80".parse().unwrap(),
            source: "10.0.255.2".parse().unwrap(),
        };
        let cfg = HealthCheckConfig::default();
        let (tx, _rx) = mpsc::channel(8);
        let mut sup = HealthSupervisor::new();
        let current = |sup: &HealthSupervisor| {
            sup.tasks
                .get(&("dsr".to_string(), backend))
                .map(|t| t.generation)
        };
        sup.sync(&[("dsr".into(), backend, cfg.clone(), Some(path))], &tx);
        let first = current(&sup).unwrap();
        sup.sync(&[("dsr".into(), backend, cfg.clone(), Some(path))], &tx);
        assert_eq!(current(&sup), Some(first), "unchanged: the task stays");
        let moved = DsrPath {
            source: "10.0.255.3".parse().unwrap(),
            ..path
        };
        sup.sync(&[("dsr".into(), backend, cfg, Some(moved))], &tx);
        assert_ne!(current(&sup), Some(first), "a new source restarts the task");
        sup.stop_all();
    }

    #[test]
    fn jitter_stays_within_the_interval() {
        let a: SocketAddrV4 = "10.0.0.1:80".parse().unwrap();
        for _ in 0..100 {
            assert!(
                start_jitter("web", a, Duration::from_millis(500)) < Duration::from_millis(500)
            );
        }
    }

    /// A check that plays back a script of outcomes, then passes.
    struct Scripted {
        script: Vec<Result<String, CheckError>>,
        next: AtomicUsize,
    }

    impl HealthCheck for Scripted {
        fn check(&self) -> CheckFuture<'_> {
            let i = self.next.fetch_add(1, Ordering::SeqCst);
            let r = self
                .script
                .get(i)
                .cloned()
                .unwrap_or_else(|| Ok("passed".into()));
            Box::pin(async move { r })
        }
    }

    /// "Could not run" results never reach the controller (neither failure nor success) and
    /// are counted per service and reason.
    #[tokio::test]
    async fn checks_that_could_not_run_are_counted_not_reported() {
        let not_run = |reason| CheckError::NotRun {
            reason,
            detail: "connect: Too many open files (os error 24)".into(),
        };
        let checker = Arc::new(Scripted {
            script: vec![
                Err(not_run("emfile")),
                Err(not_run("emfile")),
                Err(CheckError::Failed("connect: Connection refused".into())),
                Err(not_run("eaddrnotavail")),
            ],
            next: AtomicUsize::new(0),
        });
        struct Shared(Arc<Scripted>);
        impl HealthCheck for Shared {
            fn check(&self) -> CheckFuture<'_> {
                self.0.check()
            }
        }
        let cfg = HealthCheckConfig {
            kind: CheckKind::Tcp,
            interval: Duration::from_millis(10),
            timeout: Duration::from_millis(5),
            ..Default::default()
        };
        let service = "not-run-test";
        let backend: SocketAddrV4 = "10.0.0.1:80".parse().unwrap();
        let (tx, mut rx) = mpsc::channel(8);
        let task = tokio::spawn(run_checker(
            Box::new(Shared(checker.clone())),
            cfg,
            service.into(),
            backend,
            1,
            Duration::ZERO,
            tx,
        ));
        let mut results = Vec::new();
        for _ in 0..2 {
            let r = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await;
            results.push(r.expect("a check result").expect("the task is running"));
        }
        let (first, second) = (&results[0], &results[1]);
        assert!(!first.ok);
        assert_eq!(first.reason, "connect: Connection refused");
        assert!(second.ok, "{second:?}");
        task.abort();
        assert!(checker.next.load(Ordering::SeqCst) >= 5);
        let m = crate::metrics::local();
        assert_eq!(m.health_checks_not_run(service, "emfile"), 2);
        assert_eq!(m.health_checks_not_run(service, "eaddrnotavail"), 1);
    }

    #[tokio::test]
    async fn checker_task_reports_and_times_out() {
        // A listener that accepts but never answers: the HTTP check must time out.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = local(&listener);
        let _keep = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let cfg = HealthCheckConfig {
            kind: CheckKind::Http,
            interval: Duration::from_millis(200),
            timeout: Duration::from_millis(100),
            ..Default::default()
        };
        let (tx, mut rx) = mpsc::channel(8);
        let mut sup = HealthSupervisor::new();
        sup.sync(&[("web".into(), addr, cfg.clone(), None)], &tx);
        assert_eq!(sup.len(), 1);
        let r = tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(!r.ok);
        assert_eq!(r.reason, "timed out after 100ms");
        assert!(sup.is_current(&r));
        // A settings change restarts the task with a new generation.
        let mut cfg2 = cfg;
        cfg2.kind = CheckKind::Tcp;
        sup.sync(&[("web".into(), addr, cfg2, None)], &tx);
        assert!(!sup.is_current(&r));
        sup.sync(&[], &tx);
        assert!(sup.is_empty());
    }
}
