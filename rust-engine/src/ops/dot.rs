//! Dot products that round exactly like ggml's single-token path, for each reference-build
//! profile.
//!
//! For one token, every F16 and F32 matrix product in the reference ends in
//! `ggml_vec_dot_f16` / `ggml_vec_dot_f32` (llamafile's sgemm declines batches of one
//! column). Those keep four accumulators of `W` f32 lanes (8 on an AVX2 build, 16 on an
//! AVX-512 one), fused-multiply-add `4·W` elements per step, then reduce the accumulators
//! (0+2, 1+3, then 0+1) and the lanes of what is left (see [`reduce`]). F16 leftovers (n not a
//! multiple of `4·W`) are added in f64; F32 leftovers in f32. The scalar code below emulates
//! those lanes exactly (`mul_add` is a correctly rounded FMA, the same operation as
//! `vfmadd`), so results are bit-identical to the reference; the SIMD kernels compute the same
//! operations in registers.

use half::f16;

use crate::profile::RefProfile;

/// ggml's reduction of four `W`-lane accumulators to one f32: accumulators (0+2, 1+3), then
/// 0+1; then the lanes.
/// - AVX2 (`GGML_F32x8_REDUCE`): lanes i+4 onto i, then two `hadd`: `(l0+l1) + (l2+l3)`.
/// - AVX-512 (gcc's `_mm512_reduce_add_ps`): lanes i+8 onto i, i+4 onto i, then
///   `(l0+l2) + (l1+l3)`.
#[inline]
fn reduce<const W: usize>(acc: [[f32; W]; 4]) -> f32 {
    let a02: [f32; W] = std::array::from_fn(|l| acc[0][l] + acc[2][l]);
    let a13: [f32; W] = std::array::from_fn(|l| acc[1][l] + acc[3][l]);
    let a: [f32; W] = std::array::from_fn(|l| a02[l] + a13[l]);
    match W {
        8 => {
            let t: [f32; 4] = std::array::from_fn(|i| a[i] + a[i + 4]);
            (t[0] + t[1]) + (t[2] + t[3])
        }
        16 => lane_sum16(&a),
        _ => unreachable!("ggml's float vectors have 8 or 16 lanes"),
    }
}

/// gcc's `_mm512_reduce_add_ps`: the 256-bit halves added, then the 128-bit halves, then
/// `(t0+t2) + (t1+t3)`.
#[inline]
pub(crate) fn lane_sum16(v: &[f32]) -> f32 {
    let h: [f32; 8] = std::array::from_fn(|i| v[i + 8] + v[i]);
    let t: [f32; 4] = std::array::from_fn(|i| h[i + 4] + h[i]);
    (t[0] + t[2]) + (t[1] + t[3])
}

/// The four-accumulator FMA pass of `W` lanes over the first `np` elements (a multiple of
/// `4·W`), reduced.
#[inline]
fn lanes<const W: usize>(np: usize, x: impl Fn(usize) -> f32, y: impl Fn(usize) -> f32) -> f32 {
    let mut acc = [[0f32; W]; 4];
    for i in (0..np).step_by(4 * W) {
        for (j, a) in acc.iter_mut().enumerate() {
            for (l, lane) in a.iter_mut().enumerate() {
                let k = i + j * W + l;
                *lane = x(k).mul_add(y(k), *lane);
            }
        }
    }
    reduce(acc)
}

/// The profile's lane pass over the whole steps of an `n`-element dot; returns the sum of
/// those and where the leftovers start.
#[inline]
fn head(p: RefProfile, n: usize, x: impl Fn(usize) -> f32, y: impl Fn(usize) -> f32) -> (f32, usize) {
    let np = n & !(step(p) - 1);
    let sum = match p {
        RefProfile::Avx2 => lanes::<8>(np, x, y),
        RefProfile::Avx512 => lanes::<16>(np, x, y),
    };
    (sum, np)
}

/// Elements consumed per step of the profile's dots: 4 accumulators × its lanes.
#[inline]
pub(crate) fn step(p: RefProfile) -> usize {
    4 * p.lanes()
}

/// `ggml_vec_dot_f16` on two f16 vectors (raw little-endian bits).
pub fn dot_f16(p: RefProfile, x: &[u16], y: &[u16]) -> f32 {
    assert_eq!(x.len(), y.len());
    dot_f16_by(p, x.len(), |k| f16_to_f32(x[k]), |k| f16_to_f32(y[k]))
}

/// `ggml_vec_dot_f32`.
pub fn dot_f32(p: RefProfile, x: &[f32], y: &[f32]) -> f32 {
    assert_eq!(x.len(), y.len());
    let (mut sum, np) = head(p, x.len(), |k| x[k], |k| y[k]);
    for k in np..x.len() {
        sum += x[k] * y[k];
    }
    sum
}

/// Mixed dot of f16 weights with f32 activations, same lane structure as [`dot_f16`]
/// (used when the reference rounding is switched off). When every `y` is an f16 value this
/// equals `dot_f16` on the f16 bits, since widening an f16 to f32 is exact.
pub fn dot_f16_f32(p: RefProfile, x: &[u16], y: &[f32]) -> f32 {
    assert_eq!(x.len(), y.len());
    dot_f16_by(p, x.len(), |k| f16_to_f32(x[k]), |k| y[k])
}

/// [`dot_f16_f32`] with the f16 operand given as little-endian bytes (a row of a mapped
/// F16 tensor, any alignment).
pub fn dot_f16_bytes_f32(p: RefProfile, x: &[u8], y: &[f32]) -> f32 {
    assert_eq!(x.len(), 2 * y.len());
    dot_f16_by(p, y.len(), |k| f16_to_f32(u16::from_le_bytes([x[2 * k], x[2 * k + 1]])), |k| y[k])
}

/// [`dot_f16`] with the first operand given as little-endian bytes (a row of a mapped F16
/// tensor, any alignment).
pub fn dot_f16_bytes(p: RefProfile, x: &[u8], y: &[u16]) -> f32 {
    assert_eq!(x.len(), 2 * y.len());
    dot_f16_by(p, y.len(), |k| f16_to_f32(u16::from_le_bytes([x[2 * k], x[2 * k + 1]])), |k| f16_to_f32(y[k]))
}

/// An F16 dot's leftovers after the lanes: the products of `row` (f16 bytes) from element
/// `from` to its end with `y`, each exact in f32, added in f64 to the lanes' sum `head`, then
/// narrowed. Shared by the SIMD kernels of every profile.
#[inline]
pub(crate) fn f16_tail(head: f32, row: &[u8], y: impl Fn(usize) -> f32, from: usize) -> f32 {
    let mut sum = f64::from(head);
    for k in from..row.len() / 2 {
        let w = f16_to_f32(u16::from_le_bytes([row[2 * k], row[2 * k + 1]]));
        sum += f64::from(w * y(k));
    }
    sum as f32
}

/// The lanes, then leftovers as f32 products summed in f64 (the F16 dot's tail; the
/// product of two f16 values is exact in f32).
#[inline]
fn dot_f16_by(p: RefProfile, n: usize, x: impl Fn(usize) -> f32, y: impl Fn(usize) -> f32) -> f32 {
    let (head, np) = head(p, n, &x, &y);
    let mut sum = f64::from(head);
    for k in np..n {
        sum += f64::from(x(k) * y(k));
    }
    sum as f32
}

#[inline]
pub fn f16_to_f32(bits: u16) -> f32 {
    f16::from_bits(bits).to_f32()
}

/// Round to nearest even, as `_cvtss_sh(x, 0)` and `ggml_fp32_to_fp16_row` do.
#[inline]
pub fn f32_to_f16(x: f32) -> u16 {
    f16::from_f32(x).to_bits()
}

/// Rounds every element through f16 and back (the value an F16 tensor would hold).
pub fn round_through_f16(x: &mut [f32]) {
    for v in x {
        *v = f16_to_f32(f32_to_f16(*v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_structure_changes_rounding_but_not_value() {
        let x: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
        let y: Vec<f32> = (0..100).map(|i| (i as f32 * 0.11).cos()).collect();
        let exact: f64 = x.iter().zip(&y).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum();
        for p in RefProfile::ALL {
            assert!((f64::from(dot_f32(p, &x, &y)) - exact).abs() < 1e-5);
        }
        let xh: Vec<u16> = x.iter().map(|&v| f32_to_f16(v)).collect();
        let yh: Vec<u16> = y.iter().map(|&v| f32_to_f16(v)).collect();
        let exact_h: f64 =
            xh.iter().zip(&yh).map(|(a, b)| f64::from(f16_to_f32(*a)) * f64::from(f16_to_f32(*b))).sum();
        for p in RefProfile::ALL {
            assert!((f64::from(dot_f16(p, &xh, &yh)) - exact_h).abs() < 1e-5);
        }
    }

    #[test]
    fn reduction_order_is_ggmls() {
        // One non-zero lane per accumulator: the sum must be exact whatever the order, so
        // use values whose f32 sum depends on order: 1e8 + 1 - 1e8.
        let mut x = vec![0f32; 32];
        let y = vec![1f32; 32];
        x[0] = 1e8; // acc0 lane0
        x[16] = 1.0; // acc2 lane0: added to acc0 first → 1e8 (1 is lost)
        x[8] = -1e8; // acc1 lane0
                     // (1e8 + 1) rounds to 1e8; then + (-1e8) = 0. Another order would give 1.
        assert_eq!(dot_f32(RefProfile::Avx2, &x, &y), 0.0);
    }

    #[test]
    fn reduction_order_is_ggmls_at_16_lanes() {
        // Lanes 0 and 2 of the final four meet first on AVX-512 (lanes 0 and 1 on AVX2):
        // 1e8 in lane 0, 1 in lane 2 (lost), -1e8 in lane 1 → 0.
        let mut x = vec![0f32; 64];
        let y = vec![1f32; 64];
        x[0] = 1e8;
        x[2] = 1.0;
        x[1] = -1e8;
        assert_eq!(dot_f32(RefProfile::Avx512, &x, &y), 0.0);
        // The AVX2 order adds lane 0 and 1 first (0), then lane 2: 1.
        assert_eq!(dot_f32(RefProfile::Avx2, &x[..32], &y[..32]), 1.0);
    }
}
