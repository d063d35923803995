//! `--mode decode|batch|both` with `--batch` and `--ubatch`: which path of the engines a run
//! compares, checked before any work.

use anyhow::anyhow;

use super::RunArgs;
use crate::exit::{Exit, Failure};

/// How the engines evaluate each case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RunMode {
    /// One token at a time, as in generation (the default).
    #[default]
    Decode,
    /// The batched path prompts take: batches of `--batch` tokens at increasing positions,
    /// split into ubatches of `--ubatch`, logits at every position.
    Batch,
    /// Both, and each engine's batch logits against its own decode logits.
    Both,
}

impl RunMode {
    /// The receipt's name of the mode (`settings.mode`).
    pub fn name(self) -> &'static str {
        match self {
            RunMode::Decode => "decode",
            RunMode::Batch => "batch",
            RunMode::Both => "both",
        }
    }

    /// Whether the run evaluates batches.
    pub fn batches(self) -> bool {
        self != RunMode::Decode
    }
}

/// `--batch`'s default: llama.cpp's default `n_batch` for prompts.
pub const DEFAULT_BATCH: usize = 512;
/// The largest default `--ubatch` (llama.cpp's default `n_ubatch`).
pub const DEFAULT_UBATCH: usize = 512;

/// The mode of a run with its batch sizes, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ModeChoice {
    pub mode: RunMode,
    /// Tokens per batch (meaningful when `mode.batches()`).
    pub batch: usize,
    /// Tokens per ubatch, 1 ≤ ubatch ≤ batch.
    pub ubatch: usize,
}

impl ModeChoice {
    /// `--mode`, `--batch`, `--ubatch` and what they exclude, each refusal one line (exit 2).
    pub fn from_args(args: &RunArgs) -> Result<ModeChoice, Failure> {
        let bad = |msg: String| Err(Failure::new(Exit::BadInput, anyhow!(msg)));
        let mode = args.mode;
        if !mode.batches() && (args.batch.is_some() || args.ubatch.is_some()) {
            return bad("--batch and --ubatch apply to --mode batch or --mode both".into());
        }
        let batch = args.batch.unwrap_or(DEFAULT_BATCH);
        let ubatch = args.ubatch.unwrap_or(batch.min(DEFAULT_UBATCH));
        if batch == 0 {
            return bad("--batch 0: a batch holds at least one token".into());
        }
        if ubatch == 0 || ubatch > batch {
            return bad(format!("--ubatch {ubatch}: must be between 1 and --batch ({batch})"));
        }
        if mode == RunMode::Batch && args.continue_tokens.is_some_and(|n| n > 0) {
            return bad("--continue with --mode batch: continuation tokens are generated one at a time; \
                 use --mode both (decode generates them, batch compares them)"
                .into());
        }
        if mode == RunMode::Both && args.save_reference.is_some() {
            return bad("--save-reference with --mode both: a saved reference holds one path; save it with \
                 --mode decode or --mode batch"
                .into());
        }
        Ok(ModeChoice { mode, batch, ubatch })
    }

    /// `(batch, ubatch)` when the run evaluates batches.
    pub fn sizes(&self) -> Option<(usize, usize)> {
        self.mode.batches().then_some((self.batch, self.ubatch))
    }

    /// The ubatch size engines are created with: the run's when it batches, else the default
    /// (one-token evaluations do not depend on it).
    pub fn engine_ubatch(&self) -> usize {
        self.sizes().map_or(DEFAULT_UBATCH, |(_, u)| u)
    }
}
