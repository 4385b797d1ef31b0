//! Metrics of the key filter in front of `LB_CONNTRACK` (`lb_common::ct_filter`), from the
//! [`StatsSnapshot::conntrack_filter`] of the last conntrack sweep. The families are always
//! described; their samples appear once a sweep has reported the filter.

use crate::api::proto::StatsSnapshot;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

const ENABLED_HELP: &str = "1 while the data plane reads the conntrack key filter (a clear bit lets a new flow skip two conntrack lookups), 0 when it is off: every new flow makes both lookups (the filter could not be mapped, or lbd re-adopted a conntrack map the filter had not seen: see lbd's log).";
const FILL_HELP: &str = "Fraction of the conntrack key filter's bits set in the generation lookups read, at the last conntrack sweep (0 while off): about that fraction of new flows makes the conntrack lookups the filter exists to skip. About 0.12 with a full, well-sized conntrack map; above about 0.3 limits.conntrack_flows is too small for the rate of new flows (LRU evictions leave their bits until the next rebuild) or the rebuild is not running (lb_conntrack_filter_rebuilds_total flat, conntrack sweeps failing).";
const REBUILDS_HELP: &str = "Rebuilds of the conntrack key filter since lbd started (one every second conntrack sweep: a clear of the unused generation, then a fill from the sweep's scan and a switch to it); flat while enabled means stale bits pile up.";

/// Encodes the three families of the filter (unlabelled) from `snap`.
pub(super) fn encode(
    snap: &StatsSnapshot,
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let f = snap.conntrack_filter;
    let family = encoder.encode_descriptor(
        "lb_conntrack_filter_enabled",
        ENABLED_HELP,
        None,
        MetricType::Gauge,
    )?;
    if let Some(f) = f {
        ConstGauge::new(i64::from(f.enabled)).encode(family)?;
    }
    let family = encoder.encode_descriptor(
        "lb_conntrack_filter_fill_ratio",
        FILL_HELP,
        None,
        MetricType::Gauge,
    )?;
    if let Some(f) = f {
        ConstGauge::new(f.fill_ratio()).encode(family)?;
    }
    let family = encoder.encode_descriptor(
        "lb_conntrack_filter_rebuilds",
        REBUILDS_HELP,
        None,
        MetricType::Counter,
    )?;
    if let Some(f) = f {
        ConstCounter::new(f.rebuilds).encode(family)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::api::proto::StatsSnapshot;
    use crate::dataplane::CtFilterStatus;

    fn snap(filter: Option<CtFilterStatus>) -> StatsSnapshot {
        StatsSnapshot {
            timestamp_ms: 0,
            services: vec![],
            counters: Default::default(),
            conntrack_filter: filter,
        }
    }

    #[test]
    fn filter_families_carry_the_last_sweep() {
        let text = super::super::render(&snap(Some(CtFilterStatus {
            enabled: true,
            bits_set: 1024,
            bits_total: 4096,
            rebuilds: 7,
        })));
        for line in [
            "# TYPE lb_conntrack_filter_enabled gauge\n",
            "\nlb_conntrack_filter_enabled 1\n",
            "# TYPE lb_conntrack_filter_fill_ratio gauge\n",
            "\nlb_conntrack_filter_fill_ratio 0.25\n",
            "# TYPE lb_conntrack_filter_rebuilds_total counter\n",
            "\nlb_conntrack_filter_rebuilds_total 7\n",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
        let off = super::super::render(&snap(Some(CtFilterStatus::default())));
        assert!(off.contains("\nlb_conntrack_filter_enabled 0\n"), "{off}");
        assert!(
            off.contains("\nlb_conntrack_filter_fill_ratio 0.0\n"),
            "{off}"
        );
        // Before the first sweep: described, no sample.
        let none = super::super::render(&snap(None));
        assert!(
            none.contains("# HELP lb_conntrack_filter_fill_ratio "),
            "{none}"
        );
        assert!(
            !none.contains("\nlb_conntrack_filter_fill_ratio "),
            "{none}"
        );
    }
}
