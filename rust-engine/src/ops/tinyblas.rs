//! llamafile's tinyBLAS (`3rdparty/llama.cpp/ggml/src/llamafile/sgemm.cpp`), the float
//! products of the reference's **batched** path.
//!
//! `ggml_compute_forward_mul_mat` (ggml.c) first offers every product to `llamafile_sgemm`
//! when its `src1` is contiguous; tinyBLAS takes it when
//! - `src1` has at least 2 columns (`n < 2` is declined: "only enable sgemm for prompt
//!   processing"), the output is F32, and
//! - `A` (the weights) is F32 with `B` F32, or F16 with `B` **F32** (x86), and
//! - `k` (the row length) is a multiple of the vector's lanes `KN`: 16 in a build with
//!   `__AVX512F__` (`tinyBLAS<16, __m512, ...>`), 8 in an AVX/AVX2 build with F16C
//!   (`tinyBLAS<8, __m256, ...>`).
//!
//! Otherwise the product goes on to ggml's own path (`src1` converted to the type's
//! `vec_dot_type`, e.g. F16, then `ggml_vec_dot_f16`: what one token computes). The Q8_0
//! tinyBLAS (`tinyBLAS_Q0_AVX`) computes the same bits as `ggml_vec_dot_q8_0_q8_0` (per block
//! `fma(dx·dy, 8 int lanes, acc)`, then the same 8-lane `hsum`), so it needs no mirror here.
//!
//! Every output element of `tinyBLAS::gemm<RM, RN>` is computed alone, whatever the tile
//! (`RM × RN`) or the thread that computes it: one accumulator vector `Cv[j][i]` of `KN`
//! lanes starts at zero, then for `l = 0, KN, 2·KN, .. < k`:
//! `Cv = madd(load(A + l), load(B + l), Cv)`, with `madd` an FMA (`_mm256_fmadd_ps` /
//! `_mm512_fmadd_ps`, both builds define `__FMA__`) and `load` of F16 a widening conversion
//! (exact). Lane `i` thus sums elements `i, i + KN, i + 2·KN, ..` in order. Then `hsum`:
//! - `__m256` (8 lanes): `x = hi128 + lo128` (4 lanes), `x + movehl(x)`, then
//!   `add_ss(x, movehdup(x))`: `((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7))`. Note this pairs
//!   the lanes otherwise than `ggml_vec_dot_f16`'s `GGML_F32x8_REDUCE` (two `hadd`s).
//! - `__m512` (16 lanes): gcc's `_mm512_reduce_add_ps` ([`lane_sum16`]).
//!
//! There is no leftover: tinyBLAS declines a `k` that is not a multiple of `KN`.
//!
//! The functions here are the scalar oracles, one output element at a time; the
//! [`FloatKernel`](super::FloatKernel) methods `tinyblas_*` compute the same bits with SIMD.

use super::dot::{f16_to_f32, lane_sum16};
use crate::profile::RefProfile;

/// A row of tinyBLAS's `A` (the weights, or the V cache).
#[derive(Debug, Clone, Copy)]
pub enum TinyRow<'a> {
    /// F16 as little-endian bytes (a row of a mapped tensor).
    F16Bytes(&'a [u8]),
    /// F16 as raw bits.
    F16(&'a [u16]),
    F32(&'a [f32]),
}

impl TinyRow<'_> {
    /// Elements of the row.
    pub fn len(self) -> usize {
        match self {
            TinyRow::F16Bytes(x) => x.len() / 2,
            TinyRow::F16(x) => x.len(),
            TinyRow::F32(x) => x.len(),
        }
    }

    pub fn is_empty(self) -> bool {
        self.len() == 0
    }
}

/// One element of tinyBLAS for any [`TinyRow`] and an F32 column.
pub fn dot(p: RefProfile, a: TinyRow<'_>, b: &[f32]) -> f32 {
    match a {
        TinyRow::F16Bytes(x) => dot_f16_bytes_f32(p, x, b),
        TinyRow::F16(x) => dot_f16_f32(p, x, b),
        TinyRow::F32(x) => dot_f32(p, x, b),
    }
}

/// `KN`, the f32 lanes of tinyBLAS's vectors in a build of this profile.
pub fn lanes(p: RefProfile) -> usize {
    p.lanes()
}

/// Whether `llamafile_sgemm` takes an F16 × F32 or F32 × F32 product of rows of `k` values
/// with `n_cols` columns in `src1` (contiguous, F32 output) in a build of this profile.
pub fn takes(p: RefProfile, k: usize, n_cols: usize) -> bool {
    n_cols >= 2 && k.is_multiple_of(lanes(p))
}

/// `hsum(__m256)` of sgemm.cpp: `((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7))`.
#[inline]
pub(crate) fn hsum8(v: &[f32]) -> f32 {
    let x: [f32; 4] = std::array::from_fn(|i| v[i + 4] + v[i]);
    (x[0] + x[2]) + (x[1] + x[3])
}

/// `hsum` of the profile's vector.
#[inline]
pub(crate) fn hsum(p: RefProfile, v: &[f32]) -> f32 {
    match p {
        RefProfile::Avx2 => hsum8(v),
        RefProfile::Avx512 => lane_sum16(v),
    }
}

/// One element of tinyBLAS: `KN` FMA lanes over `k` elements (a multiple of `KN`), then `hsum`.
#[inline]
fn dot_by(p: RefProfile, k: usize, a: impl Fn(usize) -> f32, b: impl Fn(usize) -> f32) -> f32 {
    let kn = lanes(p);
    assert!(k.is_multiple_of(kn), "tinyBLAS takes only rows of a multiple of {kn} values, not {k}");
    let mut acc = [0f32; 16];
    let acc = &mut acc[..kn];
    for l in (0..k).step_by(kn) {
        for (i, c) in acc.iter_mut().enumerate() {
            *c = a(l + i).mul_add(b(l + i), *c);
        }
    }
    hsum(p, acc)
}

/// `tinyBLAS<KN, .., ggml_fp16_t, float, float>`: one element of `A·B` for an F16 row `a`
/// (raw bits) and an F32 column `b` (not rounded to f16).
pub fn dot_f16_f32(p: RefProfile, a: &[u16], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    dot_by(p, b.len(), |i| f16_to_f32(a[i]), |i| b[i])
}

/// [`dot_f16_f32`] with the F16 row given as little-endian bytes (a row of a mapped tensor).
pub fn dot_f16_bytes_f32(p: RefProfile, a: &[u8], b: &[f32]) -> f32 {
    assert_eq!(a.len(), 2 * b.len());
    dot_by(p, b.len(), |i| f16_to_f32(u16::from_le_bytes([a[2 * i], a[2 * i + 1]])), |i| b[i])
}

/// `tinyBLAS<KN, .., float, float, float>`: one element of `A·B` for F32 `a` and `b`.
pub fn dot_f32(p: RefProfile, a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    dot_by(p, b.len(), |i| a[i], |i| b[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hsum8_pairs_like_sgemm() {
        // Values whose sum depends on the pairing: 1e8 cancels only with its partner.
        // ((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7)) = (1e8 - 1e8) + (1 + 1), where ggml's
        // `GGML_F32x8_REDUCE` ((l0+l4) + (l1+l5)) + .. would lose both ones.
        let v = [1e8f32, 1.0, -1e8, 1.0, 0.0, 0.0, 0.0, 0.0];
        assert_eq!(hsum8(&v), 2.0);
    }

    #[test]
    fn takes_needs_two_columns_and_whole_vectors() {
        assert!(!takes(RefProfile::Avx2, 64, 1));
        assert!(takes(RefProfile::Avx2, 24, 2));
        assert!(!takes(RefProfile::Avx512, 24, 2));
        assert!(takes(RefProfile::Avx512, 32, 7));
    }

    #[test]
    fn lanes_sum_in_order() {
        // Lane 0 holds 1 + 2^24 + 1 (rounds away one 1 each time): order matters.
        let mut a = vec![0f32; 24];
        a[0] = 1.0;
        a[8] = 16_777_216.0;
        a[16] = 1.0;
        let b = vec![1f32; 24];
        assert_eq!(dot_f32(RefProfile::Avx2, &a, &b), 16_777_216.0);
    }
}
