//! Run-time choice of the float kernels: the scalar emulation of ggml's lanes (the oracle)
//! or its AVX2 + FMA + F16C twin. Both give identical bits; only speed differs.

use super::dot;
use super::softmax;

/// A float-kernel implementation. Only constructible for kernels this CPU can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FloatKernel(Imp);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Imp {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2(super::avx2::Avx2Fma),
}

impl FloatKernel {
    /// The scalar emulation (plain loops over ggml's lane structure).
    pub fn scalar() -> Self {
        FloatKernel(Imp::Scalar)
    }

    /// The AVX2 kernels, if this CPU has AVX2, FMA and F16C.
    pub fn avx2() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            super::avx2::Avx2Fma::detect().map(|t| FloatKernel(Imp::Avx2(t)))
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            None
        }
    }

    /// The fastest kernel this CPU runs.
    pub fn best() -> Self {
        Self::avx2().unwrap_or_else(Self::scalar)
    }

    /// The float kernel that goes with a QK256 kernel choice: scalar with scalar (so
    /// `BITNET_QK256_IMPL=scalar` runs the whole engine on the oracles), else the best.
    pub fn matching(qk256: crate::quant::Qk256Kernel) -> Self {
        if qk256 == crate::quant::Qk256Kernel::scalar() {
            Self::scalar()
        } else {
            Self::best()
        }
    }

    /// `"scalar"` or `"avx2"`.
    pub fn name(self) -> &'static str {
        match self.0 {
            Imp::Scalar => "scalar",
            #[cfg(target_arch = "x86_64")]
            Imp::Avx2(_) => "avx2",
        }
    }

    /// [`dot::dot_f16`].
    #[inline]
    pub fn dot_f16(self, x: &[u16], y: &[u16]) -> f32 {
        match self.0 {
            Imp::Scalar => dot::dot_f16(x, y),
            #[cfg(target_arch = "x86_64")]
            Imp::Avx2(t) => super::avx2::dot_f16(t, x, y),
        }
    }

    /// [`dot::dot_f32`].
    #[inline]
    pub fn dot_f32(self, x: &[f32], y: &[f32]) -> f32 {
        match self.0 {
            Imp::Scalar => dot::dot_f32(x, y),
            #[cfg(target_arch = "x86_64")]
            Imp::Avx2(t) => super::avx2::dot_f32(t, x, y),
        }
    }

    /// [`dot::dot_f16_f32`].
    #[inline]
    pub fn dot_f16_f32(self, x: &[u16], y: &[f32]) -> f32 {
        match self.0 {
            Imp::Scalar => dot::dot_f16_f32(x, y),
            #[cfg(target_arch = "x86_64")]
            Imp::Avx2(t) => super::avx2::dot_f16_f32(t, x, y),
        }
    }

    /// [`dot::dot_f16_bytes_f32`] of `R` rows at once (the rows share the loads of `y`).
    #[inline]
    pub fn dot_f16_bytes_rows<const R: usize>(self, rows: [&[u8]; R], y: &[f32]) -> [f32; R] {
        match self.0 {
            Imp::Scalar => rows.map(|r| dot::dot_f16_bytes_f32(r, y)),
            #[cfg(target_arch = "x86_64")]
            Imp::Avx2(t) => super::avx2::dot_f16_bytes_rows(t, rows, y),
        }
    }

    /// [`dot::dot_f16_bytes`] of `R` rows at once (the rows share the loads of `y`).
    #[inline]
    pub fn dot_f16_bytes_rows_f16<const R: usize>(self, rows: [&[u8]; R], y: &[u16]) -> [f32; R] {
        match self.0 {
            Imp::Scalar => rows.map(|r| dot::dot_f16_bytes(r, y)),
            #[cfg(target_arch = "x86_64")]
            Imp::Avx2(t) => super::avx2::dot_f16_bytes_rows_f16(t, rows, y),
        }
    }

    /// `out[i] = f32_to_f16(x[i])`.
    pub fn f32_to_f16_row(self, x: &[f32], out: &mut [u16]) {
        match self.0 {
            Imp::Scalar => {
                assert_eq!(x.len(), out.len());
                for (o, &v) in out.iter_mut().zip(x) {
                    *o = dot::f32_to_f16(v);
                }
            }
            #[cfg(target_arch = "x86_64")]
            Imp::Avx2(t) => super::avx2::f32_to_f16_row(t, x, out),
        }
    }

    /// [`dot::round_through_f16`].
    pub fn round_through_f16(self, x: &mut [f32]) {
        match self.0 {
            Imp::Scalar => dot::round_through_f16(x),
            #[cfg(target_arch = "x86_64")]
            Imp::Avx2(t) => super::avx2::round_through_f16(t, x),
        }
    }

    /// [`softmax::softmax_scaled`].
    pub fn softmax_scaled(self, scores: &mut [f32], n_valid: usize, scale: f32) {
        match self.0 {
            Imp::Scalar => softmax::softmax_scaled(scores, n_valid, scale),
            #[cfg(target_arch = "x86_64")]
            Imp::Avx2(t) => {
                softmax::softmax_with(scores, n_valid, scale, |g, max| super::avx2::exp_sub_sum(t, g, max))
            }
        }
    }
}
