//! Corrupt I2_S quantizations: `inspect` names the tensors and `run` judges the file invalid
//! input, for a file really produced by the reference's multi-threaded quantizer and for
//! hand-made corruptions of each kind (invalid code 3, zero/NaN/infinite scale, extra bytes
//! after the tensor).

mod reliability_common;

use std::collections::BTreeSet;
use std::path::Path;

use bitnet_cpp::{QuantizeOptions, Reference, FTYPE_MOSTLY_I2_S};
use bitnet_engine::gguf::{GgmlType, GgufFile};
use bitnet_fixtures::WeightForm;
use reliability_common::gguf_map::{self, FieldKind};
use reliability_common::procs;
use serde_json::Value;

fn inspect_json(path: &Path) -> Value {
    let mut cmd = procs::harness();
    cmd.arg("inspect").arg(path).arg("--json");
    let out = procs::run(cmd, "harness inspect --json");
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    serde_json::from_str(&out.stdout).expect("inspect --json prints JSON")
}

fn inspect_text(path: &Path) -> String {
    let mut cmd = procs::harness();
    cmd.arg("inspect").arg(path);
    let out = procs::run(cmd, "harness inspect");
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    out.stdout
}

fn corrupt_tensors(report: &Value) -> BTreeSet<String> {
    report["corrupt_i2s_tensors"]
        .as_array()
        .expect("corrupt_i2s_tensors")
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// Problems `inspect --json` reports for `tensor`.
fn problems_of(report: &Value, tensor: &str) -> Vec<String> {
    report["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == tensor)
        .and_then(|t| t["i2s"]["problems"].as_array())
        .map(|a| a.iter().map(|p| p.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// `harness run` on `model` (four positions of one prompt): the receipt.
fn run_receipt(model: &Path, dir: &Path) -> Value {
    let out_path = dir.join("receipt.json");
    let mut cmd = procs::harness();
    cmd.args(["run", "--quiet", "--max-tokens", "4", "--prompt", "The sun rises"])
        .arg("--model")
        .arg(model)
        .arg("--out")
        .arg(&out_path);
    let out = procs::run(cmd, "harness run");
    assert_eq!(out.code(), Some(0), "harness run: {}", out.stderr);
    serde_json::from_slice(&std::fs::read(&out_path).unwrap()).unwrap()
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// The tensors of `quantized` whose ggml dequantization differs from the F32 source: the
/// ones the quantizer really damaged.
fn really_damaged(reference: &Reference, source: &Path, quantized: &Path) -> BTreeSet<String> {
    let src = GgufFile::open(source).unwrap();
    let out = GgufFile::open(quantized).unwrap();
    let ggml = reference.open_gguf_tensors(quantized).unwrap();
    out.tensors()
        .iter()
        .filter(|t| t.ggml_type == GgmlType::I2_S)
        .filter(|t| ggml.dequantize(&t.name).unwrap() != f32s(src.tensor_data(src.tensor(&t.name).unwrap())))
        .map(|t| t.name.clone())
        .collect()
}

#[test]
fn a_multi_thread_reference_quantization_is_flagged_and_judged_invalid_input() {
    let spec = &bitnet_fixtures::spec::committed()[0];
    let source = bitnet_fixtures::ensure(spec, WeightForm::F32);
    let dir = tempfile::tempdir().unwrap();
    let reference = Reference::open_built().unwrap();
    let single = dir.path().join("one-thread.gguf");
    let multi = dir.path().join("four-threads.gguf");
    let options =
        |threads| QuantizeOptions { ftype: FTYPE_MOSTLY_I2_S, threads, ..QuantizeOptions::default() };
    reference.quantize(&source, &single, options(1)).unwrap();
    reference.quantize(&source, &multi, options(4)).unwrap();

    // The single-threaded file is clean: the detector does not flag the reference's own output.
    let clean = inspect_json(&single);
    assert!(corrupt_tensors(&clean).is_empty(), "{:?}", clean["corrupt_i2s_tensors"]);
    assert!(!inspect_text(&single).contains("CORRUPT"));

    // The multi-threaded one: every tensor the quantizer damaged is named, with its problems.
    let report = inspect_json(&multi);
    let flagged = corrupt_tensors(&report);
    let damaged = really_damaged(&reference, &source, &multi);
    eprintln!(
        "four-thread quantization: {} tensors flagged, {} really damaged",
        flagged.len(),
        damaged.len()
    );
    assert!(!flagged.is_empty(), "nothing flagged in a multi-thread quantization");
    let missed: Vec<_> = damaged.difference(&flagged).collect();
    assert!(missed.is_empty(), "damaged but not flagged: {missed:?}");
    for t in &flagged {
        let problems = problems_of(&report, t);
        assert!(!problems.is_empty(), "{t}");
        // Every chunked tensor shows the quantizer's extra chunk tails.
        assert!(problems.iter().any(|p| p.contains("multi-threaded I2_S quantization")), "{t}: {problems:?}");
    }
    let text = inspect_text(&multi);
    eprintln!(
        "{}",
        text.lines().skip_while(|l| !l.starts_with("I2_S integrity")).take(6).collect::<Vec<_>>().join("\n")
    );
    assert!(text.contains("I2_S integrity:"), "{text}");
    for t in &flagged {
        assert!(
            text.lines().any(|l| l.contains(t.as_str()) && l.contains("CORRUPT")),
            "{t} not marked:\n{text}"
        );
    }

    // `run` compares anyway but the verdict says the input is invalid, naming the tensors.
    let receipt = run_receipt(&multi, dir.path());
    assert_eq!(receipt["verdict"]["status"], "invalid_input", "{}", receipt["verdict"]);
    let reasons = receipt["verdict"]["reasons"].to_string();
    for t in &flagged {
        assert!(reasons.contains(t.as_str()), "{t} not in {reasons}");
    }
    let recorded: BTreeSet<String> = receipt["model"]["integrity_problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["tensor"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(recorded, flagged);

    // The clean file passes.
    let receipt = run_receipt(&single, dir.path());
    assert_eq!(receipt["verdict"]["status"], "pass", "{}", receipt["verdict"]);
}

/// One hand-made corruption of the committed fixture's tensor `tensor`.
enum Damage {
    Scale(f32),
    Code3,
    ExtraTail,
}

fn damaged_fixture(tensor: &str, damage: Damage) -> Vec<u8> {
    let spec = &bitnet_fixtures::spec::committed()[0];
    let path = bitnet_fixtures::committed_dir().join(bitnet_fixtures::file_name(spec, WeightForm::I2S));
    let mut b = std::fs::read(path).unwrap();
    let map = gguf_map::map(&b);
    let t = map.tensors.iter().find(|t| t.name == tensor).unwrap().clone();
    let scale_at = t.range.start + (t.n_elements / 4) as usize;
    match damage {
        Damage::Scale(s) => b[scale_at..scale_at + 4].copy_from_slice(&s.to_le_bytes()),
        // One byte whose top field is 3: one invalid code.
        Damage::Code3 => b[t.range.start + 100] |= 0b1100_0000,
        Damage::ExtraTail => {
            // 32 more bytes after the tensor, as one extra quantizer chunk would leave; every
            // tensor stored after it moves by 32.
            let old = (t.range.start - map.data_offset) as u64;
            for f in map.fields.iter().filter(|f| f.kind == FieldKind::TensorOffset) {
                let v = u64::from_le_bytes(b[f.at..f.at + 8].try_into().unwrap());
                if v > old {
                    b[f.at..f.at + 8].copy_from_slice(&(v + 32).to_le_bytes());
                }
            }
            b.splice(t.range.end..t.range.end, [0xAB; 32]);
        }
    }
    b
}

#[test]
fn each_kind_of_i2s_damage_is_named_by_inspect() {
    let dir = tempfile::tempdir().unwrap();
    let tensor = "blk.1.ffn_up.weight";
    let cases: [(&str, Damage, &str); 6] = [
        ("zero scale", Damage::Scale(0.0), "Zero"),
        ("NaN scale", Damage::Scale(f32::NAN), "NaN"),
        ("+Inf scale", Damage::Scale(f32::INFINITY), "Infinite"),
        ("-Inf scale", Damage::Scale(f32::NEG_INFINITY), "Infinite"),
        ("code 3", Damage::Code3, "invalid code(s) 3"),
        ("extra tail", Damage::ExtraTail, "unexpected bytes after the tensor"),
    ];
    for (what, damage, expect) in cases {
        let path = dir.path().join("damaged.gguf");
        std::fs::write(&path, damaged_fixture(tensor, damage)).unwrap();
        let report = inspect_json(&path);
        assert_eq!(corrupt_tensors(&report), BTreeSet::from([tensor.to_string()]), "{what}");
        let problems = problems_of(&report, tensor);
        assert!(problems.iter().any(|p| p.contains(expect)), "{what}: {problems:?}");
        let text = inspect_text(&path);
        assert!(text.lines().any(|l| l.starts_with(&format!("  {tensor}: "))), "{what}:\n{text}");
    }
}

#[test]
fn run_judges_a_damaged_scale_invalid_input() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nan-scale.gguf");
    std::fs::write(&path, damaged_fixture("blk.0.attn_q.weight", Damage::Scale(f32::NAN))).unwrap();
    let receipt = run_receipt(&path, dir.path());
    assert_eq!(receipt["verdict"]["status"], "invalid_input", "{}", receipt["verdict"]);
    assert!(receipt["verdict"]["reasons"].to_string().contains("blk.0.attn_q.weight"));
    // A NaN scale makes NaN logits in both engines: recorded per position, not a crash.
    for p in receipt["cases"][0]["positions"].as_array().unwrap() {
        assert!(p["nonfinite"].is_object(), "{p}");
        assert!(p["cosine"].is_null(), "{p}");
    }
}
