//! AVX2 kernels: the QK256 integer dot product and activation quantization.
//!
//! Both must equal their scalar twins in [`scalar`](super::scalar) and
//! [`act`](super::act) bit for bit; `tests/quant_kernels.rs` holds them together.
//!
//! # The QK256 dot, and how it differs from the reference's
//!
//! One 32-byte chunk of weights holds 128 codes: byte `b` has elements `b`, `b+32`, `b+64`,
//! `b+96` in bits 7–6, 5–4, 3–2, 1–0, lining up with four contiguous 32-byte runs of
//! activations `a0..a3`. The reference shifts the chunk right by 6/4/2/0 and masks each
//! with 3 (seven operations). We use one shift and four masks: `w & 3` is `c3`,
//! `w & 12` is `4·c2`, and with `s = w >> 4` (16-bit lanes), `s & 3` is `c1` and `s & 12`
//! is `4·c0`. `vpmaddubsw` multiplies those (unsigned) by the activations (signed) and adds
//! adjacent pairs into i16, never saturating (|pair| ≤ 2·12·128 = 3072). The unscaled
//! products (`c1`, `c3`) and the 4× ones (`c0`, `c2`) go to two i16 accumulators, widened
//! to i32 every [`GROUP_CHUNKS`] chunks (`vpmaddwd` by 1); the 4× sums are multiples of 4,
//! so an arithmetic shift by 2 makes them exact before they join the i32 total.
//!
//! The reference (`ggml_vec_dot_i2_i8_s_1x1`) adds its i16 lanes over up to 32 chunks
//! before widening: a lane can reach 32·4·2·2·127 = 65024, which wraps. Ours stay within
//! ±5·2·3072 = ±30720 (4× accumulator) and ±5·2·768 (the other), even with the invalid
//! code 3, so our sums are exact for every byte pattern.
//!
//! Several rows are processed per pass so the four activation loads of a chunk are shared;
//! the caller takes them from separate long stretches of rows (see `matrix.rs`, `STREAMS`).
//! For several activation rows (a batch of tokens), [`qk256_dots_cols`] extracts each
//! weight chunk's codes once and multiplies them with every column; there the extraction is
//! cheap next to the products, and registers are short, so it uses the reference's
//! extraction with one accumulator per column (widened every [`COLS_GROUP_CHUNKS`] chunks).

#![allow(unsafe_code)]

use std::arch::x86_64::*;

use super::act::{nearest_int_from_biased, ACT_MAX_FLOOR, NEAREST_INT_MAGIC};

/// Chunks (of 128 elements) accumulated in i16 lanes before widening to i32 by the row
/// kernel. Each chunk adds at most 2·3072 = 6144 in magnitude to a lane of the 4×
/// accumulator; 5 chunks stay below 2¹⁵.
pub(crate) const GROUP_CHUNKS: usize = 5;
/// The same for the column kernel: at most 4·768 = 3072 per chunk; 10 chunks stay below 2¹⁵.
pub(crate) const COLS_GROUP_CHUNKS: usize = 10;

/// Proof that this CPU has AVX2 and FMA: only [`detect`](Self::detect) creates one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Avx2Token(());

impl Avx2Token {
    pub(crate) fn detect() -> Option<Self> {
        (is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")).then_some(Avx2Token(()))
    }
}

/// `Σ c·q` (codes 0..3 as stored, not minus one) for `R` weight rows in the x86 I2_S layout
/// against one activation row `q`.
///
/// # Panics
/// If a row's byte length times 4 differs from `q.len()`, or `q.len()` is not a multiple of 128.
#[inline]
pub(crate) fn qk256_dots<const R: usize>(_t: Avx2Token, rows: [&[u8]; R], q: &[i8]) -> [i32; R] {
    let chunks = super::layout::qk256_row_chunks(&rows, q);
    // SAFETY: the token proves AVX2 is available; every row holds `q.len() / 4` bytes and `q`
    // holds `128 · (q.len() / 128)` values, which is all the kernel reads.
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
    _t: Avx2Token,
    stretches: [&[u8]; R],
    q: &[i8],
    mut emit: impl FnMut(usize, [i32; R]),
) {
    let rows = super::layout::qk256_stretch_rows(&stretches, q);
    // SAFETY: the token proves AVX2 is available; every stretch holds `rows` rows of
    // `q.len() / 4` bytes and `q` holds `128 · (q.len() / 128)` values, which is all the
    // kernel reads.
    unsafe {
        stretches_kernel::<R>(stretches.map(|s| s.as_ptr()), rows, q.as_ptr(), q.len() / 128, &mut emit)
    }
}

/// How far ahead of each row's loads the rows kernels (this one and the VNNI one) prefetch
/// into L1, at every chunk. They are not purely bandwidth-bound, and with the hardware
/// prefetcher alone the core waits on lines it then computes on: streaming matrices from
/// memory (60 × 6912×2560, one thread, VNNI kernel, AMD Zen 4) went from 20.7 to 24.4 GB/s
/// (median) with 512 bytes; 1024 and more, or prefetching into L2 only, gained less. In cache
/// (2 MiB pages) the prefetches cost 0–4 %.
pub(crate) const PREFETCH_BYTES: usize = 512;

/// [`matrix::tensor_epilogue`](super::matrix::tensor_epilogue) compiled for AVX2: IEEE
/// operations round the same at any vector width (and none is fused), so only the speed
/// differs. Eight lanes instead of the baseline's four halve the divisions' time, about 1 % of
/// a 2560-row product.
pub(crate) fn tensor_epilogue(_t: Avx2Token, out: &mut [f32], act_sum: f32, s: f32, w: f32) {
    // SAFETY: the token proves AVX2 is available.
    unsafe { tensor_epilogue_avx2(out, act_sum, s, w) }
}

/// # Safety
/// AVX2 must be available.
#[target_feature(enable = "avx2")]
unsafe fn tensor_epilogue_avx2(out: &mut [f32], act_sum: f32, s: f32, w: f32) {
    super::matrix::tensor_epilogue(out, act_sum, s, w);
}

/// Asks the CPU to bring `bytes` into its L2 cache, one 64-byte line at a time: a hint that
/// changes no result (for weights a blocked product reads next while it computes on others).
pub(crate) fn prefetch_l2(bytes: &[u8]) {
    for line in bytes.chunks(64) {
        // SAFETY: a prefetch never faults and changes no memory; the address is inside `bytes`
        // (SSE, in every x86-64 CPU).
        unsafe { _mm_prefetch::<_MM_HINT_T1>(line.as_ptr() as *const i8) }
    }
}

/// `Σ c·q` of one weight row against `C` activation rows (columns): the codes of each chunk
/// are extracted once for all columns.
///
/// # Panics
/// If the row's byte length times 4 differs from a column's length, or that length is not a
/// multiple of 128.
#[inline]
pub(crate) fn qk256_dots_cols<const C: usize>(_t: Avx2Token, row: &[u8], qs: [&[i8]; C]) -> [i32; C] {
    let chunks = super::layout::qk256_tile_chunks(&[row], &qs);
    // SAFETY: the token proves AVX2 is available; the row holds `n / 4` bytes and every
    // column `n` values, n = 128 · chunks, which is all the kernel reads.
    unsafe { cols_kernel::<C>(row.as_ptr(), qs.map(|q| q.as_ptr()), chunks) }
}

/// The rows kernel over `rows` rows of each of `R` stretches, row by row.
///
/// # Safety
/// AVX2 must be available; each `w[k]` must be valid for `rows · 32 · chunks` bytes and `q`
/// for `128 · chunks` bytes.
#[inline]
#[target_feature(enable = "avx2")]
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

/// `R` rows × one column, one shift and four masks per chunk (see the module docs).
///
/// # Safety
/// AVX2 must be available; each `w[r]` must be valid for `32 · chunks` bytes and `q` for
/// `128 · chunks` bytes.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn rows_kernel<const R: usize>(w: [*const u8; R], q: *const i8, chunks: usize) -> [i32; R] {
    let m3 = _mm256_set1_epi8(3);
    let m12 = _mm256_set1_epi8(12);
    let ones = _mm256_set1_epi16(1);
    let mut acc32 = [_mm256_setzero_si256(); R];
    let mut start = 0;
    while start < chunks {
        let end = (start + GROUP_CHUNKS).min(chunks);
        // Per row: Σ of the unscaled products (c1, c3) and of the 4× ones (c0, c2).
        let mut acc1 = [_mm256_setzero_si256(); R];
        let mut acc4 = [_mm256_setzero_si256(); R];
        for ch in start..end {
            // SAFETY: ch < chunks: the chunk's 128 activations are in bounds (caller contract).
            let a = unsafe { load_128_i8(q.add(128 * ch)) };
            for r in 0..R {
                // SAFETY: the 32 weight bytes at 32·ch of row r are in bounds (caller contract).
                let wv = unsafe { _mm256_loadu_si256(w[r].add(32 * ch) as *const __m256i) };
                _mm_prefetch::<_MM_HINT_T0>(w[r].wrapping_add(32 * ch + PREFETCH_BYTES) as *const i8);
                let hi = _mm256_srli_epi16::<4>(wv);
                let c3 = _mm256_and_si256(wv, m3);
                let c2x4 = _mm256_and_si256(wv, m12);
                let c1 = _mm256_and_si256(hi, m3);
                let c0x4 = _mm256_and_si256(hi, m12);
                let p1 = _mm256_add_epi16(_mm256_maddubs_epi16(c1, a[1]), _mm256_maddubs_epi16(c3, a[3]));
                let p4 = _mm256_add_epi16(_mm256_maddubs_epi16(c0x4, a[0]), _mm256_maddubs_epi16(c2x4, a[2]));
                acc1[r] = _mm256_add_epi16(acc1[r], p1);
                acc4[r] = _mm256_add_epi16(acc4[r], p4);
            }
        }
        for r in 0..R {
            // Every lane of acc4 is a multiple of 4, so are the pair sums: the shift is exact.
            let s4 = _mm256_srai_epi32::<2>(_mm256_madd_epi16(acc4[r], ones));
            let wide = _mm256_add_epi32(_mm256_madd_epi16(acc1[r], ones), s4);
            acc32[r] = _mm256_add_epi32(acc32[r], wide);
        }
        start = end;
    }
    let mut sums = [0i32; R];
    for (s, acc) in sums.iter_mut().zip(&acc32) {
        *s = hsum_i32(*acc);
    }
    sums
}

/// One row × `C` columns. The extraction is paid once for all columns, so it uses the plain
/// three shifts and four masks and keeps a single i16 accumulator per column (registers are
/// what limits this kernel): each chunk adds at most 4·768 = 3072 to a lane, so it widens
/// every [`COLS_GROUP_CHUNKS`] chunks.
///
/// # Safety
/// AVX2 must be available; `w` must be valid for `32 · chunks` bytes and each `q[c]` for
/// `128 · chunks` bytes.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn cols_kernel<const C: usize>(w: *const u8, q: [*const i8; C], chunks: usize) -> [i32; C] {
    let m3 = _mm256_set1_epi8(3);
    let ones = _mm256_set1_epi16(1);
    let mut acc32 = [_mm256_setzero_si256(); C];
    let mut start = 0;
    while start < chunks {
        let end = (start + COLS_GROUP_CHUNKS).min(chunks);
        let mut acc16 = [_mm256_setzero_si256(); C];
        for ch in start..end {
            // SAFETY: the 32 weight bytes at 32·ch are in bounds (caller contract).
            let wv = unsafe { _mm256_loadu_si256(w.add(32 * ch) as *const __m256i) };
            let c0 = _mm256_and_si256(_mm256_srli_epi16::<6>(wv), m3);
            let c1 = _mm256_and_si256(_mm256_srli_epi16::<4>(wv), m3);
            let c2 = _mm256_and_si256(_mm256_srli_epi16::<2>(wv), m3);
            let c3 = _mm256_and_si256(wv, m3);
            for c in 0..C {
                // Loaded where used, so the loads become memory operands of vpmaddubsw (a plain
                // loop, not a closure: a closure would not inherit the target features).
                // SAFETY: ch < chunks: column c's 128 activations at 128·ch are in bounds.
                let a = unsafe { load_128_i8(q[c].add(128 * ch)) };
                let p01 = _mm256_add_epi16(_mm256_maddubs_epi16(c0, a[0]), _mm256_maddubs_epi16(c1, a[1]));
                let p23 = _mm256_add_epi16(_mm256_maddubs_epi16(c2, a[2]), _mm256_maddubs_epi16(c3, a[3]));
                acc16[c] = _mm256_add_epi16(acc16[c], _mm256_add_epi16(p01, p23));
            }
        }
        for c in 0..C {
            acc32[c] = _mm256_add_epi32(acc32[c], _mm256_madd_epi16(acc16[c], ones));
        }
        start = end;
    }
    let mut sums = [0i32; C];
    for (s, acc) in sums.iter_mut().zip(&acc32) {
        *s = hsum_i32(*acc);
    }
    sums
}

/// Four unaligned 32-byte loads: one chunk's 128 activations.
///
/// # Safety
/// `p` must be valid for 128 bytes.
#[inline]
#[target_feature(enable = "avx2")]
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

#[inline]
#[target_feature(enable = "avx2")]
fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

/// Quantizes `x` into `q` like the reference's `quantize_row_i8_s` (fused or unfused
/// rounding). Returns `None`, leaving `q` unspecified, when `x` contains a NaN: the caller
/// then uses the scalar mirror, whose `MAX` recurrence handles NaN as the reference does.
///
/// # Panics
/// If `x.len() != q.len()`.
pub(crate) fn quantize_row(_t: Avx2Token, x: &[f32], q: &mut [i8], fused: bool) -> Option<(f32, i32)> {
    assert_eq!(x.len(), q.len());
    // SAFETY: the token proves AVX2 and FMA are available.
    let max_abs = unsafe { max_abs_avx2(x) }?;
    // Without NaN the reference's MAX recurrence is the plain maximum, floored at 1e-5.
    let max = f64::from(max_abs).max(ACT_MAX_FLOOR);
    let s = (127.0 / max) as f32;
    // SAFETY: as above; `x` and `q` have equal lengths (asserted).
    let sum = unsafe { quantize_avx2(x, q, s, fused) };
    Some((s, sum))
}

/// Max of |x_i| in f32, or `None` if some x_i is NaN.
///
/// # Safety
/// AVX2 must be available.
#[target_feature(enable = "avx2")]
unsafe fn max_abs_avx2(x: &[f32]) -> Option<f32> {
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let mut m = _mm256_setzero_ps();
    let mut nan = _mm256_setzero_ps();
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        // SAFETY: `c` has exactly 8 f32s; the load is unaligned.
        let v = unsafe { _mm256_loadu_ps(c.as_ptr()) };
        m = _mm256_max_ps(m, _mm256_and_ps(v, abs_mask));
        nan = _mm256_or_ps(nan, _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
    }
    if _mm256_movemask_ps(nan) != 0 || rest.iter().any(|v| v.is_nan()) {
        return None;
    }
    let mut lanes = [0f32; 8];
    // SAFETY: `lanes` has room for 8 f32s; the store is unaligned.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), m) };
    Some(lanes.iter().chain(rest).fold(0f32, |a, &v| a.max(v.abs())))
}

/// Writes `q_i = clamp(nearest_int(x_i·s), -128, 127)` and returns `Σ q_i` (wrapping).
///
/// # Safety
/// AVX2 and FMA must be available; `x.len() == q.len()`.
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_avx2(x: &[f32], q: &mut [i8], s: f32, fused: bool) -> i32 {
    let c = ToInt {
        s: _mm256_set1_ps(s),
        magic: _mm256_set1_ps(NEAREST_INT_MAGIC),
        mant: _mm256_set1_epi32(0x007f_ffff),
        bias: _mm256_set1_epi32(0x0040_0000),
        lo: _mm256_set1_epi32(-128),
        hi: _mm256_set1_epi32(127),
        fused,
    };
    // packs_epi32 + packs_epi16 leave 4-byte groups in the order 0 2 4 6 1 3 5 7 (by source
    // half-lane); this permutation restores element order.
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let mut sum = _mm256_setzero_si256();

    let xs = x.chunks_exact(32);
    let x_rest = xs.remainder();
    let mut qs = q.chunks_exact_mut(32);
    for (xc, qc) in xs.zip(&mut qs) {
        // SAFETY: `xc` holds 32 f32s, read as four unaligned loads of 8.
        let v: [__m256; 4] = std::array::from_fn(|k| unsafe { _mm256_loadu_ps(xc.as_ptr().add(8 * k)) });
        let i: [__m256i; 4] = [to_int(&c, v[0]), to_int(&c, v[1]), to_int(&c, v[2]), to_int(&c, v[3])];
        sum = _mm256_add_epi32(
            sum,
            _mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3])),
        );
        let b = _mm256_packs_epi16(_mm256_packs_epi32(i[0], i[1]), _mm256_packs_epi32(i[2], i[3]));
        let b = _mm256_permutevar8x32_epi32(b, order);
        // SAFETY: `qc` holds 32 bytes; the store is unaligned.
        unsafe { _mm256_storeu_si256(qc.as_mut_ptr() as *mut __m256i, b) };
    }
    let mut total = hsum_i32(sum);
    for (d, &v) in qs.into_remainder().iter_mut().zip(x_rest) {
        let biased = if fused { v.mul_add(s, NEAREST_INT_MAGIC) } else { v * s + NEAREST_INT_MAGIC };
        let i = nearest_int_from_biased(biased).clamp(-128, 127);
        total = total.wrapping_add(i);
        *d = i as i8;
    }
    total
}

/// The constants of [`to_int`].
struct ToInt {
    s: __m256,
    magic: __m256,
    mant: __m256i,
    bias: __m256i,
    lo: __m256i,
    hi: __m256i,
    fused: bool,
}

/// `clamp(nearest_int(v·s), -128, 127)` in each lane. A function with the target features
/// rather than a closure: a closure is compiled without them and, not inlined, passes every
/// vector through memory (it made quantization 3× slower).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn to_int(c: &ToInt, v: __m256) -> __m256i {
    let biased = if c.fused {
        _mm256_fmadd_ps(v, c.s, c.magic)
    } else {
        _mm256_add_ps(_mm256_mul_ps(v, c.s), c.magic)
    };
    let i = _mm256_sub_epi32(_mm256_and_si256(_mm256_castps_si256(biased), c.mant), c.bias);
    _mm256_min_epi32(_mm256_max_epi32(i, c.lo), c.hi)
}
