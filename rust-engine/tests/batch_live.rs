//! The batched path against the real bitnet.cpp, in process, on every reference build this
//! workspace has compiled (on an AVX-512 host: `native` is the AVX-512 profile and
//! `x86-64-v3` the AVX2 one): every fixture `fixtures/*-i2_s.gguf` and the F32 forms of the
//! generated specs (F32 matrices everywhere: every product of a ubatch, the lm_head
//! included, is then tinyBLAS's F32 kernel), a sequence of tokens fed
//! in `llama_decode` calls of 1, 7 and 32 tokens with the default `n_ubatch` (512), and in
//! calls of 80 tokens with `n_ubatch` 64 and 16, logits at every position. The engine's
//! [`Model::decode_batch`], mirroring the profile of the build's ISA macros, must give the
//! reference's logits bit for bit at every position.

use std::path::PathBuf;

use bitnet_cpp::{ContextParams, Reference, DEFAULT_N_UBATCH};
use bitnet_engine::gguf::GgufFile;
use bitnet_engine::model::{Model, ModelOptions};
use bitnet_engine::profile::RefProfile;

const N_CTX: usize = 512;
/// Tokens of each sequence.
const N_TOKENS: usize = 80;

fn fixtures() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_str().is_some_and(|s| s.ends_with("-i2_s.gguf")))
        .collect();
    v.sort();
    assert!(v.len() >= 2, "fixtures missing in {}", dir.display());
    // The F32 forms, generated once into the target directory.
    let mut specs = bitnet_fixtures::spec::committed();
    specs.push(bitnet_fixtures::spec::arch_bitnet());
    v.extend(specs.iter().map(|s| bitnet_fixtures::ensure(s, bitnet_fixtures::WeightForm::F32)));
    v
}

/// Every reference build with its profile.
fn builds() -> Vec<(String, Reference, RefProfile)> {
    let mut v = Vec::new();
    for build in bitnet_cpp::built_references().unwrap() {
        let Some(march) = build.march else { continue };
        let reference = Reference::open_build(&march).unwrap();
        let isa = &reference.build_info().isa.as_ref().expect("a build we compiled knows its ISA").macros;
        let profile = RefProfile::from_isa_macros(isa).expect("every x86 build here has a profile");
        v.push((march, reference, profile));
    }
    assert!(!v.is_empty(), "no reference build");
    v
}

/// Deterministic token ids spread over the vocabulary.
fn ids(n_vocab: usize) -> Vec<u32> {
    (0..N_TOKENS).map(|i| ((i * 7919 + 13) % n_vocab) as u32).collect()
}

/// Positions of `n_vocab` logits that are bit-equal.
fn exact(got: &[f32], want: &[f32], n_vocab: usize) -> Vec<bool> {
    assert_eq!(got.len(), want.len());
    got.chunks_exact(n_vocab)
        .zip(want.chunks_exact(n_vocab))
        .map(|(a, b)| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()))
        .collect()
}

/// (batch, n_ubatch) cases.
const CASES: [(usize, usize); 5] = [
    (1, DEFAULT_N_UBATCH as usize),
    (7, DEFAULT_N_UBATCH as usize),
    (32, DEFAULT_N_UBATCH as usize),
    (80, 64),
    (80, 16),
];

#[test]
fn every_position_of_every_batch_is_bit_exact_against_every_reference_build() {
    let mut failures = Vec::new();
    for (march, reference, profile) in builds() {
        for path in fixtures() {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let file = GgufFile::open(&path).unwrap();
            let mut model =
                Model::load(&file, ModelOptions { n_ctx: N_CTX, profile, ..ModelOptions::default() })
                    .unwrap();
            let n_vocab = model.config().n_vocab;
            let ids = ids(n_vocab);
            let cpp = reference.load_model(&path).unwrap();
            for (b, u) in CASES {
                let params = ContextParams { n_ctx: N_CTX as u32, n_threads: 1, n_ubatch: u as u32 };
                let mut ctx = cpp.new_context(params).unwrap();
                model.reset();
                let (mut want, mut got) = (Vec::new(), Vec::new());
                for (i, batch) in ids.chunks(b).enumerate() {
                    let tokens: Vec<i32> = batch.iter().map(|&t| t as i32).collect();
                    want.extend(ctx.eval_batch(&tokens, (i * b) as u32).unwrap());
                    got.extend_from_slice(model.decode_batch(batch, i * b, u).unwrap());
                }
                let e = exact(&got, &want, n_vocab);
                let n_exact = e.iter().filter(|&&x| x).count();
                eprintln!("{name} {march} ({profile}) batch {b} ubatch {u}: bit-exact {n_exact}/{N_TOKENS}");
                if n_exact != N_TOKENS {
                    let first = e.iter().position(|&x| !x);
                    failures.push(format!(
                        "{name} {march} b{b} u{u}: {n_exact}/{N_TOKENS}, first differing {first:?}"
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The 2B-shaped model (n_embd 2560, n_ff 6912, 20/5 heads of 128, an F16 head of 128,256
/// rows) at full scale: a file named by `BITNET_2B_MODEL` (e.g. the one `harness bench --shape
/// 2b` generates), 16 tokens in calls of 7 (ubatch 512) and in one call with ubatch 8, against
/// every build. Slow (the reference reads 1.2 GB per build): run by hand with `--ignored`.
#[test]
#[ignore = "needs BITNET_2B_MODEL and minutes"]
fn the_2b_shape_is_bit_exact_against_every_reference_build() {
    let path =
        PathBuf::from(std::env::var("BITNET_2B_MODEL").expect("BITNET_2B_MODEL names a 2B-shaped GGUF"));
    let file = GgufFile::open(&path).unwrap();
    let mut failures = Vec::new();
    for (march, reference, profile) in builds() {
        let mut model =
            Model::load(&file, ModelOptions { n_ctx: 64, profile, threads: 2, ..ModelOptions::default() })
                .unwrap();
        let n_vocab = model.config().n_vocab;
        let ids: Vec<u32> = ids(n_vocab).into_iter().take(16).collect();
        let cpp = reference.load_model(&path).unwrap();
        for (b, u) in [(7, DEFAULT_N_UBATCH as usize), (16, 8)] {
            let mut ctx =
                cpp.new_context(ContextParams { n_ctx: 64, n_threads: 2, n_ubatch: u as u32 }).unwrap();
            model.reset();
            let (mut want, mut got) = (Vec::new(), Vec::new());
            for (i, batch) in ids.chunks(b).enumerate() {
                let tokens: Vec<i32> = batch.iter().map(|&t| t as i32).collect();
                want.extend(ctx.eval_batch(&tokens, (i * b) as u32).unwrap());
                got.extend_from_slice(model.decode_batch(batch, i * b, u).unwrap());
            }
            let n_exact = exact(&got, &want, n_vocab).iter().filter(|&&x| x).count();
            eprintln!("2B shape {march} ({profile}) batch {b} ubatch {u}: bit-exact {n_exact}/{}", ids.len());
            if n_exact != ids.len() {
                failures.push(format!("{march} b{b} u{u}: {n_exact}/{}", ids.len()));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
