//! Naming an engine on the command line: `rust`, `cpp`, `cpp:MARCH`, `cpp-dir:PATH`,
//! `saved:FILE`, `cmd:COMMAND`.

use std::fmt;
use std::path::PathBuf;

/// One side of a run, as the user named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineSpec {
    /// This workspace's Rust engine.
    Rust,
    /// bitnet.cpp, live: the default build (`None`: `BITNET_CPP_DIR` if set, else the first
    /// `-march` built) or the build for this `-march`.
    Cpp(Option<String>),
    /// bitnet.cpp from a user's own folder (prebuilt library plus its headers).
    CppDir(PathBuf),
    /// The reference's logits saved by an earlier run (`--save-reference`).
    Saved(PathBuf),
    /// A program speaking the engine protocol (`docs/engine-protocol.md`).
    Command(String),
    /// An engine a program handed over through the library (`harness::check`); not a spec
    /// anyone types.
    Given,
}

impl EngineSpec {
    /// Parses a spec; the error is one line saying what is accepted.
    pub fn parse(s: &str) -> Result<EngineSpec, String> {
        let (kind, rest) = match s.split_once(':') {
            Some((k, r)) => (k, Some(r)),
            None => (s, None),
        };
        let need = |what: &str| match rest {
            Some(r) if !r.is_empty() => Ok(r.to_string()),
            _ => Err(format!("{s:?}: `{kind}:` needs {what}")),
        };
        match (kind, rest) {
            ("rust", None) => Ok(EngineSpec::Rust),
            ("cpp", None) => Ok(EngineSpec::Cpp(None)),
            ("cpp", Some(_)) => Ok(EngineSpec::Cpp(Some(need("a -march value (native, x86-64-v3, ...)")?))),
            ("cpp-dir", _) => Ok(EngineSpec::CppDir(PathBuf::from(need("a folder")?))),
            ("saved", _) => Ok(EngineSpec::Saved(PathBuf::from(need("a file")?))),
            ("cmd", _) => Ok(EngineSpec::Command(need("a command")?)),
            _ => {
                Err(format!("{s:?}: expected rust, cpp, cpp:MARCH, cpp-dir:PATH, saved:FILE or cmd:COMMAND"))
            }
        }
    }

    /// Whether the engine is bitnet.cpp (live or saved): the side whose build decides the
    /// profile the Rust engine mirrors.
    pub fn is_reference_build(&self) -> bool {
        matches!(self, EngineSpec::Cpp(_) | EngineSpec::CppDir(_) | EngineSpec::Saved(_))
    }
}

impl fmt::Display for EngineSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineSpec::Rust => write!(f, "rust"),
            EngineSpec::Cpp(None) => write!(f, "cpp"),
            EngineSpec::Cpp(Some(m)) => write!(f, "cpp:{m}"),
            EngineSpec::CppDir(p) => write!(f, "cpp-dir:{}", p.display()),
            EngineSpec::Saved(p) => write!(f, "saved:{}", p.display()),
            EngineSpec::Command(c) => write!(f, "cmd:{c}"),
            EngineSpec::Given => write!(f, "given"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::EngineSpec;

    #[test]
    fn specs_parse_and_print_back() {
        for s in
            ["rust", "cpp", "cpp:x86-64-v3", "cpp-dir:/opt/BitNet", "saved:ref.bin", "cmd:python3 e.py --x"]
        {
            assert_eq!(EngineSpec::parse(s).unwrap().to_string(), s);
        }
        for bad in ["", "rust:x", "cpp:", "saved:", "cmd:", "llama", "cpp-dir"] {
            assert!(EngineSpec::parse(bad).is_err(), "{bad}");
        }
    }
}
