//! AVX-512 VNNI kernels: the QK256 integer dot product with `vpdpbusd`.
//!
//! Both kernels must equal [`scalar::grouped_dot`](super::scalar::grouped_dot) bit for bit;
//! `tests/quant_kernels.rs` holds them together. Activation quantization stays the AVX2 one
//! (a VNNI CPU has AVX2 and FMA; the token carries that proof).
//!
//! # The QK256 dot with `vpdpbusd`
//!
//! One 32-byte chunk of weights holds 128 codes: byte `b` has elements `b`, `b+32`, `b+64`,
//! `b+96` in bits 7–6, 5–4, 3–2, 1–0, lining up with four contiguous 32-byte runs of
//! activations `a0..a3` (see `avx2.rs`). `vpdpbusd` multiplies unsigned code bytes by signed
//! activation bytes and adds each four adjacent products straight into an i32 lane: there is
//! no int16 stage to wrap (the reference's AVX2 kernel wraps its int16 sums on extreme
//! inputs; these cannot), and no widening step.
//!
//! - Rows kernel ([`qk256_dots`], GEMV): four masks and no shift: `w & 0xC0` = 64·c0,
//!   `w & 0x30` = 16·c1, `w & 0x0C` = 4·c2, `w & 0x03` = c3, each an unsigned byte of at most
//!   192, so `vpdpbusd`'s u8 × s8 products stay exact; four `vpdpbusd` into one accumulator
//!   per plane, shifted right by 6, 4, 2 (exactly: every lane is a multiple) when a group
//!   ends. Eight vector operations per chunk and row instead of the nine of the AVX2-style
//!   extraction (a shift and four masks): on AMD Zen 4 the masks compete with `vpdpbusd` for
//!   the same pipes, so each one saved counts (2560×2560 in cache: 45.8 → 41.5 µs).
//! - Tile kernel ([`qk256_dots_tile`], batched products): `R` rows × `C` columns of
//!   accumulators; per chunk each weight row is loaded and its codes extracted once (three
//!   shifts, four masks) for all columns, and each activation run loaded once for all rows,
//!   so the loop is bound by `vpdpbusd`, not by loads.
//!
//! A lane gains at most 4·192·128 = 98304 in magnitude per chunk (the rows kernel's 64·c0
//! plane; the tile kernel's lanes less), so the lanes are folded into the (wrapping, like the
//! scalar oracle) i32 totals every [`GROUP_CHUNKS`] chunks, long before one could overflow.
//!
//! The tile kernel and the helpers are the ones `vnni256.rs` writes once for this and the
//! AVX-VNNI instruction set (`avxvnni.rs`).
//!
//! # Why 256-bit vectors
//!
//! The instructions are the EVEX (AVX-512 VL) forms on 256-bit registers, which also give
//! the 32 registers the tile needs. A 512-bit version (the 32 weight bytes broadcast to both
//! halves, `A01 = a0|a1` and `A23 = a2|a3` as 64-byte loads, masks `12|3` after one shift:
//! five 512-bit operations per chunk and row) measured 28–29 GB/s on AMD Zen 4 (which splits
//! 512-bit operations in two), against 36–41 GB/s for this one and 25–27 GB/s for AVX2;
//! extracting codes with GFNI (`vgf2p8affineqb`) instead of shifts and masks was slower too.

#![allow(unsafe_code)]

use std::arch::x86_64::*;

use super::avx2::{Avx2Token, PREFETCH_BYTES};

use super::vnni256::{vnni256_kernels, GROUP_CHUNKS};

vnni256_kernels!("avx512f,avx512bw,avx512vl,avx512vnni", _mm256_dpbusd_epi32);

/// Proof that this CPU has AVX-512 F/BW/VL/VNNI, and AVX2 and FMA (for activation
/// quantization): only [`detect`](Self::detect) creates one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VnniToken(Avx2Token);

impl VnniToken {
    pub(crate) fn detect() -> Option<Self> {
        let avx2 = Avx2Token::detect()?;
        (is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni"))
        .then_some(VnniToken(avx2))
    }

    /// The AVX2 proof this token carries (activation quantization uses the AVX2 kernel).
    pub(crate) fn avx2(self) -> Avx2Token {
        self.0
    }
}

/// `Σ c·q` (codes 0..3 as stored) for `R` weight rows in the x86 I2_S layout against one
/// activation row `q`.
///
/// # Panics
/// If a row's byte length times 4 differs from `q.len()`, or `q.len()` is not a multiple of 128.
#[inline]
pub(crate) fn qk256_dots<const R: usize>(_t: VnniToken, rows: [&[u8]; R], q: &[i8]) -> [i32; R] {
    let chunks = super::layout::qk256_row_chunks(&rows, q);
    // SAFETY: the token proves AVX-512 F/BW/VL/VNNI are available; every row holds `q.len() / 4`
    // bytes and `q` holds `128 · (q.len() / 128)` values, which is all the kernel reads.
    unsafe { rows_kernel::<R>(rows.map(|r| r.as_ptr()), q.as_ptr(), chunks) }
}

/// `emit(i, sums)` for every row `i` of `R` stretches of whole rows (`q.len() / 4` bytes
/// each, all stretches of one length): `sums[k]` is `Σ c·q` of row `i` of stretch `k`, as
/// [`qk256_dots`] gives it. The loop over rows runs inside the kernel: the checks, the call and
/// the slicing are paid once per product, not once per four rows (with VNNI, 2560×2560 in
/// cache, one thread: 41.9 → 37.0 µs a product).
///
/// # Panics
/// As [`qk256_stretch_rows`](super::layout::qk256_stretch_rows).
#[inline]
pub(crate) fn qk256_dots_stretches<const R: usize>(
    _t: VnniToken,
    stretches: [&[u8]; R],
    q: &[i8],
    mut emit: impl FnMut(usize, [i32; R]),
) {
    let rows = super::layout::qk256_stretch_rows(&stretches, q);
    // SAFETY: the token proves AVX-512 VL/VNNI is available; every stretch holds `rows` rows of
    // `q.len() / 4` bytes and `q` holds `128 · (q.len() / 128)` values, which is all the
    // kernel reads.
    unsafe {
        stretches_kernel::<R>(stretches.map(|s| s.as_ptr()), rows, q.as_ptr(), q.len() / 128, &mut emit)
    }
}

/// `Σ c·q` of `R` weight rows against `C` activation rows (columns): `out[r][c]`.
///
/// # Panics
/// If a row's byte length times 4 differs from a column's length, or that length is not a
/// multiple of 128.
#[inline]
pub(crate) fn qk256_dots_tile<const R: usize, const C: usize>(
    _t: VnniToken,
    rows: [&[u8]; R],
    qs: [&[i8]; C],
) -> [[i32; C]; R] {
    let chunks = super::layout::qk256_tile_chunks(&rows, &qs);
    // SAFETY: the token proves AVX-512 VL/VNNI are available; every row holds `n / 4` bytes
    // and every column `n` values, n = 128 · chunks, which is all the kernel reads.
    unsafe { tile_kernel::<R, C>(rows.map(|r| r.as_ptr()), qs.map(|q| q.as_ptr()), chunks) }
}

/// The rows kernel over `rows` rows of each of `R` stretches, row by row.
///
/// # Safety
/// AVX-512 VL/VNNI must be available; each `w[k]` must be valid for `rows · 32 · chunks` bytes and `q`
/// for `128 · chunks` bytes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn stretches_kernel<const R: usize>(
    mut w: [*const u8; R],
    rows: usize,
    q: *const i8,
    chunks: usize,
    emit: &mut impl FnMut(usize, [i32; R]),
) {
    for i in 0..rows {
        // SAFETY: row i of every stretch, 32·chunks bytes at w[k], and the chunks of q are in
        // bounds (caller contract).
        emit(i, unsafe { rows_kernel::<R>(w, q, chunks) });
        for p in &mut w {
            *p = p.wrapping_add(32 * chunks);
        }
    }
}

/// `R` rows × one column (see the module docs).
///
/// # Safety
/// AVX-512 VL/VNNI must be available; each `w[r]` must be valid for `32 · chunks` bytes and
/// `q` for `128 · chunks` bytes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn rows_kernel<const R: usize>(w: [*const u8; R], q: *const i8, chunks: usize) -> [i32; R] {
    // The four code planes in place: `w & 0xC0` = 64·c0, `w & 0x30` = 16·c1, `w & 0x0C` = 4·c2,
    // `w & 0x03` = c3 (no shift: each masked byte is at most 192, so `vpdpbusd`'s u8 × s8
    // products stay exact), each plane summed in its own accumulator.
    let masks = [0xC0u8, 0x30, 0x0C, 0x03].map(|m| _mm256_set1_epi8(m as i8));
    let mut sums = [0i32; R];
    let mut start = 0;
    while start < chunks {
        let end = (start + GROUP_CHUNKS).min(chunks);
        let mut acc = [[_mm256_setzero_si256(); 4]; R];
        for ch in start..end {
            // SAFETY: ch < chunks: the chunk's 128 activations at 128·ch are in bounds (caller
            // contract).
            let a = unsafe { load_128_i8(q.add(128 * ch)) };
            for r in 0..R {
                // SAFETY: the 32 weight bytes at 32·ch of row r are in bounds (caller contract).
                let wv = unsafe { _mm256_loadu_si256(w[r].add(32 * ch) as *const __m256i) };
                _mm_prefetch::<_MM_HINT_T0>(w[r].wrapping_add(32 * ch + PREFETCH_BYTES) as *const i8);
                for k in 0..4 {
                    acc[r][k] = _mm256_dpbusd_epi32(acc[r][k], _mm256_and_si256(wv, masks[k]), a[k]);
                }
            }
        }
        // Every lane of plane k is a multiple of 4^(3−k): the shifts are exact.
        let x: [__m256i; R] = std::array::from_fn(|r| {
            _mm256_add_epi32(
                _mm256_add_epi32(_mm256_srai_epi32::<6>(acc[r][0]), _mm256_srai_epi32::<4>(acc[r][1])),
                _mm256_add_epi32(_mm256_srai_epi32::<2>(acc[r][2]), acc[r][3]),
            )
        });
        // Four rows' lanes summed at once where there are four (short rows make this count).
        let mut r = 0;
        while r + 4 <= R {
            let s4 = hsum4_i32([x[r], x[r + 1], x[r + 2], x[r + 3]]);
            for (k, s) in s4.into_iter().enumerate() {
                sums[r + k] = sums[r + k].wrapping_add(s);
            }
            r += 4;
        }
        for r in r..R {
            sums[r] = sums[r].wrapping_add(hsum_i32(x[r]));
        }
        start = end;
    }
    sums
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::layout::X86_GROUP_BYTES;
    use crate::quant::scalar::grouped_dot;

    /// Bytes of a small xorshift stream (any code, 3 included).
    fn bytes(seed: u64, n: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    /// The GEMV kernels of AVX-VNNI (`avxvnni.rs`) are the source `vnni256.rs` writes once;
    /// compiled here with the AVX-512 VL `vpdpbusd` (same operation), they equal the scalar
    /// oracle: random codes and activations, every code 3 against −128 and 127, rows that end a
    /// group early, exactly and late, and stretches of several rows. So the AVX-VNNI kernel's
    /// logic is tested on a CPU without AVX-VNNI; where it runs, `tests/quant_kernels.rs`
    /// tests the kernel itself.
    #[test]
    fn the_avxvnni_rows_source_equals_the_oracle() {
        if VnniToken::detect().is_none() {
            eprintln!("no AVX-512 VNNI here: the AVX-VNNI source is tested where either runs");
            return;
        }
        for (case, chunks) in [1usize, 2, 5, 20, 54, 4095, 4096, 4097].into_iter().enumerate() {
            let cols = 128 * chunks;
            let rows = 2;
            let random = bytes(case as u64 + 1, 4 * rows * cols / 4);
            let q_random: Vec<i8> = bytes(case as u64 + 99, cols).into_iter().map(|b| b as i8).collect();
            let ones = vec![0xffu8; 4 * rows * cols / 4];
            for (w, q) in
                [(&random, q_random.clone()), (&ones, vec![-128i8; cols]), (&ones, vec![127i8; cols])]
            {
                let row = |k: usize| &w[k * cols / 4..(k + 1) * cols / 4];
                let want: Vec<i32> =
                    (0..4 * rows).map(|k| grouped_dot::<X86_GROUP_BYTES>(row(k), &q)).collect();
                // SAFETY: the CPU has AVX-512 VNNI (checked above); every row holds cols/4 bytes
                // and q holds cols = 128·chunks values.
                let one = unsafe { rows2_kernel::<1>([row(0).as_ptr()], q.as_ptr(), chunks) };
                assert_eq!(one[0], want[0], "chunks {chunks}");
                // SAFETY: as above.
                let four =
                    unsafe { rows2_kernel::<4>([0, 3, 5, 6].map(|k| row(k).as_ptr()), q.as_ptr(), chunks) };
                assert_eq!(four, [0, 3, 5, 6].map(|k| want[k]), "chunks {chunks}");
                let mut got = vec![0i32; 4 * rows];
                let stretches: [*const u8; 4] = std::array::from_fn(|s| row(s * rows).as_ptr());
                // SAFETY: as above; each stretch holds `rows` rows.
                unsafe {
                    stretches2_kernel::<4>(stretches, rows, q.as_ptr(), chunks, &mut |i, sums| {
                        for (s, d) in sums.into_iter().enumerate() {
                            got[s * rows + i] = d;
                        }
                    })
                };
                assert_eq!(got, want, "chunks {chunks}, stretches");
            }
        }
    }

    /// The tile kernel (shared with AVX-VNNI, which runs it 2 rows × 4 columns) equals the
    /// oracle at that shape too, not only at the AVX-512 path's 4 × 4.
    #[test]
    fn the_avxvnni_tile_shape_equals_the_oracle() {
        let Some(t) = VnniToken::detect() else {
            eprintln!("no AVX-512 VNNI here: the AVX-VNNI source is tested where either runs");
            return;
        };
        for chunks in [1usize, 3, 54] {
            let cols = 128 * chunks;
            let w = bytes(chunks as u64, 2 * cols / 4);
            let qs: Vec<Vec<i8>> =
                (0..4).map(|c| bytes(100 + c, cols).into_iter().map(|b| b as i8).collect()).collect();
            let rows = [&w[..cols / 4], &w[cols / 4..]];
            let got = qk256_dots_tile::<2, 4>(t, rows, std::array::from_fn(|c| qs[c].as_slice()));
            for (r, row) in rows.iter().enumerate() {
                for (c, q) in qs.iter().enumerate() {
                    assert_eq!(
                        got[r][c],
                        grouped_dot::<X86_GROUP_BYTES>(row, q),
                        "chunks {chunks} r {r} c {c}"
                    );
                }
            }
        }
    }
}
