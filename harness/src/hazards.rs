//! Reference hazards: known ways in which bitnet.cpp computes something other than what the
//! model means while both engines still agree, so that a passing parity run would say more
//! than it proves.
//!
//! A run records every hazard it meets in the receipt's `hazards` list (schema 1.1): a kind, one
//! line of detail, and whether it fails the verdict on its own. `inspect` shows the hazards of a
//! file; `run`, `gate`, `report` and `diff` show the receipt's. Hazards that do not fail on their
//! own fail the gate when the thresholds setting `fail_on_hazards` names them ([`HazardPolicy`]).
//!
//! Kinds:
//! - `reference_profile`: no reference-build profile mirrors the reference's build (its float
//!   code is not the one the Rust engine copies); fails the verdict unless `--reference-profile`
//!   chose a profile deliberately (see `run/profile.rs`).
//! - `untied_output_ignored`: a `bitnet-b1.58` / `bitnet-25` file with its own `output.weight`.
//!   The reference loads it and then multiplies by `token_embd.weight` anyway
//!   (`build_bitnet_158`); the Rust engine mirrors that, so parity "passes" on a model the
//!   reference runs with the wrong head. Does not fail the verdict by default.

use std::fmt;

use bitnet_engine::gguf::{GgmlType, GgufFile, TensorInfo, Value};
use bitnet_engine::ops::BlockType;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

/// The embedding table; also the lm_head of every BitNet graph of the reference.
pub const TOKEN_EMBD: &str = "token_embd.weight";
/// A head of its own, when the file has one.
pub const OUTPUT: &str = "output.weight";

/// One reference hazard of a run: an entry of the receipt's `hazards` list (re-exported as
/// `crate::receipt::Hazard`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hazard {
    /// `reference_profile` or `untied_output_ignored` ([`HazardKind`]); newer harnesses may add
    /// kinds.
    pub kind: String,
    /// One line: what the hazard is in this run (tensors and types, or the build's ISA macros).
    pub detail: String,
    /// Whether it fails the verdict (and the gate) whatever the thresholds say; the others fail
    /// only when `settings.thresholds.fail_on_hazards` names them.
    pub fails_verdict: bool,
}

/// Every hazard kind this harness knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HazardKind {
    /// The reference build has no profile the Rust engine mirrors.
    ReferenceProfile,
    /// The file's own `output.weight` is loaded but never used by the reference's graph.
    UntiedOutputIgnored,
}

impl HazardKind {
    pub const ALL: [HazardKind; 2] = [HazardKind::ReferenceProfile, HazardKind::UntiedOutputIgnored];

    /// The name in receipts and thresholds files.
    pub fn name(self) -> &'static str {
        match self {
            HazardKind::ReferenceProfile => "reference_profile",
            HazardKind::UntiedOutputIgnored => "untied_output_ignored",
        }
    }

    pub fn parse(s: &str) -> Option<HazardKind> {
        HazardKind::ALL.into_iter().find(|k| k.name() == s)
    }

    /// `reference_profile or untied_output_ignored`, for messages.
    pub fn known_names() -> String {
        let names: Vec<&str> = HazardKind::ALL.iter().map(|k| k.name()).collect();
        names.join(", ")
    }
}

impl fmt::Display for HazardKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which hazards fail the gate (and the verdict) besides those that fail on their own: the
/// thresholds key `fail_on_hazards`, written `false` (the default: none), `true` (every kind)
/// or a list of kinds (`["untied_output_ignored"]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum HazardPolicy {
    #[default]
    None,
    All,
    /// These kinds (names as written; [`HazardPolicy::unknown_kinds`] finds typos).
    Kinds(Vec<String>),
}

impl HazardPolicy {
    /// Whether a hazard of `kind` fails the gate under this policy.
    pub fn selects(&self, kind: &str) -> bool {
        match self {
            HazardPolicy::None => false,
            HazardPolicy::All => true,
            HazardPolicy::Kinds(kinds) => kinds.iter().any(|k| k == kind),
        }
    }

    /// Listed kinds this harness does not know.
    pub fn unknown_kinds(&self) -> Vec<&str> {
        match self {
            HazardPolicy::Kinds(kinds) => {
                kinds.iter().map(String::as_str).filter(|k| HazardKind::parse(k).is_none()).collect()
            }
            _ => Vec::new(),
        }
    }

    /// `--fail-on-hazards VALUE`: `all`, `none`, or kinds separated by commas.
    pub fn parse_flag(s: &str) -> Result<HazardPolicy, String> {
        let policy = match s.trim() {
            "all" | "true" => HazardPolicy::All,
            "none" | "false" => HazardPolicy::None,
            list => HazardPolicy::Kinds(
                list.split(',').map(str::trim).filter(|k| !k.is_empty()).map(str::to_string).collect(),
            ),
        };
        match policy.unknown_kinds().first() {
            Some(bad) => Err(format!(
                "{bad:?} is not a hazard kind (expected all, none, or some of: {})",
                HazardKind::known_names()
            )),
            None => Ok(policy),
        }
    }
}

impl fmt::Display for HazardPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HazardPolicy::None => f.write_str("false"),
            HazardPolicy::All => f.write_str("true"),
            HazardPolicy::Kinds(k) => write!(f, "[{}]", k.join(", ")),
        }
    }
}

impl Serialize for HazardPolicy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            HazardPolicy::None => s.serialize_bool(false),
            HazardPolicy::All => s.serialize_bool(true),
            HazardPolicy::Kinds(kinds) => {
                let mut seq = s.serialize_seq(Some(kinds.len()))?;
                for k in kinds {
                    seq.serialize_element(k)?;
                }
                seq.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for HazardPolicy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<HazardPolicy, D::Error> {
        struct PolicyVisitor;
        impl<'de> Visitor<'de> for PolicyVisitor {
            type Value = HazardPolicy;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false or a list of hazard kinds")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<HazardPolicy, E> {
                Ok(if v { HazardPolicy::All } else { HazardPolicy::None })
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<HazardPolicy, A::Error> {
                let mut kinds = Vec::new();
                while let Some(k) = seq.next_element::<String>()? {
                    kinds.push(k);
                }
                Ok(HazardPolicy::Kinds(kinds))
            }
        }
        d.deserialize_any(PolicyVisitor)
    }
}

/// The reference's graph for a `general.architecture`, as `llama_build_graph` picks it.
pub fn reference_graph(architecture: &str) -> Option<&'static str> {
    match architecture {
        "bitnet-b1.58" | "bitnet-25" => Some("build_bitnet_158"),
        "bitnet" => Some("build_bitnet"),
        _ => None,
    }
}

/// The model's head as a file holds it and as the reference uses it: `inspect` shows it,
/// the hazards derive from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeadReport {
    /// The reference's graph for the file's architecture (`build_bitnet_158`, `build_bitnet`),
    /// or null when the architecture is none of the BitNet ones.
    pub graph: Option<&'static str>,
    /// `token_embd.weight`'s ggml type (null when the file has none).
    pub token_embd_type: Option<String>,
    /// Whether the Rust engine mirrors that type in the embedding lookup and the lm_head (F32,
    /// F16, I2_S and its block types: BF16, Q8_0, Q4_K, Q6_K); `run` refuses any other with
    /// exit 5. False when the file has no token_embd.
    pub token_embd_supported: bool,
    /// `output.weight`'s ggml type, or null when the file has none (the head is tied).
    pub output_type: Option<String>,
    /// Whether the lm_head is `token_embd.weight` (no `output.weight` in the file).
    pub tied: bool,
    /// The tensor the reference's lm_head multiplies by (its graphs always use token_embd).
    pub reference_lm_head: Option<&'static str>,
    /// What the reference does with the file's `output.weight`, when it has one: one sentence.
    pub output_note: Option<String>,
}

/// The head of `file` (architecture read from `general.architecture`).
pub fn head_report(file: &GgufFile) -> HeadReport {
    let arch = architecture(file);
    let graph = arch.and_then(reference_graph);
    let ty = |t: Option<&TensorInfo>| t.map(|t| t.ggml_type.name().to_string());
    let output = file.tensor(OUTPUT);
    let output_note = match (graph, output) {
        (Some("build_bitnet_158"), Some(_)) => Some(format!(
            "the reference loads {OUTPUT} but never uses it: {} (build_bitnet_158) multiplies by {TOKEN_EMBD}",
            arch.unwrap_or_default()
        )),
        (Some("build_bitnet"), Some(_)) => Some(format!(
            "architecture bitnet has no {OUTPUT}: the reference refuses this file (wrong number of tensors)"
        )),
        _ => None,
    };
    let embd = file.tensor(TOKEN_EMBD).map(|t| t.ggml_type);
    HeadReport {
        graph,
        token_embd_type: ty(file.tensor(TOKEN_EMBD)),
        token_embd_supported: embd.is_some_and(engine_head_type),
        output_type: ty(output),
        tied: output.is_none(),
        reference_lm_head: graph.map(|_| TOKEN_EMBD),
        output_note,
    }
}

/// The hazards a model file brings to a run, whatever the reference build.
pub fn model_hazards(file: &GgufFile) -> Vec<Hazard> {
    let mut hazards = Vec::new();
    let head = head_report(file);
    if head.graph == Some("build_bitnet_158") {
        if let Some(out_ty) = &head.output_type {
            let embd_ty = head.token_embd_type.as_deref().unwrap_or("missing");
            hazards.push(Hazard {
                kind: HazardKind::UntiedOutputIgnored.name().into(),
                detail: format!(
                    "{OUTPUT} ({out_ty}) is this model's own lm_head, but the reference's {} graph \
                     (build_bitnet_158) multiplies by {TOKEN_EMBD} ({embd_ty}) instead; the Rust engine \
                     mirrors that, so agreement says nothing about the head the model was trained with",
                    architecture(file).unwrap_or_default()
                ),
                fails_verdict: false,
            });
        }
    }
    hazards
}

/// The hazard of a reference build that no profile mirrors (`why`: its deciding ISA macros and
/// the reason); `overridden` when `--reference-profile` chose a profile anyway.
pub fn profile_hazard(why: &str, overridden: bool) -> Hazard {
    Hazard {
        kind: HazardKind::ReferenceProfile.name().into(),
        detail: format!("the reference build has no profile: {why}"),
        fails_verdict: !overridden,
    }
}

/// The one hazard of `kind` in a list, if any.
pub fn find(hazards: &[Hazard], kind: HazardKind) -> Option<&Hazard> {
    hazards.iter().find(|h| h.kind == kind.name())
}

/// `hazard untied_output_ignored: DETAIL (does not fail the verdict)`, for terminals.
pub fn line(h: &Hazard) -> String {
    let effect = if h.fails_verdict { "fails the verdict" } else { "does not fail the verdict by default" };
    format!("hazard {}: {} ({effect})", h.kind, h.detail)
}

/// Whether the engine has a mirror of `t` as a head type (`bitnet_engine::ops::BlockType`, plus
/// the types its plain matrices take).
fn engine_head_type(t: GgmlType) -> bool {
    matches!(t, GgmlType::F32 | GgmlType::F16 | GgmlType::I2_S) || BlockType::from_ggml(t).is_some()
}

fn architecture(file: &GgufFile) -> Option<&str> {
    file.get("general.architecture").and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_by_name() {
        for k in HazardKind::ALL {
            assert_eq!(HazardKind::parse(k.name()), Some(k));
        }
        assert_eq!(HazardKind::parse("untied"), None);
    }

    #[test]
    fn policy_reads_bool_or_list_and_writes_it_back() {
        #[derive(Deserialize, Serialize)]
        struct T {
            p: HazardPolicy,
        }
        for (text, policy) in [
            ("p = false", HazardPolicy::None),
            ("p = true", HazardPolicy::All),
            ("p = [\"untied_output_ignored\"]", HazardPolicy::Kinds(vec!["untied_output_ignored".into()])),
        ] {
            let t: T = toml::from_str(text).unwrap();
            assert_eq!(t.p, policy, "{text}");
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(serde_json::from_str::<T>(&json).unwrap().p, policy);
        }
        let e = toml::from_str::<T>("p = \"yes\"").err().unwrap().to_string();
        assert!(e.contains("true, false or a list of hazard kinds"), "{e}");
        assert_eq!(serde_json::to_string(&HazardPolicy::All).unwrap(), "true");
    }

    #[test]
    fn policy_selects_kinds_and_finds_unknown_ones() {
        let p = HazardPolicy::Kinds(vec!["untied_output_ignored".into(), "untied".into()]);
        assert!(p.selects("untied_output_ignored") && !p.selects("reference_profile"));
        assert_eq!(p.unknown_kinds(), ["untied"]);
        assert!(HazardPolicy::All.selects("anything") && !HazardPolicy::None.selects("reference_profile"));
        assert_eq!(HazardPolicy::parse_flag("all"), Ok(HazardPolicy::All));
        assert_eq!(
            HazardPolicy::parse_flag("untied_output_ignored, reference_profile"),
            Ok(HazardPolicy::Kinds(vec!["untied_output_ignored".into(), "reference_profile".into()]))
        );
        assert!(HazardPolicy::parse_flag("untied").unwrap_err().contains("untied_output_ignored"));
    }

    #[test]
    fn graphs_of_the_bitnet_architectures() {
        assert_eq!(reference_graph("bitnet-b1.58"), Some("build_bitnet_158"));
        assert_eq!(reference_graph("bitnet-25"), Some("build_bitnet_158"));
        assert_eq!(reference_graph("bitnet"), Some("build_bitnet"));
        assert_eq!(reference_graph("llama"), None);
    }
}
