//! Stage 3 in a batched run (`--mode batch|both`): each case fed to both engines in batches of
//! `--batch` tokens at increasing positions (each engine splits them into ubatches of
//! `--ubatch`), logits at every position, compared exactly as decode compares them. With
//! `--mode both` the case is decoded first (which also generates any `--continue` tokens), then
//! batched, and each engine's batch logits are held against its own decode logits.

use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::anyhow;

use super::evaluate::{evaluate_case, stop, token_text, Ctx, Outcome, Stop};
use super::measure::{Batch, Measurer};
use super::plan::Plan;
use super::RunMode;
use crate::compare::summarize;
use crate::engine::saved::SavedCase;
use crate::engine::{Engine, EngineError};
use crate::exit::{Exit, Failure};
use crate::receipt::{self, BatchCase, Case, SelfConsistency};

/// What evaluating a case in the run's mode gave, and why it stopped early if it did.
pub(super) enum Evaluated {
    /// A finished case (none when an engine could not even reset); boxed, a case is large.
    Case(Option<Box<Case>>, Option<Stop>),
    /// `--mode batch`: a case whose metrics the measuring thread is still computing while the
    /// engines go on to the next case; [`Waiting::finish`] makes it a case.
    Waiting(Waiting, Option<Stop>),
}

/// A batched case evaluated, its metrics not collected yet.
pub(super) struct Waiting {
    ci: usize,
    prompt: String,
    ids: Vec<u32>,
    n_prompt: usize,
    /// Positions both engines evaluated.
    pub evaluated: usize,
}

impl Waiting {
    /// The case, with the metrics [`Measurer`] computed for it (the oldest case it holds).
    pub fn finish(self, ctx: &Ctx<'_>, measurer: &Measurer, out: &Outcome) -> Result<Case, Failure> {
        let pass = measurer.pass()?;
        let text = token_text(ctx.model);
        let summary =
            summarize(pass.positions.iter().map(|p| (self.ci, p)), out.thresholds.min_cosine, &text);
        let [rust_logits_sha256, reference_logits_sha256] = pass.hashes;
        Ok(Case {
            prompt: self.prompt,
            token_texts: Some(
                self.ids
                    .iter()
                    .map(|&t| receipt::piece_text(&ctx.model.tokenizer.token_to_piece(t)))
                    .collect(),
            ),
            token_ids: self.ids,
            n_prompt_tokens: self.n_prompt,
            rust_logits_sha256,
            reference_logits_sha256,
            positions: pass.positions,
            summary,
            batch: None,
            self_consistency: None,
        })
    }
}

/// One case as the run's mode evaluates it (`plan.index` names it); batches go to `measurer`.
pub(super) fn evaluate_case_in_mode<'e>(
    ctx: &Ctx<'_>,
    a: &mut (dyn Engine + 'e),
    b: &mut (dyn Engine + 'e),
    plan: &Plan,
    saved: Option<&[u32]>,
    out: &mut Outcome,
    measurer: &Measurer,
) -> Result<Evaluated, Failure> {
    let ci = plan.index;
    match ctx.mode.mode {
        RunMode::Decode => {
            let (case, stopped) = evaluate_case(ctx, a, b, ci, plan, saved, out)?;
            Ok(Evaluated::Case(case.map(Box::new), stopped))
        }
        RunMode::Batch => {
            let ids = batch_ids(plan, saved)?;
            let input = CaseInput { ci, ids: &ids, n_positions: plan.n_positions, decoded: None };
            let (evaluated, stopped) = batch_pass(ctx, a, b, input, out, measurer)?;
            let Some(evaluated) = evaluated else { return Ok(Evaluated::Case(None, stopped)) };
            out.saved_cases.push(SavedCase {
                prompt: plan.prompt.clone(),
                token_ids: ids.clone(),
                n_prompt_tokens: plan.n_prompt,
                n_positions: evaluated,
            });
            let waiting =
                Waiting { ci, prompt: plan.prompt.clone(), ids, n_prompt: plan.n_prompt, evaluated };
            Ok(Evaluated::Waiting(waiting, stopped))
        }
        RunMode::Both => {
            out.decode_rows = Some(Vec::new());
            let decoded = evaluate_case(ctx, a, b, ci, plan, saved, out);
            let rows = out.decode_rows.take().unwrap_or_default();
            let (case, stopped) = decoded?;
            let Some(mut case) = case else { return Ok(Evaluated::Case(None, stopped)) };
            if stopped.is_some() || case.positions.len() < plan.n_positions {
                return Ok(Evaluated::Case(Some(Box::new(case)), stopped));
            }
            // The decode pass fixed every token, continuation included.
            let ids = case.token_ids[..plan.n_positions].to_vec();
            let input = CaseInput { ci, ids: &ids, n_positions: plan.n_positions, decoded: Some(rows) };
            let (evaluated, stopped) = batch_pass(ctx, a, b, input, out, measurer)?;
            if evaluated.is_some() {
                // The next case starts with a decode pass, which computes its own metrics as
                // it goes: these are collected now.
                let pass = measurer.pass()?;
                let text = token_text(ctx.model);
                let min = out.thresholds.min_cosine;
                let summary = summarize(pass.positions.iter().map(|p| (ci, p)), min, &text);
                let [sa, sb] = pass.self_positions;
                case.self_consistency = Some(SelfConsistency {
                    rust: summarize(sa.iter().map(|p| (ci, p)), min, &text),
                    reference: summarize(sb.iter().map(|p| (ci, p)), min, &text),
                });
                for (all, side) in out.self_positions.iter_mut().zip([sa, sb]) {
                    all.extend(side.into_iter().map(|p| (ci, p)));
                }
                let [rust_logits_sha256, reference_logits_sha256] = pass.hashes;
                case.batch = Some(BatchCase {
                    rust_logits_sha256,
                    reference_logits_sha256,
                    positions: pass.positions,
                    summary,
                });
            }
            Ok(Evaluated::Case(Some(Box::new(case)), stopped))
        }
    }
}

/// `--mode both`: the batched comparison and the self-consistency over every case.
pub(super) fn summarize_both(out: &mut Outcome, plans: &[Plan], text: &dyn Fn(u32) -> Option<String>) {
    if out.mode.mode != RunMode::Both {
        return;
    }
    let min = out.thresholds.min_cosine;
    let batched = out.cases.iter().zip(plans).filter_map(|(c, plan)| Some((plan.index, c.batch.as_ref()?)));
    out.batch_summary =
        Some(summarize(batched.flat_map(|(ci, b)| b.positions.iter().map(move |p| (ci, p))), min, text));
    let [sa, sb] = &out.self_positions;
    out.self_consistency = Some(SelfConsistency {
        rust: summarize(sa.iter().map(|(ci, p)| (*ci, p)), min, text),
        reference: summarize(sb.iter().map(|(ci, p)| (*ci, p)), min, text),
    });
}

/// The tokens of a batched case: all known before it starts (the prompt, or the tokens a saved
/// reference holds); continuation tokens come from decoding (`--mode both`).
fn batch_ids(plan: &Plan, saved: Option<&[u32]>) -> Result<Vec<u32>, Failure> {
    let mut ids = plan.ids.clone();
    if ids.len() < plan.n_positions {
        if let Some(s) = saved.filter(|s| s.len() >= plan.n_positions) {
            ids.extend_from_slice(&s[ids.len()..plan.n_positions]);
        }
    }
    if ids.len() < plan.n_positions {
        return Err(Failure::new(
            Exit::BadInput,
            anyhow!(
                "prompt {}: {} positions asked, {} tokens known; --mode batch compares known tokens \
                 (use --mode both to generate a continuation)",
                plan.index + 1,
                plan.n_positions,
                ids.len()
            ),
        ));
    }
    Ok(ids)
}

/// A case for [`batch_pass`].
struct CaseInput<'c> {
    ci: usize,
    ids: &'c [u32],
    n_positions: usize,
    /// `--mode both`: both sides' decode logits of every position.
    decoded: Option<Vec<[Vec<f32>; 2]>>,
}

/// One case in batches: both engines reset, then batch after batch, each handed to `measurer`
/// as it arrives, until the case's end or a failure. Returns how many positions both engines
/// evaluated; none when an engine cannot even reset (then nothing was handed over).
fn batch_pass<'e>(
    ctx: &Ctx<'_>,
    a: &mut (dyn Engine + 'e),
    b: &mut (dyn Engine + 'e),
    case: CaseInput<'_>,
    out: &mut Outcome,
    measurer: &Measurer,
) -> Result<(Option<usize>, Option<Stop>), Failure> {
    let CaseInput { ci, ids, n_positions, decoded } = case;
    for (side, e) in [&mut *a, &mut *b].into_iter().enumerate() {
        if let Err(e) = e.reset(ci) {
            return Ok((None, Some(stop(side, e, ci, 0))));
        }
    }
    let n_vocab = a.n_vocab();
    let mut decoded = decoded.unwrap_or_default().into_iter();
    let mut stopped = None;
    let (mut start, mut ended) = (0, false);
    while start < n_positions {
        if ctx.interrupted.load(Ordering::Relaxed) {
            stopped = Some(Stop::Interrupted);
            break;
        }
        let end = (start + ctx.mode.batch).min(n_positions);
        let logits = match eval_batch_both(a, b, &ids[start..end], start, &mut out.eval_s) {
            Ok(rows) => rows,
            Err((side, e)) => {
                stopped = Some(stop(side, e, ci, start));
                break;
            }
        };
        for row in logits[1].chunks_exact(n_vocab) {
            out.save_logits(row)?;
        }
        let n = end - start;
        let batch = Batch {
            start,
            tokens: ids[start..(end + 1).min(ids.len())].to_vec(),
            n,
            logits,
            decoded: decoded.by_ref().take(n).collect(),
        };
        ended = end == n_positions;
        measurer.send(batch, ended)?;
        out.evaluated += n;
        for _ in 0..n {
            ctx.ui.position_done();
        }
        start = end;
    }
    if !ended {
        measurer.end_case()?;
    }
    Ok((Some(start), stopped))
}

/// The logits of every position of one batch from both engines (side B first when it computes
/// in another process); an engine without a batched path is a failure of that side.
fn eval_batch_both<'e>(
    a: &mut (dyn Engine + 'e),
    b: &mut (dyn Engine + 'e),
    tokens: &[u32],
    pos: usize,
    eval_s: &mut [f64; 2],
) -> Result<[Vec<f32>; 2], (usize, EngineError)> {
    let order: [usize; 2] = if b.runs_elsewhere() && !a.runs_elsewhere() { [1, 0] } else { [0, 1] };
    let mut sides: [&mut (dyn Engine + 'e); 2] = [a, b];
    let mut rows: [Vec<f32>; 2] = [Vec::new(), Vec::new()];
    // A side in another process is started first and computes while the other one does.
    let first = order[0];
    let t0 = Instant::now();
    let split = sides[first].runs_elsewhere()
        && sides[first].start_eval_batch(tokens, pos).map_err(|e| (first, e))?;
    // Started: the other side computes, then the started one is collected.
    let sequence = if split { [order[1], first] } else { order };
    for i in sequence {
        let e = &mut sides[i];
        let t = if i == first { t0 } else { Instant::now() };
        let logits = if split && i == first {
            Some(e.finish_eval_batch().map_err(|err| (i, err))?)
        } else {
            e.eval_batch(tokens, pos).map_err(|err| (i, err))?
        };
        let logits = logits.ok_or_else(|| {
            let why = format!(
                "{} has no batched path (--mode batch|both needs one; an external engine announces \
                 the `batch` capability)",
                e.identity().label()
            );
            (i, EngineError::Failed(why))
        })?;
        if logits.len() != tokens.len() * e.n_vocab() {
            let why = format!(
                "{} answered a batch of {} tokens with {} logits",
                e.identity().label(),
                tokens.len(),
                logits.len()
            );
            return Err((i, EngineError::Protocol(why)));
        }
        eval_s[i] += e.last_eval_seconds().unwrap_or_else(|| t.elapsed().as_secs_f64());
        rows[i] = logits;
    }
    Ok(rows)
}
