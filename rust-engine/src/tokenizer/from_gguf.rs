//! Reading a tokenizer from GGUF metadata, with the value types the reference insists on.

use crate::gguf::{GgufFile, Value};

use super::{SpecialIds, Tokenizer, TokenizerError, TokenizerSpec};

impl Tokenizer {
    /// Reads the vocabulary from `tokenizer.ggml.*` and builds the tokenizer.
    ///
    /// Keys (types as the reference checks them; a present key of another type is an error):
    /// `model` STRING (required), `pre` STRING, `tokens` ARRAY of STRING (required),
    /// `token_type` ARRAY of INT32, `scores` ARRAY of FLOAT32, `merges` ARRAY of STRING
    /// (required for `gpt2`), `{bos,eos,eot,eom,unknown,seperator,padding,cls,mask,fim_pre,
    /// fim_suf,fim_mid,fim_pad,fim_rep,fim_sep,prefix,suffix,middle}_token_id` UINT32,
    /// `add_bos_token`, `add_eos_token`, `add_space_prefix` BOOL; and `general.name` STRING.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, TokenizerError> {
        Self::from_spec(spec_from_gguf(file)?)
    }
}

/// The tokenizer data of `file`, without building the tokenizer.
pub fn spec_from_gguf(file: &GgufFile) -> Result<TokenizerSpec, TokenizerError> {
    let model = file.get_str("tokenizer.ggml.model")?.to_string();
    let pre = opt_str(file, "tokenizer.ggml.pre")?;
    let tokens = file.get_str_array("tokenizer.ggml.tokens")?.to_vec();
    let token_types = match file.get("tokenizer.ggml.token_type") {
        Some(_) => file.get_i32_array("tokenizer.ggml.token_type")?.to_vec(),
        None => Vec::new(),
    };
    let scores = match file.get("tokenizer.ggml.scores") {
        Some(_) => Some(file.get_f32_array("tokenizer.ggml.scores")?.to_vec()),
        None => None,
    };
    let merges = match file.get("tokenizer.ggml.merges") {
        Some(_) => file.get_str_array("tokenizer.ggml.merges")?.to_vec(),
        None if model == "gpt2" => return Err(TokenizerError::MissingMerges),
        None => Vec::new(),
    };
    let id = |name: &str| opt_u32(file, &format!("tokenizer.ggml.{name}_token_id"));
    let mut other_ids = SpecialIds {
        eot: id("eot")?,
        eom: id("eom")?,
        unk: id("unknown")?,
        sep: id("seperator")?,
        pad: id("padding")?,
        cls: id("cls")?,
        mask: id("mask")?,
        fim_pre: id("fim_pre")?,
        fim_suf: id("fim_suf")?,
        fim_mid: id("fim_mid")?,
        fim_pad: id("fim_pad")?,
        fim_rep: id("fim_rep")?,
        fim_sep: id("fim_sep")?,
    };
    // Deprecated names, read after the new ones as in the reference.
    for (slot, name) in [
        (&mut other_ids.fim_pre, "prefix"),
        (&mut other_ids.fim_suf, "suffix"),
        (&mut other_ids.fim_mid, "middle"),
    ] {
        if let Some(v) = id(name)? {
            *slot = Some(v);
        }
    }
    Ok(TokenizerSpec {
        model,
        pre,
        tokens,
        token_types,
        merges,
        scores,
        bos_id: id("bos")?,
        eos_id: id("eos")?,
        add_bos: opt_bool(file, "tokenizer.ggml.add_bos_token")?,
        add_eos: opt_bool(file, "tokenizer.ggml.add_eos_token")?,
        add_space_prefix: opt_bool(file, "tokenizer.ggml.add_space_prefix")?,
        other_ids,
        model_name: opt_str(file, "general.name")?,
    })
}

fn wrong(key: &str, expected: &'static str, v: &Value) -> TokenizerError {
    TokenizerError::WrongType { key: key.to_string(), expected, found: v.value_type().name().to_string() }
}

fn opt_str(file: &GgufFile, key: &str) -> Result<Option<String>, TokenizerError> {
    match file.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(wrong(key, "a STRING", v)),
    }
}

fn opt_u32(file: &GgufFile, key: &str) -> Result<Option<u32>, TokenizerError> {
    match file.get(key) {
        None => Ok(None),
        Some(Value::U32(x)) => Ok(Some(*x)),
        Some(v) => Err(wrong(key, "a UINT32", v)),
    }
}

fn opt_bool(file: &GgufFile, key: &str) -> Result<Option<bool>, TokenizerError> {
    match file.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(wrong(key, "a BOOL", v)),
    }
}
