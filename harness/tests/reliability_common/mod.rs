//! Helpers shared by the reliability tests (`reliability_*.rs`).
#![allow(dead_code)]

pub mod gguf_map;
pub mod mutate;
pub mod procs;
pub mod rewrite;
