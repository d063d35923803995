//! Packing ternary values into each flavour's bytes (for the GGUF writer, fixtures and tests),
//! and the reference's own I2_S quantizer.

use half::f16;

use super::error::QuantError;
use super::layout::{
    position, ARM_GROUP_BYTES, BITNET32_F16_BLOCK_BYTES, BLOCK32_CODE_BYTES, I2S_TAIL_BYTES, X86_GROUP_BYTES,
};

/// How the per-block scales of a Split32WithSibling tensor are stored in its `<name>.scale`
/// sibling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SiblingScaleType {
    /// Little-endian f32, 4 bytes per 32-element block.
    F32,
    /// Little-endian IEEE half, 2 bytes per 32-element block.
    F16,
}

impl SiblingScaleType {
    /// Bytes per block scale.
    pub fn size(self) -> usize {
        match self {
            SiblingScaleType::F32 => 4,
            SiblingScaleType::F16 => 2,
        }
    }
}

fn check_len(what: &'static str, len: usize, multiple: usize) -> Result<(), QuantError> {
    if len == 0 || !len.is_multiple_of(multiple) {
        return Err(QuantError::BadLength { what, len, multiple });
    }
    Ok(())
}

/// Packs ternary values (each −1, 0 or +1) as codes 0/1/2 into groups of `group_bytes`.
fn pack_codes(what: &'static str, ternary: &[i8], group_bytes: usize) -> Result<Vec<u8>, QuantError> {
    check_len(what, ternary.len(), 4 * group_bytes)?;
    let mut out = vec![0u8; ternary.len() / 4];
    for (i, &t) in ternary.iter().enumerate() {
        if !(-1..=1).contains(&t) {
            return Err(QuantError::NotTernary { what, index: i, value: t });
        }
        let (b, shift) = position(i, group_bytes);
        out[b] |= ((t + 1) as u8) << shift;
    }
    Ok(out)
}

/// Appends the I2_S tail: the f32 scale, then 28 zero bytes (the reference leaves those
/// bytes uninitialised; zero is our choice for files we write).
fn push_i2s_tail(mut codes: Vec<u8>, scale: f32) -> Vec<u8> {
    codes.extend_from_slice(&scale.to_le_bytes());
    codes.resize(codes.len() + I2S_TAIL_BYTES - 4, 0);
    codes
}

/// Packs a flattened row-major ternary tensor in the bitnet.cpp **x86** I2_S layout:
/// `n/4` code bytes (128-element chunks of 32 bytes), the f32 `scale`, 28 zero bytes.
/// `n` must be a positive multiple of 128.
pub fn pack_i2s_x86(ternary: &[i8], scale: f32) -> Result<Vec<u8>, QuantError> {
    let codes = pack_codes("pack_i2s_x86", ternary, X86_GROUP_BYTES)?;
    Ok(push_i2s_tail(codes, scale))
}

/// Packs in the bitnet.cpp **ARM** I2_S layout (64-element chunks of 16 bytes), same tail.
/// `n` must be a positive multiple of 64.
pub fn pack_i2s_arm64(ternary: &[i8], scale: f32) -> Result<Vec<u8>, QuantError> {
    let codes = pack_codes("pack_i2s_arm64", ternary, ARM_GROUP_BYTES)?;
    Ok(push_i2s_tail(codes, scale))
}

/// The reference's single-threaded `quantize_i2_s` (x86 build): scale = max |w| (in double,
/// stored as f32); code 1 where |w| < 1e-6, else 2 for w > 0 and 0 for w < 0. Returns the
/// x86 I2_S bytes (`n/4 + 32`). `n` must be a positive multiple of 128.
pub fn quantize_i2s_x86(weights: &[f32]) -> Result<Vec<u8>, QuantError> {
    check_len("quantize_i2s_x86", weights.len(), 4 * X86_GROUP_BYTES)?;
    // The reference's `fmax` ignores a NaN operand; f64::max does the same.
    let max = weights.iter().fold(0.0f64, |m, &w| m.max(f64::from(w).abs()));
    let ternary: Vec<i8> = weights
        .iter()
        .map(|&w| {
            let w = f64::from(w);
            if w.abs() < 1e-6 {
                0
            } else if w * max > 0.0 {
                1
            } else {
                // Includes NaN weights, as in the reference (`NaN > 0` is false → code 0).
                -1
            }
        })
        .collect();
    pack_i2s_x86(&ternary, max as f32)
}

/// Packs BitNet32F16: per 32-element block, 8 code bytes then the block scale as a
/// little-endian f16 (10 bytes a block). `scales` has one entry per block, rounded to f16.
pub fn pack_bitnet32_f16(ternary: &[i8], scales: &[f32]) -> Result<Vec<u8>, QuantError> {
    const WHAT: &str = "pack_bitnet32_f16";
    let codes = pack_codes(WHAT, ternary, BLOCK32_CODE_BYTES)?;
    let blocks = ternary.len() / 32;
    if scales.len() != blocks {
        return Err(QuantError::ScaleCount { what: WHAT, expected: blocks, actual: scales.len() });
    }
    let mut out = Vec::with_capacity(blocks * BITNET32_F16_BLOCK_BYTES);
    for (block, &d) in codes.chunks_exact(BLOCK32_CODE_BYTES).zip(scales) {
        out.extend_from_slice(block);
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    }
    Ok(out)
}

/// Packs the codes of a Split32WithSibling tensor: 8 bytes per 32-element block, no scales.
pub fn pack_split32_codes(ternary: &[i8]) -> Result<Vec<u8>, QuantError> {
    pack_codes("pack_split32_codes", ternary, BLOCK32_CODE_BYTES)
}

/// Encodes the per-block scales of a Split32WithSibling tensor for its `<name>.scale` sibling.
pub fn pack_split32_scales(scales: &[f32], ty: SiblingScaleType) -> Vec<u8> {
    let mut out = Vec::with_capacity(scales.len() * ty.size());
    for &d in scales {
        match ty {
            SiblingScaleType::F32 => out.extend_from_slice(&d.to_le_bytes()),
            SiblingScaleType::F16 => out.extend_from_slice(&f16::from_f32(d).to_le_bytes()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x86_pack_places_codes_as_the_reference_does() {
        let mut t = vec![0i8; 128];
        t[0] = 1; // byte 0, bits 7-6 = 2
        t[32] = -1; // byte 0, bits 5-4 = 0
        t[127] = 1; // byte 31, bits 1-0 = 2
        let bytes = pack_i2s_x86(&t, 0.5).unwrap();
        assert_eq!(bytes.len(), 128 / 4 + 32);
        // byte 0: e0=2 (10), e32=0 (00), e64=1 (01), e96=1 (01)
        assert_eq!(bytes[0], 0b10_00_01_01);
        assert_eq!(bytes[31], 0b01_01_01_10);
        assert_eq!(&bytes[32..36], &0.5f32.to_le_bytes());
        assert!(bytes[36..].iter().all(|&b| b == 0));
    }

    #[test]
    fn pack_rejects_bad_input() {
        assert!(matches!(pack_i2s_x86(&[0; 100], 1.0), Err(QuantError::BadLength { multiple: 128, .. })));
        let mut t = vec![0i8; 128];
        t[5] = 2;
        assert!(matches!(pack_i2s_x86(&t, 1.0), Err(QuantError::NotTernary { index: 5, value: 2, .. })));
        assert!(matches!(
            pack_bitnet32_f16(&[0; 64], &[1.0]),
            Err(QuantError::ScaleCount { expected: 2, actual: 1, .. })
        ));
    }

    #[test]
    fn reference_quantizer_thresholds() {
        let mut w = vec![0.0f32; 128];
        w[0] = 0.75;
        w[1] = -0.25;
        w[2] = 9e-7; // below 1e-6: zero
        w[3] = -2.0;
        let bytes = quantize_i2s_x86(&w).unwrap();
        let scale = f32::from_le_bytes(bytes[32..36].try_into().unwrap());
        assert_eq!(scale, 2.0);
        let code = |i: usize| super::super::layout::code_at(&bytes, i, X86_GROUP_BYTES);
        assert_eq!([code(0), code(1), code(2), code(3), code(4)], [2, 0, 1, 0, 1]);
    }
}
