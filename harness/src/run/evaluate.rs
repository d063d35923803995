//! Stage 3 of a run: every position of every case through both engines, compared as it
//! arrives.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use sha2::{Digest, Sha256};

use super::identity::hex;

use super::batched::Evaluated;
use super::measure::Measurer;
use super::plan::Plan;
use super::sides::Engines;
use super::{batched, ModeChoice, ModelFile, RunArgs, RunMode};
use crate::compare::{argmax, compare_position, summarize};
use crate::engine::saved::{SavedCase, SavedWriter};
use crate::engine::{Engine, EngineError};
use crate::exit::Failure;
use crate::receipt::{self, Case, Position, RunState, SelfConsistency, Summary, Thresholds};
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
    /// The index of each of `cases` among every prompt of the run (`Plan::index`; with
    /// `--shard`, not its place in `cases`).
    pub indices: Vec<usize>,
    /// The mode the cases were evaluated in, with its batch sizes.
    pub mode: ModeChoice,
    /// `--mode both`: the batched comparison over every case, and each side's batch logits
    /// against its decode logits (`(case, position)` pairs, summarized at the end).
    pub batch_summary: Option<Summary>,
    pub self_positions: [Vec<(usize, Position)>; 2],
    pub self_consistency: Option<SelfConsistency>,
    /// `--mode both`: while a case is decoded, both sides' logits of every position, for the
    /// batched pass to hold its own against (`None` otherwise).
    pub decode_rows: Option<Vec<[Vec<f32>; 2]>>,
}

/// A position evaluated by both engines whose metrics are still to be computed:
/// `(pos, token, next teacher token, side A logits, side B logits)`.
type Unmeasured = (usize, u32, Option<u32>, Vec<f32>, Vec<f32>);

/// What every case needs from the run.
pub(super) struct Ctx<'r> {
    pub model: &'r ModelFile,
    pub interrupted: &'r AtomicBool,
    pub ui: &'r Progress,
    pub mode: ModeChoice,
}

/// Which side failed, and how: the run stops at the first failure and records it.
pub(super) enum Stop {
    Interrupted,
    Failed { side: usize, why: String },
}

pub(super) fn stop(side: usize, e: EngineError, ci: usize, pos: usize) -> Stop {
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
        indices: plans.iter().map(|p| p.index).collect(),
        mode: ModeChoice::from_args(args)?,
        batch_summary: None,
        self_positions: [Vec::new(), Vec::new()],
        self_consistency: None,
        decode_rows: None,
    };
    let saved_tokens: Option<Vec<Vec<u32>>> =
        engines.saved.as_ref().map(|(_, f)| f.cases.iter().map(|c| c.token_ids.clone()).collect());
    let passes = if out.mode.mode == RunMode::Both { 2 } else { 1 };
    ui.positions(passes * plans.iter().map(|p| p.n_positions as u64).sum::<u64>());
    // Batched metrics are computed on a thread of their own while the engines evaluate on
    // (`measure`); the scope ends it with the evaluation.
    std::thread::scope(|scope| {
        let measurer = Measurer::start(scope);
        // A batched case whose metrics are still being computed.
        let mut waiting: Option<batched::Waiting> = None;
        for (ci, plan) in plans.iter().enumerate() {
            ui.case(ci + 1, plans.len(), plan.n_prompt, plan.n_positions);
            let (a, b) = engines.pair();
            let saved = saved_tokens.as_ref().map(|s| s[plan.index].as_slice());
            let ctx = Ctx { model, interrupted, ui, mode: out.mode };
            // Case indices in the receipt are global (the same with or without `--shard`).
            let evaluated = batched::evaluate_case_in_mode(&ctx, a, b, plan, saved, &mut out, &measurer)?;
            // The previous case was measured while this one was evaluated.
            if let Some(w) = waiting.take() {
                let case = w.finish(&ctx, &measurer, &out)?;
                out.cases.push(case);
            }
            let (done, stopped) = match evaluated {
                Evaluated::Case(case, stopped) => {
                    let done = case.as_ref().is_some_and(|c| c.positions.len() == plan.n_positions);
                    out.cases.extend(case.map(|c| *c));
                    (done && stopped.is_none(), stopped)
                }
                Evaluated::Waiting(w, stopped) => {
                    let done = w.evaluated == plan.n_positions && stopped.is_none();
                    waiting = Some(w);
                    (done, stopped)
                }
            };
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
        if let Some(w) = waiting.take() {
            let ctx = Ctx { model, interrupted, ui, mode: out.mode };
            let case = w.finish(&ctx, &measurer, &out)?;
            out.cases.push(case);
        }
        Ok::<(), Failure>(())
    })?;
    out.state.completed = out.cases.len() == plans.len()
        && out.cases.iter().zip(plans).all(|(c, p)| c.positions.len() == p.n_positions)
        && out.state.reference_failure.is_none()
        && out.state.rust_failure.is_none()
        && !out.state.interrupted;
    let text = token_text(model);
    out.summary = summarize(
        out.cases.iter().zip(plans).flat_map(|(c, plan)| c.positions.iter().map(move |p| (plan.index, p))),
        out.thresholds.min_cosine,
        &text,
    );
    batched::summarize_both(&mut out, plans, &text);
    Ok(out)
}

pub(super) fn token_text(model: &ModelFile) -> impl Fn(u32) -> Option<String> + '_ {
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
pub(super) fn evaluate_case<'e>(
    ctx: &Ctx<'_>,
    a: &mut (dyn Engine + 'e),
    b: &mut (dyn Engine + 'e),
    ci: usize,
    plan: &Plan,
    saved: Option<&[u32]>,
    out: &mut Outcome,
) -> Result<(Option<Case>, Option<Stop>), Failure> {
    let Ctx { model, interrupted, ui, .. } = *ctx;
    let mut ids = plan.ids.clone();
    let mut positions: Vec<Position> = Vec::with_capacity(plan.n_positions);
    let mut digests = LogitDigests::new();
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
        digests.add([&la, &lb]);
        out.save_logits(&lb)?;
        prev_argmax = Some(argmax(&lb) as u32);
        // The teacher token that follows (for Δp): known for prompt positions; after the
        // prompt, side B's greedy choice (or the saved token).
        let next = match ids.get(pos + 1) {
            Some(&n) => Some(n),
            None if pos + 1 < plan.n_positions => saved.map_or(prev_argmax, |s| s.get(pos + 1).copied()),
            None => None,
        };
        if let Some(rows) = out.decode_rows.as_mut() {
            rows.push([la.clone(), lb.clone()]);
        }
        unmeasured = Some((pos, token, next, la, lb));
        ui.position_done();
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
    let [rust_logits_sha256, reference_logits_sha256] = digests.finish();
    let case = Some(Case {
        prompt: plan.prompt.clone(),
        token_texts: Some(
            ids.iter().map(|&t| receipt::piece_text(&model.tokenizer.token_to_piece(t))).collect(),
        ),
        token_ids: ids,
        n_prompt_tokens: plan.n_prompt,
        rust_logits_sha256,
        reference_logits_sha256,
        positions,
        summary,
        batch: None,
        self_consistency: None,
    });
    Ok((case, stopped))
}

/// The sha256 of each side's logits over a case: every position's f32 values, little-endian,
/// one position after the other.
pub(super) struct LogitDigests {
    /// Side A's, side B's.
    pub sides: [LogitDigest; 2],
}

impl LogitDigests {
    pub fn new() -> LogitDigests {
        LogitDigests { sides: [LogitDigest::new(), LogitDigest::new()] }
    }

    /// Adds one position's logits of sides A and B.
    pub fn add(&mut self, logits: [&[f32]; 2]) {
        for (side, logits) in self.sides.iter_mut().zip(logits) {
            side.add(logits);
        }
    }

    /// The two digests, as lowercase hex.
    pub fn finish(self) -> [String; 2] {
        self.sides.map(LogitDigest::finish)
    }
}

/// The sha256 of one side's logits (see [`LogitDigests`]).
pub(super) struct LogitDigest {
    hash: Sha256,
    /// One position's bytes, hashed in one piece (reused).
    bytes: Vec<u8>,
}

impl LogitDigest {
    fn new() -> LogitDigest {
        LogitDigest { hash: Sha256::new(), bytes: Vec::new() }
    }

    /// Adds one position's logits.
    pub fn add(&mut self, logits: &[f32]) {
        self.bytes.clear();
        self.bytes.extend(logits.iter().flat_map(|v| v.to_le_bytes()));
        self.hash.update(&self.bytes);
    }

    fn finish(self) -> String {
        hex(&self.hash.finalize())
    }
}

impl Outcome {
    /// Appends side B's logits of one position to `--save-reference`'s file, if any; on a
    /// failure (a full disk, typically) the half-written file is removed.
    pub(super) fn save_logits(&mut self, logits: &[f32]) -> Result<(), Failure> {
        if let Some(Err(e)) = self.saver.as_mut().map(|w| w.push_logits(logits)) {
            if let Some(w) = self.saver.take() {
                w.abandon();
            }
            return Err(e.into());
        }
        Ok(())
    }
}
