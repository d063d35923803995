//! `harness gate` through the real binary: on receipts written by `harness run` and on edited
//! copies of them.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::receipts::*;
use serde_json::{json, Value};

/// One default-fixture run and one with the rounding mirror off, shared by the tests (a run
/// takes a second; they only read the files).
fn runs() -> &'static (tempfile::TempDir, PathBuf, PathBuf) {
    static RUNS: OnceLock<(tempfile::TempDir, PathBuf, PathBuf)> = OnceLock::new();
    RUNS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let default = run_receipt(dir.path(), "default", &[]);
        let rounding_off = run_receipt(dir.path(), "rounding-off", &["--no-exact-rounding"]);
        (dir, default, rounding_off)
    })
}

fn default_receipt() -> &'static Path {
    &runs().1
}

fn gate(args: &[&str]) -> (i32, String, String) {
    let dir = runs().0.path();
    let mut all = vec!["gate"];
    all.extend_from_slice(args);
    let o = harness(dir, &all);
    (code(&o), stdout(&o), stderr(&o))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The next f64 above `v` (for boundary tests that need no hard-coded metric).
fn next_up(v: f64) -> f64 {
    f64::from_bits(v.to_bits() + 1)
}

#[test]
fn default_fixture_receipt_passes() {
    let (code, out, err) = gate(&[s(default_receipt())]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.ends_with("gate: PASS\n"), "{out}");
    assert!(out.contains("min_cosine 0.99999 (from the receipt)"), "{out}");
    assert!(!out.contains("FAIL"), "{out}");

    let thresholds = repo_root().join("receipts/thresholds.toml");
    let (code, out, err) = gate(&[s(default_receipt()), "--thresholds", s(&thresholds)]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("min_cosine 0.99999 (from {})", thresholds.display())), "{out}");
}

#[test]
fn lowered_cosine_min_fails_with_value_and_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let copy =
        edited(default_receipt(), dir.path(), "low.json", |v| v["summary"]["cosine_min"] = json!(0.99871));
    let (code, out, _) = gate(&[s(&copy)]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL cosine_min 0.99871 < 0.99999 (min_cosine from the receipt)\n"), "{out}");
    assert!(out.ends_with("gate: FAIL (1 check)\n"), "{out}");
    // The other checks still print as passing.
    assert!(out.contains("ok   exact_match_rate 1 >= 1"), "{out}");
}

#[test]
fn unreadable_receipts_exit_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(default_receipt()).unwrap();
    let truncated = dir.path().join("truncated.json");
    std::fs::write(&truncated, &text[..text.len() / 2]).unwrap();
    let v2 = edited(default_receipt(), dir.path(), "v2.json", |v| v["schema_version"] = json!("2.0.0"));
    let no_summary = edited(default_receipt(), dir.path(), "no-summary.json", |v| {
        drop(v.as_object_mut().unwrap().remove("summary"))
    });
    let wrong_type = edited(default_receipt(), dir.path(), "wrong-type.json", |v| {
        v["cases"][1]["summary"]["kl_max"] = json!("tiny")
    });
    let missing = dir.path().join("missing.json");
    for (path, expect) in [
        (&truncated, "not valid JSON: EOF while parsing"),
        (&v2, "`schema_version` 2.0.0 has major version 2; this harness reads 1.x receipts only"),
        (&no_summary, "fails the receipt schema at (top level): \"summary\" is a required property"),
        (&wrong_type, "fails the receipt schema at cases[1].summary.kl_max"),
        (&missing, "cannot read"),
    ] {
        let (code, out, err) = gate(&[s(path)]);
        assert_eq!(code, 2, "{}: {out}{err}", path.display());
        assert!(out.is_empty(), "{out}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with(&format!("error: receipt {}: ", path.display())), "{err}");
        assert!(err.contains(expect), "{err}");
    }
}

#[test]
fn nonfinite_logits_fail_per_position() {
    let dir = tempfile::tempdir().unwrap();
    let copy = edited(default_receipt(), dir.path(), "nan.json", |v| {
        for (case, pos, nf) in [(0, 3, json!([2, 0, 0, 0])), (2, 7, json!([0, 0, 0, 1]))] {
            let p = &mut v["cases"][case]["positions"][pos];
            p["nonfinite"] =
                json!({"rust_nan": nf[0], "rust_inf": nf[1], "reference_nan": nf[2], "reference_inf": nf[3]});
            for k in ["cosine", "kl", "kl_reverse", "max_abs_diff", "rust_argmax", "reference_argmax"] {
                p[k] = Value::Null;
            }
        }
        v["summary"]["nonfinite_positions"] = json!(2);
    });
    let (code, out, _) = gate(&[s(&copy)]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "FAIL nonfinite_positions 2 > 0 (NaN/Inf logits at case 0 pos 3 (rust 2 NaN), case 2 pos 7 (reference 1 Inf))"
        ),
        "{out}"
    );
}

#[test]
fn broken_model_incomplete_and_interrupted_runs_fail_saying_why() {
    let dir = tempfile::tempdir().unwrap();
    let invalid = edited(default_receipt(), dir.path(), "invalid.json", |v| {
        v["verdict"] =
            json!({"status": "invalid_input", "reasons": ["blk.0.ffn_up.weight: 12 invalid codes"]})
    });
    let (code, out, _) = gate(&[s(&invalid)]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL verdict.status invalid_input (the model itself is broken"), "{out}");
    assert!(out.contains("blk.0.ffn_up.weight: 12 invalid codes"), "{out}");

    let interrupted = edited(default_receipt(), dir.path(), "interrupted.json", |v| {
        v["verdict"] = json!({"status": "incomplete", "reasons": ["interrupted"]});
        v["run_state"]["completed"] = json!(false);
        v["run_state"]["interrupted"] = json!(true);
    });
    let (code, out, _) = gate(&[s(&interrupted)]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL run_state.completed false (the run was interrupted"), "{out}");
    assert!(out.contains("FAIL verdict.status incomplete (the run did not finish: interrupted)"), "{out}");
    assert!(out.ends_with("gate: FAIL (2 checks)\n"), "{out}");

    let crashed = edited(default_receipt(), dir.path(), "crashed.json", |v| {
        v["run_state"]["completed"] = json!(false);
        v["run_state"]["reference_failure"] = json!("killed by SIGABRT during eval of case 1");
    });
    let (code, out, _) = gate(&[s(&crashed)]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("the reference failed: killed by SIGABRT during eval of case 1"), "{out}");

    let empty = edited(default_receipt(), dir.path(), "empty.json", |v| {
        v["summary"]["positions"] = json!(0);
        v["summary"]["cosine_min"] = Value::Null;
    });
    let (code, out, _) = gate(&[s(&empty)]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL positions 0 (nothing was compared)"), "{out}");
    assert!(out.contains("FAIL cosine_min null"), "{out}");
}

#[test]
fn flags_override_the_file_which_replaces_the_receipt() {
    let dir = tempfile::tempdir().unwrap();
    let low =
        edited(default_receipt(), dir.path(), "low.json", |v| v["summary"]["cosine_min"] = json!(0.9995));
    let file = dir.path().join("loose.toml");
    std::fs::write(&file, "min_cosine = 0.999\nmin_exact_match = 1\nmax_kl = 1e-4\n").unwrap();

    assert_eq!(gate(&[s(&low)]).0, 1);
    let (code, out, _) = gate(&[s(&low), "--thresholds", s(&file)]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("ok   cosine_min 0.9995 >= 0.999 (min_cosine from {})", file.display())),
        "{out}"
    );
    let (code, out, _) = gate(&[s(&low), "--thresholds", s(&file), "--min-cosine", "0.9999"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL cosine_min 0.9995 < 0.9999 (min_cosine from --min-cosine)"), "{out}");
    assert!(out.contains(&format!("min_exact_match 1 (from {})", file.display())), "{out}");
    let (code, out, _) = gate(&[s(&low), "--min-cosine", "0.999"]);
    assert_eq!(code, 0, "{out}");

    // JSON files work the same.
    let json_file = dir.path().join("loose.json");
    std::fs::write(&json_file, r#"{"min_cosine": 0.999, "min_exact_match": 1, "max_kl": 1e-4}"#).unwrap();
    assert_eq!(gate(&[s(&low), "--thresholds", s(&json_file)]).0, 0);
}

#[test]
fn thresholds_sit_exactly_at_the_measured_values() {
    // With the rounding mirror off the engines differ a little: each limit passes at the
    // measured value and fails one ulp beyond it.
    let r = read_json(&runs().2);
    let sm = &r["summary"];
    let (cos, em, kl) = (
        sm["cosine_min"].as_f64().unwrap(),
        sm["exact_match_rate"].as_f64().unwrap(),
        sm["kl_max"].as_f64().unwrap(),
    );
    let path = s(&runs().2);
    let at = |c: f64, e: f64, k: f64| {
        gate(&[
            path,
            "--min-cosine",
            &c.to_string(),
            "--min-exact-match",
            &e.to_string(),
            "--max-kl",
            &k.to_string(),
        ])
    };
    let (code, out, _) = at(cos, em, kl);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("note verdict.status fail"), "the run's own verdict is only a note: {out}");
    let (code, out, _) = at(next_up(cos), em, kl);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("FAIL cosine_min {cos} < {}", next_up(cos))), "{out}");
    let (code, out, _) = at(cos, next_up(em), kl);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL exact_match_rate"), "{out}");
    let (code, out, _) = at(cos, em, f64::from_bits(kl.to_bits() - 1));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL kl_max"), "{out}");
}

#[test]
fn max_first_divergence_is_the_earliest_position_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let loose = ["--min-cosine", "-1", "--min-exact-match", "0", "--max-kl", "1e9"];
    let r = read_json(&runs().2);
    // The earliest first divergence of any case, as the run recorded it.
    let earliest = r["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["summary"]["first_divergence"]["pos"].as_u64())
        .min()
        .expect("with the rounding mirror off some case diverges");
    let n_ok = earliest.to_string();
    let n_bad = (earliest + 1).to_string();
    let (code, out, _) = gate(&[&[s(&runs().2), "--max-first-divergence", &n_ok][..], &loose].concat());
    assert_eq!(code, 0, "{out}");
    let (code, out, _) = gate(&[&[s(&runs().2), "--max-first-divergence", &n_bad][..], &loose].concat());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("pos {earliest} < {n_bad}")), "{out}");

    // A divergence in a later case only: found there too.
    let copy = edited(default_receipt(), dir.path(), "late.json", |v| {
        let d = json!({"case": 2, "pos": 5, "token": 9, "reason": "argmax", "cosine": 0.9,
                       "rust_top": null, "reference_top": null, "near_tie": false});
        v["cases"][2]["summary"]["first_divergence"] = d.clone();
        v["summary"]["first_divergence"] = d;
    });
    assert_eq!(gate(&[s(&copy), "--max-first-divergence", "5"]).0, 0);
    let (code, out, _) = gate(&[s(&copy), "--max-first-divergence", "6"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL first_divergence case 2 pos 5 < 6 (argmax at token 9;"), "{out}");
    // No divergence at all passes any N.
    assert_eq!(gate(&[s(default_receipt()), "--max-first-divergence", "100000"]).0, 0);
}

#[test]
fn bad_thresholds_files_exit_7_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "unknown.toml",
            "min_cosine = 0.9\nmin_exact_match = 1\nmax_kl = 1e-4\nmin_kl = 0\n",
            "line 4: unknown field `min_kl`",
        ),
        ("missing.toml", "min_cosine = 0.9\nmin_exact_match = 1\n", "missing field `max_kl`"),
        ("range.toml", "min_cosine = 1.5\nmin_exact_match = 1\nmax_kl = 1e-4\n", "`min_cosine` = 1.5"),
        ("syntax.toml", "min_cosine = \n", "line 1:"),
        (
            "unknown.json",
            r#"{"min_cosine": 0.9, "min_exact_match": 1, "max_kl": 0, "maxkl": 1}"#,
            "unknown field `maxkl`",
        ),
    ];
    for (name, text, expect) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let (code, out, err) = gate(&[s(default_receipt()), "--thresholds", s(&path)]);
        assert_eq!(code, 7, "{name}: {out}{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with(&format!("error: thresholds file {}: ", path.display())), "{err}");
        assert!(err.contains(expect), "{name}: {err}");
    }
    let (code, _, err) = gate(&[s(default_receipt()), "--thresholds", s(&dir.path().join("absent.toml"))]);
    assert_eq!(code, 7, "{err}");
}

#[test]
fn bad_flags_are_usage_errors() {
    for args in [
        ["--min-cosine", "2"],
        ["--max-kl", "-1"],
        ["--min-exact-match", "x"],
        ["--max-first-divergence", "-3"],
    ] {
        let (code, _, err) = gate(&[&[s(default_receipt())][..], &args].concat());
        assert_eq!(code, 2, "{args:?}: {err}");
    }
    let (code, out, _) = gate(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("Divergence is tolerated only from position N on"), "{out}");
}
