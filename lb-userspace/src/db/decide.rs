//! The decision: one pure function per check round of a cluster, [`decide`]. Input: the
//! previous [`ClusterState`], this round's [`MemberProbe`] of every member, the clock.
//! Output: the new state (every member's role and read eligibility), the events of the round
//! and whether the promote hook must run. [`write_gate`] and [`read_gate`] then say what each
//! member may do in a write or read service; the controller applies that to the data plane.
//! The types it reads and writes are in `state` ([`ClusterState`], [`MemberState`],
//! [`MemberRole`], [`Now`]) and `events` ([`DbEventKind`] and its text); the table of cases
//! is `decide_tests.rs`.
//!
//! Rules (docs/database.md states them for operators; each has a test below):
//! - **Health.** `Observed` is a successful check, `Failed` and `NotUsable` failed ones; `fall`
//!   consecutive failures take a member down, `rise` consecutive successes bring a down member
//!   back. A member lbd has not checked yet is decided by its first check (so a restart or a
//!   reload does not take the write VIP away for `rise` rounds). `AuthFailed`, `Overloaded`
//!   and `NotRun` change nothing: the member keeps its role and counters (an alert is raised
//!   for `AuthFailed`).
//! - **Write.** Claimants are members that are up, have the cluster's system identifier and
//!   whose last observation says primary (not in recovery; Patroni agreeing when asked). The
//!   current primary stays while it claims and no claimant has a higher timeline. Otherwise
//!   the unique claimant with the highest timeline becomes primary; a tie at the highest
//!   timeline fails closed (no primary). Every other claimant is fenced.
//! - **System identifier.** Configured, or learned from the first primary elected; a member
//!   reporting another one is never used.
//! - **Read.** A replica is eligible when it is up, streams from the current primary (its WAL
//!   receiver's upstream is the primary's address, or is not a member at all, and its
//!   timeline is the primary's) and its lag (primary's `current_lsn` minus its `replay_lsn`,
//!   both from this round) is below `max_lag_bytes`; once out, it re-enters below half of it.
//!   When either of the two was not observed this round (or there is no primary), eligibility
//!   stays as it was. No eligible replica: read fallback (the primary serves reads when the
//!   service says `fallback: primary`).
//! - **Events.** Primary elected (with the estimated bytes lost: the previous primary's last
//!   seen `current_lsn` minus the new primary's at promotion), primary lost, split brain on
//!   and off, fenced, foreign system identifier, member down/up, replica in/out of reads, read
//!   fallback on/off, check alerts, promote hook.
//! - **Promote hook.** When configured and no HA manager is (no Patroni), once per outage:
//!   after a primary existed and the cluster has had none for `promote.after`, the up replica
//!   with the highest `replay_lsn` is chosen.

mod events;
mod state;

use events::opt;
pub use events::DbEventKind;
pub use state::{ClusterState, LastPrimary, MemberRole, MemberState, Now};

use super::observation::MemberProbe;
use crate::config::{DbClusterConfig, ReadFallback};
use crate::model::{DbGate, Health};
use std::net::{IpAddr, SocketAddrV4};

/// The result of one round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The state after the round.
    pub state: ClusterState,
    /// What happened, in order.
    pub events: Vec<DbEventKind>,
    /// The promote hook must run for this member.
    pub promote: Option<SocketAddrV4>,
}

/// Decides one round of cluster `cfg`. `probes` holds this round's probe of each member (a
/// member without one counts as `NotRun`).
pub fn decide(
    cfg: &DbClusterConfig,
    prev: &ClusterState,
    probes: &[(SocketAddrV4, MemberProbe)],
    now: Now,
) -> Decision {
    let ck = &cfg.check;
    let mut events = Vec::new();
    let mut st = ClusterState {
        rounds: prev.rounds + 1,
        members: Vec::with_capacity(cfg.members.len()),
        ..prev.clone()
    };
    if let Some(expected) = cfg.expected_system_identifier() {
        st.system_identifier = Some(expected);
    }
    let prev_role = |a: SocketAddrV4| prev.member(a).map_or(MemberRole::Unknown, |m| m.role);

    // 1. Health and observations.
    for mc in &cfg.members {
        let mut m = prev
            .member(mc.address)
            .cloned()
            .unwrap_or_else(|| MemberState::new(mc.address));
        let probe = probes
            .iter()
            .find(|(a, _)| *a == mc.address)
            .map(|(_, p)| p.clone())
            .unwrap_or_else(|| MemberProbe::NotRun("no check result this round".into()));
        m.fresh = false;
        m.probe = probe.kind();
        let result = match probe {
            MemberProbe::Observed(o) => {
                m.last = Some(o);
                m.fresh = true;
                m.alert = None;
                Some(true)
            }
            MemberProbe::Failed(r) | MemberProbe::NotUsable(r) => {
                m.detail = r;
                Some(false)
            }
            MemberProbe::AuthFailed(r) => {
                if m.alert.as_deref() != Some(r.as_str()) {
                    events.push(DbEventKind::CheckAlert {
                        member: m.address,
                        message: r.clone(),
                    });
                }
                m.alert = Some(r.clone());
                m.detail = r;
                None
            }
            MemberProbe::Overloaded(r) | MemberProbe::NotRun(r) => {
                m.detail = r;
                None
            }
        };
        if let Some(ok) = result {
            let from = m.tracker.health();
            match m.tracker.record(ok, ck.rise, ck.fall) {
                Some(Health::Down) => events.push(DbEventKind::MemberDown {
                    member: m.address,
                    reason: m.detail.clone(),
                }),
                Some(Health::Up) if from == Health::Down => {
                    events.push(DbEventKind::MemberUp { member: m.address })
                }
                _ => {}
            }
        }
        st.members.push(m);
    }

    // 2. Claimants and the election.
    let foreign = |m: &MemberState, sysid: Option<u64>| matches!((&m.last, sysid), (Some(o), Some(s)) if o.system_identifier != s);
    let claims = |m: &MemberState, sysid: Option<u64>| {
        m.up() && !foreign(m, sysid) && m.last.as_ref().is_some_and(|o| o.claims_primary())
    };
    let tl = |m: &MemberState| m.last.as_ref().and_then(|o| o.timeline);
    let claimants: Vec<usize> = (0..st.members.len())
        .filter(|&i| claims(&st.members[i], st.system_identifier))
        .collect();
    let max_tl = claimants
        .iter()
        .map(|&i| tl(&st.members[i]).unwrap_or(0))
        .max();
    let current = prev.primary.and_then(|p| {
        claimants
            .iter()
            .copied()
            .find(|&i| st.members[i].address == p)
    });
    let winner = match current {
        Some(i) if tl(&st.members[i]).unwrap_or(0) >= max_tl.unwrap_or(0) => Some(i),
        _ => {
            let top: Vec<usize> = claimants
                .iter()
                .copied()
                .filter(|&i| Some(tl(&st.members[i]).unwrap_or(0)) == max_tl)
                .collect();
            (top.len() == 1).then(|| top[0])
        }
    };
    let new_primary = winner.map(|i| st.members[i].address);
    if let (None, Some(w)) = (st.system_identifier, winner) {
        st.system_identifier = st.members[w].last.as_ref().map(|o| o.system_identifier);
    }
    let sysid = st.system_identifier;

    // Split brain: two members claiming primary at the same time. A claim whose member failed
    // this round's check (refused, timed out, not usable) is the last answer of a member that
    // is most likely gone: it still counts in the election above (a primary is not dropped on
    // one failed check, and the loser is fenced), but not as split brain, so a plain failover
    // where the replica is promoted before the dead primary has failed `fall` checks raises
    // no false alarm. Claims kept by an auth failure or an overloaded member still count, and
    // a split brain already raised lasts while its claims are kept (no flapping alarm while a
    // fenced member fails fewer than `fall` checks).
    let failing = |m: &MemberState| !m.fresh && matches!(m.probe, "failed" | "not_usable");
    let live_claimants: Vec<usize> = claimants
        .iter()
        .copied()
        .filter(|&i| !failing(&st.members[i]))
        .collect();
    let split = live_claimants.len() > 1 || (prev.split_brain && claimants.len() > 1);
    if split && !prev.split_brain {
        events.push(DbEventKind::SplitBrain {
            claimants: claimants
                .iter()
                .map(|&i| (st.members[i].address, tl(&st.members[i])))
                .collect(),
            winner: new_primary,
        });
    } else if !split && prev.split_brain {
        events.push(DbEventKind::SplitBrainEnded);
    }
    st.split_brain = split;

    // 3. Primary change.
    let primary_obs = winner.and_then(|i| st.members[i].last.clone());
    if new_primary != prev.primary {
        if let Some(p) = prev.primary {
            let reason = match st.members.iter().find(|m| m.address == p) {
                None => "removed from the cluster".to_string(),
                Some(m) if !m.up() => format!("down: {}", m.detail),
                Some(m) if foreign(m, sysid) => "reports another system identifier".into(),
                Some(m) if m.last.as_ref().is_some_and(|o| !o.claims_primary()) => {
                    "no longer claims to be primary (in recovery, or Patroni says replica)".into()
                }
                Some(m) if new_primary.is_none() && split => format!(
                    "another member claims primary on the same timeline {}",
                    opt(tl(m))
                ),
                Some(_) => "a member with a higher timeline claims primary".into(),
            };
            if new_primary.is_none() {
                events.push(DbEventKind::PrimaryLost { member: p, reason });
            }
        }
        if let Some(n) = new_primary {
            let previous = prev.last_primary.filter(|l| l.address != n);
            let lost = previous.and_then(|l| {
                let new_lsn = primary_obs.as_ref().and_then(|o| o.current_lsn)?;
                Some(l.lsn?.saturating_sub(new_lsn))
            });
            if previous.is_some() {
                st.primary_changes += 1;
                st.lost_bytes_estimate = lost;
            }
            events.push(DbEventKind::PrimaryElected {
                member: n,
                timeline: primary_obs.as_ref().and_then(|o| o.timeline),
                previous: previous.map(|l| l.address),
                lost_bytes_estimate: lost,
            });
            st.primary_since = Some(now.wall);
        } else {
            st.primary_since = None;
        }
    }
    st.primary = new_primary;
    st.timeline = primary_obs.as_ref().and_then(|o| o.timeline);
    if let (Some(i), Some(o)) = (winner, &primary_obs) {
        if st.members[i].fresh || prev.last_primary.map(|l| l.address) != new_primary {
            st.last_primary = Some(LastPrimary {
                address: st.members[i].address,
                lsn: o.current_lsn,
                timeline: o.timeline,
            });
        }
    }
    if new_primary.is_some() {
        st.no_primary_since = None;
        st.promote_requested = false;
    } else if st.last_primary.is_some() && st.no_primary_since.is_none() {
        st.no_primary_since = Some(now.mono);
    }

    // 4. Roles.
    let primary_fresh = winner.is_some_and(|i| st.members[i].fresh);
    let primary_addr = new_primary;
    for i in 0..st.members.len() {
        let was = prev_role(st.members[i].address);
        let m = &st.members[i];
        let (role, why) = if Some(i) == winner {
            (MemberRole::Primary, "elected primary".to_string())
        } else if m.tracker.health() == Health::Down {
            (MemberRole::Down, format!("down: {}", m.detail))
        } else if let (true, Some(o), Some(s)) = (foreign(m, sysid), &m.last, sysid) {
            if was != MemberRole::Foreign {
                events.push(DbEventKind::ForeignSystemIdentifier {
                    member: m.address,
                    expected: s,
                    got: o.system_identifier,
                });
            }
            (
                MemberRole::Foreign,
                format!(
                    "system identifier {} is not the cluster's {s}",
                    o.system_identifier
                ),
            )
        } else if claimants.contains(&i) {
            let reason = match winner {
                Some(w) => format!(
                    "claims primary on timeline {} while {} holds it on timeline {}",
                    opt(tl(m)),
                    st.members[w].address,
                    opt(tl(&st.members[w]))
                ),
                None => format!(
                    "claims primary on timeline {}, tied with another claimant: fail closed",
                    opt(tl(m))
                ),
            };
            if was != MemberRole::Fenced {
                events.push(DbEventKind::Fenced {
                    member: m.address,
                    timeline: tl(m),
                    reason: reason.clone(),
                });
            }
            (MemberRole::Fenced, reason)
        } else if m.last.as_ref().is_some_and(|o| o.is_replica()) {
            (MemberRole::Replica, "replica".to_string())
        } else if m.up() && m.last.is_some() {
            // Claims primary but is not up long enough, or Patroni disagrees with PostgreSQL.
            (
                MemberRole::Unknown,
                "role unclear (PostgreSQL and Patroni disagree)".to_string(),
            )
        } else {
            (MemberRole::Unknown, "not decided yet".to_string())
        };
        let m = &mut st.members[i];
        if role != m.role || m.role_since.is_none() {
            m.role_since = Some(now.wall);
        }
        m.role = role;
        m.why = why;
        if let Some(a) = &m.alert {
            m.why = format!("{}; alert: {a}", m.why);
        }
    }

    // 5. Read eligibility.
    let member_ips: Vec<IpAddr> = cfg
        .members
        .iter()
        .map(|m| IpAddr::V4(*m.address.ip()))
        .collect();
    let p_lsn = if primary_fresh {
        primary_obs.as_ref().and_then(|o| o.current_lsn)
    } else {
        None
    };
    let p_tl = primary_obs.as_ref().and_then(|o| o.timeline);
    for m in &mut st.members {
        let was = m.read_eligible;
        let (eligible, reason): (bool, Option<String>) = match m.role {
            MemberRole::Replica => {
                let o = m.last.clone().unwrap_or_default();
                match (primary_addr, p_lsn, m.fresh) {
                    (Some(p), Some(plsn), true) => {
                        let upstream_ok = match &o.upstream {
                            Some((host, port)) => match host.parse::<IpAddr>() {
                                Ok(ip) if member_ips.contains(&ip) => {
                                    ip == IpAddr::V4(*p.ip()) && *port == p.port()
                                }
                                _ => true, // not a member address: judged by the timeline
                            },
                            None => true,
                        };
                        let tl_ok = match (o.timeline, p_tl) {
                            (Some(a), Some(b)) => a == b,
                            _ => true,
                        };
                        if !o.streaming || !upstream_ok || !tl_ok {
                            m.lag = None;
                            (false, Some(format!("not streaming from the primary {p}")))
                        } else if let Some(replay) = o.replay_lsn {
                            let lag = plsn.saturating_sub(replay);
                            m.lag = Some(lag);
                            let limit = if was {
                                cfg.max_lag_bytes
                            } else {
                                cfg.max_lag_bytes / 2
                            };
                            if lag < limit {
                                (true, None)
                            } else if was {
                                (
                                    false,
                                    Some(format!(
                                        "lag {lag} bytes >= max_lag_bytes {}",
                                        cfg.max_lag_bytes
                                    )),
                                )
                            } else {
                                (
                                    false,
                                    Some(format!(
                                        "lag {lag} bytes; re-enters below {} (half of max_lag_bytes)",
                                        cfg.max_lag_bytes / 2
                                    )),
                                )
                            }
                        } else {
                            (false, Some("no replay LSN".into()))
                        }
                    }
                    // Not comparable this round: keep eligibility as it was.
                    (None, _, _) => (was, (!was).then(|| "no primary to compare with".into())),
                    _ => (was, (!was).then(|| "lag not measurable this round".into())),
                }
            }
            MemberRole::Unknown => (false, Some("role not decided".into())),
            MemberRole::Primary => (false, None),
            other => (false, Some(other.name().to_string())),
        };
        if eligible && !was {
            events.push(DbEventKind::ReplicaIn {
                member: m.address,
                lag: m.lag,
            });
        } else if !eligible && was {
            events.push(DbEventKind::ReplicaOut {
                member: m.address,
                reason: reason.clone().unwrap_or_else(|| m.role.name().into()),
            });
        }
        m.read_eligible = eligible;
        if m.role == MemberRole::Replica {
            m.why = match (&reason, eligible) {
                (_, true) => format!("replica serving reads (lag {} bytes)", opt(m.lag)),
                (Some(r), false) => format!("replica out of reads: {r}"),
                (None, false) => "replica out of reads".into(),
            };
            if let Some(a) = &m.alert {
                m.why = format!("{}; alert: {a}", m.why);
            }
        }
    }
    let fallback = !st.members.iter().any(|m| m.read_eligible);
    if fallback != prev.read_fallback {
        events.push(DbEventKind::ReadFallback { active: fallback });
    }
    st.read_fallback = fallback;

    // 6. Promote hook.
    let mut promote = None;
    if let (Some(pr), Some(since)) = (&cfg.promote, st.no_primary_since) {
        if !cfg.has_ha_manager()
            && !st.promote_requested
            && now.mono.saturating_sub(since) >= pr.after
        {
            let best = st
                .members
                .iter()
                .filter(|m| m.role == MemberRole::Replica && m.up())
                .max_by_key(|m| m.last.as_ref().and_then(|o| o.replay_lsn).unwrap_or(0));
            if let Some(m) = best {
                promote = Some(m.address);
                st.promote_requested = true;
                events.push(DbEventKind::PromoteHook {
                    member: m.address,
                    replay_lsn: m.last.as_ref().and_then(|o| o.replay_lsn),
                });
            }
        }
    }
    Decision {
        state: st,
        events,
        promote,
    }
}

/// What `member` may do in a write service (`role: primary`) of a cluster in `state`: the
/// primary serves; a member whose role is known and is not primary is reset (no write may
/// reach it, and flows it had as a primary end at once); an undecided member is held (out of
/// the table, flows kept), so a restarted lbd keeps the sessions of a primary it has not
/// re-checked yet.
pub fn write_gate(state: &ClusterState, member: SocketAddrV4) -> DbGate {
    match state.member(member).map(|m| m.role) {
        Some(MemberRole::Primary) if state.primary == Some(member) => DbGate::Serve,
        None | Some(MemberRole::Unknown) => DbGate::Hold,
        Some(_) => DbGate::Reset,
    }
}

/// What `member` may do in a read service (`role: replica`) with `fallback`: eligible
/// replicas serve; the primary serves only in read fallback with `fallback: primary`, and is
/// otherwise held (its read flows stay); a lagging or not-streaming replica is held; a down,
/// fenced or foreign member is reset.
pub fn read_gate(state: &ClusterState, member: SocketAddrV4, fallback: ReadFallback) -> DbGate {
    let Some(m) = state.member(member) else {
        return DbGate::Hold;
    };
    match m.role {
        MemberRole::Replica if m.read_eligible => DbGate::Serve,
        MemberRole::Primary if state.read_fallback && fallback == ReadFallback::Primary => {
            DbGate::Serve
        }
        MemberRole::Primary | MemberRole::Replica | MemberRole::Unknown => DbGate::Hold,
        MemberRole::Down | MemberRole::Fenced | MemberRole::Foreign => DbGate::Reset,
    }
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
