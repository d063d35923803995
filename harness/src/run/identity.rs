//! What a receipt records about the model and the tool.

use bitnet_engine::gguf::GgufFile;
use sha2::{Digest, Sha256};

use crate::inspect;
use crate::receipt::{I2sTensor, IntegrityProblem, ModelInfo, ToolInfo};

pub fn tool_info() -> ToolInfo {
    ToolInfo {
        name: "bitnet-parity".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        git_commit: option_env!("BITNET_PARITY_GIT_COMMIT").filter(|s| !s.is_empty()).map(str::to_string),
        git_dirty: option_env!("BITNET_PARITY_GIT_DIRTY").and_then(|s| s.parse().ok()),
    }
}

/// sha256 of bytes, as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Bytes (a digest) as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The model's identity: path as given, size, sha256, hyper-parameters, the flavour of every
/// I2_S tensor and any integrity problems of their bytes.
pub fn model_info(file: &GgufFile, label: &str) -> ModelInfo {
    let report = inspect::describe(file);
    let mut i2s_tensors = Vec::new();
    let mut integrity_problems = Vec::new();
    for (t, r) in file.tensors().iter().zip(&report.tensors) {
        let Some(i2s) = &r.i2s else { continue };
        i2s_tensors.push(I2sTensor {
            name: t.name.clone(),
            flavor: i2s.flavor.clone().unwrap_or_else(|| "none".into()),
            forced: i2s.forced,
            candidates: i2s.candidates.clone(),
        });
        // The same findings `inspect` prints (codes, scale, extra bytes after the tensor).
        for problem in &i2s.problems {
            integrity_problems.push(IntegrityProblem { tensor: t.name.clone(), problem: problem.clone() });
        }
    }
    ModelInfo {
        path: label.to_string(),
        size_bytes: file.file_len(),
        sha256: sha256_hex(file.as_bytes()),
        architecture: report.architecture.clone().unwrap_or_default(),
        hyperparameters: report.hyperparameters,
        i2s_tensors,
        integrity_problems,
    }
}
