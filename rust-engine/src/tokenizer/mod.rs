//! Tokenizer from GGUF metadata (being written).

pub mod pretokenize;
pub mod unicode;
mod unicode_tables;
