//! Parity checks from another project's own tests: hand over an [`Engine`], get a receipt.
//!
//! An engine author implements [`Engine`] for their engine and calls [`check`] from a
//! `#[test]`; the harness runs bitnet.cpp (built from source by this crate's build, in a worker
//! process) on the same tokens, compares every position, and returns the receipt, which
//! [`gate`] turns into a pass or a list of failed checks:
//!
//! ```no_run
//! use harness::check::{check, gate, CheckOptions};
//! use harness::engine::rust::RustSide;
//! use bitnet_engine::gguf::GgufFile;
//! use bitnet_engine::model::ModelOptions;
//!
//! // Your engine here; this crate's own Rust engine stands in for it.
//! let file = GgufFile::open(std::path::Path::new("model.gguf")).unwrap();
//! let engine = RustSide::load(&file, ModelOptions { n_ctx: 128, ..ModelOptions::default() }).unwrap();
//! let options = CheckOptions { prompts: vec!["Hello".into()], ..CheckOptions::new("model.gguf") };
//! let receipt = check(Box::new(engine), &options).unwrap();
//! gate(&receipt, None).unwrap(); // Err lists each failed check in one line
//! ```
//!
//! The reference worker is a program: `BITNET_PARITY_WORKER`, or a `harness` (or
//! `bitnet-cpp-worker`) binary next to the test binary or one folder up
//! ([`crate::engine::cpp::worker_program`]). `examples/check_my_engine.rs` is a complete example.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::engine::{Engine, EngineSpec};
use crate::exit::Failure;
use crate::gate::{self, Outcome};
use crate::receipt::Receipt;
use crate::run::RunArgs;
use crate::thresholds::{self, Overrides};

/// What to check, and against what.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// The GGUF both engines load (your engine loads it itself, before [`check`]).
    pub model: PathBuf,
    /// The prompts; empty: the fixture prompts.
    pub prompts: Vec<String>,
    /// What your engine is held against: `cpp` (the default bitnet.cpp build), `cpp:MARCH`,
    /// `cpp-dir:PATH`, `saved:FILE`, `rust`, `cmd:COMMAND`.
    pub against: EngineSpec,
    /// Threads for the engines the harness starts.
    pub threads: u32,
    /// Tokens to generate greedily after each prompt (by the other side) and compare too.
    pub continue_tokens: usize,
    /// Cosine under which a position counts as a divergence.
    pub min_cosine: Option<f64>,
    /// Trace every tensor at the first divergence (needs [`Engine::trace_names`]).
    pub trace: bool,
    /// Where to write the receipt as well; `None`: nowhere (only returned).
    pub out: Option<PathBuf>,
    /// Print progress on stderr.
    pub verbose: bool,
}

impl CheckOptions {
    /// Defaults for `model`: the fixture prompts, against the default bitnet.cpp build, one thread.
    pub fn new(model: impl Into<PathBuf>) -> CheckOptions {
        CheckOptions {
            model: model.into(),
            prompts: Vec::new(),
            against: EngineSpec::Cpp(None),
            threads: 1,
            continue_tokens: 0,
            min_cosine: None,
            trace: false,
            out: None,
            verbose: false,
        }
    }
}

/// Runs `engine` (side A) against `options.against` on the options' prompts and returns the
/// receipt (also written to `options.out` when set). Errors are the CLI's: a model that does not
/// load, a reference that cannot start, prompts outside the context.
pub fn check<'e>(engine: Box<dyn Engine + 'e>, options: &CheckOptions) -> Result<Receipt, Failure> {
    let args = RunArgs {
        model: Some(options.model.clone()),
        prompt: options.prompts.clone(),
        threads: options.threads,
        continue_tokens: Some(options.continue_tokens),
        // None: the receipt is only returned (a run with a given engine writes no default file).
        out: options.out.clone(),
        against: Some(options.against.clone()),
        min_cosine: options.min_cosine,
        trace: options.trace.then(|| "auto".to_string()),
        trace_min_cosine: 0.99999,
        quiet: !options.verbose,
        ..RunArgs::default()
    };
    crate::run::run_receipt(&args, Some(engine), Arc::new(AtomicBool::new(false)))
}

/// The gate's checks on `receipt`, against its own thresholds or those of a thresholds file
/// (`receipts/thresholds.toml` format): `Ok` when every check passes, else one line per failed
/// check, as `harness gate` prints them.
pub fn gate(receipt: &Receipt, thresholds_file: Option<&Path>) -> Result<(), Vec<String>> {
    let file = match thresholds_file {
        Some(p) => Some((p, thresholds::read_file(p).map_err(|f| vec![f.to_string()])?)),
        None => None,
    };
    let resolved = thresholds::resolve(
        &receipt.settings.thresholds,
        file.as_ref().map(|(p, t)| (*p, t)),
        &Overrides::default(),
    );
    let failed: Vec<String> = gate::evaluate(receipt, &resolved)
        .into_iter()
        .filter(|c| c.outcome == Outcome::Fail)
        .map(|c| c.line())
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed)
    }
}
