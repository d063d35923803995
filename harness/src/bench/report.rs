//! The bench report: what `harness bench --json` prints (and `--out` writes).
//!
//! Its shape is stable and documented field by field in `docs/bench.md`. Every field is always
//! present: a value that was not measured is `null`, never a missing key, so a reader can rely on
//! the shape. `schema_version` is semver with a `bench-` prefix; minor versions only add fields.

use serde::{Deserialize, Serialize};

use crate::receipt::ToolInfo;

/// Version written by this build.
pub const BENCH_SCHEMA_VERSION: &str = "bench-1.2.0";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    pub schema_version: String,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub tool: ToolInfo,
    pub machine: Machine,
    pub settings: BenchSettings,
    pub model: BenchModel,
    pub engines: EngineIdentities,
    /// Streaming-read bandwidth, one entry per thread count.
    pub bandwidth: Vec<Bandwidth>,
    /// Decode, prefill and memory of both engines, one entry per thread count.
    pub results: Vec<ThreadResult>,
    /// QK256 GEMV micro-benchmarks, one entry per shape and thread count.
    pub gemv: Vec<GemvResult>,
    /// The lm_head product alone, one entry per thread count (empty: skipped, or the model's
    /// `token_embd` is not F16).
    pub lm_head: Vec<LmHeadResult>,
    pub goals: Vec<Goal>,
    /// Why some numbers may mislead (a busy machine, an engine that used fewer threads).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: Option<String>,
    /// The CPU's flags that matter to the kernels (`avx2`, `fma`, `avx512_vnni`, `amx_int8`, ...),
    /// in /proc/cpuinfo's spelling and the order of [`super::machine::RELEVANT_FLAGS`]; from
    /// /proc/cpuinfo, or from run-time feature detection where that file is missing (1.2.0).
    pub cpu_flags: Vec<String>,
    /// Where `cpu_flags` came from: `proc_cpuinfo`, `cpuid` (run-time detection) or `none` (1.2.0).
    pub cpu_flags_source: String,
    /// The QK256 kernels the Rust engine runs on this CPU (`scalar`, `avx2`, `avx512vnni`),
    /// the scalar oracle first, the fastest last (1.2.0).
    pub qk256_kernels: Vec<String>,
    /// CPUs this process may run on.
    pub logical_cpus: usize,
    /// Cache levels from /sys (`L1d 64K`, ...).
    pub caches: Vec<String>,
    pub memory_total_bytes: Option<u64>,
    /// /proc/loadavg (1, 5, 15 min) before and after the benchmark: a busy machine shows here.
    pub load_average_start: Option<[f64; 3]>,
    pub load_average_end: Option<[f64; 3]>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchSettings {
    pub threads: Vec<usize>,
    /// Tokens per timed decode run.
    pub decode_tokens: usize,
    /// Timed decode runs per engine (after one warm-up run); the median is reported.
    pub decode_runs: usize,
    /// Tokens of the prefill batch (0: not measured).
    pub prefill_tokens: usize,
    pub prefill_runs: usize,
    /// Context both engines allocate.
    pub n_ctx: usize,
    /// Products per timed GEMV batch.
    pub gemv_repeats: usize,
    /// Timed GEMV batches per engine; the median is reported.
    pub gemv_batches: usize,
    pub bandwidth_buffer_bytes: u64,
    /// `--page-cache`: `huge` (the model was dropped from the page cache and read back
    /// through a 2 MiB-page map before the engines started) or `keep`.
    pub page_cache: String,
    /// Seconds the `huge` refill took (null with `keep`).
    pub page_cache_refill_s: Option<f64>,
    /// Tokens of the `harness run` check (0: not run).
    pub run_check_tokens: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchModel {
    pub path: String,
    /// `2b-shape` for a generated model with the real 2B-4T shapes, `file` otherwise.
    pub kind: String,
    pub file_bytes: u64,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub n_vocab: usize,
    pub bytes_per_token: BytesPerToken,
}

/// Bytes one decode step must read from memory (each counted once per token).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BytesPerToken {
    /// Every I2_S tensor (packed codes and scale).
    pub ternary_weights: u64,
    /// The lm_head (the tied F16 `token_embd`, read whole for the logits).
    pub lm_head: u64,
    /// Other tensors read whole every step (norm vectors, biases).
    pub other_weights: u64,
    /// One embedding row.
    pub embedding_row: u64,
    /// K and V cache reads, averaged over the decode run's positions (the attended range is
    /// padded to 32 cells, as the reference reads it).
    pub kv_cache_mean: u64,
    pub total: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineIdentities {
    pub rust: RustIdentity,
    pub reference: ReferenceIdentity,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RustIdentity {
    pub name: String,
    pub version: String,
    /// QK256 kernel (`avx2`, `scalar`).
    pub kernel: String,
    pub exact_reference_rounding: bool,
    /// How the Rust engine takes more than one thread (`ModelOptions::threads`), or `null` when
    /// this build's engine runs on one thread whatever is asked.
    pub threading: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceIdentity {
    /// `BuildInfo::summary()`: source, version, compiler, ISA, kernels.
    pub build: String,
    /// I2_S kernels compiled in.
    pub kernels: String,
    pub library_path: String,
    /// llama.cpp's CPU feature line.
    pub system_info: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bandwidth {
    pub threads: usize,
    /// Best pass: bytes summed ÷ seconds, in 1e9 bytes per second.
    pub gb_per_s: f64,
    pub passes: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThreadResult {
    pub threads: usize,
    pub rust: EngineResult,
    pub reference: EngineResult,
    /// Rust ÷ reference, from this same run.
    pub ratios: Ratios,
    pub run_check: Option<RunCheck>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineResult {
    /// Threads the engine actually used.
    pub threads_used: usize,
    /// Seconds to load the model and create the context.
    pub load_s: f64,
    pub decode: Decode,
    pub prefill: Option<Prefill>,
    pub memory: Memory,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decode {
    pub tokens: usize,
    /// Tokens per second of each timed run (tokens ÷ the run's summed per-token times).
    pub runs_tokens_per_s: Vec<f64>,
    pub tokens_per_s_median: f64,
    /// The fastest run: on a shared machine, the least disturbed one.
    pub tokens_per_s_best: f64,
    pub ms_per_token_median: f64,
    /// Median per-token time over every token of every timed run.
    pub ms_per_token_p50: f64,
    pub ms_per_token_min: f64,
    /// The bandwidth limit (bytes per token ÷ bandwidth at these threads) ÷ the median
    /// time per token: 1.0 means as fast as reading the bytes can be.
    pub bandwidth_fraction: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prefill {
    pub tokens: usize,
    /// `batch`: all tokens in one call, logits of the last (the reference: one llama_decode;
    /// the Rust engine: `Model::eval_batch`).
    pub method: String,
    pub runs_s: Vec<f64>,
    pub tokens_per_s_median: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    /// VmHWM of the engine's own process (peak resident set, mapped model pages included).
    pub peak_rss_bytes: u64,
    /// RssAnon and RssFile at the end: allocated memory vs pages of mapped files.
    pub rss_anon_bytes: u64,
    pub rss_file_bytes: u64,
    /// Bytes of the engine's KV cache (computed from the shape: f16 K and V for n_ctx cells).
    pub kv_cache_bytes: u64,
    /// Resident bytes of the engine's map of the model file, and how many of them the kernel
    /// maps with 2 MiB pages (`FilePmdMapped`); 0 and 0 where /proc/self/smaps is unreadable.
    pub model_mapped_bytes: u64,
    pub model_mapped_2mib_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ratios {
    /// Median Rust decode speed ÷ median reference decode speed.
    pub decode_tokens_per_s: f64,
    /// The median over rounds of the ratio within a round. A round's two runs are adjacent
    /// in time, so a change in the machine's state (another VM taking memory bandwidth for a
    /// few seconds) hits both alike; this is the figure the `decode_ratio` goal uses.
    pub decode_tokens_per_s_paired: f64,
    /// Of the fastest runs (less sensitive to other processes than the medians).
    pub decode_tokens_per_s_best: f64,
    pub prefill_tokens_per_s: Option<f64>,
    pub peak_rss: f64,
}

/// A `harness run` of N tokens, timed by its own receipt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunCheck {
    pub tokens: usize,
    pub wall_s: f64,
    pub rust_s: f64,
    pub reference_s: f64,
    /// wall ÷ max(rust_s, reference_s), each engine's load + eval time.
    pub wall_over_slower: f64,
}

/// One GEMV shape at one thread count: the reference once, every QK256 kernel of this CPU
/// against it. The top-level `rust`, `speedup`, `outputs_identical` and `max_abs_diff` are those
/// of `kernel`, the one the engine chose (`BITNET_QK256_IMPL`, else the best), as in 1.1.0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GemvResult {
    /// Output length (ggml `ne[1]`).
    pub rows: usize,
    /// Input length (ggml `ne[0]`).
    pub cols: usize,
    pub threads: usize,
    /// Packed weight bytes one product reads (rows·cols/4).
    pub packed_bytes: u64,
    /// The kernel of `rust`: the engine's choice (1.2.0).
    pub kernel: String,
    pub rust: GemvSpeed,
    pub reference: GemvSpeed,
    /// Reference time ÷ Rust time.
    pub speedup: f64,
    /// Both outputs equal bit for bit.
    pub outputs_identical: bool,
    pub max_abs_diff: f64,
    /// Every QK256 kernel this CPU runs (`Machine::qk256_kernels`, same order), each against the
    /// same reference timing and output (1.2.0).
    pub kernels: Vec<GemvKernelResult>,
}

/// One QK256 kernel's row of a GEMV shape (1.2.0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GemvKernelResult {
    /// `scalar`, `avx2` or `avx512vnni`.
    pub kernel: String,
    pub rust: GemvSpeed,
    /// Reference time ÷ this kernel's time.
    pub speedup: f64,
    /// This kernel's output equals the reference's bit for bit.
    pub outputs_identical: bool,
    pub max_abs_diff: f64,
}

/// The lm_head alone (see `lm_head.rs`), one entry per thread count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LmHeadResult {
    pub threads: usize,
    /// Vocabulary (output length) and n_embd (input length).
    pub rows: usize,
    pub cols: usize,
    /// F16 bytes one product reads.
    pub bytes: u64,
    pub rust: LmHeadSpeed,
    pub reference: LmHeadSpeed,
    /// Median over batches of (reference time ÷ Rust time), the batches alternating.
    pub speedup: f64,
    pub outputs_identical: bool,
    pub max_abs_diff: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LmHeadSpeed {
    /// Median over batches of (batch time ÷ products).
    pub ms_per_product: f64,
    pub gb_per_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GemvSpeed {
    /// Median over batches of (batch time ÷ products).
    pub us_per_product: f64,
    pub gb_per_s: f64,
    /// 2·rows·cols operations per product, in 1e9 per second.
    pub gop_per_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Goal {
    /// Stable identifier, e.g. `decode_ratio`.
    pub id: String,
    pub description: String,
    /// The thread count it was measured at, or `null`.
    pub threads: Option<usize>,
    /// `required` or `target`.
    pub level: String,
    /// The bound, in the unit of `measured`.
    pub threshold: Option<f64>,
    pub measured: Option<f64>,
    /// `pass`, `fail` or `not_measured`.
    pub status: String,
    pub note: Option<String>,
}
