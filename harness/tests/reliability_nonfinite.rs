//! Non-finite logits and zero vectors, through both real engines:
//! - a NaN planted in one row of the (tied) embedding: every position reports exactly that
//!   vocabulary entry as NaN in both engines until the poisoned token is fed, then all logits
//!   are non-finite; the positions are recorded one by one, the verdict fails and so does
//!   `harness gate`;
//! - all-zero logits in both engines: cosine 1 (defined, never NaN), KL 0, the run passes.

mod reliability_common;

use std::path::Path;

use bitnet_engine::gguf::GgufFile;
use bitnet_engine::tokenizer::Tokenizer;
use harness::compare::{compare_position, cosine};
use reliability_common::procs;
use reliability_common::rewrite::{fixture_path, rewrite};
use serde_json::Value as Json;

const PROMPT: &str = "The sun rises over the hills";

fn run_receipt(model: &Path, dir: &Path) -> Json {
    let out = dir.join("receipt.json");
    let mut cmd = procs::harness();
    cmd.args(["run", "--quiet", "--prompt", PROMPT]).arg("--model").arg(model).arg("--out").arg(&out);
    let done = procs::run(cmd, "harness run");
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap()
}

fn gate(receipt: &Path) -> procs::Finished {
    let mut cmd = procs::harness();
    cmd.arg("gate").arg(receipt);
    procs::run(cmd, "harness gate")
}

#[test]
fn nan_logits_are_reported_per_position_and_fail_the_gate() {
    let file = GgufFile::open(fixture_path()).unwrap();
    let tok = Tokenizer::from_gguf(&file).unwrap();
    let ids = tok.encode(PROMPT, true, false);
    assert!(ids.len() >= 5, "{ids:?}");
    // Poison the token fed at position 3 (first occurrence).
    let k = 3;
    let poisoned = ids[k];
    let first = ids.iter().position(|&t| t == poisoned).unwrap();
    let n_embd = file.get_u64("bitnet-b1.58.embedding_length").unwrap() as usize;

    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("nan-row.gguf");
    rewrite(
        &fixture_path(),
        &model,
        |_| {},
        |name, bytes| {
            if name == "token_embd.weight" {
                let at = poisoned as usize * n_embd * 2 + 10;
                bytes[at..at + 2].copy_from_slice(&0x7e00u16.to_le_bytes()); // f16 NaN
            }
        },
    );
    let receipt = run_receipt(&model, dir.path());
    let n_vocab = tok.vocab_size() as u64;
    let positions = receipt["cases"][0]["positions"].as_array().unwrap();
    assert_eq!(positions.len(), ids.len());
    for p in positions {
        let pos = p["pos"].as_u64().unwrap() as usize;
        let nf = &p["nonfinite"];
        assert!(nf.is_object(), "position {pos}: {p}");
        // No metric is computed from non-finite vectors, and none is NaN in the receipt.
        for key in ["cosine", "kl", "kl_reverse", "max_abs_diff"] {
            assert!(p[key].is_null(), "position {pos}: {key} = {}", p[key]);
        }
        if pos < first {
            // Only the poisoned vocabulary entry (its lm_head row holds the NaN).
            assert_eq!(nf["rust_nan"], 1, "position {pos}: {nf}");
            assert_eq!(nf["reference_nan"], 1, "position {pos}: {nf}");
            assert_eq!(nf["rust_inf"], 0);
            assert_eq!(nf["reference_inf"], 0);
        } else {
            // The poisoned embedding was fed: every logit from here on.
            assert_eq!(
                nf["rust_nan"].as_u64().unwrap() + nf["rust_inf"].as_u64().unwrap(),
                n_vocab,
                "{pos}: {nf}"
            );
            let r = nf["reference_nan"].as_u64().unwrap() + nf["reference_inf"].as_u64().unwrap();
            assert_eq!(r, n_vocab, "position {pos}: {nf}");
        }
    }
    let summary = &receipt["summary"];
    assert_eq!(summary["nonfinite_positions"].as_u64().unwrap() as usize, ids.len());
    assert_eq!(summary["first_divergence"]["reason"], "nonfinite");
    assert_eq!(summary["first_divergence"]["pos"], 0);
    assert_eq!(receipt["verdict"]["status"], "fail");
    assert!(receipt["verdict"]["reasons"].to_string().contains("NaN"), "{}", receipt["verdict"]);

    let done = gate(&dir.path().join("receipt.json"));
    assert_eq!(done.code(), Some(1), "gate must fail on non-finite logits\n{}{}", done.stdout, done.stderr);
    let said = format!("{}{}", done.stdout, done.stderr);
    assert!(said.to_lowercase().contains("nan") || said.contains("non-finite"), "{said}");
}

#[test]
fn zero_logits_have_cosine_one_and_pass() {
    // output_norm all zero: result_norm is zero, so every logit is exactly 0 in both engines.
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("zero-norm.gguf");
    rewrite(
        &fixture_path(),
        &model,
        |_| {},
        |name, bytes| {
            if name == "output_norm.weight" {
                bytes.fill(0);
            }
        },
    );
    let receipt = run_receipt(&model, dir.path());
    for p in receipt["cases"][0]["positions"].as_array().unwrap() {
        assert!(p["nonfinite"].is_null(), "{p}");
        assert_eq!(p["cosine"].as_f64(), Some(1.0), "{p}");
        assert_eq!(p["kl"].as_f64(), Some(0.0), "{p}");
        assert_eq!(p["bit_exact"], true);
    }
    assert_eq!(receipt["summary"]["cosine_min"].as_f64(), Some(1.0));
    assert_eq!(receipt["verdict"]["status"], "pass", "{}", receipt["verdict"]);
    let done = gate(&dir.path().join("receipt.json"));
    assert_eq!(done.code(), Some(0), "{}{}", done.stdout, done.stderr);
}

#[test]
fn metric_definitions_for_zero_and_non_finite_vectors() {
    let zero = vec![0f32; 8];
    let one: Vec<f32> = (0..8).map(|i| i as f32 - 3.5).collect();
    assert_eq!(cosine(&zero, &zero), 1.0);
    assert_eq!(cosine(&zero, &one), 0.0);
    assert_eq!(cosine(&one, &zero), 0.0);
    // Extreme finite values do not overflow into NaN (computed in f64).
    let huge = vec![f32::MAX; 8];
    assert_eq!(cosine(&huge, &huge), 1.0);
    let mut inf = one.clone();
    inf[2] = f32::INFINITY;
    inf[5] = f32::NEG_INFINITY;
    let p = compare_position(0, 1, Some(2), &one, &inf);
    let nf = p.nonfinite.expect("reported");
    assert_eq!((nf.rust_nan, nf.rust_inf, nf.reference_nan, nf.reference_inf), (0, 0, 0, 2));
    assert_eq!(p.cosine, None);
    assert!(!p.argmax_match);
    let mut nan = one.clone();
    nan[0] = f32::NAN;
    let p = compare_position(0, 1, None, &nan, &one);
    let nf = p.nonfinite.expect("reported");
    assert_eq!((nf.rust_nan, nf.rust_inf, nf.reference_nan, nf.reference_inf), (1, 0, 0, 0));
}
