//! The report of one receipt: verdict, summary table, per-token plots of each prompt, the layer
//! trace, and who computed what (model, engines, settings).

use std::fmt::Write;

use super::heatmap;
use super::html::{self, code, esc, key_values, verdict_badge};
use super::plot::{self, Plot, Series};
use crate::hazards::{find, HazardKind};
use crate::receipt::{Case, Hazard, Receipt, Summary};
use crate::schema::LoadedReceipt;

/// Colour of a receipt's series when the page shows one receipt.
pub const SERIES_COLOUR: &str = "#0969da";

/// The whole HTML document for `r`.
pub fn render(r: &LoadedReceipt) -> String {
    let rc = &r.receipt;
    let mut b = String::new();
    let _ = writeln!(b, "<h1>bitnet-parity report</h1>");
    let _ = writeln!(
        b,
        "<p class=\"sub\">receipt {} · written {} by {} {}{} · schema {}</p>",
        code(&r.path.display().to_string()),
        esc(&rc.created_at),
        esc(&rc.tool.name),
        esc(&rc.tool.version),
        rc.tool
            .git_commit
            .as_deref()
            .map_or(String::new(), |c| format!(" ({})", code(&html::truncate(c, 12)))),
        esc(&rc.schema_version)
    );
    b.push_str(&verdict_block(rc));
    b.push_str(&warnings(rc));
    let _ = writeln!(b, "<h2 id=\"summary\">Summary</h2>");
    b.push_str(&summary_table(rc));
    let _ = writeln!(b, "<h2 id=\"plots\">Per-token agreement</h2>");
    b.push_str(&plot_legend(&[("", SERIES_COLOUR)]));
    for (i, case) in rc.cases.iter().enumerate() {
        let _ = writeln!(b, "<h3 id=\"case-{}\">Case {} — {}</h3>", i + 1, i + 1, prompt_line(case));
        let series = vec![Series {
            name: "",
            colour: SERIES_COLOUR,
            positions: &case.positions,
            divergence: case.summary.first_divergence.as_ref().map(|d| (d.pos, d.reason.as_str())),
        }];
        b.push_str(&case_plot(case, series, rc));
    }
    if let Some(t) = &rc.trace {
        let _ = writeln!(b, "<h2 id=\"trace\">Layer trace</h2>");
        let _ = writeln!(
            b,
            "<p>Case {}, position {} {}, traced because: {}. First divergent operation: <b>{}</b>.</p>",
            t.case + 1,
            t.pos,
            token_of(rc, t.case, t.pos, t.token),
            esc(&t.reason.replace('_', " ")),
            t.first_divergent_op.as_deref().map_or("none".to_string(), code)
        );
        let _ = writeln!(b, "<div class=\"plot\">{}</div>", heatmap::heat_map(t, "per-operation agreement"));
        b.push_str(&heatmap::layer_table(t));
    }
    b.push_str(&identity(rc));
    html::page(&format!("parity report: {}", rc.verdict.status.to_uppercase()), &b)
}

fn verdict_block(rc: &Receipt) -> String {
    let mut s = format!("<div class=\"verdict\">verdict {}</div>\n", verdict_badge(&rc.verdict.status));
    if !rc.verdict.reasons.is_empty() {
        s.push_str("<ul>\n");
        for reason in &rc.verdict.reasons {
            let _ = writeln!(s, "<li>{}</li>", esc(reason));
        }
        s.push_str("</ul>\n");
    }
    s
}

/// What makes the numbers mean less than they seem: reference hazards, injected faults, corrupt
/// weights, failures.
fn warnings(rc: &Receipt) -> String {
    let mut w: Vec<String> = rc.hazards.iter().map(hazard_html).collect();
    if let Some(f) = &rc.engines.rust.injected_fault {
        w.push(format!("A fault was injected into the Rust engine on purpose: {}.", code(f)));
    }
    for p in &rc.model.integrity_problems {
        w.push(format!("I2_S integrity: {}: {}", code(&p.tensor), esc(&p.problem)));
    }
    if rc.run_state.interrupted {
        w.push("The run was interrupted: only the positions done before are here.".into());
    }
    if let Some(f) = &rc.run_state.reference_failure {
        w.push(format!("The reference failed: {}", esc(f)));
    }
    if let Some(f) = &rc.run_state.rust_failure {
        w.push(format!("The Rust engine failed: {}", esc(f)));
    }
    for m in &rc.tokenizer.mismatches {
        w.push(format!(
            "Case {}: the tokenizers disagree from token {} on (ids used: {}).",
            m.case + 1,
            m.first_index,
            esc(rc.settings.ids_from.as_deref().unwrap_or("?"))
        ));
    }
    w.iter().map(|x| format!("<div class=\"warn\">{x}</div>\n")).collect()
}

/// `Hazard <code>untied_output_ignored</code>: DETAIL (does not fail the verdict by default).`
pub fn hazard_html(h: &Hazard) -> String {
    let effect = if h.fails_verdict {
        "fails the verdict"
    } else {
        "does not fail the verdict; the thresholds setting fail_on_hazards can make it"
    };
    format!("Hazard {}: {} ({effect}).", code(&h.kind), esc(&h.detail))
}

fn prompt_line(case: &Case) -> String {
    format!("<span class=\"mono\">“{}”</span>", esc(&html::truncate(&case.prompt, 120)))
}

/// `“ the” (id 533)`, escaped.
fn token_of(rc: &Receipt, case: usize, pos: usize, id: u32) -> String {
    let text = rc.cases.get(case).and_then(|c| c.token_texts.as_ref()).and_then(|t| t.get(pos));
    match text {
        Some(t) => format!("<span class=\"mono\">“{}”</span> (id {id})", esc(&html::token_label(t, 40))),
        None => format!("(id {id})"),
    }
}

fn summary_row(label: &str, prompt: &str, s: &Summary, divergence: String) -> String {
    let class = if s.first_divergence.is_some() || s.nonfinite_positions > 0 {
        "bad"
    } else if s.bit_exact_positions == s.positions && s.positions > 0 {
        "good"
    } else {
        ""
    };
    format!(
        "<tr class=\"{class}\"><td>{label}</td><td class=\"mono\">{prompt}</td><td class=\"num\">{}</td>\
         <td class=\"num\">{}/{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
         <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{divergence}</td></tr>\n",
        s.positions,
        s.bit_exact_positions,
        s.positions,
        html::cos(s.cosine_min),
        html::cos(s.cosine_mean),
        html::percent(s.exact_match_rate),
        html::sci(s.kl_mean),
        html::sci(s.kl_max),
        html::sci(s.max_abs_diff),
    )
}

fn summary_table(rc: &Receipt) -> String {
    let mut s = String::from(
        "<table>\n<tr><th>case</th><th>prompt</th><th class=\"num\">positions</th><th class=\"num\">bit-exact</th>\
         <th class=\"num\">cosine min</th><th class=\"num\">cosine mean</th><th class=\"num\">argmax match</th>\
         <th class=\"num\">KL mean</th><th class=\"num\">KL max</th><th class=\"num\">max |Δ|</th>\
         <th>first divergence</th></tr>\n",
    );
    for (i, c) in rc.cases.iter().enumerate() {
        let d = c.summary.first_divergence.as_ref().map_or("none".to_string(), |d| {
            format!(
                "position {} {} — {}{}",
                d.pos,
                token_of(rc, i, d.pos, d.token),
                esc(&d.reason),
                if d.near_tie { ", near tie" } else { "" }
            )
        });
        let label = format!("<a href=\"#case-{}\">{}</a>", i + 1, i + 1);
        let prompt = esc(&html::truncate(&c.prompt, 48));
        s.push_str(&summary_row(&label, &prompt, &c.summary, d));
    }
    let d = rc.summary.first_divergence.as_ref().map_or("none".to_string(), |d| {
        format!("case {} position {} — {}", d.case + 1, d.pos, esc(&d.reason))
    });
    s.push_str(&summary_row("all", "", &rc.summary, d).replacen("<tr class=\"", "<tr class=\"total ", 1));
    // `--mode both`: the batched comparison, then each engine's batch against its own decode.
    let first = |sm: &Summary| {
        sm.first_divergence.as_ref().map_or("none".to_string(), |d| {
            format!("case {} position {} — {}", d.case + 1, d.pos, esc(&d.reason))
        })
    };
    if let Some(b) = &rc.batch_summary {
        s.push_str(&summary_row("all, batched", "both engines on the batched path", b, first(b)));
    }
    if let Some(sc) = &rc.self_consistency {
        for (label, side) in [("A: batch vs decode", &sc.rust), ("B: batch vs decode", &sc.reference)] {
            s.push_str(&summary_row(
                label,
                "one engine's batch logits against its decode logits",
                side,
                first(side),
            ));
        }
    }
    s.push_str("</table>\n");
    let t = &rc.settings.thresholds;
    let _ = writeln!(
        s,
        "<p class=\"sub\">Thresholds: min_cosine {}, min_exact_match {}, max_kl {:e}, max_first_divergence {}. \
         KL is KL(P_reference ‖ P_rust) in nats.</p>",
        t.min_cosine,
        t.min_exact_match,
        t.max_kl,
        t.max_first_divergence.map_or("not checked".to_string(), |p| p.to_string())
    );
    s
}

/// The legend above the plots: one entry per series, then the marks.
pub fn plot_legend(series: &[(&str, &str)]) -> String {
    let mut s = String::from("<div class=\"legend\">");
    for (name, colour) in series {
        let label = if name.is_empty() { "per position" } else { name };
        let _ = write!(s, "<span class=\"sw\" style=\"background:{colour}\"></span>{}", esc(label));
    }
    s.push_str(
        " · ■ logits bit-exact · ● not bit-exact · argmax: \
         <span class=\"sw\" style=\"background:#a6e3b8\"></span>same \
         <span class=\"sw\" style=\"background:#cf222e\"></span>different \
         <span class=\"sw\" style=\"background:#e3a008\"></span>different on a near tie \
         <span class=\"sw\" style=\"background:#000\"></span>NaN/Inf · \
         dashed brown: threshold · dashed red line: first divergence · hover a column for its numbers</div>\n",
    );
    s
}

/// One prompt's plot, inside its scrolling frame.
pub fn case_plot(case: &Case, series: Vec<Series<'_>>, rc: &Receipt) -> String {
    let p = Plot {
        series,
        texts: case.token_texts.as_deref(),
        ids: &case.token_ids,
        n_prompt: case.n_prompt_tokens,
        min_cosine: rc.settings.thresholds.min_cosine,
        max_kl: rc.settings.thresholds.max_kl,
    };
    format!("<div class=\"plot\">{}</div>\n", plot::render(&p))
}

/// `<code>avx512</code> profile (from build-info)` (HTML), or "not recorded" for receipts
/// written before profiles were.
pub fn profile_text(rc: &Receipt) -> String {
    match &rc.engines.rust.reference_profile {
        None => "not recorded (receipt schema 1.0)".to_string(),
        Some(p) => {
            let source = match p.source.as_str() {
                "override" => "chosen by --reference-profile".to_string(),
                "host" => "the host's: the build has no profile".to_string(),
                other => format!("from {}", esc(other)),
            };
            format!("{} profile ({source})", code(&p.name))
        }
    }
}

fn identity(rc: &Receipt) -> String {
    let mut s = String::from("<h2 id=\"identity\">Engines and model</h2>\n");
    let m = &rc.model;
    let hp: Vec<String> = m.hyperparameters.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut flavours: Vec<String> = m.i2s_tensors.iter().map(|t| t.flavor.clone()).collect();
    flavours.sort();
    flavours.dedup();
    s.push_str("<h3>Model</h3>\n");
    s.push_str(&key_values(&[
        ("path", code(&m.path)),
        ("sha256", code(&m.sha256)),
        ("size", format!("{} bytes", m.size_bytes)),
        ("architecture", esc(&m.architecture)),
        ("hyper-parameters", format!("<span class=\"mono\">{}</span>", esc(&hp.join(", ")))),
        ("I2_S tensors", format!("{} ({})", m.i2s_tensors.len(), esc(&flavours.join(", ")))),
    ]));
    let rust = &rc.engines.rust;
    s.push_str("<h3>Rust engine</h3>\n");
    s.push_str(&key_values(&[
        ("engine", format!("{} {}", esc(&rust.name), esc(&rust.version))),
        ("kernel", code(&rust.kernel)),
        ("mirrors the reference's f16 roundings", rust.exact_reference_rounding.to_string()),
        ("threads", rust.threads.to_string()),
        ("mirrors the reference build", profile_text(rc)),
        ("injected fault", rust.injected_fault.as_deref().map_or("none".to_string(), code)),
    ]));
    let r = &rc.engines.reference;
    let opt = |v: &Option<String>| v.as_deref().map_or("–".to_string(), code);
    s.push_str("<h3>Reference (bitnet.cpp)</h3>\n");
    s.push_str(&key_values(&[
        ("source", code(&r.source)),
        ("version", opt(&r.version)),
        ("compiler", opt(&r.compiler)),
        (
            "flags",
            format!(
                "<details><summary>{} flags</summary>{}</details>",
                r.flags.len(),
                code(&r.flags.join(" "))
            ),
        ),
        ("ISA", code(&r.isa.join(" "))),
        (
            "profile hazard",
            find(&rc.hazards, HazardKind::ReferenceProfile)
                .map_or("none".to_string(), |h| format!("<span class=\"warn\">{}</span>", esc(&h.detail))),
        ),
        ("library", opt(&r.library_path)),
        ("threads", r.threads.to_string()),
        ("KV cache", code(&r.kv_cache_type)),
        ("flash attention", r.flash_attention.to_string()),
    ]));
    let st = &rc.settings;
    let tk = &rc.tokenizer;
    s.push_str("<h3>Run</h3>\n");
    s.push_str(&key_values(&[
        ("mode", mode_text(st)),
        ("n_ctx", st.n_ctx.to_string()),
        ("max tokens", st.max_tokens.map_or("–".to_string(), |v| v.to_string())),
        ("continuation tokens", st.continue_tokens.to_string()),
        ("ids from", st.ids_from.as_deref().map_or("both agree".to_string(), esc)),
        (
            "tokenizers",
            format!(
                "{} on {} prompt(s){}",
                if tk.agree { "agree" } else { "disagree" },
                tk.prompts_checked,
                tk.corpus.as_ref().map_or(String::new(), |c| format!(
                    "; {:.2}% agreement on the {} corpus ({} strings)",
                    100.0 * c.agreement_rate,
                    esc(&c.corpus),
                    c.strings
                ))
            ),
        ),
        (
            "time",
            format!(
                "{:.2} s wall; Rust load {:.2} s, eval {:.2} s; reference load {:.2} s, eval {:.2} s ({} tokens)",
                rc.timings.wall_s,
                rc.timings.rust.load_s,
                rc.timings.rust.eval_s,
                rc.timings.reference.load_s,
                rc.timings.reference.eval_s,
                rc.timings.rust.tokens
            ),
        ),
        ("tool", format!("{} {}", esc(&rc.tool.name), esc(&rc.tool.version))),
        (
            "source tree",
            match (&rc.tool.git_commit, rc.tool.git_dirty) {
                (Some(c), d) => format!("{}{}", code(c), if d == Some(true) { " (with local changes)" } else { "" }),
                (None, _) => "unknown".into(),
            },
        ),
    ]));
    s
}

/// `decode`, `batch (batch 512, ubatch 512)`, `both (…)`: how the engines evaluated the cases.
pub fn mode_text(st: &crate::receipt::Settings) -> String {
    match (st.batch, st.ubatch) {
        (Some(b), Some(u)) => format!("{} (batch {b}, ubatch {u})", esc(&st.mode)),
        _ => esc(&st.mode),
    }
}
