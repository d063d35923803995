//! Integrity check of an x86 I2_S tensor: catches the files a buggy quantizer leaves behind.
//!
//! The reference's `llama_model_quantize` with `nthread > 1` quantizes I2_S in row chunks,
//! each writing its own f32 scale at the end of *its* chunk, inside the data of the next
//! (REFERENCE.md). Such a file loads and runs, but produces garbage. Its tells:
//! - **code 3**: a valid quantizer never writes it, but the bytes of an f32 scale almost
//!   always contain a `11` bit pair (e.g. `0x3f` in 1.0f32);
//! - a tensor scale (the f32 at byte `n/4`) that is zero, negative, NaN or infinite;
//! - a byte count other than `n/4 + 32`.
//!
//! The 28 padding bytes after the scale are counted but not judged: the reference leaves
//! them uninitialised (stale bytes from its reused work buffer).

use super::layout::{I2S_TAIL_BYTES, X86_GROUP_BYTES};

/// What is wrong with the tensor scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleProblem {
    /// Too few bytes to hold the scale at all.
    Missing,
    /// Exactly zero: every weight would dequantize to 0.
    Zero,
    /// Sign bit set: `max |w|` is never negative.
    Negative,
    /// NaN.
    NaN,
    /// ±infinity.
    Infinite,
}

/// The first invalid code: where it is in the bytes and which element it encodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code3Position {
    /// Byte offset within the tensor data.
    pub byte_offset: usize,
    /// Flattened element index (x86 layout) of the first code 3 in that byte.
    pub element: usize,
}

/// Findings of [`check_i2s_integrity`].
#[derive(Debug, Clone, PartialEq)]
pub struct I2sIntegrity {
    /// Elements the tensor is supposed to hold.
    pub n_elements: usize,
    /// Number of 2-bit fields equal to 3 in the `n/4` code bytes.
    pub code3_count: u64,
    /// The first of them, if any.
    pub first_code3: Option<Code3Position>,
    /// The f32 at byte `n/4`, if present.
    pub scale: Option<f32>,
    /// What is wrong with it, if anything.
    pub scale_problem: Option<ScaleProblem>,
    /// Bytes expected (`n/4 + 32`).
    pub expected_len: usize,
    /// Bytes present.
    pub actual_len: usize,
    /// Non-zero bytes among the 28 padding bytes after the scale (informational only).
    pub nonzero_padding: usize,
}

impl I2sIntegrity {
    /// Whether the byte count matches.
    pub fn tail_consistent(&self) -> bool {
        self.expected_len == self.actual_len
    }

    /// No code 3, a usable scale and the right byte count.
    pub fn is_clean(&self) -> bool {
        self.code3_count == 0 && self.scale_problem.is_none() && self.tail_consistent()
    }

    /// One sentence per problem found (empty when clean).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(p) = self.first_code3 {
            out.push(format!(
                "{} invalid code(s) 3, first at byte {} (element {}): the data was likely \
                 overwritten, e.g. by a multi-threaded I2_S quantization",
                self.code3_count, p.byte_offset, p.element
            ));
        }
        if let Some(p) = self.scale_problem {
            out.push(match (p, self.scale) {
                (ScaleProblem::Missing, _) | (_, None) => "no tensor scale: the data is too short".into(),
                (p, Some(s)) => format!("tensor scale {s:e} is unusable ({p:?})"),
            });
        }
        if !self.tail_consistent() {
            out.push(format!(
                "{} bytes where n/4 + 32 = {} were expected",
                self.actual_len, self.expected_len
            ));
        }
        out
    }
}

/// Checks the bytes of an x86 I2_S tensor of `n` elements (see the module docs).
pub fn check_i2s_integrity(data: &[u8], n: usize) -> I2sIntegrity {
    let code_len = (n / 4).min(data.len());
    let codes = &data[..code_len];

    // A 2-bit field is 3 when both its bits are set: b & (b >> 1) & 0b01010101.
    let threes = |b: u8| (b & (b >> 1) & 0x55).count_ones();
    let mut words = codes.chunks_exact(8);
    let mut code3_count: u64 = 0;
    for w in &mut words {
        let v = u64::from_le_bytes(w.try_into().expect("chunks_exact(8) yields 8 bytes"));
        code3_count += u64::from((v & (v >> 1) & 0x5555_5555_5555_5555).count_ones());
    }
    code3_count += words.remainder().iter().map(|&b| u64::from(threes(b))).sum::<u64>();

    let first_code3 = if code3_count == 0 {
        None
    } else {
        codes.iter().position(|&b| threes(b) != 0).map(|off| {
            let b = codes[off];
            let group = (0..4).find(|g| (b >> (6 - 2 * g)) & 3 == 3).unwrap_or(0);
            let chunk = off / X86_GROUP_BYTES;
            Code3Position {
                byte_offset: off,
                element: chunk * 4 * X86_GROUP_BYTES + group * X86_GROUP_BYTES + off % X86_GROUP_BYTES,
            }
        })
    };

    let scale = data.get(n / 4..n / 4 + 4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let scale_problem = match scale {
        None => Some(ScaleProblem::Missing),
        Some(s) if s.is_nan() => Some(ScaleProblem::NaN),
        Some(s) if s.is_infinite() => Some(ScaleProblem::Infinite),
        Some(0.0) => Some(ScaleProblem::Zero),
        Some(s) if s.is_sign_negative() => Some(ScaleProblem::Negative),
        Some(_) => None,
    };
    let padding = data.get(n / 4 + 4..).unwrap_or(&[]);
    let nonzero_padding = padding.iter().take(I2S_TAIL_BYTES - 4).filter(|&&b| b != 0).count();

    I2sIntegrity {
        n_elements: n,
        code3_count,
        first_code3,
        scale,
        scale_problem,
        expected_len: n / 4 + I2S_TAIL_BYTES,
        actual_len: data.len(),
        nonzero_padding,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::pack::pack_i2s_x86;

    #[test]
    fn clean_tensor_is_clean() {
        let t: Vec<i8> = (0..256).map(|i| (i % 3) as i8 - 1).collect();
        let bytes = pack_i2s_x86(&t, 0.25).unwrap();
        let r = check_i2s_integrity(&bytes, 256);
        assert!(r.is_clean(), "{:?}", r.problems());
        assert_eq!(r.scale, Some(0.25));
    }

    #[test]
    fn finds_an_embedded_scale() {
        let t = vec![0i8; 512];
        let mut bytes = pack_i2s_x86(&t, 0.5).unwrap();
        // What the multi-threaded quantizer does: a chunk's scale lands inside the data.
        bytes[40..44].copy_from_slice(&1.0f32.to_le_bytes()); // 00 00 80 3f
        let r = check_i2s_integrity(&bytes, 512);
        assert!(!r.is_clean());
        // 0x3f = 00 11 11 11: three fields equal 3; 0x80 = 10 00 00 00 and the zeros: none.
        assert_eq!(r.code3_count, 3);
        // Byte 43 is in chunk 1 (bytes 32..64), position 11; its first 3 is group 1.
        assert_eq!(r.first_code3, Some(Code3Position { byte_offset: 43, element: 128 + 32 + 11 }));
    }

    #[test]
    fn flags_bad_scales_and_lengths() {
        let t = vec![1i8; 128];
        for (s, p) in [
            (0.0f32, ScaleProblem::Zero),
            (f32::NAN, ScaleProblem::NaN),
            (f32::NEG_INFINITY, ScaleProblem::Infinite),
            (-1.0, ScaleProblem::Negative),
        ] {
            let bytes = pack_i2s_x86(&t, s).unwrap();
            assert_eq!(check_i2s_integrity(&bytes, 128).scale_problem, Some(p));
        }
        let bytes = pack_i2s_x86(&t, 1.0).unwrap();
        let r = check_i2s_integrity(&bytes[..40], 128);
        assert!(!r.tail_consistent());
        assert_eq!(r.problems().len(), 1, "{:?}", r.problems());
        let r = check_i2s_integrity(&bytes[..20], 128);
        assert_eq!(r.scale_problem, Some(ScaleProblem::Missing));
    }
}
