//! Stage 3 of a run: every position of every case through both engines, compared as it
//! arrives.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use sha2::{Digest, Sha256};

use super::plan::Plan;
use super::sides::Engines;
use super::{ModelFile, RunArgs};
use crate::compare::{argmax, compare_position, summarize};
use crate::engine::saved::{SavedCase, SavedWriter};
use crate::engine::{Engine, EngineError};
use crate::exit::Failure;
use crate::receipt::{self, Case, Position, RunState, Summary, Thresholds};
use crate::report::term::Progress;

/// What the evaluation produced.
pub(super) struct Outcome {
    pub cases: Vec<Case>,
    pub summary: Summary,
    pub thresholds: Thresholds,
    pub state: RunState,
    /// Positions evaluated by both engines.
    pub evaluated: usize,
    /// Seconds each side spent evaluating (A, B).
    pub eval_s: [f64; 2],
    /// What `--save-reference` will write: the cases of side B, and its logits so far.
    pub saved_cases: Vec<SavedCase>,
    pub saver: Option<SavedWriter>,
    /// The layer-by-layer comparison of `--trace` (stage 4), when one was made.
    pub trace: Option<crate::trace::Trace>,
}

/// A position evaluated by both engines whose metrics are still to be computed:
/// `(pos, token, next teacher token, side A logits, side B logits)`.
type Unmeasured = (usize, u32, Option<u32>, Vec<f32>, Vec<f32>);

/// What every case needs from the run.
struct Ctx<'r> {
    model: &'r ModelFile,
    args: &'r RunArgs,
    interrupted: &'r AtomicBool,
    ui: &'r Progress,
}

/// Which side failed, and how: the run stops at the first failure and records it.
enum Stop {
    Interrupted,
    Failed { side: usize, why: String },
}

fn stop(side: usize, e: EngineError, ci: usize, pos: usize) -> Stop {
    match e {
        EngineError::Interrupted => Stop::Interrupted,
        e => Stop::Failed { side, why: format!("{e} (case {}, position {pos})", ci + 1) },
    }
}

/// The thresholds the run records: the defaults, with `--min-cosine`.
pub(super) fn thresholds(args: &RunArgs) -> Thresholds {
    Thresholds {
        min_cosine: args.min_cosine.unwrap_or(Thresholds::default().min_cosine),
        ..Thresholds::default()
    }
}

/// Evaluates every planned position in both engines.
pub(super) fn evaluate(
    engines: &mut Engines<'_>,
    plans: &[Plan],
    model: &ModelFile,
    args: &RunArgs,
    interrupted: &AtomicBool,
    ui: &Progress,
) -> Result<Outcome, Failure> {
    let thresholds = thresholds(args);
    let saver = match &args.save_reference {
        Some(p) => Some(SavedWriter::create(p)?),
        None => None,
    };
    let mut out = Outcome {
        cases: Vec::new(),
        // Replaced once every case is done.
        summary: summarize(std::iter::empty(), thresholds.min_cosine, &|_| None),
        thresholds,
        state: RunState { completed: false, interrupted: false, reference_failure: None, rust_failure: None },
        evaluated: 0,
        eval_s: [0.0; 2],
        saved_cases: Vec::new(),
        saver,
        trace: None,
    };
    let saved_tokens: Option<Vec<Vec<u32>>> =
        engines.saved.as_ref().map(|(_, f)| f.cases.iter().map(|c| c.token_ids.clone()).collect());
    ui.positions(plans.iter().map(|p| p.n_positions as u64).sum());
    for (ci, plan) in plans.iter().enumerate() {
        ui.say(&format!(
            "case {}/{}: {} prompt tokens, {} positions",
            ci + 1,
            plans.len(),
            plan.n_prompt,
            plan.n_positions
        ));
        ui.set_message(&format!("case {}/{}", ci + 1, plans.len()));
        let (a, b) = engines.pair();
        let saved = saved_tokens.as_ref().map(|s| s[ci].as_slice());
        let ctx = Ctx { model, args, interrupted, ui };
        let (case, stopped) = evaluate_case(&ctx, a, b, ci, plan, saved, &mut out)?;
        let done = case.as_ref().is_some_and(|c| c.positions.len() == plan.n_positions) && stopped.is_none();
        out.cases.extend(case);
        match stopped {
            Some(Stop::Interrupted) => out.state.interrupted = true,
            Some(Stop::Failed { side: 0, why }) => out.state.rust_failure = Some(why),
            Some(Stop::Failed { why, .. }) => out.state.reference_failure = Some(why),
            None => {}
        }
        if !done {
            break;
        }
    }
    out.state.completed = out.cases.len() == plans.len()
        && out.cases.iter().zip(plans).all(|(c, p)| c.positions.len() == p.n_positions)
        && out.state.reference_failure.is_none()
        && out.state.rust_failure.is_none()
        && !out.state.interrupted;
    let text = token_text(model);
    out.summary = summarize(
        out.cases.iter().enumerate().flat_map(|(ci, c)| c.positions.iter().map(move |p| (ci, p))),
        out.thresholds.min_cosine,
        &text,
    );
    Ok(out)
}

fn token_text(model: &ModelFile) -> impl Fn(u32) -> Option<String> + '_ {
    |id| Some(String::from_utf8_lossy(&model.tokenizer.token_to_piece(id)).into_owned())
}

/// The logits of one position from both engines. The one computing in another process is
/// started first, so both compute at once and a run costs about the slower engine's time.
fn eval_both<'e>(
    a: &mut (dyn Engine + 'e),
    b: &mut (dyn Engine + 'e),
    token: u32,
    pos: usize,
    eval_s: &mut [f64; 2],
) -> Result<(Vec<f32>, Vec<f32>), (usize, EngineError)> {
    let order: [usize; 2] = if b.runs_elsewhere() && !a.runs_elsewhere() { [1, 0] } else { [0, 1] };
    let sides: [&mut (dyn Engine + 'e); 2] = [a, b];
    let mut started = [Instant::now(); 2];
    for &i in &order {
        started[i] = Instant::now();
        sides[i].start_eval(&[token], pos).map_err(|e| (i, e))?;
    }
    let mut logits: [Vec<f32>; 2] = [Vec::new(), Vec::new()];
    for &i in &order {
        let l = sides[i].finish_eval().map_err(|e| (i, e))?;
        eval_s[i] += sides[i].last_eval_seconds().unwrap_or_else(|| started[i].elapsed().as_secs_f64());
        logits[i] = l;
    }
    let [la, lb] = logits;
    Ok((la, lb))
}

/// One case: both engines reset, then every position, until the plan's end or a failure
/// (no case when an engine cannot even reset).
fn evaluate_case<'e>(
    ctx: &Ctx<'_>,
    a: &mut (dyn Engine + 'e),
    b: &mut (dyn Engine + 'e),
    ci: usize,
    plan: &Plan,
    saved: Option<&[u32]>,
    out: &mut Outcome,
) -> Result<(Option<Case>, Option<Stop>), Failure> {
    let Ctx { model, args, interrupted, ui } = *ctx;
    let mut ids = plan.ids.clone();
    let mut positions: Vec<Position> = Vec::with_capacity(plan.n_positions);
    let (mut a_hash, mut b_hash) = (Sha256::new(), Sha256::new());
    for (side, e) in [&mut *a, &mut *b].into_iter().enumerate() {
        if let Err(e) = e.reset(ci) {
            return Ok((None, Some(stop(side, e, ci, 0))));
        }
    }
    let mut stopped = None;
    // Side B's greedy choice at the previous position (continuation tokens).
    let mut prev_argmax: Option<u32> = None;
    // The last evaluated position, whose metrics are computed during the next evaluation.
    let mut unmeasured: Option<Unmeasured> = None;
    let mut hash_bytes: Vec<u8> = Vec::new();
    for pos in 0..plan.n_positions {
        if stopped.is_some() {
            break;
        }
        if interrupted.load(Ordering::Relaxed) {
            stopped = Some(Stop::Interrupted);
            break;
        }
        // Continuation tokens: side B's greedy choice at the previous position (a saved
        // reference: the tokens it saved, which were that choice).
        if pos >= ids.len() {
            match saved.map_or(prev_argmax, |s| s.get(pos).copied()) {
                Some(t) => ids.push(t),
                None => break,
            }
        }
        let token = ids[pos];
        let (la, lb) = match eval_both(a, b, token, pos, &mut out.eval_s) {
            Ok(l) => l,
            Err((side, e)) => {
                stopped = Some(stop(side, e, ci, pos));
                break;
            }
        };
        // The previous position's metrics (cheap next to an evaluation, but not free on a
        // 128k vocabulary).
        if let Some((p, tok, next, ra, rb)) = unmeasured.take() {
            positions.push(compare_position(p, tok, next, &ra, &rb));
        }
        out.evaluated += 1;
        for (hash, logits) in [(&mut a_hash, &la[..]), (&mut b_hash, &lb[..])] {
            // Digest of the f32 logits, little-endian, hashed in one piece.
            hash_bytes.clear();
            hash_bytes.extend(logits.iter().flat_map(|v| v.to_le_bytes()));
            hash.update(&hash_bytes);
        }
        if let Some(Err(e)) = out.saver.as_mut().map(|w| w.push_logits(&lb)) {
            // Leave no half-written file behind (a full disk, typically).
            if let Some(w) = out.saver.take() {
                w.abandon();
            }
            return Err(e.into());
        }
        prev_argmax = Some(argmax(&lb) as u32);
        // The teacher token that follows (for Δp): known for prompt positions; after the
        // prompt, side B's greedy choice (or the saved token).
        let next = match ids.get(pos + 1) {
            Some(&n) => Some(n),
            None if pos + 1 < plan.n_positions => saved.map_or(prev_argmax, |s| s.get(pos + 1).copied()),
            None => None,
        };
        unmeasured = Some((pos, token, next, la, lb));
        ui.inc(1);
        if !args.quiet && !ui.visible() && (pos + 1) % 64 == 0 {
            eprintln!("  {}/{} positions", pos + 1, plan.n_positions);
        }
    }
    if let Some((p, tok, next, ra, rb)) = unmeasured.take() {
        positions.push(compare_position(p, tok, next, &ra, &rb));
    }
    let text = token_text(model);
    let summary = summarize(positions.iter().map(|p| (ci, p)), out.thresholds.min_cosine, &text);
    out.saved_cases.push(SavedCase {
        prompt: plan.prompt.clone(),
        token_ids: ids.clone(),
        n_prompt_tokens: plan.n_prompt,
        n_positions: positions.len(),
    });
    let case = Some(Case {
        prompt: plan.prompt.clone(),
        token_texts: Some(
            ids.iter().map(|&t| receipt::piece_text(&model.tokenizer.token_to_piece(t))).collect(),
        ),
        token_ids: ids,
        n_prompt_tokens: plan.n_prompt,
        rust_logits_sha256: hex(&a_hash.finalize()),
        reference_logits_sha256: hex(&b_hash.finalize()),
        positions,
        summary,
    });
    Ok((case, stopped))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
