//! `run` compares any two engines: two bitnet.cpp builds with each other, the Rust engine
//! against a saved reference named with `--against saved:FILE`, and the Rust engine as side B.
//! (External engines: `external_engine.rs`, `external_engine_cli.rs`; the library entry point:
//! `library_check.rs`.) Every run here uses the real C++ library.

mod common;

use bitnet_engine::profile::RefProfile;
use common::receipts::{code, harness, read_json, repo_root, run_receipt, stderr, stdout};
use serde_json::Value;

fn fixture() -> String {
    repo_root().join("fixtures/tiny-256-gqa-i2_s.gguf").display().to_string()
}

/// The profile a build's ISA macros decide, as the receipt records them.
fn profile_of(build: &Value) -> Option<RefProfile> {
    let isa: Vec<String> =
        build["isa"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    RefProfile::from_isa_macros(&isa).ok()
}

#[test]
fn one_build_against_itself_is_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture();
    let out = run_receipt(
        dir.path(),
        "self",
        &["--model", &model, "--engine", "cpp:x86-64-v3", "--against", "cpp:x86-64-v3"],
    );
    let r = read_json(&out);
    assert_eq!(r["engines"]["rust"]["kind"], "bitnet.cpp");
    assert_eq!(r["engines"]["rust"]["name"], "bitnet.cpp");
    let flags = r["engines"]["rust"]["build"]["flags"].to_string();
    assert!(flags.contains("-march=x86-64-v3"), "{flags}");
    let s = &r["summary"];
    assert!(s["positions"].as_u64().unwrap() >= 60);
    assert_eq!(s["bit_exact_positions"], s["positions"], "{s}");
    assert_eq!(r["verdict"]["status"], "pass", "{}", r["verdict"]);
    // No Rust engine in the run: no profile to mirror, no profile hazard.
    assert!(r["hazards"].as_array().unwrap().iter().all(|h| h["kind"] != "reference_profile"));
}

/// The AVX2 and the native build: bit-exact exactly when the native build has the AVX2
/// profile too (an AVX2-only host); on an AVX-512 host they part, from the first position, by
/// a little (the two summation orders of the float dots and softmax).
#[test]
fn two_builds_agree_exactly_when_their_profiles_do() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture();
    let out = run_receipt(
        dir.path(),
        "builds",
        &["--model", &model, "--engine", "cpp:x86-64-v3", "--against", "cpp:native", "--trace", "1:3"],
    );
    let r = read_json(&out);
    let a = profile_of(&r["engines"]["rust"]["build"]);
    let b = profile_of(&r["engines"]["reference"]);
    assert_eq!(a, Some(RefProfile::Avx2));
    let s = &r["summary"];
    let (exact, positions) = (s["bit_exact_positions"].as_u64().unwrap(), s["positions"].as_u64().unwrap());
    if a == b {
        assert_eq!(exact, positions, "{s}");
    } else {
        assert!(exact < positions, "{s}");
        assert!(s["cosine_min"].as_f64().unwrap() > 0.99, "{s}");
    }
    // The trace compares every tensor both builds report, in the reference's graph order.
    let t = &r["trace"];
    let ops = t["ops"].as_array().unwrap();
    assert!(ops.len() > 20, "{t}");
    assert!(ops.iter().any(|o| o["name"] == "result_output"), "{t}");
    assert_eq!(t["unmatched"].as_array().unwrap().len(), 0, "{t}");
    if a == b {
        assert!(t["first_divergent_op"].is_null(), "{t}");
    }
}

#[test]
fn rust_against_a_saved_reference_and_as_side_b() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture();
    let saved = dir.path().join("ref.bin");
    let saved_s = saved.to_str().unwrap();
    run_receipt(dir.path(), "save", &["--model", &model, "--max-tokens", "20", "--save-reference", saved_s]);
    let against = format!("saved:{saved_s}");
    let out = run_receipt(dir.path(), "replay", &["--model", &model, "--against", &against]);
    let r = read_json(&out);
    assert!(r["engines"]["reference"]["source"].as_str().unwrap().starts_with("saved:"));
    assert_eq!(r["engines"]["rust"]["kind"], "rust-engine");
    assert_eq!(r["summary"]["bit_exact_positions"], r["summary"]["positions"]);
    // The reference under test, the Rust engine held against it.
    let out = run_receipt(
        dir.path(),
        "swapped",
        &["--model", &model, "--max-tokens", "12", "--engine", "cpp", "--against", "rust"],
    );
    let r = read_json(&out);
    assert_eq!(r["engines"]["rust"]["kind"], "bitnet.cpp");
    assert_eq!(r["engines"]["reference"]["source"], "rust:bitnet-engine");
    assert_eq!(r["summary"]["bit_exact_positions"], r["summary"]["positions"]);
}

#[test]
fn bad_engine_specs_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    for (args, want) in [
        (vec!["run", "--engine", "llama"], "expected rust, cpp"),
        (vec!["run", "--against", "cpp:"], "needs a -march"),
        (vec!["run", "--against", "cpp:znver9"], "znver9"),
        (vec!["run", "--engine-cmd", "/nonexistent/engine"], "/nonexistent/engine"),
    ] {
        let o = harness(dir.path(), &args);
        assert_ne!(code(&o), 0, "{args:?}: {}", stdout(&o));
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    }
}
