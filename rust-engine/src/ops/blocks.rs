//! The ggml types the embedding and the lm_head may have besides F32 and F16 — Q8_0, Q4_K,
//! Q6_K and BF16 — and the activation types their products use, bit for bit as the reference
//! computes them (`3rdparty/llama.cpp/ggml/src/ggml-quants.c` and `ggml.c` of bitnet-llm-sys
//! 1.0.2, compiled `-O3` with FMA on both reference builds).
//!
//! - [`dequantize_row`]: each type's `to_float` (`dequantize_row_q8_0`, `_q4_K`, `_q6_K`,
//!   `ggml_bf16_to_fp32_row`), the embedding lookup (`ggml_get_rows`).
//! - [`quantize_row_q8_0`], [`quantize_row_q8_k`], [`fp32_to_bf16_row`]: the conversion of the
//!   activation to the weight type's `vec_dot_type` that `ggml_mul_mat` does first (Q8_0 for
//!   Q8_0; Q8_K for Q4_K and Q6_K; BF16 for BF16).
//!
//! Where gcc fuses a multiply and an add of the C source (read from the disassembly of the
//! built library), the mirror fuses too (`mul_add`, a correctly rounded FMA like `vfmadd`):
//! `dequantize_row_q4_K` (`d1·q − m1`, `vfmsub`) and `nearest_int(iscale·x)` in
//! `quantize_row_q8_K_ref` (`iscale·x + 12582912`, `vfmadd`). Every other step rounds as written.
//!
//! Weight blocks are read from the file's bytes (any alignment) at the offsets of the
//! `#[repr(C)]` layouts below, which copy ggml-common.h and are held to its sizes at compile
//! time.

use std::mem::{offset_of, size_of};

use crate::gguf::GgmlType;
use crate::profile::RefProfile;

use super::dot::{f16_to_f32, f32_to_f16};

/// Elements of a Q8_0 block.
pub(crate) const QK8_0: usize = 32;
/// Elements of a K-quant super-block.
pub const QK_K: usize = 256;

/// `block_q8_0`: the f16 scale `d`, then 32 int8 quants; value = `qs[i] · d`. The layout of a
/// Q8_0 weight block in the file, and the quantized activation of a Q8_0 product.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockQ8_0 {
    /// f16 bits.
    pub d: u16,
    pub qs: [i8; QK8_0],
}
const _: () = assert!(size_of::<BlockQ8_0>() == 34 && offset_of!(BlockQ8_0, qs) == 2);

impl BlockQ8_0 {
    pub const ZERO: BlockQ8_0 = BlockQ8_0 { d: 0, qs: [0; QK8_0] };
}

/// `block_q8_K`: the activation of a K-quant product. f32 scale `d`, 256 int8 quants, and the
/// sum of each 16 quants (`bsums`, used by Q4_K for its mins).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; QK_K / 16],
}
const _: () = assert!(size_of::<BlockQ8K>() == 292);

impl BlockQ8K {
    pub const ZERO: BlockQ8K = BlockQ8K { d: 0.0, qs: [0; QK_K], bsums: [0; QK_K / 16] };
}

/// `block_q4_K` (read from bytes, never built): f16 `d` and `dmin`, 8 six-bit scales and 8
/// six-bit mins packed in 12 bytes (see [`q4k_scale_min`]), 128 bytes of 4-bit quants (each
/// 32 bytes hold two sub-blocks of 32: low nibbles first). Value = `d·sc·q − dmin·m`.
#[repr(C)]
#[allow(dead_code)]
struct BlockQ4K {
    d: [u8; 2],
    dmin: [u8; 2],
    scales: [u8; 12],
    qs: [u8; QK_K / 2],
}
pub(crate) const Q4K_BYTES: usize = size_of::<BlockQ4K>();
pub(crate) const Q4K_D: usize = offset_of!(BlockQ4K, d);
pub(crate) const Q4K_DMIN: usize = offset_of!(BlockQ4K, dmin);
pub(crate) const Q4K_SCALES: usize = offset_of!(BlockQ4K, scales);
pub(crate) const Q4K_QS: usize = offset_of!(BlockQ4K, qs);
const _: () = assert!(Q4K_BYTES == 144 && Q4K_QS == 16);

/// `block_q6_K` (read from bytes, never built): low 4 bits of 256 quants (`ql`), their high 2
/// bits (`qh`), 16 int8 scales (one per 16 quants), the f16 `d` last. Value = `d·sc·(q − 32)`.
#[repr(C)]
#[allow(dead_code)]
struct BlockQ6K {
    ql: [u8; QK_K / 2],
    qh: [u8; QK_K / 4],
    scales: [i8; QK_K / 16],
    d: [u8; 2],
}
pub(crate) const Q6K_BYTES: usize = size_of::<BlockQ6K>();
pub(crate) const Q6K_QL: usize = offset_of!(BlockQ6K, ql);
pub(crate) const Q6K_QH: usize = offset_of!(BlockQ6K, qh);
pub(crate) const Q6K_SCALES: usize = offset_of!(BlockQ6K, scales);
pub(crate) const Q6K_D: usize = offset_of!(BlockQ6K, d);
const _: () = assert!(Q6K_BYTES == 210 && Q6K_D == 208);

/// A block-quantized or 16-bit type the engine reads token_embd / output in, besides F32
/// and F16.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum BlockType {
    Q8_0,
    Q4_K,
    Q6_K,
    BF16,
}

impl BlockType {
    pub const ALL: [BlockType; 4] = [BlockType::Q8_0, BlockType::Q4_K, BlockType::Q6_K, BlockType::BF16];

    /// The block type of a ggml type, if it is one of these.
    pub fn from_ggml(t: GgmlType) -> Option<BlockType> {
        BlockType::ALL.into_iter().find(|b| b.ggml() == t)
    }

    pub fn ggml(self) -> GgmlType {
        match self {
            BlockType::Q8_0 => GgmlType::Q8_0,
            BlockType::Q4_K => GgmlType::Q4_K,
            BlockType::Q6_K => GgmlType::Q6_K,
            BlockType::BF16 => GgmlType::BF16,
        }
    }

    /// Elements per block.
    pub fn block_elems(self) -> usize {
        match self {
            BlockType::Q8_0 => QK8_0,
            BlockType::Q4_K | BlockType::Q6_K => QK_K,
            BlockType::BF16 => 1,
        }
    }

    /// Bytes per block.
    pub(crate) fn block_bytes(self) -> usize {
        match self {
            BlockType::Q8_0 => size_of::<BlockQ8_0>(),
            BlockType::Q4_K => Q4K_BYTES,
            BlockType::Q6_K => Q6K_BYTES,
            BlockType::BF16 => 2,
        }
    }

    /// Bytes of a row of `n` elements (`n` a multiple of [`block_elems`](Self::block_elems)).
    pub fn row_bytes(self, n: usize) -> usize {
        n / self.block_elems() * self.block_bytes()
    }
}

#[inline]
fn f16_at(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// The scale and min of sub-block `j` (0..8) of a Q4_K block's 12 packed bytes
/// (`get_scale_min_k4`; the dot product's `utmp` shuffle decodes the same values).
#[inline]
pub(crate) fn q4k_scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Quant `l` (0..128 of one half, see [`BlockQ6K`]) of a Q6_K block, before the −32:
/// chunk `c` (0..4) of the 128 quants at `half` (0 or 1), element `e` (0..32).
#[inline]
pub(crate) fn q6k_quant(b: &[u8], half: usize, c: usize, e: usize) -> i32 {
    let ql = b[Q6K_QL + 64 * half + 32 * (c % 2) + e];
    let qh = b[Q6K_QH + 32 * half + e];
    let lo = if c < 2 { ql & 0xF } else { ql >> 4 };
    i32::from(lo | (((qh >> (2 * c)) & 3) << 4))
}

/// The type's `to_float` on one row: `bytes` holds `out.len()` elements of type `ty`.
///
/// # Panics
/// If `bytes` is not exactly one row of `out.len()` elements.
pub fn dequantize_row(ty: BlockType, bytes: &[u8], out: &mut [f32]) {
    assert_eq!(out.len() % ty.block_elems(), 0, "{ty:?} row of {} elements", out.len());
    assert_eq!(bytes.len(), ty.row_bytes(out.len()), "{ty:?} row of {} elements", out.len());
    match ty {
        BlockType::Q8_0 => {
            for (b, y) in bytes.chunks_exact(ty.block_bytes()).zip(out.chunks_exact_mut(QK8_0)) {
                let d = f16_at(b, 0);
                for (o, &q) in y.iter_mut().zip(&b[2..]) {
                    *o = f32::from(q as i8) * d;
                }
            }
        }
        BlockType::Q4_K => {
            for (b, y) in bytes.chunks_exact(Q4K_BYTES).zip(out.chunks_exact_mut(QK_K)) {
                let (d, min) = (f16_at(b, Q4K_D), f16_at(b, Q4K_DMIN));
                let scales = &b[Q4K_SCALES..Q4K_SCALES + 12];
                for (j, y) in y.chunks_exact_mut(64).enumerate() {
                    let q = &b[Q4K_QS + 32 * j..Q4K_QS + 32 * (j + 1)];
                    let (sc, m) = q4k_scale_min(2 * j, scales);
                    let (d1, m1) = (d * f32::from(sc), min * f32::from(m));
                    let (sc, m) = q4k_scale_min(2 * j + 1, scales);
                    let (d2, m2) = (d * f32::from(sc), min * f32::from(m));
                    let (lo, hi) = y.split_at_mut(32);
                    // gcc fuses `d1 * q - m1` (vfmsub).
                    for l in 0..32 {
                        lo[l] = d1.mul_add(f32::from(q[l] & 0xF), -m1);
                        hi[l] = d2.mul_add(f32::from(q[l] >> 4), -m2);
                    }
                }
            }
        }
        BlockType::Q6_K => {
            for (b, y) in bytes.chunks_exact(Q6K_BYTES).zip(out.chunks_exact_mut(QK_K)) {
                let d = f16_at(b, Q6K_D);
                for (half, y) in y.chunks_exact_mut(128).enumerate() {
                    for (c, y) in y.chunks_exact_mut(32).enumerate() {
                        for (e, o) in y.iter_mut().enumerate() {
                            let sc = b[Q6K_SCALES + 8 * half + 2 * c + e / 16] as i8;
                            let q = q6k_quant(b, half, c, e) - 32;
                            // `d * sc[is] * q`: (d·sc)·q, two roundings.
                            *o = (d * f32::from(sc)) * q as f32;
                        }
                    }
                }
            }
        }
        BlockType::BF16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = bf16_to_f32(u16::from_le_bytes([b[0], b[1]]));
            }
        }
    }
}

/// `GGML_BF16_TO_FP32`: the bits shifted up (exact).
#[inline]
pub(crate) fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// `GGML_FP32_TO_BF16` (`ggml_compute_fp32_to_bf16`): round to nearest even by integer
/// addition, NaN made quiet; subnormals are kept.
#[inline]
pub(crate) fn f32_to_bf16(x: f32) -> u16 {
    let u = x.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    (u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

/// `_mm512_cvtne2ps_pbh`'s conversion of one value (`VCVTNE2PS2BF16`): as
/// [`f32_to_bf16`], except that zero and subnormal inputs become a zero of their sign.
#[inline]
pub(crate) fn f32_to_bf16_cvtne(x: f32) -> u16 {
    let u = x.to_bits();
    if u & 0x7f80_0000 == 0 {
        return ((u >> 16) & 0x8000) as u16;
    }
    f32_to_bf16(x)
}

/// `ggml_fp32_to_bf16_row`, the BF16 product's activation conversion. An AVX512BF16 build
/// converts whole groups of 32 with `_mm512_cvtne2ps_pbh` (`f32_to_bf16_cvtne`) and the
/// rest one at a time; an AVX2 build converts all one at a time (`f32_to_bf16`). The two
/// differ on subnormal inputs only. [`RefProfile::Avx512`] assumes AVX512BF16 (see
/// [`crate::profile`]).
pub fn fp32_to_bf16_row(p: RefProfile, x: &[f32], out: &mut [u16]) {
    assert_eq!(x.len(), out.len());
    let whole = match p {
        RefProfile::Avx512 => x.len() / 32 * 32,
        RefProfile::Avx2 => 0,
    };
    for (o, &v) in out[..whole].iter_mut().zip(&x[..whole]) {
        *o = f32_to_bf16_cvtne(v);
    }
    for (o, &v) in out[whole..].iter_mut().zip(&x[whole..]) {
        *o = f32_to_bf16(v);
    }
}

/// `_mm256_max_ps(a, b)` on one lane: `a` if `a > b`, else `b` (so a NaN in either gives `b`).
#[inline]
fn max_ps(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

/// `_mm256_cvtps_epi32` of an integral value: a NaN or a value out of range gives
/// `i32::MIN` (the "integer indefinite").
#[inline]
fn cvtps_epi32(v: f32) -> i32 {
    if v.is_nan() || !(-2_147_483_648.0..2_147_483_648.0).contains(&v) {
        i32::MIN
    } else {
        v as i32
    }
}

/// `quantize_row_q8_0` as both reference builds compile it (the `__AVX2__` branch): per block
/// of 32, `amax` by the lane-wise `vmaxps` tree, `d = amax / 127` stored as f16,
/// `id = 127 / amax`, each `x·id` rounded to nearest even, converted, and packed with signed
/// saturation (`packs`). A NaN ends as −128, like the reference's.
///
/// # Panics
/// If `x` is not `out.len()` blocks long.
pub(crate) fn quantize_row_q8_0(x: &[f32], out: &mut [BlockQ8_0]) {
    assert_eq!(x.len(), out.len() * QK8_0);
    let abs = |v: f32| f32::from_bits(v.to_bits() & 0x7fff_ffff);
    for (xb, o) in x.chunks_exact(QK8_0).zip(out) {
        let m: [f32; 8] = std::array::from_fn(|l| {
            max_ps(max_ps(max_ps(abs(xb[l]), abs(xb[8 + l])), abs(xb[16 + l])), abs(xb[24 + l]))
        });
        // max(hi, lo), then lanes (0, 2) and (1, 3) (movehl), then (0, 1) (movehdup).
        let m4: [f32; 4] = std::array::from_fn(|i| max_ps(m[4 + i], m[i]));
        let amax = max_ps(max_ps(m4[0], m4[2]), max_ps(m4[1], m4[3]));
        o.d = f32_to_f16(amax / 127.0);
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        for (q, &v) in o.qs.iter_mut().zip(xb) {
            *q = cvtps_epi32((v * id).round_ties_even()).clamp(-128, 127) as i8;
        }
    }
}

/// `quantize_row_q8_K_ref` (the K-quants' activation quantizer, the same on both builds):
/// `max` is the first value of largest magnitude, `iscale = −127 / max`, each quant
/// `min(127, nearest_int(iscale·x))` with the product fused into `nearest_int`'s
/// `+ 12582912` (as gcc compiles it), `d = 1 / iscale`. An all-zero block is all zero.
///
/// # Panics
/// If `x` is not `out.len()` super-blocks long.
pub(crate) fn quantize_row_q8_k(x: &[f32], out: &mut [BlockQ8K]) {
    assert_eq!(x.len(), out.len() * QK_K);
    for (xb, o) in x.chunks_exact(QK_K).zip(out) {
        let (mut max, mut amax) = (0f32, 0f32);
        for &v in xb {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            // The reference leaves bsums as they were; with d = 0 they do not count.
            *o = BlockQ8K::ZERO;
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in o.qs.iter_mut().zip(xb) {
            let f = iscale.mul_add(v, 12_582_912.0);
            let n = (f.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000;
            // `y[i].qs[j] = MIN(127, v)` into an int8_t: a wrapping conversion.
            *q = n.min(127) as i8;
        }
        for (s, q) in o.bsums.iter_mut().zip(o.qs.chunks_exact(16)) {
            *s = q.iter().map(|&v| i32::from(v)).sum::<i32>() as i16;
        }
        o.d = 1.0 / iscale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_conversions_round_to_nearest_even() {
        assert_eq!(f32_to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between two bf16 values: ties to even (down).
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(f32_to_bf16(f32::NAN) & 0x7fc0, 0x7fc0);
        let sub = f32::from_bits(0x0001_8000);
        assert_eq!(f32_to_bf16(sub), 0x0002);
        assert_eq!(f32_to_bf16_cvtne(sub), 0);
        assert_eq!(f32_to_bf16_cvtne(-sub), 0x8000);
        assert_eq!(bf16_to_f32(0x3f80), 1.0);
    }

    #[test]
    fn q8_0_round_trip_is_close() {
        let x: Vec<f32> = (0..64).map(|i| ((i as f32) * 0.37).sin()).collect();
        let mut q = [BlockQ8_0::ZERO; 2];
        quantize_row_q8_0(&x, &mut q);
        let bytes: Vec<u8> = q
            .iter()
            .flat_map(|b| b.d.to_le_bytes().into_iter().chain(b.qs.iter().map(|&v| v as u8)))
            .collect();
        let mut y = vec![0f32; 64];
        dequantize_row(BlockType::Q8_0, &bytes, &mut y);
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() < 1.0 / 127.0, "{a} {b}");
        }
        assert_eq!(q[0].qs.iter().map(|v| v.unsigned_abs()).max(), Some(127));
    }

    #[test]
    fn q8_k_keeps_the_sign_of_the_largest_value_and_sums() {
        let mut x = vec![0.5f32; QK_K];
        x[3] = -2.0;
        let mut q = [BlockQ8K::ZERO];
        quantize_row_q8_k(&x, &mut q);
        // iscale = 127/2: the max becomes -(-127)... x[3]·(−127/−2) = −127.
        assert_eq!(q[0].qs[3], -127);
        assert_eq!(q[0].qs[0], 32); // 0.5 · 63.5 = 31.75 → 32
        assert_eq!(q[0].bsums[0], 15 * 32 - 127);
        assert_eq!(q[0].d, 1.0 / (127.0 / 2.0));
        let mut z = [BlockQ8K::ZERO];
        quantize_row_q8_k(&[0.0; QK_K], &mut z);
        assert_eq!(z[0], BlockQ8K::ZERO);
    }
}
