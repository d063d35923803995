//! `BITNET_CPP_DIR`: a second build of the same source works; a wrong folder or a library
//! whose headers differ from the bound ones is refused with a one-line message.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use bitnet_cpp::worker::{LibraryChoice, WorkerError};
use bitnet_cpp::{BuildInfo, ContextParams, Error, Reference, PINNED_HEADERS};
use common::{write_f32_model, Spec};

const PROMPT: &str = "the cat sat on the mat";
const PARAMS: ContextParams =
    ContextParams { n_ctx: 64, n_threads: 2, n_ubatch: bitnet_cpp::DEFAULT_N_UBATCH };

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Install the pinned headers beside a library, as an installed build would have them.
fn install_headers(source: &Path, dir: &Path) {
    fs::create_dir_all(dir.join("include")).unwrap();
    for (rel, _) in PINNED_HEADERS {
        let name = Path::new(rel).file_name().unwrap();
        fs::copy(source.join(rel), dir.join("include").join(name)).unwrap();
    }
}

/// Build the vendored tree a second way: plain compiler calls with the recorded flags, linked
/// like upstream's cmake build into two libraries, `libggml.so` and `libllama.so` (which finds
/// the former through its rpath), plus the headers in `include/`.
fn second_build(info: &BuildInfo, dir: &Path) -> PathBuf {
    let objects = dir.join("obj");
    let lib = dir.join("lib");
    fs::create_dir_all(&objects).unwrap();
    fs::create_dir_all(&lib).unwrap();
    let mut jobs: Vec<(String, Command)> = Vec::new();
    for g in &info.compile {
        for f in &g.files {
            let obj = objects.join(format!("{}-{}.o", g.group, f.replace('/', "_")));
            let mut c = Command::new(&g.compiler);
            c.args(&g.args).arg("-c").arg(info.source.path.join(f)).arg("-o").arg(&obj);
            jobs.push((g.group.clone(), c));
        }
    }
    // Two compiles at a time (the machine has two cores).
    let chunks: Vec<Vec<(String, Command)>> = {
        let mut a = Vec::new();
        let mut b = Vec::new();
        for (i, j) in jobs.into_iter().enumerate() {
            if i % 2 == 0 {
                a.push(j)
            } else {
                b.push(j)
            }
        }
        vec![a, b]
    };
    std::thread::scope(|s| {
        for chunk in chunks {
            s.spawn(move || {
                for (_, mut c) in chunk {
                    run(&mut c);
                }
            });
        }
    });
    let objs = |prefix: &str| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(&objects)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
            .collect();
        v.sort();
        v
    };
    let cxx = &info.compile.iter().find(|g| g.group == "llama-cxx").unwrap().compiler;
    let mut ggml: Vec<PathBuf> = objs("ggml-c-");
    ggml.extend(objs("ggml-cxx-"));
    run(Command::new(cxx)
        .args(["-shared", "-fopenmp", "-pthread", "-Wl,-soname,libggml.so", "-o"])
        .arg(lib.join("libggml.so"))
        .args(&ggml)
        .arg("-lm"));
    run(Command::new(cxx)
        .args(["-shared", "-pthread", "-Wl,-soname,libllama.so", "-Wl,-rpath,$ORIGIN", "-o"])
        .arg(lib.join("libllama.so"))
        .args(objs("llama-cxx-"))
        .arg("-L")
        .arg(&lib)
        .arg("-lggml"));
    install_headers(&info.source.path, dir);
    lib.join("libllama.so")
}

/// The second build is kept beside the first one in the target folder, keyed the same way,
/// so that only the first test run pays for it (built in a temporary folder, then renamed).
fn cached_second_build(info: &BuildInfo) -> PathBuf {
    let key = info.cache_key.clone().expect("a compiled library has a cache key");
    let first = Path::new(bitnet_cpp::BAKED_LIBRARY).parent().unwrap();
    let dir = first.with_file_name(format!("{key}-second-build"));
    if dir.join("lib/libllama.so").is_file() && dir.join("lib/libggml.so").is_file() {
        return dir;
    }
    let tmp = first.with_file_name(format!("{key}-second-build.tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    second_build(info, &tmp);
    fs::remove_dir_all(tmp.join("obj")).unwrap();
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&tmp, &dir).unwrap();
    dir
}

fn logits_for(w: &mut bitnet_cpp::worker::RefWorker, model: &Path) -> Vec<Vec<f32>> {
    w.load_model(model, PARAMS).unwrap();
    let tokens = w.tokenize(PROMPT, true, false).unwrap();
    tokens.iter().enumerate().map(|(p, &t)| w.eval_token(t, p as u32).unwrap()).collect()
}

#[test]
fn a_second_build_of_the_same_source_gives_the_same_logits() {
    let info = BuildInfo::baked().unwrap();
    if info.source.kind == "prebuilt" {
        // Nothing to rebuild: this crate was itself built against a user's prebuilt library.
        eprintln!("skipped: the baked library is a user's prebuilt one");
        return;
    }
    let build = cached_second_build(&info);
    let library = build.join("lib/libllama.so");
    let dir = tempfile::tempdir().unwrap();
    let model = write_f32_model(dir.path(), "small-f32", &Spec::small());

    let build_dir = build.to_str().unwrap();
    let mut theirs = common::worker_with(LibraryChoice::Default, &[("BITNET_CPP_DIR", build_dir)]);
    assert_eq!(theirs.library_path(), library.canonicalize().unwrap());
    assert_eq!(theirs.build_info().source.kind, "prebuilt");
    let mut ours = common::worker();
    assert_ne!(ours.library_path(), theirs.library_path());

    let a = logits_for(&mut ours, &model);
    let b = logits_for(&mut theirs, &model);
    assert_eq!(a.len(), b.len());
    // Same compiler, same flags, same source: the same code, so the same bits.
    for (pos, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()), "position {pos} differs");
    }

    // In process too, and a library whose header differs is refused.
    let r = Reference::open_dir(&build).unwrap();
    assert_eq!(r.library_path(), library.canonicalize().unwrap());
    let altered = tempfile::tempdir().unwrap();
    fs::create_dir_all(altered.path().join("lib")).unwrap();
    fs::copy(build.join("lib/libllama.so"), altered.path().join("lib/libllama.so")).unwrap();
    install_headers(&info.source.path, altered.path());
    let header = altered.path().join("include/llama.h");
    let mut text = fs::read_to_string(&header).unwrap();
    text.push_str("\n// a different header\n");
    fs::write(&header, text).unwrap();
    let err = Reference::open_dir(altered.path()).unwrap_err();
    assert!(matches!(err, Error::Refused(_)), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("llama.h") && msg.contains("differs") && !msg.contains('\n'), "{msg}");
    eprintln!("refused: {msg}");
}

#[test]
fn a_wrong_folder_gives_a_one_line_error() {
    let empty = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bitnet-cpp-worker"));
    cmd.env("BITNET_CPP_DIR", empty.path());
    let err = bitnet_cpp::worker::RefWorker::spawn(cmd, LibraryChoice::Default).unwrap_err();
    let WorkerError::Request { message, .. } = &err else { panic!("expected a refusal, got {err}") };
    assert!(!message.contains('\n'), "{message}");
    assert!(
        message.starts_with(&format!(
            "BITNET_CPP_DIR={} is neither a bitnet.cpp checkout",
            empty.path().display()
        )),
        "{message}"
    );
    eprintln!("refused: {message}");

    let missing = empty.path().join("nowhere");
    let err = Reference::open_dir(&missing).unwrap_err().to_string();
    assert_eq!(err, format!("BITNET_CPP_DIR={} is not a folder", missing.display()));
}
