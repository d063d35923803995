//! The reference's **batched** path against its own logits, bit for bit, under each
//! reference-build profile: `fixtures/golden/batch/<model>.<isa>.b<N>u<M>.f32` are the logits
//! of every position when the manifest's 43 token ids of each model of
//! `fixtures/golden/models/` are fed to bitnet.cpp in `llama_decode` calls of `N` tokens (one
//! batch of 43, or batches of 7: 6 × 7 + 1) with `n_ubatch` = `M`, logits requested at every
//! position (copied from `../shared/golden/batch/`, see its README). These are not the decode
//! logits (only position 0 equals them): the batched path runs tinyBLAS for its float
//! products with ≥ 2 columns. [`Model::decode_batch`] must reproduce every position with every
//! float kernel this CPU runs, the scalar oracle included, so that a machine without AVX-512
//! still proves the AVX-512 build's batched numerics.

mod golden_common;

use std::path::PathBuf;

use bitnet_engine::model::{Model, ModelOptions};
use bitnet_engine::ops::FloatKernel;
use bitnet_engine::profile::RefProfile;
use bitnet_engine::quant::Qk256Kernel;
use golden_common::Golden;

const MODELS: [&str; 3] = ["q8_0-head", "q6_k-head", "arch-bitnet"];

/// (batch, ubatch) of the golden files.
const SPLITS: [(usize, usize); 3] = [(43, 43), (43, 16), (7, 7)];

fn batch_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/golden/batch")
}

/// The reference's batched logits of `model` under `profile`, fed in batches of `b` with
/// `n_ubatch` `u`: `n_tokens × n_vocab`.
fn golden(g: &Golden, model: &str, profile: RefProfile, (b, u): (usize, usize)) -> Vec<f32> {
    let name = format!("{model}.{}.b{b}u{u}.f32", profile.name());
    let bytes = std::fs::read(batch_dir().join(&name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(bytes.len(), g.ids.len() * g.n_vocab * 4, "{name}: n_tokens × n_vocab f32");
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect()
}

/// Feeds `ids` in `decode_batch` calls of `b` tokens with `n_ubatch` `u`; the logits of every
/// position, row after row.
fn run_batched(model: &mut Model<'_>, ids: &[u32], (b, u): (usize, usize)) -> Vec<f32> {
    let mut all = Vec::new();
    for (i, batch) in ids.chunks(b).enumerate() {
        all.extend_from_slice(model.decode_batch(batch, i * b, u).unwrap());
    }
    all
}

/// Positions whose `n_vocab` logits are bit-equal.
fn exact_positions(got: &[f32], want: &[f32], n_vocab: usize) -> Vec<bool> {
    assert_eq!(got.len(), want.len());
    got.chunks_exact(n_vocab)
        .zip(want.chunks_exact(n_vocab))
        .map(|(a, b)| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()))
        .collect()
}

fn options(profile: RefProfile, threads: usize) -> ModelOptions {
    ModelOptions { n_ctx: 512, profile, ..ModelOptions::default() }.with_threads(threads)
}

#[test]
fn every_position_of_every_split_matches_the_reference_under_each_profile_and_kernel() {
    let mut failures = Vec::new();
    for name in MODELS {
        let g = Golden::load(name);
        let file = g.file();
        for profile in RefProfile::ALL {
            for kernel in FloatKernel::available(profile) {
                let mut model = Model::load(&file, options(profile, 1)).unwrap();
                if kernel.name() == "scalar" {
                    model.set_kernel(Qk256Kernel::scalar());
                }
                model.set_float_kernel(kernel);
                for split in SPLITS {
                    model.reset();
                    let want = golden(&g, name, profile, split);
                    let got = run_batched(&mut model, &g.ids, split);
                    let exact = exact_positions(&got, &want, g.n_vocab);
                    let n_exact = exact.iter().filter(|&&e| e).count();
                    let (b, u) = split;
                    eprintln!(
                        "{name} {profile} b{b}u{u} kernel {}: bit-exact {n_exact}/{}",
                        kernel.name(),
                        g.ids.len()
                    );
                    if n_exact != g.ids.len() {
                        let first = exact.iter().position(|&e| !e);
                        failures.push(format!(
                            "{name} {profile} b{b}u{u} {}: first differing position {first:?}",
                            kernel.name()
                        ));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn the_batched_logits_are_not_the_decode_logits() {
    // Without the mirror (the decode path) only position 0 would match: the test above is
    // not vacuous. A batch of 43 in one ubatch, decode one token at a time.
    for name in MODELS {
        let g = Golden::load(name);
        let file = g.file();
        for profile in RefProfile::ALL {
            let want = golden(&g, name, profile, (43, 43));
            let mut model = Model::load(&file, options(profile, 1)).unwrap();
            let mut decoded = Vec::new();
            for (pos, &t) in g.ids.iter().enumerate() {
                decoded.extend_from_slice(model.eval(t, pos).unwrap());
            }
            let exact = exact_positions(&decoded, &want, g.n_vocab);
            let n_exact = exact.iter().filter(|&&e| e).count();
            eprintln!(
                "{name} {profile}: decode equals the batched logits at {n_exact}/43 positions ({}position 0)",
                if exact[0] { "" } else { "not " }
            );
            assert!(n_exact < 5, "{name} {profile}: decode matches {n_exact}/43 batched positions");
        }
    }
}

#[test]
fn threads_do_not_change_the_batched_bits() {
    let name = "arch-bitnet";
    let g = Golden::load(name);
    let file = g.file();
    for profile in RefProfile::ALL {
        let want = golden(&g, name, profile, (43, 16));
        let mut model = Model::load(&file, options(profile, 3)).unwrap();
        let got = run_batched(&mut model, &g.ids, (43, 16));
        assert!(exact_positions(&got, &want, g.n_vocab).iter().all(|&e| e), "{profile}, 3 threads");
    }
}

#[test]
fn a_batch_leaves_the_cache_decode_continues_from() {
    // After a batch of 42, the 43rd token evaluated alone is a ubatch of one token: the
    // reference computes it as decode does, over the cache the batch wrote (b7u7's last
    // position is exactly that).
    let name = "q6_k-head";
    let g = Golden::load(name);
    let file = g.file();
    for profile in RefProfile::ALL {
        let want = golden(&g, name, profile, (7, 7));
        let nv = g.n_vocab;
        let mut model = Model::load(&file, options(profile, 1)).unwrap();
        model.decode_batch(&g.ids[..42], 0, 7).unwrap();
        let last = model.eval(g.ids[42], 42).unwrap();
        assert!(last.iter().zip(&want[42 * nv..]).all(|(a, b)| a.to_bits() == b.to_bits()), "{profile}");
    }
}

#[test]
fn a_one_token_batch_is_decode() {
    let name = "arch-bitnet";
    let g = Golden::load(name);
    let file = g.file();
    let profile = RefProfile::Avx2;
    let mut a = Model::load(&file, options(profile, 1)).unwrap();
    let mut b = Model::load(&file, options(profile, 1)).unwrap();
    for (pos, &t) in g.ids.iter().take(5).enumerate() {
        let x = a.decode_batch(&[t], pos, 512).unwrap().to_vec();
        let y = b.eval(t, pos).unwrap();
        assert!(x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()), "position {pos}");
    }
}

#[test]
fn bad_batches_are_refused() {
    let g = Golden::load("q8_0-head");
    let file = g.file();
    let mut model = Model::load(&file, options(RefProfile::Avx2, 1)).unwrap();
    assert!(model.decode_batch(&[], 0, 4).is_err());
    assert!(model.decode_batch(&[g.n_vocab as u32], 0, 4).is_err());
    assert!(model.decode_batch(&g.ids[..3], 5, 4).is_err(), "a gap before the batch");
    let too_long = vec![g.ids[0]; 513];
    assert!(model.decode_batch(&too_long, 0, 512).is_err());
}
