//! The fixtures (`bitnet_fixtures`: committed I2_S forms, generated F32 forms) through the
//! reference: each loads, tokenizes and evaluates token by token; the F32 form matches a
//! float64 forward pass written here; quantizing the F32 form through the reference gives the
//! committed I2_S bytes, which are also our writer's bytes; ggml dequantizes every I2_S tensor
//! to exactly the F32 source (code × scale).

mod common;

use std::path::PathBuf;
use std::sync::Mutex;

use bitnet_cpp::{ContextParams, Reference};
use bitnet_engine::gguf::{GgmlType, GgufFile};
use bitnet_engine::quant::quantize_i2s_x86;
use bitnet_fixtures::{ensure, ModelSpec, WeightForm};
use common::{argmax, cosine, forward_f64, Spec};

const PARAMS: ContextParams =
    ContextParams { n_ctx: 256, n_threads: 2, n_ubatch: bitnet_cpp::DEFAULT_N_UBATCH };

/// `ensure` writes a missing F32 form through a temporary file named by process id, so tests
/// of this binary (threads of one process) must not generate the same file at once.
static GENERATE: Mutex<()> = Mutex::new(());

fn fixture(spec: &ModelSpec, form: WeightForm) -> PathBuf {
    let _guard = GENERATE.lock().unwrap_or_else(|e| e.into_inner());
    ensure(spec, form)
}

fn specs() -> Vec<ModelSpec> {
    let v = bitnet_fixtures::spec::committed();
    assert!(!v.is_empty());
    v
}

fn prompt() -> String {
    bitnet_fixtures::prompts().into_iter().next().expect("a default prompt")
}

fn spec_of(f: &GgufFile) -> Spec {
    let arch = f.get_str("general.architecture").unwrap().to_string();
    let u = |k: &str| f.get_u32(&format!("{arch}.{k}")).unwrap() as usize;
    Spec {
        n_embd: u("embedding_length"),
        n_ff: u("feed_forward_length"),
        n_layer: u("block_count"),
        n_head: u("attention.head_count"),
        n_head_kv: u("attention.head_count_kv"),
        n_ctx: u("context_length"),
        rope_base: f.get_f32(&format!("{arch}.rope.freq_base")).unwrap(),
        eps: f.get_f32(&format!("{arch}.attention.layer_norm_rms_epsilon")).unwrap(),
        seed: 0,
        value_length: None,
    }
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

#[test]
fn every_fixture_loads_tokenizes_and_evaluates() {
    let prompt = prompt();
    for spec in specs() {
        for form in [WeightForm::I2S, WeightForm::F32] {
            let path = fixture(&spec, form);
            let mut w = common::worker();
            let info = w.load_model(&path, PARAMS).unwrap();
            let tokens = w.tokenize(&prompt, true, false).unwrap();
            assert_eq!(tokens[0], info.bos, "{}", path.display());
            assert_eq!(w.detokenize(&tokens, true, false).unwrap(), prompt.as_bytes(), "{}", path.display());
            let mut argmaxes = Vec::new();
            for (pos, &t) in tokens.iter().enumerate() {
                let logits = w.eval_token(t, pos as u32).unwrap();
                assert_eq!(logits.len(), info.n_vocab as usize);
                assert!(logits.iter().all(|x| x.is_finite()), "{} position {pos}", path.display());
                argmaxes.push(argmax(&logits));
            }
            eprintln!("{}: {} tokens, first argmaxes {:?}", path.display(), tokens.len(), &argmaxes[..6]);
        }
    }
}

#[test]
fn the_f32_fixtures_match_a_float64_forward_at_every_position() {
    let reference = Reference::open_built().unwrap();
    let prompt = prompt();
    for spec in specs() {
        let path = fixture(&spec, WeightForm::F32);
        let file = GgufFile::open(&path).unwrap();
        let model = reference.load_model(&path).unwrap();
        let tokens = model.tokenize(&prompt, true, false).unwrap();
        let want = forward_f64(&file, &spec_of(&file), &tokens);
        let mut ctx = model.new_context(PARAMS).unwrap();
        let mut worst = 1.0f64;
        for (pos, &t) in tokens.iter().enumerate() {
            let logits = ctx.eval_token(t, pos as u32).unwrap();
            let c = cosine(&logits, &want.logits[pos]);
            worst = worst.min(c);
            assert!(c >= 0.999999, "{} position {pos}: cosine {c}", path.display());
            assert_eq!(argmax(&logits), argmax(&want.logits[pos]), "{} argmax at {pos}", path.display());
        }
        eprintln!("{}: {} positions, worst cosine {worst:.9}", path.display(), tokens.len());
    }
}

#[test]
fn reference_quantization_of_each_f32_fixture_gives_the_committed_i2s_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = common::worker();
    for spec in specs() {
        let f32_path = fixture(&spec, WeightForm::F32);
        let i2s_path = fixture(&spec, WeightForm::I2S);
        let requant = dir.path().join(format!("{}-requant.gguf", spec.name));
        w.quantize(&f32_path, &requant, Default::default()).unwrap();

        let source = GgufFile::open(&f32_path).unwrap();
        let committed = GgufFile::open(&i2s_path).unwrap();
        let theirs = GgufFile::open(&requant).unwrap();
        let mut n = 0;
        for t in committed.tensors().iter().filter(|t| t.ggml_type == GgmlType::I2_S) {
            let count = t.n_elements() as usize;
            let src = f32s(source.tensor_data(source.tensor(&t.name).unwrap()));
            let mine = committed.tensor_data(t);
            let th = theirs.tensor(&t.name).unwrap();
            assert_eq!(th.ggml_type, GgmlType::I2_S, "{}", t.name);
            let ours = quantize_i2s_x86(&src).unwrap();
            // Codes and scale; the 28 bytes after the scale are padding that the reference
            // leaves uninitialised.
            let sig = count / 4 + 4;
            assert!(
                theirs.tensor_data(th)[..sig] == mine[..sig],
                "{}: {} quantized differently",
                spec.name,
                t.name
            );
            assert!(ours[..sig] == mine[..sig], "{}: {} differs from our writer", spec.name, t.name);
            // Through ggml's to_float: exactly the F32 source.
            let (_, back) = w.dequantize(&i2s_path, &t.name).unwrap();
            assert_eq!(back, src, "{}: {} dequantized", spec.name, t.name);
            n += 1;
        }
        assert_eq!(n, 7 * spec.n_layer as usize);
        eprintln!("{}: {n} I2_S tensors identical", spec.name);
    }
}
