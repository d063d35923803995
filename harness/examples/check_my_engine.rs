//! How an engine author checks their engine against bitnet.cpp from their own code (the same
//! calls work inside a `#[test]`): implement `harness::engine::Engine` for the engine, hand it
//! to `harness::check::check`, gate the receipt.
//!
//! ```sh
//! cargo run -p harness --example check_my_engine -- fixtures/tiny-256-gqa-i2_s.gguf
//! ```
//!
//! "My engine" here is this workspace's Rust engine wrapped by hand, the way any engine would
//! be: a model, a tokenizer, and the logits of the last evaluated token.

use std::process::ExitCode;

use bitnet_engine::gguf::GgufFile;
use bitnet_engine::model::{Model, ModelOptions};
use bitnet_engine::tokenizer::Tokenizer;
use harness::check::{check, gate, CheckOptions};
use harness::engine::{Engine, EngineError, EngineResult, ExternalIdentity, Identity};

/// The engine under test.
struct MyEngine<'a> {
    model: Model<'a>,
    tokenizer: Tokenizer,
    logits: Vec<f32>,
}

impl Engine for MyEngine<'_> {
    fn identity(&self) -> Identity {
        // An engine outside this workspace describes itself like an external one.
        Identity::External(ExternalIdentity {
            name: "my-engine".into(),
            version: "0.1.0".into(),
            build: None,
            profile: Some(self.model.profile().name().into()),
            command: "in-process (harness::check)".into(),
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
        Ok(())
    }

    fn finish_eval(&mut self) -> EngineResult<Vec<f32>> {
        Ok(std::mem::take(&mut self.logits))
    }
}

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: check_my_engine MODEL.gguf");
        return ExitCode::from(2);
    };
    let file = match GgufFile::open(std::path::Path::new(&path)) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {path}: {e}");
            return ExitCode::from(2);
        }
    };
    // The reference build the engine must mirror is decided by the build it faces; the
    // host's profile is what the default build (-march=native) has.
    let options = ModelOptions { n_ctx: 256, ..ModelOptions::default() };
    let (model, tokenizer) = match (Model::load(&file, options), Tokenizer::from_gguf(&file)) {
        (Ok(m), Ok(t)) => (m, t),
        (Err(e), _) => {
            eprintln!("error: {path}: {e}");
            return ExitCode::from(5);
        }
        (_, Err(e)) => {
            eprintln!("error: {path}: {e}");
            return ExitCode::from(5);
        }
    };
    let engine = MyEngine { model, tokenizer, logits: Vec::new() };
    let options = CheckOptions { verbose: true, ..CheckOptions::new(&path) };
    let receipt = match check(Box::new(engine), &options) {
        Ok(r) => r,
        Err(f) => {
            eprintln!("error: {f}");
            return f.exit.into();
        }
    };
    let s = &receipt.summary;
    println!(
        "bit-exact {}/{} positions, cosine min {:.9}",
        s.bit_exact_positions,
        s.positions,
        s.cosine_min.unwrap_or(f64::NAN)
    );
    match gate(&receipt, None) {
        Ok(()) => {
            println!("parity: PASS");
            ExitCode::SUCCESS
        }
        Err(failed) => {
            for line in failed {
                println!("  {line}");
            }
            println!("parity: FAIL");
            ExitCode::from(1)
        }
    }
}
