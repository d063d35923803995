//! Q8_0 and Q6_K heads against the reference's own logits, bit for bit, under each
//! reference-build profile and with every float kernel this CPU runs.
//!
//! `fixtures/golden/models/q8_0-head.gguf` (n_embd 384, default I2_S quantization: the tied
//! token_embd is written as Q8_0) and `q6_k-head.gguf` (n_embd 512, token_embd quantized to
//! Q6_K) were made by bitnet.cpp's `llama_model_quantize` (one thread);
//! `<model>.{avx2,avx512}.logits.f32` are the reference's logits of every position when the
//! manifest's token ids are fed one at a time from position 0 (n_ctx 512), from the build for
//! `x86-64-v3` and from `-march=native` on an AVX-512 CPU (`n_tokens × n_vocab` f32 LE). The
//! embedding lookup goes through `dequantize_row_q8_0` / `_q6_K`, the lm_head through
//! `quantize_row_q8_0` / `_q8_K` and `ggml_vec_dot_q8_0_q8_0` / `_q6_K_q8_K`.

mod golden_common;

use bitnet_engine::gguf::GgmlType;
use bitnet_engine::model::{Model, ModelOptions};
use bitnet_engine::ops::FloatKernel;
use bitnet_engine::profile::RefProfile;
use bitnet_engine::quant::Qk256Kernel;
use golden_common::{bit_exact_positions, Golden};

/// Every kernel × profile reproduces the profile's logits at every position; the other
/// profile's logits (which differ: the F16 attention and softmax are build-dependent) do not.
fn check(name: &'static str, head: GgmlType) {
    let g = Golden::load(name);
    let file = g.file();
    for profile in RefProfile::ALL {
        let want = g.logits(profile);
        for kernel in FloatKernel::available(profile) {
            let mut m =
                Model::load(&file, ModelOptions { n_ctx: 512, profile, ..ModelOptions::default() }).unwrap();
            assert_eq!(m.head_type(), head, "{name}");
            assert_eq!(m.config().n_vocab, g.n_vocab);
            if kernel.name() == "scalar" {
                m.set_kernel(Qk256Kernel::scalar());
            }
            m.set_float_kernel(kernel);
            let exact = bit_exact_positions(&mut m, &g.ids, &want);
            eprintln!(
                "{name}: profile {profile}, {} kernel: {exact}/{} positions bit-exact",
                kernel.name(),
                g.ids.len()
            );
            assert_eq!(exact, g.ids.len(), "{name}: profile {profile}, {} kernel", kernel.name());
        }
        // Rows split over threads: the same bits.
        let mut m =
            Model::load(&file, ModelOptions { n_ctx: 512, profile, threads: 3, ..ModelOptions::default() })
                .unwrap();
        assert_eq!(bit_exact_positions(&mut m, &g.ids, &want), g.ids.len(), "{name}: {profile}, 3 threads");
        // The other profile matches this build only where the two builds agree (and they do
        // not agree everywhere): the comparison can fail.
        let other = RefProfile::ALL.into_iter().find(|&p| p != profile).unwrap();
        let theirs = g.logits(other);
        let same = want
            .iter()
            .zip(&theirs)
            .filter(|(a, b)| a.iter().zip(b.iter()).all(|(x, y)| x.to_bits() == y.to_bits()))
            .count();
        assert!(same < g.ids.len(), "{name}: the two builds' logits are identical");
        let mut m =
            Model::load(&file, ModelOptions { n_ctx: 512, profile: other, ..ModelOptions::default() })
                .unwrap();
        let exact = bit_exact_positions(&mut m, &g.ids, &want);
        eprintln!("{name}: profile {other} against the {profile} build: {exact} positions (the builds agree at {same})");
        assert_eq!(exact, same, "{name}: profile {other} against the {profile} build");
    }
}

#[test]
fn q8_0_head_reproduces_both_builds() {
    check("q8_0-head", GgmlType::Q8_0);
}

#[test]
fn q6_k_head_reproduces_both_builds() {
    check("q6_k-head", GgmlType::Q6_K);
}

/// A batch gives the logits of its last token bit for bit as one-at-a-time evaluation does
/// (the lm_head of a block type included).
#[test]
fn batches_end_in_the_same_logits() {
    for name in ["q8_0-head", "q6_k-head"] {
        let g = Golden::load(name);
        let file = g.file();
        let want = g.logits(RefProfile::Avx2);
        let mut m = Model::load(
            &file,
            ModelOptions { n_ctx: 512, profile: RefProfile::Avx2, ..ModelOptions::default() },
        )
        .unwrap();
        let got = m.eval_batch(&g.ids, 0).unwrap();
        let last = want.last().unwrap();
        assert!(got.iter().zip(last).all(|(a, b)| a.to_bits() == b.to_bits()), "{name}");
    }
}
