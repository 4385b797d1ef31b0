//! The key filter in front of `LB_CONNTRACK` (`lb_common::ct_filter`): a clear bit proves a
//! key absent, so a new flow skips the lookups of its own 5-tuple and of its SNAT port
//! candidate's reply key in that map (each a cache and TLB miss at the default size). Every
//! write of a key into `LB_CONNTRACK` marks it first, in both generations.

use crate::maps::{LB_CT_FILTER, LB_CT_FLT_CTL};
use lb_common::{ct_filter_slot, FlowKey};

/// False only when `LB_CONNTRACK` certainly does not hold `key`: its bit in the active
/// generation is clear. True (make the lookup) when the bit is set or the filter is off.
#[inline(always)]
pub fn may_hold(key: &FlowKey) -> bool {
    let Some(ctl) = LB_CT_FLT_CTL.get(0) else {
        return true;
    };
    let mask = ctl.word_mask;
    if mask == 0 {
        return true;
    }
    let (word, bit) = ct_filter_slot(key, mask);
    let base = if ctl.gen & 1 == 0 { 0 } else { mask + 1 };
    match LB_CT_FILTER.get(base + word) {
        Some(w) => *w & bit != 0,
        None => true,
    }
}

/// Marks `key` in both generations; called before `key` is written into `LB_CONNTRACK`.
/// An atomic OR (another CPU, or lbd's rebuild, may set another bit of the word at the same
/// time), made only when the bit is clear (no write to a shared line that has it already).
#[inline(always)]
pub fn mark(key: &FlowKey) {
    let Some(ctl) = LB_CT_FLT_CTL.get(0) else {
        return;
    };
    let mask = ctl.word_mask;
    if mask == 0 {
        return;
    }
    let (word, bit) = ct_filter_slot(key, mask);
    set(word, bit);
    set(mask + 1 + word, bit);
}

#[inline(always)]
fn set(index: u32, bit: u64) {
    if let Some(p) = LB_CT_FILTER.get_ptr_mut(index) {
        // SAFETY: a map value pointer, valid for the program run; the word is only ever
        // changed by atomic ORs and by lbd's clear of an inactive generation.
        unsafe {
            if *p & bit == 0 {
                // BPF_ATOMIC | BPF_OR (kernel 5.12+): the target offers no atomic RMW but add
                // through Rust's atomics.
                core::arch::asm!(
                    "lock *(u64 *)({p} + 0) |= {b}",
                    p = in(reg) p,
                    b = in(reg) bit,
                    options(nostack, preserves_flags),
                );
            }
        }
    }
}
