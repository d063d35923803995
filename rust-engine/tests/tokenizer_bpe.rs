//! Byte-level BPE tokenization on small hand-made vocabularies, with expectations derived by
//! hand from the reference's `llama-vocab.cpp` (merge loop, whole-word lookup, byte fallback,
//! special-token partition, BOS rules, detokenizer clean-up).

use bitnet_engine::internals::tokenizer::BYTE_TO_CHAR;
use bitnet_engine::tokenizer::{token_type, SpecialIds, TokenAttr, Tokenizer, TokenizerError, TokenizerSpec};

/// 256 byte tokens (id = byte value), then `extra` (NORMAL), then `specials` with their types.
fn spec(pre: &str, extra: &[&str], merges: &[&str], specials: &[(&str, i32)]) -> TokenizerSpec {
    let mut tokens: Vec<String> = BYTE_TO_CHAR.iter().map(|c| c.to_string()).collect();
    tokens.extend(extra.iter().map(|s| s.to_string()));
    let mut token_types = vec![token_type::NORMAL; tokens.len()];
    for (text, ty) in specials {
        tokens.push(text.to_string());
        token_types.push(*ty);
    }
    TokenizerSpec {
        model: "gpt2".into(),
        pre: Some(pre.into()),
        tokens,
        token_types,
        merges: merges.iter().map(|s| s.to_string()).collect(),
        ..TokenizerSpec::default()
    }
}

fn tok(spec: TokenizerSpec) -> Tokenizer {
    Tokenizer::from_spec(spec).expect("valid vocabulary")
}

/// The id of a stored token text.
fn id(t: &Tokenizer, text: &str) -> u32 {
    t.token_id(text).unwrap_or_else(|| panic!("no token {text:?}"))
}

/// Ids of single bytes.
fn bytes(s: &str) -> Vec<u32> {
    s.bytes().map(u32::from).collect()
}

#[test]
fn merges_apply_by_rank_then_leftmost() {
    // "b c" outranks "a b": "abc" merges bc first, then "a bc".
    let t = tok(spec("gpt-2", &["bc", "abc", "ab", "aa"], &["b c", "a b", "a bc", "a a"], &[]));
    assert_eq!(t.encode("abc", false, false), [id(&t, "abc")]);
    // Without the "a bc" rule the result is a + bc even though "ab" exists.
    let t2 = tok(spec("gpt-2", &["bc", "ab"], &["b c", "a b"], &[]));
    assert_eq!(t2.encode("abc", false, false), [u32::from(b'a'), id(&t2, "bc")]);
    // Equal ranks (the same rule twice in a row): the leftmost pair merges first.
    assert_eq!(t.encode("aaa", false, false), [id(&t, "aa"), u32::from(b'a')]);
}

#[test]
fn llama3_looks_whole_words_up_before_merging() {
    // "xyz" is a token but no merge builds it.
    let llama = tok(spec("llama-bpe", &["xyz"], &[], &[]));
    assert_eq!(llama.encode("xyz", false, false), [id(&llama, "xyz")]);
    // The GPT-2 pre-tokenizer does not look words up: bytes only.
    let gpt2 = tok(spec("gpt-2", &["xyz"], &[], &[]));
    assert_eq!(gpt2.encode("xyz", false, false), bytes("xyz"));
    // The lookup is per pre-tokenized word, in byte-level form.
    let llama = tok(spec("llama-bpe", &["Ġxyz"], &[], &[]));
    assert_eq!(llama.encode("a xyz", false, false), [u32::from(b'a'), id(&llama, "Ġxyz")]);
}

#[test]
fn merged_symbols_outside_the_vocabulary_keep_only_ascii_bytes() {
    // "x y" merges to "xy", which is not a token: the reference emits its one-byte tokens.
    let t = tok(spec("gpt-2", &[], &["x y"], &[]));
    assert_eq!(t.encode("xy", false, false), bytes("xy"));
    // "é" is bytes C3 A9, in byte-level form "Ã©". Merged into a non-token, its text has no
    // ASCII byte, so nothing at all is emitted (a quirk of the reference, kept).
    let t = tok(spec("gpt-2", &[], &["Ã ©"], &[]));
    assert_eq!(t.encode("é", false, false), Vec::<u32>::new());
    // Unmerged, "é" is its two byte tokens.
    let t = tok(spec("gpt-2", &[], &[], &[]));
    assert_eq!(t.encode("é", false, false), [0xC3, 0xA9]);
}

#[test]
fn merges_never_cross_pre_tokenizer_words() {
    // "a 1": the Llama-3 split gives "a", " ", "1"; a "Ġ 1" rule cannot apply.
    let t = tok(spec("llama-bpe", &["Ġ1"], &["Ġ 1"], &[]));
    assert_eq!(t.encode("a 1", false, false), bytes("a 1"));
    // The GPT-2 split keeps " 1" together.
    let t = tok(spec("gpt-2", &["Ġ1"], &["Ġ 1"], &[]));
    assert_eq!(t.encode("a 1", false, false), [u32::from(b'a'), id(&t, "Ġ1")]);
}

const BOT: &str = "<|begin_of_text|>";
const EOT: &str = "<|end_of_text|>";

fn with_specials() -> Tokenizer {
    // ids: 256 "hi", 257 "Ġthere", 258 BOT, 259 EOT, 260 "<tool>".
    let mut s = spec(
        "llama-bpe",
        &["hi", "Ġthere"],
        &["h i", "Ġ t", "h e", "Ġt he", "r e", "Ġthe re"],
        &[(BOT, token_type::CONTROL), (EOT, token_type::CONTROL), ("<tool>", token_type::USER_DEFINED)],
    );
    s.bos_id = Some(258);
    s.eos_id = Some(259);
    tok(s)
}

#[test]
fn bos_is_added_for_llama3_unless_disabled() {
    let t = with_specials();
    assert_eq!(t.bos_id(), Some(id(&t, BOT)));
    let hi = id(&t, "hi");
    assert_eq!(t.encode("hi", true, false), [id(&t, BOT), hi]);
    assert_eq!(t.encode("hi", false, false), [hi]);
    assert_eq!(t.encode("", true, false), [id(&t, BOT)]);
    assert_eq!(t.encode("", false, true), Vec::<u32>::new());
    let mut s = spec("llama-bpe", &[], &[], &[(BOT, token_type::CONTROL)]);
    s.bos_id = Some(256);
    s.add_bos = Some(false);
    assert_eq!(tok(s).encode("a", true, false), bytes("a"));
    // The GPT-2 family adds nothing by default.
    let mut s = spec("gpt-2", &[], &[], &[(BOT, token_type::CONTROL)]);
    s.bos_id = Some(256);
    assert_eq!(tok(s).encode("a", true, false), bytes("a"));
}

#[test]
fn eos_is_added_only_when_asked() {
    let mut s = spec("llama-bpe", &[], &[], &[(BOT, token_type::CONTROL), (EOT, token_type::CONTROL)]);
    s.bos_id = Some(256);
    s.eos_id = Some(257);
    s.add_eos = Some(true);
    assert_eq!(tok(s).encode("a", true, false), [256, u32::from(b'a'), 257]);
}

#[test]
fn special_texts_are_tokens_only_with_parse_special() {
    let t = with_specials();
    let (bot, hi) = (id(&t, BOT), id(&t, "hi"));
    assert_eq!(t.encode("<|begin_of_text|>hi", false, true), [bot, hi]);
    // Without parse_special the text is ordinary text.
    let plain = t.encode("<|begin_of_text|>hi", false, false);
    assert!(!plain.contains(&bot));
    assert_eq!(t.decode(&plain), "<|begin_of_text|>hi");
    // Several occurrences, text between them, at both ends.
    let eot = id(&t, EOT);
    assert_eq!(
        t.encode("hi<|end_of_text|><|begin_of_text|> there<|end_of_text|>", false, true),
        [hi, eot, bot, id(&t, "Ġthere"), eot]
    );
    // USER_DEFINED tokens are cut out even without parse_special.
    let tool = id(&t, "<tool>");
    assert_eq!(t.encode("hi<tool>hi", false, false), [hi, tool, hi]);
    // A special token splits words: " there" after it keeps its space.
    assert_eq!(t.encode("<tool> there", false, false), [tool, id(&t, "Ġthere")]);
}

#[test]
fn longer_special_tokens_are_matched_first() {
    let mut s = spec("llama-bpe", &[], &[], &[("<a>", token_type::CONTROL), ("<a><b>", token_type::CONTROL)]);
    s.bos_id = Some(256);
    let t = tok(s);
    assert_eq!(t.encode("<a><b><a>", false, true), [257, 256]);
}

#[test]
fn well_known_end_texts_become_control_tokens() {
    // "<|eot_id|>" typed NORMAL is forced to CONTROL (and becomes EOT and end-of-generation).
    let t = tok(spec("llama-bpe", &["<|eot_id|>"], &[], &[]));
    let eot = id(&t, "<|eot_id|>");
    assert!(t.token_attr(eot).unwrap().any(TokenAttr::CONTROL));
    assert_eq!(t.special_ids().eot, Some(eot));
    assert!(t.is_eog(eot));
    assert_eq!(t.encode("a<|eot_id|>", false, true), [u32::from(b'a'), eot]);
    // Unless parse_special, it is text; decoding without specials drops it.
    assert_eq!(t.token_to_piece_with(eot, 0, false), b"");
    assert_eq!(t.token_to_piece(eot), b"<|eot_id|>");
}

#[test]
fn detokenize_mirrors_the_reference() {
    let t = with_specials();
    let bot = id(&t, BOT);
    let ids = t.encode("hi , there !", true, false);
    assert_eq!(ids[0], bot);
    // decode: every piece, specials included, nothing cleaned.
    assert_eq!(t.decode(&ids), "<|begin_of_text|>hi , there !");
    // detokenize: clean-up of " ," and " !"; specials rendered only if asked.
    assert_eq!(t.detokenize(&ids, false, true), b"<|begin_of_text|>hi, there!");
    assert_eq!(t.detokenize(&ids, false, false), b"hi, there!");
    assert_eq!(t.detokenize(&ids, true, true), b"hi, there!");
}

#[test]
fn byte_level_round_trip() {
    let t = tok(spec("llama-bpe", &["Ġthe", "Ġt", "he"], &["Ġ t", "h e", "Ġt he"], &[]));
    for text in ["", "the the", "  \n\t x", "日本語 😀 é\u{301}", "\u{0}\u{7f}\u{ad}"] {
        let ids = t.encode(text, false, false);
        assert_eq!(t.decode(&ids), text, "{text:?} -> {ids:?}");
    }
    assert_eq!(t.encode(" the", false, false), [id(&t, "Ġthe")]);
}

#[test]
fn bad_vocabularies_are_typed_errors() {
    let mut s = spec("llama-bpe", &[], &[], &[]);
    s.tokens[40] = "!".into(); // id 33 is byte '!'
    assert!(matches!(
        Tokenizer::from_spec(s),
        Err(TokenizerError::DuplicateToken { first: 33, second: 40, .. })
    ));
    let s = spec("nonsense", &[], &[], &[]);
    assert!(matches!(Tokenizer::from_spec(s), Err(TokenizerError::UnsupportedPre(p)) if p == "nonsense"));
    let mut s = spec("llama-bpe", &[], &[], &[]);
    s.model = "bert".into();
    assert!(matches!(Tokenizer::from_spec(s), Err(TokenizerError::UnsupportedModel(_))));
    let mut s = spec("llama-bpe", &[], &[], &[]);
    s.token_types.pop();
    assert!(matches!(Tokenizer::from_spec(s), Err(TokenizerError::LengthMismatch { .. })));
    let mut s = spec("llama-bpe", &[], &[""], &[]);
    s.merges[0].clear();
    assert!(matches!(Tokenizer::from_spec(s), Err(TokenizerError::EmptyMerge(0))));
    assert!(matches!(
        Tokenizer::from_spec(TokenizerSpec { model: "gpt2".into(), ..Default::default() }),
        Err(TokenizerError::EmptyVocab)
    ));
}

#[test]
fn default_ids_and_out_of_range_keys() {
    // BPE defaults BOS and EOS to 11; an out-of-range key keeps the default.
    let mut s = spec("llama-bpe", &[], &[], &[]);
    s.bos_id = Some(100_000);
    s.other_ids = SpecialIds { pad: Some(3), ..SpecialIds::default() };
    let t = tok(s);
    assert_eq!(t.bos_id(), Some(11));
    assert_eq!(t.eos_id(), Some(11));
    assert_eq!(t.special_ids().pad, Some(3));
    let summary = t.summary();
    assert_eq!(summary.vocab_size, 256);
    assert_eq!(summary.pre.as_deref(), Some("llama-bpe"));
    assert!(summary.add_bos);
}

#[test]
fn phi3_special_tokens_swallow_following_spaces() {
    // The reference looks these four up by text for Phi-3 models and fails without them.
    let phi3_tokens = [
        ("<|user|>", token_type::CONTROL),
        ("</s>", token_type::CONTROL),
        ("<s>", token_type::CONTROL),
        ("<unk>", token_type::UNKNOWN),
        ("<|endoftext|>", token_type::CONTROL),
    ];
    let mut s = spec("llama-bpe", &[], &[], &phi3_tokens);
    s.model_name = Some("Phi-3 mini".into());
    let t = tok(s);
    let (user, end) = (id(&t, "<|user|>"), id(&t, "<|endoftext|>"));
    assert!(t.token_attr(user).unwrap().any(TokenAttr::RSTRIP));
    assert!(!t.token_attr(end).unwrap().any(TokenAttr::RSTRIP));
    assert_eq!(t.encode("<|user|>  \n a", false, true), [user, u32::from(b'a')]);
    assert_eq!(t.encode("<|endoftext|> a", false, true), [end, u32::from(b' '), u32::from(b'a')]);
    // Another model name: no stripping.
    let mut s = spec("llama-bpe", &[], &[], &phi3_tokens);
    s.model_name = Some("other".into());
    assert_eq!(tok(s).encode("<|user|> a", false, true), [256, u32::from(b' '), u32::from(b'a')]);
    // A Phi-3 vocabulary without "</s>" does not load, as in the reference.
    let mut s = spec("llama-bpe", &[], &[], &phi3_tokens[..1]);
    s.model_name = Some("phi3".into());
    assert!(matches!(Tokenizer::from_spec(s), Err(TokenizerError::MissingToken { text: "</s>", .. })));
}

#[test]
fn token_texts_end_at_a_nul_as_c_strings_do() {
    // The reference reads GGUF strings as C strings: "ab\0cd" is the token "ab", and "\0x"
    // is empty, so it becomes "[EMPTY_<id>]".
    let t = tok(spec("llama-bpe", &["ab\0cd", "\0x"], &[], &[]));
    assert_eq!(t.token_text(256), Some("ab"));
    assert_eq!(t.token_text(257), Some("[EMPTY_257]"));
    assert_eq!(t.encode("ab", false, false), [256]);
}
