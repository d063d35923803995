//! The strings `tokenize-check` compares: a built-in corpus, or a file in the same format.
//!
//! Format: one string per line, UTF-8. Lines starting with `#` are comments and blank lines
//! are skipped. Escapes: `\n` newline, `\t` tab, `\r` carriage return, `\s` space (so that
//! leading and trailing spaces survive editors), `\\` backslash, `\#` a `#` (to start a string
//! with one), `\u{HEX}` any Unicode scalar value, `\e` nothing (a line `\e` is the empty
//! string). Any other backslash sequence is an error.

/// The built-in corpus text (ASCII prose, code, numbers, whitespace runs, punctuation,
/// contractions, a dozen scripts, emoji sequences, combining marks, special-token texts,
/// control characters, empty and very long strings).
pub const BUILTIN_CORPUS: &str = include_str!("corpus.txt");

/// A malformed corpus line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corpus line {line}: {reason}")]
pub struct CorpusError {
    /// 1-based line number.
    pub line: usize,
    pub reason: String,
}

/// The strings of the built-in corpus, in file order.
pub fn builtin_corpus() -> Vec<String> {
    // The corpus is part of the binary and a unit test parses it: it cannot be malformed.
    parse_corpus(BUILTIN_CORPUS).expect("the built-in corpus is well-formed")
}

/// Parses a corpus in the format above.
pub fn parse_corpus(text: &str) -> Result<Vec<String>, CorpusError> {
    let mut out = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        out.extend(parse_line(line).map_err(|reason| CorpusError { line: i + 1, reason })?);
    }
    Ok(out)
}

/// One line of a corpus (without its `\n`): its string, or `None` for a comment or an empty
/// line; the reason when it is malformed. For readers that stream a file line by line.
pub fn parse_line(line: &str) -> Result<Option<String>, String> {
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    unescape(line).map(Some)
}

fn unescape(line: &str) -> Result<String, String> {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('s') => out.push(' '),
            Some('\\') => out.push('\\'),
            Some('#') => out.push('#'),
            Some('e') => {}
            Some('u') => {
                if chars.next() != Some('{') {
                    return Err("\\u must be followed by {HEX}".into());
                }
                let hex: String = chars.by_ref().take_while(|&c| c != '}').collect();
                let cp = u32::from_str_radix(&hex, 16).map_err(|_| format!("bad code point \\u{{{hex}}}"))?;
                let ch = char::from_u32(cp)
                    .ok_or_else(|| format!("\\u{{{hex}}} is not a Unicode scalar value"))?;
                out.push(ch);
            }
            Some(other) => return Err(format!("unknown escape \\{other}")),
            None => return Err("line ends with a lone backslash".into()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        let parsed =
            parse_corpus("# comment\n\na\\nb\n\\s\\tx\\s\n\\e\n\\#1 \\\\ \\u{1F600}\\u{301}\n").unwrap();
        assert_eq!(parsed, ["a\nb", " \tx ", "", "#1 \\ 😀\u{301}"]);
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(parse_corpus("ok\n\\q").unwrap_err().line, 2);
        assert!(parse_corpus("x\\").is_err());
        assert!(parse_corpus("\\u{D800}").is_err());
        assert!(parse_corpus("\\u{zz}").is_err());
        assert!(parse_corpus("\\u41").is_err());
    }

    #[test]
    fn builtin_corpus_is_broad() {
        let corpus = builtin_corpus();
        assert!(corpus.len() >= 300, "{} strings", corpus.len());
        let has = |pred: &dyn Fn(&str) -> bool| corpus.iter().any(|s| pred(s));
        assert!(has(&|s| s.is_empty()));
        assert!(has(&|s| s.len() > 1000));
        assert!(has(&|s| s.contains("\n\n")));
        assert!(has(&|s| s.starts_with(' ') && s.len() > 1));
        assert!(has(&|s| s.ends_with(' ')));
        assert!(has(&|s| s.contains('\t')));
        assert!(has(&|s| s.contains("\r\n")));
        assert!(has(&|s| s.contains("<|begin_of_text|>")));
        assert!(has(&|s| s.contains('\u{200D}'))); // emoji ZWJ sequences
        assert!(has(&|s| s.contains('\u{301}'))); // combining marks
        assert!(has(&|s| s.contains("'LL")));
        for script in ['П', 'α', 'م', 'ש', 'न', 'ส', '中', 'こ', '한'] {
            assert!(has(&|s| s.contains(script)), "no {script}");
        }
        // No string is accidentally a comment or unescaped.
        assert!(!corpus.iter().any(|s| s.starts_with("# ---")));
    }
}
