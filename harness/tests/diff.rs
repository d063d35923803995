//! `harness diff` through the real binary, on receipts written by `harness run`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::receipts::*;
use serde::Deserialize;
use serde_json::{json, Value};

struct Runs {
    dir: tempfile::TempDir,
    threads1: PathBuf,
    threads2: PathBuf,
    rounding_off: PathBuf,
}

/// Three runs of the default fixture, shared by the tests (they only read the files).
fn runs() -> &'static Runs {
    static RUNS: OnceLock<Runs> = OnceLock::new();
    RUNS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let threads1 = run_receipt(dir.path(), "threads1", &["--threads", "1"]);
        let threads2 = run_receipt(dir.path(), "threads2", &["--threads", "2"]);
        let rounding_off = run_receipt(dir.path(), "rounding-off", &["--no-exact-rounding"]);
        Runs { dir, threads1, threads2, rounding_off }
    })
}

fn diff(args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["diff"];
    all.extend_from_slice(args);
    let o = harness(runs().dir.path(), &all);
    (code(&o), stdout(&o), stderr(&o))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `diff --json`, re-read strictly so that a change of its shape fails here.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Report {
    old: Side,
    new: Side,
    tolerance: Tolerance,
    metrics: Vec<Metric>,
    sections: Vec<Section>,
    profiles_differ: bool,
    worse: usize,
    regressions: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Side {
    path: String,
    schema_version: String,
    cases: usize,
    ignored_fields: Vec<String>,
    reference_profile: Option<Value>,
    hazards: Vec<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Tolerance {
    absolute: f64,
    relative: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Metric {
    scope: String,
    metric: String,
    old: Value,
    new: Value,
    change: Option<f64>,
    status: String,
    regression: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    section: String,
    diff: String,
}

fn json_report(args: &[&str]) -> (i32, Report) {
    let (code, out, err) = diff(&[args, &["--json"]].concat());
    assert!(code == 0 || code == 1, "{out}{err}");
    (code, serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}")))
}

/// Every field of `Summary` that the table must show, read from a real receipt.
fn summary_fields(path: &Path) -> Vec<String> {
    let v = read_json(path);
    let mut names = Vec::new();
    for (k, val) in v["summary"].as_object().unwrap() {
        match k.as_str() {
            "worst_positions" => {}
            "cosine_percentiles" | "kl_percentiles" => {
                names.extend(val.as_object().unwrap().keys().map(|p| format!("{k}.{p}")))
            }
            _ => names.push(k.clone()),
        }
    }
    names.sort();
    names
}

#[test]
fn threads_change_no_metric_only_the_engines() {
    let r = runs();
    let (code, out, err) = diff(&[s(&r.threads1), s(&r.threads2)]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("per case: no metric changed"), "{out}");
    assert!(out.contains("identity: changed in engines\n"), "{out}");
    assert!(out.contains("-    \"threads\": 1,\n+    \"threads\": 2,"), "{out}");
    assert!(out.ends_with("diff: no metric got worse\n"), "{out}");
    assert!(!out.contains("WORSE") && !out.contains("better"), "{out}");

    let (code, rep) = json_report(&[s(&r.threads1), s(&r.threads2), "--fail-on-regression"]);
    assert_eq!(code, 0);
    assert!(rep.metrics.iter().all(|m| m.status == "same" && m.old == m.new), "{:?}", rep.metrics);
    // Both runs mirrored the same reference build.
    assert!(!rep.profiles_differ);
    assert!(rep.old.reference_profile.is_some() && rep.old.reference_profile == rep.new.reference_profile);
    let mut run_metrics: Vec<String> =
        rep.metrics.iter().filter(|m| m.scope == "run").map(|m| m.metric.clone()).collect();
    run_metrics.sort();
    assert_eq!(run_metrics, summary_fields(&r.threads1), "the table has every summary metric");
    let n_cases = read_json(&r.threads1)["cases"].as_array().unwrap().len();
    assert_eq!(rep.metrics.len(), run_metrics.len() * (1 + n_cases));
    assert_eq!(rep.sections.iter().map(|s| s.section.as_str()).collect::<Vec<_>>(), ["engines"]);
    assert_eq!((rep.worse, rep.regressions), (0, 0));
    assert_eq!((rep.old.cases, rep.new.cases), (n_cases, n_cases));
}

#[test]
fn rounding_off_shows_the_changes_and_regressions() {
    let r = runs();
    let (code, out, err) = diff(&[s(&r.threads1), s(&r.rounding_off)]);
    assert_eq!(code, 0, "without --fail-on-regression a change is not a failure: {err}");
    assert!(out.contains("WORSE"), "{out}");
    assert!(
        out.contains("-    \"exact_reference_rounding\": true,\n+    \"exact_reference_rounding\": false,"),
        "{out}"
    );

    let (code, rep) = json_report(&[s(&r.threads1), s(&r.rounding_off), "--fail-on-regression"]);
    assert_eq!(code, 1);
    let run = |name: &str| rep.metrics.iter().find(|m| m.scope == "run" && m.metric == name).unwrap();
    let old = read_json(&r.threads1);
    let new = read_json(&r.rounding_off);
    // Rows carry the receipts' own values, and the direction follows the change.
    for name in ["cosine_min", "kl_max", "max_abs_diff", "bit_exact_positions"] {
        let m = run(name);
        assert_eq!(m.old, old["summary"][name], "{name}");
        assert_eq!(m.new, new["summary"][name], "{name}");
        assert_ne!(m.old, m.new, "{name}: the mirror changes the logits");
        assert_eq!(m.status, "worse", "{name}");
        assert!(m.regression, "{name}");
    }
    assert_eq!(run("positions").status, "same");
    assert!(rep.regressions > 0 && rep.worse >= rep.regressions);
    let sections: Vec<&str> = rep.sections.iter().map(|s| s.section.as_str()).collect();
    assert!(sections.contains(&"engines") && sections.contains(&"cases[0]"), "{sections:?}");
    let case0 = &rep.sections.iter().find(|s| s.section == "cases[0]").unwrap().diff;
    assert!(case0.contains("rust_logits_sha256") && !case0.contains("-    \"token_ids\""), "{case0}");

    // The other way round everything got better: no regression.
    let (code, rep) = json_report(&[s(&r.rounding_off), s(&r.threads1), "--fail-on-regression"]);
    assert_eq!(code, 0);
    assert_eq!(rep.regressions, 0);
    assert_eq!(
        rep.metrics.iter().find(|m| m.scope == "run" && m.metric == "cosine_min").unwrap().status,
        "better"
    );
}

#[test]
fn tolerances_decide_what_is_a_regression() {
    let dir = tempfile::tempdir().unwrap();
    let base = &runs().threads1;
    let cos = read_json(base)["summary"]["cosine_min"].as_f64().unwrap();
    let worse = edited(base, dir.path(), "worse.json", |v| v["summary"]["cosine_min"] = json!(cos - 1e-6));
    let (code, out, _) = diff(&[s(base), s(&worse), "--fail-on-regression"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("WORSE"), "{out}");
    assert!(out.ends_with("diff: FAIL (--fail-on-regression: 1 regression)\n"), "{out}");
    let (code, out, _) = diff(&[s(base), s(&worse), "--fail-on-regression", "--tolerance", "2e-6"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("worse (within tolerance)"), "{out}");
    assert!(out.contains("diff: 1 metric got worse (1 within the tolerance)"), "{out}");
    let (code, rep) = json_report(&[s(base), s(&worse), "--fail-on-regression", "--rel-tolerance", "2e-6"]);
    assert_eq!(code, 0);
    assert_eq!((rep.tolerance.absolute, rep.tolerance.relative), (0.0, 2e-6));
    assert_eq!((rep.worse, rep.regressions), (1, 0));
    let (code, _, _) = diff(&[s(base), s(&worse), "--fail-on-regression", "--rel-tolerance", "5e-7"]);
    assert_eq!(code, 1);
    let (code, _, err) = diff(&[s(base), s(&worse), "--tolerance", "-1"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn changed_prompt_and_token_ids_show_as_a_line_diff() {
    let dir = tempfile::tempdir().unwrap();
    let base = &runs().threads1;
    let changed = edited(base, dir.path(), "prompt.json", |v| {
        v["cases"][1]["prompt"] = json!("a different prompt");
        v["cases"][1]["token_ids"][2] = json!(4242);
    });
    let (code, out, _) = diff(&[s(base), s(&changed)]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("identity: changed in cases[1]\n"), "{out}");
    assert!(out.contains("--- OLD cases[1]\n+++ NEW cases[1]\n"), "{out}");
    assert!(out.contains("+  \"prompt\": \"a different prompt\","), "{out}");
    assert!(out.contains("+    4242,"), "{out}");
    // Time fields are not differences.
    let later = edited(base, dir.path(), "later.json", |v| {
        v["created_at"] = json!("2030-01-01T00:00:00Z");
        v["timings"]["wall_s"] = json!(1234.5);
    });
    let (_, rep) = json_report(&[s(base), s(&later)]);
    assert!(rep.sections.is_empty(), "{:?}", rep.sections.iter().map(|s| &s.section).collect::<Vec<_>>());
    assert!(rep.metrics.iter().all(|m| m.status == "same"));
}

#[test]
fn compatible_versions_diff_incompatible_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = &runs().threads1;
    let newer = edited(base, dir.path(), "newer.json", |v| {
        v["schema_version"] = json!("1.99.0");
        v["summary"]["kl_p999"] = json!(0.0);
    });
    let (code, out, err) = diff(&[s(base), s(&newer)]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("note: the schema versions differ but are compatible"), "{out}");
    assert!(out.contains("ignored fields: summary.kl_p999"), "{out}");
    assert!(out.contains("per case: no metric changed"), "{out}");

    let v2 = edited(base, dir.path(), "v2.json", |v| v["schema_version"] = json!("2.0.0"));
    for args in [[s(base), s(&v2)], [s(&v2), s(base)]] {
        let (code, out, err) = diff(&args);
        assert_eq!(code, 2, "{out}{err}");
        assert!(out.is_empty());
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(&format!("receipt {}: `schema_version` 2.0.0 has major version 2", v2.display())),
            "{err}"
        );
    }
    let truncated = dir.path().join("truncated.json");
    std::fs::write(&truncated, "{\"schema_version\": \"1.0.0\", ").unwrap();
    let (code, _, err) = diff(&[s(base), s(&truncated)]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn per_case_changes_and_case_counts() {
    let dir = tempfile::tempdir().unwrap();
    let base = &runs().threads1;
    let fewer = edited(base, dir.path(), "fewer.json", |v| {
        v["cases"].as_array_mut().unwrap().pop();
        v["cases"][0]["summary"]["kl_max"] = json!(0.5);
        v["cases"][0]["summary"]["first_divergence"] = json!({"case": 0, "pos": 4, "token": 1, "reason": "argmax", "cosine": 0.9, "rust_top": null, "reference_top": null, "near_tie": false});
    });
    let n = read_json(base)["cases"].as_array().unwrap().len();
    let (code, out, _) = diff(&[s(base), s(&fewer), "--fail-on-regression"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("cases: {n} -> {} (compared by index, the first {})", n - 1, n - 1)),
        "{out}"
    );
    let line =
        out.lines().find(|l| l.contains("case 0") && l.contains("kl_max")).unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("0.5") && line.contains("WORSE"), "{line}");
    let line = out.lines().find(|l| l.contains("case 0") && l.contains("first_divergence")).unwrap();
    assert!(line.contains("none") && line.contains("case 0 pos 4") && line.contains("WORSE"), "{line}");
    assert!(out.contains(&format!("identity: changed in cases[{}]", n - 1)), "{out}");
}
