//! Reference hazards (`harness::hazards`) through the real binary: an untied `output.weight` in a
//! `bitnet-b1.58` file, which the reference loads and never uses, is named by `inspect` in one
//! line, recorded in the receipt's `hazards`, and shown by `run`, `gate`, `report` and `diff`; it
//! fails nothing by default, and the thresholds setting `fail_on_hazards` (or `gate
//! --fail-on-hazards`) makes it fail the gate, consistently with the verdict `run` writes.
//! `inspect` names every head type and the architecture.

mod common;

use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bitnet_engine::gguf::{GgmlType, GgufFile, GgufWriter};
use common::receipts::{code, edited, fixture, harness, read_json, stderr, stdout};
use serde_json::{json, Value};

const UNTIED: &str = "untied-head-256-i2_s.gguf";

/// One run of the untied fixture (a few positions), shared by the tests: (folder, receipt,
/// stdout, stderr). The table is printed (no --quiet) so that its hazard line can be checked.
fn untied_run() -> &'static (tempfile::TempDir, PathBuf, String, String) {
    static RUN: OnceLock<(tempfile::TempDir, PathBuf, String, String)> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("untied.json");
        let model = fixture(UNTIED);
        let o = harness(
            dir.path(),
            &["run", "--model", model.to_str().unwrap(), "--max-tokens", "4", "--out", out.to_str().unwrap()],
        );
        assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
        (dir, out, stdout(&o), stderr(&o))
    })
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn inspect_json(model: &Path) -> Value {
    let o = harness(model.parent().unwrap(), &["inspect", s(model), "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    serde_json::from_str(&stdout(&o)).unwrap()
}

fn inspect_text(model: &Path) -> String {
    let o = harness(model.parent().unwrap(), &["inspect", s(model)]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    stdout(&o)
}

fn gate(dir: &Path, args: &[&str]) -> (i32, String) {
    let mut all = vec!["gate"];
    all.extend_from_slice(args);
    let o = harness(dir, &all);
    assert!(stderr(&o).is_empty() || code(&o) == 7, "{}", stderr(&o));
    (code(&o), stdout(&o) + &stderr(&o))
}

#[test]
fn inspect_names_the_ignored_head_in_one_line() {
    let model = fixture(UNTIED);
    let text = inspect_text(&model);
    assert!(
        text.contains("architecture: bitnet-b1.58 (the reference's graph: build_bitnet_158)\n"),
        "{text}"
    );
    assert!(
        text.contains(
            "head: token_embd.weight f16, output.weight f16 (untied); the reference's lm_head: token_embd.weight\n"
        ),
        "{text}"
    );
    let hazards: Vec<&str> = text.lines().filter(|l| l.starts_with("hazard ")).collect();
    assert_eq!(hazards.len(), 1, "{text}");
    assert!(
        hazards[0]
            .starts_with("hazard untied_output_ignored: output.weight (f16) is this model's own lm_head")
            && hazards[0].contains("build_bitnet_158")
            && hazards[0].ends_with("(does not fail the verdict by default)"),
        "{}",
        hazards[0]
    );

    let v = inspect_json(&model);
    assert_eq!(v["architecture"], "bitnet-b1.58");
    assert_eq!(
        v["head"],
        json!({
            "graph": "build_bitnet_158",
            "token_embd_type": "f16",
            "token_embd_supported": true,
            "output_type": "f16",
            "tied": false,
            "reference_lm_head": "token_embd.weight",
            "output_note": v["head"]["output_note"].clone(),
        })
    );
    assert!(v["head"]["output_note"].as_str().unwrap().contains("never uses it"));
    let h = v["hazards"].as_array().unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0]["kind"], "untied_output_ignored");
    assert_eq!(h[0]["fails_verdict"], false);
    // The same hazard, word for word, as a run records it.
    assert_eq!(h[0], untied_hazard(&read_json(&untied_run().1)));
}

/// Every head type and architecture of the fixtures, tied heads without a hazard.
#[test]
fn inspect_names_every_head_type_and_architecture() {
    for (file, arch, graph, embd) in [
        ("tiny-256-gqa-i2_s.gguf", "bitnet-b1.58", "build_bitnet_158", "f16"),
        ("q8_0-head-384-i2_s.gguf", "bitnet-b1.58", "build_bitnet_158", "q8_0"),
        ("q6_k-head-256-i2_s.gguf", "bitnet-b1.58", "build_bitnet_158", "q6_K"),
        ("q4_k-head-256-i2_s.gguf", "bitnet-b1.58", "build_bitnet_158", "q4_K"),
        ("arch-bitnet-256-i2_s.gguf", "bitnet", "build_bitnet", "f16"),
    ] {
        let model = fixture(file);
        let text = inspect_text(&model);
        assert!(
            text.contains(&format!("architecture: {arch} (the reference's graph: {graph})\n")),
            "{file}: {text}"
        );
        assert!(
            text.contains(&format!(
                "head: token_embd.weight {embd}, output.weight tied; the reference's lm_head: token_embd.weight\n"
            )),
            "{file}: {text}"
        );
        assert!(!text.contains("hazard "), "{file}: {text}");
        let v = inspect_json(&model);
        assert_eq!(v["head"]["token_embd_type"], embd, "{file}");
        assert_eq!(v["head"]["output_type"], Value::Null, "{file}");
        assert_eq!(v["head"]["tied"], true, "{file}");
        assert_eq!(v["hazards"], json!([]), "{file}");
    }
}

/// A `bitnet` file with an `output.weight` is not a silent hazard: the reference refuses it
/// (`build_bitnet` loads no output tensor: "wrong number of tensors"). `inspect` says so.
#[test]
fn an_output_tensor_in_a_bitnet_file_is_a_note_not_a_hazard() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = bitnet_fixtures::spec::arch_bitnet();
    spec.untied_output = true;
    spec.name = "bitnet-with-output".into();
    let model = bitnet_fixtures::write_spec(&spec, bitnet_fixtures::WeightForm::I2S, dir.path()).unwrap();
    let text = inspect_text(&model);
    assert!(
        text.contains(
            "note: architecture bitnet has no output.weight: the reference refuses this file (wrong number of tensors)\n"
        ),
        "{text}"
    );
    assert!(!text.contains("hazard "), "{text}");
    assert_eq!(inspect_json(&model)["hazards"], json!([]));
}

/// A copy of `src` whose token_embd is Q4_0 (bytes of the right size), written with the
/// engine's own GGUF writer: a head type the engine has no mirror of.
fn with_q4_0_head(src: &Path, dst: &Path) {
    let f = GgufFile::open(src).unwrap();
    let mut w = GgufWriter::new(f.version());
    for (k, v) in f.metadata() {
        w.add_metadata(k.clone(), v.clone()).unwrap();
    }
    let q4_0 = |dims: &[u64]| GgmlType::Q4_0.tensor_bytes(dims).unwrap();
    for t in f.tensors() {
        let (ty, n) = if t.name == "token_embd.weight" {
            (GgmlType::Q4_0, q4_0(&t.dims))
        } else {
            (t.ggml_type, t.n_bytes)
        };
        w.add_tensor_info(t.name.clone(), &t.dims, ty, n).unwrap();
    }
    let mut out = w.begin(BufWriter::new(std::fs::File::create(dst).unwrap())).unwrap();
    for t in f.tensors() {
        if t.name == "token_embd.weight" {
            // Blocks of an f16 scale of 0.01 and codes 0x88 (both nibbles 8: zero weights).
            let blocks = q4_0(&t.dims) / 18;
            let block: Vec<u8> = [0x1f, 0x21].into_iter().chain([0x88; 16]).collect();
            out.write_tensor_data(&t.name, &block.repeat(blocks as usize)).unwrap();
        } else {
            out.write_tensor_data(&t.name, f.tensor_data(t)).unwrap();
        }
    }
    out.finish().unwrap();
}

#[test]
fn an_unsupported_head_type_is_named_by_inspect_and_refused_by_run_with_exit_5() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("q4_0-head.gguf");
    with_q4_0_head(&fixture("tiny-256-gqa-i2_s.gguf"), &model);
    let text = inspect_text(&model);
    assert!(
        text.contains("head: token_embd.weight q4_0 (the Rust engine has no mirror of this type: run stops with exit 5)"),
        "{text}"
    );
    let v = inspect_json(&model);
    assert_eq!(
        (v["head"]["token_embd_type"].as_str(), v["head"]["token_embd_supported"].as_bool()),
        (Some("q4_0"), Some(false))
    );

    let o = harness(dir.path(), &["run", "--model", s(&model), "--out", "r.json"]);
    assert_eq!(code(&o), 5, "{}{}", stdout(&o), stderr(&o));
    let err = stderr(&o);
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].contains("token_embd.weight") && errors[0].contains("q4_0"), "{err}");
    assert!(!dir.path().join("r.json").exists(), "no receipt for a model the engine cannot run");
}

fn untied_hazard(receipt: &Value) -> Value {
    let h = receipt["hazards"].as_array().unwrap();
    assert_eq!(h.len(), 1, "{h:?}");
    h[0].clone()
}

#[test]
fn a_run_records_and_shows_the_hazard_without_failing() {
    let (_, receipt, out, err) = untied_run();
    let r = read_json(receipt);
    let h = untied_hazard(&r);
    assert_eq!(h["kind"], "untied_output_ignored");
    assert_eq!(h["fails_verdict"], false);
    assert!(
        h["detail"].as_str().unwrap().starts_with("output.weight (f16) is this model's own lm_head"),
        "{h}"
    );
    assert_eq!(r["settings"]["thresholds"]["fail_on_hazards"], false);
    assert_eq!(r["verdict"], json!({"status": "pass", "reasons": []}));
    // The table's hazard line, and a warning while it runs.
    let line = format!(
        "hazard untied_output_ignored: {} (does not fail the verdict by default)\n",
        h["detail"].as_str().unwrap()
    );
    assert!(out.contains(&line), "{out}");
    assert!(out.contains("verdict: PASS"), "{out}");
    assert!(err.contains("warning: hazard untied_output_ignored: "), "{err}");
}

#[test]
fn gate_shows_the_hazard_and_fails_on_it_only_when_the_thresholds_say_so() {
    let (dir, receipt, _, _) = untied_run();
    let d = dir.path();
    let (c, out) = gate(d, &[s(receipt)]);
    assert_eq!(c, 0, "{out}");
    assert!(out.contains("  fail_on_hazards false (from the receipt)\n"), "{out}");
    assert!(out.contains("note hazard untied_output_ignored: output.weight (f16)"), "{out}");
    assert!(out.contains("(does not fail the gate: fail_on_hazards false from the receipt)"), "{out}");

    let base = "min_cosine = 0.99999\nmin_exact_match = 1.0\nmax_kl = 1e-4\n";
    for (name, setting, fails) in [
        ("all.toml", "fail_on_hazards = true\n", true),
        ("kind.toml", "fail_on_hazards = [\"untied_output_ignored\"]\n", true),
        ("other.toml", "fail_on_hazards = [\"reference_profile\"]\n", false),
        ("none.toml", "fail_on_hazards = false\n", false),
        ("absent.toml", "", false),
    ] {
        let path = d.join(name);
        std::fs::write(&path, format!("{base}{setting}")).unwrap();
        let (c, out) = gate(d, &[s(receipt), "--thresholds", s(&path)]);
        assert_eq!(c, if fails { 1 } else { 0 }, "{name}: {out}");
        let tag = if fails { "FAIL" } else { "note" };
        assert!(out.contains(&format!("{tag} hazard untied_output_ignored: ")), "{name}: {out}");
        assert!(out.contains(&format!("from {})", path.display())), "{name}: {out}");
    }
    // The same in JSON.
    let json_file = d.join("t.json");
    std::fs::write(
        &json_file,
        r#"{"min_cosine": 0.99999, "min_exact_match": 1, "max_kl": 1e-4, "fail_on_hazards": true}"#,
    )
    .unwrap();
    assert_eq!(gate(d, &[s(receipt), "--thresholds", s(&json_file)]).0, 1);

    // The flag overrides the file either way.
    let (c, out) = gate(d, &[s(receipt), "--fail-on-hazards"]);
    assert_eq!(c, 1, "{out}");
    assert!(
        out.contains("FAIL hazard untied_output_ignored: ")
            && out.contains("(fail_on_hazards true from --fail-on-hazards)"),
        "{out}"
    );
    assert_eq!(gate(d, &[s(receipt), "--fail-on-hazards", "untied_output_ignored"]).0, 1);
    assert_eq!(
        gate(d, &[s(receipt), "--thresholds", s(&d.join("all.toml")), "--fail-on-hazards", "none"]).0,
        0
    );
    let o = harness(d, &["gate", s(receipt), "--fail-on-hazards", "untied"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("\"untied\" is not a hazard kind"), "{}", stderr(&o));

    // An unknown kind in a file is refused (exit 7), never silently nothing.
    let typo = d.join("typo.toml");
    std::fs::write(&typo, format!("{base}fail_on_hazards = [\"untied_head\"]\n")).unwrap();
    let (c, out) = gate(d, &[s(receipt), "--thresholds", s(&typo)]);
    assert_eq!(c, 7, "{out}");
    assert!(
        out.contains("\"untied_head\", which is not a hazard kind") && out.contains("untied_output_ignored"),
        "{out}"
    );
    let bad = d.join("bad.toml");
    std::fs::write(&bad, format!("{base}fail_on_hazards = \"yes\"\n")).unwrap();
    let (c, out) = gate(d, &[s(receipt), "--thresholds", s(&bad)]);
    assert_eq!(c, 7, "{out}");
    assert!(out.contains("line 4") && out.contains("true, false or a list of hazard kinds"), "{out}");
}

/// The verdict `run` writes and the gate on the receipt's own thresholds agree: a receipt whose
/// recorded thresholds make hazards fail is judged `fail` by both.
#[test]
fn verdict_and_gate_agree_on_hazards() {
    let (dir, receipt, _, _) = untied_run();
    let d = dir.path();
    let loaded = harness::schema::read_receipt(receipt).unwrap();
    assert_eq!(harness::run::judge(&loaded).status, "pass");

    let strict = edited(receipt, d, "strict.json", |v| {
        v["settings"]["thresholds"]["fail_on_hazards"] = json!(["untied_output_ignored"]);
    });
    let r = harness::schema::read_receipt(&strict).unwrap();
    let verdict = harness::run::judge(&r);
    assert_eq!(verdict.status, "fail");
    assert_eq!(verdict.reasons.len(), 1, "{:?}", verdict.reasons);
    assert!(
        verdict.reasons[0].starts_with("hazard untied_output_ignored: output.weight (f16)"),
        "{:?}",
        verdict.reasons
    );
    let (c, out) = gate(d, &[s(&strict)]);
    assert_eq!(c, 1, "{out}");
    assert!(out.contains("  fail_on_hazards [untied_output_ignored] (from the receipt)"), "{out}");

    // A hazard that says it fails on its own fails whatever the thresholds.
    let own = edited(receipt, d, "own.json", |v| v["hazards"][0]["fails_verdict"] = json!(true));
    let r = harness::schema::read_receipt(&own).unwrap();
    assert_eq!(harness::run::judge(&r).status, "fail");
    let (c, out) = gate(d, &[s(&own)]);
    assert_eq!(c, 1, "{out}");
    assert!(out.contains("(fails on its own)"), "{out}");
}

#[test]
fn report_shows_the_hazard() {
    let (dir, receipt, _, _) = untied_run();
    let page = dir.path().join("untied.html");
    let o = harness(dir.path(), &["report", s(receipt), "--out", s(&page)]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        html.contains("<div class=\"warn\">Hazard <code>untied_output_ignored</code>: output.weight (f16) is this model")
            && html.contains("does not fail the verdict; the thresholds setting fail_on_hazards can make it"),
        "report names the hazard"
    );
}

#[test]
fn diff_shows_hazards_that_appear_or_stay() {
    let (dir, receipt, _, _) = untied_run();
    let d = dir.path();
    let without = edited(receipt, d, "without.json", |v| v["hazards"] = json!([]));

    let o = harness(d, &["diff", s(&without), s(receipt)]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("hazards: none -> untied_output_ignored\n"), "{text}");
    assert!(
        text.contains(&format!(
            "note: {}: hazard untied_output_ignored: output.weight (f16)",
            receipt.display()
        )),
        "{text}"
    );
    assert!(text.contains("identity: changed in hazards"), "{text}");

    let o = harness(d, &["diff", s(receipt), s(receipt)]);
    let text = stdout(&o);
    assert!(text.contains("hazards: untied_output_ignored in both\n"), "{text}");
    assert!(text.contains("note: hazard untied_output_ignored: "), "{text}");

    let o = harness(d, &["diff", s(&without), s(receipt), "--json"]);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["old"]["hazards"], json!([]));
    assert_eq!(v["new"]["hazards"][0]["kind"], "untied_output_ignored");

    // Receipts without hazards say nothing about them.
    let o = harness(d, &["diff", s(&without), s(&without)]);
    assert!(!stdout(&o).contains("hazards: ") && !stdout(&o).contains("note: hazard"), "{}", stdout(&o));

    let page = d.join("diff.html");
    let o = harness(d, &["diff", s(&without), s(receipt), "--html", s(&page)]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(std::fs::read_to_string(&page).unwrap().contains("Hazard <code>untied_output_ignored</code>"));
}
