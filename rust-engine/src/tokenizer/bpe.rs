//! Byte-level BPE on one pre-tokenized word, as the reference's `llm_tokenizer_bpe_session`.
//!
//! The word (already in the byte-level alphabet) starts as one symbol per character. A queue
//! holds every adjacent pair that has a merge rule, lowest rank first and, for equal ranks, the
//! leftmost first. Popping a pair whose sides have changed since it was queued skips it;
//! otherwise the right symbol joins the left one and the new neighbour pairs are queued. The
//! merged text need not be a token: at the end a symbol that is not in the vocabulary becomes
//! the tokens of its single ASCII bytes, and its other bytes are dropped, as in the reference.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::Tokenizer;

/// One symbol: a byte range of the word, linked to its neighbours.
#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

impl Tokenizer {
    /// Appends the tokens of one byte-level word to `out`.
    pub(crate) fn bpe_word(&self, word: &str, out: &mut Vec<u32>) {
        let mut symbols: Vec<Symbol> = Vec::new();
        if self.ignore_merges && self.token_to_id.contains_key(word) {
            symbols.push(Symbol { start: 0, len: word.len(), prev: None, next: None });
        } else {
            let starts: Vec<usize> = word.char_indices().map(|(i, _)| i).collect();
            for (k, &start) in starts.iter().enumerate() {
                let end = starts.get(k + 1).copied().unwrap_or(word.len());
                symbols.push(Symbol {
                    start,
                    len: end - start,
                    prev: k.checked_sub(1),
                    next: (k + 1 < starts.len()).then_some(k + 1),
                });
            }
        }

        // (rank, left, right, combined length): the heap pops the lowest rank, then leftmost.
        let mut queue: BinaryHeap<Reverse<(u32, usize, usize, usize)>> = BinaryHeap::new();
        let mut key = String::new();
        let mut push_pair =
            |queue: &mut BinaryHeap<_>, symbols: &[Symbol], left: Option<usize>, right: Option<usize>| {
                let (Some(l), Some(r)) = (left, right) else {
                    return;
                };
                let (a, b) = (symbols[l], symbols[r]);
                key.clear();
                key.push_str(&word[a.start..a.start + a.len]);
                key.push(' ');
                key.push_str(&word[b.start..b.start + b.len]);
                if let Some(&rank) = self.merges.get(key.as_str()) {
                    queue.push(Reverse((rank, l, r, a.len + b.len)));
                }
            };
        for i in 1..symbols.len() {
            push_pair(&mut queue, &symbols, Some(i - 1), Some(i));
        }

        while let Some(Reverse((_, l, r, size))) = queue.pop() {
            let (left, right) = (symbols[l], symbols[r]);
            // Outdated: one side was merged away, or the right side grew. (The left side only
            // grows by absorbing the right one, so equal sizes mean equal texts.)
            if left.len == 0 || right.len == 0 || left.len + right.len != size {
                continue;
            }
            symbols[l].len += right.len;
            symbols[r].len = 0;
            symbols[l].next = right.next;
            if let Some(n) = right.next {
                symbols[n].prev = Some(l);
            }
            let prev = symbols[l].prev;
            let next = symbols[l].next;
            push_pair(&mut queue, &symbols, prev, Some(l));
            push_pair(&mut queue, &symbols, Some(l), next);
        }

        for s in symbols.iter().filter(|s| s.len > 0) {
            let text = &word[s.start..s.start + s.len];
            match self.token_to_id.get(text) {
                Some(&id) => out.push(id),
                None => {
                    // The reference looks each byte up as a one-byte string; only ASCII bytes
                    // can be (valid UTF-8) token texts.
                    for b in text.bytes().filter(u8::is_ascii) {
                        let mut buf = [0u8; 4];
                        if let Some(&id) = self.token_to_id.get(char::from(b).encode_utf8(&mut buf) as &str) {
                            out.push(id);
                        }
                    }
                }
            }
        }
    }
}
