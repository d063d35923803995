//! The human-readable form of a bench report.

use std::fmt::Write;

use tabled::settings::Style;
use tabled::{Table, Tabled};

use super::report::{BenchReport, EngineResult};

#[derive(Tabled)]
struct EngineRow {
    #[tabled(rename = "threads")]
    threads: String,
    #[tabled(rename = "engine")]
    engine: String,
    #[tabled(rename = "decode tok/s")]
    decode: String,
    #[tabled(rename = "ms/token")]
    ms: String,
    #[tabled(rename = "of bandwidth limit")]
    fraction: String,
    #[tabled(rename = "prefill tok/s")]
    prefill: String,
    #[tabled(rename = "peak RSS")]
    peak: String,
    #[tabled(rename = "2 MiB pages")]
    huge: String,
    #[tabled(rename = "load")]
    load: String,
}

#[derive(Tabled)]
struct GemvRow {
    #[tabled(rename = "rows×cols")]
    shape: String,
    #[tabled(rename = "threads")]
    threads: usize,
    #[tabled(rename = "kernel")]
    kernel: String,
    #[tabled(rename = "rust µs")]
    rust_us: String,
    #[tabled(rename = "rust GB/s")]
    rust_gb: String,
    #[tabled(rename = "rust GOP/s")]
    rust_gop: String,
    #[tabled(rename = "ref µs")]
    ref_us: String,
    #[tabled(rename = "ref GB/s")]
    ref_gb: String,
    #[tabled(rename = "speed-up")]
    speedup: String,
    #[tabled(rename = "same output")]
    same: String,
}

#[derive(Tabled)]
struct LmHeadRow {
    #[tabled(rename = "threads")]
    threads: usize,
    #[tabled(rename = "rust ms")]
    rust_ms: String,
    #[tabled(rename = "rust GB/s")]
    rust_gb: String,
    #[tabled(rename = "ref ms")]
    ref_ms: String,
    #[tabled(rename = "ref GB/s")]
    ref_gb: String,
    #[tabled(rename = "speed-up (paired)")]
    speedup: String,
    #[tabled(rename = "same output")]
    same: String,
}

fn same_output(identical: bool, max_abs_diff: f64) -> String {
    if identical {
        "bit-exact".into()
    } else {
        format!("max |Δ| {max_abs_diff:.1e}")
    }
}

#[derive(Tabled)]
struct GoalRow {
    #[tabled(rename = "goal")]
    description: String,
    #[tabled(rename = "measured")]
    measured: String,
    #[tabled(rename = "status")]
    status: String,
}

fn mb(bytes: u64) -> String {
    format!("{} MB", bytes >> 20)
}

fn engine_row(threads: usize, name: &str, e: &EngineResult) -> EngineRow {
    EngineRow {
        threads: if e.threads_used == threads {
            threads.to_string()
        } else {
            format!("{threads} (used {})", e.threads_used)
        },
        engine: name.into(),
        decode: format!("{:.2}", e.decode.tokens_per_s_median),
        ms: format!("{:.2}", e.decode.ms_per_token_median),
        fraction: e.decode.bandwidth_fraction.map_or("-".into(), |f| format!("{:.1} %", f * 100.0)),
        prefill: e
            .prefill
            .as_ref()
            .map_or("-".into(), |p| format!("{:.1} ({})", p.tokens_per_s_median, p.method)),
        peak: mb(e.memory.peak_rss_bytes),
        huge: match e.memory.model_mapped_bytes {
            0 => "-".into(),
            all => format!("{:.0} %", 100.0 * e.memory.model_mapped_2mib_bytes as f64 / all as f64),
        },
        load: format!("{:.2} s", e.load_s),
    }
}

fn measured(v: Option<f64>, id: &str) -> String {
    match (v, id) {
        (None, _) => "-".into(),
        (Some(v), "rust_peak_memory") => format!("{} MB", (v as u64) >> 20),
        (Some(v), "decode_bandwidth_fraction") => format!("{:.1} %", v * 100.0),
        (Some(v), _) => format!("{v:.3}"),
    }
}

/// The report as the terminal shows it: machine, model and settings, then one table per
/// measurement and the goals.
pub fn render(r: &BenchReport) -> String {
    let mut s = String::new();
    header(&mut s, r);
    engines_table(&mut s, r);
    run_checks(&mut s, r);
    gemv_table(&mut s, r);
    lm_head_table(&mut s, r);
    goals_table(&mut s, r);
    s
}

/// Machine, bandwidth, model, engines and settings, a line each.
fn header(s: &mut String, r: &BenchReport) {
    let m = &r.machine;
    let _ = writeln!(
        s,
        "machine: {} ({} CPUs; {}), load average {}",
        m.cpu_model.as_deref().unwrap_or("unknown CPU"),
        m.logical_cpus,
        m.caches.join(", "),
        m.load_average_start.map_or("-".into(), |l| format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2]))
    );
    let _ = writeln!(
        s,
        "cpu flags: {} (from {}); QK256 kernels: {}",
        if m.cpu_flags.is_empty() { "none of interest".to_string() } else { m.cpu_flags.join(" ") },
        m.cpu_flags_source,
        m.qk256_kernels.join(", ")
    );
    let bw: Vec<String> =
        r.bandwidth.iter().map(|b| format!("{:.1} GB/s at {} thread(s)", b.gb_per_s, b.threads)).collect();
    let _ = writeln!(s, "read bandwidth: {}", bw.join(", "));
    let b = &r.model.bytes_per_token;
    let _ = writeln!(
        s,
        "model: {} ({}, {} layers, {}); bytes per decode step {} (ternary {}, lm_head {}, KV {})",
        r.model.path,
        r.model.kind,
        r.model.n_layer,
        mb(r.model.file_bytes),
        mb(b.total),
        mb(b.ternary_weights),
        mb(b.lm_head),
        mb(b.kv_cache_mean)
    );
    let _ = writeln!(
        s,
        "engines: rust {} (kernel {}); reference {}",
        r.engines.rust.version, r.engines.rust.kernel, r.engines.reference.build
    );
    let _ = writeln!(
        s,
        "decode: {} tokens × {} runs (median, after a warm-up run); prefill: {} tokens × {} runs; \
         page cache: {}",
        r.settings.decode_tokens,
        r.settings.decode_runs,
        r.settings.prefill_tokens,
        r.settings.prefill_runs,
        match r.settings.page_cache_refill_s {
            Some(secs) => format!("model read back with 2 MiB pages ({secs:.1} s)"),
            None => "kept as it was".into(),
        }
    );
}

/// Decode, prefill and memory of both engines and their ratios, per thread count.
fn engines_table(s: &mut String, r: &BenchReport) {
    let mut rows = Vec::new();
    for t in &r.results {
        rows.push(engine_row(t.threads, "bitnet.cpp", &t.reference));
        rows.push(engine_row(t.threads, "rust", &t.rust));
        rows.push(EngineRow {
            threads: t.threads.to_string(),
            engine: "rust ÷ ref".into(),
            decode: format!(
                "{:.3} paired (medians {:.3}, best runs {:.3})",
                t.ratios.decode_tokens_per_s_paired,
                t.ratios.decode_tokens_per_s,
                t.ratios.decode_tokens_per_s_best
            ),
            ms: String::new(),
            fraction: String::new(),
            prefill: t.ratios.prefill_tokens_per_s.map_or("-".into(), |v| format!("{v:.3}")),
            peak: format!("{:.3}", t.ratios.peak_rss),
            huge: String::new(),
            load: String::new(),
        });
    }
    let _ = writeln!(s, "{}", Table::new(rows).with(Style::rounded()));
}

/// The timed `harness run` checks.
fn run_checks(s: &mut String, r: &BenchReport) {
    for t in &r.results {
        if let Some(c) = &t.run_check {
            let _ = writeln!(
                s,
                "harness run, {} tokens, {} thread(s): wall {:.2} s; rust {:.2} s, reference {:.2} s \
                 (wall ÷ slower {:.2})",
                c.tokens, t.threads, c.wall_s, c.rust_s, c.reference_s, c.wall_over_slower
            );
        }
    }
}

/// The GEMV micro-benchmarks, when run: a row per shape, thread count and kernel, each kernel
/// against the same reference timing.
fn gemv_table(s: &mut String, r: &BenchReport) {
    if !r.gemv.is_empty() {
        let rows: Vec<GemvRow> = r
            .gemv
            .iter()
            .flat_map(|g| {
                g.kernels.iter().map(move |k| GemvRow {
                    shape: format!("{}×{}", g.rows, g.cols),
                    threads: g.threads,
                    kernel: if k.kernel == g.kernel {
                        format!("{} (engine's)", k.kernel)
                    } else {
                        k.kernel.clone()
                    },
                    rust_us: format!("{:.1}", k.rust.us_per_product),
                    rust_gb: format!("{:.1}", k.rust.gb_per_s),
                    rust_gop: format!("{:.1}", k.rust.gop_per_s),
                    ref_us: format!("{:.1}", g.reference.us_per_product),
                    ref_gb: format!("{:.1}", g.reference.gb_per_s),
                    speedup: format!("{:.2}×", k.speedup),
                    same: same_output(k.outputs_identical, k.max_abs_diff),
                })
            })
            .collect();
        let _ = writeln!(
            s,
            "QK256 GEMV, matrix in cache ({} products per batch, median of {} batches; the reference timed once \
             per shape and thread count):",
            r.settings.gemv_repeats, r.settings.gemv_batches
        );
        let _ = writeln!(s, "{}", Table::new(rows).with(Style::rounded()));
    }
}

/// The lm_head micro-benchmark, when run.
fn lm_head_table(s: &mut String, r: &BenchReport) {
    if let Some(first) = r.lm_head.first() {
        let rows: Vec<LmHeadRow> = r
            .lm_head
            .iter()
            .map(|l| LmHeadRow {
                threads: l.threads,
                rust_ms: format!("{:.2}", l.rust.ms_per_product),
                rust_gb: format!("{:.1}", l.rust.gb_per_s),
                ref_ms: format!("{:.2}", l.reference.ms_per_product),
                ref_gb: format!("{:.1}", l.reference.gb_per_s),
                speedup: format!("{:.2}×", l.speedup),
                same: same_output(l.outputs_identical, l.max_abs_diff),
            })
            .collect();
        let _ = writeln!(
            s,
            "lm_head alone: F16 {}×{} ({}) read from the mapped model, {} products per batch, {} batches:",
            first.rows,
            first.cols,
            mb(first.bytes),
            super::lm_head::REPEATS,
            r.settings.gemv_batches
        );
        let _ = writeln!(s, "{}", Table::new(rows).with(Style::rounded()));
    }
}

/// The goals and the warnings.
fn goals_table(s: &mut String, r: &BenchReport) {
    let rows: Vec<GoalRow> = r
        .goals
        .iter()
        .map(|g| GoalRow {
            description: format!("[{}] {}", g.level, g.description),
            measured: measured(g.measured, &g.id),
            status: g.status.replace('_', " "),
        })
        .collect();
    let _ = writeln!(s, "{}", Table::new(rows).with(Style::rounded()));
    for w in &r.warnings {
        let _ = writeln!(s, "warning: {w}");
    }
}
