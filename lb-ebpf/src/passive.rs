//! Passive failure detection (`lb_common::passive`): raising a backend's suspicion, telling
//! lbd through the event ring buffer, and the usability test of the selection walk.

use crate::{
    maps::{LB_BACKENDS, LB_BE_SUSPECT, LB_EVENTS},
    stats,
};
use lb_common::{
    passive::{BackendSuspect, PassiveEvent},
    BACKEND_F_DOWN, EVENT_LOST,
};

/// Marks backend `backend_id` (of service `service_id`) suspect for `reason` at `now_ns`,
/// unless a suspicion is already active; a newly raised one is reported to lbd
/// (`EVENT_LOST` when the ring buffer has no room).
#[inline(always)]
pub fn raise(backend_id: u32, service_id: u32, reason: u32, now_ns: u64) {
    let Some(slot) = LB_BE_SUSPECT.get_ptr_mut(backend_id) else {
        return;
    };
    // SAFETY: map value pointer; concurrent raises write the same kind of value.
    let slot = unsafe { &mut *slot };
    if slot.is_active(now_ns) {
        return;
    }
    *slot = BackendSuspect {
        since_ns: now_ns,
        reason,
        _pad: 0,
    };
    let event = PassiveEvent {
        time_ns: now_ns,
        backend_id,
        service_id,
        reason,
        _pad: 0,
    };
    if LB_EVENTS.output::<PassiveEvent>(&event, 0).is_err() {
        stats::count(EVENT_LOST);
    }
}

/// True when backend `backend_id` may take a new flow at `now_ns`: configured, not down, not
/// suspect.
#[inline(always)]
pub fn usable(backend_id: u32, now_ns: u64) -> bool {
    match LB_BACKENDS.get(backend_id) {
        Some(b) if b.addr_be != 0 && b.flags & BACKEND_F_DOWN == 0 => {}
        _ => return false,
    }
    !LB_BE_SUSPECT
        .get(backend_id)
        .is_some_and(|s| s.is_active(now_ns))
}
