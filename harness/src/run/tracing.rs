//! Stage 4 of a run (`--trace`): at one position, every named tensor of both engines, compared
//! in graph order to find the first operation where they part.

use anyhow::anyhow;

use super::evaluate::Outcome;
use super::sides::Engines;
use super::{ModelFile, RunArgs};
use crate::engine::{self, Engine, EngineResult};
use crate::exit::{Exit, Failure};
use crate::receipt::{Case, Summary};
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
    let target =
        trace_target(when, &outcome.cases, &outcome.summary).map_err(|e| Failure::new(Exit::BadInput, e))?;
    let Some((ci, pos, reason)) = target else { return Ok(None) };
    ui.say(&format!("tracing case {} position {pos} ({reason})…", ci + 1));
    ui.step("tracing");
    let (a, b) = engines.pair();
    let ids = &outcome.cases[ci].token_ids;
    let target = Target { case: ci, pos, reason, min_cosine: args.trace_min_cosine };
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

/// Which position `--trace WHEN` asks for: `(case, position, reason)`.
fn trace_target(
    when: &str,
    cases: &[Case],
    summary: &Summary,
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

/// The position traced, and why.
struct Target {
    case: usize,
    pos: usize,
    reason: &'static str,
    min_cosine: f64,
}

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
    let Target { case, pos, reason, min_cosine } = *target;
    let Some(names) = names_to_compare(a, b, model_ops)? else { return Ok(None) };
    for e in [&mut *a, &mut *b] {
        e.reset(case)?;
        for (p, &t) in ids[..pos].iter().enumerate() {
            engine::eval(e, t, p)?;
        }
    }
    let token = ids[pos];
    let reference = b.eval_traced(token, pos, &names)?;
    let rust = a.eval_traced(token, pos, &names)?;
    let (ops, first_divergent_op, unmatched) = crate::trace::compare(&names, &rust, &reference, min_cosine);
    Ok(Some(Trace {
        case,
        pos,
        token,
        reason: reason.to_string(),
        min_cosine,
        ops,
        first_divergent_op,
        unmatched,
    }))
}
