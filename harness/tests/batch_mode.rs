//! `run --mode batch|both`: the batched path engines use for prompts, against the real C++
//! library on the committed fixtures (`fixtures/*-i2_s.gguf`).

mod common;

use std::path::PathBuf;

use bitnet_cpp::{ContextParams, Reference};
use bitnet_engine::profile::RefProfile;
use common::receipts::{code, harness, read_json, run_receipt, stderr};
use serde_json::Value;

/// Every committed I2_S fixture.
fn fixtures() -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> = std::fs::read_dir(bitnet_fixtures::committed_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with("-i2_s.gguf"))
        .collect();
    all.sort();
    assert!(all.len() >= 7, "fixtures: {all:?}");
    all
}

fn fixture(name: &str) -> String {
    bitnet_fixtures::committed_dir().join(name).to_string_lossy().into_owned()
}

fn count(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

#[test]
fn batch_mode_runs_and_records_its_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("tiny-256-gqa-i2_s.gguf");
    let out = run_receipt(
        dir.path(),
        "batch",
        &["--model", &model, "--mode", "batch", "--batch", "7", "--ubatch", "3"],
    );
    let r = read_json(&out);
    assert_eq!(r["schema_version"], "1.3.0");
    assert_eq!(r["settings"]["mode"], "batch");
    assert_eq!(r["settings"]["batch"], 7);
    assert_eq!(r["settings"]["ubatch"], 3);
    assert!(r.get("batch_summary").is_none() && r.get("self_consistency").is_none());
    // Every position of every case compared, as decode compares them.
    for c in r["cases"].as_array().unwrap() {
        let positions = c["positions"].as_array().unwrap();
        assert_eq!(positions.len(), c["token_ids"].as_array().unwrap().len());
        for (i, p) in positions.iter().enumerate() {
            assert_eq!(count(&p["pos"]), i as u64);
        }
    }
    assert!(r["run_state"]["completed"].as_bool().unwrap());

    // `--ubatch` defaults to min(batch, 512); decode receipts record the mode alone.
    let out =
        run_receipt(dir.path(), "default-ubatch", &["--model", &model, "--mode", "batch", "--batch", "20"]);
    let r = read_json(&out);
    assert_eq!((count(&r["settings"]["batch"]), count(&r["settings"]["ubatch"])), (20, 20));
    let out = run_receipt(dir.path(), "decode", &["--model", &model, "--max-tokens", "4"]);
    let r = read_json(&out);
    assert_eq!(r["settings"]["mode"], "decode");
    assert!(r["settings"].get("batch").is_none() && r["settings"].get("ubatch").is_none());
}

#[test]
fn bad_batch_sizes_are_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("tiny-256-gqa-i2_s.gguf");
    let cases: [(&[&str], &str); 5] = [
        (&["--mode", "batch", "--ubatch", "0"], "--ubatch 0"),
        (&["--mode", "batch", "--batch", "8", "--ubatch", "9"], "--ubatch 9"),
        (&["--mode", "both", "--batch", "0"], "--batch 0"),
        (&["--batch", "8"], "--mode batch or --mode both"),
        (&["--mode", "batch", "--continue", "4"], "--mode both"),
    ];
    for (args, says) in cases {
        let out = dir.path().join("never.json");
        let mut all = vec!["run", "--model", &model, "--out", out.to_str().unwrap()];
        all.extend_from_slice(args);
        let o = harness(dir.path(), &all);
        let err = stderr(&o);
        assert_eq!(code(&o), 2, "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!out.exists(), "{args:?}: no receipt for a refused run");
    }
}

/// `--mode both`: decode, batch, and each engine's batch logits against its own decode logits.
/// The reference's batched path is not its decode path: past the first position of a batch
/// its logits differ (the point of comparing the batched path at all).
#[test]
fn both_modes_and_the_reference_batch_differs_from_its_decode() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("tiny-384-mha-i2_s.gguf");
    let out = run_receipt(
        dir.path(),
        "both",
        &["--model", &model, "--mode", "both", "--batch", "32", "--ubatch", "16", "--continue", "4"],
    );
    let r = read_json(&out);
    assert_eq!(r["settings"]["mode"], "both");
    let decode = count(&r["summary"]["positions"]);
    assert_eq!(count(&r["batch_summary"]["positions"]), decode);
    for side in ["rust", "reference"] {
        assert_eq!(count(&r["self_consistency"][side]["positions"]), decode, "{side}");
    }
    let reference = &r["self_consistency"]["reference"];
    let exact = count(&reference["bit_exact_positions"]);
    let cases = r["cases"].as_array().unwrap();
    assert!(
        exact < decode - cases.len() as u64,
        "the reference's batch logits differ from its decode logits beyond position 0: {reference}"
    );
    assert!(reference["max_abs_diff"].as_f64().unwrap() > 0.0, "{reference}");
    assert!(count(&reference["worst_positions"][0]["pos"]) > 0, "{reference}");
    for c in cases {
        // The batch pass ran over the decode pass's tokens, continuation included.
        let n = c["positions"].as_array().unwrap().len();
        assert_eq!(c["batch"]["positions"].as_array().unwrap().len(), n);
        assert_eq!(count(&c["self_consistency"]["reference"]["positions"]), n as u64);
        assert_eq!(c["batch"]["summary"]["positions"], c["summary"]["positions"]);
    }
    // The table shows the extra rows, gate and report understand the receipt.
    let o = harness(dir.path(), &["gate", out.to_str().unwrap()]);
    let text = format!("{}{}", common::receipts::stdout(&o), stderr(&o));
    assert!(text.contains("self_consistency.reference"), "{text}");
    assert!(text.contains("batch.cosine_min"), "{text}");
    let page = dir.path().join("both.html");
    let o = harness(dir.path(), &["report", out.to_str().unwrap(), "--out", page.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("both (batch 32, ubatch 16)"), "the report shows the mode");
}

/// `diff` reports a change of mode or batch sizes as a settings difference.
#[test]
fn diff_flags_a_change_of_mode_and_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("tiny-256-gqa-i2_s.gguf");
    let base = ["--model", model.as_str(), "--max-tokens", "9", "--mode", "batch", "--batch", "8"];
    let a = run_receipt(dir.path(), "a", &base);
    let b = run_receipt(dir.path(), "b", &[&base[..], &["--ubatch", "4"]].concat());
    let o = harness(dir.path(), &["diff", a.to_str().unwrap(), b.to_str().unwrap()]);
    let text = common::receipts::stdout(&o);
    assert!(text.contains("settings"), "{text}");
    assert!(text.contains("\"ubatch\": 8") && text.contains("\"ubatch\": 4"), "{text}");
}

/// `--trace` in batch mode: the reference's batched tensors at the position (its ubatch
/// replayed alone), the Rust engine's decode tensors, and the receipt says which is which.
#[test]
fn trace_in_batch_mode_captures_the_reference_s_batched_ops() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("tiny-256-gqa-i2_s.gguf");
    let args =
        ["--model", model.as_str(), "--mode", "batch", "--batch", "32", "--ubatch", "16", "--trace", "1:40"];
    let r = read_json(&run_receipt(dir.path(), "trace", &args));
    let t = &r["trace"];
    assert_eq!(t["pos"], 40);
    let b = &t["batch"];
    assert_eq!((count(&b["batch"]), count(&b["ubatch"])), (32, 16));
    assert_eq!((count(&b["ubatch_start"]), count(&b["ubatch_tokens"])), (32, 16));
    assert_eq!(b["reference_path"], "batch");
    assert_eq!(b["rust_path"], "batch");
    // Every operation of the model was captured at that position (one row each), and the
    // engine's batched path equals the reference's tensor by tensor, not just in the logits.
    assert!(t["unmatched"].as_array().unwrap().is_empty(), "{}", t["unmatched"]);
    let ops = t["ops"].as_array().unwrap();
    assert!(ops.len() > 10 && ops.iter().any(|o| o["name"] == "result_output"), "{t}");
    assert!(ops.iter().all(|o| o["bit_exact"] == true), "{t}");
    assert!(t["first_divergent_op"].is_null(), "{t}");
}

/// A fault in the Rust engine shows in a batched trace at the operation it perturbs.
#[test]
fn a_batched_trace_names_an_injected_fault() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("tiny-256-gqa-i2_s.gguf");
    let args = [
        "--model",
        model.as_str(),
        "--mode",
        "batch",
        "--batch",
        "16",
        "--ubatch",
        "8",
        "--trace",
        "1:11",
        "--inject-fault",
        "skip-ffn-sub-norm@1",
    ];
    let r = read_json(&run_receipt(dir.path(), "fault", &args));
    let t = &r["trace"];
    assert_eq!(t["batch"]["rust_path"], "batch");
    assert_eq!(t["first_divergent_op"], "ffn_sub_norm-1", "{t}");
}

/// `--save-reference` in batch mode saves batched logits (format 2, mode recorded), which
/// replay only in a run with the same mode and sizes.
#[test]
fn saved_batched_references_replay_with_their_own_sizes_only() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("q6_k-head-256-i2_s.gguf");
    let saved = dir.path().join("ref.bin");
    let sizes = ["--mode", "batch", "--batch", "16", "--ubatch", "8"];
    let live =
        [&["--model", model.as_str(), "--save-reference", saved.to_str().unwrap()][..], &sizes].concat();
    let live = read_json(&run_receipt(dir.path(), "live", &live));
    let replay = [&["--model", model.as_str(), "--reference", saved.to_str().unwrap()][..], &sizes].concat();
    let replay = read_json(&run_receipt(dir.path(), "replay", &replay));
    assert_eq!(replay["settings"]["mode"], "batch");
    assert_eq!(live["cases"][0]["reference_logits_sha256"], replay["cases"][0]["reference_logits_sha256"]);
    assert_eq!(count(&replay["summary"]["bit_exact_positions"]), count(&replay["summary"]["positions"]));
    for other in [&["--mode", "batch", "--batch", "16"][..], &[][..]] {
        let out = dir.path().join("never.json");
        let mut all = vec![
            "run",
            "--model",
            &model,
            "--reference",
            saved.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        all.extend_from_slice(other);
        let o = harness(dir.path(), &all);
        assert_eq!(code(&o), 2, "{other:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("holds batched logits (--mode batch --batch 16 --ubatch 8)"),
            "{}",
            stderr(&o)
        );
    }
}

/// What `--trace` in batch mode relies on: the reference's ubatch holding a position,
/// evaluated alone after the positions before it were fed as the run fed them, is the same
/// graph on the same cache, so its logits are the batched run's bit for bit.
#[test]
fn a_ubatch_replayed_alone_gives_the_batched_run_s_logits() {
    let reference = Reference::open_default().unwrap();
    let model = reference.load_model(std::path::Path::new(&fixture("q8_0-head-384-i2_s.gguf"))).unwrap();
    let params = ContextParams { n_ctx: 128, n_threads: 1, n_ubatch: 16 };
    let mut ctx = model.new_context(params).unwrap();
    let n_vocab = ctx.n_vocab();
    let tokens: Vec<i32> = (0..70).map(|i| (i * 37 + 5) % n_vocab as i32).collect();
    // The run: batches of 32 (ubatches of 16).
    let mut run = Vec::new();
    for (i, chunk) in tokens.chunks(32).enumerate() {
        run.extend(ctx.eval_batch(chunk, (i * 32) as u32).unwrap());
    }
    // The trace of position 53: batch 32..64, ubatch 48..64.
    ctx.reset();
    ctx.eval_batch(&tokens[..32], 0).unwrap();
    ctx.eval_batch(&tokens[32..48], 32).unwrap();
    let filter = bitnet_cpp::CaptureFilter::Names(vec!["result_output".into()]);
    let (logits, captured) = ctx.eval_batch_capture(&tokens[48..64], 48, &filter).unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&logits), bits(&run[48 * n_vocab..64 * n_vocab]));
    let out = captured.iter().rfind(|c| c.name == "result_output").expect("result_output captured");
    assert_eq!(out.ne[1], 16, "one row per token of the ubatch: {:?}", out.ne);
    let row = harness::engine::cpp::token_row(out.ne, &out.data, 5, 16).unwrap();
    assert_eq!(bits(&row), bits(&run[53 * n_vocab..54 * n_vocab]));
}

/// The bar: every fixture bit-exact on the batched path at batch 1, 7, 32 and 512 with
/// ubatch 512 and 64 (at most the batch), against both reference builds (`x86-64-v3`: the
/// AVX2 profile; `native`: the host's). Every failing combination is listed, not just the first.
#[test]
fn batch_mode_is_bit_exact_on_every_fixture_size_and_build() {
    let dir = tempfile::tempdir().unwrap();
    let mut sizes: Vec<(usize, usize)> = Vec::new();
    for batch in [1, 7, 32, 512] {
        for ubatch in [512, 64] {
            let size = (batch, ubatch.min(batch));
            if !sizes.contains(&size) {
                sizes.push(size);
            }
        }
    }
    // The fixture prompts, the first three joined into one of about 180 tokens: many batches
    // of 7 and 32, and ubatches of 64 split inside one batch (the fixtures' context is 256).
    let text = std::fs::read_to_string(bitnet_fixtures::committed_dir().join("prompts.txt")).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')).collect();
    assert!(lines.len() >= 4, "{lines:?}");
    let long = lines[..3].join(" ");
    let mut failures = Vec::new();
    let mut checked = 0;
    for build in ["x86-64-v3", "native"] {
        for model in fixtures() {
            let name = model.file_stem().unwrap().to_string_lossy().into_owned();
            for &(batch, ubatch) in &sizes {
                let (b, u) = (batch.to_string(), ubatch.to_string());
                let against = format!("cpp:{build}");
                let out = dir.path().join(format!("{name}-{build}-{batch}-{ubatch}.json"));
                let args = [
                    "run",
                    "--quiet",
                    "--out",
                    out.to_str().unwrap(),
                    "--model",
                    model.to_str().unwrap(),
                    "--against",
                    &against,
                    "--mode",
                    "batch",
                    "--batch",
                    &b,
                    "--ubatch",
                    &u,
                    "--prompt",
                    &long,
                    "--prompt",
                    lines[3],
                ];
                let o = harness(dir.path(), &args);
                let what = format!("{name} against {build}, batch {batch}, ubatch {ubatch}");
                checked += 1;
                if !out.exists() {
                    failures.push(format!("{what}: exit {} {}", code(&o), stderr(&o).trim()));
                    continue;
                }
                let r = read_json(&out);
                let profile = if build == "native" { RefProfile::host() } else { RefProfile::Avx2 };
                assert_eq!(r["engines"]["rust"]["reference_profile"]["name"], profile.name(), "{what}");
                let s = &r["summary"];
                let (exact, positions) = (count(&s["bit_exact_positions"]), count(&s["positions"]));
                assert!(count(&r["cases"][0]["summary"]["positions"]) > 150, "{what}: the long prompt");
                if exact != positions || positions == 0 || r["verdict"]["status"] != "pass" {
                    let first = &s["first_divergence"];
                    failures.push(format!(
                        "{what}: {exact}/{positions} bit-exact, max |Δ| {}, first divergence case {} pos {}",
                        s["max_abs_diff"], first["case"], first["pos"]
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} of {checked} not bit-exact:\n{}", failures.len(), failures.join("\n"));
}

/// Batched metrics are computed on a helper thread while the engines evaluate the next batch
/// or case (`run::measure`): every case of a multi-case, multi-batch run must still get its own
/// positions, digests and metrics, exactly those an in-line computation gives (recomputed here
/// from the saved reference's logits; the engines are bit-exact on the fixtures, so side A's
/// logits are side B's).
#[test]
fn batched_metrics_computed_aside_are_those_of_each_case() {
    use sha2::{Digest, Sha256};
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("tiny-256-gqa-i2_s.gguf");
    let prompts = dir.path().join("prompts.txt");
    std::fs::write(&prompts, "the cat sat on the mat\nhello world, again and again\nabc def ghi jkl mno\n")
        .unwrap();
    let saved = dir.path().join("ref.bin");
    let args = [
        "--model",
        &model,
        "--prompts",
        prompts.to_str().unwrap(),
        "--mode",
        "batch",
        "--batch",
        "4",
        "--ubatch",
        "3",
        "--save-reference",
        saved.to_str().unwrap(),
    ];
    let r = read_json(&run_receipt(dir.path(), "aside", &args));
    assert!(r["run_state"]["completed"].as_bool().unwrap());
    let cases = r["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    let mut reference = harness::engine::saved::SavedReference::open(&saved).unwrap();
    for (ci, c) in cases.iter().enumerate() {
        let ids: Vec<u32> = c["token_ids"].as_array().unwrap().iter().map(|v| count(v) as u32).collect();
        let positions = c["positions"].as_array().unwrap();
        assert!(positions.len() > 4, "case {ci}: several batches wanted, {} positions", positions.len());
        let mut hash = Sha256::new();
        for (pos, p) in positions.iter().enumerate() {
            let logits = reference.logits(ci, pos).unwrap();
            hash.update(logits.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
            let want = harness::compare::compare_position(
                pos,
                ids[pos],
                ids.get(pos + 1).copied(),
                &logits,
                &logits,
            );
            assert_eq!(p, &serde_json::to_value(&want).unwrap(), "case {ci}, position {pos}");
        }
        let digest: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(c["reference_logits_sha256"], digest, "case {ci}");
        assert_eq!(c["rust_logits_sha256"], digest, "case {ci}");
    }
}
