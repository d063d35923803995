//! Softmax as ggml computes it for attention (`ggml_soft_max_ext` on AVX2+FMA).
//!
//! The reference scales the scores, adds the causal mask (0 or −∞), takes the max, then
//! exponentiates eight lanes at a time with its own polynomial `exp` (not libm's), adding
//! each group's horizontal f32 sum into an f64 total; finally it multiplies by
//! `(float)(1.0 / total)`. The key/value range it attends over is padded with masked cells
//! to a multiple of 32, so every element goes through the polynomial. [`exp_lane`] is one
//! lane of that polynomial, written with `mul_add` for each fused operation.

/// One lane of ggml's vectorised `expf` (AVX2 + FMA build).
pub fn exp_lane(x: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0; // 0x1.8p23: rounds to an integer in the low mantissa bits
    const LOG2E: f32 = f32::from_bits(0x3fb8_aa3b); // 0x1.715476p+0
    const LN2_HI: f32 = f32::from_bits(0x3f31_7200); // 0x1.62e4p-1
    const LN2_LO: f32 = f32::from_bits(0x35bf_be8e); // 0x1.7f7d1cp-20
    const C0: f32 = f32::from_bits(0x3f7f_fff6); // 0x1.ffffecp-1
    const C1: f32 = f32::from_bits(0x3eff_fedb); // 0x1.fffdb6p-2
    const C2: f32 = f32::from_bits(0x3e2a_af33); // 0x1.555e66p-3
    const C3: f32 = f32::from_bits(0x3d2b_9f17); // 0x1.573e2ep-5
    const C4: f32 = f32::from_bits(0x3c07_2010); // 0x1.0e4020p-7

    let z = x.mul_add(LOG2E, SHIFT);
    let n = z - SHIFT;
    // fnmadd(a, b, c) = c - a·b, fused.
    let b = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
    let e = z.to_bits() << 23;
    let k = f32::from_bits(e.wrapping_add(1f32.to_bits()));
    let u = b * b;
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

/// In-place softmax of `scores[..n_valid]` after multiplying by `scale`, mirroring ggml.
/// Entries past `n_valid` are treated as masked (−∞) and come out as 0; the slice length
/// should be the padded range (a multiple of 8) for the lane grouping to match.
pub fn softmax_scaled(scores: &mut [f32], n_valid: usize, scale: f32) {
    softmax_with(scores, n_valid, scale, exp_groups_scalar);
}

/// The softmax around an exponentiation pass `exp_groups(whole_groups_of_8, max)`, which
/// must set `x = exp_lane(x − max)` and return `Σ_groups f64(group sum)` (see below).
pub(crate) fn softmax_with(
    scores: &mut [f32],
    n_valid: usize,
    scale: f32,
    exp_groups: impl FnOnce(&mut [f32], f32) -> f64,
) {
    for (i, s) in scores.iter_mut().enumerate() {
        *s = if i < n_valid { *s * scale } else { f32::NEG_INFINITY };
    }
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let whole = scores.len() & !7;
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

/// Scalar exponentiation pass: eight lanes of [`exp_lane`] per group; each group's sum is
/// formed as `_mm256` hi+lo, then movehl, then movehdup do it:
/// `((v0+v4)+(v2+v6)) + ((v1+v5)+(v3+v7))`, and added to an f64 total.
fn exp_groups_scalar(groups: &mut [f32], max: f32) -> f64 {
    let mut sum = 0f64;
    for c in groups.chunks_exact_mut(8) {
        let v: [f32; 8] = std::array::from_fn(|l| exp_lane(c[l] - max));
        c.copy_from_slice(&v);
        let h: [f32; 4] = std::array::from_fn(|l| v[l + 4] + v[l]);
        let s = (h[0] + h[2]) + (h[1] + h[3]);
        sum += f64::from(s);
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_lane_is_accurate_and_saturates() {
        for i in -800..=800 {
            let x = i as f32 * 0.1;
            let got = f64::from(exp_lane(x));
            let want = f64::from(x).exp();
            assert!(((got - want) / want).abs() < 3e-7, "x={x} got={got} want={want}");
        }
        assert_eq!(exp_lane(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_lane(-200.0), 0.0);
        assert_eq!(exp_lane(0.0), 1.0);
    }

    #[test]
    fn softmax_sums_to_one_and_masks() {
        let mut s = vec![0.5, 1.5, -2.0, 3.0, 9.0, 9.0, 9.0, 9.0];
        softmax_scaled(&mut s, 4, 0.5);
        let total: f32 = s.iter().sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert!(s[4..].iter().all(|&p| p == 0.0));
        assert!(s[3] > s[1] && s[1] > s[0] && s[0] > s[2]);
    }
}
