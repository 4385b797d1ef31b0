//! `GET /metrics` on `metrics_listen`: Prometheus text (format 0.0.4) encoded with the
//! `prometheus-client` crate and served with hyper (HTTP/1.1 only). Every metric is
//! documented in docs/metrics.md.
//!
//! Two sources feed one registry: [`SnapshotCollector`] reads lbd's [`StatsSnapshot`] at each
//! scrape (data-plane counters, health, weights), and [`LocalMetrics`] holds counters of
//! lbd itself (connections refused by the limits of [`crate::limits`], health checks that
//! could not run).
//!
//! Each connection answers one request and closes. Its request head must arrive within
//! [`HEADER_READ_TIMEOUT`] and the whole exchange end within [`CONNECTION_TIMEOUT`] (a slow
//! reader of the response is cut off too); at most [`crate::limits::METRICS_MAX_CONNECTIONS`]
//! are open at a time.

mod conntrack_filter;

use crate::api::proto::{BackendStats, Health, ServiceStats, SnatPortsInfo, StatsSnapshot};
use crate::limits::{accept_loop, METRICS_MAX_CONNECTIONS};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::TcpListener;

/// Time a client has to send its request head after connecting.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest life of one metrics connection: request, scrape and response.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// `Content-Type` of the response.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Labels of the per-listener counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: &'static str,
}

/// Labels of `lb_health_checks_not_run_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NotRunLabels {
    service: String,
    reason: &'static str,
}

/// Labels of `lb_passive_detections_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PassiveLabels {
    service: String,
    backend: String,
    reason: &'static str,
}

/// Labels of the per-cluster database metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DbClusterLabels {
    cluster: String,
}

/// Labels of the per-member database metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DbMemberLabels {
    cluster: String,
    member: String,
}

/// Labels of `lb_db_member_role`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DbRoleLabels {
    cluster: String,
    member: String,
    role: &'static str,
}

/// Labels of `lb_db_flows_reset_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DbResetLabels {
    cluster: String,
    service: String,
    reason: &'static str,
}

/// Counters of lbd itself (not of the data plane), shared by every task through [`local`].
#[derive(Debug, Default)]
pub struct LocalMetrics {
    connections_rejected: Family<ListenerLabels, Counter>,
    connections_timed_out: Family<ListenerLabels, Counter>,
    accept_errors: Family<ListenerLabels, Counter>,
    health_checks_not_run: Family<NotRunLabels, Counter>,
    passive_detections: Family<PassiveLabels, Counter>,
    passive_events_ignored: Counter,
    db_member_role: Family<DbRoleLabels, Gauge>,
    db_replica_lag: Family<DbMemberLabels, Gauge>,
    db_primary_changes: Family<DbClusterLabels, Counter>,
    db_split_brain: Family<DbClusterLabels, Gauge>,
    db_read_fallback: Family<DbClusterLabels, Gauge>,
    db_lost_bytes: Family<DbClusterLabels, Gauge>,
    db_flows_reset: Family<DbResetLabels, Counter>,
}

/// The process-wide [`LocalMetrics`]. One set per process: the tasks that count (accept
/// loops, connection handlers, health-check tasks) are spawned deep inside lbd, and a
/// `prometheus-client` family is a cheap shared handle, so no handle is threaded through.
pub fn local() -> &'static LocalMetrics {
    static LOCAL: OnceLock<LocalMetrics> = OnceLock::new();
    LOCAL.get_or_init(LocalMetrics::default)
}

impl LocalMetrics {
    /// A connection to `listener` was closed at once because the listener was at its cap.
    pub fn connection_rejected(&self, listener: &'static str) {
        self.connections_rejected
            .get_or_create(&ListenerLabels { listener })
            .inc();
    }

    /// A connection to `listener` was closed because it was idle or slow for too long.
    pub fn connection_timed_out(&self, listener: &'static str) {
        self.connections_timed_out
            .get_or_create(&ListenerLabels { listener })
            .inc();
    }

    /// `accept` on `listener` failed.
    pub fn accept_error(&self, listener: &'static str) {
        self.accept_errors
            .get_or_create(&ListenerLabels { listener })
            .inc();
    }

    /// A health check of `service` could not run for a local `reason` (`emfile`, ...).
    pub fn health_check_not_run(&self, service: &str, reason: &'static str) {
        self.health_checks_not_run
            .get_or_create(&NotRunLabels {
                service: service.to_string(),
                reason,
            })
            .inc();
    }

    /// The data plane reported a passive detection (`reason`: [`lb_common::passive::reason_name`]).
    pub fn passive_detection(&self, service: &str, backend: &str, reason: &'static str) {
        self.passive_detections
            .get_or_create(&PassiveLabels {
                service: service.to_string(),
                backend: backend.to_string(),
                reason,
            })
            .inc();
    }

    /// A passive event named a backend id that is not live (retired or unknown).
    pub fn passive_event_ignored(&self) {
        self.passive_events_ignored.inc();
    }

    /// Current `lb_passive_detections_total{service,backend,reason}`.
    pub fn passive_detections(&self, service: &str, backend: &str, reason: &'static str) -> u64 {
        self.passive_detections
            .get(&PassiveLabels {
                service: service.to_string(),
                backend: backend.to_string(),
                reason,
            })
            .map_or(0, |c| c.get())
    }

    /// Current `lb_passive_events_ignored_total`.
    pub fn passive_events_ignored(&self) -> u64 {
        self.passive_events_ignored.get()
    }

    /// Current `lb_control_connections_rejected_total{listener}`.
    pub fn connections_rejected(&self, listener: &'static str) -> u64 {
        self.connections_rejected
            .get(&ListenerLabels { listener })
            .map_or(0, |c| c.get())
    }

    /// Current `lb_control_connections_timed_out_total{listener}`.
    pub fn connections_timed_out(&self, listener: &'static str) -> u64 {
        self.connections_timed_out
            .get(&ListenerLabels { listener })
            .map_or(0, |c| c.get())
    }

    /// Current `lb_control_accept_errors_total{listener}`.
    pub fn accept_errors(&self, listener: &'static str) -> u64 {
        self.accept_errors
            .get(&ListenerLabels { listener })
            .map_or(0, |c| c.get())
    }

    /// Current `lb_health_checks_not_run_total{service,reason}`.
    pub fn health_checks_not_run(&self, service: &str, reason: &'static str) -> u64 {
        self.health_checks_not_run
            .get(&NotRunLabels {
                service: service.to_string(),
                reason,
            })
            .map_or(0, |c| c.get())
    }

    /// Publishes the state of database cluster `cluster` after a round; `changes` is how many
    /// primary changes the round made (0 or 1).
    pub fn db_cluster_state(&self, cluster: &str, state: &crate::db::ClusterState, changes: u64) {
        let c = DbClusterLabels {
            cluster: cluster.to_string(),
        };
        // Created on the first round, so the series exists (at 0) before the first change.
        self.db_primary_changes.get_or_create(&c).inc_by(changes);
        self.db_split_brain
            .get_or_create(&c)
            .set(i64::from(state.split_brain));
        self.db_read_fallback
            .get_or_create(&c)
            .set(i64::from(state.read_fallback));
        if let Some(lost) = state.lost_bytes_estimate {
            self.db_lost_bytes
                .get_or_create(&c)
                .set(i64::try_from(lost).unwrap_or(i64::MAX));
        }
        for m in &state.members {
            let member = m.address.to_string();
            for role in crate::db::MemberRole::ALL {
                self.db_member_role
                    .get_or_create(&DbRoleLabels {
                        cluster: cluster.to_string(),
                        member: member.clone(),
                        role: role.name(),
                    })
                    .set(i64::from(m.role == role));
            }
            let labels = DbMemberLabels {
                cluster: cluster.to_string(),
                member,
            };
            match m.lag {
                Some(lag) if m.role == crate::db::MemberRole::Replica => {
                    self.db_replica_lag
                        .get_or_create(&labels)
                        .set(i64::try_from(lag).unwrap_or(i64::MAX));
                }
                _ => {
                    self.db_replica_lag.remove(&labels);
                }
            }
        }
    }

    /// lbd ordered the flows of a member of database cluster `cluster` reset in `service`
    /// (its gate became reset) for `reason` ([`crate::controller::reset_reason`]); `flows`
    /// is how many it had at the last conntrack sweep. The series is created even when
    /// `flows` is 0, so an order is visible before it resets anything.
    pub fn db_flows_reset(&self, cluster: &str, service: &str, reason: &'static str, flows: u64) {
        self.db_flows_reset
            .get_or_create(&DbResetLabels {
                cluster: cluster.to_string(),
                service: service.to_string(),
                reason,
            })
            .inc_by(flows);
    }

    /// Current `lb_db_flows_reset_total{cluster,service,reason}` (`None`: no such order yet).
    pub fn db_flows_reset_total(
        &self,
        cluster: &str,
        service: &str,
        reason: &'static str,
    ) -> Option<u64> {
        self.db_flows_reset
            .get(&DbResetLabels {
                cluster: cluster.to_string(),
                service: service.to_string(),
                reason,
            })
            .map(|c| c.get())
    }

    /// Current `lb_db_primary_changes_total{cluster}`.
    pub fn db_primary_changes(&self, cluster: &str) -> u64 {
        self.db_primary_changes
            .get(&DbClusterLabels {
                cluster: cluster.to_string(),
            })
            .map_or(0, |c| c.get())
    }

    /// Registers these metrics in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        // `register` appends "." to the help text and `_total` to counter names.
        registry.register(
            "lb_control_connections_rejected",
            "Connections to the metrics endpoint or the API socket closed at once because the listener had its maximum of open connections",
            self.connections_rejected.clone(),
        );
        registry.register(
            "lb_control_connections_timed_out",
            "Connections to the metrics endpoint or the API socket closed because the client was idle or too slow",
            self.connections_timed_out.clone(),
        );
        registry.register(
            "lb_control_accept_errors",
            "Failed accepts on the metrics endpoint or the API socket (each followed by a back-off sleep)",
            self.accept_errors.clone(),
        );
        registry.register(
            "lb_health_checks_not_run",
            "Health checks that could not run because of a local resource shortage (the backend's state was left as it was)",
            self.health_checks_not_run.clone(),
        );
        registry.register(
            "lb_passive_detections",
            "Passive failure detections the data plane reported (reason rst_to_syn: the backend answered a SYN with a RST; syn_unanswered: the client retransmitted a SYN the backend never answered)",
            self.passive_detections.clone(),
        );
        registry.register(
            "lb_passive_events_ignored",
            "Passive detection events naming a backend id that is not live (removed meanwhile)",
            self.passive_events_ignored.clone(),
        );
        registry.register(
            "lb_db_member_role",
            "1 for the role lb gives each database cluster member (unknown, primary, replica, fenced, down, foreign), 0 for the others",
            self.db_member_role.clone(),
        );
        registry.register(
            "lb_db_replica_lag_bytes",
            "Replay lag of each replica behind the primary's current WAL position, in bytes, from the same check round",
            self.db_replica_lag.clone(),
        );
        registry.register(
            "lb_db_primary_changes",
            "Times the write service's primary moved from one member to another",
            self.db_primary_changes.clone(),
        );
        registry.register(
            "lb_db_split_brain",
            "1 while more than one member of the cluster claims to be primary",
            self.db_split_brain.clone(),
        );
        registry.register(
            "lb_db_read_fallback_active",
            "1 while no replica is eligible for reads (read services with fallback: primary send reads to the primary)",
            self.db_read_fallback.clone(),
        );
        registry.register(
            "lb_db_lost_bytes_estimate",
            "Estimated WAL bytes the new primary never received at the last primary change (previous primary's last seen LSN minus the new primary's LSN)",
            self.db_lost_bytes.clone(),
        );
        registry.register(
            "lb_db_flows_reset",
            "Flows of database cluster members that lbd ordered reset, by service and reason (demoted: the write service's primary is in recovery now; fenced: it claims primary but lost the election or tied; down: failed fall checks; foreign: another system identifier); counted when the order is given, as the member's flows at the last conntrack sweep",
            self.db_flows_reset.clone(),
        );
    }
}

type SvcField = fn(&ServiceStats) -> u64;
type BeField = fn(&BackendStats) -> u64;

/// Per-service families: (name without `_total`, type, help, value).
const SERVICE_FAMILIES: [(&str, MetricType, &str, SvcField); 7] = [
    (
        "lb_service_packets_in",
        MetricType::Counter,
        "Packets forwarded client -> backend.",
        |s| s.packets_in,
    ),
    (
        "lb_service_bytes_in",
        MetricType::Counter,
        "Bytes (whole frames) forwarded client -> backend.",
        |s| s.bytes_in,
    ),
    (
        "lb_service_packets_out",
        MetricType::Counter,
        "Packets forwarded backend -> client.",
        |s| s.packets_out,
    ),
    (
        "lb_service_bytes_out",
        MetricType::Counter,
        "Bytes (whole frames) forwarded backend -> client.",
        |s| s.bytes_out,
    ),
    (
        "lb_service_new_flows",
        MetricType::Counter,
        "Flows created.",
        |s| s.new_flows,
    ),
    (
        "lb_service_refused",
        MetricType::Counter,
        "SYNs refused with a RST because no backend was usable.",
        |s| s.refused,
    ),
    (
        "lb_service_active_flows",
        MetricType::Gauge,
        "Live flows at the last conntrack sweep.",
        |s| s.active_flows,
    ),
];

/// Per-backend families: (name without `_total`, type, help, value).
const BACKEND_FAMILIES: [(&str, MetricType, &str, BeField); 12] = [
    (
        "lb_backend_packets_in",
        MetricType::Counter,
        "Packets forwarded client -> backend.",
        |b| b.packets_in,
    ),
    (
        "lb_backend_bytes_in",
        MetricType::Counter,
        "Bytes (whole frames) forwarded client -> backend.",
        |b| b.bytes_in,
    ),
    (
        "lb_backend_packets_out",
        MetricType::Counter,
        "Packets forwarded backend -> client.",
        |b| b.packets_out,
    ),
    (
        "lb_backend_bytes_out",
        MetricType::Counter,
        "Bytes (whole frames) forwarded backend -> client.",
        |b| b.bytes_out,
    ),
    (
        "lb_backend_new_flows",
        MetricType::Counter,
        "Flows created.",
        |b| b.new_flows,
    ),
    (
        "lb_backend_active_flows",
        MetricType::Gauge,
        "Live flows at the last conntrack sweep.",
        |b| b.active_flows,
    ),
    (
        "lb_backend_health_transitions",
        MetricType::Counter,
        "Health transitions since the backend was added.",
        |b| b.transitions,
    ),
    (
        "lb_backend_in_table",
        MetricType::Gauge,
        "1 when the backend is in the service's Maglev table (gets new flows).",
        |b| u64::from(b.in_table),
    ),
    (
        "lb_backend_weight",
        MetricType::Gauge,
        "Maglev weight.",
        |b| u64::from(b.weight),
    ),
    (
        "lb_backend_health_stale",
        MetricType::Gauge,
        "1 when the health checks gave no verdict for longer than interval x (fall + 1) (they could not run, see lb_health_checks_not_run_total): the health is the last known one.",
        |b| u64::from(b.health_stale),
    ),
    (
        "lb_backend_health_verdict_age_seconds",
        MetricType::Gauge,
        "Seconds since the health checks last gave a verdict (passed or failed); 0 without checks.",
        |b| b.last_verdict_secs.unwrap_or(0),
    ),
    (
        "lb_backend_suspect",
        MetricType::Gauge,
        "1 while lbd holds evidence against the backend (a passive detection by the data plane or a failed check) that no passing check has cleared; lbctl backend list says why.",
        |b| u64::from(b.suspect.is_some()),
    ),
];

type SnatField = fn(&SnatPortsInfo) -> u64;

/// Per-backend gauges of the SNAT port pool (only for backends that have one: see
/// [`BackendStats::snat_ports`]): (name, help, value). The pool size is not named `_total`:
/// Prometheus keeps that suffix for counters.
const SNAT_FAMILIES: [(&str, &str, SnatField); 4] = [
    (
        "lb_backend_snat_ports_in_use",
        "SNAT ports held by flows to the backend endpoint (address:port) at the last conntrack sweep, over every SNAT address (embryonic flows included). Services sharing an endpoint share its pool.",
        |p| p.in_use,
    ),
    (
        "lb_backend_snat_ports_pool",
        "SNAT ports the backend endpoint can use: snat.addresses x (port_max - port_min + 1).",
        |p| p.total,
    ),
    (
        "lb_backend_snat_ports_in_use_busiest_address",
        "SNAT ports held by flows to the backend endpoint on the SNAT address that holds the most (last conntrack sweep). New flows are dropped (drop_snat_exhausted) as this address fills: compare with lb_backend_snat_ports_per_address.",
        |p| p.busiest_address_in_use,
    ),
    (
        "lb_backend_snat_ports_per_address",
        "SNAT ports per SNAT address: port_max - port_min + 1.",
        |p| p.ports_per_address,
    ),
];

/// Encodes one sample of a family whose type is `kind`.
fn sample(
    family: &mut prometheus_client::encoding::MetricEncoder<'_>,
    kind: MetricType,
    labels: &impl EncodeLabelSet,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let encoder = family.encode_family(labels)?;
    match kind {
        MetricType::Counter => ConstCounter::new(value).encode(encoder),
        _ => ConstGauge::new(value).encode(encoder),
    }
}

/// Encodes a [`StatsSnapshot`] taken at each scrape: the data plane's counters are per-CPU
/// map values summed by lbd's sampler, read when Prometheus asks, so they are exported with
/// constant metrics rather than kept in registered counters.
pub struct SnapshotCollector<F> {
    snapshot: F,
}

impl<F> std::fmt::Debug for SnapshotCollector<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SnapshotCollector")
    }
}

impl<F: Fn() -> StatsSnapshot> SnapshotCollector<F> {
    /// A collector calling `snapshot` at each scrape.
    pub fn new(snapshot: F) -> Self {
        Self { snapshot }
    }
}

impl<F> Collector for SnapshotCollector<F>
where
    F: Fn() -> StatsSnapshot + Send + Sync + 'static,
{
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode_snapshot(&(self.snapshot)(), &mut encoder)
    }
}

fn encode_snapshot(
    snap: &StatsSnapshot,
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        "lb_packets",
        "Packets seen by the XDP program, by verdict reason (events ct_backend_down, ct_syn_reuse and new_flow count on top).",
        None,
        MetricType::Counter,
    )?;
    for (reason, v) in &snap.counters {
        sample(
            &mut family,
            MetricType::Counter,
            &[("reason", reason.as_str())],
            *v,
        )?;
    }
    let mut family = encoder.encode_descriptor(
        "lb_connections_retried",
        "Connections whose first backend failed the handshake and that lb balanced afresh, by reason: rst_to_syn_in_xdp (the backend's RST to the SYN became the client's SYN toward another backend in XDP; counter ct_syn_retried), rst_to_syn (a RST to a SYN that could not be retried in XDP was kept from the client, whose retransmitted SYN went to another backend; counter drop_syn_refused), syn_unanswered (the client's retransmitted SYN to a silent backend went to another backend; counter ct_syn_unanswered).",
        None,
        MetricType::Counter,
    )?;
    for (reason, counter) in crate::stats::RETRIED_CONNECTIONS {
        if let Some(v) = snap.counters.get(counter) {
            sample(&mut family, MetricType::Counter, &[("reason", reason)], *v)?;
        }
    }
    for (name, kind, help, get) in SERVICE_FAMILIES {
        let mut family = encoder.encode_descriptor(name, help, None, kind)?;
        for s in &snap.services {
            let labels = [
                ("service", s.name.clone()),
                ("vip", s.vip.to_string()),
                ("port", s.port.to_string()),
            ];
            sample(&mut family, kind, &labels, get(s))?;
        }
    }
    for (name, kind, help, get) in BACKEND_FAMILIES {
        let mut family = encoder.encode_descriptor(name, help, None, kind)?;
        for s in &snap.services {
            for b in &s.backends {
                let labels = [
                    ("service", s.name.clone()),
                    ("backend", b.address.to_string()),
                ];
                sample(&mut family, kind, &labels, get(b))?;
            }
        }
    }
    for (name, help, get) in SNAT_FAMILIES {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for s in &snap.services {
            for b in &s.backends {
                let Some(p) = &b.snat_ports else { continue };
                let labels = [
                    ("service", s.name.clone()),
                    ("backend", b.address.to_string()),
                ];
                sample(&mut family, MetricType::Gauge, &labels, get(p))?;
            }
        }
    }
    let mut family = encoder.encode_descriptor(
        "lb_backend_health",
        "1 for the backend's current health state (up, down, unknown), 0 for the others.",
        None,
        MetricType::Gauge,
    )?;
    for s in &snap.services {
        for b in &s.backends {
            for (state, h) in [
                ("up", Health::Up),
                ("down", Health::Down),
                ("unknown", Health::Unknown),
            ] {
                let labels = [
                    ("service", s.name.clone()),
                    ("backend", b.address.to_string()),
                    ("state", state.to_string()),
                ];
                sample(
                    &mut family,
                    MetricType::Gauge,
                    &labels,
                    u64::from(b.health == h),
                )?;
            }
        }
    }
    conntrack_filter::encode(snap, encoder)
}

/// The registry served at `/metrics`: the snapshot families, then lbd's own counters.
pub fn registry<F>(snapshot: F) -> Registry
where
    F: Fn() -> StatsSnapshot + Send + Sync + 'static,
{
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SnapshotCollector::new(snapshot)));
    local().register(&mut registry);
    registry
}

/// Encodes `registry` as Prometheus text.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::with_capacity(4096);
    // Writing to a String cannot fail; an encoder error would be a bug in a label value.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, registry) {
        tracing::error!(error = %e, "encoding metrics failed");
    }
    out
}

/// Renders `snap` (and lbd's own counters) as Prometheus text.
pub fn render(snap: &StatsSnapshot) -> String {
    let snap = snap.clone();
    encode(&registry(move || snap.clone()))
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<String> {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Answers one request: `GET /metrics` (any query), 404 for other paths, 405 for other methods.
async fn answer(registry: Arc<Registry>, req: Request<Incoming>) -> Response<String> {
    if req.method() != Method::GET {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET is supported\n");
        r.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET"),
        );
        return r;
    }
    if req.uri().path() != "/metrics" {
        return text(StatusCode::NOT_FOUND, "only /metrics is served\n");
    }
    // The snapshot locks the controller (a std mutex): keep it off the async workers.
    match tokio::task::spawn_blocking(move || encode(&registry)).await {
        Ok(body) => {
            let mut r = text(StatusCode::OK, body);
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(CONTENT_TYPE),
            );
            r
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("scrape failed: {e}\n"),
        ),
    }
}

/// Serves one connection: one request, then close; bounded by the timeouts above.
async fn serve_connection(stream: tokio::net::TcpStream, registry: Arc<Registry>) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(false);
    let conn = http.serve_connection(
        TokioIo::new(stream),
        hyper::service::service_fn(move |req| {
            let registry = registry.clone();
            async move { Ok::<_, std::convert::Infallible>(answer(registry, req).await) }
        }),
    );
    match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) if e.is_timeout() => local().connection_timed_out("metrics"),
        Ok(Err(e)) => tracing::debug!(error = %e, "metrics connection ended with an error"),
        Err(_) => local().connection_timed_out("metrics"),
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves; `snapshot` produces the data.
pub async fn serve<F, S>(listener: TcpListener, snapshot: F, shutdown: S)
where
    F: Fn() -> StatsSnapshot + Send + Sync + 'static,
    S: Future<Output = ()>,
{
    let registry = Arc::new(registry(snapshot));
    accept_loop(
        "metrics",
        METRICS_MAX_CONNECTIONS,
        || async { listener.accept().await.map(|(s, _)| s) },
        |stream| serve_connection(stream, registry.clone()),
        shutdown,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::proto::{BackendStats, ServiceStats};
    use std::collections::BTreeMap;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn snap() -> StatsSnapshot {
        let b = BackendStats {
            address: "10.1.1.2:8080".parse().unwrap(),
            id: 1,
            weight: 2,
            backup: false,
            health: Health::Down,
            drained: false,
            in_table: false,
            active_flows: 3,
            new_flows: 9,
            packets_in: 100,
            bytes_in: 6400,
            packets_out: 90,
            bytes_out: 5000,
            new_flows_per_sec: 0.0,
            packets_per_sec: 0.0,
            bytes_per_sec: 0.0,
            transitions: 1,
            last_transition: None,
            last_verdict_secs: Some(42),
            health_stale: true,
            suspect: None,
            last_suspicion: None,
            snat_ports: Some(SnatPortsInfo {
                in_use: 7,
                total: 2000,
                busiest_address_in_use: 5,
                ports_per_address: 1000,
                addresses: 2,
            }),
        };
        StatsSnapshot {
            timestamp_ms: 0,
            services: vec![ServiceStats {
                name: "web".into(),
                vip: "192.0.2.10".parse().unwrap(),
                port: 80,
                health_check: "tcp".into(),
                active_flows: 3,
                new_flows: 9,
                refused: 4,
                packets_in: 100,
                bytes_in: 6400,
                packets_out: 90,
                bytes_out: 5000,
                new_flows_per_sec: 0.0,
                packets_per_sec: 0.0,
                bytes_per_sec: 0.0,
                backends: vec![b],
            }],
            counters: lb_common::COUNTER_NAMES
                .iter()
                .enumerate()
                .map(|(i, n)| (n.to_string(), i as u64))
                .collect::<BTreeMap<_, _>>(),
            conntrack_filter: None,
        }
    }

    #[test]
    fn db_primary_changes_is_exported_at_zero_from_the_first_round() {
        let state = crate::db::ClusterState::default();
        local().db_cluster_state("zero-changes", &state, 0);
        let text = render(&snap());
        assert!(
            text.contains("lb_db_primary_changes_total{cluster=\"zero-changes\"} 0\n"),
            "{text}"
        );
    }

    #[test]
    fn db_flows_reset_counts_flows_by_reason_and_shows_zero_orders() {
        let m = local();
        m.db_flows_reset("resets", "pg-write", "fenced", 7);
        m.db_flows_reset("resets", "pg-write", "fenced", 2);
        m.db_flows_reset("resets", "pg-read", "down", 0);
        assert_eq!(
            m.db_flows_reset_total("resets", "pg-write", "fenced"),
            Some(9)
        );
        assert_eq!(m.db_flows_reset_total("resets", "pg-write", "down"), None);
        let text = render(&snap());
        assert!(
            text.contains("# TYPE lb_db_flows_reset_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "lb_db_flows_reset_total{cluster=\"resets\",service=\"pg-write\",reason=\"fenced\"} 9\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "lb_db_flows_reset_total{cluster=\"resets\",service=\"pg-read\",reason=\"down\"} 0\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn renders_every_family() {
        let text = render(&snap());
        assert!(text.contains("lb_packets_total{reason=\"drop_snat_exhausted\"} 12\n"));
        assert!(text.contains(
            "lb_service_refused_total{service=\"web\",vip=\"192.0.2.10\",port=\"80\"} 4\n"
        ));
        assert!(text
            .contains("lb_backend_new_flows_total{service=\"web\",backend=\"10.1.1.2:8080\"} 9\n"));
        assert!(
            text.contains("lb_backend_health_stale{service=\"web\",backend=\"10.1.1.2:8080\"} 1\n")
        );
        assert!(text.contains(
            "lb_backend_health_verdict_age_seconds{service=\"web\",backend=\"10.1.1.2:8080\"} 42\n"
        ));
        assert!(text.contains(
            "lb_backend_health{service=\"web\",backend=\"10.1.1.2:8080\",state=\"down\"} 1\n"
        ));
        assert!(text.contains(
            "lb_backend_health{service=\"web\",backend=\"10.1.1.2:8080\",state=\"up\"} 0\n"
        ));
        assert!(text.contains(
            "lb_backend_health_transitions_total{service=\"web\",backend=\"10.1.1.2:8080\"} 1\n"
        ));
        // Retried connections are the two passive-detection counters, by reason (the test
        // snapshot holds counter i at value i: drop_syn_refused is 32, ct_syn_unanswered 33).
        assert_eq!(lb_common::counters::DROP_SYN_REFUSED, 32);
        assert_eq!(lb_common::counters::CT_SYN_UNANSWERED, 33);
        assert!(
            text.contains("lb_connections_retried_total{reason=\"rst_to_syn\"} 32\n"),
            "{text}"
        );
        assert!(text.contains("lb_connections_retried_total{reason=\"syn_unanswered\"} 33\n"));
        assert!(text.contains("# TYPE lb_connections_retried_total counter\n"));
        assert!(text.contains("lb_backend_suspect{service=\"web\",backend=\"10.1.1.2:8080\"} 0\n"));
        let mut suspect = snap();
        suspect.services[0].backends[0].suspect = Some(crate::api::proto::SuspectInfo {
            why: "passive: RST to SYN".into(),
            passive_reason: Some("rst_to_syn".into()),
            detections: 1,
            failed_checks: 0,
            last_failure: None,
            since_unix_ms: 1,
            age_secs: 1,
        });
        assert!(render(&suspect)
            .contains("lb_backend_suspect{service=\"web\",backend=\"10.1.1.2:8080\"} 1\n"));
        // Same HELP/TYPE lines as the hand-written encoder had (names with `_total`).
        assert!(text.contains(
            "# HELP lb_service_refused_total SYNs refused with a RST because no backend was usable.\n# TYPE lb_service_refused_total counter\n"
        ));
        assert!(text.contains("# TYPE lb_backend_active_flows gauge\n"));
        for (name, v) in [
            ("lb_backend_snat_ports_in_use", 7),
            ("lb_backend_snat_ports_pool", 2000),
            ("lb_backend_snat_ports_in_use_busiest_address", 5),
            ("lb_backend_snat_ports_per_address", 1000),
        ] {
            assert!(text.contains(&format!("# TYPE {name} gauge\n")), "{name}");
            assert!(
                text.contains(&format!(
                    "{name}{{service=\"web\",backend=\"10.1.1.2:8080\"}} {v}\n"
                )),
                "{name}\n{text}"
            );
        }
        // A backend without a pool (DSR service, no sweep yet) has no SNAT samples.
        let mut dsr = snap();
        dsr.services[0].backends[0].snat_ports = None;
        assert!(!render(&dsr).contains("lb_backend_snat_ports_pool{"));
        assert!(text.contains("# TYPE lb_health_checks_not_run_total counter\n"));
        assert!(text.contains("# TYPE lb_control_connections_rejected_total counter\n"));
        // Label values are escaped.
        let mut odd = snap();
        odd.services[0].name = "a\"b\\c".into();
        assert!(render(&odd).contains("lb_service_refused_total{service=\"a\\\"b\\\\c\","));
        // Every sample line belongs to a declared family.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# TYPE {name} ")), "{line}");
        }
    }

    #[tokio::test]
    async fn serves_get_metrics() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, snap, async {
            let _ = rx.await;
        }));
        for (req, want) in [
            (
                "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
                "HTTP/1.1 200 OK",
            ),
            ("GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 404"),
            ("POST /metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 405"),
        ] {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(req.as_bytes()).await.unwrap();
            let mut resp = String::new();
            s.read_to_string(&mut resp).await.unwrap();
            assert!(resp.starts_with(want), "{resp}");
            if want.ends_with("200 OK") {
                assert!(resp.contains("lb_packets_total{reason=\"new_flow\"} 20"));
            }
        }
        tx.send(()).unwrap();
        server.await.unwrap();
    }

    /// A client that connects and sends nothing, or trickles its request, is disconnected
    /// after the header timeout; a normal scrape still works meanwhile.
    #[tokio::test]
    async fn idle_and_trickling_clients_are_disconnected() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, snap, async {
            let _ = rx.await;
        }));
        let started = std::time::Instant::now();
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut trickle = tokio::net::TcpStream::connect(addr).await.unwrap();
        let trickler = tokio::spawn(async move {
            // One byte every 500 ms: never a complete head within the timeout.
            for b in b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
                .iter()
                .cycle()
                .take(40)
            {
                if trickle.write_all(&[*b]).await.is_err() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            false
        });
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await.unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.unwrap();
        assert!(resp.starts_with("HTTP/1.1 200 OK"), "{resp}");

        let mut buf = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(15), idle.read_to_end(&mut buf))
            .await
            .expect("an idle metrics connection is closed");
        let waited = started.elapsed();
        assert!(n.is_ok() || buf.is_empty());
        assert!(
            waited >= HEADER_READ_TIMEOUT - Duration::from_millis(100),
            "closed after {waited:?}"
        );
        assert!(
            tokio::time::timeout(Duration::from_secs(15), trickler)
                .await
                .expect("a trickling client is disconnected")
                .unwrap(),
            "the trickling client was never disconnected"
        );
        tx.send(()).unwrap();
        server.await.unwrap();
    }
}
