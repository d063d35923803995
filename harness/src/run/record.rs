//! Stage 5 of a run: the receipt, its verdict, the saved reference, and what is printed.

use std::path::Path;
use std::time::Instant;

use super::evaluate::Outcome;
use super::identity::{model_info_unhashed, tool_info};
use super::plan::Plans;
use super::sides::Engines;
use super::{table, verdict, ModelFile, RunArgs};
use crate::engine::saved::{SavedFooter, SavedWriter, FORMAT_VERSION, MODE_BATCH, MODE_DECODE};
use crate::engine::Identity;
use crate::exit::{Exit, Failure, OrExit};
use crate::receipt::{
    self, EngineTiming, Engines as EngineRecords, Hazard, ModelInfo, Receipt, ReferenceEngine, RustEngine,
    Settings, Timings, TokenizerAgreement,
};
use crate::report::term::{Paint, Progress};

/// What the file itself says, whoever computes it: identity, integrity, hazards.
pub(super) struct ModelFacts {
    pub info: ModelInfo,
    /// What the file brings that the reference treats specially (an untied head it ignores):
    /// recorded and shown, failing nothing unless the thresholds say so.
    pub hazards: Vec<Hazard>,
}

impl ModelFacts {
    /// Everything but the file's sha256 (`info.sha256` is empty: [`ModelHash`] computes it
    /// meanwhile (`identity::ModelHash`); the run fills it in before the receipt).
    pub fn gather(model: &ModelFile, ui: &Progress) -> ModelFacts {
        let info = model_info_unhashed(&model.file, &model.label);
        for p in &info.integrity_problems {
            ui.say(&format!("warning: {}: {}", p.tensor, p.problem));
        }
        let hazards = crate::hazards::model_hazards(&model.file);
        for h in &hazards {
            ui.say(&format!("warning: {}", crate::hazards::line(h)));
        }
        ModelFacts { info, hazards }
    }
}

/// Side A's record (`engines.rust`: the engine under test, whatever it is).
fn side_a_record(id: Identity) -> RustEngine {
    let plain = |kind: &str, name: String, version: String, threads: usize| RustEngine {
        kind: kind.into(),
        name,
        version,
        kernel: String::new(),
        exact_reference_rounding: false,
        threads,
        injected_fault: None,
        reference_profile: None,
        build: None,
        external: None,
    };
    match id {
        Identity::Rust(r) => *r,
        Identity::Cpp(c) => RustEngine {
            build: Some((*c).clone()),
            ..plain("bitnet.cpp", "bitnet.cpp".into(), c.version.clone().unwrap_or_default(), c.threads)
        },
        Identity::External(e) => RustEngine {
            external: Some(e.clone()),
            ..plain("external", e.name.clone(), e.version.clone(), 0)
        },
    }
}

/// Side B's record (`engines.reference`).
fn side_b_record(id: Identity) -> ReferenceEngine {
    let plain = |source: String, version: String, threads: usize| ReferenceEngine {
        source,
        version: Some(version),
        compiler: None,
        flags: Vec::new(),
        isa: Vec::new(),
        library_path: None,
        threads,
        kv_cache_type: "f16".into(),
        flash_attention: false,
    };
    match id {
        Identity::Cpp(c) => *c,
        Identity::Rust(r) => plain(format!("rust:{}", r.name), r.version, r.threads),
        Identity::External(e) => plain(format!("external:{}", e.command), e.version, 0),
    }
}

/// The receipt of the run, with its verdict.
pub(super) fn receipt(
    args: &RunArgs,
    model: &ModelFile,
    facts: &ModelFacts,
    engines: &Engines<'_>,
    plans: &mut Plans,
    outcome: &mut Outcome,
    wall: Instant,
) -> Receipt {
    let [a, b] = engines.identities();
    let continue_tokens = args.continue_tokens.unwrap_or_else(|| {
        plans.cases.iter().map(|p| p.n_positions.saturating_sub(p.n_prompt)).max().unwrap_or(0)
    });
    let hazards =
        engines.profile.as_ref().and_then(|p| p.hazard_record()).into_iter().chain(facts.hazards.clone());
    let mut receipt = Receipt {
        schema_version: receipt::SCHEMA_VERSION.into(),
        created_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        tool: tool_info(),
        engines: EngineRecords { rust: side_a_record(a), reference: side_b_record(b) },
        settings: Settings {
            n_ctx: model.n_ctx(),
            max_tokens: args.max_tokens,
            continue_tokens,
            ids_from: args.ids_from.map(|s| format!("{s:?}").to_lowercase()),
            add_bos: true,
            parse_special: false,
            thresholds: outcome.thresholds.clone(),
            shard: plans.shard.clone(),
            mode: outcome.mode.mode.name().into(),
            batch: outcome.mode.sizes().map(|(b, _)| b),
            ubatch: outcome.mode.sizes().map(|(_, u)| u),
        },
        model: facts.info.clone(),
        tokenizer: TokenizerAgreement {
            agree: plans.mismatches.is_empty(),
            prompts_checked: plans.cases.len(),
            mismatches: plans.mismatches.clone(),
            corpus: plans.corpus.take(),
        },
        cases: std::mem::take(&mut outcome.cases),
        summary: outcome.summary.clone(),
        hazards: hazards.collect(),
        verdict: receipt::Verdict { status: String::new(), reasons: Vec::new() },
        timings: Timings {
            wall_s: wall.elapsed().as_secs_f64(),
            rust: EngineTiming {
                load_s: engines.load_s[0],
                eval_s: outcome.eval_s[0],
                tokens: outcome.evaluated,
            },
            reference: EngineTiming {
                load_s: engines.load_s[1],
                eval_s: outcome.eval_s[1],
                tokens: outcome.evaluated,
            },
        },
        run_state: outcome.state.clone(),
        trace: outcome.trace.take(),
        batch_summary: outcome.batch_summary.take(),
        self_consistency: outcome.self_consistency.take(),
    };
    receipt.verdict = verdict::judge(&receipt);
    receipt
}

/// `--save-reference`: side B's logits, kept only when the run completed.
pub(super) fn save_reference(
    saver: Option<SavedWriter>,
    receipt: &Receipt,
    model: &ModelFile,
    outcome: &Outcome,
    ui: &Progress,
) -> Result<(), Failure> {
    let Some(w) = saver else { return Ok(()) };
    if !receipt.run_state.completed {
        w.abandon();
        ui.say("the run did not complete: no reference saved");
        return Ok(());
    }
    let footer = SavedFooter {
        format_version: FORMAT_VERSION,
        schema_version: receipt::SCHEMA_VERSION.into(),
        model_sha256: receipt.model.sha256.clone(),
        model_path: receipt.model.path.clone(),
        n_vocab: model.config.n_vocab,
        reference: receipt.engines.reference.clone(),
        cases: outcome.saved_cases.clone(),
        mode: if outcome.mode.sizes().is_some() { MODE_BATCH } else { MODE_DECODE }.into(),
        batch: outcome.mode.sizes().map(|(b, _)| b),
        ubatch: outcome.mode.sizes().map(|(_, u)| u),
    };
    w.finish(&footer)?;
    Ok(())
}

/// Writes the receipt (atomically) to `out`, when there is one, and prints the table, or the
/// JSON with `--json`.
pub(super) fn write_and_show(
    receipt: &Receipt,
    out: Option<&Path>,
    args: &RunArgs,
    ui: &Progress,
) -> Result<(), Failure> {
    if let Some(out) = out {
        receipt::write_atomic(out, receipt)?;
    }
    ui.done();
    if args.json {
        println!("{}", serde_json::to_string_pretty(receipt).or_exit(Exit::Internal)?);
        // stdout holds the JSON document alone.
        if let Some(out) = out {
            eprintln!("receipt: {}", out.display());
        }
    } else {
        if !args.quiet {
            print!("{}", table::render(receipt, Paint::stdout()));
            if let Some(t) = &receipt.trace {
                print!("{}", crate::trace::render(t));
                if let Some(b) = &t.batch {
                    println!(
                        "trace of a batched run: ubatch at positions {}..{} of a batch of {} (ubatch {}); \
                         side A's tensors from its {} path, side B's from its {} path",
                        b.ubatch_start,
                        b.ubatch_start + b.ubatch_tokens,
                        b.batch,
                        b.ubatch,
                        b.rust_path,
                        b.reference_path
                    );
                }
            }
        }
        if let Some(out) = out {
            println!("receipt: {}", out.display());
        }
    }
    Ok(())
}
