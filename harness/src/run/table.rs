//! The short table `run` prints.

use std::fmt::Write;

use tabled::settings::Style;
use tabled::{Table, Tabled};

use crate::receipt::Receipt;

#[derive(Tabled)]
struct Row {
    #[tabled(rename = "case")]
    case: String,
    #[tabled(rename = "tokens")]
    tokens: usize,
    #[tabled(rename = "cosine min")]
    cosine_min: String,
    #[tabled(rename = "exact match")]
    exact: String,
    #[tabled(rename = "KL max")]
    kl_max: String,
    #[tabled(rename = "max |Δ|")]
    max_abs: String,
    #[tabled(rename = "bit-exact")]
    bit_exact: String,
    #[tabled(rename = "first divergence")]
    divergence: String,
}

fn f(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.digits$}"))
}

fn e(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.2e}"))
}

pub fn render(r: &Receipt) -> String {
    let mut rows: Vec<Row> = r
        .cases
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let s = &c.summary;
            Row {
                case: format!("{}", i + 1),
                tokens: s.positions,
                cosine_min: f(s.cosine_min, 9),
                exact: s.exact_match_rate.map_or("-".into(), |x| format!("{:.1}%", 100.0 * x)),
                kl_max: e(s.kl_max),
                max_abs: e(s.max_abs_diff),
                bit_exact: format!("{}/{}", s.bit_exact_positions, s.positions),
                divergence: s.first_divergence.as_ref().map_or("none".into(), |d| {
                    format!("pos {} ({}{})", d.pos, d.reason, if d.near_tie { ", near tie" } else { "" })
                }),
            }
        })
        .collect();
    let s = &r.summary;
    rows.push(Row {
        case: "all".into(),
        tokens: s.positions,
        cosine_min: f(s.cosine_min, 9),
        exact: s.exact_match_rate.map_or("-".into(), |x| format!("{:.1}%", 100.0 * x)),
        kl_max: e(s.kl_max),
        max_abs: e(s.max_abs_diff),
        bit_exact: format!("{}/{}", s.bit_exact_positions, s.positions),
        divergence: s
            .first_divergence
            .as_ref()
            .map_or("none".into(), |d| format!("case {} pos {} ({})", d.case + 1, d.pos, d.reason)),
    });
    let mut out = String::new();
    let _ = writeln!(out, "{}", Table::new(rows).with(Style::rounded()));
    let _ = writeln!(
        out,
        "verdict: {}{}",
        r.verdict.status.to_uppercase(),
        if r.verdict.reasons.is_empty() {
            String::new()
        } else {
            format!(" — {}", r.verdict.reasons.join("; "))
        }
    );
    out
}
