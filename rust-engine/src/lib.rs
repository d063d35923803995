//! A pure-Rust BitNet b1.58 inference engine.
//!
//! It reads the same GGUF files as bitnet.cpp (memory-mapped, zero-copy), decodes every
//! I2_S flavour and every embedding / lm_head type it mirrors (`ops/blocks.rs`, [`ops::BlockType`]), runs the
//! forward pass of each BitNet architecture the reference knows
//! (`bitnet-b1.58`, `bitnet-25`, `bitnet`: [`model::Arch`]) with the reference's int8
//! activation quantization, and tokenizes with the vocabulary embedded in the file.
//!
//! The public modules are the engine user's API. Kernels, buffers and helpers that only
//! benches and kernel tests reach are re-exported from [`internals`], which is not a stable
//! API.
#![deny(unsafe_code)]
#![warn(unreachable_pub)]

pub mod gguf;
pub mod internals;
mod mmap;
pub mod model;
pub mod ops;
mod parallel;
pub mod profile;
pub mod quant;
pub mod tokenizer;
