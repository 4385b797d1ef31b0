//! What [`super::decide`] reports happened in a round ([`DbEventKind`]) and its text.

use std::net::SocketAddrV4;

/// What happened in a round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbEventKind {
    /// A member became primary. `previous` is the last primary when it was another member;
    /// `lost_bytes_estimate` = its last seen LSN minus the new primary's LSN now.
    PrimaryElected {
        member: SocketAddrV4,
        timeline: Option<u32>,
        previous: Option<SocketAddrV4>,
        lost_bytes_estimate: Option<u64>,
    },
    /// The primary lost its role; the write service has no backend until one is elected.
    PrimaryLost {
        member: SocketAddrV4,
        reason: String,
    },
    /// More than one member claims to be primary.
    SplitBrain {
        claimants: Vec<(SocketAddrV4, Option<u32>)>,
        winner: Option<SocketAddrV4>,
    },
    /// Only one claimant is left.
    SplitBrainEnded,
    /// A claimant lost the election and is kept out of every service.
    Fenced {
        member: SocketAddrV4,
        timeline: Option<u32>,
        reason: String,
    },
    /// A member reports another system identifier than the cluster's.
    ForeignSystemIdentifier {
        member: SocketAddrV4,
        expected: u64,
        got: u64,
    },
    /// A member failed `fall` checks in a row.
    MemberDown {
        member: SocketAddrV4,
        reason: String,
    },
    /// A down member passed `rise` checks in a row.
    MemberUp { member: SocketAddrV4 },
    /// A replica became eligible for reads.
    ReplicaIn {
        member: SocketAddrV4,
        lag: Option<u64>,
    },
    /// A replica stopped being eligible for reads.
    ReplicaOut {
        member: SocketAddrV4,
        reason: String,
    },
    /// No replica is eligible (`true`), or one is again (`false`).
    ReadFallback { active: bool },
    /// A check alert (bad password...) that changes no role.
    CheckAlert {
        member: SocketAddrV4,
        message: String,
    },
    /// The promote hook must run for `member`.
    PromoteHook {
        member: SocketAddrV4,
        replay_lsn: Option<u64>,
    },
}

impl DbEventKind {
    /// Short name (`lbctl db events`, logs).
    pub fn name(&self) -> &'static str {
        match self {
            DbEventKind::PrimaryElected { .. } => "primary_elected",
            DbEventKind::PrimaryLost { .. } => "primary_lost",
            DbEventKind::SplitBrain { .. } => "split_brain",
            DbEventKind::SplitBrainEnded => "split_brain_ended",
            DbEventKind::Fenced { .. } => "fenced",
            DbEventKind::ForeignSystemIdentifier { .. } => "foreign_system_identifier",
            DbEventKind::MemberDown { .. } => "member_down",
            DbEventKind::MemberUp { .. } => "member_up",
            DbEventKind::ReplicaIn { .. } => "replica_in",
            DbEventKind::ReplicaOut { .. } => "replica_out",
            DbEventKind::ReadFallback { .. } => "read_fallback",
            DbEventKind::CheckAlert { .. } => "check_alert",
            DbEventKind::PromoteHook { .. } => "promote_hook",
        }
    }

    /// The member concerned, if one.
    pub fn member(&self) -> Option<SocketAddrV4> {
        match self {
            DbEventKind::PrimaryElected { member, .. }
            | DbEventKind::PrimaryLost { member, .. }
            | DbEventKind::Fenced { member, .. }
            | DbEventKind::ForeignSystemIdentifier { member, .. }
            | DbEventKind::MemberDown { member, .. }
            | DbEventKind::MemberUp { member }
            | DbEventKind::ReplicaIn { member, .. }
            | DbEventKind::ReplicaOut { member, .. }
            | DbEventKind::CheckAlert { member, .. }
            | DbEventKind::PromoteHook { member, .. } => Some(*member),
            DbEventKind::SplitBrain { .. }
            | DbEventKind::SplitBrainEnded
            | DbEventKind::ReadFallback { .. } => None,
        }
    }

    /// Whether operators must look at it (logged at warn level).
    pub fn is_warning(&self) -> bool {
        !matches!(
            self,
            DbEventKind::MemberUp { .. }
                | DbEventKind::ReplicaIn { .. }
                | DbEventKind::SplitBrainEnded
                | DbEventKind::ReadFallback { active: false }
        )
    }
}

/// `v`, or "unknown".
pub(super) fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "unknown".into(), |v| v.to_string())
}

impl std::fmt::Display for DbEventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DbEventKind::PrimaryElected {
                member,
                timeline,
                previous,
                lost_bytes_estimate,
            } => {
                write!(f, "{member} is the primary (timeline {})", opt(*timeline))?;
                if let Some(p) = previous {
                    write!(
                        f,
                        "; previous primary {p}; estimated bytes the new primary never received: {}",
                        opt(*lost_bytes_estimate)
                    )?;
                }
                Ok(())
            }
            DbEventKind::PrimaryLost { member, reason } => write!(
                f,
                "{member} is no longer the primary ({reason}); the write service has no backend"
            ),
            DbEventKind::SplitBrain { claimants, winner } => {
                let list: Vec<String> = claimants
                    .iter()
                    .map(|(a, t)| format!("{a} (timeline {})", opt(*t)))
                    .collect();
                write!(f, "{} members claim to be primary: {}; ", list.len(), list.join(", "))?;
                match winner {
                    Some(w) => write!(f, "{w} keeps the write service, the others are fenced"),
                    None => write!(f, "no unique highest timeline: writes fail closed"),
                }
            }
            DbEventKind::SplitBrainEnded => write!(f, "only one member claims to be primary again"),
            DbEventKind::Fenced {
                member,
                timeline,
                reason,
            } => write!(
                f,
                "{member} (timeline {}) is fenced: {reason}; its flows are reset",
                opt(*timeline)
            ),
            DbEventKind::ForeignSystemIdentifier {
                member,
                expected,
                got,
            } => write!(
                f,
                "{member} reports system identifier {got}, the cluster's is {expected}: never used"
            ),
            DbEventKind::MemberDown { member, reason } => write!(f, "{member} is down: {reason}"),
            DbEventKind::MemberUp { member } => write!(f, "{member} is up"),
            DbEventKind::ReplicaIn { member, lag } => {
                write!(f, "{member} serves reads (lag {} bytes)", opt(*lag))
            }
            DbEventKind::ReplicaOut { member, reason } => {
                write!(f, "{member} no longer serves reads: {reason}")
            }
            DbEventKind::ReadFallback { active: true } => {
                write!(f, "no replica is eligible for reads: read services fall back")
            }
            DbEventKind::ReadFallback { active: false } => {
                write!(f, "a replica is eligible for reads again: read fallback ended")
            }
            DbEventKind::CheckAlert { member, message } => {
                write!(f, "{member}: check alert (role unchanged): {message}")
            }
            DbEventKind::PromoteHook { member, replay_lsn } => write!(
                f,
                "no primary for promote.after: running the promote hook for {member} (replay LSN {})",
                replay_lsn.map_or_else(|| "unknown".into(), crate::db::observation::format_lsn)
            ),
        }
    }
}
