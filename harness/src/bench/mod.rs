//! `harness bench`: decode and prefill speed, peak memory and kernel throughput of both
//! engines on the same model, in the same run, with the Rust ÷ reference ratios and the
//! project's performance goals. See `docs/bench.md` for what is timed and the JSON shape.
//!
//! | file           | holds                                                            |
//! |----------------|------------------------------------------------------------------|
//! | `report.rs`    | the JSON report types (`bench-1.2.0`)                            |
//! | `model.rs`     | the model: a file or a generated 2B-shaped one; bytes per token  |
//! | `machine.rs`   | CPU, its flags, caches, load, streaming-read bandwidth           |
//! | `page_cache.rs`| the model's page-cache folios: 2 MiB pages for both engines      |
//! | `worker.rs`    | one engine per process (`harness bench-worker`), and its handle  |
//! | `gemv.rs`      | QK256 GEMV, every kernel of the CPU, against the reference's     |
//! | `lm_head.rs`   | the lm_head product alone, both engines on the same mapped bytes |
//! | `run_check.rs` | a timed `harness run` of N tokens                                |
//! | `goals.rs`     | the goals, checked against a report                              |
//! | `table.rs`     | the human-readable output                                        |

pub mod gemv;
pub mod goals;
pub mod huge;
pub mod lm_head;
pub mod machine;
pub mod model;
pub mod page_cache;
pub mod report;
pub mod run_check;
pub mod table;
pub mod worker;

use std::path::{Path, PathBuf};

use anyhow::anyhow;
use bitnet_cpp::Reference;
use bitnet_engine::gguf::GgufFile;
use bitnet_engine::model::Config;
use bitnet_engine::profile::RefProfile;
use bitnet_engine::quant::Qk256Kernel;

use crate::exit::{Exit, Failure, OrExit};
use model::ModelChoice;
use report::{
    Bandwidth, BenchModel, BenchReport, BenchSettings, Decode, EngineIdentities, EngineResult, GemvResult,
    LmHeadResult, Memory, Prefill, Ratios, ReferenceIdentity, RustIdentity, ThreadResult,
    BENCH_SCHEMA_VERSION,
};
pub use worker::{serve as serve_worker, WorkerArgs};
use worker::{EngineKind, Reply, WorkerHandle};

/// Passes of the bandwidth benchmark, before and after the engines (each about 0.05 s per GiB).
const BANDWIDTH_PASSES: usize = 5;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// A model file to benchmark. Default: a generated model with the 2B-4T shapes (`--shape 2b`).
    #[arg(long, value_name = "GGUF", conflicts_with = "shape")]
    pub model: Option<PathBuf>,
    /// Generate (once, into the cache folder) a model with real shapes: `2b` is BitNet b1.58
    /// 2B-4T (n_embd 2560, n_ff 6912, 20/5 heads, vocab 128256).
    #[arg(long, value_parser = ["2b"])]
    pub shape: Option<String>,
    /// Layers of the generated model (30, the real depth, is what the decode goals are stated
    /// for; the 1.2 GB file is generated once).
    #[arg(long, default_value_t = 30, conflicts_with = "model")]
    pub layers: u64,
    /// Folder of generated models [default: $XDG_CACHE_HOME or ~/.cache, /bitnet-parity/models].
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Tokens per decode run (one at a time, with the KV cache, from position 0).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=8192))]
    pub tokens: u32,
    /// A thread count to measure at (repeatable: `--threads 1 --threads 4`); the goals are
    /// stated at 1 and 2.
    #[arg(long = "threads", default_values_t = [1u32, 2], value_parser = clap::value_parser!(u32).range(1..=256))]
    pub threads: Vec<u32>,
    /// Timed decode runs per engine and thread count (after one warm-up run); the median counts.
    #[arg(long, default_value_t = 9, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub runs: u32,
    /// Tokens of the prefill batch (0: skip prefill).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(0..=8192))]
    pub prefill: u32,
    /// Timed prefill runs per engine and thread count (after one warm-up).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub prefill_runs: u32,
    /// GEMV products per timed batch.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub gemv_repeats: u32,
    /// Timed GEMV batches per engine (the median counts).
    #[arg(long, default_value_t = 9, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub gemv_batches: u32,
    /// Skip the GEMV micro-benchmarks.
    #[arg(long)]
    pub no_gemv: bool,
    /// Skip the lm_head micro-benchmark (the output product alone, both engines on the mapped
    /// model; `--gemv-batches` alternating batches of 4 products).
    #[arg(long)]
    pub no_lm_head: bool,
    /// Size of the bandwidth benchmark's buffer, in MiB (use much more than the last cache).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub bandwidth_mib: u64,
    /// Tokens of the `harness run` check (0: skip it).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(0..=8192))]
    pub run_tokens: u32,
    /// How the model sits in the page cache while the engines run: `huge` drops it from the
    /// cache and reads it back through a 2 MiB-page map first (Linux), so both engines map it
    /// with 2 MiB pages; `keep` leaves the cache as it is (a file that entered the cache by
    /// `read` or `write` is mapped with 4 KiB pages, ~30 % slower to stream here).
    #[arg(long, value_enum, default_value_t = page_cache::PageCache::Huge)]
    pub page_cache: page_cache::PageCache,
    /// Print the report as JSON (schema `bench-1.2.0`, see docs/bench.md) instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON report to this file.
    #[arg(long, value_name = "PATH")]
    pub out: Option<PathBuf>,
}

/// The Rust engine's kernel and threading, as its worker reported them.
type RustKernel = (String, Option<String>);

/// The settings after defaults, as numbers.
struct Plan {
    threads: Vec<usize>,
    tokens: usize,
    runs: usize,
    prefill: usize,
    prefill_runs: usize,
    n_ctx: usize,
}

pub fn run(args: &BenchArgs) -> Result<Exit, Failure> {
    let plan = Plan::new(args);
    let mut machine = machine::describe();
    let model = open_model(args, &plan)?;
    // A refill that fails (a read-only mount that refuses fsync, say) leaves the cache as it
    // was: the measurement goes on and the report says so.
    let mut early_warnings = Vec::new();
    let page_cache_refill_s = prepare_page_cache(args.page_cache, &model.path, &mut early_warnings);

    // Measured before and after the engines; the best of both counts (another process
    // reading memory at the same time can only lower it).
    eprintln!("bandwidth: summing {} MiB …", args.bandwidth_mib);
    let bandwidth_before = machine::bandwidth(args.bandwidth_mib << 20, &plan.threads, BANDWIDTH_PASSES);
    let (reference, profile) = open_reference(&mut early_warnings)?;
    let reference_identity = reference_identity(&reference);
    let (mut results, rust_identity) = measure_all_threads(&model, &plan, profile)?;
    eprintln!("bandwidth again …");
    let bandwidth_after = machine::bandwidth(args.bandwidth_mib << 20, &plan.threads, BANDWIDTH_PASSES);
    let bandwidth = machine::best_of(&bandwidth_before, &bandwidth_after);
    set_bandwidth_fractions(&mut results, &bandwidth, model.report.bytes_per_token.total);

    let gemv = if args.no_gemv { Vec::new() } else { bench_gemv(args, &plan, &reference)? };
    let lm_head = if args.no_lm_head {
        Vec::new()
    } else {
        bench_lm_head(args, &plan, &model.path, &reference, profile)?
    };
    if args.run_tokens > 0 {
        run_checks(&mut results, &model.path, args.run_tokens);
    }

    let (kernel, threading) = rust_identity.unwrap_or_default();
    machine.load_average_end = machine::load_average();
    let mut report = BenchReport {
        schema_version: BENCH_SCHEMA_VERSION.into(),
        created_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        tool: crate::run::tool_info(),
        machine,
        settings: settings(args, &plan, page_cache_refill_s),
        model: model.report,
        engines: EngineIdentities {
            rust: rust_identity_of(kernel, threading),
            reference: reference_identity,
        },
        bandwidth,
        results,
        gemv,
        lm_head,
        goals: Vec::new(),
        warnings: Vec::new(),
    };
    report.goals = goals::evaluate(&report);
    report.warnings = early_warnings.into_iter().chain(warnings(&report)).collect();
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    print_and_save(args, &report)
}

impl Plan {
    fn new(args: &BenchArgs) -> Plan {
        let mut threads: Vec<usize> = args.threads.iter().map(|&t| t as usize).collect();
        threads.dedup();
        let (tokens, prefill) = (args.tokens as usize, args.prefill as usize);
        Plan {
            threads,
            tokens,
            runs: args.runs as usize,
            prefill,
            prefill_runs: args.prefill_runs as usize,
            n_ctx: tokens.max(prefill).next_multiple_of(32),
        }
    }
}

/// The model benchmarked: where it is, its hyper-parameters, and its part of the report.
struct BenchTarget {
    path: PathBuf,
    config: Config,
    report: BenchModel,
}

/// Resolves (or generates) the model and describes it. The file is closed again before the
/// page cache is refilled and the engines map it.
fn open_model(args: &BenchArgs, plan: &Plan) -> Result<BenchTarget, Failure> {
    let choice = match &args.model {
        Some(p) => ModelChoice::File(p.clone()),
        None => ModelChoice::Shape2b {
            layers: args.layers,
            cache_dir: match &args.cache_dir {
                Some(d) => d.clone(),
                None => crate::fixtures::default_cache_dir().or_exit(Exit::BadInput)?,
            },
        },
    };
    let model_file = model::resolve(&choice).or_exit(Exit::BadInput)?;
    let file = GgufFile::open(&model_file.path).or_exit(Exit::BadInput)?;
    let config = Config::from_gguf(&file).or_exit(Exit::ModelInvalid)?;
    let report = BenchModel {
        path: model_file.path.display().to_string(),
        kind: model_file.kind.into(),
        file_bytes: file.file_len(),
        n_layer: config.n_layer,
        n_embd: config.n_embd,
        n_ff: config.n_ff,
        n_head: config.n_head,
        n_head_kv: config.n_head_kv,
        n_vocab: config.n_vocab,
        bytes_per_token: model::bytes_per_token(&file, &config, plan.tokens),
    };
    drop(file);
    Ok(BenchTarget { path: model_file.path, config, report })
}

/// `--page-cache`: with `huge`, reads the model back through 2 MiB pages; the seconds it took,
/// or `None` (kept as it was, or the refill failed: a warning says so).
fn prepare_page_cache(mode: page_cache::PageCache, model: &Path, warnings: &mut Vec<String>) -> Option<f64> {
    match mode {
        page_cache::PageCache::Huge => {
            eprintln!("page cache: reading the model back with 2 MiB pages …");
            match page_cache::refill_with_huge_pages(model) {
                Ok(s) => Some(s),
                Err(e) => {
                    warnings.push(format!("--page-cache huge failed, the cache was left as it was: {e:#}"));
                    None
                }
            }
        }
        page_cache::PageCache::Keep => None,
    }
}

/// Loads the C++ reference, and the profile the Rust engine mirrors: the reference build's own
/// (the host's, with a warning, when the build has none).
fn open_reference(warnings: &mut Vec<String>) -> Result<(Reference, RefProfile), Failure> {
    let reference = Reference::open_default().map_err(|e| {
        Failure::new(Exit::ReferenceUnavailable, anyhow!("cannot load the C++ reference: {e}"))
    })?;
    let isa = reference.build_info().isa.as_ref().map(|i| i.macros.clone()).unwrap_or_default();
    let profile = crate::profile_choice::ProfileChoice::for_build(
        &isa,
        crate::profile_choice::ProfileSource::BuildInfo,
        None,
    );
    if let Some(h) = &profile.hazard {
        warnings.push(format!(
            "the reference build has no profile ({h}): the Rust engine mirrors the host's {}, and the \
             lm_head outputs are not expected to match",
            profile.profile
        ));
    }
    Ok((reference, profile.profile))
}

fn reference_identity(reference: &Reference) -> ReferenceIdentity {
    ReferenceIdentity {
        build: reference.build_info().summary(),
        kernels: reference.build_info().kernels.clone(),
        library_path: reference.library_path().display().to_string(),
        system_info: reference.system_info(),
    }
}

/// Both engines at every thread count of the plan; with the Rust engine's kernel and threading
/// as its first worker reported them.
fn measure_all_threads(
    model: &BenchTarget,
    plan: &Plan,
    profile: RefProfile,
) -> Result<(Vec<ThreadResult>, Option<RustKernel>), Failure> {
    let mut results = Vec::new();
    let mut rust_identity = None;
    for &t in &plan.threads {
        eprintln!("engines at {t} thread(s) …");
        let (result, rust_ready) = measure_engines(&model.path, t, plan, &model.config, profile)
            .map_err(|e| Failure::new(Exit::Internal, e))?;
        rust_identity.get_or_insert(rust_ready);
        results.push(result);
    }
    Ok((results, rust_identity))
}

/// Each engine's decode speed as a fraction of what the memory bandwidth at the same thread
/// count allows: (bytes per token ÷ bandwidth) ÷ time per token.
fn set_bandwidth_fractions(results: &mut [ThreadResult], bandwidth: &[Bandwidth], bytes_per_token: u64) {
    for r in results {
        let bw = bandwidth.iter().find(|b| b.threads == r.threads);
        for e in [&mut r.rust, &mut r.reference] {
            e.decode.bandwidth_fraction = bw
                .map(|b| bytes_per_token as f64 / (b.gb_per_s * 1e9) / (e.decode.ms_per_token_median / 1e3))
                .filter(|f| f.is_finite());
        }
    }
}

/// The GEMV micro-benchmarks: every shape at every thread count, every kernel of this CPU.
fn bench_gemv(args: &BenchArgs, plan: &Plan, reference: &Reference) -> Result<Vec<GemvResult>, Failure> {
    // The engine's own choice (`BITNET_QK256_IMPL`, else the best) fills the 1.1.0 fields.
    let chosen = Qk256Kernel::from_env().or_exit(Exit::BadInput)?;
    let kernels = Qk256Kernel::available();
    let timing = gemv::Batches { repeats: args.gemv_repeats as usize, batches: args.gemv_batches as usize };
    let names: Vec<&str> = kernels.iter().map(|k| k.name()).collect();
    let mut out = Vec::new();
    for (rows, cols) in gemv::SHAPES {
        let data = gemv::GemvData::new(rows, cols).or_exit(Exit::Internal)?;
        for &t in &plan.threads {
            eprintln!("gemv {rows}×{cols} at {t} thread(s), kernels {} …", names.join(", "));
            let g =
                gemv::bench_shape(reference, &data, t, &kernels, chosen, timing).or_exit(Exit::Internal)?;
            out.push(g);
        }
    }
    Ok(out)
}

/// The lm_head product alone at every thread count (nothing for a model without one to time).
fn bench_lm_head(
    args: &BenchArgs,
    plan: &Plan,
    model: &Path,
    reference: &Reference,
    profile: RefProfile,
) -> Result<Vec<LmHeadResult>, Failure> {
    let mut out = Vec::new();
    for &t in &plan.threads {
        eprintln!("lm_head alone at {t} thread(s) …");
        if let Some(r) = lm_head::bench(model, t, args.gemv_batches as usize, reference, profile)
            .or_exit(Exit::Internal)?
        {
            out.push(r);
        }
    }
    Ok(out)
}

/// A timed `harness run` of `tokens` tokens at each thread count; a failure is a warning.
fn run_checks(results: &mut [ThreadResult], model: &Path, tokens: u32) {
    for r in results {
        eprintln!("harness run of {} tokens at {} thread(s) …", tokens, r.threads);
        match run_check::run_check(model, tokens as usize, r.threads) {
            Ok(c) => r.run_check = Some(c),
            Err(e) => eprintln!("warning: the `harness run` check failed: {e:#}"),
        }
    }
}

fn settings(args: &BenchArgs, plan: &Plan, page_cache_refill_s: Option<f64>) -> BenchSettings {
    BenchSettings {
        threads: plan.threads.clone(),
        decode_tokens: plan.tokens,
        decode_runs: plan.runs,
        prefill_tokens: plan.prefill,
        prefill_runs: if plan.prefill > 0 { plan.prefill_runs } else { 0 },
        n_ctx: plan.n_ctx,
        gemv_repeats: args.gemv_repeats as usize,
        gemv_batches: args.gemv_batches as usize,
        bandwidth_buffer_bytes: args.bandwidth_mib << 20,
        run_check_tokens: args.run_tokens as usize,
        page_cache: args.page_cache.name().into(),
        page_cache_refill_s,
    }
}

fn rust_identity_of(kernel: String, threading: Option<String>) -> RustIdentity {
    RustIdentity {
        name: "bitnet-engine".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        kernel,
        exact_reference_rounding: true,
        threading,
    }
}

/// Writes the JSON report to `--out`, then prints it (`--json`) or the tables.
fn print_and_save(args: &BenchArgs, report: &BenchReport) -> Result<Exit, Failure> {
    let json = serde_json::to_string_pretty(report).or_exit(Exit::Internal)?;
    if let Some(out) = &args.out {
        crate::files::write_atomic(out, json.as_bytes())?;
    }
    if args.json {
        println!("{json}");
    } else {
        print!("{}", table::render(report));
    }
    Ok(Exit::Ok)
}

/// Both engines at `threads` threads, each in its own worker process, alternating which one
/// goes first in every round so that a change in the machine's load hits both alike.
fn measure_engines(
    model: &Path,
    threads: usize,
    plan: &Plan,
    config: &Config,
    profile: RefProfile,
) -> anyhow::Result<(ThreadResult, RustKernel)> {
    let mut cpp = WorkerHandle::spawn(EngineKind::Cpp, model, threads, plan.n_ctx, profile)?;
    let mut rust = WorkerHandle::spawn(EngineKind::Rust, model, threads, plan.n_ctx, profile)?;
    let mut decode: [Vec<Vec<f64>>; 2] = [Vec::new(), Vec::new()];
    let mut prefill: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut methods = [String::new(), String::new()];
    // Warm-up: pages in the model, grows every buffer.
    for w in [&mut cpp, &mut rust] {
        w.decode(plan.tokens)?;
    }
    for round in 0..plan.runs {
        for i in order(round) {
            let w = if i == 0 { &mut cpp } else { &mut rust };
            decode[i].push(w.decode(plan.tokens)?);
        }
    }
    if plan.prefill > 0 {
        for w in [&mut cpp, &mut rust] {
            w.prefill(plan.prefill)?;
        }
        for round in 0..plan.prefill_runs {
            for i in order(round) {
                let w = if i == 0 { &mut cpp } else { &mut rust };
                let (s, method) = w.prefill(plan.prefill)?;
                prefill[i].push(s);
                methods[i] = method;
            }
        }
    }
    let memory = [cpp.memory()?, rust.memory()?];
    let ready = [cpp.ready.clone(), rust.ready.clone()];
    cpp.finish()?;
    rust.finish()?;

    let mut out = Vec::new();
    let mut rust_identity = (String::new(), None);
    for i in 0..2 {
        let Reply::Ready { load_s, threads_used, n_ctx, kernel, threading } = &ready[i] else {
            unreachable!("a spawned worker has answered Ready")
        };
        if i == 1 {
            rust_identity = (kernel.clone(), threading.clone());
        }
        let runs_tokens_per_s: Vec<f64> =
            decode[i].iter().map(|run| run.len() as f64 / run.iter().sum::<f64>()).collect();
        let all: Vec<f64> = decode[i].iter().flatten().copied().collect();
        let tokens_per_s_median = gemv::median(&runs_tokens_per_s);
        let ms_per_token_median = 1e3 / tokens_per_s_median;
        out.push(EngineResult {
            threads_used: *threads_used,
            load_s: *load_s,
            decode: Decode {
                tokens: plan.tokens,
                tokens_per_s_median,
                tokens_per_s_best: runs_tokens_per_s.iter().copied().fold(0.0, f64::max),
                ms_per_token_median,
                ms_per_token_p50: gemv::median(&all) * 1e3,
                ms_per_token_min: all.iter().copied().fold(f64::INFINITY, f64::min) * 1e3,
                runs_tokens_per_s,
                bandwidth_fraction: None,
            },
            prefill: (plan.prefill > 0).then(|| Prefill {
                tokens: plan.prefill,
                method: methods[i].clone(),
                tokens_per_s_median: plan.prefill as f64 / gemv::median(&prefill[i]),
                runs_s: prefill[i].clone(),
            }),
            memory: Memory {
                peak_rss_bytes: memory[i].vm_hwm,
                rss_anon_bytes: memory[i].rss_anon,
                rss_file_bytes: memory[i].rss_file,
                kv_cache_bytes: model::kv_cache_bytes(config, *n_ctx),
                model_mapped_bytes: memory[i].model_mapped,
                model_mapped_2mib_bytes: memory[i].model_mapped_2mib,
            },
        });
    }
    let rust_result = out.pop().expect("two engines");
    let reference_result = out.pop().expect("two engines");
    let paired: Vec<f64> = rust_result
        .decode
        .runs_tokens_per_s
        .iter()
        .zip(&reference_result.decode.runs_tokens_per_s)
        .map(|(r, c)| r / c)
        .collect();
    let ratios = Ratios {
        decode_tokens_per_s: rust_result.decode.tokens_per_s_median
            / reference_result.decode.tokens_per_s_median,
        decode_tokens_per_s_paired: gemv::median(&paired),
        decode_tokens_per_s_best: rust_result.decode.tokens_per_s_best
            / reference_result.decode.tokens_per_s_best,
        prefill_tokens_per_s: match (&rust_result.prefill, &reference_result.prefill) {
            (Some(r), Some(c)) => Some(r.tokens_per_s_median / c.tokens_per_s_median),
            _ => None,
        },
        peak_rss: rust_result.memory.peak_rss_bytes as f64
            / reference_result.memory.peak_rss_bytes.max(1) as f64,
    };
    Ok((
        ThreadResult { threads, rust: rust_result, reference: reference_result, ratios, run_check: None },
        rust_identity,
    ))
}

/// What a reader of the numbers should know: a busy machine (other processes take turns on
/// the CPUs, which hurts spinning multi-threaded code most) or an engine that did not use the
/// threads asked for.
fn warnings(r: &BenchReport) -> Vec<String> {
    let mut out = Vec::new();
    let cpus = r.machine.logical_cpus as f64;
    let busiest = [r.machine.load_average_start, r.machine.load_average_end]
        .iter()
        .flatten()
        .map(|l| l[0])
        .fold(0.0f64, f64::max);
    if busiest > cpus * 0.75 {
        out.push(format!(
            "the machine was busy (1-minute load average up to {busiest:.1} on {} CPUs): timings are noisy, \
             multi-threaded ones most",
            r.machine.logical_cpus
        ));
    }
    if let Some(&max) = r.settings.threads.iter().max() {
        if max > r.machine.logical_cpus {
            out.push(format!("{max} threads asked on {} CPUs", r.machine.logical_cpus));
        }
    }
    for t in &r.results {
        if t.rust.threads_used != t.threads {
            out.push(format!(
                "the Rust engine ran on {} thread(s) where {} were asked (this build's engine takes no \
                 thread count)",
                t.rust.threads_used, t.threads
            ));
        }
    }
    out
}

/// Engine order in a round: reference first in even rounds, Rust first in odd ones.
fn order(round: usize) -> [usize; 2] {
    if round.is_multiple_of(2) {
        [0, 1]
    } else {
        [1, 0]
    }
}
