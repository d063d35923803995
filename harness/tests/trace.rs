//! `harness run --trace` names the injected fault's layer and operation as the first
//! divergence; without faults every traced operation agrees, on every fixture.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn run(dir: &Path, model: &Path, extra: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_harness"))
        .current_dir(dir)
        .args(["run", "--quiet", "--max-tokens", "24", "--out", "r.json", "--model"])
        .arg(model)
        .args(extra)
        .env_remove("BITNET_CPP_DIR")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(&std::fs::read_to_string(dir.join("r.json")).unwrap()).unwrap()
}

fn models() -> Vec<std::path::PathBuf> {
    bitnet_fixtures::spec::committed()
        .iter()
        .map(|s| bitnet_fixtures::ensure(s, bitnet_fixtures::WeightForm::I2S))
        .collect()
}

#[test]
fn without_faults_every_operation_agrees() {
    let dir = tempfile::tempdir().unwrap();
    for model in models() {
        let r = run(dir.path(), &model, &["--trace"]);
        let t = &r["trace"];
        assert_eq!(t["reason"], "last_position", "{}", model.display());
        assert_eq!(t["first_divergent_op"], Value::Null);
        assert!(t["unmatched"].as_array().unwrap().is_empty(), "{}", t["unmatched"]);
        let ops = t["ops"].as_array().unwrap();
        let n_layer = r["model"]["hyperparameters"]["block_count"].as_u64().unwrap() as usize;
        assert_eq!(ops.len(), n_layer * 15 + 2);
        for op in ops {
            assert_eq!(op["below_threshold"], false, "{op}");
            assert!(op["cosine"].as_f64().unwrap() >= 0.99999, "{op}");
        }
    }
}

#[test]
fn each_injected_fault_is_named_as_the_first_divergent_operation() {
    let dir = tempfile::tempdir().unwrap();
    let faults = [
        ("rope-adjacent@1", "Qcur-1"),
        ("skip-attn-sub-norm@0", "attn_sub_norm-0"),
        ("skip-ffn-sub-norm@1", "ffn_sub_norm-1"),
        ("rope-adjacent@0", "Qcur-0"),
    ];
    for model in models() {
        for (fault, op) in faults {
            let r = run(dir.path(), &model, &["--trace=auto", "--inject-fault", fault]);
            assert_eq!(r["engines"]["rust"]["injected_fault"], fault);
            let t = &r["trace"];
            assert_eq!(t["reason"], "first_divergence", "{fault} on {}", model.display());
            assert_eq!(t["first_divergent_op"], op, "{fault} on {}", model.display());
            // Everything before the faulty operation is still bit-exact.
            for o in t["ops"].as_array().unwrap() {
                if o["name"] == op {
                    break;
                }
                assert_eq!(o["bit_exact"], true, "{fault}: {o}");
            }
        }
    }
}

#[test]
fn auto_does_not_trace_a_clean_run_and_an_explicit_position_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let model = &models()[0];
    let r = run(dir.path(), model, &["--trace=auto"]);
    assert_eq!(r.get("trace"), None);
    let r = run(dir.path(), model, &["--trace=2:5"]);
    assert_eq!(r["trace"]["case"], 1);
    assert_eq!(r["trace"]["pos"], 5);
    assert_eq!(r["trace"]["reason"], "requested");
}

#[test]
fn diff_understands_traces() {
    let dir = tempfile::tempdir().unwrap();
    let model = &models()[0];
    run(dir.path(), model, &["--trace"]);
    std::fs::rename(dir.path().join("r.json"), dir.path().join("clean.json")).unwrap();
    run(dir.path(), model, &["--trace", "--inject-fault", "skip-ffn-sub-norm@1"]);
    let out = Command::new(env!("CARGO_BIN_EXE_harness"))
        .current_dir(dir.path())
        .args(["diff", "--json", "clean.json", "r.json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let d: Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = d["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["metric"] == "first_divergent_op")
        .expect("a trace row");
    assert_eq!(row["old"], Value::Null);
    assert_eq!(row["new"], "ffn_sub_norm-1");
    assert_eq!(row["status"], "worse");
    assert!(row["scope"].as_str().unwrap().starts_with("trace"));
}
