//! Architecture `bitnet` (`build_bitnet`: SiLU-gated FFN, `blk.N.*.scale` multipliers) against
//! the reference's own logits, bit for bit, under each reference-build profile.
//!
//! `fixtures/golden/models/arch-bitnet.gguf` was quantized by bitnet.cpp's
//! `llama_model_quantize` (one thread); `arch-bitnet.{avx2,avx512}.logits.f32` are the
//! reference's logits of every position when the manifest's token ids are fed one at a time
//! from position 0 (n_ctx 512), from the build for `x86-64-v3` and from `-march=native` on an
//! AVX-512 CPU. Every float kernel this CPU runs (the scalar oracle included) must reproduce
//! both, so a machine without AVX-512 still proves the AVX-512 SiLU path exact.

mod golden_common;

use bitnet_engine::gguf::GgufFile;
use bitnet_engine::model::{Arch, Model, ModelOptions};
use bitnet_engine::ops::FloatKernel;
use bitnet_engine::profile::RefProfile;
use bitnet_engine::quant::Qk256Kernel;
use golden_common::{bit_exact_positions, Golden};

const MODEL: &str = "arch-bitnet";

fn options(profile: RefProfile) -> ModelOptions {
    ModelOptions { n_ctx: 512, profile, ..ModelOptions::default() }
}

#[test]
fn the_model_is_architecture_bitnet_with_scales() {
    let g = Golden::load(MODEL);
    let file = g.file();
    let model = Model::load(&file, options(RefProfile::Avx2)).unwrap();
    let c = model.config();
    assert_eq!(c.arch, Arch::Bitnet);
    assert_eq!(c.arch.name(), "bitnet");
    assert_eq!(c.arch.graph(), "build_bitnet");
    assert_eq!(c.n_vocab, g.n_vocab);
    let names = model.traced_names();
    for op in ["ffn_up_s-0", "ffn_gate_s-1", "ffn_silu-0", "ffn_sub_out-1"] {
        assert!(names.iter().any(|n| n == op), "{op} missing from {names:?}");
    }
    assert!(!names.iter().any(|n| n.starts_with("ffn_out")), "ffn_out is build_bitnet_158's name");
}

#[test]
fn every_position_matches_the_reference_logits_under_each_profile_and_kernel() {
    let g = Golden::load(MODEL);
    let file = g.file();
    for profile in RefProfile::ALL {
        let want = g.logits(profile);
        for kernel in FloatKernel::available(profile) {
            let mut model = Model::load(&file, options(profile)).unwrap();
            if kernel.name() == "scalar" {
                model.set_kernel(Qk256Kernel::scalar());
            }
            model.set_float_kernel(kernel);
            let exact = bit_exact_positions(&mut model, &g.ids, &want);
            eprintln!("{MODEL} {profile} kernel {}: bit-exact {exact}/{}", kernel.name(), g.ids.len());
            assert_eq!(exact, g.ids.len(), "{profile} with the {} kernel", kernel.name());
        }
    }
}

#[test]
fn batches_and_threads_give_the_same_bits() {
    let g = Golden::load(MODEL);
    let file = g.file();
    for profile in RefProfile::ALL {
        let want = g.logits(profile);
        let last = want.last().unwrap();
        for threads in [1, 3] {
            let mut model = Model::load(&file, options(profile).with_threads(threads)).unwrap();
            let got = model.eval_batch(&g.ids, 0).unwrap();
            assert!(
                got.iter().zip(last).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{profile}, {threads} threads: batched logits differ"
            );
            // The cache a batch leaves is the one-at-a-time cache: re-evaluate the last token.
            let n = g.ids.len() - 1;
            let again = model.eval(g.ids[n], n).unwrap();
            assert!(again.iter().zip(last).all(|(a, b)| a.to_bits() == b.to_bits()), "{profile}");
        }
    }
}

#[test]
fn the_trace_reports_exactly_the_traced_names_in_order() {
    let g = Golden::load(MODEL);
    let file = g.file();
    let mut model = Model::load(&file, options(RefProfile::host())).unwrap();
    let names = model.traced_names();
    let mut seen = Vec::new();
    for (pos, &t) in g.ids.iter().take(3).enumerate() {
        seen.clear();
        model.eval_traced(t, pos, &mut |name, v| seen.push((name.to_string(), v.len()))).unwrap();
    }
    let reported: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).filter(|n| *n != "inp_embd").collect();
    assert_eq!(reported, names);
    let c = model.config();
    for (name, len) in &seen {
        let want = match name.rsplit_once('-').map_or(name.as_str(), |(op, _)| op) {
            "ffn_up" | "ffn_up_s" | "ffn_gate" | "ffn_gate_s" | "ffn_silu" | "ffn_sub_out"
            | "ffn_sub_norm" => c.n_ff,
            "result_output" => c.n_vocab,
            _ => c.n_embd,
        };
        assert_eq!(*len, want, "{name}");
    }
}

/// The golden model rewritten in memory: `general.architecture` (and its key prefix) set to
/// `arch`, the tensors `keep` accepts, plus `extra` F32 tensors `(name, values)`.
fn rewrite(arch: &str, keep: impl Fn(&str) -> bool, extra: &[(&str, Vec<f32>)]) -> GgufFile {
    use bitnet_engine::gguf::{GgmlType, GgufWriter, Value};
    let src = Golden::load(MODEL).file();
    let mut w = GgufWriter::new(3);
    for (k, v) in src.metadata() {
        let (k, v) = match (k.strip_prefix("bitnet."), k.as_str()) {
            (Some(rest), _) => (format!("{arch}.{rest}"), v.clone()),
            (None, "general.architecture") => (k.clone(), Value::String(arch.into())),
            _ => (k.clone(), v.clone()),
        };
        w.add_metadata(k, v).unwrap();
    }
    let kept: Vec<_> = src.tensors().iter().filter(|t| keep(&t.name)).collect();
    for t in &kept {
        w.add_tensor_info(t.name.clone(), &t.dims, t.ggml_type, t.n_bytes).unwrap();
    }
    for (name, v) in extra {
        w.add_tensor_info(*name, &[v.len() as u64], GgmlType::F32, 4 * v.len() as u64).unwrap();
    }
    let mut data = w.begin(Vec::new()).unwrap();
    for t in &kept {
        data.write_tensor_data(&t.name, src.tensor_data(t)).unwrap();
    }
    for (name, v) in extra {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        data.write_tensor_data(name, &bytes).unwrap();
    }
    GgufFile::from_bytes(data.finish().unwrap(), "rewritten.gguf").unwrap()
}

#[test]
fn tensors_the_reference_does_not_load_for_an_architecture_are_refused_by_name() {
    use bitnet_engine::model::ModelError;
    let load = |f: &GgufFile| Model::load(f, options(RefProfile::Avx2)).map(|_| ()).unwrap_err();
    // `bitnet` has no attention biases (its loader never creates them).
    let f = rewrite("bitnet", |_| true, &[("blk.1.attn_k.bias", vec![0.0; 512])]);
    let e = load(&f);
    assert!(
        matches!(&e, ModelError::NotInArchitecture { tensor, arch: Arch::Bitnet } if tensor == "blk.1.attn_k.bias"),
        "{e}"
    );
    // `bitnet-b1.58` has no `.scale` multipliers.
    let f = rewrite("bitnet-b1.58", |_| true, &[]);
    let e = load(&f);
    assert!(
        matches!(&e, ModelError::NotInArchitecture { tensor, arch: Arch::BitnetB158 } if tensor.ends_with(".scale")),
        "{e}"
    );
    assert!(e.to_string().contains("wrong number of tensors"), "{e}");
    // An unknown architecture: one line naming the supported ones.
    let f = rewrite("llama", |_| true, &[]);
    let msg = load(&f).to_string();
    assert_eq!(
        msg,
        r#"architecture "llama" is not supported (the engine runs bitnet-b1.58, bitnet-25, bitnet)"#
    );
}

#[test]
fn without_scale_tensors_the_graph_has_no_multipliers_and_other_logits() {
    let g = Golden::load(MODEL);
    let f = rewrite("bitnet", |n| !n.ends_with(".scale"), &[]);
    let mut model = Model::load(&f, options(RefProfile::Avx2)).unwrap();
    let names = model.traced_names();
    assert_eq!(names.len(), 2 * 16 + 2);
    assert!(!names.iter().any(|n| n.contains("_s-")), "{names:?}");
    let want = g.logits(RefProfile::Avx2);
    assert_eq!(
        bit_exact_positions(&mut model, &g.ids[..4], &want[..4]),
        0,
        "the multipliers change every logit"
    );
    // As bitnet-b1.58 the same tensors run the relu² graph: loads, and differs again.
    let f = rewrite("bitnet-b1.58", |n| !n.ends_with(".scale"), &[]);
    let model = Model::load(&f, options(RefProfile::Avx2)).unwrap();
    assert_eq!(model.config().arch.graph(), "build_bitnet_158");
    assert!(model.traced_names().iter().any(|n| n == "ffn_out-0"));
}
