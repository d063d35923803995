//! Gate thresholds: read from a TOML or JSON file, from flags, or from the receipt itself, and
//! which of the three each value came from.
//!
//! A thresholds file is a complete policy with the keys of [`Thresholds`]: `min_cosine`,
//! `min_exact_match` and `max_kl` are required, `max_first_divergence` is optional (absent
//! means "not checked"), `fail_on_hazards` is optional (absent means `false`: only hazards that
//! fail on their own fail the gate; `true` or a list of kinds makes those fail it too), and any
//! other key is refused — a gate must never silently skip a limit it was given. Every problem
//! with the file is `Exit::ThresholdsInvalid`.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::exit::{Exit, Failure};
use crate::hazards::{HazardKind, HazardPolicy};
use crate::receipt::Thresholds;

/// Where a threshold's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `settings.thresholds` of the receipt (what `run` used).
    Receipt,
    /// A `--thresholds` file.
    File(PathBuf),
    /// A command-line flag (`--min-cosine`, ...).
    Flag(&'static str),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Receipt => f.write_str("the receipt"),
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Flag(flag) => f.write_str(flag),
        }
    }
}

/// One threshold's value and origin.
#[derive(Debug, Clone, PartialEq)]
pub struct Sourced<T> {
    pub value: T,
    pub source: Source,
}

/// The thresholds a gate applies, each with its origin.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub min_cosine: Sourced<f64>,
    pub min_exact_match: Sourced<f64>,
    pub max_kl: Sourced<f64>,
    /// `None`: not checked.
    pub max_first_divergence: Sourced<Option<usize>>,
    /// Which hazards fail besides those that fail on their own.
    pub fail_on_hazards: Sourced<HazardPolicy>,
}

/// Values given as flags (each overrides the file's or the receipt's).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub min_cosine: Option<f64>,
    pub min_exact_match: Option<f64>,
    pub max_kl: Option<f64>,
    pub max_first_divergence: Option<usize>,
    pub fail_on_hazards: Option<HazardPolicy>,
}

/// Precedence: flag, then file, then the receipt's recorded thresholds.
pub fn resolve(recorded: &Thresholds, file: Option<(&Path, &Thresholds)>, flags: &Overrides) -> Resolved {
    let (base, base_source) = match file {
        Some((path, t)) => (t, Source::File(path.to_path_buf())),
        None => (recorded, Source::Receipt),
    };
    fn pick<T: Clone>(flag: Option<T>, name: &'static str, base: &T, source: &Source) -> Sourced<T> {
        match flag {
            Some(value) => Sourced { value, source: Source::Flag(name) },
            None => Sourced { value: base.clone(), source: source.clone() },
        }
    }
    Resolved {
        min_cosine: pick(flags.min_cosine, "--min-cosine", &base.min_cosine, &base_source),
        min_exact_match: pick(
            flags.min_exact_match,
            "--min-exact-match",
            &base.min_exact_match,
            &base_source,
        ),
        max_kl: pick(flags.max_kl, "--max-kl", &base.max_kl, &base_source),
        max_first_divergence: pick(
            flags.max_first_divergence.map(Some),
            "--max-first-divergence",
            &base.max_first_divergence,
            &base_source,
        ),
        fail_on_hazards: pick(
            flags.fail_on_hazards.clone(),
            "--fail-on-hazards",
            &base.fail_on_hazards,
            &base_source,
        ),
    }
}

/// Problems with a thresholds file. Messages name the key (and line, for TOML syntax).
#[derive(Debug, thiserror::Error)]
pub enum ThresholdsError {
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Syntax(String),
    #[error("`{key}` = {value}: {why}")]
    OutOfRange { key: &'static str, value: f64, why: &'static str },
    #[error("`fail_on_hazards` names {kind:?}, which is not a hazard kind (known: {known})")]
    UnknownHazard { kind: String, known: String },
}

/// Reads a thresholds file: JSON when the name ends in `.json`, TOML otherwise.
pub fn read_file(path: &Path) -> Result<Thresholds, Failure> {
    let text = crate::files::read_text(path, crate::files::THRESHOLDS)
        .map_err(|e| Failure::new(Exit::ThresholdsInvalid, e))?;
    let parse = || -> Result<Thresholds, ThresholdsError> {
        let is_json = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let t = if is_json { parse_json(&text)? } else { parse_toml(&text)? };
        check(&t)?;
        Ok(t)
    };
    parse().map_err(|e| {
        Failure::new(Exit::ThresholdsInvalid, anyhow::anyhow!("thresholds file {}: {e}", path.display()))
    })
}

/// Parses TOML thresholds (no range checks).
pub fn parse_toml(text: &str) -> Result<Thresholds, ThresholdsError> {
    toml::from_str(text).map_err(|e| {
        // toml's Display draws a multi-line snippet; keep one line: where, then what.
        let message = e.message().trim().replace('\n', " ");
        let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        ThresholdsError::Syntax(match line {
            Some(l) => format!("line {l}: {message}"),
            None => message,
        })
    })
}

/// Parses JSON thresholds (no range checks).
pub fn parse_json(text: &str) -> Result<Thresholds, ThresholdsError> {
    serde_json::from_str(text).map_err(|e| ThresholdsError::Syntax(e.to_string()))
}

/// Range checks shared by files and flags.
pub fn check(t: &Thresholds) -> Result<(), ThresholdsError> {
    check_min_cosine(t.min_cosine)?;
    check_min_exact_match(t.min_exact_match)?;
    check_max_kl(t.max_kl)?;
    check_fail_on_hazards(&t.fail_on_hazards)
}

/// A kind a file names but this harness does not know is a typo, never silently nothing.
pub fn check_fail_on_hazards(p: &HazardPolicy) -> Result<(), ThresholdsError> {
    match p.unknown_kinds().first() {
        Some(kind) => {
            Err(ThresholdsError::UnknownHazard { kind: kind.to_string(), known: HazardKind::known_names() })
        }
        None => Ok(()),
    }
}

pub fn check_min_cosine(v: f64) -> Result<(), ThresholdsError> {
    range("min_cosine", v, (-1.0..=1.0).contains(&v), "a cosine is between -1 and 1")
}

pub fn check_min_exact_match(v: f64) -> Result<(), ThresholdsError> {
    range("min_exact_match", v, (0.0..=1.0).contains(&v), "a rate is between 0 and 1")
}

pub fn check_max_kl(v: f64) -> Result<(), ThresholdsError> {
    range("max_kl", v, v.is_finite() && v >= 0.0, "a KL divergence is a finite number >= 0")
}

fn range(key: &'static str, value: f64, ok: bool, why: &'static str) -> Result<(), ThresholdsError> {
    if ok {
        Ok(())
    } else {
        Err(ThresholdsError::OutOfRange { key, value, why })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = "min_cosine = 0.999\nmin_exact_match = 1\nmax_kl = 1e-3\nmax_first_divergence = 4\n";

    #[test]
    fn toml_and_json_read_the_same() {
        let t = parse_toml(FULL).unwrap();
        let j = parse_json(
            r#"{"min_cosine": 0.999, "min_exact_match": 1, "max_kl": 0.001, "max_first_divergence": 4}"#,
        )
        .unwrap();
        assert_eq!(t, j);
        assert_eq!(
            t,
            Thresholds {
                min_cosine: 0.999,
                min_exact_match: 1.0,
                max_kl: 1e-3,
                max_first_divergence: Some(4),
                fail_on_hazards: HazardPolicy::None,
            }
        );
    }

    #[test]
    fn fail_on_hazards_is_optional_and_names_known_kinds() {
        let base = "min_cosine = 0.9\nmin_exact_match = 0.5\nmax_kl = 0.1\n";
        assert_eq!(parse_toml(base).unwrap().fail_on_hazards, HazardPolicy::None);
        let t = parse_toml(&format!("{base}fail_on_hazards = true\n")).unwrap();
        assert_eq!(t.fail_on_hazards, HazardPolicy::All);
        let t = parse_toml(&format!("{base}fail_on_hazards = [\"untied_output_ignored\"]\n")).unwrap();
        assert!(check(&t).is_ok());
        assert!(t.fail_on_hazards.selects("untied_output_ignored"));
        let t = parse_toml(&format!("{base}fail_on_hazards = [\"untied\"]\n")).unwrap();
        let e = check(&t).unwrap_err().to_string();
        assert!(e.contains("\"untied\"") && e.contains("untied_output_ignored"), "{e}");
        let e = parse_toml(&format!("{base}fail_on_hazards = 1\n")).unwrap_err().to_string();
        assert!(e.starts_with("line 4:") && e.contains("true, false or a list of hazard kinds"), "{e}");
        let j = parse_json(
            r#"{"min_cosine": 0.9, "min_exact_match": 0.5, "max_kl": 0.1, "fail_on_hazards": true}"#,
        );
        assert_eq!(j.unwrap().fail_on_hazards, HazardPolicy::All);
    }

    #[test]
    fn max_first_divergence_is_optional() {
        let t = parse_toml("min_cosine = 0.9\nmin_exact_match = 0.5\nmax_kl = 0.1\n").unwrap();
        assert_eq!(t.max_first_divergence, None);
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let e = parse_toml("min_cosine = 0.9\nmin_exact_match = 0.5\nmax_kl = 0.1\nmax_cosine = 1\n")
            .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("max_cosine") && msg.starts_with("line 4:"), "{msg}");
        assert!(!msg.contains('\n'));
        let e =
            parse_json(r#"{"min_cosine": 0.9, "min_exact_match": 0.5, "max_kl": 0.1, "kl": 1}"#).unwrap_err();
        assert!(e.to_string().contains("`kl`"), "{e}");
    }

    #[test]
    fn missing_and_mistyped_keys_are_named() {
        let e = parse_toml("min_cosine = 0.9\nmin_exact_match = 0.5\n").unwrap_err();
        assert!(e.to_string().contains("max_kl"), "{e}");
        let e = parse_toml("min_cosine = \"high\"\nmin_exact_match = 0.5\nmax_kl = 0.1\n").unwrap_err();
        assert!(e.to_string().starts_with("line 1:"), "{e}");
        let e =
            parse_toml("min_cosine = 0.9\nmin_exact_match = 0.5\nmax_kl = 0.1\nmax_first_divergence = -1\n")
                .unwrap_err();
        assert!(e.to_string().starts_with("line 4:"), "{e}");
    }

    #[test]
    fn ranges() {
        let ok = Thresholds { min_cosine: 0.9, min_exact_match: 0.5, max_kl: 0.0, ..Thresholds::default() };
        assert!(check(&ok).is_ok());
        for (bad, key) in [
            (Thresholds { min_cosine: 1.5, ..ok.clone() }, "min_cosine"),
            (Thresholds { min_exact_match: -0.1, ..ok.clone() }, "min_exact_match"),
            (Thresholds { max_kl: -1.0, ..ok.clone() }, "max_kl"),
            (Thresholds { max_kl: f64::INFINITY, ..ok.clone() }, "max_kl"),
            (Thresholds { min_cosine: f64::NAN, ..ok.clone() }, "min_cosine"),
        ] {
            let e = check(&bad).unwrap_err();
            assert!(e.to_string().contains(key), "{e}");
        }
    }

    #[test]
    fn precedence_flag_then_file_then_receipt() {
        let recorded = Thresholds::default();
        let file = Thresholds { min_cosine: 0.5, min_exact_match: 0.5, max_kl: 0.5, ..Thresholds::default() };
        let flags = Overrides { max_kl: Some(0.25), max_first_divergence: Some(3), ..Overrides::default() };
        let r = resolve(&recorded, Some((Path::new("t.toml"), &file)), &flags);
        assert_eq!(r.min_cosine, Sourced { value: 0.5, source: Source::File("t.toml".into()) });
        assert_eq!(r.max_kl, Sourced { value: 0.25, source: Source::Flag("--max-kl") });
        assert_eq!(r.max_first_divergence.value, Some(3));
        let r = resolve(&recorded, None, &Overrides::default());
        assert_eq!(r.min_cosine, Sourced { value: recorded.min_cosine, source: Source::Receipt });
        assert_eq!(r.max_first_divergence, Sourced { value: None, source: Source::Receipt });
    }
}
