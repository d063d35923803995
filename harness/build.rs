//! Records the git commit the harness was built from, for receipts (`tool.git_commit`).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let top = git(&["rev-parse", "--show-toplevel"]);
    if let Some(top) = &top {
        // Rebuild when HEAD moves or the index changes (commits, checkouts, staging).
        for f in [".git/HEAD", ".git/index", ".git/refs/heads"] {
            println!("cargo:rerun-if-changed={top}/{f}");
        }
    }
    let commit = git(&["rev-parse", "HEAD"]).unwrap_or_default();
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty());
    println!("cargo:rustc-env=BITNET_PARITY_GIT_COMMIT={commit}");
    if let Some(d) = dirty {
        println!("cargo:rustc-env=BITNET_PARITY_GIT_DIRTY={d}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
