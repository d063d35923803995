//! Why a vocabulary could not be turned into a tokenizer.

use crate::gguf::GgufError;

/// An error building a [`super::Tokenizer`]: every variant names the field concerned.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// `tokenizer.ggml.model` names a vocabulary type we do not implement.
    #[error("tokenizer.ggml.model = {0:?} is not supported (only \"gpt2\" byte-level BPE and \"llama\" SentencePiece)")]
    UnsupportedModel(String),
    /// `tokenizer.ggml.pre` names a pre-tokenizer we do not implement (or is missing for BPE,
    /// which makes the reference fall back to its regex-based "default" split).
    #[error("tokenizer.ggml.pre = {0:?} is not supported (supported: llama-bpe/llama3/llama-v3, dbrx, smaug-bpe, chatglm-bpe, and the GPT-2 family gpt-2, phi-2, jina-*, mpt, olmo, jais)")]
    UnsupportedPre(String),
    /// The vocabulary has no tokens.
    #[error("tokenizer.ggml.tokens is empty")]
    EmptyVocab,
    /// More tokens than token ids can address.
    #[error("tokenizer.ggml.tokens has {0} entries, more than a 32-bit token id can address")]
    TooManyTokens(usize),
    /// A per-token array does not have one entry per token.
    #[error("{field} has {found} entries but tokenizer.ggml.tokens has {expected}")]
    LengthMismatch { field: &'static str, expected: usize, found: usize },
    /// Two tokens have the same text (the reference aborts on this).
    #[error("tokenizer.ggml.tokens: ids {first} and {second} have the same text {text:?}")]
    DuplicateToken { text: String, first: u32, second: u32 },
    /// A byte-level BPE vocabulary without merges.
    #[error("tokenizer.ggml.merges is missing: a gpt2 (BPE) vocabulary needs it")]
    MissingMerges,
    /// An empty merge rule (the reference aborts on this).
    #[error("tokenizer.ggml.merges[{0}] is empty")]
    EmptyMerge(usize),
    /// A token the reference looks up by text while loading this model is missing (it then
    /// fails to load the vocabulary).
    #[error("tokenizer.ggml.tokens has no {text:?}, which the reference requires for {reason}")]
    MissingToken { text: &'static str, reason: &'static str },
    /// A metadata key holds a value of a type the reference refuses.
    #[error("{key} must be {expected}, found {found}")]
    WrongType { key: String, expected: &'static str, found: String },
    /// The GGUF metadata could not be read (boxed: GGUF errors are large).
    #[error(transparent)]
    Gguf(Box<GgufError>),
}

impl From<GgufError> for TokenizerError {
    fn from(e: GgufError) -> Self {
        TokenizerError::Gguf(Box::new(e))
    }
}
