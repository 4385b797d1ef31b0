//! lbd's side of the key filter in front of `LB_CONNTRACK` (`lb_common::ct_filter`): both maps
//! mapped into memory, marks for keys user space writes, and the rebuild that alternates with
//! the conntrack sweeps (clear the inactive generation; a sweep later, OR in every key the
//! sweep's scan saw and make it the active one).

use super::*;
use lb_common::{
    ct_filter_map_entries, ct_filter_slot, ct_filter_words, CtFilterCtl, MAP_CT_FILTER,
    MAP_CT_FILTER_CTL,
};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Least time between a generation's clear and the scan that fills it, and between a switch
/// and the clear of the generation it left: far longer than any program run (microseconds),
/// so a run that read the old generation number, or marked a key just before the clear and
/// inserted it just after, has ended. lbd sweeps every 5 s.
pub(super) const CT_FILTER_GRACE: Duration = Duration::from_secs(1);

/// The filter's words in a shared mapping.
struct Mapping(ArrayMapping);

impl Mapping {
    fn of(ebpf: &Ebpf, name: &'static str, bytes: usize) -> Result<Self> {
        ArrayMapping::of(ebpf, name, bytes).map(Self)
    }

    /// The `i`-th 64-bit word (`i` must lie inside the array).
    fn word(&self, i: usize) -> &AtomicU64 {
        assert!((i + 1) * 8 <= self.0.len());
        // SAFETY: in bounds (checked), 8-byte aligned (page-aligned base), shared memory the
        // kernel and the data plane access atomically too.
        unsafe { AtomicU64::from_ptr(self.0.ptr().cast::<u64>().add(i)) }
    }
}

/// Where the rebuild stands (one step per sweep).
#[derive(Clone, Copy, Debug)]
enum Phase {
    /// The inactive generation may hold stale bits: the next sweep clears it.
    Dirty,
    /// The inactive generation was cleared at this instant: a sweep at least
    /// [`CT_FILTER_GRACE`] later fills it from its scan and switches to it.
    Cleared(Instant),
    /// The active generation was switched at this instant: a sweep at least
    /// [`CT_FILTER_GRACE`] later clears the one it left.
    Switched(Instant),
}

/// What a sweep that fills the inactive generation holds: which one, and the clear it follows.
#[derive(Clone, Copy, Debug)]
pub(super) struct FillToken {
    pub(super) gen: u32,
    cleared_at: Instant,
}

/// The filter's two maps, mapped, and the rebuild's phase; shared by the data plane handle
/// (marks) and the sweepers (rebuild).
pub struct CtFilter {
    bits: Mapping,
    ctl: Mapping,
    /// Words per generation.
    words: u32,
    phase: Mutex<Phase>,
    /// Rebuilds completed (tests, metrics).
    rebuilds: AtomicU32,
}

impl CtFilter {
    /// Maps the filter of a freshly loaded or re-adopted object whose conntrack map holds
    /// `entries` entries; turns it on when it is off and `conntrack_empty` (a filter may only
    /// start with a map it has seen every key of). `None` (with a warning) when the kernel
    /// refuses the mapping: the filter then stays off and every lookup is made.
    pub(super) fn open(ebpf: &Ebpf, entries: u32, conntrack_empty: bool) -> Option<Arc<Self>> {
        let words = ct_filter_words(entries);
        let map = |name, bytes| {
            Mapping::of(ebpf, name, bytes)
                .map_err(|e| tracing::warn!(map = name, error = %e, "conntrack key filter off"))
                .ok()
        };
        let bits = map(MAP_CT_FILTER, ct_filter_map_entries(entries) as usize * 8)?;
        let ctl = map(MAP_CT_FILTER_CTL, 8)?;
        let f = Self {
            bits,
            ctl,
            words,
            phase: Mutex::new(Phase::Dirty),
            rebuilds: AtomicU32::new(0),
        };
        let now = f.read_ctl();
        if now.word_mask == 0 {
            if !conntrack_empty {
                tracing::warn!(
                    "conntrack key filter off: the re-adopted conntrack map holds entries the filter has not seen"
                );
                return Some(Arc::new(f));
            }
            // No clear first: a set bit is only a false positive, and a fresh array map is
            // zero already (clearing touched up to 256 MiB at start at the largest size).
            f.write_ctl(CtFilterCtl {
                gen: 0,
                word_mask: words - 1,
            });
        } else if now.word_mask != words - 1 {
            tracing::warn!(
                word_mask = now.word_mask,
                "conntrack key filter off: its pinned size does not match"
            );
            f.write_ctl(CtFilterCtl::default());
        }
        Some(Arc::new(f))
    }

    fn read_ctl(&self) -> CtFilterCtl {
        let v = self.ctl.word(0).load(Ordering::Acquire);
        CtFilterCtl {
            gen: v as u32,
            word_mask: (v >> 32) as u32,
        }
    }

    fn write_ctl(&self, c: CtFilterCtl) {
        // Slot 0 is `{gen: u32, word_mask: u32}` in memory order: gen in the low half.
        let v = u64::from(c.gen) | (u64::from(c.word_mask) << 32);
        self.ctl.word(0).store(v, Ordering::Release);
    }

    /// The slot of `key` in generation `gen`, or `None` when the filter is off.
    fn slot(&self, key: &FlowKey, gen: u32) -> Option<(usize, u64)> {
        let c = self.read_ctl();
        if c.word_mask == 0 {
            return None;
        }
        let (w, bit) = ct_filter_slot(key, c.word_mask);
        Some(((gen & 1) as usize * self.words as usize + w as usize, bit))
    }

    /// Marks `key` in both generations: before user space writes it into `LB_CONNTRACK`.
    pub(super) fn mark(&self, key: &FlowKey) {
        for gen in 0..2 {
            if let Some((i, bit)) = self.slot(key, gen) {
                self.bits.word(i).fetch_or(bit, Ordering::AcqRel);
            }
        }
    }

    /// Whether the active generation has `key`'s bit (tests: a clear bit must mean absent).
    pub fn may_hold(&self, key: &FlowKey) -> bool {
        let gen = self.read_ctl().gen;
        match self.slot(key, gen) {
            Some((i, bit)) => self.bits.word(i).load(Ordering::Acquire) & bit != 0,
            None => true,
        }
    }

    /// Bits set in the active generation, out of its bits (how full the filter is).
    pub fn fill(&self) -> (u64, u64) {
        let gen = self.read_ctl().gen & 1;
        let base = gen as usize * self.words as usize;
        let set = (0..self.words as usize)
            .map(|i| {
                u64::from(
                    self.bits
                        .word(base + i)
                        .load(Ordering::Relaxed)
                        .count_ones(),
                )
            })
            .sum();
        (set, u64::from(self.words) * 64)
    }

    /// Turns the filter off (every lookup is made; measurements compare both). It cannot be
    /// turned on again: a filter may only start with an empty conntrack map.
    pub fn turn_off(&self) {
        // The active generation stays: a program run that reads the two halves of the
        // control word apart sees either the old word or "off", never a stale generation.
        let gen = self.read_ctl().gen;
        self.write_ctl(CtFilterCtl { gen, word_mask: 0 });
    }

    /// Rebuilds completed since this filter was opened.
    pub fn rebuilds(&self) -> u32 {
        self.rebuilds.load(Ordering::Relaxed)
    }

    /// Whether it is on, how full its active generation is, and rebuilds so far (what a
    /// sweep reports).
    pub fn status(&self) -> CtFilterStatus {
        let (set, total) = self.fill();
        let enabled = self.read_ctl().word_mask != 0;
        CtFilterStatus {
            enabled,
            bits_set: if enabled { set } else { 0 },
            bits_total: total,
            rebuilds: u64::from(self.rebuilds()),
        }
    }

    /// A sweep begins: clears the inactive generation if that is due, or returns the
    /// generation this sweep's scan fills ([`Self::fill_key`], then [`Self::switch_to`]).
    pub(super) fn begin_sweep(&self) -> Option<FillToken> {
        let c = self.read_ctl();
        if c.word_mask == 0 {
            return None;
        }
        let inactive = (c.gen & 1) ^ 1;
        let mut phase = self.phase.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match *phase {
            Phase::Switched(at) if now.duration_since(at) < CT_FILTER_GRACE => None,
            Phase::Dirty | Phase::Switched(_) => {
                let base = inactive as usize * self.words as usize;
                for i in 0..self.words as usize {
                    self.bits.word(base + i).store(0, Ordering::Relaxed);
                }
                *phase = Phase::Cleared(Instant::now());
                None
            }
            Phase::Cleared(at) if now.duration_since(at) >= CT_FILTER_GRACE => Some(FillToken {
                gen: inactive,
                cleared_at: at,
            }),
            Phase::Cleared(_) => None,
        }
    }

    /// Sets `key`'s bit in generation `gen` (a key the sweep's scan saw in `LB_CONNTRACK`).
    pub(super) fn fill_key(&self, gen: u32, key: &FlowKey) {
        if let Some((i, bit)) = self.slot(key, gen) {
            if self.bits.word(i).load(Ordering::Relaxed) & bit == 0 {
                self.bits.word(i).fetch_or(bit, Ordering::AcqRel);
            }
        }
    }

    /// The scan filled generation `gen`: lookups read it from now on.
    /// Only if nothing happened to the filter since the clear `token` follows (another
    /// sweep's switch or clear, or the filter turned off): the generation was then not
    /// filled by this sweep's walk alone, and the rebuild starts over.
    pub(super) fn switch_to(&self, token: FillToken) {
        let mut phase = self.phase.lock().unwrap_or_else(|p| p.into_inner());
        let c = self.read_ctl();
        let current = matches!(*phase, Phase::Cleared(at) if at == token.cleared_at);
        if !current || c.word_mask == 0 || c.gen & 1 == token.gen & 1 {
            tracing::debug!("conntrack key filter: switch skipped, the rebuild starts over");
            *phase = Phase::Dirty;
            return;
        }
        self.write_ctl(CtFilterCtl {
            gen: token.gen & 1,
            word_mask: c.word_mask,
        });
        *phase = Phase::Switched(Instant::now());
        self.rebuilds.fetch_add(1, Ordering::Relaxed);
    }
}
