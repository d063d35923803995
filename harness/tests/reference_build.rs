//! `harness run --reference-build MARCH` (env `BITNET_CPP_BUILD`) runs against the reference
//! built for that `-march`; a build the harness was not built with is exit 4, in one line.
//! Nothing here assumes the host's ISA.

use std::path::Path;
use std::process::{Command, Output};

fn harness(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_harness"));
    cmd.current_dir(dir)
        .args(args)
        .env_remove("CROSSVAL_GGUF")
        .env_remove("BITNET_CPP_DIR")
        .env_remove("BITNET_CPP_BUILD");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the harness binary starts")
}

#[test]
fn an_unknown_build_is_exit_4_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    for (args, env) in [
        (&["run", "--quiet", "--reference-build", "no-such-cpu"][..], &[][..]),
        (&["run", "--quiet"][..], &[("BITNET_CPP_BUILD", "no-such-cpu")][..]),
    ] {
        let o = harness(dir.path(), args, env);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(4), "{args:?} {env:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("error: --reference-build no-such-cpu: "), "{err}");
        assert!(err.contains("BITNET_CPP_MARCH"), "{err}");
    }
}

#[test]
fn the_x86_64_v3_build_is_the_one_a_run_uses() {
    let Ok(v3) = bitnet_cpp::built_reference("x86-64-v3") else {
        assert_eq!(bitnet_cpp::BuildInfo::baked().unwrap().source.kind, "prebuilt", "no x86-64-v3 build");
        eprintln!("skipped: built against a user's prebuilt library (one build, -march unknown)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("v3.json");
    let args = ["run", "--quiet", "--max-tokens", "2", "--reference-build", "x86-64-v3", "--out"];
    let o = harness(dir.path(), &[&args[..], &[out.to_str().unwrap()]].concat(), &[]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let receipt: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let reference = &receipt["engines"]["reference"];
    // Written portably: `$TARGET` for the build cache's folder.
    let lib = v3.library.display().to_string();
    let cache_part = &lib[lib.find("/bitnet-cpp-ref/").expect("in the build cache")..];
    assert_eq!(reference["library_path"], format!("$TARGET{cache_part}"));
    let flags: Vec<&str> = reference["flags"].as_array().unwrap().iter().filter_map(|f| f.as_str()).collect();
    assert!(flags.iter().any(|f| f.starts_with("ggml-c: ") && f.contains(" -march=x86-64-v3 ")), "{flags:?}");
    let isa: Vec<&str> = reference["isa"].as_array().unwrap().iter().filter_map(|f| f.as_str()).collect();
    assert!(isa.contains(&"__AVX2__") && !isa.iter().any(|m| m.starts_with("__AVX512")), "{isa:?}");
}
