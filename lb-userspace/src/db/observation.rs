//! What one check of one cluster member found: the input of [`super::decide`]. The check
//! layer (PostgreSQL and Patroni checks) produces a [`MemberProbe`] per member per round; the
//! shapes below are the contract between the two (see docs/database.md).
//!
//! LSNs are `u64` (PostgreSQL's `X/Y` is `X << 32 | Y`, see [`parse_lsn`]).

pub use crate::health::role::{MemberObservation, MemberProbe};

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

pub use crate::health::postgres::parse_lsn;

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
