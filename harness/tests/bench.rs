//! `harness bench`: the JSON report keeps its documented shape, and the reference's own I2_S
//! mul_mat gives exactly our numbers on the same data. Nothing here asserts a speed.

mod common;

use bitnet_engine::internals::quant::{QuantizedActs, TernaryMatrix};
use bitnet_engine::quant::{pack_i2s_x86, I2sFlavor, Qk256Kernel};
use bitnet_fixtures::rng::Rng;
use bitnet_fixtures::{spec, WeightForm};
use common::receipts::harness;
use serde::Deserialize;

// A private mirror of the report (docs/bench.md): any field added, removed or renamed
// without updating the documentation and this mirror fails the test.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Report {
    schema_version: String,
    created_at: String,
    tool: Tool,
    machine: Machine,
    settings: Settings,
    model: Model,
    engines: Engines,
    bandwidth: Vec<Bandwidth>,
    results: Vec<ThreadResult>,
    gemv: Vec<Gemv>,
    lm_head: Vec<LmHead>,
    goals: Vec<Goal>,
    warnings: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Tool {
    name: String,
    version: String,
    git_commit: Option<String>,
    git_dirty: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Machine {
    cpu_model: Option<String>,
    cpu_flags: Vec<String>,
    cpu_flags_source: String,
    qk256_kernels: Vec<String>,
    logical_cpus: usize,
    caches: Vec<String>,
    memory_total_bytes: Option<u64>,
    load_average_start: Option<[f64; 3]>,
    load_average_end: Option<[f64; 3]>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Settings {
    threads: Vec<usize>,
    decode_tokens: usize,
    decode_runs: usize,
    prefill_tokens: usize,
    prefill_runs: usize,
    n_ctx: usize,
    gemv_repeats: usize,
    gemv_batches: usize,
    bandwidth_buffer_bytes: u64,
    run_check_tokens: usize,
    page_cache: String,
    page_cache_refill_s: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Model {
    path: String,
    kind: String,
    file_bytes: u64,
    n_layer: usize,
    n_embd: usize,
    n_ff: usize,
    n_head: usize,
    n_head_kv: usize,
    n_vocab: usize,
    bytes_per_token: BytesPerToken,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct BytesPerToken {
    ternary_weights: u64,
    lm_head: u64,
    other_weights: u64,
    embedding_row: u64,
    kv_cache_mean: u64,
    total: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Engines {
    rust: RustIdentity,
    reference: ReferenceIdentity,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct RustIdentity {
    name: String,
    version: String,
    kernel: String,
    exact_reference_rounding: bool,
    threading: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct ReferenceIdentity {
    build: String,
    kernels: String,
    library_path: String,
    system_info: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Bandwidth {
    threads: usize,
    gb_per_s: f64,
    passes: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct ThreadResult {
    threads: usize,
    rust: EngineResult,
    reference: EngineResult,
    ratios: Ratios,
    run_check: Option<RunCheck>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct EngineResult {
    threads_used: usize,
    load_s: f64,
    decode: Decode,
    prefill: Option<Prefill>,
    memory: Memory,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Decode {
    tokens: usize,
    runs_tokens_per_s: Vec<f64>,
    tokens_per_s_median: f64,
    tokens_per_s_best: f64,
    ms_per_token_median: f64,
    ms_per_token_p50: f64,
    ms_per_token_min: f64,
    bandwidth_fraction: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Prefill {
    tokens: usize,
    method: String,
    runs_s: Vec<f64>,
    tokens_per_s_median: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Memory {
    peak_rss_bytes: u64,
    rss_anon_bytes: u64,
    rss_file_bytes: u64,
    kv_cache_bytes: u64,
    model_mapped_bytes: u64,
    model_mapped_2mib_bytes: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Ratios {
    decode_tokens_per_s: f64,
    decode_tokens_per_s_paired: f64,
    decode_tokens_per_s_best: f64,
    prefill_tokens_per_s: Option<f64>,
    peak_rss: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct RunCheck {
    tokens: usize,
    wall_s: f64,
    rust_s: f64,
    reference_s: f64,
    wall_over_slower: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct LmHead {
    threads: usize,
    rows: usize,
    cols: usize,
    bytes: u64,
    rust: LmHeadSpeed,
    reference: LmHeadSpeed,
    speedup: f64,
    outputs_identical: bool,
    max_abs_diff: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct LmHeadSpeed {
    ms_per_product: f64,
    gb_per_s: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Gemv {
    rows: usize,
    cols: usize,
    threads: usize,
    packed_bytes: u64,
    kernel: String,
    rust: GemvSpeed,
    reference: GemvSpeed,
    speedup: f64,
    outputs_identical: bool,
    max_abs_diff: f64,
    kernels: Vec<GemvKernel>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct GemvKernel {
    kernel: String,
    rust: GemvSpeed,
    speedup: f64,
    outputs_identical: bool,
    max_abs_diff: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct GemvSpeed {
    us_per_product: f64,
    gb_per_s: f64,
    gop_per_s: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Goal {
    id: String,
    description: String,
    threads: Option<usize>,
    level: String,
    threshold: Option<f64>,
    measured: Option<f64>,
    status: String,
    note: Option<String>,
}

#[test]
fn bench_on_a_fixture_prints_the_documented_json() {
    let model = bitnet_fixtures::ensure(&spec::committed()[0], WeightForm::I2S);
    let model = model.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("bench.json");
    #[rustfmt::skip]
    let args = [
        "bench", "--model", model, "--tokens", "4", "--runs", "2", "--prefill", "8", "--prefill-runs", "1",
        "--threads", "1", "--threads", "2", "--gemv-repeats", "2", "--gemv-batches", "1",
        "--bandwidth-mib", "8", "--run-tokens", "6", "--json", "--out", out_file.to_str().unwrap(),
    ];
    let o = harness(dir.path(), &args);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "harness bench failed: {stderr}");
    let r: Report = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!("not the documented report ({e}): {}", String::from_utf8_lossy(&o.stdout))
    });
    let from_file: Report = serde_json::from_slice(&std::fs::read(&out_file).unwrap()).unwrap();
    assert_eq!(from_file.created_at, r.created_at);

    assert_eq!(r.schema_version, "bench-1.2.0");
    check_machine(&r.machine);
    assert_eq!(r.settings.page_cache, "huge");
    assert!(r.settings.page_cache_refill_s.is_some_and(|s| s >= 0.0));
    assert_eq!(r.settings.threads, vec![1, 2]);
    assert_eq!((r.settings.decode_tokens, r.settings.decode_runs, r.settings.prefill_tokens), (4, 2, 8));
    assert_eq!(r.model.kind, "file");
    assert_eq!((r.model.n_embd, r.model.n_layer), (256, 2));
    let b = &r.model.bytes_per_token;
    assert_eq!(b.total, b.ternary_weights + b.lm_head + b.other_weights + b.embedding_row + b.kv_cache_mean);
    assert_eq!(r.bandwidth.iter().map(|b| b.threads).collect::<Vec<_>>(), vec![1, 2]);

    assert_eq!(r.results.len(), 2);
    for (t, res) in r.results.iter().enumerate() {
        assert_eq!(res.threads, t + 1);
        for (name, e) in [("rust", &res.rust), ("reference", &res.reference)] {
            assert_eq!(e.decode.tokens, 4, "{name}");
            assert_eq!(e.decode.runs_tokens_per_s.len(), 2, "{name}");
            assert!(e.decode.tokens_per_s_median > 0.0, "{name}");
            let p = e.prefill.as_ref().expect("prefill measured");
            assert_eq!((p.tokens, p.runs_s.len()), (8, 1));
            assert!(e.memory.peak_rss_bytes > 0 && e.memory.kv_cache_bytes > 0, "{name}");
            // Both engines map the model; the 2 MiB part depends on the kernel, never more than all.
            let m = &e.memory;
            assert!(m.model_mapped_bytes > 0 && m.model_mapped_2mib_bytes <= m.model_mapped_bytes, "{name}");
        }
        assert_eq!(res.reference.threads_used, t + 1);
        assert_eq!(res.reference.prefill.as_ref().unwrap().method, "batch");
        assert_eq!(res.rust.prefill.as_ref().unwrap().method, "batch");
        assert_eq!(res.rust.threads_used, t + 1);
        let check = res.run_check.as_ref().expect("the harness run check ran");
        assert_eq!(check.tokens, 6);
    }

    // Three shapes × two thread counts, a row per kernel of this CPU, and the reference's
    // numbers are every kernel's.
    assert_eq!(r.gemv.len(), 6);
    let kernels: Vec<&str> = Qk256Kernel::available().into_iter().map(|k| k.name()).collect();
    let chosen = Qk256Kernel::from_env().unwrap().name();
    for g in &r.gemv {
        let at = format!("{}×{} at {} threads", g.rows, g.cols, g.threads);
        assert_eq!(g.packed_bytes, (g.rows * g.cols / 4) as u64);
        assert_eq!(g.kernels.iter().map(|k| k.kernel.as_str()).collect::<Vec<_>>(), kernels, "{at}");
        for k in &g.kernels {
            assert!(k.outputs_identical, "{at}, kernel {}: max |Δ| {}", k.kernel, k.max_abs_diff);
            assert!(k.rust.us_per_product > 0.0 && k.speedup > 0.0, "{at}, kernel {}", k.kernel);
        }
        // The 1.1.0 fields are the engine's own kernel's row.
        assert_eq!(g.kernel, chosen, "{at}");
        let own = g.kernels.iter().find(|k| k.kernel == g.kernel).unwrap();
        assert_eq!((g.speedup, g.outputs_identical), (own.speedup, own.outputs_identical), "{at}");
        assert!(g.outputs_identical, "{at}: max |Δ| {}", g.max_abs_diff);
    }

    // The lm_head alone at each thread count, on the fixture's F16 token_embd.
    assert_eq!(r.lm_head.iter().map(|l| l.threads).collect::<Vec<_>>(), vec![1, 2]);
    for l in &r.lm_head {
        assert_eq!((l.cols, l.bytes), (256, (l.rows * l.cols * 2) as u64));
        assert!(l.rust.ms_per_product > 0.0 && l.reference.ms_per_product > 0.0 && l.speedup > 0.0);
        // Identical bits where the reference runs the AVX2 lanes the engine mirrors; close anyway.
        assert!(l.outputs_identical || l.max_abs_diff < 1e-3, "lm_head max |Δ| {}", l.max_abs_diff);
    }

    check_goals(&r);
    // The fixture is not the 30-layer 2B-shaped model: its figures are shown, never counted.
    for g in r.goals.iter().filter(|g| MODEL_GOALS.contains(&g.id.as_str())) {
        assert_eq!(g.status, "not_measured", "{}: {:?}", g.id, g.note);
        assert!(g.note.as_deref().unwrap_or("").contains("30-layer"), "{}: {:?}", g.id, g.note);
    }
    // The GEMV goal is model-free and measured at both thread counts, on the best kernel.
    let gemv_goals: Vec<&Goal> = r.goals.iter().filter(|g| g.id == "gemv_hot_speedup").collect();
    assert_eq!(gemv_goals.len(), 6);
    let vnni = r.machine.cpu_flags.iter().any(|f| f == "avx512_vnni" || f == "avx_vnni");
    for g in gemv_goals {
        assert!(g.measured.is_some() && g.status != "not_measured", "{:?}", g.note);
        assert_eq!(g.threshold, Some(if vnni { 2.0 } else { 1.3 }));
        assert!(g.description.contains(kernels.last().unwrap()), "{}", g.description);
    }
}

/// The goals of every report (issue 17), stated at 1 and 2 threads at least.
const GOALS: [&str; 7] = [
    "decode_ratio",
    "prefill_ratio",
    "gemv_hot_speedup",
    "rust_peak_memory",
    "run_wall_over_slower_engine",
    "decode_bandwidth_fraction",
    "no_timed_test_assertions",
];

/// The goals stated for the 30-layer 2B-shaped model (all but the GEMV one and the test suite's).
const MODEL_GOALS: [&str; 5] = [
    "decode_ratio",
    "prefill_ratio",
    "rust_peak_memory",
    "run_wall_over_slower_engine",
    "decode_bandwidth_fraction",
];

/// Every goal present at 1 and 2 threads; statuses and levels from the documented sets; a goal
/// without a figure is never a pass.
fn check_goals(r: &Report) {
    for id in GOALS {
        let threads: Vec<Option<usize>> = r.goals.iter().filter(|g| g.id == id).map(|g| g.threads).collect();
        assert!(!threads.is_empty(), "goal {id} missing");
        if id != "no_timed_test_assertions" {
            for t in [1, 2] {
                assert!(threads.contains(&Some(t)), "goal {id} not stated at {t} thread(s): {threads:?}");
            }
        }
    }
    for g in &r.goals {
        assert!(GOALS.contains(&g.id.as_str()), "unknown goal {}", g.id);
        assert!(["pass", "fail", "not_measured"].contains(&g.status.as_str()), "{}: {}", g.id, g.status);
        assert!(["required", "target"].contains(&g.level.as_str()), "{}: {}", g.id, g.level);
        if g.measured.is_none() || g.threshold.is_none() {
            assert_eq!(g.status, "not_measured", "{} at {:?} threads", g.id, g.threads);
        }
        if g.status == "not_measured" && g.id != "no_timed_test_assertions" {
            assert!(g.note.is_some(), "{} at {:?}: not_measured says why", g.id, g.threads);
        }
    }
}

/// The machine's CPU: its relevant flags, and the kernels the engine runs on it.
fn check_machine(m: &Machine) {
    let kernels: Vec<String> = Qk256Kernel::available().into_iter().map(|k| k.name().to_string()).collect();
    assert_eq!(m.qk256_kernels, kernels);
    assert!(
        ["proc_cpuinfo", "cpuid", "none"].contains(&m.cpu_flags_source.as_str()),
        "{}",
        m.cpu_flags_source
    );
    if std::path::Path::new("/proc/cpuinfo").exists() {
        assert_eq!(m.cpu_flags_source, "proc_cpuinfo");
    }
    #[cfg(target_arch = "x86_64")]
    {
        for (flag, detected) in [
            ("avx2", std::arch::is_x86_feature_detected!("avx2")),
            ("fma", std::arch::is_x86_feature_detected!("fma")),
            ("avx512_vnni", std::arch::is_x86_feature_detected!("avx512vnni")),
        ] {
            assert_eq!(m.cpu_flags.iter().any(|f| f == flag), detected, "{flag} in {:?}", m.cpu_flags);
        }
        assert_eq!(
            kernels.iter().any(|k| k == "avx512vnni"),
            Qk256Kernel::avx512vnni().is_some(),
            "{kernels:?}"
        );
    }
    let mut seen = m.cpu_flags.clone();
    seen.dedup();
    assert_eq!(seen, m.cpu_flags, "flags listed once");
}

#[test]
fn goals_not_measured_stay_not_measured() {
    // One thread, no GEMV, no prefill, no `harness run`: the goals at 2 threads and those
    // without their measurement are listed, and none passes.
    let model = bitnet_fixtures::ensure(&spec::committed()[0], WeightForm::I2S);
    let dir = tempfile::tempdir().unwrap();
    #[rustfmt::skip]
    let args = [
        "bench", "--model", model.to_str().unwrap(), "--tokens", "2", "--runs", "1", "--prefill", "0",
        "--threads", "1", "--no-gemv", "--no-lm-head", "--bandwidth-mib", "4", "--run-tokens", "0",
        "--page-cache", "keep", "--json",
    ];
    let o = harness(dir.path(), &args);
    assert!(o.status.success(), "harness bench failed: {}", String::from_utf8_lossy(&o.stderr));
    let r: Report = serde_json::from_slice(&o.stdout).unwrap();
    assert!(r.gemv.is_empty() && r.lm_head.is_empty());
    check_goals(&r);
    for g in &r.goals {
        assert_eq!(g.status, "not_measured", "{} at {:?}: {:?}", g.id, g.threads, g.note);
        if g.threads == Some(2) {
            assert_eq!(g.measured, None, "{}: nothing ran at 2 threads", g.id);
        }
        if ["gemv_hot_speedup", "prefill_ratio", "run_wall_over_slower_engine"].contains(&g.id.as_str()) {
            assert_eq!(g.measured, None, "{} at {:?}", g.id, g.threads);
        }
    }
}

#[test]
fn a_missing_model_is_bad_input_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let o = harness(dir.path(), &["bench", "--model", "/nonexistent/model.gguf", "--json"]);
    assert_eq!(o.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("/nonexistent/model.gguf"), "{stderr}");
}

/// Random ternary weights in x86 I2_S (as a file stores them) and activations.
fn data(rows: usize, cols: usize, n_vectors: usize, seed: u64) -> (Vec<u8>, Vec<f32>) {
    let mut rng = Rng::new(seed);
    let codes: Vec<i8> = (0..rows * cols).map(|_| rng.ternary()).collect();
    let mut bytes = pack_i2s_x86(&codes, rng.uniform(0.01, 2.0)).unwrap();
    bytes.resize(rows * cols / 4 + 32, 0);
    // Mixed magnitudes, so the activation scale and rounding are exercised.
    let x = (0..cols * n_vectors).map(|i| rng.normalish(if i % 7 == 0 { 5.0 } else { 0.3 })).collect();
    (bytes, x)
}

#[test]
fn reference_mul_mat_equals_ours_bit_for_bit() {
    let reference = bitnet_cpp::Reference::open_built().unwrap();
    let shapes = [(4, 128), (8, 256), (36, 384), (128, 640), (2560, 2560), (6912, 2560), (2560, 6912)];
    for (k, &(rows, cols)) in shapes.iter().enumerate() {
        for (n_vectors, threads) in [(1, 1), (1, 2), (3, 2), (5, 1)] {
            let (bytes, x) = data(rows, cols, n_vectors, 1000 + k as u64);
            let mut mm = reference.i2s_matmul(&bytes, rows, cols, n_vectors, 1, threads).unwrap();
            mm.set_input(&x).unwrap();
            mm.compute().unwrap();
            let theirs = mm.output();

            let w = TernaryMatrix::new("w", I2sFlavor::X86Qk256, &bytes, rows, cols, None).unwrap();
            let mut ours = vec![0f32; rows * n_vectors];
            let mut acts = QuantizedActs::new(cols);
            for (xv, yv) in x.chunks_exact(cols).zip(ours.chunks_exact_mut(rows)) {
                acts.quantize(xv);
                w.matvec(&acts, yv);
            }
            let differ = theirs.iter().zip(&ours).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
            assert_eq!(
                differ, 0,
                "{rows}×{cols}, {n_vectors} vector(s), {threads} thread(s): {differ} outputs differ"
            );
        }
    }
}

/// The in-place product (what the GEMV bench times, on the bench's own 2 MiB-page buffer)
/// gives the copy's bits, and refuses bytes without the padding or off a 64-byte boundary.
#[test]
fn reference_mul_mat_in_place_equals_the_copy() {
    let reference = bitnet_cpp::Reference::open_built().unwrap();
    let (rows, cols) = (256, 512);
    let (bytes, x) = data(rows, cols, 1, 77);
    let mut copy = reference.i2s_matmul(&bytes, rows, cols, 1, 1, 1).unwrap();
    copy.set_input(&x).unwrap();
    copy.compute().unwrap();
    let buf = ::harness::bench::huge::HugeBuffer::copy_of(&bytes);
    let mut in_place = reference.i2s_matmul_in_place(buf.bytes(), rows, cols, 1, 1, 1).unwrap();
    in_place.set_input(&x).unwrap();
    in_place.compute().unwrap();
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
    assert_eq!(bits(in_place.output()), bits(copy.output()));

    let short = &buf.bytes()[..rows * cols / 4 + 4];
    let e = reference.i2s_matmul_in_place(short, rows, cols, 1, 1, 1).unwrap_err().to_string();
    assert!(e.contains("64-byte boundary"), "{e}");
    let mut shifted = vec![0u8; bytes.len() + 64];
    let off = (shifted.as_ptr().align_offset(64) + 1) % 64;
    shifted[off..off + bytes.len()].copy_from_slice(&bytes);
    let e = reference.i2s_matmul_in_place(&shifted[off..off + bytes.len()], rows, cols, 1, 1, 1).unwrap_err();
    assert!(e.to_string().contains("in place"), "{e}");
}
