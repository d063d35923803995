//! The golden models of `fixtures/golden/models/` (see its README): bitnet.cpp's own logits of
//! small reference-quantized models, one file per reference-build profile, for the `golden_*`
//! integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use bitnet_engine::gguf::GgufFile;
use bitnet_engine::model::Model;
use bitnet_engine::profile::RefProfile;
use serde_json::Value;

pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/golden/models")
}

/// One model of the manifest: its file, token ids and the reference's logits per profile.
pub struct Golden {
    pub ids: Vec<u32>,
    pub n_vocab: usize,
    entry: Value,
}

impl Golden {
    pub fn load(name: &str) -> Golden {
        let text = std::fs::read_to_string(dir().join("manifest.json")).expect("manifest.json");
        let v: Value = serde_json::from_str(&text).expect("manifest JSON");
        assert_eq!(v["format"], "bitnet-parity golden logits 1");
        let entry = v["models"][name].clone();
        let ids = entry["token_ids"]
            .as_array()
            .expect("token_ids")
            .iter()
            .map(|t| t.as_u64().expect("token id") as u32)
            .collect();
        let n_vocab = entry["n_vocab"].as_u64().expect("n_vocab") as usize;
        Golden { ids, n_vocab, entry }
    }

    pub fn file(&self) -> GgufFile {
        GgufFile::open(dir().join(self.entry["gguf"].as_str().expect("gguf"))).expect("the model opens")
    }

    /// The reference's logits under `profile`: one row of `n_vocab` per position.
    pub fn logits(&self, profile: RefProfile) -> Vec<Vec<f32>> {
        let name = self.entry["logits"][profile.name()].as_str().expect("a logits file per profile");
        let bytes = std::fs::read(dir().join(name)).expect("logits file");
        assert_eq!(bytes.len(), self.ids.len() * self.n_vocab * 4, "{name}: n_tokens × n_vocab f32");
        let all: Vec<f32> =
            bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect();
        all.chunks_exact(self.n_vocab).map(<[f32]>::to_vec).collect()
    }
}

/// Positions whose logits equal `want`'s bit for bit, teacher-forcing `ids` one at a time
/// from position 0.
pub fn bit_exact_positions(model: &mut Model<'_>, ids: &[u32], want: &[Vec<f32>]) -> usize {
    let mut exact = 0;
    for (pos, (&t, w)) in ids.iter().zip(want).enumerate() {
        let got = model.eval(t, pos).unwrap();
        exact +=
            usize::from(got.len() == w.len() && got.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits()));
    }
    exact
}
