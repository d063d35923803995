//! The library entry point, used as another project's test would use it: an engine of its own
//! (here: this workspace's Rust engine wrapped by hand, and the same engine with a deliberate
//! error in its output layer), handed to `harness::check::check` against the real bitnet.cpp,
//! and the receipt gated with `harness::check::gate`. Only the crate's public API is used.

use std::path::PathBuf;

use bitnet_engine::gguf::GgufFile;
use bitnet_engine::model::{Model, ModelOptions};
use bitnet_engine::tokenizer::Tokenizer;
use harness::check::{check, gate, CheckOptions};
use harness::engine::{Engine, EngineError, EngineResult, ExternalIdentity, Identity};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tiny-256-gqa-i2_s.gguf")
}

/// An outside engine: a model, a tokenizer, the last logits; `skew` scales every other logit
/// (a deliberate bug, the kind a parity check exists for).
struct Outside<'a> {
    model: Model<'a>,
    tokenizer: Tokenizer,
    logits: Vec<f32>,
    skew: Option<f32>,
}

impl<'a> Outside<'a> {
    fn new(file: &'a GgufFile, skew: Option<f32>) -> Outside<'a> {
        let model = Model::load(file, ModelOptions { n_ctx: 256, ..ModelOptions::default() }).unwrap();
        Outside { model, tokenizer: Tokenizer::from_gguf(file).unwrap(), logits: Vec::new(), skew }
    }
}

impl Engine for Outside<'_> {
    fn identity(&self) -> Identity {
        Identity::External(ExternalIdentity {
            name: "outside-engine".into(),
            version: "9.9.9".into(),
            build: None,
            profile: None,
            command: "in-process".into(),
        })
    }

    fn n_vocab(&self) -> usize {
        self.model.config().n_vocab
    }

    fn tokenize(&mut self, text: &str, add_bos: bool, parse_special: bool) -> EngineResult<Option<Vec<u32>>> {
        Ok(Some(self.tokenizer.encode(text, add_bos, parse_special)))
    }

    fn reset(&mut self, _case: usize) -> EngineResult<()> {
        self.model.reset();
        Ok(())
    }

    fn start_eval(&mut self, tokens: &[u32], pos: usize) -> EngineResult<()> {
        let logits = self.model.eval_batch(tokens, pos).map_err(|e| EngineError::Failed(e.to_string()))?;
        self.logits = logits.to_vec();
        if let Some(s) = self.skew {
            self.logits.iter_mut().step_by(2).for_each(|v| *v *= s);
        }
        Ok(())
    }

    fn finish_eval(&mut self) -> EngineResult<Vec<f32>> {
        Ok(std::mem::take(&mut self.logits))
    }
}

#[test]
fn a_correct_engine_passes_against_the_reference() {
    let file = GgufFile::open(fixture()).unwrap();
    let options = CheckOptions {
        prompts: vec!["The quick brown fox".into(), "def f(x):\n    return x".into()],
        continue_tokens: 8,
        ..CheckOptions::new(fixture())
    };
    let receipt = check(Box::new(Outside::new(&file, None)), &options).unwrap();
    assert_eq!(receipt.engines.rust.kind, "external");
    assert_eq!(receipt.engines.rust.name, "outside-engine");
    assert!(
        receipt.engines.reference.source.starts_with("registry:"),
        "{}",
        receipt.engines.reference.source
    );
    assert!(receipt.run_state.completed);
    // The default build is -march=native and ModelOptions::default() mirrors the host: the same.
    assert_eq!(receipt.summary.bit_exact_positions, receipt.summary.positions);
    assert!(receipt.summary.positions > 16);
    assert_eq!(gate(&receipt, None), Ok(()));
}

#[test]
fn a_wrong_engine_fails_the_gate_and_the_receipt_is_written() {
    let file = GgufFile::open(fixture()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("outside.json");
    let options = CheckOptions {
        prompts: vec!["Naïve café owners".into()],
        out: Some(out.clone()),
        ..CheckOptions::new(fixture())
    };
    let receipt = check(Box::new(Outside::new(&file, Some(1.5))), &options).unwrap();
    assert!(out.is_file());
    assert_eq!(receipt.summary.bit_exact_positions, 0);
    let failed = gate(&receipt, None).unwrap_err();
    assert!(
        failed.iter().any(|l| l.contains("bit_exact") || l.contains("max_abs") || l.contains("cosine")),
        "{failed:?}"
    );
}
