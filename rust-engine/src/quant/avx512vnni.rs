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

/// Chunks accumulated in i32 lanes before they are folded into the totals:
/// 4096 · 98304 ≈ 4.0·10⁸ < 2³¹, so no lane (nor the sum of two) overflows within a group.
pub(crate) const GROUP_CHUNKS: usize = 4096;

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
    assert!(q.len().is_multiple_of(128), "QK256 row length must be a multiple of 128");
    for r in &rows {
        assert_eq!(r.len() * 4, q.len(), "QK256 weight row and activations differ in length");
    }
    // SAFETY: the token proves AVX-512 F/BW/VL/VNNI are available; every row holds `q.len() / 4`
    // bytes and `q` holds `128 · (q.len() / 128)` values, which is all the kernel reads.
    unsafe { rows_kernel::<R>(rows.map(|r| r.as_ptr()), q.as_ptr(), q.len() / 128) }
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
    let n = rows.first().map_or(0, |r| r.len() * 4);
    for r in &rows {
        assert_eq!(r.len() * 4, n, "QK256 weight rows differ in length");
    }
    for q in &qs {
        assert!(q.len().is_multiple_of(128), "QK256 row length must be a multiple of 128");
        assert_eq!(q.len(), n, "QK256 weight row and activations differ in length");
    }
    // SAFETY: the token proves AVX-512 VL/VNNI are available; every row holds `n / 4` bytes
    // and every column `n` values, n = 128 · chunks, which is all the kernel reads.
    unsafe { tile_kernel::<R, C>(rows.map(|r| r.as_ptr()), qs.map(|q| q.as_ptr()), n / 128) }
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

/// `R` rows × `C` columns, a register tile: per chunk, the `R` weight loads and the code
/// extraction are shared by the `C` columns and each activation load by the `R` rows, so the
/// loop is bound by `vpdpbusd` rather than by loads. Codes are extracted plainly (three
/// shifts, four masks), one accumulator per row and column.
///
/// # Safety
/// AVX-512 VL/VNNI must be available; each `w[r]` must be valid for `32 · chunks` bytes and
/// each `q[c]` for `128 · chunks` bytes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile_kernel<const R: usize, const C: usize>(
    w: [*const u8; R],
    q: [*const i8; C],
    chunks: usize,
) -> [[i32; C]; R] {
    let m3 = _mm256_set1_epi8(3);
    let mut sums = [[0i32; C]; R];
    let mut start = 0;
    while start < chunks {
        let end = (start + GROUP_CHUNKS).min(chunks);
        let mut acc = [[_mm256_setzero_si256(); C]; R];
        for ch in start..end {
            // SAFETY: the 32 weight bytes at 32·ch of every row are in bounds (caller contract).
            let wv: [__m256i; R] =
                std::array::from_fn(|r| unsafe { _mm256_loadu_si256(w[r].add(32 * ch) as *const __m256i) });
            for k in 0..4 {
                // SAFETY: ch < chunks and k < 4: the 32 activations at 128·ch + 32·k of every
                // column are in bounds (caller contract).
                let a: [__m256i; C] = std::array::from_fn(|c| unsafe {
                    _mm256_loadu_si256(q[c].add(128 * ch + 32 * k) as *const __m256i)
                });
                for r in 0..R {
                    let codes = match k {
                        0 => _mm256_and_si256(_mm256_srli_epi16::<6>(wv[r]), m3),
                        1 => _mm256_and_si256(_mm256_srli_epi16::<4>(wv[r]), m3),
                        2 => _mm256_and_si256(_mm256_srli_epi16::<2>(wv[r]), m3),
                        _ => _mm256_and_si256(wv[r], m3),
                    };
                    for c in 0..C {
                        acc[r][c] = _mm256_dpbusd_epi32(acc[r][c], codes, a[c]);
                    }
                }
            }
        }
        for r in 0..R {
            let mut c = 0;
            while c + 4 <= C {
                let s4 = hsum4_i32([acc[r][c], acc[r][c + 1], acc[r][c + 2], acc[r][c + 3]]);
                for (k, s) in s4.into_iter().enumerate() {
                    sums[r][c + k] = sums[r][c + k].wrapping_add(s);
                }
                c += 4;
            }
            for c in c..C {
                sums[r][c] = sums[r][c].wrapping_add(hsum_i32(acc[r][c]));
            }
        }
        start = end;
    }
    sums
}

/// The sums of the eight i32 lanes of each of four vectors (wrapping), with three horizontal
/// adds for all four instead of three shuffles and adds for each: the same integers (wrapping
/// addition is associative and commutative).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
fn hsum4_i32(v: [__m256i; 4]) -> [i32; 4] {
    // [a0+a1, a2+a3, b0+b1, b2+b3 | a4+a5, a6+a7, b4+b5, b6+b7], the same for c and d.
    let ab = _mm256_hadd_epi32(v[0], v[1]);
    let cd = _mm256_hadd_epi32(v[2], v[3]);
    // [a0..3, b0..3, c0..3, d0..3 | a4..7, b4..7, c4..7, d4..7]
    let abcd = _mm256_hadd_epi32(ab, cd);
    let s = _mm_add_epi32(_mm256_castsi256_si128(abcd), _mm256_extracti128_si256::<1>(abcd));
    [_mm_cvtsi128_si32(s), _mm_extract_epi32::<1>(s), _mm_extract_epi32::<2>(s), _mm_extract_epi32::<3>(s)]
}

/// Four unaligned 32-byte loads: one chunk's 128 activations.
///
/// # Safety
/// `p` must be valid for 128 bytes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn load_128_i8(p: *const i8) -> [__m256i; 4] {
    let p = p as *const __m256i;
    // SAFETY: 4 × 32 = 128 bytes at p (caller contract); unaligned loads.
    unsafe {
        [
            _mm256_loadu_si256(p),
            _mm256_loadu_si256(p.add(1)),
            _mm256_loadu_si256(p.add(2)),
            _mm256_loadu_si256(p.add(3)),
        ]
    }
}

/// The sum of the eight i32 lanes (wrapping).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}
