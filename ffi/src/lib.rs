//! bitnet.cpp, the C++ reference, as a Rust library.
//!
//! - `build.rs` compiles the pinned bitnet.cpp tree (registry package `bitnet-llm-sys`) into one
//!   shared library per `-march` value of `BITNET_CPP_MARCH` (default `native,x86-64-v3`; the
//!   first is the default reference), with the I2_S MAD kernels, cached across builds; see
//!   [`built_references`] for the list and [`BuildInfo`] for what was built and how.
//! - [`sys`](crate::sys) holds bindgen's dynamic-loading bindings (committed; regenerate with
//!   `scripts/gen-bindings.sh`); a user's library whose headers differ is refused.
//! - The safe wrapper ([`Reference`], [`Model`], [`Context`], [`GgufTensors`]) is the only place
//!   with `unsafe`.
//! - [`worker`] runs the reference in a child process so that an abort or a segfault in C++
//!   becomes an error value ("reference crashed (signal 6) during ...") in the caller.

mod build_info;
mod capture;
mod context;
mod error;
mod library;
mod locate;
mod matmul;
mod model;
mod quantize;
mod sys;
mod tensors;
mod type_traits;
pub mod worker;

pub use build_info::{
    built_reference, built_references, BuildInfo, BuiltReference, CompileGroup, CompilerInfo, HeaderPin,
    IsaInfo, SourceInfo, BAKED_LIBRARY,
};
pub use capture::{CaptureFilter, CapturedTensor};
pub use context::{Context, ContextParams, DEFAULT_N_UBATCH};
pub use error::{Error, Result};
pub use library::{set_log_level, LogLevel, Reference};
pub use locate::{PINNED_HEADERS, PINNED_SOURCE_VERSION};
pub use matmul::{I2sMatmul, Matmul, I2S_COL_MULTIPLE, I2S_ROW_MULTIPLE, MAX_REPEATS};
pub use model::{Model, ModelInfo};
pub use quantize::{QuantizeOptions, FTYPE_MOSTLY_I2_S};
pub use tensors::{GgufTensors, TensorEntry};
