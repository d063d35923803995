//! Token ids back to text: the reference's `llama_token_to_piece` and `llama_detokenize`.

use super::attr::TokenAttr;
use super::unicode::char_to_byte;
use super::{Kind, Tokenizer};

impl Tokenizer {
    /// The bytes of one token, computed once per token at load (as the reference's cache):
    /// special tokens verbatim; BPE tokens mapped back from the byte-level alphabet; SPM
    /// tokens with `▁` as space, byte tokens `<0xXX>` as their byte; other types empty.
    pub(crate) fn render_piece(&self, id: u32) -> Vec<u8> {
        let data = &self.tokens[id as usize];
        let text = data.text.as_str();
        if data.attr.any(TokenAttr::UNKNOWN | TokenAttr::CONTROL | TokenAttr::USER_DEFINED) {
            return text.as_bytes().to_vec();
        }
        match self.kind {
            Kind::Bpe(_) if data.attr.any(TokenAttr::NORMAL) => decode_byte_level(text),
            Kind::Bpe(_) => Vec::new(),
            Kind::Spm if data.attr.any(TokenAttr::NORMAL) => text.replace('▁', " ").into_bytes(),
            Kind::Spm if data.attr.any(TokenAttr::BYTE) => vec![spm_byte_value(text)],
            Kind::Spm => Vec::new(),
        }
    }

    /// `llama_token_to_piece(id, lstrip, special)`: the bytes of token `id`; empty for CONTROL
    /// and UNKNOWN tokens unless `special`; up to `lstrip` leading spaces removed. Ids outside
    /// the vocabulary give an empty piece (the reference reads out of bounds).
    pub fn token_to_piece_with(&self, id: u32, lstrip: usize, special: bool) -> Vec<u8> {
        let Some(data) = self.tokens.get(id as usize) else {
            return Vec::new();
        };
        if !special && data.attr.any(TokenAttr::UNKNOWN | TokenAttr::CONTROL) {
            return Vec::new();
        }
        let piece = &self.pieces[id as usize];
        let skip = piece.iter().take(lstrip).take_while(|&&b| b == b' ').count();
        piece[skip..].to_vec()
    }

    /// `llama_detokenize(ids, remove_special, unparse_special)`: the pieces concatenated, with
    /// the leading space of SentencePiece text dropped, the added BOS/EOS removed if
    /// `remove_special`, and for BPE vocabularies the reference's space clean-up
    /// (`clean_up_tokenization_spaces`: " ." → ".", " 's" → "'s", …).
    pub fn detokenize(&self, ids: &[u32], remove_special: bool, unparse_special: bool) -> Vec<u8> {
        let mut ids = ids;
        let mut remove_space = self.add_space_prefix;
        if remove_special && self.add_bos && !ids.is_empty() && Some(ids[0]) == self.bos {
            remove_space = false;
            ids = &ids[1..];
        }
        if remove_special && self.add_eos && ids.last().copied().is_some_and(|l| Some(l) == self.eos) {
            ids = &ids[..ids.len() - 1];
        }
        let mut text = Vec::new();
        for &id in ids {
            text.extend(self.token_to_piece_with(id, usize::from(remove_space), unparse_special));
            remove_space = false;
        }
        if self.clean_spaces {
            text = clean_spaces(&text);
        }
        text
    }
}

/// A byte-level token back to bytes; characters outside the alphabet are written as the
/// reference writes them: `[UNK_BYTE_0x<hex of the character>` + the whole token + `]`.
fn decode_byte_level(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match char_to_byte(c) {
            Some(b) => out.push(b),
            None => {
                out.extend_from_slice(b"[UNK_BYTE_0x");
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
                out.extend_from_slice(text.as_bytes());
                out.push(b']');
            }
        }
    }
    out
}

/// The byte of an SPM byte token `<0xXX>`: two hex digits from offset 3, parsed leniently
/// like C `strtol` (a malformed token gives the value of its leading hex digits, or 0).
fn spm_byte_value(text: &str) -> u8 {
    let digits = text.as_bytes().get(3..5.min(text.len())).unwrap_or(&[]);
    let mut v: u32 = 0;
    for &d in digits {
        match (d as char).to_digit(16) {
            Some(x) => v = v * 16 + x,
            None => break,
        }
    }
    v as u8
}

/// The reference's three clean-up passes over detokenized bytes (`tokenizer_clean_spaces`).
fn clean_spaces(text: &[u8]) -> Vec<u8> {
    // 1. " ?", " !", " .", " ," lose their space.
    let mut pass1 = Vec::with_capacity(text.len());
    for (i, &x) in text.iter().enumerate() {
        if i > 0 && text[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            pass1.pop();
        }
        pass1.push(x);
    }

    // 2. A lone apostrophe between spaces loses both spaces. The reference blanks the space
    //    after it in place, so that position no longer counts as a space for the next check.
    let mut buf = pass1;
    let n = buf.len();
    let mut pass2 = Vec::with_capacity(n);
    let mut i = 0;
    while i < n {
        let x = buf[i];
        if i > 0 && x == b'\'' && i + 1 < n && buf[i - 1] == b' ' && buf[i + 1] == b' ' {
            pass2.pop();
            buf[i + 1] = 0;
            i += 1;
        }
        pass2.push(x);
        i += 1;
    }

    // 3. " 's", " 'm", " 're", " 've" lose their space (" 't", " 'd", " 'll" keep it).
    let n = pass2.len();
    let mut pass3 = Vec::with_capacity(n);
    for i in 0..n {
        let x = pass2[i];
        if i > 0 && pass2[i - 1] == b' ' && x == b'\'' && i + 1 < n {
            let x1 = pass2[i + 1];
            let x2 = pass2.get(i + 2).copied().filter(|_| i + 2 < n);
            let drop_space =
                matches!(x1, b's' | b'm') || matches!((x1, x2), (b'r', Some(b'e')) | (b'v', Some(b'e')));
            if drop_space {
                pass3.pop();
            }
        }
        pass3.push(x);
    }
    pass3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_up_passes() {
        let c = |s: &str| String::from_utf8(clean_spaces(s.as_bytes())).unwrap();
        assert_eq!(c("Hello , world !"), "Hello, world!");
        assert_eq!(c("a ' b"), "a'b");
        assert_eq!(c("it 's I 'm we 're you 've"), "it's I'm we're you've");
        assert_eq!(c("don 't I 'd we 'll"), "don 't I 'd we 'll");
        // The blanked space after a stripped apostrophe hides the next one.
        assert_eq!(c("x ' ' y"), "x'' y");
        // The first byte is never dropped, but a space before it can go.
        assert_eq!(c(" ."), ".");
        assert_eq!(c(""), "");
    }

    #[test]
    fn byte_tokens() {
        assert_eq!(spm_byte_value("<0x0A>"), 10);
        assert_eq!(spm_byte_value("<0xFF>"), 255);
        assert_eq!(decode_byte_level("ĠhelloĊ"), b" hello\n");
        assert_eq!(decode_byte_level("a中"), b"a[UNK_BYTE_0xe4b8ada\xe4\xb8\xad]".to_vec());
    }
}
