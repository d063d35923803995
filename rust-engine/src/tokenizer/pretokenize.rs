//! Pre-tokenizer splits: the text is cut into words before BPE, and merges never cross a cut.
//!
//! Both splits mirror, branch for branch, the reference's hand-written matchers
//! (`unicode_regex_split_custom_llama3` and `_gpt2` in llama.cpp's `unicode.cpp`) rather than
//! running the regexes they stand for: where a regex engine and those matchers could differ,
//! the matchers are the ground truth. Positions are code points; words are returned as
//! slices of the input.

use super::unicode::{is_letter, is_number, is_whitespace};

/// Which split a vocabulary's `tokenizer.ggml.pre` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PreSplit {
    /// Llama-3: `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
    /// ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
    Llama3,
    /// GPT-2: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)`
    Gpt2,
}

impl PreSplit {
    /// Cuts `text` into words.
    pub(crate) fn split(self, text: &str) -> Vec<&str> {
        let cuts = Cuts::new(text);
        match self {
            PreSplit::Llama3 => cuts.llama3(),
            PreSplit::Gpt2 => cuts.gpt2(),
        }
    }
}

/// The Llama-3 split of `text` (what the reference runs for `tokenizer.ggml.pre = "llama-bpe"`).
pub fn split_llama3(text: &str) -> Vec<&str> {
    PreSplit::Llama3.split(text)
}

/// The classes of one code point, or of a position past the end of the text (all false,
/// `in_range` false), as the reference's `codepoint_flags{}` for out-of-range positions.
#[derive(Clone, Copy, Default)]
struct Flags {
    in_range: bool,
    letter: bool,
    number: bool,
    space: bool,
}

impl Flags {
    fn of(c: char) -> Self {
        Flags { in_range: true, letter: is_letter(c), number: is_number(c), space: is_whitespace(c) }
    }

    /// `[^\s\p{L}\p{N}]`, inside the text.
    fn is_other(self) -> bool {
        self.in_range && !(self.space || self.letter || self.number)
    }
}

/// The text as code points, and the words cut so far.
struct Cuts<'t> {
    text: &'t str,
    /// Byte offset of every code point, plus `text.len()` at the end.
    offsets: Vec<usize>,
    chars: Vec<char>,
    flags: Vec<Flags>,
    words: Vec<&'t str>,
    /// End (in code points) of the last word emitted.
    prev_end: usize,
}

impl<'t> Cuts<'t> {
    fn new(text: &'t str) -> Self {
        let mut offsets: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
        offsets.push(text.len());
        let chars: Vec<char> = text.chars().collect();
        let flags = chars.iter().map(|&c| Flags::of(c)).collect();
        Cuts { text, offsets, chars, flags, words: Vec::new(), prev_end: 0 }
    }

    fn len(&self) -> usize {
        self.chars.len()
    }

    fn cpt(&self, pos: usize) -> Option<char> {
        self.chars.get(pos).copied()
    }

    fn flags(&self, pos: usize) -> Flags {
        self.flags.get(pos).copied().unwrap_or_default()
    }

    /// Emits the word from the previous cut to `end`; returns its length in code points.
    fn cut(&mut self, end: usize) -> usize {
        let len = end - self.prev_end;
        if len > 0 {
            self.words.push(&self.text[self.offsets[self.prev_end]..self.offsets[end]]);
        }
        self.prev_end = end;
        len
    }

    /// Length (2 or 3) of an English contraction starting with the apostrophe at `pos`.
    fn contraction(&self, pos: usize, case_insensitive: bool) -> Option<usize> {
        let n = self.len();
        if self.cpt(pos) != Some('\'') || pos + 1 >= n {
            return None;
        }
        // The reference lowercases with its full Unicode map, but only ASCII letters lower
        // to the ASCII letters compared here, so ASCII lowering is exact.
        let lower = |c: char| {
            if case_insensitive {
                c.to_ascii_lowercase()
            } else {
                c
            }
        };
        let c1 = lower(self.chars[pos + 1]);
        if matches!(c1, 's' | 't' | 'm' | 'd') {
            return Some(2);
        }
        if pos + 2 < n {
            let c2 = lower(self.chars[pos + 2]);
            if matches!((c1, c2), ('r', 'e') | ('v', 'e') | ('l', 'l')) {
                return Some(3);
            }
        }
        None
    }

    fn llama3(mut self) -> Vec<&'t str> {
        let n = self.len();
        let mut pos = 0;
        while pos < n {
            let cpt = self.chars[pos];
            let flags = self.flags[pos];

            // (?i:'s|'t|'re|'ve|'m|'ll|'d)
            if let Some(len) = self.contraction(pos, true) {
                pos += self.cut(pos + len);
                continue;
            }

            // [^\r\n\p{L}\p{N}]?\p{L}+
            if !(cpt == '\r' || cpt == '\n' || flags.number) && (flags.letter || self.flags(pos + 1).letter) {
                pos += 1;
                while self.flags(pos).letter {
                    pos += 1;
                }
                self.cut(pos);
                continue;
            }

            // \p{N}{1,3}
            if flags.number {
                let mut ini = pos;
                while self.flags(pos).number {
                    pos += 1;
                    if pos - ini >= 3 {
                        self.cut(pos);
                        ini = pos;
                    }
                }
                self.cut(pos);
                continue;
            }

            // ?[^\s\p{L}\p{N}]+[\r\n]*  (a lone space at the very end also lands here, as in
            // the reference: the out-of-range position after it has no class at all)
            let mut flags2 = if cpt == ' ' { self.flags(pos + 1) } else { flags };
            if !(flags2.space || flags2.letter || flags2.number) {
                if cpt == ' ' {
                    pos += 1;
                }
                while flags2.is_other() {
                    pos += 1;
                    flags2 = self.flags(pos);
                }
                while matches!(self.cpt(pos), Some('\r' | '\n')) {
                    pos += 1;
                }
                self.cut(pos);
                continue;
            }

            let mut num_spaces = 0;
            let mut last_end_r_or_n = None;
            while self.flags(pos + num_spaces).space {
                if matches!(self.chars[pos + num_spaces], '\r' | '\n') {
                    last_end_r_or_n = Some(pos + num_spaces + 1);
                }
                num_spaces += 1;
            }

            // \s*[\r\n]+
            if let Some(end) = last_end_r_or_n {
                pos = end;
                self.cut(pos);
                continue;
            }

            // \s+(?!\S)
            if num_spaces > 1 && pos + num_spaces < n {
                pos += num_spaces - 1;
                self.cut(pos);
                continue;
            }

            // \s+
            if num_spaces > 0 {
                pos += num_spaces;
                self.cut(pos);
                continue;
            }

            // No alternative matched (unreachable with the reference's tables, kept as there).
            pos += 1;
            self.cut(pos);
        }
        self.words
    }

    fn gpt2(mut self) -> Vec<&'t str> {
        let n = self.len();
        let mut pos = 0;
        while pos < n {
            let cpt = self.chars[pos];
            let flags = self.flags[pos];

            // 's|'t|'re|'ve|'m|'ll|'d
            if let Some(len) = self.contraction(pos, false) {
                pos += self.cut(pos + len);
                continue;
            }

            let mut flags2 = if cpt == ' ' { self.flags(pos + 1) } else { flags };
            // ?\p{L}+
            if flags2.letter {
                pos += usize::from(cpt == ' ');
                while flags2.letter {
                    pos += 1;
                    flags2 = self.flags(pos);
                }
                self.cut(pos);
                continue;
            }
            // ?\p{N}+
            if flags2.number {
                pos += usize::from(cpt == ' ');
                while flags2.number {
                    pos += 1;
                    flags2 = self.flags(pos);
                }
                self.cut(pos);
                continue;
            }
            // ?[^\s\p{L}\p{N}]+
            if flags2.is_other() {
                pos += usize::from(cpt == ' ');
                while flags2.is_other() {
                    pos += 1;
                    flags2 = self.flags(pos);
                }
                self.cut(pos);
                continue;
            }

            let mut num_spaces = 0;
            while self.flags(pos + num_spaces).space {
                num_spaces += 1;
            }
            // \s+(?!\S)
            if num_spaces > 1 && pos + num_spaces < n {
                pos += num_spaces - 1;
                self.cut(pos);
                continue;
            }
            // \s+
            if num_spaces > 0 {
                pos += num_spaces;
                self.cut(pos);
                continue;
            }
            pos += 1;
            self.cut(pos);
        }
        self.words
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l3(text: &str) -> Vec<&str> {
        split_llama3(text)
    }

    #[test]
    fn words_take_one_leading_non_letter() {
        assert_eq!(l3("Hello world"), ["Hello", " world"]);
        assert_eq!(l3("Hello, world!"), ["Hello", ",", " world", "!"]);
        assert_eq!(l3("(hello)"), ["(hello", ")"]);
        assert_eq!(l3("\thello"), ["\thello"]);
        // A newline never leads a word.
        assert_eq!(l3("a\nb"), ["a", "\n", "b"]);
        assert_eq!(l3("a\r\nb"), ["a", "\r\n", "b"]);
        assert_eq!(l3(""), Vec::<&str>::new());
    }

    #[test]
    fn contractions_any_case() {
        assert_eq!(l3("I'm"), ["I", "'m"]);
        assert_eq!(l3("don't"), ["don", "'t"]);
        assert_eq!(l3("DON'T"), ["DON", "'T"]);
        assert_eq!(
            l3("we'Re they'VE you'll IT'S he'D"),
            ["we", "'Re", " they", "'VE", " you", "'ll", " IT", "'S", " he", "'D"]
        );
        // Not a contraction: the apostrophe joins the following letters.
        assert_eq!(l3("'hello"), ["'hello"]);
        assert_eq!(l3("rock'n'roll"), ["rock", "'n", "'roll"]);
        // A contraction at the very end and a bare apostrophe.
        assert_eq!(l3("'s"), ["'s"]);
        assert_eq!(l3("'"), ["'"]);
        // Apostrophes are punctuation: a run of them is one word.
        assert_eq!(l3("''s"), ["''", "s"]);
    }

    #[test]
    fn digits_in_groups_of_three() {
        assert_eq!(l3("1"), ["1"]);
        assert_eq!(l3("1234567"), ["123", "456", "7"]);
        assert_eq!(l3("abc123def"), ["abc", "123", "def"]);
        assert_eq!(l3(" 42"), [" ", "42"]);
        assert_eq!(l3("3.14159"), ["3", ".", "141", "59"]);
        // Non-ASCII numbers count too.
        assert_eq!(l3("½²³⁴"), ["½²³", "⁴"]);
        // A digit does not lead a word.
        assert_eq!(l3("2nd"), ["2", "nd"]);
    }

    #[test]
    fn punctuation_runs_keep_one_space_and_trailing_newlines() {
        assert_eq!(l3("a ... b"), ["a", " ...", " b"]);
        assert_eq!(l3("x!!!\n\ny"), ["x", "!!!\n\n", "y"]);
        assert_eq!(l3("a  +b"), ["a", " ", " +", "b"]);
        assert_eq!(l3("{}[]()"), ["{}[]()"]);
        assert_eq!(l3("😀😀"), ["😀😀"]);
        assert_eq!(l3("a 😀"), ["a", " 😀"]);
        // A lone space at the end.
        assert_eq!(l3("a "), ["a", " "]);
        assert_eq!(l3(" "), [" "]);
    }

    #[test]
    fn whitespace_runs() {
        // \s+(?!\S): a run before a non-space leaves its last space to the next word.
        assert_eq!(l3("a   b"), ["a", "  ", " b"]);
        assert_eq!(l3("a \t b"), ["a", " \t", " b"]);
        // At the end of the text the whole run is one word.
        assert_eq!(l3("a   "), ["a", "   "]);
        // \s*[\r\n]+ ends at the last newline of the run.
        assert_eq!(l3("a \n \n  b"), ["a", " \n \n", " ", " b"]);
        assert_eq!(l3("\n\n\n"), ["\n\n\n"]);
        assert_eq!(l3("  \n"), ["  \n"]);
        // A single space before a digit is its own word.
        assert_eq!(l3("a 1"), ["a", " ", "1"]);
        // Non-ASCII spaces are spaces.
        assert_eq!(l3("a\u{3000}\u{3000}b"), ["a", "\u{3000}", "\u{3000}b"]);
        assert_eq!(l3("a\u{A0}b"), ["a", "\u{A0}b"]);
    }

    #[test]
    fn scripts_and_marks() {
        assert_eq!(l3("Grüße café"), ["Grüße", " café"]);
        // A combining mark is not a letter: it ends the word and starts a symbol run.
        assert_eq!(l3("cafe\u{301} ok"), ["cafe", "\u{301}", " ok"]);
        assert_eq!(l3("你好世界"), ["你好世界"]);
        assert_eq!(l3("日本語のテキスト。"), ["日本語のテキスト", "。"]);
        assert_eq!(l3("Привет, мир"), ["Привет", ",", " мир"]);
        // Devanagari vowel signs are marks.
        // The virama (Mn) leads the next letters; the final vowel sign (Mc) stands alone.
        assert_eq!(l3("नमस्ते"), ["नमस", "्त", "े"]);
    }

    #[test]
    fn every_split_covers_the_text() {
        for text in ["", "a", "  x  ", "\r\n\r\n a'S 123456 ..!? \t\n", "🇫🇷👨‍👩‍👧 ok"] {
            assert_eq!(l3(text).concat(), text);
            assert_eq!(PreSplit::Gpt2.split(text).concat(), text);
        }
    }

    #[test]
    fn gpt2_split() {
        let g = |t| PreSplit::Gpt2.split(t);
        assert_eq!(g("Hello world's 12345 !!"), ["Hello", " world", "'s", " 12345", " !!"]);
        assert_eq!(g("DON'T"), ["DON", "'", "T"]);
        // No newline rule: a newline run before text also gives up its last newline.
        assert_eq!(g("a   b\n\nc"), ["a", "  ", " b", "\n", "\n", "c"]);
        assert_eq!(g("a "), ["a", " "]);
    }
}
