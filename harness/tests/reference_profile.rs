//! The reference-build profile the Rust engine mirrors follows the reference it faces: the live
//! library's build-info, a saved reference's footer, or `--reference-profile`; a build with no
//! profile is a hazard that fails the verdict unless the profile was chosen explicitly. Every
//! output (receipt, table, gate, diff, report, inspect) says which.
//!
//! No test assumes the host's ISA: the expected profile is derived from the ISA macros the
//! receipt records, and saved references are edited to name the build they claim.

mod common;

use std::path::{Path, PathBuf};

use bitnet_engine::profile::RefProfile;
use common::receipts::{code, harness, read_json, rewrite_footer, stderr, stdout};
use serde_json::{json, Value};
use tempfile::TempDir;

const V3: &[&str] = &["__AVX__", "__AVX2__", "__FMA__", "__F16C__", "__SSE2__", "__SSE4_2__"];
const ZEN4: &[&str] = &[
    "__AVX__",
    "__AVX2__",
    "__FMA__",
    "__F16C__",
    "__SSE2__",
    "__AVX512F__",
    "__AVX512DQ__",
    "__AVX512BW__",
    "__AVX512VL__",
    "__AVX512VNNI__",
];
const AVX_ONLY: &[&str] = &["__AVX__", "__SSE2__", "__SSE4_2__"];

/// Positions of every run here: enough to compare, few enough to be quick.
const MAX_TOKENS: &str = "6";

/// A scratch folder under the target directory, removed when dropped.
fn scratch() -> TempDir {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("reference_profile");
    std::fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(&base).unwrap()
}

/// A live run of the default fixture in `d`, writing `live.json` and the saved reference
/// `ref.bin` there: its stdout.
fn live(d: &Path) -> String {
    let o =
        harness(d, &["run", "--max-tokens", MAX_TOKENS, "--save-reference", "ref.bin", "--out", "live.json"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    stdout(&o)
}

/// The profile (or the hazard) a build with these ISA macros has.
fn expected(isa: &Value) -> Result<RefProfile, String> {
    let macros: Vec<&str> = isa.as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
    RefProfile::from_isa_macros(&macros).map_err(|e| e.to_string())
}

/// `d/name`: a copy of the saved reference `d/ref.bin` (see [`live`]) whose footer claims a
/// build with `isa`.
fn saved_as(d: &Path, name: &str, isa: &[&str]) -> PathBuf {
    let path = d.join(name);
    std::fs::copy(d.join("ref.bin"), &path).unwrap();
    rewrite_footer(&path, |f| {
        f["reference"]["isa"] = json!(isa);
        // As in files saved by the 1.1 draft that kept the hazard in the reference's identity:
        // the field is ignored on read (the run derives the hazard from the ISA macros).
        f["reference"]["profile_hazard"] = json!(null);
    });
    path
}

/// `harness run --reference SAVED ARGS...` in the saved file's folder: (receipt, stdout, stderr).
fn replay(saved: &Path, out: &str, args: &[&str]) -> (Value, String, String) {
    let d = saved.parent().unwrap();
    let mut all =
        vec!["run", "--max-tokens", MAX_TOKENS, "--reference", saved.to_str().unwrap(), "--out", out];
    all.extend_from_slice(args);
    let o = harness(d, &all);
    assert_eq!(code(&o), 0, "{all:?}: {}{}", stdout(&o), stderr(&o));
    (read_json(&d.join(out)), stdout(&o), stderr(&o))
}

fn gate(receipt: &Path) -> (i32, String) {
    let o = harness(receipt.parent().unwrap(), &["gate", receipt.to_str().unwrap()]);
    (code(&o), stdout(&o))
}

/// The receipt's `reference_profile` hazard, if it has one.
fn profile_hazard(r: &Value) -> Option<&Value> {
    r["hazards"].as_array().unwrap().iter().find(|h| h["kind"] == "reference_profile")
}

fn reasons(r: &Value) -> String {
    r["verdict"]["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect::<Vec<_>>()
        .join("; ")
}

#[test]
fn a_live_run_mirrors_the_profile_its_reference_was_built_for() {
    let t = scratch();
    let d = t.path();
    let out = live(d);
    let r = read_json(&d.join("live.json"));
    let reference = &r["engines"]["reference"];
    // The receipt's ISA macros are the built library's own build-info.
    let info = bitnet_cpp::BuildInfo::baked().unwrap();
    let baked: Vec<String> = info.isa.map(|i| i.macros).unwrap_or_default();
    assert_eq!(reference["isa"], json!(baked));
    let p = &r["engines"]["rust"]["reference_profile"];
    match expected(&reference["isa"]) {
        Ok(profile) => {
            assert_eq!(p, &json!({"name": profile.name(), "source": "build-info"}));
            assert_eq!(profile_hazard(&r), None);
            assert_eq!(r["hazards"], json!([]));
            assert!(out.contains(&format!("reference profile: {profile} (from build-info)\n")), "{out}");
            assert!(!reasons(&r).contains("reference_profile"), "{}", reasons(&r));
            let (_, g) = gate(&d.join("live.json"));
            assert!(g.contains(&format!("ok   reference_profile {profile} (from build-info)")), "{g}");
        }
        Err(why) => {
            // An x86 machine without AVX2: the hazard path, as below.
            assert_eq!(p["source"], "host", "{why}");
            assert_eq!(profile_hazard(&r).unwrap()["fails_verdict"], true);
        }
    }

    // `inspect --json` names the same profile for the built-in reference; the text says it once.
    let model = common::receipts::fixture("tiny-256-gqa-i2_s.gguf");
    let o = harness(d, &["inspect", model.to_str().unwrap(), "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let b = &v["reference_build"];
    assert_eq!(b["isa"], reference["isa"]);
    match expected(&reference["isa"]) {
        Ok(profile) => {
            assert_eq!(b["isa_profile"], profile.name());
            assert_eq!(b["profile_hazard"], Value::Null);
        }
        Err(_) => assert!(b["isa_profile"].is_null() && b["profile_hazard"].is_string()),
    }
    let o = harness(d, &["inspect", model.to_str().unwrap()]);
    assert_eq!(stdout(&o).matches("built-in reference: ").count(), 1, "{}", stdout(&o));
}

#[test]
fn reference_profile_overrides_the_build_and_is_recorded_as_such() {
    let t = scratch();
    let dir = t.path();
    live(dir);
    let built = expected(&read_json(&dir.join("live.json"))["engines"]["reference"]["isa"]);
    // The other profile than the build's, so the override visibly wins.
    let chosen = if built == Ok(RefProfile::Avx512) { RefProfile::Avx2 } else { RefProfile::Avx512 };
    let o = harness(
        dir,
        &["run", "--max-tokens", "2", "--reference-profile", chosen.name(), "--out", "o.json", "--quiet"],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let r = read_json(&dir.join("o.json"));
    assert_eq!(
        r["engines"]["rust"]["reference_profile"],
        json!({"name": chosen.name(), "source": "override"})
    );
    assert!(!reasons(&r).contains("reference_profile"), "{}", reasons(&r));
    let (_, g) = gate(&dir.join("o.json"));
    assert!(g.contains(&format!("reference_profile {chosen} (chosen by --reference-profile)")), "{g}");

    // On a replay too, and an unknown name is refused as a usage error.
    let saved = saved_as(dir, "v3.bin", V3);
    let (r, _, _) = replay(&saved, "o2.json", &["--reference-profile", "avx512", "--quiet"]);
    assert_eq!(r["engines"]["rust"]["reference_profile"], json!({"name": "avx512", "source": "override"}));
    let o = harness(dir, &["run", "--reference-profile", "avx10"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("avx2 or avx512"), "{}", stderr(&o));
}

#[test]
fn a_replay_mirrors_the_build_its_saved_footer_names() {
    let t = scratch();
    let d = t.path();
    live(d);
    for (isa, profile) in [(V3, RefProfile::Avx2), (ZEN4, RefProfile::Avx512)] {
        let saved = saved_as(d, &format!("{profile}.bin"), isa);
        let (r, out, _) = replay(&saved, "replay.json", &[]);
        assert_eq!(
            r["engines"]["rust"]["reference_profile"],
            json!({"name": profile.name(), "source": "saved-reference"})
        );
        assert_eq!(r["engines"]["reference"]["isa"], json!(isa));
        assert_eq!(profile_hazard(&r), None);
        assert!(out.contains(&format!("reference profile: {profile} (from saved-reference)")), "{out}");
    }
    // The unedited file replays with the live run's own profile and the same numbers.
    let live_r = read_json(&d.join("live.json"));
    let (r, _, _) = replay(&d.join("ref.bin"), "same.json", &["--quiet"]);
    assert_eq!(
        r["engines"]["rust"]["reference_profile"]["name"],
        live_r["engines"]["rust"]["reference_profile"]["name"]
    );
    assert_eq!(r["cases"], live_r["cases"]);
}

#[test]
fn a_build_without_profile_fails_the_verdict_unless_the_profile_is_chosen() {
    let t = scratch();
    live(t.path());
    let saved = saved_as(t.path(), "avx-only.bin", AVX_ONLY);
    let (r, out, err) = replay(&saved, "hazard.json", &[]);
    let h = profile_hazard(&r).expect("a hazard is recorded").clone();
    assert_eq!(h["fails_verdict"], true);
    let hazard = h["detail"].as_str().unwrap().to_string();
    assert!(hazard.starts_with("the reference build has no profile: "), "{hazard}");
    assert!(hazard.contains("deciding macros: __AVX__"), "{hazard}");
    assert_eq!(
        r["engines"]["rust"]["reference_profile"],
        json!({"name": RefProfile::host().name(), "source": "host"})
    );
    assert!(err.contains("warning: the reference build has no profile"), "{err}");
    assert!(out.contains("(the host's) — the reference build has no profile"), "{out}");
    assert_eq!(r["verdict"]["status"], "fail");
    let why = reasons(&r);
    assert!(
        why.contains("reference_profile the reference build has no profile") && why.contains("__AVX__"),
        "{why}"
    );
    let (c, g) = gate(&saved.parent().unwrap().join("hazard.json"));
    assert_eq!(c, 1, "{g}");
    assert!(g.contains("FAIL reference_profile the reference build has no profile"), "{g}");

    // With --reference-profile the hazard is still recorded and warned about (even with
    // --quiet), but decides nothing.
    let (r, _, err) = replay(&saved, "chosen.json", &["--reference-profile", "avx2", "--quiet"]);
    assert_eq!(
        profile_hazard(&r).unwrap(),
        &json!({"kind": "reference_profile", "detail": hazard, "fails_verdict": false})
    );
    assert_eq!(r["engines"]["rust"]["reference_profile"], json!({"name": "avx2", "source": "override"}));
    assert!(err.contains("warning: the reference build has no profile"), "{err}");
    assert!(!reasons(&r).contains("reference_profile"), "{}", reasons(&r));
    let chosen = saved.parent().unwrap().join("chosen.json");
    let (c, g) = gate(&chosen);
    assert_eq!(c, 0, "{g}");
    assert!(g.contains("note reference_profile avx2 chosen by --reference-profile"), "{g}");
    assert!(!g.contains("FAIL reference_profile"), "{g}");
    // ... unless the thresholds make hazards fail: then the overridden one fails too.
    let o = harness(chosen.parent().unwrap(), &["gate", chosen.to_str().unwrap(), "--fail-on-hazards"]);
    assert_eq!(code(&o), 1, "{}", stdout(&o));
    assert!(stdout(&o).contains("FAIL reference_profile avx2 chosen by --reference-profile, but the reference build has no profile"), "{}", stdout(&o));

    // A build that records no ISA macros at all (a prebuilt library) is a hazard too.
    let saved = saved_as(t.path(), "unknown.bin", &[]);
    let (r, _, _) = replay(&saved, "unknown.json", &["--quiet"]);
    let hazard = profile_hazard(&r).unwrap()["detail"].as_str().unwrap();
    assert!(hazard.contains("no ISA macros recorded"), "{hazard}");
    assert_eq!(r["verdict"]["status"], "fail");
}

#[test]
fn diff_and_report_show_the_profiles() {
    let t = scratch();
    live(t.path());
    let a = saved_as(t.path(), "a.bin", V3);
    let (_, _, _) = replay(&a, "a.json", &["--quiet"]);
    let (_, _, _) = replay(&a, "b.json", &["--quiet", "--reference-profile", "avx512"]);
    let d = a.parent().unwrap();
    let (ja, jb) = (d.join("a.json"), d.join("b.json"));

    let o = harness(d, &["diff", ja.to_str().unwrap(), jb.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("reference profile: avx2 (saved-reference) -> avx512 (override) DIFFERENT"),
        "{text}"
    );
    let o = harness(d, &["diff", ja.to_str().unwrap(), jb.to_str().unwrap(), "--json"]);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["profiles_differ"], true);
    assert_eq!(v["old"]["reference_profile"], json!({"name": "avx2", "source": "saved-reference"}));
    assert_eq!(v["new"]["reference_profile"]["name"], "avx512");

    let o = harness(d, &["diff", ja.to_str().unwrap(), ja.to_str().unwrap()]);
    assert!(stdout(&o).contains("reference profile: avx2 (saved-reference) in both"), "{}", stdout(&o));

    let page = d.join("b.html");
    let o = harness(d, &["report", jb.to_str().unwrap(), "--out", page.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        html.contains("<code>avx512</code> profile (chosen by --reference-profile)"),
        "report names the profile"
    );
}

/// `gate` re-derives the profile check from the receipt: a recorded profile that the build's
/// own ISA macros contradict fails, as does a hazard that no override excuses.
#[test]
fn gate_checks_the_recorded_profile_against_the_build() {
    let t = scratch();
    live(t.path());
    let a = saved_as(t.path(), "g.bin", ZEN4);
    let (_, _, _) = replay(&a, "g.json", &["--quiet"]);
    let d = a.parent().unwrap();
    let contradicted = common::receipts::edited(&d.join("g.json"), d, "contradicted.json", |v| {
        v["engines"]["rust"]["reference_profile"]["name"] = json!("avx2");
    });
    let (c, g) = gate(&contradicted);
    assert_eq!(c, 1, "{g}");
    assert!(g.contains("FAIL reference_profile avx2 (from saved-reference) but the reference build's ISA macros imply avx512"), "{g}");
    let unexcused = common::receipts::edited(&d.join("g.json"), d, "hazard.json", |v| {
        v["hazards"] = json!([{
            "kind": "reference_profile",
            "detail": "the reference build has no profile: made up",
            "fails_verdict": true
        }]);
    });
    let (c, g) = gate(&unexcused);
    assert_eq!(c, 1, "{g}");
    assert!(g.contains("FAIL reference_profile the reference build has no profile: made up"), "{g}");
    // A hazard that claims not to fail is not believed when no --reference-profile excused it.
    let claimed = common::receipts::edited(&d.join("g.json"), d, "claimed.json", |v| {
        v["hazards"] = json!([{
            "kind": "reference_profile",
            "detail": "the reference build has no profile: made up",
            "fails_verdict": false
        }]);
    });
    let (c, g) = gate(&claimed);
    assert_eq!(c, 1, "{g}");
}
