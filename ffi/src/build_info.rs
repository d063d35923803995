//! What reference libraries were built, from what, and how: the `build-info.json` that
//! `build.rs` writes beside each library, as a typed struct, so receipts can state it; and the
//! list of every build (one per `-march` value of `BITNET_CPP_MARCH`, the default first).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The build-info.json of the default library baked into this crate at build time.
const BAKED_JSON: &str = include_str!(concat!(env!("OUT_DIR"), "/build-info.json"));

/// Every build baked into this crate (`build.rs` writes it): march, library, build-info.
const BUILDS_JSON: &str = include_str!(concat!(env!("OUT_DIR"), "/builds.json"));

/// Path of the default library that `build.rs` built (the first `-march` of
/// `BITNET_CPP_MARCH`), or found in `BITNET_CPP_DIR`, for this crate.
pub const BAKED_LIBRARY: &str = env!("BITNET_CPP_LIBRARY");

/// One reference library baked into this crate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuiltReference {
    /// The `-march` value it was built for (an entry of `BITNET_CPP_MARCH`, e.g. `native` or
    /// `x86-64-v3`); `None` for a prebuilt library from `BITNET_CPP_DIR`, whose ISA is unknown.
    pub march: Option<String>,
    /// The shared library.
    pub library: PathBuf,
    /// Its build-info.json (beside the library; for a prebuilt library, a copy in OUT_DIR).
    pub build_info_path: PathBuf,
    /// That build-info.json, as it was at build time.
    pub info: BuildInfo,
}

#[derive(Deserialize)]
struct BuildsManifest {
    builds: Vec<BuiltReference>,
}

/// Every reference library built for this crate, the default (the first `-march` of
/// `BITNET_CPP_MARCH`, `native` unless set otherwise) first.
pub fn built_references() -> Result<Vec<BuiltReference>> {
    let manifest: BuildsManifest =
        serde_json::from_str(BUILDS_JSON).map_err(|e| Error::BuildInfo(format!("builds.json: {e}")))?;
    if manifest.builds.is_empty() {
        return Err(Error::BuildInfo("builds.json lists no build".into()));
    }
    Ok(manifest.builds)
}

/// The library built for `-march=<march>`, or an [`Error::UnknownBuild`] naming those that exist.
pub fn built_reference(march: &str) -> Result<BuiltReference> {
    let builds = built_references()?;
    if let Some(b) = builds.iter().find(|b| b.march.as_deref() == Some(march)) {
        return Ok(b.clone());
    }
    let available = builds
        .iter()
        .map(|b| match &b.march {
            Some(m) => m.clone(),
            None => format!(
                "only a prebuilt library from BITNET_CPP_DIR={}, -march unknown",
                b.info.source.path.display()
            ),
        })
        .collect::<Vec<_>>()
        .join(", ");
    Err(Error::UnknownBuild { march: march.to_string(), available })
}

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

/// The instruction set the library was compiled for (`-march=<march>` on the build machine).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IsaInfo {
    /// The `-march` value requested (an entry of `BITNET_CPP_MARCH`), e.g. `native` or
    /// `x86-64-v3`. Absent from build-info.json written before per-ISA builds, which were all
    /// `native` (see [`BuildInfo::march`]).
    #[serde(default)]
    pub march: Option<String>,
    /// What gcc resolved the requested `-march` to, e.g. `znver3` for `native` on a Zen 3 host,
    /// `x86-64-v3` for itself. Called `march_native` in older build-info.json (still read).
    #[serde(alias = "march_native")]
    pub march_resolved: Option<String>,
    /// ISA macros that gcc defines for that `-march` (`gcc -march=<march> -dM -E`), e.g.
    /// `__AVX2__`, `__FMA__`, `__F16C__`.
    pub macros: Vec<String>,
}

impl BuildInfo {
    /// The build info of the default library built for this crate.
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

    /// The `-march` value this library was built for (`native`, `x86-64-v3`, ...); `None` for a
    /// prebuilt library of unknown ISA. Build-info written before per-ISA builds says `native`.
    pub fn march(&self) -> Option<&str> {
        let isa = self.isa.as_ref()?;
        Some(isa.march.as_deref().unwrap_or("native"))
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
                    "-march={} ({}; {})",
                    self.march().unwrap_or("?"),
                    i.march_resolved.as_deref().unwrap_or("?"),
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
        let builds = built_references().unwrap();
        assert_eq!(builds[0].library, Path::new(BAKED_LIBRARY));
        assert_eq!(builds[0].info, info);
        if let Some(march) = info.march() {
            assert!(s.contains(&format!("-march={march} (")), "{s}");
        }
    }

    #[test]
    fn old_build_info_still_parses_and_says_native() {
        let old = r#"{"march_native": "znver3", "macros": ["__AVX2__"]}"#;
        let isa: IsaInfo = serde_json::from_str(old).unwrap();
        assert_eq!(isa.march, None);
        assert_eq!(isa.march_resolved.as_deref(), Some("znver3"));
        let mut info = BuildInfo::prebuilt(Path::new("/x"), Path::new("/x/libllama.so"));
        assert_eq!(info.march(), None);
        info.isa = Some(isa);
        assert_eq!(info.march(), Some("native"));
        assert!(info.summary().contains("-march=native (znver3; AVX2)"), "{}", info.summary());
    }
}
