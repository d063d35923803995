//! Resolving what to run on: the model file and the prompts.

use std::path::{Path, PathBuf};

use crate::corpus::parse_corpus;
use crate::exit::{Exit, Failure};

/// The fixture built into the binary, used when no model is given.
pub const DEFAULT_FIXTURE_NAME: &str = "tiny-256-gqa-i2_s.gguf";
const DEFAULT_FIXTURE: &[u8] = include_bytes!("../../fixtures/tiny-256-gqa-i2_s.gguf");

/// A model to run: where it is on disk, and how the receipt should name it.
pub struct ModelSource {
    pub path: PathBuf,
    /// As the user gave it, or `embedded:<name>`.
    pub label: String,
    pub embedded: bool,
}

/// `--model`, else `CROSSVAL_GGUF` (clap reads both into `model`), else the embedded fixture,
/// written once to the user's cache folder ([`crate::files::cache_root`]; the C++ reference
/// needs a real file).
pub fn resolve_model(model: Option<&Path>) -> Result<ModelSource, Failure> {
    if let Some(p) = model {
        if !p.is_file() {
            let why = if p.exists() {
                "not a regular file (a model is memory-mapped)"
            } else {
                "no such model file"
            };
            return Err(Failure::new(
                Exit::BadInput,
                anyhow::anyhow!("{}: {why} (from --model or CROSSVAL_GGUF)", p.display()),
            ));
        }
        return Ok(ModelSource { path: p.to_path_buf(), label: p.display().to_string(), embedded: false });
    }
    let dir = crate::files::cache_root()?;
    let path = dir.join(format!("embedded-{}-{}", env!("CARGO_PKG_VERSION"), DEFAULT_FIXTURE_NAME));
    let limit = crate::files::Limit { bytes: DEFAULT_FIXTURE.len() as u64, what: "the embedded fixture" };
    let up_to_date = crate::files::read_bounded(&path, limit).is_ok_and(|b| b == DEFAULT_FIXTURE);
    if !up_to_date {
        crate::files::write_atomic(&path, DEFAULT_FIXTURE)?;
    }
    Ok(ModelSource { path, label: format!("embedded:{DEFAULT_FIXTURE_NAME}"), embedded: true })
}

/// Prompts from a file in the corpus format of `tokenize-check` (one per line; `#` starts a
/// comment line; blank lines are skipped; escapes `\n \t \r \s \\ \# \u{HEX} \e`; see
/// `tokenize_check::corpus`).
pub fn read_prompts(path: &Path) -> Result<Vec<String>, Failure> {
    let text = crate::files::read_text(path, crate::files::TEXT)?;
    // Lines of only whitespace are skipped like empty ones (a prompt of spaces is written
    // `\s\s`); blanking them keeps the line numbers of error messages right.
    let lines: Vec<&str> = text.split('\n').map(|l| if l.trim().is_empty() { "" } else { l }).collect();
    let text = lines.join("\n");
    parse_corpus(&text).map_err(|e| Failure::new(Exit::BadInput, anyhow::anyhow!("{}: {e}", path.display())))
}

/// `--prompt`s, else `--prompts FILE`, else the fixture prompts.
pub fn resolve_prompts(prompts: &[String], file: Option<&Path>) -> Result<Vec<String>, Failure> {
    let list = if !prompts.is_empty() {
        prompts.to_vec()
    } else if let Some(f) = file {
        read_prompts(f)?
    } else {
        parse_corpus(bitnet_fixtures::PROMPTS).expect("the fixture prompts are well-formed")
    };
    if list.is_empty() {
        return Err(Failure::new(Exit::PromptInvalid, anyhow::anyhow!("no prompts to run")));
    }
    if let Some(i) = list.iter().position(|p| p.is_empty()) {
        return Err(Failure::new(Exit::PromptInvalid, anyhow::anyhow!("prompt {} is empty", i + 1)));
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_prompts_are_not_empty() {
        let p = resolve_prompts(&[], None).unwrap();
        assert!(p.len() >= 3);
        assert!(p.iter().any(|s| s.contains('\n')), "the code prompt has escaped newlines");
    }
}
