//! CRC-32C (Castagnoli), the checksum of data-file payloads in meta files and
//! frames. Each store's part of a block has its CRC computed once, at commit,
//! while its records are still in the cache; a block's payload checksum is
//! then combined from its stores' without reading the records again.

use crc_fast::CrcAlgorithm::Crc32Iscsi;

/// CRC-32C continued over `data`: `crc` is the checksum of the bytes before
/// `data` (0 for none), so `crc32c_append(crc32c_append(0, a), b)` is the
/// checksum of `a` followed by `b`.
///
/// Computed by `crc-fast`, which picks at run time the widest carry-less
/// multiply the CPU has (AVX-512 VPCLMULQDQ, else PCLMULQDQ with the SSE4.2
/// `crc32` instruction, else tables).
#[inline]
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    // crc-fast's state is the register before the final xor (CRC-32C's
    // xorout is all ones), so continuing a finished checksum starts from
    // its complement.
    let mut digest = crc_fast::Digest::new_with_init_state(Crc32Iscsi, u64::from(!crc));
    digest.update(data);
    digest.finalize() as u32
}

/// The CRC-32C of `a` followed by `b`, from `crc_a` (of `a`), `crc_b` (of
/// `b`) and the length of `b`, without the bytes: `crc_a` times
/// x^(8·len_b) modulo the polynomial, plus `crc_b` (zlib's
/// `crc32_combine`, for the Castagnoli polynomial). About 0.1 µs.
#[inline]
pub fn crc32c_combine(crc_a: u32, crc_b: u32, len_b: usize) -> u32 {
    if len_b == 0 {
        return crc_a;
    }
    // Bytes to bits: x^(len_b · 2^3).
    multmodp(x2nmodp(len_b as u64, 3), crc_a) ^ crc_b
}

/// The Castagnoli polynomial, bit-reflected (CRC-32C is a reflected CRC).
const POLY: u32 = 0x82f6_3b78;

/// a(x)·b(x) modulo the polynomial, in the reflected representation
/// (x^0 is the top bit).
const fn multmodp(a: u32, mut b: u32) -> u32 {
    let mut m = 1u32 << 31;
    let mut p = 0u32;
    loop {
        if a & m != 0 {
            p ^= b;
            if a & (m - 1) == 0 {
                break;
            }
        }
        m >>= 1;
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
    }
    p
}

/// x^(2^k) modulo the polynomial, for every k `x2nmodp` can reach (a
/// length of up to 2^64 bytes is 2^67 bits).
const X2N: [u32; 67] = {
    let mut table = [0u32; 67];
    let mut p = 1u32 << 30; // x^1
    table[0] = p;
    let mut k = 1;
    while k < 67 {
        p = multmodp(p, p);
        table[k] = p;
        k += 1;
    }
    table
};

/// x^(n·2^k) modulo the polynomial.
fn x2nmodp(mut n: u64, mut k: usize) -> u32 {
    let mut p = 1u32 << 31; // x^0
    while n != 0 {
        if n & 1 != 0 {
            p = multmodp(X2N[k], p);
        }
        n >>= 1;
        k += 1;
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CRC-32C check values of RFC 3720 (iSCSI), appendix B.4, and the
    /// catalogue's "123456789".
    #[test]
    fn known_values() {
        let inc: Vec<u8> = (0..32).collect();
        let dec: Vec<u8> = (0..32).rev().collect();
        assert_eq!(crc32c_append(0, b""), 0);
        assert_eq!(crc32c_append(0, b"123456789"), 0xe306_9283);
        assert_eq!(crc32c_append(0, &[0; 32]), 0x8a91_36aa);
        assert_eq!(crc32c_append(0, &[0xff; 32]), 0x62a8_ab43);
        assert_eq!(crc32c_append(0, &inc), 0x46dd_794e);
        assert_eq!(crc32c_append(0, &dec), 0x113f_db5c);
        assert_eq!(
            crc32c_combine(crc32c_append(0, b"1234"), crc32c_append(0, b"56789"), 5),
            0xe306_9283
        );
    }

    /// Lengths far beyond the proptest's, against crc-fast's own (slower)
    /// combination.
    #[test]
    fn combine_long_lengths() {
        for len in [1usize << 20, (1 << 31) + 12_345, (1 << 40) + 7, usize::MAX] {
            for (a, b) in [(0u32, 0u32), (0xdead_beef, 0x1234_5678), (u32::MAX, 1)] {
                let reference =
                    crc_fast::checksum_combine(Crc32Iscsi, u64::from(a), u64::from(b), len as u64)
                        as u32;
                assert_eq!(crc32c_combine(a, b, len), reference, "len {len}");
            }
        }
    }

    proptest::proptest! {
        /// Same checksum as the `crc32c` crate (the implementation this
        /// replaced, so files written before still verify), whatever the
        /// length and alignment; appending in two pieces, or combining the
        /// two pieces' checksums, is the same as one pass.
        #[test]
        fn matches_reference(
            data in proptest::collection::vec(proptest::num::u8::ANY, 0..5000),
            skip in 0usize..64,
            split in 0usize..5000,
            start in proptest::num::u32::ANY,
        ) {
            let data = &data[skip.min(data.len())..];
            let split = split.min(data.len());
            let (a, b) = data.split_at(split);
            let whole = crc32c::crc32c(data);
            proptest::prop_assert_eq!(crc32c_append(0, data), whole);
            proptest::prop_assert_eq!(crc32c_append(crc32c_append(0, a), b), whole);
            proptest::prop_assert_eq!(
                crc32c_combine(crc32c_append(0, a), crc32c_append(0, b), b.len()),
                whole
            );
            proptest::prop_assert_eq!(crc32c_append(start, data), crc32c::crc32c_append(start, data));
        }
    }
}
