//! Where each 2-bit code lives, for every flavour. The one place that knows the bit layouts.
//!
//! All flavours use the same code values: **0 → −1, 1 → 0, 2 → +1**; 3 never comes out of a
//! quantizer (see [`check_i2s_integrity`](super::check_i2s_integrity)).
//!
//! All flavours also share one interleaving idea: a group of `G` bytes holds `4·G` elements;
//! byte `b` holds elements `b`, `b+G`, `b+2G`, `b+3G` in bits 7–6, 5–4, 3–2, 1–0. Only `G`
//! differs:
//!
//! | flavour                      | G (bytes) | elements per group | source                     |
//! |------------------------------|-----------|--------------------|----------------------------|
//! | x86 I2_S (QK256)             | 32        | 128                | bitnet.cpp `quantize_i2_s`, x86 |
//! | ARM I2_S                     | 16        | 64                 | bitnet.cpp `quantize_i2_s`, `__ARM_NEON` |
//! | BitNet32F16, Split32Sibling  | 8         | 32                 | our definition (no reference format) |

/// Bytes per code group of the x86 I2_S layout (128 elements).
pub const X86_GROUP_BYTES: usize = 32;
/// Bytes per code group of the ARM I2_S layout (64 elements).
pub(crate) const ARM_GROUP_BYTES: usize = 16;
/// Bytes of codes per 32-element block of the BitNet32F16 / Split32WithSibling layouts.
pub(crate) const BLOCK32_CODE_BYTES: usize = 8;
/// Bytes per BitNet32F16 block: 8 bytes of codes, then the block's f16 scale (little-endian).
pub(crate) const BITNET32_F16_BLOCK_BYTES: usize = 10;
/// Bytes after the codes of an x86/ARM I2_S tensor: one f32 scale plus 28 bytes of padding.
pub(crate) const I2S_TAIL_BYTES: usize = 32;

/// The chunks (128 codes each) of the x86 I2_S rows a SIMD rows kernel multiplies with the
/// activations `q`.
///
/// # Panics
/// If `q.len()` is not a multiple of 128, or a row's byte length times 4 differs from it.
pub(crate) fn qk256_row_chunks(rows: &[&[u8]], q: &[i8]) -> usize {
    assert!(q.len().is_multiple_of(4 * X86_GROUP_BYTES), "QK256 row length must be a multiple of 128");
    for r in rows {
        assert_eq!(r.len() * 4, q.len(), "QK256 weight row and activations differ in length");
    }
    q.len() / (4 * X86_GROUP_BYTES)
}

/// The chunks of the x86 I2_S rows a SIMD tile kernel multiplies with every column of `qs`.
///
/// # Panics
/// If the rows differ in length, or a column's length is not a multiple of 128 or differs from
/// a row's byte length times 4.
pub(crate) fn qk256_tile_chunks(rows: &[&[u8]], qs: &[&[i8]]) -> usize {
    let n = rows.first().map_or(0, |r| r.len() * 4);
    for r in rows {
        assert_eq!(r.len() * 4, n, "QK256 weight rows differ in length");
    }
    for q in qs {
        assert!(q.len().is_multiple_of(4 * X86_GROUP_BYTES), "QK256 row length must be a multiple of 128");
        assert_eq!(q.len(), n, "QK256 weight row and activations differ in length");
    }
    n / (4 * X86_GROUP_BYTES)
}

/// The rows in each of the equal stretches of whole x86 I2_S rows a SIMD rows kernel is given
/// with the activations `q` (a row holds `q.len() / 4` bytes).
///
/// # Panics
/// If `q` is empty or not a multiple of 128 long, or the stretches differ in length or do not
/// hold whole rows.
pub(crate) fn qk256_stretch_rows(stretches: &[&[u8]], q: &[i8]) -> usize {
    assert!(
        !q.is_empty() && q.len().is_multiple_of(4 * X86_GROUP_BYTES),
        "QK256 row length must be a positive multiple of 128"
    );
    let row_bytes = q.len() / 4;
    let len = stretches.first().map_or(0, |s| s.len());
    for s in stretches {
        assert_eq!(s.len(), len, "QK256 row stretches differ in length");
    }
    assert!(len.is_multiple_of(row_bytes), "a QK256 row stretch does not hold whole rows");
    len / row_bytes
}

/// The value a code stands for when dequantizing. Code 3 maps to 0, exactly as the
/// reference's `dequantize_row_i2_s` table `{-1, 0, +1, 0}` does.
pub(crate) const CODE_VALUE: [f32; 4] = [-1.0, 0.0, 1.0, 0.0];

/// Byte index (within a group of `group_bytes` bytes) and bit shift of element `j` of that group.
#[inline]
pub(crate) fn position_in_group(j: usize, group_bytes: usize) -> (usize, u32) {
    (j % group_bytes, 6 - 2 * (j / group_bytes) as u32)
}

/// Byte index and bit shift of element `i` of a flattened tensor packed in groups of
/// `group_bytes` bytes (`4·group_bytes` elements each).
#[inline]
pub(crate) fn position(i: usize, group_bytes: usize) -> (usize, u32) {
    let elems = 4 * group_bytes;
    let (b, shift) = position_in_group(i % elems, group_bytes);
    ((i / elems) * group_bytes + b, shift)
}

/// The 2-bit code of element `i` (see `position`).
#[inline]
pub fn code_at(codes: &[u8], i: usize, group_bytes: usize) -> u8 {
    let (b, shift) = position(i, group_bytes);
    (codes[b] >> shift) & 3
}

/// Decodes `out.len()` codes (a multiple of `4·group_bytes`) from `codes`, in element order.
pub(crate) fn unpack_codes(codes: &[u8], group_bytes: usize, out: &mut [u8]) {
    let elems = 4 * group_bytes;
    debug_assert_eq!(out.len() % elems, 0);
    for (group, dst) in codes.chunks_exact(group_bytes).zip(out.chunks_exact_mut(elems)) {
        for (k, part) in dst.chunks_exact_mut(group_bytes).enumerate() {
            let shift = 6 - 2 * k as u32;
            for (d, &byte) in part.iter_mut().zip(group) {
                *d = (byte >> shift) & 3;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x86_positions_match_reference_description() {
        // Element j of a chunk sits in byte j % 32 at shift 6 - 2*(j/32) (REFERENCE.md).
        assert_eq!(position(0, X86_GROUP_BYTES), (0, 6));
        assert_eq!(position(31, X86_GROUP_BYTES), (31, 6));
        assert_eq!(position(32, X86_GROUP_BYTES), (0, 4));
        assert_eq!(position(127, X86_GROUP_BYTES), (31, 0));
        assert_eq!(position(128, X86_GROUP_BYTES), (32, 6));
        assert_eq!(position(128 + 97, X86_GROUP_BYTES), (33, 0));
    }

    #[test]
    fn arm_positions_use_16_byte_groups() {
        assert_eq!(position(16, ARM_GROUP_BYTES), (0, 4));
        assert_eq!(position(63, ARM_GROUP_BYTES), (15, 0));
        assert_eq!(position(64, ARM_GROUP_BYTES), (16, 6));
    }

    #[test]
    fn unpack_agrees_with_code_at() {
        let codes: Vec<u8> = (0..64u32).map(|i| (i * 37 + 11) as u8).collect();
        for g in [X86_GROUP_BYTES, ARM_GROUP_BYTES, BLOCK32_CODE_BYTES] {
            let mut out = vec![0u8; codes.len() * 4];
            unpack_codes(&codes, g, &mut out);
            for (i, &c) in out.iter().enumerate() {
                assert_eq!(c, code_at(&codes, i, g), "group {g} element {i}");
            }
        }
    }
}
