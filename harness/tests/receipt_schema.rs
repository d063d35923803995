//! The receipt JSON Schema (`receipts/receipt.schema.json`) against what the harness writes:
//! every receipt `harness run` writes validates, the schema lists exactly the fields the
//! `receipt` types serialize, and broken receipts are refused naming the field.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::receipts::*;
use harness::schema::{self, ReceiptError};
use serde::Deserialize;
use serde_json::{json, Value};

fn parse(v: &Value) -> Result<Vec<String>, ReceiptError> {
    schema::parse_receipt(&serde_json::to_vec(v).unwrap()).map(|(_, _, _, ignored)| ignored)
}

fn schema_error(v: &Value) -> (String, String) {
    match parse(v) {
        Err(ReceiptError::Schema { path, message, .. }) => (path, message),
        other => panic!("expected a schema error, got {other:?}"),
    }
}

#[test]
fn committed_file_is_the_embedded_schema() {
    let on_disk = std::fs::read_to_string(repo_root().join("receipts/receipt.schema.json")).unwrap();
    assert_eq!(on_disk, schema::SCHEMA_TEXT);
    let s: Value = serde_json::from_str(&on_disk).unwrap();
    assert_eq!(s["$schema"], "https://json-schema.org/draft/2020-12/schema");
}

#[test]
fn synthetic_receipts_validate_and_read_back_equal() {
    for r in [maximal(), minimal()] {
        let bytes = serde_json::to_vec_pretty(&r).unwrap();
        let (version, back, _, ignored) = schema::parse_receipt(&bytes).unwrap();
        assert_eq!(back, r);
        assert!(ignored.is_empty());
        assert_eq!(version, schema::Version::ours());
    }
}

/// Every object in `value`, walked along the schema node describing it, has exactly the
/// schema's properties, and the schema requires all of them (`trace`, `cases[].token_texts` and
/// `engines.rust.injected_fault` aside, which are omitted when empty, and the fields 1.1 added,
/// which 1.0 receipts lack, and those 1.2 added). Serializing a receipt with every option set shows every field the types write,
/// so this catches a field added to `receipt.rs` but not to the schema, and the reverse.
/// `seen` collects the schema nodes visited (by address).
fn assert_keys_match(root: &Value, node: &Value, value: &Value, path: &str, seen: &mut BTreeSet<usize>) {
    let node = resolve(root, node);
    match value {
        Value::Object(map) => {
            let Some(props) = node.get("properties").and_then(Value::as_object) else { return };
            assert_eq!(node["additionalProperties"], false, "{path}: a struct we control is closed");
            let listed: BTreeSet<&str> = props.keys().map(String::as_str).collect();
            let mut written: BTreeSet<&str> = map.keys().map(String::as_str).collect();
            if path == "$" {
                written.insert("trace"); // omitted when empty
            }
            assert_eq!(written, listed, "{path}: keys written vs keys in the schema");
            let required: BTreeSet<&str> =
                node["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
            let optional = [
                "trace",
                "injected_fault",
                "token_texts",
                "reference_profile",
                "hazards",
                "fail_on_hazards",
                "shard", // 1.3: only in a shard's receipt
            ];
            // 1.2: absent in older receipts (`kind`), or there only for some kinds of side A.
            let side_a = ["kind", "build", "external"];
            // 1.3: absent in older receipts (`settings.mode`), or there only in some modes.
            let batched = |k: &str| match k {
                "mode" | "ubatch" => path == "$.settings",
                "batch" => ["$.settings", "$.cases[]", "$.trace"].contains(&path),
                "self_consistency" => ["$", "$.cases[]"].contains(&path),
                "batch_summary" => path == "$",
                _ => false,
            };
            let expected: BTreeSet<&str> = listed
                .iter()
                .copied()
                .filter(|k| {
                    !(optional.contains(k) || path == "$.engines.rust" && side_a.contains(k) || batched(k))
                })
                .collect();
            assert_eq!(required, expected, "{path}: every field but the optional ones is required");
            seen.insert(node as *const Value as usize);
            for (k, v) in map {
                assert_keys_match(root, &props[k], v, &format!("{path}.{k}"), seen);
            }
        }
        Value::Array(items) => {
            if let Some(sub) = node.get("items") {
                for v in items {
                    assert_keys_match(root, sub, v, &format!("{path}[]"), seen);
                }
            }
        }
        _ => {}
    }
}

fn resolve<'a>(root: &'a Value, mut node: &'a Value) -> &'a Value {
    while let Some(r) = node.get("$ref").and_then(Value::as_str) {
        node = &root["$defs"][r.strip_prefix("#/$defs/").unwrap()];
    }
    node
}

#[test]
fn schema_lists_exactly_the_fields_the_types_write() {
    let root = schema::schema_value();
    let mut seen = BTreeSet::new();
    assert_keys_match(root, root, &to_value(&maximal()), "$", &mut seen);
    assert_keys_match(root, root, &to_value(&minimal()), "$", &mut seen);
    // Every struct definition of the schema was compared with what the types write.
    for (name, def) in root["$defs"].as_object().unwrap() {
        if def.get("properties").is_some() {
            assert!(
                seen.contains(&(def as *const Value as usize)),
                "$defs/{name} was not reached by the walk"
            );
        }
    }
}

#[test]
fn missing_field_wrong_type_and_unknown_key_are_refused_by_name() {
    let good = to_value(&maximal());

    let mut v = good.clone();
    v["summary"].as_object_mut().unwrap().remove("cosine_min");
    let (path, message) = schema_error(&v);
    assert_eq!(path, "summary");
    assert!(message.contains("cosine_min"), "{message}");

    let mut v = good.clone();
    v["cases"][0]["positions"][1]["kl"] = json!("small");
    assert_eq!(schema_error(&v).0, "cases[0].positions[1].kl");

    let mut v = good.clone();
    v["engines"]["rust"]["threads"] = json!(-1);
    assert_eq!(schema_error(&v).0, "engines.rust.threads");

    let mut v = good.clone();
    v["model"]["sha256"] = json!("ABC");
    assert_eq!(schema_error(&v).0, "model.sha256");

    let mut v = good.clone();
    v["created_at"] = json!("yesterday");
    assert_eq!(schema_error(&v).0, "created_at");

    let mut v = good.clone();
    v["verdict"]["status"] = json!("maybe");
    assert_eq!(schema_error(&v).0, "verdict.status");

    let mut v = good.clone();
    v["summary"]["first_divergence"]["reason"] = json!("mood");
    assert_eq!(schema_error(&v).0, "summary.first_divergence.reason");

    let mut v = good.clone();
    v["summary"]["cosine_percentiles"] = json!("high");
    assert_eq!(schema_error(&v).0, "summary.cosine_percentiles");

    let mut v = good.clone();
    v["compute_path"] = json!("real");
    let (path, message) = schema_error(&v);
    assert_eq!(path, "(top level)");
    assert!(message.contains("compute_path"), "{message}");

    let mut v = good.clone();
    v["settings"]["thresholds"]["min_kl"] = json!(0);
    assert_eq!(schema_error(&v).0, "settings.thresholds");

    // Two errors: the first is named, the rest counted.
    let mut v = good;
    v["tool"]["name"] = json!(1);
    v["tool"]["version"] = json!(2);
    let e = parse(&v).unwrap_err().to_string();
    assert!(e.contains("(and 1 more schema error)"), "{e}");
}

#[test]
fn versions_other_majors_refused_newer_minors_read_with_new_fields_ignored() {
    let mut v = to_value(&maximal());
    v["schema_version"] = json!("2.0.0");
    assert!(matches!(parse(&v), Err(ReceiptError::UnknownMajor { .. })));
    v["schema_version"] = json!("1.0");
    assert!(matches!(parse(&v), Err(ReceiptError::BadVersion(_))));
    v.as_object_mut().unwrap().remove("schema_version");
    assert!(matches!(parse(&v), Err(ReceiptError::NoVersion)));

    // A newer minor version may add optional fields anywhere: they are reported and ignored.
    let mut v = to_value(&maximal());
    v["schema_version"] = json!("1.4.0");
    v["energy_joules"] = json!(3.5);
    v["summary"]["kl_p999"] = json!(0.1);
    v["cases"][0]["positions"][2]["entropy"] = json!(1.0);
    v["settings"]["thresholds"]["max_kl_reverse"] = json!(1.0);
    let mut ignored = parse(&v).unwrap();
    ignored.sort();
    assert_eq!(
        ignored,
        [
            "cases[0].positions[2].entropy",
            "energy_joules",
            "settings.thresholds.max_kl_reverse",
            "summary.kl_p999"
        ]
    );
    // ... but the fields this version knows are still checked.
    v["summary"]["kl_max"] = json!("big");
    assert_eq!(schema_error(&v).0, "summary.kl_max");
    // The same unknown field at our own minor version is drift, not a newer format.
    let mut v = to_value(&maximal());
    v["summary"]["kl_p999"] = json!(0.1);
    assert_eq!(schema_error(&v).0, "summary");
}

/// A receipt of schema 1.0.0, written before the reference-build profile and the hazards were
/// recorded, still reads (strictly: it is an older minor version), and `gate` makes no profile
/// or hazard check of it.
#[test]
fn receipts_of_schema_1_0_without_profile_fields_still_read() {
    let mut v = to_value(&maximal());
    v["schema_version"] = json!("1.0.0");
    v["engines"]["rust"].as_object_mut().unwrap().remove("reference_profile");
    v.as_object_mut().unwrap().remove("hazards");
    v["settings"]["thresholds"].as_object_mut().unwrap().remove("fail_on_hazards");
    let (version, r, _, ignored) = schema::parse_receipt(&serde_json::to_vec(&v).unwrap()).unwrap();
    assert_eq!((version.major, version.minor), (1, 0));
    assert!(ignored.is_empty());
    assert_eq!(r.engines.rust.reference_profile, None);
    assert!(r.hazards.is_empty());
    assert_eq!(r.settings.thresholds.fail_on_hazards, harness::hazards::HazardPolicy::None);
    let t = harness::thresholds::resolve(&r.settings.thresholds, None, &Default::default());
    assert!(harness::gate::evaluate(&r, &t)
        .iter()
        .all(|c| c.name != "reference_profile" && c.name != "hazard"));

    // The draft of 1.1 that kept the profile's hazard as a string in engines.reference is not a
    // format this harness writes or reads.
    let mut v = to_value(&maximal());
    v["engines"]["reference"]["profile_hazard"] = json!("no profile");
    assert_eq!(schema_error(&v).0, "engines.reference");

    // A hazard needs its three fields; a kind is a snake_case name.
    let mut v = to_value(&maximal());
    v["hazards"][1].as_object_mut().unwrap().remove("fails_verdict");
    assert_eq!(schema_error(&v).0, "hazards[1]");
    let mut v = to_value(&maximal());
    v["hazards"][0]["kind"] = json!("Reference Profile");
    assert_eq!(schema_error(&v).0, "hazards[0].kind");
    let mut v = to_value(&maximal());
    v["settings"]["thresholds"]["fail_on_hazards"] = json!("yes");
    assert_eq!(schema_error(&v).0, "settings.thresholds.fail_on_hazards");

    // A profile source this version does not know is drift.
    let mut v = to_value(&maximal());
    v["engines"]["rust"]["reference_profile"]["source"] = json!("guess");
    assert_eq!(schema_error(&v).0, "engines.rust.reference_profile.source");
}

#[test]
fn truncated_or_non_json_receipts_are_refused() {
    let text = serde_json::to_string_pretty(&maximal()).unwrap();
    // Every cut through the document (it is a few kB) fails cleanly, never panics.
    for cut in 0..text.len() - 1 {
        let e = schema::parse_receipt(&text.as_bytes()[..cut]).unwrap_err();
        assert!(matches!(e, ReceiptError::Json(_)), "cut at {cut}: {e}");
    }
    assert!(matches!(schema::parse_receipt(b"[1, 2]"), Err(ReceiptError::NotAnObject)));
    assert!(matches!(schema::parse_receipt(&[0xff, 0xfe]), Err(ReceiptError::Json(_))));
}

#[test]
fn read_receipt_names_the_file_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.json");
    let f = schema::read_receipt(&missing).unwrap_err();
    assert_eq!(f.exit, harness::exit::Exit::BadInput);
    let msg = f.to_string();
    assert!(msg.contains("nope.json") && msg.contains("cannot read"), "{msg}");
    assert!(!msg.contains('\n'));

    let mut v = to_value(&maximal());
    v["summary"]["positions"] = json!("many");
    let path = dir.path().join("bad.json");
    write_json(&path, &v);
    let msg = schema::read_receipt(&path).unwrap_err().to_string();
    assert!(msg.contains("bad.json") && msg.contains("summary.positions"), "{msg}");
    assert!(!msg.contains('\n'));
}

// ---- Receipts written by `harness run` --------------------------------------------------

/// The top level of a receipt, re-read strictly: a field added to or removed from the format
/// without this test being updated fails here (STYLE.md).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct StrictReceipt {
    schema_version: String,
    created_at: String,
    tool: Value,
    model: Value,
    engines: StrictEngines,
    settings: StrictSettings,
    tokenizer: Value,
    cases: Vec<StrictCase>,
    summary: StrictSummary,
    hazards: Vec<StrictHazard>,
    verdict: Value,
    timings: Value,
    run_state: StrictRunState,
    #[serde(default)]
    trace: Option<Value>,
    #[serde(default)]
    batch_summary: Option<StrictSummary>,
    #[serde(default)]
    self_consistency: Option<StrictSelfConsistency>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct StrictSelfConsistency {
    rust: StrictSummary,
    reference: StrictSummary,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct StrictBatchCase {
    rust_logits_sha256: String,
    reference_logits_sha256: String,
    positions: Vec<Value>,
    summary: StrictSummary,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct StrictHazard {
    kind: String,
    detail: String,
    fails_verdict: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct StrictThresholds {
    min_cosine: f64,
    min_exact_match: f64,
    max_kl: f64,
    max_first_divergence: Option<usize>,
    fail_on_hazards: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct StrictEngines {
    rust: StrictRustEngine,
    reference: StrictReferenceEngine,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct StrictRustEngine {
    kind: String,
    name: String,
    version: String,
    kernel: String,
    exact_reference_rounding: bool,
    threads: usize,
    #[serde(default)]
    injected_fault: Option<String>,
    reference_profile: Option<StrictReferenceProfile>,
    #[serde(default)]
    build: Option<StrictReferenceEngine>,
    #[serde(default)]
    external: Option<StrictExternalEngine>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct StrictExternalEngine {
    name: String,
    version: String,
    build: Option<String>,
    profile: Option<String>,
    command: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct StrictReferenceProfile {
    name: String,
    source: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct StrictReferenceEngine {
    source: String,
    version: Option<String>,
    compiler: Option<String>,
    flags: Vec<String>,
    isa: Vec<String>,
    library_path: Option<String>,
    threads: usize,
    kv_cache_type: String,
    flash_attention: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct StrictSettings {
    n_ctx: usize,
    max_tokens: Option<usize>,
    continue_tokens: usize,
    ids_from: Option<String>,
    add_bos: bool,
    parse_special: bool,
    thresholds: StrictThresholds,
    #[serde(default)]
    shard: Option<StrictShard>,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    batch: Option<usize>,
    #[serde(default)]
    ubatch: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct StrictShard {
    index: usize,
    count: usize,
    total_cases: usize,
    prompts_sha256: String,
    cases: Vec<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct StrictCase {
    prompt: String,
    token_ids: Vec<u32>,
    n_prompt_tokens: usize,
    rust_logits_sha256: String,
    reference_logits_sha256: String,
    positions: Vec<Value>,
    summary: StrictSummary,
    #[serde(default)]
    token_texts: Option<Vec<String>>,
    #[serde(default)]
    batch: Option<StrictBatchCase>,
    #[serde(default)]
    self_consistency: Option<StrictSelfConsistency>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct StrictSummary {
    positions: usize,
    nonfinite_positions: usize,
    bit_exact_positions: usize,
    cosine_min: Option<f64>,
    cosine_mean: Option<f64>,
    exact_match_rate: Option<f64>,
    first_divergence: Option<Value>,
    kl_mean: Option<f64>,
    kl_max: Option<f64>,
    max_abs_diff: Option<f64>,
    cosine_percentiles: Option<Value>,
    kl_percentiles: Option<Value>,
    worst_positions: Vec<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct StrictRunState {
    completed: bool,
    interrupted: bool,
    reference_failure: Option<String>,
    rust_failure: Option<String>,
}

/// Checks one receipt written by `run`: strict schema, typed read, strict private structs.
fn check_written(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap();
    let (version, receipt, _, ignored) =
        schema::parse_receipt(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(version, schema::Version::ours());
    assert!(ignored.is_empty());
    let strict: StrictReceipt =
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(strict.schema_version, harness::receipt::SCHEMA_VERSION);
    // Every receipt `run` writes names the profile the Rust engine mirrored.
    let p = strict.engines.rust.reference_profile.as_ref().expect("a reference profile");
    assert_eq!(strict.engines.rust.kind, "rust-engine");
    assert!(["avx2", "avx512"].contains(&p.name.as_str()), "{}", p.name);
    assert!(
        ["build-info", "saved-reference", "override", "host"].contains(&p.source.as_str()),
        "{}",
        p.source
    );
    assert_eq!(strict.cases.len(), receipt.cases.len());
    // The written file is the typed receipt, nothing more or less.
    assert_eq!(serde_json::from_slice::<Value>(&bytes).unwrap(), to_value(&receipt));
    read_json(path)
}

#[test]
fn every_receipt_run_writes_validates() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let other = fixture("tiny-384-mha-i2_s.gguf");
    let default = fixture("tiny-256-gqa-i2_s.gguf");
    let saved = d.join("reference.bin");
    let runs: Vec<(&str, Vec<&str>)> = vec![
        ("default", vec![]),
        ("mha", vec!["--model", other.to_str().unwrap()]),
        ("threads", vec!["--threads", "2"]),
        ("no-rounding", vec!["--no-exact-rounding"]),
        ("continue", vec!["--continue", "3"]),
        ("max-tokens", vec!["--max-tokens", "5"]),
        ("prompt", vec!["--prompt", "a b\tc\n", "--prompt", "é→ü"]),
        ("save", vec!["--model", default.to_str().unwrap(), "--save-reference", saved.to_str().unwrap()]),
    ];
    for (name, args) in &runs {
        let v = check_written(&run_receipt(d, name, args));
        assert_eq!(v["run_state"]["completed"], true, "{name}");
    }
    let v = check_written(&run_receipt(
        d,
        "saved",
        &["--model", default.to_str().unwrap(), "--reference", saved.to_str().unwrap()],
    ));
    assert!(
        v["engines"]["reference"]["source"].as_str().unwrap().starts_with("saved:"),
        "{}",
        v["engines"]["reference"]
    );
}
