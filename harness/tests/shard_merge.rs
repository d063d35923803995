//! A run split across machines (`run --shard I/N`) and put back together (`harness merge`)
//! is the run on one machine, apart from timings and creation time; shards of different runs
//! are refused in one line; a corpus of thousands of prompts runs and stays readable. Every
//! run here is the harness binary against the real C++ reference.

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use common::receipts::{code, fixture, harness, read_json, run_receipt, stderr, stdout};
use serde_json::Value;

/// A receipt's JSON without what differs from run to run (`timings`, `created_at`).
fn comparable(path: &Path) -> Value {
    let mut v = read_json(path);
    let m = v.as_object_mut().unwrap();
    m.remove("timings");
    m.remove("created_at");
    v
}

/// `harness merge FILES --out DIR/NAME`, which must succeed; the merged receipt's path.
fn merge(dir: &Path, name: &str, files: &[&Path]) -> PathBuf {
    let out = dir.join(name);
    let mut args = vec!["merge".to_string()];
    args.extend(files.iter().map(|f| f.to_str().unwrap().to_string()));
    args.extend(["--out".into(), out.to_str().unwrap().into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = harness(dir, &args);
    assert_eq!(code(&o), 0, "harness {args:?}: {}{}", stdout(&o), stderr(&o));
    out
}

/// `harness merge FILES --out x.json` must be refused with exit 2 and one line containing
/// every one of `wanted`.
fn refused(dir: &Path, files: &[&Path], wanted: &[&str]) {
    let mut args = vec!["merge".to_string()];
    args.extend(files.iter().map(|f| f.file_name().unwrap().to_str().unwrap().to_string()));
    args.extend(["--out".into(), "refused.json".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = harness(dir, &args);
    let err = stderr(&o);
    assert_eq!(code(&o), 2, "harness {args:?}: {}{err}", stdout(&o));
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    for w in wanted {
        assert!(err.contains(w), "{w:?} not in: {err}");
    }
    assert!(!dir.join("refused.json").exists(), "nothing written on a refusal");
}

fn shard_runs(dir: &Path, stem: &str, n: usize, args: &[&str]) -> Vec<PathBuf> {
    (1..=n)
        .map(|i| {
            let spec = format!("{i}/{n}");
            let mut all = vec!["--shard", spec.as_str()];
            all.extend_from_slice(args);
            run_receipt(dir, &format!("{stem}{i}"), &all)
        })
        .collect()
}

#[test]
fn four_shards_merged_are_the_run_on_one_machine() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Six prompts over four shards: shards of two and of one case.
    let prompts = d.join("prompts.txt");
    std::fs::write(
        &prompts,
        "# six prompts\nThe capital of France is\nOnce upon a time\nfn main() {\\n    println!(\"hi\");\\n}\n\
         1, 2, 3, 5, 8, 13,\nA ship in harbor is safe, but\n\\sleading space and é\n",
    )
    .unwrap();
    let common = ["--prompts", prompts.to_str().unwrap(), "--continue", "2"];
    let whole = run_receipt(d, "whole", &common);
    let shards = shard_runs(d, "shard", 4, &common);
    for (i, s) in shards.iter().enumerate() {
        let v = read_json(s);
        let shard = &v["settings"]["shard"];
        assert_eq!(shard["index"], i + 1);
        assert_eq!(shard["total_cases"], 6);
        let expected: Vec<usize> = (0..6).filter(|k| k % 4 == i).collect();
        assert_eq!(shard["cases"], serde_json::json!(expected));
        assert_eq!(v["cases"].as_array().unwrap().len(), expected.len());
        // Case indices stay global.
        for w in v["summary"]["worst_positions"].as_array().unwrap() {
            assert!(expected.contains(&(w["case"].as_u64().unwrap() as usize)), "{w}");
        }
    }
    // In any order.
    let order: Vec<&Path> = [2, 0, 3, 1].iter().map(|&i| shards[i].as_path()).collect();
    let merged = merge(d, "merged.json", &order);
    let (m, w) = (comparable(&merged), comparable(&whole));
    assert!(m.get("settings").unwrap().get("shard").is_none());
    assert_eq!(m, w, "the merged receipt differs from the whole run");
    let mv = read_json(&merged);
    assert_eq!(mv["timings"]["rust"]["tokens"], read_json(&whole)["timings"]["rust"]["tokens"]);

    // One shard of one is the whole run too.
    let one =
        merge(d, "one.json", &[&run_receipt(d, "one-of-one", &[&["--shard", "1/1"][..], &common].concat())]);
    assert_eq!(comparable(&one), w);

    // gate, diff and report read the merged receipt.
    let thresholds = common::receipts::repo_root().join("receipts/thresholds.toml");
    let m = merged.to_str().unwrap();
    for args in [
        vec!["gate", m, "--thresholds", thresholds.to_str().unwrap()],
        vec!["diff", whole.to_str().unwrap(), m, "--fail-on-regression"],
        vec!["report", m, "--out", "merged.html"],
    ] {
        let o = harness(d, &args);
        assert_eq!(code(&o), 0, "harness {args:?}: {}{}", stdout(&o), stderr(&o));
    }
    assert!(d.join("merged.html").is_file());
}

#[test]
fn shards_of_different_runs_are_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = shard_runs(d, "s", 2, &[]);
    let (s1, s2) = (s[0].as_path(), s[1].as_path());
    let other = fixture("tiny-384-mha-i2_s.gguf");
    let other_model = run_receipt(d, "s2-model", &["--shard", "2/2", "--model", other.to_str().unwrap()]);
    let other_tokens = run_receipt(d, "s2-tokens", &["--shard", "2/2", "--max-tokens", "5"]);
    let other_count = run_receipt(d, "s2-of-3", &["--shard", "2/3"]);
    let other_prompts = run_receipt(d, "s2-prompts", &["--shard", "2/2", "--prompt", "a", "--prompt", "b"]);
    let whole = run_receipt(d, "whole", &["--max-tokens", "3"]);
    std::fs::copy(s1, d.join("s1-again.json")).unwrap();

    refused(d, &[s1, &other_model], &["s2-model.json", "model.sha256", "s1.json", "another model"]);
    refused(d, &[s1, &other_tokens], &["s2-tokens.json", "settings.max_tokens", "other settings"]);
    refused(d, &[s1, &other_count], &["s2-of-3.json", "settings.shard.count"]);
    refused(d, &[s1, &other_prompts], &["s2-prompts.json", "settings.shard."]);
    refused(d, &[s1], &["missing shard 2 of 2"]);
    refused(d, &[s1, &d.join("s1-again.json"), s2], &["duplicate shard 1/2", "s1.json", "s1-again.json"]);
    refused(d, &[s1, &whole], &["whole.json", "settings.shard: absent"]);
    // The shards themselves merge.
    merge(d, "ok.json", &[s2, s1]);
}

/// 2,000 short prompts, four positions each: the prompts file streams, progress names cases and
/// positions, and the receipt holds every case with its summary.
#[test]
fn a_corpus_of_two_thousand_prompts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let words = ["the", "cat", "sat", "on", "a", "mat", "and", "ran", "far", "away"];
    let mut text = String::from("# generated: 2,000 short prompts\n");
    for i in 0..2000 {
        text.push_str(&format!("{} {} {} {i}\n", words[i % 10], words[(i / 10) % 10], words[(i / 100) % 10]));
    }
    let prompts = d.join("corpus.txt");
    std::fs::write(&prompts, text).unwrap();
    let out = d.join("corpus.json");
    let t = Instant::now();
    let args =
        ["run", "--prompts", prompts.to_str().unwrap(), "--max-tokens", "4", "--out", out.to_str().unwrap()];
    let o = harness(d, &args);
    let secs = t.elapsed().as_secs_f64();
    let err = stderr(&o);
    assert_eq!(code(&o), 0, "{}{err}", stdout(&o));
    eprintln!("2,000 prompts x 4 positions: {secs:.1} s");
    // Without a terminal, a line every two seconds and one at the end, not one per case.
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("case ")).collect();
    assert!(lines.len() < 200, "{} case lines", lines.len());
    assert!(
        lines.last().is_some_and(|l| l.starts_with("case 2,000/2,000, position 4/4, 8,000 positions done")),
        "{lines:?}"
    );
    let v = read_json(&out);
    assert_eq!(v["cases"].as_array().unwrap().len(), 2000);
    assert_eq!(v["summary"]["positions"], 8000);
    assert_eq!(v["tokenizer"]["prompts_checked"], 2000);
    assert_eq!(v["summary"]["worst_positions"].as_array().unwrap().len(), 5);
    assert!(v["cases"][1999]["positions"].as_array().unwrap().len() == 4);
    assert_eq!(v["verdict"]["status"], "pass", "{}", v["verdict"]);
    // gate reads it.
    let o = harness(d, &["gate", out.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
}

/// A shard traces its own first divergence (or the requested position, when the case is its
/// own); the merged receipt keeps the trace the whole run makes.
#[test]
fn traces_of_shards_merge_into_the_trace_of_the_whole_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (stem, args) in [
        ("fault", vec!["--inject-fault", "rope-adjacent@1", "--trace", "--max-tokens", "6"]),
        ("requested", vec!["--trace", "2:3", "--max-tokens", "6"]),
    ] {
        let whole = run_receipt(d, &format!("{stem}-whole"), &args);
        let shards = shard_runs(d, &format!("{stem}-shard"), 2, &args);
        let merged = merge(d, &format!("{stem}-merged.json"), &[&shards[1], &shards[0]]);
        let (m, w) = (comparable(&merged), comparable(&whole));
        assert!(w["trace"].is_object(), "{stem}: the whole run traced");
        assert_eq!(m, w, "{stem}: the merged receipt differs from the whole run");
    }
}
