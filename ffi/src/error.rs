//! The one error type of the safe wrapper.

use std::path::PathBuf;

/// Everything that can go wrong when loading or driving the reference library in-process.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The shared library could not be opened or lacks a symbol the bindings need.
    #[error("cannot load the reference library {path}: {reason}")]
    Library { path: PathBuf, reason: String },
    /// A user's library (`BITNET_CPP_DIR`) was refused: wrong folder or headers that differ.
    #[error("{0}")]
    Refused(String),
    /// `llama_load_model_from_file` returned null.
    #[error("the reference could not load model {path}: {reason}")]
    ModelLoad { path: PathBuf, reason: String },
    /// `llama_new_context_with_model` returned null.
    #[error("the reference could not create a context (n_ctx {n_ctx}): {reason}")]
    Context { n_ctx: u32, reason: String },
    /// `llama_decode` returned a non-zero status.
    #[error("llama_decode failed with status {status} for {what}: {reason}")]
    Decode { status: i32, what: String, reason: String },
    /// A request outside what the loaded model or context allows.
    #[error("{0}")]
    InvalidArgument(String),
    /// Tokenizer calls that failed.
    #[error("{0}")]
    Tokenizer(String),
    /// `llama_model_quantize` failed.
    #[error("the reference could not quantize {input} to {output}: {reason}")]
    Quantize { input: PathBuf, output: PathBuf, reason: String },
    /// Reading a GGUF file's tensors through ggml failed.
    #[error("tensor access in {path}: {reason}")]
    Tensor { path: PathBuf, reason: String },
    /// A ggml call of a hand-built graph (see [`crate::I2sMatmul`]) failed.
    #[error("ggml failed in {what}: {reason}")]
    Compute { what: String, reason: String },
    /// No library was built for this `-march` (see `BITNET_CPP_MARCH`).
    #[error(
        "no reference build for -march={march} in this binary (built: {available}); add it to BITNET_CPP_MARCH at build time"
    )]
    UnknownBuild { march: String, available: String },
    /// The embedded build-info.json could not be parsed (should never happen).
    #[error("build-info.json: {0}")]
    BuildInfo(String),
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
