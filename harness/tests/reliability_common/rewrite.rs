//! Rewrites a GGUF file through the engine's writer with edited metadata or tensor data: for
//! models that are well-formed files but contradictory or poisoned models.

use std::path::Path;

use bitnet_engine::gguf::{GgufFile, GgufWriter, Value};

/// The committed fixture `tiny-256-gqa-i2_s.gguf`.
pub fn fixture_path() -> std::path::PathBuf {
    let spec = &bitnet_fixtures::spec::committed()[0];
    bitnet_fixtures::committed_dir().join(bitnet_fixtures::file_name(spec, bitnet_fixtures::WeightForm::I2S))
}

/// Copies `src` with `meta` applied to the metadata list and `data` to each tensor's bytes
/// (`data(name, &mut bytes)`), into `dst`.
pub fn rewrite(
    src: &Path,
    dst: &Path,
    meta: impl FnOnce(&mut Vec<(String, Value)>),
    mut data: impl FnMut(&str, &mut Vec<u8>),
) {
    let file = GgufFile::open(src).unwrap();
    let mut metadata = file.metadata().to_vec();
    meta(&mut metadata);
    let mut w = GgufWriter::new(file.version());
    for (k, v) in metadata {
        w.add_metadata(k, v).unwrap();
    }
    for t in file.tensors() {
        w.add_tensor_info(&t.name, &t.dims, t.ggml_type, t.n_bytes).unwrap();
    }
    let mut out = w.begin(Vec::new()).unwrap();
    for t in file.tensors() {
        let mut bytes = file.tensor_data(t).to_vec();
        data(&t.name, &mut bytes);
        out.write_tensor_data(&t.name, &bytes).unwrap();
    }
    std::fs::write(dst, out.finish().unwrap()).unwrap();
}

/// Sets metadata `key` to `value` (which must exist).
pub fn set(meta: &mut [(String, Value)], key: &str, value: Value) {
    let slot = meta.iter_mut().find(|(k, _)| k == key).unwrap_or_else(|| panic!("no key {key}"));
    slot.1 = value;
}
