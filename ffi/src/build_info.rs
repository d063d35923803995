//! What reference library was built, from what, and how: the `build-info.json` that `build.rs`
//! writes beside the library, as a typed struct, so receipts can state it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The build-info.json of the library baked into this crate at build time.
const BAKED_JSON: &str = include_str!(concat!(env!("OUT_DIR"), "/build-info.json"));

/// Path of the library that `build.rs` built (or found in `BITNET_CPP_DIR`) for this crate.
pub const BAKED_LIBRARY: &str = env!("BITNET_CPP_LIBRARY");

/// Where the reference came from and how it was compiled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildInfo {
    pub source: SourceInfo,
    /// The shared library this describes.
    pub library: PathBuf,
    /// Cache folder key (sha256 prefix of sources, compiler, flags, ISA); `None` when prebuilt.
    pub cache_key: Option<String>,
    pub compiler: Option<CompilerInfo>,
    /// One entry per group of sources compiled with the same flags.
    pub compile: Vec<CompileGroup>,
    pub link_args: Vec<String>,
    pub isa: Option<IsaInfo>,
    /// Which I2_S kernels were compiled in.
    pub kernels: String,
    pub built_at_unix: Option<u64>,
    pub build_seconds: Option<f64>,
}

/// The source tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// `registry` (the pinned `bitnet-llm-sys` package), `checkout` (a `BITNET_CPP_DIR` tree
    /// compiled by us) or `prebuilt` (a library found in `BITNET_CPP_DIR`).
    pub kind: String,
    /// The bitnet.cpp root (or the user's folder).
    pub path: PathBuf,
    pub package: Option<String>,
    pub version: Option<String>,
    /// The headers the bindings were generated from, with their sha256 (checked before use).
    pub headers: Vec<HeaderPin>,
}

/// One pinned header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeaderPin {
    pub path: String,
    pub sha256: String,
}

/// The compilers used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompilerInfo {
    pub c: PathBuf,
    pub c_version: String,
    pub cxx: PathBuf,
    pub cxx_version: String,
}

/// Sources compiled with one set of flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompileGroup {
    pub group: String,
    pub compiler: PathBuf,
    /// Every argument given to the compiler besides `-c file -o object`.
    pub args: Vec<String>,
    /// Relative to `source.path`.
    pub files: Vec<String>,
}

/// The instruction set the library was compiled for (`-march=native` on the build machine).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IsaInfo {
    /// What gcc resolved `-march=native` to, e.g. `znver3`.
    pub march_native: Option<String>,
    /// ISA macros defined under `-march=native`, e.g. `__AVX2__`, `__FMA__`, `__F16C__`.
    pub macros: Vec<String>,
}

impl BuildInfo {
    /// The build info of the library built for this crate.
    pub fn baked() -> Result<BuildInfo> {
        serde_json::from_str(BAKED_JSON).map_err(|e| Error::BuildInfo(e.to_string()))
    }

    /// Read a `build-info.json` file.
    pub fn from_file(path: &Path) -> Result<BuildInfo> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::BuildInfo(format!("{}: {e}", path.display())))?;
        serde_json::from_str(&text).map_err(|e| Error::BuildInfo(format!("{}: {e}", path.display())))
    }

    /// What is known of a library that a user built without us (no build-info.json beside it).
    pub fn prebuilt(dir: &Path, library: &Path) -> BuildInfo {
        BuildInfo {
            source: SourceInfo {
                kind: "prebuilt".into(),
                path: dir.to_path_buf(),
                package: None,
                version: None,
                headers: crate::locate::PINNED_HEADERS
                    .iter()
                    .map(|(p, s)| HeaderPin { path: p.to_string(), sha256: s.to_string() })
                    .collect(),
            },
            library: library.to_path_buf(),
            cache_key: None,
            compiler: None,
            compile: Vec::new(),
            link_args: Vec::new(),
            isa: None,
            kernels: "unknown (prebuilt by the user)".into(),
            built_at_unix: None,
            build_seconds: None,
        }
    }

    /// One line for reports: source, version, compiler, ISA.
    pub fn summary(&self) -> String {
        let source = match (&self.source.package, &self.source.version) {
            (Some(p), Some(v)) => format!("{} {p} {v}", self.source.kind),
            _ => format!("{} {}", self.source.kind, self.source.path.display()),
        };
        let compiler = self
            .compiler
            .as_ref()
            .map(|c| c.cxx_version.clone())
            .unwrap_or_else(|| "unknown compiler".into());
        let isa = self
            .isa
            .as_ref()
            .map(|i| {
                format!(
                    "-march=native ({}; {})",
                    i.march_native.as_deref().unwrap_or("?"),
                    i.macros
                        .iter()
                        .filter(|m| ["__AVX2__", "__AVX512F__", "__FMA__", "__F16C__", "__ARM_NEON"]
                            .contains(&m.as_str()))
                        .map(|m| m.trim_matches('_'))
                        .collect::<Vec<_>>()
                        .join(" ")
                )
            })
            .unwrap_or_else(|| "unknown ISA".into());
        format!("bitnet.cpp from {source}, {compiler}, -O3 {isa}, {}", self.kernels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baked_info_parses_and_names_the_library() {
        let info = BuildInfo::baked().unwrap();
        assert_eq!(info.library, Path::new(BAKED_LIBRARY));
        assert!(!info.source.headers.is_empty());
        let s = info.summary();
        assert!(s.starts_with("bitnet.cpp from "), "{s}");
    }
}
