//! Cutting special-token texts out of the input before tokenization (the reference's
//! `tokenizer_st_partition`).
//!
//! Special tokens (CONTROL, USER_DEFINED and UNKNOWN) are tried longest first; each one splits
//! every remaining text fragment at each of its occurrences, left to right. CONTROL and
//! UNKNOWN tokens are only matched when `parse_special` is set; USER_DEFINED ones always are.
//! A token with the LSTRIP (RSTRIP) attribute swallows the ASCII white space before (after) it.

use super::attr::TokenAttr;
use super::Tokenizer;

/// A piece of the input: a special token already recognised, or a byte range still to tokenize.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fragment {
    Token(u32),
    Text { start: usize, end: usize },
}

/// C `isspace` in the "C" locale.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r')
}

impl Tokenizer {
    pub(crate) fn partition(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        let bytes = text.as_bytes();
        let mut fragments = Vec::new();
        if !text.is_empty() {
            fragments.push(Fragment::Text { start: 0, end: text.len() });
        }
        for &id in &self.specials {
            let data = &self.tokens[id as usize];
            if !parse_special && data.attr.any(TokenAttr::CONTROL | TokenAttr::UNKNOWN) {
                continue;
            }
            let special = data.text.as_str();
            let mut next = Vec::with_capacity(fragments.len());
            for frag in fragments {
                let Fragment::Text { mut start, end } = frag else {
                    next.push(frag);
                    continue;
                };
                while let Some(found) = text[start..end].find(special) {
                    let at = start + found;
                    let mut left_end = at;
                    if data.attr.any(TokenAttr::LSTRIP) {
                        while left_end > start && is_c_space(bytes[left_end - 1]) {
                            left_end -= 1;
                        }
                    }
                    if left_end > start {
                        next.push(Fragment::Text { start, end: left_end });
                    }
                    next.push(Fragment::Token(id));
                    start = at + special.len();
                    if data.attr.any(TokenAttr::RSTRIP) {
                        while start < end && is_c_space(bytes[start]) {
                            start += 1;
                        }
                    }
                }
                if start < end {
                    next.push(Fragment::Text { start, end });
                }
            }
            fragments = next;
        }
        fragments
    }
}
