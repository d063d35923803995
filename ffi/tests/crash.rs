//! Crash isolation: the reference dying in its worker process becomes an error value in the
//! parent, which keeps every result it obtained before.

mod common;

use std::process::Command;

use bitnet_cpp::worker::WorkerError;
use bitnet_cpp::ContextParams;
use common::{write_f32_model, Spec};

const PROMPT: &str = "the cat sat on the mat in the sun";
const PARAMS: ContextParams =
    ContextParams { n_ctx: 64, n_threads: 1, n_ubatch: bitnet_cpp::DEFAULT_N_UBATCH };

/// Evaluate token by token until the first error; return the logits obtained and the error.
fn run(
    w: &mut bitnet_cpp::worker::RefWorker,
    tokens: &[i32],
    kill_at: Option<usize>,
) -> (Vec<Vec<f32>>, Option<WorkerError>) {
    let mut got = Vec::new();
    for (pos, &t) in tokens.iter().enumerate() {
        if Some(pos) == kill_at {
            // What a GGML_ASSERT does: abort(), i.e. SIGABRT.
            let status = Command::new("kill").args(["-ABRT", &w.pid().to_string()]).status().unwrap();
            assert!(status.success());
        }
        match w.eval_token(t, pos as u32) {
            Ok(logits) => got.push(logits),
            Err(e) => return (got, Some(e)),
        }
    }
    (got, None)
}

#[test]
fn a_worker_killed_mid_run_is_reported_and_earlier_results_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_f32_model(dir.path(), "small-f32", &Spec::small());

    let mut clean = common::worker();
    clean.load_model(&path, PARAMS).unwrap();
    let tokens = clean.tokenize(PROMPT, true, false).unwrap();
    let (expected, none) = run(&mut clean, &tokens, None);
    assert!(none.is_none());

    let mut w = common::worker();
    w.load_model(&path, PARAMS).unwrap();
    let (got, err) = run(&mut w, &tokens, Some(4));
    let err = err.expect("the killed worker must fail");
    assert_eq!(got.len(), 4, "results before the crash are kept");
    assert_eq!(got, expected[..4].to_vec());
    assert_eq!(err.signal(), Some(6), "{err}");
    assert!(err.is_fatal());
    let msg = err.to_string();
    assert!(
        msg.starts_with("reference crashed (signal 6, SIGABRT) during eval of token")
            && msg.contains("at position 4"),
        "{msg}"
    );
    eprintln!("reported: {msg}");

    // Later calls say the worker is gone, with the original cause.
    let again = w.eval_token(tokens[5], 5).unwrap_err();
    assert!(matches!(again, WorkerError::Gone(_)), "{again}");
    assert_eq!(again.signal(), Some(6));
}

#[test]
fn a_model_that_makes_the_reference_abort_is_reported_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_f32_model(dir.path(), "good", &Spec::small());
    // value_length (32) != key length (64): llama.cpp loads the file, then its graph builder
    // hits GGML_ASSERT(n_embd_head == hparams.n_embd_head_k) and aborts.
    let bad_spec = Spec { value_length: Some(Spec::small().head_dim() / 2), ..Spec::small() };
    let bad = write_f32_model(dir.path(), "bad-value-length", &bad_spec);

    let mut w = common::worker();
    w.load_model(&good, PARAMS).unwrap();
    let tokens = w.tokenize(PROMPT, true, false).unwrap();
    let n_vocab = w.vocab_size().unwrap();
    let (before, none) = run(&mut w, &tokens[..3], None);
    assert!(none.is_none());
    assert_eq!(before.len(), 3);

    let err = w.load_model(&bad, PARAMS).unwrap_err();
    assert_eq!(err.signal(), Some(6), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("reference crashed (signal 6, SIGABRT) during loading")
            && msg.contains("bad-value-length.gguf"),
        "{msg}"
    );
    eprintln!("reported: {msg}");
    // The parent is fine and still holds what it computed.
    assert!(before.iter().all(|l| l.len() == n_vocab && l.iter().all(|x| x.is_finite())));
}

/// A started batch's answer is read on a thread of its own (`RefWorker::start_eval_batch`):
/// a worker that dies, or a cancel raised, while that thread waits is still reported as in a
/// plain wait, and a batch read that way gives the logits a plain batch gives.
#[test]
fn a_started_batch_reports_a_crash_or_a_cancel_and_otherwise_its_logits() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let path = write_f32_model(dir.path(), "small-f32", &Spec::small());
    let mut w = common::worker();
    w.load_model(&path, PARAMS).unwrap();
    let tokens = w.tokenize(PROMPT, true, false).unwrap();
    let plain = w.eval_batch(&tokens, 0).unwrap();
    w.reset().unwrap();
    let pending = w.start_eval_batch(&tokens, 0).unwrap();
    assert_eq!(w.finish_eval(pending).unwrap(), plain);
    // Requests after a batch read aside still work (the pipe came back).
    w.reset().unwrap();
    assert_eq!(w.eval_batch(&tokens, 0).unwrap(), plain);

    // Killed while its answer is awaited (stopped first, so that it cannot answer before).
    w.reset().unwrap();
    Command::new("kill").args(["-STOP", &w.pid().to_string()]).status().unwrap();
    let pending = w.start_eval_batch(&tokens, 0).unwrap();
    Command::new("kill").args(["-KILL", &w.pid().to_string()]).status().unwrap();
    let Err(err) = w.finish_eval(pending) else { panic!("a killed worker answered") };
    assert_eq!(err.signal(), Some(9), "{err}");
    assert!(err.to_string().contains("eval of a batch"), "{err}");
    assert!(matches!(w.reset(), Err(WorkerError::Gone(_))));

    // Stopped (SIGSTOP) so it never answers, then cancelled: the wait ends, the worker is killed.
    let mut w = common::worker();
    w.load_model(&path, PARAMS).unwrap();
    let cancel = Arc::new(AtomicBool::new(false));
    w.set_cancel(cancel.clone());
    Command::new("kill").args(["-STOP", &w.pid().to_string()]).status().unwrap();
    let pending = w.start_eval_batch(&tokens, 0).unwrap();
    cancel.store(true, Ordering::Relaxed);
    let Err(err) = w.finish_eval(pending) else { panic!("a stopped worker answered") };
    assert!(matches!(err, WorkerError::Interrupted { .. }), "{err}");
}
