//! What one check of one cluster member found: the input of [`super::decide`]. The check
//! layer (PostgreSQL and Patroni checks) produces a [`MemberProbe`] per member per round; the
//! shapes below are the contract between the two (see docs/database.md).
//!
//! LSNs are `u64` (PostgreSQL's `X/Y` is `X << 32 | Y`, see [`parse_lsn`]).

/// The outcome of one member's check in one round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberProbe {
    /// The query ran.
    Observed(MemberObservation),
    /// refused / timeout / connection reset: a failed check (counts toward fall).
    Failed(String),
    /// Bad password / auth failure: alert, role unchanged, not a failure.
    AuthFailed(String),
    /// "too many connections" (SQLSTATE 53300): alive, role unchanged.
    Overloaded(String),
    /// Starting up / shutting down / in crash recovery (57P03 cannot_connect_now, 57P01..): not usable.
    NotUsable(String),
    /// Could not run locally (EMFILE...): neither success nor failure.
    NotRun(String),
}

/// What the check query returned.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MemberObservation {
    /// `pg_is_in_recovery()`.
    pub in_recovery: bool,
    /// `pg_current_wal_lsn()` (primary only).
    pub current_lsn: Option<u64>,
    /// `pg_last_wal_receive_lsn()`.
    pub receive_lsn: Option<u64>,
    /// `pg_last_wal_replay_lsn()`.
    pub replay_lsn: Option<u64>,
    /// Timeline (primary: of its current WAL file; replica: `received_tli`).
    pub timeline: Option<u32>,
    /// `pg_control_system().system_identifier`.
    pub system_identifier: u64,
    /// Replica: the WAL receiver's upstream host:port and whether it is streaming (pg_stat_wal_receiver).
    pub upstream: Option<(String, u16)>,
    /// Whether the WAL receiver is streaming.
    pub streaming: bool,
    /// Patroni's answer when the check includes it: Some(true) = /primary 200, Some(false) = /replica 200.
    pub patroni_primary: Option<bool>,
}

impl MemberObservation {
    /// The member says it is the primary: not in recovery and, when Patroni was asked, Patroni
    /// agrees.
    pub fn claims_primary(&self) -> bool {
        !self.in_recovery && self.patroni_primary != Some(false)
    }

    /// The member says it is a replica: in recovery and, when Patroni was asked, Patroni does
    /// not call it the primary.
    pub fn is_replica(&self) -> bool {
        self.in_recovery && self.patroni_primary != Some(true)
    }
}

impl MemberProbe {
    /// A short name of the outcome (logs, `lbctl db status`).
    pub fn kind(&self) -> &'static str {
        match self {
            MemberProbe::Observed(_) => "observed",
            MemberProbe::Failed(_) => "failed",
            MemberProbe::AuthFailed(_) => "auth_failed",
            MemberProbe::Overloaded(_) => "overloaded",
            MemberProbe::NotUsable(_) => "not_usable",
            MemberProbe::NotRun(_) => "not_run",
        }
    }
}

/// Parses PostgreSQL's `X/Y` LSN notation (hexadecimal halves) into `X << 32 | Y`.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    let hi = u32::from_str_radix(hi, 16).ok()?;
    let lo = u32::from_str_radix(lo, 16).ok()?;
    Some(u64::from(hi) << 32 | u64::from(lo))
}

/// Formats an LSN as PostgreSQL does (`X/Y`, uppercase hexadecimal).
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips() {
        assert_eq!(parse_lsn("0/3000148"), Some(0x0300_0148));
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse_lsn("nope"), None);
        assert_eq!(parse_lsn("1/xyz"), None);
    }

    #[test]
    fn patroni_overrides_the_claim() {
        let mut o = MemberObservation::default();
        assert!(o.claims_primary() && !o.is_replica());
        o.patroni_primary = Some(false);
        assert!(!o.claims_primary());
        o.in_recovery = true;
        assert!(o.is_replica());
        o.patroni_primary = Some(true);
        assert!(!o.is_replica() && !o.claims_primary());
    }
}
