//! Builds the C++ reference (bitnet.cpp) into shared libraries that the crate loads at run
//! time, one per `-march` value of `BITNET_CPP_MARCH` (default `native,x86-64-v3`), without
//! cmake: the source files and flags are those that upstream's cmake build uses (see
//! shared/REFERENCE.md, with `-march=native` replaced by each requested value), compiled with
//! the `cc` crate and linked with the C++ compiler.
//!
//! Source, in order of preference:
//! - `BITNET_CPP_DIR` holding a prebuilt library: nothing is compiled, its path is baked in;
//! - `BITNET_CPP_DIR` holding a Microsoft BitNet checkout: that tree is compiled;
//! - otherwise the tree shipped in the registry package `bitnet-llm-sys` (pinned version),
//!   obtained with `cargo fetch` of a small generated manifest.
//!
//! Each build is cached under `<target dir>/bitnet-cpp-ref/<key>/`, keyed by a sha256 of
//! everything that affects the binary (source bytes, compiler, flags including `-march`, the
//! ISA macros that `-march` turns on), so dev, test and release builds share one compile, and a
//! rebuild of this crate does not recompile C++. llama.cpp's own files are compiled without any
//! `-march`, so their objects are the same for every build: they are compiled once and kept
//! under `<target dir>/bitnet-cpp-ref/objects/llama-<key>/` for every build to link.
//! `build-info.json` beside each library records what was built and how; `builds.json` in
//! OUT_DIR lists every build (the first is the default) and is embedded in the crate
//! (`bitnet_cpp::built_references`, `bitnet_cpp::BuildInfo`).

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
const RECIPE_VERSION: u32 = 3;

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

/// Flags of upstream's cmake Release build. ggml gets an ISA (upstream: `-march=native`; here
/// `-march=<value>` of each build, placed first, see [`groups`]) and OpenMP;
/// `GGML_BITNET_X86_TL2` / `GGML_BITNET_ARM_TL1` are deliberately NOT defined, which selects the
/// I2_S "MAD" kernels (`ggml_vec_dot_i2_i8_s`) rather than the LUT kernels.
const COMMON_FLAGS: &[&str] = &["-O3", "-DNDEBUG", "-fPIC", "-fpermissive"];
const GGML_FLAGS: &[&str] = &[
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
const WATCHED_ENV: &[&str] = &["BITNET_CPP_DIR", "BITNET_CPP_MARCH", "CC", "CXX", "CFLAGS", "CXXFLAGS"];

/// The `-march` values built when `BITNET_CPP_MARCH` is unset: the host's own ISA (the default
/// reference of runs) and AVX2 + FMA + F16C without AVX-512, which the test suite needs on every
/// machine (its float results are the same on AVX2 and AVX-512 hosts).
const DEFAULT_MARCH: &str = "native,x86-64-v3";

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
    let marches = requested_marches()?;

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
    build_from_source(&source, &marches, &out_dir)
}

/// The `-march` values of `BITNET_CPP_MARCH` (comma-separated, each `[A-Za-z0-9._-]+`), in
/// order and without repeats; [`DEFAULT_MARCH`] when unset or empty.
fn requested_marches() -> Result<Vec<String>, String> {
    let raw = match env::var_os("BITNET_CPP_MARCH") {
        None => DEFAULT_MARCH.to_string(),
        Some(v) => {
            v.into_string().map_err(|v| format!("BITNET_CPP_MARCH={v:?} is not UTF-8"))?.trim().to_string()
        }
    };
    let raw = if raw.is_empty() { DEFAULT_MARCH.to_string() } else { raw };
    let mut marches: Vec<String> = Vec::new();
    for value in raw.split(',').map(str::trim) {
        let valid = !value.is_empty()
            && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !valid {
            return Err(format!(
                "BITNET_CPP_MARCH={raw:?}: {value:?} is not a -march value; expected a comma-separated list of [A-Za-z0-9._-]+ such as {DEFAULT_MARCH}"
            ));
        }
        if !marches.iter().any(|m| m == value) {
            marches.push(value.to_string());
        }
    }
    Ok(marches)
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
    flags: Vec<String>,
}

/// Name of the group whose flags hold no `-march`: its objects serve every build.
const SHARED_GROUP: &str = "llama-cxx";

/// The groups of one build for `-march=<march>`. The `-march` flag takes the place that
/// upstream's `-march=native` has, so a `native` build gets exactly upstream's arguments.
fn groups(march: &str) -> Vec<Group> {
    let with =
        |extra: &[&str]| -> Vec<String> { COMMON_FLAGS.iter().chain(extra).map(|f| f.to_string()).collect() };
    let march_flag = format!("-march={march}");
    let ggml: Vec<&str> = std::iter::once(march_flag.as_str()).chain(GGML_FLAGS.iter().copied()).collect();
    vec![
        Group { name: "ggml-c", cxx: false, std: "gnu11", files: GGML_C_FILES, flags: with(&ggml) },
        Group { name: "ggml-cxx", cxx: true, std: "gnu++11", files: GGML_CXX_FILES, flags: with(&ggml) },
        Group {
            name: SHARED_GROUP,
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
        .out_dir(obj_dir);
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

/// The compiler command of a group (without `-c file -o object`), as a string list.
fn group_args(source: &Source, group: &Group, obj_dir: &Path) -> Result<(PathBuf, Vec<String>), String> {
    let tool = cc_build(source, group, obj_dir)
        .try_get_compiler()
        .map_err(|e| format!("no compiler for {}: {e}", group.name))?;
    let args = tool.args().iter().map(|a| a.to_string_lossy().into_owned()).collect();
    Ok((tool.path().to_path_buf(), args))
}

/// `<compiler> --version`, first line.
fn compiler_version(path: &Path) -> Result<String, String> {
    let out = Command::new(path)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run {} --version: {e}", path.display()))?;
    Ok(first_line(&String::from_utf8_lossy(&out.stdout)))
}

/// ISA macros that `-march=<march>` turns on (e.g. `__AVX2__`, `__FMA__`, `__F16C__`), and the
/// `-march` value gcc resolves it to (`native` becomes the host's CPU name, e.g. `znver3`).
fn march_isa(cc_path: &Path, march: &str) -> Result<(Vec<String>, Option<String>), String> {
    let flag = format!("-march={march}");
    let out = Command::new(cc_path)
        .args([flag.as_str(), "-dM", "-E", "-x", "c", "/dev/null"])
        .output()
        .map_err(|e| format!("cannot run {} {flag} -dM -E: {e}", cc_path.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} does not accept {flag} (from BITNET_CPP_MARCH): {}",
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
    let resolved =
        Command::new(cc_path).args([flag.as_str(), "-Q", "--help=target"]).output().ok().and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find_map(|l| l.trim().strip_prefix("-march=").map(|v| v.trim().to_string()))
        });
    Ok((macros, resolved))
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

/// First 16 hex digits of a sha256.
fn short_key(h: Sha256) -> String {
    locate::hex(&h.finalize())[..16].to_string()
}

/// One library to build (or found cached) for one `-march` value.
struct MarchBuild {
    march: String,
    groups: Vec<Group>,
    macros: Vec<String>,
    resolved: Option<String>,
    key: String,
    dir: PathBuf,
}

impl MarchBuild {
    fn library(&self) -> PathBuf {
        self.dir.join(locate::OUR_LIBRARY_NAME)
    }
    fn info(&self) -> PathBuf {
        self.dir.join("build-info.json")
    }
    fn is_cached(&self) -> bool {
        self.library().is_file() && self.info().is_file()
    }
}

/// The compiled objects of the shared group (llama.cpp), kept for every build to link.
struct SharedObjects {
    dir: PathBuf,
}

impl SharedObjects {
    /// `objects.txt` lists the objects (relative to the folder) in link order; it is written
    /// last, and the folder is renamed into place only when complete.
    const LIST: &'static str = "objects.txt";

    fn cached(&self) -> Option<Vec<PathBuf>> {
        let text = fs::read_to_string(self.dir.join(Self::LIST)).ok()?;
        let objects: Vec<PathBuf> =
            text.lines().filter(|l| !l.is_empty()).map(|l| self.dir.join(l)).collect();
        (!objects.is_empty() && objects.iter().all(|o| o.is_file())).then_some(objects)
    }
}

fn build_from_source(source: &Source, marches: &[String], out_dir: &Path) -> Result<(), String> {
    let probe = groups(&marches[0]);
    let (c_path, _) = group_args(source, &probe[0], out_dir)?;
    let (cxx_path, _) = group_args(source, &probe[1], out_dir)?;
    let c_version = compiler_version(&c_path)?;
    let cxx_version = compiler_version(&cxx_path)?;
    let cache_root = cache_root(out_dir);

    // What every build shares: recipe, source (every byte), compilers.
    let inputs = input_files(&source.root)?;
    let mut h = Sha256::new();
    h.update(format!("recipe {RECIPE_VERSION}\n"));
    h.update(format!("{} {}\n", source.kind, source.root.display()));
    h.update(format!("{:?}\n", source.package));
    h.update(format!("{} {c_version}\n{} {cxx_version}\n", c_path.display(), cxx_path.display()));
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
    let base = locate::hex(&h.finalize());

    // The shared group's objects: keyed by the base and their own arguments only.
    let shared_group = probe.iter().find(|g| g.name == SHARED_GROUP).expect("the shared group exists");
    let (_, shared_args) = group_args(source, shared_group, out_dir)?;
    let mut h = Sha256::new();
    h.update(format!("{base}\nshared objects {SHARED_GROUP} {shared_args:?}\n"));
    let shared =
        SharedObjects { dir: cache_root.join("objects").join(format!("{SHARED_GROUP}-{}", short_key(h))) };

    // One key per -march: the base, every group's arguments (with that -march), link flags,
    // and what gcc makes of that -march.
    let mut builds = Vec::new();
    for march in marches {
        let (macros, resolved) = march_isa(&c_path, march)?;
        let groups = groups(march);
        let mut h = Sha256::new();
        h.update(format!("{base}\nmarch {march}\n"));
        for g in &groups {
            let (_, args) = group_args(source, g, out_dir)?;
            h.update(format!("{} {args:?}\n", g.name));
        }
        h.update(format!("{LINK_FLAGS:?}\n{macros:?}\n{resolved:?}\n"));
        let key = short_key(h);
        let dir = cache_root.join(&key);
        builds.push(MarchBuild { march: march.clone(), groups, macros, resolved, key, dir });
    }

    let missing: Vec<&MarchBuild> = builds.iter().filter(|b| !b.is_cached()).collect();
    if !missing.is_empty() {
        let ctx = BuildContext {
            source,
            c_path: &c_path,
            c_version: &c_version,
            cxx_path: &cxx_path,
            cxx_version: &cxx_version,
        };
        compile_builds(&ctx, &missing, &shared)?;
    }
    let baked: Vec<Baked> = builds
        .iter()
        .map(|b| Baked { march: Some(b.march.clone()), library: b.library(), info: b.info() })
        .collect();
    bake(&baked, out_dir)
}

/// What every build of one source shares.
struct BuildContext<'a> {
    source: &'a Source,
    c_path: &'a Path,
    c_version: &'a str,
    cxx_path: &'a Path,
    cxx_version: &'a str,
}

/// Compile the missing builds: their ggml groups, and the shared group once unless its objects
/// are cached, all at the same time (cc takes its slots from cargo's jobserver, so this uses
/// the cores cargo allows and no more); then link each build, write its build-info.json, and
/// move each folder into place in one rename, so a half-finished build is never taken for a
/// cached one.
fn compile_builds(ctx: &BuildContext, missing: &[&MarchBuild], shared: &SharedObjects) -> Result<(), String> {
    let result = compile_builds_inner(ctx, missing, shared);
    if result.is_err() {
        // Leave no temporary folder behind (the finished builds stay: they are complete).
        let _ = fs::remove_dir_all(shared_tmp(shared));
        for b in missing {
            let _ = fs::remove_dir_all(march_tmp(b));
        }
    }
    result
}

/// Where the shared objects are compiled before being moved into place.
fn shared_tmp(shared: &SharedObjects) -> PathBuf {
    let name = shared.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    shared.dir.with_file_name(format!("{name}.tmp-{}", std::process::id()))
}

/// Where a build is made before being moved into place.
fn march_tmp(b: &MarchBuild) -> PathBuf {
    b.dir.with_file_name(format!("{}.tmp-{}", b.key, std::process::id()))
}

fn compile_builds_inner(
    ctx: &BuildContext,
    missing: &[&MarchBuild],
    shared: &SharedObjects,
) -> Result<(), String> {
    let started = Instant::now();
    let source = ctx.source;
    let cached_shared = shared.cached();
    let shared_tmp = shared_tmp(shared);
    let tmp_of = march_tmp;

    for b in missing {
        // Not a cargo:warning: cargo replays those on every later build, cached or not.
        println!(
            "building the C++ reference for -march={} (bitnet.cpp from {} {}) with {}, -O3 (all builds together: one to two minutes on 2 cores), cached afterwards in {}",
            b.march,
            source.kind,
            source.root.display(),
            ctx.cxx_version,
            b.dir.display()
        );
        let tmp = tmp_of(b);
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    }
    if cached_shared.is_none() {
        println!(
            "compiling llama.cpp's sources once for every -march (no -march in their flags), kept in {}",
            shared.dir.display()
        );
        let _ = fs::remove_dir_all(&shared_tmp);
        fs::create_dir_all(&shared_tmp)
            .map_err(|e| format!("cannot create {}: {e}", shared_tmp.display()))?;
    }

    // Every compile job: (build index or None for the shared group, group).
    let mut jobs: Vec<(Option<usize>, &Group, PathBuf)> = Vec::new();
    if cached_shared.is_none() {
        let g = missing[0].groups.iter().find(|g| g.name == SHARED_GROUP).expect("the shared group exists");
        jobs.push((None, g, shared_tmp.clone()));
    }
    for (i, b) in missing.iter().enumerate() {
        for g in b.groups.iter().filter(|g| g.name != SHARED_GROUP) {
            jobs.push((Some(i), g, tmp_of(b).join(g.name)));
        }
    }
    let compiled: Vec<Vec<PathBuf>> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|(i, g, dir)| {
                let build = cc_build(source, g, dir);
                let what = match i {
                    Some(i) => format!("{} for -march={}", g.name, missing[*i].march),
                    None => g.name.to_string(),
                };
                s.spawn(move || {
                    build.try_compile_intermediates().map_err(|e| format!("compiling {what} failed: {e}"))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| "a compile thread panicked".to_string())?)
            .collect::<Result<Vec<_>, String>>()
    })?;

    let shared_objects = match &cached_shared {
        Some(objects) => objects.clone(),
        None => compiled[0].clone(),
    };
    for (i, b) in missing.iter().enumerate() {
        // Link order: the ggml groups of this build, then the shared group (as before).
        let mut objects: Vec<PathBuf> = jobs
            .iter()
            .zip(&compiled)
            .filter(|((j, _, _), _)| *j == Some(i))
            .flat_map(|(_, objs)| objs.iter().cloned())
            .collect();
        objects.extend(shared_objects.iter().cloned());
        let tmp = tmp_of(b);
        link(ctx.cxx_path, &objects, &tmp.join(locate::OUR_LIBRARY_NAME))?;
        let seconds = (started.elapsed().as_secs_f64() * 10.0).round() / 10.0;
        let value = build_info_json(ctx, b, &tmp, seconds)?;
        let text = serde_json::to_string_pretty(&value).map_err(|e| e.to_string())?;
        fs::write(tmp.join("build-info.json"), text)
            .map_err(|e| format!("cannot write build-info.json: {e}"))?;
        // Objects are not needed once linked; keep the cache small.
        for g in &b.groups {
            let _ = fs::remove_dir_all(tmp.join(g.name));
        }
        // Cargo re-runs this script when a watched file is newer than its previous run, and
        // files written during a run count as newer; date these back so that the next build
        // sees them as unchanged (a deleted or replaced library still triggers a run).
        for f in [tmp.join(locate::OUR_LIBRARY_NAME), tmp.join("build-info.json")] {
            let old = UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
            let _ = fs::File::options().write(true).open(&f).and_then(|h| h.set_modified(old));
        }
        let _ = fs::remove_dir_all(&b.dir);
        fs::rename(&tmp, &b.dir)
            .map_err(|e| format!("cannot move {} to {}: {e}", tmp.display(), b.dir.display()))?;
    }

    if cached_shared.is_none() {
        // Keep the shared objects for a later build of another -march. Another build script
        // may have put the same objects (same key) in place meanwhile: keep theirs, which
        // someone may be linking.
        let list: String = shared_objects
            .iter()
            .filter_map(|o| o.strip_prefix(&shared_tmp).ok())
            .map(|rel| format!("{}\n", rel.display()))
            .collect();
        fs::write(shared_tmp.join(SharedObjects::LIST), list)
            .map_err(|e| format!("cannot write {}: {e}", SharedObjects::LIST))?;
        if shared.cached().is_none() {
            // Nothing usable there (an incomplete folder left by hand); replace it.
            let _ = fs::remove_dir_all(&shared.dir);
        }
        if fs::rename(&shared_tmp, &shared.dir).is_err() {
            let _ = fs::remove_dir_all(&shared_tmp);
        }
    }
    Ok(())
}

/// `c++ -shared ... -o lib objects -lm`.
fn link(cxx: &Path, objects: &[PathBuf], lib: &Path) -> Result<(), String> {
    let mut link = Command::new(cxx);
    link.args(LINK_FLAGS).arg("-o").arg(lib);
    for o in objects {
        link.arg(o);
    }
    link.arg("-lm");
    let out = link.output().map_err(|e| format!("cannot run the linker {}: {e}", cxx.display()))?;
    if !out.status.success() {
        return Err(format!(
            "linking {} failed: {}",
            lib.display(),
            String::from_utf8_lossy(&out.stderr).replace('\n', " | ")
        ));
    }
    Ok(())
}

/// The build-info.json of one build (its library path is the final one, not the temporary).
fn build_info_json(ctx: &BuildContext, b: &MarchBuild, tmp: &Path, seconds: f64) -> Result<Value, String> {
    let source = ctx.source;
    let mut commands = Vec::new();
    for g in &b.groups {
        let (compiler, args) = group_args(source, g, tmp)?;
        commands.push(json!({
            "group": g.name,
            "compiler": compiler,
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
        "library": b.library(),
        "cache_key": b.key,
        "compiler": {
            "c": ctx.c_path,
            "c_version": ctx.c_version,
            "cxx": ctx.cxx_path,
            "cxx_version": ctx.cxx_version,
        },
        "compile": commands,
        "link_args": LINK_FLAGS,
        "isa": {
            "march": b.march,
            "march_resolved": b.resolved,
            "macros": b.macros,
        },
        "kernels": "I2_S MAD (ggml_vec_dot_i2_i8_s); GGML_BITNET_X86_TL2 and GGML_BITNET_ARM_TL1 undefined",
        "built_at_unix": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "build_seconds": seconds,
    }))
}

/// A prebuilt user library: nothing to compile; record what we know (its -march is unknown).
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
    bake(&[Baked { march: None, library: lib.to_path_buf(), info: info_path }], out_dir)
}

/// One library baked into the crate.
struct Baked {
    /// The requested -march; `None` for a prebuilt library.
    march: Option<String>,
    library: PathBuf,
    info: PathBuf,
}

/// Bake every build into the crate: `builds.json` in OUT_DIR (each build's -march, library,
/// build-info path and build-info itself, the default first) for `include_str!`, the default's
/// build-info.json beside it, and the default's library path as `BITNET_CPP_LIBRARY`.
fn bake(builds: &[Baked], out_dir: &Path) -> Result<(), String> {
    let mut entries = Vec::new();
    for b in builds {
        // Rebuild if a cached library disappears (e.g. someone cleans that folder).
        println!("cargo:rerun-if-changed={}", b.library.display());
        println!("cargo:rerun-if-changed={}", b.info.display());
        let text = fs::read(&b.info).map_err(|e| format!("cannot read {}: {e}", b.info.display()))?;
        let info: Value = serde_json::from_slice(&text)
            .map_err(|e| format!("{} is not valid JSON: {e}", b.info.display()))?;
        entries.push(json!({
            "march": b.march,
            "library": b.library,
            "build_info_path": b.info,
            "info": info,
        }));
    }
    let default = builds.first().ok_or("no build to bake")?;
    let manifest = json!({ "builds": entries });
    let text = serde_json::to_string_pretty(&manifest).map_err(|e| e.to_string())?;
    write_if_changed(&out_dir.join("builds.json"), text.as_bytes())?;
    let info = fs::read(&default.info).map_err(|e| format!("cannot read {}: {e}", default.info.display()))?;
    write_if_changed(&out_dir.join("build-info.json"), &info)?;
    println!("cargo:rustc-env=BITNET_CPP_LIBRARY={}", default.library.display());
    println!("cargo:rustc-env=BITNET_CPP_BUILD_INFO={}", default.info.display());
    Ok(())
}
