//! Incremental Internet checksum updates (RFC 1624, eqn. 3: `HC' = ~(~HC + ~m + m')`).
//!
//! Values are taken exactly as they sit in the packet, read as native integers: the one's
//! complement sum is byte-order independent as long as the checksum field is read the same
//! way, so the data plane never swaps bytes to update a checksum.

/// Folds a 64-bit one's complement accumulator to 16 bits.
#[inline(always)]
pub fn csum_fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Updates checksum `check` for a 32-bit field changing from `from` to `to`.
#[inline(always)]
pub fn csum_replace4(check: u16, from: u32, to: u32) -> u16 {
    let nf = !from;
    let sum = (!check) as u64
        + (nf >> 16) as u64
        + (nf & 0xffff) as u64
        + (to >> 16) as u64
        + (to & 0xffff) as u64;
    !csum_fold(sum)
}

/// Updates checksum `check` for a 16-bit field changing from `from` to `to`.
#[inline(always)]
pub fn csum_replace2(check: u16, from: u16, to: u16) -> u16 {
    let sum = (!check) as u64 + (!from) as u64 + to as u64;
    !csum_fold(sum)
}

/// One's complement difference of a 32-bit field changing from `from` to `to`, as an
/// unfolded accumulator (`~m + m'` of RFC 1624 eqn. 3). Differences add up, so one field
/// change shared by two checksums (an address in the IPv4 header and the TCP pseudo-header)
/// is computed once, and several changes cost one fold in [`csum_apply`].
#[inline(always)]
pub fn csum_delta4(from: u32, to: u32) -> u64 {
    let nf = !from;
    (nf >> 16) as u64 + (nf & 0xffff) as u64 + (to >> 16) as u64 + (to & 0xffff) as u64
}

/// [`csum_delta4`] for a 16-bit field.
#[inline(always)]
pub fn csum_delta2(from: u16, to: u16) -> u64 {
    (!from) as u64 + to as u64
}

/// Applies an accumulated difference (a sum of [`csum_delta4`]/[`csum_delta2`] values) to
/// checksum `check`.
#[inline(always)]
pub fn csum_apply(check: u16, delta: u64) -> u16 {
    !csum_fold((!check) as u64 + delta)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Straightforward full checksum over 16-bit native words (reference for the tests).
    fn full(words: &[u16]) -> u16 {
        let sum: u64 = words.iter().map(|&w| w as u64).sum();
        !csum_fold(sum)
    }

    /// A deterministic pseudo-random u32 stream (xorshift32) for the randomized tests.
    fn xorshift(mut seed: u32) -> impl FnMut() -> u32 {
        move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        }
    }

    #[test]
    fn replace_matches_full_recompute() {
        let mut next = xorshift(0x1234_5678u32);
        for _ in 0..10_000 {
            let mut words: [u16; 10] = core::array::from_fn(|_| next() as u16);
            let check = full(&words);
            let from = (words[2] as u32) | ((words[3] as u32) << 16);
            let to = next();
            words[2] = to as u16;
            words[3] = (to >> 16) as u16;
            let want = full(&words);
            let got = csum_replace4(check, from, to);
            // 0x0000 and 0xffff are the same value in one's complement.
            assert!(
                got == want || (got ^ want) == 0xffff && (got == 0 || got == 0xffff),
                "{got:#x} vs {want:#x}"
            );
            let from2 = words[5];
            let to2 = next() as u16;
            words[5] = to2;
            let want2 = full(&words);
            let got2 = csum_replace2(want, from2, to2);
            assert!(got2 == want2 || (got2 ^ want2) == 0xffff && (got2 == 0 || got2 == 0xffff));
        }
    }

    #[test]
    fn accumulated_deltas_match_full_recompute() {
        let mut next = xorshift(0x9e37_79b9u32);
        for _ in 0..10_000 {
            let mut words: [u16; 12] = core::array::from_fn(|_| next() as u16);
            let check = full(&words);
            // Two 32-bit fields (words 0-1, 2-3) and two 16-bit fields (words 8, 9) change.
            let (a_from, b_from) = (
                (words[0] as u32) | ((words[1] as u32) << 16),
                (words[2] as u32) | ((words[3] as u32) << 16),
            );
            let (a_to, b_to) = (next(), next());
            let (c_from, d_from, c_to, d_to) = (words[8], words[9], next() as u16, next() as u16);
            words[0] = a_to as u16;
            words[1] = (a_to >> 16) as u16;
            words[2] = b_to as u16;
            words[3] = (b_to >> 16) as u16;
            words[8] = c_to;
            words[9] = d_to;
            let want = full(&words);
            let delta = csum_delta4(a_from, a_to)
                + csum_delta4(b_from, b_to)
                + csum_delta2(c_from, c_to)
                + csum_delta2(d_from, d_to);
            let got = csum_apply(check, delta);
            assert!(
                got == want || (got ^ want) == 0xffff && (got == 0 || got == 0xffff),
                "{got:#x} vs {want:#x}"
            );
            // Same as the one-field-at-a-time updates.
            let stepwise = csum_replace2(
                csum_replace2(
                    csum_replace4(csum_replace4(check, a_from, a_to), b_from, b_to),
                    c_from,
                    c_to,
                ),
                d_from,
                d_to,
            );
            assert!(got == stepwise || (got ^ stepwise) == 0xffff);
        }
    }

    #[test]
    fn fold_handles_large_carries() {
        assert_eq!(csum_fold(0xffff_ffff_ffff_ffff), 0xffff);
        assert_eq!(csum_fold(0x1_0000), 1);
        assert_eq!(csum_fold(0), 0);
    }
}
