//! One reference build per `-march` (`BITNET_CPP_MARCH`, default `native,x86-64-v3`): each has
//! its own library, cache key and build-info naming its march; the `x86-64-v3` build has AVX2,
//! FMA and F16C and no AVX-512 whatever the host; an unknown march is refused with a message
//! naming the builds; a worker loads the build it is told to. Nothing here assumes the host's ISA.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;

use bitnet_cpp::worker::{LibraryChoice, RefWorker, WorkerError};
use bitnet_cpp::{built_references, BuildInfo, ContextParams, Error, Reference, BAKED_LIBRARY};
use bitnet_engine::gguf::GgufFile;
use common::{argmax, build_for, built_from_prebuilt, cosine, forward_f64, write_f32_model, Spec};

const PROMPT: &str = "the cat sat on the mat";

/// Builds every test here needs.
const NEEDED: [&str; 2] = ["native", "x86-64-v3"];

fn skip_prebuilt() -> bool {
    if built_from_prebuilt() {
        eprintln!(
            "skipped: this crate was built against a user's prebuilt library (one build, -march unknown)"
        );
        return true;
    }
    false
}

#[test]
fn both_default_builds_exist_with_their_own_library_and_build_info() {
    if skip_prebuilt() {
        return;
    }
    for march in NEEDED {
        build_for(march);
    }
    let builds = built_references().unwrap();
    // The first is the default: what `open_built` and `BuildInfo::baked` describe.
    assert_eq!(builds[0].library, Path::new(BAKED_LIBRARY));
    assert_eq!(builds[0].info, BuildInfo::baked().unwrap());

    for b in &builds {
        let march = b.march.as_deref().expect("a compiled build names its -march");
        assert!(b.library.is_file(), "{}", b.library.display());
        assert_eq!(b.info.library, b.library);
        assert_eq!(b.info.march(), Some(march));
        assert_eq!(b.info.isa.as_ref().unwrap().march.as_deref(), Some(march));
        // build-info.json sits beside its library and says the same.
        assert_eq!(b.build_info_path.parent(), b.library.parent());
        let on_disk = BuildInfo::from_file(&b.build_info_path).unwrap();
        assert_eq!((on_disk.march(), &on_disk.cache_key), (Some(march), &b.info.cache_key));
        // -march=<march> in ggml's groups; llama's group has none (its objects are shared).
        let flag = format!("-march={march}");
        for g in &b.info.compile {
            let marches: Vec<&String> = g.args.iter().filter(|a| a.starts_with("-march=")).collect();
            if g.group.starts_with("ggml") {
                assert_eq!(marches, [&flag], "{} of the {march} build", g.group);
            } else {
                assert!(marches.is_empty(), "{} of the {march} build: {marches:?}", g.group);
            }
        }
        let summary = b.info.summary();
        assert!(summary.contains(&format!("-march={march} (")), "{summary}");
        eprintln!("{march}: {}", b.library.display());
        eprintln!("  {summary}");
    }
    let libraries: HashSet<_> = builds.iter().map(|b| &b.library).collect();
    let keys: HashSet<_> = builds.iter().map(|b| &b.info.cache_key).collect();
    assert_eq!((libraries.len(), keys.len()), (builds.len(), builds.len()));
}

#[test]
fn the_x86_64_v3_build_has_avx2_fma_f16c_and_no_avx512() {
    if skip_prebuilt() {
        return;
    }
    let b = build_for("x86-64-v3");
    let isa = b.info.isa.as_ref().unwrap();
    for m in ["__AVX__", "__AVX2__", "__FMA__", "__F16C__"] {
        assert!(isa.macros.iter().any(|x| x == m), "{m} missing from {:?}", isa.macros);
    }
    assert!(!isa.macros.iter().any(|x| x.starts_with("__AVX512")), "{:?}", isa.macros);
    assert_eq!(isa.march_resolved.as_deref(), Some("x86-64-v3"));

    // The library itself agrees: ggml reports the ISA it was compiled for.
    let r = Reference::open_build("x86-64-v3").unwrap();
    assert_eq!(r.library_path(), b.library);
    assert_eq!(r.build_info().march(), Some("x86-64-v3"));
    let sys = r.system_info();
    for want in ["AVX2 = 1", "AVX512 = 0", "FMA = 1", "F16C = 1"] {
        assert!(sys.contains(want), "{want} not in {sys}");
    }
}

#[test]
fn an_unknown_march_is_refused_naming_the_builds() {
    let err = Reference::open_build("no-such-cpu").unwrap_err();
    assert!(matches!(err, Error::UnknownBuild { .. }), "{err}");
    let msg = err.to_string();
    assert!(!msg.contains('\n'), "{msg}");
    assert!(msg.contains("-march=no-such-cpu") && msg.contains("BITNET_CPP_MARCH"), "{msg}");
    let built: Vec<String> = built_references().unwrap().into_iter().filter_map(|b| b.march).collect();
    assert!(msg.contains(&format!("(built: {})", built.join(", "))) || built.is_empty(), "{msg}");
    eprintln!("refused: {msg}");

    // Through a worker: the same message, as a refused start-up.
    let cmd = Command::new(env!("CARGO_BIN_EXE_bitnet-cpp-worker"));
    let err = RefWorker::spawn(cmd, LibraryChoice::Build("no-such-cpu".into())).unwrap_err();
    let WorkerError::Request { message, .. } = &err else { panic!("expected a refusal, got {err}") };
    assert_eq!(message, &msg);
}

fn logits_for(w: &mut RefWorker, model: &Path) -> Vec<Vec<f32>> {
    w.load_model(model, ContextParams { n_ctx: 64, n_threads: 2, n_ubatch: bitnet_cpp::DEFAULT_N_UBATCH })
        .unwrap();
    let tokens = w.tokenize(PROMPT, true, false).unwrap();
    tokens.iter().enumerate().map(|(p, &t)| w.eval_token(t, p as u32).unwrap()).collect()
}

#[test]
fn a_worker_told_x86_64_v3_loads_that_build_and_computes_with_it() {
    if skip_prebuilt() {
        return;
    }
    let v3 = build_for("x86-64-v3");
    // BITNET_CPP_DIR (here a folder that does not exist) does not matter to a chosen build.
    let mut w = common::worker_with(
        LibraryChoice::Build("x86-64-v3".into()),
        &[("BITNET_CPP_DIR", "/nonexistent/bitnet-cpp-dir")],
    );
    assert_eq!(w.library_path(), v3.library);
    assert_eq!(w.build_info(), &v3.info);
    assert_eq!(w.build_info().march(), Some("x86-64-v3"));
    assert!(w.system_info().contains("AVX512 = 0"), "{}", w.system_info());

    // The default is the first build.
    let mut default = common::worker_with(LibraryChoice::Default, &[]);
    let first = &built_references().unwrap()[0];
    assert_eq!(default.library_path(), first.library);
    assert_eq!(default.build_info().march(), first.march.as_deref());

    // Both compute the small F32 model's logits, close to float64 (bits may differ between
    // builds on an AVX-512 host: 16-lane reductions instead of 8).
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec::small();
    let model = write_f32_model(dir.path(), "small-f32", &spec);
    let a = logits_for(&mut w, &model);
    let b = logits_for(&mut default, &model);
    let tokens = w.tokenize(PROMPT, true, false).unwrap();
    let want = forward_f64(&GgufFile::open(&model).unwrap(), &spec, &tokens);
    let mut differing = 0;
    for (pos, (x, y)) in a.iter().zip(&b).enumerate() {
        for logits in [x, y] {
            let c = cosine(logits, &want.logits[pos]);
            assert!(c >= 0.999999, "position {pos}: cosine {c}");
            assert_eq!(argmax(logits), argmax(&want.logits[pos]), "argmax at position {pos}");
        }
        differing += usize::from(x.iter().zip(y).any(|(p, q)| p.to_bits() != q.to_bits()));
    }
    eprintln!(
        "x86-64-v3 against {}: {differing} of {} positions differ in some bit",
        first.march.as_deref().unwrap_or("?"),
        a.len()
    );
}
