//! Reading a tokenizer from GGUF metadata: the keys, their types, and typed errors.

use bitnet_engine::gguf::{Array, GgufFile, GgufWriter, Value};
use bitnet_engine::internals::tokenizer::BYTE_TO_CHAR;
use bitnet_engine::tokenizer::{token_type, Tokenizer, TokenizerError};

/// A Llama-3 style vocabulary: 256 bytes, "Ġhi" from two merges, BOS and EOS.
fn llama3_metadata() -> Vec<(&'static str, Value)> {
    let mut tokens: Vec<String> = BYTE_TO_CHAR.iter().map(|c| c.to_string()).collect();
    tokens.extend(["Ġh".to_string(), "Ġhi".into(), "<|begin_of_text|>".into(), "<|end_of_text|>".into()]);
    let mut types = vec![token_type::NORMAL; 258];
    types.extend([token_type::CONTROL, token_type::CONTROL]);
    vec![
        ("general.architecture", Value::String("bitnet-b1.58".into())),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("llama-bpe".into())),
        ("tokenizer.ggml.tokens", Value::Array(Array::String(tokens))),
        ("tokenizer.ggml.token_type", Value::Array(Array::I32(types))),
        ("tokenizer.ggml.merges", Value::Array(Array::String(vec!["Ġ h".into(), "Ġh i".into()]))),
        ("tokenizer.ggml.bos_token_id", Value::U32(258)),
        ("tokenizer.ggml.eos_token_id", Value::U32(259)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(true)),
    ]
}

fn write(metadata: Vec<(&'static str, Value)>) -> (tempfile::TempDir, GgufFile) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vocab.gguf");
    let mut w = GgufWriter::new(3);
    for (k, v) in metadata {
        w.add_metadata(k, v).unwrap();
    }
    let file = std::fs::File::create(&path).unwrap();
    w.begin(file).unwrap().finish().unwrap();
    let f = GgufFile::open(&path).unwrap();
    (dir, f)
}

#[test]
fn reads_a_llama3_vocabulary() {
    let (_dir, f) = write(llama3_metadata());
    let t = Tokenizer::from_gguf(&f).unwrap();
    assert_eq!(t.vocab_size(), 260);
    assert_eq!(t.bos_id(), Some(258));
    assert_eq!(t.eos_id(), Some(259));
    assert_eq!(t.encode("hi hi", true, false), [258, u32::from(b'h'), u32::from(b'i'), 257]);
    assert_eq!(t.encode("<|end_of_text|>", false, true), [259]);
    let s = t.summary();
    assert_eq!((s.model.as_str(), s.pre.as_deref(), s.n_merges), ("gpt2", Some("llama-bpe"), 2));
    assert_eq!(s.specials, [(258, "<|begin_of_text|>".to_string()), (259, "<|end_of_text|>".to_string())]);
    assert_eq!(s.eog_ids, [259]);
    assert!(t.is_eog(259) && !t.is_eog(258));
}

fn replace(key: &'static str, value: Option<Value>) -> Vec<(&'static str, Value)> {
    let mut m: Vec<_> = llama3_metadata().into_iter().filter(|(k, _)| *k != key).collect();
    m.extend(value.map(|v| (key, v)));
    m
}

#[test]
fn keys_must_have_the_types_the_reference_accepts() {
    // The reference throws "key ... has wrong type" for a bos id stored as INT32.
    let (_d, f) = write(replace("tokenizer.ggml.bos_token_id", Some(Value::I32(258))));
    let err = Tokenizer::from_gguf(&f).unwrap_err();
    assert!(
        matches!(&err, TokenizerError::WrongType { key, .. } if key == "tokenizer.ggml.bos_token_id"),
        "{err}"
    );
    let (_d, f) = write(replace("tokenizer.ggml.add_bos_token", Some(Value::U8(1))));
    assert!(matches!(Tokenizer::from_gguf(&f), Err(TokenizerError::WrongType { .. })));
    // Token types are read as raw int32 data by the reference: no other width.
    let (_d, f) = write(replace("tokenizer.ggml.token_type", Some(Value::Array(Array::U32(vec![1; 260])))));
    let err = Tokenizer::from_gguf(&f).unwrap_err();
    assert!(err.to_string().contains("tokenizer.ggml.token_type"), "{err}");
}

#[test]
fn missing_keys_are_named() {
    let (_d, f) = write(replace("tokenizer.ggml.merges", None));
    assert!(matches!(Tokenizer::from_gguf(&f), Err(TokenizerError::MissingMerges)));
    let (_d, f) = write(replace("tokenizer.ggml.tokens", None));
    let err = Tokenizer::from_gguf(&f).unwrap_err();
    assert!(err.to_string().contains("tokenizer.ggml.tokens"), "{err}");
    let (_d, f) = write(replace("tokenizer.ggml.pre", None));
    assert!(matches!(Tokenizer::from_gguf(&f), Err(TokenizerError::UnsupportedPre(_))));
}

#[test]
fn absent_optional_keys_take_the_reference_defaults() {
    // No token types: everything NORMAL, so the specials are plain text, even when parsed.
    // No add_bos_token: llama-bpe adds BOS by default.
    let mut m = replace("tokenizer.ggml.token_type", None);
    m.retain(|(k, _)| *k != "tokenizer.ggml.add_bos_token");
    let (_d, f) = write(m);
    let t = Tokenizer::from_gguf(&f).unwrap();
    assert!(t.add_bos());
    assert_eq!(t.encode("", true, true), [258]);
    assert_ne!(t.encode("<|end_of_text|>", false, true), [259]);
}
