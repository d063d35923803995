//! `harness diff OLD NEW`: what changed between two receipts.
//!
//! A table of every summary metric of the run (old → new, the change, whether it got worse),
//! the per-case metrics that changed, then a line diff of the parts that identify a run
//! (tool, model, engines, settings, tokenizer agreement, verdict, run state, and per case the
//! prompt, token ids and logits digests). Time fields (`created_at`, `timings`) are ignored.
//! Both receipts must have this harness's major schema version; minor versions may differ.

mod page;

use std::path::PathBuf;

use serde::Serialize;
use serde_json::{json, Value};
use similar::TextDiff;
use tabled::builder::Builder;
use tabled::settings::Style;

use crate::exit::{Exit, Failure, OrExit};
use crate::gate::num;
use crate::hazards::{find, HazardKind};
use crate::receipt::{Divergence, Hazard, Percentiles, ReferenceProfile, Summary};
use crate::report::term::printable;
use crate::schema::{self, LoadedReceipt};
use crate::trace::Trace;

/// Lines of context around each change in the line diff.
const CONTEXT_LINES: usize = 3;

const AFTER_HELP: &str = "\
Direction of \"worse\": cosine_min, cosine_mean, cosine percentiles, exact_match_rate and
bit_exact_positions get worse when they go down; kl_mean, kl_max, kl percentiles, max_abs_diff
and nonfinite_positions when they go up; first_divergence when it comes earlier (or appears
where there was none); a metric that becomes null (no position with finite logits) is worse.
`positions` changes without a direction.

A worsening is a regression when it exceeds the tolerance: |new - old| > max(--tolerance,
--rel-tolerance x |old|). Both default to 0: any worsening is a regression. For
first_divergence the change is counted in positions, and moving to an earlier case or appearing
is always a regression.

Exit status: 0 (also when metrics changed), 1 with --fail-on-regression when any metric
regressed, 2 when a receipt is unreadable, of another major schema version, or fails the schema.";

#[derive(Debug, clap::Args)]
#[command(after_long_help = AFTER_HELP)]
pub struct DiffArgs {
    /// The earlier receipt.
    pub old: PathBuf,
    /// The later receipt.
    pub new: PathBuf,
    /// Exit 1 when any metric got worse beyond the tolerance.
    #[arg(long)]
    pub fail_on_regression: bool,
    /// Absolute tolerance, in the metric's own unit (cosine, nats, positions...).
    #[arg(long, value_name = "ABS", default_value_t = 0.0, value_parser = non_negative)]
    pub tolerance: f64,
    /// Relative tolerance, as a fraction of the old value (0.01 = 1%).
    #[arg(long, value_name = "REL", default_value_t = 0.0, value_parser = non_negative)]
    pub rel_tolerance: f64,
    /// Print the comparison as JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also write an HTML page drawing both receipts on the same axes.
    #[arg(long, value_name = "PATH")]
    pub html: Option<PathBuf>,
}

fn non_negative(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a finite number >= 0")),
    }
}

/// How much worse a metric may get before it counts as a regression.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Tolerance {
    pub absolute: f64,
    pub relative: f64,
}

impl Tolerance {
    pub const EXACT: Tolerance = Tolerance { absolute: 0.0, relative: 0.0 };

    fn allowed(&self, old: f64) -> f64 {
        self.absolute.max(self.relative * old.abs())
    }
}

/// Which way is better for a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Better {
    Higher,
    Lower,
    /// No direction: a change is only a change.
    Neither,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Same,
    Better,
    Worse,
    /// Changed, for a metric without a direction.
    Changed,
}

/// One metric of one scope, old against new.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricRow {
    /// `run`, or `case N`.
    pub scope: String,
    pub metric: String,
    /// A number, null, or for first_divergence `{"case", "pos"}`.
    pub old: Value,
    pub new: Value,
    /// new − old, when both are numbers (for first_divergence: positions, within one case).
    pub change: Option<f64>,
    pub status: Status,
    /// Worse beyond the tolerance.
    pub regression: bool,
}

/// A line diff of one part of the receipts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SectionDiff {
    pub section: String,
    /// Unified diff of the part rendered as pretty JSON.
    pub diff: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Side {
    pub path: String,
    pub schema_version: String,
    pub cases: usize,
    /// Fields of a newer minor version that this harness ignored.
    pub ignored_fields: Vec<String>,
    /// The reference-build profile the Rust engine mirrored (null: not recorded, schema 1.0).
    pub reference_profile: Option<ReferenceProfile>,
    /// The receipt's reference hazards (its `hazards`; empty before schema 1.1).
    pub hazards: Vec<Hazard>,
}

/// Everything `diff` reports; also the JSON shape of `diff --json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiffReport {
    pub old: Side,
    pub new: Side,
    pub tolerance: Tolerance,
    /// Every run-level metric, then every per-case metric of the cases both receipts have.
    pub metrics: Vec<MetricRow>,
    /// Only the parts that differ.
    pub sections: Vec<SectionDiff>,
    /// The two runs mirrored different reference-build profiles (or one recorded none): their
    /// logits come from different float code and are not expected to agree bit for bit.
    pub profiles_differ: bool,
    pub worse: usize,
    pub regressions: usize,
}

pub fn run(args: &DiffArgs) -> Result<Exit, Failure> {
    if let Some(path) = &args.html {
        crate::files::check_output(path)?;
        crate::files::check_not_input(path, &[&args.old, &args.new])?;
    }
    let old = schema::load_receipt(&args.old)?;
    let new = schema::load_receipt(&args.new)?;
    let tolerance = Tolerance { absolute: args.tolerance, relative: args.rel_tolerance };
    let report = compare(&old, &new, tolerance);
    if let Some(path) = &args.html {
        crate::report::write_page(path, &page::render(&old, &new, &report))?;
        eprintln!("html: {}", path.display());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).or_exit(Exit::Internal)?);
    } else {
        print!("{}", printable(&render(&report)));
    }
    if args.fail_on_regression && report.regressions > 0 {
        if !args.json {
            println!(
                "diff: FAIL (--fail-on-regression: {} regression{})",
                report.regressions,
                plural(report.regressions)
            );
        }
        return Ok(Exit::CheckFailed);
    }
    Ok(Exit::Ok)
}

/// Compares two loaded receipts.
pub fn compare(old: &LoadedReceipt, new: &LoadedReceipt, tolerance: Tolerance) -> DiffReport {
    let mut metrics = summary_rows("run", &old.receipt.summary, &new.receipt.summary, tolerance);
    for (i, (o, n)) in old.receipt.cases.iter().zip(&new.receipt.cases).enumerate() {
        metrics.extend(summary_rows(&format!("case {i}"), &o.summary, &n.summary, tolerance));
    }
    metrics.extend(trace_rows(old.receipt.trace.as_ref(), new.receipt.trace.as_ref(), tolerance));
    let worse = metrics.iter().filter(|m| m.status == Status::Worse).count();
    let regressions = metrics.iter().filter(|m| m.regression).count();
    let side = |l: &LoadedReceipt| Side {
        path: l.path.display().to_string(),
        schema_version: l.version.to_string(),
        cases: l.receipt.cases.len(),
        ignored_fields: l.ignored_fields.clone(),
        reference_profile: l.receipt.engines.rust.reference_profile.clone(),
        hazards: l.receipt.hazards.clone(),
    };
    let name = |l: &LoadedReceipt| l.receipt.engines.rust.reference_profile.as_ref().map(|p| p.name.clone());
    DiffReport {
        old: side(old),
        new: side(new),
        tolerance,
        metrics,
        sections: sections(&old.json, &new.json),
        profiles_differ: name(old) != name(new),
        worse,
        regressions,
    }
}

/// Every summary metric, in the order of [`Summary`].
fn summary_rows(scope: &str, old: &Summary, new: &Summary, tol: Tolerance) -> Vec<MetricRow> {
    let row = |metric: &str, o: Option<f64>, n: Option<f64>, better: Better| {
        numeric_row(scope, metric, o, n, better, tol)
    };
    // Counts compare as numbers but print (and serialize) as integers.
    let count = |metric: &str, o: usize, n: usize, better: Better| MetricRow {
        old: json!(o),
        new: json!(n),
        ..numeric_row(scope, metric, Some(o as f64), Some(n as f64), better, tol)
    };
    let mut rows = vec![
        count("positions", old.positions, new.positions, Better::Neither),
        count("nonfinite_positions", old.nonfinite_positions, new.nonfinite_positions, Better::Lower),
        count("bit_exact_positions", old.bit_exact_positions, new.bit_exact_positions, Better::Higher),
        row("cosine_min", old.cosine_min, new.cosine_min, Better::Higher),
        row("cosine_mean", old.cosine_mean, new.cosine_mean, Better::Higher),
        row("exact_match_rate", old.exact_match_rate, new.exact_match_rate, Better::Higher),
        divergence_row(scope, old.first_divergence.as_ref(), new.first_divergence.as_ref(), tol),
        row("kl_mean", old.kl_mean, new.kl_mean, Better::Lower),
        row("kl_max", old.kl_max, new.kl_max, Better::Lower),
        row("max_abs_diff", old.max_abs_diff, new.max_abs_diff, Better::Lower),
    ];
    for (name, better, o, n) in [
        ("cosine_percentiles", Better::Higher, &old.cosine_percentiles, &new.cosine_percentiles),
        ("kl_percentiles", Better::Lower, &old.kl_percentiles, &new.kl_percentiles),
    ] {
        for (p, get) in PERCENTILES {
            rows.push(row(&format!("{name}.{p}"), o.as_ref().map(get), n.as_ref().map(get), better));
        }
    }
    rows
}

type PercentileGetter = fn(&Percentiles) -> f64;
const PERCENTILES: [(&str, PercentileGetter); 5] =
    [("p1", |p| p.p1), ("p5", |p| p.p5), ("p50", |p| p.p50), ("p95", |p| p.p95), ("p99", |p| p.p99)];

fn numeric_row(
    scope: &str,
    metric: &str,
    o: Option<f64>,
    n: Option<f64>,
    better: Better,
    tol: Tolerance,
) -> MetricRow {
    let (change, status, regression) = match (o, n) {
        (None, None) => (None, Status::Same, false),
        (Some(a), Some(b)) if a == b => (Some(0.0), Status::Same, false),
        (Some(a), Some(b)) => {
            let worse = match better {
                Better::Higher => b < a,
                Better::Lower => b > a,
                Better::Neither => false,
            };
            let status = match (better, worse) {
                (Better::Neither, _) => Status::Changed,
                (_, true) => Status::Worse,
                (_, false) => Status::Better,
            };
            (Some(b - a), status, worse && (b - a).abs() > tol.allowed(a))
        }
        // A metric that becomes null lost every finite position: worse, whatever the tolerance.
        (Some(_), None) if better != Better::Neither => (None, Status::Worse, true),
        (None, Some(_)) if better != Better::Neither => (None, Status::Better, false),
        _ => (None, Status::Changed, false),
    };
    let value = |v: Option<f64>| v.map_or(Value::Null, |x| json!(x));
    MetricRow {
        scope: scope.into(),
        metric: metric.into(),
        old: value(o),
        new: value(n),
        change,
        status,
        regression,
    }
}

fn divergence_row(scope: &str, o: Option<&Divergence>, n: Option<&Divergence>, tol: Tolerance) -> MetricRow {
    let key = |d: &Divergence| (d.case, d.pos);
    let (change, status, regression) = match (o, n) {
        (None, None) => (None, Status::Same, false),
        (None, Some(_)) => (None, Status::Worse, true),
        (Some(_), None) => (None, Status::Better, false),
        (Some(a), Some(b)) if key(a) == key(b) => (Some(0.0), Status::Same, false),
        (Some(a), Some(b)) => {
            let same_case = a.case == b.case;
            let change = same_case.then_some(b.pos as f64 - a.pos as f64);
            if key(b) < key(a) {
                let regression = !same_case || (a.pos - b.pos) as f64 > tol.allowed(a.pos as f64);
                (change, Status::Worse, regression)
            } else {
                (change, Status::Better, false)
            }
        }
    };
    let value = |d: Option<&Divergence>| d.map_or(Value::Null, |d| json!({"case": d.case, "pos": d.pos}));
    MetricRow {
        scope: scope.into(),
        metric: "first_divergence".into(),
        old: value(o),
        new: value(n),
        change,
        status,
        regression,
    }
}

/// Layer traces: the first divergent operation (earlier in the graph is worse), the lowest
/// cosine of any traced operation, and the cosine of every operation both traces hold that
/// changed. Traces at different positions are compared too, but marked as such.
fn trace_rows(old: Option<&Trace>, new: Option<&Trace>, tol: Tolerance) -> Vec<MetricRow> {
    let (o, n) = match (old, new) {
        (None, None) => return Vec::new(),
        (o, n) => (o, n),
    };
    let scope = match (o, n) {
        (Some(a), Some(b)) if (a.case, a.pos) != (b.case, b.pos) => {
            format!("trace (case {} pos {} vs case {} pos {})", a.case, a.pos, b.case, b.pos)
        }
        _ => "trace".to_string(),
    };
    // Position of an operation in graph order (its index in the trace), for "earlier is worse".
    let rank = |t: &Trace, name: &str| t.ops.iter().position(|op| op.name == name);
    let first = |t: Option<&Trace>| t.and_then(|t| t.first_divergent_op.clone());
    let (fo, fnew) = (first(o), first(n));
    let status = match (&fo, &fnew) {
        (a, b) if a == b => Status::Same,
        (None, None) => Status::Same,
        (None, Some(_)) => Status::Worse,
        (Some(_), None) => Status::Better,
        (Some(a), Some(b)) => match (o.and_then(|t| rank(t, a)), n.and_then(|t| rank(t, b))) {
            (Some(ra), Some(rb)) if rb < ra => Status::Worse,
            (Some(ra), Some(rb)) if rb > ra => Status::Better,
            _ => Status::Changed,
        },
    };
    let name_value = |v: &Option<String>| v.as_ref().map_or(Value::Null, |s| json!(s));
    let mut rows = vec![MetricRow {
        scope: scope.clone(),
        metric: "first_divergent_op".into(),
        old: name_value(&fo),
        new: name_value(&fnew),
        change: None,
        status,
        regression: status == Status::Worse,
    }];
    let min_cos = |t: Option<&Trace>| t.and_then(|t| t.ops.iter().map(|op| op.cosine).reduce(f64::min));
    rows.push(numeric_row(&scope, "min_op_cosine", min_cos(o), min_cos(n), Better::Higher, tol));
    if let (Some(a), Some(b)) = (o, n) {
        for op in &a.ops {
            if let Some(nb) = b.ops.iter().find(|x| x.name == op.name) {
                if nb.cosine != op.cosine {
                    let metric = format!("{}.cosine", op.name);
                    rows.push(numeric_row(
                        &scope,
                        &metric,
                        Some(op.cosine),
                        Some(nb.cosine),
                        Better::Higher,
                        tol,
                    ));
                }
            }
        }
    }
    rows
}

/// The identifying parts of a receipt, by section name, as pretty JSON (time fields left out).
fn identity_parts(json: &Value) -> Vec<(String, String)> {
    let mut parts = Vec::new();
    for key in ["tool", "model", "engines", "settings", "tokenizer", "hazards", "verdict", "run_state"] {
        let mut v = json.get(key).cloned();
        // A receipt before 1.3 has no mode: it decoded. A change of mode, batch or ubatch is a
        // settings difference like any other.
        if let (Some(Value::Object(m)), "settings") = (v.as_mut(), key) {
            m.entry("mode").or_insert_with(|| Value::String("decode".into()));
        }
        parts.push((key.to_string(), pretty(v.as_ref())));
    }
    let cases = json.get("cases").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    for (i, case) in cases.iter().enumerate() {
        let mut picked = serde_json::Map::new();
        for key in ["prompt", "n_prompt_tokens", "token_ids", "rust_logits_sha256", "reference_logits_sha256"]
        {
            if let Some(v) = case.get(key) {
                picked.insert(key.into(), v.clone());
            }
        }
        // `--mode both`: the digests of the batched logits too.
        for key in ["rust_logits_sha256", "reference_logits_sha256"] {
            if let Some(v) = case.get("batch").and_then(|b| b.get(key)) {
                picked.insert(format!("batch.{key}"), v.clone());
            }
        }
        parts.push((format!("cases[{i}]"), pretty(Some(&Value::Object(picked)))));
    }
    parts
}

fn pretty(v: Option<&Value>) -> String {
    let mut s = v.map(|v| serde_json::to_string_pretty(v).unwrap_or_default()).unwrap_or_default();
    if !s.is_empty() {
        s.push('\n');
    }
    s
}

/// Line diffs of the identifying parts that differ (a case only one side has diffs against nothing).
fn sections(old: &Value, new: &Value) -> Vec<SectionDiff> {
    let (o, n) = (identity_parts(old), identity_parts(new));
    let names: Vec<&String> =
        if o.len() >= n.len() { o.iter().map(|p| &p.0).collect() } else { n.iter().map(|p| &p.0).collect() };
    let text = |parts: &[(String, String)], name: &str| {
        parts.iter().find(|p| p.0 == name).map(|p| p.1.clone()).unwrap_or_default()
    };
    let mut out = Vec::new();
    for name in names {
        let (a, b) = (text(&o, name), text(&n, name));
        if a == b {
            continue;
        }
        let diff = TextDiff::from_lines(&a, &b)
            .unified_diff()
            .context_radius(CONTEXT_LINES)
            .header(&format!("OLD {name}"), &format!("NEW {name}"))
            .to_string();
        out.push(SectionDiff { section: name.clone(), diff });
    }
    out
}

/// The text report.
pub fn render(r: &DiffReport) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "diff {} (schema {}) -> {} (schema {})\n",
        r.old.path, r.old.schema_version, r.new.path, r.new.schema_version
    ));
    if r.old.schema_version != r.new.schema_version {
        out.push_str("note: the schema versions differ but are compatible (same major version)\n");
    }
    for side in [&r.old, &r.new] {
        if !side.ignored_fields.is_empty() {
            out.push_str(&format!(
                "note: {} is newer than this harness; ignored fields: {}\n",
                side.path,
                side.ignored_fields.join(", ")
            ));
        }
    }
    out.push_str(&profile_lines(r));
    out.push_str(&hazard_lines(r));
    if r.tolerance != Tolerance::EXACT {
        out.push_str(&format!(
            "tolerance: absolute {}, relative {}\n",
            num(r.tolerance.absolute),
            num(r.tolerance.relative)
        ));
    }

    out.push_str("\nrun summary:\n");
    let run_rows: Vec<&MetricRow> = r.metrics.iter().filter(|m| m.scope == "run").collect();
    out.push_str(&table(&run_rows, false));
    out.push('\n');

    // Per-case percentiles repeat the run's story at length: they stay in `--json` only.
    let case_rows: Vec<&MetricRow> = r
        .metrics
        .iter()
        .filter(|m| m.scope != "run" && m.status != Status::Same && !m.metric.contains("percentiles"))
        .collect();
    if r.old.cases != r.new.cases {
        out.push_str(&format!(
            "\ncases: {} -> {} (compared by index, the first {})\n",
            r.old.cases,
            r.new.cases,
            r.old.cases.min(r.new.cases)
        ));
    }
    if case_rows.is_empty() {
        out.push_str("\nper case: no metric changed\n");
    } else {
        out.push_str("\nper case, changed metrics only (percentiles in --json):\n");
        out.push_str(&table(&case_rows, true));
        out.push('\n');
    }

    if r.sections.is_empty() {
        out.push_str("\nidentity: no change (tool, model, engines, settings, tokenizer, hazards, verdict, run state, prompts, token ids, logits digests)\n");
    } else {
        let names: Vec<&str> = r.sections.iter().map(|s| s.section.as_str()).collect();
        out.push_str(&format!("\nidentity: changed in {}\n", names.join(", ")));
        for s in &r.sections {
            out.push_str(&s.diff);
        }
    }

    let within = r.worse - r.regressions;
    out.push_str(&match (r.worse, within) {
        (0, _) => "\ndiff: no metric got worse\n".to_string(),
        (w, 0) => format!("\ndiff: {w} metric{} got worse\n", plural(w)),
        (w, k) => format!("\ndiff: {w} metric{} got worse ({k} within the tolerance)\n", plural(w)),
    });
    out
}

/// `reference profile: avx2 (build-info) -> avx512 (build-info) DIFFERENT: …`, or the one
/// profile both runs mirrored.
fn profile_lines(r: &DiffReport) -> String {
    let show = |s: &Side| {
        let p = s
            .reference_profile
            .as_ref()
            .map_or("not recorded".to_string(), |p| format!("{} ({})", p.name, p.source));
        match find(&s.hazards, HazardKind::ReferenceProfile) {
            Some(_) => format!("{p}, the build has no profile"),
            None => p,
        }
    };
    let (o, n) = (show(&r.old), show(&r.new));
    let mut out = if r.profiles_differ {
        format!(
            "reference profile: {o} -> {n} DIFFERENT: the runs mirrored different reference builds' float \
             numerics, so their logits are not expected to agree\n"
        )
    } else if o == n {
        format!("reference profile: {o} in both\n")
    } else {
        format!("reference profile: {o} -> {n}\n")
    };
    for s in [&r.old, &r.new] {
        if let Some(h) = find(&s.hazards, HazardKind::ReferenceProfile) {
            out.push_str(&format!("note: {}: {}\n", s.path, h.detail));
        }
    }
    out
}

/// `hazards: none -> untied_output_ignored`, then one note per hazard other than the profile's
/// (shown by [`profile_lines`]); nothing when neither receipt has any.
fn hazard_lines(r: &DiffReport) -> String {
    let kinds = |s: &Side| {
        let k: Vec<&str> = s.hazards.iter().map(|h| h.kind.as_str()).collect();
        if k.is_empty() {
            "none".to_string()
        } else {
            k.join(", ")
        }
    };
    if r.old.hazards.is_empty() && r.new.hazards.is_empty() {
        return String::new();
    }
    let (o, n) = (kinds(&r.old), kinds(&r.new));
    let mut out = if r.old.hazards == r.new.hazards {
        format!("hazards: {o} in both\n")
    } else {
        format!("hazards: {o} -> {n}\n")
    };
    let others = |s: &Side| -> Vec<Hazard> {
        s.hazards.iter().filter(|h| h.kind != HazardKind::ReferenceProfile.name()).cloned().collect()
    };
    if r.old.hazards == r.new.hazards {
        for h in others(&r.old) {
            out.push_str(&format!("note: {}\n", crate::hazards::line(&h)));
        }
    } else {
        for s in [&r.old, &r.new] {
            for h in others(s) {
                out.push_str(&format!("note: {}: {}\n", s.path, crate::hazards::line(&h)));
            }
        }
    }
    out
}

fn table(rows: &[&MetricRow], with_scope: bool) -> String {
    let mut b = Builder::default();
    let mut header = vec!["metric", "old", "new", "change", ""];
    if with_scope {
        header.insert(0, "scope");
    }
    b.push_record(header);
    for m in rows {
        let mut rec =
            vec![m.metric.clone(), show(m, &m.old), show(m, &m.new), change(m), marker(m).to_string()];
        if with_scope {
            rec.insert(0, m.scope.clone());
        }
        b.push_record(rec);
    }
    let mut t = b.build();
    t.with(Style::psql());
    t.to_string()
}

pub(crate) fn show(m: &MetricRow, v: &Value) -> String {
    match v {
        Value::Null if m.metric == "first_divergence" => "none".into(),
        Value::Null => "null".into(),
        Value::Number(n) => n.as_f64().map(num).unwrap_or_else(|| n.to_string()),
        Value::Object(o) => match (o.get("case"), o.get("pos")) {
            (Some(c), Some(p)) => format!("case {c} pos {p}"),
            _ => v.to_string(),
        },
        other => other.to_string(),
    }
}

pub(crate) fn change(m: &MetricRow) -> String {
    match (m.status, m.change) {
        (Status::Same, _) => String::new(),
        // Counts and positions as integers; other changes to 4 significant digits, since the
        // old and new columns carry every digit.
        (_, Some(d)) if d.fract() == 0.0 && d.abs() < 1e15 => format!("{d:+}"),
        (_, Some(d)) => format!("{d:+.3e}"),
        (_, None) => "-".into(),
    }
}

pub(crate) fn marker(m: &MetricRow) -> &'static str {
    match (m.status, m.regression) {
        (Status::Same, _) => "",
        (Status::Better, _) => "better",
        (Status::Changed, _) => "changed",
        (Status::Worse, true) => "WORSE",
        (Status::Worse, false) => "worse (within tolerance)",
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directions_and_tolerances() {
        let t = Tolerance::EXACT;
        let r = numeric_row("run", "cosine_min", Some(1.0), Some(0.9), Better::Higher, t);
        assert_eq!((r.status, r.regression), (Status::Worse, true));
        let r = numeric_row("run", "kl_max", Some(0.1), Some(0.05), Better::Lower, t);
        assert_eq!((r.status, r.regression), (Status::Better, false));
        let r = numeric_row("run", "positions", Some(3.0), Some(4.0), Better::Neither, t);
        assert_eq!((r.status, r.regression), (Status::Changed, false));
        let loose = Tolerance { absolute: 0.2, relative: 0.0 };
        let r = numeric_row("run", "cosine_min", Some(1.0), Some(0.9), Better::Higher, loose);
        assert_eq!((r.status, r.regression), (Status::Worse, false));
        let rel = Tolerance { absolute: 0.0, relative: 0.5 };
        let r = numeric_row("run", "kl_max", Some(0.2), Some(0.29), Better::Lower, rel);
        assert_eq!((r.status, r.regression), (Status::Worse, false));
        let r = numeric_row("run", "kl_max", Some(0.2), Some(0.31), Better::Lower, rel);
        assert!(r.regression);
        let r = numeric_row("run", "cosine_min", Some(1.0), None, Better::Higher, loose);
        assert_eq!((r.status, r.regression), (Status::Worse, true));
        let r = numeric_row("run", "cosine_min", None, None, Better::Higher, t);
        assert_eq!(r.status, Status::Same);
    }

    fn div(case: usize, pos: usize) -> Divergence {
        Divergence {
            case,
            pos,
            token: 0,
            reason: "argmax".into(),
            cosine: None,
            rust_top: None,
            reference_top: None,
            near_tie: false,
        }
    }

    #[test]
    fn divergence_earlier_is_worse() {
        let t = Tolerance::EXACT;
        assert!(divergence_row("run", None, Some(&div(0, 9)), t).regression);
        assert_eq!(divergence_row("run", Some(&div(0, 9)), None, t).status, Status::Better);
        let r = divergence_row("run", Some(&div(0, 9)), Some(&div(0, 4)), t);
        assert_eq!((r.status, r.regression, r.change), (Status::Worse, true, Some(-5.0)));
        let r = divergence_row(
            "run",
            Some(&div(0, 9)),
            Some(&div(0, 4)),
            Tolerance { absolute: 5.0, relative: 0.0 },
        );
        assert_eq!((r.status, r.regression), (Status::Worse, false));
        let r = divergence_row(
            "run",
            Some(&div(1, 0)),
            Some(&div(0, 50)),
            Tolerance { absolute: 100.0, relative: 0.0 },
        );
        assert_eq!((r.status, r.regression, r.change), (Status::Worse, true, None));
        assert_eq!(divergence_row("run", Some(&div(0, 2)), Some(&div(0, 3)), t).status, Status::Better);
    }

    #[test]
    fn identical_parts_give_no_section() {
        let v = json!({"tool": {"name": "harness"}, "engines": {"rust": {"threads": 1}}, "cases": [{"prompt": "a", "positions": [1]}]});
        assert!(sections(&v, &v).is_empty());
        let mut w = v.clone();
        w["engines"]["rust"]["threads"] = json!(2);
        w["cases"][0]["positions"] = json!([2]); // not an identity part
        let s = sections(&v, &w);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].section, "engines");
        assert!(
            s[0].diff.contains("-    \"threads\": 1") && s[0].diff.contains("+    \"threads\": 2"),
            "{}",
            s[0].diff
        );
    }
}
