//! The one error type of the `quant` module.

use thiserror::Error;

/// Everything that can go wrong when reading, detecting or packing ternary tensors.
///
/// Every variant names the tensor (or the argument) it is about, so a message is
/// actionable without a backtrace.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum QuantError {
    /// The tensor's byte count matches no I2_S flavour.
    #[error(
        "tensor `{tensor}` (shape {dims:?}, {n_bytes} bytes) matches no I2_S flavour; \
         each flavour would need: {needs}"
    )]
    NoFlavorFits {
        tensor: String,
        dims: Vec<u64>,
        n_bytes: u64,
        /// One entry per flavour: its name and the byte count it would need (or why it cannot apply).
        needs: String,
    },

    /// A flavour was forced (environment or argument) but the tensor does not fit it.
    #[error(
        "tensor `{tensor}` (shape {dims:?}, {n_bytes} bytes): forced I2_S flavour `{flavor}` \
         does not fit: {reason}"
    )]
    ForcedFlavorMismatch {
        tensor: String,
        dims: Vec<u64>,
        n_bytes: u64,
        flavor: &'static str,
        reason: String,
    },

    /// A flavour name (from `BITNET_I2S_FLAVOR` or an argument) is not known.
    #[error("unknown I2_S flavour `{name}` (from {origin}); known: {known}")]
    UnknownFlavorName { name: String, origin: &'static str, known: &'static str },

    /// The tensor's shape cannot hold a ternary matrix (empty, zero-sized, overflowing).
    #[error("tensor `{tensor}` has an unusable shape {dims:?}: {reason}")]
    BadShape { tensor: String, dims: Vec<u64>, reason: String },

    /// `TernaryMatrix::new` was given data of the wrong size for its flavour and shape.
    #[error(
        "tensor `{tensor}` ({flavor}, {rows} rows x {cols} cols): expected {expected} bytes, got {actual}"
    )]
    SizeMismatch {
        tensor: String,
        flavor: &'static str,
        rows: usize,
        cols: usize,
        expected: u64,
        actual: u64,
    },

    /// The sibling `<name>.scale` tensor is missing or has the wrong size.
    #[error("tensor `{tensor}` (split32-sibling): {reason}")]
    SiblingScale { tensor: String, reason: String },

    /// `BITNET_QK256_IMPL` (or an argument) names no kernel.
    #[error("unknown QK256 kernel `{value}` (from {origin}); expected scalar, avx2, avx512vnni or auto")]
    UnknownKernel { value: String, origin: &'static str },

    /// A kernel was asked for that this CPU cannot run.
    #[error("QK256 kernel `{kernel}` is not available on this CPU: {reason}")]
    KernelUnavailable { kernel: &'static str, reason: &'static str },

    /// A packing helper got a value outside {-1, 0, +1}.
    #[error("{what}: element {index} is {value}, not a ternary value in {{-1, 0, 1}}")]
    NotTernary { what: &'static str, index: usize, value: i8 },

    /// A packing helper got a length its layout cannot hold.
    #[error("{what}: length {len} is not a positive multiple of {multiple}")]
    BadLength { what: &'static str, len: usize, multiple: usize },

    /// A packing helper got a scale slice of the wrong length.
    #[error("{what}: expected {expected} block scales, got {actual}")]
    ScaleCount { what: &'static str, expected: usize, actual: usize },
}
