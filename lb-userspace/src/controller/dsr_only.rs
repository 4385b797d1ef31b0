//! The DSR-only bit of a VIP (`VIP_F_DSR_ONLY`, which the data plane reads as
//! `LOCAL_F_DSR_ONLY`): the VIP's packets skip the full-NAT conntrack lookups. So a VIP gets
//! it only when every service on it is DSR *and* no full-NAT flow that could still go on is
//! open: a reload that switches a VIP's last full-NAT service to DSR (or removes it) leaves
//! the bit off until a conntrack sweep that began after that reload found no live full-NAT
//! flow to a port of the VIP that still has a service. Until then a switched service's open
//! full-NAT flows keep their conntrack entries and their NAT path until they end. (Flows of a
//! removed service do not hold the bit: their packets find no service and are passed to the
//! kernel, `PASS_VIP_NO_SERVICE`, with or without it.) Every sweep re-evaluates
//! ([`Controller::finish_sweep`]).

use super::*;

/// What the controller knows about the full-NAT flows of a VIP that has or had a full-NAT
/// service (a VIP absent from [`Controller::nat_vips`] has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NatFlows {
    /// It has a full-NAT service (or was found without the DSR-only bit at start): new
    /// full-NAT flows may start.
    Possible,
    /// Its last full-NAT service went away while the latest sweep begun had this
    /// generation: a sweep of a later generation walked conntrack after that, so it counts
    /// every full-NAT flow the VIP may still have.
    EndedAt(u64),
}

impl<D: Dataplane> Controller<D> {
    /// Records which VIPs have a full-NAT service in `want` (VIP -> (service count, all
    /// DSR)), and forgets VIPs whose full-NAT flows the latest sweep found ended: afterwards a
    /// VIP may carry the DSR-only bit iff all its services are DSR and it is not in
    /// [`Controller::nat_vips`].
    pub(super) fn track_nat_vips(&mut self, want: &BTreeMap<u32, (u32, bool)>) {
        let generation = self.sweep_generation;
        for (&vip, &(_, all_dsr)) in want {
            if !all_dsr {
                self.nat_vips.insert(vip, NatFlows::Possible);
            }
        }
        for (vip, state) in &mut self.nat_vips {
            let has_nat = want.get(vip).is_some_and(|&(_, all_dsr)| !all_dsr);
            if *state == NatFlows::Possible && !has_nat {
                *state = NatFlows::EndedAt(generation);
            }
        }
        let ended: Vec<u32> = self
            .nat_vips
            .iter()
            .filter(|(&vip, &state)| self.swept_clean(vip, state))
            .map(|(&vip, _)| vip)
            .collect();
        for vip in ended {
            self.nat_vips.remove(&vip);
            if want.contains_key(&vip) {
                tracing::info!(
                    vip = %lb_common::ipv4_from_be(vip),
                    "no full-NAT flow to the VIP is left; its packets skip the full-NAT conntrack from now on"
                );
            }
        }
    }

    /// True when the latest sweep began after `state`'s last full-NAT service went away and
    /// found no live full-NAT flow to a port of `vip` that has a service.
    fn swept_clean(&self, vip: u32, state: NatFlows) -> bool {
        let NatFlows::EndedAt(generation) = state else {
            return false;
        };
        let Some(sweep) = self.last_sweep.as_ref() else {
            return false;
        };
        let addr = lb_common::ipv4_from_be(vip);
        let open: u64 = self
            .services
            .iter()
            .filter(|s| s.key.vip_be == vip)
            .map(|s| {
                let dest = SocketAddrV4::new(addr, lb_common::port_from_be(s.key.port_be));
                sweep.nat_flows_by_dest.get(&dest).copied().unwrap_or(0)
            })
            .sum();
        self.last_sweep_generation > generation && open == 0
    }
}
