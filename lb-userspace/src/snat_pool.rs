//! SNAT port pools per backend endpoint: how full each one is, and when lbd warns.
//!
//! lb is full NAT: every flow to a backend endpoint (address:port) holds one (SNAT address,
//! SNAT port) pair, reserved by the flow's reply entry. An endpoint's pool is
//! `snat.addresses x (port_max - port_min + 1)` ports, shared by every full-NAT service that
//! has the endpoint. The data plane picks a new flow's SNAT address by hash and searches
//! [`lb_common::SNAT_PORT_ATTEMPTS`] consecutive ports on that address only, so a pool runs
//! dry address by address, and new flows start to be dropped (`drop_snat_exhausted`) before
//! the busiest address is full: with a fraction `f` of its ports taken at random, a new flow
//! hashed to it would find none of its 16 candidates free with probability `f^16` (3% at 80%,
//! 18.5% at 90%); taken ports come in runs (one client's consecutive source ports take
//! consecutive SNAT ports), which makes it worse. Hence a warning at 80%.
//!
//! The conntrack sweep counts the ports in use ([`crate::dataplane::ConntrackSweep`]); the
//! controller keeps a [`SnatPool`] per backend; `lbctl stats` and the metrics show it; the
//! controller logs a warning when an endpoint's busiest address crosses [`WARN_PERCENT`] and
//! a notice when it falls back below [`CLEAR_PERCENT`] ([`Alarm`]).

use crate::config::SnatConfig;
use crate::dataplane::SnatPortCount;
use std::net::SocketAddrV4;

/// Use of the busiest SNAT address of an endpoint (percent of its ports) at which lbd warns.
pub const WARN_PERCENT: u64 = 80;
/// Use below which a warned endpoint is back to normal (hysteresis: a pool hovering around
/// [`WARN_PERCENT`] warns once, not at every sweep).
pub const CLEAR_PERCENT: u64 = 70;

/// A backend endpoint's SNAT pool at the last conntrack sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnatPool {
    /// Ports held over every SNAT address.
    pub in_use: u64,
    /// Ports held on the SNAT address that holds the most.
    pub busiest_address: u64,
    /// SNAT addresses configured.
    pub addresses: u64,
    /// Ports per SNAT address (`port_max - port_min + 1`).
    pub ports_per_address: u64,
}

impl SnatPool {
    /// The pool of an endpoint holding `count` under the SNAT settings `snat`.
    pub fn new(count: SnatPortCount, snat: &SnatConfig) -> Self {
        SnatPool {
            in_use: count.in_use,
            busiest_address: count.busiest_address,
            addresses: snat.addresses.len() as u64,
            ports_per_address: u64::from(snat.port_max.saturating_sub(snat.port_min)) + 1,
        }
    }

    /// Ports in the pool: addresses x ports per address.
    pub fn total(&self) -> u64 {
        self.addresses * self.ports_per_address
    }

    /// Whether the busiest address has at least `percent` of its ports in use.
    fn busiest_at_least(&self, percent: u64) -> bool {
        self.busiest_address * 100 >= percent * self.ports_per_address
    }
}

/// A crossing of the warning thresholds by one endpoint's pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crossing {
    /// The busiest address reached [`WARN_PERCENT`].
    Warn,
    /// A warned pool's busiest address fell below [`CLEAR_PERCENT`].
    Clear,
}

/// The warning state of one endpoint's pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Alarm {
    /// True from a [`Crossing::Warn`] to the next [`Crossing::Clear`].
    pub raised: bool,
}

impl Alarm {
    /// Takes the pool seen at a sweep; returns the crossing it makes, if any.
    pub fn observe(&mut self, pool: &SnatPool) -> Option<Crossing> {
        if !self.raised && pool.busiest_at_least(WARN_PERCENT) {
            self.raised = true;
            Some(Crossing::Warn)
        } else if self.raised && !pool.busiest_at_least(CLEAR_PERCENT) {
            self.raised = false;
            Some(Crossing::Clear)
        } else {
            None
        }
    }
}

/// `part` of `whole` in percent, one decimal (0 for an empty whole).
pub fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        return 0.0;
    }
    (part as f64 * 1000.0 / whole as f64).round() / 10.0
}

/// The warning lbd logs at [`Crossing::Warn`]: the numbers and the fix.
pub fn warning(endpoint: SocketAddrV4, pool: &SnatPool) -> String {
    format!(
        "SNAT ports to backend {endpoint} are running out: {} of {} in use ({}%), {} of {} ({}%) on the busiest SNAT address; new flows to it are dropped (drop_snat_exhausted) as the busiest address fills. Add addresses to snat.addresses (now {}) or widen snat.port_min..port_max ({} ports per address)",
        pool.in_use,
        pool.total(),
        percent(pool.in_use, pool.total()),
        pool.busiest_address,
        pool.ports_per_address,
        percent(pool.busiest_address, pool.ports_per_address),
        pool.addresses,
        pool.ports_per_address,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(in_use: u64, busiest: u64) -> SnatPool {
        SnatPool {
            in_use,
            busiest_address: busiest,
            addresses: 2,
            ports_per_address: 100,
        }
    }

    #[test]
    fn pool_size_is_addresses_times_ports() {
        let snat = SnatConfig {
            addresses: vec!["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()],
            port_min: 1024,
            port_max: 2047,
        };
        let p = SnatPool::new(
            SnatPortCount {
                in_use: 10,
                busiest_address: 7,
            },
            &snat,
        );
        assert_eq!(
            (p.total(), p.ports_per_address, p.addresses),
            (2048, 1024, 2)
        );
        assert_eq!((p.in_use, p.busiest_address), (10, 7));
    }

    #[test]
    fn alarm_warns_once_per_crossing_with_hysteresis() {
        let mut a = Alarm::default();
        // 79 ports on the busiest address: below 80%.
        assert_eq!(a.observe(&pool(150, 79)), None);
        // The busiest address decides, not the average (80 of 100 on one, 140 of 200 overall).
        assert_eq!(a.observe(&pool(140, 80)), Some(Crossing::Warn));
        assert!(a.raised);
        // Staying high, or dipping between the two thresholds, says nothing more.
        assert_eq!(a.observe(&pool(190, 95)), None);
        assert_eq!(a.observe(&pool(140, 79)), None);
        assert_eq!(a.observe(&pool(140, 70)), None);
        assert_eq!(a.observe(&pool(150, 85)), None);
        // Below 70%: cleared once.
        assert_eq!(a.observe(&pool(120, 69)), Some(Crossing::Clear));
        assert_eq!(a.observe(&pool(0, 0)), None);
        // A new crossing warns again.
        assert_eq!(a.observe(&pool(160, 80)), Some(Crossing::Warn));
    }

    #[test]
    fn warning_names_backend_numbers_and_fix() {
        let w = warning("10.1.0.5:8080".parse().unwrap(), &pool(165, 85));
        for part in [
            "10.1.0.5:8080",
            "165 of 200 in use (82.5%)",
            "85 of 100 (85%) on the busiest SNAT address",
            "snat.addresses (now 2)",
            "snat.port_min..port_max (100 ports per address)",
        ] {
            assert!(w.contains(part), "{part:?} missing from {w}");
        }
    }

    #[test]
    fn percent_has_one_decimal_and_survives_an_empty_pool() {
        assert_eq!(percent(1, 3), 33.3);
        assert_eq!(percent(2, 3), 66.7);
        assert_eq!(percent(5, 0), 0.0);
    }
}
