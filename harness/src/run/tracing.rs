//! Stage 4 of a run (`--trace`): at one position, every named tensor of both engines, compared
//! in graph order to find the first operation where they part.

use anyhow::anyhow;

use super::evaluate::Outcome;
use super::sides::Engines;
use super::{ModelFile, RunArgs, RunMode};
use crate::engine::{self, Engine, EngineResult};
use crate::exit::{Exit, Failure};
use crate::receipt::{Case, Summary, TraceBatch};
use crate::report::term::Progress;
use crate::trace::Trace;

/// The trace `--trace` asks for, or `None` (not asked, nothing to trace, or an engine that does
/// not trace: a warning says which).
pub(super) fn trace(
    args: &RunArgs,
    model: &ModelFile,
    engines: &mut Engines<'_>,
    outcome: &Outcome,
    ui: &Progress,
) -> Result<Option<Trace>, Failure> {
    let Some(when) = &args.trace else { return Ok(None) };
    if engines.saved.is_some() {
        ui.say("warning: --trace needs the live reference; a saved reference holds only logits");
        return Ok(None);
    }
    let cases = Cases { cases: &outcome.cases, indices: &outcome.indices, sharded: args.shard.is_some() };
    let target = trace_target(when, &cases, &outcome.summary).map_err(|e| Failure::new(Exit::BadInput, e))?;
    // `ci`: the case's place in `outcome.cases`; the trace names it by its global index.
    let Some((ci, pos, reason)) = target else { return Ok(None) };
    let case = outcome.indices[ci];
    ui.say(&format!("tracing case {} position {pos} ({reason})…", case + 1));
    ui.step("tracing");
    let (a, b) = engines.pair();
    let ids = &outcome.cases[ci].token_ids;
    // A batched run traces the batched path (`--mode both` traces decode, as `cases` compare).
    let batch = match outcome.mode.mode {
        RunMode::Batch => outcome.mode.sizes(),
        _ => None,
    };
    let n_positions = outcome.cases[ci].positions.len();
    let target = Target { case, pos, reason, min_cosine: args.trace_min_cosine, batch, n_positions };
    match trace_position(a, b, ids, &model.op_names, &target) {
        Ok(Some(t)) => Ok(Some(t)),
        Ok(None) => {
            ui.say("warning: --trace needs two engines that trace; one of these does not");
            Ok(None)
        }
        Err(e) => {
            ui.say(&format!("warning: trace failed: {e}"));
            Ok(None)
        }
    }
}

/// The cases evaluated, with the global index of each (`--shard` evaluates only some).
struct Cases<'o> {
    cases: &'o [Case],
    indices: &'o [usize],
    sharded: bool,
}

/// Which position `--trace WHEN` asks for: `(case's place in cases, position, reason)`. A
/// shard traces its own first divergence (`harness merge` keeps the whole run's); a `CASE:POS`
/// of another shard is not this shard's to trace.
fn trace_target(
    when: &str,
    run: &Cases<'_>,
    summary: &Summary,
) -> anyhow::Result<Option<(usize, usize, &'static str)>> {
    let Cases { cases, indices, sharded } = *run;
    let local = |global: usize| indices.iter().position(|&g| g == global);
    let divergence =
        summary.first_divergence.as_ref().and_then(|d| Some((local(d.case)?, d.pos, "first_divergence")));
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
            let global = c.checked_sub(1);
            if sharded && global.is_some_and(|g| local(g).is_none()) {
                return Ok(None);
            }
            let case = global.and_then(local).map(|i| (i, &cases[i]));
            match case {
                Some((i, case)) if p < case.positions.len() => Ok(Some((i, p, "requested"))),
                _ => Err(anyhow!("--trace {spec}: no such case and position in this run")),
            }
        }
    }
}

/// The position traced, and why.
struct Target {
    case: usize,
    pos: usize,
    reason: &'static str,
    min_cosine: f64,
    /// `(batch, ubatch)` in a batched run.
    batch: Option<(usize, usize)>,
    /// Positions of the case (the last batch may be shorter).
    n_positions: usize,
}

/// The ubatch that holds a traced position in a batched run: `[start, end)`, inside the batch
/// that starts at `batch_start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    batch_start: usize,
    start: usize,
    end: usize,
}

fn window(pos: usize, (batch, ubatch): (usize, usize), n_positions: usize) -> Window {
    let batch_start = pos / batch * batch;
    let start = batch_start + (pos - batch_start) / ubatch * ubatch;
    let end = (start + ubatch).min(batch_start + batch).min(n_positions.max(pos + 1));
    Window { batch_start, start, end }
}

/// One side's tensors at the target position, and the path they came from. In a batched run:
/// the positions before the position's ubatch replayed as the run fed them (whole batches,
/// then the start of its batch as one batch, which splits into the same ubatches), then that
/// ubatch alone, captured, the position's row sliced out (`batch`). An engine that cannot trace
/// its batched path (or has none) is replayed one token at a time and traced so (`decode`).
fn side_tensors(e: &mut dyn Engine, ids: &[u32], names: &[String], target: &Target) -> TracedSide {
    let Target { case, pos, .. } = *target;
    if let Some(sizes) = target.batch {
        let w = window(pos, sizes, target.n_positions);
        e.reset(case)?;
        let mut spans: Vec<(usize, usize)> =
            (0..w.batch_start).step_by(sizes.0).map(|p| (p, (p + sizes.0).min(w.batch_start))).collect();
        if w.start > w.batch_start {
            spans.push((w.batch_start, w.start));
        }
        let mut batched = true;
        for (from, to) in spans {
            if e.eval_batch(&ids[from..to], from)?.is_none() {
                batched = false;
                break;
            }
        }
        if batched {
            if let Some(t) = e.eval_batch_traced(&ids[w.start..w.end], w.start, pos - w.start, names)? {
                return Ok((t, "batch"));
            }
        }
    }
    e.reset(case)?;
    for (p, &t) in ids[..pos].iter().enumerate() {
        engine::eval(e, t, p)?;
    }
    Ok((e.eval_traced(ids[pos], pos, names)?, "decode"))
}

/// Named tensors of one side, and the path (`batch`, `decode`) they came from.
type TracedSide = EngineResult<(Vec<(String, Vec<f32>)>, &'static str)>;

/// The names to compare, in graph order: side A's list, else side B's; when both report
/// whatever they compute (two bitnet.cpp builds), the model's own list (`model_ops`).
fn names_to_compare(
    a: &mut dyn Engine,
    b: &mut dyn Engine,
    model_ops: &[String],
) -> EngineResult<Option<Vec<String>>> {
    Ok(match (a.trace_names()?, b.trace_names()?) {
        (Some(na), _) if !na.is_empty() => Some(na),
        (Some(_), Some(nb)) if !nb.is_empty() => Some(nb),
        (Some(_), Some(_)) => Some(model_ops.to_vec()),
        _ => None,
    })
}

/// Replays `ids[..pos]` in both engines, then captures every traced tensor at `pos`; `None`
/// when an engine does not trace.
fn trace_position<'e>(
    a: &mut (dyn Engine + 'e),
    b: &mut (dyn Engine + 'e),
    ids: &[u32],
    model_ops: &[String],
    target: &Target,
) -> anyhow::Result<Option<Trace>> {
    let Target { case, pos, reason, min_cosine, .. } = *target;
    let Some(names) = names_to_compare(a, b, model_ops)? else { return Ok(None) };
    let token = ids[pos];
    let (reference, reference_path) = side_tensors(b, ids, &names, target)?;
    let (rust, rust_path) = side_tensors(a, ids, &names, target)?;
    let (ops, first_divergent_op, unmatched) = crate::trace::compare(&names, &rust, &reference, min_cosine);
    let batch = target.batch.map(|(batch, ubatch)| {
        let w = window(pos, (batch, ubatch), target.n_positions);
        TraceBatch {
            batch,
            ubatch,
            ubatch_start: w.start,
            ubatch_tokens: w.end - w.start,
            rust_path: rust_path.into(),
            reference_path: reference_path.into(),
        }
    });
    Ok(Some(Trace {
        case,
        pos,
        token,
        reason: reason.to_string(),
        min_cosine,
        ops,
        first_divergent_op,
        unmatched,
        batch,
    }))
}

#[cfg(test)]
mod tests {
    use super::{window, Window};

    #[test]
    fn the_traced_ubatch_is_the_one_the_run_fed() {
        // Batches of 7 in ubatches of 3: position 12 is in batch 7..14, ubatch 10..13.
        assert_eq!(window(12, (7, 3), 20), Window { batch_start: 7, start: 10, end: 13 });
        // The last ubatch of a batch is shorter; so is the last batch of a case.
        assert_eq!(window(13, (7, 3), 20), Window { batch_start: 7, start: 13, end: 14 });
        assert_eq!(window(19, (7, 3), 20), Window { batch_start: 14, start: 17, end: 20 });
        assert_eq!(window(0, (512, 512), 5), Window { batch_start: 0, start: 0, end: 5 });
    }
}
