//! Tensor-level parity: every I2_S tensor decodes, in the Rust engine, to exactly what the
//! reference's own `dequantize_row_i2_s` (ggml's type traits, through `ffi`) gives — for the
//! committed fixtures (bytes from our packer) and for the F32 fixtures quantized by the
//! reference's own quantizer (bytes from the C++ code).

use std::path::Path;

use bitnet_cpp::Reference;
use bitnet_engine::gguf::{GgmlType, GgufFile};
use bitnet_engine::internals::quant::TernaryMatrix;
use bitnet_engine::quant::detect_flavor;
use bitnet_fixtures::{ensure, spec, WeightForm};

/// Compares every I2_S tensor of `path`; returns how many were compared.
fn compare_file(reference: &Reference, path: &Path) -> usize {
    let file = GgufFile::open(path).unwrap();
    let tensors = reference.open_gguf_tensors(path).unwrap();
    let mut compared = 0;
    for t in file.tensors().iter().filter(|t| t.ggml_type == GgmlType::I2_S) {
        let data = file.tensor_data(t);
        let flavor = detect_flavor(&t.name, &t.dims, data, false).unwrap().flavor;
        let (cols, rows) = (t.dims[0] as usize, t.n_rows() as usize);
        let ours = TernaryMatrix::new(&t.name, flavor, data, rows, cols, None).unwrap().dequantize();
        let theirs = tensors.dequantize(&t.name).unwrap();
        assert_eq!(ours.len(), theirs.len(), "{}: {}", path.display(), t.name);
        let differ = ours.iter().zip(&theirs).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        assert_eq!(
            differ,
            0,
            "{}: {}: {differ} elements differ from ggml's dequantization",
            path.display(),
            t.name
        );
        compared += 1;
    }
    compared
}

#[test]
fn every_i2s_tensor_decodes_like_the_reference() {
    let reference = Reference::open_default().unwrap();
    let dir = tempfile::tempdir().unwrap();
    for s in spec::committed() {
        // Our packer's bytes.
        let n = compare_file(&reference, &ensure(&s, WeightForm::I2S));
        assert_eq!(n as u64, 7 * s.n_layer, "{}", s.name);
        // The reference quantizer's bytes (one thread: more corrupts I2_S, see REFERENCE.md).
        let quantized = dir.path().join(format!("{}-cpp-quantized.gguf", s.name));
        reference.quantize_i2s(&ensure(&s, WeightForm::F32), &quantized).unwrap();
        let n = compare_file(&reference, &quantized);
        assert_eq!(n as u64, 7 * s.n_layer, "{}", s.name);
    }
}
