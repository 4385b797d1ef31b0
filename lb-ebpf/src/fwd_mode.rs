//! The forwarding mode of a service, decoded once from its `LB_SERVICES` value: full NAT
//! ([`crate::nat`], [`crate::conntrack`]) or DSR ([`crate::dsr`]). The mode is the only thing
//! the dispatch in `lb4_service` asks; each mode's path owns everything after it.

use lb_common::{ServiceValue, FORWARDING_DSR};

/// How a service's packets reach its backends.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Forwarding {
    /// Full NAT with connection tracking (`FORWARDING_NAT`, and any value this program does
    /// not know: an all-zero service value is a full-NAT service).
    Nat,
    /// Direct server return: IPIP toward the Maglev backend, outer source `src_be`.
    Dsr { src_be: u32 },
}

impl Forwarding {
    /// The mode of `svc`.
    #[inline(always)]
    pub fn of(svc: &ServiceValue) -> Self {
        if svc.forwarding == FORWARDING_DSR {
            Forwarding::Dsr {
                src_be: svc.dsr_src_be,
            }
        } else {
            Forwarding::Nat
        }
    }
}
