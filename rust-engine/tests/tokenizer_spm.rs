//! SentencePiece (`tokenizer.ggml.model = "llama"`) tokenization on a small hand-made vocabulary,
//! with expectations derived by hand from the reference's `llm_tokenizer_spm_session`.

use bitnet_engine::tokenizer::{token_type, Tokenizer, TokenizerSpec};

/// `<unk>`, `<s>`, `</s>`, the 256 byte tokens `<0xXX>` (ids 3..259), then `pieces` with scores.
fn spm(pieces: &[(&str, f32)]) -> TokenizerSpec {
    let mut tokens = vec!["<unk>".to_string(), "<s>".into(), "</s>".into()];
    let mut types = vec![token_type::UNKNOWN, token_type::CONTROL, token_type::CONTROL];
    let mut scores = vec![0.0, 0.0, 0.0];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(token_type::BYTE);
        scores.push(0.0);
    }
    for (p, s) in pieces {
        tokens.push(p.to_string());
        types.push(token_type::NORMAL);
        scores.push(*s);
    }
    TokenizerSpec {
        model: "llama".into(),
        tokens,
        token_types: types,
        scores: Some(scores),
        ..TokenizerSpec::default()
    }
}

const PIECES: &[(&str, f32)] = &[
    ("▁", -10.0),
    ("h", -10.0),
    ("e", -10.0),
    ("l", -10.0),
    ("o", -10.0),
    ("▁h", -1.0),
    ("ll", -2.0),
    ("▁he", -3.0),
    ("▁hell", -4.0),
    ("▁hello", -5.0),
    ("a", -10.0),
    ("aa", -1.0),
];

fn id(t: &Tokenizer, text: &str) -> u32 {
    t.token_id(text).unwrap_or_else(|| panic!("no token {text:?}"))
}

fn byte(b: u8) -> u32 {
    3 + u32::from(b)
}

#[test]
fn merges_by_score_with_space_prefix_and_bos() {
    let t = Tokenizer::from_spec(spm(PIECES)).unwrap();
    assert_eq!(t.bos_id(), Some(1));
    assert_eq!(t.eos_id(), Some(2));
    // " hello" -> ▁h (-1), ll (-2), ▁he (-3), ▁hell (-4), ▁hello (-5).
    assert_eq!(t.encode("hello", true, false), [1, id(&t, "▁hello")]);
    assert_eq!(t.encode("hello", false, false), [id(&t, "▁hello")]);
    // Two words: each space becomes ▁, which cannot join "h" after "o" ...
    assert_eq!(t.encode("hello hello", false, false), [id(&t, "▁hello"), id(&t, "▁hello")]);
}

#[test]
fn unknown_characters_fall_back_to_byte_tokens() {
    let t = Tokenizer::from_spec(spm(PIECES)).unwrap();
    assert_eq!(t.encode("hé", false, false), [id(&t, "▁h"), byte(0xC3), byte(0xA9)]);
    assert_eq!(t.decode(&t.encode("hé", false, false)), " hé");
}

#[test]
fn equal_scores_merge_leftmost_first() {
    let mut s = spm(PIECES);
    s.add_space_prefix = Some(false);
    let t = Tokenizer::from_spec(s).unwrap();
    assert_eq!(t.encode("aaa", false, false), [id(&t, "aa"), id(&t, "a")]);
}

#[test]
fn text_after_a_special_token_gets_a_space_prefix() {
    let t = Tokenizer::from_spec(spm(PIECES)).unwrap();
    let hello = id(&t, "▁hello");
    assert_eq!(t.encode("hello</s>hello", false, true), [hello, 2, hello]);
    // Without parse_special, "</s>" is text: "<", "/", "s", ">" are byte tokens.
    let ids = t.encode("</s>", false, false);
    assert_eq!(ids, [id(&t, "▁"), byte(b'<'), byte(b'/'), byte(b's'), byte(b'>')]);
}

#[test]
fn detokenize_drops_the_added_leading_space() {
    let t = Tokenizer::from_spec(spm(PIECES)).unwrap();
    let hello = id(&t, "▁hello");
    assert_eq!(t.detokenize(&[hello, hello], false, false), b"hello hello");
    // The first token consumes the space removal even when it renders as nothing (BOS).
    assert_eq!(t.detokenize(&[1, hello], false, false), b" hello");
    assert_eq!(t.detokenize(&[1, hello], true, false), b" hello");
    assert_eq!(t.detokenize(&[1, hello], false, true), b"<s> hello");
    assert_eq!(t.token_to_piece(byte(b'\n')), b"\n");
}
