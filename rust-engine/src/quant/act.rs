//! Activation quantization: the reference's `quantize_row_i8_s`, mirrored step by step.
//!
//! For one activation row `x` of length `n` (ggml-quants.c, `quantize_row_i8_s`):
//!
//! 1. `max = 1e-5` (a double), then for each element `a = fabs((double)x_i)` and
//!    `max = (max > a) ? max : a` — the `MAX` macro, in double.
//! 2. `s = (float)(127 / max)` — the division in double, then rounded to f32.
//! 3. `q_i = nearest_int(x_i * s)` clamped to `[-128, 127]`, where `nearest_int(f)` adds
//!    `12582912.f` (1.5·2²³) and takes the low 23 mantissa bits minus `0x400000`: round half
//!    to even for `|f| < 2²²`.
//! 4. `act_sum = Σ q_i` in int32 (wrapping, like the C on every real target).
//!
//! **FMA.** The reference is built with `-march=native` as gnu11, where gcc's default
//! `-ffp-contract=fast` fuses `x_i * s + 12582912.f` into one FMA (checked by disassembling
//! `quantize_row_i8_s` from that build: `vfmadd132ss`/`vfmadd132ps`, no separate multiply).
//! A fused and an unfused product differ when `x_i·s` lies within half an f32 ulp of a
//! half-integer: rare but real (1 element in 2000 random rows of 2560 when checked against
//! the compiled reference; the fused mirror matched all of them bit for bit). So
//! [`ActRounding::Fused`] (the default) matches a reference built for a CPU with FMA, and
//! [`ActRounding::Unfused`] one built without (e.g. plain `x86-64`). Report which was used.
//!
//! **NaN and infinity policy.** We mirror the arithmetic, not just the formula:
//! - a NaN makes `max` NaN, but the next non-NaN element replaces it (`NaN > a` is false), so
//!   a NaN is forgotten unless it is last, and the `1e-5` floor no longer applies after it;
//! - `q_i` for a NaN element (or for `inf · 0`) is read from the NaN's mantissa bits, as the
//!   reference does: 0 for the canonical quiet NaN. Rust does not promise NaN payloads, so
//!   only the canonical cases are tested;
//! - an infinite element makes `s = 0`: every `q_i` is 0 and the matvec output is NaN, as in
//!   the reference.
//!
//! The SIMD path handles rows without NaN and hands any row containing a NaN to the scalar
//! path, so both paths give identical `(q, s, sum)` for every input.

use super::kernel::Qk256Kernel;

/// `1.5 · 2²³`: adding it to a float of magnitude below 2²² leaves the rounded integer in the
/// low mantissa bits.
pub(crate) const NEAREST_INT_MAGIC: f32 = 12_582_912.0;

/// The reference's floor on `max |x|` (`double min = 0.00001`).
pub(crate) const ACT_MAX_FLOOR: f64 = 0.00001;

/// How `x_i · s + 12582912` is rounded inside `nearest_int` (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ActRounding {
    /// One rounding (FMA): the reference built with `-march=native` on a CPU with FMA.
    #[default]
    Fused,
    /// Product rounded to f32, then the add rounded: the reference built without FMA.
    Unfused,
}

impl ActRounding {
    /// Short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            ActRounding::Fused => "fma",
            ActRounding::Unfused => "mul+add",
        }
    }
}

/// The reference's `nearest_int`, given the already-computed `x·s + 12582912`.
#[inline(always)]
pub(crate) fn nearest_int_from_biased(val: f32) -> i32 {
    ((val.to_bits() as i32) & 0x007f_ffff) - 0x0040_0000
}

/// `s = (float)(127 / max(1e-5, max |x_i|))` with the reference's exact `MAX` recurrence.
pub(crate) fn act_scale_scalar(x: &[f32]) -> f32 {
    let mut max = ACT_MAX_FLOOR;
    for &v in x {
        let a = f64::from(v).abs();
        max = if max > a { max } else { a };
    }
    (127.0 / max) as f32
}

#[inline(always)]
fn quantize_one(v: f32, s: f32, rounding: ActRounding) -> i32 {
    let biased = match rounding {
        ActRounding::Fused => v.mul_add(s, NEAREST_INT_MAGIC),
        ActRounding::Unfused => v * s + NEAREST_INT_MAGIC,
    };
    nearest_int_from_biased(biased).clamp(-128, 127)
}

/// Scalar mirror of the reference, for any rounding. The oracle for the SIMD path.
pub(crate) fn quantize_row_scalar(x: &[f32], q: &mut [i8], rounding: ActRounding) -> (f32, i32) {
    assert_eq!(x.len(), q.len(), "quantize_row_i8_s: x and q lengths differ");
    let s = act_scale_scalar(x);
    let mut sum = 0i32;
    for (d, &v) in q.iter_mut().zip(x) {
        let v = quantize_one(v, s, rounding);
        sum = sum.wrapping_add(v);
        *d = v as i8;
    }
    (s, sum)
}

/// Quantizes one activation row exactly as the reference's `quantize_row_i8_s` (built with
/// FMA, see the module docs): writes `q` and returns `(s, Σq)`.
///
/// # Panics
/// If `x.len() != q.len()`.
pub fn quantize_row_i8_s(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    quantize_row_i8_s_with(x, q, ActRounding::Fused)
}

/// [`quantize_row_i8_s`] with an explicit rounding mode.
///
/// # Panics
/// If `x.len() != q.len()`.
pub fn quantize_row_i8_s_with(x: &[f32], q: &mut [i8], rounding: ActRounding) -> (f32, i32) {
    quantize_row_dispatch(Qk256Kernel::best(), x, q, rounding)
}

pub(crate) fn quantize_row_dispatch(
    kernel: Qk256Kernel,
    x: &[f32],
    q: &mut [i8],
    rounding: ActRounding,
) -> (f32, i32) {
    assert_eq!(x.len(), q.len(), "quantize_row_i8_s: x and q lengths differ");
    #[cfg(target_arch = "x86_64")]
    if let Some(token) = kernel.act_avx2_token() {
        if let Some(r) = super::avx2::quantize_row(token, x, q, rounding == ActRounding::Fused) {
            return r;
        }
    }
    let _ = kernel;
    quantize_row_scalar(x, q, rounding)
}

/// One quantized activation row: int8 values, the scale `s` and `Σq`. A reusable buffer:
/// [`quantize`](Self::quantize) reuses its allocation, so per-token work allocates nothing
/// once the buffer has seen the longest row.
#[derive(Debug, Clone)]
pub struct QuantizedActs {
    q: Vec<i8>,
    scale: f32,
    sum: i32,
    kernel: Qk256Kernel,
    rounding: ActRounding,
}

impl QuantizedActs {
    /// An empty buffer with room for `capacity` values, using the kernel selected by
    /// `BITNET_QK256_IMPL` (or the scalar one if that variable is invalid: the matrices
    /// report that error) and FMA rounding.
    pub fn new(capacity: usize) -> Self {
        let kernel = Qk256Kernel::from_env().unwrap_or_else(|_| Qk256Kernel::scalar());
        Self::with_kernel(capacity, kernel)
    }

    /// An empty buffer that quantizes with `kernel` (results are identical for every kernel).
    pub fn with_kernel(capacity: usize, kernel: Qk256Kernel) -> Self {
        QuantizedActs {
            q: Vec::with_capacity(capacity),
            scale: 0.0,
            sum: 0,
            kernel,
            rounding: ActRounding::Fused,
        }
    }

    /// Sets the rounding mode used by later [`quantize`](Self::quantize) calls.
    pub fn with_rounding(mut self, rounding: ActRounding) -> Self {
        self.rounding = rounding;
        self
    }

    /// Quantizes `x` (any length) into this buffer.
    pub fn quantize(&mut self, x: &[f32]) {
        self.q.resize(x.len(), 0);
        let (s, sum) = quantize_row_dispatch(self.kernel, x, &mut self.q, self.rounding);
        self.scale = s;
        self.sum = sum;
    }

    /// The int8 values.
    pub fn q(&self) -> &[i8] {
        &self.q
    }

    /// The activation scale `s = 127 / max|x|` (values are `x·s` rounded).
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// `Σ q_i` (int32).
    pub fn sum(&self) -> i32 {
        self.sum
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.q.len()
    }

    /// Whether no row has been quantized (or it was empty).
    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    /// The rounding mode in use.
    pub fn rounding(&self) -> ActRounding {
        self.rounding
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        let r = |f: f32| nearest_int_from_biased(f + NEAREST_INT_MAGIC);
        assert_eq!([r(0.5), r(1.5), r(2.5), r(-0.5), r(-1.5)], [0, 2, 2, 0, -2]);
        assert_eq!([r(126.49), r(-127.6), r(0.0), r(-0.0)], [126, -128, 0, 0]);
    }

    #[test]
    fn scale_uses_double_max_and_floor() {
        assert_eq!(act_scale_scalar(&[0.0; 4]), (127.0 / 0.00001f64) as f32);
        assert_eq!(act_scale_scalar(&[0.5, -2.0]), 63.5);
        // A NaN followed by a finite value is forgotten, and the floor with it.
        assert_eq!(act_scale_scalar(&[f32::NAN, 0.0]), f32::INFINITY);
        assert!(act_scale_scalar(&[1.0, f32::NAN]).is_nan());
    }
}
