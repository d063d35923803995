//! The input is a list of patches over a committed fixture, so that every execution starts
//! from a complete, valid model and the fuzzer spends its time on structure rather than on
//! rediscovering the format.
//!
//! Input: `flags u8 | cut u24 | (at u24, len u8, bytes[len % 8 + 1])*`. A patch lands in the
//! header (where the structure is) unless flag bit 0 lets it land anywhere; flag bit 1
//! truncates the patched file to `cut / 2^24` of its length.
#![no_main]

use std::sync::OnceLock;

use bitnet_engine::gguf::GgufFile;
use libfuzzer_sys::fuzz_target;

static FIXTURE: &[u8] = include_bytes!("../../fixtures/tiny-256-gqa-i2_s.gguf");

/// Length of the fixture's header (where the data section starts).
fn header_len() -> usize {
    static LEN: OnceLock<usize> = OnceLock::new();
    *LEN.get_or_init(|| {
        let f = GgufFile::from_bytes(FIXTURE.to_vec(), "fixture").expect("the committed fixture is valid");
        f.data_offset() as usize
    })
}

fn u24(b: &[u8]) -> usize {
    usize::from(b[0]) | usize::from(b[1]) << 8 | usize::from(b[2]) << 16
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let flags = data[0];
    let cut = u24(&data[1..4]);
    let mut file = FIXTURE.to_vec();
    let span = if flags & 1 == 1 { file.len() } else { header_len() + 64 };
    let mut rest = &data[4..];
    while rest.len() >= 5 {
        let at = u24(rest) % span;
        let len = usize::from(rest[3] % 8) + 1;
        let bytes = &rest[4..(4 + len).min(rest.len())];
        for (i, &b) in bytes.iter().enumerate() {
            if let Some(x) = file.get_mut(at + i) {
                *x = b;
            }
        }
        rest = &rest[(4 + len).min(rest.len())..];
    }
    if flags & 2 == 2 {
        file.truncate((cut * file.len()) >> 24);
    }
    bitnet_parity_fuzz::load_everything(file);
});
