//! The layer trace: a heat map of per-operation agreement (layers × operations, graph order
//! left to right and top to bottom) and the per-layer table.
//!
//! A cell's colour is its agreement digits, −log10(1 − cosine): 16 where the cosine rounds to
//! 1, about 3 where it is 0.999, 0 where the tensors are unrelated. Bit-exact tensors have a
//! colour of their own; the first divergent operation is outlined.

use std::fmt::Write;

use super::html::{self, esc};
use super::scale::{agreement_digits, ramp_colour, text_on, BIT_EXACT_COLOUR, MAX_DIGITS};
use crate::trace::{split_name, Trace, TraceOp};

const CELL_W: f64 = 46.0;
const CELL_H: f64 = 22.0;
const LEFT: f64 = 70.0;
const TOP: f64 = 96.0;

/// Columns: every per-layer operation of the trace (they depend on the architecture and on
/// each layer's optional tensors), in graph order, including those an engine did not report;
/// then the operations after the last layer. Returns them and how many are per-layer.
fn columns(t: &Trace) -> (Vec<String>, usize) {
    // `unmatched` entries are `name (why)`.
    let unmatched = t.unmatched.iter().map(|u| split_name(u.split(" (").next().unwrap_or(u)));
    let all: Vec<(String, Option<usize>)> =
        t.ops.iter().map(|o| (o.op.clone(), o.layer)).chain(unmatched).collect();
    let (mut layer_ops, mut final_ops): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
    // A layer's operation missing from the columns goes right after the one before it in
    // that layer, so layers with and without an optional operation merge in graph order.
    let mut prev: Option<(Option<usize>, usize)> = None;
    for (op, layer) in all {
        let Some(l) = layer else {
            if !final_ops.contains(&op) {
                final_ops.push(op);
            }
            continue;
        };
        let at = match layer_ops.iter().position(|c| *c == op) {
            Some(i) => i,
            None => {
                let i = match prev {
                    Some((Some(pl), pi)) if pl == l => pi + 1,
                    _ => 0,
                };
                layer_ops.insert(i, op);
                i
            }
        };
        prev = Some((Some(l), at));
    }
    let n = layer_ops.len();
    layer_ops.extend(final_ops);
    (layer_ops, n)
}

/// Rows: each layer present in the trace, then `output` when the final operations are.
fn row_keys(t: &Trace) -> Vec<Option<usize>> {
    let mut layers: Vec<usize> = t.ops.iter().filter_map(|o| o.layer).collect();
    layers.sort_unstable();
    layers.dedup();
    let mut keys: Vec<Option<usize>> = layers.into_iter().map(Some).collect();
    if t.ops.iter().any(|o| o.layer.is_none()) {
        keys.push(None);
    }
    keys
}

/// The heat map as SVG. `title` goes above it (e.g. which receipt, in a diff).
pub fn heat_map(t: &Trace, title: &str) -> String {
    let (cols, n_layer_ops) = columns(t);
    let rows = row_keys(t);
    let width = LEFT + CELL_W * cols.len() as f64 + 20.0;
    let legend_top = TOP + CELL_H * rows.len() as f64 + 24.0;
    let height = legend_top + 64.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg class="heatmap" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" role="img">"#
    );
    let _ = writeln!(s, r#"<text x="0" y="14" font-weight="600">{}</text>"#, esc(title));
    for (c, name) in cols.iter().enumerate() {
        let x = LEFT + CELL_W * (c as f64 + 0.5);
        let _ = write!(
            s,
            r#"<text x="0" y="0" transform="translate({x:.1} {:.1}) rotate(-50)" class="small">{}</text>"#,
            TOP - 6.0,
            esc(name)
        );
    }
    s.push('\n');
    for (r, key) in rows.iter().enumerate() {
        let y = TOP + CELL_H * r as f64;
        let label = key.map_or("output".to_string(), |l| format!("layer {l}"));
        let _ =
            write!(s, r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"#, LEFT - 6.0, y + 15.0);
        for (c, name) in cols.iter().enumerate() {
            let x = LEFT + CELL_W * c as f64;
            let op = t.ops.iter().find(|o| o.layer == *key && o.op == *name);
            match op {
                Some(op) => cell(&mut s, op, x, y, t.first_divergent_op.as_deref() == Some(op.name.as_str())),
                None if key.is_some() == (c < n_layer_ops) => {
                    // An operation the trace should have but does not (not reported by an engine).
                    let _ = write!(
                        s,
                        r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="#eaeef2"><title>{} not compared</title></rect>"##,
                        x + 1.0,
                        y + 1.0,
                        CELL_W - 2.0,
                        CELL_H - 2.0,
                        esc(name)
                    );
                }
                None => {}
            }
        }
        s.push('\n');
    }
    legend(&mut s, t.min_cosine, legend_top);
    s.push_str("</svg>\n");
    s
}

fn cell(s: &mut String, op: &TraceOp, x: f64, y: f64, first: bool) {
    let digits = agreement_digits(op.cosine);
    let fill = if op.bit_exact { BIT_EXACT_COLOUR.to_string() } else { ramp_colour(digits) };
    let text = if op.bit_exact { "=".to_string() } else { format!("{digits:.0}") };
    let tip = format!(
        "{}: cosine {:.12} (agreement digits {digits:.1}) · nmse {:.3e} · max|Δ| {:.3e} · {} values{}{}",
        op.name,
        op.cosine,
        op.nmse,
        op.max_abs_diff,
        op.elements,
        if op.bit_exact { " · bit-exact" } else { "" },
        if first { " · FIRST DIVERGENT OPERATION" } else { "" }
    );
    let _ = write!(
        s,
        r#"<g><title>{}</title><rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{fill}"/><text x="{:.1}" y="{:.1}" text-anchor="middle" fill="{}">{text}</text></g>"#,
        esc(&tip),
        x + 1.0,
        y + 1.0,
        CELL_W - 2.0,
        CELL_H - 2.0,
        x + CELL_W / 2.0,
        y + 15.0,
        text_on(&fill)
    );
    if first {
        let _ = write!(
            s,
            r##"<rect class="first-divergent" x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="#000" stroke-width="3"/>"##,
            x + 1.5,
            y + 1.5,
            CELL_W - 3.0,
            CELL_H - 3.0
        );
    }
}

/// The colour bar from 0 to 16 digits, the threshold on it, and the two special swatches.
fn legend(s: &mut String, min_cosine: f64, top: f64) {
    let bar_w = 320.0;
    let steps = 64;
    let _ = write!(
        s,
        r#"<text x="{LEFT:.1}" y="{:.1}" class="small">agreement digits −log10(1 − cosine)</text>"#,
        top - 6.0
    );
    for i in 0..steps {
        let d = MAX_DIGITS * (i as f64 + 0.5) / steps as f64;
        let _ = write!(
            s,
            r#"<rect x="{:.2}" y="{top:.1}" width="{:.2}" height="14" fill="{}"/>"#,
            LEFT + bar_w * i as f64 / steps as f64,
            bar_w / steps as f64 + 0.3,
            ramp_colour(d)
        );
    }
    for d in [0, 4, 8, 12, 16] {
        let x = LEFT + bar_w * f64::from(d) / MAX_DIGITS;
        let _ = write!(
            s,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle" class="small">{d}</text>"#,
            top + 27.0
        );
    }
    let threshold = agreement_digits(min_cosine);
    let tx = LEFT + bar_w * threshold / MAX_DIGITS;
    let _ = write!(
        s,
        r##"<line x1="{tx:.1}" x2="{tx:.1}" y1="{:.1}" y2="{:.1}" stroke="#000" stroke-width="2"/><text x="{tx:.1}" y="{:.1}" text-anchor="middle" class="small">threshold (cosine {min_cosine})</text>"##,
        top - 3.0,
        top + 17.0,
        top + 40.0
    );
    let sx = LEFT + bar_w + 24.0;
    let _ = writeln!(
        s,
        r##"<rect x="{sx:.1}" y="{top:.1}" width="18" height="14" fill="{BIT_EXACT_COLOUR}"/><text x="{:.1}" y="{:.1}" fill="#fff" text-anchor="middle">=</text><text x="{:.1}" y="{:.1}">bit-exact</text><rect x="{:.1}" y="{top:.1}" width="18" height="14" fill="none" stroke="#000" stroke-width="3"/><text x="{:.1}" y="{:.1}">first divergent operation</text>"##,
        sx + 9.0,
        top + 11.0,
        sx + 24.0,
        top + 11.0,
        sx + 92.0,
        sx + 116.0,
        top + 11.0
    );
}

/// The per-layer table (as `harness run` prints it) and every operation in a fold-out.
pub fn layer_table(t: &Trace) -> String {
    let mut s = String::from(
        "<table>\n<tr><th>layer</th><th class=\"num\">bit-exact ops</th><th class=\"num\">min cosine</th>\
         <th class=\"num\">max |Δ|</th><th class=\"num\">max nmse</th><th>first below threshold</th></tr>\n",
    );
    for key in row_keys(t) {
        let ops: Vec<&TraceOp> = t.ops.iter().filter(|o| o.layer == key).collect();
        let min = ops.iter().map(|o| o.cosine).fold(f64::INFINITY, f64::min);
        let max_abs = ops.iter().map(|o| o.max_abs_diff).fold(0.0, f64::max);
        let nmse = ops.iter().map(|o| o.nmse).fold(0.0, f64::max);
        let exact = ops.iter().filter(|o| o.bit_exact).count();
        let first = ops.iter().find(|o| o.below_threshold);
        let class = if first.is_some() {
            "bad"
        } else if exact == ops.len() {
            "good"
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "<tr class=\"{class}\"><td>{}</td><td class=\"num\">{exact}/{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            key.map_or("output".to_string(), |l| l.to_string()),
            ops.len(),
            html::cos(Some(min)),
            html::sci(Some(max_abs)),
            html::sci(Some(nmse)),
            first.map_or("–".to_string(), |o| format!("{} (cosine {:.6})", html::code(&o.name), o.cosine)),
        );
    }
    s.push_str("</table>\n");
    let _ = writeln!(
        s,
        "<details><summary>all {} operations</summary>\n<table>\n<tr><th>operation</th><th class=\"num\">values</th>\
         <th class=\"num\">cosine</th><th class=\"num\">max |Δ|</th><th class=\"num\">nmse</th><th>bit-exact</th></tr>",
        t.ops.len()
    );
    for o in &t.ops {
        let _ = writeln!(
            s,
            "<tr class=\"{}\"><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{:.12}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td>{}</td></tr>",
            if o.below_threshold { "bad" } else { "" },
            html::code(&o.name),
            o.elements,
            o.cosine,
            html::sci(Some(o.max_abs_diff)),
            html::sci(Some(o.nmse)),
            if o.bit_exact { "yes" } else { "" }
        );
    }
    s.push_str("</table>\n</details>\n");
    if !t.unmatched.is_empty() {
        s.push_str("<p>Not compared:</p>\n<ul>\n");
        for u in &t.unmatched {
            let _ = writeln!(s, "<li>{}</li>", esc(u));
        }
        s.push_str("</ul>\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(name: &str) -> TraceOp {
        let (op, layer) = split_name(name);
        TraceOp {
            name: name.into(),
            op,
            layer,
            elements: 1,
            cosine: 1.0,
            max_abs_diff: 0.0,
            nmse: 0.0,
            bit_exact: true,
            below_threshold: false,
        }
    }

    #[test]
    fn columns_merge_layers_with_and_without_an_optional_op_in_graph_order() {
        let names = ["a-0", "up-0", "out-0", "a-1", "up-1", "up_s-1", "out-1", "result_norm"];
        let t = Trace {
            case: 0,
            pos: 0,
            token: 0,
            reason: "requested".into(),
            min_cosine: 0.99,
            ops: names.iter().map(|n| op(n)).collect(),
            first_divergent_op: None,
            unmatched: vec!["silu-1 (rust did not report it)".into()],
            batch: None,
        };
        let (cols, n) = columns(&t);
        assert_eq!(cols, ["a", "up", "up_s", "out", "silu", "result_norm"]);
        assert_eq!(n, 5);
    }
}
