//! Crash and interrupt safety of `harness run`, with real signals and a real full filesystem:
//! the receipt is either written complete — recording the crash or interruption and keeping
//! the positions done so far — or not written at all; never half a file.
//!
//! - the reference worker killed (SIGKILL) or aborting (SIGABRT) mid-run;
//! - Ctrl-C (SIGINT to the harness's process group, as a terminal sends it) and SIGTERM;
//! - a full disk: a 64 KiB tmpfs (needs root to mount; otherwise that test says SKIPPED and
//!   why) and, without root, a file-size limit (`ulimit -f`), which fails the same writes.

mod reliability_common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use reliability_common::procs::{self, Finished};
use serde_json::Value;

/// A prompts file long enough that a run is still going when the test intervenes.
fn many_prompts(dir: &Path) -> PathBuf {
    let words = ["the sun", "a river", "over the hills", "slowly", "and then", "bright stars", "we went"];
    let lines: Vec<String> = (0..600)
        .map(|i| format!("{} {} {} {}", words[i % 7], words[(i / 7) % 7], i, words[(i * 3 + 1) % 7]))
        .collect();
    let path = dir.join("prompts.txt");
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

/// `harness run` on the default fixture with many prompts, each continued for 64 tokens (so
/// that a release build, whose progress lines come every 2 s, is still running when the test
/// intervenes), in its own process group (like a job a shell starts), progress lines on
/// stderr.
fn start_long_run(dir: &Path, out: &Path) -> std::process::Child {
    let mut cmd = procs::harness();
    cmd.arg("run")
        .arg("--model")
        .arg(fixture())
        .arg("--prompts")
        .arg(many_prompts(dir))
        .arg("--continue")
        .arg("64")
        .arg("--out")
        .arg(out);
    cmd.process_group(0).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.spawn().expect("spawn harness run")
}

/// Waits until the run has finished `n` cases (a progress line of a later case), then
/// calls `act`; returns what the process left once it exits.
fn intervene_after_cases(mut child: std::process::Child, n: usize, act: impl FnOnce(u32)) -> Finished {
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap_or_default();
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    // "case 3/600: …" per case, or, on long runs, throttled "case 1,234/5,000, position …".
    let case_of = |line: &str| -> Option<usize> {
        let rest = line.strip_prefix("case ")?;
        rest[..rest.find('/')?].replace(',', "").parse().ok()
    };
    let mut seen = false;
    for line in rx.iter() {
        if case_of(&line).is_some_and(|c| c > n) {
            seen = true;
            break;
        }
    }
    assert!(seen, "the run ended before case {}", n + 1);
    act(child.id());
    let mut out = child.stdout.take().unwrap();
    let stdout = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    // Drain the channel so the reader never blocks.
    std::thread::spawn(move || rx.iter().for_each(drop));
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    Finished { status, stdout: stdout.join().unwrap(), stderr: reader.join().unwrap() }
}

fn read_receipt(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("no receipt at {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("receipt is not complete JSON: {e}"))
}

/// Positions kept in the receipt, and a check that every case but the last is whole.
fn positions_kept(receipt: &Value) -> usize {
    let cases = receipt["cases"].as_array().unwrap();
    for c in &cases[..cases.len().saturating_sub(1)] {
        let ids = c["token_ids"].as_array().unwrap().len();
        assert_eq!(c["positions"].as_array().unwrap().len(), ids, "an earlier case lost positions");
    }
    cases.iter().map(|c| c["positions"].as_array().unwrap().len()).sum()
}

fn worker_killed(signal: &str, number: i32) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("receipt.json");
    let child = start_long_run(dir.path(), &out);
    let mut victim = None;
    let done = intervene_after_cases(child, 3, |pid| {
        let w = procs::worker_of(pid).expect("the harness has a cpp-worker child");
        procs::signal(w, signal);
        victim = Some(w);
    });
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    let receipt = read_receipt(&out);
    let failure = receipt["run_state"]["reference_failure"].as_str().expect("reference_failure recorded");
    eprintln!(
        "SIG{signal} to the worker: {} cases, {} positions kept; reference_failure: {failure}",
        receipt["cases"].as_array().unwrap().len(),
        positions_kept(&receipt)
    );
    assert!(
        failure.contains(&format!("signal {number}")) && failure.contains(&format!("SIG{signal}")),
        "{failure}"
    );
    assert_eq!(receipt["run_state"]["completed"], false);
    assert_eq!(receipt["run_state"]["interrupted"], false);
    assert_eq!(receipt["verdict"]["status"], "incomplete");
    assert!(receipt["verdict"]["reasons"].to_string().contains("reference failed"));
    assert!(receipt["cases"].as_array().unwrap().len() >= 3, "the cases done were dropped");
    assert!(positions_kept(&receipt) > 0);
    assert!(procs::leftovers(dir.path()).is_empty(), "{:?}", procs::leftovers(dir.path()));
    // The table printed says so too.
    assert!(done.stdout.contains("receipt: "), "{}", done.stdout);
    assert!(victim.is_some());
}

#[test]
fn worker_killed_by_sigkill_mid_run() {
    worker_killed("KILL", 9);
}

#[test]
fn worker_aborting_mid_run() {
    worker_killed("ABRT", 6);
}

fn interrupted(signal: &str, to_group: bool) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("receipt.json");
    let child = start_long_run(dir.path(), &out);
    let mut worker = None;
    let done = intervene_after_cases(child, 3, |pid| {
        worker = procs::worker_of(pid);
        // A terminal's Ctrl-C goes to the whole foreground process group.
        let target = if to_group { format!("-{pid}") } else { pid.to_string() };
        let st = Command::new("kill").arg(format!("-{signal}")).arg("--").arg(&target).status().unwrap();
        assert!(st.success());
    });
    assert_eq!(done.code(), Some(130), "{}", done.stderr);
    let receipt = read_receipt(&out);
    assert_eq!(receipt["run_state"]["interrupted"], true);
    eprintln!(
        "SIG{signal} to the harness: {} cases, {} positions kept; verdict {}",
        receipt["cases"].as_array().unwrap().len(),
        positions_kept(&receipt),
        receipt["verdict"]
    );
    assert_eq!(receipt["run_state"]["completed"], false);
    assert!(receipt["run_state"]["reference_failure"].is_null(), "{}", receipt["run_state"]);
    assert_eq!(receipt["verdict"]["status"], "incomplete");
    assert!(receipt["cases"].as_array().unwrap().len() >= 3);
    assert!(positions_kept(&receipt) > 0);
    assert!(procs::leftovers(dir.path()).is_empty());
    // The worker (in its own process group, untouched by the signal) was shut down cleanly.
    let w = worker.expect("worker seen");
    assert!(!Path::new(&format!("/proc/{w}")).exists(), "worker {w} outlived the harness");
}

#[test]
fn ctrl_c_writes_a_complete_receipt_and_exits_130() {
    interrupted("INT", true);
}

#[test]
fn sigterm_writes_a_complete_receipt_and_exits_130() {
    interrupted("TERM", false);
}

fn fixture() -> PathBuf {
    let spec = &bitnet_fixtures::spec::committed()[0];
    bitnet_fixtures::committed_dir().join(bitnet_fixtures::file_name(spec, bitnet_fixtures::WeightForm::I2S))
}

/// A short run whose outputs go to `dir`; returns what it left.
fn short_run(dir: &Path, extra: &[&str], wrap: Option<&str>) -> Finished {
    let exe = env!("CARGO_BIN_EXE_harness");
    let mut args: Vec<String> =
        ["run", "--quiet", "--max-tokens", "4", "--prompt", "The sun rises"].map(String::from).to_vec();
    args.extend(["--out".into(), dir.join("receipt.json").display().to_string()]);
    // An explicit model: the embedded default would first be written to the temp folder.
    args.extend(["--model".into(), fixture().display().to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let cmd = match wrap {
        // The limit applies to the harness alone; SIGXFSZ ignored so writes fail with EFBIG.
        Some(shell) => {
            let mut c = Command::new("bash");
            c.arg("-c").arg(format!("{shell}; exec \"$0\" \"$@\"")).arg(exe).args(&args);
            c.env("BITNET_CPP_LOG", "error").env_remove("CROSSVAL_GGUF");
            c
        }
        None => {
            let mut c = procs::harness();
            c.args(&args);
            c
        }
    };
    procs::run(cmd, "harness run (full disk)")
}

/// The checks of a run that could not write its receipt.
fn assert_clean_output_failure(done: &Finished, dir: &Path, old_receipt: &[u8]) {
    assert_eq!(done.code(), Some(8), "exit code for an unwritable receipt\n{}", done.stderr);
    let lines: Vec<&str> = done.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", done.stderr);
    assert!(lines[0].starts_with("error: cannot write "), "{}", lines[0]);
    // The previous receipt is untouched and nothing half-written is left.
    assert_eq!(std::fs::read(dir.join("receipt.json")).unwrap(), old_receipt);
    assert!(procs::leftovers(dir).is_empty(), "{:?}", procs::leftovers(dir));
}

/// A mounted tmpfs, unmounted when dropped.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs(dir))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

/// Fills the filesystem of `dir` until at most `leave` bytes are free.
fn fill(dir: &Path, leave: u64) {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let block = vec![0x5Au8; 1024];
    loop {
        if free_bytes(dir) <= leave {
            break;
        }
        if f.write_all(&block).and_then(|()| f.sync_all()).is_err() {
            break;
        }
    }
}

fn free_bytes(dir: &Path) -> u64 {
    let out = Command::new("df").arg("-B1").arg("--output=avail").arg(dir).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().nth(1).unwrap().trim().parse().unwrap()
}

#[test]
fn a_full_disk_leaves_the_old_receipt_or_nothing() {
    let fs = match Tmpfs::mount("64k") {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!(
                "SKIPPED a_full_disk_leaves_the_old_receipt_or_nothing: cannot mount a tmpfs ({why}); \
                 it needs root. The file-size-limit test below covers the same code without root."
            );
            return;
        }
    };
    let dir = fs.path();
    let old = b"{\"an\": \"earlier receipt\"}\n".to_vec();
    std::fs::write(dir.join("receipt.json"), &old).unwrap();

    // Completely full: not even the first block of the temporary file can be written.
    fill(dir, 0);
    let done = short_run(dir, &[], None);
    assert_clean_output_failure(&done, dir, &old);
    assert!(done.stderr.contains("No space left on device"), "{}", done.stderr);

    // Nearly full: the first 4 KiB of the receipt fit, the rest does not (a half file would
    // be left without the atomic write).
    std::fs::remove_file(dir.join("filler")).unwrap();
    fill(dir, 4096);
    assert!(free_bytes(dir) > 0);
    let done = short_run(dir, &[], None);
    assert_clean_output_failure(&done, dir, &old);

    // A saved reference on the same full disk: refused the same way, nothing left behind.
    let saved = dir.join("reference.bin").display().to_string();
    let done = short_run(dir, &["--save-reference", &saved], None);
    assert_clean_output_failure(&done, dir, &old);
    assert!(!Path::new(&saved).exists());
}

#[test]
fn a_file_size_limit_leaves_the_old_receipt_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let old = b"{\"an\": \"earlier receipt\"}\n".to_vec();
    std::fs::write(dir.path().join("receipt.json"), &old).unwrap();
    // 4 blocks of 1 KiB: less than any receipt.
    let done = short_run(dir.path(), &[], Some("ulimit -f 4; trap '' XFSZ"));
    assert_clean_output_failure(&done, dir.path(), &old);
    assert!(done.stderr.contains("File too large"), "{}", done.stderr);
}

/// SIGKILL to the harness itself cannot be caught: no receipt is written (an earlier one is
/// left intact), and the worker, whose requests pipe closes, exits by itself instead of
/// lingering as an orphan.
#[test]
fn harness_killed_leaves_no_receipt_and_no_orphan_worker() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("receipt.json");
    let old = b"{\"an\": \"earlier receipt\"}\n".to_vec();
    std::fs::write(&out, &old).unwrap();
    let child = start_long_run(dir.path(), &out);
    let mut worker = None;
    let done = intervene_after_cases(child, 3, |pid| {
        worker = procs::worker_of(pid);
        procs::signal(pid, "KILL");
    });
    assert_eq!(done.code(), None, "killed by a signal");
    assert_eq!(std::fs::read(&out).unwrap(), old);
    assert!(procs::leftovers(dir.path()).is_empty(), "{:?}", procs::leftovers(dir.path()));
    let w = worker.expect("worker seen");
    let started = std::time::Instant::now();
    // A zombie (state Z) has exited; its parent is gone, so only init can reap it.
    let alive = || {
        std::fs::read_to_string(format!("/proc/{w}/stat"))
            .map(|s| s.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
            .unwrap_or(false)
    };
    while alive() {
        assert!(started.elapsed() < procs::HANG_LIMIT, "worker {w} outlived the killed harness");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
