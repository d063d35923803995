//! Receipts for tests: synthetic ones built from the `receipt` types, real ones from
//! `harness run`, and small tools to edit them as JSON.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use harness::receipt::*;
use harness::trace::{Trace, TraceOp};
use serde_json::{json, Value};

/// Runs the harness binary in `dir` (no model or reference taken from the environment).
pub fn harness(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_harness"))
        .current_dir(dir)
        .args(args)
        .env_remove("CROSSVAL_GGUF")
        .env_remove("BITNET_CPP_DIR")
        .output()
        .expect("the harness binary starts")
}

pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `harness run --quiet --out DIR/NAME.json ARGS...`, which must succeed; the receipt's path.
pub fn run_receipt(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let out = dir.join(format!("{name}.json"));
    let mut all = vec!["run", "--quiet", "--out", out.to_str().unwrap()];
    all.extend_from_slice(args);
    let o = harness(dir, &all);
    assert_eq!(code(&o), 0, "harness {all:?}: {}{}", stdout(&o), stderr(&o));
    out
}

pub fn fixture(name: &str) -> PathBuf {
    bitnet_fixtures::committed_dir().join(name)
}

pub fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

pub fn write_json(path: &Path, v: &Value) {
    std::fs::write(path, serde_json::to_string_pretty(v).unwrap()).unwrap();
}

/// A copy of the receipt at `src`, edited by `edit`, written to `dir/name`.
pub fn edited(src: &Path, dir: &Path, name: &str, edit: impl FnOnce(&mut Value)) -> PathBuf {
    let mut v = read_json(src);
    edit(&mut v);
    let path = dir.join(name);
    write_json(&path, &v);
    path
}

/// Edits the JSON footer of the saved reference at `path` in place. The file's layout:
/// MAGIC(16) | u32 format | logits | JSON footer | u64 footer length | MAGIC(16).
pub fn rewrite_footer(path: &Path, edit: impl FnOnce(&mut Value)) {
    let bytes = std::fs::read(path).unwrap();
    let n = bytes.len();
    let len = u64::from_le_bytes(bytes[n - 24..n - 16].try_into().unwrap()) as usize;
    let start = n - 24 - len;
    let mut footer: Value = serde_json::from_slice(&bytes[start..n - 24]).unwrap();
    edit(&mut footer);
    let json = serde_json::to_vec(&footer).unwrap();
    let mut out = bytes[..start].to_vec();
    out.extend_from_slice(&json);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&bytes[n - 16..]);
    std::fs::write(path, out).unwrap();
}

/// The project root (`receipts/` lives there).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

const SHA_A: &str = "9e1f8de009cbd1a1f2c3b4a5968778695a4b3c2d1e0f0a1b2c3d4e5f60718293";
const SHA_B: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn position(pos: usize, token: u32, cosine: f64, kl: f64, argmax_match: bool) -> Position {
    Position {
        pos,
        token,
        nonfinite: None,
        cosine: Some(cosine),
        rust_argmax: Some(7),
        reference_argmax: Some(if argmax_match { 7 } else { 8 }),
        rust_top_logit: Some(4.5),
        reference_top_logit: Some(4.25),
        argmax_match,
        kl: Some(kl),
        kl_reverse: Some(kl * 1.01),
        max_abs_diff: Some(0.125),
        top5_overlap: Some(5),
        reference_prob_of_rust_argmax: Some(0.25),
        delta_p_next: Some(-1e-6),
        reference_margin: Some(0.5),
        near_tie: !argmax_match,
        bit_exact: false,
    }
}

fn percentiles(base: f64) -> Percentiles {
    Percentiles { p1: base, p5: base, p50: base, p95: base, p99: base }
}

fn divergence(case: usize, pos: usize) -> Divergence {
    Divergence {
        case,
        pos,
        token: 11,
        reason: "argmax".into(),
        cosine: Some(0.999),
        rust_top: Some(TopToken { id: 7, logit: 4.5, text: Some("ab".into()) }),
        reference_top: Some(TopToken { id: 8, logit: 4.4, text: None }),
        near_tie: true,
    }
}

fn summary(positions: usize, first_divergence: Option<Divergence>) -> Summary {
    Summary {
        positions,
        nonfinite_positions: 0,
        bit_exact_positions: 0,
        cosine_min: Some(0.999),
        cosine_mean: Some(0.9995),
        exact_match_rate: Some(0.75),
        first_divergence,
        kl_mean: Some(1e-4),
        kl_max: Some(2e-4),
        max_abs_diff: Some(0.125),
        cosine_percentiles: Some(percentiles(0.9995)),
        kl_percentiles: Some(percentiles(1e-4)),
        worst_positions: vec![WorstPosition {
            case: 0,
            pos: 2,
            cosine: Some(0.999),
            kl: Some(2e-4),
            argmax_match: false,
        }],
    }
}

/// A receipt with every optional field present (the trace too), so that serializing it shows
/// every key the types can write.
pub fn maximal() -> Receipt {
    let positions = vec![
        position(0, 1, 1.0, 0.0, true),
        position(1, 5, 0.9995, 1e-4, true),
        position(2, 11, 0.999, 2e-4, false),
    ];
    Receipt {
        schema_version: SCHEMA_VERSION.to_string(),
        created_at: "2026-01-02T03:04:05Z".into(),
        tool: ToolInfo {
            name: "bitnet-parity".into(),
            version: "0.1.0".into(),
            git_commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
            git_dirty: Some(false),
        },
        model: maximal_model(),
        engines: Engines {
            rust: RustEngine {
                kind: "rust-engine".into(),
                name: "bitnet-engine".into(),
                version: "0.1.0".into(),
                kernel: "avx2".into(),
                exact_reference_rounding: true,
                threads: 1,
                injected_fault: Some("rope-adjacent@1".into()),
                reference_profile: Some(ReferenceProfile { name: "avx2".into(), source: "override".into() }),
                // Side A is the Rust engine in a real receipt; every optional field is filled here.
                build: Some(ReferenceEngine {
                    source: "registry:bitnet-llm-sys-1.0.2".into(),
                    version: Some("1.0.2".into()),
                    compiler: Some("g++ 12".into()),
                    flags: vec!["-O3 -march=x86-64-v3".into()],
                    isa: vec!["__AVX2__".into()],
                    library_path: Some("/tmp/libbitnet-v3.so".into()),
                    threads: 1,
                    kv_cache_type: "f16".into(),
                    flash_attention: false,
                }),
                external: Some(ExternalIdentity {
                    name: "example-engine".into(),
                    version: "0.1.0".into(),
                    build: Some("debug".into()),
                    profile: Some("avx2".into()),
                    command: "example_engine --mistake iq2s-sequential".into(),
                }),
            },
            reference: ReferenceEngine {
                source: "registry:bitnet-llm-sys-1.0.2".into(),
                version: Some("1.0.2".into()),
                compiler: Some("g++ 12".into()),
                flags: vec!["-O3".into()],
                isa: vec!["__AVX2__".into()],
                library_path: Some("/tmp/libbitnet.so".into()),
                threads: 1,
                kv_cache_type: "f16".into(),
                flash_attention: false,
            },
        },
        settings: Settings {
            n_ctx: 64,
            max_tokens: Some(32),
            continue_tokens: 2,
            ids_from: Some("rust".into()),
            add_bos: true,
            parse_special: false,
            thresholds: Thresholds {
                max_first_divergence: Some(1),
                fail_on_hazards: HazardPolicy::Kinds(vec!["untied_output_ignored".into()]),
                ..Thresholds::default()
            },
            shard: Some(Shard {
                index: 1,
                count: 1,
                total_cases: 1,
                prompts_sha256: SHA_B.into(),
                cases: vec![0],
            }),
            mode: "both".into(),
            batch: Some(7),
            ubatch: Some(3),
        },
        tokenizer: maximal_tokenizer(),
        cases: vec![Case {
            prompt: "Hello".into(),
            token_ids: vec![1, 5, 11],
            n_prompt_tokens: 1,
            token_texts: Some(vec!["<s>".into(), " Hel".into(), "\\xC3".into()]),
            rust_logits_sha256: SHA_A.into(),
            reference_logits_sha256: SHA_B.into(),
            positions: positions.clone(),
            summary: summary(3, Some(divergence(0, 2))),
            batch: Some(BatchCase {
                rust_logits_sha256: SHA_B.into(),
                reference_logits_sha256: SHA_A.into(),
                positions,
                summary: summary(3, None),
            }),
            self_consistency: Some(SelfConsistency {
                rust: summary(3, None),
                reference: summary(3, Some(divergence(0, 1))),
            }),
        }],
        summary: summary(3, Some(divergence(0, 2))),
        hazards: maximal_hazards(),
        verdict: Verdict {
            status: "fail".into(),
            reasons: vec!["exact_match_rate 0.75 < 1 (min_exact_match)".into()],
        },
        timings: Timings {
            wall_s: 1.5,
            rust: EngineTiming { load_s: 0.1, eval_s: 0.2, tokens: 3 },
            reference: EngineTiming { load_s: 0.3, eval_s: 0.4, tokens: 3 },
        },
        run_state: RunState {
            completed: true,
            interrupted: false,
            reference_failure: Some("none".into()),
            rust_failure: Some("none".into()),
        },
        trace: maximal_trace(),
        batch_summary: Some(summary(3, None)),
        self_consistency: Some(SelfConsistency {
            rust: summary(3, None),
            reference: summary(3, Some(divergence(0, 1))),
        }),
    }
}

/// A model with two hyper-parameters, an I2_S tensor and an integrity problem.
fn maximal_model() -> ModelInfo {
    let mut hyperparameters = BTreeMap::new();
    hyperparameters.insert("embedding_length".to_string(), json!(256));
    hyperparameters.insert("rope.freq_base".to_string(), json!(500000.0));
    ModelInfo {
        path: "models/x.gguf".into(),
        size_bytes: 123_456,
        sha256: SHA_A.into(),
        architecture: "bitnet-b1.58".into(),
        hyperparameters,
        i2s_tensors: vec![I2sTensor {
            name: "blk.0.attn_q.weight".into(),
            flavor: "i2s-qk256".into(),
            forced: false,
            candidates: vec!["i2s-qk256".into(), "i2s-x86".into()],
        }],
        integrity_problems: vec![IntegrityProblem {
            tensor: "blk.0.ffn_up.weight".into(),
            problem: "code 3".into(),
        }],
    }
}

/// Tokenizer disagreement in a prompt and in the built-in corpus.
fn maximal_tokenizer() -> TokenizerAgreement {
    TokenizerAgreement {
        agree: false,
        prompts_checked: 1,
        mismatches: vec![TokenizerMismatch {
            case: 0,
            first_index: 1,
            rust_ids: vec![1, 5],
            reference_ids: vec![1, 6],
        }],
        corpus: Some(CorpusAgreement {
            corpus: "builtin".into(),
            strings: 2,
            modes: vec![ModeAgreement {
                add_special: true,
                parse_special: false,
                agreeing: 1,
                mismatches: vec![StringMismatch {
                    index: 1,
                    text: "a\u{301}".into(),
                    first_index: 0,
                    rust_ids: vec![3],
                    reference_ids: vec![4],
                }],
            }],
            agreement_rate: 0.5,
        }),
    }
}

/// One hazard of each kind.
fn maximal_hazards() -> Vec<Hazard> {
    vec![
        Hazard {
            kind: "reference_profile".into(),
            detail: "the reference build has no profile: no AVX2 with FMA and F16C: ggml's 4-lane or \
                     scalar float code is not mirrored (deciding macros: __AVX2__)"
                .into(),
            fails_verdict: false,
        },
        Hazard {
            kind: "untied_output_ignored".into(),
            detail: "output.weight (f16) is this model's own lm_head, but ...".into(),
            fails_verdict: false,
        },
    ]
}

/// A trace with one divergent operation and one unmatched name.
fn maximal_trace() -> Option<Trace> {
    Some(Trace {
        case: 0,
        pos: 2,
        token: 7,
        reason: "first_divergence".into(),
        min_cosine: 0.99999,
        ops: vec![TraceOp {
            name: "Qcur-1".into(),
            op: "Qcur".into(),
            layer: Some(1),
            elements: 256,
            cosine: 0.9,
            max_abs_diff: 0.5,
            nmse: 0.1,
            bit_exact: false,
            below_threshold: true,
        }],
        first_divergent_op: Some("Qcur-1".into()),
        unmatched: vec!["Vcur-1 (reference did not report it)".into()],
        batch: Some(TraceBatch {
            batch: 7,
            ubatch: 3,
            ubatch_start: 0,
            ubatch_tokens: 3,
            rust_path: "decode".into(),
            reference_path: "batch".into(),
        }),
    })
}

/// A receipt with every optional field empty: nulls, no trace, one non-finite position.
pub fn minimal() -> Receipt {
    let mut r = maximal();
    r.tool.git_commit = None;
    r.tool.git_dirty = None;
    r.engines.reference.version = None;
    r.engines.reference.compiler = None;
    r.engines.reference.library_path = None;
    r.hazards.clear();
    r.engines.rust.reference_profile = None;
    r.settings.max_tokens = None;
    r.settings.ids_from = None;
    r.settings.thresholds.max_first_divergence = None;
    r.settings.thresholds.fail_on_hazards = HazardPolicy::None;
    r.run_state.reference_failure = None;
    r.run_state.rust_failure = None;
    r.trace = None;
    r.tokenizer.corpus = None;
    let nulls = Position {
        pos: 0,
        token: 1,
        nonfinite: Some(NonFinite { rust_nan: 1, rust_inf: 0, reference_nan: 0, reference_inf: 2 }),
        cosine: None,
        rust_argmax: None,
        reference_argmax: None,
        rust_top_logit: None,
        reference_top_logit: None,
        argmax_match: false,
        kl: None,
        kl_reverse: None,
        max_abs_diff: None,
        top5_overlap: None,
        reference_prob_of_rust_argmax: None,
        delta_p_next: None,
        reference_margin: None,
        near_tie: false,
        bit_exact: false,
    };
    let empty = Summary {
        positions: 1,
        nonfinite_positions: 1,
        bit_exact_positions: 0,
        cosine_min: None,
        cosine_mean: None,
        exact_match_rate: None,
        first_divergence: None,
        kl_mean: None,
        kl_max: None,
        max_abs_diff: None,
        cosine_percentiles: None,
        kl_percentiles: None,
        worst_positions: vec![],
    };
    r.cases[0].positions = vec![nulls];
    r.cases[0].summary = empty.clone();
    r.summary = empty;
    r
}

/// Serializes a receipt as `write_atomic` does.
pub fn to_value(r: &Receipt) -> Value {
    serde_json::to_value(r).unwrap()
}
