//! The input is a whole GGUF file. Seeds: `fuzz/seeds/gguf_raw/` (small valid files).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bitnet_parity_fuzz::load_everything(data.to_vec());
});
