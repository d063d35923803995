//! The compact per-prompt table `run` prints, and the verdict line (coloured on a terminal).

use std::fmt::Write;

use tabled::settings::object::{Cell, Rows};
use tabled::settings::Style;
use tabled::{Table, Tabled};

use crate::engine::march_of;
use crate::hazards::{find, HazardKind};
use crate::receipt::{Receipt, ReferenceEngine, Summary};
use crate::report::term::{verdict_tone, Paint, Tone};

/// Characters of each prompt shown (the receipt and `harness report` have it whole).
const PROMPT_CHARS: usize = 24;

#[derive(Tabled)]
struct Row {
    #[tabled(rename = "case")]
    case: String,
    #[tabled(rename = "prompt")]
    prompt: String,
    #[tabled(rename = "tokens")]
    tokens: usize,
    #[tabled(rename = "bit-exact")]
    bit_exact: String,
    #[tabled(rename = "cosine min")]
    cosine_min: String,
    #[tabled(rename = "exact match")]
    exact: String,
    #[tabled(rename = "KL max")]
    kl_max: String,
    #[tabled(rename = "max |Δ|")]
    max_abs: String,
    #[tabled(rename = "first divergence")]
    divergence: String,
}

/// Column of the bit-exact and divergence cells (for colouring).
const BIT_EXACT_COL: usize = 3;
const DIVERGENCE_COL: usize = 8;

fn f(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.digits$}"))
}

fn e(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.2e}"))
}

/// The prompt on one line: escapes for line breaks and tabs, cut to `PROMPT_CHARS`.
fn short_prompt(p: &str) -> String {
    let flat: String = p.escape_debug().collect();
    match flat.char_indices().nth(PROMPT_CHARS) {
        Some((i, _)) => format!("{}…", &flat[..i]),
        None => flat,
    }
}

fn row(case: String, prompt: String, s: &Summary, divergence: String) -> Row {
    Row {
        case,
        prompt,
        tokens: s.positions,
        bit_exact: format!("{}/{}", s.bit_exact_positions, s.positions),
        cosine_min: f(s.cosine_min, 9),
        exact: s.exact_match_rate.map_or("-".into(), |x| format!("{:.1}%", 100.0 * x)),
        kl_max: e(s.kl_max),
        max_abs: e(s.max_abs_diff),
        divergence,
    }
}

/// How a summary's cells are coloured: all bit-exact is good; a divergence or NaN/Inf is bad.
fn tones(s: &Summary) -> (Tone, Tone) {
    let exact = if s.positions > 0 && s.bit_exact_positions == s.positions { Tone::Good } else { Tone::Warn };
    let diverged =
        if s.first_divergence.is_some() || s.nonfinite_positions > 0 { Tone::Bad } else { Tone::Good };
    (exact, diverged)
}

pub fn render(r: &Receipt, paint: Paint) -> String {
    let mut rows: Vec<Row> = Vec::new();
    let mut summaries: Vec<&Summary> = Vec::new();
    for (i, c) in r.cases.iter().enumerate() {
        let s = &c.summary;
        let divergence = s.first_divergence.as_ref().map_or("none".into(), |d| {
            format!("pos {} ({}{})", d.pos, d.reason, if d.near_tie { ", near tie" } else { "" })
        });
        rows.push(row(format!("{}", i + 1), short_prompt(&c.prompt), s, divergence));
        summaries.push(s);
    }
    let s = &r.summary;
    let divergence = s
        .first_divergence
        .as_ref()
        .map_or("none".into(), |d| format!("case {} pos {} ({})", d.case + 1, d.pos, d.reason));
    rows.push(row("all".into(), String::new(), s, divergence));
    summaries.push(s);
    // `--mode both`: the batched comparison, then each side's batch against its own decode.
    let first = |s: &Summary| {
        s.first_divergence
            .as_ref()
            .map_or("none".into(), |d| format!("case {} pos {} ({})", d.case + 1, d.pos, d.reason))
    };
    if let Some(b) = &r.batch_summary {
        rows.push(row("batch".into(), "both engines, batched".into(), b, first(b)));
        summaries.push(b);
    }
    if let Some(sc) = &r.self_consistency {
        for (label, side) in [("A b/d", &sc.rust), ("B b/d", &sc.reference)] {
            rows.push(row(label.into(), "batch vs own decode".into(), side, first(side)));
            summaries.push(side);
        }
    }

    let mut table = Table::new(rows);
    table.with(Style::psql());
    if paint.enabled {
        for (i, s) in summaries.iter().enumerate() {
            let (exact, diverged) = tones(s);
            // Row 0 is the header.
            if let Some(c) = paint.cell(exact) {
                table.modify(Cell::new(i + 1, BIT_EXACT_COL), c);
            }
            if let Some(c) = paint.cell(diverged) {
                table.modify(Cell::new(i + 1, DIVERGENCE_COL), c);
            }
        }
        if let Some(c) = paint.cell(Tone::Dim) {
            table.modify(Rows::first(), c);
        }
    }
    let mut out = String::new();
    let _ = writeln!(out, "{table}");
    if let Some(line) = mode_line(r) {
        let _ = writeln!(out, "{line}");
    }
    if let Some(line) = engines_line(r) {
        let _ = writeln!(out, "{line}");
    }
    if let Some(line) = profile_line(r, paint) {
        let _ = writeln!(out, "{line}");
    }
    // Every other hazard, one line each (the profile's is on the line above).
    for h in r.hazards.iter().filter(|h| h.kind != HazardKind::ReferenceProfile.name()) {
        let tone = if h.fails_verdict { Tone::Bad } else { Tone::Warn };
        let _ = writeln!(out, "{}", paint.paint(tone, &crate::hazards::line(h)));
    }
    let reasons = if r.verdict.reasons.is_empty() {
        String::new()
    } else {
        paint.paint(verdict_tone(&r.verdict.status), &format!(" — {}", r.verdict.reasons.join("; ")))
    };
    let _ = writeln!(out, "verdict: {}{reasons}", paint.verdict(&r.verdict.status));
    out
}

/// `mode: batch (batch 512, ubatch 512)` for a batched run; nothing for decode.
fn mode_line(r: &Receipt) -> Option<String> {
    let st = &r.settings;
    let sizes = st.batch.zip(st.ubatch).map_or(String::new(), |(b, u)| format!(" (batch {b}, ubatch {u})"));
    match st.mode.as_str() {
        "decode" => None,
        "both" => Some(format!(
            "mode: both{sizes}: rows 1..all decode, `batch` the batched path, `A b/d`/`B b/d` each side's \
             batch logits against its own decode logits (informational)"
        )),
        other => Some(format!("mode: {other}{sizes}: every position compared on the batched path")),
    }
}

/// `engines: A … against B …`, when the run is not the default Rust engine against bitnet.cpp.
fn engines_line(r: &Receipt) -> Option<String> {
    let (a, b) = (&r.engines.rust, &r.engines.reference);
    let b_is_cpp = !b.source.starts_with("rust:") && !b.source.starts_with("external:");
    if a.kind == "rust-engine" && b_is_cpp {
        return None;
    }
    let march = |build: &ReferenceEngine| march_of(build).map(|m| format!(" (-march={m})"));
    let side_a = match (a.kind.as_str(), &a.build, &a.external) {
        ("bitnet.cpp", Some(build), _) => {
            format!("bitnet.cpp {}{}", build.source, march(build).unwrap_or_default())
        }
        ("external", _, Some(e)) => format!("{} {} (`{}`)", e.name, e.version, e.command),
        _ => format!("{} {}", a.name, a.version),
    };
    let side_b = if b_is_cpp {
        format!("bitnet.cpp {}{}", b.source, march(b).unwrap_or_default())
    } else {
        b.source.clone()
    };
    Some(format!("engines: {side_a} against {side_b}"))
}

/// `reference profile: avx512 (from build-info)`, with the hazard when the build has none.
fn profile_line(r: &Receipt, paint: Paint) -> Option<String> {
    let p = r.engines.rust.reference_profile.as_ref()?;
    let source = match p.source.as_str() {
        "override" => "chosen by --reference-profile".to_string(),
        "host" => "the host's".to_string(),
        other => format!("from {other}"),
    };
    let hazard = find(&r.hazards, HazardKind::ReferenceProfile).map_or(String::new(), |h| {
        let tone = if h.fails_verdict { Tone::Bad } else { Tone::Warn };
        paint.paint(tone, &format!(" — {}", h.detail))
    });
    Some(format!("reference profile: {} ({source}){hazard}", p.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_are_flattened_and_cut() {
        assert_eq!(short_prompt("a\nb\tc"), "a\\nb\\tc");
        assert_eq!(short_prompt(&"x".repeat(30)), format!("{}…", "x".repeat(24)));
    }
}
