//! The parity receipt: a versioned JSON record of one run that anyone can check.
//!
//! It records what can be verified independently — the model's sha256, both engines' exact
//! identity, the token ids, per-position metrics and a digest of each engine's logits — never
//! claims about itself. `receipts/receipt.schema.json` is its JSON Schema; every receipt the
//! harness writes validates against it (a test checks).
//!
//! Versioning: `schema_version` is semver. A reader accepts any receipt of the same major
//! version (minor versions only add optional fields) and refuses other majors.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use crate::hazards::{Hazard, HazardPolicy};

/// Version written by this build.
pub const SCHEMA_VERSION: &str = "1.3.0";
/// Major version this build understands.
pub const SCHEMA_MAJOR: u64 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub schema_version: String,
    /// RFC 3339, UTC. A time field: excluded from reproducibility comparisons.
    pub created_at: String,
    pub tool: ToolInfo,
    pub model: ModelInfo,
    pub engines: Engines,
    pub settings: Settings,
    pub tokenizer: TokenizerAgreement,
    pub cases: Vec<Case>,
    pub summary: Summary,
    /// Known ways the reference computes something other than what the model means, met by
    /// this run (since 1.1.0; see `crate::hazards`). Empty when none; absent in 1.0 receipts.
    #[serde(default)]
    pub hazards: Vec<Hazard>,
    pub verdict: Verdict,
    /// A time field: excluded from reproducibility comparisons.
    pub timings: Timings,
    pub run_state: RunState,
    /// Layer-by-layer comparison at one position (`run --trace`), if requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<Trace>,
    /// `run --mode both` (since 1.3.0): the batched comparison of every case (`cases[].batch`)
    /// summarized, as `summary` summarizes the decode comparison. Absent in other modes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_summary: Option<Summary>,
    /// `run --mode both` (since 1.3.0): each engine's batch logits against its own decode
    /// logits over every case (see [`SelfConsistency`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_consistency: Option<SelfConsistency>,
}

/// Each engine's batch logits held against its own decode logits (`run --mode both`): where
/// an engine's batched path parts from its one-token path. Informational: the reference's
/// batched logits differ from its decode logits by design (other kernels), so nothing here
/// fails a verdict. In each [`Summary`], the `rust` fields are the engine's batch logits and
/// the `reference` fields its decode logits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelfConsistency {
    /// Side A (`engines.rust`).
    pub rust: Summary,
    /// Side B (`engines.reference`).
    pub reference: Summary,
}

/// A case's batched comparison in `run --mode both` (in `--mode batch`, `cases[]` itself is).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchCase {
    /// sha256 over each engine's batch logits of every position (f32 little-endian, in order).
    pub rust_logits_sha256: String,
    pub reference_logits_sha256: String,
    pub positions: Vec<Position>,
    pub summary: Summary,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolInfo {
    pub name: String,
    pub version: String,
    /// `git rev-parse HEAD` of the harness's source tree at build time, when known.
    pub git_commit: Option<String>,
    /// Whether that tree had uncommitted changes.
    pub git_dirty: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// As given on the command line (or `<embedded:NAME>` for the built-in fixture).
    pub path: String,
    pub size_bytes: u64,
    pub sha256: String,
    pub architecture: String,
    pub hyperparameters: BTreeMap<String, serde_json::Value>,
    /// Every I2_S tensor with the packing assumed for it.
    pub i2s_tensors: Vec<I2sTensor>,
    /// I2_S integrity problems (invalid codes, bad scales, bad tails); empty when clean.
    pub integrity_problems: Vec<IntegrityProblem>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct I2sTensor {
    pub name: String,
    pub flavor: String,
    pub forced: bool,
    /// Every flavour whose size fits (the choice is by documented priority).
    pub candidates: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntegrityProblem {
    pub tensor: String,
    pub problem: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Engines {
    pub rust: RustEngine,
    pub reference: ReferenceEngine,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RustEngine {
    /// What side A is (since 1.2.0): `rust-engine` (this workspace's engine; the default of
    /// receipts written before), `bitnet.cpp` (a reference build, described in `build`) or
    /// `external` (a program speaking the engine protocol, described in `external`). The field
    /// keeps its historical name `rust`: it is the engine under test.
    #[serde(default = "rust_engine_kind")]
    pub kind: String,
    pub name: String,
    pub version: String,
    /// The QK256 kernel chosen (`avx512vnni`, `avx2`, `scalar`).
    pub kernel: String,
    /// Whether the reference's f16 roundings are mirrored.
    pub exact_reference_rounding: bool,
    pub threads: usize,
    /// A deliberately injected fault (`KIND@LAYER`), for testing tracing; absent normally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injected_fault: Option<String>,
    /// The reference build whose float numerics the engine mirrored (since 1.1.0; null in
    /// receipts written before, whose engine mirrored an AVX2 build).
    #[serde(default)]
    pub reference_profile: Option<ReferenceProfile>,
    /// The build, when side A is bitnet.cpp (since 1.2.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<ReferenceEngine>,
    /// The engine's own account of itself, when side A is an external engine (since 1.2.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalIdentity>,
}

/// An external engine's own account of itself (its `hello` answer) and how it was started.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ExternalIdentity {
    pub name: String,
    pub version: String,
    /// Free text: how the engine was built (compiler, flags, features), as the engine reports it.
    #[serde(default)]
    pub build: Option<String>,
    /// The reference-build profile the engine says it mirrors (`avx2`, `avx512`), if any.
    #[serde(default)]
    pub profile: Option<String>,
    /// The command line that started it.
    #[serde(default)]
    pub command: String,
}

fn decode_mode() -> String {
    "decode".into()
}

fn rust_engine_kind() -> String {
    "rust-engine".into()
}

/// The reference-build profile the Rust engine mirrored, and where the choice came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferenceProfile {
    /// `avx2` or `avx512` (`bitnet_engine::profile::RefProfile::name`).
    pub name: String,
    /// `build-info` (the live reference's ISA macros), `saved-reference` (those of the replayed
    /// file's footer), `override` (`--reference-profile`) or `host` (the build has no profile:
    /// the host's, see the `reference_profile` hazard in `hazards`).
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceEngine {
    /// `registry:bitnet-llm-sys-1.0.2`, `dir:/path/to/BitNet`, `prebuilt:/path`, or `saved:FILE`.
    pub source: String,
    pub version: Option<String>,
    pub compiler: Option<String>,
    pub flags: Vec<String>,
    /// ISA macros the build enabled (`__AVX2__`, ...).
    pub isa: Vec<String>,
    pub library_path: Option<String>,
    pub threads: usize,
    pub kv_cache_type: String,
    pub flash_attention: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub n_ctx: usize,
    pub max_tokens: Option<usize>,
    /// Tokens generated greedily by the reference after each prompt (`--continue`).
    pub continue_tokens: usize,
    /// Whose token ids were used when the tokenizers disagree (`--ids-from`), if forced.
    pub ids_from: Option<String>,
    pub add_bos: bool,
    pub parse_special: bool,
    pub thresholds: Thresholds,
    /// How the engines evaluated the cases (since 1.3.0; absent: `decode`): `decode` (one token
    /// at a time), `batch` (the batched path: batches of `batch` tokens at increasing
    /// positions, split into ubatches of `ubatch`, logits at every position; `cases` compare
    /// those) or `both` (`cases` compare decode, `cases[].batch` the batched path).
    #[serde(default = "decode_mode")]
    pub mode: String,
    /// Tokens per batch (`--batch`), with mode `batch` or `both`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
    /// Tokens per ubatch (`--ubatch`, llama.cpp's `n_ubatch`), with mode `batch` or `both`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ubatch: Option<usize>,
    /// Which part of the cases this run evaluated (`run --shard I/N`, since 1.3.0); absent in
    /// a whole run and in a receipt `harness merge` put back together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<Shard>,
}

/// One shard of a run split across machines (`run --shard I/N`): case `k` (0-based, in prompt
/// order) belongs to shard `k mod N + 1`. The receipt's `cases` are this shard's, in order, and
/// every case index in it (summaries, worst positions, tokenizer mismatches, trace) is global.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// 1-based: this shard is `index` of `count`.
    pub index: usize,
    pub count: usize,
    /// Cases of the whole run (every shard's).
    pub total_cases: usize,
    /// sha256 over every prompt of the whole run, in order (each as its length, u64 little
    /// endian, then its UTF-8 bytes): shards of one run agree on it.
    pub prompts_sha256: String,
    /// The global (0-based) index of each case this shard evaluated: `cases[j]` is case `cases[j]`.
    pub cases: Vec<usize>,
}

/// The limits a receipt is judged against (`run` records the ones it used; `gate` may use others).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    pub min_cosine: f64,
    pub min_exact_match: f64,
    pub max_kl: f64,
    /// The first divergence may not come earlier than this position (null: no divergence allowed
    /// is expressed by `min_exact_match = 1` and `min_cosine`; null here means "not checked").
    pub max_first_divergence: Option<usize>,
    /// Which hazards fail the gate besides those that fail on their own: `false` (default),
    /// `true` (all) or a list of kinds (since 1.1.0; see `crate::hazards::HazardPolicy`).
    #[serde(default)]
    pub fail_on_hazards: HazardPolicy,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            min_cosine: 0.99999,
            min_exact_match: 1.0,
            max_kl: 1e-4,
            max_first_divergence: None,
            fail_on_hazards: HazardPolicy::None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizerAgreement {
    /// Whether every prompt tokenized identically in both engines.
    pub agree: bool,
    pub prompts_checked: usize,
    pub mismatches: Vec<TokenizerMismatch>,
    /// The same check on the built-in corpus (`harness tokenize-check`), when the reference is
    /// live; each mode lists at most 20 mismatches.
    pub corpus: Option<CorpusAgreement>,
}

/// Agreement of the two tokenizers on a corpus, for every flag combination checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CorpusAgreement {
    /// `builtin` or the corpus file's path.
    pub corpus: String,
    pub strings: usize,
    /// One entry per (add_special, parse_special) combination.
    pub modes: Vec<ModeAgreement>,
    /// Fraction of (string, mode) checks with identical ids.
    pub agreement_rate: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModeAgreement {
    pub add_special: bool,
    pub parse_special: bool,
    pub agreeing: usize,
    /// The first mismatch of each disagreeing string.
    pub mismatches: Vec<StringMismatch>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StringMismatch {
    /// Index of the string in the corpus.
    pub index: usize,
    pub text: String,
    /// First token index where the id lists differ.
    pub first_index: usize,
    pub rust_ids: Vec<u32>,
    pub reference_ids: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizerMismatch {
    pub case: usize,
    /// First index where the id lists differ.
    pub first_index: usize,
    pub rust_ids: Vec<u32>,
    pub reference_ids: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Case {
    pub prompt: String,
    /// The prompt's token ids, then any continuation tokens; `positions` covers the first
    /// `positions.len()` of them (fewer with `--max-tokens`).
    pub token_ids: Vec<u32>,
    pub n_prompt_tokens: usize,
    /// Each token's text, parallel to `token_ids` (see [`piece_text`]), so that a report can
    /// label positions without the model. Absent in receipts written before it was added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_texts: Option<Vec<String>>,
    /// sha256 over each engine's logits of every position (f32 little-endian, in order).
    pub rust_logits_sha256: String,
    pub reference_logits_sha256: String,
    pub positions: Vec<Position>,
    pub summary: Summary,
    /// `run --mode both` (since 1.3.0): the same positions on the batched path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchCase>,
    /// `run --mode both` (since 1.3.0): each engine's batch logits against its own decode
    /// logits at the positions of this case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_consistency: Option<SelfConsistency>,
}

/// Metrics of one position. All computed in f64 from the f32 logits. When either vector holds
/// a NaN or an infinity, `nonfinite` says so and the metrics are null.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Position {
    pub pos: usize,
    pub token: u32,
    pub nonfinite: Option<NonFinite>,
    /// Cosine similarity of the two logit vectors (1 when both are zero, 0 when one is).
    pub cosine: Option<f64>,
    pub rust_argmax: Option<u32>,
    pub reference_argmax: Option<u32>,
    /// Each engine's logit of its own argmax.
    pub rust_top_logit: Option<f64>,
    pub reference_top_logit: Option<f64>,
    pub argmax_match: bool,
    /// KL(P_reference ‖ P_rust) of the softmaxes, in nats: the reference is the truth.
    pub kl: Option<f64>,
    /// KL(P_rust ‖ P_reference), for the other direction.
    pub kl_reverse: Option<f64>,
    pub max_abs_diff: Option<f64>,
    /// How many of the reference's top-5 tokens are in the Rust engine's top 5.
    pub top5_overlap: Option<usize>,
    /// The reference's probability of the Rust engine's argmax.
    pub reference_prob_of_rust_argmax: Option<f64>,
    /// P_reference(next teacher token) − P_rust(next teacher token); null at the last position.
    pub delta_p_next: Option<f64>,
    /// Reference logit of its top-1 minus its top-2.
    pub reference_margin: Option<f64>,
    /// The argmax differs but both engines put the two candidates within 0.1 % (relative to
    /// the top logit, at least 1e-3 absolute) of each other: a flip on a near-tie rather than a
    /// real disagreement.
    pub near_tie: bool,
    /// The two logit vectors are identical bit for bit.
    pub bit_exact: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NonFinite {
    pub rust_nan: usize,
    pub rust_inf: usize,
    pub reference_nan: usize,
    pub reference_inf: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub positions: usize,
    /// Positions with NaN or Inf logits in either engine.
    pub nonfinite_positions: usize,
    pub bit_exact_positions: usize,
    pub cosine_min: Option<f64>,
    pub cosine_mean: Option<f64>,
    /// Fraction of positions whose argmax agrees (positions with non-finite logits count as disagreeing).
    pub exact_match_rate: Option<f64>,
    pub first_divergence: Option<Divergence>,
    pub kl_mean: Option<f64>,
    pub kl_max: Option<f64>,
    pub max_abs_diff: Option<f64>,
    pub cosine_percentiles: Option<Percentiles>,
    pub kl_percentiles: Option<Percentiles>,
    /// The five positions with the lowest cosine (ties broken by higher KL).
    pub worst_positions: Vec<WorstPosition>,
}

/// Nearest-rank percentiles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub p1: f64,
    pub p5: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Divergence {
    pub case: usize,
    pub pos: usize,
    pub token: u32,
    /// `argmax`, `cosine` (below the run's min_cosine) or `nonfinite`.
    pub reason: String,
    pub cosine: Option<f64>,
    pub rust_top: Option<TopToken>,
    pub reference_top: Option<TopToken>,
    pub near_tie: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopToken {
    pub id: u32,
    pub logit: f64,
    /// The token's text (lossy UTF-8), when the vocabulary is known.
    pub text: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorstPosition {
    pub case: usize,
    pub pos: usize,
    pub cosine: Option<f64>,
    pub kl: Option<f64>,
    pub argmax_match: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// `pass`, `fail`, `invalid_input` (the model itself is broken, e.g. a corrupt I2_S
    /// quantization) or `incomplete` (the run was interrupted or the reference crashed).
    pub status: String,
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub wall_s: f64,
    pub rust: EngineTiming,
    pub reference: EngineTiming,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineTiming {
    pub load_s: f64,
    pub eval_s: f64,
    pub tokens: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Every planned position was evaluated by both engines.
    pub completed: bool,
    /// Stopped by SIGINT/SIGTERM; `cases` hold the positions done before.
    pub interrupted: bool,
    /// The reference process crashed or exited: what, and during which request.
    pub reference_failure: Option<String>,
    /// The Rust engine failed on a position (a bug: inputs are validated before the run).
    pub rust_failure: Option<String>,
}

/// The `trace` section of a receipt: the two engines' intermediate tensors at one position,
/// compared in graph order (`crate::trace` makes it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trace {
    pub case: usize,
    pub pos: usize,
    pub token: u32,
    /// Why this position: `first_divergence`, `requested`, or `last_position` (no divergence).
    pub reason: String,
    /// An operation is divergent when its cosine is below this.
    pub min_cosine: f64,
    /// Every compared operation, in graph order.
    pub ops: Vec<TraceOp>,
    /// The first divergent operation (e.g. `Qcur-1`), or null when all agree.
    pub first_divergent_op: Option<String>,
    /// Names one engine reported and the other did not, or with different sizes.
    pub unmatched: Vec<String>,
    /// In a batched run (since 1.3.0): the batch traced and the path each side's tensors came
    /// from. Absent in a decode run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<TraceBatch>,
}

/// How a trace of a batched run was taken. The reference's tensors are those of its batched
/// graph: the positions before the traced position's ubatch are replayed as the run fed them,
/// then that ubatch alone (the same tokens on the same cache, so the same graph) is captured
/// and the position's row sliced from every tensor. An engine that cannot trace its batched
/// path gives its decode tensors at the position (after a decode replay) and says so.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceBatch {
    pub batch: usize,
    pub ubatch: usize,
    /// First position of the traced ubatch, and its number of tokens.
    pub ubatch_start: usize,
    pub ubatch_tokens: usize,
    /// `batch` or `decode`: the path side A's tensors came from.
    pub rust_path: String,
    /// `batch` or `decode`: the path side B's tensors came from.
    pub reference_path: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceOp {
    /// Full name, e.g. `Qcur-1`, `result_norm`.
    pub name: String,
    /// Operation without the layer, e.g. `Qcur`.
    pub op: String,
    /// Layer index, or null for the operations after the last layer.
    pub layer: Option<usize>,
    pub elements: usize,
    pub cosine: f64,
    pub max_abs_diff: f64,
    /// Σ(rust − reference)² / Σ reference² (the plain squared error when the reference is all zero).
    pub nmse: f64,
    pub bit_exact: bool,
    pub below_threshold: bool,
}

/// A token's bytes as receipt text: UTF-8 as is, any byte that is not part of valid UTF-8 (half
/// of a character split across byte-level tokens) as `\xNN`, so that no information is lost
/// to replacement characters.
pub fn piece_text(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02X}"));
        }
    }
    out
}

/// Writes `receipt` to `path` atomically ([`crate::files::write_atomic`]): a crash or a full
/// disk leaves either the old file or the complete new one, never half a receipt.
pub fn write_atomic(path: &Path, receipt: &Receipt) -> Result<(), crate::files::FileError> {
    let mut text = serde_json::to_string_pretty(receipt).expect("a receipt serializes");
    text.push('\n');
    crate::files::write_atomic(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::piece_text;

    #[test]
    fn piece_text_keeps_valid_utf8_and_escapes_stray_bytes() {
        assert_eq!(piece_text(b" the"), " the");
        assert_eq!(piece_text("é".as_bytes()), "é");
        assert_eq!(piece_text(&[0xC3]), "\\xC3");
        assert_eq!(piece_text(&[b'a', 0xE2, 0x82, b'b']), "a\\xE2\\x82b");
        assert_eq!(piece_text(b""), "");
    }
}
