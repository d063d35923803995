//! The per-token plot of one prompt, as inline SVG: 1 − cosine on a log axis (top panel), the
//! argmax agreement (a strip), KL(P_reference ‖ P_rust) on a log axis (bottom panel), and the
//! prompt's tokens under the axis. One or two receipts (`diff --html`) on the same axes.
//!
//! Exact zeros (the usual case: the engines are bit-exact) get a row of their own under each
//! log axis; non-finite positions a row above it. The first divergence is a vertical line
//! through both panels, labelled at the top.

use std::fmt::Write;

use super::html::{esc, token_label};
use super::scale::{decade_label, nice_step, LogAxis};
use crate::receipt::Position;

/// One receipt's positions of the prompt.
pub struct Series<'a> {
    /// Legend name (`old`, `new`), empty when the plot shows one receipt.
    pub name: &'a str,
    /// `#rrggbb` of its markers and lines.
    pub colour: &'a str,
    pub positions: &'a [Position],
    /// The prompt's first divergence in this receipt: position and reason.
    pub divergence: Option<(usize, &'a str)>,
}

pub struct Plot<'a> {
    pub series: Vec<Series<'a>>,
    /// Each position's token text, when known (else the ids label the axis).
    pub texts: Option<&'a [String]>,
    pub ids: &'a [u32],
    /// Positions from here on are continuation tokens (shaded).
    pub n_prompt: usize,
    pub min_cosine: f64,
    pub max_kl: f64,
}

const LEFT: f64 = 104.0;
const RIGHT: f64 = 130.0;
const COS_H: f64 = 190.0;
const KL_H: f64 = 140.0;
/// Plot width aimed at; long prompts get a wider (scrolling) plot rather than unreadable slots.
const TARGET_W: f64 = 1000.0;
const MIN_SLOT: f64 = 14.0;
const MAX_W: f64 = 16000.0;
const LABEL_CHARS: usize = 12;
const RED: &str = "#cf222e";

/// Vertical layout, top to bottom.
struct Rows {
    label_band: f64,
    nonfinite: f64,
    cos: LogAxis,
    cos_zero: f64,
    strip_top: f64,
    kl: LogAxis,
    kl_zero: f64,
    ticks: f64,
    tokens: f64,
    height: f64,
}

fn rows(p: &Plot, cos_span: (i32, i32), kl_span: (i32, i32)) -> Rows {
    let label_band = 18.0 + 15.0 * p.series.len() as f64;
    let nonfinite = label_band + 8.0;
    let cos_top = nonfinite + 16.0;
    let cos = LogAxis { lo: cos_span.0, hi: cos_span.1, top: cos_top, bottom: cos_top + COS_H };
    let cos_zero = cos.bottom + 18.0;
    let strip_top = cos_zero + 16.0;
    let kl_top = strip_top + 12.0 * p.series.len() as f64 + 26.0;
    let kl = LogAxis { lo: kl_span.0, hi: kl_span.1, top: kl_top, bottom: kl_top + KL_H };
    let kl_zero = kl.bottom + 18.0;
    let ticks = kl_zero + 22.0;
    let tokens = ticks + 10.0;
    Rows {
        label_band,
        nonfinite,
        cos,
        cos_zero,
        strip_top,
        kl,
        kl_zero,
        ticks,
        tokens,
        height: tokens + 92.0,
    }
}

fn one_minus_cos(p: &Position) -> Option<f64> {
    p.cosine.map(|c| (1.0 - c).max(0.0))
}

/// The SVG element.
pub fn render(p: &Plot) -> String {
    let n = p.series.iter().map(|s| s.positions.len()).max().unwrap_or(0).max(1);
    let slot = (TARGET_W / n as f64).max(MIN_SLOT).min(MAX_W / n as f64);
    let width = LEFT + slot * n as f64 + RIGHT;
    let all = || p.series.iter().flat_map(|s| s.positions.iter());
    let cos_floor = 1.0 - p.min_cosine;
    // 1 − cosine: from the floor up to 1 (2 for anti-correlated vectors).
    let cos_hi = if all().filter_map(one_minus_cos).any(|d| d > 1.0) { 1 } else { 0 };
    let cos_span = (-16, cos_hi);
    let kl_span = LogAxis::fit(all().filter_map(|q| q.kl), &[p.max_kl], 4);
    let r = rows(p, cos_span, kl_span);
    let x = |pos: usize| LEFT + slot * (pos as f64 + 0.5);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg class="tokplot" width="{width:.0}" height="{h:.0}" viewBox="0 0 {width:.0} {h:.0}" role="img">"#,
        h = r.height
    );
    // Continuation tokens: a shaded band behind both panels.
    if p.n_prompt < n {
        let x0 = LEFT + slot * p.n_prompt as f64;
        let _ = writeln!(
            s,
            r##"<rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="#f3f0ff"/><text x="{:.1}" y="{:.1}" class="small">continuation →</text>"##,
            r.cos.top,
            width - RIGHT - x0,
            r.kl_zero - r.cos.top,
            x0 + 4.0,
            r.cos.top + 11.0
        );
    }
    axis(&mut s, &r.cos, r.cos_zero, "1 − cosine", "cos = 1", width);
    axis(&mut s, &r.kl, r.kl_zero, "KL (nats)", "KL = 0", width);
    threshold(&mut s, &r.cos, cos_floor, &format!("min_cosine {}", p.min_cosine), width);
    threshold(&mut s, &r.kl, p.max_kl, &format!("max_kl {:e}", p.max_kl), width);
    if all().any(|q| q.nonfinite.is_some()) {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="{RED}">NaN/Inf</text>"#,
            LEFT - 8.0,
            r.nonfinite + 4.0
        );
    }
    // The argmax strip: one row per series.
    for (k, series) in p.series.iter().enumerate() {
        let y = r.strip_top + 12.0 * k as f64;
        let name =
            if series.name.is_empty() { "argmax".to_string() } else { format!("argmax {}", series.name) };
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 8.0,
            y + 9.0,
            esc(&name)
        );
        for q in series.positions {
            let fill = match (q.nonfinite.is_some(), q.argmax_match, q.near_tie) {
                (true, _, _) => "#000000",
                (false, true, _) => "#a6e3b8",
                (false, false, true) => "#e3a008",
                (false, false, false) => RED,
            };
            let _ = write!(
                s,
                r#"<rect x="{:.1}" y="{y:.1}" width="{:.1}" height="10" fill="{fill}"/>"#,
                LEFT + slot * q.pos as f64 + 0.5,
                (slot - 1.0).max(1.0)
            );
        }
        s.push('\n');
    }
    for series in &p.series {
        let cos_points: Vec<(f64, Option<f64>, bool)> =
            series.positions.iter().map(|q| (x(q.pos), one_minus_cos(q), q.bit_exact)).collect();
        let kl_points: Vec<(f64, Option<f64>, bool)> =
            series.positions.iter().map(|q| (x(q.pos), q.kl.map(|k| k.max(0.0)), q.bit_exact)).collect();
        draw_series(&mut s, &r.cos, r.cos_zero, r.nonfinite, &cos_points, series.colour);
        draw_series(&mut s, &r.kl, r.kl_zero, r.nonfinite, &kl_points, series.colour);
    }
    // First divergences: a line through both panels and a label in the band above.
    for (k, series) in p.series.iter().enumerate() {
        let Some((pos, reason)) = series.divergence else { continue };
        let colour = if p.series.len() == 1 { RED } else { series.colour };
        let xd = x(pos);
        let label_y = 14.0 + 15.0 * k as f64;
        let who = if series.name.is_empty() { String::new() } else { format!("{}: ", series.name) };
        let tok = label_for(p, pos);
        let what = format!("{who}first divergence at position {pos} {tok} ({reason})");
        // The ▼ sits on the line; the text runs towards the middle of the plot.
        let (anchor, tx, text) = if xd > width / 2.0 {
            ("end", xd + 5.0, format!("{what} ▼"))
        } else {
            ("start", xd - 5.0, format!("▼ {what}"))
        };
        let _ = writeln!(
            s,
            r#"<line class="divergence" x1="{xd:.1}" x2="{xd:.1}" y1="{:.1}" y2="{:.1}" stroke="{colour}" stroke-width="2" stroke-dasharray="6 3"/><text x="{tx:.1}" y="{label_y:.1}" text-anchor="{anchor}" fill="{colour}" font-weight="600">{}</text>"#,
            label_y + 3.0,
            r.kl_zero + 4.0,
            esc(&text)
        );
    }
    x_axis(&mut s, p, &r, n, slot);
    hover_columns(&mut s, p, &r, n, slot);
    s.push_str("</svg>\n");
    s
}

/// `“ the” (id 533)` for position `pos`.
fn label_for(p: &Plot, pos: usize) -> String {
    let id = p.ids.get(pos).map_or("?".to_string(), |i| i.to_string());
    match p.texts.and_then(|t| t.get(pos)) {
        Some(t) => format!("“{}” (id {id})", token_label(t, 24)),
        None => format!("(id {id})"),
    }
}

/// Grid, decade ticks, zero row and the panel's title.
fn axis(s: &mut String, a: &LogAxis, zero_y: f64, title: &str, zero_label: &str, width: f64) {
    let right = width - RIGHT;
    let labelled = a.label_decades(8);
    for e in a.lo..=a.hi {
        let y = a.y(10f64.powi(e));
        let major = labelled.contains(&e);
        let _ = write!(
            s,
            r##"<line x1="{LEFT:.1}" x2="{right:.1}" y1="{y:.1}" y2="{y:.1}" stroke="{}" stroke-width="1"/>"##,
            if major { "#d0d7de" } else { "#eff2f5" }
        );
        if major {
            let _ = write!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                LEFT - 8.0,
                y + 4.0,
                decade_label(e)
            );
        }
    }
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT:.1}" x2="{LEFT:.1}" y1="{:.1}" y2="{:.1}" stroke="#8c959f"/><line x1="{LEFT:.1}" x2="{right:.1}" y1="{zero_y:.1}" y2="{zero_y:.1}" stroke="#8c959f" stroke-dasharray="2 3"/><text x="{:.1}" y="{:.1}" text-anchor="end" font-weight="600">{}</text>"##,
        a.top,
        a.bottom,
        LEFT - 8.0,
        zero_y + 4.0,
        esc(zero_label)
    );
    let mid = (a.top + a.bottom) / 2.0;
    let _ = writeln!(
        s,
        r#"<text x="16" y="{mid:.1}" transform="rotate(-90 16 {mid:.1})" text-anchor="middle" font-weight="600">{}</text>"#,
        esc(title)
    );
}

/// A dashed horizontal line at a threshold, labelled in the right margin.
fn threshold(s: &mut String, a: &LogAxis, v: f64, label: &str, width: f64) {
    if !(v.is_finite() && v > 0.0) {
        return;
    }
    let y = a.y(v);
    let right = width - RIGHT;
    let _ = writeln!(
        s,
        r##"<line class="threshold" x1="{LEFT:.1}" x2="{right:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#9a6700" stroke-dasharray="5 4"/><text x="{:.1}" y="{:.1}" fill="#9a6700" class="small">{}</text>"##,
        right + 6.0,
        y + 4.0,
        esc(label)
    );
}

/// Lines through consecutive positive values, and one marker per position: a square where the
/// logits are bit-exact, a circle elsewhere; zeros on the zero row, nulls (non-finite) as ×.
fn draw_series(
    s: &mut String,
    a: &LogAxis,
    zero_y: f64,
    nonfinite_y: f64,
    points: &[(f64, Option<f64>, bool)],
    colour: &str,
) {
    let mut run: Vec<(f64, f64)> = Vec::new();
    let flush = |s: &mut String, run: &mut Vec<(f64, f64)>| {
        if run.len() > 1 {
            let pts: Vec<String> = run.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            let _ = write!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="1.3" stroke-opacity="0.75"/>"#,
                pts.join(" ")
            );
        }
        run.clear();
    };
    for &(x, v, _) in points {
        match v {
            Some(v) if v > 0.0 => run.push((x, a.y(v))),
            _ => flush(s, &mut run),
        }
    }
    flush(s, &mut run);
    for &(x, v, exact) in points {
        match v {
            None => {
                let _ = write!(
                    s,
                    r#"<path d="M{:.1},{:.1}l7,7m0,-7l-7,7" stroke="{RED}" stroke-width="2"/>"#,
                    x - 3.5,
                    nonfinite_y - 3.5
                );
            }
            Some(v) => {
                let y = if v > 0.0 { a.y(v) } else { zero_y };
                if exact {
                    let _ = write!(
                        s,
                        r#"<rect x="{:.1}" y="{:.1}" width="6" height="6" fill="{colour}"/>"#,
                        x - 3.0,
                        y - 3.0
                    );
                } else {
                    let _ = write!(s, r#"<circle cx="{x:.1}" cy="{y:.1}" r="2.8" fill="{colour}"/>"#);
                }
            }
        }
    }
    s.push('\n');
}

/// Position numbers and token texts under the bottom panel.
fn x_axis(s: &mut String, p: &Plot, r: &Rows, n: usize, slot: f64) {
    let step = nice_step(slot, 36.0);
    let label_every = nice_step(slot, 13.0);
    let divergent: Vec<usize> = p.series.iter().filter_map(|s| s.divergence.map(|d| d.0)).collect();
    for pos in 0..n {
        let x = LEFT + slot * (pos as f64 + 0.5);
        if pos % step == 0 {
            let _ = write!(
                s,
                r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle" class="small">{pos}</text>"#,
                r.ticks
            );
        }
        if pos % label_every != 0 && !divergent.contains(&pos) {
            continue;
        }
        let text = match p.texts.and_then(|t| t.get(pos)) {
            Some(t) => token_label(t, LABEL_CHARS),
            None => p.ids.get(pos).map_or("?".into(), |id| format!("#{id}")),
        };
        let style = if divergent.contains(&pos) {
            format!(r#" fill="{RED}" font-weight="700""#)
        } else if pos >= p.n_prompt {
            r##" fill="#6639ba" font-style="italic""##.to_string()
        } else {
            String::new()
        };
        let _ = write!(
            s,
            r#"<text class="tok" x="0" y="0" transform="translate({:.1} {:.1}) rotate(-60)" text-anchor="end"{style}>{}</text>"#,
            x + 3.0,
            r.tokens,
            esc(&text)
        );
    }
    s.push('\n');
}

/// An invisible column per position carrying a tooltip with every metric.
fn hover_columns(s: &mut String, p: &Plot, r: &Rows, n: usize, slot: f64) {
    for pos in 0..n {
        let mut tip = format!("position {pos} {}", label_for(p, pos));
        if pos >= p.n_prompt {
            tip.push_str(" — continuation");
        }
        for series in &p.series {
            let Some(q) = series.positions.get(pos) else { continue };
            let name = if series.name.is_empty() { String::new() } else { format!("{}: ", series.name) };
            let _ = write!(
                tip,
                "\n{name}cosine {} · 1−cos {} · KL {} · max|Δ| {} · argmax rust {} / reference {}{}{}",
                q.cosine.map_or("null".into(), |c| format!("{c:.12}")),
                q.cosine.map_or("null".into(), |c| format!("{:.3e}", 1.0 - c)),
                q.kl.map_or("null".into(), |k| format!("{k:.3e}")),
                q.max_abs_diff.map_or("null".into(), |k| format!("{k:.3e}")),
                q.rust_argmax.map_or("?".into(), |a| a.to_string()),
                q.reference_argmax.map_or("?".into(), |a| a.to_string()),
                if q.bit_exact { " · bit-exact" } else { "" },
                if q.near_tie { " · near tie" } else { "" },
            );
        }
        let _ = write!(
            s,
            r##"<rect x="{:.1}" y="{:.1}" width="{slot:.1}" height="{:.1}" fill="#000" fill-opacity="0"><title>{}</title></rect>"##,
            LEFT + slot * pos as f64,
            r.label_band,
            r.height - r.label_band,
            esc(&tip)
        );
    }
    s.push('\n');
}
