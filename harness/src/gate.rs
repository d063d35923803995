//! `harness gate RECEIPT`: pass or fail a receipt against thresholds, for CI.
//!
//! Exit 0 when every check passes, 1 when any fails (each failed check is printed with its
//! value and its threshold), 2 when the receipt cannot be read, has another major schema
//! version or fails the schema, 7 when the thresholds file is unreadable or invalid.

use std::fmt::Write as _;
use std::path::PathBuf;

use bitnet_engine::profile::RefProfile;

use crate::exit::{Exit, Failure};
use crate::hazards::{self, HazardKind, HazardPolicy};
use crate::receipt::{Divergence, Receipt};
use crate::report::term::printable;
use crate::schema::{self, LoadedReceipt};
use crate::thresholds::{self, Overrides, Resolved, Sourced};

/// Most non-finite positions listed by name on the failing line.
const MAX_LISTED_NONFINITE: usize = 5;

const AFTER_HELP: &str = "\
Thresholds: each flag overrides the --thresholds file, which replaces the thresholds recorded in
the receipt (settings.thresholds, what `run` used). The output says where each value came from.

Checks, in order: the run completed (run_state.completed); its verdict is not invalid_input
(the model itself is broken) nor incomplete; the Rust engine mirrored the reference build's own
profile (no `reference_profile` hazard: the build has a profile, unless --reference-profile
chose one deliberately; receipts before schema 1.1 record none and are not checked); every other
hazard of the receipt's `hazards` list is shown, and fails only when it fails on its own
(fails_verdict) or when fail_on_hazards names its kind (true: every kind, including a
deliberately overridden reference_profile); at least one position was compared; no position
has NaN or Inf logits (summary.nonfinite_positions = 0); summary.cosine_min >= min_cosine;
summary.exact_match_rate >= min_exact_match; summary.kl_max <= max_kl; and, when
max_first_divergence is set, no case's first divergence comes before that position. A metric
that is null (no position with finite logits) fails its check.

Exit status: 0 every check passed; 1 a check failed; 2 the receipt is unreadable, of another
major schema version, or fails the schema; 7 the thresholds file is unreadable, has unknown keys
or bad values.";

#[derive(Debug, clap::Args)]
#[command(after_long_help = AFTER_HELP)]
pub struct GateArgs {
    /// The receipt to check (written by `harness run`).
    pub receipt: PathBuf,
    /// Thresholds file: TOML, or JSON when the name ends in .json. Keys: min_cosine,
    /// min_exact_match, max_kl (required), max_first_divergence, fail_on_hazards (optional).
    /// The project's own is receipts/thresholds.toml.
    #[arg(long, value_name = "FILE")]
    pub thresholds: Option<PathBuf>,
    /// Lowest acceptable summary.cosine_min (between -1 and 1).
    #[arg(long, value_name = "X", value_parser = parse_min_cosine, allow_negative_numbers = true)]
    pub min_cosine: Option<f64>,
    /// Lowest acceptable summary.exact_match_rate, the fraction of positions whose argmax
    /// agrees (between 0 and 1).
    #[arg(long, value_name = "RATE", value_parser = parse_min_exact_match)]
    pub min_exact_match: Option<f64>,
    /// Highest acceptable summary.kl_max, KL(P_reference || P_rust) in nats (>= 0).
    #[arg(long, value_name = "NATS", value_parser = parse_max_kl)]
    pub max_kl: Option<f64>,
    /// Divergence is tolerated only from position N on: fail when any case's first
    /// divergence (argmax mismatch, cosine below the run's min_cosine, or non-finite logits,
    /// as the run recorded it) is at a position below N. Positions count from 0 at each
    /// case's first token, prompt included. 0 accepts any divergence position.
    #[arg(long, value_name = "N")]
    pub max_first_divergence: Option<usize>,
    /// Make the receipt's hazards fail the gate: `all` (the default when given without a
    /// value), `none`, or kinds separated by commas (reference_profile, untied_output_ignored).
    #[arg(
        long,
        value_name = "KINDS",
        num_args = 0..=1,
        default_missing_value = "all",
        value_parser = HazardPolicy::parse_flag
    )]
    pub fail_on_hazards: Option<HazardPolicy>,
}

fn float_flag(s: &str, check: fn(f64) -> Result<(), thresholds::ThresholdsError>) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    check(v).map_err(|e| e.to_string())?;
    Ok(v)
}

/// `--min-cosine` (of `gate` and `run`): a number in [-1, 1], checked as a thresholds file's.
pub(crate) fn parse_min_cosine(s: &str) -> Result<f64, String> {
    float_flag(s, thresholds::check_min_cosine)
}

fn parse_min_exact_match(s: &str) -> Result<f64, String> {
    float_flag(s, thresholds::check_min_exact_match)
}

fn parse_max_kl(s: &str) -> Result<f64, String> {
    float_flag(s, thresholds::check_max_kl)
}

/// How one check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail,
    /// Information that decides nothing (e.g. the run's own verdict).
    Note,
}

/// One printed line of the gate.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub outcome: Outcome,
    /// The field or metric checked (`cosine_min`, `run_state.completed`, ...).
    pub name: &'static str,
    /// Value, comparison and threshold, or why.
    pub detail: String,
}

impl Check {
    fn new(outcome: Outcome, name: &'static str, detail: String) -> Check {
        Check { outcome, name, detail }
    }

    /// `FAIL cosine_min 0.99871 < 0.99999 (min_cosine from the receipt)`.
    pub fn line(&self) -> String {
        let tag = match self.outcome {
            Outcome::Pass => "ok  ",
            Outcome::Fail => "FAIL",
            Outcome::Note => "note",
        };
        format!("{tag} {} {}", self.name, self.detail)
    }
}

pub fn run(args: &GateArgs) -> Result<Exit, Failure> {
    let loaded = schema::load_receipt(&args.receipt)?;
    let file = match &args.thresholds {
        Some(path) => Some((path.as_path(), thresholds::read_file(path)?)),
        None => None,
    };
    let flags = Overrides {
        min_cosine: args.min_cosine,
        min_exact_match: args.min_exact_match,
        max_kl: args.max_kl,
        max_first_divergence: args.max_first_divergence,
        fail_on_hazards: args.fail_on_hazards.clone(),
    };
    let resolved =
        thresholds::resolve(&loaded.receipt.settings.thresholds, file.as_ref().map(|(p, t)| (*p, t)), &flags);
    let checks = evaluate(&loaded.receipt, &resolved);
    print!("{}", printable(&render(&loaded, &resolved, &checks)));
    let failed = checks.iter().filter(|c| c.outcome == Outcome::Fail).count();
    Ok(if failed == 0 { Exit::Ok } else { Exit::CheckFailed })
}

/// The whole report: the receipt, the thresholds and their sources, one line per check, the verdict.
pub fn render(loaded: &LoadedReceipt, t: &Resolved, checks: &[Check]) -> String {
    let r = &loaded.receipt;
    let mut out = String::new();
    let sha = r.model.sha256.get(..12).unwrap_or(&r.model.sha256);
    let _ = writeln!(
        out,
        "receipt {} (schema {}): model {} sha256 {sha}…, {} case{}, {} positions",
        loaded.path.display(),
        loaded.version,
        r.model.path,
        r.cases.len(),
        if r.cases.len() == 1 { "" } else { "s" },
        r.summary.positions
    );
    if !loaded.ignored_fields.is_empty() {
        let _ = writeln!(
            out,
            "note: schema {} is newer than this harness's {}; ignored fields: {}",
            loaded.version,
            schema::Version::ours(),
            loaded.ignored_fields.join(", ")
        );
    }
    let _ = writeln!(out, "thresholds:");
    let _ = writeln!(out, "  min_cosine {} (from {})", num(t.min_cosine.value), t.min_cosine.source);
    let _ = writeln!(
        out,
        "  min_exact_match {} (from {})",
        num(t.min_exact_match.value),
        t.min_exact_match.source
    );
    let _ = writeln!(out, "  max_kl {} (from {})", num(t.max_kl.value), t.max_kl.source);
    let mfd = &t.max_first_divergence;
    match mfd.value {
        Some(n) => writeln!(out, "  max_first_divergence {n} (from {})", mfd.source),
        None => writeln!(out, "  max_first_divergence not checked (from {})", mfd.source),
    }
    .ok();
    let _ =
        writeln!(out, "  fail_on_hazards {} (from {})", t.fail_on_hazards.value, t.fail_on_hazards.source);
    for c in checks {
        let _ = writeln!(out, "{}", c.line());
    }
    let failed = checks.iter().filter(|c| c.outcome == Outcome::Fail).count();
    if failed == 0 {
        let _ = writeln!(out, "gate: PASS");
    } else {
        let _ = writeln!(out, "gate: FAIL ({failed} check{})", if failed == 1 { "" } else { "s" });
    }
    out
}

/// Every check of the receipt against `t`, in the documented order.
pub fn evaluate(r: &Receipt, t: &Resolved) -> Vec<Check> {
    let mut checks = Vec::new();
    let s = &r.summary;

    checks.push(if r.run_state.completed {
        Check::new(Outcome::Pass, "run_state.completed", "true".into())
    } else {
        let why = if r.run_state.interrupted {
            "the run was interrupted; only the positions done before are in the receipt".to_string()
        } else if let Some(f) = &r.run_state.reference_failure {
            format!("the reference failed: {f}")
        } else if let Some(f) = &r.run_state.rust_failure {
            format!("the Rust engine failed: {f}")
        } else {
            "not every planned position was evaluated".to_string()
        };
        Check::new(Outcome::Fail, "run_state.completed", format!("false ({why})"))
    });

    let reasons = if r.verdict.reasons.is_empty() {
        String::new()
    } else {
        format!(": {}", r.verdict.reasons.join("; "))
    };
    checks.push(match r.verdict.status.as_str() {
        "pass" => Check::new(Outcome::Pass, "verdict.status", "pass".into()),
        "fail" => Check::new(
            Outcome::Note,
            "verdict.status",
            format!("fail{reasons} (the run's own verdict against its thresholds; the checks below decide)"),
        ),
        "invalid_input" => Check::new(
            Outcome::Fail,
            "verdict.status",
            format!("invalid_input (the model itself is broken, so parity means nothing{reasons})"),
        ),
        "incomplete" => Check::new(
            Outcome::Fail,
            "verdict.status",
            format!("incomplete (the run did not finish{reasons})"),
        ),
        other => Check::new(
            Outcome::Fail,
            "verdict.status",
            format!("{other:?} is not a status this harness knows"),
        ),
    });

    if !r.tokenizer.agree {
        checks.push(Check::new(
            Outcome::Note,
            "tokenizer.agree",
            format!(
                "false ({} of {} prompts tokenized differently; both engines were fed the same ids{})",
                r.tokenizer.mismatches.len(),
                r.tokenizer.prompts_checked,
                r.settings.ids_from.as_deref().map(|w| format!(", from {w}")).unwrap_or_default()
            ),
        ));
    }

    checks.extend(profile_check(r, &t.fail_on_hazards));
    checks.extend(hazard_checks(r, &t.fail_on_hazards));

    checks.push(if s.positions > 0 {
        Check::new(Outcome::Pass, "positions", format!("{} > 0", s.positions))
    } else {
        Check::new(Outcome::Fail, "positions", "0 (nothing was compared)".into())
    });

    checks.push(if s.nonfinite_positions == 0 {
        Check::new(Outcome::Pass, "nonfinite_positions", "0 (no NaN or Inf logits)".into())
    } else {
        Check::new(
            Outcome::Fail,
            "nonfinite_positions",
            format!("{} > 0 (NaN/Inf logits at {})", s.nonfinite_positions, nonfinite_list(r)),
        )
    });

    checks.push(at_least("cosine_min", s.cosine_min, &t.min_cosine, "min_cosine"));
    checks.push(at_least("exact_match_rate", s.exact_match_rate, &t.min_exact_match, "min_exact_match"));
    checks.push(match s.kl_max {
        None => null_metric("kl_max", &t.max_kl, "max_kl"),
        Some(v) if v <= t.max_kl.value => Check::new(
            Outcome::Pass,
            "kl_max",
            format!("{} <= {} (max_kl from {})", num(v), num(t.max_kl.value), t.max_kl.source),
        ),
        Some(v) => Check::new(
            Outcome::Fail,
            "kl_max",
            format!("{} > {} (max_kl from {})", num(v), num(t.max_kl.value), t.max_kl.source),
        ),
    });

    if let Some(n) = t.max_first_divergence.value {
        let source = &t.max_first_divergence.source;
        checks.push(match earliest_divergence(r) {
            None => Check::new(
                Outcome::Pass,
                "first_divergence",
                format!("none (max_first_divergence {n} from {source})"),
            ),
            Some(d) if d.pos >= n => Check::new(
                Outcome::Pass,
                "first_divergence",
                format!("case {} pos {} >= {n} (max_first_divergence from {source})", d.case, d.pos),
            ),
            Some(d) => Check::new(
                Outcome::Fail,
                "first_divergence",
                format!(
                    "case {} pos {} < {n} ({} at token {}; max_first_divergence from {source})",
                    d.case, d.pos, d.reason, d.token
                ),
            ),
        });
    }
    checks.extend(mode_checks(r, t));
    checks
}

/// What a batched run adds (schema 1.3): a note of the mode; with `--mode both`, the batched
/// comparison held to the same thresholds as the decode one (`batch.*`), and each engine's
/// batch-against-decode agreement as notes (the reference's own paths differ by design).
fn mode_checks(r: &Receipt, t: &Resolved) -> Vec<Check> {
    let st = &r.settings;
    let sizes = match (st.batch, st.ubatch) {
        (Some(b), Some(u)) => format!(" (batch {b}, ubatch {u})"),
        _ => String::new(),
    };
    let mut checks = match st.mode.as_str() {
        "decode" => return Vec::new(),
        "batch" => vec![Check::new(
            Outcome::Note,
            "settings.mode",
            format!("batch{sizes}: the positions above were compared on the batched path"),
        )],
        "both" => vec![Check::new(
            Outcome::Note,
            "settings.mode",
            format!("both{sizes}: the positions above were decoded; batch.* checks the batched path"),
        )],
        other => {
            return vec![Check::new(
                Outcome::Fail,
                "settings.mode",
                format!("{other:?} is not a mode this harness knows"),
            )]
        }
    };
    if st.mode != "both" {
        return checks;
    }
    let Some(s) = &r.batch_summary else {
        checks.push(Check::new(Outcome::Fail, "batch.positions", "mode both without a batch_summary".into()));
        return checks;
    };
    checks.push(if s.positions > 0 {
        Check::new(Outcome::Pass, "batch.positions", format!("{} > 0", s.positions))
    } else {
        Check::new(Outcome::Fail, "batch.positions", "0 (nothing was compared on the batched path)".into())
    });
    checks.push(if s.nonfinite_positions == 0 {
        Check::new(Outcome::Pass, "batch.nonfinite_positions", "0 (no NaN or Inf logits)".into())
    } else {
        Check::new(Outcome::Fail, "batch.nonfinite_positions", format!("{} > 0", s.nonfinite_positions))
    });
    checks.push(at_least("batch.cosine_min", s.cosine_min, &t.min_cosine, "min_cosine"));
    checks.push(at_least(
        "batch.exact_match_rate",
        s.exact_match_rate,
        &t.min_exact_match,
        "min_exact_match",
    ));
    checks.push(match s.kl_max {
        None => null_metric("batch.kl_max", &t.max_kl, "max_kl"),
        Some(v) if v <= t.max_kl.value => Check::new(
            Outcome::Pass,
            "batch.kl_max",
            format!("{} <= {} (max_kl from {})", num(v), num(t.max_kl.value), t.max_kl.source),
        ),
        Some(v) => Check::new(
            Outcome::Fail,
            "batch.kl_max",
            format!("{} > {} (max_kl from {})", num(v), num(t.max_kl.value), t.max_kl.source),
        ),
    });
    if let Some(sc) = &r.self_consistency {
        for (name, side) in
            [("self_consistency.rust", &sc.rust), ("self_consistency.reference", &sc.reference)]
        {
            let cosine = sc_cosine(side.cosine_min);
            checks.push(Check::new(
                Outcome::Note,
                name,
                format!(
                    "batch against decode: {}/{} positions bit-exact, cosine min {cosine}, max |Δ| {}",
                    side.bit_exact_positions,
                    side.positions,
                    side.max_abs_diff.map_or("-".into(), num)
                ),
            ));
        }
    }
    checks
}

fn sc_cosine(v: Option<f64>) -> String {
    v.map_or("-".into(), |c| format!("{c:.9}"))
}

/// Whether the Rust engine mirrored the reference build it faced. A build without a profile (a
/// `reference_profile` hazard) fails unless the profile was chosen by `--reference-profile` and
/// `fail_on_hazards` does not name the kind; a recorded profile that its source contradicts (the
/// build's ISA macros imply another) fails too. `None` for receipts written before profiles
/// were recorded.
fn profile_check(r: &Receipt, policy: &Sourced<HazardPolicy>) -> Option<Check> {
    const NAME: &str = "reference_profile";
    let reference = &r.engines.reference;
    let hazard = hazards::find(&r.hazards, HazardKind::ReferenceProfile);
    let Some(p) = &r.engines.rust.reference_profile else {
        return hazard.map(|h| Check::new(Outcome::Fail, NAME, h.detail.clone()));
    };
    let overridden = p.source == "override";
    Some(match hazard {
        Some(h) if overridden && !h.fails_verdict && policy.value.selects(NAME) => Check::new(
            Outcome::Fail,
            NAME,
            format!(
                "{} chosen by --reference-profile, but {} (fail_on_hazards {} from {})",
                p.name, h.detail, policy.value, policy.source
            ),
        ),
        Some(h) if overridden && !h.fails_verdict => {
            Check::new(Outcome::Note, NAME, format!("{} chosen by --reference-profile; {}", p.name, h.detail))
        }
        Some(h) => Check::new(
            Outcome::Fail,
            NAME,
            format!(
                "{}; the Rust engine mirrored {} ({}), not this build's float code",
                h.detail, p.name, p.source
            ),
        ),
        None if overridden => {
            Check::new(Outcome::Pass, NAME, format!("{} (chosen by --reference-profile)", p.name))
        }
        None => match RefProfile::from_isa_macros(&reference.isa) {
            Ok(b) if b.name() == p.name => {
                Check::new(Outcome::Pass, NAME, format!("{} (from {})", p.name, p.source))
            }
            built => Check::new(
                Outcome::Fail,
                NAME,
                format!(
                    "{} (from {}) but the reference build's ISA macros imply {}",
                    p.name,
                    p.source,
                    built.map_or_else(|e| format!("no profile: {e}"), |b| b.name().to_string())
                ),
            ),
        },
    })
}

/// One line for every hazard but `reference_profile` (see [`profile_check`]): a failure when
/// it fails on its own or `fail_on_hazards` names its kind, else a note.
fn hazard_checks(r: &Receipt, policy: &Sourced<HazardPolicy>) -> Vec<Check> {
    const NAME: &str = "hazard";
    r.hazards
        .iter()
        .filter(|h| h.kind != HazardKind::ReferenceProfile.name())
        .map(|h| {
            let what = format!("{}: {}", h.kind, h.detail);
            if h.fails_verdict {
                Check::new(Outcome::Fail, NAME, format!("{what} (fails on its own)"))
            } else if policy.value.selects(&h.kind) {
                Check::new(
                    Outcome::Fail,
                    NAME,
                    format!("{what} (fail_on_hazards {} from {})", policy.value, policy.source),
                )
            } else {
                Check::new(
                    Outcome::Note,
                    NAME,
                    format!(
                        "{what} (does not fail the gate: fail_on_hazards {} from {})",
                        policy.value, policy.source
                    ),
                )
            }
        })
        .collect()
}

fn at_least(name: &'static str, value: Option<f64>, t: &Sourced<f64>, key: &str) -> Check {
    match value {
        None => null_metric(name, t, key),
        Some(v) if v >= t.value => Check::new(
            Outcome::Pass,
            name,
            format!("{} >= {} ({key} from {})", num(v), num(t.value), t.source),
        ),
        Some(v) => Check::new(
            Outcome::Fail,
            name,
            format!("{} < {} ({key} from {})", num(v), num(t.value), t.source),
        ),
    }
}

fn null_metric(name: &'static str, t: &Sourced<f64>, key: &str) -> Check {
    Check::new(
        Outcome::Fail,
        name,
        format!(
            "null, no position with finite logits was compared ({key} {} from {})",
            num(t.value),
            t.source
        ),
    )
}

/// The earliest first divergence over every case (and the run's summary).
fn earliest_divergence(r: &Receipt) -> Option<&Divergence> {
    r.cases
        .iter()
        .filter_map(|c| c.summary.first_divergence.as_ref())
        .chain(r.summary.first_divergence.as_ref())
        .min_by_key(|d| (d.pos, d.case))
}

/// `case 0 pos 3 (rust 2 NaN), case 1 pos 7 (reference 1 Inf), … and 4 more`.
fn nonfinite_list(r: &Receipt) -> String {
    let mut items = Vec::new();
    for (ci, case) in r.cases.iter().enumerate() {
        for p in &case.positions {
            let Some(nf) = &p.nonfinite else { continue };
            let mut what = Vec::new();
            for (engine, nan, inf) in
                [("rust", nf.rust_nan, nf.rust_inf), ("reference", nf.reference_nan, nf.reference_inf)]
            {
                if nan > 0 {
                    what.push(format!("{engine} {nan} NaN"));
                }
                if inf > 0 {
                    what.push(format!("{engine} {inf} Inf"));
                }
            }
            items.push(format!("case {ci} pos {} ({})", p.pos, what.join(", ")));
        }
    }
    if items.is_empty() {
        return "positions not listed in the receipt".into();
    }
    let more = items.len().saturating_sub(MAX_LISTED_NONFINITE);
    items.truncate(MAX_LISTED_NONFINITE);
    let mut s = items.join(", ");
    if more > 0 {
        let _ = write!(s, ", … and {more} more");
    }
    s
}

/// A number as a person reads it: plain, or in exponent form when tiny or huge.
pub fn num(v: f64) -> String {
    if v != 0.0 && v.is_finite() && (v.abs() < 1e-4 || v.abs() >= 1e15) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(num(0.99999), "0.99999");
        assert_eq!(num(1.0), "1");
        assert_eq!(num(0.0), "0");
        assert_eq!(num(1e-4), "0.0001");
        assert_eq!(num(1.25e-7), "1.25e-7");
    }

    #[test]
    fn fail_line_has_value_comparison_threshold_and_source() {
        let t = Sourced { value: 0.99999, source: thresholds::Source::Receipt };
        let c = at_least("cosine_min", Some(0.99871), &t, "min_cosine");
        assert_eq!(c.line(), "FAIL cosine_min 0.99871 < 0.99999 (min_cosine from the receipt)");
        let c = at_least("cosine_min", Some(0.99999), &t, "min_cosine");
        assert_eq!(c.outcome, Outcome::Pass, "equal to the threshold passes");
        assert_eq!(at_least("cosine_min", None, &t, "min_cosine").outcome, Outcome::Fail);
    }
}
