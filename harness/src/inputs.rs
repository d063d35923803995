//! Resolving what to run on: the model file and the prompts.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::corpus::{parse_corpus, parse_line, CorpusError};
use crate::exit::{Exit, Failure};
use crate::files::{FileError, TEXT};

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
///
/// The file is read a line at a time, so a corpus of many thousand prompts costs the prompts
/// themselves and no copy of the text; it is bounded like every text input ([`TEXT`]: a FIFO
/// or `/dev/zero` ends in one line, not in exhausted memory).
pub fn read_prompts(path: &Path) -> Result<Vec<String>, Failure> {
    let read_err = |error: io::Error| FileError::Read { path: path.to_path_buf(), error };
    let file = File::open(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if meta.is_dir() {
        return Err(read_err(io::Error::other("is a folder")).into());
    }
    let too_large = || FileError::TooLarge { path: path.to_path_buf(), limit: TEXT };
    if meta.is_file() && meta.len() > TEXT.bytes {
        return Err(too_large().into());
    }
    let mut reader = BufReader::new(file.take(TEXT.bytes + 1));
    let (mut prompts, mut line, mut read, mut n) = (Vec::new(), Vec::new(), 0u64, 0usize);
    loop {
        line.clear();
        let got = reader.read_until(b'\n', &mut line).map_err(read_err)?;
        if got == 0 {
            return Ok(prompts);
        }
        read += got as u64;
        if read > TEXT.bytes {
            return Err(too_large().into());
        }
        n += 1;
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        let text = std::str::from_utf8(&line).map_err(|e| {
            read_err(io::Error::new(io::ErrorKind::InvalidData, format!("not UTF-8 text (line {n}: {e})")))
        })?;
        // Lines of only whitespace are skipped like empty ones (a prompt of spaces is written
        // `\s\s`).
        if text.trim().is_empty() {
            continue;
        }
        let parsed = parse_line(text).map_err(|reason| {
            let e = CorpusError { line: n, reason };
            Failure::new(Exit::BadInput, anyhow::anyhow!("{}: {e}", path.display()))
        })?;
        prompts.extend(parsed);
    }
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
    fn prompts_stream_from_a_large_file() {
        let dir = std::env::temp_dir().join(format!("prompts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.txt");
        let mut text = String::from("# a comment\n\n   \n");
        for i in 0..5000 {
            text.push_str(&format!("prompt {i}\\nline two\n"));
        }
        text.push_str("last, no newline");
        std::fs::write(&path, &text).unwrap();
        let p = read_prompts(&path).unwrap();
        assert_eq!(p.len(), 5001);
        assert_eq!(p[0], "prompt 0\nline two");
        assert_eq!(p[5000], "last, no newline");
        std::fs::write(&path, "ok\n\n\\q\n").unwrap();
        let e = read_prompts(&path).unwrap_err().to_string();
        assert!(e.contains("corpus line 3"), "{e}");
        std::fs::write(&path, b"ok\n\xff\n").unwrap();
        let e = read_prompts(&path).unwrap_err().to_string();
        assert!(e.contains("not UTF-8 text (line 2"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn fixture_prompts_are_not_empty() {
        let p = resolve_prompts(&[], None).unwrap();
        assert!(p.len() >= 3);
        assert!(p.iter().any(|s| s.contains('\n')), "the code prompt has escaped newlines");
    }
}
