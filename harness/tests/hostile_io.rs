//! The file-system and process edges of the harness, each class with a test (see
//! docs/reliability.md): outputs onto special files, planted symlinks, endless input streams,
//! saved references that do not fit the model, thresholds from flags, default output paths,
//! control characters from receipts, environment variables, a worker that stops answering,
//! and machine paths in receipts.
//!
//! Device nodes are created only inside the test's own temporary folder and only as root
//! (otherwise that part says SKIPPED and why); the system's own `/dev` is never used.

mod common;

use std::io::Write;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::receipts::{
    code, edited, fixture, harness, read_json, rewrite_footer, run_receipt, stderr, stdout,
};
use serde_json::Value;

const MODEL: &str = "tiny-256-gqa-i2_s.gguf";

fn model() -> PathBuf {
    fixture(MODEL)
}

fn short(dir: &Path, out: &str, extra: &[&str]) -> Output {
    let m = model();
    let mut args =
        vec!["run", "--quiet", "--max-tokens", "4", "--prompt", "The sun", "--model", m.to_str().unwrap()];
    args.extend(["--out", out]);
    args.extend_from_slice(extra);
    harness(dir, &args)
}

/// One line of stderr, starting `error: `, that contains `needle`.
fn one_line_error(o: &Output, needle: &str) {
    let err = stderr(o);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected:\n{err}");
    assert!(lines[0].starts_with("error: ") && lines[0].contains(needle), "{err}");
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
}

fn mkfifo(path: &Path) {
    let ok = Command::new("mkfifo").arg(path).status().unwrap().success();
    assert!(ok, "mkfifo {}", path.display());
}

#[test]
fn outputs_onto_special_files_are_refused_and_left_as_they_were() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let fifo = d.join("fifo");
    mkfifo(&fifo);
    std::fs::create_dir(d.join("folder")).unwrap();
    let mut targets = vec![fifo.clone(), d.join("folder")];
    if is_root() {
        // A character device of our own: the null device's numbers, in the temp folder.
        let node = d.join("null-node");
        assert!(Command::new("mknod").arg(&node).args(["c", "1", "3"]).status().unwrap().success());
        targets.push(node);
    } else {
        eprintln!("SKIPPED the device-node part: mknod needs root");
    }
    // A symlink to a special file is refused the same way.
    std::os::unix::fs::symlink(&fifo, d.join("link-to-fifo")).unwrap();
    targets.push(d.join("link-to-fifo"));
    let receipt = run_receipt(d, "ok", &["--max-tokens", "2", "--prompt", "a"]);
    for target in &targets {
        let name = target.to_str().unwrap();
        let before = std::fs::symlink_metadata(target).unwrap().file_type();
        for (what, o) in [
            ("run --out", short(d, name, &[])),
            (
                "run --save-reference",
                short(d, &d.join("r.json").display().to_string(), &["--save-reference", name]),
            ),
        ] {
            assert_eq!(code(&o), 2, "{what} {name}: {}", stderr(&o));
            one_line_error(&o, "not a regular file");
        }
        for (what, o) in [
            ("report --out", harness(d, &["report", receipt.to_str().unwrap(), "--out", name])),
            (
                "diff --html",
                harness(d, &["diff", receipt.to_str().unwrap(), receipt.to_str().unwrap(), "--html", name]),
            ),
        ] {
            assert_eq!(code(&o), 2, "{what} {name}: {}", stderr(&o));
            one_line_error(&o, "not a regular file");
        }
        let after = std::fs::symlink_metadata(target).unwrap().file_type();
        assert_eq!(before, after, "{name} changed kind");
    }
    if let Some(node) = targets.iter().find(|p| p.ends_with("null-node")) {
        assert!(std::fs::metadata(node).unwrap().file_type().is_char_device());
    }
}

#[test]
fn a_symlink_at_the_output_is_replaced_and_its_target_kept() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let victim = d.join("victim.txt");
    std::fs::write(&victim, b"not ours").unwrap();
    let link = d.join("r.json");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let o = short(d, link.to_str().unwrap(), &[]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(std::fs::read(&victim).unwrap(), b"not ours");
    assert!(std::fs::symlink_metadata(&link).unwrap().is_file(), "the link itself was replaced");
    // No temporary file is left, and none is made under a name that could be planted.
    let names: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
}

#[test]
fn the_embedded_fixture_cache_does_not_follow_planted_links() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let cache = d.join("cache");
    let folder = cache.join("bitnet-parity");
    std::fs::create_dir_all(&folder).unwrap();
    let victim = d.join("victim.txt");
    std::fs::write(&victim, b"not ours").unwrap();
    let name = format!("embedded-{}-{MODEL}", env!("CARGO_PKG_VERSION"));
    std::os::unix::fs::symlink(&victim, folder.join(&name)).unwrap();
    let out = d.join("r.json");
    let o = Command::new(env!("CARGO_BIN_EXE_harness"))
        .current_dir(d)
        .args(["run", "--quiet", "--max-tokens", "2", "--prompt", "a", "--out", out.to_str().unwrap()])
        .env("XDG_CACHE_HOME", &cache)
        .env_remove("CROSSVAL_GGUF")
        .env_remove("BITNET_CPP_DIR")
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(std::fs::read(&victim).unwrap(), b"not ours");
    assert!(std::fs::symlink_metadata(folder.join(&name)).unwrap().is_file());
}

/// A writer that feeds `fifo` zeros until the reader goes away (or a time limit passes).
fn endless_writer(fifo: &Path) -> std::thread::JoinHandle<u64> {
    let fifo = fifo.to_path_buf();
    std::thread::spawn(move || {
        let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(&fifo) else { return 0 };
        let chunk = vec![0u8; 1 << 20];
        let started = Instant::now();
        let mut sent = 0u64;
        while started.elapsed() < Duration::from_secs(60) {
            match f.write_all(&chunk) {
                Ok(()) => sent += chunk.len() as u64,
                Err(_) => break,
            }
        }
        sent
    })
}

#[test]
fn endless_streams_end_in_one_line_not_in_exhausted_memory() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let receipt = run_receipt(d, "ok", &["--max-tokens", "2", "--prompt", "a"]);
    let r = receipt.to_str().unwrap();
    let fifo = d.join("endless");
    let f = fifo.to_str().unwrap();
    let m = model();
    let m = m.to_str().unwrap();
    // (command, expected exit, what the message names)
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["gate", r, "--thresholds", f], 7, "a thresholds file"),
        (
            vec!["run", "--quiet", "--model", m, "--prompts", f, "--out", "x.json"],
            2,
            "a prompts or corpus file",
        ),
        (vec!["gate", f], 2, "a receipt"),
        (vec!["report", f, "--out", "x.html"], 2, "a receipt"),
        (vec!["diff", r, f], 2, "a receipt"),
    ];
    for (args, want, what) in cases {
        mkfifo(&fifo);
        let writer = endless_writer(&fifo);
        let started = Instant::now();
        let o = harness(d, &args);
        assert_eq!(code(&o), want, "{args:?}: {}", stderr(&o));
        one_line_error(&o, &format!("too large for {what}"));
        assert!(started.elapsed() < Duration::from_secs(60), "{args:?} took {:?}", started.elapsed());
        // Unblock a writer still waiting in open() (a non-blocking read open never waits).
        use std::os::unix::fs::OpenOptionsExt;
        const O_NONBLOCK: i32 = 0o4000;
        drop(std::fs::OpenOptions::new().read(true).custom_flags(O_NONBLOCK).open(&fifo));
        writer.join().unwrap();
        std::fs::remove_file(&fifo).unwrap();
    }
    // A saved reference is read by seeking: a stream is refused before anything is read.
    mkfifo(&fifo);
    let o = harness(d, &["run", "--quiet", "--model", m, "--reference", f, "--out", "y.json"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    one_line_error(&o, "not a regular file");
}

#[test]
fn saved_references_are_checked_against_the_model() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let saved = d.join("ref.bin");
    let m = model();
    let m = m.to_str().unwrap();
    let args = ["--prompt", "The sun rises", "--continue", "8", "--save-reference", saved.to_str().unwrap()];
    let live = read_json(&run_receipt(d, "live", &[&["--model", m], &args[..]].concat()));
    let saved_positions = live["summary"]["positions"].as_u64().unwrap();

    // Replaying without repeating --continue compares everything saved.
    let replay =
        read_json(&run_receipt(d, "replay", &["--model", m, "--reference", saved.to_str().unwrap()]));
    assert_eq!(replay["summary"]["positions"].as_u64(), Some(saved_positions));
    assert_eq!(replay["settings"]["continue_tokens"], 8);
    // Fewer positions, asked for: said so. More than saved: refused.
    let out = d.join("fewer.json");
    let o = harness(
        d,
        &[
            "run",
            "--model",
            m,
            "--reference",
            saved.to_str().unwrap(),
            "--max-tokens",
            "3",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("comparing 3 of the {saved_positions} positions saved")),
        "{}",
        stderr(&o)
    );
    let o = harness(
        d,
        &[
            "run",
            "--quiet",
            "--model",
            m,
            "--reference",
            saved.to_str().unwrap(),
            "--continue",
            "50",
            "--out",
            "more.json",
        ],
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    one_line_error(&o, "positions");

    // A footer whose n_vocab or token ids do not fit the model.
    let bad = d.join("bad.bin");
    std::fs::copy(&saved, &bad).unwrap();
    rewrite_footer(&bad, |f: &mut Value| f["n_vocab"] = Value::from(12));
    let o = harness(
        d,
        &["run", "--quiet", "--model", m, "--reference", bad.to_str().unwrap(), "--out", "b.json"],
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    std::fs::copy(&saved, &bad).unwrap();
    rewrite_footer(&bad, |f: &mut Value| f["cases"][0]["token_ids"][1] = Value::from(1_000_000));
    let o = harness(
        d,
        &["run", "--quiet", "--model", m, "--reference", bad.to_str().unwrap(), "--out", "b.json"],
    );
    assert_eq!(code(&o), 6, "{}", stderr(&o));
    one_line_error(&o, "outside the vocabulary");
}

#[test]
fn thresholds_from_flags_are_checked_like_a_thresholds_file() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    for bad in ["-5", "1.01", "NaN", "inf", "-inf", "x"] {
        let flag = format!("--min-cosine={bad}");
        let o = short(d, "r.json", &[&flag]);
        assert_eq!(code(&o), 2, "{flag}: {}", stderr(&o));
        let flag = format!("--trace-min-cosine={bad}");
        let o = short(d, "r.json", &[&flag]);
        assert_eq!(code(&o), 2, "{flag}: {}", stderr(&o));
    }
    // The boundaries are accepted, and the receipt then validates (gate reads it).
    for ok in ["-1", "1"] {
        let flag = format!("--min-cosine={ok}");
        let o = short(d, "r.json", &[&flag]);
        assert!([0, 1].contains(&code(&o)), "{flag}: {}", stderr(&o));
        let g = harness(d, &["gate", "r.json"]);
        assert!([0, 1].contains(&code(&g)), "{flag}: the receipt must read back: {}", stderr(&g));
    }
}

#[test]
fn default_output_paths_never_equal_an_input() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let receipt = run_receipt(d, "r", &["--max-tokens", "2", "--prompt", "a"]);
    // A receipt named *.html: its report goes beside it, not over it.
    let html_named = d.join("r.html");
    std::fs::copy(&receipt, &html_named).unwrap();
    let before = std::fs::read(&html_named).unwrap();
    let o = harness(d, &["report", html_named.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(std::fs::read(&html_named).unwrap(), before);
    assert!(d.join("r.report.html").is_file());
    // An explicit output that is an input is refused, whatever its spelling.
    let o = harness(d, &["report", "r.json", "--out", "./r.json"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    one_line_error(&o, "is the input");
    let o = harness(d, &["diff", "r.json", "r.json", "--html", "r.json"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let m = model();
    let o = short(d, m.to_str().unwrap(), &[]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    one_line_error(&o, "is the input");
}

#[test]
fn control_characters_from_receipts_never_reach_the_terminal() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let receipt = run_receipt(d, "r", &["--max-tokens", "2", "--prompt", "a"]);
    let evil = edited(&receipt, d, "evil.json", |v| {
        v["model"]["path"] = Value::from("m\u{1b}]0;pwned\u{7}\u{1b}[2J.gguf");
        v["cases"][0]["prompt"] = Value::from("a\u{1b}[31mred\r");
    });
    for args in [
        vec!["gate", evil.to_str().unwrap()],
        vec!["diff", receipt.to_str().unwrap(), evil.to_str().unwrap()],
    ] {
        let o = harness(d, &args);
        let out = stdout(&o) + &stderr(&o);
        assert!(
            !out.contains('\u{1b}') && !out.contains('\u{7}') && !out.contains('\r'),
            "{args:?}: {out:?}"
        );
    }
    let o = harness(d, &["gate", evil.to_str().unwrap()]);
    assert!(stdout(&o).contains("m\\x1b]0;pwned\\x07\\x1b[2J.gguf"), "escapes shown: {}", stdout(&o));
    // An error naming a field of a bad receipt, too.
    let bad = d.join("bad\u{1b}[2J.json");
    std::fs::write(&bad, b"{").unwrap();
    let o = harness(d, &["gate", bad.to_str().unwrap()]);
    assert_eq!(code(&o), 2);
    assert!(!stderr(&o).contains('\u{1b}'), "{:?}", stderr(&o));
}

#[test]
fn environment_variables_that_mean_nothing_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    for (var, value) in
        [("BITNET_QK256_IMPL", "fastest"), ("BITNET_I2S_FLAVOR", "zz"), ("BITNET_CPP_LOG", "loud")]
    {
        let o = Command::new(env!("CARGO_BIN_EXE_harness"))
            .current_dir(d)
            .args(["inspect", model().to_str().unwrap()])
            .env(var, value)
            .output()
            .unwrap();
        assert_eq!(code(&o), 2, "{var}={value}: {}", stderr(&o));
        one_line_error(&o, value);
    }
    // An empty corpus would agree 100 % on nothing.
    std::fs::write(d.join("empty.txt"), b"# only a comment\n").unwrap();
    let o = harness(d, &["tokenize-check", "--model", model().to_str().unwrap(), "--corpus", "empty.txt"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    one_line_error(&o, "holds no strings");
    // A context beyond the model's is refused up front (the reference would allocate it).
    let o = short(d, "r.json", &["--n-ctx", "100000000"]);
    assert_eq!(code(&o), 6, "{}", stderr(&o));
    one_line_error(&o, "context_length");
}

#[test]
fn a_worker_that_stops_answering_is_detected() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let out = d.join("r.json");
    let m = model();
    // Long enough (thousands of positions) that the worker is surely stopped mid-run.
    std::fs::write(d.join("many.txt"), "The quick brown fox jumps over the lazy dog.\n".repeat(40)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_harness"))
        .current_dir(d)
        .args([
            "run",
            "--quiet",
            "--model",
            m.to_str().unwrap(),
            "--prompts",
            "many.txt",
            "--continue",
            "150",
            "--out",
            out.to_str().unwrap(),
        ])
        .env_remove("CROSSVAL_GGUF")
        .env_remove("BITNET_CPP_DIR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The worker is the harness's child running `cpp-worker`.
    let worker = loop {
        let found = std::fs::read_to_string(format!("/proc/{}/task/{}/children", child.id(), child.id()))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
            .find(|p| {
                std::fs::read_to_string(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.contains("cpp-worker"))
            });
        if let Some(w) = found {
            break w;
        }
        assert!(child.try_wait().unwrap().is_none(), "the run ended before its worker was seen");
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(300));
    assert!(Command::new("kill").args(["-STOP", &worker.to_string()]).status().unwrap().success());
    let started = Instant::now();
    let status = child.wait().unwrap();
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
    assert_eq!(status.code(), Some(0));
    let r = read_json(&out);
    assert_eq!(r["verdict"]["status"], "incomplete", "{}", r["run_state"]);
    let why = r["run_state"]["reference_failure"].as_str().unwrap_or_default();
    assert!(why.contains("stopped answering") && why.contains("is stopped"), "{why}");
    assert!(!Path::new(&format!("/proc/{worker}")).exists(), "the stopped worker was killed");
}

#[test]
fn receipts_carry_no_machine_paths() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let r = read_json(&run_receipt(d, "r", &["--max-tokens", "2", "--prompt", "a"]));
    let reference = &r["engines"]["reference"];
    let lib = reference["library_path"].as_str().unwrap();
    assert!(lib.starts_with("$TARGET/bitnet-cpp-ref/"), "{lib}");
    let flags = reference["flags"].to_string();
    assert!(flags.contains("$BITNET_CPP/3rdparty/llama.cpp/include"), "{flags}");
    for machine in [std::env::var("HOME").unwrap_or_default(), env!("CARGO_MANIFEST_DIR").to_string()] {
        if machine.len() > 1 {
            assert!(
                !flags.contains(&format!("{machine}/")) && !lib.contains(&format!("{machine}/")),
                "{machine}"
            );
        }
    }
}
