//! The `harness run` check: a real `harness run` of N tokens (prompt plus greedy continuation)
//! in a child process, timed by its own receipt.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

use super::report::RunCheck;
use crate::receipt::Receipt;

/// Runs `harness run` on `model` for `tokens` positions at `threads` threads and reads the
/// timings of its receipt. Each engine's own time is its load plus its evaluation time.
pub fn run_check(model: &Path, tokens: usize, threads: usize) -> anyhow::Result<RunCheck> {
    let exe = std::env::current_exe().context("cannot find the harness binary")?;
    let out = std::env::temp_dir().join(format!("bitnet-bench-run-{}-{threads}.json", std::process::id()));
    let prompt = bitnet_fixtures::prompts().into_iter().next().unwrap_or_else(|| "Hello".into());
    let mut cmd = Command::new(exe);
    cmd.arg("run")
        .arg("--model")
        .arg(model)
        .arg("--prompt")
        .arg(&prompt)
        .arg("--continue")
        .arg(tokens.to_string())
        .arg("--max-tokens")
        .arg(tokens.to_string())
        .arg("--threads")
        .arg(threads.to_string())
        .arg("--out")
        .arg(&out)
        .arg("--quiet")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if std::env::var_os("BITNET_CPP_LOG").is_none() {
        cmd.env("BITNET_CPP_LOG", "error");
    }
    let status = cmd.status().context("cannot start `harness run`")?;
    let read = std::fs::read(&out);
    let _ = std::fs::remove_file(&out);
    if !status.success() {
        bail!("`harness run` ended with {status}");
    }
    let bytes = read.with_context(|| format!("`harness run` wrote no receipt at {}", out.display()))?;
    let receipt: Receipt = serde_json::from_slice(&bytes).context("unreadable receipt from `harness run`")?;
    let t = &receipt.timings;
    let rust_s = t.rust.load_s + t.rust.eval_s;
    let reference_s = t.reference.load_s + t.reference.eval_s;
    Ok(RunCheck {
        tokens: t.rust.tokens.max(t.reference.tokens),
        wall_s: t.wall_s,
        rust_s,
        reference_s,
        wall_over_slower: t.wall_s / rust_s.max(reference_s),
    })
}
