//! This workspace's Rust engine as an [`Engine`]: it computes in this process.

use std::time::Instant;

use bitnet_engine::gguf::GgufFile;
use bitnet_engine::model::{Fault, Model, ModelOptions};

use bitnet_engine::tokenizer::Tokenizer;

use super::{Engine, EngineError, EngineResult, Identity, NamedTensors};
use crate::receipt::{ReferenceProfile, RustEngine};

/// The Rust engine on a model borrowed from an open GGUF file.
pub struct RustSide<'a> {
    model: Model<'a>,
    tokenizer: Tokenizer,
    fault: Option<Fault>,
    /// Where the reference-build profile it mirrors came from (for the receipt).
    profile_record: Option<ReferenceProfile>,
    /// The logits of the evaluation started last (computed at once: this engine is in-process).
    pending: Option<EngineResult<Vec<f32>>>,
    last_eval_s: f64,
    /// The ubatch size of [`Engine::eval_batch`] (llama.cpp's `n_ubatch`, default 512).
    n_ubatch: usize,
}

/// The ubatch size of the Rust engine's batched path unless set ([`RustSide::with_ubatch`]):
/// llama.cpp's default.
pub const DEFAULT_UBATCH: usize = 512;

impl<'a> RustSide<'a> {
    /// The engine around a loaded model and the tokenizer its file embeds.
    pub fn new(model: Model<'a>, tokenizer: Tokenizer) -> RustSide<'a> {
        RustSide {
            model,
            tokenizer,
            fault: None,
            profile_record: None,
            pending: None,
            last_eval_s: 0.0,
            n_ubatch: DEFAULT_UBATCH,
        }
    }

    /// Loads the model of `file` with `options` and the tokenizer the file embeds.
    pub fn load(file: &'a GgufFile, options: ModelOptions) -> Result<RustSide<'a>, String> {
        let model = Model::load(file, options).map_err(|e| e.to_string())?;
        let tokenizer = Tokenizer::from_gguf(file).map_err(|e| e.to_string())?;
        Ok(RustSide::new(model, tokenizer))
    }

    /// Records where the mirrored profile came from (`build-info`, `override`, ...).
    pub fn with_profile_record(mut self, record: ReferenceProfile) -> Self {
        self.profile_record = Some(record);
        self
    }

    /// Splits batches into ubatches of `n_ubatch` tokens (at least 1), as the reference's
    /// context created with that `n_ubatch` does.
    pub fn with_ubatch(mut self, n_ubatch: usize) -> Self {
        self.n_ubatch = n_ubatch.max(1);
        self
    }

    /// Injects a deliberate fault (for checking that tracing finds it).
    pub fn with_fault(mut self, fault: Option<Fault>) -> Self {
        self.model.set_fault(fault);
        self.fault = fault;
        self
    }

    pub fn model(&self) -> &Model<'a> {
        &self.model
    }
}

/// The engine's trace hook keeping the tensors of `names` (in the order reported) in `kept`.
fn keep_named<'k>(names: &'k [String], kept: &'k mut NamedTensors) -> impl FnMut(&str, &[f32]) + 'k {
    move |name, data| {
        if names.iter().any(|n| n == name) {
            kept.push((name.to_string(), data.to_vec()));
        }
    }
}

impl Engine for RustSide<'_> {
    fn identity(&self) -> Identity {
        let options = self.model.options();
        Identity::Rust(Box::new(RustEngine {
            kind: "rust-engine".into(),
            name: "bitnet-engine".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kernel: self.model.kernel_name().into(),
            exact_reference_rounding: options.exact_reference_rounding,
            threads: self.model.threads(),
            injected_fault: self.fault.map(|f| f.to_string()),
            reference_profile: self.profile_record.clone(),
            build: None,
            external: None,
        }))
    }

    fn n_vocab(&self) -> usize {
        self.model.config().n_vocab
    }

    fn tokenize(&mut self, text: &str, add_bos: bool, parse_special: bool) -> EngineResult<Option<Vec<u32>>> {
        Ok(Some(self.tokenizer.encode(text, add_bos, parse_special)))
    }

    fn detokenize(&mut self, ids: &[u32]) -> EngineResult<Option<String>> {
        Ok(Some(String::from_utf8_lossy(&self.tokenizer.detokenize(ids, false, false)).into_owned()))
    }

    fn reset(&mut self, _case: usize) -> EngineResult<()> {
        self.model.reset();
        Ok(())
    }

    fn start_eval(&mut self, tokens: &[u32], pos: usize) -> EngineResult<()> {
        let t = Instant::now();
        let logits = match tokens {
            [token] => self.model.eval(*token, pos),
            _ => self.model.eval_batch(tokens, pos),
        };
        self.pending = Some(logits.map(<[f32]>::to_vec).map_err(|e| EngineError::Failed(e.to_string())));
        self.last_eval_s = t.elapsed().as_secs_f64();
        Ok(())
    }

    fn finish_eval(&mut self) -> EngineResult<Vec<f32>> {
        self.pending.take().unwrap_or_else(|| Err(EngineError::Protocol("no evaluation was started".into())))
    }

    fn last_eval_seconds(&self) -> Option<f64> {
        Some(self.last_eval_s)
    }

    fn eval_batch(&mut self, tokens: &[u32], pos: usize) -> EngineResult<Option<Vec<f32>>> {
        let t = Instant::now();
        let logits = self.model.decode_batch(tokens, pos, self.n_ubatch);
        let logits = logits.map(<[f32]>::to_vec).map_err(|e| EngineError::Failed(e.to_string()))?;
        self.last_eval_s = t.elapsed().as_secs_f64();
        Ok(Some(logits))
    }

    fn eval_batch_traced(
        &mut self,
        tokens: &[u32],
        pos: usize,
        row: usize,
        names: &[String],
    ) -> EngineResult<Option<NamedTensors>> {
        let mut kept: NamedTensors = Vec::new();
        self.model
            .decode_batch_traced(tokens, pos, self.n_ubatch, row, &mut keep_named(names, &mut kept))
            .map_err(|e| EngineError::Failed(e.to_string()))?;
        Ok(Some(kept))
    }

    fn trace_names(&mut self) -> EngineResult<Option<Vec<String>>> {
        Ok(Some(self.model.traced_names()))
    }

    fn eval_traced(
        &mut self,
        token: u32,
        pos: usize,
        names: &[String],
    ) -> EngineResult<Vec<(String, Vec<f32>)>> {
        let mut kept: NamedTensors = Vec::new();
        self.model
            .eval_traced(token, pos, &mut keep_named(names, &mut kept))
            .map_err(|e| EngineError::Failed(e.to_string()))?;
        Ok(kept)
    }
}
