//! Hyper-parameters, read once from GGUF metadata and checked for consistency.

use crate::gguf::{GgufErrorKind, GgufFile};

use super::arch::Arch;
use super::error::ModelError;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The architecture, parsed from `general.architecture`: which graph the forward pass runs.
    pub arch: Arch,
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    /// Context length the model was trained with (`<arch>.context_length`).
    pub n_ctx_train: usize,
    pub rope_freq_base: f32,
    pub rms_eps: f32,
}

impl Config {
    pub fn from_gguf(file: &GgufFile) -> Result<Config, ModelError> {
        let name = file.get_str("general.architecture")?;
        let arch =
            Arch::from_name(name).ok_or_else(|| ModelError::UnsupportedArchitecture(name.to_string()))?;
        let key = |k: &str| format!("{arch}.{k}");
        let count = |k: &str| -> Result<usize, ModelError> {
            let v = file.get_u64(&key(k))?;
            usize::try_from(v)
                .ok()
                .filter(|&v| v > 0 && v <= 1 << 24)
                .ok_or_else(|| bad(&key(k), format!("{v} is not a plausible size")))
        };
        let optional = |k: &str| -> Result<Option<usize>, ModelError> {
            match file.get_u64(&key(k)) {
                Ok(_) => count(k).map(Some),
                Err(e) if matches!(*e.kind, GgufErrorKind::MissingKey { .. }) => Ok(None),
                Err(e) => Err(e.into()),
            }
        };
        let n_embd = count("embedding_length")?;
        let n_ff = count("feed_forward_length")?;
        let n_layer = count("block_count")?;
        let n_head = count("attention.head_count")?;
        let n_head_kv = optional("attention.head_count_kv")?.unwrap_or(n_head);
        let n_ctx_train = count("context_length")?;
        if n_embd % n_head != 0 {
            return Err(bad(
                &key("attention.head_count"),
                format!("{n_head} does not divide n_embd {n_embd}"),
            ));
        }
        let head_dim = n_embd / n_head;
        if n_head % n_head_kv != 0 {
            return Err(bad(
                &key("attention.head_count_kv"),
                format!("{n_head_kv} does not divide the head count {n_head}"),
            ));
        }
        if head_dim % 2 != 0 {
            return Err(bad(
                &key("attention.head_count"),
                format!("head size {head_dim} is odd; RoPE needs pairs"),
            ));
        }
        // The reference asserts n_rot == head size for bitnet-b1.58 and bitnet-25; for bitnet it
        // would rotate only the first n_rot values of each head, which the engine does not do.
        if let Some(n_rot) = optional("rope.dimension_count")? {
            if n_rot != head_dim {
                return Err(bad(
                    &key("rope.dimension_count"),
                    format!("{n_rot} differs from the head size {head_dim}"),
                ));
            }
        }
        let rope_freq_base = match file.get(&key("rope.freq_base")) {
            None => 10000.0,
            Some(_) => file.get_f32(&key("rope.freq_base"))?,
        };
        if !(rope_freq_base.is_finite() && rope_freq_base > 1.0) {
            return Err(bad(&key("rope.freq_base"), format!("{rope_freq_base} is not a usable base")));
        }
        let rms_eps = file.get_f32(&key("attention.layer_norm_rms_epsilon"))?;
        if !(rms_eps.is_finite() && rms_eps > 0.0) {
            return Err(bad(&key("attention.layer_norm_rms_epsilon"), format!("{rms_eps} must be positive")));
        }
        let n_vocab = match file.tensor("token_embd.weight") {
            Some(t) if t.dims.len() == 2 => t.dims[1] as usize,
            Some(t) => {
                return Err(ModelError::ShapeMismatch {
                    tensor: t.name.clone(),
                    expected: vec![n_embd as u64, 0],
                    found: t.dims.clone(),
                })
            }
            None => return Err(ModelError::MissingTensor("token_embd.weight".into())),
        };
        // The reference sizes token_embd from the vocabulary and refuses a file where the two
        // disagree; so do we, rather than index past the embedding with a valid token id.
        if let Some(tokens) = file.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()) {
            if tokens.len() != n_vocab {
                return Err(bad(
                    "tokenizer.ggml.tokens",
                    format!("{} tokens, but token_embd.weight has {n_vocab} rows", tokens.len()),
                ));
            }
        }
        // Layers beyond block_count would be silently ignored here but make the reference
        // refuse the file ("wrong number of tensors"): the count contradicts the tensors.
        if let Some(t) = file.tensors().iter().find(|t| layer_of(&t.name).is_some_and(|l| l >= n_layer)) {
            return Err(bad(
                &key("block_count"),
                format!("{n_layer} layers, but the file has tensor {:?}", t.name),
            ));
        }
        Ok(Config {
            arch,
            n_vocab,
            n_embd,
            n_ff,
            n_layer,
            n_head,
            n_head_kv,
            head_dim,
            n_ctx_train,
            rope_freq_base,
            rms_eps,
        })
    }

    /// Width of the key and value projections (`n_head_kv · head_dim`).
    pub fn n_embd_kv(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
}

/// The layer number of a `blk.N.*` tensor name.
fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

fn bad(key: &str, reason: String) -> ModelError {
    ModelError::BadHyperParameter { key: key.to_string(), reason }
}
