//! The Rust engine against the real bitnet.cpp, in-process, on every fixture and every
//! reference build this crate has (`x86-64-v3`, and `native`, an AVX-512 build on an AVX-512
//! host): every position of a 32+ token prompt bit-identical with the reference rounding on,
//! the engine mirroring the profile of the build's ISA; the figures with it off are printed.

use bitnet_cpp::{ContextParams, Reference};
use bitnet_engine::gguf::GgufFile;
use bitnet_engine::model::{Model, ModelOptions};
use bitnet_engine::profile::RefProfile;
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

fn compare(reference: &Reference, path: &std::path::Path, exact: bool, profile: RefProfile) -> Figures {
    let file = GgufFile::open(path).unwrap();
    let tok = Tokenizer::from_gguf(&file).unwrap();
    let ids = tok.encode(PROMPT, true, false);
    assert!(ids.len() >= 32, "prompt has only {} tokens", ids.len());
    let mut model = Model::load(
        &file,
        ModelOptions { n_ctx: 128, exact_reference_rounding: exact, profile, ..ModelOptions::default() },
    )
    .unwrap();

    let cpp_model = reference.load_model(path).unwrap();
    let cpp_ids = cpp_model.tokenize(PROMPT, true, false).unwrap();
    assert_eq!(cpp_ids.iter().map(|&t| t as u32).collect::<Vec<_>>(), ids, "tokenizers disagree");
    let mut ctx = cpp_model
        .new_context(ContextParams { n_ctx: 128, n_threads: 1, n_ubatch: bitnet_cpp::DEFAULT_N_UBATCH })
        .unwrap();

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

#[test]
fn rust_engine_matches_the_reference_on_every_fixture() {
    let dir = tempfile::tempdir().unwrap();
    for build in bitnet_cpp::built_references().unwrap() {
        let Some(march) = build.march.as_deref() else { continue };
        let reference = Reference::open_build(march).unwrap();
        let isa = &reference.build_info().isa.as_ref().expect("a build we compiled knows its ISA").macros;
        let profile = RefProfile::from_isa_macros(isa).expect("every x86 build here has a profile");
        for s in spec::committed() {
            for form in [WeightForm::I2S, WeightForm::F32] {
                let path = write_spec(&s, form, dir.path()).unwrap();
                for exact in [true, false] {
                    let f = compare(&reference, &path, exact, profile);
                    eprintln!(
                        "{} vs {march} ({profile}) rounding={}: cosine_min {:.9} max|Δ| {:.3e} argmax {}/{} bit-exact {}/{}",
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
                        assert_eq!(f.bit_exact, f.n, "{march}: logits not bit-identical");
                    }
                }
            }
        }
    }
}
