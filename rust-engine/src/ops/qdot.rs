//! The dot products of a Q8_0, Q4_K, Q6_K or BF16 weight row with an activation already in
//! the type's `vec_dot_type` (see [`super::blocks`]): the scalar oracles of the lm_head.
//!
//! Each emulates the float steps of the code the reference builds compile, in their order
//! (`ggml-quants.c`, `ggml.c`): integer sums are exact, so only the lane each partial sum lands
//! in and the float operations after it matter.
//!
//! | type | both builds (`__AVX2__` branch) |
//! |---|---|
//! | Q8_0 | per block `d = dx·dy`; 8 lanes, lane k = Σ of elements 4k..4k+3 (int); `acc = fma(d, sum, acc)`; `hsum_float_8` |
//! | Q4_K | per super-block `d = dy·dx`, `dmin = −dy·dmin_x`; mins: 4 lanes `fma(dmin, ·, acc_m)`; quants: 8 lanes of scaled int sums, `fma(d, ·, acc)`; `hsum_float_8(acc) + (m0+m2)+(m1+m3)` |
//! | Q6_K | per super-block `d = dy·dx`; 8 lanes of scaled int sums of `(q−32)·q8`, `fma(d, ·, acc)`; `hsum_float_8` |
//!
//! `hsum_float_8`: lanes i+4 onto i, then `(t0+t2) + (t1+t3)`.
//!
//! BF16 (`ggml_vec_dot_bf16`) depends on the build:
//! - AVX2: 4 accumulators × 8 lanes over 32 elements a step (products of bf16 values are exact,
//!   so gcc's fusing of `mul` + `add` changes nothing), accumulators (0+2)+(1+3), lanes as
//!   `hsum_float_8`; the rest of `n mod 32` added in f64.
//! - AVX512BF16: two 16-lane accumulators over 64 elements a step with `VDPBF16PS`, which per
//!   lane j adds the product of elements 2j+1 then that of 2j, each an FMA with subnormal inputs
//!   read as zero and a subnormal result flushed to zero (Intel SDM, "FP32 FMA with daz in, ftz
//!   out and RNE rounding"); each accumulator's `_mm512_reduce_add_ps` added in f64; the rest of
//!   `n mod 64` added in f64.

use crate::profile::RefProfile;

use super::blocks::{
    bf16_to_f32, q4k_scale_min, q6k_quant, BlockQ8K, BlockQ8_0, Q4K_BYTES, Q4K_D, Q4K_DMIN, Q4K_QS,
    Q4K_SCALES, Q6K_BYTES, Q6K_D, Q6K_SCALES, QK8_0, QK_K,
};
use super::dot::{f16_to_f32, lane_sum16};

#[inline]
fn f16_at(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// `hsum_float_8`: lanes i+4 onto i (`extractf128` + `add_ps`), then `(t0+t2) + (t1+t3)`
/// (`movehl`, `movehdup`).
#[inline]
pub(crate) fn hsum8(a: [f32; 8]) -> f32 {
    let t: [f32; 4] = std::array::from_fn(|i| a[i + 4] + a[i]);
    (t[0] + t[2]) + (t[1] + t[3])
}

/// `_mm256_maddubs_epi16` on one pair: unsigned × signed bytes, the two products summed with
/// signed 16-bit saturation.
#[inline]
fn maddubs(a0: u8, b0: i8, a1: u8, b1: i8) -> i32 {
    (i32::from(a0) * i32::from(b0) + i32::from(a1) * i32::from(b1)).clamp(-32768, 32767)
}

/// `_mm_sign_epi8(y, x)` on one byte: `y` negated (wrapping) where `x < 0`, zero where `x == 0`.
#[inline]
fn sign_i8(y: i8, x: i8) -> i8 {
    match x.signum() {
        -1 => y.wrapping_neg(),
        0 => 0,
        _ => y,
    }
}

/// `mul_sum_i8_pairs_float`'s integer sum of four products `x·y` as both builds compute it:
/// `|x|` times `sign(y, x)`, pairs added (`maddubs` + `madd`, or VNNI's `dpbusd`). Where
/// `x = y = −128` the negation wraps and the product is −16384, not 16384 (ggml never writes
/// −128 into a Q8_0 weight, but the mirror keeps the quirk). No pair can saturate `maddubs`:
/// `|x| ≤ 128` and `sign(y, x) ∈ [−128, 127]` keep it within [−32768, 32512], so the AVX2 and
/// VNNI forms agree.
#[inline]
fn q8_sum4(x: &[i8], y: &[i8]) -> i32 {
    let p = |i: usize| (x[i].unsigned_abs(), sign_i8(y[i], x[i]));
    let ((a0, b0), (a1, b1), (a2, b2), (a3, b3)) = (p(0), p(1), p(2), p(3));
    maddubs(a0, b0, a1, b1) + maddubs(a2, b2, a3, b3)
}

/// `ggml_vec_dot_q8_0_q8_0` of a Q8_0 weight row (the file's bytes) with a Q8_0 activation.
///
/// # Panics
/// If the row is not `y.len()` blocks.
pub(crate) fn dot_q8_0(w: &[u8], y: &[BlockQ8_0]) -> f32 {
    assert_eq!(w.len(), y.len() * 34, "Q8_0 row and activation differ in length");
    let mut acc = [0f32; 8];
    for (b, yb) in w.chunks_exact(34).zip(y) {
        let d = f16_at(b, 0) * f16_to_f32(yb.d);
        let xq: [i8; QK8_0] = std::array::from_fn(|i| b[2 + i] as i8);
        for (k, a) in acc.iter_mut().enumerate() {
            let s = q8_sum4(&xq[4 * k..4 * k + 4], &yb.qs[4 * k..4 * k + 4]);
            *a = d.mul_add(s as f32, *a);
        }
    }
    hsum8(acc)
}

/// `ggml_vec_dot_q4_K_q8_K` of a Q4_K weight row with a Q8_K activation.
///
/// # Panics
/// If the row is not `y.len()` super-blocks.
pub(crate) fn dot_q4_k(w: &[u8], y: &[BlockQ8K]) -> f32 {
    assert_eq!(w.len(), y.len() * Q4K_BYTES, "Q4_K row and activation differ in length");
    let mut acc = [0f32; 8];
    let mut acc_m = [0f32; 4];
    for (b, yb) in w.chunks_exact(Q4K_BYTES).zip(y) {
        let d = yb.d * f16_at(b, Q4K_D);
        let dmin = -yb.d * f16_at(b, Q4K_DMIN);
        let packed = &b[Q4K_SCALES..Q4K_SCALES + 12];
        let (sc, mn): ([i32; 8], [i32; 8]) = (
            std::array::from_fn(|j| i32::from(q4k_scale_min(j, packed).0)),
            std::array::from_fn(|j| i32::from(q4k_scale_min(j, packed).1)),
        );
        // Sub-block sums of the activation (`hadd` of the 16-quant sums), then the mins in
        // 4 lanes (`madd`).
        let q8s: [i32; 8] =
            std::array::from_fn(|m| i32::from(yb.bsums[2 * m].wrapping_add(yb.bsums[2 * m + 1])));
        for (k, a) in acc_m.iter_mut().enumerate() {
            let prod = mn[2 * k] * q8s[2 * k] + mn[2 * k + 1] * q8s[2 * k + 1];
            *a = dmin.mul_add(prod as f32, *a);
        }
        let mut sumi = [0i32; 8];
        for j in 0..QK_K / 64 {
            let q4 = &b[Q4K_QS + 32 * j..Q4K_QS + 32 * (j + 1)];
            let (q8l, q8h) = (&yb.qs[64 * j..64 * j + 32], &yb.qs[64 * j + 32..64 * j + 64]);
            for (k, s) in sumi.iter_mut().enumerate() {
                let (mut lo, mut hi) = (0, 0);
                for e in 4 * k..4 * k + 4 {
                    lo += i32::from(q4[e] & 0xF) * i32::from(q8l[e]);
                    hi += i32::from(q4[e] >> 4) * i32::from(q8h[e]);
                }
                *s += sc[2 * j] * lo + sc[2 * j + 1] * hi;
            }
        }
        for (a, &s) in acc.iter_mut().zip(&sumi) {
            *a = d.mul_add(s as f32, *a);
        }
    }
    hsum8(acc) + ((acc_m[0] + acc_m[2]) + (acc_m[1] + acc_m[3]))
}

/// `ggml_vec_dot_q6_K_q8_K` of a Q6_K weight row with a Q8_K activation.
///
/// # Panics
/// If the row is not `y.len()` super-blocks.
pub(crate) fn dot_q6_k(w: &[u8], y: &[BlockQ8K]) -> f32 {
    assert_eq!(w.len(), y.len() * Q6K_BYTES, "Q6_K row and activation differ in length");
    let mut acc = [0f32; 8];
    for (b, yb) in w.chunks_exact(Q6K_BYTES).zip(y) {
        let d = yb.d * f16_at(b, Q6K_D);
        let mut sumi = [0i32; 8];
        for half in 0..2 {
            for c in 0..4 {
                let q8 = &yb.qs[128 * half + 32 * c..128 * half + 32 * (c + 1)];
                for (k, s) in sumi.iter_mut().enumerate() {
                    let sc = i32::from(b[Q6K_SCALES + 8 * half + 2 * c + k / 4] as i8);
                    let p: i32 =
                        (4 * k..4 * k + 4).map(|e| (q6k_quant(b, half, c, e) - 32) * i32::from(q8[e])).sum();
                    *s += sc * p;
                }
            }
        }
        for (a, &s) in acc.iter_mut().zip(&sumi) {
            *a = d.mul_add(s as f32, *a);
        }
    }
    hsum8(acc)
}

/// A subnormal read as a zero of its sign (DAZ).
#[inline]
fn daz(v: f32) -> f32 {
    if v.is_subnormal() {
        f32::from_bits(v.to_bits() & 0x8000_0000)
    } else {
        v
    }
}

/// One `VDPBF16PS` step of one lane: `acc += a·b` as an FMA with DAZ inputs and an FTZ result.
#[inline]
pub(crate) fn dpbf16_step(acc: f32, a: u16, b: u16) -> f32 {
    daz(daz(bf16_to_f32(a)).mul_add(daz(bf16_to_f32(b)), daz(acc)))
}

/// `ggml_vec_dot_bf16` of a BF16 weight row (the file's bytes) with a BF16 activation, as
/// the profile's build computes it (see the module docs).
///
/// # Panics
/// If the row is not `y.len()` values.
pub(crate) fn dot_bf16(p: RefProfile, w: &[u8], y: &[u16]) -> f32 {
    assert_eq!(w.len(), 2 * y.len(), "BF16 row and activation differ in length");
    let x = |i: usize| u16::from_le_bytes([w[2 * i], w[2 * i + 1]]);
    let n = y.len();
    let mut sumf = 0f64;
    let np = match p {
        RefProfile::Avx2 => {
            let np = n & !31;
            let mut acc = [[0f32; 8]; 4];
            for i in (0..np).step_by(32) {
                for (k, a) in acc.iter_mut().enumerate() {
                    for (l, lane) in a.iter_mut().enumerate() {
                        let e = i + 8 * k + l;
                        *lane = bf16_to_f32(x(e)).mul_add(bf16_to_f32(y[e]), *lane);
                    }
                }
            }
            let a: [f32; 8] = std::array::from_fn(|l| (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]));
            sumf += f64::from(hsum8(a));
            np
        }
        RefProfile::Avx512 => {
            let np = n & !63;
            let mut acc = [[0f32; 16]; 2];
            for i in (0..np).step_by(64) {
                for (c, a) in acc.iter_mut().enumerate() {
                    for (j, lane) in a.iter_mut().enumerate() {
                        let e = i + 32 * c + 2 * j;
                        *lane = dpbf16_step(*lane, x(e + 1), y[e + 1]);
                        *lane = dpbf16_step(*lane, x(e), y[e]);
                    }
                }
            }
            sumf += f64::from(lane_sum16(&acc[0]));
            sumf += f64::from(lane_sum16(&acc[1]));
            np
        }
    };
    for (i, &yi) in y.iter().enumerate().skip(np) {
        sumf += f64::from(bf16_to_f32(x(i)) * bf16_to_f32(yi));
    }
    sumf as f32
}

#[cfg(test)]
mod tests {
    use super::super::blocks::{f32_to_bf16, quantize_row_q8_0, quantize_row_q8_k, BlockType};
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n).map(|i| ((i as f32 + seed as f32 * 0.618) * 0.731).sin() * 1.7).collect()
    }

    /// The dots are close to the dot of the dequantized values (each checks the decoding of
    /// the other's layout).
    #[test]
    fn dots_approximate_the_dequantized_product() {
        let n = 512;
        let x = values(n, 1);
        let a = values(n, 2);
        let mut q8 = vec![BlockQ8_0::ZERO; n / 32];
        quantize_row_q8_0(&x, &mut q8);
        let w: Vec<u8> = q8
            .iter()
            .flat_map(|b| b.d.to_le_bytes().into_iter().chain(b.qs.iter().map(|&v| v as u8)))
            .collect();
        let mut wf = vec![0f32; n];
        dequantize_row_q8(&w, &mut wf);
        let mut ya = vec![BlockQ8_0::ZERO; n / 32];
        quantize_row_q8_0(&a, &mut ya);
        let exact: f32 = wf.iter().zip(&a).map(|(p, q)| p * q).sum();
        assert!(
            (dot_q8_0(&w, &ya) - exact).abs() < 0.05 * exact.abs().max(1.0),
            "{} {exact}",
            dot_q8_0(&w, &ya)
        );

        let mut yk = vec![BlockQ8K::ZERO; n / 256];
        quantize_row_q8_k(&a, &mut yk);
        let ones_q6: Vec<u8> = (0..n / 256)
            .flat_map(|_| {
                // All quants 33 (value 1·sc·d), scales 1, d = 1.
                let mut b = vec![0u8; 210];
                b[..128].fill(0x11);
                b[128..192].fill(0b1010_1010);
                b[192..208].fill(1);
                b[208..210].copy_from_slice(&0x3c00u16.to_le_bytes());
                b
            })
            .collect();
        let sum_a: f32 = a.iter().sum();
        assert!((dot_q6_k(&ones_q6, &yk) - sum_a).abs() < 0.05 * sum_a.abs().max(1.0));

        let bf: Vec<u16> = a.iter().map(|&v| f32_to_bf16(v)).collect();
        let wb: Vec<u8> = x.iter().flat_map(|&v| f32_to_bf16(v).to_le_bytes()).collect();
        let exact: f32 = x.iter().zip(&a).map(|(p, q)| p * q).sum();
        for p in RefProfile::ALL {
            assert!((dot_bf16(p, &wb, &bf) - exact).abs() < 0.05 * exact.abs().max(1.0));
        }
    }

    fn dequantize_row_q8(w: &[u8], out: &mut [f32]) {
        super::super::blocks::dequantize_row(BlockType::Q8_0, w, out);
    }

    #[test]
    fn dpbf16_flushes_subnormals() {
        let tiny = f32::MIN_POSITIVE;
        // 2^-126 · 0.5 is subnormal: flushed to +0 (the product read exactly, the sum flushed).
        let half = f32_to_bf16(0.5);
        assert_eq!(dpbf16_step(0.0, f32_to_bf16(tiny), half), 0.0);
        assert_eq!(dpbf16_step(1.0, half, half), 1.25);
    }
}
