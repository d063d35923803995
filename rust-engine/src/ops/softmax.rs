//! Softmax and SiLU as ggml computes them (`ggml_soft_max_ext`, `ggml_silu`), for each
//! reference-build profile.
//!
//! The reference scales the scores, adds the causal mask (0 or −∞), takes the max, then
//! exponentiates a vector at a time (8 lanes on AVX2, 16 on AVX-512) with its own polynomial
//! `exp` (not libm's, and not the same polynomial ending on the two builds), adding each
//! vector's horizontal f32 sum into an f64 total; finally it multiplies by
//! `(float)(1.0 / total)`. The key/value range it attends over is padded with masked cells
//! to a multiple of 32, so every element goes through the polynomial. [`exp_lane`] is one
//! lane of that polynomial, written with `mul_add` for each fused operation.

use crate::profile::RefProfile;

const SHIFT: f32 = 12_582_912.0; // 0x1.8p23: rounds to an integer in the low mantissa bits
const LOG2E: f32 = f32::from_bits(0x3fb8_aa3b); // 0x1.715476p+0
const LN2_HI: f32 = f32::from_bits(0x3f31_7200); // 0x1.62e4p-1
const LN2_LO: f32 = f32::from_bits(0x35bf_be8e); // 0x1.7f7d1cp-20
const C0: f32 = f32::from_bits(0x3f7f_fff6); // 0x1.ffffecp-1
const C1: f32 = f32::from_bits(0x3eff_fedb); // 0x1.fffdb6p-2
const C2: f32 = f32::from_bits(0x3e2a_af33); // 0x1.555e66p-3
const C3: f32 = f32::from_bits(0x3d2b_9f17); // 0x1.573e2ep-5
const C4: f32 = f32::from_bits(0x3c07_2010); // 0x1.0e4020p-7

/// One lane of ggml's vectorised `ggml_v_expf` as the profile's build compiles it.
pub(crate) fn exp_lane(p: RefProfile, x: f32) -> f32 {
    match p {
        RefProfile::Avx2 => exp_lane_avx2(x),
        RefProfile::Avx512 => exp_lane_avx512(x),
    }
}

/// The shared start of both polynomials: `x = n·ln2 + b`, `z` holding `n` in its low bits,
/// `u = b²` and the odd part of the polynomial's tail.
#[inline]
fn reduce_arg(x: f32) -> (f32, f32, f32, f32) {
    let z = x.mul_add(LOG2E, SHIFT);
    let n = z - SHIFT;
    // fnmadd(a, b, c) = c - a·b, fused.
    let b = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
    let u = b * b;
    (z, n, b, u)
}

/// AVX2 + FMA: `k + k·j` with `k = 2ⁿ` built in the exponent bits; two special ranges.
fn exp_lane_avx2(x: f32) -> f32 {
    let (z, n, b, u) = reduce_arg(x);
    let e = z.to_bits() << 23;
    let k = f32::from_bits(e.wrapping_add(1f32.to_bits()));
    let j = C4.mul_add(b, C3).mul_add(u, C2.mul_add(b, C1)).mul_add(u, C0 * b);
    let abs_n = n.abs();
    if abs_n > 192.0 {
        let g: u32 = if n <= 0.0 { 0x8200_0000 } else { 0 };
        let s1 = f32::from_bits(g.wrapping_add(0x7f00_0000));
        s1 * s1
    } else if abs_n > 126.0 {
        let g: u32 = if n <= 0.0 { 0x8200_0000 } else { 0 };
        let s1 = f32::from_bits(g.wrapping_add(0x7f00_0000));
        let s2 = f32::from_bits(e.wrapping_sub(g));
        s2.mul_add(j, s2) * s1
    } else {
        k.mul_add(j, k)
    }
}

/// AVX-512F + DQ: `scalef(j, n)` with the `+1` inside `j`; 0 or ∞ past `|n| > 192`.
fn exp_lane_avx512(x: f32) -> f32 {
    let (_, n, b, u) = reduce_arg(x);
    let j = C4.mul_add(b, C3).mul_add(u, C2.mul_add(b, C1)).mul_add(u, C0.mul_add(b, 1.0));
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    scalef(j, n)
}

/// `vscalefps` for an integral `n` in [−192, 192] (or NaN): `j·2ⁿ` rounded once. The
/// product is exact in f64, so narrowing it is the one rounding (subnormals included).
#[inline]
pub(crate) fn scalef(j: f32, n: f32) -> f32 {
    if n.is_nan() {
        return n;
    }
    (f64::from(j) * 2f64.powi(n as i32)) as f32
}

/// In-place softmax of `scores[..n_valid]` after multiplying by `scale`, mirroring ggml.
/// Entries past `n_valid` are treated as masked (−∞) and come out as 0; the slice length
/// should be the padded range (a multiple of 32) for the lane grouping to match.
pub fn softmax_scaled(p: RefProfile, scores: &mut [f32], n_valid: usize, scale: f32) {
    softmax_with(p, scores, n_valid, scale, |g, max| exp_groups_scalar(p, g, max));
}

/// The softmax around an exponentiation pass `exp_groups(whole_vectors, max)`, which must
/// set `x = exp_lane(p, x − max)` and return `Σ_vectors f64(vector sum)` (see below).
pub(crate) fn softmax_with(
    p: RefProfile,
    scores: &mut [f32],
    n_valid: usize,
    scale: f32,
    exp_groups: impl FnOnce(&mut [f32], f32) -> f64,
) {
    for (i, s) in scores.iter_mut().enumerate() {
        *s = if i < n_valid { *s * scale } else { f32::NEG_INFINITY };
    }
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let whole = scores.len() / p.lanes() * p.lanes();
    let (groups, tail) = scores.split_at_mut(whole);
    let mut sum = exp_groups(groups, max);
    for v in tail {
        // Tails use libm's expf in the reference.
        *v = (*v - max).exp();
        sum += f64::from(*v);
    }
    let inv = (1.0 / sum) as f32;
    for s in scores.iter_mut() {
        *s *= inv;
    }
}

/// Scalar exponentiation pass: a vector of [`exp_lane`] at a time, each vector's sum added
/// to an f64 total. The sums are the builds' horizontal adds: AVX2 halves 8 lanes to 4
/// (hi+lo), AVX-512 16 to 8 to 4 (gcc's `_mm512_reduce_add_ps`); both then give
/// `(t0+t2) + (t1+t3)` (movehl, movehdup on AVX2).
fn exp_groups_scalar(p: RefProfile, groups: &mut [f32], max: f32) -> f64 {
    let mut sum = 0f64;
    for c in groups.chunks_exact_mut(p.lanes()) {
        for v in c.iter_mut() {
            *v = exp_lane(p, *v - max);
        }
        sum += f64::from(vector_sum(c));
    }
    sum
}

/// The horizontal sum of one 8- or 16-lane vector as ggml's softmax forms it.
#[inline]
fn vector_sum(v: &[f32]) -> f32 {
    match v.len() {
        8 => {
            let t: [f32; 4] = std::array::from_fn(|i| v[i + 4] + v[i]);
            (t[0] + t[2]) + (t[1] + t[3])
        }
        16 => super::dot::lane_sum16(v),
        _ => unreachable!("ggml's float vectors have 8 or 16 lanes"),
    }
}

/// `ggml_vec_silu_f32`: `x / (1 + exp(−x))`, a vector at a time with the profile's
/// `exp_lane`, the leftovers with libm's `expf` (`ggml_silu_f32`).
pub fn silu(p: RefProfile, x: &[f32], out: &mut [f32]) {
    assert_eq!(x.len(), out.len());
    let whole = x.len() / p.lanes() * p.lanes();
    for (o, &v) in out[..whole].iter_mut().zip(&x[..whole]) {
        *o = v / (1.0 + exp_lane(p, 0.0 - v));
    }
    for (o, &v) in out[whole..].iter_mut().zip(&x[whole..]) {
        *o = v / (1.0 + (-v).exp());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_lane_is_accurate_and_saturates() {
        for i in -800..=800 {
            let x = i as f32 * 0.1;
            for p in RefProfile::ALL {
                let got = f64::from(exp_lane(p, x));
                let want = f64::from(x).exp();
                assert!(((got - want) / want).abs() < 3e-7, "{p} x={x} got={got} want={want}");
            }
        }
        for p in RefProfile::ALL {
            assert_eq!(exp_lane(p, f32::NEG_INFINITY), 0.0);
            assert_eq!(exp_lane(p, -200.0), 0.0);
            assert_eq!(exp_lane(p, 0.0), 1.0);
            assert_eq!(exp_lane(p, 100.0), f32::INFINITY);
            assert!(exp_lane(p, f32::NAN).is_nan());
        }
        // Subnormal results: both round the exact value once.
        let tiny = exp_lane(RefProfile::Avx512, -100.0);
        assert!(tiny > 0.0 && tiny < f32::MIN_POSITIVE);
    }

    #[test]
    fn softmax_sums_to_one_and_masks() {
        for p in RefProfile::ALL {
            let mut s = vec![0.5, 1.5, -2.0, 3.0, 9.0, 9.0, 9.0, 9.0];
            softmax_scaled(p, &mut s, 4, 0.5);
            let total: f32 = s.iter().sum();
            assert!((total - 1.0).abs() < 1e-6);
            assert!(s[4..].iter().all(|&p| p == 0.0));
            assert!(s[3] > s[1] && s[1] > s[0] && s[0] > s[2]);
        }
    }
}
