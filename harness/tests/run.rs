//! `harness run` end to end, through the real binary and the real C++ reference.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

mod common;

use common::receipts::{harness, rewrite_footer};

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn read(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The receipt without its time fields.
fn timeless(mut v: Value) -> Value {
    let o = v.as_object_mut().unwrap();
    o.remove("created_at");
    o.remove("timings");
    v
}

fn fixture(name: &str) -> PathBuf {
    bitnet_fixtures::committed_dir().join(name)
}

#[test]
fn default_run_writes_a_passing_receipt_and_prints_its_table() {
    let dir = tempfile::tempdir().unwrap();
    let o = harness(dir.path(), &[]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("cosine min") && stdout.contains("verdict: PASS"), "{stdout}");
    let path = dir.path().join("receipts/runs/tiny-256-gqa-i2_s.json");
    assert!(stdout.contains("receipt: receipts/runs/tiny-256-gqa-i2_s.json"), "{stdout}");
    let r = read(&path);
    assert_eq!(r["schema_version"], harness::receipt::SCHEMA_VERSION);
    assert_eq!(r["model"]["path"], "embedded:tiny-256-gqa-i2_s.gguf");
    assert_eq!(r["summary"]["exact_match_rate"], 1.0);
    assert!(r["summary"]["cosine_min"].as_f64().unwrap() >= 0.99999);
    assert_eq!(r["verdict"]["status"], "pass");
    assert_eq!(r["run_state"]["completed"], true);
    assert_eq!(r["tokenizer"]["agree"], true);
    let cases = r["cases"].as_array().unwrap();
    assert_eq!(cases.len(), bitnet_fixtures::prompts().len());
    for c in cases {
        assert_eq!(c["positions"].as_array().unwrap().len(), c["token_ids"].as_array().unwrap().len());
    }
}

#[test]
fn same_inputs_give_the_same_receipt_apart_from_time_fields() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("tiny-384-mha-i2_s.gguf");
    let m = model.to_str().unwrap();
    for out in ["a.json", "b.json"] {
        let o = harness(dir.path(), &["run", "--model", m, "--max-tokens", "40", "--out", out, "--quiet"]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }
    let a = read(&dir.path().join("a.json"));
    let b = read(&dir.path().join("b.json"));
    assert_ne!(a["created_at"], Value::Null);
    assert_eq!(timeless(a), timeless(b));
}

#[test]
fn prompts_max_tokens_and_continuation() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.txt"), "first line\\nwith an escaped newline\n\nsecond prompt here\n")
        .unwrap();
    let o =
        harness(dir.path(), &["run", "--prompts", "p.txt", "--continue", "12", "--out", "r.json", "--quiet"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let r = read(&dir.path().join("r.json"));
    let cases = r["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 2);
    assert_eq!(cases[0]["prompt"], "first line\nwith an escaped newline");
    for c in cases {
        let n_prompt = c["n_prompt_tokens"].as_u64().unwrap() as usize;
        assert_eq!(c["token_ids"].as_array().unwrap().len(), n_prompt + 12);
        assert_eq!(c["positions"].as_array().unwrap().len(), n_prompt + 12);
    }
    assert_eq!(r["settings"]["continue_tokens"], 12);
    assert_eq!(r["verdict"]["status"], "pass");

    let o = harness(
        dir.path(),
        &[
            "run",
            "--prompt",
            "one two three four five six",
            "--max-tokens",
            "3",
            "--out",
            "m.json",
            "--quiet",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let r = read(&dir.path().join("m.json"));
    assert_eq!(r["summary"]["positions"], 3);
}

#[test]
fn saved_reference_replays_without_the_cpp_library() {
    let dir = tempfile::tempdir().unwrap();
    let o = harness(
        dir.path(),
        &["run", "--max-tokens", "20", "--save-reference", "ref.bin", "--out", "live.json", "--quiet"],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // Replaying must not need the library: point BITNET_CPP_DIR at nothing usable.
    let o = Command::new(env!("CARGO_BIN_EXE_harness"))
        .current_dir(dir.path())
        .args(["run", "--max-tokens", "20", "--reference", "ref.bin", "--out", "saved.json", "--quiet"])
        .env("BITNET_CPP_DIR", "/nonexistent")
        .env_remove("CROSSVAL_GGUF")
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let live = read(&dir.path().join("live.json"));
    let saved = read(&dir.path().join("saved.json"));
    assert_eq!(live["summary"], saved["summary"]);
    assert_eq!(live["cases"], saved["cases"]);
    assert!(saved["engines"]["reference"]["source"].as_str().unwrap().starts_with("saved:"));

    // A different model is refused.
    let other = fixture("tiny-384-mha-i2_s.gguf");
    let o = harness(
        dir.path(),
        &["run", "--model", other.to_str().unwrap(), "--reference", "ref.bin", "--quiet"],
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("different model"), "{}", stderr(&o));

    // A saved reference whose token ids disagree with ours: exit 3, unless --ids-from picks a side.
    rewrite_footer(&dir.path().join("ref.bin"), |f| {
        let ids = f["cases"][0]["token_ids"].as_array_mut().unwrap();
        ids[2] = Value::from(ids[2].as_u64().unwrap() + 1);
    });
    let o = harness(dir.path(), &["run", "--max-tokens", "20", "--reference", "ref.bin", "--quiet"]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(stderr(&o).contains("prompt 1: the tokenizers disagree at token 2"), "{}", stderr(&o));
    let o = harness(
        dir.path(),
        &[
            "run",
            "--max-tokens",
            "20",
            "--reference",
            "ref.bin",
            "--ids-from",
            "rust",
            "--out",
            "ids.json",
            "--quiet",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let r = read(&dir.path().join("ids.json"));
    assert_eq!(r["tokenizer"]["agree"], false);
    assert_eq!(r["tokenizer"]["mismatches"][0]["first_index"], 2);
    assert_eq!(r["verdict"]["status"], "fail");
}

#[test]
fn rounding_switch_off_is_recorded_and_changes_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let o = harness(
        dir.path(),
        &["run", "--no-exact-rounding", "--max-tokens", "40", "--out", "off.json", "--quiet"],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let r = read(&dir.path().join("off.json"));
    assert_eq!(r["engines"]["rust"]["exact_reference_rounding"], false);
    assert!(
        r["summary"]["bit_exact_positions"].as_u64().unwrap() < r["summary"]["positions"].as_u64().unwrap()
    );
}

#[test]
fn bad_inputs_get_their_own_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = harness(d, &["run", "--model", "missing.gguf"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("missing.gguf"));

    let o = harness(d, &["run", "--prompt", ""]);
    assert_eq!(code(&o), 6, "{}", stderr(&o));
    assert!(stderr(&o).contains("prompt 1 is empty"), "{}", stderr(&o));

    let o = harness(
        d,
        &[
            "run",
            "--prompt",
            "a prompt that is certainly longer than eight tokens, isn't it?",
            "--n-ctx",
            "8",
        ],
    );
    assert_eq!(code(&o), 6, "{}", stderr(&o));
    assert!(stderr(&o).contains("the context holds 8"), "{}", stderr(&o));

    let o = Command::new(env!("CARGO_BIN_EXE_harness"))
        .current_dir(d)
        .args(["run", "--quiet"])
        .env("BITNET_CPP_DIR", d.join("no-such-dir"))
        .env_remove("CROSSVAL_GGUF")
        .output()
        .unwrap();
    assert_eq!(code(&o), 4, "{}", stderr(&o));
    let err = stderr(&o);
    assert_eq!(err.lines().filter(|l| l.starts_with("error:")).count(), 1, "{err}");
}

#[test]
fn crossval_gguf_names_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("tiny-384-mha-i2_s.gguf");
    let o = Command::new(env!("CARGO_BIN_EXE_harness"))
        .current_dir(dir.path())
        .args(["--max-tokens", "8", "--quiet", "--out", "r.json"])
        .env("CROSSVAL_GGUF", &model)
        .env_remove("BITNET_CPP_DIR")
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let r = read(&dir.path().join("r.json"));
    assert_eq!(r["model"]["path"], model.display().to_string());
    assert_eq!(r["model"]["hyperparameters"]["embedding_length"], 384);
}
