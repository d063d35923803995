//! Opening the reference library (ours, baked in at build time, or a user's) and routing its log.

use std::ffi::{c_char, c_void, CStr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use crate::build_info::{BuildInfo, BAKED_LIBRARY};
use crate::error::{Error, Result};
use crate::locate;
use crate::sys;

/// The loaded library: its symbols, where it is, and how it was built. Shared (`Arc`) by every
/// model, context and tensor file opened through it, so it outlives them all.
pub(crate) struct Api {
    pub(crate) raw: sys::BitnetCppApi,
    pub(crate) path: PathBuf,
    pub(crate) info: BuildInfo,
}

/// A handle to the C++ reference library. Cheap to clone.
#[derive(Clone)]
pub struct Reference {
    pub(crate) api: Arc<Api>,
}

impl std::fmt::Debug for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reference").field("path", &self.api.path).finish()
    }
}

/// Verbosity of the reference's own log (llama.cpp and ggml), written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    None = 0,
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
}

impl LogLevel {
    /// From `BITNET_CPP_LOG` (`none`, `error`, `warn`, `info`, `debug`); `warn` when unset,
    /// empty or not a level (the harness refuses such a value before it starts a worker).
    pub fn from_env() -> LogLevel {
        Self::parse(&std::env::var("BITNET_CPP_LOG").unwrap_or_default()).unwrap_or(LogLevel::Warn)
    }

    /// A level's name (`none` or `off`, `error`, `warn`, `info`, `debug`, any case).
    pub fn parse(s: &str) -> Option<LogLevel> {
        match s.to_ascii_lowercase().as_str() {
            "none" | "off" => Some(LogLevel::None),
            "error" => Some(LogLevel::Error),
            "warn" => Some(LogLevel::Warn),
            "info" => Some(LogLevel::Info),
            "debug" => Some(LogLevel::Debug),
            _ => None,
        }
    }
}

/// Current threshold (a `LogLevel` as u32).
static LOG_THRESHOLD: AtomicU32 = AtomicU32::new(LogLevel::Warn as u32);
/// Level of the last message, for ggml's "continue previous line" level.
static LAST_LEVEL: AtomicU32 = AtomicU32::new(0);
/// Error-level lines since the last [`take_last_error`], to explain a null pointer.
static LAST_ERROR: Mutex<String> = Mutex::new(String::new());

/// Map ggml's levels (NONE 0, INFO 1, WARN 2, ERROR 3, DEBUG 4, CONT 5) to ours.
fn our_level(ggml_level: u32) -> LogLevel {
    match ggml_level {
        sys::ggml_log_level_GGML_LOG_LEVEL_ERROR => LogLevel::Error,
        sys::ggml_log_level_GGML_LOG_LEVEL_WARN => LogLevel::Warn,
        sys::ggml_log_level_GGML_LOG_LEVEL_INFO => LogLevel::Info,
        _ => LogLevel::Debug,
    }
}

/// The log callback given to `llama_log_set` (which also sets ggml's).
extern "C" fn log_callback(level: sys::ggml_log_level, text: *const c_char, _user: *mut c_void) {
    if text.is_null() {
        return;
    }
    let level = if level == sys::ggml_log_level_GGML_LOG_LEVEL_CONT {
        LAST_LEVEL.load(Ordering::Relaxed)
    } else {
        LAST_LEVEL.store(level, Ordering::Relaxed);
        level
    };
    // SAFETY: ggml passes a NUL-terminated string valid for the duration of the call.
    let text = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    let ours = our_level(level);
    if ours == LogLevel::Error {
        if let Ok(mut last) = LAST_ERROR.lock() {
            if last.len() < 4096 {
                last.push_str(&text);
            }
        }
    }
    if (ours as u32) <= LOG_THRESHOLD.load(Ordering::Relaxed) {
        eprint!("{text}");
    }
}

/// Clear and return the error lines logged since the previous call (trimmed, on one line).
pub(crate) fn take_last_error() -> String {
    let text = LAST_ERROR.lock().map(|mut s| std::mem::take(&mut *s)).unwrap_or_default();
    let joined = text.split('\n').map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ");
    if joined.is_empty() {
        "no reason logged".into()
    } else {
        joined
    }
}

/// Set how much of the reference's own log reaches stderr (process-wide).
pub fn set_log_level(level: LogLevel) {
    LOG_THRESHOLD.store(level as u32, Ordering::Relaxed);
}

impl Reference {
    /// The library chosen for this process: the one in `BITNET_CPP_DIR` if that variable is set
    /// at run time (and differs from what was baked in), else the one built for this crate.
    pub fn open_default() -> Result<Reference> {
        match std::env::var_os("BITNET_CPP_DIR").filter(|v| !v.is_empty()) {
            Some(dir) => Reference::open_dir(Path::new(&dir)),
            None => Reference::open_built(),
        }
    }

    /// The default library that `build.rs` built (or found) for this crate: the build for the
    /// first `-march` of `BITNET_CPP_MARCH` (`native` unless set otherwise).
    pub fn open_built() -> Result<Reference> {
        let info = BuildInfo::baked()?;
        Reference::open_path(Path::new(BAKED_LIBRARY), info)
    }

    /// The library built for `-march=<march>` (an entry of `BITNET_CPP_MARCH` at build time,
    /// e.g. `native` or `x86-64-v3`), whatever `BITNET_CPP_DIR` says at run time. A march that
    /// was not built is [`Error::UnknownBuild`], whose message lists those that were.
    pub fn open_build(march: &str) -> Result<Reference> {
        let build = crate::build_info::built_reference(march)?;
        Reference::open_path(&build.library, build.info)
    }

    /// A user's folder (`BITNET_CPP_DIR`): a prebuilt library inside it, after checking that the
    /// headers beside it are the ones our bindings were generated from. A source checkout that
    /// this crate was built from resolves to the library built from it.
    pub fn open_dir(dir: &Path) -> Result<Reference> {
        let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        let baked = BuildInfo::baked()?;
        if baked.source.path == dir {
            return Reference::open_built();
        }
        match locate::classify_dir(&dir).map_err(Error::Refused)? {
            locate::DirKind::Checkout => Err(Error::Refused(format!(
                "BITNET_CPP_DIR={} is a source checkout without a built library; build this crate with BITNET_CPP_DIR set, or put a built libllama.so in it",
                dir.display()
            ))),
            locate::DirKind::Prebuilt(lib) => {
                locate::check_headers(&dir).map_err(Error::Refused)?;
                let info_file = lib.with_file_name("build-info.json");
                let info = if info_file.is_file() {
                    let mut info = BuildInfo::from_file(&info_file)?;
                    info.library = lib.clone();
                    info
                } else {
                    BuildInfo::prebuilt(&dir, &lib)
                };
                Reference::open_path(&lib, info)
            }
        }
    }

    fn open_path(path: &Path, info: BuildInfo) -> Result<Reference> {
        // SAFETY: loading runs the library's initialisers; the reference library is a plain
        // C/C++ library without unusual load-time behaviour, and every symbol the bindings
        // name is resolved here (`--dynamic-link-require-all`), so later calls cannot miss.
        let raw = unsafe { sys::BitnetCppApi::new(path) }
            .map_err(|e| Error::Library { path: path.to_path_buf(), reason: e.to_string() })?;
        set_log_level(LogLevel::from_env());
        // SAFETY: llama_log_set stores a plain function pointer (ours lives for the whole
        // program) and a null user pointer; llama_backend_init only initialises ggml's static
        // tables and timers and may be called more than once.
        unsafe {
            raw.llama_log_set(Some(log_callback), std::ptr::null_mut());
            raw.llama_backend_init();
        }
        Ok(Reference { api: Arc::new(Api { raw, path: path.to_path_buf(), info }) })
    }

    /// Path of the loaded shared library.
    pub fn library_path(&self) -> &Path {
        &self.api.path
    }

    /// How the loaded library was built.
    pub fn build_info(&self) -> &BuildInfo {
        &self.api.info
    }

    /// llama.cpp's own description of the CPU features it was compiled with.
    pub fn system_info(&self) -> String {
        // SAFETY: returns a pointer to a static string inside the library (never null).
        let p = unsafe { self.api.raw.llama_print_system_info() };
        if p.is_null() {
            return String::new();
        }
        // SAFETY: non-null, NUL-terminated, static.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().trim().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_library_opens_and_reports_avx2_when_compiled_with_it() {
        let r = Reference::open_built().unwrap();
        let sys_info = r.system_info();
        let Some(isa) = r.build_info().isa.clone() else {
            // A user's prebuilt library: its ISA is unknown.
            return;
        };
        let has_avx2 = isa.macros.iter().any(|m| m == "__AVX2__");
        assert_eq!(sys_info.contains("AVX2 = 1"), has_avx2, "{sys_info}");
    }

    #[test]
    fn an_unknown_march_is_refused_naming_the_builds() {
        let err = Reference::open_build("no-such-cpu").unwrap_err();
        assert!(matches!(err, Error::UnknownBuild { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("-march=no-such-cpu") && msg.contains("BITNET_CPP_MARCH"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }

    #[test]
    fn a_wrong_folder_is_refused_in_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let err = Reference::open_dir(dir.path()).unwrap_err().to_string();
        assert!(!err.contains('\n'));
        assert!(err.contains("neither a bitnet.cpp checkout"), "{err}");
    }
}
