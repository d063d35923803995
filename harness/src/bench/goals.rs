//! The performance goals of the project (issue 17), checked against one bench report.
//!
//! Goals are printed, never asserted: a benchmark is not a test (`cargo test` has no timed
//! assertion). Every goal is listed in every report, at each thread count it is stated for
//! (1 and 2) and each one measured. A goal passes or fails only on its own measurement: one
//! that was not taken (a thread count not run, `--no-gemv`, `--prefill 0`), or was taken on
//! another model than the one the goal is stated for, is `not_measured` (the figure, if any,
//! stays in `measured` and the note says why it does not count).

use super::gemv::SHAPES;
use super::report::{BenchModel, BenchReport, GemvKernelResult, GemvResult, Goal, ThreadResult};

/// Rust decode tokens/s ÷ reference decode tokens/s (paired by round): required.
pub const DECODE_RATIO_MIN: f64 = 1.15;
/// Rust prefill tokens/s ÷ reference, a batch of [`PREFILL_GOAL_TOKENS`] tokens: required.
pub const PREFILL_RATIO_MIN: f64 = 1.0;
/// The prefill batch the prefill goal is stated for.
pub const PREFILL_GOAL_TOKENS: usize = 128;
/// Fraction of the bandwidth limit the Rust engine's decode should reach: the target.
pub const BANDWIDTH_FRACTION_TARGET: f64 = 0.85;
/// Hot-cache QK256 GEMV speed-up over the reference, best kernel, on a CPU with VNNI.
pub const GEMV_SPEEDUP_MIN_VNNI: f64 = 2.0;
/// The same, on a CPU without VNNI (the AVX2 kernel).
pub const GEMV_SPEEDUP_MIN: f64 = 1.3;
/// `harness run` wall time ÷ the slower engine's own time.
pub const RUN_WALL_OVER_SLOWER_MAX: f64 = 1.15;
/// The `harness run` length the wall-time goal is stated for.
pub const RUN_GOAL_TOKENS: usize = 64;
/// Allowed Rust peak memory above model file + KV cache.
pub const MEMORY_SLACK_BYTES: u64 = 100 << 20;
/// The thread counts every required goal is stated at.
pub const GOAL_THREADS: [usize; 2] = [1, 2];
/// Layers of the model the model-level goals are stated for (BitNet b1.58 2B-4T).
pub const GOAL_LAYERS: usize = 30;
/// CPU flags (/proc/cpuinfo spelling) that make a CPU one "with VNNI".
const VNNI_FLAGS: [&str; 2] = ["avx512_vnni", "avx_vnni"];
/// QK256 kernels from slowest to fastest: the GEMV goal takes the last one a row has.
const KERNEL_RANK: [&str; 4] = ["scalar", "avx2", "avxvnni", "avx512vnni"];

/// Which way a goal's bound goes.
#[derive(Clone, Copy)]
enum Bound {
    AtLeast(f64),
    AtMost(f64),
}

impl Bound {
    fn value(self) -> f64 {
        match self {
            Bound::AtLeast(v) | Bound::AtMost(v) => v,
        }
    }

    fn holds(self, x: f64) -> bool {
        match self {
            Bound::AtLeast(v) => x >= v,
            Bound::AtMost(v) => x <= v,
        }
    }
}

/// What a goal is: its identity, level and bound.
struct Spec {
    id: &'static str,
    level: &'static str,
    description: String,
    threads: Option<usize>,
    bound: Option<Bound>,
}

/// What the report says about it.
#[derive(Default)]
struct Outcome {
    /// The figure, when one was taken.
    measured: Option<f64>,
    /// Why the figure does not count (another model, another length): `not_measured`.
    off_scope: Option<String>,
    /// Why the goal fails whatever the figure (outputs that differ from the reference).
    invalid: Option<String>,
    /// Anything else a reader should know.
    notes: Vec<String>,
}

/// `not_measured` without a finite figure or with one that does not count; else `fail` when
/// invalid or out of bound, `pass` otherwise.
fn goal(spec: Spec, outcome: Outcome) -> Goal {
    let measured = outcome.measured.filter(|v| v.is_finite());
    let status = match (measured, spec.bound, &outcome.off_scope, &outcome.invalid) {
        (None, _, _, _) | (_, None, _, _) | (_, _, Some(_), _) => "not_measured",
        (Some(_), Some(_), None, Some(_)) => "fail",
        (Some(v), Some(b), None, None) => {
            if b.holds(v) {
                "pass"
            } else {
                "fail"
            }
        }
    };
    let notes: Vec<String> =
        outcome.off_scope.into_iter().chain(outcome.invalid).chain(outcome.notes).collect();
    Goal {
        id: spec.id.into(),
        description: spec.description,
        threads: spec.threads,
        level: spec.level.into(),
        threshold: spec.bound.map(Bound::value),
        measured,
        status: status.into(),
        note: (!notes.is_empty()).then(|| notes.join("; ")),
    }
}

/// The model the model-level goals are stated for: 30 layers with the 2B-4T shapes, generated
/// (`--shape 2b`) or the real file.
pub fn is_goal_model(m: &BenchModel) -> bool {
    (m.n_layer, m.n_embd, m.n_ff, m.n_head, m.n_head_kv, m.n_vocab)
        == (GOAL_LAYERS, 2560, 6912, 20, 5, 128256)
}

/// Whether the CPU has a VNNI dot-product instruction (AVX-512 VNNI or AVX-VNNI).
pub fn has_vnni(r: &BenchReport) -> bool {
    r.machine.cpu_flags.iter().any(|f| VNNI_FLAGS.contains(&f.as_str()))
}

/// The GEMV goal's bound on this CPU.
pub fn gemv_speedup_min(r: &BenchReport) -> f64 {
    if has_vnni(r) {
        GEMV_SPEEDUP_MIN_VNNI
    } else {
        GEMV_SPEEDUP_MIN
    }
}

/// The goals' thread counts: 1 and 2, and any other measured.
fn goal_threads(r: &BenchReport) -> Vec<usize> {
    let mut threads: Vec<usize> = GOAL_THREADS.iter().chain(&r.settings.threads).copied().collect();
    threads.sort_unstable();
    threads.dedup();
    threads
}

pub fn evaluate(r: &BenchReport) -> Vec<Goal> {
    let mut goals = Vec::new();
    let model_scope = (!is_goal_model(&r.model)).then(|| {
        format!(
            "measured on a {}-layer {} model (n_embd {}); the goal is stated for the {GOAL_LAYERS}-layer \
             2B-shaped model (`harness bench` without --model or --layers)",
            r.model.n_layer, r.model.kind, r.model.n_embd
        )
    });
    for threads in goal_threads(r) {
        let result = r.results.iter().find(|x| x.threads == threads);
        let at = At { report: r, threads, result, scope: &model_scope };
        goals.extend([
            decode_goal(&at),
            prefill_goal(&at),
            memory_goal(&at),
            run_goal(&at),
            bandwidth_goal(&at),
        ]);
    }
    for (rows, cols) in SHAPES {
        for t in goal_threads(r) {
            goals.push(gemv_goal(r, rows, cols, t));
        }
    }
    goals.push(goal(
        Spec {
            id: "no_timed_test_assertions",
            level: "required",
            description: "benchmarks are not tests: no timed assertion in `cargo test`".into(),
            threads: None,
            bound: None,
        },
        Outcome {
            notes: vec![
                "a property of the test suite, not of this run: tests check the report's shape and the GEMV \
                 outputs only"
                    .into(),
            ],
            ..Outcome::default()
        },
    ));
    goals
}

/// What a goal at one thread count is judged on.
struct At<'r> {
    report: &'r BenchReport,
    threads: usize,
    /// The engines' run at that thread count, when there was one.
    result: Option<&'r ThreadResult>,
    /// Why a model-level figure does not count (it was measured on another model), if so.
    scope: &'r Option<String>,
}

impl At<'_> {
    /// The goal `spec`, not measured: nothing ran at this thread count.
    fn not_run(&self, spec: Spec) -> Goal {
        let t = self.threads;
        goal(
            spec,
            Outcome {
                notes: vec![format!("not run at {t} thread(s) (add --threads {t})")],
                ..Outcome::default()
            },
        )
    }
}

fn decode_goal(at: &At<'_>) -> Goal {
    let (t, scope) = (at.threads, at.scope);
    let spec = Spec {
        id: "decode_ratio",
        level: "required",
        description: format!(
            "decode tokens/s, Rust ÷ reference (paired), {GOAL_LAYERS}-layer 2B-shaped model, {t} thread(s) \
             ≥ {DECODE_RATIO_MIN}"
        ),
        threads: Some(t),
        bound: Some(Bound::AtLeast(DECODE_RATIO_MIN)),
    };
    let Some(x) = at.result else { return at.not_run(spec) };
    // Paired by round: the machine's state drifts over seconds; a round's runs share it.
    let mut notes = vec![format!(
        "median of per-round ratios; ratio of medians {:.3}, of best runs {:.3}",
        x.ratios.decode_tokens_per_s, x.ratios.decode_tokens_per_s_best
    )];
    if x.rust.threads_used != t {
        notes.push(format!("the Rust engine used {} thread(s)", x.rust.threads_used));
    }
    goal(
        spec,
        Outcome {
            measured: Some(x.ratios.decode_tokens_per_s_paired),
            off_scope: scope.clone(),
            notes,
            ..Outcome::default()
        },
    )
}

fn prefill_goal(at: &At<'_>) -> Goal {
    let (r, t, scope) = (at.report, at.threads, at.scope);
    let spec = Spec {
        id: "prefill_ratio",
        level: "required",
        description: format!(
            "prefill ({PREFILL_GOAL_TOKENS}-token batch) tokens/s, Rust ÷ reference, {GOAL_LAYERS}-layer \
             2B-shaped model, {t} thread(s) ≥ {PREFILL_RATIO_MIN:.1}"
        ),
        threads: Some(t),
        bound: Some(Bound::AtLeast(PREFILL_RATIO_MIN)),
    };
    let Some(x) = at.result else { return at.not_run(spec) };
    let tokens = r.settings.prefill_tokens;
    let length = (tokens != PREFILL_GOAL_TOKENS).then(|| {
        format!("a batch of {tokens} tokens, not {PREFILL_GOAL_TOKENS} (--prefill {PREFILL_GOAL_TOKENS})")
    });
    let notes = if tokens == 0 { vec!["prefill skipped (--prefill 0)".into()] } else { Vec::new() };
    goal(
        spec,
        Outcome {
            measured: x.ratios.prefill_tokens_per_s,
            off_scope: join(scope.clone(), if tokens == 0 { None } else { length }),
            notes,
            ..Outcome::default()
        },
    )
}

fn memory_goal(at: &At<'_>) -> Goal {
    let (r, t, scope) = (at.report, at.threads, at.scope);
    let spec = |limit: Option<u64>| Spec {
        id: "rust_peak_memory",
        level: "required",
        description: format!(
            "Rust peak resident memory ≤ model file + KV cache + 100 MB, {GOAL_LAYERS}-layer 2B-shaped \
             model, {t} thread(s)"
        ),
        threads: Some(t),
        bound: limit.map(|l| Bound::AtMost(l as f64)),
    };
    let Some(x) = at.result else { return at.not_run(spec(None)) };
    let limit = r.model.file_bytes + x.rust.memory.kv_cache_bytes + MEMORY_SLACK_BYTES;
    let peak = x.rust.memory.peak_rss_bytes;
    goal(
        spec(Some(limit)),
        Outcome {
            // 0: /proc/self/status was unreadable.
            measured: (peak > 0).then_some(peak as f64),
            off_scope: scope.clone(),
            notes: vec![format!(
                "peak {} MB (anonymous {} MB at the end), limit {} MB",
                peak >> 20,
                x.rust.memory.rss_anon_bytes >> 20,
                limit >> 20
            )],
            ..Outcome::default()
        },
    )
}

fn run_goal(at: &At<'_>) -> Goal {
    let (r, t, scope) = (at.report, at.threads, at.scope);
    let spec = Spec {
        id: "run_wall_over_slower_engine",
        level: "required",
        description: format!(
            "`harness run` of {RUN_GOAL_TOKENS} tokens: wall time ≤ {RUN_WALL_OVER_SLOWER_MAX} × the slower \
             engine's own time, {GOAL_LAYERS}-layer 2B-shaped model, {t} thread(s)"
        ),
        threads: Some(t),
        bound: Some(Bound::AtMost(RUN_WALL_OVER_SLOWER_MAX)),
    };
    let Some(x) = at.result else { return at.not_run(spec) };
    let Some(c) = &x.run_check else {
        let why = if r.settings.run_check_tokens == 0 {
            "skipped (--run-tokens 0)"
        } else {
            "the `harness run` check failed (see the warnings on stderr)"
        };
        return goal(spec, Outcome { notes: vec![why.into()], ..Outcome::default() });
    };
    let length = (c.tokens != RUN_GOAL_TOKENS).then(|| {
        format!("a run of {} tokens, not {RUN_GOAL_TOKENS} (--run-tokens {RUN_GOAL_TOKENS})", c.tokens)
    });
    goal(
        spec,
        Outcome {
            measured: Some(c.wall_over_slower),
            off_scope: join(scope.clone(), length),
            notes: vec![format!(
                "wall {:.2} s, rust {:.2} s, reference {:.2} s",
                c.wall_s, c.rust_s, c.reference_s
            )],
            ..Outcome::default()
        },
    )
}

fn bandwidth_goal(at: &At<'_>) -> Goal {
    let (t, scope) = (at.threads, at.scope);
    let spec = Spec {
        id: "decode_bandwidth_fraction",
        level: "target",
        description: format!(
            "Rust decode reaches ≥ {:.0} % of the bandwidth limit, {GOAL_LAYERS}-layer 2B-shaped model, {t} \
             thread(s)",
            BANDWIDTH_FRACTION_TARGET * 100.0
        ),
        threads: Some(t),
        bound: Some(Bound::AtLeast(BANDWIDTH_FRACTION_TARGET)),
    };
    let Some(x) = at.result else { return at.not_run(spec) };
    goal(
        spec,
        Outcome {
            measured: x.rust.decode.bandwidth_fraction,
            off_scope: scope.clone(),
            notes: vec![format!(
                "reference reaches {}",
                x.reference.decode.bandwidth_fraction.map_or("-".into(), |f| format!("{:.1} %", f * 100.0))
            )],
            ..Outcome::default()
        },
    )
}

/// The fastest kernel's row of a GEMV entry (VNNI, else AVX2, else scalar).
pub fn best_kernel(g: &GemvResult) -> Option<&GemvKernelResult> {
    g.kernels.iter().max_by_key(|k| KERNEL_RANK.iter().position(|n| *n == k.kernel))
}

/// The GEMV goal of one shape at one thread count: the best kernel's row. Its bound depends on
/// the CPU: 2.0× with VNNI, 1.3× without.
fn gemv_goal(r: &BenchReport, rows: usize, cols: usize, t: usize) -> Goal {
    let min = gemv_speedup_min(r);
    let entry = r.gemv.iter().find(|g| (g.rows, g.cols, g.threads) == (rows, cols, t));
    let best = entry.and_then(best_kernel);
    let spec = Spec {
        id: "gemv_hot_speedup",
        level: "required",
        description: format!(
            "QK256 GEMV {rows}×{cols} in cache, best kernel ({}): Rust ≥ {min:.1}× the reference's I2_S mul_mat \
             (CPU {} VNNI), {t} thread(s)",
            best.map_or("-", |k| k.kernel.as_str()),
            if has_vnni(r) { "with" } else { "without" }
        ),
        threads: Some(t),
        bound: Some(Bound::AtLeast(min)),
    };
    let Some(k) = best else {
        let why = if r.gemv.is_empty() {
            "GEMV skipped (--no-gemv)".to_string()
        } else {
            format!("not run at {t} thread(s) (add --threads {t})")
        };
        return goal(spec, Outcome { notes: vec![why], ..Outcome::default() });
    };
    let mut notes = Vec::new();
    if has_vnni(r) && !k.kernel.ends_with("vnni") {
        notes.push(format!(
            "the CPU has VNNI and the best QK256 kernel the engine has for it is {}",
            k.kernel
        ));
    }
    goal(
        spec,
        Outcome {
            measured: Some(k.speedup),
            invalid: (!k.outputs_identical).then(|| {
                format!("{} output differs from the reference (max |Δ| {:e})", k.kernel, k.max_abs_diff)
            }),
            notes,
            ..Outcome::default()
        },
    )
}

/// Two optional reasons as one.
fn join(a: Option<String>, b: Option<String>) -> Option<String> {
    match (a, b) {
        (Some(a), Some(b)) => Some(format!("{a}; {b}")),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn engine(tokens_per_s: f64, bandwidth_fraction: f64, peak_rss_bytes: u64) -> Value {
        json!({
            "threads_used": 1, "load_s": 0.1,
            "decode": { "tokens": 32, "runs_tokens_per_s": [tokens_per_s], "tokens_per_s_median": tokens_per_s,
                        "tokens_per_s_best": tokens_per_s, "ms_per_token_median": 1e3 / tokens_per_s,
                        "ms_per_token_p50": 1e3 / tokens_per_s, "ms_per_token_min": 1e3 / tokens_per_s,
                        "bandwidth_fraction": bandwidth_fraction },
            "prefill": { "tokens": 128, "method": "batch", "runs_s": [1.0], "tokens_per_s_median": 128.0 },
            "memory": { "peak_rss_bytes": peak_rss_bytes, "rss_anon_bytes": 0, "rss_file_bytes": 0,
                        "kv_cache_bytes": 1 << 20, "model_mapped_bytes": 0, "model_mapped_2mib_bytes": 0 }
        })
    }

    fn speed() -> Value {
        json!({ "us_per_product": 1.0, "gb_per_s": 1.0, "gop_per_s": 1.0 })
    }

    fn kernel(name: &str, speedup: f64, identical: bool) -> Value {
        json!({ "kernel": name, "rust": speed(), "speedup": speedup, "outputs_identical": identical,
                "max_abs_diff": 0.0 })
    }

    /// A 1-thread report of the given model depth on a CPU with the given flags: decode 1.2×,
    /// prefill 1.1×, peak 1000 MB, `harness run` 1.1×; GEMV avx2 1.5× and avx512vnni 2.5×.
    fn report(n_layer: usize, cpu_flags: &[&str], vnni_identical: bool) -> BenchReport {
        let gemv: Vec<Value> = SHAPES
            .iter()
            .map(|&(rows, cols)| {
                json!({ "rows": rows, "cols": cols, "threads": 1, "packed_bytes": rows * cols / 4,
                        "kernel": "avx512vnni", "rust": speed(), "reference": speed(), "speedup": 2.5,
                        "outputs_identical": vnni_identical, "max_abs_diff": 0.0,
                        "kernels": [kernel("scalar", 0.1, true), kernel("avx512vnni", 2.5, vnni_identical),
                                    kernel("avx2", 1.5, true)] })
            })
            .collect();
        serde_json::from_value(json!({
            "schema_version": "bench-1.2.0", "created_at": "2026-12-04T00:00:00Z",
            "tool": { "name": "harness", "version": "0", "git_commit": null, "git_dirty": null },
            "machine": { "cpu_model": "CPU", "cpu_flags": cpu_flags, "cpu_flags_source": "proc_cpuinfo",
                         "qk256_kernels": ["scalar", "avx2", "avx512vnni"], "logical_cpus": 2, "caches": [],
                         "memory_total_bytes": null, "load_average_start": null, "load_average_end": null },
            "settings": { "threads": [1], "decode_tokens": 32, "decode_runs": 1, "prefill_tokens": 128,
                          "prefill_runs": 1, "n_ctx": 128, "gemv_repeats": 1, "gemv_batches": 1,
                          "bandwidth_buffer_bytes": 1, "run_check_tokens": 64, "page_cache": "keep",
                          "page_cache_refill_s": null },
            "model": { "path": "m.gguf", "kind": "2b-shape", "file_bytes": 1u64 << 30, "n_layer": n_layer,
                       "n_embd": 2560, "n_ff": 6912, "n_head": 20, "n_head_kv": 5, "n_vocab": 128256,
                       "bytes_per_token": { "ternary_weights": 0, "lm_head": 0, "other_weights": 0,
                                            "embedding_row": 0, "kv_cache_mean": 0, "total": 0 } },
            "engines": { "rust": { "name": "r", "version": "0", "kernel": "avx512vnni",
                                   "exact_reference_rounding": true, "threading": null },
                         "reference": { "build": "b", "kernels": "k", "library_path": "l", "system_info": "s" } },
            "bandwidth": [],
            "results": [ { "threads": 1, "rust": engine(12.0, 0.9, 1000 << 20),
                           "reference": engine(10.0, 0.8, 1000 << 20),
                           "ratios": { "decode_tokens_per_s": 1.2, "decode_tokens_per_s_paired": 1.2,
                                       "decode_tokens_per_s_best": 1.2, "prefill_tokens_per_s": 1.1,
                                       "peak_rss": 1.0 },
                           "run_check": { "tokens": 64, "wall_s": 1.1, "rust_s": 1.0, "reference_s": 0.9,
                                          "wall_over_slower": 1.1 } } ],
            "gemv": gemv, "lm_head": [], "goals": [], "warnings": []
        }))
        .unwrap()
    }

    fn status<'a>(goals: &'a [Goal], id: &str, threads: usize) -> Vec<&'a str> {
        goals.iter().filter(|g| g.id == id && g.threads == Some(threads)).map(|g| g.status.as_str()).collect()
    }

    #[test]
    fn measured_on_the_goal_model_passes_and_fails_on_the_figures() {
        let goals = evaluate(&report(30, &["avx2", "avx512_vnni"], true));
        for id in [
            "decode_ratio",
            "prefill_ratio",
            "rust_peak_memory",
            "run_wall_over_slower_engine",
            "decode_bandwidth_fraction",
        ] {
            assert_eq!(status(&goals, id, 1), ["pass"], "{id}");
            // Not run at 2 threads: listed, never a pass.
            assert_eq!(status(&goals, id, 2), ["not_measured"], "{id}");
        }
        // VNNI CPU: 2.0× on the best (VNNI) row, whatever the order of the rows.
        assert_eq!(status(&goals, "gemv_hot_speedup", 1), ["pass"; 3]);
        assert_eq!(status(&goals, "gemv_hot_speedup", 2), ["not_measured"; 3]);
        let g = goals.iter().find(|g| g.id == "gemv_hot_speedup").unwrap();
        assert_eq!((g.threshold, g.measured), (Some(2.0), Some(2.5)));
    }

    #[test]
    fn the_gemv_bound_follows_the_cpu_and_differing_outputs_fail() {
        let r = report(30, &["avx2"], true);
        assert_eq!(gemv_speedup_min(&r), GEMV_SPEEDUP_MIN);
        let goals = evaluate(&report(30, &["avx2", "avx_vnni"], false));
        assert_eq!(status(&goals, "gemv_hot_speedup", 1), ["fail"; 3]);
    }

    #[test]
    fn another_model_is_not_measured_but_keeps_its_figure() {
        let goals = evaluate(&report(4, &[], true));
        for id in [
            "decode_ratio",
            "prefill_ratio",
            "rust_peak_memory",
            "run_wall_over_slower_engine",
            "decode_bandwidth_fraction",
        ] {
            let g = goals.iter().find(|g| g.id == id && g.threads == Some(1)).unwrap();
            assert_eq!(g.status, "not_measured", "{id}");
            assert!(
                g.measured.is_some() && g.note.as_deref().unwrap().contains("4-layer"),
                "{id}: {:?}",
                g.note
            );
        }
        // The GEMV goal does not depend on the model; without VNNI its bound is 1.3×.
        assert_eq!(status(&goals, "gemv_hot_speedup", 1), ["pass"; 3]);
    }
}
