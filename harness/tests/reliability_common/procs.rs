//! Processes for the reliability tests: the harness binary, its children (found through
//! /proc), signals (sent with the `kill` command, so the tests need no `unsafe`), and a wait
//! that turns a hang into a test failure naming the case instead of a stuck CI job.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The harness binary cargo built for these tests.
pub fn harness() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_harness"));
    // Reference logs are noise here; errors still come through.
    c.env("BITNET_CPP_LOG", "error");
    c.env_remove("CROSSVAL_GGUF");
    c
}

/// What a finished process left.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// Longest any single harness invocation in these tests may take before it counts as hung.
/// Not a timing assertion: normal runs take well under a second to a few seconds; this only
/// keeps a hang from stalling CI for hours.
pub const HANG_LIMIT: Duration = Duration::from_secs(300);

/// Runs `cmd` to completion with piped output; a run longer than [`HANG_LIMIT`] is killed
/// and reported as a hang of `what`.
pub fn run(mut cmd: Command, what: &str) -> Finished {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    wait(child, what)
}

/// Waits for `child` (stdout and stderr piped), killing it past [`HANG_LIMIT`].
pub fn wait(mut child: Child, what: &str) -> Finished {
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if started.elapsed() > HANG_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {HANG_LIMIT:?}: a hang");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Finished { status, stdout: t_out.join().unwrap(), stderr: t_err.join().unwrap() }
}

/// Sends `signal` (a name such as `INT`, `KILL`, `ABRT`) to process `pid`.
pub fn signal(pid: u32, signal: &str) {
    let st = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().expect("kill");
    assert!(st.success(), "kill -{signal} {pid} failed");
}

/// Direct children of `pid` (from /proc/PID/task/*/children).
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    for t in tasks.flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(s.split_whitespace().filter_map(|x| x.parse::<u32>().ok()));
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// The command line of `pid`, arguments joined by spaces.
pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// The `cpp-worker` child of the harness process `pid`, once it exists.
pub fn worker_of(pid: u32) -> Option<u32> {
    children(pid).into_iter().find(|&c| cmdline(c).contains("cpp-worker"))
}

/// Every `*.tmp` or dot-file left in `dir` (a half-written file would show up here).
pub fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.') || n.ends_with(".tmp"))
                .collect()
        })
        .unwrap_or_default()
}
