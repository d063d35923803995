//! Every command in README.md's `sh` blocks is exercised: the harness commands are run here,
//! in order, as a newcomer would type them (in a scratch folder holding the repository's
//! fixtures and receipts); the others are listed below with where they are exercised instead.

use std::path::Path;
use std::process::Command;

/// Commands this test does not run, with where they are exercised. Each must still appear in
/// README.md (checked), so the list cannot go stale.
const ELSEWHERE: &[(&str, &str)] = &[
    ("scripts/test", ".ci/run runs it"),
    ("cargo fmt --all -- --check", ".ci/run runs it"),
    ("cargo clippy --workspace --all-targets -- -D warnings", ".ci/run runs it"),
    ("bash .ci/run", "CI itself"),
    ("scripts/render-report.sh", ".ci/run runs it"),
    ("cargo install cargo-fuzz", "fuzzing needs nightly and is not run by CI by design (fuzz/README.md); CI runs harness/tests/reliability_mutation.rs"),
    ("cd fuzz && cargo +nightly fuzz run -O gguf_patch corpus/gguf_patch", "as above"),
    ("BITNET_CPP_DIR=$HOME/src/BitNet cargo run -p harness", "ffi/tests/library_dir.rs builds a second copy of the reference and runs it through BITNET_CPP_DIR"),
    ("cargo run --release -p harness -- bench", "harness/tests/bench.rs runs `harness bench` on a fixture (the generated 2B model takes minutes)"),
    ("cargo run --release -p harness -- bench --layers 30 --threads 1 --threads 2 --json", "harness/tests/bench.rs (1 and 2 threads, --json) on a fixture"),
    ("cargo build -p harness --example example_engine", "harness/tests/external_engine_cli.rs builds it; .ci/run runs the demo and gates it"),
    ("cargo run -p harness -- run --engine-cmd \"target/debug/examples/example_engine --mistake iq2s-sequential\" --trace", ".ci/run (the wrong engine's receipt must fail the gate at position 0, trace Qcur-0) and harness/tests/external_engine_cli.rs"),
    ("scripts/batch-speed", "minutes on the 1.2 GB 30-layer model, by hand (figures in the issue notes); harness/tests/batch_mode.rs runs batch mode on every fixture"),
    ("cargo run -p harness -- fixtures --shape 2b --layers 4", "writes 730 MB; the same generator writes the committed fixtures (fixtures/tests/regenerate.rs) and bench's cached models"),
];

/// Splits a command line like a shell would for the simple lines in the README: whitespace,
/// double and single quotes, `VAR=value` prefixes.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut any = false;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                any = true;
            }
            (None, c) if c.is_whitespace() => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                any = false;
            }
            (None, c) => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The commands of every ```sh block, comments removed, continuation lines joined.
fn readme_commands(readme: &str) -> Vec<String> {
    let mut cmds = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for line in readme.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            in_sh = trimmed == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        // A comment starts at a `#` after whitespace (none of our commands quote a `#`).
        let code = match line.find(" #") {
            Some(i) => &line[..i],
            None if trimmed.starts_with('#') => "",
            None => line,
        };
        let code = code.trim();
        if let Some(stripped) = code.strip_suffix('\\') {
            pending.push_str(stripped);
            pending.push(' ');
            continue;
        }
        pending.push_str(code);
        let cmd = pending.trim().to_string();
        pending.clear();
        if !cmd.is_empty() {
            cmds.push(cmd);
        }
    }
    cmds
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn every_readme_command_is_exercised() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
    let cmds = readme_commands(&readme);
    assert!(cmds.len() >= 20, "found only {} commands: {cmds:?}", cmds.len());
    for (cmd, _) in ELSEWHERE {
        assert!(cmds.iter().any(|c| c == cmd), "ELSEWHERE lists {cmd:?}, which README.md no longer has");
    }

    // A newcomer's folder: the repository's fixtures and receipts, nothing else.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    copy_dir(&repo.join("fixtures"), &d.join("fixtures"));
    copy_dir(&repo.join("receipts"), &d.join("receipts"));
    copy_dir(&repo.join("receipts/baselines"), &d.join("receipts/baselines"));
    // The two receipts the generic diff example compares.
    for name in ["old.json", "new.json"] {
        std::fs::copy(repo.join("receipts/baselines/tiny-256-gqa-i2_s.json"), d.join(name)).unwrap();
    }

    let mut ran = 0;
    for cmd in &cmds {
        if ELSEWHERE.iter().any(|(c, _)| c == cmd) {
            continue;
        }
        let mut w = words(cmd);
        let mut envs = Vec::new();
        while w.first().is_some_and(|x| x.contains('=') && !x.starts_with('-')) {
            let kv = w.remove(0);
            let (k, v) = kv.split_once('=').unwrap();
            envs.push((k.to_string(), v.to_string()));
        }
        // `cargo run [--release] -p harness [-- ARGS]` is the harness binary with ARGS.
        let args: Vec<String> = match w.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
            ["cargo", "run", rest @ ..] => {
                let rest: Vec<&str> = rest.iter().copied().filter(|x| *x != "--release").collect();
                assert_eq!(&rest[..2], ["-p", "harness"], "{cmd}");
                match rest.get(2) {
                    None => Vec::new(),
                    Some(&"--") => rest[3..].iter().map(|s| s.to_string()).collect(),
                    Some(other) => panic!("{cmd}: unexpected {other}"),
                }
            }
            _ => panic!("README command {cmd:?} is neither run here nor listed in ELSEWHERE"),
        };
        let out = Command::new(env!("CARGO_BIN_EXE_harness"))
            .current_dir(d)
            .args(&args)
            .envs(envs)
            .env_remove("BITNET_CPP_DIR")
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        let code = out.status.code();
        // The README's examples are meant to succeed on the fixtures.
        assert_eq!(
            code,
            Some(0),
            "README command {cmd:?} exited {code:?}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ran += 1;
    }
    assert!(ran >= 15, "ran only {ran} commands");
    // What the first session promises exists.
    assert!(d.join("first.html").is_file());
    assert!(d.join("diff.html").is_file());
    assert!(d.join("receipts/runs/tiny-256-gqa-i2_s.json").is_file());
}
