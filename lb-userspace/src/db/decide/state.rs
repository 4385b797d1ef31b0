//! The state [`super::decide`] carries from one round to the next: the cluster's
//! ([`ClusterState`]) and each member's ([`MemberState`], [`MemberRole`]), and the round's clock
//! ([`Now`]).

use crate::db::observation::MemberObservation;
use crate::model::{Health, HealthTracker};
use std::net::SocketAddrV4;
use std::time::{Duration, SystemTime};

/// The clock of a round: monotonic time for durations, wall time for event stamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time since an arbitrary origin.
    pub mono: Duration,
    /// Wall-clock time.
    pub wall: SystemTime,
}

/// A member's role as lb sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MemberRole {
    /// Not decided yet (never observed, or only alerts so far).
    Unknown,
    /// The elected primary: the write service's backend.
    Primary,
    /// A replica (in recovery).
    Replica,
    /// Claims to be primary but lost the election: kept out of every service.
    Fenced,
    /// Failed `fall` checks in a row.
    Down,
    /// Reports another system identifier than the cluster's: never used.
    Foreign,
}

impl MemberRole {
    /// Every role, for metrics.
    pub const ALL: [MemberRole; 6] = [
        MemberRole::Unknown,
        MemberRole::Primary,
        MemberRole::Replica,
        MemberRole::Fenced,
        MemberRole::Down,
        MemberRole::Foreign,
    ];

    /// Lowercase name (logs, JSON, metrics).
    pub fn name(self) -> &'static str {
        match self {
            MemberRole::Unknown => "unknown",
            MemberRole::Primary => "primary",
            MemberRole::Replica => "replica",
            MemberRole::Fenced => "fenced",
            MemberRole::Down => "down",
            MemberRole::Foreign => "foreign",
        }
    }
}

/// One member's state after a round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberState {
    /// Its address (the backend address in the cluster's services).
    pub address: SocketAddrV4,
    /// Rise/fall state machine of its checks.
    pub tracker: HealthTracker,
    /// The last observation (from any round).
    pub last: Option<MemberObservation>,
    /// Whether `last` is from this round.
    pub fresh: bool,
    /// Kind of this round's probe (`observed`, `failed`, ...).
    pub probe: &'static str,
    /// Detail of the last probe that was not `Observed`.
    pub detail: String,
    /// Role after the round.
    pub role: MemberRole,
    /// When the role last changed.
    pub role_since: Option<SystemTime>,
    /// Eligible for reads.
    pub read_eligible: bool,
    /// Lag behind the primary when last computed (bytes).
    pub lag: Option<u64>,
    /// An alert of the check that changes nothing (auth failure), while it lasts.
    pub alert: Option<String>,
    /// Why the member has its role and read eligibility (one line for `lbctl db status`).
    pub why: String,
}

impl MemberState {
    pub(super) fn new(address: SocketAddrV4) -> Self {
        Self {
            address,
            tracker: HealthTracker::new(Health::Unknown),
            last: None,
            fresh: false,
            probe: "none",
            detail: String::new(),
            role: MemberRole::Unknown,
            role_since: None,
            read_eligible: false,
            lag: None,
            alert: None,
            why: "not checked yet".into(),
        }
    }

    /// The member's latest LSN: `current_lsn` of a primary, else `replay_lsn`.
    pub fn lsn(&self) -> Option<u64> {
        let o = self.last.as_ref()?;
        o.current_lsn.or(o.replay_lsn)
    }

    pub(super) fn up(&self) -> bool {
        self.tracker.health() == Health::Up
    }
}

/// The previous primary as last seen, for the lost-bytes estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastPrimary {
    /// Its address.
    pub address: SocketAddrV4,
    /// Its last observed `current_lsn`.
    pub lsn: Option<u64>,
    /// Its timeline.
    pub timeline: Option<u32>,
}

/// A cluster's state between rounds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterState {
    /// Rounds decided so far.
    pub rounds: u64,
    /// The elected primary.
    pub primary: Option<SocketAddrV4>,
    /// When it was elected.
    pub primary_since: Option<SystemTime>,
    /// Its timeline.
    pub timeline: Option<u32>,
    /// The cluster's system identifier (configured or learned).
    pub system_identifier: Option<u64>,
    /// The last primary seen (stays after it is lost).
    pub last_primary: Option<LastPrimary>,
    /// Since when (monotonic) there has been no primary, once one existed.
    pub no_primary_since: Option<Duration>,
    /// The promote hook already ran in this outage.
    pub promote_requested: bool,
    /// More than one member claims to be primary.
    pub split_brain: bool,
    /// No replica is eligible for reads.
    pub read_fallback: bool,
    /// Primary changes (from one member to another) so far.
    pub primary_changes: u64,
    /// Estimated bytes lost at the last primary change.
    pub lost_bytes_estimate: Option<u64>,
    /// Members in configuration order.
    pub members: Vec<MemberState>,
}

impl ClusterState {
    /// The member with `address`.
    pub fn member(&self, address: SocketAddrV4) -> Option<&MemberState> {
        self.members.iter().find(|m| m.address == address)
    }
}
