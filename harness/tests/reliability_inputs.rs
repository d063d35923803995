//! Input validation: each bad input ends in one line of error and its own exit code
//! (docs/exit-codes.md): hyper-parameters that contradict tensor shapes (5), a prompt longer
//! than the context, an empty prompt, token ids outside the vocabulary (6), a thresholds file
//! with unknown keys (7), `BITNET_CPP_DIR` pointing to a wrong or incompatible library (4).

mod reliability_common;

use std::path::Path;

use bitnet_engine::gguf::{GgufFile, Value};
use bitnet_engine::model::{Model, ModelError, ModelOptions};
use harness::exit::Exit;
use reliability_common::procs::{self, Finished};
use reliability_common::rewrite::{fixture_path, rewrite, set};

fn run(args: &[&str], model: &Path, env: &[(&str, &str)]) -> Finished {
    let mut cmd = procs::harness();
    cmd.arg("run").arg("--quiet").arg("--model").arg(model).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    procs::run(cmd, &format!("harness run {args:?}"))
}

/// Exactly one line of error, with `exit`, mentioning every one of `words`.
fn assert_fails(done: &Finished, exit: Exit, words: &[&str]) {
    let lines: Vec<&str> = done.stderr.lines().collect();
    assert_eq!(done.code(), Some(i32::from(exit.code())), "expected {exit:?}:\n{}", done.stderr);
    assert_eq!(lines.len(), 1, "one line of error expected:\n{}", done.stderr);
    assert!(lines[0].starts_with("error: "), "{}", lines[0]);
    for w in words {
        assert!(lines[0].contains(w), "{w:?} not in: {}", lines[0]);
    }
}

fn out_arg(dir: &Path) -> [String; 2] {
    ["--out".into(), dir.join("receipt.json").display().to_string()]
}

#[test]
fn hyper_parameters_that_contradict_the_tensors_are_model_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let out = out_arg(dir.path());
    let out: Vec<&str> = out.iter().map(String::as_str).collect();
    type Edit = fn(&mut Vec<(String, Value)>);
    let cases: [(&str, Edit, &[&str]); 5] = [
        (
            // 384 wide with 6 heads keeps the head size (64) of the tensors' RoPE metadata.
            "embedding length",
            |m| {
                set(m, "bitnet-b1.58.embedding_length", Value::U32(384));
                set(m, "bitnet-b1.58.attention.head_count", Value::U32(6));
            },
            &["token_embd.weight", "[384, "],
        ),
        (
            "feed-forward length",
            |m| set(m, "bitnet-b1.58.feed_forward_length", Value::U32(640)),
            &["blk.0.ffn_gate.weight", "640"],
        ),
        ("head count", |m| set(m, "bitnet-b1.58.attention.head_count", Value::U32(3)), &["head_count", "3"]),
        ("block count", |m| set(m, "bitnet-b1.58.block_count", Value::U32(1)), &["block_count", "blk.1."]),
        (
            "vocabulary size",
            |m| {
                let (_, v) = m.iter_mut().find(|(k, _)| k == "tokenizer.ggml.tokens").unwrap();
                if let Value::Array(bitnet_engine::gguf::Array::String(t)) = v {
                    t.push("<|one_too_many|>".into());
                }
                let (_, v) = m.iter_mut().find(|(k, _)| k == "tokenizer.ggml.token_type").unwrap();
                if let Value::Array(bitnet_engine::gguf::Array::I32(t)) = v {
                    t.push(1);
                }
            },
            &["tokenizer.ggml.tokens", "token_embd.weight"],
        ),
    ];
    for (what, edit, words) in cases {
        let bad = dir.path().join("bad.gguf");
        rewrite(&fixture_path(), &bad, edit, |_, _| {});
        let done = run(&out, &bad, &[]);
        eprintln!("{what}: {}", done.stderr.trim());
        assert_fails(&done, Exit::ModelInvalid, words);
        assert!(!dir.path().join("receipt.json").exists(), "{what}: no receipt for an invalid model");
    }
}

#[test]
fn a_prompt_longer_than_the_context_is_prompt_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let out = out_arg(dir.path());
    let long = "the sun rises over the quiet hills and the river runs to the sea ".repeat(4);
    let done = run(&["--n-ctx", "16", "--prompt", &long, &out[0], &out[1]], &fixture_path(), &[]);
    assert_fails(&done, Exit::PromptInvalid, &["prompt 1", "positions", "16"]);
    // The model's own context length (256) bounds it when --n-ctx is not given.
    let longer = "the sun rises over the quiet hills ".repeat(80);
    let done = run(&["--prompt", &longer, &out[0], &out[1]], &fixture_path(), &[]);
    assert_fails(&done, Exit::PromptInvalid, &["prompt 1", "256"]);
    assert!(!dir.path().join("receipt.json").exists());
}

#[test]
fn an_empty_prompt_is_prompt_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let out = out_arg(dir.path());
    let done = run(&["--prompt", "hello", "--prompt", "", &out[0], &out[1]], &fixture_path(), &[]);
    assert_fails(&done, Exit::PromptInvalid, &["prompt 2", "empty"]);
    let blank = dir.path().join("blank.txt");
    std::fs::write(&blank, "\n   \n\n").unwrap();
    let done = run(&["--prompts", blank.to_str().unwrap(), &out[0], &out[1]], &fixture_path(), &[]);
    assert_fails(&done, Exit::PromptInvalid, &["no prompts"]);
}

/// The saved-reference file's JSON footer, editable: `MAGIC | version | logits | JSON | u64 len | MAGIC`.
fn edit_saved_footer(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let b = std::fs::read(path).unwrap();
    let n = b.len();
    let len = u64::from_le_bytes(b[n - 24..n - 16].try_into().unwrap()) as usize;
    let start = n - 24 - len;
    let mut footer: serde_json::Value = serde_json::from_slice(&b[start..n - 24]).unwrap();
    edit(&mut footer);
    let json = serde_json::to_vec(&footer).unwrap();
    let mut out = b[..start].to_vec();
    out.extend_from_slice(&json);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&b[n - 16..]);
    std::fs::write(path, out).unwrap();
}

#[test]
fn token_ids_outside_the_vocabulary_are_prompt_invalid() {
    // In the engine: a typed error, not an out-of-bounds read.
    let file = GgufFile::open(fixture_path()).unwrap();
    let mut model = Model::load(&file, ModelOptions { n_ctx: 32, ..ModelOptions::default() }).unwrap();
    let n_vocab = model.config().n_vocab as u32;
    assert!(matches!(model.eval(n_vocab, 0), Err(ModelError::TokenOutOfRange { .. })));
    assert!(matches!(model.eval(u32::MAX, 0), Err(ModelError::TokenOutOfRange { .. })));

    // Through `run`: ids that come from a saved reference (the one place ids do not come
    // from a tokenizer of this model), taken with --ids-from cpp.
    let dir = tempfile::tempdir().unwrap();
    let out = out_arg(dir.path());
    let saved = dir.path().join("ref.bin");
    let saved_s = saved.to_str().unwrap();
    let prompt = ["--prompt", "The sun rises", "--max-tokens", "3"];
    let done =
        run(&[&prompt[..], &["--save-reference", saved_s, &out[0], &out[1]]].concat(), &fixture_path(), &[]);
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    let bad_id = n_vocab + 1000;
    edit_saved_footer(&saved, |f| f["cases"][0]["token_ids"][1] = bad_id.into());
    let done = run(
        &[&prompt[..], &["--reference", saved_s, "--ids-from", "cpp", &out[0], &out[1]]].concat(),
        &fixture_path(),
        &[],
    );
    assert_fails(&done, Exit::PromptInvalid, &[&bad_id.to_string(), "outside the vocabulary"]);
}

#[test]
fn a_thresholds_file_with_unknown_keys_is_thresholds_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let receipt = dir.path().join("receipt.json");
    let out = out_arg(dir.path());
    let done =
        run(&["--prompt", "The sun rises", "--max-tokens", "3", &out[0], &out[1]], &fixture_path(), &[]);
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    let thresholds = dir.path().join("thresholds.toml");
    std::fs::write(
        &thresholds,
        "min_cosine = 0.999\nmin_exact_match = 1.0\nmax_kl = 1e-4\nmax_kl_typo = 3\n",
    )
    .unwrap();
    let mut cmd = procs::harness();
    cmd.arg("gate").arg(&receipt).arg("--thresholds").arg(&thresholds);
    let done = procs::run(cmd, "harness gate");
    assert_fails(&done, Exit::ThresholdsInvalid, &["max_kl_typo"]);
    // The same file without the unknown key gates normally.
    std::fs::write(&thresholds, "min_cosine = 0.999\nmin_exact_match = 1.0\nmax_kl = 1e-4\n").unwrap();
    let mut cmd = procs::harness();
    cmd.arg("gate").arg(&receipt).arg("--thresholds").arg(&thresholds);
    let done = procs::run(cmd, "harness gate");
    assert_eq!(done.code(), Some(0), "{}\n{}", done.stdout, done.stderr);
}

/// A `BITNET_CPP_DIR` holding `library` as `libllama.so` and, when `headers`, the four
/// headers the bindings were generated from (copied from the pinned source tree), with
/// `tamper` applied to llama.h.
fn fake_cpp_dir(library: Option<&[u8]>, headers: bool, tamper: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    if let Some(bytes) = library {
        std::fs::write(dir.path().join("libllama.so"), bytes).unwrap();
    }
    if headers {
        let src = bitnet_cpp::BuildInfo::baked().unwrap().source.path;
        let inc = dir.path().join("include");
        std::fs::create_dir(&inc).unwrap();
        for h in [
            "include/llama.h",
            "ggml/include/ggml.h",
            "ggml/include/ggml-backend.h",
            "ggml/include/ggml-alloc.h",
        ] {
            let from = src.join("3rdparty/llama.cpp").join(h);
            let to = inc.join(Path::new(h).file_name().unwrap());
            std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
        }
        if tamper {
            let mut text = std::fs::read(inc.join("llama.h")).unwrap();
            text.extend_from_slice(b"\n// changed\n");
            std::fs::write(inc.join("llama.h"), text).unwrap();
        }
    }
    dir
}

#[test]
fn a_wrong_or_incompatible_bitnet_cpp_dir_is_reference_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let out = out_arg(dir.path());
    let args = ["--prompt", "The sun rises", "--max-tokens", "2", &out[0], &out[1]];
    let libz_path = ["/lib/x86_64-linux-gnu/libz.so.1", "/usr/lib/x86_64-linux-gnu/libz.so.1"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("zlib is on every machine of this kind");
    let libz = std::fs::read(libz_path).unwrap();
    let garbage: &[u8] = b"not a shared library";

    let cases: [(&str, tempfile::TempDir, &[&str]); 6] = [
        (
            "no library",
            fake_cpp_dir(None, false, false),
            &["neither a bitnet.cpp checkout", "prebuilt library"],
        ),
        ("no headers", fake_cpp_dir(Some(garbage), false, false), &["cannot find its llama.h"]),
        ("other headers", fake_cpp_dir(Some(&libz), true, true), &["llama.h", "differs from the header"]),
        ("not a library", fake_cpp_dir(Some(garbage), true, false), &["libllama.so"]),
        ("another library", fake_cpp_dir(Some(&libz), true, false), &["libllama.so", "undefined symbol"]),
        ("not a folder", tempfile::tempdir().unwrap(), &["is not a folder"]),
    ];
    for (what, cpp_dir, words) in cases {
        let path = if what == "not a folder" {
            cpp_dir.path().join("missing")
        } else {
            cpp_dir.path().to_path_buf()
        };
        let done = run(&args, &fixture_path(), &[("BITNET_CPP_DIR", path.to_str().unwrap())]);
        eprintln!("{what}: {}", done.stderr.trim());
        let mut words = words.to_vec();
        words.push("C++ reference");
        assert_fails(&done, Exit::ReferenceUnavailable, &words);
        assert!(!dir.path().join("receipt.json").exists(), "{what}");
    }
}
