//! The tokenizer embedded in a GGUF file (`tokenizer.ggml.*`), reproducing the reference's
//! `llama_tokenize` id for id.
//!
//! # What it implements
//!
//! - **Byte-level BPE** (`tokenizer.ggml.model = "gpt2"`), with the Llama-3 pre-tokenizer
//!   (`pre = "llama-bpe"`, also `llama3`, `llama-v3`, `dbrx`, `smaug-bpe`, `chatglm-bpe`) or
//!   the GPT-2 one (`gpt-2`, `phi-2`, `jina-*`, `mpt`, `olmo`, `jais`): the text is split into
//!   words (`pretokenize.rs`), each word is written in the byte-level alphabet
//!   ([`unicode::BYTE_TO_CHAR`]), looked up whole when the pre-tokenizer says so (Llama-3), or
//!   merged pair by pair by rank (`bpe.rs`).
//! - **SentencePiece** (`"llama"`): `▁` for spaces, a space prefix, merges by token score, byte
//!   fallback through `<0xXX>` tokens (`spm.rs`).
//! - **Special tokens**: CONTROL/USER_DEFINED/UNKNOWN texts cut out of the input longest first
//!   when `parse_special` is set (USER_DEFINED always), with the LSTRIP/RSTRIP attributes the
//!   reference sets for some models; BOS/EOS added per `tokenizer.ggml.add_{bos,eos}_token` and
//!   the pre-tokenizer's default; the reference's rules that turn well-known texts such as
//!   `<|eot_id|>` into CONTROL tokens.
//! - **Decoding**: [`Tokenizer::token_to_piece`], [`Tokenizer::detokenize`] (the reference's
//!   `llama_detokenize`, including its space clean-up for BPE vocabularies) and
//!   [`Tokenizer::decode`] (the plain concatenation of the pieces).
//!
//! # Why hand-written rather than the `tokenizers` crate
//!
//! The goal is the reference's ids, not Hugging Face's. The reference does not run the
//! Llama-3 regex: it runs a hand-written matcher that approximates it, over its own Unicode
//! 15.1 category tables, and its BPE loop has its own rules (whole-word lookup first, merged
//! symbols that are not tokens fall back to ASCII bytes only, specials matched by plain
//! substring search longest first). `tokenizers` would reproduce Hugging Face's behaviour (its
//! regex engine, Unicode 16 tables from `onig`/`regex`), need a `tokenizer.json` rebuilt from
//! GGUF data, and pull C/C++ builds (onig, esaxx) into the engine. What we need from outside
//! is data, not code: the letter/number classes, generated from Unicode 15.1 by
//! `scripts/gen_unicode_tables.py` and checked against the reference's own table by the
//! harness. The rest is small (a few hundred lines) and mirrors the reference branch by branch,
//! so every rule can be read side by side with `llama-vocab.cpp` and `unicode.cpp`.
//!
//! # Known differences from the reference
//!
//! Only on inputs where the reference aborts or behaves unspecifiedly: duplicate token texts
//! and empty merges are errors here (the reference asserts); special tokens of equal length
//! are tried in id order (the reference's sort is unstable); an SPM byte with no byte token
//! becomes the unknown token (the reference throws); ids outside the vocabulary decode to
//! nothing; with several tokens matching a well-known end-of-turn or fill-in-the-middle
//! text and no id key, the lowest id is taken (the reference walks a hash map). GGUF strings
//! must be valid UTF-8 (our reader checks; the reference does not).
//!
//! # Parity evidence
//!
//! `harness/tests/tokenizer_parity.rs` compares ids, pieces and detokenized bytes with the
//! reference's `llama_tokenize`, `llama_token_to_piece` and `llama_detokenize` on ten
//! vocabularies (Llama-3 BPE fixtures, GPT-2 and dbrx splits, EOS-only, Phi-3 stripping,
//! SentencePiece) and the 403-string built-in corpus, and checks the Unicode classes against
//! the reference's own tables for every code point.

mod attr;
mod bpe;
mod decode;
mod error;
mod from_gguf;
mod load;
pub(crate) mod pretokenize;
mod special;
mod spm;
pub(crate) mod unicode;
mod unicode_tables;

use std::collections::HashMap;

pub use attr::{token_type, TokenAttr};
pub use error::TokenizerError;
pub use from_gguf::spec_from_gguf;
use pretokenize::PreSplit;
use special::Fragment;

/// Vocabulary data, as stored under `tokenizer.ggml.*` (see [`Tokenizer::from_gguf`] for the
/// keys). Optional fields are `None` when the key is absent: the reference then applies the
/// defaults of the vocabulary type and pre-tokenizer.
#[derive(Debug, Clone, Default)]
pub struct TokenizerSpec {
    /// `tokenizer.ggml.model`: `"gpt2"` (byte-level BPE) or `"llama"` (SentencePiece).
    pub model: String,
    /// `tokenizer.ggml.pre`: the BPE pre-tokenizer (required for `"gpt2"`).
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`, index = id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type` (see [`token_type`]); empty when absent (all NORMAL).
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.merges`, `"left right"` in rank order (BPE only).
    pub merges: Vec<String>,
    /// `tokenizer.ggml.scores` (SentencePiece merge priorities).
    pub scores: Option<Vec<f32>>,
    /// `tokenizer.ggml.bos_token_id`; default 11 for BPE, 1 for SPM.
    pub bos_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`; default 11 for BPE, 2 for SPM.
    pub eos_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`; default true for Llama-3 and SPM, false otherwise.
    pub add_bos: Option<bool>,
    /// `tokenizer.ggml.add_eos_token`; default false.
    pub add_eos: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix`; default true for SPM, false for BPE.
    pub add_space_prefix: Option<bool>,
    /// The other `tokenizer.ggml.*_token_id` keys.
    pub other_ids: SpecialIds,
    /// `general.name`: the reference gives Phi-3 models' special tokens RSTRIP.
    pub model_name: Option<String>,
}

/// Special token ids other than BOS and EOS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpecialIds {
    pub eot: Option<u32>,
    pub eom: Option<u32>,
    pub unk: Option<u32>,
    pub sep: Option<u32>,
    pub pad: Option<u32>,
    pub cls: Option<u32>,
    pub mask: Option<u32>,
    pub fim_pre: Option<u32>,
    pub fim_suf: Option<u32>,
    pub fim_mid: Option<u32>,
    pub fim_pad: Option<u32>,
    pub fim_rep: Option<u32>,
    pub fim_sep: Option<u32>,
}

/// What `inspect` shows about a tokenizer.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizerSummary {
    pub model: String,
    pub pre: Option<String>,
    pub vocab_size: usize,
    /// Entries of `tokenizer.ggml.merges` (0 for SPM).
    pub n_merges: usize,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    /// End-of-generation tokens, ascending.
    pub eog_ids: Vec<u32>,
    /// CONTROL, USER_DEFINED and UNKNOWN tokens, ascending id.
    pub specials: Vec<(u32, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bpe(PreSplit),
    Spm,
}

#[derive(Debug, Clone)]
struct TokenData {
    text: String,
    score: f32,
    attr: TokenAttr,
}

/// A tokenizer built from a GGUF vocabulary. Cheap to share: all methods take `&self`.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    kind: Kind,
    model: String,
    pre: Option<String>,
    tokens: Vec<TokenData>,
    token_to_id: HashMap<String, u32>,
    /// `"left right"` → rank.
    merges: HashMap<String, u32>,
    n_merges: usize,
    /// Special tokens in matching order: longest text first.
    specials: Vec<u32>,
    /// Each token's bytes (special tokens verbatim).
    pieces: Vec<Vec<u8>>,
    bos: Option<u32>,
    eos: Option<u32>,
    ids: SpecialIds,
    eog: Vec<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
    ignore_merges: bool,
    clean_spaces: bool,
}

impl Tokenizer {
    /// `llama_tokenize(text, add_special, parse_special)`: the token ids of `text`.
    ///
    /// `add_special` adds BOS (and EOS) when the vocabulary asks for them; `parse_special`
    /// turns the texts of CONTROL tokens (such as `<|begin_of_text|>`) into those tokens
    /// instead of tokenizing them as text.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let fragments = self.partition(text, parse_special);
        let mut out = Vec::new();
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        match self.kind {
            Kind::Bpe(split) => {
                for frag in fragments {
                    match frag {
                        Fragment::Token(id) => out.push(id),
                        Fragment::Text { start, end } => {
                            for word in split.split(&text[start..end]) {
                                self.bpe_word(&unicode::bytes_to_byte_level(word.as_bytes()), &mut out);
                            }
                        }
                    }
                }
            }
            Kind::Spm => {
                // The reference prefixes a space to the first text and to every text that
                // follows a special token.
                let mut prev_special = true;
                for frag in fragments {
                    match frag {
                        Fragment::Token(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                        Fragment::Text { start, end } => {
                            let prefix = if self.add_space_prefix && prev_special { " " } else { "" };
                            let escaped = format!("{prefix}{}", &text[start..end]).replace(' ', "▁");
                            self.spm_text(&escaped, &mut out);
                            prev_special = false;
                        }
                    }
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.eos);
        }
        out
    }

    /// The bytes of token `id`, special tokens included (as the reference's piece cache).
    pub fn token_to_piece(&self, id: u32) -> Vec<u8> {
        self.token_to_piece_with(id, 0, true)
    }

    /// The pieces of `ids` concatenated, special tokens included, as UTF-8 (invalid sequences
    /// replaced). Unlike [`Tokenizer::detokenize`] nothing is cleaned up, so for BPE
    /// vocabularies `decode(encode(text, false, false)) == text`.
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids.iter().flat_map(|&id| self.token_to_piece(id)).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Number of tokens.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Whether `encode(.., add_special = true, ..)` adds BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos && self.bos.is_some()
    }

    /// The other special ids (end of turn, unknown, padding, fill-in-the-middle, …).
    pub fn special_ids(&self) -> SpecialIds {
        self.ids
    }

    /// Whether generation should stop at `id` (the reference's `llama_token_is_eog`).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    /// The stored text of token `id` (byte-level form for BPE).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(|t| t.text.as_str())
    }

    /// The id of the token with stored text `text`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }

    /// The attributes of token `id`.
    pub fn token_attr(&self, id: u32) -> Option<TokenAttr> {
        self.tokens.get(id as usize).map(|t| t.attr)
    }

    pub fn summary(&self) -> TokenizerSummary {
        let mut specials: Vec<(u32, String)> =
            self.specials.iter().map(|&id| (id, self.tokens[id as usize].text.clone())).collect();
        specials.sort();
        TokenizerSummary {
            model: self.model.clone(),
            pre: self.pre.clone(),
            vocab_size: self.tokens.len(),
            n_merges: self.n_merges,
            bos_id: self.bos,
            eos_id: self.eos,
            add_bos: self.add_bos,
            add_eos: self.add_eos,
            eog_ids: self.eog.clone(),
            specials,
        }
    }
}
