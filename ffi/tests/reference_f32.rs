//! The reference on an F32 model: logits against an independent float64 forward pass written
//! here, token by token and batched, tokenizer round trip, captures, and the worker's pipe.

mod common;

use bitnet_cpp::{CaptureFilter, ContextParams, Reference};
use bitnet_engine::gguf::GgufFile;
use common::{argmax, cosine, forward_f64, vocab, write_f32_model, Spec};

const PROMPT: &str = "the cat sat on the mat in the sun, then the dog ran";

#[test]
fn f32_logits_match_a_float64_forward_at_every_position() {
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec::small();
    let path = write_f32_model(dir.path(), "small-f32", &spec);
    let reference = Reference::open_built().unwrap();
    let model = reference.load_model(&path).unwrap();

    let info = model.info();
    assert_eq!(info.n_vocab as usize, vocab().tokens.len());
    assert_eq!(
        (info.n_embd as usize, info.n_layer as usize, info.n_head as usize),
        (spec.n_embd, spec.n_layer, spec.n_head)
    );
    assert_eq!(info.rope_type, 2, "bitnet-b1.58 uses NEOX RoPE");
    assert!(info.metadata.iter().any(|(k, v)| k == "general.architecture" && v == common::ARCH));

    // Tokenizer: BOS first, merges used, round trip.
    let tokens = model.tokenize(PROMPT, true, false).unwrap();
    assert_eq!(tokens[0] as u32, vocab().bos);
    let the = vocab().tokens.iter().position(|t| t == "Ġthe").unwrap() as i32;
    assert!(tokens.contains(&the), "merges not applied: {tokens:?}");
    assert!(tokens.len() < PROMPT.len(), "{tokens:?}");
    assert_eq!(model.detokenize(&tokens, true, false).unwrap(), PROMPT.as_bytes());
    assert_eq!(model.token_piece(the, false).unwrap(), b" the");

    let file = GgufFile::open(&path).unwrap();
    let want = forward_f64(&file, &spec, &tokens);

    let mut ctx = model
        .new_context(ContextParams { n_ctx: 64, n_threads: 2, n_ubatch: bitnet_cpp::DEFAULT_N_UBATCH })
        .unwrap();
    let mut sequential = Vec::new();
    let mut worst = 1.0f64;
    for (pos, &t) in tokens.iter().enumerate() {
        let logits = ctx.eval_token(t, pos as u32).unwrap();
        assert_eq!(logits.len(), info.n_vocab as usize);
        let c = cosine(&logits, &want.logits[pos]);
        worst = worst.min(c);
        assert!(c >= 0.999999, "position {pos}: cosine {c}");
        assert_eq!(argmax(&logits), argmax(&want.logits[pos]), "argmax at position {pos}");
        sequential.push(logits);
    }

    eprintln!("{} positions, worst cosine against float64: {worst:.9}", tokens.len());

    // The same prompt in one batch after a reset.
    ctx.reset();
    let batch = ctx.eval_batch(&tokens, 0).unwrap();
    assert_eq!(batch.len(), tokens.len() * ctx.n_vocab());
    for (pos, row) in batch.chunks_exact(ctx.n_vocab()).enumerate() {
        let c = cosine(row, &want.logits[pos]);
        assert!(c >= 0.999999, "batched position {pos}: cosine {c}");
        assert_eq!(argmax(row), argmax(&want.logits[pos]));
    }

    // Reset really clears: evaluating position 0 again gives the first logits bit for bit.
    ctx.reset();
    assert_eq!(ctx.eval_token(tokens[0], 0).unwrap(), sequential[0]);
}

#[test]
fn captures_named_tensors_for_one_position() {
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec::small();
    let path = write_f32_model(dir.path(), "small-f32", &spec);
    let reference = Reference::open_built().unwrap();
    let model = reference.load_model(&path).unwrap();
    let tokens = model.tokenize(PROMPT, true, false).unwrap();
    let want = forward_f64(&GgufFile::open(&path).unwrap(), &spec, &tokens);
    let mut ctx = model
        .new_context(ContextParams { n_ctx: 64, n_threads: 1, n_ubatch: bitnet_cpp::DEFAULT_N_UBATCH })
        .unwrap();

    let at = 5;
    for (pos, &t) in tokens[..at].iter().enumerate() {
        ctx.eval_token(t, pos as u32).unwrap();
    }
    let names = ["attn_norm-0", "Qcur-0", "l_out-1", "result_norm"].map(String::from).to_vec();
    let (logits, captured) =
        ctx.eval_token_capture(tokens[at], at as u32, &CaptureFilter::Names(names)).unwrap();
    let c = cosine(&logits, &want.logits[at]);
    assert!(c >= 0.999999, "logits with capture: cosine {c}");

    let named = |n: &str| captured.iter().filter(|t| t.name == n).collect::<Vec<_>>();
    // Qcur-0 is reported before and after RoPE; both are kept, in evaluation order.
    let q = named("Qcur-0");
    assert_eq!(q.len(), 2, "{:?}", captured.iter().map(|t| &t.name).collect::<Vec<_>>());
    assert_eq!(q[0].ne, [spec.n_embd as i64, 1, 1, 1]);
    assert_eq!(q[1].ne, [spec.head_dim() as i64, spec.n_head as i64, 1, 1]);
    assert_ne!(q[0].data, q[1].data, "RoPE at position {at} changes Q");

    let attn_norm = named("attn_norm-0");
    assert_eq!(attn_norm.len(), 1);
    assert_eq!(attn_norm[0].data.len(), spec.n_embd);

    let norm = named("result_norm");
    assert_eq!(norm.len(), 1);
    let c = cosine(&norm[0].data, &want.result_norm[at]);
    assert!(c >= 0.999999, "result_norm: cosine {c}");
    assert_eq!(named("l_out-1").len(), 1);

    // Without a capture the next evaluation reports nothing and still works.
    let next = ctx.eval_token(tokens[at + 1], at as u32 + 1).unwrap();
    assert!(cosine(&next, &want.logits[at + 1]) >= 0.999999);

    // Capturing everything lists the whole graph, logits last.
    let (_, all) = ctx.eval_token_capture(tokens[at + 2], at as u32 + 2, &CaptureFilter::All).unwrap();
    assert!(all.len() > 20, "{}", all.len());
    assert_eq!(all.last().unwrap().name, "result_output");
}

#[test]
fn the_worker_returns_the_same_bits_as_the_library_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec::small();
    let path = write_f32_model(dir.path(), "small-f32", &spec);
    let params = ContextParams { n_ctx: 64, n_threads: 2, n_ubatch: bitnet_cpp::DEFAULT_N_UBATCH };

    let reference = Reference::open_built().unwrap();
    let model = reference.load_model(&path).unwrap();
    let tokens = model.tokenize(PROMPT, true, false).unwrap();
    let mut ctx = model.new_context(params).unwrap();
    let local: Vec<Vec<f32>> =
        tokens.iter().enumerate().map(|(p, &t)| ctx.eval_token(t, p as u32).unwrap()).collect();

    let mut w = common::worker();
    assert_eq!(w.build_info(), reference.build_info());
    assert_eq!(w.library_path(), reference.library_path());
    let info = w.load_model(&path, params).unwrap();
    assert_eq!(info, model.info());
    assert_eq!(w.vocab_size(), Some(model.n_vocab()));
    assert_eq!(w.tokenize(PROMPT, true, false).unwrap(), tokens);
    assert_eq!(w.detokenize(&tokens, true, false).unwrap(), PROMPT.as_bytes());
    for (pos, &t) in tokens.iter().enumerate() {
        let remote = w.eval_token(t, pos as u32).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&remote), bits(&local[pos]), "position {pos}");
    }
    // A refused request leaves the worker usable.
    let err = w.eval_token(info.n_vocab as i32, tokens.len() as u32).unwrap_err();
    assert!(!err.is_fatal(), "{err}");
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
    w.reset().unwrap();
    let batch = w.eval_batch(&tokens[..3], 0).unwrap();
    assert_eq!(batch.len(), 3 * model.n_vocab());
    let (logits, captured) =
        w.eval_token_capture(tokens[3], 3, &CaptureFilter::Names(vec!["result_norm".into()])).unwrap();
    assert_eq!(logits.len(), model.n_vocab());
    assert_eq!(captured.len(), 1);
    assert_eq!(captured[0].data.len(), spec.n_embd);
    assert!(w.shutdown().unwrap().success());
}

#[test]
fn a_missing_or_broken_model_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let reference = Reference::open_built().unwrap();
    let missing = reference.load_model(&dir.path().join("nope.gguf")).unwrap_err();
    assert!(matches!(missing, bitnet_cpp::Error::ModelLoad { .. }), "{missing}");
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"GGUF but not really").unwrap();
    let err = reference.load_model(&junk).unwrap_err();
    assert!(matches!(err, bitnet_cpp::Error::ModelLoad { .. }), "{err}");
    assert!(err.to_string().contains("junk.gguf"), "{err}");
    eprintln!("{err}");
}
