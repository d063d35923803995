//! Engines: anything that turns token ids into logits, behind one interface.
//!
//! A parity run compares two [`Engine`]s, side A (the engine under test) and side B (the one it
//! is held against). Four kinds exist:
//!
//! | kind | where it computes | [`EngineSpec`] |
//! |---|---|---|
//! | the Rust engine of this workspace | in this process | `rust` |
//! | bitnet.cpp, live | in its worker process | `cpp`, `cpp:MARCH`, `cpp-dir:PATH` |
//! | a saved reference (logits written by an earlier run) | a file | `saved:FILE` |
//! | any program speaking the engine protocol (`docs/engine-protocol.md`) | its own process | `cmd:COMMAND` |
//!
//! Engines that compute in another process are started first at every position, so that both
//! sides compute at once and a run costs about the slower engine's time.

pub mod cpp;
pub mod external;
pub mod protocol;
pub mod rust;
pub mod saved;
pub mod spec;

pub use crate::receipt::ExternalIdentity;
use crate::receipt::{ReferenceEngine, RustEngine};
pub use spec::EngineSpec;

/// Why an engine could not answer. Every variant's text names the engine and the request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    /// The engine answered with an error of its own (a bad model, an evaluation it refused).
    #[error("{0}")]
    Failed(String),
    /// The engine's process exited or was killed.
    #[error("{0}")]
    Crashed(String),
    /// The engine did not answer within its time limit; it was stopped.
    #[error("{0}")]
    Hung(String),
    /// The engine's answer broke the protocol (malformed, wrong sizes, out of order).
    #[error("{0}")]
    Protocol(String),
    /// The run was interrupted (Ctrl-C) while waiting for the engine.
    #[error("interrupted")]
    Interrupted,
}

pub type EngineResult<T> = Result<T, EngineError>;

/// Named tensors of one evaluation (bitnet.cpp's names, values as f32), in graph order.
pub type NamedTensors = Vec<(String, Vec<f32>)>;

/// What an engine says about itself, for the receipt.
#[derive(Debug, Clone, PartialEq)]
pub enum Identity {
    /// The Rust engine: its record as the side under test.
    Rust(Box<RustEngine>),
    /// A bitnet.cpp build (live or saved): its build record.
    Cpp(Box<ReferenceEngine>),
    /// A program speaking the engine protocol.
    External(ExternalIdentity),
}

impl Identity {
    /// A short name for tables and messages: `bitnet-engine`, `bitnet.cpp (native)`, ...
    pub fn label(&self) -> String {
        match self {
            Identity::Rust(r) => r.name.clone(),
            Identity::Cpp(c) => match (c.source.strip_prefix("saved:"), march_of(c)) {
                (Some(file), _) => format!("saved reference {file}"),
                (None, Some(m)) => format!("bitnet.cpp ({m})"),
                (None, None) => "bitnet.cpp".to_string(),
            },
            Identity::External(e) => format!("{} {}", e.name, e.version),
        }
    }

    /// The ISA macros of a bitnet.cpp build (live or saved), which decide the profile the Rust
    /// engine mirrors; None for other engines.
    pub fn isa(&self) -> Option<&[String]> {
        match self {
            Identity::Cpp(c) => Some(&c.isa),
            _ => None,
        }
    }
}

/// The `-march` a bitnet.cpp build was compiled with, from its recorded flags.
pub fn march_of(build: &ReferenceEngine) -> Option<String> {
    let flag = build.flags.iter().flat_map(|g| g.split(' ')).find_map(|w| w.strip_prefix("-march="));
    flag.map(str::to_string)
}

/// One side of a parity run.
///
/// The calls of a run, per case: [`Engine::reset`], then for each position
/// [`Engine::start_eval`] and [`Engine::finish_eval`] (split so that an engine in another process
/// computes while this one does), and at most once per run [`Engine::eval_traced`] after a
/// replay of the positions before it.
pub trait Engine {
    /// Who this engine is, for the receipt.
    fn identity(&self) -> Identity;

    /// The length of a logits row (the model's vocabulary).
    fn n_vocab(&self) -> usize;

    /// Whether the engine computes in another process (it is then started first at every
    /// position, so that both engines compute at once).
    fn runs_elsewhere(&self) -> bool {
        false
    }

    /// The token ids of `text`, with BOS first when `add_bos`; `None` when the engine has no
    /// tokenizer of its own (the other side's ids, or the harness's, are used).
    fn tokenize(&mut self, text: &str, add_bos: bool, parse_special: bool) -> EngineResult<Option<Vec<u32>>>;

    /// [`Engine::tokenize`] for many strings at once (one round trip where the engine allows).
    fn tokenize_many(
        &mut self,
        texts: &[String],
        add_bos: bool,
        parse_special: bool,
    ) -> EngineResult<Option<Vec<Vec<u32>>>> {
        let mut all = Vec::with_capacity(texts.len());
        for t in texts {
            match self.tokenize(t, add_bos, parse_special)? {
                Some(ids) => all.push(ids),
                None => return Ok(None),
            }
        }
        Ok(Some(all))
    }

    /// The text of `ids` (special tokens as text, lossy UTF-8); `None` when the engine has no
    /// tokenizer of its own.
    fn detokenize(&mut self, ids: &[u32]) -> EngineResult<Option<String>> {
        let _ = ids;
        Ok(None)
    }

    /// Forgets every position: case `case` (0-based) of the run starts.
    fn reset(&mut self, case: usize) -> EngineResult<()>;

    /// Starts evaluating `tokens` at positions `pos..pos + tokens.len()` (the positions before
    /// `pos` are in the engine's cache); the logits of the last one are wanted.
    fn start_eval(&mut self, tokens: &[u32], pos: usize) -> EngineResult<()>;

    /// The logits of the evaluation started last (`n_vocab` values: those of the last token).
    fn finish_eval(&mut self) -> EngineResult<Vec<f32>>;

    /// Evaluates `tokens` at positions `pos..pos + tokens.len()` on the engine's batched path,
    /// the one engines use for prompts (llama.cpp's `llama_decode` with many tokens, split into
    /// ubatches of the size fixed when the engine was created), and returns the logits of
    /// every position, row after row (`tokens.len() × n_vocab` values). These need not be the
    /// bits of one-token evaluations: the batched path runs other kernels. `None` when the
    /// engine has no batched path.
    fn eval_batch(&mut self, tokens: &[u32], pos: usize) -> EngineResult<Option<Vec<f32>>> {
        let _ = (tokens, pos);
        Ok(None)
    }

    /// Starts [`Engine::eval_batch`] and returns at once, for an engine in another process
    /// (it computes while the other side does); [`Engine::finish_eval_batch`] collects the
    /// logits. `false`: the engine has no split form, call [`Engine::eval_batch`] instead.
    fn start_eval_batch(&mut self, tokens: &[u32], pos: usize) -> EngineResult<bool> {
        let _ = (tokens, pos);
        Ok(false)
    }

    /// The logits of every position of the batch [`Engine::start_eval_batch`] started.
    fn finish_eval_batch(&mut self) -> EngineResult<Vec<f32>> {
        Err(EngineError::Protocol("no batched evaluation was started".into()))
    }

    /// [`Engine::eval_batch`] of `tokens` at `pos`, returning the named tensors of `names` at
    /// position `pos + row` as the batched path computed them (that position's row of each);
    /// `None` when the engine cannot trace its batched path.
    fn eval_batch_traced(
        &mut self,
        tokens: &[u32],
        pos: usize,
        row: usize,
        names: &[String],
    ) -> EngineResult<Option<NamedTensors>> {
        let _ = (tokens, pos, row, names);
        Ok(None)
    }

    /// Seconds the last evaluation took as the engine measured it, when it measures itself
    /// (a worker process, whose time excludes the pipe); else the harness's clock is used.
    fn last_eval_seconds(&self) -> Option<f64> {
        None
    }

    /// The names of the tensors [`Engine::eval_traced`] can report, in graph order, with the
    /// reference's names (`attn_norm-0`, `Qcur-0`, …, `result_output`); `None` when the engine
    /// does not trace; an empty list when it reports whatever it computes (bitnet.cpp).
    fn trace_names(&mut self) -> EngineResult<Option<Vec<String>>> {
        Ok(None)
    }

    /// Evaluates `token` at `pos` and returns the named tensors of `names` it computed on the way
    /// (a name may repeat: the last one counts).
    fn eval_traced(
        &mut self,
        token: u32,
        pos: usize,
        names: &[String],
    ) -> EngineResult<Vec<(String, Vec<f32>)>> {
        let _ = (token, pos, names);
        Err(EngineError::Failed("this engine does not trace".into()))
    }

    /// Ends the engine (a worker process exits).
    fn shutdown(self: Box<Self>) {}
}

/// Evaluates one token and waits for its logits.
pub fn eval(engine: &mut dyn Engine, token: u32, pos: usize) -> EngineResult<Vec<f32>> {
    engine.start_eval(&[token], pos)?;
    engine.finish_eval()
}
