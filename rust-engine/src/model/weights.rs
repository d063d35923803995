//! Tensors of the model, borrowed from the map where they are large (I2_S and F16
//! matrices) and copied to f32 where they are small vectors (norms, biases).

use std::ops::Range;

use crate::gguf::{GgmlType, GgufFile, TensorInfo};
use crate::ops::blocks::dequantize_row;
use crate::ops::{f16_to_f32, BlockInput, BlockType};
use crate::quant::{detect_flavor, FlavorDetection, Qk256Kernel, QuantizedActs, TernaryMatrix};

use super::config::Config;
use super::error::ModelError;
use super::numerics::Numerics;

/// A weight matrix of `rows × cols` (ggml dims `[cols, rows]`): output = W · input.
pub(super) enum Linear<'a> {
    /// I2_S (any flavour): int8 activations, exact integer dots.
    Ternary(TernaryMatrix<'a>),
    /// F16 bytes from the map: the input is rounded to f16 (the reference's `vec_dot_type`).
    F16 { data: &'a [u8], rows: usize, cols: usize },
    /// F32 weights, decoded once at load.
    F32 { data: Vec<f32>, rows: usize, cols: usize },
    /// Q8_0, Q4_K, Q6_K or BF16 bytes from the map (the embedding / lm_head only, see
    /// [`load_head`]): the input is converted to the type's `vec_dot_type` (Q8_0, Q8_K, BF16)
    /// first, as the reference does, whatever `exact_rounding` says.
    Blocks { ty: BlockType, data: &'a [u8], rows: usize, cols: usize },
}

/// The input of a matrix product for `n` tokens, prepared once and shared by every thread
/// computing a part of the rows: int8 activations for ternary weights, the f16 values for
/// F16 weights under the reference rounding.
pub(super) struct LinearInput {
    pub acts: Vec<QuantizedActs>,
    pub f16: Vec<u16>,
    /// One converted activation per token for [`Linear::Blocks`] (room for one token at load;
    /// more are added the first time a batch needs them).
    pub blocks: Vec<BlockInput>,
}

impl LinearInput {
    /// Room for `cap` tokens of up to `max_cols` values.
    pub(super) fn new(cap: usize, max_cols: usize, kernel: Qk256Kernel) -> LinearInput {
        LinearInput {
            acts: (0..cap).map(|_| QuantizedActs::with_kernel(max_cols, kernel)).collect(),
            f16: Vec::with_capacity(cap * max_cols),
            blocks: vec![BlockInput::with_capacity(max_cols)],
        }
    }
}

/// The input of a product as [`Linear::forward_rows`] reads it: `n` tokens of `cols` values
/// (`x`, one token after the other) and what [`Linear::prepare`] made of them.
#[derive(Clone, Copy)]
pub(super) struct ProductInput<'x> {
    pub x: &'x [f32],
    pub n: usize,
    pub prepared: &'x LinearInput,
}

impl<'a> Linear<'a> {
    pub(super) fn rows(&self) -> usize {
        match self {
            Linear::Ternary(m) => m.rows(),
            Linear::F16 { rows, .. } | Linear::F32 { rows, .. } | Linear::Blocks { rows, .. } => *rows,
        }
    }

    pub(super) fn cols(&self) -> usize {
        match self {
            Linear::Ternary(m) => m.cols(),
            Linear::F16 { cols, .. } | Linear::F32 { cols, .. } | Linear::Blocks { cols, .. } => *cols,
        }
    }

    /// The ggml type of the weights.
    pub(super) fn ggml_type(&self) -> GgmlType {
        match self {
            Linear::Ternary(_) => GgmlType::I2_S,
            Linear::F16 { .. } => GgmlType::F16,
            Linear::F32 { .. } => GgmlType::F32,
            Linear::Blocks { ty, .. } => ty.ggml(),
        }
    }

    /// Prepares `x` (`n` tokens of `cols` values, one after the other) for
    /// [`forward_rows`](Self::forward_rows): quantizes each token to int8 for ternary weights
    /// (ternary weights only ever see int8 activations in the reference), rounds it through
    /// f16 for F16 weights when `nx.exact_rounding` (the reference's `vec_dot_type` for F16).
    pub(super) fn prepare(&self, x: &[f32], n: usize, input: &mut LinearInput, nx: Numerics) {
        debug_assert_eq!(x.len(), n * self.cols());
        let Numerics { kernel, exact_rounding } = nx;
        match self {
            Linear::Ternary(_) => {
                for (acts, xt) in input.acts[..n].iter_mut().zip(x.chunks_exact(self.cols())) {
                    acts.quantize(xt);
                }
            }
            Linear::F16 { .. } if exact_rounding => {
                input.f16.resize(x.len(), 0);
                kernel.f32_to_f16_row(x, &mut input.f16);
            }
            Linear::F16 { .. } | Linear::F32 { .. } => {}
            Linear::Blocks { ty, cols, .. } => {
                if input.blocks.len() < n {
                    input.blocks.resize_with(n, || BlockInput::with_capacity(*cols));
                }
                for (b, xt) in input.blocks.iter_mut().zip(x.chunks_exact(*cols)) {
                    kernel.prepare_block_input(*ty, xt, b);
                }
            }
        }
    }

    /// Rows `rows` of `W · x_t` for the `n` tokens of `input.x`, **row-major**:
    /// `out[i·n + t] = (W · x_t)[rows.start + i]` (for one token, simply the rows).
    /// `input.prepared` must have been prepared from `input.x` by [`prepare`](Self::prepare)
    /// with the same `nx`. Allocates nothing.
    pub(super) fn forward_rows(
        &self,
        input: ProductInput<'_>,
        rows: Range<usize>,
        out: &mut [f32],
        nx: Numerics,
    ) {
        let ProductInput { x, n, prepared: input } = input;
        let Numerics { kernel, exact_rounding } = nx;
        debug_assert_eq!(out.len(), rows.len() * n);
        debug_assert!(rows.end <= self.rows());
        match self {
            Linear::Ternary(m) if n == 1 => m.matvec_rows(&input.acts[0], rows, out),
            Linear::Ternary(m) => m.matmul_rows(&input.acts[..n], rows, out),
            Linear::F16 { data, cols, .. } => {
                let rb = cols * 2;
                let row = |r: usize| &data[r * rb..(r + 1) * rb];
                // The reference rounds the input to f16 (`dot_f16`); without that rounding the
                // f32 input is used as it is (`dot_f16_f32`, the same lanes).
                let dots = |rs: [&[u8]; 2], t: usize| {
                    if exact_rounding {
                        kernel.dot_f16_bytes_rows_f16(rs, &input.f16[t * cols..(t + 1) * cols])
                    } else {
                        kernel.dot_f16_bytes_rows(rs, &x[t * cols..(t + 1) * cols])
                    }
                };
                let dot = |r: usize, t: usize| {
                    if exact_rounding {
                        kernel.dot_f16_bytes_rows_f16([row(r)], &input.f16[t * cols..(t + 1) * cols])[0]
                    } else {
                        kernel.dot_f16_bytes_rows([row(r)], &x[t * cols..(t + 1) * cols])[0]
                    }
                };
                if n == 1 {
                    // Two rows per pass, from the two halves of the range: two long sequential
                    // streams (the lm_head streams 657 MB per token). Measured from DRAM here:
                    // ~29 GB/s, against ~25 GB/s for one row after another and ~12 GB/s for
                    // adjacent rows side by side.
                    let half = rows.len() / 2;
                    let (lo, hi) = out.split_at_mut(half);
                    for (i, (a, b)) in lo.iter_mut().zip(hi.iter_mut()).enumerate() {
                        let r = rows.start + i;
                        [*a, *b] = dots([row(r), row(r + half)], 0);
                    }
                    if rows.len() % 2 == 1 {
                        out[rows.len() - 1] = dot(rows.end - 1, 0);
                    }
                } else {
                    for (o, r) in out.chunks_exact_mut(n).zip(rows) {
                        for (t, ot) in o.iter_mut().enumerate() {
                            *ot = dot(r, t);
                        }
                    }
                }
            }
            Linear::F32 { data, cols, .. } => {
                for (o, r) in out.chunks_exact_mut(n).zip(rows) {
                    for (ot, xt) in o.iter_mut().zip(x.chunks_exact(*cols)) {
                        *ot = kernel.dot_f32(&data[r * cols..(r + 1) * cols], xt);
                    }
                }
            }
            Linear::Blocks { ty, data, cols, .. } => {
                let rb = ty.row_bytes(*cols);
                let row = |r: usize| &data[r * rb..(r + 1) * rb];
                if n == 1 {
                    // Two streams from the two halves of the range, as for F16.
                    let half = rows.len() / 2;
                    let (lo, hi) = out.split_at_mut(half);
                    for (i, (a, b)) in lo.iter_mut().zip(hi.iter_mut()).enumerate() {
                        let r = rows.start + i;
                        [*a, *b] = kernel.dot_block_rows(*ty, [row(r), row(r + half)], &input.blocks[0]);
                    }
                    if rows.len() % 2 == 1 {
                        out[rows.len() - 1] =
                            kernel.dot_block_rows(*ty, [row(rows.end - 1)], &input.blocks[0])[0];
                    }
                } else {
                    for (o, r) in out.chunks_exact_mut(n).zip(rows) {
                        for (ot, b) in o.iter_mut().zip(&input.blocks[..n]) {
                            *ot = kernel.dot_block_rows(*ty, [row(r)], b)[0];
                        }
                    }
                }
            }
        }
    }

    /// Switches a ternary matrix to another QK256 kernel (no effect on other kinds).
    pub(super) fn set_kernel(&mut self, kernel: Qk256Kernel) {
        if let Linear::Ternary(m) = self {
            m.set_kernel(kernel);
        }
    }

    /// Row `r` as f32 (the embedding lookup, `ggml_get_rows`).
    pub(super) fn row(&self, r: usize, out: &mut [f32]) {
        match self {
            Linear::Ternary(m) => m.dequantize_row(r, out),
            Linear::F16 { data, cols, .. } => {
                let bytes = &data[r * cols * 2..(r + 1) * cols * 2];
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
                }
            }
            Linear::F32 { data, cols, .. } => out.copy_from_slice(&data[r * cols..(r + 1) * cols]),
            Linear::Blocks { ty, data, cols, .. } => {
                let rb = ty.row_bytes(*cols);
                dequantize_row(*ty, &data[r * rb..(r + 1) * rb], out);
            }
        }
    }
}

/// The types the engine reads `token_embd.weight` (the embedding and lm_head) in; a file
/// with any other is refused at load ([`ModelError::UnsupportedHeadType`]).
pub const HEAD_TYPES: [GgmlType; 7] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q6_K,
    GgmlType::Q4_K,
    GgmlType::I2_S,
];

/// Loads the embedding matrix, which every bitnet graph also uses as the lm_head
/// (`token_embd.weight`, ggml dims `[cols, rows]`): the types of [`load_linear`] and the head
/// types of [`BlockType`] (Q8_0, Q4_K, Q6_K, BF16), read as the reference reads them (the
/// embedding row through the type's `to_float`, the product through its `vec_dot`). Any other
/// type is refused with an error naming the tensor and the type: nothing is guessed.
pub(super) fn load_head<'a>(
    file: &'a GgufFile,
    name: &str,
    cols: usize,
    rows: usize,
    flavors: &mut Vec<(String, FlavorDetection)>,
) -> Result<Linear<'a>, ModelError> {
    let t = require(file, name)?;
    match (t.ggml_type, BlockType::from_ggml(t.ggml_type)) {
        (_, Some(ty)) => {
            check_shape(t, &[cols as u64, rows as u64])?;
            let data = file.tensor_data(t);
            // The reader sized the tensor with ggml's block sizes; a row that is not whole
            // blocks cannot get here, but is refused rather than misread.
            if !cols.is_multiple_of(ty.block_elems()) || data.len() != ty.row_bytes(cols) * rows {
                return Err(ModelError::UnsupportedHeadType {
                    tensor: name.to_string(),
                    ggml_type: format!("{} with rows of {cols} values", ty.ggml().name()),
                });
            }
            Ok(Linear::Blocks { ty, data, rows, cols })
        }
        (GgmlType::I2_S | GgmlType::F16 | GgmlType::F32, None) => {
            load_linear(file, name, cols, rows, flavors)
        }
        (other, None) => Err(ModelError::UnsupportedHeadType {
            tensor: name.to_string(),
            ggml_type: other.name().to_string(),
        }),
    }
}

/// Loads a weight matrix named `name` that must have ggml dims `[cols, rows]`.
/// I2_S flavours are detected (and reported through `flavors`).
pub(super) fn load_linear<'a>(
    file: &'a GgufFile,
    name: &str,
    cols: usize,
    rows: usize,
    flavors: &mut Vec<(String, FlavorDetection)>,
) -> Result<Linear<'a>, ModelError> {
    let t = require(file, name)?;
    check_shape(t, &[cols as u64, rows as u64])?;
    let data = file.tensor_data(t);
    match t.ggml_type {
        GgmlType::I2_S => {
            let sibling = file.tensor(&format!("{name}.scale"));
            let detection = detect_flavor(name, &t.dims, data, sibling.is_some())?;
            let m = TernaryMatrix::new(
                name,
                detection.flavor,
                data,
                rows,
                cols,
                sibling.map(|s| file.tensor_data(s)),
            )?;
            flavors.push((name.to_string(), detection));
            Ok(Linear::Ternary(m))
        }
        GgmlType::F16 => Ok(Linear::F16 { data, rows, cols }),
        GgmlType::F32 => Ok(Linear::F32 { data: f32s(data), rows, cols }),
        other => {
            Err(ModelError::UnsupportedType { tensor: name.to_string(), ggml_type: other.name().to_string() })
        }
    }
}

/// Loads a vector of `len` values (F32 or F16) as f32.
pub(super) fn load_vector(file: &GgufFile, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
    let t = require(file, name)?;
    check_shape(t, &[len as u64])?;
    decode_small(file, t)
}

/// An optional vector: absent is `None`, present with the wrong shape is an error.
pub(super) fn load_optional_vector(
    file: &GgufFile,
    name: &str,
    len: usize,
) -> Result<Option<Vec<f32>>, ModelError> {
    match file.tensor(name) {
        None => Ok(None),
        Some(_) => load_vector(file, name, len).map(Some),
    }
}

fn decode_small(file: &GgufFile, t: &TensorInfo) -> Result<Vec<f32>, ModelError> {
    let data = file.tensor_data(t);
    match t.ggml_type {
        GgmlType::F32 => Ok(f32s(data)),
        GgmlType::F16 => {
            Ok(data.chunks_exact(2).map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]]))).collect())
        }
        other => {
            Err(ModelError::UnsupportedType { tensor: t.name.clone(), ggml_type: other.name().to_string() })
        }
    }
}

fn f32s(data: &[u8]) -> Vec<f32> {
    data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

fn require<'f>(file: &'f GgufFile, name: &str) -> Result<&'f TensorInfo, ModelError> {
    file.tensor(name).ok_or_else(|| ModelError::MissingTensor(name.to_string()))
}

/// ggml treats trailing dimensions of 1 as absent: `[n]` and `[n, 1]` are the same shape.
fn check_shape(t: &TensorInfo, expected: &[u64]) -> Result<(), ModelError> {
    let trim = |d: &[u64]| {
        let mut v = d.to_vec();
        while v.len() > 1 && v.last() == Some(&1) {
            v.pop();
        }
        v
    };
    if trim(&t.dims) != trim(expected) {
        return Err(ModelError::ShapeMismatch {
            tensor: t.name.clone(),
            expected: expected.to_vec(),
            found: t.dims.clone(),
        });
    }
    Ok(())
}

impl<'a> Layer<'a> {
    /// Every matrix of the block.
    pub(super) fn linears_mut(&mut self) -> [&mut Linear<'a>; 7] {
        [
            &mut self.wq,
            &mut self.wk,
            &mut self.wv,
            &mut self.wo,
            &mut self.ffn_gate,
            &mut self.ffn_up,
            &mut self.ffn_down,
        ]
    }
}

/// Every weight of one transformer block.
pub(super) struct Layer<'a> {
    pub attn_norm: Vec<f32>,
    pub wq: Linear<'a>,
    pub wk: Linear<'a>,
    pub wv: Linear<'a>,
    pub wo: Linear<'a>,
    pub bq: Option<Vec<f32>>,
    pub bk: Option<Vec<f32>>,
    pub bv: Option<Vec<f32>>,
    pub bo: Option<Vec<f32>>,
    pub attn_sub_norm: Vec<f32>,
    pub ffn_norm: Vec<f32>,
    pub ffn_gate: Linear<'a>,
    pub ffn_up: Linear<'a>,
    pub ffn_down: Linear<'a>,
    pub ffn_sub_norm: Vec<f32>,
    /// Optional per-tensor output scales (`blk.N.attn_q.scale`, ...), applied right after
    /// their matmul: q, k, v, o, gate, up, down.
    pub scales: [Option<f32>; 7],
}

/// Index of each matrix in [`Layer::scales`].
pub(super) mod scale_idx {
    pub(crate) const Q: usize = 0;
    pub(crate) const K: usize = 1;
    pub(crate) const V: usize = 2;
    pub(crate) const O: usize = 3;
    pub(crate) const GATE: usize = 4;
    pub(crate) const UP: usize = 5;
    pub(crate) const DOWN: usize = 6;
}

/// A tensor the architecture's loader does not read: an error when the file has it.
fn refuse_if_present(file: &GgufFile, name: &str, c: &Config) -> Result<(), ModelError> {
    match file.tensor(name) {
        Some(_) => Err(ModelError::NotInArchitecture { tensor: name.to_string(), arch: c.arch }),
        None => Ok(()),
    }
}

pub(super) fn load_layer<'a>(
    file: &'a GgufFile,
    c: &Config,
    l: usize,
    flavors: &mut Vec<(String, FlavorDetection)>,
) -> Result<Layer<'a>, ModelError> {
    let w = |s: &str| format!("blk.{l}.{s}.weight");
    let b = |s: &str| format!("blk.{l}.{s}.bias");
    let (e, f, kv) = (c.n_embd, c.n_ff, c.n_embd_kv());
    // Optional tensors exist only in the architectures whose loader reads them (see `arch.rs`).
    let scale = |s: &str| -> Result<Option<f32>, ModelError> {
        let name = format!("blk.{l}.{s}.scale");
        if !c.arch.has_scales() {
            return refuse_if_present(file, &name, c).map(|()| None);
        }
        Ok(load_optional_vector(file, &name, 1)?.map(|v| v[0]))
    };
    let bias = |s: &str, len: usize| -> Result<Option<Vec<f32>>, ModelError> {
        if !c.arch.has_attn_biases() {
            return refuse_if_present(file, &b(s), c).map(|()| None);
        }
        load_optional_vector(file, &b(s), len)
    };
    Ok(Layer {
        attn_norm: load_vector(file, &w("attn_norm"), e)?,
        wq: load_linear(file, &w("attn_q"), e, e, flavors)?,
        wk: load_linear(file, &w("attn_k"), e, kv, flavors)?,
        wv: load_linear(file, &w("attn_v"), e, kv, flavors)?,
        wo: load_linear(file, &w("attn_output"), e, e, flavors)?,
        bq: bias("attn_q", e)?,
        bk: bias("attn_k", kv)?,
        bv: bias("attn_v", kv)?,
        bo: bias("attn_output", e)?,
        attn_sub_norm: load_vector(file, &w("attn_sub_norm"), e)?,
        ffn_norm: load_vector(file, &w("ffn_norm"), e)?,
        ffn_gate: load_linear(file, &w("ffn_gate"), e, f, flavors)?,
        ffn_up: load_linear(file, &w("ffn_up"), e, f, flavors)?,
        ffn_down: load_linear(file, &w("ffn_down"), f, e, flavors)?,
        ffn_sub_norm: load_vector(file, &w("ffn_sub_norm"), f)?,
        scales: [
            scale("attn_q")?,
            scale("attn_k")?,
            scale("attn_v")?,
            scale("attn_output")?,
            scale("ffn_gate")?,
            scale("ffn_up")?,
            scale("ffn_down")?,
        ],
    })
}
