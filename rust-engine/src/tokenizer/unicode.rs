//! The code point classes and the byte-level alphabet the BPE tokenizer needs.
//!
//! The reference classifies code points with its own Unicode 15.1 tables; the pre-tokenizers
//! only ask "letter?" (`\p{L}`), "number?" (`\p{N}`) and "white space?" (`\s`). The first two
//! come from `unicode_tables.rs` (generated from the same Unicode version), the third is
//! the Unicode `White_Space` property, which has not changed since Unicode 4.1.

use super::unicode_tables::{LETTER, NUMBER};

fn in_ranges(ranges: &[(u32, u32)], c: char) -> bool {
    let cp = u32::from(c);
    // Ranges are sorted and disjoint: find the last range starting at or before `cp`.
    let idx = ranges.partition_point(|&(lo, _)| lo <= cp);
    idx > 0 && cp <= ranges[idx - 1].1
}

/// General category L*: the pre-tokenizers' `\p{L}`.
pub fn is_letter(c: char) -> bool {
    in_ranges(LETTER, c)
}

/// General category N*: the pre-tokenizers' `\p{N}`.
pub fn is_number(c: char) -> bool {
    in_ranges(NUMBER, c)
}

/// The Unicode `White_Space` property: the reference's `unicode_set_whitespace`.
pub fn is_whitespace(c: char) -> bool {
    matches!(
        c,
        '\u{09}'..='\u{0D}'
            | '\u{20}'
            | '\u{85}'
            | '\u{A0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200A}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202F}'
            | '\u{205F}'
            | '\u{3000}'
    )
}

/// Whether byte `b` stands for itself in the GPT-2 byte-level alphabet: the printable,
/// non-space characters of Latin-1 (`!`..`~`, `¡`..`¬`, `®`..`ÿ`).
const fn is_printable_byte(b: u8) -> bool {
    matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// The GPT-2 byte-level alphabet: byte `b` is written as the character `BYTE_TO_CHAR[b]`.
/// Printable Latin-1 bytes map to themselves; the other 68 bytes, in increasing order, to
/// U+0100, U+0101, … so that every token is printable text (space is `Ġ`, newline `Ċ`).
pub const BYTE_TO_CHAR: [char; 256] = byte_to_char_table();

const fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next_extra = 0u32;
    let mut b = 0usize;
    while b < 256 {
        let cp = if is_printable_byte(b as u8) {
            b as u32
        } else {
            next_extra += 1;
            255 + next_extra
        };
        table[b] = match char::from_u32(cp) {
            Some(c) => c,
            None => panic!("byte-level alphabet leaves the BMP"),
        };
        b += 1;
    }
    table
}

/// Inverse of [`BYTE_TO_CHAR`]: the byte a byte-level character stands for, if any.
pub fn char_to_byte(c: char) -> Option<u8> {
    let cp = u32::from(c);
    if cp < 256 && is_printable_byte(cp as u8) {
        return Some(cp as u8);
    }
    // U+0100 + k is the k-th non-printable byte.
    let k = cp.checked_sub(256)?;
    (0..=255u8).filter(|&b| !is_printable_byte(b)).nth(usize::try_from(k).ok()?)
}

/// Writes `bytes` in the byte-level alphabet (the reference's `unicode_byte_encoding_process`).
pub fn bytes_to_byte_level(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| BYTE_TO_CHAR[usize::from(b)]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_alphabet_is_a_bijection_with_the_known_landmarks() {
        assert_eq!(BYTE_TO_CHAR[b' ' as usize], 'Ġ');
        assert_eq!(BYTE_TO_CHAR[b'\n' as usize], 'Ċ');
        assert_eq!(BYTE_TO_CHAR[b'\t' as usize], 'ĉ');
        assert_eq!(BYTE_TO_CHAR[0], 'Ā');
        assert_eq!(BYTE_TO_CHAR[b'A' as usize], 'A');
        assert_eq!(BYTE_TO_CHAR[0xAD], 'Ń');
        assert_eq!(BYTE_TO_CHAR[0xFF], 'ÿ');
        let mut seen = std::collections::HashSet::new();
        for b in 0..=255u8 {
            let c = BYTE_TO_CHAR[usize::from(b)];
            assert!(seen.insert(c), "duplicate char for byte {b}");
            assert_eq!(char_to_byte(c), Some(b));
        }
        assert_eq!(char_to_byte(' '), None);
        assert_eq!(char_to_byte('\u{144}'), None);
        assert_eq!(char_to_byte('中'), None);
    }

    #[test]
    fn classes() {
        for c in ['a', 'Z', 'é', 'ß', 'Ж', 'λ', '中', 'ア', '한', 'ª', 'ǅ', 'ʰ'] {
            assert!(is_letter(c), "{c:?}");
        }
        for c in ['1', '٣', '½', 'Ⅻ', '²', '〇'] {
            assert!(is_number(c), "{c:?}");
        }
        // Marks, symbols, punctuation, spaces are neither.
        for c in ['\u{301}', '€', '+', '!', ' ', '😀', '\u{200D}', '_'] {
            assert!(!is_letter(c) && !is_number(c), "{c:?}");
        }
        // Unicode 16 additions are unassigned in 15.1, as in the reference.
        assert!(!is_letter('\u{1C89}'));
        assert!(is_letter('\u{2EBF0}')); // CJK Extension I, new in 15.1
        for c in [' ', '\t', '\n', '\r', '\u{0B}', '\u{85}', '\u{A0}', '\u{3000}', '\u{2028}'] {
            assert!(is_whitespace(c), "{c:?}");
        }
        for c in ['\u{200B}', '\u{1C}', 'a', '\u{FEFF}'] {
            assert!(!is_whitespace(c), "{c:?}");
        }
    }
}
