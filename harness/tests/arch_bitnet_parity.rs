//! Architecture `bitnet` (`build_bitnet`: SiLU-gated FFN, `blk.N.*.scale` multipliers) against
//! the real bitnet.cpp, in-process, on every reference build this crate has: the model of
//! `fixtures/golden/models/arch-bitnet.gguf` (quantized by the reference itself), teacher-forced
//! with the manifest's token ids, bit-identical at every position with the engine mirroring
//! the profile of the build's ISA; and a layer trace in which every operation, SiLU included,
//! carries the reference's name and its bits. The generated `bitnet` fixture
//! (`spec::arch_bitnet`, grouped-query attention, I2_S by our packer and F32) too.

use std::path::PathBuf;

use bitnet_cpp::{CaptureFilter, ContextParams, Reference};
use bitnet_engine::gguf::GgufFile;
use bitnet_engine::model::{Arch, Model, ModelOptions};
use bitnet_engine::profile::RefProfile;
use bitnet_engine::tokenizer::Tokenizer;
use bitnet_fixtures::{spec, write_spec, WeightForm};
use serde_json::Value;

const N_CTX: usize = 512;
/// The position traced (any one with a few cached positions before it).
const TRACE_POS: usize = 9;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/golden/models")
}

fn manifest() -> Value {
    let text = std::fs::read_to_string(dir().join("manifest.json")).expect("manifest.json");
    serde_json::from_str(&text).expect("manifest JSON")
}

/// The model's path, its token ids and the reference's saved logits per profile name.
fn golden() -> (PathBuf, Vec<u32>, Value) {
    let m = manifest();
    let entry = m["models"]["arch-bitnet"].clone();
    let ids = entry["token_ids"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
    (dir().join(entry["gguf"].as_str().unwrap()), ids, entry)
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

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[test]
fn every_position_is_bit_exact_against_every_reference_build() {
    let (path, ids, entry) = golden();
    let file = GgufFile::open(&path).unwrap();
    for (march, reference, profile) in builds() {
        let mut model =
            Model::load(&file, ModelOptions { n_ctx: N_CTX, profile, ..ModelOptions::default() }).unwrap();
        assert_eq!(model.config().arch, Arch::Bitnet);
        let cpp = reference.load_model(&path).unwrap();
        let mut ctx = cpp
            .new_context(ContextParams {
                n_ctx: N_CTX as u32,
                n_threads: 1,
                n_ubatch: bitnet_cpp::DEFAULT_N_UBATCH,
            })
            .unwrap();
        // The saved logits of this profile (made on another day, maybe another machine).
        let saved = std::fs::read(dir().join(entry["logits"][profile.name()].as_str().unwrap())).unwrap();
        let saved: Vec<f32> =
            saved.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        let n_vocab = model.config().n_vocab;
        let (mut exact, mut saved_exact) = (0, 0);
        for (pos, &t) in ids.iter().enumerate() {
            let want = ctx.eval_token(t as i32, pos as u32).unwrap();
            let got = model.eval(t, pos).unwrap();
            exact += usize::from(same_bits(got, &want));
            saved_exact += usize::from(same_bits(&want, &saved[pos * n_vocab..(pos + 1) * n_vocab]));
        }
        eprintln!(
            "arch-bitnet vs {march} ({profile}): engine bit-exact {exact}/{n}; this build vs the saved \
             {profile} logits {saved_exact}/{n}",
            n = ids.len()
        );
        assert_eq!(exact, ids.len(), "{march}: logits not bit-identical");
    }
}

#[test]
fn a_trace_names_every_operation_as_the_reference_does_and_all_are_bit_exact() {
    let (path, ids, _) = golden();
    let file = GgufFile::open(&path).unwrap();
    for (march, reference, profile) in builds() {
        let mut model =
            Model::load(&file, ModelOptions { n_ctx: N_CTX, profile, ..ModelOptions::default() }).unwrap();
        let cpp = reference.load_model(&path).unwrap();
        let mut ctx = cpp
            .new_context(ContextParams {
                n_ctx: N_CTX as u32,
                n_threads: 1,
                n_ubatch: bitnet_cpp::DEFAULT_N_UBATCH,
            })
            .unwrap();
        for (pos, &t) in ids[..TRACE_POS].iter().enumerate() {
            model.eval(t, pos).unwrap();
            ctx.eval_token(t as i32, pos as u32).unwrap();
        }
        let token = ids[TRACE_POS];
        let names = harness::trace::traced_names(&model);
        let mut rust: Vec<(String, Vec<f32>)> = Vec::new();
        model
            .eval_traced(token, TRACE_POS, &mut |name, v| rust.push((name.to_string(), v.to_vec())))
            .unwrap();
        // Every node of the reference's graph, to check the names as well as the values.
        let (_, captured) =
            ctx.eval_token_capture(token as i32, TRACE_POS as u32, &CaptureFilter::All).unwrap();
        let reference: Vec<(String, Vec<f32>)> = captured.into_iter().map(|c| (c.name, c.data)).collect();

        let (ops, first, unmatched) = harness::trace::compare(&names, &rust, &reference, 0.99999);
        assert!(unmatched.is_empty(), "{march}: {unmatched:?}");
        assert_eq!(first, None, "{march}");
        assert_eq!(ops.len(), names.len());
        let not_exact: Vec<&str> = ops.iter().filter(|o| !o.bit_exact).map(|o| o.name.as_str()).collect();
        assert!(not_exact.is_empty(), "{march} ({profile}): not bit-exact: {not_exact:?}");
        for op in ["ffn_up", "ffn_up_s", "ffn_gate", "ffn_gate_s", "ffn_silu", "ffn_sub_out"] {
            assert!(ops.iter().any(|o| o.op == op), "{op} not compared");
        }
        // Every FFN tensor the reference names in a layer is one the engine reports too.
        let engine_ops: Vec<String> =
            names.iter().map(|n| n.rsplit_once('-').map_or(n.clone(), |(o, _)| o.into())).collect();
        let mut reference_ffn: Vec<&str> = reference
            .iter()
            .filter_map(|(n, _)| n.strip_suffix("-0"))
            .filter(|n| n.starts_with("ffn_"))
            .collect();
        reference_ffn.dedup();
        for n in &reference_ffn {
            assert!(
                engine_ops.iter().any(|o| o == n),
                "{march}: the reference reports {n}-0, the engine does not"
            );
        }
        eprintln!(
            "arch-bitnet trace at position {TRACE_POS} vs {march} ({profile}): {}/{} operations bit-exact; \
             reference FFN names of layer 0: {reference_ffn:?}",
            ops.iter().filter(|o| o.bit_exact).count(),
            ops.len()
        );
    }
}

#[test]
fn the_generated_bitnet_fixture_is_bit_exact_in_both_forms() {
    let dir = tempfile::tempdir().unwrap();
    let text = manifest()["text"].as_str().unwrap().to_string();
    let s = spec::arch_bitnet();
    for form in [WeightForm::I2S, WeightForm::F32] {
        let path = write_spec(&s, form, dir.path()).unwrap();
        let file = GgufFile::open(&path).unwrap();
        let ids = Tokenizer::from_gguf(&file).unwrap().encode(&text, true, false);
        for (march, reference, profile) in builds() {
            let opts = ModelOptions { n_ctx: 128, profile, ..ModelOptions::default() };
            let mut model = Model::load(&file, opts).unwrap();
            assert_eq!(model.config().arch, Arch::Bitnet);
            let cpp = reference.load_model(&path).unwrap();
            let cpp_ids: Vec<u32> =
                cpp.tokenize(&text, true, false).unwrap().iter().map(|&t| t as u32).collect();
            assert_eq!(cpp_ids, ids, "tokenizers disagree");
            let mut ctx = cpp
                .new_context(ContextParams {
                    n_ctx: 128,
                    n_threads: 1,
                    n_ubatch: bitnet_cpp::DEFAULT_N_UBATCH,
                })
                .unwrap();
            let mut exact = 0;
            for (pos, &t) in ids.iter().enumerate() {
                let want = ctx.eval_token(t as i32, pos as u32).unwrap();
                exact += usize::from(same_bits(model.eval(t, pos).unwrap(), &want));
            }
            eprintln!(
                "{} vs {march} ({profile}): bit-exact {exact}/{}",
                path.file_name().unwrap().to_string_lossy(),
                ids.len()
            );
            assert_eq!(exact, ids.len(), "{march}: {}", path.display());
        }
    }
}
