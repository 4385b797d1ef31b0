//! Per-CPU counters: the verdict of every packet, events, and per-service/backend traffic.
//! Per-CPU slots need no atomics; user space sums them.

use crate::{
    ablate,
    maps::{LB_BE_STATS, LB_STATS, LB_SVC_STATS},
};
use lb_common::FlowStats;

/// What happens to a packet: the XDP action and the one verdict counter it increments.
#[derive(Clone, Copy)]
pub struct Verdict {
    pub action: u32,
    pub counter: u32,
}

impl Verdict {
    /// A verdict with action `action` counted under `counter`.
    #[inline(always)]
    pub const fn new(action: u32, counter: u32) -> Self {
        Self { action, counter }
    }
    /// `XDP_DROP` counted under `counter`.
    #[inline(always)]
    pub const fn drop(counter: u32) -> Self {
        Self::new(aya_ebpf::bindings::xdp_action::XDP_DROP, counter)
    }
    /// `XDP_PASS` counted under `counter`.
    #[inline(always)]
    pub const fn pass(counter: u32) -> Self {
        Self::new(aya_ebpf::bindings::xdp_action::XDP_PASS, counter)
    }
}

/// Increments global counter `index` (a verdict or an event).
#[inline(always)]
pub fn count(index: u32) {
    if ablate::NO_STATS {
        return;
    }
    if let Some(slot) = LB_STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it while this program runs.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn update(service_id: u32, backend_id: u32, f: impl Fn(&mut FlowStats)) {
    if ablate::NO_STATS {
        return;
    }
    if let Some(s) = LB_SVC_STATS.get_ptr_mut(service_id) {
        // SAFETY: per-CPU slot.
        f(unsafe { &mut *s });
    }
    if let Some(b) = LB_BE_STATS.get_ptr_mut(backend_id) {
        // SAFETY: per-CPU slot.
        f(unsafe { &mut *b });
    }
}

/// Accounts one forwarded frame of `bytes` bytes (client -> backend when `to_backend`).
#[inline(always)]
pub fn forwarded(service_id: u32, backend_id: u32, bytes: u64, to_backend: bool) {
    update(service_id, backend_id, |s| {
        if to_backend {
            s.packets_in += 1;
            s.bytes_in += bytes;
        } else {
            s.packets_out += 1;
            s.bytes_out += bytes;
        }
    });
}

/// Accounts a new flow of a service on a backend.
#[inline(always)]
pub fn new_flow(service_id: u32, backend_id: u32) {
    update(service_id, backend_id, |s| s.new_flows += 1);
}

/// Accounts a SYN refused with a RST (service stats only).
#[inline(always)]
pub fn refused(service_id: u32) {
    if let Some(s) = LB_SVC_STATS.get_ptr_mut(service_id) {
        // SAFETY: per-CPU slot.
        unsafe { (*s).refused += 1 };
    }
}
