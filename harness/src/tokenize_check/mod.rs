//! `harness tokenize-check`: the Rust tokenizer against the reference's `llama_tokenize` on a corpus.

use std::path::PathBuf;

use anyhow::anyhow;
use bitnet_cpp::worker::LibraryChoice;
use bitnet_engine::gguf::GgufFile;
use bitnet_engine::tokenizer::Tokenizer;

use crate::corpus;
use crate::engine::cpp::CppSide;
use crate::engine::Engine;
use crate::exit::{Exit, Failure, OrExit};
use crate::inputs::resolve_model;
pub use crate::receipt::{CorpusAgreement, ModeAgreement, StringMismatch};

#[derive(Debug, clap::Args)]
pub struct TokenizeCheckArgs {
    /// The model whose vocabulary to check. Default: $CROSSVAL_GGUF, else the embedded fixture.
    #[arg(long, env = "CROSSVAL_GGUF", value_name = "GGUF")]
    pub model: Option<PathBuf>,
    /// A corpus file, one string per line (escapes: `\n \t \r \s \\ \# \u{HEX} \e`; `#` starts a
    /// comment line). Default: the built-in corpus of several hundred varied strings.
    #[arg(long, value_name = "FILE")]
    pub corpus: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Show at most this many mismatching strings in the text report.
    #[arg(long, default_value_t = 20)]
    pub show: usize,
}

/// The flag combinations checked: with and without BOS, with and without special-token parsing.
const MODES: [(bool, bool); 4] = [(true, false), (true, true), (false, false), (false, true)];

/// A tokenizer under check: the Rust one, or an engine's (named for messages).
pub enum Tokenizing<'x, 'e> {
    Rust(&'x Tokenizer),
    Engine(&'x mut (dyn Engine + 'e), String),
}

impl Tokenizing<'_, '_> {
    /// The ids of every string, or `None` when the engine has no tokenizer for any text.
    fn tokenize_many(
        &mut self,
        strings: &[String],
        add: bool,
        parse: bool,
    ) -> Result<Option<Vec<Vec<u32>>>, Failure> {
        match self {
            Tokenizing::Rust(t) => Ok(Some(strings.iter().map(|s| t.encode(s, add, parse)).collect())),
            Tokenizing::Engine(e, name) => e.tokenize_many(strings, add, parse).map_err(|err| {
                Failure::new(Exit::ReferenceUnavailable, anyhow!("{name}'s tokenizer failed: {err}"))
            }),
        }
    }
}

/// Compares two tokenizers (`rust`: side A, `reference`: side B) on `strings` in every mode;
/// `None` when one side cannot tokenize arbitrary text.
pub fn check(
    mut rust: Tokenizing<'_, '_>,
    mut reference: Tokenizing<'_, '_>,
    strings: &[String],
    corpus_name: &str,
) -> Result<Option<CorpusAgreement>, Failure> {
    let mut modes = Vec::new();
    let mut agreeing_total = 0;
    for (add_special, parse_special) in MODES {
        let mut mode = ModeAgreement { add_special, parse_special, agreeing: 0, mismatches: Vec::new() };
        let (Some(all_rust_ids), Some(all_reference_ids)) = (
            rust.tokenize_many(strings, add_special, parse_special)?,
            reference.tokenize_many(strings, add_special, parse_special)?,
        ) else {
            return Ok(None);
        };
        for (index, ((text, rust_ids), reference_ids)) in
            strings.iter().zip(all_rust_ids).zip(all_reference_ids).enumerate()
        {
            if rust_ids == reference_ids {
                mode.agreeing += 1;
            } else {
                let first_index = rust_ids
                    .iter()
                    .zip(&reference_ids)
                    .position(|(a, b)| a != b)
                    .unwrap_or(rust_ids.len().min(reference_ids.len()));
                mode.mismatches.push(StringMismatch {
                    index,
                    text: text.clone(),
                    first_index,
                    rust_ids,
                    reference_ids,
                });
            }
        }
        agreeing_total += mode.agreeing;
        modes.push(mode);
    }
    let checks = strings.len() * MODES.len();
    Ok(Some(CorpusAgreement {
        corpus: corpus_name.to_string(),
        strings: strings.len(),
        modes,
        agreement_rate: if checks == 0 { 1.0 } else { agreeing_total as f64 / checks as f64 },
    }))
}

pub fn run(args: &TokenizeCheckArgs) -> Result<Exit, Failure> {
    let src = resolve_model(args.model.as_deref())?;
    let file = GgufFile::open(&src.path).or_exit(Exit::BadInput)?;
    let tokenizer = Tokenizer::from_gguf(&file).or_exit(Exit::ModelInvalid)?;
    let (strings, name) = match &args.corpus {
        Some(path) => {
            let text = crate::files::read_text(path, crate::files::TEXT)?;
            let strings = corpus::parse_corpus(&text)
                .map_err(|e| Failure::new(Exit::BadInput, anyhow!("{}: {e}", path.display())))?;
            if strings.is_empty() {
                // Agreement on nothing would read as 100 %.
                return Err(Failure::new(
                    Exit::BadInput,
                    anyhow!("{}: the corpus holds no strings", path.display()),
                ));
            }
            (strings, path.display().to_string())
        }
        None => (corpus::builtin_corpus(), "builtin".to_string()),
    };
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut reference = CppSide::start(LibraryChoice::Default, &src.path, 32, 1, cancel).map_err(|e| {
        Failure::new(Exit::ReferenceUnavailable, anyhow!("cannot start the C++ reference: {e}"))
    })?;
    let found = check(
        Tokenizing::Rust(&tokenizer),
        Tokenizing::Engine(&mut reference, "the C++ reference".into()),
        &strings,
        &name,
    )?;
    Box::new(reference).shutdown();
    let report = found.expect("both tokenizers tokenize any text");
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).or_exit(Exit::Internal)?);
    } else {
        print!("{}", render(&report, &tokenizer, args.show));
    }
    Ok(if report.agreement_rate == 1.0 { Exit::Ok } else { Exit::CheckFailed })
}

fn render(r: &CorpusAgreement, tokenizer: &Tokenizer, show: usize) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let piece = |id: u32| format!("{:?}", String::from_utf8_lossy(&tokenizer.token_to_piece(id)));
    let _ = writeln!(s, "corpus: {} ({} strings)", r.corpus, r.strings);
    let mut shown = 0;
    for m in &r.modes {
        let _ = writeln!(
            s,
            "  add_special={:<5} parse_special={:<5}: {}/{} agree",
            m.add_special, m.parse_special, m.agreeing, r.strings
        );
        for x in &m.mismatches {
            if shown == show {
                break;
            }
            shown += 1;
            let at = |ids: &[u32]| {
                ids.get(x.first_index).map_or("(end)".to_string(), |&id| format!("{id} {}", piece(id)))
            };
            let _ = writeln!(
                s,
                "    string {} {:?}: first difference at token {}: rust {} vs reference {}",
                x.index + 1,
                x.text.chars().take(60).collect::<String>(),
                x.first_index,
                at(&x.rust_ids),
                at(&x.reference_ids)
            );
        }
    }
    let _ = writeln!(s, "agreement: {:.2}%", 100.0 * r.agreement_rate);
    s
}
