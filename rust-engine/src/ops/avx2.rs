//! AVX2 + FMA + F16C twins of the scalar float kernels in `dot.rs` and `softmax.rs`, for
//! both reference-build profiles.
//!
//! They compute the same operations in the same order as the scalar emulation of ggml's
//! lanes, so results are bit-identical; `tests/ops_kernels.rs` holds each pair together.
//! The const parameter `H` is the number of 8-lane registers that make one of the
//! reference's vectors: 1 mirrors an AVX2 build, 2 an AVX-512 build (the low and high
//! halves of its 16 lanes, each half computing exactly what that half of a 512-bit
//! instruction computes). Loading an f16 as f32 (`vcvtph2ps`) is exact, so an f16 operand
//! may be converted once up front and then read as f32 without changing any product.

#![allow(unsafe_code)]

use std::arch::x86_64::*;

use super::dot::{f16_tail, f16_to_f32};

/// Elements per step with `H` registers a vector: 4 accumulators × 8H lanes (ggml's
/// `GGML_F16_STEP`/`GGML_F32_STEP`).
const fn step(h: usize) -> usize {
    32 * h
}

/// Proof that this CPU has AVX2, FMA and F16C: only [`detect`](Self::detect) creates one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Avx2Fma(());

impl Avx2Fma {
    pub(crate) fn detect() -> Option<Self> {
        (is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c"))
        .then_some(Avx2Fma(()))
    }
}

/// ggml's reduction of four accumulators: (0+2, 1+3), then 0+1, then the lanes: for one
/// register (`GGML_F32x8_REDUCE`) the two 128-bit halves, then two horizontal adds:
/// `(l0+l1) + (l2+l3)`; for two, gcc's `_mm512_reduce_add_ps` ([`lane_sum16`]).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn reduce<const H: usize>(acc: [[__m256; H]; 4]) -> f32 {
    let a: [__m256; H] = std::array::from_fn(|h| {
        _mm256_add_ps(_mm256_add_ps(acc[0][h], acc[2][h]), _mm256_add_ps(acc[1][h], acc[3][h]))
    });
    if H == 1 {
        let t = _mm_add_ps(_mm256_castps256_ps128(a[0]), _mm256_extractf128_ps::<1>(a[0]));
        let t = _mm_hadd_ps(t, t);
        _mm_cvtss_f32(_mm_hadd_ps(t, t))
    } else {
        lane_sum16(a[0], a[1])
    }
}

/// gcc's `_mm512_reduce_add_ps` of the 16 lanes `lo`, `hi`: the halves added, then the
/// 128-bit halves, then `(t0+t2) + (t1+t3)`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn lane_sum16(lo: __m256, hi: __m256) -> f32 {
    let h = _mm256_add_ps(hi, lo);
    quad_sum(_mm_add_ps(_mm256_extractf128_ps::<1>(h), _mm256_castps256_ps128(h)))
}

/// `(t0+t2) + (t1+t3)` of four lanes (movehl, then movehdup).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn quad_sum(t: __m128) -> f32 {
    let t = _mm_add_ps(t, _mm_movehl_ps(t, t));
    _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)))
}

/// Eight f16 (little-endian, any alignment) at `p`, as f32.
///
/// # Safety
/// `p` must be valid for 16 bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_f16(p: *const u8) -> __m256 {
    // SAFETY: the caller guarantees 16 readable bytes; the load is unaligned.
    _mm256_cvtph_ps(unsafe { _mm_loadu_si128(p as *const __m128i) })
}

/// Where the vector operand of the row kernel comes from.
#[derive(Clone, Copy)]
enum Vector {
    F32(*const f32),
    /// f16 bits, widened on load (exact): half the bytes of f32 to read per step.
    F16(*const u8),
}

/// Eight elements of the vector at `i`.
///
/// # Safety
/// The vector must be valid for `i + 8` elements.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_vector(y: Vector, i: usize) -> __m256 {
    match y {
        // SAFETY: i + 8 elements are valid (caller contract); unaligned loads.
        Vector::F32(p) => unsafe { _mm256_loadu_ps(p.add(i)) },
        // SAFETY: as above, 16 bytes at 2i.
        Vector::F16(p) => unsafe { load_f16(p.add(2 * i)) },
    }
}

/// How far ahead of each row's loads the row kernel prefetches, in bytes. The lm_head streams
/// 626 MB per token from memory; a software prefetch 8 lines ahead keeps more misses in
/// flight than the out-of-order window alone. Measured here (`harness bench`, lm_head alone,
/// Rust ÷ reference, paired, 4 runs each): 0.95 → 1.00 at 1 thread, 0.89 → 0.95 at 2; 1 KiB
/// and 2 KiB ahead were worse than none.
const PREFETCH_BYTES: usize = 512;

/// Four-accumulator FMA sums over `np` (a multiple of `step(H)`) elements of `R` f16 rows
/// against one vector, reduced the ggml way. The vector is loaded once per step for all rows.
///
/// # Safety
/// Each `w[r]` must be valid for `2·np` bytes and `y` for `np` elements.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_rows_body<const R: usize, const H: usize>(w: [*const u8; R], y: Vector, np: usize) -> [f32; R] {
    let mut acc = [[[_mm256_setzero_ps(); H]; 4]; R];
    let mut i = 0;
    while i < np {
        for w_r in w {
            for line in 0..H {
                // A hint: it never faults, so an address past the row (wrapping_add) is fine.
                let at = 2 * i + 64 * line + PREFETCH_BYTES;
                _mm_prefetch::<_MM_HINT_T0>(w_r.wrapping_add(at) as *const i8);
            }
        }
        for j in 0..4 {
            for h in 0..H {
                let at = i + 8 * (j * H + h);
                // SAFETY: at + 8 <= np, within both operands (caller contract).
                let yv = unsafe { load_vector(y, at) };
                for (acc_r, w_r) in acc.iter_mut().zip(w) {
                    // SAFETY: as above, bytes 2·at .. 2·at + 16 of row r.
                    let wv = unsafe { load_f16(w_r.add(2 * at)) };
                    acc_r[j][h] = _mm256_fmadd_ps(wv, yv, acc_r[j][h]);
                }
            }
        }
        i += step(H);
    }
    acc.map(|a| reduce(a))
}

/// `dot_f16_f32` (see `dot.rs`) of `R` rows given as raw f16 bytes against `y`, at once.
///
/// # Panics
/// If a row's byte length differs from `2·y.len()`.
pub(crate) fn dot_f16_bytes_rows<const R: usize, const H: usize>(
    _t: Avx2Fma,
    rows: [&[u8]; R],
    y: &[f32],
) -> [f32; R] {
    let n = y.len();
    for r in &rows {
        assert_eq!(r.len(), 2 * n, "f16 row and vector differ in length");
    }
    let np = n & !(step(H) - 1);
    // SAFETY: the token proves the features; every row holds 2n >= 2np bytes and y holds n >= np.
    let heads = unsafe { f16_rows_body::<R, H>(rows.map(|r| r.as_ptr()), Vector::F32(y.as_ptr()), np) };
    std::array::from_fn(|r| f16_tail(heads[r], rows[r], |k| y[k], np))
}

/// `dot_f16` (see `dot.rs`) of `R` rows given as raw f16 bytes against the f16 vector `y`.
///
/// # Panics
/// If a row's byte length differs from `2·y.len()`.
pub(crate) fn dot_f16_bytes_rows_f16<const R: usize, const H: usize>(
    _t: Avx2Fma,
    rows: [&[u8]; R],
    y: &[u16],
) -> [f32; R] {
    let n = y.len();
    for r in &rows {
        assert_eq!(r.len(), 2 * n, "f16 row and vector differ in length");
    }
    let np = n & !(step(H) - 1);
    // SAFETY: the token proves the features; every row holds 2n >= 2np bytes and y holds n >= np.
    let heads =
        unsafe { f16_rows_body::<R, H>(rows.map(|r| r.as_ptr()), Vector::F16(y.as_ptr() as *const u8), np) };
    std::array::from_fn(|r| f16_tail(heads[r], rows[r], |k| f16_to_f32(y[k]), np))
}

/// `dot_f16_f32` (see `dot.rs`): f16 values against f32 values.
pub(crate) fn dot_f16_f32<const H: usize>(t: Avx2Fma, x: &[u16], y: &[f32]) -> f32 {
    assert_eq!(x.len(), y.len());
    let x: &[u8] = bytes_of(x);
    dot_f16_bytes_rows::<1, H>(t, [x], y)[0]
}

/// `dot_f16` of two f16 vectors.
pub(crate) fn dot_f16<const H: usize>(t: Avx2Fma, x: &[u16], y: &[u16]) -> f32 {
    assert_eq!(x.len(), y.len());
    dot_f16_bytes_rows_f16::<1, H>(t, [bytes_of(x)], y)[0]
}

/// The little-endian bytes of f16 bits (x86 is little-endian: a reinterpretation).
pub(crate) fn bytes_of(x: &[u16]) -> &[u8] {
    // SAFETY: u8 has no alignment or validity requirement; the length covers the same bytes.
    unsafe { std::slice::from_raw_parts(x.as_ptr() as *const u8, 2 * x.len()) }
}

/// The 8×8 transpose: `out[k][i] = r[i][k]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    // Pairs of rows interleaved, then quadruples, then the 128-bit halves exchanged.
    let t: [__m256; 8] = std::array::from_fn(|i| {
        let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
        if i % 2 == 0 {
            _mm256_unpacklo_ps(a, b)
        } else {
            _mm256_unpackhi_ps(a, b)
        }
    });
    // u[0..4]: elements 0|4, 1|5, 2|6, 3|7 of rows 0..3; u[4..8] the same of rows 4..7.
    let quad =
        |lo: __m256, hi: __m256| [_mm256_shuffle_ps::<0x44>(lo, hi), _mm256_shuffle_ps::<0xee>(lo, hi)];
    let [u0, u1] = quad(t[0], t[2]);
    let [u2, u3] = quad(t[1], t[3]);
    let [u4, u5] = quad(t[4], t[6]);
    let [u6, u7] = quad(t[5], t[7]);
    [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ]
}

/// Columns `cols` of the row-major `src` (`rows × n`, from its front) as rows of `dst`:
/// `dst[(c − cols.start)·rows + r] = src[r·n + c]`, `rows = dst.len() / cols.len()`. Blocks
/// of 8 × 8 go through [`transpose8`], the edges one value at a time.
///
/// # Panics
/// If `dst` is not whole rows, `cols` exceeds `n` or `src` holds fewer than `rows · n` values.
pub(crate) fn transpose_cols(
    _t: Avx2Fma,
    src: &[f32],
    n: usize,
    cols: std::ops::Range<usize>,
    dst: &mut [f32],
) {
    let (c0, w) = (cols.start, cols.len());
    if w == 0 {
        return;
    }
    let rows = dst.len() / w;
    assert!(dst.len() == rows * w && cols.end <= n && src.len() >= rows * n, "transpose shapes");
    let (r8, c8) = (rows & !7, c0 + (w & !7));
    for r in (0..r8).step_by(8) {
        for c in (c0..c8).step_by(8) {
            // SAFETY: the token proves the features; rows r..r+8 (< rows) of `src` hold
            // columns c..c+8 (c + 8 <= cols.end <= n), and rows c−c0..c−c0+8 (< w) of `dst`
            // hold elements r..r+8 (< rows), all inside the slices (asserted above).
            unsafe {
                transpose_block(
                    src.as_ptr().add(r * n + c),
                    n,
                    dst.as_mut_ptr().add((c - c0) * rows + r),
                    rows,
                )
            };
        }
        for c in c8..cols.end {
            for i in r..r + 8 {
                dst[(c - c0) * rows + i] = src[i * n + c];
            }
        }
    }
    for r in r8..rows {
        for c in cols.clone() {
            dst[(c - c0) * rows + r] = src[r * n + c];
        }
    }
}

/// One 8 × 8 block of [`transpose_cols`].
///
/// # Safety
/// AVX must be available; `src` must be valid for reading 8 f32s at `i·n` and `dst` for
/// writing 8 at `k·stride`, for every `i, k < 8`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn transpose_block(src: *const f32, n: usize, dst: *mut f32, stride: usize) {
    // SAFETY: eight f32s at each `i·n` (caller contract); unaligned loads.
    let r: [__m256; 8] = std::array::from_fn(|i| unsafe { _mm256_loadu_ps(src.add(i * n)) });
    for (k, col) in transpose8(r).into_iter().enumerate() {
        // SAFETY: eight f32s at each `k·stride` (caller contract); unaligned stores.
        unsafe { _mm256_storeu_ps(dst.add(k * stride), col) };
    }
}

/// NEOX RoPE of one head (`x` = `2·cos.len()` values) with the fused multiply-adds of
/// [`super::rope`]: `x0 = fma(x0, cos, −(x1·sin))`, `x1 = fma(x0, sin, x1·cos)` for the pairs
/// `(i, i + half)`, eight pairs at a time (the same operations on each lane).
///
/// # Panics
/// If `x.len() != 2·cos.len()` or `sin.len() != cos.len()`.
pub(crate) fn rope_neox(_t: Avx2Fma, x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = cos.len();
    assert!(x.len() == 2 * half && sin.len() == half, "RoPE shapes");
    let (lo, hi) = x.split_at_mut(half);
    // SAFETY: the token proves the features.
    unsafe { rope_neox_body(lo, hi, cos, sin) }
}

/// [`rope_neox`] on the halves `lo`, `hi` (each `cos.len()` values).
///
/// # Safety
/// AVX2 and FMA must be available; all four slices must hold `cos.len()` values.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rope_neox_body(lo: &mut [f32], hi: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = cos.len();
    let whole = half & !7;
    for i in (0..whole).step_by(8) {
        // SAFETY: i + 8 <= half elements of all four slices (caller contract); unaligned
        // loads and stores.
        unsafe {
            let (x0, x1) = (_mm256_loadu_ps(lo.as_ptr().add(i)), _mm256_loadu_ps(hi.as_ptr().add(i)));
            let (c, s) = (_mm256_loadu_ps(cos.as_ptr().add(i)), _mm256_loadu_ps(sin.as_ptr().add(i)));
            let neg_x1s = _mm256_xor_ps(_mm256_mul_ps(x1, s), _mm256_set1_ps(-0.0));
            _mm256_storeu_ps(lo.as_mut_ptr().add(i), _mm256_fmadd_ps(x0, c, neg_x1s));
            _mm256_storeu_ps(hi.as_mut_ptr().add(i), _mm256_fmadd_ps(x0, s, _mm256_mul_ps(x1, c)));
        }
    }
    for i in whole..half {
        let (x0, x1) = (lo[i], hi[i]);
        lo[i] = x0.mul_add(cos[i], -(x1 * sin[i]));
        hi[i] = x0.mul_add(sin[i], x1 * cos[i]);
    }
}

/// The sums of squares of eight rows of equal length, `Σ f64(x·x)` over each row in order
/// (the sum of [`super::rms_norm`]): each f64 lane is one row's sequential sum with exactly
/// the scalar's operations, so eight sums advance together instead of one. Eight elements
/// of the eight rows become eight vectors of one element per row by [`transpose8`].
///
/// # Panics
/// If the rows differ in length.
pub(crate) fn sum_squares8(_t: Avx2Fma, rows: [&[f32]; 8]) -> [f64; 8] {
    let d = rows[0].len();
    assert!(rows.iter().all(|r| r.len() == d), "rows differ in length");
    // SAFETY: the token proves the features; every row holds d elements.
    unsafe { sum_squares8_body(rows, d) }
}

/// # Safety
/// Every row must hold `d` elements.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn sum_squares8_body(rows: [&[f32]; 8], d: usize) -> [f64; 8] {
    // Rows 0..4 and 4..8.
    let (mut lo, mut hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
    let whole = d & !7;
    for k in (0..whole).step_by(8) {
        // SAFETY: k + 8 <= d elements of every row (caller contract); unaligned loads.
        let r: [__m256; 8] = std::array::from_fn(|i| unsafe { _mm256_loadu_ps(rows[i].as_ptr().add(k)) });
        for col in transpose8(r) {
            let sq = _mm256_mul_ps(col, col);
            lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(sq)));
            hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(sq)));
        }
    }
    let mut sums = [0f64; 8];
    // SAFETY: `sums` holds eight f64s, four at 0 and four at 4.
    unsafe {
        _mm256_storeu_pd(sums.as_mut_ptr(), lo);
        _mm256_storeu_pd(sums.as_mut_ptr().add(4), hi);
    }
    for (s, r) in sums.iter_mut().zip(rows) {
        for &v in &r[whole..] {
            *s += f64::from(v * v);
        }
    }
    sums
}

/// `dot_f32` of two f32 vectors.
pub(crate) fn dot_f32<const H: usize>(_t: Avx2Fma, x: &[f32], y: &[f32]) -> f32 {
    assert_eq!(x.len(), y.len());
    let n = x.len();
    let np = n & !(step(H) - 1);
    // SAFETY: the token proves the features; both vectors hold n >= np elements.
    let mut sum = unsafe { dot_f32_body::<H>(x.as_ptr(), y.as_ptr(), np) };
    for k in np..n {
        sum += x[k] * y[k];
    }
    sum
}

/// # Safety
/// `x` and `y` must be valid for `np` f32s.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f32_body<const H: usize>(x: *const f32, y: *const f32, np: usize) -> f32 {
    let mut acc = [[_mm256_setzero_ps(); H]; 4];
    let mut i = 0;
    while i < np {
        for (j, a) in acc.iter_mut().enumerate() {
            for (h, a) in a.iter_mut().enumerate() {
                let at = i + 8 * (j * H + h);
                // SAFETY: at + 8 <= np (caller contract).
                let (xv, yv) = unsafe { (_mm256_loadu_ps(x.add(at)), _mm256_loadu_ps(y.add(at))) };
                *a = _mm256_fmadd_ps(xv, yv, *a);
            }
        }
        i += step(H);
    }
    reduce(acc)
}

/// `out[i] = f16(x[i])`, rounding to nearest even (`vcvtps2ph` with immediate 0, as ggml's
/// `GGML_FP32_TO_FP16` on F16C).
pub(crate) fn f32_to_f16_row(_t: Avx2Fma, x: &[f32], out: &mut [u16]) {
    assert_eq!(x.len(), out.len());
    let mut xs = x.chunks_exact(8);
    let mut os = out.chunks_exact_mut(8);
    for (xc, oc) in (&mut xs).zip(&mut os) {
        // SAFETY: the token proves F16C; both chunks hold 8 elements; loads/stores are unaligned.
        unsafe {
            let h = _mm256_cvtps_ph::<0>(_mm256_loadu_ps(xc.as_ptr()));
            _mm_storeu_si128(oc.as_mut_ptr() as *mut __m128i, h);
        }
    }
    for (o, &v) in os.into_remainder().iter_mut().zip(xs.remainder()) {
        *o = super::dot::f32_to_f16(v);
    }
}

/// Rounds every element through f16 (`f32_to_f16` then back), in place.
pub(crate) fn round_through_f16(_t: Avx2Fma, x: &mut [f32]) {
    let mut xs = x.chunks_exact_mut(8);
    for c in &mut xs {
        // SAFETY: the token proves F16C; the chunk holds 8 f32s; loads/stores are unaligned.
        unsafe {
            let h = _mm256_cvtps_ph::<0>(_mm256_loadu_ps(c.as_ptr()));
            _mm256_storeu_ps(c.as_mut_ptr(), _mm256_cvtph_ps(h));
        }
    }
    for v in xs.into_remainder() {
        *v = f16_to_f32(super::dot::f32_to_f16(*v));
    }
}

/// The start both builds' `ggml_v_expf` share, on eight lanes: `z` (n in its low bits), `n`,
/// `b = x − n·ln2`, `u = b²`, and the polynomial's inner part `p = (c4·b + c3)·u + (c2·b + c1)`.
/// The builds then end `j` differently (see `softmax.rs`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn exp8_start(x: __m256) -> [__m256; 5] {
    let r = _mm256_set1_ps(12_582_912.0);
    let z = _mm256_fmadd_ps(x, _mm256_set1_ps(f32::from_bits(0x3fb8_aa3b)), r);
    let n = _mm256_sub_ps(z, r);
    let b = _mm256_fnmadd_ps(
        n,
        _mm256_set1_ps(f32::from_bits(0x35bf_be8e)),
        _mm256_fnmadd_ps(n, _mm256_set1_ps(f32::from_bits(0x3f31_7200)), x),
    );
    let u = _mm256_mul_ps(b, b);
    let p = _mm256_fmadd_ps(
        _mm256_fmadd_ps(
            _mm256_set1_ps(f32::from_bits(0x3c07_2010)),
            b,
            _mm256_set1_ps(f32::from_bits(0x3d2b_9f17)),
        ),
        u,
        _mm256_fmadd_ps(
            _mm256_set1_ps(f32::from_bits(0x3e2a_af33)),
            b,
            _mm256_set1_ps(f32::from_bits(0x3eff_fedb)),
        ),
    );
    [z, n, b, u, p]
}

/// `c0`, the polynomial's last coefficient.
const EXP_C0: f32 = f32::from_bits(0x3f7f_fff6);

/// ggml's `ggml_v_expf` (AVX2 + FMA), eight lanes; [`exp_lane`](super::softmax::exp_lane)
/// is one lane of it.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn exp8(x: __m256) -> __m256 {
    let [z, n, b, u, p] = exp8_start(x);
    let e = _mm256_slli_epi32::<23>(_mm256_castps_si256(z));
    let k = _mm256_castsi256_ps(_mm256_add_epi32(e, _mm256_castps_si256(_mm256_set1_ps(1.0))));
    let abs_n = _mm256_andnot_ps(_mm256_set1_ps(-0.0), n);
    let c = _mm256_cmp_ps::<_CMP_GT_OQ>(abs_n, _mm256_set1_ps(126.0));
    let j = _mm256_fmadd_ps(p, u, _mm256_mul_ps(_mm256_set1_ps(EXP_C0), b));
    if _mm256_movemask_ps(c) == 0 {
        return _mm256_fmadd_ps(j, k, k);
    }
    let g = _mm256_and_si256(
        _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(n, _mm256_setzero_ps())),
        _mm256_set1_epi32(0x8200_0000u32 as i32),
    );
    let s1 = _mm256_castsi256_ps(_mm256_add_epi32(g, _mm256_set1_epi32(0x7f00_0000)));
    let s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, g));
    let d = _mm256_cmp_ps::<_CMP_GT_OQ>(abs_n, _mm256_set1_ps(192.0));
    _mm256_or_ps(
        _mm256_and_ps(d, _mm256_mul_ps(s1, s1)),
        _mm256_andnot_ps(
            d,
            _mm256_or_ps(
                _mm256_and_ps(c, _mm256_mul_ps(_mm256_fmadd_ps(s2, j, s2), s1)),
                _mm256_andnot_ps(c, _mm256_fmadd_ps(k, j, k)),
            ),
        ),
    )
}

/// Eight lanes of the AVX-512 build's `ggml_v_expf` (see `softmax.rs`): `scalef(j, n)`,
/// then 0 or ∞ past `|n| > 192`. `scalef` is `j·2ⁿ` rounded once; here `j·2^⌊n/2⌋` is
/// exact (a normal float for `|n| ≤ 192`) and the second factor rounds once.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn exp8_avx512(x: __m256) -> __m256 {
    let [_, n, b, u, p] = exp8_start(x);
    let abs_n = _mm256_andnot_ps(_mm256_set1_ps(-0.0), n);
    let d = _mm256_cmp_ps::<_CMP_GT_OQ>(abs_n, _mm256_set1_ps(192.0));
    let j = _mm256_fmadd_ps(p, u, _mm256_fmadd_ps(_mm256_set1_ps(EXP_C0), b, _mm256_set1_ps(1.0)));
    // n is integral here; lanes with |n| > 192 or ±∞ are replaced below, and a NaN lane has
    // a NaN j, so its result stays NaN whatever the conversion made of n.
    let ni = _mm256_cvtps_epi32(n);
    let a = _mm256_srai_epi32::<1>(ni);
    let pow2 = |k: __m256i| {
        _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(k, _mm256_set1_epi32(127))))
    };
    let res = _mm256_mul_ps(_mm256_mul_ps(j, pow2(a)), pow2(_mm256_sub_epi32(ni, a)));
    if _mm256_movemask_ps(d) == 0 {
        return res;
    }
    let neg = _mm256_cmp_ps::<_CMP_LE_OQ>(n, _mm256_setzero_ps());
    let alt = _mm256_andnot_ps(neg, _mm256_set1_ps(f32::INFINITY));
    _mm256_blendv_ps(res, alt, d)
}

/// One vector of the profile's `ggml_v_expf`: `H` registers of eight lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn exp_vector<const H: usize>(x: [__m256; H]) -> [__m256; H] {
    x.map(|v| if H == 1 { exp8(v) } else { exp8_avx512(v) })
}

/// The exponentiation pass of ggml's `ggml_vec_soft_max_f32` over whole vectors of `8H`
/// lanes: `x[i] = exp(x[i] − max)`, returning the f64 sum of each vector's horizontal f32
/// sum. Elements past the last whole vector are left to the caller.
pub(crate) fn exp_sub_sum<const H: usize>(_t: Avx2Fma, x: &mut [f32], max: f32) -> f64 {
    let mut sum = 0f64;
    for c in x.chunks_exact_mut(8 * H) {
        // SAFETY: the token proves the features; the chunk holds 8H f32s; unaligned loads/stores.
        let s = unsafe {
            let m = _mm256_set1_ps(max);
            let v = exp_vector::<H>(std::array::from_fn(|h| {
                _mm256_sub_ps(_mm256_loadu_ps(c.as_ptr().add(8 * h)), m)
            }));
            for (h, vh) in v.iter().enumerate() {
                _mm256_storeu_ps(c.as_mut_ptr().add(8 * h), *vh);
            }
            if H == 1 {
                quad_sum(_mm_add_ps(_mm256_extractf128_ps::<1>(v[0]), _mm256_castps256_ps128(v[0])))
            } else {
                lane_sum16(v[0], v[H - 1])
            }
        };
        sum += f64::from(s);
    }
    sum
}

/// `ggml_vec_silu_f32` over whole vectors of `8H` lanes: `x / (1 + exp(0 − x))`; returns how
/// many elements were done (the caller finishes the rest with libm).
pub(crate) fn silu<const H: usize>(_t: Avx2Fma, x: &[f32], out: &mut [f32]) -> usize {
    assert_eq!(x.len(), out.len());
    let whole = x.len() / (8 * H) * (8 * H);
    for (xc, oc) in x[..whole].chunks_exact(8 * H).zip(out[..whole].chunks_exact_mut(8 * H)) {
        // SAFETY: the token proves the features; both chunks hold 8H f32s; unaligned.
        unsafe {
            let xs: [__m256; H] = std::array::from_fn(|h| _mm256_loadu_ps(xc.as_ptr().add(8 * h)));
            let e = exp_vector::<H>(xs.map(|v| _mm256_sub_ps(_mm256_setzero_ps(), v)));
            for h in 0..H {
                let y = _mm256_div_ps(xs[h], _mm256_add_ps(_mm256_set1_ps(1.0), e[h]));
                _mm256_storeu_ps(oc.as_mut_ptr().add(8 * h), y);
            }
        }
    }
    whole
}
