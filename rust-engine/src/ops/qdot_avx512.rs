//! The AVX-512 kernel's forms of two head dots (`qdot.rs`), for CPUs with the extensions:
//!
//! - Q8_0 with AVX512-VNNI (`vpdpbusd`, 256-bit with AVX512VL), as the reference's own
//!   `-march=native` build computes it: the sum of four `|x|·sign(y, x)` products in one
//!   instruction instead of `maddubs` + `madd`. The integers are the same (no pair of
//!   `maddubs` can saturate here: `|x| ≤ 128` and `sign(y, x) ∈ [−128, 127]` keep a pair within
//!   [−32768, 32512]), so the bits are those of the AVX2 form.
//! - BF16 for the AVX512BF16 build with AVX512BF16 itself: `_mm512_dpbf16_ps`, the instruction
//!   the reference executes, over the same two 16-lane accumulators.
//!
//! `tests/ops_kernels.rs` and `tests/golden_ops.rs` hold each to the scalar oracle.

#![allow(unsafe_code)]

use std::arch::x86_64::*;

use super::blocks::BlockQ8_0;

/// Proof that this CPU has AVX512-VNNI and AVX512VL (and AVX2, FMA, F16C, AVX-512F): only
/// [`detect`](Self::detect) creates one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Vnni(());

impl Vnni {
    pub(crate) fn detect() -> Option<Self> {
        (super::avx2::Avx2Fma::detect().is_some()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512vnni")
            && is_x86_feature_detected!("avx512vl"))
        .then_some(Vnni(()))
    }
}

/// Proof that this CPU has AVX512-BF16 (and AVX-512F, DQ, AVX2, FMA, F16C): only
/// [`detect`](Self::detect) creates one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bf16Dot(());

impl Bf16Dot {
    pub(crate) fn detect() -> Option<Self> {
        (super::avx2::Avx2Fma::detect().is_some()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512bf16"))
        .then_some(Bf16Dot(()))
    }
}

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

/// # Safety
/// The CPU must have AVX2, FMA, F16C, AVX512VNNI and AVX512VL; each `w[r]` must be valid for
/// `34·y.len()` bytes.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vnni,avx512vl")]
unsafe fn q8_0_body<const R: usize>(w: [*const u8; R], y: &[BlockQ8_0]) -> [f32; R] {
    let mut acc = [_mm256_setzero_ps(); R];
    for (b, yb) in y.iter().enumerate() {
        // SAFETY: a block holds 32 quants after its 2-byte scale.
        let yq = unsafe { _mm256_loadu_si256(yb.qs.as_ptr() as *const __m256i) };
        let dy = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(yb.d))));
        for (a, &row) in acc.iter_mut().zip(&w) {
            // SAFETY: block b of the row is within its 34·y.len() bytes (caller contract).
            let (bits, xq) = unsafe {
                let p = row.add(34 * b);
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_BYTES) as *const i8);
                ((p as *const u16).read_unaligned(), _mm256_loadu_si256(p.add(2) as *const __m256i))
            };
            let dx = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))));
            let sums = _mm256_dpbusd_epi32(
                _mm256_setzero_si256(),
                _mm256_sign_epi8(xq, xq),
                _mm256_sign_epi8(yq, xq),
            );
            *a = _mm256_fmadd_ps(_mm256_set1_ps(dx * dy), _mm256_cvtepi32_ps(sums), *a);
        }
    }
    acc.map(|a| hsum8(a))
}

/// `dot_q8_0` (see `qdot.rs`) of `R` rows with VNNI.
///
/// # Panics
/// If a row is not `34·y.len()` bytes.
pub(crate) fn dot_q8_0_rows_vnni<const R: usize>(_t: Vnni, rows: [&[u8]; R], y: &[BlockQ8_0]) -> [f32; R] {
    for r in &rows {
        assert_eq!(r.len(), 34 * y.len(), "Q8_0 row and activation differ in length");
    }
    // SAFETY: the token proves the features; every row holds 34·y.len() bytes.
    unsafe { q8_0_body::<R>(rows.map(|r| r.as_ptr()), y) }
}

/// gcc's `_mm512_reduce_add_ps`: 256-bit halves, 128-bit halves, then `(t0+t2) + (t1+t3)`.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx2,fma,f16c")]
fn reduce_add(v: __m512) -> f32 {
    let h = _mm256_add_ps(_mm512_extractf32x8_ps::<1>(v), _mm512_castps512_ps256(v));
    hsum8(h)
}

/// # Safety
/// The CPU must have AVX512F, DQ, BF16 (and AVX2, FMA, F16C); each `w[r]` and `y` must be
/// valid for `2·np` bytes, `np` a multiple of 64.
#[target_feature(enable = "avx512f,avx512dq,avx512bf16,avx2,fma,f16c")]
unsafe fn bf16_body<const R: usize>(w: [*const u8; R], y: *const u8, np: usize) -> [f64; R] {
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    for i in (0..np).step_by(64) {
        // SAFETY: elements i .. i + 64 are below np (caller contract).
        let yv: [__m512i; 2] =
            std::array::from_fn(|c| unsafe { _mm512_loadu_si512(y.add(2 * (i + 32 * c)) as *const _) });
        for (a, &row) in acc.iter_mut().zip(&w) {
            _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(2 * i + PREFETCH_BYTES) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(2 * i + 64 + PREFETCH_BYTES) as *const i8);
            for c in 0..2 {
                // SAFETY: as above, in row r.
                let xv = unsafe { _mm512_loadu_si512(row.add(2 * (i + 32 * c)) as *const _) };
                // SAFETY: __m512i and __m512bh are the same 64 bytes; bf16 pairs reinterpreted.
                let (xb, yb) = unsafe {
                    (
                        std::mem::transmute::<__m512i, __m512bh>(xv),
                        std::mem::transmute::<__m512i, __m512bh>(yv[c]),
                    )
                };
                a[c] = _mm512_dpbf16_ps(a[c], xb, yb);
            }
        }
    }
    acc.map(|a| {
        let mut sum = 0f64;
        sum += f64::from(reduce_add(a[0]));
        sum += f64::from(reduce_add(a[1]));
        sum
    })
}

/// `dot_bf16` (see `qdot.rs`) for the AVX512BF16 build, with `VDPBF16PS` itself.
///
/// # Panics
/// If a row is not `2·y.len()` bytes.
pub(crate) fn dot_bf16_rows_native<const R: usize>(_t: Bf16Dot, rows: [&[u8]; R], y: &[u16]) -> [f32; R] {
    let n = y.len();
    for r in &rows {
        assert_eq!(r.len(), 2 * n, "BF16 row and activation differ in length");
    }
    let np = n & !63;
    // SAFETY: the token proves the features; every row holds 2n >= 2np bytes, y n >= np values.
    let heads = unsafe { bf16_body::<R>(rows.map(|r| r.as_ptr()), y.as_ptr() as *const u8, np) };
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
