//! Counter sampling and rates: the 1-second sampler reads the per-CPU stats (summed by the
//! data plane), keeps the previous sample, and derives per-second rates. [`snapshot`] joins the
//! samples with the controller's model into the API's [`StatsSnapshot`], which the metrics
//! endpoint renders too.

use crate::api::proto::{
    BackendStats, ServiceStats, SnatPortsInfo, StatsSnapshot, SuspectInfo, SuspicionEndInfo,
};
use crate::config::HealthCheckConfig;
use crate::controller::Controller;
use crate::dataplane::{Dataplane, DataplaneError};
use crate::model::{stale_after, BackendState, ServiceState};
use crate::suspicion::{EndedSuspicion, Suspicion};
use lb_common::{FlowStats, NUM_COUNTERS};
use std::collections::{BTreeMap, HashMap};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Retried connections by reason, and the data-plane counter ([`lb_common::COUNTER_NAMES`])
/// that counts them: `rst_to_syn_in_xdp` is `ct_syn_retried` (a backend's RST to a SYN turned
/// into the client's SYN toward another backend in XDP at once), `rst_to_syn` is
/// `drop_syn_refused` (a backend's RST to a SYN that could not be retried in XDP, kept from the
/// client, whose retransmitted SYN is balanced afresh, away from the now suspect backend),
/// `syn_unanswered` is `ct_syn_unanswered` (a client's SYN retransmission on a flow the backend
/// never answered, balanced afresh at once). A connection refused again after a retry counts
/// once per retry. The metric `lb_connections_retried_total{reason}` and the demo read them
/// through this table.
pub const RETRIED_CONNECTIONS: [(&str, &str); 3] = [
    (
        "rst_to_syn_in_xdp",
        lb_common::COUNTER_NAMES[lb_common::counters::CT_SYN_RETRIED as usize],
    ),
    (
        lb_common::passive::reason_name(lb_common::passive::REASON_RST_TO_SYN),
        lb_common::COUNTER_NAMES[lb_common::counters::DROP_SYN_REFUSED as usize],
    ),
    (
        lb_common::passive::reason_name(lb_common::passive::REASON_SYN_UNANSWERED),
        lb_common::COUNTER_NAMES[lb_common::counters::CT_SYN_UNANSWERED as usize],
    ),
];

/// Connections retried over every reason of [`RETRIED_CONNECTIONS`], from counters by name
/// (`None` when none of them is present: an lbd without passive detection).
pub fn retried_connections(counters: &BTreeMap<String, u64>) -> Option<u64> {
    let found: Vec<u64> = RETRIED_CONNECTIONS
        .iter()
        .filter_map(|(_, c)| counters.get(*c).copied())
        .collect();
    (!found.is_empty()).then(|| found.iter().sum())
}

/// Per-second rates over the last sampling interval.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rates {
    /// New flows per second.
    pub new_flows: f64,
    /// Packets per second, both directions.
    pub packets: f64,
    /// Bytes per second, both directions.
    pub bytes: f64,
}

impl Rates {
    /// Rates between two samples `secs` apart (counter resets give 0, not negative rates).
    pub fn between(prev: &FlowStats, cur: &FlowStats, secs: f64) -> Rates {
        if secs <= 0.0 {
            return Rates::default();
        }
        let d = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
        Rates {
            new_flows: d(prev.new_flows, cur.new_flows),
            packets: d(
                prev.packets_in + prev.packets_out,
                cur.packets_in + cur.packets_out,
            ),
            bytes: d(prev.bytes_in + prev.bytes_out, cur.bytes_in + cur.bytes_out),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Id {
    Service(u32),
    Backend(u32),
}

/// Keeps the last sample of every service/backend id and the rates derived from it.
#[derive(Debug)]
pub struct StatsSampler {
    last: HashMap<Id, (Instant, FlowStats)>,
    rates: HashMap<Id, Rates>,
    counters: [u64; NUM_COUNTERS as usize],
}

impl Default for StatsSampler {
    fn default() -> Self {
        Self {
            last: HashMap::new(),
            rates: HashMap::new(),
            counters: [0; NUM_COUNTERS as usize],
        }
    }
}

impl StatsSampler {
    /// An empty sampler.
    pub fn new() -> Self {
        Self::default()
    }

    fn record(&mut self, id: Id, now: Instant, cur: FlowStats) {
        if let Some((t, prev)) = self.last.get(&id) {
            let secs = now.duration_since(*t).as_secs_f64();
            self.rates.insert(id, Rates::between(prev, &cur, secs));
        }
        self.last.insert(id, (now, cur));
    }

    /// Reads every service's and backend's stats and the global counters.
    pub fn sample<D: Dataplane>(&mut self, ctl: &Controller<D>) -> Result<(), DataplaneError> {
        let now = Instant::now();
        let dp = ctl.dataplane();
        let mut seen = Vec::new();
        for svc in ctl.services() {
            self.record(Id::Service(svc.id), now, dp.service_stats(svc.id)?);
            seen.push(Id::Service(svc.id));
            for b in &svc.backends {
                self.record(Id::Backend(b.id), now, dp.backend_stats(b.id)?);
                seen.push(Id::Backend(b.id));
            }
        }
        self.last.retain(|id, _| seen.contains(id));
        self.rates.retain(|id, _| seen.contains(id));
        self.counters = dp.global_counters()?;
        Ok(())
    }

    fn stats(&self, id: Id) -> (FlowStats, Rates) {
        (
            self.last.get(&id).map(|x| x.1).unwrap_or_default(),
            self.rates.get(&id).copied().unwrap_or_default(),
        )
    }

    /// Global verdict counters of the last sample, keyed by counter name.
    pub fn counters(&self) -> BTreeMap<String, u64> {
        lb_common::COUNTER_NAMES
            .iter()
            .zip(self.counters.iter())
            .filter(|(n, _)| !n.starts_with(lb_common::RESERVED_PREFIX))
            .map(|(n, v)| (n.to_string(), *v))
            .collect()
    }
}

fn describe_transition(b: &BackendState) -> Option<String> {
    let t = b.last_transition.as_ref()?;
    let ago = SystemTime::now()
        .duration_since(t.at)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let to = match t.to {
        crate::model::Health::Up => "up",
        crate::model::Health::Down => "down",
        crate::model::Health::Unknown => "unknown",
    };
    Some(format!("{to} {ago}s ago: {}", t.reason))
}

/// The API view of one backend of a service whose checks are `hc`.
pub fn backend_stats(
    b: &BackendState,
    hc: &HealthCheckConfig,
    sampler: &StatsSampler,
) -> BackendStats {
    let (s, r) = sampler.stats(Id::Backend(b.id));
    let now = Instant::now();
    let wall = SystemTime::now();
    BackendStats {
        address: b.cfg.address,
        id: b.id,
        weight: b.cfg.weight,
        backup: b.cfg.backup,
        health: b.health(),
        drained: b.cfg.drain,
        in_table: b.in_table,
        active_flows: b.active_flows,
        new_flows: s.new_flows,
        packets_in: s.packets_in,
        bytes_in: s.bytes_in,
        packets_out: s.packets_out,
        bytes_out: s.bytes_out,
        new_flows_per_sec: r.new_flows,
        packets_per_sec: r.packets,
        bytes_per_sec: r.bytes,
        transitions: b.transitions,
        last_transition: describe_transition(b),
        last_verdict_secs: stale_after(hc).map(|_| b.verdicts.age(now).as_secs()),
        health_stale: b.verdicts.is_stale(hc, now),
        suspect: b.suspect.current.as_ref().map(|x| suspect_info(x, wall)),
        last_suspicion: b.suspect.last.as_ref().map(|x| suspicion_end_info(x, wall)),
        snat_ports: b.snat_pool.map(|p| SnatPortsInfo {
            in_use: p.in_use,
            total: p.total(),
            busiest_address_in_use: p.busiest_address,
            ports_per_address: p.ports_per_address,
            addresses: p.addresses,
        }),
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Whole seconds from `from` to `to` (0 when `to` is earlier: a clock step).
fn secs_between(from: SystemTime, to: SystemTime) -> u64 {
    to.duration_since(from).map_or(0, |d| d.as_secs())
}

/// The API view of a current suspicion at wall-clock time `now`.
pub fn suspect_info(s: &Suspicion, now: SystemTime) -> SuspectInfo {
    SuspectInfo {
        why: s.why(),
        passive_reason: s
            .passive
            .map(|p| lb_common::passive::reason_name(p.reason).to_string()),
        detections: s.detections,
        failed_checks: s.failed_checks,
        last_failure: s.last_failure.clone(),
        since_unix_ms: unix_ms(s.since),
        age_secs: secs_between(s.since, now),
    }
}

/// The API view of an ended suspicion at wall-clock time `now`.
pub fn suspicion_end_info(e: &EndedSuspicion, now: SystemTime) -> SuspicionEndInfo {
    SuspicionEndInfo {
        why: e.suspicion.why(),
        since_unix_ms: unix_ms(e.suspicion.since),
        ended_unix_ms: unix_ms(e.ended),
        lasted_ms: unix_ms(e.ended).saturating_sub(unix_ms(e.suspicion.since)),
        ago_secs: secs_between(e.ended, now),
        how: e.how.text().to_string(),
    }
}

/// The API view of one service.
pub fn service_stats(svc: &ServiceState, sampler: &StatsSampler) -> ServiceStats {
    let (s, r) = sampler.stats(Id::Service(svc.id));
    ServiceStats {
        name: svc.cfg.name.clone(),
        vip: svc.cfg.vip,
        port: svc.cfg.port,
        health_check: svc.cfg.health_check.kind.to_string(),
        active_flows: svc.active_flows,
        new_flows: s.new_flows,
        refused: s.refused,
        packets_in: s.packets_in,
        bytes_in: s.bytes_in,
        packets_out: s.packets_out,
        bytes_out: s.bytes_out,
        new_flows_per_sec: r.new_flows,
        packets_per_sec: r.packets,
        bytes_per_sec: r.bytes,
        backends: svc
            .backends
            .iter()
            .map(|b| backend_stats(b, &svc.cfg.health_check, sampler))
            .collect(),
    }
}

/// The `stats` answer: every service with its backends plus the global counters.
pub fn snapshot<D: Dataplane>(ctl: &Controller<D>, sampler: &StatsSampler) -> StatsSnapshot {
    StatsSnapshot {
        timestamp_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        services: ctl
            .services()
            .iter()
            .map(|s| service_stats(s, sampler))
            .collect(),
        counters: sampler.counters(),
        conntrack_filter: ctl.last_sweep().and_then(|s| s.ct_filter),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::dataplane::fake::FakeDataplane;

    #[test]
    fn rates_come_from_consecutive_samples() {
        let prev = FlowStats {
            packets_in: 10,
            packets_out: 10,
            bytes_in: 1000,
            bytes_out: 0,
            new_flows: 1,
            refused: 0,
        };
        let cur = FlowStats {
            packets_in: 30,
            packets_out: 20,
            bytes_in: 3000,
            bytes_out: 1000,
            new_flows: 5,
            refused: 0,
        };
        let r = Rates::between(&prev, &cur, 2.0);
        assert_eq!(r.packets, 15.0);
        assert_eq!(r.bytes, 1500.0);
        assert_eq!(r.new_flows, 2.0);
        // A reset counter does not give a negative rate.
        assert_eq!(Rates::between(&cur, &prev, 1.0).packets, 0.0);
    }

    #[test]
    fn snapshot_carries_model_and_counters() {
        let cfg = Config::from_yaml_str(
            "interfaces: [eth0]\nsnat: {addresses: [10.0.0.1]}\nlimits: {maglev_table_size: 101}\nservices:\n  - name: web\n    vip: 192.0.2.1\n    port: 80\n    backends: [{address: 10.1.0.1:80, weight: 3}]\n",
            "t.yaml",
        )
        .unwrap();
        let dp = FakeDataplane::new();
        let ctl = Controller::new(dp.clone(), cfg).unwrap();
        let bid = ctl.services()[0].backends[0].id;
        dp.state().counters[lb_common::FWD_TO_BACKEND as usize] = 42;
        dp.state().backend_stats.insert(
            bid,
            FlowStats {
                packets_in: 7,
                new_flows: 2,
                ..Default::default()
            },
        );
        let mut sampler = StatsSampler::new();
        sampler.sample(&ctl).unwrap();
        let snap = snapshot(&ctl, &sampler);
        assert_eq!(snap.counters["fwd_to_backend"], 42);
        // Every counter but the unused placeholders (`reserved_*`).
        let named = lb_common::COUNTER_NAMES
            .iter()
            .filter(|n| !n.starts_with(lb_common::RESERVED_PREFIX))
            .count();
        assert_eq!(snap.counters.len(), named);
        let b = &snap.services[0].backends[0];
        assert_eq!((b.packets_in, b.new_flows, b.weight), (7, 2, 3));
        assert!(b.in_table);
        assert_eq!(snap.services[0].health_check, "tcp");
        assert_eq!(b.snat_ports, None, "no conntrack sweep yet");
    }

    /// SNAT ports counted by the sweep reach the API, `lbctl stats` and the metrics.
    #[test]
    fn snat_pool_use_reaches_stats_cli_and_metrics() {
        let cfg = Config::from_yaml_str(
            "interfaces: [eth0]\nsnat: {addresses: [10.0.0.1], port_min: 1024, port_max: 1123}\nlimits: {maglev_table_size: 101, conntrack_flows: 1024}\nservices:\n  - name: web\n    vip: 192.0.2.1\n    port: 80\n    backends: [{address: 10.1.0.1:80}]\n",
            "t.yaml",
        )
        .unwrap();
        let dp = FakeDataplane::new();
        let mut ctl = Controller::new(dp.clone(), cfg).unwrap();
        dp.state().snat_ports.insert(
            ("10.1.0.1:80".parse().unwrap(), "10.0.0.1".parse().unwrap()),
            85,
        );
        ctl.sweep(0).unwrap();
        let mut sampler = StatsSampler::new();
        sampler.sample(&ctl).unwrap();
        let snap = snapshot(&ctl, &sampler);
        assert_eq!(
            snap.services[0].backends[0].snat_ports,
            Some(SnatPortsInfo {
                in_use: 85,
                total: 100,
                busiest_address_in_use: 85,
                ports_per_address: 100,
                addresses: 1,
            })
        );
        let table = crate::cli::format::services_with_backends(&snap.services);
        assert!(table.contains("SNAT PORTS"), "{table}");
        assert!(table.contains("  85/100 85%  "), "{table}");
        let text = crate::metrics::render(&snap);
        assert!(
            text.contains(
                "lb_backend_snat_ports_in_use{service=\"web\",backend=\"10.1.0.1:80\"} 85\n"
            ),
            "{text}"
        );
        assert!(text
            .contains("lb_backend_snat_ports_pool{service=\"web\",backend=\"10.1.0.1:80\"} 100\n"));
        assert_eq!(
            ctl.snat_pools_in_warning(),
            vec!["10.1.0.1:80".parse().unwrap()]
        );
    }

    /// The key filter's state reported by the sweep reaches the API, `lbctl stats` and the
    /// metrics; the last sweep's state wins.
    #[test]
    fn conntrack_filter_state_reaches_stats_cli_and_metrics() {
        let cfg = Config::from_yaml_str(
            "interfaces: [eth0]\nsnat: {addresses: [10.0.0.1]}\nlimits: {maglev_table_size: 101}\nservices: []\n",
            "t.yaml",
        )
        .unwrap();
        let dp = FakeDataplane::new();
        let mut ctl = Controller::new(dp.clone(), cfg).unwrap();
        let mut sampler = StatsSampler::new();
        sampler.sample(&ctl).unwrap();
        assert_eq!(
            snapshot(&ctl, &sampler).conntrack_filter,
            None,
            "no sweep yet"
        );
        let mut f = crate::dataplane::CtFilterStatus {
            enabled: true,
            bits_set: 100,
            bits_total: 1 << 14,
            rebuilds: 3,
        };
        dp.state().ct_filter = Some(f);
        ctl.sweep(0).unwrap();
        f.bits_set = 5734;
        f.rebuilds = 4;
        dp.state().ct_filter = Some(f);
        ctl.sweep(0).unwrap();
        let snap = snapshot(&ctl, &sampler);
        assert_eq!(snap.conntrack_filter, Some(f));
        let out = crate::cli::format::stats(&snap, None, false);
        assert!(
            out.contains("\nconntrack key filter: on, 35% (high) of 16.4K bits set, 4 rebuilds\n"),
            "{out}"
        );
        let text = crate::metrics::render(&snap);
        for line in [
            "\nlb_conntrack_filter_enabled 1\n",
            "\nlb_conntrack_filter_fill_ratio 0.3499755859375\n",
            "\nlb_conntrack_filter_rebuilds_total 4\n",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
    }
}
