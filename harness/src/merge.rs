//! `harness merge`: the receipts of a run split across machines (`run --shard I/N`) put back
//! together into the receipt of the whole run.
//!
//! The merged receipt is what one machine running every case would have written, apart from
//! `created_at` and `timings` (`wall_s` and `load_s`: the longest shard's; `eval_s` and
//! `tokens`: the sums): the cases in prompt order, the summary recomputed over every position
//! ([`crate::compare::summarize`]), the verdict judged again ([`crate::run::judge`]), and no
//! `settings.shard`. Shards of different runs are refused, one line naming the file and the
//! field: another model, engine or build, other settings, another prompt list, another schema
//! or harness version. So are a missing shard and a shard given twice.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::anyhow;
use serde_json::Value;

use crate::exit::{Exit, Failure};
use crate::receipt::{self, Case, EngineTiming, Position, Receipt, RunState, Shard, Summary, Timings, Trace};
use crate::schema::{self, Version};

#[derive(Debug, clap::Args)]
pub struct MergeArgs {
    /// The shard receipts (`harness run --shard I/N`), one per shard, in any order.
    #[arg(required = true, value_name = "SHARD")]
    pub shards: Vec<PathBuf>,
    /// Where to write the merged receipt.
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,
    /// Print nothing but errors and the receipt path.
    #[arg(long)]
    pub quiet: bool,
}

/// `harness merge`: the merged receipt written (atomically); exit 2 when the shards do not
/// make one run.
pub fn run(args: &MergeArgs) -> Result<Exit, Failure> {
    crate::files::check_output(&args.out)?;
    let inputs: Vec<&Path> = args.shards.iter().map(PathBuf::as_path).collect();
    crate::files::check_not_input(&args.out, &inputs)?;
    let shards = args.shards.iter().map(|p| read_shard(p)).collect::<Result<Vec<_>, _>>()?;
    let n = shards.len();
    let merged = merge(shards)?;
    receipt::write_atomic(&args.out, &merged)?;
    if !args.quiet {
        println!(
            "merged {n} shards: {} cases, {} positions, verdict {}",
            merged.cases.len(),
            merged.summary.positions,
            merged.verdict.status
        );
    }
    println!("receipt: {}", args.out.display());
    Ok(Exit::Ok)
}

/// A shard's receipt, with the file it came from.
pub struct ShardReceipt {
    pub path: PathBuf,
    pub receipt: Receipt,
    pub shard: Shard,
}

fn refuse(msg: String) -> Failure {
    Failure::new(Exit::BadInput, anyhow!(msg))
}

/// Reads a shard's receipt and checks that it is one: a `settings.shard` whose case list is
/// the one its index, count and total imply, and no more cases than that list.
pub fn read_shard(path: &Path) -> Result<ShardReceipt, Failure> {
    let loaded = schema::load_receipt(path)?;
    let file = path.display();
    if loaded.version > Version::ours() {
        return Err(refuse(format!(
            "{file}: schema_version {} is newer than this harness's {}; merge with the harness that wrote it",
            loaded.version,
            receipt::SCHEMA_VERSION
        )));
    }
    let r = loaded.receipt;
    let Some(shard) = r.settings.shard.clone() else {
        return Err(refuse(format!(
            "{file}: settings.shard: absent (not the receipt of a `run --shard I/N`)"
        )));
    };
    let Shard { index, count, total_cases, .. } = shard;
    // Shard `index` holds cases index-1, index-1+count, ...: so many, in that order.
    let expected = total_cases / count + usize::from(index - 1 < total_cases % count);
    let listed_right = index <= count
        && shard.cases.len() == expected
        && shard.cases.iter().enumerate().all(|(j, &k)| k == index - 1 + j * count);
    if !listed_right {
        return Err(refuse(format!(
            "{file}: settings.shard.cases: not the cases of shard {index}/{count} of a run of {total_cases} cases"
        )));
    }
    let complete = r.run_state.completed && r.cases.len() == shard.cases.len();
    if r.cases.len() > shard.cases.len() || (r.run_state.completed && !complete) {
        return Err(refuse(format!(
            "{file}: cases: {} cases, settings.shard.cases lists {}",
            r.cases.len(),
            shard.cases.len()
        )));
    }
    Ok(ShardReceipt { path: path.to_path_buf(), receipt: r, shard })
}

/// The receipt of the whole run, from the receipts of all its shards (in any order).
pub fn merge(shards: Vec<ShardReceipt>) -> Result<Receipt, Failure> {
    let Some(first) = shards.first() else { return Err(refuse("no shard receipts to merge".into())) };
    for s in &shards[1..] {
        check_same_run(first, s)?;
    }
    check_complete_set(&shards)?;
    // `--mode both` summarizes each engine's batch logits against its decode logits over
    // every position, which the receipt does not keep position by position.
    if let Some(s) = shards.iter().find(|s| s.receipt.self_consistency.is_some()).filter(|_| shards.len() > 1)
    {
        return Err(refuse(format!(
            "{}: self_consistency: cannot be recomputed from shards (its positions are not in the \
             receipt); run `--mode both` unsharded, or shard `--mode batch` and `--mode decode` runs",
            s.path.display()
        )));
    }
    Ok(combine(shards))
}

/// The dotted path of the first place `a` and `b` differ (`""` for the top), with both values.
fn first_difference<'v>(a: &'v Value, b: &'v Value, path: &str) -> Option<(String, &'v Value, &'v Value)> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                let sub = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                match (x.get(k), y.get(k)) {
                    (Some(va), Some(vb)) => first_difference(va, vb, &sub),
                    (va, vb) => Some((sub, va.unwrap_or(&Value::Null), vb.unwrap_or(&Value::Null))),
                }
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (va, vb))| first_difference(va, vb, &format!("{path}[{i}]"))),
        _ => (a != b).then(|| (path.to_string(), a, b)),
    }
}

/// A value for a one-line message: its JSON, cut short.
fn short(v: &Value) -> String {
    let text = v.to_string();
    match text.char_indices().nth(60) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text,
    }
}

/// A receipt part as JSON, for comparison (the receipt types always serialize).
fn json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// The parts of a shard's receipt that every shard of one run shares, each with its dotted
/// path in the receipt: what was run (tool, model, engines, settings but the shard), on which
/// prompts, and what the run found about the model and tokenizers before any case.
fn shared_parts(s: &ShardReceipt, exempt_continue: bool) -> Vec<(&'static str, Value)> {
    let r = &s.receipt;
    let mut model = json(&r.model);
    // The same file may sit at another path on another machine.
    if let Some(m) = model.as_object_mut() {
        m.remove("path");
    }
    let mut settings = json(&r.settings);
    if let Some(m) = settings.as_object_mut() {
        m.remove("shard");
        if exempt_continue {
            m.remove("continue_tokens");
        }
    }
    vec![
        ("schema_version", Value::String(r.schema_version.clone())),
        ("tool", json(&r.tool)),
        ("model.sha256", Value::String(r.model.sha256.clone())),
        ("model", model),
        ("engines", json(&r.engines)),
        ("settings", settings),
        ("settings.shard.count", s.shard.count.into()),
        ("settings.shard.total_cases", s.shard.total_cases.into()),
        ("settings.shard.prompts_sha256", Value::String(s.shard.prompts_sha256.clone())),
        ("hazards", json(&r.hazards)),
        ("tokenizer.corpus", json(&r.tokenizer.corpus)),
    ]
}

/// What a difference in a part means, for the message.
fn meaning(part: &str) -> &'static str {
    match part {
        "model.sha256" | "model" => " (another model)",
        "tool" => " (another harness version or build)",
        "schema_version" => " (another receipt schema)",
        "engines" => " (another engine or build)",
        "settings" | "settings.shard.count" | "settings.shard.total_cases" => " (other settings)",
        "settings.shard.prompts_sha256" => " (other prompts)",
        _ => "",
    }
}

/// A side that replays a saved reference records the continuation it saved (the most any of
/// the shard's cases has), which differs between shards; every other run records `--continue`.
fn replays_saved(r: &Receipt) -> bool {
    r.engines.reference.source.starts_with("saved:")
        || r.engines.rust.build.as_ref().is_some_and(|b| b.source.starts_with("saved:"))
}

/// Refuses `s` unless it is a shard of the same run as `first`: one line naming the file and
/// the first field that differs.
fn check_same_run(first: &ShardReceipt, s: &ShardReceipt) -> Result<(), Failure> {
    let exempt = replays_saved(&first.receipt) || replays_saved(&s.receipt);
    let theirs = shared_parts(s, exempt);
    for ((part, a), (_, b)) in shared_parts(first, exempt).iter().zip(&theirs) {
        let Some((path, va, vb)) = first_difference(a, b, "") else { continue };
        let field = match path.chars().next() {
            None => part.to_string(),
            Some('[') => format!("{part}{path}"),
            Some(_) => format!("{part}.{path}"),
        };
        return Err(refuse(format!(
            "{}: {field} is {} but {} in {}{}",
            s.path.display(),
            short(vb),
            short(va),
            first.path.display(),
            meaning(part)
        )));
    }
    Ok(())
}

/// Every shard of the run once: a shard given twice, or one missing, is one line.
fn check_complete_set(shards: &[ShardReceipt]) -> Result<(), Failure> {
    let count = shards[0].shard.count;
    let mut by_index: BTreeMap<usize, Vec<&Path>> = BTreeMap::new();
    for s in shards {
        by_index.entry(s.shard.index).or_default().push(&s.path);
    }
    if let Some((i, files)) = by_index.iter().find(|(_, f)| f.len() > 1) {
        let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
        return Err(refuse(format!("duplicate shard {i}/{count}: {}", names.join(" and "))));
    }
    let missing: Vec<String> =
        (1..=count).filter(|i| !by_index.contains_key(i)).map(|i| i.to_string()).collect();
    if !missing.is_empty() {
        return Err(refuse(format!(
            "missing shard{} {} of {count} (given: {})",
            if missing.len() > 1 { "s" } else { "" },
            missing.join(", "),
            by_index.keys().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(())
}

/// The merged receipt; the shards are one run's, each once.
fn combine(mut shards: Vec<ShardReceipt>) -> Receipt {
    shards.sort_by_key(|s| s.shard.index);
    let total = shards[0].shard.total_cases;
    let mut by_case: BTreeMap<usize, Case> = BTreeMap::new();
    for s in &mut shards {
        let cases = std::mem::take(&mut s.receipt.cases);
        by_case.extend(s.shard.cases.iter().copied().zip(cases));
    }
    // Cases in prompt order, up to the first a shard did not reach (it stopped early): a run on
    // one machine would have stopped there too.
    let mut cases = Vec::with_capacity(by_case.len());
    for (k, c) in by_case {
        if k != cases.len() {
            break;
        }
        cases.push(c);
    }
    let first = &shards[0].receipt;
    let mut settings = first.settings.clone();
    settings.shard = None;
    settings.continue_tokens = shards.iter().map(|s| s.receipt.settings.continue_tokens).max().unwrap_or(0);
    let min_cosine = settings.thresholds.min_cosine;
    let mut tokenizer = first.tokenizer.clone();
    tokenizer.mismatches = shards.iter().flat_map(|s| s.receipt.tokenizer.mismatches.clone()).collect();
    tokenizer.mismatches.sort_by_key(|m| m.case);
    tokenizer.agree = tokenizer.mismatches.is_empty();
    tokenizer.prompts_checked = shards.iter().map(|s| s.receipt.tokenizer.prompts_checked).sum();
    // What every shard shares (checked) comes from the first; the rest is put together.
    let mut merged = first.clone();
    merged.created_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    merged.settings = settings;
    merged.tokenizer = tokenizer;
    merged.summary = summary(cases.iter().map(|c| (&c.positions, &c.summary)), min_cosine);
    if merged.batch_summary.is_some() {
        let batches = cases.iter().filter_map(|c| c.batch.as_ref()).map(|b| (&b.positions, &b.summary));
        merged.batch_summary = Some(summary(batches, min_cosine));
    }
    merged.run_state = run_state(&shards, cases.len() == total);
    merged.trace = trace(&shards, &merged.summary);
    merged.timings = timings(&shards);
    merged.cases = cases;
    merged.verdict = crate::run::judge(&merged);
    merged
}

/// The summary over every position of every case (`(positions, the case's own summary)`, in
/// case order), as `run` computes it. The first divergence's token texts come from the case's
/// own summary (`run` wrote them with the model's vocabulary).
fn summary<'c>(
    cases: impl Iterator<Item = (&'c Vec<Position>, &'c Summary)> + Clone,
    min_cosine: f64,
) -> Summary {
    let all =
        cases.clone().enumerate().flat_map(|(ci, (positions, _))| positions.iter().map(move |p| (ci, p)));
    let mut summary = crate::compare::summarize(all, min_cosine, &|_| None);
    if let Some(d) = &summary.first_divergence {
        let own = cases.clone().nth(d.case).and_then(|(_, s)| s.first_divergence.clone());
        if own.as_ref().is_some_and(|o| (o.case, o.pos) == (d.case, d.pos)) {
            summary.first_divergence = own;
        }
    }
    summary
}

/// Complete when every shard completed and every case is there; a failure as the first shard
/// (in shard order) that failed recorded it.
fn run_state(shards: &[ShardReceipt], all_cases: bool) -> RunState {
    let states = || shards.iter().map(|s| &s.receipt.run_state);
    RunState {
        completed: all_cases && states().all(|s| s.completed),
        interrupted: states().any(|s| s.interrupted),
        reference_failure: states().find_map(|s| s.reference_failure.clone()),
        rust_failure: states().find_map(|s| s.rust_failure.clone()),
    }
}

/// The trace the whole run would have made: at its first divergence when a shard traced that
/// position; else one a shard made for another reason than a divergence of its own (a
/// requested position, or the last position of the first case when nothing diverged).
fn trace(shards: &[ShardReceipt], summary: &Summary) -> Option<Trace> {
    let traces = || shards.iter().filter_map(|s| s.receipt.trace.as_ref());
    let at = summary.first_divergence.as_ref().map(|d| (d.case, d.pos));
    if let Some(t) = traces().find(|t| t.reason == "first_divergence" && Some((t.case, t.pos)) == at) {
        return Some(t.clone());
    }
    let fallback = |t: &&Trace| match t.reason.as_str() {
        "requested" => true,
        "last_position" => at.is_none() && t.case == 0,
        _ => false,
    };
    traces().find(fallback).cloned()
}

/// `wall_s` and `load_s`: the longest shard's (the shards run at once); `eval_s` and `tokens`:
/// the sums.
fn timings(shards: &[ShardReceipt]) -> Timings {
    let side = |pick: fn(&Timings) -> &EngineTiming| EngineTiming {
        load_s: shards.iter().map(|s| pick(&s.receipt.timings).load_s).fold(0.0, f64::max),
        eval_s: shards.iter().map(|s| pick(&s.receipt.timings).eval_s).sum(),
        tokens: shards.iter().map(|s| pick(&s.receipt.timings).tokens).sum(),
    };
    Timings {
        wall_s: shards.iter().map(|s| s.receipt.timings.wall_s).fold(0.0, f64::max),
        rust: side(|t| &t.rust),
        reference: side(|t| &t.reference),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn first_difference_names_the_field() {
        let a = json!({"x": {"y": [1, 2], "z": "a"}, "w": 1});
        let mut b = a.clone();
        assert!(first_difference(&a, &b, "").is_none());
        b["x"]["y"][1] = json!(3);
        assert_eq!(first_difference(&a, &b, "").unwrap().0, "x.y[1]");
        b = a.clone();
        b["x"].as_object_mut().unwrap().remove("z");
        assert_eq!(first_difference(&a, &b, "").unwrap().0, "x.z");
        assert_eq!(first_difference(&json!(1), &json!(2), "").unwrap().0, "");
    }

    #[test]
    fn short_cuts_long_values() {
        assert_eq!(short(&json!(5)), "5");
        assert!(short(&json!("x".repeat(100))).ends_with('…'));
    }
}
