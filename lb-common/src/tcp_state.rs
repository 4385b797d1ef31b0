//! The TCP connection-tracking state machine shared by both entries of a flow.
//!
//! [`tcp_next_state`] is the one transition function: the XDP program calls it for every
//! tracked packet, and the host unit tests below check every row of the table in
//! docs/architecture.md. A state is also the index of its idle timeout in
//! [`crate::GlobalConfig::tcp_timeouts_ns`].
//!
//! "orig" is the client -> VIP direction (the forward entry), "reply" the backend -> SNAT
//! direction (the reply entry). Without sequence-number tracking the machine is an
//! approximation, chosen so that its mistakes keep a connection rather than lose it: an ACK
//! is taken to acknowledge the FIN it follows, and any packet of the backend revives a flow
//! a (possibly spoofed) RST closed.

use crate::tcp_flags::{ACK, FIN, RST, SYN};

/// The client sent its SYN; no SYN-ACK seen yet.
pub const SYN_SENT: u8 = 0;
/// The backend answered with SYN-ACK; the client's ACK is pending.
pub const SYN_RECV: u8 = 1;
/// The handshake completed.
pub const ESTABLISHED: u8 = 2;
/// One side (`close_dir`) sent a FIN that is not yet acknowledged.
pub const FIN_WAIT: u8 = 3;
/// The first FIN was acknowledged; the other side may still send (half-close).
pub const CLOSE_WAIT: u8 = 4;
/// Both sides sent a FIN; the last ACK is pending.
pub const LAST_ACK: u8 = 5;
/// The side that closed first acknowledged the second FIN.
pub const TIME_WAIT: u8 = 6;
/// A RST was seen.
pub const CLOSE: u8 = 7;

/// Number of states (length of the timeout array).
pub const NUM_STATES: usize = 8;

/// Names of the states, indexed by state (docs, `lbctl`, test output).
pub const STATE_NAMES: [&str; NUM_STATES] = [
    "syn_sent",
    "syn_recv",
    "established",
    "fin_wait",
    "close_wait",
    "last_ack",
    "time_wait",
    "close",
];

/// Direction of a packet: client -> VIP (the forward entry's).
pub const DIR_ORIG: u8 = 0;
/// Direction of a packet: backend -> SNAT address (the reply entry's).
pub const DIR_REPLY: u8 = 1;

/// Nothing beyond the state change.
pub const EV_NONE: u8 = 0;
/// A SYN without ACK on a flow past its handshake and not closed: forwarded unchanged to the
/// flow's backend (whose kernel answers with a challenge ACK), never re-balanced.
pub const EV_SYN_ON_OPEN: u8 = 1;
/// A SYN without ACK on a flow in TIME_WAIT or CLOSE: a new connection reusing the client's
/// port. Both entries are released and the SYN is balanced afresh.
pub const EV_NEW_CONNECTION: u8 = 2;

/// Result of [`tcp_next_state`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub state: u8,
    pub close_dir: u8,
    /// `EV_*`.
    pub event: u8,
}

/// True when `state` is one of the handshake states (the flow lives in the embryonic map).
#[inline(always)]
pub const fn is_embryonic(state: u8) -> bool {
    state == SYN_SENT || state == SYN_RECV
}

/// The next state of a flow in `state` (with `close_dir`, the direction of the first FIN) on a
/// packet travelling in `dir` (`DIR_*`) with TCP `flags`.
#[inline(always)]
pub fn tcp_next_state(state: u8, close_dir: u8, dir: u8, flags: u8) -> Transition {
    let same = Transition {
        state,
        close_dir,
        event: EV_NONE,
    };
    let to = |state: u8, close_dir: u8| Transition {
        state,
        close_dir,
        event: EV_NONE,
    };
    if flags & RST != 0 {
        // In CLOSE, `close_dir` is the direction of the RST.
        return to(CLOSE, dir);
    }
    let orig = dir == DIR_ORIG;
    let bare_syn = flags & (SYN | ACK) == SYN;
    if orig && bare_syn {
        let event = match state {
            SYN_SENT | SYN_RECV => EV_NONE,
            // A RST from the client side may have been spoofed (the backend, which checks
            // its sequence number, may have kept the connection): a SYN after it follows the
            // flow to its backend, whose kernel decides. Only the backend's own RST (it
            // cannot be spoofed from outside) or a finished close frees the port for a
            // re-balanced new connection.
            TIME_WAIT => EV_NEW_CONNECTION,
            CLOSE if close_dir == DIR_REPLY => EV_NEW_CONNECTION,
            _ => EV_SYN_ON_OPEN,
        };
        return Transition { event, ..same };
    }
    let syn = flags & SYN != 0;
    let fin = flags & FIN != 0;
    let ack = flags & ACK != 0;
    let from_closer = dir == close_dir;
    match state {
        SYN_SENT if !orig && syn && ack => to(SYN_RECV, close_dir),
        SYN_RECV if orig && fin && !syn => to(FIN_WAIT, dir),
        SYN_RECV if orig && ack && !syn => to(ESTABLISHED, close_dir),
        ESTABLISHED if fin && !syn => to(FIN_WAIT, dir),
        SYN_RECV if !orig && fin && !syn => to(FIN_WAIT, dir),
        FIN_WAIT | CLOSE_WAIT if !from_closer && fin && !syn => to(LAST_ACK, close_dir),
        FIN_WAIT if !from_closer && ack && !syn => to(CLOSE_WAIT, close_dir),
        LAST_ACK if from_closer && ack && !fin && !syn => to(TIME_WAIT, close_dir),
        CLOSE if !orig && !syn => to(ESTABLISHED, close_dir),
        _ => same,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcp_flags::PSH;

    const ALL_FLAGS: [u8; 10] = [
        SYN,
        SYN | ACK,
        ACK,
        ACK | PSH,
        FIN | ACK,
        FIN,
        RST,
        RST | ACK,
        SYN | FIN,
        0,
    ];

    fn next(state: u8, close_dir: u8, dir: u8, flags: u8) -> (u8, u8, u8) {
        let t = tcp_next_state(state, close_dir, dir, flags);
        (t.state, t.close_dir, t.event)
    }

    /// The table of docs/architecture.md, written independently of the function: the expected
    /// (state, close_dir, event) for every state, close_dir, direction and flag combination.
    fn expected(state: u8, cd: u8, dir: u8, flags: u8) -> (u8, u8, u8) {
        let orig = dir == DIR_ORIG;
        let (syn, ack, fin, rst) = (
            flags & SYN != 0,
            flags & ACK != 0,
            flags & FIN != 0,
            flags & RST != 0,
        );
        if rst {
            return (CLOSE, dir, EV_NONE);
        }
        if orig && syn && !ack {
            return match state {
                SYN_SENT | SYN_RECV => (state, cd, EV_NONE),
                TIME_WAIT => (state, cd, EV_NEW_CONNECTION),
                CLOSE if cd == DIR_REPLY => (state, cd, EV_NEW_CONNECTION),
                _ => (state, cd, EV_SYN_ON_OPEN),
            };
        }
        let unchanged = (state, cd, EV_NONE);
        if syn {
            // Only the backend's SYN-ACK moves a state with SYN set.
            return if state == SYN_SENT && !orig && ack {
                (SYN_RECV, cd, EV_NONE)
            } else {
                unchanged
            };
        }
        match state {
            SYN_RECV | ESTABLISHED if fin => (FIN_WAIT, dir, EV_NONE),
            SYN_RECV if orig && ack => (ESTABLISHED, cd, EV_NONE),
            FIN_WAIT | CLOSE_WAIT if dir != cd && fin => (LAST_ACK, cd, EV_NONE),
            FIN_WAIT if dir != cd && ack => (CLOSE_WAIT, cd, EV_NONE),
            LAST_ACK if dir == cd && ack && !fin => (TIME_WAIT, cd, EV_NONE),
            CLOSE if !orig => (ESTABLISHED, cd, EV_NONE),
            _ => unchanged,
        }
    }

    #[test]
    fn every_state_direction_and_flag_combination_follows_the_table() {
        let mut checked = 0;
        for state in 0..NUM_STATES as u8 {
            for cd in [DIR_ORIG, DIR_REPLY] {
                for dir in [DIR_ORIG, DIR_REPLY] {
                    for flags in ALL_FLAGS {
                        assert_eq!(
                            next(state, cd, dir, flags),
                            expected(state, cd, dir, flags),
                            "state {} close_dir {cd} dir {dir} flags {flags:#04x}",
                            STATE_NAMES[state as usize]
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 8 * 2 * 2 * ALL_FLAGS.len());
    }

    #[test]
    fn named_rows_of_the_table() {
        let (o, r) = (DIR_ORIG, DIR_REPLY);
        // Handshake.
        assert_eq!(next(SYN_SENT, 0, o, SYN), (SYN_SENT, 0, EV_NONE));
        assert_eq!(next(SYN_SENT, 0, r, SYN | ACK), (SYN_RECV, 0, EV_NONE));
        assert_eq!(next(SYN_SENT, 0, o, ACK), (SYN_SENT, 0, EV_NONE));
        assert_eq!(next(SYN_RECV, 0, o, SYN), (SYN_RECV, 0, EV_NONE));
        assert_eq!(next(SYN_RECV, 0, r, SYN | ACK), (SYN_RECV, 0, EV_NONE));
        assert_eq!(next(SYN_RECV, 0, o, ACK), (ESTABLISHED, 0, EV_NONE));
        assert_eq!(next(SYN_RECV, 0, o, ACK | PSH), (ESTABLISHED, 0, EV_NONE));
        // The backend's ACK does not complete the client's handshake.
        assert_eq!(next(SYN_RECV, 0, r, ACK), (SYN_RECV, 0, EV_NONE));
        // Close by the client, then the backend (half-close in between).
        assert_eq!(next(ESTABLISHED, 0, o, FIN | ACK), (FIN_WAIT, o, EV_NONE));
        assert_eq!(next(FIN_WAIT, o, o, FIN | ACK), (FIN_WAIT, o, EV_NONE));
        assert_eq!(next(FIN_WAIT, o, o, ACK), (FIN_WAIT, o, EV_NONE));
        assert_eq!(next(FIN_WAIT, o, r, ACK), (CLOSE_WAIT, o, EV_NONE));
        assert_eq!(next(CLOSE_WAIT, o, r, ACK | PSH), (CLOSE_WAIT, o, EV_NONE));
        assert_eq!(next(CLOSE_WAIT, o, o, ACK), (CLOSE_WAIT, o, EV_NONE));
        assert_eq!(next(CLOSE_WAIT, o, r, FIN | ACK), (LAST_ACK, o, EV_NONE));
        assert_eq!(next(LAST_ACK, o, r, ACK), (LAST_ACK, o, EV_NONE));
        assert_eq!(next(LAST_ACK, o, o, ACK), (TIME_WAIT, o, EV_NONE));
        // Close by the backend; FIN+ACK answered at once (FIN_WAIT -> LAST_ACK).
        assert_eq!(next(ESTABLISHED, o, r, FIN | ACK), (FIN_WAIT, r, EV_NONE));
        assert_eq!(next(FIN_WAIT, r, o, FIN | ACK), (LAST_ACK, r, EV_NONE));
        assert_eq!(next(LAST_ACK, r, r, ACK), (TIME_WAIT, r, EV_NONE));
        assert_eq!(next(SYN_RECV, 0, r, FIN | ACK), (FIN_WAIT, r, EV_NONE));
        // RST from anywhere closes; the backend's next packet revives the flow.
        for s in 0..NUM_STATES as u8 {
            assert_eq!(next(s, 0, o, RST).0, CLOSE);
            assert_eq!(next(s, 0, r, RST | ACK).0, CLOSE);
        }
        assert_eq!(next(CLOSE, 0, r, ACK), (ESTABLISHED, 0, EV_NONE));
        assert_eq!(next(CLOSE, 0, o, ACK), (CLOSE, 0, EV_NONE));
        assert_eq!(next(CLOSE, 0, r, SYN | ACK), (CLOSE, 0, EV_NONE));
        // SYN on an open flow vs a new connection.
        for s in [ESTABLISHED, FIN_WAIT, CLOSE_WAIT, LAST_ACK] {
            assert_eq!(next(s, r, o, SYN), (s, r, EV_SYN_ON_OPEN));
        }
        assert_eq!(
            next(TIME_WAIT, 0, o, SYN),
            (TIME_WAIT, 0, EV_NEW_CONNECTION)
        );
        // After the backend's RST a SYN is a new connection; after the client side's (which
        // may be spoofed) it follows the flow.
        assert_eq!(next(CLOSE, r, o, SYN), (CLOSE, r, EV_NEW_CONNECTION));
        assert_eq!(next(CLOSE, o, o, SYN), (CLOSE, o, EV_SYN_ON_OPEN));
        // A RST records its direction.
        assert_eq!(next(ESTABLISHED, o, r, RST), (CLOSE, r, EV_NONE));
        assert_eq!(next(ESTABLISHED, r, o, RST | ACK), (CLOSE, o, EV_NONE));
        // TIME_WAIT ignores everything but RST and a new SYN.
        assert_eq!(next(TIME_WAIT, 0, r, ACK), (TIME_WAIT, 0, EV_NONE));
        assert_eq!(next(TIME_WAIT, 0, o, FIN | ACK), (TIME_WAIT, 0, EV_NONE));
    }

    #[test]
    fn embryonic_states() {
        assert!(is_embryonic(SYN_SENT) && is_embryonic(SYN_RECV));
        for s in ESTABLISHED..NUM_STATES as u8 {
            assert!(!is_embryonic(s));
        }
    }
}
