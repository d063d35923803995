//! Engines in another process (`harness::engine::external`, `docs/engine-protocol.md`).
//!
//! - The client's error handling, against tiny python3 engines that crash, hang, refuse or break
//!   the protocol on purpose. They are test doubles for the client alone: they compute nothing
//!   and stand in for no reference.
//! - `examples/example_engine.rs` over the protocol: bit-identical to the Rust engine in this
//!   process, and with `--mistake iq2s-sequential` wrong from the first position, the trace
//!   naming the first op that differs.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitnet_engine::gguf::GgufFile;
use bitnet_engine::model::ModelOptions;
use harness::engine::external::ExternalEngine;
use harness::engine::rust::RustSide;
use harness::engine::{eval, Engine, EngineError, EngineResult, Identity};

use common::example_engine;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tiny-256-gqa-i2_s.gguf")
}

/// One python3 engine whose misbehaviour is chosen by its first argument.
const FAKE_ENGINE: &str = r#"
import base64, json, os, struct, sys, time

mode = sys.argv[1]
N = 8
evals = 0

def floats(n):
    return base64.b64encode(struct.pack("<%df" % n, *([0.5] * n))).decode()

for line in sys.stdin:
    req = json.loads(line)
    op = req["op"]
    if op == "hello":
        ans = {"ok": True, "protocol": 2 if mode == "version" else 1, "name": "fake-" + mode, "version": "0"}
        if mode == "deaf":
            ans["capabilities"] = ["tokenize"]
    elif op == "load":
        ans = {"ok": True, "n_vocab": N}
        if mode == "deaf":
            print(json.dumps(ans), flush=True)
            time.sleep(3600)
    elif op == "reset":
        ans = {"ok": True}
    elif op == "eval":
        evals += 1
        ans = {"ok": True, "logits": floats(N)}
        if evals == 3 and mode == "crash":
            sys.exit(3)
        if evals == 3 and mode == "signal":
            os.kill(os.getpid(), 9)
        if evals == 3 and mode == "hang":
            time.sleep(3600)
        if evals == 3 and mode == "malformed":
            print('{"ok": true, "logits": ', flush=True)
            continue
        if evals == 3 and mode == "short":
            ans["logits"] = floats(N - 1)
        if evals == 3 and mode == "base64":
            ans["logits"] = "AAAA*AAA"
        if evals == 3 and mode == "missing":
            del ans["logits"]
        if evals == 3 and mode == "refuse":
            ans = {"ok": False, "error": "out of memory in layer 0"}
    elif op == "shutdown":
        print(json.dumps({"ok": True}), flush=True)
        break
    else:
        ans = {"ok": False, "error": "unsupported " + op}
    print(json.dumps(ans), flush=True)
"#;

struct Fake {
    _dir: tempfile::TempDir,
    script: PathBuf,
}

fn fake() -> Fake {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("fake engine.py");
    std::fs::write(&script, FAKE_ENGINE).unwrap();
    Fake { _dir: dir, script }
}

fn start_fake(mode: &str, timeout: Duration) -> (Fake, EngineResult<ExternalEngine>) {
    let f = fake();
    // The path has a space: the command line is split like a shell would.
    let command = format!("python3 '{}' {mode}", f.script.display());
    let engine =
        ExternalEngine::start(&command, &fixture(), 16, 1, timeout, Arc::new(AtomicBool::new(false)));
    (f, engine)
}

/// Case 0, positions 0..5; the error of the first failing request.
fn drive(engine: &mut ExternalEngine) -> EngineResult<()> {
    engine.reset(0)?;
    for pos in 0..5 {
        let logits = eval(engine, 1, pos)?;
        assert_eq!(logits, vec![0.5; 8]);
    }
    Ok(())
}

fn failure(mode: &str, timeout: Duration) -> (EngineError, u32) {
    let (_f, engine) = start_fake(mode, timeout);
    let mut engine = engine.unwrap_or_else(|e| panic!("{mode}: start failed: {e}"));
    let pid = engine.pid();
    let err = drive(&mut engine).expect_err(mode);
    // Once failed, the engine answers nothing more (except after a refusal, which it survives).
    if !matches!(err, EngineError::Failed(_)) {
        assert_eq!(eval(&mut engine, 1, 5).unwrap_err(), err, "{mode}: a dead engine repeats its error");
    }
    (err, pid)
}

fn assert_names_third_eval(err: &EngineError) {
    let text = err.to_string();
    assert!(text.contains("fake-"), "names the engine: {text}");
    assert!(text.contains("eval at position 2"), "names the request: {text}");
}

fn gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn a_well_behaved_engine_answers_and_shuts_down() {
    let (_f, engine) = start_fake("good", Duration::from_secs(10));
    let mut engine = engine.unwrap();
    assert!(engine.runs_elsewhere());
    assert_eq!(engine.n_vocab(), 8);
    match engine.identity() {
        Identity::External(id) => {
            assert_eq!((id.name.as_str(), id.version.as_str()), ("fake-good", "0"));
            assert!(id.command.starts_with("python3 '"), "{}", id.command);
        }
        other => panic!("{other:?}"),
    }
    // No "tokenize" or "trace" capability: None, not an error.
    assert_eq!(engine.tokenize("hi", true, false).unwrap(), None);
    assert_eq!(engine.tokenize_many(&["a".into()], true, false).unwrap(), None);
    assert_eq!(engine.trace_names().unwrap(), None);
    drive(&mut engine).unwrap();
    let pid = engine.pid();
    let t = Instant::now();
    Box::new(engine).shutdown();
    assert!(t.elapsed() < Duration::from_secs(4), "shutdown waited for the engine's exit only");
    assert!(gone(pid));
}

#[test]
fn a_crash_is_reported_with_its_exit_status() {
    let (err, pid) = failure("crash", Duration::from_secs(10));
    assert!(matches!(err, EngineError::Crashed(_)), "{err:?}");
    assert!(err.to_string().contains("exited with status 3"), "{err}");
    assert_names_third_eval(&err);
    assert!(gone(pid));
}

#[test]
fn a_kill_is_reported_with_its_signal() {
    let (err, _) = failure("signal", Duration::from_secs(10));
    assert!(matches!(err, EngineError::Crashed(_)), "{err:?}");
    assert!(err.to_string().contains("killed by signal 9"), "{err}");
    assert_names_third_eval(&err);
}

#[test]
fn a_hang_is_stopped_at_the_timeout() {
    let t = Instant::now();
    let (err, pid) = failure("hang", Duration::from_secs(2));
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    assert!(matches!(err, EngineError::Hung(_)), "{err:?}");
    assert!(err.to_string().contains("within 2s"), "{err}");
    assert_names_third_eval(&err);
    assert!(gone(pid), "the hung engine was killed");
}

#[test]
fn an_engine_that_stops_reading_is_stopped_at_the_timeout() {
    // 4 MiB of request, far more than a pipe holds: the write must not block the client.
    let (_f, engine) = start_fake("deaf", Duration::from_secs(2));
    let mut engine = engine.unwrap();
    let t = Instant::now();
    let err = engine.tokenize(&"x".repeat(4 << 20), true, false).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    assert!(matches!(err, EngineError::Hung(_)) && err.to_string().contains("tokenize of"), "{err}");
    assert!(gone(engine.pid()));
}

#[test]
fn malformed_answers_are_protocol_errors() {
    for (mode, says) in [
        ("malformed", "malformed JSON"),
        ("short", "holds 7 values, n_vocab is 8"),
        ("base64", "not base64"),
        ("missing", "missing field `logits`"),
    ] {
        let (err, pid) = failure(mode, Duration::from_secs(10));
        assert!(matches!(err, EngineError::Protocol(_)), "{mode}: {err:?}");
        assert!(err.to_string().contains(says), "{mode}: {err}");
        assert_names_third_eval(&err);
        assert!(gone(pid), "{mode}: the engine was stopped");
    }
}

#[test]
fn a_refusal_is_a_failure_the_engine_survives() {
    let (_f, engine) = start_fake("refuse", Duration::from_secs(10));
    let mut engine = engine.unwrap();
    let err = drive(&mut engine).unwrap_err();
    assert!(matches!(err, EngineError::Failed(_)), "{err:?}");
    assert!(err.to_string().contains("refused eval at position 2: out of memory in layer 0"), "{err}");
    assert_eq!(eval(&mut engine, 1, 3).unwrap(), vec![0.5; 8]);
}

#[test]
fn another_protocol_version_is_refused_at_hello() {
    let (_f, engine) = start_fake("version", Duration::from_secs(10));
    let err = engine.unwrap_err();
    assert!(matches!(err, EngineError::Protocol(_)), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("speaks engine protocol version 2") && text.contains("hello"), "{text}");
}

#[test]
fn a_command_that_cannot_start_is_named() {
    let cancel = Arc::new(AtomicBool::new(false));
    let timeout = Duration::from_secs(10);
    let err = ExternalEngine::start("/nonexistent/engine --x", &fixture(), 16, 1, timeout, cancel.clone())
        .unwrap_err();
    assert!(
        matches!(err, EngineError::Failed(_)) && err.to_string().contains("/nonexistent/engine"),
        "{err}"
    );
    let err =
        ExternalEngine::start("engine 'unclosed", &fixture(), 16, 1, timeout, cancel.clone()).unwrap_err();
    assert!(err.to_string().contains("unclosed quote"), "{err}");
    // Exits at once: the hello finds the end of its stdout.
    let err = ExternalEngine::start("true", &fixture(), 16, 1, timeout, cancel).unwrap_err();
    assert!(matches!(err, EngineError::Crashed(_)) && err.to_string().contains("hello"), "{err}");
}

#[test]
fn raising_the_cancel_flag_interrupts_a_wait_and_stops_the_engine() {
    let f = fake();
    let cancel = Arc::new(AtomicBool::new(false));
    let command = format!("python3 '{}' hang", f.script.display());
    let mut engine =
        ExternalEngine::start(&command, &fixture(), 16, 1, Duration::from_secs(60), cancel.clone()).unwrap();
    let pid = engine.pid();
    let raiser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        cancel.store(true, Ordering::Relaxed);
    });
    let t = Instant::now();
    assert_eq!(drive(&mut engine).unwrap_err(), EngineError::Interrupted);
    assert!(t.elapsed() < Duration::from_secs(5));
    raiser.join().unwrap();
    assert!(gone(pid));
}

// --- The example engine -------------------------------------------------------------------

fn start_example(args: &str, n_ctx: usize) -> ExternalEngine {
    let command = format!("'{}' {args}", example_engine().display());
    let cancel = Arc::new(AtomicBool::new(false));
    ExternalEngine::start(&command, &fixture(), n_ctx, 1, Duration::from_secs(600), cancel)
        .unwrap_or_else(|e| panic!("{command}: {e}"))
}

const POSITIONS: usize = 20;

/// 20 token ids: a sentence tokenized by `engine`, then a fixed pattern.
fn tokens(engine: &mut dyn Engine) -> Vec<u32> {
    let mut ids = engine.tokenize("The quick brown fox jumps over", true, false).unwrap().unwrap();
    let n_vocab = engine.n_vocab() as u32;
    let mut i = 0u32;
    while ids.len() < POSITIONS {
        ids.push((i * 37 + 11) % n_vocab);
        i += 1;
    }
    ids.truncate(POSITIONS);
    ids
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum();
    let norm = |v: &[f32]| v.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn options() -> ModelOptions {
    ModelOptions { n_ctx: 32, threads: 1, ..ModelOptions::default() }
}

#[test]
fn the_example_engine_over_the_protocol_is_bit_identical_to_the_rust_engine() {
    let file = GgufFile::open(fixture()).unwrap();
    let mut local = RustSide::load(&file, options()).unwrap();
    let mut remote = start_example("", 32);
    match remote.identity() {
        Identity::External(id) => assert_eq!(id.name, "example-engine"),
        other => panic!("{other:?}"),
    }
    assert_eq!(remote.n_vocab(), local.n_vocab());
    let ids = tokens(&mut local);
    assert_eq!(tokens(&mut remote), ids, "the same tokenizer");
    let texts = vec!["Hello".to_string(), "world, again".to_string()];
    assert_eq!(
        remote.tokenize_many(&texts, true, false).unwrap(),
        local.tokenize_many(&texts, true, false).unwrap()
    );
    assert_eq!(remote.trace_names().unwrap(), local.trace_names().unwrap());
    local.reset(0).unwrap();
    remote.reset(0).unwrap();
    for (pos, &id) in ids.iter().enumerate() {
        remote.start_eval(&[id], pos).unwrap();
        let l = eval(&mut local, id, pos).unwrap();
        let r = remote.finish_eval().unwrap();
        assert_eq!(bits(&r), bits(&l), "position {pos}");
    }
    Box::new(remote).shutdown();
}

#[test]
fn the_mistaken_example_engine_is_wrong_from_position_0_and_the_trace_names_the_first_op() {
    let file = GgufFile::open(fixture()).unwrap();
    let mut local = RustSide::load(&file, options()).unwrap();
    let mut wrong = start_example("--mistake iq2s-sequential", 32);
    let ids = tokens(&mut local);
    local.reset(0).unwrap();
    wrong.reset(0).unwrap();
    let mut cosines = Vec::new();
    for (pos, &id) in ids.iter().enumerate().take(4) {
        let c = cosine(&eval(&mut wrong, id, pos).unwrap(), &eval(&mut local, id, pos).unwrap());
        cosines.push(c);
    }
    eprintln!("cosine per position: {cosines:?}");
    assert!(cosines[0] < 0.9, "wrong at position 0: {cosines:?}");

    // Trace position 0 on both sides: the first op whose values differ.
    let names = local.trace_names().unwrap().unwrap();
    assert_eq!(wrong.trace_names().unwrap().unwrap(), names);
    local.reset(0).unwrap();
    wrong.reset(0).unwrap();
    let a = local.eval_traced(ids[0], 0, &names).unwrap();
    let b = wrong.eval_traced(ids[0], 0, &names).unwrap();
    assert_eq!(a.iter().map(|t| &t.0).collect::<Vec<_>>(), b.iter().map(|t| &t.0).collect::<Vec<_>>());
    let first =
        a.iter().zip(&b).find(|(x, y)| bits(&x.1) != bits(&y.1)).map(|(x, y)| (&x.0, cosine(&x.1, &y.1)));
    eprintln!("first divergent op: {first:?}");
    let (op, c) = first.expect("some op differs");
    assert_eq!(op, "Qcur-0", "the first I2_S product of layer 0 (cosine {c})");
    assert!(c < 0.99, "{op}: cosine {c}");
}
