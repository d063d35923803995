//! Builds the C++ reference (bitnet.cpp) into one shared library that the crate loads at run
//! time, without cmake: the source files and flags are those that upstream's cmake build uses
//! (see shared/REFERENCE.md), compiled with the `cc` crate and linked with the C++ compiler.
//!
//! Source, in order of preference:
//! - `BITNET_CPP_DIR` holding a prebuilt library: nothing is compiled, its path is baked in;
//! - `BITNET_CPP_DIR` holding a Microsoft BitNet checkout: that tree is compiled;
//! - otherwise the tree shipped in the registry package `bitnet-llm-sys` (pinned version),
//!   obtained with `cargo fetch` of a small generated manifest.
//!
//! The result is cached under `<target dir>/bitnet-cpp-ref/<key>/`, keyed by a sha256 of
//! everything that affects the binary (source bytes, compiler, flags, host ISA), so dev, test
//! and release builds share one compile, and a rebuild of this crate does not recompile C++.
//! `build-info.json` beside the library records what was built and how; it is also embedded in
//! the crate (`bitnet_cpp::BuildInfo`).

#[path = "src/locate.rs"]
#[allow(dead_code)]
mod locate;

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The registry package that ships the reference tree, and its pinned version.
const SOURCE_PACKAGE: &str = "bitnet-llm-sys";
const SOURCE_VERSION: &str = locate::PINNED_SOURCE_VERSION;

/// Bumped when this script changes how it builds, so old cache entries are not reused.
const RECIPE_VERSION: u32 = 2;

/// ggml C sources and C++ sources (relative to the bitnet.cpp root), as upstream's cmake lists them.
const GGML_C_FILES: &[&str] = &[
    "3rdparty/llama.cpp/ggml/src/ggml.c",
    "3rdparty/llama.cpp/ggml/src/ggml-alloc.c",
    "3rdparty/llama.cpp/ggml/src/ggml-quants.c",
    "3rdparty/llama.cpp/ggml/src/ggml-aarch64.c",
];
const GGML_CXX_FILES: &[&str] = &[
    "3rdparty/llama.cpp/ggml/src/ggml-backend.cpp",
    "3rdparty/llama.cpp/ggml/src/llamafile/sgemm.cpp",
    "src/ggml-bitnet-mad.cpp",
    "src/ggml-bitnet-lut.cpp",
];
const LLAMA_CXX_FILES: &[&str] = &[
    "3rdparty/llama.cpp/src/llama.cpp",
    "3rdparty/llama.cpp/src/llama-vocab.cpp",
    "3rdparty/llama.cpp/src/llama-grammar.cpp",
    "3rdparty/llama.cpp/src/llama-sampling.cpp",
    "3rdparty/llama.cpp/src/unicode.cpp",
    "3rdparty/llama.cpp/src/unicode-data.cpp",
];
const INCLUDE_DIRS: &[&str] = &[
    "3rdparty/llama.cpp/include",
    "3rdparty/llama.cpp/ggml/include",
    "3rdparty/llama.cpp/ggml/src",
    "include",
];
/// Folders whose headers feed the compile (hashed into the cache key).
const HEADER_DIRS: &[&str] = &[
    "3rdparty/llama.cpp/include",
    "3rdparty/llama.cpp/ggml/include",
    "3rdparty/llama.cpp/ggml/src",
    "3rdparty/llama.cpp/ggml/src/llamafile",
    "3rdparty/llama.cpp/src",
    "include",
];

/// Flags of upstream's cmake Release build. ggml gets the host ISA (`-march=native`) and
/// OpenMP; `GGML_BITNET_X86_TL2` / `GGML_BITNET_ARM_TL1` are deliberately NOT defined, which
/// selects the I2_S "MAD" kernels (`ggml_vec_dot_i2_i8_s`) rather than the LUT kernels.
const COMMON_FLAGS: &[&str] = &["-O3", "-DNDEBUG", "-fPIC", "-fpermissive"];
const GGML_FLAGS: &[&str] = &[
    "-march=native",
    "-fopenmp",
    "-DGGML_BUILD",
    "-DGGML_SHARED",
    "-DGGML_SCHED_MAX_COPIES=4",
    "-DGGML_USE_LLAMAFILE",
    "-DGGML_USE_OPENMP",
    "-D_GNU_SOURCE",
    "-D_XOPEN_SOURCE=600",
];
const LLAMA_FLAGS: &[&str] = &["-DLLAMA_BUILD", "-DLLAMA_SHARED"];
const LINK_FLAGS: &[&str] =
    &["-shared", "-fopenmp", "-pthread", "-Wl,--no-undefined", "-Wl,-soname,libbitnet_cpp_ref.so"];

/// Environment variables that change the result.
const WATCHED_ENV: &[&str] = &["BITNET_CPP_DIR", "CC", "CXX", "CFLAGS", "CXXFLAGS"];

fn main() {
    if let Err(e) = run() {
        // One line, so a wrong BITNET_CPP_DIR is obvious in cargo's output.
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// Where the reference source comes from.
struct Source {
    kind: &'static str,
    root: PathBuf,
    package: Option<(&'static str, &'static str)>,
}

fn run() -> Result<(), String> {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/locate.rs");
    println!("cargo:rerun-if-changed=src/sys/pinned_headers.rs");
    for var in WATCHED_ENV {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let out_dir = PathBuf::from(env_var("OUT_DIR")?);

    let source = match env::var_os("BITNET_CPP_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            let dir = dir.canonicalize().unwrap_or(dir);
            match locate::classify_dir(&dir)? {
                locate::DirKind::Prebuilt(lib) => {
                    locate::check_headers(&dir)?;
                    return emit_prebuilt(&dir, &lib, &out_dir);
                }
                locate::DirKind::Checkout => Source { kind: "checkout", root: dir, package: None },
            }
        }
        None => Source {
            kind: "registry",
            root: fetch_registry_source(&out_dir)?,
            package: Some((SOURCE_PACKAGE, SOURCE_VERSION)),
        },
    };
    locate::check_headers(&source.root)?;
    build_from_source(&source, &out_dir)
}

fn env_var(name: &str) -> Result<String, String> {
    env::var(name).map_err(|_| format!("{name} is not set (this script runs under cargo)"))
}

/// `cargo fetch` a throwaway manifest that depends on the pinned package, then ask
/// `cargo metadata` where the unpacked package lives. Offline first: no network if the
/// package is already in the local registry cache.
fn fetch_registry_source(out_dir: &Path) -> Result<PathBuf, String> {
    let cargo = env_var("CARGO")?;
    let dir = out_dir.join("reference-source-fetch");
    fs::create_dir_all(dir.join("src")).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let manifest = dir.join("Cargo.toml");
    let text = format!(
        "[package]\nname = \"bitnet-cpp-reference-source\"\nversion = \"0.0.0\"\nedition = \"2021\"\npublish = false\n\n\
         [lib]\npath = \"src/lib.rs\"\n\n[dependencies]\n{SOURCE_PACKAGE} = \"={SOURCE_VERSION}\"\n\n\
         # Not part of any enclosing workspace.\n[workspace]\n"
    );
    write_if_changed(&manifest, text.as_bytes())?;
    write_if_changed(&dir.join("src/lib.rs"), b"")?;

    let cargo_cmd = |args: &[&str]| {
        let mut c = Command::new(&cargo);
        c.args(args).arg("--manifest-path").arg(&manifest);
        // The outer build's settings must not leak into the nested cargo.
        for var in ["CARGO_TARGET_DIR", "RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_TARGET"] {
            c.env_remove(var);
        }
        c
    };
    let offline = cargo_cmd(&["fetch", "--offline", "--quiet"]).output();
    let fetched = matches!(&offline, Ok(o) if o.status.success());
    if !fetched {
        let online = cargo_cmd(&["fetch", "--quiet"])
            .output()
            .map_err(|e| format!("cannot run {cargo} fetch: {e}"))?;
        if !online.status.success() {
            return Err(format!(
                "cargo fetch of {SOURCE_PACKAGE} {SOURCE_VERSION} failed: {}",
                first_line(&String::from_utf8_lossy(&online.stderr))
            ));
        }
    }
    let meta = cargo_cmd(&["metadata", "--format-version", "1", "--offline"])
        .output()
        .map_err(|e| format!("cannot run {cargo} metadata: {e}"))?;
    if !meta.status.success() {
        return Err(format!(
            "cargo metadata for {SOURCE_PACKAGE} failed: {}",
            first_line(&String::from_utf8_lossy(&meta.stderr))
        ));
    }
    let meta: Value = serde_json::from_slice(&meta.stdout)
        .map_err(|e| format!("cargo metadata printed invalid JSON: {e}"))?;
    let manifest_path = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == SOURCE_PACKAGE && p["version"] == SOURCE_VERSION)
        .and_then(|p| p["manifest_path"].as_str())
        .ok_or_else(|| format!("cargo metadata does not list {SOURCE_PACKAGE} {SOURCE_VERSION}"))?;
    let root = Path::new(manifest_path)
        .parent()
        .map(|p| p.join("bitnet.cpp"))
        .ok_or_else(|| format!("odd manifest path {manifest_path}"))?;
    if !root.join(CHECKOUT_MARKER).is_file() {
        return Err(format!(
            "{SOURCE_PACKAGE} {SOURCE_VERSION} at {} has no bitnet.cpp/{CHECKOUT_MARKER}",
            root.display()
        ));
    }
    Ok(root)
}

const CHECKOUT_MARKER: &str = "3rdparty/llama.cpp/include/llama.h";

fn first_line(s: &str) -> String {
    s.lines().find(|l| !l.trim().is_empty()).unwrap_or("(no output)").trim().to_string()
}

fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<(), String> {
    if fs::read(path).ok().as_deref() == Some(bytes) {
        return Ok(());
    }
    fs::write(path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// `<target dir>/bitnet-cpp-ref`, from OUT_DIR = `<target>[/<triple>]/<profile>/build/<pkg>/out`,
/// so that every profile shares the cache.
fn cache_root(out_dir: &Path) -> PathBuf {
    let profile_parent = out_dir
        .ancestors()
        .nth(2)
        .filter(|b| b.file_name().is_some_and(|n| n == "build"))
        .and_then(|b| b.parent())
        .and_then(|p| p.parent());
    match profile_parent {
        Some(t) => t.join("bitnet-cpp-ref"),
        None => out_dir.join("bitnet-cpp-ref"),
    }
}

/// One group of sources compiled with the same flags.
struct Group {
    name: &'static str,
    cxx: bool,
    std: &'static str,
    files: &'static [&'static str],
    flags: Vec<&'static str>,
}

fn groups() -> Vec<Group> {
    let with =
        |extra: &[&'static str]| -> Vec<&'static str> { COMMON_FLAGS.iter().chain(extra).copied().collect() };
    vec![
        Group { name: "ggml-c", cxx: false, std: "gnu11", files: GGML_C_FILES, flags: with(GGML_FLAGS) },
        Group { name: "ggml-cxx", cxx: true, std: "gnu++11", files: GGML_CXX_FILES, flags: with(GGML_FLAGS) },
        Group {
            name: "llama-cxx",
            cxx: true,
            std: "gnu++11",
            files: LLAMA_CXX_FILES,
            flags: with(LLAMA_FLAGS),
        },
    ]
}

fn cc_build(source: &Source, group: &Group, obj_dir: &Path) -> cc::Build {
    let mut b = cc::Build::new();
    b.cpp(group.cxx)
        .no_default_flags(true)
        .cargo_metadata(false)
        .cargo_warnings(false)
        .warnings(false)
        .std(group.std)
        .out_dir(obj_dir.join(group.name));
    for inc in INCLUDE_DIRS {
        b.include(source.root.join(inc));
    }
    for f in &group.flags {
        b.flag(f);
    }
    for f in group.files {
        b.file(source.root.join(f));
    }
    b
}

/// `<compiler> --version`, first line.
fn compiler_version(path: &Path) -> Result<String, String> {
    let out = Command::new(path)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run {} --version: {e}", path.display()))?;
    Ok(first_line(&String::from_utf8_lossy(&out.stdout)))
}

/// ISA macros that `-march=native` turns on (e.g. `__AVX2__`, `__FMA__`, `__F16C__`), and the
/// `-march` value gcc resolves `native` to.
fn native_isa(cc_path: &Path) -> Result<(Vec<String>, Option<String>), String> {
    let out = Command::new(cc_path)
        .args(["-march=native", "-dM", "-E", "-x", "c", "/dev/null"])
        .output()
        .map_err(|e| format!("cannot run {} -march=native -dM -E: {e}", cc_path.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} does not accept -march=native: {}",
            cc_path.display(),
            first_line(&String::from_utf8_lossy(&out.stderr))
        ));
    }
    const ISA_PREFIXES: &[&str] = &[
        "__SSE",
        "__AVX",
        "__FMA",
        "__F16C",
        "__BMI",
        "__POPCNT",
        "__ARM_NEON",
        "__ARM_FEATURE_",
        "__AMX",
        "__VNNI",
        "__LZCNT",
        "__MMX",
    ];
    let mut macros: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("#define "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|m| ISA_PREFIXES.iter().any(|p| m.starts_with(p)))
        .map(str::to_string)
        .collect();
    macros.sort();
    macros.dedup();
    let march =
        Command::new(cc_path).args(["-march=native", "-Q", "--help=target"]).output().ok().and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find_map(|l| l.trim().strip_prefix("-march=").map(|v| v.trim().to_string()))
        });
    Ok((macros, march))
}

/// Every file that feeds the compile: sources and headers, sorted, relative to the root.
fn input_files(root: &Path) -> Result<Vec<String>, String> {
    let mut files: Vec<String> =
        GGML_C_FILES.iter().chain(GGML_CXX_FILES).chain(LLAMA_CXX_FILES).map(|s| s.to_string()).collect();
    for dir in HEADER_DIRS {
        let entries = fs::read_dir(root.join(dir))
            .map_err(|e| format!("cannot list {}: {e}", root.join(dir).display()))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".h") || name.ends_with(".hpp") || name.ends_with(".inc") {
                files.push(format!("{dir}/{name}"));
            }
        }
    }
    files.sort();
    files.dedup();
    Ok(files)
}

fn build_from_source(source: &Source, out_dir: &Path) -> Result<(), String> {
    let groups = groups();
    let c_tool = cc_build(source, &groups[0], out_dir)
        .try_get_compiler()
        .map_err(|e| format!("no C compiler: {e}"))?;
    let cxx_tool = cc_build(source, &groups[1], out_dir)
        .try_get_compiler()
        .map_err(|e| format!("no C++ compiler: {e}"))?;
    let c_version = compiler_version(c_tool.path())?;
    let cxx_version = compiler_version(cxx_tool.path())?;
    let (isa_macros, march) = native_isa(c_tool.path())?;

    // The cache key: everything that changes the library's bytes.
    let inputs = input_files(&source.root)?;
    let mut h = Sha256::new();
    h.update(format!("recipe {RECIPE_VERSION}\n"));
    h.update(format!("{} {}\n", source.kind, source.root.display()));
    h.update(format!("{:?}\n", source.package));
    h.update(format!(
        "{} {c_version}\n{} {cxx_version}\n",
        c_tool.path().display(),
        cxx_tool.path().display()
    ));
    for g in &groups {
        let tool = cc_build(source, g, out_dir).try_get_compiler().map_err(|e| e.to_string())?;
        h.update(format!("{} {:?}\n", g.name, tool.args()));
    }
    h.update(format!("{LINK_FLAGS:?}\n{isa_macros:?}\n{march:?}\n"));
    for rel in &inputs {
        let path = source.root.join(rel);
        let bytes = fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        h.update(format!("{rel} {}\n", bytes.len()));
        h.update(&bytes);
        if source.kind == "checkout" {
            // A user's checkout may change; the registry package cannot.
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    let key = locate::hex(&h.finalize())[..16].to_string();
    let cache_dir = cache_root(out_dir).join(&key);
    let lib_path = cache_dir.join(locate::OUR_LIBRARY_NAME);
    let info_path = cache_dir.join("build-info.json");

    if !(lib_path.is_file() && info_path.is_file()) {
        // Not a cargo:warning: cargo replays those on every later build, cached or not.
        println!(
            "building the C++ reference (bitnet.cpp from {} {}) with {cxx_version}, -O3 -march=native; about two minutes on 2 cores, cached afterwards in {}",
            source.kind,
            source.root.display(),
            cache_dir.display()
        );
        compile_and_link(source, &groups, &cache_dir, &key, &cxx_tool, |tmp, seconds| {
            let mut commands = Vec::new();
            for g in &groups {
                let tool = cc_build(source, g, tmp).try_get_compiler().map_err(|e| e.to_string())?;
                let args: Vec<String> =
                    tool.args().iter().map(|a| a.to_string_lossy().into_owned()).collect();
                commands.push(json!({
                    "group": g.name,
                    "compiler": tool.path(),
                    "args": args,
                    "files": g.files,
                }));
            }
            let headers: Vec<Value> =
                locate::PINNED_HEADERS.iter().map(|(rel, sha)| json!({"path": rel, "sha256": sha})).collect();
            Ok(json!({
                "source": {
                    "kind": source.kind,
                    "path": source.root,
                    "package": source.package.map(|p| p.0),
                    "version": source.package.map(|p| p.1),
                    "headers": headers,
                },
                "library": lib_path,
                "cache_key": key,
                "compiler": {
                    "c": c_tool.path(),
                    "c_version": c_version,
                    "cxx": cxx_tool.path(),
                    "cxx_version": cxx_version,
                },
                "compile": commands,
                "link_args": LINK_FLAGS,
                "isa": {
                    "march_native": march,
                    "macros": isa_macros,
                },
                "kernels": "I2_S MAD (ggml_vec_dot_i2_i8_s); GGML_BITNET_X86_TL2 and GGML_BITNET_ARM_TL1 undefined",
                "built_at_unix": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                "build_seconds": seconds,
            }))
        })?;
    }
    bake(&lib_path, &info_path, out_dir)
}

/// Compile every group into a temporary folder, link, write build-info.json, then move the
/// folder into place in one rename so a half-finished build is never taken for a cached one.
fn compile_and_link(
    source: &Source,
    groups: &[Group],
    cache_dir: &Path,
    key: &str,
    cxx_tool: &cc::Tool,
    info: impl Fn(&Path, f64) -> Result<Value, String>,
) -> Result<(), String> {
    let started = Instant::now();
    let tmp = cache_dir.with_file_name(format!("{key}.tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;

    // The three groups compile concurrently; cc shares cargo's jobserver, so this uses the
    // cores cargo allows and no more.
    let objects: Vec<Vec<PathBuf>> = std::thread::scope(|s| {
        let handles: Vec<_> = groups
            .iter()
            .map(|g| {
                let build = cc_build(source, g, &tmp);
                s.spawn(move || {
                    build.try_compile_intermediates().map_err(|e| format!("compiling {} failed: {e}", g.name))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| "a compile thread panicked".to_string())?)
            .collect::<Result<Vec<_>, String>>()
    })?;

    let lib = tmp.join(locate::OUR_LIBRARY_NAME);
    let mut link = Command::new(cxx_tool.path());
    link.args(LINK_FLAGS).arg("-o").arg(&lib);
    for o in objects.iter().flatten() {
        link.arg(o);
    }
    link.arg("-lm");
    let out =
        link.output().map_err(|e| format!("cannot run the linker {}: {e}", cxx_tool.path().display()))?;
    if !out.status.success() {
        return Err(format!(
            "linking {} failed: {}",
            lib.display(),
            String::from_utf8_lossy(&out.stderr).replace('\n', " | ")
        ));
    }
    let seconds = (started.elapsed().as_secs_f64() * 10.0).round() / 10.0;
    let value = info(&tmp, seconds)?;
    let text = serde_json::to_string_pretty(&value).map_err(|e| e.to_string())?;
    fs::write(tmp.join("build-info.json"), text).map_err(|e| format!("cannot write build-info.json: {e}"))?;
    // Objects are not needed once linked; keep the cache small.
    for g in groups {
        let _ = fs::remove_dir_all(tmp.join(g.name));
    }
    // Cargo re-runs this script when a watched file is newer than its previous run, and
    // files written during a run count as newer; date these back so that the next build
    // sees them as unchanged (a deleted or replaced library still triggers a run).
    for f in [lib.as_path(), &tmp.join("build-info.json")] {
        let old = UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
        let _ = fs::File::options().write(true).open(f).and_then(|h| h.set_modified(old));
    }
    let _ = fs::remove_dir_all(cache_dir);
    fs::rename(&tmp, cache_dir)
        .map_err(|e| format!("cannot move {} to {}: {e}", tmp.display(), cache_dir.display()))
}

/// A prebuilt user library: nothing to compile; record what we know.
fn emit_prebuilt(dir: &Path, lib: &Path, out_dir: &Path) -> Result<(), String> {
    let headers: Vec<Value> =
        locate::PINNED_HEADERS.iter().map(|(rel, sha)| json!({"path": rel, "sha256": sha})).collect();
    let info = json!({
        "source": {
            "kind": "prebuilt",
            "path": dir,
            "package": null,
            "version": null,
            "headers": headers,
        },
        "library": lib,
        "cache_key": null,
        "compiler": null,
        "compile": [],
        "link_args": [],
        "isa": null,
        "kernels": "unknown (prebuilt by the user)",
        "built_at_unix": null,
        "build_seconds": null,
    });
    let info_path = out_dir.join("prebuilt-build-info.json");
    write_if_changed(&info_path, serde_json::to_string_pretty(&info).map_err(|e| e.to_string())?.as_bytes())?;
    bake(lib, &info_path, out_dir)
}

/// Bake the library path into the crate and copy build-info.json into OUT_DIR for `include_str!`.
fn bake(lib: &Path, info: &Path, out_dir: &Path) -> Result<(), String> {
    // Rebuild if the cached library disappears (e.g. someone cleans that folder).
    println!("cargo:rerun-if-changed={}", lib.display());
    println!("cargo:rerun-if-changed={}", info.display());
    let text = fs::read(info).map_err(|e| format!("cannot read {}: {e}", info.display()))?;
    write_if_changed(&out_dir.join("build-info.json"), &text)?;
    println!("cargo:rustc-env=BITNET_CPP_LIBRARY={}", lib.display());
    println!("cargo:rustc-env=BITNET_CPP_BUILD_INFO={}", info.display());
    Ok(())
}
