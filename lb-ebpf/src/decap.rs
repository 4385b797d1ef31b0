//! `lb_decap`: the backend side of DSR where the kernel has no `ipip` module (no `tunl0`).
//! Attached to a backend's interface (`lbctl decap attach IFACE`), it strips the outer IPv4
//! header of an IPIP packet (protocol 4) addressed to one of the backend's addresses
//! ([`LB_DECAP_ADDRS`]) and passes the client's packet, unchanged, to the kernel as if it had
//! arrived without encapsulation: the kernel finds the VIP on `lo` and the backend answers the
//! client directly. Everything else passes untouched.
//!
//! Only lb's packets are decapsulated: the outer source must be an lb node
//! ([`LB_DECAP_SRCS`], prefixes) and the inner destination a VIP ([`LB_DECAP_VIPS`]). Other
//! IPIP to this host is a counted drop: it would let anyone who reaches the backend inject
//! packets with a spoofed inner source, or relay them to other destinations.
//!
//! Checks, as the kernel's IPIP receive path makes them: the outer header is IPv4 without
//! options, not a fragment (XDP cannot reassemble; lb never sends either), with a correct
//! checksum and a total length that fits the frame; the inner packet is IPv4 with a header
//! length of at least 20 and a total length that fits the outer payload. A failed check on an
//! IPIP packet to a decapsulation address is a counted drop. Congestion marks survive
//! decapsulation (RFC 6040): an outer CE mark on an ECN-capable inner packet is copied to the
//! inner header (its checksum updated).
//!
//! Its counters are its own ([`LB_DECAP_STATS`], `lb_common::decap`): it runs on backends, far
//! from `lb_xdp`'s maps.

use crate::{
    maps::{LB_DECAP_ADDRS, LB_DECAP_SRCS, LB_DECAP_STATS, LB_DECAP_VIPS},
    parse::{frame_len, ptr_at, EthHdr, Ipv4Hdr, ETH_HLEN, ETH_P_IP_BE, IPV4_HLEN},
    rst::sum_words,
};
use aya_ebpf::{
    bindings::xdp_action, helpers::generated::bpf_xdp_adjust_head, maps::lpm_trie::Key,
    programs::XdpContext,
};
use lb_common::{
    checksum::{csum_fold, csum_replace2},
    decap::{
        DECAP_ABORTED, DECAP_DROP_MALFORMED, DECAP_DROP_NOT_VIP, DECAP_DROP_SOURCE,
        DECAP_DROP_UNSUPPORTED, DECAP_OK, DECAP_PASS_OTHER,
    },
    IPPROTO_IPIP,
};

/// The ECN field of the TOS byte, and its "congestion experienced" value.
const ECN_MASK: u8 = 0x03;
const ECN_CE: u8 = 0x03;

/// What `lb_decap` does with a frame: the XDP action and the one counter it increments.
pub struct DecapVerdict {
    pub action: u32,
    pub counter: u32,
}

const fn verdict(action: u32, counter: u32) -> DecapVerdict {
    DecapVerdict { action, counter }
}

const PASS: DecapVerdict = verdict(xdp_action::XDP_PASS, DECAP_PASS_OTHER);
const MALFORMED: DecapVerdict = verdict(xdp_action::XDP_DROP, DECAP_DROP_MALFORMED);
const UNSUPPORTED: DecapVerdict = verdict(xdp_action::XDP_DROP, DECAP_DROP_UNSUPPORTED);
const BAD_SOURCE: DecapVerdict = verdict(xdp_action::XDP_DROP, DECAP_DROP_SOURCE);
const NOT_VIP: DecapVerdict = verdict(xdp_action::XDP_DROP, DECAP_DROP_NOT_VIP);
/// The verdict of an internal error (the frame could not be shrunk).
pub const ABORTED: DecapVerdict = verdict(xdp_action::XDP_ABORTED, DECAP_ABORTED);

/// Increments `lb_decap` counter `index`.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(slot) = LB_DECAP_STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it while this program runs.
        unsafe { *slot += 1 };
    }
}

/// Decides and applies the fate of one frame. `Err` only when the frame cannot be shrunk.
#[inline(always)]
pub fn try_decap(ctx: &XdpContext) -> Result<DecapVerdict, ()> {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Ok(PASS);
    };
    // SAFETY: bounds-checked by ptr_at.
    if unsafe { (*eth).ether_type_be } != ETH_P_IP_BE {
        return Ok(PASS);
    }
    let Some(outer) = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN) else {
        return Ok(PASS);
    };
    // SAFETY: bounds-checked by ptr_at.
    let outer = unsafe { &*outer };
    if outer.proto != IPPROTO_IPIP {
        return Ok(PASS);
    }
    // SAFETY: copy of a map value (presence is all that matters).
    if unsafe { LB_DECAP_ADDRS.get(&outer.dst_be) }.is_none() {
        return Ok(PASS);
    }
    // IPIP to this host from here on: decapsulated or dropped. Not from an lb node: dropped
    // before anything else is read.
    if LB_DECAP_SRCS.get(Key::new(32, outer.src_be)).is_none() {
        return Ok(BAD_SOURCE);
    }
    if outer.version() != 4 || outer.header_len() < IPV4_HLEN {
        return Ok(MALFORMED);
    }
    if outer.header_len() != IPV4_HLEN || outer.is_fragment() {
        return Ok(UNSUPPORTED);
    }
    let outer_len = outer.tot_len();
    if outer_len < 2 * IPV4_HLEN || outer_len > frame_len(ctx) - ETH_HLEN {
        return Ok(MALFORMED);
    }
    let sum = sum_words(outer as *const Ipv4Hdr as *const [u16; IPV4_HLEN / 2]);
    if csum_fold(sum) != 0xffff {
        return Ok(MALFORMED);
    }
    let Some(inner) = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN + IPV4_HLEN) else {
        return Ok(MALFORMED);
    };
    // SAFETY: bounds-checked by ptr_at, disjoint from the outer header.
    let inner = unsafe { &mut *inner };
    if inner.version() != 4
        || inner.header_len() < IPV4_HLEN
        || inner.tot_len() < inner.header_len()
        || inner.tot_len() > outer_len - IPV4_HLEN
    {
        return Ok(MALFORMED);
    }
    // SAFETY: copy of a map value (presence is all that matters).
    if unsafe { LB_DECAP_VIPS.get(&inner.dst_be) }.is_none() {
        return Ok(NOT_VIP);
    }
    if outer.tos & ECN_MASK == ECN_CE && inner.tos & ECN_MASK != 0 {
        let old = u16::from_ne_bytes([inner.version_ihl, inner.tos]);
        inner.tos |= ECN_CE;
        let new = u16::from_ne_bytes([inner.version_ihl, inner.tos]);
        inner.check = csum_replace2(inner.check, old, new);
    }
    // SAFETY: bounds-checked by ptr_at above; copied before the head moves.
    let (dst, src) = unsafe { ((*eth).dst, (*eth).src) };
    // SAFETY: helper call on the program's own context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, IPV4_HLEN as i32) } != 0 {
        return Err(());
    }
    // Pointers are invalid after the adjustment: fetch the new Ethernet header (the last 14
    // bytes of the outer IPv4 header's place).
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(())?;
    // SAFETY: bounds-checked by ptr_at.
    let eth = unsafe { &mut *eth };
    eth.set_macs(&dst, &src);
    eth.ether_type_be = ETH_P_IP_BE;
    Ok(verdict(xdp_action::XDP_PASS, DECAP_OK))
}
