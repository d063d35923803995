//! AVX2 twins of the scalar dots in `qdot.rs` (Q8_0, Q4_K, Q6_K, BF16), `R` weight rows at
//! once against one activation (the rows share its loads).
//!
//! The Q8_0 and K-quant dots are ggml's own `__AVX2__` code, which both reference builds
//! compile: the same integer sums in the same lanes, then the same float steps. The BF16 dot
//! has the AVX2 build's form (`H = 1`) and an emulation of the AVX512BF16 build's
//! `VDPBF16PS` in two 8-lane halves (`H = 2`: odd products then even ones, each an FMA with
//! subnormals flushed). `tests/ops_kernels.rs` holds each to its scalar oracle.

#![allow(unsafe_code)]

use std::arch::x86_64::*;

use super::avx2::Avx2Fma;
use super::blocks::{BlockQ8K, BlockQ8_0, Q4K_BYTES, Q4K_D, Q4K_DMIN, Q4K_QS, Q4K_SCALES, Q6K_BYTES, QK_K};
use super::blocks::{Q6K_D, Q6K_QH, Q6K_QL, Q6K_SCALES};

/// How far ahead of each row's loads to prefetch (as the F16 kernels, see `avx2.rs`).
const PREFETCH_BYTES: usize = 512;

/// `hsum_float_8`: the 128-bit halves added, then `(t0+t2) + (t1+t3)`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum8(x: __m256) -> f32 {
    let r = _mm_add_ps(_mm256_extractf128_ps::<1>(x), _mm256_castps256_ps128(x));
    let r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    _mm_cvtss_f32(_mm_add_ss(r, _mm_movehdup_ps(r)))
}

/// `(t0+t2) + (t1+t3)` of four lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum4(r: __m128) -> f32 {
    let r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    _mm_cvtss_f32(_mm_add_ss(r, _mm_movehdup_ps(r)))
}

/// gcc's `_mm512_reduce_add_ps` of the 16 lanes `lo`, `hi`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn lane_sum16(lo: __m256, hi: __m256) -> f32 {
    hsum8(_mm256_add_ps(hi, lo))
}

/// The f16 at `p` (two bytes, any alignment), as f32 (`vcvtph2ps`, exact).
///
/// # Safety
/// `p` must be valid for 2 bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_at(p: *const u8) -> f32 {
    // SAFETY: two readable bytes (caller contract); unaligned read.
    let bits = unsafe { (p as *const u16).read_unaligned() };
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn prefetch(p: *const u8) {
    // A hint: it never faults, so an address past the row (wrapping_add) is fine.
    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_BYTES) as *const i8);
}

/// # Safety
/// Each `w[r]` must be valid for `34·y.len()` bytes.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0_body<const R: usize>(w: [*const u8; R], y: &[BlockQ8_0]) -> [f32; R] {
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); R];
    for (b, yb) in y.iter().enumerate() {
        // SAFETY: a block holds 32 quants after its 2-byte scale.
        let yq = unsafe { _mm256_loadu_si256(yb.qs.as_ptr() as *const __m256i) };
        let dy = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(yb.d))));
        for (a, &row) in acc.iter_mut().zip(&w) {
            // SAFETY: block b of the row is within its 34·y.len() bytes (caller contract).
            let (dx, xq) = unsafe {
                let p = row.add(34 * b);
                prefetch(p);
                (f16_at(p), _mm256_loadu_si256(p.add(2) as *const __m256i))
            };
            let dot = _mm256_maddubs_epi16(_mm256_sign_epi8(xq, xq), _mm256_sign_epi8(yq, xq));
            let q = _mm256_cvtepi32_ps(_mm256_madd_epi16(ones, dot));
            *a = _mm256_fmadd_ps(_mm256_set1_ps(dx * dy), q, *a);
        }
    }
    acc.map(|a| hsum8(a))
}

/// `dot_q8_0` (see `qdot.rs`) of `R` rows given as the file's bytes.
///
/// # Panics
/// If a row is not `34·y.len()` bytes.
pub(crate) fn dot_q8_0_rows<const R: usize>(_t: Avx2Fma, rows: [&[u8]; R], y: &[BlockQ8_0]) -> [f32; R] {
    for r in &rows {
        assert_eq!(r.len(), 34 * y.len(), "Q8_0 row and activation differ in length");
    }
    // SAFETY: the token proves the features; every row holds 34·y.len() bytes.
    unsafe { q8_0_body::<R>(rows.map(|r| r.as_ptr()), y) }
}

/// The scales (bytes 0..8) and mins (bytes 8..16) of a Q4_K block's 12 packed bytes, as
/// `ggml_vec_dot_q4_K_q8_K` unpacks them (`utmp`).
#[inline]
fn q4k_utmp(packed: &[u8]) -> [u32; 4] {
    const KMASK1: u32 = 0x3f3f_3f3f;
    const KMASK2: u32 = 0x0f0f_0f0f;
    const KMASK3: u32 = 0x0303_0303;
    let word = |i: usize| {
        u32::from_le_bytes([packed[4 * i], packed[4 * i + 1], packed[4 * i + 2], packed[4 * i + 3]])
    };
    let (u0, u1, u2) = (word(0), word(1), word(2));
    [
        u0 & KMASK1,
        (u2 & KMASK2) | (((u0 >> 6) & KMASK3) << 4),
        u1 & KMASK1,
        ((u2 >> 4) & KMASK2) | (((u1 >> 6) & KMASK3) << 4),
    ]
}

/// # Safety
/// Each `w[r]` must be valid for `144·y.len()` bytes.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_k_body<const R: usize>(w: [*const u8; R], y: &[BlockQ8K]) -> [f32; R] {
    let m4 = _mm256_set1_epi8(0xF);
    let mut acc = [_mm256_setzero_ps(); R];
    let mut acc_m = [_mm_setzero_ps(); R];
    for (i, yb) in y.iter().enumerate() {
        // SAFETY: the block's 256 quants and 16 sums are in bounds.
        let (q8, q8sums) = unsafe {
            let q8: [__m256i; 8] =
                std::array::from_fn(|k| _mm256_loadu_si256(yb.qs.as_ptr().add(32 * k) as *const __m256i));
            (q8, _mm256_loadu_si256(yb.bsums.as_ptr() as *const __m256i))
        };
        let q8s = _mm_hadd_epi16(_mm256_castsi256_si128(q8sums), _mm256_extracti128_si256::<1>(q8sums));
        for r in 0..R {
            // SAFETY: super-block i of the row is within its 144·y.len() bytes.
            let (p, dx, dmx, utmp) = unsafe {
                let p = w[r].add(Q4K_BYTES * i);
                prefetch(p);
                prefetch(p.add(64));
                let packed = std::slice::from_raw_parts(p.add(Q4K_SCALES), 12);
                (p, f16_at(p.add(Q4K_D)), f16_at(p.add(Q4K_DMIN)), q4k_utmp(packed))
            };
            let d = yb.d * dx;
            let dmin = -yb.d * dmx;
            let mins_and_scales = _mm256_cvtepu8_epi16(_mm_set_epi32(
                utmp[3] as i32,
                utmp[2] as i32,
                utmp[1] as i32,
                utmp[0] as i32,
            ));
            let prod = _mm_madd_epi16(_mm256_extracti128_si256::<1>(mins_and_scales), q8s);
            acc_m[r] = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod), acc_m[r]);
            let (lo, hi) = (utmp[0].to_le_bytes(), utmp[1].to_le_bytes());
            let sc: [i16; 8] = std::array::from_fn(|k| i16::from(if k < 4 { lo[k] } else { hi[k - 4] }));
            let mut sumi = _mm256_setzero_si256();
            for j in 0..QK_K / 64 {
                // SAFETY: 32 bytes of quants at 32j within the block.
                let q4bits = unsafe { _mm256_loadu_si256(p.add(Q4K_QS + 32 * j) as *const __m256i) };
                let q4l = _mm256_and_si256(q4bits, m4);
                let q4h = _mm256_and_si256(_mm256_srli_epi16::<4>(q4bits), m4);
                let p16l =
                    _mm256_madd_epi16(_mm256_set1_epi16(sc[2 * j]), _mm256_maddubs_epi16(q4l, q8[2 * j]));
                let p16h = _mm256_madd_epi16(
                    _mm256_set1_epi16(sc[2 * j + 1]),
                    _mm256_maddubs_epi16(q4h, q8[2 * j + 1]),
                );
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p16l, p16h));
            }
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc[r]);
        }
    }
    std::array::from_fn(|r| hsum8(acc[r]) + hsum4(acc_m[r]))
}

/// `dot_q4_k` (see `qdot.rs`) of `R` rows given as the file's bytes.
///
/// # Panics
/// If a row is not `144·y.len()` bytes.
pub(crate) fn dot_q4_k_rows<const R: usize>(_t: Avx2Fma, rows: [&[u8]; R], y: &[BlockQ8K]) -> [f32; R] {
    for r in &rows {
        assert_eq!(r.len(), Q4K_BYTES * y.len(), "Q4_K row and activation differ in length");
    }
    // SAFETY: the token proves the features; every row holds 144·y.len() bytes.
    unsafe { q4_k_body::<R>(rows.map(|r| r.as_ptr()), y) }
}

/// # Safety
/// Each `w[r]` must be valid for `210·y.len()` bytes.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_k_body<const R: usize>(w: [*const u8; R], y: &[BlockQ8K]) -> [f32; R] {
    let m4 = _mm256_set1_epi8(0xF);
    let m2 = _mm256_set1_epi8(3);
    let m32s = _mm256_set1_epi8(32);
    let mut acc = [_mm256_setzero_ps(); R];
    for (i, yb) in y.iter().enumerate() {
        // SAFETY: the block's 256 quants are in bounds.
        let q8: [__m256i; 8] = std::array::from_fn(|k| unsafe {
            _mm256_loadu_si256(yb.qs.as_ptr().add(32 * k) as *const __m256i)
        });
        let q8s: [__m256i; 8] = q8.map(|v| _mm256_maddubs_epi16(m32s, v));
        for r in 0..R {
            // SAFETY: super-block i of the row is within its 210·y.len() bytes.
            let (p, dx, scales) = unsafe {
                let p = w[r].add(Q6K_BYTES * i);
                prefetch(p);
                prefetch(p.add(64));
                prefetch(p.add(128));
                (p, f16_at(p.add(Q6K_D)), _mm_loadu_si128(p.add(Q6K_SCALES) as *const __m128i))
            };
            let d = yb.d * dx;
            let mut sumi = _mm256_setzero_si256();
            for j in 0..QK_K / 128 {
                // SAFETY: 64 bytes of low bits at 64j and 32 of high bits at 32j, in the block.
                let (q4bits1, q4bits2, q4bits_h) = unsafe {
                    (
                        _mm256_loadu_si256(p.add(Q6K_QL + 64 * j) as *const __m256i),
                        _mm256_loadu_si256(p.add(Q6K_QL + 64 * j + 32) as *const __m256i),
                        _mm256_loadu_si256(p.add(Q6K_QH + 32 * j) as *const __m256i),
                    )
                };
                let high = |s: i32| {
                    let shifted = match s {
                        0 => q4bits_h,
                        2 => _mm256_srli_epi16::<2>(q4bits_h),
                        4 => _mm256_srli_epi16::<4>(q4bits_h),
                        _ => _mm256_srli_epi16::<6>(q4bits_h),
                    };
                    _mm256_slli_epi16::<4>(_mm256_and_si256(shifted, m2))
                };
                let q4 = [
                    _mm256_or_si256(_mm256_and_si256(q4bits1, m4), high(0)),
                    _mm256_or_si256(_mm256_and_si256(q4bits2, m4), high(2)),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(q4bits1), m4), high(4)),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(q4bits2), m4), high(6)),
                ];
                let mut p16 = [_mm256_setzero_si256(); 4];
                for c in 0..4 {
                    // Scales 8j+2c (first 16 quants of the chunk) and 8j+2c+1 (the next 16).
                    let k = (8 * j + 2 * c) as i8;
                    let shuf = _mm_set_epi8(
                        k + 1,
                        k + 1,
                        k + 1,
                        k + 1,
                        k + 1,
                        k + 1,
                        k + 1,
                        k + 1,
                        k,
                        k,
                        k,
                        k,
                        k,
                        k,
                        k,
                        k,
                    );
                    let scale = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, shuf));
                    let d16 = _mm256_sub_epi16(_mm256_maddubs_epi16(q4[c], q8[4 * j + c]), q8s[4 * j + c]);
                    p16[c] = _mm256_madd_epi16(scale, d16);
                }
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p16[0], p16[1]));
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p16[2], p16[3]));
            }
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc[r]);
        }
    }
    acc.map(|a| hsum8(a))
}

/// `dot_q6_k` (see `qdot.rs`) of `R` rows given as the file's bytes.
///
/// # Panics
/// If a row is not `210·y.len()` bytes.
pub(crate) fn dot_q6_k_rows<const R: usize>(_t: Avx2Fma, rows: [&[u8]; R], y: &[BlockQ8K]) -> [f32; R] {
    for r in &rows {
        assert_eq!(r.len(), Q6K_BYTES * y.len(), "Q6_K row and activation differ in length");
    }
    // SAFETY: the token proves the features; every row holds 210·y.len() bytes.
    unsafe { q6_k_body::<R>(rows.map(|r| r.as_ptr()), y) }
}

/// Eight bf16 at `p` (16 bytes, any alignment), widened to f32 (exact).
///
/// # Safety
/// `p` must be valid for 16 bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_bf16(p: *const u8) -> __m256 {
    // SAFETY: 16 readable bytes (caller contract); unaligned load.
    let h = unsafe { _mm_loadu_si128(p as *const __m128i) };
    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
}

/// Subnormal lanes replaced by a zero of their sign (DAZ on an input, FTZ on a result).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn flush(v: __m256) -> __m256 {
    let bits = _mm256_castps_si256(v);
    let tiny =
        _mm256_cmpeq_epi32(_mm256_and_si256(bits, _mm256_set1_epi32(0x7f80_0000)), _mm256_setzero_si256());
    _mm256_castsi256_ps(_mm256_andnot_si256(_mm256_and_si256(tiny, _mm256_set1_epi32(0x7fff_ffff)), bits))
}

/// The odd (high halves) and even (low halves, shifted up) bf16 of 16 at `p`, as f32,
/// flushed.
///
/// # Safety
/// `p` must be valid for 32 bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_bf16_pairs(p: *const u8) -> (__m256, __m256) {
    // SAFETY: 32 readable bytes (caller contract); unaligned load.
    let v = unsafe { _mm256_loadu_si256(p as *const __m256i) };
    let odd = _mm256_and_si256(v, _mm256_set1_epi32(0xffff_0000u32 as i32));
    let even = _mm256_slli_epi32::<16>(v);
    (flush(_mm256_castsi256_ps(odd)), flush(_mm256_castsi256_ps(even)))
}

/// The vector part of the BF16 dot over `np` elements (a multiple of `32·H`), already added
/// into f64 the way the build does it.
///
/// # Safety
/// Each `w[r]` and `y` must be valid for `2·np` bytes.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bf16_body<const R: usize, const H: usize>(w: [*const u8; R], y: *const u8, np: usize) -> [f64; R] {
    if H == 1 {
        let mut acc = [[_mm256_setzero_ps(); 4]; R];
        for i in (0..np).step_by(32) {
            for k in 0..4 {
                // SAFETY: elements i + 8k .. i + 8k + 8 are below np (caller contract).
                let yv = unsafe { load_bf16(y.add(2 * (i + 8 * k))) };
                for (a, &row) in acc.iter_mut().zip(&w) {
                    if k == 0 {
                        prefetch(row.wrapping_add(2 * i));
                    }
                    // SAFETY: as above, in row r.
                    let xv = unsafe { load_bf16(row.add(2 * (i + 8 * k))) };
                    a[k] = _mm256_fmadd_ps(xv, yv, a[k]);
                }
            }
        }
        acc.map(|a| {
            let s = _mm256_add_ps(_mm256_add_ps(a[0], a[2]), _mm256_add_ps(a[1], a[3]));
            f64::from(hsum8(s))
        })
    } else {
        // Two 16-lane accumulators (chunks of 32 elements), each as two 8-lane halves.
        let mut acc = [[[_mm256_setzero_ps(); 2]; 2]; R];
        for i in (0..np).step_by(64) {
            for c in 0..2 {
                for h in 0..2 {
                    let at = 2 * (i + 32 * c + 16 * h);
                    // SAFETY: 16 elements from i + 32c + 16h, below np (caller contract).
                    let (yo, ye) = unsafe { load_bf16_pairs(y.add(at)) };
                    for (a, &row) in acc.iter_mut().zip(&w) {
                        if c == 0 && h == 0 {
                            prefetch(row.wrapping_add(2 * i));
                            prefetch(row.wrapping_add(2 * i + 64));
                        }
                        // SAFETY: as above, in row r.
                        let (xo, xe) = unsafe { load_bf16_pairs(row.add(at)) };
                        let s = flush(_mm256_fmadd_ps(xo, yo, a[c][h]));
                        a[c][h] = flush(_mm256_fmadd_ps(xe, ye, s));
                    }
                }
            }
        }
        acc.map(|a| {
            let mut sum = 0f64;
            sum += f64::from(lane_sum16(a[0][0], a[0][1]));
            sum += f64::from(lane_sum16(a[1][0], a[1][1]));
            sum
        })
    }
}

/// `dot_bf16` (see `qdot.rs`) of `R` rows (the file's bytes) against `y`, for the AVX2 build
/// (`H = 1`) or the AVX512BF16 build (`H = 2`).
///
/// # Panics
/// If a row is not `2·y.len()` bytes.
pub(crate) fn dot_bf16_rows<const R: usize, const H: usize>(
    _t: Avx2Fma,
    rows: [&[u8]; R],
    y: &[u16],
) -> [f32; R] {
    let n = y.len();
    for r in &rows {
        assert_eq!(r.len(), 2 * n, "BF16 row and activation differ in length");
    }
    let np = n & !(32 * H - 1);
    // SAFETY: the token proves the features; every row holds 2n >= 2np bytes, y n >= np values.
    let heads = unsafe { bf16_body::<R, H>(rows.map(|r| r.as_ptr()), y.as_ptr() as *const u8, np) };
    let bf = |b: u16| f32::from_bits(u32::from(b) << 16);
    std::array::from_fn(|r| {
        let mut sum = 0f64;
        sum += heads[r];
        let row = rows[r];
        for k in np..n {
            sum += f64::from(bf(u16::from_le_bytes([row[2 * k], row[2 * k + 1]])) * bf(y[k]));
        }
        sum as f32
    })
}

#[cfg(test)]
mod tests {
    use super::super::qdot::hsum8 as hsum8_scalar;
    use super::*;

    #[test]
    fn hsum_matches_the_scalar_order() {
        let Some(_t) = Avx2Fma::detect() else { return };
        let v = [1e8f32, -1e8, 1.0, 3.0, 2.0, 5.0, -7.0, 0.5];
        // SAFETY: the token proves AVX2; 8 f32s.
        let got = unsafe { hsum8(_mm256_loadu_ps(v.as_ptr())) };
        assert_eq!(got.to_bits(), hsum8_scalar(v).to_bits());
    }
}
