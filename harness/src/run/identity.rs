//! What a receipt records about the model and the tool.

use bitnet_engine::gguf::GgufFile;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::{Scope, ScopedJoinHandle};

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
    ModelInfo { sha256: sha256_hex(file.as_bytes()), ..model_info_unhashed(file, label) }
}

/// [`model_info`] with an empty `sha256`, for a run that hashes the file meanwhile
/// ([`ModelHash`]).
pub(super) fn model_info_unhashed(file: &GgufFile, label: &str) -> ModelInfo {
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
        sha256: String::new(),
        architecture: report.architecture.clone().unwrap_or_default(),
        hyperparameters: report.hyperparameters,
        i2s_tensors,
        integrity_problems,
    }
}

/// The model file's sha256, computed on a thread of its own while the engines load and run:
/// hashing a 1.2 GB model takes ~0.6 s, which in line delayed every run by about that much
/// (the receipt needs the hash only at the end; a saved reference, before its first logit).
/// The thread runs at the lowest priority, on what the engines leave idle, and stops early
/// when the run ends without asking for the hash (a failure).
pub(super) struct ModelHash<'s> {
    bytes: &'s [u8],
    thread: Mutex<Option<ScopedJoinHandle<'s, Option<String>>>>,
    value: OnceLock<String>,
    abandon: &'s AtomicBool,
}

/// Bytes hashed between two looks at the abandon flag.
const HASH_STEP: usize = 8 << 20;

impl<'s> ModelHash<'s> {
    /// Starts hashing `bytes` in `scope`; `abandon` (false) is the thread's stop flag.
    pub fn start(scope: &'s Scope<'s, '_>, bytes: &'s [u8], abandon: &'s AtomicBool) -> ModelHash<'s> {
        let thread = scope.spawn(move || {
            super::measure::lower_priority();
            let mut hash = Sha256::new();
            for part in bytes.chunks(HASH_STEP) {
                if abandon.load(Ordering::Relaxed) {
                    return None;
                }
                hash.update(part);
            }
            Some(hex(&hash.finalize()))
        });
        ModelHash { bytes, thread: Mutex::new(Some(thread)), value: OnceLock::new(), abandon }
    }

    /// The hash, waiting for the thread if it is not done (computed here if the thread died).
    pub fn get(&self) -> &str {
        self.value.get_or_init(|| {
            let thread = self.thread.lock().map(|mut t| t.take()).unwrap_or(None);
            thread.and_then(|t| t.join().ok()).flatten().unwrap_or_else(|| sha256_hex(self.bytes))
        })
    }
}

impl Drop for ModelHash<'_> {
    fn drop(&mut self) {
        self.abandon.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_background_hash_is_the_file_hash_and_stops_when_dropped() {
        let bytes: Vec<u8> = (0..3 * HASH_STEP + 5).map(|i| (i * 31 % 251) as u8).collect();
        let abandon = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let hash = ModelHash::start(scope, &bytes, &abandon);
            assert_eq!(hash.get(), sha256_hex(&bytes));
            assert_eq!(hash.get(), sha256_hex(&bytes), "asked twice");
        });
        // Dropped unasked (a run that failed): the flag stops the thread, the scope ends.
        let abandon = AtomicBool::new(false);
        std::thread::scope(|scope| drop(ModelHash::start(scope, &bytes, &abandon)));
        assert!(abandon.load(Ordering::Relaxed));
    }
}
