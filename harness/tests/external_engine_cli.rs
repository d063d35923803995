//! `harness run` with an engine in another process (`--engine-cmd`, `docs/engine-protocol.md`):
//! the example engine passes, its classic I2_S mistake fails at position 0 with the trace naming
//! the first op, and a crash, a hang or a refused hello are reported as the protocol says.
//!
//! The crashing and hanging engines are the real example engine behind a python3 proxy that
//! forwards the protocol and misbehaves at a chosen `eval`: the positions before are real.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use common::example_engine;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tiny-256-gqa-i2_s.gguf")
}

/// Forwards the protocol to the engine named by its other arguments; at the Nth `eval` it
/// exits 3 (`crash`) or stops answering (`hang`).
const PROXY: &str = r#"
import subprocess, sys, time
mode, n = sys.argv[1], int(sys.argv[2])
engine = subprocess.Popen(sys.argv[3:], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
evals = 0
for line in sys.stdin:
    if '"op":"eval"' in line:
        evals += 1
        if evals == n and mode == "crash":
            sys.exit(3)
        if evals == n and mode == "hang":
            time.sleep(3600)
    engine.stdin.write(line)
    engine.stdin.flush()
    sys.stdout.write(engine.stdout.readline())
    sys.stdout.flush()
"#;

/// `harness run --quiet --model FIXTURE --out DIR/receipt.json ARGS`: its output and receipt
/// (null when none was written).
fn run(dir: &Path, args: &[&str]) -> (Output, Value) {
    let out = dir.join("receipt.json");
    let output = Command::new(env!("CARGO_BIN_EXE_harness"))
        .current_dir(dir)
        .args(["run", "--quiet", "--model", fixture().to_str().unwrap(), "--out", out.to_str().unwrap()])
        .args(args)
        .env_remove("CROSSVAL_GGUF")
        .env_remove("BITNET_CPP_DIR")
        .output()
        .expect("the harness starts");
    let receipt = std::fs::read_to_string(&out).map_or(Value::Null, |t| serde_json::from_str(&t).unwrap());
    (output, receipt)
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn quoted(p: &Path) -> String {
    format!("'{}'", p.display())
}

#[test]
fn the_example_engine_is_bit_exact_against_the_rust_engine() {
    let dir = tempfile::tempdir().unwrap();
    let cmd = quoted(&example_engine());
    let (o, r) = run(dir.path(), &["--engine-cmd", &cmd, "--against", "rust", "--max-tokens", "12"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(r["verdict"]["status"], "pass", "{}", r["verdict"]);
    assert_eq!(r["summary"]["bit_exact_positions"], r["summary"]["positions"]);
    assert_eq!(r["engines"]["rust"]["external"]["name"], "example-engine");
    assert_eq!(r["engines"]["rust"]["external"]["command"], cmd.as_str());
}

#[test]
fn the_mistaken_example_fails_the_gate_at_position_0_and_the_trace_names_qcur_0() {
    let dir = tempfile::tempdir().unwrap();
    let cmd = format!("{} --mistake iq2s-sequential", quoted(&example_engine()));
    // Against the live bitnet.cpp (the default side B).
    let (o, r) = run(dir.path(), &["--engine-cmd", &cmd, "--max-tokens", "8", "--trace"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(r["verdict"]["status"], "fail", "{}", r["verdict"]);
    assert_eq!(r["summary"]["first_divergence"]["case"], 0);
    assert_eq!(r["summary"]["first_divergence"]["pos"], 0);
    assert_eq!(r["trace"]["pos"], 0);
    assert_eq!(r["trace"]["first_divergent_op"], "Qcur-0", "{}", r["trace"]);
    let gate = Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(["gate", dir.path().join("receipt.json").to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(gate.status.code(), Some(1), "{}", text(&gate));
}

fn proxied(dir: &Path, mode: &str, at_eval: usize) -> String {
    let proxy = dir.join("proxy.py");
    std::fs::write(&proxy, PROXY).unwrap();
    format!("python3 {} {mode} {at_eval} {}", quoted(&proxy), quoted(&example_engine()))
}

#[test]
fn a_crash_mid_run_leaves_a_complete_receipt_with_an_incomplete_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let cmd = proxied(dir.path(), "crash", 15);
    let (o, r) = run(dir.path(), &["--engine-cmd", &cmd, "--against", "rust", "--max-tokens", "10"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(r["run_state"]["completed"], false);
    assert_eq!(r["verdict"]["status"], "incomplete");
    let reasons = r["verdict"]["reasons"].to_string();
    assert!(reasons.contains("example-engine") && reasons.contains("exited with status 3"), "{reasons}");
    assert!(reasons.contains("eval at position 4"), "{reasons}");
    // Case 1 whole, case 2 up to the crash.
    assert_eq!(r["cases"][0]["positions"].as_array().unwrap().len(), 10);
    assert_eq!(r["cases"][1]["positions"].as_array().unwrap().len(), 4);
}

#[test]
fn a_hang_is_stopped_at_the_engine_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let cmd = proxied(dir.path(), "hang", 3);
    let t = std::time::Instant::now();
    let (o, r) = run(dir.path(), &["--engine-cmd", &cmd, "--against", "rust", "--engine-timeout", "2"]);
    assert!(t.elapsed().as_secs() < 30, "{:?}", t.elapsed());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(r["run_state"]["completed"], false);
    assert_eq!(r["verdict"]["status"], "incomplete");
    let reasons = r["verdict"]["reasons"].to_string();
    assert!(reasons.contains("did not answer eval at position 2 within 2s"), "{reasons}");
}

#[test]
fn an_engine_of_another_protocol_version_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("v2.py");
    std::fs::write(&script, "import sys\nsys.stdin.readline()\nprint('{\"ok\":true,\"protocol\":2,\"name\":\"v2\",\"version\":\"0\"}', flush=True)\nsys.stdin.readline()\n").unwrap();
    let cmd = format!("python3 {}", quoted(&script));
    let (o, r) = run(dir.path(), &["--engine-cmd", &cmd, "--against", "rust"]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(text(&o).contains("speaks engine protocol version 2"), "{}", text(&o));
    assert!(r.is_null(), "no receipt before the first position");
}
