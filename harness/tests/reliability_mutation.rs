//! The committed fixtures corrupted thousands of ways (bit flips, truncations, counts and
//! lengths set to huge values, offsets moved, types swapped, hyper-parameters and data
//! poisoned), each loaded the way `inspect` and `run` load a model: every case must end in a
//! typed error or a successful load — never a panic, an abort, a hang, or an allocation beyond
//! a small multiple of the file's size.
//!
//! Deterministic: the cases are a pure function of [`SEED`] and the fixtures; a failure prints
//! the fixture, case number and kind, and `RELIABILITY_CASE=fixture:case` replays one case.

#[path = "reliability_common/alloc.rs"]
mod alloc;
mod reliability_common;

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bitnet_engine::gguf::GgufFile;
use bitnet_engine::model::{Model, ModelOptions};
use bitnet_engine::tokenizer::Tokenizer;
use reliability_common::gguf_map::{self, GgufMap};
use reliability_common::mutate::{self, Kind};
use reliability_common::procs;

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

const SEED: u64 = 0x0B17_5EED_0007;
/// In-process cases per committed fixture (two fixtures: 6000 files).
const CASES_PER_FIXTURE: u64 = 3000;
/// Peak allocation allowed while loading a file: this many times its size. Measured worst
/// cases (see `hostile_headers_...`): a count the reader lets through because the remaining
/// bytes could hold it costs ~4.3 times the file before the lie is found (a metadata entry
/// takes 56 bytes in memory for 13 on disk); a flood of the smallest I2_S tensors costs ~8.5
/// times, mostly `inspect`'s report (~500 bytes per 100-byte tensor)...
const ALLOC_FACTOR: usize = 10;
/// ...plus this much for fixed costs (error messages, hash tables' first buckets, the model's
/// scratch and a 32-position KV cache for the tiny fixtures).
const ALLOC_SLACK: usize = 256 << 10;

struct Fixture {
    name: String,
    bytes: Vec<u8>,
    map: GgufMap,
}

fn fixtures() -> Vec<Fixture> {
    bitnet_fixtures::spec::committed()
        .iter()
        .map(|spec| {
            let name = bitnet_fixtures::file_name(spec, bitnet_fixtures::WeightForm::I2S);
            let bytes =
                std::fs::read(bitnet_fixtures::committed_dir().join(&name)).expect("committed fixture");
            let map = gguf_map::map(&bytes);
            Fixture { name, bytes, map }
        })
        .collect()
}

/// How far a corrupted file got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    /// The GGUF reader refused it.
    Gguf,
    /// The reader accepted it; the tokenizer refused it.
    Tokenizer,
    /// The model loader refused it.
    Model,
    /// Everything loaded and two tokens were evaluated.
    Ran,
    /// Everything loaded, and `inspect` flagged corrupt I2_S tensors (`run` would judge the
    /// file invalid input).
    RanFlagged,
}

/// What `inspect` and `run` do with a file before any comparison: parse, describe (text and
/// JSON, I2_S flavour and integrity), tokenizer, model, and two evaluated tokens.
fn load_like_the_harness(bytes: Vec<u8>) -> Stage {
    let Ok(file) = GgufFile::from_bytes(bytes, "mutated.gguf") else { return Stage::Gguf };
    let report = harness::inspect::describe(&file);
    // `inspect --json` streams the report to stdout.
    serde_json::to_writer_pretty(std::io::sink(), &report).expect("an inspect report always serializes");
    let flagged = !report.corrupt_i2s_tensors.is_empty();
    let tokenizer = match Tokenizer::from_gguf(&file) {
        Ok(t) => t,
        Err(_) => return Stage::Tokenizer,
    };
    let ids = tokenizer.encode("Hello, world! 12 € \u{1F600}", true, false);
    let _ = tokenizer.decode(&ids);
    let Ok(mut model) = Model::load(&file, ModelOptions { n_ctx: 32, ..ModelOptions::default() }) else {
        return Stage::Model;
    };
    let n_vocab = model.config().n_vocab as u32;
    for (pos, &id) in ids.iter().take(2).enumerate() {
        // Ids from the file's tokenizer may exceed a corrupted model's vocabulary: a typed error.
        let _ = model.eval(id % n_vocab, pos);
    }
    if flagged {
        Stage::RanFlagged
    } else {
        Stage::Ran
    }
}

struct Failure {
    what: String,
    message: String,
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string panic)".into())
}

/// One case: panics are caught and recorded, allocation is measured.
fn run_case(
    fx: &Fixture,
    i: u64,
    stats: &mut BTreeMap<(Kind, Stage), u64>,
    worst: &mut (f64, String),
) -> Option<Failure> {
    let (kind, bytes) = mutate::case(&fx.bytes, &fx.map, SEED, i);
    let what = format!("{} case {i} ({kind:?}, {} bytes)", fx.name, bytes.len());
    let len = bytes.len();
    let base = alloc::start();
    let result = catch_unwind(AssertUnwindSafe(|| load_like_the_harness(bytes)));
    let peak = alloc::peak_since(base);
    match result {
        Err(p) => Some(Failure { what, message: format!("panicked: {}", panic_message(&*p)) }),
        Ok(stage) => {
            *stats.entry((kind, stage)).or_default() += 1;
            // The ratio means something for real-sized files; tiny ones live on the slack.
            let ratio = peak as f64 / len.max(1) as f64;
            if len >= 64 << 10 && ratio > worst.0 {
                *worst = (ratio, format!("{what}: {peak} bytes"));
            }
            (peak > ALLOC_FACTOR * len + ALLOC_SLACK).then(|| Failure {
                what,
                message: format!(
                    "allocated {peak} bytes at the peak, more than {ALLOC_FACTOR} × {len} + {ALLOC_SLACK}"
                ),
            })
        }
    }
}

/// Aborts the whole test binary, naming the case, if no case finishes for `limit`: a hang must
/// fail CI with a message, not stall it.
fn watchdog(progress: Arc<AtomicU64>, current: Arc<std::sync::Mutex<String>>, limit: Duration) {
    std::thread::spawn(move || {
        let mut last = u64::MAX;
        loop {
            std::thread::sleep(limit);
            let now = progress.load(Ordering::Relaxed);
            if now == u64::MAX {
                return;
            }
            if now == last {
                eprintln!("HANG: no case finished in {limit:?}; stuck on {}", current.lock().unwrap());
                std::process::abort();
            }
            last = now;
        }
    });
}

#[test]
fn thousands_of_corrupted_fixtures_load_or_fail_cleanly() {
    let fixtures = fixtures();
    // Only one case, when replaying: RELIABILITY_CASE=tiny-256-gqa-i2_s.gguf:123
    let only = std::env::var("RELIABILITY_CASE").ok().and_then(|s| {
        let (f, i) = s.rsplit_once(':')?;
        Some((f.to_string(), i.parse::<u64>().ok()?))
    });
    let progress = Arc::new(AtomicU64::new(0));
    let current = Arc::new(std::sync::Mutex::new(String::new()));
    watchdog(Arc::clone(&progress), Arc::clone(&current), Duration::from_secs(120));

    // The panic hook would print every caught panic; keep the output for the summary below.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));

    let mut stats = BTreeMap::new();
    let mut failures = Vec::new();
    let mut worst = (0.0, String::new());
    let mut total = 0u64;
    for fx in &fixtures {
        // The unmodified file loads completely.
        assert_eq!(load_like_the_harness(fx.bytes.clone()), Stage::Ran, "{} must load", fx.name);
        for i in 0..CASES_PER_FIXTURE {
            if let Some((f, c)) = &only {
                if f != &fx.name || *c != i {
                    continue;
                }
            }
            *current.lock().unwrap() = format!("{} case {i}", fx.name);
            if let Some(f) = run_case(fx, i, &mut stats, &mut worst) {
                failures.push(f);
            }
            total += 1;
            progress.fetch_add(1, Ordering::Relaxed);
        }
    }
    progress.store(u64::MAX, Ordering::Relaxed);
    std::panic::set_hook(hook);

    eprintln!(
        "{total} corrupted files; outcome per corruption kind \
         (refused by reader / tokenizer / model; ran; ran and flagged corrupt I2_S):"
    );
    for kind in mutate::KINDS {
        let n = |s| stats.get(&(kind, s)).copied().unwrap_or(0);
        eprintln!(
            "  {:<18} {:>5} {:>5} {:>5} {:>5} {:>5}",
            format!("{kind:?}"),
            n(Stage::Gguf),
            n(Stage::Tokenizer),
            n(Stage::Model),
            n(Stage::Ran),
            n(Stage::RanFlagged)
        );
    }
    eprintln!("highest peak allocation / file size (files of 64 KiB or more): {:.3} ({})", worst.0, worst.1);

    for f in failures.iter().take(20) {
        eprintln!("FAILED {}: {}", f.what, f.message);
    }
    assert!(failures.is_empty(), "{} of {total} cases failed (first ones above)", failures.len());
    if only.is_none() {
        assert!(total >= 5000, "only {total} cases");
        // The corruptions must really corrupt: every kind is refused somewhere, and the
        // reader alone does not refuse everything (later stages get exercised too).
        for kind in mutate::KINDS {
            // Poisoned data loads by design; `inspect` must flag it instead.
            let caught = if kind == Kind::PoisonedData {
                vec![Stage::RanFlagged]
            } else {
                vec![Stage::Gguf, Stage::Tokenizer, Stage::Model]
            };
            let n: u64 = caught.iter().map(|&s| stats.get(&(kind, s)).copied().unwrap_or(0)).sum();
            assert!(n > 0, "{kind:?} never produced a refused (or flagged) file");
        }
        for stage in [Stage::Tokenizer, Stage::Model, Stage::Ran, Stage::RanFlagged] {
            assert!(stats.iter().any(|(&(_, s), &n)| s == stage && n > 0), "no case reached {stage:?}");
        }
    }
}

/// A few hundred of the same corruptions through the real binary (memory-mapped from disk,
/// text and JSON output): exit 0 or 2, one line of error, never a panic or a signal.
#[test]
fn corrupted_fixtures_through_harness_inspect() {
    let dir = tempfile::tempdir().unwrap();
    let mut codes = BTreeMap::new();
    for fx in fixtures() {
        for i in 0..150u64 {
            // Other cases than the in-process test's first ones.
            let (kind, bytes) = mutate::case(&fx.bytes, &fx.map, SEED ^ 0xB1, i);
            let path = dir.path().join(format!("case-{i}.gguf"));
            std::fs::write(&path, &bytes).unwrap();
            let json = i % 2 == 1;
            let mut cmd = procs::harness();
            cmd.arg("inspect").arg(&path);
            if json {
                cmd.arg("--json");
            }
            let what = format!(
                "harness inspect{} on {} case {i} ({kind:?})",
                if json { " --json" } else { "" },
                fx.name
            );
            let out = procs::run(cmd, &what);
            assert!(!out.stderr.contains("panicked"), "{what}: {}", out.stderr);
            *codes.entry(out.code()).or_insert(0u32) += 1;
            match out.code() {
                Some(0) => {
                    assert!(out.stderr.is_empty(), "{what}: {}", out.stderr);
                    if json {
                        let v: serde_json::Value = serde_json::from_str(&out.stdout)
                            .unwrap_or_else(|e| panic!("{what}: stdout is not JSON: {e}"));
                        assert!(v["tensors"].is_array(), "{what}");
                    }
                }
                Some(2) => {
                    assert!(out.stdout.is_empty(), "{what}: {}", out.stdout);
                    let lines: Vec<&str> = out.stderr.lines().collect();
                    assert_eq!(lines.len(), 1, "{what}: one line of error expected:\n{}", out.stderr);
                    assert!(lines[0].starts_with("error: "), "{what}: {}", lines[0]);
                }
                other => panic!("{what}: exit {other:?} ({})\n{}", out.status, out.stderr),
            }
            std::fs::remove_file(&path).unwrap();
        }
    }
    eprintln!("harness inspect exit codes: {codes:?}");
    assert!(codes.contains_key(&Some(0)) && codes.contains_key(&Some(2)), "{codes:?}");
}

/// Raw GGUF pieces for hand-built hostile headers.
mod raw {
    pub fn string(s: &[u8]) -> Vec<u8> {
        let mut v = (s.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(s);
        v
    }

    pub fn header(n_tensors: u64, n_kv: u64) -> Vec<u8> {
        let mut v = b"GGUF".to_vec();
        v.extend_from_slice(&3u32.to_le_bytes());
        v.extend_from_slice(&n_tensors.to_le_bytes());
        v.extend_from_slice(&n_kv.to_le_bytes());
        v
    }

    /// A distinct short key for entry `i`.
    pub fn key(i: usize) -> Vec<u8> {
        string(format!("{i:x}").as_bytes())
    }

    /// An array header: element type and count.
    pub fn array(elem_type: u32, count: u64) -> Vec<u8> {
        let mut v = 9u32.to_le_bytes().to_vec();
        v.extend_from_slice(&elem_type.to_le_bytes());
        v.extend_from_slice(&count.to_le_bytes());
        v
    }
}

/// Headers built to make the reader allocate as much as possible per byte of file: counts
/// that claim as many items as the remaining bytes could hold (but lie), truthful floods of
/// the smallest items, and arrays nested as deep as allowed. Each must stay within
/// [`ALLOC_FACTOR`] times the file size.
#[test]
fn hostile_headers_allocate_a_small_multiple_of_the_file() {
    const SIZE: usize = 1 << 20;
    let pad = |mut v: Vec<u8>| {
        v.resize(SIZE, 0);
        v
    };
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    // Metadata count as large as the bound allows; the entries are not there.
    cases.push(("lying metadata count", pad(raw::header(0, (SIZE as u64 - 24) / 13))));
    // Tensor count as large as the bound allows; the infos are not there.
    cases.push(("lying tensor count", pad(raw::header((SIZE as u64 - 24) / 24, 0))));
    // A truthful flood of the smallest metadata entries: distinct keys, u8 values.
    let mut flood = Vec::new();
    let mut n = 0;
    while flood.len() + 32 < SIZE - 24 {
        flood.extend(raw::key(n));
        flood.extend_from_slice(&0u32.to_le_bytes());
        flood.push(7);
        n += 1;
    }
    let mut v = raw::header(0, n as u64);
    v.extend(flood);
    cases.push(("flood of tiny metadata entries", pad(v)));
    // An array of empty strings, truthful, and one whose count lies.
    let n_str = (SIZE as u64 - 64) / 8;
    let mut v = raw::header(0, 1);
    v.extend(raw::key(0));
    v.extend(raw::array(8, n_str));
    cases.push(("lying string array", pad(v.clone())));
    cases.push(("flood of empty strings", v)); // zero bytes are empty strings
    let last = cases.len() - 1;
    cases[last].1 = pad(std::mem::take(&mut cases[last].1));
    // Arrays nested as deep as allowed, each claiming as many sub-arrays as would fit.
    let mut v = raw::header(0, 1);
    v.extend(raw::key(0));
    v.extend_from_slice(&9u32.to_le_bytes());
    for _ in 0..bitnet_engine::gguf::MAX_ARRAY_NESTING {
        v.extend_from_slice(&9u32.to_le_bytes());
        v.extend_from_slice(&((SIZE as u64 - v.len() as u64) / 12 - 2).to_le_bytes());
    }
    cases.push(("nested lying arrays", pad(v)));
    // Arrays of empty arrays, truthful: each element is an element type and a zero count.
    let n_arr = (SIZE as u64 - 64) / 12;
    let mut v = raw::header(0, 1);
    v.extend(raw::key(0));
    v.extend(raw::array(9, n_arr));
    for _ in 0..n_arr {
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(&0u64.to_le_bytes());
    }
    cases.push(("flood of empty arrays", pad(v)));
    // A truthful flood of the smallest tensor infos (scalars with one-byte names).
    let n_t = (SIZE as u64 - 64) / 64;
    let mut v = raw::header(n_t, 0);
    for i in 0..n_t {
        v.extend(raw::key(i as usize));
        v.extend_from_slice(&0u32.to_le_bytes()); // no dims: one element
        v.extend_from_slice(&0u32.to_le_bytes()); // F32
        v.extend_from_slice(&(i * 32).to_le_bytes());
    }
    cases.push(("flood of tiny tensors", pad(v)));
    // The same with the smallest I2_S tensors (128 weights: 32 bytes of codes, 32 of tail),
    // each of which `inspect` checks.
    let n_t = (SIZE as u64 - 64) / 104;
    let mut v = raw::header(n_t, 0);
    for i in 0..n_t {
        v.extend(raw::key(i as usize));
        v.extend_from_slice(&1u32.to_le_bytes());
        v.extend_from_slice(&128u64.to_le_bytes());
        v.extend_from_slice(&36u32.to_le_bytes()); // I2_S
        v.extend_from_slice(&(i * 64).to_le_bytes());
    }
    cases.push(("flood of tiny I2_S tensors", pad(v)));

    let mut worst = 0.0f64;
    let mut over = Vec::new();
    for (what, bytes) in cases {
        let len = bytes.len();
        let base = alloc::start();
        let stage = catch_unwind(AssertUnwindSafe(|| load_like_the_harness(bytes)))
            .unwrap_or_else(|p| panic!("{what}: panicked: {}", panic_message(&*p)));
        let peak = alloc::peak_since(base);
        let ratio = peak as f64 / len as f64;
        worst = worst.max(ratio);
        eprintln!("{what:<32} {len:>8} bytes  {stage:?}  peak {peak:>9} bytes = {ratio:.2} × the file");
        if peak > ALLOC_FACTOR * len {
            over.push(format!("{what}: {peak} bytes allocated for a {len}-byte file"));
        }
    }
    eprintln!("worst: {worst:.2} × the file size");
    assert!(over.is_empty(), "more than {ALLOC_FACTOR} × the file: {over:#?}");
}

/// Corrupted files that the GGUF reader accepts, through the whole `harness run` (the C++
/// reference loads them too, in its worker process): every run ends with a documented exit
/// code and one line of error, or a complete receipt — never a panic or a signal.
#[test]
fn corrupted_fixtures_through_harness_run() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = fixtures();
    let fx = &fixtures[0];
    let mut codes = BTreeMap::new();
    let mut tried = 0;
    for i in 0..u64::MAX {
        if tried == 40 {
            break;
        }
        let (kind, bytes) = mutate::case(&fx.bytes, &fx.map, SEED ^ 0x2C, i);
        // Only files that get past the reader reach the reference.
        if GgufFile::from_bytes(bytes.clone(), "probe").is_err() {
            continue;
        }
        tried += 1;
        let path = dir.path().join("case.gguf");
        std::fs::write(&path, &bytes).unwrap();
        let receipt = dir.path().join("receipt.json");
        let _ = std::fs::remove_file(&receipt);
        let mut cmd = procs::harness();
        cmd.args(["run", "--quiet", "--max-tokens", "2", "--prompt", "The sun rises"])
            .arg("--model")
            .arg(&path)
            .arg("--out")
            .arg(&receipt);
        let what = format!("harness run on {} case {i} ({kind:?})", fx.name);
        let out = procs::run(cmd, &what);
        assert!(!out.stderr.contains("panicked"), "{what}: {}", out.stderr);
        *codes.entry(out.code()).or_insert(0u32) += 1;
        match out.code() {
            Some(0) => {
                let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&receipt).unwrap())
                    .unwrap_or_else(|e| panic!("{what}: receipt is not JSON: {e}"));
                assert!(r["verdict"]["status"].is_string(), "{what}");
            }
            Some(2..=6) => {
                assert_eq!(
                    out.stderr.lines().count(),
                    1,
                    "{what}: one line of error expected:\n{}",
                    out.stderr
                );
                assert!(!receipt.exists(), "{what}: a receipt next to an error");
            }
            other => panic!("{what}: exit {other:?} ({})\n{}", out.status, out.stderr),
        }
    }
    eprintln!("harness run exit codes on {tried} corrupted files the reader accepts: {codes:?}");
}
