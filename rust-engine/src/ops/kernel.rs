//! Run-time choice of the float kernels, and the reference-build profile they mirror.
//!
//! The kernel (the scalar emulation of ggml's lanes, which is the oracle; its AVX2 + FMA +
//! F16C twin; or its AVX-512 twin) and the profile (which build of the reference to mirror,
//! see [`crate::profile`]) are separate choices: every kernel computes every profile, with
//! identical bits; only speed differs.

#[cfg(target_arch = "x86_64")]
use super::{avx2, avx512};
use super::{dot, softmax};
use crate::profile::RefProfile;

/// A float-kernel implementation with the profile it mirrors. Only constructible for kernels
/// this CPU can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FloatKernel {
    imp: Imp,
    profile: RefProfile,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Imp {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2(avx2::Avx2Fma),
    #[cfg(target_arch = "x86_64")]
    Avx512(avx512::Avx512),
}

/// The code that computes a profile-dependent operation: the kernel and the profile together.
#[derive(Clone, Copy)]
enum Path {
    Scalar(RefProfile),
    /// AVX2 registers, one per vector of an AVX2 build.
    #[cfg(target_arch = "x86_64")]
    Avx2x1(avx2::Avx2Fma),
    /// AVX2 registers, two per vector of an AVX-512 build.
    #[cfg(target_arch = "x86_64")]
    Avx2x2(avx2::Avx2Fma),
    /// AVX-512 registers for an AVX-512 build.
    #[cfg(target_arch = "x86_64")]
    Avx512(avx512::Avx512),
}

impl FloatKernel {
    /// The scalar emulation (plain loops over ggml's lane structure).
    pub fn scalar(profile: RefProfile) -> Self {
        FloatKernel { imp: Imp::Scalar, profile }
    }

    /// The AVX2 kernels, if this CPU has AVX2, FMA and F16C.
    pub fn avx2(profile: RefProfile) -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            avx2::Avx2Fma::detect().map(|t| FloatKernel { imp: Imp::Avx2(t), profile })
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = profile;
            None
        }
    }

    /// The AVX-512 kernels, if this CPU has AVX-512F and DQ (besides AVX2, FMA and F16C).
    /// For the AVX2 profile they run the AVX2 code (the reference's vectors are 256 bits).
    pub fn avx512(profile: RefProfile) -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            avx512::Avx512::detect().map(|t| FloatKernel { imp: Imp::Avx512(t), profile })
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = profile;
            None
        }
    }

    /// Every kernel this CPU runs, scalar first.
    pub fn available(profile: RefProfile) -> Vec<Self> {
        [Some(Self::scalar(profile)), Self::avx2(profile), Self::avx512(profile)]
            .into_iter()
            .flatten()
            .collect()
    }

    /// The fastest kernel this CPU runs.
    pub fn best(profile: RefProfile) -> Self {
        Self::avx512(profile).or_else(|| Self::avx2(profile)).unwrap_or_else(|| Self::scalar(profile))
    }

    /// The float kernel that goes with a QK256 kernel choice: scalar with scalar (so
    /// `BITNET_QK256_IMPL=scalar` runs the whole engine on the oracles), else the best.
    pub fn matching(qk256: crate::quant::Qk256Kernel, profile: RefProfile) -> Self {
        if qk256 == crate::quant::Qk256Kernel::scalar() {
            Self::scalar(profile)
        } else {
            Self::best(profile)
        }
    }

    /// `"scalar"`, `"avx2"` or `"avx512"`: the kernel that computes.
    pub fn name(self) -> &'static str {
        match self.imp {
            Imp::Scalar => "scalar",
            #[cfg(target_arch = "x86_64")]
            Imp::Avx2(_) => "avx2",
            #[cfg(target_arch = "x86_64")]
            Imp::Avx512(_) => "avx512",
        }
    }

    /// The reference build whose numerics this kernel mirrors.
    pub fn profile(self) -> RefProfile {
        self.profile
    }

    /// This kernel with another profile.
    pub fn with_profile(self, profile: RefProfile) -> Self {
        FloatKernel { profile, ..self }
    }

    #[inline]
    fn path(self) -> Path {
        match self.imp {
            Imp::Scalar => Path::Scalar(self.profile),
            #[cfg(target_arch = "x86_64")]
            Imp::Avx2(t) => Self::avx2_path(t, self.profile),
            #[cfg(target_arch = "x86_64")]
            Imp::Avx512(t) => match self.profile {
                RefProfile::Avx512 => Path::Avx512(t),
                RefProfile::Avx2 => Self::avx2_path(t.avx2, self.profile),
            },
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    fn avx2_path(t: avx2::Avx2Fma, profile: RefProfile) -> Path {
        match profile {
            RefProfile::Avx2 => Path::Avx2x1(t),
            RefProfile::Avx512 => Path::Avx2x2(t),
        }
    }

    /// The AVX2 token of an AVX2 or AVX-512 kernel, for the operations that do not depend
    /// on the profile (f16 conversions).
    #[cfg(target_arch = "x86_64")]
    #[inline]
    fn avx2_token(self) -> Option<avx2::Avx2Fma> {
        match self.imp {
            Imp::Scalar => None,
            Imp::Avx2(t) => Some(t),
            Imp::Avx512(t) => Some(t.avx2),
        }
    }

    /// [`dot::dot_f16`].
    #[inline]
    pub fn dot_f16(self, x: &[u16], y: &[u16]) -> f32 {
        match self.path() {
            Path::Scalar(p) => dot::dot_f16(p, x, y),
            #[cfg(target_arch = "x86_64")]
            Path::Avx2x1(t) => avx2::dot_f16::<1>(t, x, y),
            #[cfg(target_arch = "x86_64")]
            Path::Avx2x2(t) => avx2::dot_f16::<2>(t, x, y),
            #[cfg(target_arch = "x86_64")]
            Path::Avx512(t) => avx512::dot_f16(t, x, y),
        }
    }

    /// [`dot::dot_f32`].
    #[inline]
    pub fn dot_f32(self, x: &[f32], y: &[f32]) -> f32 {
        match self.path() {
            Path::Scalar(p) => dot::dot_f32(p, x, y),
            #[cfg(target_arch = "x86_64")]
            Path::Avx2x1(t) => avx2::dot_f32::<1>(t, x, y),
            #[cfg(target_arch = "x86_64")]
            Path::Avx2x2(t) => avx2::dot_f32::<2>(t, x, y),
            #[cfg(target_arch = "x86_64")]
            Path::Avx512(t) => avx512::dot_f32(t, x, y),
        }
    }

    /// [`dot::dot_f16_f32`].
    #[inline]
    pub fn dot_f16_f32(self, x: &[u16], y: &[f32]) -> f32 {
        match self.path() {
            Path::Scalar(p) => dot::dot_f16_f32(p, x, y),
            #[cfg(target_arch = "x86_64")]
            Path::Avx2x1(t) => avx2::dot_f16_f32::<1>(t, x, y),
            #[cfg(target_arch = "x86_64")]
            Path::Avx2x2(t) => avx2::dot_f16_f32::<2>(t, x, y),
            #[cfg(target_arch = "x86_64")]
            Path::Avx512(t) => avx512::dot_f16_f32(t, x, y),
        }
    }

    /// [`dot::dot_f16_bytes_f32`] of `R` rows at once (the rows share the loads of `y`).
    #[inline]
    pub fn dot_f16_bytes_rows<const R: usize>(self, rows: [&[u8]; R], y: &[f32]) -> [f32; R] {
        match self.path() {
            Path::Scalar(p) => rows.map(|r| dot::dot_f16_bytes_f32(p, r, y)),
            #[cfg(target_arch = "x86_64")]
            Path::Avx2x1(t) => avx2::dot_f16_bytes_rows::<R, 1>(t, rows, y),
            #[cfg(target_arch = "x86_64")]
            Path::Avx2x2(t) => avx2::dot_f16_bytes_rows::<R, 2>(t, rows, y),
            #[cfg(target_arch = "x86_64")]
            Path::Avx512(t) => avx512::dot_f16_bytes_rows::<R>(t, rows, y),
        }
    }

    /// [`dot::dot_f16_bytes`] of `R` rows at once (the rows share the loads of `y`).
    #[inline]
    pub fn dot_f16_bytes_rows_f16<const R: usize>(self, rows: [&[u8]; R], y: &[u16]) -> [f32; R] {
        match self.path() {
            Path::Scalar(p) => rows.map(|r| dot::dot_f16_bytes(p, r, y)),
            #[cfg(target_arch = "x86_64")]
            Path::Avx2x1(t) => avx2::dot_f16_bytes_rows_f16::<R, 1>(t, rows, y),
            #[cfg(target_arch = "x86_64")]
            Path::Avx2x2(t) => avx2::dot_f16_bytes_rows_f16::<R, 2>(t, rows, y),
            #[cfg(target_arch = "x86_64")]
            Path::Avx512(t) => avx512::dot_f16_bytes_rows_f16::<R>(t, rows, y),
        }
    }

    /// `out[i] = f32_to_f16(x[i])` (the same on every build).
    pub fn f32_to_f16_row(self, x: &[f32], out: &mut [u16]) {
        #[cfg(target_arch = "x86_64")]
        if let Some(t) = self.avx2_token() {
            return avx2::f32_to_f16_row(t, x, out);
        }
        assert_eq!(x.len(), out.len());
        for (o, &v) in out.iter_mut().zip(x) {
            *o = dot::f32_to_f16(v);
        }
    }

    /// [`dot::round_through_f16`] (the same on every build).
    pub fn round_through_f16(self, x: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if let Some(t) = self.avx2_token() {
            return avx2::round_through_f16(t, x);
        }
        dot::round_through_f16(x)
    }

    /// [`softmax::softmax_scaled`].
    pub fn softmax_scaled(self, scores: &mut [f32], n_valid: usize, scale: f32) {
        let p = self.profile;
        match self.path() {
            Path::Scalar(p) => softmax::softmax_scaled(p, scores, n_valid, scale),
            #[cfg(target_arch = "x86_64")]
            Path::Avx2x1(t) => {
                softmax::softmax_with(p, scores, n_valid, scale, |g, m| avx2::exp_sub_sum::<1>(t, g, m))
            }
            #[cfg(target_arch = "x86_64")]
            Path::Avx2x2(t) => {
                softmax::softmax_with(p, scores, n_valid, scale, |g, m| avx2::exp_sub_sum::<2>(t, g, m))
            }
            #[cfg(target_arch = "x86_64")]
            Path::Avx512(t) => {
                softmax::softmax_with(p, scores, n_valid, scale, |g, m| avx512::exp_sub_sum(t, g, m))
            }
        }
    }

    /// [`softmax::silu`].
    pub fn silu(self, x: &[f32], out: &mut [f32]) {
        let done = match self.path() {
            Path::Scalar(_) => 0,
            #[cfg(target_arch = "x86_64")]
            Path::Avx2x1(t) => avx2::silu::<1>(t, x, out),
            #[cfg(target_arch = "x86_64")]
            Path::Avx2x2(t) => avx2::silu::<2>(t, x, out),
            #[cfg(target_arch = "x86_64")]
            Path::Avx512(t) => avx512::silu(t, x, out),
        };
        softmax::silu(self.profile, &x[done..], &mut out[done..]);
    }
}
