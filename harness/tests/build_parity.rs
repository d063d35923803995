//! The central claim, on any CPU: the Rust engine's logits are bit-identical to bitnet.cpp's
//! at every position, whichever ISA the reference was built for.
//!
//! - Live: every fixture (I2_S and F32 forms, the prompts and `--continue 32`) against every
//!   reference build this crate has: `x86-64-v3` (AVX2 + FMA + F16C) on every host, and the
//!   `native` build, which is an AVX-512 build on an AVX-512 host. The engine's profile is the
//!   one the harness reads from each build's ISA macros.
//! - Saved: the outputs of the reference built `-march=native` on an AVX-512 CPU
//!   (`fixtures/golden/avx512/*.ref`, made with `run --continue 32 --save-reference`), replayed
//!   against the engine, so a host without AVX-512 still proves the AVX-512 mirror.

mod common;

use bitnet_engine::profile::RefProfile;
use bitnet_fixtures::{ensure, file_name, spec, WeightForm};
use common::receipts::{code, harness, read_json, repo_root, run_receipt, stderr};
use serde_json::Value;

/// Every fixture model, both forms.
fn models() -> Vec<std::path::PathBuf> {
    spec::committed().iter().flat_map(|s| [WeightForm::I2S, WeightForm::F32].map(|f| ensure(s, f))).collect()
}

/// Asserts that a receipt shows every position bit-exact, under `profile`.
fn assert_bit_exact(receipt: &Value, what: &str, profile: RefProfile) {
    let s = &receipt["summary"];
    let positions = s["positions"].as_u64().unwrap();
    assert!(positions >= 60, "{what}: only {positions} positions");
    assert_eq!(s["bit_exact_positions"].as_u64(), Some(positions), "{what}: {s}");
    assert_eq!(receipt["verdict"]["status"], "pass", "{what}: {}", receipt["verdict"]);
    assert_eq!(receipt["engines"]["rust"]["reference_profile"]["name"], profile.name(), "{what}");
}

#[test]
fn bit_exact_against_every_reference_build() {
    let builds = bitnet_cpp::built_references().unwrap();
    let marches: Vec<&str> = builds.iter().filter_map(|b| b.march.as_deref()).collect();
    assert!(
        marches.contains(&"x86-64-v3"),
        "no x86-64-v3 build of the reference (built: {marches:?}); BITNET_CPP_MARCH must list it"
    );
    let dir = tempfile::tempdir().unwrap();
    for build in &builds {
        let Some(march) = build.march.as_deref() else { continue };
        let macros = &build.info.isa.as_ref().expect("a build we compiled knows its ISA").macros;
        let profile = RefProfile::from_isa_macros(macros).expect("every x86 build here has a profile");
        if march == "x86-64-v3" {
            assert_eq!(profile, RefProfile::Avx2);
        }
        if march == "native" {
            assert_eq!(profile, RefProfile::host(), "a native build is the host's profile");
        }
        for model in models() {
            let name = model.file_stem().unwrap().to_string_lossy().into_owned();
            let what = format!("{name} against the {march} build");
            let out = run_receipt(
                dir.path(),
                &format!("{name}-{march}"),
                &["--model", model.to_str().unwrap(), "--reference-build", march, "--continue", "32"],
            );
            let r = read_json(&out);
            assert_bit_exact(&r, &what, profile);
            assert_eq!(r["engines"]["rust"]["reference_profile"]["source"], "build-info", "{what}");
            eprintln!("{what}: {} positions bit-exact, profile {profile}", r["summary"]["positions"]);
        }
    }
}

#[test]
fn bit_exact_against_the_saved_avx512_build() {
    let dir = tempfile::tempdir().unwrap();
    let golden = repo_root().join("fixtures/golden/avx512");
    for s in spec::committed() {
        for form in [WeightForm::I2S, WeightForm::F32] {
            let model = ensure(&s, form);
            let saved = golden.join(file_name(&s, form).replace(".gguf", ".avx512.ref"));
            let what = format!("{} replaying {}", model.display(), saved.display());
            let out = run_receipt(
                dir.path(),
                &file_name(&s, form),
                &[
                    "--model",
                    model.to_str().unwrap(),
                    "--reference",
                    saved.to_str().unwrap(),
                    "--continue",
                    "32",
                ],
            );
            let r = read_json(&out);
            assert_bit_exact(&r, &what, RefProfile::Avx512);
            assert_eq!(r["engines"]["rust"]["reference_profile"]["source"], "saved-reference", "{what}");
            assert_eq!(r["hazards"], serde_json::json!([]), "{what}");
            let isa = r["engines"]["reference"]["isa"].as_array().unwrap();
            assert!(isa.iter().any(|m| m == "__AVX512F__"), "{what}: {isa:?}");
        }
    }
}

/// The same replay under the other profile is not bit-exact: the test above can fail, and
/// the profile is what closes the gap.
#[test]
fn the_avx2_profile_does_not_reproduce_the_avx512_build() {
    let dir = tempfile::tempdir().unwrap();
    let s = &spec::committed()[1];
    let model = ensure(s, WeightForm::I2S);
    let saved = repo_root()
        .join("fixtures/golden/avx512")
        .join(file_name(s, WeightForm::I2S).replace(".gguf", ".avx512.ref"));
    let out = dir.path().join("wrong-profile.json");
    let o = harness(
        dir.path(),
        &[
            "run",
            "--quiet",
            "--out",
            out.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--reference",
            saved.to_str().unwrap(),
            "--continue",
            "32",
            "--reference-profile",
            "avx2",
        ],
    );
    // The verdict may pass or fail on closeness; the receipt is written either way.
    assert!([0, 1].contains(&code(&o)), "{}", stderr(&o));
    let r = read_json(&out);
    let s = &r["summary"];
    assert_eq!(s["bit_exact_positions"], 0, "{s}");
    assert_eq!(r["engines"]["rust"]["reference_profile"]["source"], "override");
}
