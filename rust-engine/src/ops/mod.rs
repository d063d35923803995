//! The element-wise and reduction operations of the forward pass, one function each,
//! rounding the way ggml's CPU backend does for a single token.
//!
//! The free functions are the scalar oracles; [`FloatKernel`] dispatches the hot ones
//! (dots, f16 conversion, softmax, SiLU, RMSNorm of a batch's rows, the Q8_0 / K-quant /
//! BF16 head products of `blocks.rs` and `qdot.rs`) to AVX2 or AVX-512 twins that compute
//! identical bits. Those whose bits depend on the ISA the reference was built for take a
//! [`RefProfile`](crate::profile::RefProfile).

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
pub(crate) mod blocks;
pub(crate) mod dot;
pub(crate) mod kernel;
pub(crate) mod qdot;
#[cfg(target_arch = "x86_64")]
mod qdot_avx2;
#[cfg(target_arch = "x86_64")]
mod qdot_avx512;
pub(crate) mod rope;
pub(crate) mod softmax;
pub mod tinyblas;
#[cfg(target_arch = "x86_64")]
mod tinyblas_x86;

pub use blocks::BlockType;
pub(crate) use dot::{f16_to_f32, f32_to_f16};
pub(crate) use kernel::BlockInput;
pub use kernel::FloatKernel;
pub(crate) use rope::Rope;

/// RMSNorm then the weight, as `ggml_rms_norm` + `ggml_mul`:
/// the sum of squares is accumulated in f64 over f32 products, the mean narrowed to f32,
/// `scale = 1 / sqrt(mean + eps)` in f32, then `(x · scale) · w` with two roundings.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    debug_assert!(x.len() == weight.len() && x.len() == out.len());
    let sum: f64 = x.iter().map(|&v| f64::from(v * v)).sum();
    rms_norm_with_sum(x, sum, weight, eps, out);
}

/// The rest of [`rms_norm`] once the sum of squares of `x` is known.
pub(crate) fn rms_norm_with_sum(x: &[f32], sum: f64, weight: &[f32], eps: f32, out: &mut [f32]) {
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = (v * scale) * w;
    }
}

/// `acc += x`, element-wise (the residual connections).
pub fn add_assign(acc: &mut [f32], x: &[f32]) {
    for (a, &v) in acc.iter_mut().zip(x) {
        *a += v;
    }
}

/// `x *= s`, element-wise (`ggml_mul` by a one-element tensor: `ggml_vec_scale_f32`).
pub fn scale(x: &mut [f32], s: f32) {
    for v in x {
        *v *= s;
    }
}

/// `out = a · b`, element-wise (`ggml_mul` of two tensors of one shape).
pub fn mul(a: &[f32], b: &[f32], out: &mut [f32]) {
    debug_assert!(a.len() == b.len() && a.len() == out.len());
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = x * y;
    }
}

/// The bitnet-b1.58 FFN gate: `relu(gate)² · up` (ggml_relu, ggml_sqr, ggml_mul), into `gate`.
pub fn relu_sqr_mul(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        let r = g.max(0.0);
        *g = (r * r) * u;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_normalises() {
        let x = [3.0f32, 4.0, 0.0, 0.0];
        let mut out = [0f32; 4];
        rms_norm(&x, &[1.0, 1.0, 2.0, 1.0], 0.0, &mut out);
        // rms = sqrt(25/4) = 2.5
        assert_eq!(out, [1.2, 1.6, 0.0, 0.0]);
    }

    #[test]
    fn relu_sqr_gate() {
        let mut g = [-1.0f32, 2.0, 0.5];
        relu_sqr_mul(&mut g, &[3.0, 0.5, 4.0]);
        assert_eq!(g, [0.0, 2.0, 1.0]);
    }
}
