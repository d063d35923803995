//! Tokenizer parity with the C++ reference: for every vocabulary below, our token ids equal the
//! reference's `llama_tokenize` ids on every string of the built-in corpus (with and without
//! BOS, with and without special-token parsing), our detokenized bytes equal
//! `llama_detokenize` in all four modes, and every token's piece equals `llama_token_to_piece`.
//! A last test checks our Unicode classes against the reference's own tables.
//!
//! Vocabularies: the committed fixtures; the trainer's extremes (bytes only, every merge the
//! text supports, padded with UNUSED tokens); and copies of a fixture whose tokenizer metadata
//! is changed to reach the other code paths: the GPT-2 split, `dbrx` (Llama-3 split without
//! the whole-word lookup), EOS added instead of BOS, Phi-3's right-stripping special tokens,
//! and a SentencePiece (`llama`) vocabulary of the same size.

use harness::corpus;

use std::collections::HashSet;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use bitnet_cpp::{Model, Reference};
use bitnet_engine::gguf::{Array, GgufFile, GgufWriter, Value};
use bitnet_engine::internals::tokenizer::{char_to_byte, is_letter, is_number, is_whitespace};
use bitnet_engine::tokenizer::{token_type, Tokenizer};
use bitnet_fixtures::{ensure, spec, write_spec, ModelSpec, WeightForm};

/// One vocabulary to check: a name for messages and a model file the reference can load.
struct Case {
    name: String,
    path: PathBuf,
}

fn cases(dir: &Path) -> Vec<Case> {
    let committed = spec::committed();
    let mut cases: Vec<Case> =
        committed.iter().map(|s| Case { name: s.name.clone(), path: ensure(s, WeightForm::I2S) }).collect();

    let base = committed[0].clone();
    for spec in [
        ModelSpec { name: "vocab-bytes-only".into(), n_merges: 0, ..base.clone() },
        ModelSpec { name: "vocab-all-merges".into(), n_merges: 100_000, ..base.clone() },
        ModelSpec { name: "vocab-padded-unused".into(), pad_vocab_to: Some(1024), ..base.clone() },
    ] {
        let path = write_spec(&spec, WeightForm::I2S, dir).expect("fixture is written");
        cases.push(Case { name: spec.name, path });
    }

    let src = cases[0].path.clone();
    let variant = |name: &str, edit: &dyn Fn(&mut Meta)| {
        let path = dir.join(format!("{name}.gguf"));
        rewrite(&src, &path, edit);
        Case { name: name.into(), path }
    };
    cases.push(variant("pre-gpt-2", &|m| m.set("tokenizer.ggml.pre", Value::String("gpt-2".into()))));
    cases.push(variant("pre-dbrx", &|m| m.set("tokenizer.ggml.pre", Value::String("dbrx".into()))));
    cases.push(variant("eos-not-bos", &|m| {
        m.set("tokenizer.ggml.add_bos_token", Value::Bool(false));
        m.set("tokenizer.ggml.add_eos_token", Value::Bool(true));
    }));
    cases.push(variant("phi-3-name", &phi3));
    cases.push(variant("spm", &to_sentencepiece));
    cases
}

/// GGUF metadata being edited.
struct Meta(Vec<(String, Value)>);

impl Meta {
    fn set(&mut self, key: &str, value: Value) {
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value,
            None => self.0.push((key.to_string(), value)),
        }
    }

    fn remove(&mut self, key: &str) {
        self.0.retain(|(k, _)| k != key);
    }

    fn strings(&self, key: &str) -> Vec<String> {
        match self.0.iter().find(|(k, _)| k == key) {
            Some((_, Value::Array(Array::String(v)))) => v.clone(),
            _ => panic!("{key} is not a string array"),
        }
    }
}

/// Copies `src` to `dst` with edited metadata and the same tensors.
fn rewrite(src: &Path, dst: &Path, edit: &dyn Fn(&mut Meta)) {
    let f = GgufFile::open(src).unwrap();
    let mut meta = Meta(f.metadata().to_vec());
    edit(&mut meta);
    let mut w = GgufWriter::new(f.version());
    for (k, v) in meta.0 {
        w.add_metadata(k, v).unwrap();
    }
    for t in f.tensors() {
        w.add_tensor_info(t.name.clone(), &t.dims, t.ggml_type, t.n_bytes).unwrap();
    }
    let mut out = w.begin(BufWriter::new(File::create(dst).unwrap())).unwrap();
    for t in f.tensors() {
        out.write_tensor_data(&t.name, f.tensor_data(t)).unwrap();
    }
    out.finish().unwrap();
}

/// Names the model Phi-3, which gives every special token RSTRIP except `<unk>`, `<s>` and
/// `<|endoftext|>`; the reference requires those and `</s>`, so four specials are renamed.
fn phi3(m: &mut Meta) {
    let mut tokens = m.strings("tokenizer.ggml.tokens");
    for (from, to) in [
        ("<|reserved_special_token_0|>", "</s>"),
        ("<|reserved_special_token_1|>", "<s>"),
        ("<|start_header_id|>", "<unk>"),
        ("<|end_header_id|>", "<|endoftext|>"),
    ] {
        let t = tokens.iter_mut().find(|t| *t == from).unwrap_or_else(|| panic!("no {from}"));
        *t = to.to_string();
    }
    m.set("tokenizer.ggml.tokens", Value::Array(Array::String(tokens)));
    m.set("general.name", Value::String("Phi-3 fixture".into()));
}

/// Replaces a byte-level BPE vocabulary by a SentencePiece one with as many tokens (the
/// embedding keeps its shape): `<unk>`, `<s>`, `</s>`, the 256 byte tokens `<0xXX>`, every BPE
/// token that is valid UTF-8 (spaces as `▁`) scored by merge rank in groups of three (so equal
/// scores occur), and UNUSED fillers.
fn to_sentencepiece(m: &mut Meta) {
    let bpe = m.strings("tokenizer.ggml.tokens");
    let n = bpe.len();
    let mut tokens = vec!["<unk>".to_string(), "<s>".into(), "</s>".into()];
    let mut types = vec![token_type::UNKNOWN, token_type::CONTROL, token_type::CONTROL];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(token_type::BYTE);
    }
    let mut scores = vec![0.0f32; tokens.len()];
    let mut seen: HashSet<String> = tokens.iter().cloned().collect();
    for (i, t) in bpe.iter().enumerate() {
        let Some(bytes) = t.chars().map(char_to_byte).collect::<Option<Vec<u8>>>() else { continue };
        let Ok(text) = String::from_utf8(bytes) else { continue };
        let piece = text.replace(' ', "▁");
        if tokens.len() < n && seen.insert(piece.clone()) {
            tokens.push(piece);
            types.push(token_type::NORMAL);
            scores.push(-((i / 3) as f32));
        }
    }
    while tokens.len() < n {
        tokens.push(format!("<unused_{}>", tokens.len()));
        types.push(token_type::UNUSED);
        scores.push(0.0);
    }
    m.set("tokenizer.ggml.model", Value::String("llama".into()));
    m.remove("tokenizer.ggml.pre");
    m.remove("tokenizer.ggml.merges");
    m.remove("tokenizer.ggml.add_bos_token");
    m.set("tokenizer.ggml.tokens", Value::Array(Array::String(tokens)));
    m.set("tokenizer.ggml.token_type", Value::Array(Array::I32(types)));
    m.set("tokenizer.ggml.scores", Value::Array(Array::F32(scores)));
    m.set("tokenizer.ggml.bos_token_id", Value::U32(1));
    m.set("tokenizer.ggml.eos_token_id", Value::U32(2));
    m.set("tokenizer.ggml.unknown_token_id", Value::U32(0));
}

/// Compares one string with one combination of flags; returns what differs.
fn compare(
    ours: &Tokenizer,
    reference: &Model,
    text: &str,
    add_special: bool,
    parse_special: bool,
) -> Option<String> {
    let want: Vec<u32> = match reference.tokenize(text, add_special, parse_special) {
        Ok(ids) => ids.into_iter().map(|i| i as u32).collect(),
        Err(e) => return Some(format!("reference failed on {text:?}: {e}")),
    };
    let got = ours.encode(text, add_special, parse_special);
    if got != want {
        let first = got.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
        return Some(format!(
            "{text:?} (add_special {add_special}, parse_special {parse_special}): first difference at {first}\n  ours      {got:?}\n  reference {want:?}"
        ));
    }
    // Detokenizing the same ids must give the same bytes, in every mode.
    let ids: Vec<i32> = want.iter().map(|&i| i as i32).collect();
    for (remove, unparse) in [(false, false), (false, true), (true, false), (true, true)] {
        let want = match reference.detokenize(&ids, remove, unparse) {
            Ok(bytes) => bytes,
            Err(e) => return Some(format!("reference failed to detokenize {text:?}: {e}")),
        };
        let got = ours.detokenize(&got, remove, unparse);
        if got != want {
            return Some(format!(
                "detokenize({text:?} ids, remove_special {remove}, unparse_special {unparse}):\n  ours      {:?}\n  reference {:?}",
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&want)
            ));
        }
    }
    None
}

#[test]
fn token_ids_match_the_reference_on_the_builtin_corpus() {
    let corpus = corpus::builtin_corpus();
    assert!(corpus.len() >= 300);
    let reference = Reference::open_default().expect("the reference library loads");
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut report = Vec::new();
    for case in cases(dir.path()) {
        let model = reference.load_model(&case.path).expect("the reference loads the vocabulary");
        let ours =
            Tokenizer::from_gguf(&GgufFile::open(&case.path).unwrap()).expect("our tokenizer loads it");
        assert_eq!(ours.vocab_size(), model.n_vocab(), "{}", case.name);

        let mut compared = 0;
        let mut differ = 0;
        for text in &corpus {
            for (add_special, parse_special) in [(true, true), (true, false), (false, true), (false, false)] {
                compared += 1;
                if let Some(f) = compare(&ours, &model, text, add_special, parse_special) {
                    differ += 1;
                    failures.push(format!("[{}] {f}", case.name));
                }
            }
        }
        // Every token's piece, with and without special rendering.
        for id in 0..ours.vocab_size() as u32 {
            for special in [false, true] {
                let want = model.token_piece(id as i32, special).unwrap();
                let got = ours.token_to_piece_with(id, 0, special);
                if got != want {
                    differ += 1;
                    failures.push(format!(
                        "[{}] piece of {id} (special {special}): ours {got:?}, reference {want:?}",
                        case.name
                    ));
                }
            }
        }
        report.push(format!(
            "{:<20} vocab {:>5}: {compared} strings x flags and {} pieces compared, {differ} differ",
            case.name,
            ours.vocab_size(),
            2 * ours.vocab_size()
        ));
    }
    eprintln!("tokenizer parity on {} corpus strings:\n  {}", corpus.len(), report.join("\n  "));
    assert!(
        failures.is_empty(),
        "{} differences:\n{}",
        failures.len(),
        failures[..failures.len().min(20)].join("\n")
    );
}

/// The reference's `unicode-data.cpp`, when the reference was built from source.
fn reference_unicode_data() -> Option<String> {
    let info = bitnet_cpp::BuildInfo::baked().expect("build info");
    if info.source.kind == "prebuilt" {
        eprintln!("reference is a prebuilt library without sources: Unicode table check not possible");
        return None;
    }
    let path = info.source.path.join("3rdparty/llama.cpp/src/unicode-data.cpp");
    Some(std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// The hex numbers in the body of `name = { ... };` in the C++ source.
fn hex_numbers(src: &str, name: &str) -> Vec<u32> {
    let start = src.find(name).unwrap_or_else(|| panic!("{name} not in unicode-data.cpp"));
    let body = &src[start..];
    let body = &body[body.find('{').unwrap() + 1..body.find("};").unwrap()];
    body.split(|c: char| !c.is_ascii_hexdigit() && c != 'x')
        .filter_map(|t| t.strip_prefix("0x"))
        .map(|h| u32::from_str_radix(h, 16).unwrap())
        .collect()
}

#[test]
fn unicode_classes_are_the_references_tables() {
    let Some(src) = reference_unicode_data() else { return };
    // unicode_ranges_flags: (first code point, flags) pairs; a range ends where the next starts.
    let flat = hex_numbers(&src, "unicode_ranges_flags");
    let ranges: Vec<(u32, u32)> = flat.chunks(2).map(|p| (p[0], p[1])).collect();
    assert_eq!(ranges.last().unwrap().0, 0x110000);
    const NUMBER: u32 = 0x0002;
    const LETTER: u32 = 0x0004;
    let mut mismatches = Vec::new();
    for w in ranges.windows(2) {
        let ((start, flags), (end, _)) = (w[0], w[1]);
        for cp in start..end {
            let Some(c) = char::from_u32(cp) else { continue }; // surrogates cannot occur in &str
            if is_letter(c) != (flags & LETTER != 0) || is_number(c) != (flags & NUMBER != 0) {
                mismatches.push(cp);
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} code points differ, first {:x?}",
        mismatches.len(),
        &mismatches[..mismatches.len().min(10)]
    );

    let spaces = hex_numbers(&src, "unicode_set_whitespace");
    assert!(spaces.len() > 20);
    for cp in 0..0x110000u32 {
        if let Some(c) = char::from_u32(cp) {
            assert_eq!(is_whitespace(c), spaces.contains(&cp), "U+{cp:04X}");
        }
    }
}
