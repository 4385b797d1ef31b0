//! Applying a database cluster's decision to its services: the gate of every member in every
//! service that references the cluster (see [`crate::db::decide`]), then the usual
//! make-before-break sync of each service whose gates changed.

use super::*;
use crate::config::DbRole;
use crate::db::decide::{read_gate, write_gate, ClusterState, MemberRole};

/// A gate change made by [`Controller::db_apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateChange {
    /// Service name.
    pub service: String,
    /// Member (backend) address.
    pub backend: SocketAddrV4,
    /// Previous gate (`None`: none yet).
    pub from: Option<DbGate>,
    /// New gate.
    pub to: DbGate,
    /// When `to` is [`DbGate::Reset`] (and `from` was not): why lbd orders the member's
    /// flows reset ([`reset_reason`]).
    pub reset: Option<&'static str>,
    /// The member's flows in this service at the last conntrack sweep: the flows a reset
    /// order ends (flows opened or closed since the sweep are not in it).
    pub flows: u64,
}

/// Why a member whose gate becomes [`DbGate::Reset`] loses its flows, from its role in the
/// decided state: `demoted` (no longer the primary: a replica now),
/// `fenced` (claims primary but lost the election or tied), `down` (failed `fall` checks),
/// `foreign` (another system identifier). The label of `lb_db_flows_reset_total`.
pub fn reset_reason(member: MemberRole) -> &'static str {
    match member {
        MemberRole::Fenced => "fenced",
        MemberRole::Down => "down",
        MemberRole::Foreign => "foreign",
        // Only the write gate resets a live member of another role: a primary that is in
        // recovery now (demoted).
        MemberRole::Primary | MemberRole::Replica | MemberRole::Unknown => "demoted",
    }
}

impl<D: Dataplane> Controller<D> {
    /// Sets the gates of cluster `cluster`'s members in every service referencing it, as
    /// `state` decides, and syncs the services whose gates changed. Returns the changes.
    pub fn db_apply(
        &mut self,
        cluster: &str,
        state: &ClusterState,
    ) -> Result<Vec<GateChange>, ControllerError> {
        let mut changes = Vec::new();
        for i in 0..self.services.len() {
            let svc = &mut self.services[i];
            let Some((name, role)) = svc.cfg.db() else {
                continue;
            };
            if name != cluster {
                continue;
            }
            let fallback = svc.cfg.read_fallback();
            let mut changed = false;
            for b in &mut svc.backends {
                let to = match role {
                    DbRole::Primary => write_gate(state, b.cfg.address),
                    DbRole::Replica => read_gate(state, b.cfg.address, fallback),
                };
                if b.db != Some(to) {
                    let reset = (to == DbGate::Reset).then(|| {
                        reset_reason(
                            state
                                .member(b.cfg.address)
                                .map_or(MemberRole::Unknown, |m| m.role),
                        )
                    });
                    changes.push(GateChange {
                        service: svc.cfg.name.clone(),
                        backend: b.cfg.address,
                        from: b.db,
                        to,
                        reset,
                        flows: b.active_flows,
                    });
                    b.db = Some(to);
                    changed = true;
                }
            }
            if changed {
                self.sync_service(i)?;
            }
        }
        Ok(changes)
    }
}
