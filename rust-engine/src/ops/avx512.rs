//! AVX-512 twins of the scalar float kernels for the AVX-512 reference-build profile: the
//! reference's own 512-bit operations, in its order (four 16-lane accumulators, gcc's
//! `_mm512_reduce_add_ps`, `vscalefps` in `expf`). For the AVX2 profile an AVX-512 CPU runs
//! the AVX2 kernels (`avx2.rs`, one register a vector), which it has too.
//! `tests/ops_kernels.rs` holds every kernel to the scalar oracle of each profile.

#![allow(unsafe_code)]

use std::arch::x86_64::*;

use super::avx2::{bytes_of, transpose8, Avx2Fma};
use super::dot::{f16_tail, f16_to_f32};
use super::qdot_avx512::{Bf16Dot, Vnni};

/// Elements per step: 4 accumulators × 16 lanes.
const STEP: usize = 64;

/// Proof that this CPU has AVX-512F and AVX-512DQ besides AVX2, FMA and F16C: only
/// [`detect`](Self::detect) creates one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Avx512 {
    /// The AVX2 kernels, which an AVX-512 CPU runs for the AVX2 profile and for the
    /// operations that do not depend on the profile (f16 conversions).
    pub(crate) avx2: Avx2Fma,
    /// AVX512-VNNI, if the CPU has it: the Q8_0 head dot's integer sums (`qdot_avx512.rs`).
    pub(crate) vnni: Option<Vnni>,
    /// AVX512-BF16, if the CPU has it: the BF16 head dot of the AVX-512 profile.
    pub(crate) bf16: Option<Bf16Dot>,
}

impl Avx512 {
    pub(crate) fn detect() -> Option<Self> {
        let avx2 = Avx2Fma::detect()?;
        (is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512dq")).then(|| Avx512 {
            avx2,
            vnni: Vnni::detect(),
            bf16: Bf16Dot::detect(),
        })
    }
}

/// gcc's `_mm512_reduce_add_ps`: the 256-bit halves added, then the 128-bit halves, then
/// `(t0+t2) + (t1+t3)`.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx2,fma,f16c")]
pub(super) fn reduce_add(v: __m512) -> f32 {
    let lo = _mm512_castps512_ps256(v);
    let hi = _mm512_extractf32x8_ps::<1>(v);
    let h = _mm256_add_ps(hi, lo);
    let t = _mm_add_ps(_mm256_extractf128_ps::<1>(h), _mm256_castps256_ps128(h));
    let t = _mm_add_ps(t, _mm_movehl_ps(t, t));
    _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)))
}

/// `GGML_F32x16_REDUCE` of four accumulators: (0+2, 1+3), then 0+1, then the lanes.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx2,fma,f16c")]
fn reduce(acc: [__m512; 4]) -> f32 {
    reduce_add(_mm512_add_ps(_mm512_add_ps(acc[0], acc[2]), _mm512_add_ps(acc[1], acc[3])))
}

/// Sixteen f16 (little-endian, any alignment) at `p`, as f32.
///
/// # Safety
/// `p` must be valid for 32 bytes.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx2,fma,f16c")]
unsafe fn load_f16(p: *const u8) -> __m512 {
    // SAFETY: the caller guarantees 32 readable bytes; the load is unaligned.
    _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(p as *const __m256i) })
}

/// Where the vector operand of the row kernel comes from.
#[derive(Clone, Copy)]
enum Vector {
    F32(*const f32),
    /// f16 bits, widened on load (exact).
    F16(*const u8),
}

/// Sixteen elements of the vector at `i`.
///
/// # Safety
/// The vector must be valid for `i + 16` elements.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx2,fma,f16c")]
unsafe fn load_vector(y: Vector, i: usize) -> __m512 {
    match y {
        // SAFETY: i + 16 elements are valid (caller contract); unaligned loads.
        Vector::F32(p) => unsafe { _mm512_loadu_ps(p.add(i)) },
        // SAFETY: as above, 32 bytes at 2i.
        Vector::F16(p) => unsafe { load_f16(p.add(2 * i)) },
    }
}

/// How far ahead of each row's loads the row kernel prefetches (see `avx2.rs`). Four lines
/// here, not the AVX2 kernel's eight: the lm_head alone (`harness bench`, AMD Zen 4, paired
/// against the reference, two rounds each) went 1.01–1.02× → 1.05–1.09× at one thread and
/// 0.96× → 0.98–1.01× at two with 256 bytes; 128 was no better, 1024 worse (0.85×, 0.72–0.94×).
const PREFETCH_BYTES: usize = 256;

/// Four-accumulator FMA sums over `np` (a multiple of 64) elements of `R` f16 rows against
/// one vector, reduced the ggml way. The vector is loaded once per step for all rows.
///
/// # Safety
/// Each `w[r]` must be valid for `2·np` bytes and `y` for `np` elements.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx2,fma,f16c")]
unsafe fn f16_rows_body<const R: usize>(w: [*const u8; R], y: Vector, np: usize) -> [f32; R] {
    let mut acc = [[_mm512_setzero_ps(); 4]; R];
    let mut i = 0;
    while i < np {
        for w_r in w {
            for line in 0..2 {
                // A hint: it never faults, so an address past the row (wrapping_add) is fine.
                let at = 2 * i + 64 * line + PREFETCH_BYTES;
                _mm_prefetch::<_MM_HINT_T0>(w_r.wrapping_add(at) as *const i8);
            }
        }
        for j in 0..4 {
            // SAFETY: i + 16j + 16 <= np, within both operands (caller contract).
            let yv = unsafe { load_vector(y, i + 16 * j) };
            for (acc_r, w_r) in acc.iter_mut().zip(w) {
                // SAFETY: as above, bytes 2(i + 16j) .. 2(i + 16j) + 32 of row r.
                let wv = unsafe { load_f16(w_r.add(2 * (i + 16 * j))) };
                acc_r[j] = _mm512_fmadd_ps(wv, yv, acc_r[j]);
            }
        }
        i += STEP;
    }
    acc.map(|a| reduce(a))
}

/// `dot_f16_f32` (see `dot.rs`) of `R` rows given as raw f16 bytes against `y`, at once.
///
/// # Panics
/// If a row's byte length differs from `2·y.len()`.
pub(crate) fn dot_f16_bytes_rows<const R: usize>(_t: Avx512, rows: [&[u8]; R], y: &[f32]) -> [f32; R] {
    let n = y.len();
    for r in &rows {
        assert_eq!(r.len(), 2 * n, "f16 row and vector differ in length");
    }
    let np = n & !(STEP - 1);
    // SAFETY: the token proves the features; every row holds 2n >= 2np bytes and y holds n >= np.
    let heads = unsafe { f16_rows_body::<R>(rows.map(|r| r.as_ptr()), Vector::F32(y.as_ptr()), np) };
    std::array::from_fn(|r| f16_tail(heads[r], rows[r], |k| y[k], np))
}

/// `dot_f16` (see `dot.rs`) of `R` rows given as raw f16 bytes against the f16 vector `y`.
///
/// # Panics
/// If a row's byte length differs from `2·y.len()`.
pub(crate) fn dot_f16_bytes_rows_f16<const R: usize>(_t: Avx512, rows: [&[u8]; R], y: &[u16]) -> [f32; R] {
    let n = y.len();
    for r in &rows {
        assert_eq!(r.len(), 2 * n, "f16 row and vector differ in length");
    }
    let np = n & !(STEP - 1);
    // SAFETY: the token proves the features; every row holds 2n >= 2np bytes and y holds n >= np.
    let heads =
        unsafe { f16_rows_body::<R>(rows.map(|r| r.as_ptr()), Vector::F16(y.as_ptr() as *const u8), np) };
    std::array::from_fn(|r| f16_tail(heads[r], rows[r], |k| f16_to_f32(y[k]), np))
}

/// `dot_f16_f32` (see `dot.rs`) of each row of an f16 matrix against `y`: `out[i]` is the
/// dot of `m[i·stride..i·stride + y.len()]` with `y`, the bits of [`dot_f16_bytes_rows`] row
/// by row. Eight rows at a time: their lanes four rows a pass, then their leftovers (the
/// elements past the last whole step, summed one by one in f64) as eight f64 lanes, one row
/// each, so that eight sequential sums advance together instead of one (the leftovers of
/// attention's `V·p` over 32 or 96 cells, one row at a time, were a sixth of a prefill).
///
/// # Panics
/// If a row reaches past the end of `m`.
pub(crate) fn dot_f16_strided(t: Avx512, m: &[u16], stride: usize, y: &[f32], out: &mut [f32]) {
    let (n, rows) = (y.len(), out.len());
    if rows == 0 {
        return;
    }
    assert!((rows - 1) * stride + n <= m.len(), "an f16 row reaches past the matrix");
    let np = n & !(STEP - 1);
    let yt = &y[np..];
    let yv = Vector::F32(y.as_ptr());
    let mut groups = out.chunks_exact_mut(8);
    for (g, o) in (&mut groups).enumerate() {
        let p: [*const u8; 8] = std::array::from_fn(|r| m[(8 * g + r) * stride..].as_ptr() as *const u8);
        // SAFETY: the token proves the features; each of the eight rows holds n >= np elements
        // (asserted above) and y holds n.
        let (lo, hi) = unsafe {
            (
                f16_rows_body::<4>([p[0], p[1], p[2], p[3]], yv, np),
                f16_rows_body::<4>([p[4], p[5], p[6], p[7]], yv, np),
            )
        };
        let heads = [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1], hi[2], hi[3]];
        if yt.is_empty() {
            o.copy_from_slice(&heads);
        } else {
            let tails: [&[u16]; 8] =
                std::array::from_fn(|r| &m[(8 * g + r) * stride + np..(8 * g + r) * stride + n]);
            // SAFETY: the token proves the features.
            unsafe { tails8(heads, tails, yt, o) };
        }
    }
    let done = rows - groups.into_remainder().len();
    for i in done..rows {
        let row = &m[i * stride..i * stride + n];
        out[i] = dot_f16_bytes_rows::<1>(t, [bytes_of(row)], y)[0];
    }
}

/// [`f16_tail`] of eight rows at once: `out[r]` = `head[r]` plus each product of `w[r][k]`
/// and `yt[k]` (exact in f32) in f64, in order of `k`, narrowed. Each f64 lane is one row's
/// sum with exactly the scalar's operations; eight elements of the eight rows are turned
/// into eight vectors of one element per row by an 8×8 transpose.
///
/// # Panics
/// If a row's length differs from `yt.len()` or `out` does not hold eight values.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx2,fma,f16c")]
fn tails8(head: [f32; 8], w: [&[u16]; 8], yt: &[f32], out: &mut [f32]) {
    let t = yt.len();
    assert!(w.iter().all(|r| r.len() == t) && out.len() == 8);
    // SAFETY: `head` holds eight f32s.
    let mut acc = _mm512_cvtps_pd(unsafe { _mm256_loadu_ps(head.as_ptr()) });
    let whole = t & !7;
    for k in (0..whole).step_by(8) {
        // SAFETY: k + 8 <= t: eight elements of yt and of every row; unaligned loads.
        let y8 = unsafe { _mm256_loadu_ps(yt.as_ptr().add(k)) };
        let r: [__m256; 8] = std::array::from_fn(|i| {
            // SAFETY: as above (16 bytes of row i at k).
            let h = unsafe { _mm_loadu_si128(w[i].as_ptr().add(k) as *const __m128i) };
            _mm256_mul_ps(_mm256_cvtph_ps(h), y8)
        });
        for col in transpose8(r) {
            acc = _mm512_add_pd(acc, _mm512_cvtps_pd(col));
        }
    }
    let mut sums = [0f64; 8];
    // SAFETY: `sums` holds eight f64s.
    unsafe { _mm512_storeu_pd(sums.as_mut_ptr(), acc) };
    for (i, (s, o)) in sums.iter_mut().zip(out).enumerate() {
        for k in whole..t {
            *s += f64::from(f16_to_f32(w[i][k]) * yt[k]);
        }
        *o = *s as f32;
    }
}

/// `dot_f16_f32` (see `dot.rs`): f16 values against f32 values.
pub(crate) fn dot_f16_f32(t: Avx512, x: &[u16], y: &[f32]) -> f32 {
    assert_eq!(x.len(), y.len());
    dot_f16_bytes_rows::<1>(t, [bytes_of(x)], y)[0]
}

/// `dot_f16` of two f16 vectors.
pub(crate) fn dot_f16(t: Avx512, x: &[u16], y: &[u16]) -> f32 {
    assert_eq!(x.len(), y.len());
    dot_f16_bytes_rows_f16::<1>(t, [bytes_of(x)], y)[0]
}

/// `dot_f32` of two f32 vectors.
pub(crate) fn dot_f32(_t: Avx512, x: &[f32], y: &[f32]) -> f32 {
    assert_eq!(x.len(), y.len());
    let n = x.len();
    let np = n & !(STEP - 1);
    // SAFETY: the token proves the features; both vectors hold n >= np elements.
    let mut sum = unsafe { dot_f32_body(x.as_ptr(), y.as_ptr(), np) };
    for k in np..n {
        sum += x[k] * y[k];
    }
    sum
}

/// # Safety
/// `x` and `y` must be valid for `np` f32s.
#[target_feature(enable = "avx512f,avx512dq,avx2,fma,f16c")]
unsafe fn dot_f32_body(x: *const f32, y: *const f32, np: usize) -> f32 {
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    while i < np {
        for (j, a) in acc.iter_mut().enumerate() {
            // SAFETY: i + 16j + 16 <= np (caller contract).
            let (xv, yv) =
                unsafe { (_mm512_loadu_ps(x.add(i + 16 * j)), _mm512_loadu_ps(y.add(i + 16 * j))) };
            *a = _mm512_fmadd_ps(xv, yv, *a);
        }
        i += STEP;
    }
    reduce(acc)
}

/// ggml's `ggml_v_expf` as the AVX-512 build compiles it, sixteen lanes.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx2,fma,f16c")]
fn exp16(x: __m512) -> __m512 {
    let r = _mm512_set1_ps(12_582_912.0);
    let z = _mm512_fmadd_ps(x, _mm512_set1_ps(f32::from_bits(0x3fb8_aa3b)), r);
    let n = _mm512_sub_ps(z, r);
    let b = _mm512_fnmadd_ps(
        n,
        _mm512_set1_ps(f32::from_bits(0x35bf_be8e)),
        _mm512_fnmadd_ps(n, _mm512_set1_ps(f32::from_bits(0x3f31_7200)), x),
    );
    let d = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(_mm512_abs_ps(n), _mm512_set1_ps(192.0));
    let u = _mm512_mul_ps(b, b);
    let j = _mm512_fmadd_ps(
        _mm512_fmadd_ps(
            _mm512_fmadd_ps(
                _mm512_set1_ps(f32::from_bits(0x3c07_2010)),
                b,
                _mm512_set1_ps(f32::from_bits(0x3d2b_9f17)),
            ),
            u,
            _mm512_fmadd_ps(
                _mm512_set1_ps(f32::from_bits(0x3e2a_af33)),
                b,
                _mm512_set1_ps(f32::from_bits(0x3eff_fedb)),
            ),
        ),
        u,
        _mm512_fmadd_ps(_mm512_set1_ps(f32::from_bits(0x3f7f_fff6)), b, _mm512_set1_ps(1.0)),
    );
    let res = _mm512_scalef_ps(j, n);
    if d == 0 {
        return res;
    }
    let neg = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(n, _mm512_setzero_ps());
    let alt = _mm512_mask_blend_ps(neg, _mm512_set1_ps(f32::INFINITY), _mm512_setzero_ps());
    _mm512_mask_blend_ps(d, res, alt)
}

/// The exponentiation pass of the AVX-512 build's `ggml_vec_soft_max_f32` over whole
/// vectors of sixteen: `x[i] = exp(x[i] − max)`, returning the f64 sum of each vector's
/// `_mm512_reduce_add_ps`. Elements past the last whole vector are left to the caller.
pub(crate) fn exp_sub_sum(_t: Avx512, x: &mut [f32], max: f32) -> f64 {
    let mut sum = 0f64;
    for c in x.chunks_exact_mut(16) {
        // SAFETY: the token proves the features; the chunk holds 16 f32s; unaligned load/store.
        let s = unsafe {
            let v = exp16(_mm512_sub_ps(_mm512_loadu_ps(c.as_ptr()), _mm512_set1_ps(max)));
            _mm512_storeu_ps(c.as_mut_ptr(), v);
            reduce_add(v)
        };
        sum += f64::from(s);
    }
    sum
}

/// `ggml_vec_silu_f32` of the AVX-512 build over whole vectors of sixteen; returns how many
/// elements were done (the caller finishes the rest with libm).
pub(crate) fn silu(_t: Avx512, x: &[f32], out: &mut [f32]) -> usize {
    assert_eq!(x.len(), out.len());
    let whole = x.len() / 16 * 16;
    for (xc, oc) in x[..whole].chunks_exact(16).zip(out[..whole].chunks_exact_mut(16)) {
        // SAFETY: the token proves the features; both chunks hold 16 f32s; unaligned.
        unsafe {
            let v = _mm512_loadu_ps(xc.as_ptr());
            let e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), v));
            _mm512_storeu_ps(oc.as_mut_ptr(), _mm512_div_ps(v, _mm512_add_ps(_mm512_set1_ps(1.0), e)));
        }
    }
    whole
}
