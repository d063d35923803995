//! `harness diff --html`: two receipts on one page. Each prompt's per-token plot shows both
//! receipts on the same axes (old in blue, new in orange, each first divergence marked), the
//! metric table colours what got worse, and both layer traces stand side by side.

use std::fmt::Write;

use serde_json::Value;

use crate::diff::{self, DiffReport, MetricRow, Status};
use crate::report::heatmap;
use crate::report::html::{self, code, esc, verdict_badge};
use crate::report::page::{case_plot, hazard_html, plot_legend, profile_text};
use crate::report::plot::Series;
use crate::schema::LoadedReceipt;

pub const OLD_COLOUR: &str = "#0969da";
pub const NEW_COLOUR: &str = "#bc4c00";

/// The whole HTML document comparing `old` with `new`.
pub fn render(old: &LoadedReceipt, new: &LoadedReceipt, d: &DiffReport) -> String {
    let (o, n) = (&old.receipt, &new.receipt);
    let mut b = String::from("<h1>bitnet-parity diff</h1>\n");
    let _ = writeln!(
        b,
        "<table>\n<tr><th></th><th>receipt</th><th>written</th><th>verdict</th><th class=\"num\">positions</th>\
         <th>Rust kernel</th><th>reference profile</th><th>reference</th></tr>"
    );
    for (name, colour, l) in [("old", OLD_COLOUR, old), ("new", NEW_COLOUR, new)] {
        let r = &l.receipt;
        let _ = writeln!(
            b,
            "<tr><td><span class=\"sw\" style=\"display:inline-block;width:11px;height:11px;background:{colour}\"></span> {name}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            code(&l.path.display().to_string()),
            esc(&r.created_at),
            verdict_badge(&r.verdict.status),
            r.summary.positions,
            code(&r.engines.rust.kernel),
            profile_text(r),
            code(&r.engines.reference.source),
        );
    }
    b.push_str("</table>\n");
    if d.profiles_differ {
        b.push_str(
            "<div class=\"warn\">The two runs mirrored different reference-build profiles: their logits \
             come from different float code and are not expected to agree.</div>\n",
        );
    }
    for side in [&d.old, &d.new] {
        for h in &side.hazards {
            let _ = writeln!(b, "<div class=\"warn\">{}: {}</div>", code(&side.path), hazard_html(h));
        }
        if !side.ignored_fields.is_empty() {
            let _ = writeln!(
                b,
                "<div class=\"warn\">{} is newer than this harness; ignored fields: {}</div>",
                code(&side.path),
                esc(&side.ignored_fields.join(", "))
            );
        }
    }
    let summary = match (d.worse, d.regressions) {
        (0, _) => "no metric got worse".to_string(),
        (w, r) => format!("{w} metric(s) got worse, {r} beyond the tolerance"),
    };
    let _ = writeln!(b, "<p><b>{}</b></p>", esc(&summary));

    // The run's main metrics up front; percentiles, per-case and trace rows after the plots.
    let _ = writeln!(b, "<h2 id=\"metrics\">Run metrics</h2>");
    let (main, rest): (Vec<&MetricRow>, Vec<&MetricRow>) =
        d.metrics.iter().partition(|m| m.scope == "run" && !m.metric.contains("percentiles"));
    b.push_str(&metric_table(&main));

    let _ = writeln!(b, "<h2 id=\"plots\">Per-token agreement, old against new</h2>");
    b.push_str(&plot_legend(&[("old", OLD_COLOUR), ("new", NEW_COLOUR)]));
    for i in 0..o.cases.len().max(n.cases.len()) {
        let (co, cn) = (o.cases.get(i), n.cases.get(i));
        let Some(shown) = cn.or(co) else { continue };
        let _ = writeln!(
            b,
            "<h3 id=\"case-{}\">Case {} — <span class=\"mono\">“{}”</span></h3>",
            i + 1,
            i + 1,
            esc(&html::truncate(&shown.prompt, 120))
        );
        match (co, cn) {
            (Some(a), Some(c)) if a.prompt != c.prompt || a.token_ids != c.token_ids => {
                b.push_str("<div class=\"warn\">The two receipts ran different tokens for this case: the plot lines up positions, not tokens (labels are the new receipt's).</div>\n");
            }
            (None, _) => b.push_str("<div class=\"warn\">Only the new receipt has this case.</div>\n"),
            (_, None) => b.push_str("<div class=\"warn\">Only the old receipt has this case.</div>\n"),
            _ => {}
        }
        let mut series = Vec::new();
        for (name, colour, case) in [("old", OLD_COLOUR, co), ("new", NEW_COLOUR, cn)] {
            if let Some(c) = case {
                series.push(Series {
                    name,
                    colour,
                    positions: &c.positions,
                    divergence: c.summary.first_divergence.as_ref().map(|d| (d.pos, d.reason.as_str())),
                });
            }
        }
        // Thresholds of the new receipt: the one being judged.
        b.push_str(&case_plot(shown, series, if cn.is_some() { n } else { o }));
    }

    if o.trace.is_some() || n.trace.is_some() {
        let _ = writeln!(b, "<h2 id=\"trace\">Layer traces</h2>\n<div class=\"maps\">");
        for (name, r) in [("old", o), ("new", n)] {
            match &r.trace {
                Some(t) => {
                    let title = format!(
                        "{name}: case {} position {} — first divergent op {}",
                        t.case + 1,
                        t.pos,
                        t.first_divergent_op.as_deref().unwrap_or("none")
                    );
                    let _ = writeln!(b, "<div class=\"plot\">{}</div>", heatmap::heat_map(t, &title));
                }
                None => {
                    let _ = writeln!(b, "<div class=\"warn\">{name}: no layer trace in this receipt</div>");
                }
            }
        }
        b.push_str("</div>\n");
    }

    let changed: Vec<&MetricRow> = rest.into_iter().filter(|m| m.status != Status::Same).collect();
    let _ = writeln!(
        b,
        "<h2 id=\"more-metrics\">Other metrics</h2>\n<details><summary>{} changed metric(s): percentiles, per case (numbered from 0), layer trace</summary>",
        changed.len()
    );
    b.push_str(&metric_table(&changed));
    b.push_str("</details>\n");

    let _ = writeln!(b, "<h2 id=\"identity\">What else changed</h2>");
    if d.sections.is_empty() {
        b.push_str("<p>Nothing: same tool, model, engines, settings, tokenizer agreement, verdict, run state, prompts, token ids and logits digests.</p>\n");
    }
    for s in &d.sections {
        let _ = writeln!(b, "<h3>{}</h3>\n<pre>{}</pre>", esc(&s.section), esc(&s.diff));
    }
    html::page("parity diff", &b)
}

fn metric_table(rows: &[&MetricRow]) -> String {
    let mut s = String::from(
        "<table>\n<tr><th>scope</th><th>metric</th><th class=\"num\">old</th><th class=\"num\">new</th>\
         <th class=\"num\">change</th><th></th></tr>\n",
    );
    for m in rows {
        let class = match m.status {
            Status::Worse => "bad",
            Status::Better => "good",
            _ => "",
        };
        let _ = writeln!(
            s,
            "<tr class=\"{class}\"><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td>{}</td></tr>",
            esc(&m.scope),
            code(&m.metric),
            esc(&show(m, &m.old)),
            esc(&show(m, &m.new)),
            esc(&diff::change(m)),
            esc(diff::marker(m))
        );
    }
    s.push_str("</table>\n");
    s
}

/// A metric's value as the text report shows it, names without JSON quotes.
fn show(m: &MetricRow, v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        _ => diff::show(m, v),
    }
}
