//! A ternary weight matrix borrowed from the GGUF map, with matvec, matmul and dequantize.
//!
//! Shapes follow ggml: the tensor's `dims[0]` is `cols` (the input dimension, the row
//! length) and `dims[1]` is `rows` (the output dimension). `matvec` computes
//! `out[r] = Σ_i W[r, i] · x[i]` with `x` quantized by [`QuantizedActs`].
//!
//! Float epilogues (the integer parts are exact, so these fix the result bit for bit):
//! - x86 / ARM I2_S: `y = ((float)Σc·q − (float)Σq) / s · w`, the reference's
//!   `(tmp[row] - act_sums[i]) / act_scales[i] * (*scale)` in f32, in that order.
//! - BitNet32F16 / Split32WithSibling (no reference exists): `acc = Σ_b d_b · (float)isum_b`
//!   summed in f32 over blocks in order, then `y = acc / s`, where
//!   `isum_b = Σ_{j∈b} (c_j − 1)·q_j`.

use std::ops::Range;

use half::f16;

use super::act::QuantizedActs;
use super::error::QuantError;
use super::flavor::I2sFlavor;
use super::kernel::Qk256Kernel;
use super::layout::{
    unpack_codes, ARM_GROUP_BYTES, BITNET32_F16_BLOCK_BYTES, BLOCK32_CODE_BYTES, CODE_VALUE, X86_GROUP_BYTES,
};
use super::pack::SiblingScaleType;
use super::scalar;

/// Rows processed per pass by the SIMD kernel (they share activation loads). They are taken
/// from `STREAMS` separate stretches of the row range, so the weights are read as 4 long
/// sequential streams: 4 *adjacent* rows would be 4 streams of one row each (640 bytes for
/// 2560 columns), too short for the hardware prefetcher (measured from DRAM: 4.7 GB/s for
/// adjacent rows, 11 GB/s for one row at a time, 16.5 GB/s for 4 long streams).
const STREAMS: usize = 4;
/// Rows per block in `matmul` (bounds its temporary buffer).
const MATMUL_ROW_BLOCK: usize = 256;
/// Activation rows (columns) multiplied per unpacking of a weight chunk in `matmul_rows`.
const MATMUL_COLS: usize = 4;
/// Weight rows multiplied together by the AVX-512 VNNI kernel in `matmul_rows` (a register
/// tile of `MATMUL_TILE_ROWS × MATMUL_COLS` accumulators). Measured on a 128-token prefill:
/// 2 × 8 as fast as 4 × 4, 4 × 8 and 1 × 8 slower (spills; codes extracted for one column).
const MATMUL_TILE_ROWS: usize = 4;
/// The same for the AVX-VNNI kernel, whose 16 registers hold 2 × 4 accumulators, the
/// extracted codes of two rows and four activation runs (not measured: no AVX-VNNI CPU here).
const AVXVNNI_TILE_ROWS: usize = 2;
/// Rows per block in `matmul_rows`: 32 rows of 6912 columns are 55 KB of weights (in L2).
/// (16 and 64 measured the same: the tile kernel is bound by `vpdpbusd`, not by the caches.)
const MATMUL_BLOCK_ROWS: usize = 32;

/// Where the scales of a matrix come from.
#[derive(Debug, Clone, Copy)]
enum Scales<'a> {
    /// One f32 for the whole tensor (x86 / ARM I2_S).
    Tensor(f32),
    /// An f16 inside every 10-byte block (BitNet32F16).
    InlineF16,
    /// A sibling tensor of per-block scales (Split32WithSibling).
    Sibling(&'a [u8], SiblingScaleType),
}

/// The integer dots of one SIMD QK256 kernel, in the three shapes the blocked batch product
/// uses: `R` weight rows with `W` activation rows (columns), one weight row with `W` columns,
/// one row with one column.
#[cfg(target_arch = "x86_64")]
trait TileDots<const R: usize, const W: usize> {
    fn tile(&self, rows: [&[u8]; R], qs: [&[i8]; W]) -> [[i32; W]; R];
    fn row_cols(&self, row: &[u8], qs: [&[i8]; W]) -> [i32; W];
    fn dot1(&self, row: &[u8], q: &[i8]) -> i32;
}

/// AVX-512 VNNI: tiles of `MATMUL_TILE_ROWS` rows.
#[cfg(target_arch = "x86_64")]
impl TileDots<MATMUL_TILE_ROWS, MATMUL_COLS> for super::avx512vnni::VnniToken {
    fn tile(
        &self,
        rows: [&[u8]; MATMUL_TILE_ROWS],
        qs: [&[i8]; MATMUL_COLS],
    ) -> [[i32; MATMUL_COLS]; MATMUL_TILE_ROWS] {
        super::avx512vnni::qk256_dots_tile(*self, rows, qs)
    }
    fn row_cols(&self, row: &[u8], qs: [&[i8]; MATMUL_COLS]) -> [i32; MATMUL_COLS] {
        super::avx512vnni::qk256_dots_tile(*self, [row], qs)[0]
    }
    fn dot1(&self, row: &[u8], q: &[i8]) -> i32 {
        super::avx512vnni::qk256_dots_tile(*self, [row], [q])[0][0]
    }
}

/// AVX-VNNI: tiles of [`AVXVNNI_TILE_ROWS`] rows.
#[cfg(target_arch = "x86_64")]
impl TileDots<AVXVNNI_TILE_ROWS, MATMUL_COLS> for super::avxvnni::AvxVnniToken {
    fn tile(
        &self,
        rows: [&[u8]; AVXVNNI_TILE_ROWS],
        qs: [&[i8]; MATMUL_COLS],
    ) -> [[i32; MATMUL_COLS]; AVXVNNI_TILE_ROWS] {
        super::avxvnni::qk256_dots_tile(*self, rows, qs)
    }
    fn row_cols(&self, row: &[u8], qs: [&[i8]; MATMUL_COLS]) -> [i32; MATMUL_COLS] {
        super::avxvnni::qk256_dots_tile(*self, [row], qs)[0]
    }
    fn dot1(&self, row: &[u8], q: &[i8]) -> i32 {
        super::avxvnni::qk256_dots_tile(*self, [row], [q])[0][0]
    }
}

/// AVX2: one row against the columns.
#[cfg(target_arch = "x86_64")]
impl TileDots<1, MATMUL_COLS> for super::avx2::Avx2Token {
    fn tile(&self, [row]: [&[u8]; 1], qs: [&[i8]; MATMUL_COLS]) -> [[i32; MATMUL_COLS]; 1] {
        [super::avx2::qk256_dots_cols(*self, row, qs)]
    }
    fn row_cols(&self, row: &[u8], qs: [&[i8]; MATMUL_COLS]) -> [i32; MATMUL_COLS] {
        super::avx2::qk256_dots_cols(*self, row, qs)
    }
    fn dot1(&self, row: &[u8], q: &[i8]) -> i32 {
        super::avx2::qk256_dots_cols(*self, row, [q])[0]
    }
}

/// The GEMV integer dots of one SIMD QK256 kernel: [`STREAMS`] stretches of rows in one call,
/// and one row.
#[cfg(target_arch = "x86_64")]
trait RowDots: Copy {
    fn stretches(self, stretches: [&[u8]; STREAMS], q: &[i8], emit: impl FnMut(usize, [i32; STREAMS]));
    fn dot1(self, row: &[u8], q: &[i8]) -> i32;
}

#[cfg(target_arch = "x86_64")]
impl RowDots for super::avx512vnni::VnniToken {
    fn stretches(self, stretches: [&[u8]; STREAMS], q: &[i8], emit: impl FnMut(usize, [i32; STREAMS])) {
        super::avx512vnni::qk256_dots_stretches(self, stretches, q, emit);
    }
    fn dot1(self, row: &[u8], q: &[i8]) -> i32 {
        super::avx512vnni::qk256_dots(self, [row], q)[0]
    }
}

#[cfg(target_arch = "x86_64")]
impl RowDots for super::avxvnni::AvxVnniToken {
    fn stretches(self, stretches: [&[u8]; STREAMS], q: &[i8], emit: impl FnMut(usize, [i32; STREAMS])) {
        super::avxvnni::qk256_dots_stretches(self, stretches, q, emit);
    }
    fn dot1(self, row: &[u8], q: &[i8]) -> i32 {
        super::avxvnni::qk256_dots(self, [row], q)[0]
    }
}

#[cfg(target_arch = "x86_64")]
impl RowDots for super::avx2::Avx2Token {
    fn stretches(self, stretches: [&[u8]; STREAMS], q: &[i8], emit: impl FnMut(usize, [i32; STREAMS])) {
        super::avx2::qk256_dots_stretches(self, stretches, q, emit);
    }
    fn dot1(self, row: &[u8], q: &[i8]) -> i32 {
        super::avx2::qk256_dots(self, [row], q)[0]
    }
}

/// A ternary matrix of `rows × cols`, borrowing its bytes (typically from the GGUF map).
#[derive(Debug, Clone)]
pub struct TernaryMatrix<'a> {
    name: String,
    flavor: I2sFlavor,
    codes: &'a [u8],
    rows: usize,
    cols: usize,
    scales: Scales<'a>,
    kernel: Qk256Kernel,
}

impl<'a> TernaryMatrix<'a> {
    /// Wraps `data` as a `rows × cols` matrix of `flavor`, checking sizes and reading the
    /// tensor scale. `sibling_scales` (the bytes of `<name>.scale`) is required for
    /// Split32WithSibling — f32 or f16 is told apart by its length — and ignored otherwise.
    /// Uses the kernel selected by `BITNET_QK256_IMPL` (an invalid value is an error here).
    pub fn new(
        name: &str,
        flavor: I2sFlavor,
        data: &'a [u8],
        rows: usize,
        cols: usize,
        sibling_scales: Option<&'a [u8]>,
    ) -> Result<Self, QuantError> {
        let kernel = Qk256Kernel::from_env()?;
        let dims = [cols as u64, rows as u64];
        let expected = flavor.required_bytes(&dims).ok_or_else(|| QuantError::BadShape {
            tensor: name.to_string(),
            dims: dims.to_vec(),
            reason: format!(
                "{} needs a non-zero shape whose row length is a multiple of {}",
                flavor.name(),
                flavor.row_multiple()
            ),
        })?;
        if data.len() as u64 != expected {
            return Err(QuantError::SizeMismatch {
                tensor: name.to_string(),
                flavor: flavor.name(),
                rows,
                cols,
                expected,
                actual: data.len() as u64,
            });
        }
        let n = rows * cols;
        let (codes, scales) = match flavor {
            I2sFlavor::X86Qk256 | I2sFlavor::Arm64 => {
                let (codes, tail) = data.split_at(n / 4);
                let scale = f32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
                (codes, Scales::Tensor(scale))
            }
            I2sFlavor::BitNet32F16 => (data, Scales::InlineF16),
            I2sFlavor::Split32WithSibling => {
                let sib = sibling_scales.ok_or_else(|| QuantError::SiblingScale {
                    tensor: name.to_string(),
                    reason: format!("the sibling `{name}.scale` tensor is missing"),
                })?;
                let blocks = n / 32;
                let ty = if sib.len() == blocks * 4 {
                    SiblingScaleType::F32
                } else if sib.len() == blocks * 2 {
                    SiblingScaleType::F16
                } else {
                    return Err(QuantError::SiblingScale {
                        tensor: name.to_string(),
                        reason: format!(
                            "`{name}.scale` has {} bytes; {blocks} block scales need {} (f32) \
                             or {} (f16)",
                            sib.len(),
                            blocks * 4,
                            blocks * 2
                        ),
                    });
                };
                (data, Scales::Sibling(sib, ty))
            }
        };
        Ok(TernaryMatrix { name: name.to_string(), flavor, codes, rows, cols, scales, kernel })
    }

    /// The same matrix computed with another kernel (results are identical; speed differs).
    pub fn with_kernel(mut self, kernel: Qk256Kernel) -> Self {
        self.kernel = kernel;
        self
    }

    /// Switches this matrix to another kernel (results are identical; speed differs).
    pub fn set_kernel(&mut self, kernel: Qk256Kernel) {
        self.kernel = kernel;
    }

    /// Tensor name given at construction.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of rows (output dimension, ggml `dims[1]`).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Row length (input dimension, ggml `dims[0]`).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The flavour.
    pub fn flavor(&self) -> I2sFlavor {
        self.flavor
    }

    /// The kernel used by matvec/matmul.
    pub fn kernel(&self) -> Qk256Kernel {
        self.kernel
    }

    /// The single f32 scale of an x86 / ARM I2_S tensor; `None` for block-scaled flavours.
    pub fn tensor_scale(&self) -> Option<f32> {
        match self.scales {
            Scales::Tensor(s) => Some(s),
            _ => None,
        }
    }

    /// Bytes of packed weights streamed by one full matvec (codes and scales).
    pub fn packed_bytes(&self) -> usize {
        match self.scales {
            Scales::Sibling(s, _) => self.codes.len() + s.len(),
            _ => self.codes.len(),
        }
    }

    /// Bytes of one row in `codes` (for block flavours, including inline scales).
    fn row_bytes(&self) -> usize {
        match self.flavor {
            I2sFlavor::X86Qk256 | I2sFlavor::Arm64 | I2sFlavor::Split32WithSibling => self.cols / 4,
            I2sFlavor::BitNet32F16 => self.cols / 32 * BITNET32_F16_BLOCK_BYTES,
        }
    }

    fn row(&self, r: usize) -> &'a [u8] {
        let rb = self.row_bytes();
        &self.codes[r * rb..(r + 1) * rb]
    }

    /// Scale of 32-element block `b` (flattened block index) of a block-scaled flavour.
    fn block_scale(&self, b: usize) -> f32 {
        match self.scales {
            Scales::Tensor(s) => s,
            Scales::InlineF16 => {
                let at = b * BITNET32_F16_BLOCK_BYTES + BLOCK32_CODE_BYTES;
                f16::from_le_bytes([self.codes[at], self.codes[at + 1]]).to_f32()
            }
            Scales::Sibling(s, SiblingScaleType::F32) => {
                f32::from_le_bytes([s[4 * b], s[4 * b + 1], s[4 * b + 2], s[4 * b + 3]])
            }
            Scales::Sibling(s, SiblingScaleType::F16) => {
                f16::from_le_bytes([s[2 * b], s[2 * b + 1]]).to_f32()
            }
        }
    }

    /// The 8 code bytes of block `k` of a row of a block-scaled flavour.
    fn block_codes(&self, row: &'a [u8], k: usize) -> &'a [u8] {
        let stride = match self.flavor {
            I2sFlavor::BitNet32F16 => BITNET32_F16_BLOCK_BYTES,
            _ => BLOCK32_CODE_BYTES,
        };
        &row[k * stride..k * stride + BLOCK32_CODE_BYTES]
    }

    /// `out[i] = Σ_j c_{r,j}·q_j` for `r = rows.start + i`: the raw integer sums over the
    /// stored codes (0..3), before any scale. Exact, and identical for every kernel.
    ///
    /// # Panics
    /// If `q.len() != cols`, `rows` exceeds the matrix or `out.len() != rows.len()`.
    pub fn code_dots(&self, q: &[i8], rows: Range<usize>, out: &mut [i32]) {
        assert_eq!(out.len(), rows.len(), "output length differs from the row range");
        self.for_each_code_dot(q, rows, |i, d| out[i] = d);
    }

    /// Calls `emit(i, Σ_j c_{r,j}·q_j)` once for every `r = rows.start + i` in `rows`, in
    /// an order chosen for memory streaming (not necessarily increasing).
    fn for_each_code_dot(&self, q: &[i8], rows: Range<usize>, mut emit: impl FnMut(usize, i32)) {
        assert_eq!(q.len(), self.cols, "activations have the wrong length for `{}`", self.name);
        assert!(
            rows.start <= rows.end && rows.end <= self.rows,
            "row range {rows:?} exceeds {} rows",
            self.rows
        );
        let start = rows.start;
        match self.flavor {
            I2sFlavor::X86Qk256 => {
                #[cfg(target_arch = "x86_64")]
                if let Some(t) = self.kernel.vnni_token() {
                    self.stream_rows(t, start, rows.len(), q, emit);
                    return;
                }
                #[cfg(target_arch = "x86_64")]
                if let Some(t) = self.kernel.avxvnni_token() {
                    self.stream_rows(t, start, rows.len(), q, emit);
                    return;
                }
                #[cfg(target_arch = "x86_64")]
                if let Some(t) = self.kernel.avx2_token() {
                    self.stream_rows(t, start, rows.len(), q, emit);
                    return;
                }
                for (j, r) in rows.enumerate() {
                    emit(j, scalar::grouped_dot::<X86_GROUP_BYTES>(self.row(r), q));
                }
            }
            I2sFlavor::Arm64 => {
                for (j, r) in rows.enumerate() {
                    emit(j, scalar::grouped_dot::<ARM_GROUP_BYTES>(self.row(r), q));
                }
            }
            I2sFlavor::BitNet32F16 | I2sFlavor::Split32WithSibling => {
                for (j, r) in rows.enumerate() {
                    let row = self.row(r);
                    let sum = (0..self.cols / 32)
                        .map(|k| {
                            let codes = self.block_codes(row, k);
                            scalar::grouped_dot::<BLOCK32_CODE_BYTES>(codes, &q[32 * k..32 * k + 32])
                        })
                        .fold(0i32, i32::wrapping_add);
                    emit(j, sum);
                }
            }
        }
    }

    /// Calls `emit(i, Σ c·q)` for the `len` rows from `start`: [`STREAMS`] rows per pass, one
    /// from each of as many separate stretches of the range, then the leftover rows one at a
    /// time.
    #[cfg(target_arch = "x86_64")]
    fn stream_rows(
        &self,
        kernel: impl RowDots,
        start: usize,
        len: usize,
        q: &[i8],
        mut emit: impl FnMut(usize, i32),
    ) {
        let per = len / STREAMS;
        let rb = self.row_bytes();
        let stretches: [&[u8]; STREAMS] =
            std::array::from_fn(|k| &self.codes[(start + k * per) * rb..(start + (k + 1) * per) * rb]);
        if per > 0 {
            kernel.stretches(stretches, q, |i, sums| {
                for (k, d) in sums.into_iter().enumerate() {
                    emit(k * per + i, d);
                }
            });
        }
        for j in STREAMS * per..len {
            emit(j, kernel.dot1(self.row(start + j), q));
        }
    }

    /// `out = W · x` for all rows.
    ///
    /// # Panics
    /// If `x.len() != cols` or `out.len() != rows`.
    pub fn matvec(&self, x: &QuantizedActs, out: &mut [f32]) {
        self.matvec_rows(x, 0..self.rows, out);
    }

    /// `out[i] = (W · x)[rows.start + i]`: a slice of the output, for splitting rows across
    /// threads. Allocates nothing.
    ///
    /// # Panics
    /// If `x.len() != cols`, `rows` exceeds the matrix or `out.len() != rows.len()`.
    pub fn matvec_rows(&self, x: &QuantizedActs, rows: Range<usize>, out: &mut [f32]) {
        assert_eq!(x.len(), self.cols, "activations have the wrong length for `{}`", self.name);
        assert!(rows.end <= self.rows, "row range {rows:?} exceeds {} rows", self.rows);
        assert_eq!(out.len(), rows.len(), "output length differs from the row range");
        let s = x.scale();
        match self.scales {
            Scales::Tensor(w) => {
                // The integer sums first (exact in f32 below 2²⁴, rounded like the reference's
                // `(float)sumi` above), then the float epilogue over the whole slice in a loop
                // the compiler vectorizes: the same operations, eight rows per division.
                self.for_each_code_dot(x.q(), rows, |i, d| out[i] = d as f32);
                let act_sum = x.sum() as f32;
                #[cfg(target_arch = "x86_64")]
                if let Some(t) = self.kernel.act_avx2_token() {
                    super::avx2::tensor_epilogue(t, out, act_sum, s, w);
                    return;
                }
                tensor_epilogue(out, act_sum, s, w);
            }
            Scales::InlineF16 | Scales::Sibling(..) => {
                let q = x.q();
                let blocks_per_row = self.cols / 32;
                for (y, r) in out.iter_mut().zip(rows) {
                    let row = self.row(r);
                    let mut acc = 0f32;
                    for k in 0..blocks_per_row {
                        let isum =
                            scalar::block32_ternary_dot(self.block_codes(row, k), &q[32 * k..32 * k + 32]);
                        acc += self.block_scale(r * blocks_per_row + k) * isum as f32;
                    }
                    *y = acc / s;
                }
            }
        }
    }

    /// `out[c·rows + r] = (W · xs[c])[r]`: several activation rows (a batch of tokens), each
    /// output row contiguous as in ggml. Each weight row is read once for all columns.
    /// Allocates a block buffer per call; [`matmul_rows`](Self::matmul_rows) allocates nothing.
    ///
    /// # Panics
    /// If any `xs[c].len() != cols` or `out.len() != xs.len() · rows`.
    pub fn matmul(&self, xs: &[QuantizedActs], out: &mut [f32]) {
        assert_eq!(out.len(), xs.len() * self.rows, "output length must be columns × rows");
        let n = xs.len();
        let mut block = vec![0f32; MATMUL_ROW_BLOCK * n];
        let mut start = 0;
        while start < self.rows {
            let end = (start + MATMUL_ROW_BLOCK).min(self.rows);
            let block = &mut block[..(end - start) * n];
            self.matmul_rows(xs, start..end, block);
            for (i, r) in (start..end).enumerate() {
                for c in 0..n {
                    out[c * self.rows + r] = block[i * n + c];
                }
            }
            start = end;
        }
    }

    /// `out[i·n + c] = (W · xs[c])[rows.start + i]` for `n = xs.len()` columns: rows
    /// `rows` of the product with a batch, **row-major** (all columns of a row together), so
    /// that a range of rows is one contiguous slice for splitting across threads. The codes
    /// of each weight chunk are unpacked once for every column. Allocates nothing.
    ///
    /// # Panics
    /// If any `xs[c].len() != cols`, `rows` exceeds the matrix or `out.len() != rows.len() · n`.
    pub fn matmul_rows(&self, xs: &[QuantizedActs], rows: Range<usize>, out: &mut [f32]) {
        let n = xs.len();
        assert!(rows.end <= self.rows, "row range {rows:?} exceeds {} rows", self.rows);
        assert_eq!(out.len(), rows.len() * n, "output length must be rows × columns");
        for x in xs {
            assert_eq!(x.len(), self.cols, "activations have the wrong length for `{}`", self.name);
        }
        #[cfg(target_arch = "x86_64")]
        if let (I2sFlavor::X86Qk256, Scales::Tensor(w)) = (self.flavor, self.scales) {
            if let Some(t) = self.kernel.vnni_token() {
                self.matmul_rows_blocked::<MATMUL_TILE_ROWS, MATMUL_COLS>(xs, rows, out, w, &t);
                return;
            }
            if let Some(t) = self.kernel.avxvnni_token() {
                self.matmul_rows_blocked::<AVXVNNI_TILE_ROWS, MATMUL_COLS>(xs, rows, out, w, &t);
                return;
            }
            if let Some(t) = self.kernel.avx2_token() {
                self.matmul_rows_blocked::<1, MATMUL_COLS>(xs, rows, out, w, &t);
                return;
            }
        }
        for (c, x) in xs.iter().enumerate() {
            for (i, r) in rows.clone().enumerate() {
                self.matvec_rows(x, r..r + 1, &mut out[i * n + c..i * n + c + 1]);
            }
        }
    }

    /// [`matmul_rows`](Self::matmul_rows) for x86 I2_S with a SIMD kernel's integer dots
    /// ([`TileDots`]) and the tensor scale `w`.
    ///
    /// Blocks of rows, and within a block one group of columns at a time: the group's
    /// activations (`W` × cols bytes) stay in L1 across the block's rows, whose weights stay
    /// in L2 across the groups. While a block is computed, the next block's weights are
    /// prefetched into L2, a share per group: without it the first group of every block
    /// waits on DRAM (measured: a 128-token prefill of the 30-layer 2B-shaped model, one
    /// thread, 2.46 s → 2.23 s). The integer sums are stored first and the float epilogue
    /// applied to the block afterwards, in a loop the compiler vectorizes.
    #[cfg(target_arch = "x86_64")]
    fn matmul_rows_blocked<const R: usize, const W: usize>(
        &self,
        xs: &[QuantizedActs],
        rows: Range<usize>,
        out: &mut [f32],
        w: f32,
        dots: &impl TileDots<R, W>,
    ) {
        let n = xs.len();
        let rb = self.row_bytes();
        let groups = n.div_ceil(W);
        let mut start = rows.start;
        while start < rows.end {
            let end = (start + MATMUL_BLOCK_ROWS).min(rows.end);
            let block = &mut out[(start - rows.start) * n..(end - rows.start) * n];
            // The next block's weights, fetched into L2 a part per group of columns while
            // this block is computed: the first group would otherwise wait on DRAM.
            let next = &self.codes[end * rb..(end + MATMUL_BLOCK_ROWS).min(rows.end) * rb];
            let per_group = next.len().div_ceil(groups).next_multiple_of(64).max(64);
            let mut c = 0;
            while c < n {
                if let Some(ahead) = next.chunks(per_group).nth(c / W) {
                    super::avx2::prefetch_l2(ahead);
                }
                let width = (n - c).min(W);
                if width == W {
                    let qs: [&[i8]; W] = std::array::from_fn(|k| xs[c + k].q());
                    let mut r = start;
                    for os in block.chunks_exact_mut(R * n) {
                        let sums = dots.tile(std::array::from_fn(|i| self.row(r + i)), qs);
                        for (o, s) in os.chunks_exact_mut(n).zip(sums) {
                            for (o, d) in o[c..c + W].iter_mut().zip(s) {
                                *o = d as f32;
                            }
                        }
                        r += R;
                    }
                    let tail = block.chunks_exact_mut(R * n).into_remainder();
                    for o in tail.chunks_exact_mut(n) {
                        for (o, d) in o[c..c + W].iter_mut().zip(dots.row_cols(self.row(r), qs)) {
                            *o = d as f32;
                        }
                        r += 1;
                    }
                } else {
                    for (r, o) in (start..end).zip(block.chunks_exact_mut(n)) {
                        for (o, x) in o[c..c + width].iter_mut().zip(&xs[c..c + width]) {
                            *o = dots.dot1(self.row(r), x.q()) as f32;
                        }
                    }
                }
                let mut sums = [0f32; W];
                let mut scales = [1f32; W];
                for (k, x) in xs[c..c + width].iter().enumerate() {
                    sums[k] = x.sum() as f32;
                    scales[k] = x.scale();
                }
                for o in block.chunks_exact_mut(n) {
                    for ((y, &sum), &s) in o[c..c + width].iter_mut().zip(&sums).zip(&scales) {
                        *y = (*y - sum) / s * w;
                    }
                }
                c += width;
            }
            start = end;
        }
    }

    /// Row `r` as f32: `scale · value(code)` with the reference's table `{-1, 0, +1, 0}`
    /// (so it matches `dequantize_row_i2_s` bit for bit on x86 I2_S).
    ///
    /// # Panics
    /// If `r >= rows` or `out.len() != cols`.
    pub(crate) fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        assert!(r < self.rows, "row {r} out of range ({} rows)", self.rows);
        assert_eq!(out.len(), self.cols, "output length must equal the row length");
        let row = self.row(r);
        let mut codes = [0u8; 128];
        match self.scales {
            Scales::Tensor(w) => {
                let g = if self.flavor == I2sFlavor::Arm64 { ARM_GROUP_BYTES } else { X86_GROUP_BYTES };
                let elems = 4 * g;
                for (bytes, dst) in row.chunks_exact(g).zip(out.chunks_exact_mut(elems)) {
                    unpack_codes(bytes, g, &mut codes[..elems]);
                    for (y, &c) in dst.iter_mut().zip(&codes[..elems]) {
                        *y = w * CODE_VALUE[c as usize];
                    }
                }
            }
            Scales::InlineF16 | Scales::Sibling(..) => {
                let blocks_per_row = self.cols / 32;
                for (k, dst) in out.chunks_exact_mut(32).enumerate() {
                    let d = self.block_scale(r * blocks_per_row + k);
                    unpack_codes(self.block_codes(row, k), BLOCK32_CODE_BYTES, &mut codes[..32]);
                    for (y, &c) in dst.iter_mut().zip(&codes[..32]) {
                        *y = d * CODE_VALUE[c as usize];
                    }
                }
            }
        }
    }

    /// The whole matrix as f32, row-major (`rows · cols` values).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        for (r, dst) in out.chunks_exact_mut(self.cols).enumerate() {
            self.dequantize_row(r, dst);
        }
        out
    }
}

/// The float epilogue of a tensor-scaled product, `y = (y − Σq) / s · w` for every output, in
/// the reference's order. Inlined into the caller, so the AVX2 wrapper
/// (`avx2::tensor_epilogue`) compiles this same loop eight lanes wide.
#[inline(always)]
pub(super) fn tensor_epilogue(out: &mut [f32], act_sum: f32, s: f32, w: f32) {
    for y in out.iter_mut() {
        *y = (*y - act_sum) / s * w;
    }
}
