//! Running the database tier inside lbd: one task per cluster runs a check round every
//! `check.interval` (every member probed in parallel through a [`MemberProber`], each probe
//! bounded by `check.timeout`), feeds the probes to [`super::decide::decide`], hands the new
//! state to the controller, logs the events and keeps them in a bounded in-memory log
//! ([`DbRuntime`], read by `lbctl db events`), and runs the promote hook when the decision
//! asks for it.

use super::decide::{ClusterState, DbEventKind};
use super::observation::MemberProbe;
use crate::config::db::{DbCheckConfig, DbCheckKind, DbClusterConfig, DbMemberConfig};
use crate::health::patroni::PatroniCheck;
use crate::health::postgres::PostgresCheck;
use crate::health::role::RoleCheck;
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::net::{SocketAddr, SocketAddrV4};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Events kept by [`DbRuntime`] (the oldest are dropped first).
pub const EVENT_LOG_CAPACITY: usize = 1000;

/// The future a probe returns.
pub type ProbeFuture = Pin<Box<dyn Future<Output = MemberProbe> + Send + 'static>>;

/// Runs one check of one member of a cluster. The caller bounds it by `check.timeout` (an
/// expired probe counts as `Failed`), so an implementation need not time out itself.
pub trait MemberProber: Send + Sync + std::fmt::Debug + 'static {
    /// Probes `member` of `cluster` once (a fresh connection per call).
    fn probe(&self, cluster: &DbClusterConfig, member: &DbMemberConfig) -> ProbeFuture;
}

/// The prober lbd runs: the check layer's [`RoleCheck`] (`postgres`, `patroni` or `both`,
/// `crate::health::role`) built from the cluster's `check` settings, one fresh connection per
/// probe.
#[derive(Debug, Default, Clone, Copy)]
pub struct RoleProber;

/// The check layer's probe for a cluster's `check` settings.
pub fn role_check(check: &DbCheckConfig) -> RoleCheck {
    let pg = || PostgresCheck {
        user: check.user.clone().unwrap_or_default(),
        database: check.database.clone(),
        password_file: check.password_file.clone(),
        timeout: check.timeout,
    };
    let patroni = || PatroniCheck {
        timeout: check.timeout,
    };
    match check.kind {
        DbCheckKind::Postgres => RoleCheck::Postgres(pg()),
        DbCheckKind::Patroni => RoleCheck::Patroni(patroni()),
        DbCheckKind::Both => RoleCheck::Both(pg(), patroni()),
    }
}

impl MemberProber for RoleProber {
    fn probe(&self, cluster: &DbClusterConfig, member: &DbMemberConfig) -> ProbeFuture {
        let check = role_check(&cluster.check);
        let address = SocketAddr::V4(member.address);
        let patroni = member.patroni.map(SocketAddr::V4);
        Box::pin(async move { check.probe(address, patroni).await })
    }
}

/// The prober lbd uses ([`RoleProber`]).
pub fn default_prober() -> Arc<dyn MemberProber> {
    Arc::new(RoleProber)
}

/// Probes every member of `cluster` in parallel, each bounded by `check.timeout`.
pub async fn probe_round(
    prober: &Arc<dyn MemberProber>,
    cluster: &DbClusterConfig,
) -> Vec<(SocketAddrV4, MemberProbe)> {
    let timeout = cluster.check.timeout;
    let mut set = tokio::task::JoinSet::new();
    for (i, m) in cluster.members.iter().enumerate() {
        let fut = prober.probe(cluster, m);
        let address = m.address;
        set.spawn(async move {
            let probe = match tokio::time::timeout(timeout, fut).await {
                Ok(p) => p,
                Err(_) => MemberProbe::Failed(format!(
                    "check timed out after {}",
                    crate::config::format_duration(timeout)
                )),
            };
            (i, address, probe)
        });
    }
    let mut out = Vec::with_capacity(cluster.members.len());
    while let Some(r) = set.join_next().await {
        match r {
            Ok(x) => out.push(x),
            Err(e) => {
                tracing::error!(cluster = %cluster.name, error = %e, "a database check task failed")
            }
        }
    }
    out.sort_by_key(|x| x.0);
    out.into_iter().map(|(_, a, p)| (a, p)).collect()
}

/// One event of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbEvent {
    /// Sequence number (increasing, from 1).
    pub seq: u64,
    /// When it happened.
    pub at: SystemTime,
    /// The cluster.
    pub cluster: String,
    /// What happened.
    pub kind: DbEventKind,
}

/// Per-cluster runtime state.
#[derive(Debug, Clone, Default)]
pub struct ClusterRuntime {
    /// The decided state after the last round.
    pub state: ClusterState,
    /// Generation of the task running the cluster's rounds (a task whose generation is no
    /// longer current stops).
    pub generation: u64,
}

/// The database tier's state in lbd: per-cluster state and the event log.
#[derive(Debug, Default)]
pub struct DbRuntime {
    /// Clusters by name.
    pub clusters: BTreeMap<String, ClusterRuntime>,
    events: VecDeque<DbEvent>,
    next_seq: u64,
    next_generation: u64,
}

impl DbRuntime {
    /// Appends an event (dropping the oldest beyond [`EVENT_LOG_CAPACITY`]).
    pub fn record(&mut self, cluster: &str, at: SystemTime, kind: DbEventKind) {
        self.next_seq += 1;
        if self.events.len() == EVENT_LOG_CAPACITY {
            self.events.pop_front();
        }
        self.events.push_back(DbEvent {
            seq: self.next_seq,
            at,
            cluster: cluster.to_string(),
            kind,
        });
    }

    /// The last `limit` events, oldest first, of one cluster or all.
    pub fn events(&self, cluster: Option<&str>, limit: usize) -> Vec<DbEvent> {
        let matching: Vec<&DbEvent> = self
            .events
            .iter()
            .filter(|e| cluster.is_none_or(|c| e.cluster == c))
            .collect();
        let skip = matching.len().saturating_sub(limit);
        matching.into_iter().skip(skip).cloned().collect()
    }

    /// Makes the set of clusters match `wanted`: returns the clusters that need a new task
    /// with its generation; clusters no longer wanted are dropped (their tasks stop).
    pub fn sync(&mut self, wanted: &[String]) -> Vec<(String, u64)> {
        self.clusters.retain(|name, _| wanted.contains(name));
        let mut start = Vec::new();
        for name in wanted {
            if !self.clusters.contains_key(name) {
                self.next_generation += 1;
                self.clusters.insert(
                    name.clone(),
                    ClusterRuntime {
                        state: ClusterState::default(),
                        generation: self.next_generation,
                    },
                );
                start.push((name.clone(), self.next_generation));
            }
        }
        start
    }

    /// Whether a task of `generation` still runs `cluster`.
    pub fn is_current(&self, cluster: &str, generation: u64) -> bool {
        self.clusters
            .get(cluster)
            .is_some_and(|c| c.generation == generation)
    }

    /// Stops every task (lbd shutting down).
    pub fn stop_all(&mut self) {
        self.clusters.clear();
    }
}

/// Runs the promote hook: `command` with `member` appended, killed after `timeout`; the
/// outcome is logged and returned as one line.
pub async fn run_promote_hook(
    cluster: &str,
    command: &[String],
    member: SocketAddrV4,
    timeout: Duration,
) -> Result<String, String> {
    let Some((program, args)) = command.split_first() else {
        return Err("promote.command is empty".into());
    };
    tracing::warn!(cluster, member = %member, command = ?command, "running the promote hook");
    let child = tokio::process::Command::new(program)
        .args(args)
        .arg(member.to_string())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let result = match tokio::time::timeout(timeout, child).await {
        Err(_) => Err(format!(
            "promote hook {program} timed out after {} and was killed",
            crate::config::format_duration(timeout)
        )),
        Ok(Err(e)) => Err(format!("promote hook {program} could not start: {e}")),
        Ok(Ok(out)) => {
            let tail = |b: &[u8]| {
                let s = String::from_utf8_lossy(b);
                let s = s.trim();
                s.chars()
                    .rev()
                    .take(400)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<String>()
            };
            if out.status.success() {
                Ok(format!(
                    "promote hook {program} {member} succeeded: {}",
                    tail(&out.stdout)
                ))
            } else {
                Err(format!(
                    "promote hook {program} {member} failed ({}): {}",
                    out.status,
                    tail(&out.stderr)
                ))
            }
        }
    };
    match &result {
        Ok(m) => tracing::warn!(cluster, member = %member, "{m}"),
        Err(m) => tracing::error!(cluster, member = %member, "{m}"),
    }
    result
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The API form of an event.
pub fn event_info(e: &DbEvent) -> crate::api::proto::DbEventInfo {
    crate::api::proto::DbEventInfo {
        seq: e.seq,
        at_unix_ms: unix_ms(e.at),
        cluster: e.cluster.clone(),
        event: e.kind.name().to_string(),
        member: e.kind.member(),
        message: e.kind.to_string(),
    }
}

/// The error for an unknown cluster name, listing the known ones.
pub fn unknown_cluster(config: &crate::config::Config, name: &str) -> String {
    let known: Vec<&str> = config.db_clusters.iter().map(|c| c.name.as_str()).collect();
    format!(
        "no database cluster named \"{name}\" (known: {})",
        if known.is_empty() {
            "none".to_string()
        } else {
            known.join(", ")
        }
    )
}

/// `db_status` data: every cluster (or `only`) with its members.
pub fn status<D: crate::dataplane::Dataplane>(
    ctl: &crate::controller::Controller<D>,
    db: &DbRuntime,
    only: Option<&str>,
) -> Result<Vec<crate::api::proto::DbClusterInfo>, String> {
    use crate::api::proto::{DbClusterInfo, DbMemberInfo};
    if let Some(name) = only {
        if ctl.config().db_cluster(name).is_none() {
            return Err(unknown_cluster(ctl.config(), name));
        }
    }
    let mut out = Vec::new();
    for cfg in &ctl.config().db_clusters {
        if only.is_some_and(|n| n != cfg.name) {
            continue;
        }
        let empty = ClusterState::default();
        let st = db.clusters.get(&cfg.name).map_or(&empty, |c| &c.state);
        let flows = |a: SocketAddrV4| -> u64 {
            ctl.services()
                .iter()
                .filter(|s| s.cfg.db_cluster.as_deref() == Some(cfg.name.as_str()))
                .filter_map(|s| s.backend(a))
                .map(|b| b.active_flows)
                .sum()
        };
        let members = cfg
            .members
            .iter()
            .map(|mc| match st.member(mc.address) {
                Some(m) => DbMemberInfo {
                    address: m.address,
                    role: m.role.name().into(),
                    state: crate::daemon::health_name(m.tracker.health()).into(),
                    probe: m.probe.into(),
                    lsn: m.lsn().map(super::observation::format_lsn),
                    lag_bytes: if m.role == super::MemberRole::Replica {
                        m.lag
                    } else {
                        None
                    },
                    timeline: m.last.as_ref().and_then(|o| o.timeline),
                    read_eligible: m.read_eligible,
                    flows: flows(m.address),
                    why: m.why.clone(),
                },
                None => DbMemberInfo {
                    address: mc.address,
                    role: "unknown".into(),
                    state: "unknown".into(),
                    probe: "none".into(),
                    lsn: None,
                    lag_bytes: None,
                    timeline: None,
                    read_eligible: false,
                    flows: flows(mc.address),
                    why: "not checked yet".into(),
                },
            })
            .collect();
        out.push(DbClusterInfo {
            name: cfg.name.clone(),
            primary: st.primary,
            timeline: st.timeline,
            primary_since_unix_ms: st.primary_since.map(unix_ms),
            split_brain: st.split_brain,
            read_fallback: st.read_fallback,
            system_identifier: st.system_identifier.map(|s| s.to_string()),
            primary_changes: st.primary_changes,
            lost_bytes_estimate: st.lost_bytes_estimate,
            rounds: st.rounds,
            members,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_log_is_bounded_and_filtered() {
        let mut rt = DbRuntime::default();
        let t = SystemTime::UNIX_EPOCH;
        for i in 0..(EVENT_LOG_CAPACITY + 5) {
            let c = if i % 2 == 0 { "a" } else { "b" };
            rt.record(c, t, DbEventKind::SplitBrainEnded);
        }
        let all = rt.events(None, usize::MAX);
        assert_eq!(all.len(), EVENT_LOG_CAPACITY);
        assert_eq!(all[0].seq, 6, "the 5 oldest were dropped");
        let last3 = rt.events(Some("a"), 3);
        assert_eq!(last3.len(), 3);
        assert!(last3.iter().all(|e| e.cluster == "a"));
        assert_eq!(last3[2].seq, (EVENT_LOG_CAPACITY + 5) as u64);
    }

    #[test]
    fn sync_starts_new_clusters_and_retires_removed_ones() {
        let mut rt = DbRuntime::default();
        let started = rt.sync(&["pg".into(), "other".into()]);
        assert_eq!(started.len(), 2);
        let g = started[0].1;
        assert!(rt.is_current("pg", g));
        assert!(rt.sync(&["pg".into(), "other".into()]).is_empty());
        rt.sync(&["other".into()]);
        assert!(!rt.is_current("pg", g));
        let again = rt.sync(&["pg".into(), "other".into()]);
        assert_eq!(again.len(), 1);
        assert!(
            !rt.is_current("pg", g),
            "a re-added cluster gets a new generation"
        );
    }

    #[tokio::test]
    async fn probes_time_out_as_failures() {
        #[derive(Debug)]
        struct Slow;
        impl MemberProber for Slow {
            fn probe(&self, _c: &DbClusterConfig, m: &DbMemberConfig) -> ProbeFuture {
                let slow = m.address.port() == 2;
                Box::pin(async move {
                    if slow {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                    MemberProbe::NotUsable("x".into())
                })
            }
        }
        let cfg: DbClusterConfig = serde_yaml::from_str(
            "name: pg\nmembers: [{address: 10.0.0.1:1}, {address: 10.0.0.1:2}]\ncheck: {user: u, interval: 1s, timeout: 100ms}\n",
        )
        .unwrap();
        let prober: Arc<dyn MemberProber> = Arc::new(Slow);
        let out = probe_round(&prober, &cfg).await;
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].1, MemberProbe::NotUsable("x".into()));
        assert!(matches!(&out[1].1, MemberProbe::Failed(m) if m.contains("timed out")));
    }

    #[tokio::test]
    async fn the_promote_hook_gets_the_member_and_is_killed_on_timeout() {
        let member: SocketAddrV4 = "10.2.2.2:5432".parse().unwrap();
        let ok = run_promote_hook(
            "pg",
            &["/bin/sh".into(), "-c".into(), "echo promoted $0".into()],
            member,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert!(ok.contains("promoted 10.2.2.2:5432"), "{ok}");
        let err = run_promote_hook(
            "pg",
            &["/bin/sh".into(), "-c".into(), "echo no >&2; exit 3".into()],
            member,
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(err.contains("failed") && err.contains("no"), "{err}");
        let err = run_promote_hook(
            "pg",
            &["/bin/sh".into(), "-c".into(), "sleep 30".into()],
            member,
            Duration::from_millis(200),
        )
        .await
        .unwrap_err();
        assert!(err.contains("timed out"), "{err}");
    }
}
