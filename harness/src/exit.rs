//! Exit codes of the `harness` binary, and the error type that carries one.
//!
//! docs/exit-codes.md lists the same table; `tests/exit_codes.rs` keeps the two in step.

use std::fmt;
use std::process::ExitCode;

/// Why the harness stopped. Every code is distinct so CI scripts can tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The command did its job (for `run`: the receipt was written, whatever the verdict).
    Ok = 0,
    /// A check failed: `gate` thresholds not met, `diff --fail-on-regression` found a regression.
    CheckFailed = 1,
    /// Bad input file or arguments: unreadable/invalid GGUF, receipt or JSON; usage errors.
    BadInput = 2,
    /// The Rust and reference tokenizers disagree on a prompt (`run` without `--ids-from`).
    TokenizerMismatch = 3,
    /// The C++ reference could not be loaded: wrong `BITNET_CPP_DIR`, incompatible library.
    ReferenceUnavailable = 4,
    /// The model's hyper-parameters contradict its tensors, or a tensor is missing.
    ModelInvalid = 5,
    /// A prompt is empty, longer than the context, or has token ids outside the vocabulary.
    PromptInvalid = 6,
    /// A thresholds file has unknown keys or bad values.
    ThresholdsInvalid = 7,
    /// An output file (the receipt, a saved reference) cannot be written: disk full, no
    /// permission. Nothing half-written is left behind.
    OutputFailed = 8,
    /// An internal error: a bug in the harness (please report it).
    Internal = 70,
    /// Interrupted by Ctrl-C / SIGINT or SIGTERM: the receipt is complete but covers only the
    /// positions evaluated before the signal (`run_state.interrupted`).
    Interrupted = 130,
}

impl Exit {
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Every code, for documentation and tests.
    pub const ALL: [Exit; 11] = [
        Exit::Ok,
        Exit::CheckFailed,
        Exit::BadInput,
        Exit::TokenizerMismatch,
        Exit::ReferenceUnavailable,
        Exit::ModelInvalid,
        Exit::PromptInvalid,
        Exit::ThresholdsInvalid,
        Exit::OutputFailed,
        Exit::Internal,
        Exit::Interrupted,
    ];
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e.code())
    }
}

/// An error that knows which exit code it deserves.
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub error: anyhow::Error,
}

impl Failure {
    pub fn new(exit: Exit, error: impl Into<anyhow::Error>) -> Failure {
        Failure { exit, error: error.into() }
    }
}

/// A file refused or unreadable is bad input (exit 2); one that cannot be written is exit 8.
impl From<crate::files::FileError> for Failure {
    fn from(e: crate::files::FileError) -> Failure {
        let exit = match e {
            crate::files::FileError::Write { .. } => Exit::OutputFailed,
            _ => Exit::BadInput,
        };
        Failure::new(exit, e)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One line: the error and its causes joined with ": ".
        write!(f, "{:#}", self.error)
    }
}

impl std::error::Error for Failure {}

/// Attach an exit code to any error: `.or_exit(Exit::BadInput)?`.
pub trait OrExit<T> {
    fn or_exit(self, exit: Exit) -> Result<T, Failure>;
}

impl<T, E: Into<anyhow::Error>> OrExit<T> for Result<T, E> {
    fn or_exit(self, exit: Exit) -> Result<T, Failure> {
        self.map_err(|e| Failure::new(exit, e))
    }
}
