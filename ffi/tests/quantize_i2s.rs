//! Quantizing through the reference (`llama_model_quantize`, I2_S) against our own I2_S
//! writer, byte for byte, and dequantizing through ggml's type traits against the F32 source.

mod common;

use std::path::Path;

use bitnet_cpp::{ContextParams, QuantizeOptions, Reference};
use bitnet_engine::gguf::{GgmlType, GgufFile};
use bitnet_engine::quant::quantize_i2s_x86;
use common::{write_f32_model, Spec};

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// The codes and the scale: everything of an I2_S tensor but the 28 padding bytes after the
/// scale, which the reference does not initialise (they hold whatever its buffer held).
fn significant(bytes: &[u8], n: usize) -> &[u8] {
    &bytes[..n / 4 + 4]
}

fn quantize(src: &Path, out: &Path, threads: u32) {
    let mut w = common::worker();
    w.quantize(src, out, QuantizeOptions { threads, ..QuantizeOptions::default() }).unwrap();
    assert!(w.shutdown().unwrap().success());
}

#[test]
fn reference_i2s_bytes_equal_ours_and_dequantize_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec::small();
    let src_path = write_f32_model(dir.path(), "small-f32", &spec);
    let out_path = dir.path().join("small-i2s.gguf");
    quantize(&src_path, &out_path, 1);

    let src = GgufFile::open(&src_path).unwrap();
    let out = GgufFile::open(&out_path).unwrap();
    let reference = Reference::open_built().unwrap();
    let ggml = reference.open_gguf_tensors(&out_path).unwrap();
    assert_eq!(ggml.entries().len(), out.tensors().len());

    let mut n_i2s = 0;
    for t in out.tensors() {
        let s = src.tensor(&t.name).unwrap_or_else(|| panic!("{} not in the source", t.name));
        assert_eq!(t.dims, s.dims, "{}", t.name);
        let source = f32s(src.tensor_data(s));
        match t.ggml_type {
            GgmlType::I2_S => {
                n_i2s += 1;
                let n = source.len();
                let theirs = out.tensor_data(t);
                let ours = quantize_i2s_x86(&source).unwrap();
                assert_eq!(theirs.len(), ours.len(), "{}", t.name);
                assert!(significant(theirs, n) == significant(&ours, n), "{}: I2_S bytes differ", t.name);
                // ggml's dequantizer gives back the source exactly: every weight is a code in
                // {-1, 0, 1} times the tensor's scale.
                let back = ggml.dequantize(&t.name).unwrap();
                assert_eq!(back, source, "{}: dequantized values differ", t.name);
                assert_eq!(ggml.raw_bytes(&t.name).unwrap(), theirs, "{}", t.name);
            }
            GgmlType::F32 => {
                assert_eq!(t.dims.len(), 1, "{} is a matrix left in F32", t.name);
                assert_eq!(ggml.dequantize(&t.name).unwrap(), source, "{}", t.name);
            }
            GgmlType::F16 => {
                // The tied embedding/lm_head is kept F16 by the quantizer.
                assert_eq!(t.name, "token_embd.weight");
                let back = ggml.dequantize(&t.name).unwrap();
                let rounded: Vec<f32> = source.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect();
                assert_eq!(back, rounded, "{}", t.name);
            }
            other => panic!("{}: unexpected type {other:?}", t.name),
        }
    }
    assert_eq!(n_i2s, 7 * spec.n_layer, "every linear weight becomes I2_S");

    // The worker's dequantization is the same call.
    let mut w = common::worker();
    let (entry, values) = w.dequantize(&out_path, "blk.0.attn_q.weight").unwrap();
    assert_eq!(entry.type_name, "i2_s");
    assert_eq!(entry.n_bytes, (spec.n_embd * spec.n_embd / 4 + 32) as u64);
    assert_eq!(values, ggml.dequantize("blk.0.attn_q.weight").unwrap());
    assert_eq!(w.list_tensors(&out_path).unwrap(), ggml.entries());

    // And the quantized model runs.
    w.load_model(
        &out_path,
        ContextParams { n_ctx: 32, n_threads: 2, n_ubatch: bitnet_cpp::DEFAULT_N_UBATCH },
    )
    .unwrap();
    let tokens = w.tokenize("the sun", true, false).unwrap();
    for (pos, &t) in tokens.iter().enumerate() {
        let logits = w.eval_token(t, pos as u32).unwrap();
        assert!(logits.iter().all(|x| x.is_finite()));
    }
}

#[test]
fn more_than_one_quantizer_thread_corrupts_i2s_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec::small();
    let src_path = write_f32_model(dir.path(), "small-f32", &spec);
    let out_path = dir.path().join("small-i2s-mt.gguf");
    quantize(&src_path, &out_path, 2);

    let src = GgufFile::open(&src_path).unwrap();
    let out = GgufFile::open(&out_path).unwrap();
    let reference = Reference::open_built().unwrap();
    let ggml = reference.open_gguf_tensors(&out_path).unwrap();
    let mut corrupted = Vec::new();
    for t in out.tensors().iter().filter(|t| t.ggml_type == GgmlType::I2_S) {
        let source = f32s(src.tensor_data(src.tensor(&t.name).unwrap()));
        if ggml.dequantize(&t.name).unwrap() != source {
            corrupted.push(t.name.clone());
        }
    }
    // Tensors larger than one quantizer chunk (16384 weights) are split across threads.
    assert!(corrupted.contains(&"blk.0.ffn_gate.weight".to_string()), "{corrupted:?}");
}
