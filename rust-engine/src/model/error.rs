//! Errors from loading or running a model; each names the tensor, key or value at fault.

use crate::gguf::GgufError;
use crate::parallel::PoolError;
use crate::quant::QuantError;

use super::arch::{Arch, SUPPORTED_ARCHITECTURES};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Quant(#[from] QuantError),
    #[error(transparent)]
    Threads(#[from] PoolError),
    #[error("architecture {0:?} is not supported (the engine runs {runs})", runs = SUPPORTED_ARCHITECTURES.join(", "))]
    UnsupportedArchitecture(String),
    /// A tensor the reference's loader does not create for the architecture: bitnet.cpp
    /// refuses such a file ("wrong number of tensors").
    #[error("tensor {tensor:?} is not part of architecture {arch} (bitnet.cpp refuses the file: wrong number of tensors)")]
    NotInArchitecture { tensor: String, arch: Arch },
    #[error("hyper-parameter {key}: {reason}")]
    BadHyperParameter { key: String, reason: String },
    #[error("tensor {0:?} is missing")]
    MissingTensor(String),
    #[error("tensor {tensor:?} has shape {found:?}, the hyper-parameters require {expected:?}")]
    ShapeMismatch { tensor: String, expected: Vec<u64>, found: Vec<u64> },
    #[error("tensor {tensor:?} has type {ggml_type}, which the engine cannot use there")]
    UnsupportedType { tensor: String, ggml_type: String },
    /// The embedding / lm_head in a type the engine does not mirror.
    #[error(
        "tensor {tensor:?} has type {ggml_type}; the engine reads the embedding and lm_head only as \
         f32, f16, bf16, q8_0, q6_K, q4_K or i2_s"
    )]
    UnsupportedHeadType { tensor: String, ggml_type: String },
    #[error("a batch needs at least one token")]
    EmptyBatch,
    #[error("cannot trace token {row} of a batch of {tokens}")]
    TraceRow { row: usize, tokens: usize },
    #[error("token id {token} is outside the vocabulary (size {n_vocab})")]
    TokenOutOfRange { token: u32, n_vocab: usize },
    #[error("position {pos} is outside the context of {n_ctx} tokens")]
    ContextFull { pos: usize, n_ctx: usize },
    #[error("a hidden state has {got} values, the model's n_embd is {n_embd}")]
    HiddenLength { got: usize, n_embd: usize },
    #[error("position {pos} skips ahead: positions 0..{filled} are filled, evaluate them in order")]
    PositionGap { pos: usize, filled: usize },
}
