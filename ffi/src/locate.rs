//! Finding a bitnet.cpp tree or a prebuilt reference library in a folder, and checking that its
//! headers are the ones our committed bindings were generated from.
//!
//! This file is shared, as a module, by `build.rs` (choosing what to build) and by the library
//! (loading a user's `BITNET_CPP_DIR` at run time), so both take the same decisions. It uses std
//! and `sha2` only, and reports problems as one-line strings that the callers wrap.

use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

include!("sys/pinned_headers.rs");

/// File name of the shared library that our build script produces.
pub const OUR_LIBRARY_NAME: &str = "libbitnet_cpp_ref.so";

/// Where a prebuilt library may sit inside `BITNET_CPP_DIR`, most specific first: our own
/// single library, the folder itself, a flat `lib/`, and Microsoft BitNet's cmake `build/` layout.
const LIBRARY_CANDIDATES: &[&str] = &[
    OUR_LIBRARY_NAME,
    "libllama.so",
    "lib/libllama.so",
    "build/3rdparty/llama.cpp/src/libllama.so",
    "build/lib/libllama.so",
];

/// Folders, relative to `BITNET_CPP_DIR`, where the bound headers are looked for: a source
/// checkout keeps them under `3rdparty/llama.cpp`, an installed library under `include/`.
const HEADER_DIRS: &[&str] = &["3rdparty/llama.cpp/include", "3rdparty/llama.cpp/ggml/include", "include"];

/// Files whose presence marks a Microsoft BitNet source checkout (with its llama.cpp submodule).
const CHECKOUT_MARKERS: &[&str] =
    &["3rdparty/llama.cpp/include/llama.h", "3rdparty/llama.cpp/ggml/src/ggml.c", "src/ggml-bitnet-mad.cpp"];

/// What a `BITNET_CPP_DIR` folder holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirKind {
    /// A prebuilt shared library (path to it).
    Prebuilt(PathBuf),
    /// A source checkout to compile.
    Checkout,
}

/// Classify a user-given folder, or explain in one line why it is neither kind.
pub fn classify_dir(dir: &Path) -> Result<DirKind, String> {
    if !dir.is_dir() {
        return Err(format!("BITNET_CPP_DIR={} is not a folder", dir.display()));
    }
    if let Some(lib) = find_prebuilt(dir) {
        return Ok(DirKind::Prebuilt(lib));
    }
    if CHECKOUT_MARKERS.iter().all(|m| dir.join(m).is_file()) {
        return Ok(DirKind::Checkout);
    }
    Err(format!(
        "BITNET_CPP_DIR={} is neither a bitnet.cpp checkout (needs {}) nor a folder with a prebuilt library ({})",
        dir.display(),
        CHECKOUT_MARKERS.join(", "),
        LIBRARY_CANDIDATES.join(", ")
    ))
}

/// The first prebuilt library found in `dir`, if any.
pub fn find_prebuilt(dir: &Path) -> Option<PathBuf> {
    LIBRARY_CANDIDATES.iter().map(|c| dir.join(c)).find(|p| p.is_file())
}

/// Locate each pinned header under `dir` (by file name, in [`HEADER_DIRS`]).
fn find_header(dir: &Path, pinned_rel: &str) -> Option<PathBuf> {
    let file_name = Path::new(pinned_rel).file_name()?;
    HEADER_DIRS.iter().map(|d| dir.join(d).join(file_name)).find(|p| p.is_file())
}

/// sha256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String, String> {
    let bytes = fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(hex(&Sha256::digest(&bytes)))
}

/// Lowercase hex of a byte slice.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Check that every header the bindings depend on is present under `dir` and byte-identical
/// to the pinned one. The error is one line naming the first header that differs.
pub fn check_headers(dir: &Path) -> Result<(), String> {
    for (rel, want) in PINNED_HEADERS {
        let name = Path::new(rel).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let Some(path) = find_header(dir, rel) else {
            return Err(format!(
                "refusing the library in {}: cannot find its {name} (looked in {}) to check it matches the bindings",
                dir.display(),
                HEADER_DIRS.join(", ")
            ));
        };
        let got = sha256_file(&path)?;
        if got != *want {
            return Err(format!(
                "refusing the library in {}: {} (sha256 {got}) differs from the header our bindings were generated from (bitnet-llm-sys {PINNED_SOURCE_VERSION}, sha256 {want}); regenerate them with scripts/gen-bindings.sh",
                dir.display(),
                path.display()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_folder_is_one_line() {
        let dir = std::env::temp_dir().join("bitnet-cpp-locate-test-empty");
        let _ = fs::create_dir_all(&dir);
        let err = classify_dir(&dir).unwrap_err();
        assert!(!err.contains('\n'));
        assert!(err.contains("neither a bitnet.cpp checkout"));
        let missing = classify_dir(&dir.join("does-not-exist")).unwrap_err();
        assert!(missing.contains("is not a folder"));
    }

    #[test]
    fn missing_headers_are_refused() {
        let dir = std::env::temp_dir().join("bitnet-cpp-locate-test-noheaders");
        let _ = fs::create_dir_all(&dir);
        let err = check_headers(&dir).unwrap_err();
        assert!(err.contains("cannot find its llama.h"), "{err}");
    }
}
