//! What every fuzz target does with a candidate file: load it the way `harness inspect` and
//! `harness run` do, through the engine's public API only.
//!
//! Any panic, abort, out-of-memory or timeout is a finding; a typed error is not.

use bitnet_engine::gguf::{GgmlType, GgufFile};
use bitnet_engine::model::{Model, ModelOptions};
use bitnet_engine::quant::{check_i2s_integrity, detect_flavor};
use bitnet_engine::tokenizer::Tokenizer;

/// Parses `bytes` as GGUF, inspects every I2_S tensor (flavour and integrity), builds the
/// tokenizer, loads the model with a small context and evaluates up to two tokens.
pub fn load_everything(bytes: Vec<u8>) {
    let Ok(file) = GgufFile::from_bytes(bytes, "fuzz.gguf") else { return };
    for t in file.tensors() {
        if t.ggml_type == GgmlType::I2_S {
            let data = file.tensor_data(t);
            let has_sibling = file.tensor(&format!("{}.scale", t.name)).is_some();
            let _ = detect_flavor(&t.name, &t.dims, data, has_sibling);
            let _ = check_i2s_integrity(data, t.n_elements() as usize).problems();
        }
    }
    let ids = match Tokenizer::from_gguf(&file) {
        Ok(tok) => {
            let ids = tok.encode("Hello, world! 12 \u{20ac}", true, false);
            let _ = tok.decode(&ids);
            ids
        }
        Err(_) => vec![1, 2],
    };
    let Ok(mut model) = Model::load(&file, ModelOptions { n_ctx: 32, ..ModelOptions::default() }) else {
        return;
    };
    let n_vocab = model.config().n_vocab as u32;
    for (pos, &id) in ids.iter().take(2).enumerate() {
        let _ = model.eval(id % n_vocab, pos);
    }
}
