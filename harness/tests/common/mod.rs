//! Helpers shared by the integration tests (each test binary uses a different part).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

pub mod receipts;

/// `target/<profile>/examples/example_engine`, built (once per test binary) with cargo: a no-op
/// when `cargo test` has just built it, and the way to get it (or refresh it) when only one
/// test was built.
pub fn example_engine() -> PathBuf {
    static BUILT: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = built.as_ref() {
        return path.clone();
    }
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test binary>
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let path = profile_dir.join("examples").join("example_engine");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build.current_dir(env!("CARGO_MANIFEST_DIR")).args([
        "build",
        "-p",
        "harness",
        "--example",
        "example_engine",
    ]);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    let status = build.status().expect("cargo runs");
    assert!(status.success(), "cargo build --example example_engine: {status}");
    assert!(path.is_file(), "{} was built", path.display());
    *built = Some(path.clone());
    path
}
