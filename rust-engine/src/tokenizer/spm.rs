//! SentencePiece-style tokenization (`tokenizer.ggml.model = "llama"`), as the reference's
//! `llm_tokenizer_spm_session`.
//!
//! Spaces are written `▁`; the text starts as one symbol per character; the queue holds every
//! adjacent pair whose concatenation is a token, highest score first and, for equal scores,
//! the leftmost first. At the end a symbol that is not a token is spelled in byte tokens
//! `<0xXX>` (or, failing that, the one-byte token itself).

use std::collections::BinaryHeap;

use super::Tokenizer;

#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A queued pair, ordered as the reference's max-heap: higher score first, then smaller left.
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // total_cmp: scores are finite in practice; NaN scores still order deterministically.
        self.score.total_cmp(&other.score).then_with(|| other.left.cmp(&self.left))
    }
}

impl Tokenizer {
    /// Appends the tokens of `text` (spaces already escaped as `▁`) to `out`.
    pub(crate) fn spm_text(&self, text: &str, out: &mut Vec<u32>) {
        let starts: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
        let mut symbols: Vec<Symbol> = starts
            .iter()
            .enumerate()
            .map(|(k, &start)| Symbol {
                start,
                len: starts.get(k + 1).copied().unwrap_or(text.len()) - start,
                prev: k.checked_sub(1),
                next: (k + 1 < starts.len()).then_some(k + 1),
            })
            .collect();

        let mut queue = BinaryHeap::new();
        let push_pair = |queue: &mut BinaryHeap<Bigram>,
                         symbols: &[Symbol],
                         left: Option<usize>,
                         right: Option<usize>| {
            let (Some(l), Some(r)) = (left, right) else {
                return;
            };
            let (a, b) = (symbols[l], symbols[r]);
            let joined = &text[a.start..b.start + b.len];
            if let Some(&id) = self.token_to_id.get(joined) {
                queue.push(Bigram {
                    score: self.tokens[id as usize].score,
                    left: l,
                    right: r,
                    size: joined.len(),
                });
            }
        };
        for i in 1..symbols.len() {
            push_pair(&mut queue, &symbols, Some(i - 1), Some(i));
        }

        while let Some(bigram) = queue.pop() {
            let (left, right) = (symbols[bigram.left], symbols[bigram.right]);
            if left.len == 0 || right.len == 0 || left.len + right.len != bigram.size {
                continue;
            }
            let l = bigram.left;
            symbols[l].len += right.len;
            symbols[bigram.right].len = 0;
            symbols[l].next = right.next;
            if let Some(n) = right.next {
                symbols[n].prev = Some(l);
            }
            let (prev, next) = (symbols[l].prev, symbols[l].next);
            push_pair(&mut queue, &symbols, prev, Some(l));
            push_pair(&mut queue, &symbols, Some(l), next);
        }

        // Walk the chain from the first symbol (it is never merged away).
        let mut cur = if symbols.is_empty() { None } else { Some(0) };
        while let Some(i) = cur {
            let s = symbols[i];
            let piece = &text[s.start..s.start + s.len];
            // Every merged symbol is a token; only single characters can be missing, and the
            // reference's fallback through its merge record never applies to them.
            match self.token_to_id.get(piece) {
                Some(&id) => out.push(id),
                None => {
                    for b in piece.bytes() {
                        out.extend(self.spm_byte_token(b));
                    }
                }
            }
            cur = s.next;
        }
    }

    /// The token for one byte: `<0xXX>`, else the byte as a one-character token. The reference
    /// aborts when neither exists; we fall back to the unknown token, if any.
    fn spm_byte_token(&self, b: u8) -> Option<u32> {
        let hex = format!("<0x{b:02X}>");
        if let Some(&id) = self.token_to_id.get(&hex) {
            return Some(id);
        }
        let raw = if b.is_ascii() { Some(char::from(b).to_string()) } else { None };
        raw.and_then(|r| self.token_to_id.get(&r).copied()).or(self.ids.unk)
    }
}
