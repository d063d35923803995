//! ggml tensor types as they appear in GGUF files, with their exact byte sizes.
//!
//! Sizes follow `ggml_nbytes` of the bitnet.cpp fork (3rdparty/llama.cpp/ggml/src/ggml.c),
//! including its special cases: I2_S and TL1 occupy `n/4 + 32` bytes (2-bit codes plus a
//! 32-byte tail holding the tensor scale), TL2 has its own formula.

/// A ggml tensor type. Discriminants are the on-disk type ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
#[repr(u32)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    IQ2_XXS = 16,
    IQ2_XS = 17,
    IQ3_XXS = 18,
    IQ1_S = 19,
    IQ4_NL = 20,
    IQ3_S = 21,
    IQ2_S = 22,
    IQ4_XS = 23,
    I8 = 24,
    I16 = 25,
    I32 = 26,
    I64 = 27,
    F64 = 28,
    IQ1_M = 29,
    BF16 = 30,
    Q4_0_4_4 = 31,
    Q4_0_4_8 = 32,
    Q4_0_8_8 = 33,
    TQ1_0 = 34,
    TQ2_0 = 35,
    I2_S = 36,
    I8_S = 37,
    TL1 = 38,
    TL2 = 39,
}

/// How a type's byte size is computed.
enum Layout {
    /// `blck` elements stored in `bytes` bytes; rows must be a whole number of blocks.
    Blocks { blck: u64, bytes: u64 },
    /// bitnet's 2-bit types: `n/4 + 32` (ggml's special case).
    TwoBitWithTail,
    /// bitnet's TL2 LUT layout, with its own formula.
    Tl2,
}

const QK_K: u64 = 256;

impl GgmlType {
    /// Every known type, in id order.
    pub const ALL: [GgmlType; 38] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
        GgmlType::IQ2_XXS,
        GgmlType::IQ2_XS,
        GgmlType::IQ3_XXS,
        GgmlType::IQ1_S,
        GgmlType::IQ4_NL,
        GgmlType::IQ3_S,
        GgmlType::IQ2_S,
        GgmlType::IQ4_XS,
        GgmlType::I8,
        GgmlType::I16,
        GgmlType::I32,
        GgmlType::I64,
        GgmlType::F64,
        GgmlType::IQ1_M,
        GgmlType::BF16,
        GgmlType::Q4_0_4_4,
        GgmlType::Q4_0_4_8,
        GgmlType::Q4_0_8_8,
        GgmlType::TQ1_0,
        GgmlType::TQ2_0,
        GgmlType::I2_S,
        GgmlType::I8_S,
        GgmlType::TL1,
        GgmlType::TL2,
    ];

    /// The type with on-disk id `id`; `None` for unknown and removed ids (4 and 5).
    pub fn from_id(id: u32) -> Option<GgmlType> {
        GgmlType::ALL.iter().copied().find(|t| t.id() == id)
    }

    pub fn id(self) -> u32 {
        self as u32
    }

    /// The name ggml prints (`ggml_type_name`).
    pub fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            F32 => "f32",
            F16 => "f16",
            Q4_0 => "q4_0",
            Q4_1 => "q4_1",
            Q5_0 => "q5_0",
            Q5_1 => "q5_1",
            Q8_0 => "q8_0",
            Q8_1 => "q8_1",
            Q2_K => "q2_K",
            Q3_K => "q3_K",
            Q4_K => "q4_K",
            Q5_K => "q5_K",
            Q6_K => "q6_K",
            Q8_K => "q8_K",
            IQ2_XXS => "iq2_xxs",
            IQ2_XS => "iq2_xs",
            IQ3_XXS => "iq3_xxs",
            IQ1_S => "iq1_s",
            IQ4_NL => "iq4_nl",
            IQ3_S => "iq3_s",
            IQ2_S => "iq2_s",
            IQ4_XS => "iq4_xs",
            I8 => "i8",
            I16 => "i16",
            I32 => "i32",
            I64 => "i64",
            F64 => "f64",
            IQ1_M => "iq1_m",
            BF16 => "bf16",
            Q4_0_4_4 => "q4_0_4x4",
            Q4_0_4_8 => "q4_0_4x8",
            Q4_0_8_8 => "q4_0_8x8",
            TQ1_0 => "tq1_0",
            TQ2_0 => "tq2_0",
            I2_S => "i2_s",
            I8_S => "i8_s",
            TL1 => "tl1",
            TL2 => "tl2",
        }
    }

    /// Block sizes from ggml-common.h (`sizeof(block_*)`), one line per type.
    fn layout(self) -> Layout {
        use GgmlType::*;
        let b = |blck, bytes| Layout::Blocks { blck, bytes };
        match self {
            F32 | I32 => b(1, 4),
            F16 | BF16 | I16 => b(1, 2),
            I8 | I8_S => b(1, 1),
            I64 | F64 => b(1, 8),
            Q4_0 | Q4_0_4_4 | Q4_0_4_8 | Q4_0_8_8 => b(32, 18), // f16 d + 16 B
            Q4_1 => b(32, 20),                                  // f16 d, m + 16 B
            Q5_0 => b(32, 22),                                  // f16 d + 4 B qh + 16 B
            Q5_1 => b(32, 24),                                  // f16 d, m + 4 B + 16 B
            Q8_0 => b(32, 34),                                  // f16 d + 32 B
            Q8_1 => b(32, 36),                                  // f16 d, s + 32 B
            IQ4_NL => b(32, 18),
            Q2_K => b(QK_K, 84),
            Q3_K => b(QK_K, 110),
            Q4_K => b(QK_K, 144),
            Q5_K => b(QK_K, 176),
            Q6_K => b(QK_K, 210),
            Q8_K => b(QK_K, 292), // f32 d + 256 B + 16 × i16 sums
            IQ2_XXS => b(QK_K, 66),
            IQ2_XS => b(QK_K, 74),
            IQ3_XXS => b(QK_K, 98),
            IQ1_S => b(QK_K, 50),
            IQ3_S => b(QK_K, 110),
            IQ2_S => b(QK_K, 82),
            IQ4_XS => b(QK_K, 136),
            IQ1_M => b(QK_K, 56),
            TQ1_0 => b(QK_K, 54), // 48 B base-3 + 4 B + f16 d
            TQ2_0 => b(QK_K, 66), // 64 B of 2-bit codes + f16 d
            I2_S | TL1 => Layout::TwoBitWithTail,
            TL2 => Layout::Tl2,
        }
    }

    /// Elements per block (1 for plain types and for bitnet's 2-bit types).
    pub fn block_size(self) -> u64 {
        match self.layout() {
            Layout::Blocks { blck, .. } => blck,
            Layout::TwoBitWithTail | Layout::Tl2 => 1,
        }
    }

    /// Exact on-disk byte size of a tensor of this type with ggml dims `dims`
    /// (`dims[0]` is the row length), or `Err` with the reason the shape is impossible.
    /// All arithmetic is checked: absurd shapes give an error, never an overflow.
    pub fn tensor_bytes(self, dims: &[u64]) -> Result<u64, ShapeError> {
        let n = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).ok_or(ShapeError::Overflow)?;
        let row_len = dims.first().copied().unwrap_or(1);
        match self.layout() {
            Layout::Blocks { blck, bytes } => {
                if row_len % blck != 0 {
                    return Err(ShapeError::RowNotBlockMultiple { row_len, block: blck });
                }
                (n / blck).checked_mul(bytes).ok_or(ShapeError::Overflow)
            }
            Layout::TwoBitWithTail => (n / 4).checked_add(32).ok_or(ShapeError::Overflow),
            Layout::Tl2 => {
                let ne0 = row_len;
                let ne1 = dims.get(1).copied().unwrap_or(1);
                if ne0 < 256 {
                    return Err(ShapeError::Tl2RowTooShort { row_len });
                }
                // ggml: (ne0 - 256) * ne1 / 3 * 5 / 8 + 256 * ne1 / 2 * 4 / 8, padded to 32, + 32.
                let a = (ne0 - 256).checked_mul(ne1).ok_or(ShapeError::Overflow)? / 3;
                let a = a.checked_mul(5).ok_or(ShapeError::Overflow)? / 8;
                let b = 256u64.checked_mul(ne1).ok_or(ShapeError::Overflow)? / 2 * 4 / 8;
                let sum = a.checked_add(b).ok_or(ShapeError::Overflow)?;
                let padded = sum.checked_next_multiple_of(32).ok_or(ShapeError::Overflow)?;
                padded.checked_add(32).ok_or(ShapeError::Overflow)
            }
        }
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a shape cannot be stored in a given type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    #[error("the element count or byte size overflows 64 bits")]
    Overflow,
    #[error("row length {row_len} is not a multiple of the block size {block}")]
    RowNotBlockMultiple { row_len: u64, block: u64 },
    #[error("TL2 needs rows of at least 256 elements, got {row_len}")]
    Tl2RowTooShort { row_len: u64 },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_removed_ids_are_unknown() {
        for t in GgmlType::ALL {
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
        }
        assert_eq!(GgmlType::from_id(4), None);
        assert_eq!(GgmlType::from_id(5), None);
        assert_eq!(GgmlType::from_id(40), None);
    }

    #[test]
    fn sizes_match_ggml() {
        assert_eq!(GgmlType::F32.tensor_bytes(&[2560, 2560]), Ok(2560 * 2560 * 4));
        assert_eq!(GgmlType::F16.tensor_bytes(&[2560, 128256]), Ok(2560 * 128256 * 2));
        assert_eq!(GgmlType::BF16.tensor_bytes(&[7]), Ok(14));
        assert_eq!(GgmlType::Q8_0.tensor_bytes(&[64, 3]), Ok(6 * 34));
        assert_eq!(GgmlType::TQ1_0.tensor_bytes(&[512, 2]), Ok(4 * 54));
        assert_eq!(GgmlType::TQ2_0.tensor_bytes(&[256]), Ok(66));
        // I2_S: n/4 + 32 (2560 × 6912 weights of the 2B model's ffn_up).
        assert_eq!(GgmlType::I2_S.tensor_bytes(&[2560, 6912]), Ok(2560 * 6912 / 4 + 32));
        assert_eq!(GgmlType::I2_S.tensor_bytes(&[128, 1]), Ok(64));
    }

    #[test]
    fn impossible_shapes_are_errors() {
        assert_eq!(
            GgmlType::Q8_0.tensor_bytes(&[33, 1]),
            Err(ShapeError::RowNotBlockMultiple { row_len: 33, block: 32 })
        );
        assert_eq!(GgmlType::F32.tensor_bytes(&[u64::MAX, 2]), Err(ShapeError::Overflow));
        assert_eq!(GgmlType::F32.tensor_bytes(&[1 << 62, 1]), Err(ShapeError::Overflow));
        assert!(GgmlType::TL2.tensor_bytes(&[128, 4]).is_err());
    }
}
