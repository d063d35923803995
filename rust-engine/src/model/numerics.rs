//! The numerics choices of a model, in one value: which float kernels compute, which
//! reference build's bits they mirror, and whether the reference's f16 roundings are applied.

use crate::ops::FloatKernel;
use crate::profile::RefProfile;

/// How the float parts of the forward pass round. Made once at load from [`ModelOptions`]
/// (`profile`, `exact_reference_rounding`) and the QK256 kernel, changed only by
/// [`Model::set_kernel`] / [`Model::set_float_kernel`], and handed to every operation whose
/// bits depend on it (products, attention, the KV cache).
///
/// The kernel changes no bit (every kernel computes every profile alike); the profile and
/// the rounding switch do.
///
/// [`ModelOptions`]: super::ModelOptions
/// [`Model::set_kernel`]: super::Model::set_kernel
/// [`Model::set_float_kernel`]: super::Model::set_float_kernel
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Numerics {
    /// The float kernels (dots, f16 conversion, softmax, SiLU, head products), carrying the
    /// reference-build profile they mirror ([`FloatKernel::profile`]).
    pub kernel: FloatKernel,
    /// Round where the reference's default context rounds to f16: keys and values stored as
    /// f16, the query before `K·Q`, the softmax before `V·softmax`, the input of an F16
    /// matrix. Off, all of those stay f32.
    pub exact_rounding: bool,
}

impl Numerics {
    /// The reference build whose float numerics are mirrored.
    pub fn profile(self) -> RefProfile {
        self.kernel.profile()
    }
}
