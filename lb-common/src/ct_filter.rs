//! The key filter in front of [`MAP_CONNTRACK`] (issue 12): one bit per hash of a key, set for
//! every key written there, so a clear bit proves the key absent and a new flow skips two
//! lookups in the 32 MB bucket array of a default-sized conntrack map (its own 5-tuple, a
//! miss; the SNAT port candidate's reply key, the port's free check), each a cache and TLB
//! miss.
//!
//! Only false positives are allowed (a set bit is "maybe there": the lookup is made as
//! before); a false negative would hand out a port an established flow holds or miss a SYN's
//! established flow. So:
//! - **every writer of [`MAP_CONNTRACK`] marks the key first**, in both generations (the data
//!   plane at a promotion and a pair repair, user space in `set_conntrack_entry`), with an
//!   atomic OR (the two halves are one `BPF_F_MMAPABLE` array that lbd maps and ORs into);
//! - bits are never cleared one by one (an LRU eviction or a delete leaves its bit: a false
//!   positive), only a whole generation, by lbd's rebuild, which alternates with its conntrack
//!   sweeps: sweep k clears the inactive generation (nobody reads it; a whole sweep interval
//!   has passed since it was last active); sweep k+1, a sweep interval later, ORs in the bit
//!   of every key its scan saw and then makes that generation the active one. A key written
//!   after the clear was marked by its writer; one written before it (mark before the clear,
//!   insert after, within one program run of microseconds) is in the map long before the
//!   scan, a `BPF_MAP_LOOKUP_BATCH` walk by bucket index, which returns every key present
//!   throughout it (a `get_next_key` walk can skip buckets when an LRU element it stands on is
//!   reused elsewhere). The old generation stays a superset
//!   (writers mark both) and is cleared no earlier than a sweep interval after the switch,
//!   long after any program run that read the old generation number has ended.
//! - A control word of 0 (`word_mask == 0`, a fresh map no loader has set up) turns the
//!   filter off: every lookup is made, nothing is marked. A loader enables it only while
//!   [`MAP_CONNTRACK`] is empty (a fresh map).

use crate::hash::flow_hash;
use crate::maps::FlowKey;

/// The filter's bits: generation 0 in words `0..=word_mask`, generation 1 after it. An array
/// of `u64` created with `BPF_F_MMAPABLE`.
pub const MAP_CT_FILTER: &str = "LB_CT_FILTER";
/// Slot 0: [`CtFilterCtl`], the active generation and the size.
pub const MAP_CT_FILTER_CTL: &str = "LB_CT_FLT_CTL";

/// Filter bits per [`MAP_CONNTRACK`] entry: at a full map about one bit in eight is set, so
/// about 12% of the lookups a clear bit would have saved are made anyway.
pub const CT_FILTER_BITS_PER_ENTRY: u64 = 8;
/// `BPF_F_MMAPABLE` (the kernel's map flag, `1 << 10`).
pub const BPF_F_MMAPABLE: u32 = 1 << 10;
/// Seed of the filter's hash: fixed, not secret (a key crafted to share another's bit only
/// costs the lookup that was made before the filter existed).
pub const CT_FILTER_SEED: u32 = 0x5bd1_e995;

/// Slot 0 of [`MAP_CT_FILTER_CTL`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtFilterCtl {
    /// The generation lookups read (0 or 1; only bit 0 counts).
    pub gen: u32,
    /// Words per generation minus one (a power of two minus one); 0: the filter is off.
    pub word_mask: u32,
}

/// Words (`u64`) per generation for a conntrack map of `entries` entries: a power of two,
/// at least 64 (one 512-byte block).
pub const fn ct_filter_words(entries: u32) -> u32 {
    let bits = entries as u64 * CT_FILTER_BITS_PER_ENTRY;
    let words = (bits / 64).next_power_of_two();
    if words < 64 {
        64
    } else {
        words as u32
    }
}

/// Entries (`u64` words) of [`MAP_CT_FILTER`] for a conntrack map of `entries` entries: both
/// generations.
pub const fn ct_filter_map_entries(entries: u32) -> u32 {
    2 * ct_filter_words(entries)
}

/// The word index (within a generation) and the bit of `key` in a filter of
/// `word_mask + 1` words.
#[inline(always)]
pub fn ct_filter_slot(key: &FlowKey, word_mask: u32) -> (u32, u64) {
    let h = flow_hash(
        key.src_addr_be,
        key.dst_addr_be,
        key.src_port_be,
        key.dst_port_be,
        CT_FILTER_SEED,
    );
    ((h >> 6) & word_mask, 1u64 << (h & 63))
}

const _: () = assert!(core::mem::size_of::<CtFilterCtl>() == 8);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_powers_of_two_with_eight_bits_per_entry() {
        assert_eq!(ct_filter_words(0), 64);
        assert_eq!(ct_filter_words(1024), 128);
        // The default: 1M flows, 2M entries -> 16M bits = 2 MB per generation.
        assert_eq!(ct_filter_words(2 << 20), 1 << 18);
        assert_eq!(ct_filter_map_entries(2 << 20), 1 << 19);
        assert_eq!(ct_filter_words(3000), 512);
    }

    #[test]
    fn slot_stays_in_range_and_spreads() {
        let mask = ct_filter_words(4096) - 1;
        let mut words = [0u32; 512];
        for i in 0..4096u32 {
            let key = FlowKey {
                src_addr_be: 0x0a00_0001u32.to_be(),
                dst_addr_be: 0xc000_020au32.to_be(),
                src_port_be: (1024 + i as u16).to_be(),
                dst_port_be: 80u16.to_be(),
                proto: 6,
                _pad: [0; 3],
            };
            let (w, bit) = ct_filter_slot(&key, mask);
            assert!(w <= mask);
            assert_eq!(bit.count_ones(), 1);
            words[w as usize] += 1;
        }
        // 4096 keys over 512 words: no word holds a large share (a poor hash would).
        assert!(words.iter().all(|&n| n < 40), "{:?}", words.iter().max());
    }
}
