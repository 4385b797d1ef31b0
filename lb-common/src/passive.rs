//! Passive failure detection and the backend selection walk that skips suspect backends.
//!
//! The data plane watches each new flow's handshake. A backend that answers a SYN with a RST
//! (its host is up, the service is not) or leaves a SYN unanswered until the client
//! retransmits it (host gone, link down, SYN dropped) is marked *suspect* in
//! [`crate::MAP_BACKEND_SUSPECT`] and reported to lbd through the [`crate::MAP_EVENTS`] ring
//! buffer ([`PassiveEvent`]). New flows skip suspect and down backends with a bounded walk
//! over the service's Maglev table ([`probe_slot`], [`select`]), so a suspect backend's share
//! spreads over the others without waiting for lbd to rebuild the table. Suspicion ends by
//! itself [`SUSPECT_HOLD_NS`] after it was raised unless lbd confirms it (by marking the
//! backend down) or clears it earlier (by writing a zero [`BackendSuspect`]).

/// A client SYN retransmitted on a flow still in SYN_SENT at least this long after the flow's
/// last packet means the backend never answered (silent failure). Linux's initial SYN RTO is
/// 1 s; 800 ms leaves room for timer slack while staying far above any LAN round trip, so a
/// duplicated SYN is not taken for a retransmission.
pub const SYN_RETRANSMIT_MIN_NS: u64 = 800_000_000;

/// How long a suspicion holds without lbd's confirmation. lbd confirms or clears it with an
/// immediate active check (well under this bound); if the event was lost, or lbd is not
/// running, the backend is back in the selection after this long.
pub const SUSPECT_HOLD_NS: u64 = 10_000_000_000;

/// Maglev slots probed for a new flow: the flow's own slot and up to this many minus one more.
pub const SELECT_PROBES: u32 = 8;

/// Consecutive Maglev slots [`select`] scans, from the one after the flow's own slot, for the
/// first two backends other than the own slot's, when none of the [`SELECT_PROBES`] probes
/// found a usable backend; the first usable of the two is taken. The probes alone leave a
/// flow of a suspect backend on it with probability `f^(SELECT_PROBES - 1)` (`f` = the
/// unusable share of the table): with one of 3 backends suspect, (1/3)^7 = 1 in 2187 of its
/// flows (found by the failover bench: a connection whose retransmitted SYN went back to the
/// dead backend). With one or two unusable backends the scan finds a usable one whenever the
/// window holds one: a Maglev table interleaves its backends' slots, so it misses only about
/// `f^SELECT_SCAN` of those flows ((1/3)^16, 2e-8; (2/3)^16, 1.5e-3). With three or more
/// unusable backends both candidates may be unusable and the flow falls back. The scan runs
/// only for the flows the probes failed, so it does not change how evenly the others spread.
/// Its cost: 16 slots and two candidates add about 67k instructions (11%) to what the
/// verifier processes for `lb_xdp` (586k before; 32 slots would add 94k).
pub const SELECT_SCAN: u32 = 16;

/// Reason of a suspicion or event: the backend answered a SYN with a RST.
pub const REASON_RST_TO_SYN: u32 = 1;
/// Reason of a suspicion or event: the client retransmitted a SYN the backend never answered.
pub const REASON_SYN_UNANSWERED: u32 = 2;

/// Human-readable reason (`lbctl`, the `reason` label of `lb_passive_detections_total`).
pub const fn reason_name(reason: u32) -> &'static str {
    match reason {
        REASON_RST_TO_SYN => "rst_to_syn",
        REASON_SYN_UNANSWERED => "syn_unanswered",
        _ => "unknown",
    }
}

/// Value of [`crate::MAP_BACKEND_SUSPECT`], indexed by backend id. All zero = not suspect.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendSuspect {
    /// `bpf_ktime_get_coarse_ns()` when the data plane raised the suspicion (0 = none).
    pub since_ns: u64,
    /// `REASON_*` of the detection that raised it.
    pub reason: u32,
    pub _pad: u32,
}

impl BackendSuspect {
    /// True when the suspicion is raised and younger than [`SUSPECT_HOLD_NS`] at `now_ns`.
    #[inline(always)]
    pub fn is_active(&self, now_ns: u64) -> bool {
        self.since_ns != 0 && now_ns.saturating_sub(self.since_ns) < SUSPECT_HOLD_NS
    }
}

/// Record of the [`crate::MAP_EVENTS`] ring buffer: one passive detection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassiveEvent {
    /// `bpf_ktime_get_coarse_ns()` of the detection.
    pub time_ns: u64,
    pub backend_id: u32,
    pub service_id: u32,
    /// `REASON_*`.
    pub reason: u32,
    pub _pad: u32,
}

/// Maglev slot (relative to the table's start) of probe `probe` for a flow of hash `h` in a
/// table of `table_size` slots: probe 0 is the flow's own slot `h % table_size`, each later
/// probe an independent rehash of the flow, so the flows of one suspect backend's slots land
/// on slots spread over the whole table and their share divides over the other backends in
/// proportion to theirs.
///
/// Not a stride walk (double hashing): a Maglev table is itself built from arithmetic
/// progressions modulo the table size (each backend claims `offset + j * skip`), so a
/// progression of probes whose stride is a small multiple of a backend's `skip` stays inside
/// that backend's slots; measured, 0.2% of a suspect backend's flows found no other backend in
/// 8 probes that way, against (1/5)^7 expected.
#[inline(always)]
pub fn probe_slot(h: u32, probe: u32, table_size: u32) -> u32 {
    if table_size == 0 {
        return 0;
    }
    if probe == 0 {
        return h % table_size;
    }
    // MurmurHash3's finaliser over the flow hash perturbed by the probe number.
    let mut x = h ^ probe.wrapping_mul(0x9e37_79b9);
    x ^= x >> 16;
    x = x.wrapping_mul(0x85eb_ca6b);
    x ^= x >> 13;
    x = x.wrapping_mul(0xc2b2_ae35);
    x ^= x >> 16;
    x % table_size
}

/// Slot (relative to the table's start) `i` places after slot `own` of a table of
/// `table_size` slots, wrapping around; 0 for an empty table.
#[inline(always)]
pub fn scan_slot(own: u32, i: u32, table_size: u32) -> u32 {
    if table_size == 0 {
        return 0;
    }
    own.wrapping_add(i) % table_size
}

/// Outcome of [`select`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Selection {
    /// The chosen backend id ([`crate::BACKEND_ID_NONE`] if the flow's own slot is empty).
    pub backend_id: u32,
    /// Probe that found it: 0 = the flow's own slot, 1 to `SELECT_PROBES - 1` the hashed
    /// probes, `SELECT_PROBES` the scan of the slots after the own one.
    pub probe: u32,
    /// True when no probe found a usable backend and the flow's own slot's backend was taken
    /// anyway (better a suspect backend than none).
    pub fallback: bool,
}

/// The backend of a new flow of hash `h`: the first usable backend among [`SELECT_PROBES`]
/// probes ([`probe_slot`]), then among the [`SELECT_SCAN`] slots after the flow's own slot,
/// where `slot_backend(slot)` reads a slot of the table and `usable(id)` says whether a
/// backend may take new flows; the own slot's backend, flagged `fallback`, when none is.
/// `None` only when `slot_backend` fails. The data plane and the host tests call this same
/// function.
#[inline(always)]
pub fn select(
    h: u32,
    table_size: u32,
    mut slot_backend: impl FnMut(u32) -> Option<u32>,
    mut usable: impl FnMut(u32) -> bool,
) -> Option<Selection> {
    let first = slot_backend(probe_slot(h, 0, table_size))?;
    if first == crate::BACKEND_ID_NONE || usable(first) {
        return Some(Selection {
            backend_id: first,
            probe: 0,
            fallback: false,
        });
    }
    let mut probe = 1;
    while probe < SELECT_PROBES {
        let id = slot_backend(probe_slot(h, probe, table_size))?;
        if id != crate::BACKEND_ID_NONE && id != first && usable(id) {
            return Some(Selection {
                backend_id: id,
                probe,
                fallback: false,
            });
        }
        probe += 1;
    }
    // The scan: the first two backends other than the own slot's in the slots after it, the
    // first usable of them taken. The loop only compares ids, and what follows it does not
    // depend on where the scan stopped, so the verifier checks `usable` once per candidate,
    // not once per scanned slot.
    let own = probe_slot(h, 0, table_size);
    let (mut other, mut second) = (crate::BACKEND_ID_NONE, crate::BACKEND_ID_NONE);
    let mut i = 1;
    while i <= SELECT_SCAN {
        let id = slot_backend(scan_slot(own, i, table_size))?;
        if id != crate::BACKEND_ID_NONE && id != first {
            if other == crate::BACKEND_ID_NONE {
                other = id;
            } else if id != other {
                second = id;
                break;
            }
        }
        i += 1;
    }
    for id in [other, second] {
        if id != crate::BACKEND_ID_NONE && usable(id) {
            return Some(Selection {
                backend_id: id,
                probe: SELECT_PROBES,
                fallback: false,
            });
        }
    }
    Some(Selection {
        backend_id: first,
        probe: 0,
        fallback: true,
    })
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: repr(C), Copy, explicit padding, no invalid bit patterns.
    unsafe impl aya::Pod for BackendSuspect {}
    unsafe impl aya::Pod for PassiveEvent {}
}

const _: () = {
    use core::mem::size_of;
    assert!(size_of::<BackendSuspect>() == 16);
    assert!(size_of::<PassiveEvent>() == 24);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_stay_in_the_table_and_start_at_the_flow_slot() {
        for size in [1u32, 2, 13, 251, 65537] {
            let mut repeats = 0;
            for h in 0..10_000u32 {
                let h = h.wrapping_mul(0x9e37_79b9);
                assert_eq!(probe_slot(h, 0, size), h % size);
                let slots: [u32; SELECT_PROBES as usize] =
                    core::array::from_fn(|p| probe_slot(h, p as u32, size));
                assert!(slots.iter().all(|&s| s < size));
                for i in 0..slots.len() {
                    repeats += slots[i + 1..].iter().filter(|&&s| s == slots[i]).count();
                }
            }
            if size == 65537 {
                // Independent rehashes: a repeated slot among 8 probes is rare (28 pairs of
                // 1/65537 each).
                assert!(repeats < 20, "{repeats} repeated probe slots");
            }
        }
        assert_eq!(probe_slot(7, 3, 0), 0);
    }

    #[test]
    fn select_skips_unusable_and_falls_back() {
        let table = [1u32, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3, 1];
        let size = table.len() as u32;
        let read = |s: u32| table.get(s as usize).copied();
        for h in 0..1000u32 {
            let own = table[(h % size) as usize];
            // Everything usable: the flow's own slot.
            let s = select(h, size, read, |_| true).unwrap();
            assert_eq!((s.backend_id, s.probe, s.fallback), (own, 0, false));
            // Its own backend suspect: another one, found by a later probe.
            let s = select(h, size, read, |id| id != own).unwrap();
            assert_ne!(s.backend_id, own);
            assert!(s.probe > 0 && !s.fallback);
            // Nothing usable: the own slot's backend anyway, flagged.
            let s = select(h, size, read, |_| false).unwrap();
            assert_eq!((s.backend_id, s.probe, s.fallback), (own, 0, true));
        }
        // An empty own slot is returned as is (the caller refuses the SYN).
        let empty = [0u32; 13];
        let s = select(5, 13, |s| empty.get(s as usize).copied(), |_| false).unwrap();
        assert_eq!(s.backend_id, crate::BACKEND_ID_NONE);
        // A failing read is None.
        assert_eq!(select(5, 13, |_| None, |_| true), None);
    }

    /// The failover bench's slow connection: every probe of a flow landed on the suspect
    /// backend and the walk fell back to it, although another backend was usable. The scan
    /// after the probes finds it (here in the slot after the flow's own).
    #[test]
    fn select_scans_past_the_probes_before_falling_back() {
        const SIZE: u32 = 251;
        for h in 0..2000u32 {
            let h = h.wrapping_mul(0x9e37_79b9);
            // Backend 2 in the own slot and every probed slot, backend 1 only right after
            // the own slot, 2 everywhere else.
            let own = probe_slot(h, 0, SIZE);
            let mut table = [2u32; SIZE as usize];
            let next = scan_slot(own, 1, SIZE);
            if (0..SELECT_PROBES).any(|p| probe_slot(h, p, SIZE) == next) {
                continue;
            }
            table[next as usize] = 1;
            let pick = |t: &[u32]| select(h, SIZE, |s| t.get(s as usize).copied(), |id| id != 2);
            let s = pick(&table).unwrap();
            assert_eq!(
                (s.backend_id, s.probe, s.fallback),
                (1, SELECT_PROBES, false),
                "h {h:#x}"
            );
            // The last scanned slot is found too; one further is not.
            table[next as usize] = 2;
            table[scan_slot(own, SELECT_SCAN, SIZE) as usize] = 1;
            let s = pick(&table).unwrap();
            assert_eq!((s.backend_id, s.fallback), (1, false), "h {h:#x}");
            table[scan_slot(own, SELECT_SCAN, SIZE) as usize] = 2;
            table[scan_slot(own, SELECT_SCAN + 1, SIZE) as usize] = 1;
            let s = pick(&table).unwrap();
            if s.probe == 0 {
                assert_eq!((s.backend_id, s.fallback), (2, true), "h {h:#x}");
            }
        }
        // The scan wraps around a table shorter than itself.
        assert_eq!(scan_slot(12, 1, 13), 0);
        assert_eq!(scan_slot(12, 30, 13), 3);
        assert_eq!(scan_slot(5, 1, 0), 0);
    }

    #[test]
    fn suspicion_expires() {
        let s = BackendSuspect {
            since_ns: 1_000,
            reason: REASON_RST_TO_SYN,
            _pad: 0,
        };
        assert!(s.is_active(1_000));
        assert!(s.is_active(1_000 + SUSPECT_HOLD_NS - 1));
        assert!(!s.is_active(1_000 + SUSPECT_HOLD_NS));
        assert!(!BackendSuspect::default().is_active(5));
        // A clock behind the stamp (another CPU's coarse clock) keeps it active.
        assert!(s.is_active(500));
    }
}
