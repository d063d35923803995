//! `harness run`: both engines on the same tokens, one at a time, and a receipt of how they agree.

mod identity;
mod inputs;
mod profile;
mod reference;
mod table;
mod verdict;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::anyhow;
use bitnet_cpp::worker::{LibraryChoice, WorkerError};
use bitnet_engine::gguf::GgufFile;
use bitnet_engine::model::{Config, Fault, Model, ModelError, ModelOptions};
use bitnet_engine::profile::RefProfile;
use bitnet_engine::tokenizer::Tokenizer;
use sha2::{Digest, Sha256};

use crate::compare::{argmax, compare_position, summarize};
use crate::exit::{Exit, Failure, OrExit};
use crate::receipt::{
    self, Case, EngineTiming, Engines, Receipt, ReferenceEngine, RunState, RustEngine, Settings, Thresholds,
    Timings, TokenizerAgreement, TokenizerMismatch,
};
use crate::report::term::{Paint, Progress};
pub use identity::{model_info, sha256_hex, tool_info};
pub use inputs::{resolve_model, DEFAULT_FIXTURE_NAME};
pub use profile::{parse_profile, ProfileChoice, ProfileSource};
pub use reference::spawn_worker;
use reference::{
    engine_identity, library_choice, LiveReference, SavedCase, SavedFooter, SavedReference, SavedWriter,
};
pub use verdict::judge;

/// The continuation recorded in the receipt: `--continue`, else (a replay of a saved file)
/// the longest continuation compared.
fn continue_tokens(args: &RunArgs, plans: &[Plan]) -> usize {
    args.continue_tokens
        .unwrap_or_else(|| plans.iter().map(|p| p.n_positions.saturating_sub(p.n_prompt)).max().unwrap_or(0))
}

/// A saved reference must fit the model before any logit is read: its vocabulary size (the
/// length of every stored row) and its token ids.
fn check_saved_against_model(
    s: &SavedReference,
    path: &std::path::Path,
    n_vocab: usize,
) -> Result<(), Failure> {
    if s.footer.n_vocab != n_vocab {
        return Err(Failure::new(
            Exit::BadInput,
            anyhow!(
                "{}: footer n_vocab {} does not match the model's {n_vocab}",
                path.display(),
                s.footer.n_vocab
            ),
        ));
    }
    for (i, c) in s.footer.cases.iter().enumerate() {
        if let Some(&bad) = c.token_ids.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(Failure::new(
                Exit::PromptInvalid,
                anyhow!(
                    "{}: case {} holds token id {bad}, outside the vocabulary of the model ({n_vocab} tokens)",
                    path.display(),
                    i + 1
                ),
            ));
        }
    }
    Ok(())
}

/// Whose token ids to use when the two tokenizers disagree.
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
    /// Compare against a saved reference instead of running bitnet.cpp (same model required).
    #[arg(long, value_name = "FILE", conflicts_with = "save_reference")]
    pub reference: Option<PathBuf>,
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

/// A case being prepared: prompt text and the ids both engines will see.
struct Plan {
    prompt: String,
    ids: Vec<u32>,
    n_prompt: usize,
    /// Total positions to evaluate (prompt + continuation, capped by --max-tokens).
    n_positions: usize,
}

/// A position evaluated by both engines whose metrics are still to be computed:
/// `(pos, token, next teacher token, rust logits, reference logits)`.
type Unmeasured = (usize, u32, Option<u32>, Vec<f32>, Vec<f32>);

/// The reference in use.
enum RefSide {
    Live(Box<LiveReference>),
    Saved(Box<SavedReference>),
}

pub fn run(args: &RunArgs) -> Result<Exit, Failure> {
    let wall = Instant::now();
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&interrupted)).or_exit(Exit::Internal)?;
    }
    // Progress on stderr: spinners and a bar on a terminal, the same steps as plain lines otherwise.
    let ui = Progress::new(args.quiet);
    let say = |msg: &str| ui.say(msg);

    // The model, as the Rust engine sees it.
    let src = resolve_model(args.model.as_deref())?;
    // The outputs, checked before any work: only regular files (or new paths), never an input.
    let out = args.out.clone().unwrap_or_else(|| default_receipt_path(&src.label));
    let inputs: Vec<&std::path::Path> =
        [Some(src.path.as_path()), args.prompts_file.as_deref(), args.reference.as_deref()]
            .into_iter()
            .flatten()
            .collect();
    for o in [Some(&out), args.save_reference.as_ref()].into_iter().flatten() {
        crate::files::check_output(o)?;
        crate::files::check_not_input(o, &inputs)?;
    }
    say(&format!("model: {}", src.label));
    ui.step("reading the model");
    let t0 = Instant::now();
    let file = GgufFile::open(&src.path).or_exit(Exit::BadInput)?;
    let config = Config::from_gguf(&file).map_err(model_failure)?;
    let threads = args.threads as usize;
    if let Some(n) = args.n_ctx.filter(|&n| n as usize > config.n_ctx_train) {
        return Err(Failure::new(
            Exit::PromptInvalid,
            anyhow!("--n-ctx {n} is more than the model's context_length {}", config.n_ctx_train),
        ));
    }
    let limit = args.n_ctx.map_or(config.n_ctx_train, |n| n as usize);
    let tokenizer = Tokenizer::from_gguf(&file).or_exit(Exit::ModelInvalid)?;
    // Hyper-parameters that contradict the tensors are the model's fault (exit 5): find them
    // before the reference does, which would refuse the same file less clearly (exit 4). (This
    // load only validates; the profile, unknown until the reference is up, changes no check.)
    drop(
        Model::load(
            &file,
            ModelOptions { n_ctx: 1, exact_reference_rounding: false, ..ModelOptions::default() },
        )
        .map_err(model_failure)?,
    );

    // The prompts the user gave (or the fixture's), checked before any reference starts; with a
    // saved reference and no prompt arguments, its own prompts are used instead (below).
    let given_prompts = if args.reference.is_some() && args.prompt.is_empty() && args.prompts_file.is_none() {
        None
    } else {
        Some(inputs::resolve_prompts(&args.prompt, args.prompts_file.as_deref())?)
    };

    // Start the reference now: it loads the model in its own process while this one hashes
    // the file and loads the Rust engine. (If something below fails first,
    // the worker sees its pipe close and exits.)
    let library = match &args.reference {
        None => library_choice(args.reference_build.as_deref())?,
        Some(_) => LibraryChoice::Default,
    };
    let starting_reference = args.reference.is_none().then(|| {
        ui.step("starting the C++ reference (it loads the model)");
        let (path, n_ctx, cancel) = (src.path.clone(), provisional_ctx(limit), Arc::clone(&interrupted));
        std::thread::spawn(move || {
            let t = Instant::now();
            let live = LiveReference::start(library, &path, n_ctx, threads, cancel);
            (live, t.elapsed().as_secs_f64())
        })
    });

    let model_info = model_info(&file, &src.label);
    for p in &model_info.integrity_problems {
        say(&format!("warning: {}: {}", p.tensor, p.problem));
    }
    // What the file itself brings (an untied head the reference ignores): recorded and shown,
    // failing nothing unless the thresholds say so.
    let model_hazards = crate::hazards::model_hazards(&file);
    for h in &model_hazards {
        say(&format!("warning: {}", crate::hazards::line(h)));
    }
    // The Rust side's own setup so far (the reference loads at the same time).
    let mut rust_load_s = t0.elapsed().as_secs_f64();

    // The reference: saved logits, or a live worker.
    let mut saved = match &args.reference {
        Some(path) => {
            let s = SavedReference::open(path).or_exit(Exit::BadInput)?;
            if s.footer.model_sha256 != model_info.sha256 {
                return Err(Failure::new(
                    Exit::BadInput,
                    anyhow!(
                        "{}: saved from a different model (sha256 {}), this one is {}",
                        path.display(),
                        s.footer.model_sha256,
                        model_info.sha256
                    ),
                ));
            }
            let major = |v: &str| v.split('.').next().map(str::to_string);
            if major(&s.footer.schema_version) != major(receipt::SCHEMA_VERSION) {
                return Err(Failure::new(
                    Exit::BadInput,
                    anyhow!(
                        "{}: saved with schema {}, this harness reads {}",
                        path.display(),
                        s.footer.schema_version,
                        receipt::SCHEMA_VERSION
                    ),
                ));
            }
            check_saved_against_model(&s, path, config.n_vocab)?;
            Some(s)
        }
        None => None,
    };

    // Prompts: from the saved reference when comparing against one, else from the arguments.
    let prompts: Vec<String> = match (&saved, given_prompts) {
        (_, Some(p)) => p,
        (Some(s), None) => s.footer.cases.iter().map(|c| c.prompt.clone()).collect(),
        (None, None) => unreachable!("prompts are resolved up front unless a saved reference holds them"),
    };

    let mut reference_identity: ReferenceEngine;
    let mut plans = Vec::new();
    let mut mismatches = Vec::new();
    let mut ref_load_s = 0.0;
    let mut side = match saved.take() {
        Some(s) => {
            reference_identity = s.footer.reference.clone();
            reference_identity.source = format!("saved:{}", args.reference.as_ref().expect("set").display());
            RefSide::Saved(Box::new(s))
        }
        None => {
            ui.step("waiting for the C++ reference to load the model");
            let handle = starting_reference.expect("started when there is no saved reference");
            let (live, load_s) = handle.join().map_err(|_| {
                Failure::new(Exit::Internal, anyhow!("the thread starting the reference panicked"))
            })?;
            let live = live.map_err(|e| {
                Failure::new(Exit::ReferenceUnavailable, anyhow!("cannot start the C++ reference: {e}"))
            })?;
            ref_load_s = load_s;
            reference_identity =
                engine_identity(live.worker.build_info(), Some(live.worker.library_path()), threads);
            RefSide::Live(Box::new(live))
        }
    };

    // The profile the Rust engine mirrors: the reference build's own (known now, before the
    // engine that evaluates is loaded), unless --reference-profile chooses.
    let from = match side {
        RefSide::Live(_) => ProfileSource::BuildInfo,
        RefSide::Saved(_) => ProfileSource::SavedReference,
    };
    let profile = ProfileChoice::for_build(&reference_identity.isa, from, args.reference_profile);
    let hazards: Vec<receipt::Hazard> = profile.hazard_record().into_iter().chain(model_hazards).collect();
    if let Some(w) = profile.warning() {
        // Shown even with --quiet: unless overridden, it decides the verdict.
        if args.quiet {
            eprintln!("{w}");
        } else {
            say(&w);
        }
    }
    say(&format!("reference profile: {} ({})", profile.profile, profile.source));

    // Tokenize with both, and decide the ids.
    for (i, prompt) in prompts.iter().enumerate() {
        let rust_ids = tokenizer.encode(prompt, true, false);
        let ref_ids: Vec<u32> = match &mut side {
            RefSide::Live(l) => l
                .worker
                .tokenize(prompt, true, false)
                .map_err(|e| worker_failure(e, "tokenizing"))?
                .into_iter()
                .map(|t| t as u32)
                .collect(),
            RefSide::Saved(s) => {
                let c = s.footer.cases.get(i).ok_or_else(|| {
                    Failure::new(Exit::BadInput, anyhow!("the saved reference has no prompt {}", i + 1))
                })?;
                if &c.prompt != prompt {
                    return Err(Failure::new(
                        Exit::BadInput,
                        anyhow!("prompt {} differs from the one in the saved reference", i + 1),
                    ));
                }
                c.token_ids[..c.n_prompt_tokens].to_vec()
            }
        };
        let ids = if rust_ids == ref_ids {
            rust_ids
        } else {
            let first = rust_ids
                .iter()
                .zip(&ref_ids)
                .position(|(a, b)| a != b)
                .unwrap_or(rust_ids.len().min(ref_ids.len()));
            let m = TokenizerMismatch {
                case: i,
                first_index: first,
                rust_ids: rust_ids.clone(),
                reference_ids: ref_ids.clone(),
            };
            mismatches.push(m);
            match args.ids_from {
                Some(IdsFrom::Rust) => rust_ids,
                Some(IdsFrom::Cpp) => ref_ids,
                None => {
                    return Err(Failure::new(
                        Exit::TokenizerMismatch,
                        anyhow!(
                        "prompt {}: the tokenizers disagree at token {first} (rust {:?}, reference {:?}); \
                             pass --ids-from rust|cpp to compare anyway",
                        i + 1,
                        rust_ids.get(first),
                        ref_ids.get(first)
                    ),
                    ))
                }
            }
        };
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= config.n_vocab) {
            return Err(Failure::new(
                Exit::PromptInvalid,
                anyhow!(
                    "prompt {}: token id {bad} is outside the vocabulary ({} tokens)",
                    i + 1,
                    config.n_vocab
                ),
            ));
        }
        let n_positions = match (&side, args.continue_tokens, args.max_tokens) {
            // A replay compares what was saved, unless told otherwise.
            (RefSide::Saved(s), None, None) => s.footer.cases[i].n_positions,
            _ => {
                let total = ids.len() + args.continue_tokens.unwrap_or(0);
                args.max_tokens.map_or(total, |m| m.min(total))
            }
        };
        if let RefSide::Saved(s) = &side {
            let saved = s.footer.cases[i].n_positions;
            if n_positions > saved {
                return Err(Failure::new(
                    Exit::BadInput,
                    anyhow!(
                        "prompt {}: --continue/--max-tokens ask for {n_positions} positions, {} saved {saved}",
                        i + 1,
                        args.reference.as_ref().expect("replaying").display()
                    ),
                ));
            }
            if n_positions < saved {
                say(&format!(
                    "note: prompt {}: comparing {n_positions} of the {saved} positions saved (--continue/--max-tokens)",
                    i + 1
                ));
            }
        }
        if n_positions == 0 {
            return Err(Failure::new(
                Exit::PromptInvalid,
                anyhow!("prompt {}: no tokens to evaluate", i + 1),
            ));
        }
        if n_positions > limit {
            return Err(Failure::new(
                Exit::PromptInvalid,
                anyhow!(
                    "prompt {}: needs {n_positions} positions, the context holds {limit} (the model's \
                     context_length, or --n-ctx)",
                    i + 1
                ),
            ));
        }
        plans.push(Plan { prompt: prompt.clone(), n_prompt: ids.len(), ids, n_positions });
    }
    let corpus = match &mut side {
        RefSide::Live(l) => {
            ui.step("checking the tokenizers on the built-in corpus");
            let strings = crate::tokenize_check::corpus::builtin_corpus();
            let mut c = crate::tokenize_check::check(&tokenizer, &mut l.worker, &strings, "builtin")?;
            for m in &mut c.modes {
                m.mismatches.truncate(20);
            }
            Some(c)
        }
        RefSide::Saved(_) => None,
    };
    let tokenizer_agreement =
        TokenizerAgreement { agree: mismatches.is_empty(), prompts_checked: plans.len(), mismatches, corpus };

    // The Rust engine, with a context for the longest case.
    let n_ctx = plans.iter().map(|p| p.n_positions).max().unwrap_or(1).next_multiple_of(32).min(limit.max(1));
    let exact = !args.no_exact_rounding;
    ui.step("loading the Rust engine");
    let t_load = Instant::now();
    let mut model = Model::load(
        &file,
        ModelOptions { n_ctx, exact_reference_rounding: exact, threads, profile: profile.profile },
    )
    .map_err(model_failure)?;
    model.set_fault(args.inject_fault);
    if let Some(f) = args.inject_fault {
        say(&format!(
            "warning: fault {f} injected into the Rust engine (it shows first at {})",
            f.first_affected_op()
        ));
    }
    rust_load_s += t_load.elapsed().as_secs_f64();

    let mut saver = match &args.save_reference {
        Some(p) => Some(SavedWriter::create(p)?),
        None => None,
    };

    let thresholds = Thresholds {
        min_cosine: args.min_cosine.unwrap_or(Thresholds::default().min_cosine),
        ..Thresholds::default()
    };
    let text = |id: u32| Some(String::from_utf8_lossy(&tokenizer.token_to_piece(id)).into_owned());
    let mut state =
        RunState { completed: false, interrupted: false, reference_failure: None, rust_failure: None };
    let (mut rust_s, mut ref_s, mut evaluated) = (0f64, 0f64, 0usize);
    let mut cases: Vec<Case> = Vec::new();
    let mut saved_cases: Vec<SavedCase> = Vec::new();

    ui.positions(plans.iter().map(|p| p.n_positions as u64).sum());
    let mut hash_bytes: Vec<u8> = Vec::new();
    'cases: for (ci, plan) in plans.iter().enumerate() {
        say(&format!(
            "case {}/{}: {} prompt tokens, {} positions",
            ci + 1,
            plans.len(),
            plan.n_prompt,
            plan.n_positions
        ));
        ui.set_message(&format!("case {}/{}", ci + 1, plans.len()));
        model.reset();
        if let RefSide::Live(l) = &mut side {
            if let Err(e) = l.worker.reset() {
                state.reference_failure = Some(e.to_string());
                break 'cases;
            }
        }
        // The prompt's ids, then continuation tokens as they are generated.
        let mut ids = plan.ids.clone();
        let mut positions = Vec::with_capacity(plan.n_positions);
        let (mut rust_hash, mut ref_hash) = (Sha256::new(), Sha256::new());
        // The reference's greedy choice at the previous position (continuation tokens).
        let mut prev_ref_argmax: Option<u32> = None;
        // The last evaluated position, whose metrics are computed during the next evaluation.
        let mut unmeasured: Option<Unmeasured> = None;
        for pos in 0..plan.n_positions {
            if interrupted.load(Ordering::Relaxed) {
                state.interrupted = true;
            }
            if state.interrupted {
                break;
            }
            // Continuation tokens: the reference's greedy choice at the previous position.
            if pos >= ids.len() {
                let next = match &side {
                    RefSide::Saved(s) => s.footer.cases[ci].token_ids.get(pos).copied(),
                    RefSide::Live(_) => prev_ref_argmax,
                };
                match next {
                    Some(t) => ids.push(t),
                    None => break,
                }
            }
            let token = ids[pos];
            // Both engines at once: the reference computes in its own process while the Rust
            // engine computes here, so a run costs about the slower engine's time.
            let pending = match &mut side {
                RefSide::Live(l) => match l.worker.start_eval_token(token as i32, pos as u32) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        state.reference_failure = Some(format!("{e} (case {}, position {pos})", ci + 1));
                        break;
                    }
                },
                RefSide::Saved(_) => None,
            };
            let t = Instant::now();
            let rust_result = model.eval(token, pos).map(<[f32]>::to_vec);
            rust_s += t.elapsed().as_secs_f64();
            // The previous position's metrics, while the reference may still be computing this
            // one: on a 128k vocabulary they cost milliseconds, often hidden this way.
            if let Some((p, tok, next, rust, reference)) = unmeasured.take() {
                positions.push(compare_position(p, tok, next, &rust, &reference));
            }
            let reference_logits = match (&mut side, pending) {
                (RefSide::Live(l), Some(p)) => {
                    let r = l.worker.finish_eval(p);
                    if let Err(WorkerError::Interrupted { .. }) = r {
                        // Ctrl-C while the reference computed: the run ends like any interruption.
                        state.interrupted = true;
                        break;
                    }
                    let r = r.map_err(|e| e.to_string());
                    ref_s += l.worker.last_eval_time().as_secs_f64();
                    r
                }
                (RefSide::Saved(s), _) => {
                    let t = Instant::now();
                    let r = s.logits(ci, pos).map_err(|e| e.to_string());
                    ref_s += t.elapsed().as_secs_f64();
                    r
                }
                (RefSide::Live(_), None) => unreachable!("a live reference always has a pending evaluation"),
            };
            let rust_logits = match rust_result {
                Ok(l) => l,
                Err(e) => {
                    state.rust_failure = Some(format!("{e} (case {}, position {pos})", ci + 1));
                    break;
                }
            };
            let reference_logits = match reference_logits {
                Ok(l) => l,
                Err(e) => {
                    state.reference_failure = Some(format!("{e} (case {}, position {pos})", ci + 1));
                    break;
                }
            };
            evaluated += 1;
            for (hash, logits) in [(&mut rust_hash, &rust_logits[..]), (&mut ref_hash, &reference_logits[..])]
            {
                // Digest of the f32 logits, little-endian, hashed in one piece.
                hash_bytes.clear();
                hash_bytes.extend(logits.iter().flat_map(|v| v.to_le_bytes()));
                hash.update(&hash_bytes);
            }
            if let Some(Err(e)) = saver.as_mut().map(|w| w.push_logits(&reference_logits)) {
                // Leave no half-written file behind (a full disk, typically).
                if let Some(w) = saver.take() {
                    w.abandon();
                }
                return Err(e.into());
            }
            // The teacher token that follows (for Δp): known for prompt positions; for the last
            // prompt position with a continuation it is the reference's greedy choice.
            let next = match ids.get(pos + 1) {
                Some(&n) => Some(n),
                None if pos + 1 < plan.n_positions && matches!(side, RefSide::Live(_)) => {
                    Some(argmax(&reference_logits) as u32)
                }
                None if pos + 1 < plan.n_positions => {
                    if let RefSide::Saved(s) = &side {
                        s.footer.cases[ci].token_ids.get(pos + 1).copied()
                    } else {
                        None
                    }
                }
                None => None,
            };
            prev_ref_argmax = Some(argmax(&reference_logits) as u32);
            unmeasured = Some((pos, token, next, rust_logits, reference_logits));
            ui.inc(1);
            if !args.quiet && !ui.visible() && (pos + 1) % 64 == 0 {
                eprintln!("  {}/{} positions", pos + 1, plan.n_positions);
            }
        }
        if let Some((p, tok, next, rust, reference)) = unmeasured.take() {
            positions.push(compare_position(p, tok, next, &rust, &reference));
        }
        let summary = summarize(positions.iter().map(|p| (ci, p)), thresholds.min_cosine, &text);
        saved_cases.push(SavedCase {
            prompt: plan.prompt.clone(),
            token_ids: ids.clone(),
            n_prompt_tokens: plan.n_prompt,
            n_positions: positions.len(),
        });
        let done = positions.len() == plan.n_positions;
        cases.push(Case {
            prompt: plan.prompt.clone(),
            token_texts: Some(
                ids.iter().map(|&t| receipt::piece_text(&tokenizer.token_to_piece(t))).collect(),
            ),
            token_ids: ids,
            n_prompt_tokens: plan.n_prompt,
            rust_logits_sha256: hex(&rust_hash.finalize()),
            reference_logits_sha256: hex(&ref_hash.finalize()),
            positions,
            summary,
        });
        if !done {
            break;
        }
    }
    state.completed = cases.len() == plans.len()
        && cases.iter().zip(&plans).all(|(c, p)| c.positions.len() == p.n_positions)
        && state.reference_failure.is_none()
        && state.rust_failure.is_none()
        && !state.interrupted;

    let summary = summarize(
        cases.iter().enumerate().flat_map(|(ci, c)| c.positions.iter().map(move |p| (ci, p))),
        thresholds.min_cosine,
        &text,
    );
    let trace = match (&args.trace, &mut side) {
        (Some(when), RefSide::Live(l)) => {
            match trace_target(when, &cases, &summary).map_err(|e| Failure::new(Exit::BadInput, e))? {
                Some((ci, pos, reason)) => {
                    say(&format!("tracing case {} position {pos} ({reason})…", ci + 1));
                    ui.step("tracing");
                    match trace_position(
                        &mut model,
                        &mut l.worker,
                        &cases[ci].token_ids,
                        ci,
                        pos,
                        reason,
                        args.trace_min_cosine,
                    ) {
                        Ok(t) => Some(t),
                        Err(e) => {
                            say(&format!("warning: trace failed: {e}"));
                            None
                        }
                    }
                }
                None => None,
            }
        }
        (Some(_), RefSide::Saved(_)) => {
            say("warning: --trace needs the live reference; a saved reference holds only logits");
            None
        }
        (None, _) => None,
    };
    let mut receipt = Receipt {
        schema_version: receipt::SCHEMA_VERSION.into(),
        created_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        tool: tool_info(),
        engines: Engines {
            rust: RustEngine {
                name: "bitnet-engine".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                kernel: model.kernel_name().into(),
                exact_reference_rounding: exact,
                threads,
                injected_fault: args.inject_fault.map(|f| f.to_string()),
                reference_profile: Some(profile.record()),
            },
            reference: reference_identity.clone(),
        },
        settings: Settings {
            n_ctx: provisional_ctx(limit),
            max_tokens: args.max_tokens,
            continue_tokens: continue_tokens(args, &plans),
            ids_from: args.ids_from.map(|s| format!("{s:?}").to_lowercase()),
            add_bos: true,
            parse_special: false,
            thresholds,
        },
        model: model_info.clone(),
        tokenizer: tokenizer_agreement,
        cases,
        summary,
        hazards,
        verdict: receipt::Verdict { status: String::new(), reasons: Vec::new() },
        timings: Timings {
            wall_s: wall.elapsed().as_secs_f64(),
            rust: EngineTiming { load_s: rust_load_s, eval_s: rust_s, tokens: evaluated },
            reference: EngineTiming { load_s: ref_load_s, eval_s: ref_s, tokens: evaluated },
        },
        run_state: state,
        trace,
    };
    receipt.verdict = judge(&receipt);

    if let Some(w) = saver {
        if receipt.run_state.completed {
            let footer = SavedFooter {
                format_version: 1,
                schema_version: receipt::SCHEMA_VERSION.into(),
                model_sha256: model_info.sha256.clone(),
                model_path: model_info.path.clone(),
                n_vocab: config.n_vocab,
                reference: reference_identity,
                cases: saved_cases,
            };
            w.finish(&footer)?;
        } else {
            w.abandon();
            say("the run did not complete: no reference saved");
        }
    }

    receipt::write_atomic(&out, &receipt)?;
    ui.done();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&receipt).or_exit(Exit::Internal)?);
        // stdout holds the JSON document alone.
        eprintln!("receipt: {}", out.display());
    } else {
        if !args.quiet {
            print!("{}", table::render(&receipt, Paint::stdout()));
            if let Some(t) = &receipt.trace {
                print!("{}", crate::trace::render(t));
            }
        }
        println!("receipt: {}", out.display());
    }
    if let RefSide::Live(l) = side {
        let _ = l.worker.shutdown();
    }
    Ok(if receipt.run_state.interrupted { Exit::Interrupted } else { Exit::Ok })
}

fn provisional_ctx(limit: usize) -> usize {
    // The reference sizes its KV cache from n_ctx up front; the cases are at most `limit` long.
    limit.max(32)
}

fn default_receipt_path(label: &str) -> PathBuf {
    let stem = label.rsplit(['/', ':']).next().unwrap_or("model").trim_end_matches(".gguf");
    PathBuf::from("receipts").join("runs").join(format!("{stem}.json"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn model_failure(e: ModelError) -> Failure {
    let exit = match e {
        ModelError::Gguf(_) => Exit::BadInput,
        _ => Exit::ModelInvalid,
    };
    Failure::new(exit, e)
}

fn worker_failure(e: WorkerError, during: &str) -> Failure {
    Failure::new(Exit::ReferenceUnavailable, anyhow!("the C++ reference failed while {during}: {e}"))
}

fn parse_fault(s: &str) -> Result<Fault, String> {
    s.parse()
}

/// Which position `--trace WHEN` asks for: `(case, position, reason)`.
fn trace_target(
    when: &str,
    cases: &[Case],
    summary: &crate::receipt::Summary,
) -> anyhow::Result<Option<(usize, usize, &'static str)>> {
    let divergence = summary.first_divergence.as_ref().map(|d| (d.case, d.pos, "first_divergence"));
    match when {
        "auto" => Ok(divergence),
        "always" => Ok(divergence.or_else(|| {
            let c = cases.first()?;
            c.positions.len().checked_sub(1).map(|p| (0, p, "last_position"))
        })),
        spec => {
            let (c, p) = spec
                .split_once(':')
                .and_then(|(c, p)| Some((c.parse::<usize>().ok()?, p.parse::<usize>().ok()?)))
                .ok_or_else(|| anyhow!("--trace {spec:?}: expected always, auto or CASE:POS"))?;
            let case = c.checked_sub(1).and_then(|i| cases.get(i).map(|case| (i, case)));
            match case {
                Some((i, case)) if p < case.positions.len() => Ok(Some((i, p, "requested"))),
                _ => Err(anyhow!("--trace {spec}: no such case and position in this run")),
            }
        }
    }
}

/// Replays `ids[..pos]` in both engines, then captures every traced tensor at `pos`.
fn trace_position(
    model: &mut Model<'_>,
    worker: &mut bitnet_cpp::worker::RefWorker,
    ids: &[u32],
    case: usize,
    pos: usize,
    reason: &str,
    min_cosine: f64,
) -> anyhow::Result<crate::trace::Trace> {
    model.reset();
    worker.reset()?;
    for (p, &t) in ids[..pos].iter().enumerate() {
        model.eval(t, p)?;
        worker.eval_token(t as i32, p as u32)?;
    }
    let token = ids[pos];
    let names = crate::trace::traced_names(model);
    let mut rust: Vec<(String, Vec<f32>)> = Vec::new();
    let mut keep = |name: &str, data: &[f32]| {
        if names.iter().any(|n| n == name) {
            rust.push((name.to_string(), data.to_vec()));
        }
    };
    model.eval_traced(token, pos, &mut keep)?;
    let filter = bitnet_cpp::CaptureFilter::Names(names.clone());
    let (_, captured) = worker.eval_token_capture(token as i32, pos as u32, &filter)?;
    let reference: Vec<(String, Vec<f32>)> = captured.into_iter().map(|c| (c.name, c.data)).collect();
    let (ops, first_divergent_op, unmatched) = crate::trace::compare(&names, &rust, &reference, min_cosine);
    Ok(crate::trace::Trace {
        case,
        pos,
        token,
        reason: reason.to_string(),
        min_cosine,
        ops,
        first_divergent_op,
        unmatched,
    })
}
