//! Global counter indices of [`crate::MAP_STATS`]: one per verdict reason.
//!
//! Every packet the XDP program sees increments exactly one verdict counter (all but the event
//! counters [`CT_BACKEND_DOWN`], [`CT_SYN_REUSE`], [`NEW_FLOW`], [`CT_SYN_ON_OPEN`],
//! [`CT_PAIR_REPAIRED`], [`CT_DOWN_KEPT`], [`CT_SYN_UNANSWERED`], [`SELECT_SKIPPED`],
//! [`SELECT_FALLBACK`], [`EVENT_LOST`], [`SNAT_POOL_FULL`], [`SNAT_SEARCH_SHORT`],
//! [`CT_DSR_NEW`] and [`CT_DSR_REPICK`], which
//! count events on top of the verdict), plus, when it belongs to a service, that service's
//! and backend's [`crate::FlowStats`]. The name in [`COUNTER_NAMES`] is the `reason` label of the
//! `lb_packets_total` metric.

/// Not IPv4 or IPv6 (ARP, LLDP, ...): `XDP_PASS`.
pub const PASS_NON_IP: u32 = 0;
/// IPv6: `XDP_PASS` (lb forwards IPv4 only for now).
pub const PASS_IPV6: u32 = 1;
/// Frame shorter than an Ethernet header, or an IPv4 header that is truncated, has a version
/// other than 4, a header length below 20 or a total length that disagrees with the frame:
/// `XDP_DROP`.
pub const DROP_MALFORMED: u32 = 2;
/// IPv4 not addressed to a VIP and not a reply of a tracked flow: `XDP_PASS`.
pub const PASS_NOT_SERVICE: u32 = 3;
/// To a VIP but not TCP (ICMP, UDP, ...): `XDP_PASS` so the kernel can answer (e.g. ping).
pub const PASS_VIP_NON_TCP: u32 = 4;
/// TCP to a VIP on a port that has no service: `XDP_PASS`.
pub const PASS_VIP_NO_SERVICE: u32 = 5;
/// IPv4 fragment addressed to a VIP: `XDP_DROP` (lb does not reassemble).
pub const DROP_VIP_FRAGMENT: u32 = 6;
/// IPv4 header with options addressed to a VIP: `XDP_DROP`.
pub const DROP_VIP_IP_OPTIONS: u32 = 7;
/// TCP header truncated or with a data offset below 5 (to a VIP or a tracked reply):
/// `XDP_DROP`.
pub const DROP_MALFORMED_TCP: u32 = 8;
/// TTL <= 1 on a packet lb would forward: `XDP_PASS`, the kernel sends ICMP time exceeded.
pub const PASS_TTL_EXCEEDED: u32 = 9;
/// Non-SYN TCP to a service with no (live) conntrack entry: `XDP_DROP`.
pub const DROP_NO_CONNTRACK: u32 = 10;
/// SYN to a service with no usable backend: answered with RST+ACK (`XDP_TX`).
pub const TX_RST_NO_BACKEND: u32 = 11;
/// No free SNAT port after [`crate::SNAT_PORT_ATTEMPTS`] tries (or no SNAT address):
/// `XDP_DROP`; the client retransmits its SYN.
pub const DROP_SNAT_EXHAUSTED: u32 = 12;
/// Conntrack insert failed (map error): `XDP_DROP`.
pub const DROP_CONNTRACK_FULL: u32 = 13;
/// Forwarded client -> backend with `XDP_REDIRECT` or `XDP_TX`.
pub const FWD_TO_BACKEND: u32 = 14;
/// Forwarded backend -> client with `XDP_REDIRECT` or `XDP_TX`.
pub const FWD_TO_CLIENT: u32 = 15;
/// Rewritten but the next hop's MAC is unknown (`BPF_FIB_LKUP_RET_NO_NEIGH`): `XDP_PASS` of
/// the rewritten packet so the kernel resolves the neighbour and forwards it.
pub const PASS_FIB_NO_NEIGH: u32 = 16;
/// No route to the rewritten destination, forwarding disabled, or MTU exceeded: `XDP_DROP`.
pub const DROP_FIB_FAILED: u32 = 17;
/// The egress interface is not in [`crate::MAP_TX_PORTS`]: the rewritten packet is passed
/// to the kernel (`XDP_PASS`), which forwards it.
pub const PASS_NO_TX_PORT: u32 = 18;
/// A client's SYN hit a flow still in SYN_SENT (the backend never answered) whose backend is
/// down or gone (event): both entries are released and the SYN is re-balanced as a new flow
/// (then counted as forwarded or refused). Other packets of flows of a down backend are
/// forwarded ([`CT_DOWN_KEPT`]) or reset ([`TX_RST_DOWN_CLIENT`],
/// [`TX_RST_DOWN_BACKEND`]).
pub const CT_BACKEND_DOWN: u32 = 19;
/// New flows created (SYN that got a backend and a SNAT port).
pub const NEW_FLOW: u32 = 20;
/// Internal error (a map lookup that cannot fail did): `XDP_ABORTED`.
pub const ABORTED: u32 = 21;
/// A SYN (without ACK) hit a tracked flow in TIME_WAIT or CLOSE (event): a new connection
/// reusing the client's port. Both old entries are released and it is balanced as a new flow.
/// For a DSR flow: a SYN on a live entry that saw a FIN or RST from the client; the flow is
/// balanced afresh from its Maglev slot and its entry overwritten.
pub const CT_SYN_REUSE: u32 = 22;
/// An ICMP error (destination unreachable, time exceeded) from the backend side about a
/// tracked flow, translated for the client (outer VIP -> client, quoted client -> VIP) and
/// forwarded with `XDP_REDIRECT` or `XDP_TX`.
pub const ICMP_TO_CLIENT: u32 = 23;
/// An ICMP error from the client side addressed to a VIP about a tracked flow, translated for
/// the backend (outer SNAT address -> backend, quoted backend -> SNAT address) and forwarded.
pub const ICMP_TO_BACKEND: u32 = 24;
/// An ICMP error addressed to a VIP or a SNAT address whose ICMP header or quoted IPv4 header
/// plus 8 bytes is truncated, or whose quoted header is not IPv4 or has IHL < 5: `XDP_DROP`.
pub const DROP_ICMP_MALFORMED: u32 = 25;
/// A packet of a tracked flow with DF set did not fit the egress MTU: answered with ICMP
/// fragmentation needed (type 3 code 4, the egress MTU) out of the ingress interface
/// (`XDP_TX`).
pub const TX_ICMP_FRAG_NEEDED: u32 = 26;
/// A packet of a tracked flow did not fit the egress MTU and lb cannot answer it: DF clear
/// (lb does not fragment), IP options, or the packet is itself a translated ICMP error:
/// `XDP_DROP`.
pub const DROP_TOO_BIG: u32 = 27;
/// A SYN (without ACK) hit a tracked flow past its handshake that is not closed (event): it is
/// forwarded unchanged to the flow's backend (whose kernel answers with a challenge ACK, as it
/// would without lb) and never re-balanced, so a blind spoofed SYN cannot move a connection.
/// Also a SYN on a live DSR entry that saw no FIN or RST (kept on its pinned backend).
pub const CT_SYN_ON_OPEN: u32 = 28;
/// One entry of a flow was missing (LRU eviction) when the other was refreshed or changed
/// state (event): it was re-inserted from its partner.
pub const CT_PAIR_REPAIRED: u32 = 29;
/// A client packet whose flow lost its reply entry, and whose SNAT port (the reply entry's
/// key) now belongs to another live flow: the flow is ended, its forward entry removed and the
/// client answered with a RST (`XDP_TX`).
pub const TX_RST_CT_CONFLICT: u32 = 30;
/// A backend packet whose flow lost its forward entry, and whose client 5-tuple now belongs to
/// another live flow: the stale reply entry is removed and the packet dropped.
pub const DROP_CT_CONFLICT: u32 = 31;

/// A RST from the backend acknowledging the SYN of a flow still in SYN_SENT (passive detection,
/// not retried in XDP): the RST is not forwarded, both entries are released, the backend is marked suspect and lbd is told
/// (`XDP_DROP`; the client's SYN retransmission is balanced to another backend).
pub const DROP_SYN_REFUSED: u32 = 32;
/// A client SYN retransmitted on a flow in SYN_SENT whose last packet is at least
/// [`crate::passive::SYN_RETRANSMIT_MIN_NS`] old (event, passive detection): the backend is
/// marked suspect, both entries are released and the SYN is balanced afresh (a retried
/// connection; the verdict is that of the new flow).
pub const CT_SYN_UNANSWERED: u32 = 33;
/// A new flow's own Maglev slot held a suspect or down backend and a later probe found a
/// usable one (event).
pub const SELECT_SKIPPED: u32 = 34;
/// No probe found a usable backend: the flow's own slot's backend was taken although suspect
/// or down (event).
pub const SELECT_FALLBACK: u32 = 35;
/// A passive-detection event could not be written to the ring buffer (full, or lbd not
/// reading): the suspicion still holds and expires by itself (event).
pub const EVENT_LOST: u32 = 36;
/// A packet of a tracked flow arrived from the client while the flow's backend is flagged
/// `BACKEND_F_RESET` (`on_backend_down: reset`, a removed backend) or no longer exists: both
/// entries are released and the client is answered with a RST from the VIP (`XDP_TX`).
pub const TX_RST_DOWN_CLIENT: u32 = 37;
/// A packet of a tracked flow arrived from the backend while the backend is flagged
/// `BACKEND_F_RESET` or no longer exists: both entries are released and the backend is
/// answered with a RST from the SNAT address, its sequence number taken from the packet's
/// acknowledgment (`XDP_TX`).
pub const TX_RST_DOWN_BACKEND: u32 = 38;
/// A packet of a tracked flow whose backend is down without `BACKEND_F_RESET`
/// (`on_backend_down: keep`) was forwarded as usual (event, either direction); also a packet
/// of a DSR flow pinned to a backend flagged `BACKEND_F_DOWN` (down, or removed and still
/// holding flows).
pub const CT_DOWN_KEPT: u32 = 39;

/// A backend packet on a flow in SYN_SENT (its SYN sent, no SYN-ACK seen) that is neither a
/// SYN-ACK nor a pure ACK without payload or FIN, or a RST that does not acknowledge the SYN
/// ([`crate::retry::rst_answers_syn`]; one that does is [`DROP_SYN_REFUSED`]): a packet of an
/// older connection on the same backend 4-tuple (an evicted flow whose SNAT port the new flow reserved), which
/// must not reach the new client: `XDP_DROP`. See docs/architecture.md, "SNAT port reuse".
pub const DROP_CT_EMBRYONIC_DATA: u32 = 40;
/// An ICMP fragmentation-needed error from the client side about a tracked flow announcing
/// an MTU below [`crate::ICMP_MIN_PMTU`] (552, Linux's `min_pmtu`; 0 included): not
/// translated, since it would lower the backend's path MTU toward the SNAT address shared by
/// many clients: `XDP_DROP`.
pub const DROP_ICMP_SMALL_MTU: u32 = 41;

/// A backend's RST answering a flow in SYN_SENT was turned into the client's SYN toward
/// another usable backend in XDP ([`crate::retry`]; event: the packet's verdict is that of
/// its transmission, `fwd_to_backend` normally). The flow now points at the new backend and
/// the client sees only a slower handshake.
pub const CT_SYN_RETRIED: u32 = 42;
/// A backend's RST answering a flow in SYN_SENT found the flow's retry budget
/// ([`crate::retry::MAX_SYN_RETRIES`]) spent (event, with verdict [`DROP_SYN_REFUSED`]): the
/// client's own SYN retransmission is balanced afresh.
pub const CT_SYN_RETRY_EXHAUSTED: u32 = 43;

/// A packet of a DSR service ([`crate::FORWARDING_DSR`]) was encapsulated unchanged in an
/// outer IPv4 header (IPIP) toward its Maglev backend and sent with `XDP_TX` or
/// `XDP_REDIRECT`.
pub const FWD_DSR: u32 = 44;
/// A packet other than a SYN to a DSR service whose Maglev slot has no usable backend (the
/// service has none, the slot is empty, or the backend entry is cleared): `XDP_DROP` (a SYN is
/// answered [`TX_RST_NO_BACKEND`]).
pub const DROP_DSR_NO_BACKEND: u32 = 45;

/// A new flow's full SNAT port search ([`crate::SNAT_PORT_ATTEMPTS`] candidates) found no
/// free port toward its backend (event, with verdict [`DROP_SNAT_EXHAUSTED`], or on an in-XDP
/// SYN retry's reservation with that retry's verdict): the backend's
/// pool is (nearly) full, and for [`crate::SNAT_FULL_HOLD_NS`] the new flows to it search
/// only [`crate::SNAT_PORT_ATTEMPTS_SHORT`] candidates ([`SNAT_SEARCH_SHORT`]).
pub const SNAT_POOL_FULL: u32 = 46;
/// A new flow's SNAT port search was cut to [`crate::SNAT_PORT_ATTEMPTS_SHORT`] candidates
/// because a full search toward its backend found no free port less than
/// [`crate::SNAT_FULL_HOLD_NS`] ago (event, on top of the flow's verdict: `fwd_to_backend`
/// when a candidate was free, which ends the backend's short searches, [`DROP_SNAT_EXHAUSTED`]
/// otherwise).
pub const SNAT_SEARCH_SHORT: u32 = 47;

/// A DSR flow's entry was written to [`crate::MAP_CT_DSR`] (event): a packet other than a
/// SYN or RST of a flow without an entry (the handshake's ACK, or a flow moved to this node),
/// a SYN opening a new connection on an expired or closing entry, or a packet of a flow whose
/// pinned backend is gone; the backend is the flow's Maglev slot's. SYNs without an entry
/// insert nothing, so a SYN flood cannot evict pinned flows.
pub const CT_DSR_NEW: u32 = 48;
/// A packet of a DSR flow whose pinned backend is gone (its `LB_BACKENDS` entry cleared, or
/// its id now holds another address) was re-balanced to its Maglev slot's backend, which the
/// entry now names (event). A backend that is down, draining or removed but still in
/// `LB_BACKENDS` keeps its flows ([`CT_DOWN_KEPT`]).
pub const CT_DSR_REPICK: u32 = 49;

/// Number of global counters.
pub const NUM_COUNTERS: u32 = 50;

/// Name prefix of placeholders in [`COUNTER_NAMES`] (indices no counter uses yet, none today;
/// a branch adding counters may reserve some): never shown by `lbctl stats` nor exported as
/// metrics, and always 0.
pub const RESERVED_PREFIX: &str = "reserved_";

/// Metric label of each counter, indexed by counter index.
pub const COUNTER_NAMES: [&str; NUM_COUNTERS as usize] = [
    "pass_non_ip",
    "pass_ipv6",
    "drop_malformed",
    "pass_not_service",
    "pass_vip_non_tcp",
    "pass_vip_no_service",
    "drop_vip_fragment",
    "drop_vip_ip_options",
    "drop_malformed_tcp",
    "pass_ttl_exceeded",
    "drop_no_conntrack",
    "tx_rst_no_backend",
    "drop_snat_exhausted",
    "drop_conntrack_full",
    "fwd_to_backend",
    "fwd_to_client",
    "pass_fib_no_neigh",
    "drop_fib_failed",
    "pass_no_tx_port",
    "ct_backend_down",
    "new_flow",
    "aborted",
    "ct_syn_reuse",
    "icmp_to_client",
    "icmp_to_backend",
    "drop_icmp_malformed",
    "tx_icmp_frag_needed",
    "drop_too_big",
    "ct_syn_on_open",
    "ct_pair_repaired",
    "tx_rst_ct_conflict",
    "drop_ct_conflict",
    "drop_syn_refused",
    "ct_syn_unanswered",
    "select_skipped",
    "select_fallback",
    "event_lost",
    "tx_rst_down_client",
    "tx_rst_down_backend",
    "ct_down_kept",
    "drop_ct_embryonic_data",
    "drop_icmp_small_mtu",
    "ct_syn_retried",
    "ct_syn_retry_exhausted",
    "fwd_dsr",
    "drop_dsr_no_backend",
    "snat_pool_full",
    "snat_search_short",
    "ct_dsr_new",
    "ct_dsr_repick",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_snake_case() {
        for (i, a) in COUNTER_NAMES.iter().enumerate() {
            assert!(a
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit()));
            for b in &COUNTER_NAMES[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(
            COUNTER_NAMES[DROP_SNAT_EXHAUSTED as usize],
            "drop_snat_exhausted"
        );
        assert_eq!(COUNTER_NAMES[ABORTED as usize], "aborted");
        assert_eq!(
            COUNTER_NAMES[DROP_CT_EMBRYONIC_DATA as usize],
            "drop_ct_embryonic_data"
        );
        assert_eq!(
            COUNTER_NAMES[DROP_ICMP_SMALL_MTU as usize],
            "drop_icmp_small_mtu"
        );
        assert_eq!(COUNTER_NAMES[CT_SYN_RETRIED as usize], "ct_syn_retried");
        assert_eq!(COUNTER_NAMES[FWD_DSR as usize], "fwd_dsr");
        assert_eq!(
            COUNTER_NAMES[DROP_DSR_NO_BACKEND as usize],
            "drop_dsr_no_backend"
        );
        assert_eq!(COUNTER_NAMES[SNAT_POOL_FULL as usize], "snat_pool_full");
        assert_eq!(
            COUNTER_NAMES[SNAT_SEARCH_SHORT as usize],
            "snat_search_short"
        );
        assert_eq!(COUNTER_NAMES[CT_DSR_NEW as usize], "ct_dsr_new");
        assert_eq!(COUNTER_NAMES[CT_DSR_REPICK as usize], "ct_dsr_repick");
        assert_eq!(
            COUNTER_NAMES[CT_SYN_RETRY_EXHAUSTED as usize],
            "ct_syn_retry_exhausted"
        );
    }
}
