//! The in-XDP SYN retry: what the data plane keeps of a client's SYN so that a backend's RST
//! answering it can be turned into the same SYN toward another backend (docs/architecture.md,
//! "SYN retry").
//!
//! A new flow's reply entry (backend -> SNAT) forwards nothing until the backend's SYN-ACK, so
//! its next-hop cache (`FlowEntry::next_hop_*`, 16 bytes) is empty while the flow is in
//! SYN_SENT. It holds the client's SYN instead ([`SynSaved`]), an explicit overlay:
//!
//! | field | bytes | holds |
//! |---|---|---|
//! | `next_hop_ifindex` | 4 | TSval of the timestamp option (host order) |
//! | `next_hop_max_len` | 2 | 0: the cache reads as empty, so a FIB lookup never trusts the overlay |
//! | `next_hop_dst_mac` | 6 | MSS (2, network order), window (2, network order), window scale, IP TOS |
//! | `next_hop_src_mac` | 6 | ISN (4, network order), retries so far, the SYN's ECE/CWR flag bits |
//!
//! `FlowEntry::syn_opts` marks the overlay ([`SYN_OPT_SAVED`]) and says which options the SYN
//! carried. The first FIB answer cached in the entry (the backend's SYN-ACK, or a pure ACK it
//! sends in SYN_SENT) overwrites the overlay and clears `syn_opts`, so an entry never holds
//! both. A SYN with an option lb cannot rebuild (anything but MSS, window scale,
//! SACK-permitted, timestamps, NOP and EOL) or with payload is not kept: its refusal falls
//! back to the client's own retransmission.

use crate::FlowEntry;

/// `FlowEntry::syn_opts`: the overlay holds a SYN.
pub const SYN_OPT_SAVED: u8 = 0x80;
/// The SYN carried an MSS option.
pub const SYN_OPT_MSS: u8 = 0x01;
/// The SYN carried a window-scale option.
pub const SYN_OPT_WSCALE: u8 = 0x02;
/// The SYN carried SACK-permitted.
pub const SYN_OPT_SACK_PERM: u8 = 0x04;
/// The SYN carried a timestamp option.
pub const SYN_OPT_TIMESTAMP: u8 = 0x08;

/// Retries of one connection at most: two refusing backends in a row (a rolling restart)
/// still cost the client nothing; after that its own SYN retransmission takes over, balanced
/// away from every backend that refused meanwhile (each refusal raised a suspicion).
pub const MAX_SYN_RETRIES: u8 = 2;

/// TCP flag bits kept from the SYN besides SYN itself (ECN negotiation, RFC 3168).
pub const SYN_KEPT_FLAGS: u8 = 0x40 | 0x80;

/// Whether a RST from the backend on a flow in SYN_SENT answers the SYN lb sent (RFC 793,
/// SYN-SENT: a RST is acceptable only with an ACK that acknowledges the SYN; any other is
/// dropped and the connection attempt goes on). `flags` and `ack` (host order) are the RST's;
/// `kept_isn` the ISN kept in the reply entry ([`SynSaved::kept_isn`]; `None` when the SYN
/// was not kept, e.g. it carried an option lb cannot rebuild: then any ACK is taken as
/// acceptable). A RST that fails this belongs to an older connection on the backend 4-tuple
/// (a stale RST on a re-used SNAT port) and must neither end the new flow nor make the
/// backend suspect.
#[inline(always)]
pub fn rst_answers_syn(flags: u8, ack: u32, kept_isn: Option<u32>) -> bool {
    flags & crate::tcp_flags::ACK != 0
        && match kept_isn {
            Some(isn) => ack == isn.wrapping_add(1),
            None => true,
        }
}

/// The client's SYN as kept for a retry. Sizes are host order; `opts` is `FlowEntry::syn_opts`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynSaved {
    /// `SYN_OPT_*` bits ([`SYN_OPT_SAVED`] set when valid).
    pub opts: u8,
    /// Initial sequence number of the client.
    pub isn: u32,
    pub mss: u16,
    /// The SYN's window (never scaled).
    pub window: u16,
    pub wscale: u8,
    pub tsval: u32,
    /// IPv4 TOS byte of the SYN.
    pub tos: u8,
    /// [`SYN_KEPT_FLAGS`] bits of the SYN.
    pub flags: u8,
    /// Retries done so far on this connection.
    pub retries: u8,
}

impl SynSaved {
    /// Writes the overlay into the (reply) entry `e`. Without a branch (the verifier checks
    /// everything after it once per distinct path): an unsaved SYN is all zeroes, so it
    /// writes `syn_opts` = 0 and an empty cache.
    #[inline(always)]
    pub fn write_to(&self, e: &mut FlowEntry) {
        let [m0, m1] = self.mss.to_be_bytes();
        let [w0, w1] = self.window.to_be_bytes();
        let [i0, i1, i2, i3] = self.isn.to_be_bytes();
        e.next_hop_ifindex = self.tsval;
        e.next_hop_max_len = 0;
        e.next_hop_dst_mac = [m0, m1, w0, w1, self.wscale, self.tos];
        e.next_hop_src_mac = [i0, i1, i2, i3, self.retries, self.flags];
        e.syn_opts = self.opts;
    }

    /// The ISN of the SYN kept in `e`, if its overlay holds one ([`SynSaved::read_from`]'s
    /// condition, without building the rest).
    #[inline(always)]
    pub fn kept_isn(e: &FlowEntry) -> Option<u32> {
        if e.syn_opts & SYN_OPT_SAVED == 0 || e.next_hop_max_len != 0 {
            return None;
        }
        let s = e.next_hop_src_mac;
        Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }

    /// The SYN kept in `e`, if its overlay holds one (marked and the cache empty).
    #[inline(always)]
    pub fn read_from(e: &FlowEntry) -> Option<SynSaved> {
        if e.syn_opts & SYN_OPT_SAVED == 0 || e.next_hop_max_len != 0 {
            return None;
        }
        let d = e.next_hop_dst_mac;
        let s = e.next_hop_src_mac;
        Some(SynSaved {
            opts: e.syn_opts,
            isn: u32::from_be_bytes([s[0], s[1], s[2], s[3]]),
            mss: u16::from_be_bytes([d[0], d[1]]),
            window: u16::from_be_bytes([d[2], d[3]]),
            wscale: d[4],
            tsval: e.next_hop_ifindex,
            tos: d[5],
            flags: s[5],
            retries: s[4],
        })
    }

    /// The TCP options of the rebuilt SYN in Linux's order and padding (MSS; SACK-permitted
    /// and timestamps, or NOP NOP timestamps; NOP window scale; NOP NOP SACK-permitted without
    /// timestamps), as up to five 32-bit words holding the wire bytes (`from_ne_bytes`), and
    /// how many words are used.
    #[inline(always)]
    pub fn option_words(&self) -> ([u32; 5], usize) {
        let mut w = [0u32; 5];
        let mut n = 0;
        let o = self.opts;
        if o & SYN_OPT_MSS != 0 {
            let [a, b] = self.mss.to_be_bytes();
            put(&mut w, &mut n, [2, 4, a, b]);
        }
        if o & SYN_OPT_TIMESTAMP != 0 {
            let first = if o & SYN_OPT_SACK_PERM != 0 {
                [4, 2]
            } else {
                [1, 1]
            };
            put(&mut w, &mut n, [first[0], first[1], 8, 10]);
            put(&mut w, &mut n, self.tsval.to_be_bytes());
            // TSecr: a SYN echoes nothing.
            put(&mut w, &mut n, [0; 4]);
        }
        if o & SYN_OPT_WSCALE != 0 {
            put(&mut w, &mut n, [1, 3, 3, self.wscale]);
        }
        if o & SYN_OPT_SACK_PERM != 0 && o & SYN_OPT_TIMESTAMP == 0 {
            put(&mut w, &mut n, [1, 1, 4, 2]);
        }
        (w, n)
    }
}

/// Appends the option word `bytes` to `w` (without a panicking index: at most five words are
/// ever appended, which the compiler cannot see).
#[inline(always)]
fn put(w: &mut [u32; 5], n: &mut usize, bytes: [u8; 4]) {
    if let Some(slot) = w.get_mut(*n) {
        *slot = u32::from_ne_bytes(bytes);
        *n += 1;
    }
}

/// Reads the SYN options of `words` 32-bit words (`words` <= 10), word `k` being `word(k)`
/// (`None` when it cannot be read): `Some((SYN_OPT_* bits without SAVED, mss, wscale,
/// tsval))`, or `None` when the list is not one lb can rebuild.
///
/// The options are read a word at a time, as every common stack lays them out (Linux and
/// Android, Windows, macOS, FreeBSD pad with NOPs so each option or NOP-padded pair starts a
/// word): a word is EOL, four NOPs, MSS, NOP+WS, WS+NOP, WS+EOL, NOP NOP SACK-permitted,
/// SACK-permitted+NOP NOP or +EOL, or NOP NOP / SACK-permitted followed by a timestamp
/// option (which takes the next two words). Anything else, an unknown option included, is not
/// kept. A word-wise loop keeps the verifier's walk short (a byte-wise one, with its
/// data-dependent position, exceeded the kernel's 1M instruction budget here).
#[inline(always)]
pub fn parse_options(
    word: impl Fn(usize) -> Option<[u8; 4]>,
    words: usize,
) -> Option<(u8, u16, u8, u32)> {
    let (mut bits, mut mss, mut wscale, mut tsval) = (0u8, 0u16, 0u8, 0u32);
    let mut k = 0usize;
    while k < 10 {
        if k >= words {
            break;
        }
        let w = word(k)?;
        k += 1;
        match w {
            [0, _, _, _] => break,
            [1, 1, 1, 1] => {}
            [2, 4, a, b] => {
                bits |= SYN_OPT_MSS;
                mss = u16::from_be_bytes([a, b]);
            }
            [1, 3, 3, s] | [3, 3, s, 1] => {
                bits |= SYN_OPT_WSCALE;
                wscale = s;
            }
            [3, 3, s, 0] => {
                bits |= SYN_OPT_WSCALE;
                wscale = s;
                break;
            }
            [1, 1, 4, 2] | [4, 2, 1, 1] => bits |= SYN_OPT_SACK_PERM,
            [4, 2, 0, 0] => {
                bits |= SYN_OPT_SACK_PERM;
                break;
            }
            [x, y, 8, 10] if (x == 1 && y == 1) || (x == 4 && y == 2) => {
                if x == 4 {
                    bits |= SYN_OPT_SACK_PERM;
                }
                if k + 2 > words {
                    return None;
                }
                bits |= SYN_OPT_TIMESTAMP;
                tsval = u32::from_be_bytes(word(k)?);
                k += 2;
            }
            _ => return None,
        }
    }
    Some((bits, mss, wscale, tsval))
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::vec::Vec;

    fn parse(opts: &[u8]) -> Option<(u8, u16, u8, u32)> {
        assert_eq!(opts.len() % 4, 0);
        parse_options(
            |k| opts.get(k * 4..k * 4 + 4).map(|w| [w[0], w[1], w[2], w[3]]),
            opts.len() / 4,
        )
    }

    fn wire(words: &[u32]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_ne_bytes()).collect()
    }

    const ALL: u8 = SYN_OPT_MSS | SYN_OPT_SACK_PERM | SYN_OPT_TIMESTAMP | SYN_OPT_WSCALE;

    #[test]
    fn only_a_rst_acknowledging_the_syn_answers_it() {
        use crate::tcp_flags::{ACK, RST};
        let isn = u32::MAX; // ISN + 1 wraps to 0
        assert!(rst_answers_syn(RST | ACK, 0, Some(isn)));
        assert!(!rst_answers_syn(RST | ACK, 1, Some(isn)), "ISN + 2");
        assert!(!rst_answers_syn(RST | ACK, isn, Some(isn)), "ISN itself");
        assert!(!rst_answers_syn(RST, 0, Some(isn)), "no ACK");
        assert!(!rst_answers_syn(RST, 0, None), "no ACK, SYN not kept");
        assert!(
            rst_answers_syn(RST | ACK, 12345, None),
            "SYN not kept: any ACK"
        );
    }

    #[test]
    fn kept_isn_matches_read_from() {
        let mut e = FlowEntry::default();
        assert_eq!(SynSaved::kept_isn(&e), None);
        let s = SynSaved {
            opts: SYN_OPT_SAVED | SYN_OPT_MSS,
            isn: 0xdead_beef,
            mss: 1460,
            retries: 1,
            ..SynSaved::default()
        };
        s.write_to(&mut e);
        assert_eq!(SynSaved::kept_isn(&e), Some(0xdead_beef));
        assert_eq!(
            SynSaved::read_from(&e).map(|r| r.isn),
            SynSaved::kept_isn(&e)
        );
        e.next_hop_max_len = 60; // the cache now holds a next hop, not the SYN
        assert_eq!(SynSaved::kept_isn(&e), None);
    }

    #[test]
    fn linux_syn_options_parse_and_rebuild_identically() {
        // Linux: MSS 1460, SACK_PERM, TS (val 0x01020304), NOP, WS 7.
        let opts = [
            2, 4, 5, 180, 4, 2, 8, 10, 1, 2, 3, 4, 0, 0, 0, 0, 1, 3, 3, 7,
        ];
        let (bits, mss, ws, ts) = parse(&opts).unwrap();
        assert_eq!(bits, ALL);
        assert_eq!((mss, ws, ts), (1460, 7, 0x0102_0304));
        let s = SynSaved {
            opts: bits | SYN_OPT_SAVED,
            mss,
            wscale: ws,
            tsval: ts,
            ..SynSaved::default()
        };
        let (w, n) = s.option_words();
        assert_eq!(wire(&w[..n]), opts);
    }

    #[test]
    fn other_stacks_and_subsets() {
        // Windows: MSS, NOP, WS, NOP, NOP, SACK_PERM (rebuilt identically).
        let win = [2, 4, 5, 180, 1, 3, 3, 8, 1, 1, 4, 2];
        let (bits, _, ws, _) = parse(&win).unwrap();
        assert_eq!(bits, SYN_OPT_MSS | SYN_OPT_WSCALE | SYN_OPT_SACK_PERM);
        assert_eq!(ws, 8);
        let s = SynSaved {
            opts: bits | SYN_OPT_SAVED,
            mss: 1460,
            wscale: 8,
            ..SynSaved::default()
        };
        let (w, n) = s.option_words();
        assert_eq!(wire(&w[..n]), win.to_vec());
        // macOS: MSS, NOP WS, NOP NOP TS, SACK_PERM EOL.
        let mac = [
            2, 4, 5, 180, 1, 3, 3, 6, 1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 4, 2, 0, 0,
        ];
        assert_eq!(parse(&mac), Some((ALL, 1460, 6, 1)));
        // FreeBSD: MSS, NOP WS, SACK_PERM TS.
        let bsd = [
            2, 4, 5, 180, 1, 3, 3, 6, 4, 2, 8, 10, 0, 0, 0, 2, 0, 0, 0, 0,
        ];
        assert_eq!(parse(&bsd), Some((ALL, 1460, 6, 2)));
        // No options; timestamps without SACK; EOL ends the list.
        assert_eq!(parse(&[]), Some((0, 0, 0, 0)));
        let t = SynSaved {
            opts: SYN_OPT_SAVED | SYN_OPT_TIMESTAMP,
            tsval: 9,
            ..SynSaved::default()
        };
        let (w, n) = t.option_words();
        assert_eq!(
            wire(&w[..n]),
            [1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 0].to_vec()
        );
        assert_eq!(
            parse(&[2, 4, 1, 0, 0, 9, 9, 9, 7, 7, 7, 7]),
            Some((SYN_OPT_MSS, 256, 0, 0))
        );
        assert_eq!(
            parse(&[1, 1, 1, 1, 3, 3, 2, 0]),
            Some((SYN_OPT_WSCALE, 0, 2, 0))
        );
    }

    #[test]
    fn unknown_malformed_or_unaligned_options_are_not_kept() {
        for opts in [
            &[34u8, 2, 1, 1][..],                       // TFO cookie request
            &[19, 18, 0, 0][..],                        // MD5 signature
            &[2, 3, 5, 1][..],                          // MSS with the wrong length
            &[1, 1, 8, 10, 0, 0, 0, 1][..],             // TS past the block
            &[1, 2, 4, 5, 180, 1, 1, 1][..],            // MSS not word aligned
            &[8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1][..], // TS at a word start
        ] {
            assert_eq!(parse(opts), None, "{opts:?}");
        }
        // A word that cannot be read.
        assert_eq!(parse_options(|_| None, 1), None);
    }

    #[test]
    fn overlay_round_trip_and_guard() {
        let s = SynSaved {
            opts: SYN_OPT_SAVED | SYN_OPT_MSS | SYN_OPT_TIMESTAMP,
            isn: 0xdead_beef,
            mss: 1400,
            window: 64240,
            wscale: 7,
            tsval: 0x1234_5678,
            tos: 0x10,
            flags: 0xc0,
            retries: 1,
        };
        let mut e = FlowEntry::default();
        s.write_to(&mut e);
        assert_eq!(e.next_hop_max_len, 0);
        assert_eq!(SynSaved::read_from(&e), Some(s));
        // A cached next hop (non-zero length) or no mark: nothing kept.
        let mut cached = e;
        cached.next_hop_max_len = 60;
        assert_eq!(SynSaved::read_from(&cached), None);
        let mut unmarked = e;
        unmarked.syn_opts = 0;
        assert_eq!(SynSaved::read_from(&unmarked), None);
        // Writing an unsaved SYN clears the mark and leaves an empty cache.
        SynSaved::default().write_to(&mut e);
        assert_eq!(e, FlowEntry::default());
    }
}
