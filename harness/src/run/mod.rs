//! `harness run`: two engines on the same tokens, one at a time, and a receipt of how they agree.
//!
//! A run is a sequence of stages, each in its own module:
//!
//! 1. [`sides`]: which two engines (`--engine`, `--against`), started (the ones in other
//!    processes load the model while this one reads it) and the profile the Rust engine mirrors;
//! 2. [`plan`]: the prompts, tokenized by both engines, and the positions of each case;
//! 3. [`evaluate`]: every position through both engines, compared as it arrives;
//! 4. [`tracing`]: at one position, every named tensor of both engines (`--trace`);
//! 5. [`record`]: the receipt, its verdict, the saved reference, the table.

mod batched;
mod evaluate;
mod identity;
mod measure;
mod mode;
mod plan;
mod record;
mod sides;
mod table;
mod tracing;
mod verdict;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use anyhow::anyhow;
use bitnet_engine::gguf::GgufFile;
use bitnet_engine::model::{Config, Fault, Model, ModelError, ModelOptions};
use bitnet_engine::profile::RefProfile;
use bitnet_engine::tokenizer::Tokenizer;

use crate::engine::{Engine, EngineSpec};
use crate::exit::{Exit, Failure, OrExit};
pub use crate::inputs::{resolve_model, DEFAULT_FIXTURE_NAME};
pub use crate::profile_choice::{parse_profile, ProfileChoice, ProfileSource};
use crate::receipt::Receipt;
use crate::report::term::Progress;
use identity::ModelHash;
pub use identity::{model_info, sha256_hex, tool_info};
pub(crate) use mode::ModeChoice;
pub use mode::RunMode;
pub use plan::ShardSpec;
pub use verdict::judge;

/// Whose token ids to use when the tokenizers disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IdsFrom {
    Rust,
    Cpp,
}

#[derive(Debug, Clone, Default, clap::Args)]
pub struct RunArgs {
    /// The model (GGUF). Default: $CROSSVAL_GGUF, else the fixture built into the harness.
    #[arg(long, env = "CROSSVAL_GGUF", value_name = "GGUF")]
    pub model: Option<PathBuf>,
    /// A prompt (repeatable). Default: the fixture prompts.
    #[arg(long = "prompt", value_name = "TEXT")]
    pub prompt: Vec<String>,
    /// A file of prompts, one per line, in the corpus format of `tokenize-check` (`#` starts a
    /// comment line; `\n`, `\t`, `\s`, `\\`, `\#`, `\u{HEX}` are escapes).
    #[arg(long = "prompts", value_name = "FILE", conflicts_with = "prompt")]
    pub prompts_file: Option<PathBuf>,
    /// Run only shard I of N (1 ≤ I ≤ N): case k (0-based, in prompt order) belongs to shard
    /// k mod N + 1. The receipt records the shard; `harness merge` puts the shards back together.
    #[arg(long, value_name = "I/N", value_parser = ShardSpec::parse, conflicts_with = "save_reference")]
    pub shard: Option<ShardSpec>,
    /// Threads for each engine.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub threads: u32,
    /// Evaluate at most this many tokens per prompt (prompt plus continuation). With
    /// `--reference`, default: every position the file saved.
    #[arg(long, value_name = "N")]
    pub max_tokens: Option<usize>,
    /// Extend each prompt with N tokens generated greedily by the reference, then compare over
    /// prompt and continuation. Default 0; with `--reference`, what the file saved.
    #[arg(long = "continue", value_name = "N")]
    pub continue_tokens: Option<usize>,
    /// When the tokenizers disagree on a prompt, use this side's ids instead of stopping.
    #[arg(long, value_enum)]
    pub ids_from: Option<IdsFrom>,
    /// How the engines evaluate each case: `decode` (one token at a time, as in generation),
    /// `batch` (the batched path prompts take: batches of --batch tokens, logits at every
    /// position, compared as decode compares them) or `both` (each, and each engine's batch
    /// logits against its own decode logits).
    #[arg(long, value_enum, default_value_t = RunMode::Decode)]
    pub mode: RunMode,
    /// Tokens per batch with --mode batch|both: each case is fed in batches of N at
    /// increasing positions. Default 512.
    #[arg(long, value_name = "N")]
    pub batch: Option<usize>,
    /// llama.cpp's n_ubatch with --mode batch|both: each batch is split into ubatches of M
    /// tokens (1 ≤ M ≤ N). Default min(N, 512).
    #[arg(long, value_name = "M")]
    pub ubatch: Option<usize>,
    /// The context the reference is created with, which bounds every case (prompt plus
    /// continuation); at most the model's context length, its default. (The Rust engine's
    /// cache holds what the cases need; results do not depend on either size.)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub n_ctx: Option<u32>,
    /// Where to write the receipt. Default: receipts/runs/<model>.json.
    #[arg(long, value_name = "PATH")]
    pub out: Option<PathBuf>,
    /// Turn off the Rust engine's mirroring of the reference's f16 roundings (F16 KV cache,
    /// f16 query and softmax in attention, f16 lm_head input), to see what they explain.
    #[arg(long)]
    pub no_exact_rounding: bool,
    /// Save the reference's token ids, logits (lossless) and identity to FILE.
    #[arg(long, value_name = "FILE")]
    pub save_reference: Option<PathBuf>,
    /// Run against the reference built for this `-march` (`native`, `x86-64-v3`, ...: an entry
    /// of `BITNET_CPP_MARCH` at build time) instead of the default build. Ignored with `--reference`.
    #[arg(long, env = "BITNET_CPP_BUILD", value_name = "MARCH")]
    pub reference_build: Option<String>,
    /// Compare against a saved reference instead of running bitnet.cpp (same model required);
    /// the same as `--against saved:FILE`.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["save_reference", "against"])]
    pub reference: Option<PathBuf>,
    /// Side A, the engine under test: `rust` (this workspace's engine, the default),
    /// `cpp` / `cpp:MARCH` (a bitnet.cpp build), `cpp-dir:PATH` (bitnet.cpp from a folder),
    /// `saved:FILE`, or `cmd:COMMAND` (any program speaking docs/engine-protocol.md).
    #[arg(long, value_name = "SPEC", value_parser = EngineSpec::parse)]
    pub engine: Option<EngineSpec>,
    /// Side B, the engine side A is held against (same forms as --engine). Default: `cpp`, the
    /// default bitnet.cpp build (or `cpp:MARCH` with --reference-build, `saved:FILE` with
    /// --reference).
    #[arg(long, value_name = "SPEC", value_parser = EngineSpec::parse)]
    pub against: Option<EngineSpec>,
    /// The engine under test is this command, speaking docs/engine-protocol.md on its
    /// stdin/stdout: the same as `--engine cmd:COMMAND`.
    #[arg(long, value_name = "COMMAND", conflicts_with = "engine")]
    pub engine_cmd: Option<String>,
    /// Seconds an external engine (`cmd:`) may take to answer one request before it counts as
    /// hung and is stopped (default 600).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub engine_timeout: Option<u64>,
    /// Cosine under which a position counts as the first divergence and the run fails
    /// (between -1 and 1, as in a thresholds file).
    #[arg(long, value_name = "X", value_parser = crate::gate::parse_min_cosine, allow_negative_numbers = true)]
    pub min_cosine: Option<f64>,
    /// Mirror this reference-build profile (avx2, avx512) instead of the one the reference's
    /// own build implies (its build-info, or a saved reference's footer): for experiments.
    /// Also compares against a build that has no profile without failing the verdict on it.
    #[arg(long, value_name = "PROFILE", value_parser = parse_profile)]
    pub reference_profile: Option<RefProfile>,
    /// Compare the engines layer by layer at one position: `--trace` (or `always`) at the first
    /// divergence, else at the last position of the first prompt; `auto` only when something
    /// diverged; `CASE:POS` (1-based case, 0-based position) at that position.
    #[arg(long, value_name = "WHEN", num_args = 0..=1, default_missing_value = "always")]
    pub trace: Option<String>,
    /// Cosine under which a traced operation counts as divergent (between -1 and 1).
    #[arg(long, value_name = "X", default_value_t = 0.99999, value_parser = crate::gate::parse_min_cosine, allow_negative_numbers = true)]
    pub trace_min_cosine: f64,
    /// Inject a deliberate fault into the Rust engine (KIND@LAYER: rope-adjacent,
    /// skip-attn-sub-norm, skip-ffn-sub-norm), to check that tracing finds it.
    #[arg(long, value_name = "KIND@LAYER", hide = true, value_parser = parse_fault)]
    pub inject_fault: Option<Fault>,
    /// Print the receipt as JSON on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Print nothing but errors (and the receipt path).
    #[arg(long)]
    pub quiet: bool,
}

/// The model as read once for the whole run, and the limits it sets.
pub(crate) struct ModelFile {
    label: String,
    path: PathBuf,
    file: GgufFile,
    config: Config,
    tokenizer: Tokenizer,
    /// The longest case the run allows (the reference's context): `--n-ctx`, else the model's.
    limit: usize,
    /// The reference's names of the tensors a trace compares, in graph order, for this model's
    /// architecture and tensors (what the Rust engine reports).
    op_names: Vec<String>,
}

impl ModelFile {
    /// Reads the model and checks it before any engine starts: hyper-parameters that contradict
    /// the tensors are the model's fault (exit 5), found before the reference would refuse the
    /// same file less clearly (exit 4).
    fn read(src: crate::inputs::ModelSource, args: &RunArgs, ui: &Progress) -> Result<ModelFile, Failure> {
        ui.say(&format!("model: {}", src.label));
        ui.step("reading the model");
        let file = GgufFile::open(&src.path).or_exit(Exit::BadInput)?;
        let config = Config::from_gguf(&file).map_err(model_failure)?;
        if let Some(n) = args.n_ctx.filter(|&n| n as usize > config.n_ctx_train) {
            return Err(Failure::new(
                Exit::PromptInvalid,
                anyhow!("--n-ctx {n} is more than the model's context_length {}", config.n_ctx_train),
            ));
        }
        let limit = args.n_ctx.map_or(config.n_ctx_train, |n| n as usize);
        let tokenizer = Tokenizer::from_gguf(&file).or_exit(Exit::ModelInvalid)?;
        // This load only validates; the profile, unknown until the reference is up, changes no check.
        let options = ModelOptions { n_ctx: 1, exact_reference_rounding: false, ..ModelOptions::default() };
        let op_names = Model::load(&file, options).map_err(model_failure)?.traced_names();
        Ok(ModelFile { label: src.label, path: src.path, file, config, tokenizer, limit, op_names })
    }

    /// The context every live engine is created with (the reference sizes its KV cache up front).
    fn n_ctx(&self) -> usize {
        self.limit.max(32)
    }
}

/// The outputs, checked before any work: only regular files (or new paths), never an input.
fn check_outputs(
    args: &RunArgs,
    model: &Path,
    out: Option<&Path>,
    sides: &sides::Specs,
) -> Result<(), Failure> {
    let saved: Vec<&Path> = [&sides.a, &sides.b]
        .into_iter()
        .filter_map(|s| match s {
            EngineSpec::Saved(p) => Some(p.as_path()),
            _ => None,
        })
        .collect();
    let inputs: Vec<&Path> =
        [Some(model), args.prompts_file.as_deref()].into_iter().flatten().chain(saved).collect();
    for o in [out, args.save_reference.as_deref()].into_iter().flatten() {
        crate::files::check_output(o)?;
        crate::files::check_not_input(o, &inputs)?;
    }
    Ok(())
}

/// SIGINT and SIGTERM raise the returned flag: the run stops at the next position and writes
/// what it has.
fn interrupt_flag() -> Result<Arc<AtomicBool>, Failure> {
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&interrupted)).or_exit(Exit::Internal)?;
    }
    Ok(interrupted)
}

/// `harness run`: the receipt written, the table printed; exit 130 when interrupted.
pub fn run(args: &RunArgs) -> Result<Exit, Failure> {
    let interrupted = interrupt_flag()?;
    let receipt = run_receipt(args, None, interrupted)?;
    Ok(if receipt.run_state.interrupted { Exit::Interrupted } else { Exit::Ok })
}

/// A run, as a sequence of stages; `given` is side A when a program hands its own engine over
/// (`crate::check`), in place of `--engine`. Raising `interrupted` stops the run at the next
/// position (the receipt holds what was done).
pub(crate) fn run_receipt<'e>(
    args: &RunArgs,
    given: Option<Box<dyn Engine + 'e>>,
    interrupted: Arc<AtomicBool>,
) -> Result<Receipt, Failure> {
    let wall = Instant::now();
    // Progress on stderr: spinners and a bar on a terminal, the same steps as plain lines otherwise.
    let ui = Progress::new(args.quiet);
    let specs = sides::Specs::from_args(args, given.is_some())?;
    let src = resolve_model(args.model.as_deref())?;
    let out = match (&args.out, given.is_some()) {
        (Some(path), _) => Some(path.clone()),
        (None, false) => Some(default_receipt_path(&src.label)),
        // A program that handed its engine over gets the receipt back: no file unless asked.
        (None, true) => None,
    };
    check_outputs(args, &src.path, out.as_deref(), &specs)?;

    // The prompts the user gave (or the fixture's), checked before any engine starts.
    ModeChoice::from_args(args)?;
    let given_prompts = plan::given_prompts(args, &specs)?;
    let t0 = Instant::now();
    let model = ModelFile::read(src, args, &ui)?;
    // The file's sha256 on a thread of its own, while the engines load and run.
    let abandon_hash = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let model_hash = ModelHash::start(scope, model.file.as_bytes(), &abandon_hash);
        // Engines in other processes load the model while this one checks it.
        let starting = sides::start(&specs, &model, args, &interrupted, &ui)?;
        let mut facts = record::ModelFacts::gather(&model, &ui);
        let mut engines = sides::join(starting, given, &specs, &model, &model_hash, args, &ui)?;
        engines.note_reading(t0.elapsed().as_secs_f64());

        let mut plans = plan::plan_cases(args, &model, &mut engines, given_prompts, &ui)?;
        plans.corpus = plan::corpus_agreement(&model, &mut engines, &ui)?;
        engines.load_rust(&model, &plans, args, &ui)?;

        let mut outcome = evaluate::evaluate(&mut engines, &plans.cases, &model, args, &interrupted, &ui)?;
        outcome.trace = tracing::trace(args, &model, &mut engines, &outcome, &ui)?;
        facts.info.sha256 = model_hash.get().to_string();
        let receipt = record::receipt(args, &model, &facts, &engines, &mut plans, &mut outcome, wall);
        record::save_reference(outcome.saver.take(), &receipt, &model, &outcome, &ui)?;
        record::write_and_show(&receipt, out.as_deref(), args, &ui)?;
        engines.shutdown();
        Ok(receipt)
    })
}

fn default_receipt_path(label: &str) -> PathBuf {
    let stem = label.rsplit(['/', ':']).next().unwrap_or("model").trim_end_matches(".gguf");
    PathBuf::from("receipts").join("runs").join(format!("{stem}.json"))
}

fn model_failure(e: ModelError) -> Failure {
    let exit = match e {
        ModelError::Gguf(_) => Exit::BadInput,
        _ => Exit::ModelInvalid,
    };
    Failure::new(exit, e)
}

fn parse_fault(s: &str) -> Result<Fault, String> {
    s.parse()
}
