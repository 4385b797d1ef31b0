//! The flow hash: picks the Maglev slot and the first SNAT port candidate of a new flow.
//!
//! Both sides use it: the data plane per new flow, user space in tests and in `lbctl` to
//! predict which backend a given 5-tuple lands on. It is MurmurHash3's 32-bit mixing over the
//! addresses and ports in their `_be` representation, so it needs no byte swapping per packet.

#[inline(always)]
fn mix(h: u32, k: u32) -> u32 {
    let k = k
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn fmix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Hash of a TCP 4-tuple (addresses and ports as they appear in the packet).
#[inline(always)]
pub fn flow_hash(
    src_addr_be: u32,
    dst_addr_be: u32,
    src_port_be: u16,
    dst_port_be: u16,
    seed: u32,
) -> u32 {
    let ports = ((src_port_be as u32) << 16) | dst_port_be as u32;
    let mut h = seed;
    h = mix(h, src_addr_be);
    h = mix(h, dst_addr_be);
    h = mix(h, ports);
    fmix(h ^ 12)
}

/// Seed perturbation for the SNAT hash, so SNAT port choice is independent of the backend
/// choice.
pub const SNAT_SEED_XOR: u32 = 0x9e37_79b9;

/// Where a flow's SNAT port search starts: a per-client-address offset plus the client's
/// port. For one client address, distinct client ports start at distinct SNAT ports (within
/// the range's span), so a SNAT port is taken over by another of that client's connections
/// only when the client itself reuses its port, which its own TIME_WAIT discipline governs.
/// A hash of the whole 4-tuple would instead hand a just-closed SNAT port to an unrelated
/// connection, whose SYN then meets the backend's TIME_WAIT socket of the old one (with a
/// different timestamp clock: PAWS drops it and the client retransmits).
#[inline(always)]
pub fn snat_port_base(src_addr_be: u32, src_port_be: u16, seed: u32) -> u32 {
    flow_hash(src_addr_be, 0, 0, 0, seed).wrapping_add(u16::from_be(src_port_be) as u32)
}

/// The `attempt`-th SNAT port candidate (host order) for a flow whose search base is `h`
/// ([`snat_port_base`]),
/// within the inclusive range `[min, max]`. Returns `min` when the range is empty or inverted.
#[inline(always)]
pub fn snat_port_candidate(h: u32, attempt: u32, min: u16, max: u16) -> u16 {
    if max <= min {
        return min;
    }
    let span = (max - min) as u32 + 1;
    min + (h.wrapping_add(attempt) % span) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_depends_on_every_field() {
        let base = flow_hash(1, 2, 3, 4, 5);
        assert_ne!(base, flow_hash(9, 2, 3, 4, 5));
        assert_ne!(base, flow_hash(1, 9, 3, 4, 5));
        assert_ne!(base, flow_hash(1, 2, 9, 4, 5));
        assert_ne!(base, flow_hash(1, 2, 3, 9, 5));
        assert_ne!(base, flow_hash(1, 2, 3, 4, 9));
        // Swapping the ports must not collide (direction matters).
        assert_ne!(flow_hash(1, 2, 3, 4, 5), flow_hash(1, 2, 4, 3, 5));
    }

    #[test]
    fn hash_spreads_source_ports_evenly() {
        // 65537 buckets mod 3: each residue should get about a third of 30000 source ports.
        let mut counts = [0u32; 3];
        for port in 20000u16..50000 {
            let h = flow_hash(0x0a00_0001, 0xc000_020a, port.to_be(), 80u16.to_be(), 7);
            counts[((h % 65537) % 3) as usize] += 1;
        }
        for c in counts {
            assert!((9500..10500).contains(&c), "uneven spread: {counts:?}");
        }
    }

    #[test]
    fn one_client_distinct_ports_start_at_distinct_snat_ports() {
        let mut seen = std::collections::HashSet::new();
        for port in 32768u16..60999 {
            let base = snat_port_base(0x0a00_0002, port.to_be(), 7);
            assert!(
                seen.insert(snat_port_candidate(base, 0, 1024, 32767)),
                "port {port}"
            );
        }
        // The same client port always starts at the same SNAT port.
        assert_eq!(
            snat_port_base(0x0a00_0002, 40000u16.to_be(), 7),
            snat_port_base(0x0a00_0002, 40000u16.to_be(), 7)
        );
    }

    #[test]
    fn snat_candidates_stay_in_range_and_walk() {
        for attempt in 0..100 {
            let p = snat_port_candidate(u32::MAX - 3, attempt, 1000, 1009);
            assert!((1000..=1009).contains(&p));
        }
        assert_ne!(
            snat_port_candidate(5, 0, 1000, 1009),
            snat_port_candidate(5, 1, 1000, 1009)
        );
        assert_eq!(snat_port_candidate(5, 0, 1000, 1000), 1000);
        assert_eq!(snat_port_candidate(5, 0, 1000, 999), 1000);
        assert_eq!(snat_port_candidate(0, 0, 0, u16::MAX), 0);
        assert_eq!(snat_port_candidate(65535, 0, 0, u16::MAX), 65535);
    }
}
