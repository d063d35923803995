//! I2_S flavours and ternary kernels.
//!
//! # What is here
//!
//! | file            | holds                                                              |
//! |-----------------|--------------------------------------------------------------------|
//! | `flavor.rs`     | [`I2sFlavor`], sizes, [`detect_flavor`] (the detection rules)      |
//! | `layout.rs`     | where each 2-bit code sits, for every flavour                      |
//! | `pack.rs`       | packing helpers for writers and fixtures; the reference quantizer  |
//! | `act.rs`        | `quantize_row_i8_s` and `QuantizedActs` (reference mirror)          |
//! | `scalar.rs`     | scalar kernels (the oracle)                                        |
//! | `avx2.rs`       | AVX2 kernels (QK256 rows and columns kernels, activation quantization) |
//! | `avx512vnni.rs` | AVX-512 VNNI kernels (QK256 rows and columns kernels, `vpdpbusd`)   |
//! | `kernel.rs`     | [`Qk256Kernel`]: run-time choice, `BITNET_QK256_IMPL`, [`kernel_name`] |
//! | `matrix.rs`     | [`TernaryMatrix`]: matvec, row ranges, batched `matmul_rows`, dequantize |
//! | `integrity.rs`  | [`check_i2s_integrity`]: invalid codes, bad scale, bad length      |
//!
//! # Using it
//!
//! ```
//! use bitnet_engine::internals::quant::{QuantizedActs, TernaryMatrix};
//! use bitnet_engine::quant::{pack_i2s_x86, I2sFlavor};
//!
//! // A 2 × 128 matrix (ggml dims [128, 2]): row 0 all +1, row 1 all −1, scale 0.5.
//! let mut t = vec![1i8; 128];
//! t.extend(std::iter::repeat(-1i8).take(128));
//! let bytes = pack_i2s_x86(&t, 0.5).unwrap();
//! let w = TernaryMatrix::new("blk.0.ffn_up.weight", I2sFlavor::X86Qk256, &bytes, 2, 128, None).unwrap();
//!
//! let mut acts = QuantizedActs::new(128);
//! acts.quantize(&vec![1.0f32; 128]);
//! let mut y = [0f32; 2];
//! w.matvec(&acts, &mut y);
//! assert_eq!(y, [64.0, -64.0]);
//! ```
//!
//! # Numbers, exactly
//!
//! For x86 (and ARM) I2_S the reference computes, per weight row with codes `c ∈ {0,1,2}`,
//! tensor scale `w`, and an activation row quantized to `q` with scale `s` and `Σq`:
//! `y = ((float)Σ c·q − (float)Σq) / s · w`. The integer sum is exact in every kernel here
//! (the reference's AVX2 kernel can wrap its int16 lanes on extreme inputs; ours widens in
//! time, see `avx2.rs`, or accumulates in i32 directly, see `avx512vnni.rs`), so results depend on neither the kernel nor row splitting nor
//! batching. Activation quantization mirrors the reference including its FMA contraction
//! (see the `act.rs` docs, and `ActRounding`).
//!
//! Code 3 never comes out of a quantizer. Kernels use it as the value it stores (like the
//! reference's dot product: weight +2); dequantization maps it to 0 (like the reference's
//! `dequantize_row_i2_s`); [`check_i2s_integrity`] counts it.

pub(crate) mod act;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512vnni;
#[cfg(target_arch = "x86_64")]
mod avxvnni;
mod error;
mod flavor;
mod integrity;
mod kernel;
pub(crate) mod layout;
pub(crate) mod matrix;
mod pack;
mod scalar;
#[cfg(target_arch = "x86_64")]
mod vnni256;

pub(crate) use act::QuantizedActs;
pub use error::QuantError;
pub use flavor::{detect_flavor, detect_flavor_with, parse_override, FlavorDetection, I2sFlavor, FLAVOR_ENV};
pub use integrity::{check_i2s_integrity, Code3Position, I2sIntegrity, ScaleProblem};
pub use kernel::{kernel_name, Qk256Kernel, KERNEL_ENV};
pub(crate) use matrix::TernaryMatrix;
pub use pack::{
    pack_bitnet32_f16, pack_i2s_arm64, pack_i2s_x86, pack_split32_codes, pack_split32_scales,
    quantize_i2s_x86, SiblingScaleType,
};
