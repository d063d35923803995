//! The Rust engine against the real bitnet.cpp, in-process, on every fixture:
//! every position of a 32+ token prompt, argmax identical and per-token cosine ≥ 0.99999
//! with the reference rounding on; the figures with it off are printed.
//!
//! When the reference was built for an AVX2+FMA CPU without AVX-512 (the lane structure the
//! engine mirrors), the logits must be bit-identical, not merely close.

use bitnet_cpp::{ContextParams, Reference};
use bitnet_engine::gguf::GgufFile;
use bitnet_engine::model::{Model, ModelOptions};
use bitnet_engine::tokenizer::Tokenizer;
use bitnet_fixtures::{spec, write_spec, WeightForm};
use harness::compare::{argmax, cosine};

const PROMPT: &str = "The quick brown fox jumps over the lazy dog, then 42 cats sat on 7 mats; \
                      naïve café owners counted 1234567 coins while the river ran north.";

struct Figures {
    cos_min: f64,
    max_abs: f32,
    argmax_agree: usize,
    n: usize,
    bit_exact: usize,
}

fn compare(path: &std::path::Path, exact: bool) -> Figures {
    let file = GgufFile::open(path).unwrap();
    let tok = Tokenizer::from_gguf(&file).unwrap();
    let ids = tok.encode(PROMPT, true, false);
    assert!(ids.len() >= 32, "prompt has only {} tokens", ids.len());
    let mut model = Model::load(
        &file,
        ModelOptions { n_ctx: 128, exact_reference_rounding: exact, ..ModelOptions::default() },
    )
    .unwrap();

    let reference = Reference::open_default().unwrap();
    let cpp_model = reference.load_model(path).unwrap();
    let cpp_ids = cpp_model.tokenize(PROMPT, true, false).unwrap();
    assert_eq!(cpp_ids.iter().map(|&t| t as u32).collect::<Vec<_>>(), ids, "tokenizers disagree");
    let mut ctx = cpp_model.new_context(ContextParams { n_ctx: 128, n_threads: 1 }).unwrap();

    let mut f = Figures { cos_min: 1.0, max_abs: 0.0, argmax_agree: 0, n: ids.len(), bit_exact: 0 };
    for (pos, &t) in ids.iter().enumerate() {
        let want = ctx.eval_token(t as i32, pos as u32).unwrap();
        let got = model.eval(t, pos).unwrap();
        f.cos_min = f.cos_min.min(cosine(got, &want));
        f.max_abs = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(f.max_abs, f32::max);
        f.argmax_agree += usize::from(argmax(got) == argmax(&want));
        f.bit_exact += usize::from(got == &want[..]);
    }
    f
}

/// Whether the reference's build uses the AVX2+FMA code paths whose rounding the engine mirrors.
fn reference_is_avx2_fma() -> bool {
    let info = Reference::open_default().unwrap().build_info().clone();
    let Some(isa) = info.isa else { return false };
    let has = |m: &str| isa.macros.iter().any(|x| x == m);
    has("__AVX2__") && has("__FMA__") && has("__F16C__") && !has("__AVX512F__")
}

#[test]
fn rust_engine_matches_the_reference_on_every_fixture() {
    let expect_bit_exact = reference_is_avx2_fma();
    let dir = tempfile::tempdir().unwrap();
    for s in spec::committed() {
        for form in [WeightForm::I2S, WeightForm::F32] {
            let path = write_spec(&s, form, dir.path()).unwrap();
            for exact in [true, false] {
                let f = compare(&path, exact);
                eprintln!(
                    "{} rounding={}: cosine_min {:.9} max|Δ| {:.3e} argmax {}/{} bit-exact {}/{}",
                    path.file_name().unwrap().to_string_lossy(),
                    if exact { "on" } else { "off" },
                    f.cos_min,
                    f.max_abs,
                    f.argmax_agree,
                    f.n,
                    f.bit_exact,
                    f.n
                );
                if exact {
                    assert_eq!(f.argmax_agree, f.n, "argmax differs");
                    assert!(f.cos_min >= 0.99999, "cosine {}", f.cos_min);
                    if expect_bit_exact {
                        assert_eq!(f.bit_exact, f.n, "logits not bit-identical");
                    }
                }
            }
        }
    }
}
