//! HTML building blocks: escaping, number formats, the page shell with its inline style.
//!
//! Everything from a receipt (prompts, token texts, paths, reasons) is text from the outside
//! world: it goes through [`esc`] before it enters the page, in text and in attributes alike.

use std::fmt::Write;

/// Escapes `s` for HTML/SVG text and quoted attribute values. Control characters other than
/// newline and tab (not allowed in XML, unreadable anyway) become `U+XXXX`.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\n' | '\t' => out.push(c),
            c if c.is_control() => {
                let _ = write!(out, "U+{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// A token's text as an axis label: whitespace made visible (`␣`, `↵`, `⇥`), control
/// characters as `U+XXXX`, at most `max_chars` characters (then `…`). Not yet escaped.
pub fn token_label(text: &str, max_chars: usize) -> String {
    let mut out = String::new();
    for (n, c) in text.chars().enumerate() {
        if n == max_chars {
            out.push('…');
            break;
        }
        match c {
            ' ' => out.push('␣'),
            '\n' => out.push('↵'),
            '\t' => out.push('⇥'),
            '\r' => out.push('␍'),
            c if c.is_control() => {
                let _ = write!(out, "U+{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    if out.is_empty() {
        out.push('∅');
    }
    out
}

/// At most `max_chars` characters of `s`, then `…`.
pub fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// A cosine with enough digits to see how many 9s it has; `–` when null.
pub fn cos(v: Option<f64>) -> String {
    v.map_or("–".into(), |x| format!("{x:.9}"))
}

/// Scientific notation for KL, differences and errors; exact zero stays `0`.
pub fn sci(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(0.0) => "0".into(),
        Some(x) => format!("{x:.2e}"),
    }
}

pub fn percent(v: Option<f64>) -> String {
    v.map_or("–".into(), |x| format!("{:.1}%", 100.0 * x))
}

/// CSS class and label of a verdict status.
pub fn verdict_badge(status: &str) -> String {
    let class = match status {
        "pass" => "pass",
        "fail" => "fail",
        "incomplete" => "incomplete",
        _ => "invalid",
    };
    format!(r#"<span class="badge {class}">{}</span>"#, esc(&status.to_uppercase()))
}

/// A two-column table of `(key, value)` rows; values are already HTML.
pub fn key_values(rows: &[(&str, String)]) -> String {
    let mut s = String::from("<table class=\"kv\">\n");
    for (k, v) in rows {
        let _ = writeln!(s, "<tr><th>{}</th><td>{v}</td></tr>", esc(k));
    }
    s.push_str("</table>\n");
    s
}

/// `<code>` around escaped text.
pub fn code(s: &str) -> String {
    format!("<code>{}</code>", esc(s))
}

/// The whole document: `title` (plain text) and the body (HTML).
pub fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"/>\n\
         <title>{}</title>\n<style>\n{STYLE}</style>\n</head>\n<body>\n{body}</body>\n</html>\n",
        esc(title)
    )
}

/// The page's only style sheet: no fonts or images to fetch, nothing from the network.
const STYLE: &str = r#"body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328;
  margin: 0 auto; padding: 16px 24px 48px; max-width: 1400px; background: #fff; }
h1 { font-size: 22px; margin: 8px 0 4px; }
h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid #d0d7de; padding-bottom: 4px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
code, pre, .mono { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, monospace; font-size: 12.5px; }
pre { background: #f6f8fa; padding: 8px; overflow-x: auto; }
.sub { color: #59636e; }
.badge { display: inline-block; padding: 2px 12px; border-radius: 6px; font-weight: 700; color: #fff;
  letter-spacing: 0.04em; }
.badge.pass { background: #1a7f37; } .badge.fail { background: #cf222e; }
.badge.incomplete { background: #9a6700; } .badge.invalid { background: #8250df; }
.verdict { font-size: 20px; margin: 10px 0; }
.warn { background: #fff8c5; border: 1px solid #d4a72c; padding: 6px 10px; border-radius: 6px; margin: 8px 0; }
table { border-collapse: collapse; margin: 6px 0; }
th, td { padding: 3px 10px; border-bottom: 1px solid #d8dee4; text-align: left; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.bad td { background: #ffebe9; } tr.good td { background: #f0fff4; } tr.total td { font-weight: 600; }
table.kv th { color: #59636e; font-weight: 500; white-space: nowrap; }
.plot { overflow-x: auto; border: 1px solid #d8dee4; border-radius: 6px; padding: 4px; margin: 6px 0 4px; }
.legend { color: #59636e; font-size: 13px; }
.legend .sw { display: inline-block; width: 11px; height: 11px; vertical-align: -1px; margin: 0 3px 0 10px; }
svg text { font-family: system-ui, sans-serif; font-size: 11px; fill: #1f2328; }
svg text.tok { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 11px; }
svg text.small { font-size: 10px; fill: #59636e; }
.maps { display: flex; flex-wrap: wrap; gap: 24px; }
details { margin: 6px 0; } summary { cursor: pointer; color: #0969da; }
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_quotes_and_controls() {
        assert_eq!(esc(r#"<a href="x">'&'</a>"#), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
        assert_eq!(esc("a\u{0}b\u{1b}c\nd"), "aU+0000bU+001Bc\nd");
        assert_eq!(esc("é ✓"), "é ✓");
    }

    #[test]
    fn token_labels_show_whitespace_and_are_cut() {
        assert_eq!(token_label(" the", 12), "␣the");
        assert_eq!(token_label("a\nb\t", 12), "a↵b⇥");
        assert_eq!(token_label("", 12), "∅");
        assert_eq!(token_label("abcdefgh", 4), "abcd…");
        assert_eq!(token_label("\u{7}", 4), "U+0007");
        assert_eq!(truncate("héllo", 2), "hé…");
        assert_eq!(truncate("hé", 2), "hé");
    }

    #[test]
    fn numbers() {
        assert_eq!(cos(Some(1.0)), "1.000000000");
        assert_eq!(cos(None), "–");
        assert_eq!(sci(Some(0.0)), "0");
        assert_eq!(sci(Some(1.5e-7)), "1.50e-7");
        assert_eq!(percent(Some(0.5)), "50.0%");
        assert!(verdict_badge("pass").contains("PASS"));
        assert!(verdict_badge("<x>").contains("&lt;X&gt;"));
    }
}
