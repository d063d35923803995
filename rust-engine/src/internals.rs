//! **Not a stable API:** kernels and buffers exposed for the benches and kernel tests
//! (`rust-engine/tests`, `harness/src/bench`, `harness/tests`, the fixture generator).
//!
//! An engine user needs only the other modules: [`crate::gguf`] (reader and writer),
//! [`crate::model`] (load, eval, traces), [`crate::profile`], [`crate::tokenizer`], the kernel
//! choices ([`crate::quant::Qk256Kernel`], [`crate::ops::FloatKernel`]) and the I2_S flavour
//! tools of [`crate::quant`]. What is re-exported here may change or go without notice.

/// The scalar oracles of the float operations, and the head-type blocks and inputs of
/// [`FloatKernel`](crate::ops::FloatKernel)'s products.
pub mod ops {
    pub use crate::ops::blocks::{dequantize_row, fp32_to_bf16_row, BlockQ8K, BlockQ8_0, QK_K};
    pub use crate::ops::dot::{
        dot_f16, dot_f16_bytes, dot_f16_bytes_f32, dot_f16_f32, dot_f32, f16_to_f32, f32_to_f16,
        round_through_f16,
    };
    pub use crate::ops::kernel::BlockInput;
    pub use crate::ops::softmax::{silu, softmax_scaled};
}

/// Ternary matrices, int8 activations and the code layout, below [`crate::model`].
pub mod quant {
    pub use crate::quant::act::{quantize_row_i8_s, quantize_row_i8_s_with, ActRounding, QuantizedActs};
    pub use crate::quant::layout::{code_at, X86_GROUP_BYTES};
    pub use crate::quant::matrix::TernaryMatrix;
}

/// The thread pool and the row splits the model's products use.
pub mod parallel {
    pub use crate::parallel::{Pool, Rows, Split};
}

/// The tokenizer's byte-level and Unicode helpers, for the fixture vocabulary and tests.
pub mod tokenizer {
    pub use crate::tokenizer::pretokenize::split_llama3;
    pub use crate::tokenizer::unicode::{
        bytes_to_byte_level, char_to_byte, is_letter, is_number, is_whitespace, BYTE_TO_CHAR,
    };
}
