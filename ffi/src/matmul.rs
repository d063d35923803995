//! The reference's own matrix product, `ggml_mul_mat`, on caller-given data: a tiny ggml
//! graph of one weight tensor, one F32 activation tensor and `repeats` identical
//! `ggml_mul_mat` nodes, computed by `ggml_graph_compute` — the path llama.cpp takes for every
//! linear layer. Two weight types:
//! - I2_S ([`Reference::i2s_matmul`], on a copy): int8 activation quantization by
//!   `quantize_row_i8_s`, then the MAD kernels;
//! - F16 ([`Reference::f16_matmul`], read in place from the caller's bytes, e.g. a model's
//!   mapped `token_embd`): the input converted to f16, then `ggml_vec_dot_f16` — the lm_head.
//!
//! It exists for micro-benchmarks and kernel checks: the same bytes that the Rust engine
//! reads, multiplied by the reference. Repeating the product inside one graph
//! is how "the matrix already in cache" is measured, and it amortises the start of ggml's
//! worker threads (done once per graph, as in llama.cpp's decode) over the products.

use std::ffi::c_int;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::library::{take_last_error, Api, Reference};
use crate::sys;

/// Row length multiple of x86 I2_S (one 32-byte chunk holds 128 weights).
pub const I2S_COL_MULTIPLE: usize = 128;
/// The reference's gemv rounds each thread's row range up to a multiple of 4 rows: fewer
/// rows would let it read and write past the matrix.
pub const I2S_ROW_MULTIPLE: usize = 4;
/// Most `ggml_mul_mat` nodes in one graph (ggml's default graph holds 2048 nodes).
pub const MAX_REPEATS: usize = 1024;

/// A byte buffer whose usable part starts on a 64-byte boundary (as ggml's own allocations
/// do), so the reference's loads see the alignment they get in llama.cpp.
struct Aligned {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    fn zeroed(len: usize) -> Aligned {
        let buf = vec![0u8; len + 64];
        let start = buf.as_ptr().align_offset(64);
        Aligned { buf, start, len }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    /// Pointer for ggml; the Vec is never resized, so it stays valid as long as `self`.
    fn ptr(&mut self) -> *mut u8 {
        self.bytes_mut().as_mut_ptr()
    }
}

/// A prepared `W · X` with W `rows × cols` (ggml dims `[cols, rows]`) and X f32 (`n_vectors`
/// rows of `cols`), computed by the reference on `threads` threads. `'w` is the life of
/// weights read in place (F16); an I2_S product owns a copy (`'static`).
pub struct Matmul<'w> {
    api: Arc<Api>,
    ctx: NonNull<sys::ggml_context>,
    graph: NonNull<sys::ggml_cgraph>,
    plan: sys::ggml_cplan,
    // Buffers ggml points into: never resized after construction.
    _weights: Aligned,
    borrowed: PhantomData<&'w [u8]>,
    input: Aligned,
    output: Aligned,
    work: Aligned,
    rows: usize,
    cols: usize,
    n_vectors: usize,
    repeats: usize,
}

/// The reference's I2_S product on its own copy of the weights.
pub type I2sMatmul = Matmul<'static>;

// SAFETY: the ggml context, graph and buffers are owned exclusively by this value, and
// borrowed weights are only read (`&'w [u8]` is Send); computing takes `&mut self`, so no two
// threads touch them at once.
unsafe impl Send for Matmul<'_> {}

impl Drop for Matmul<'_> {
    fn drop(&mut self) {
        // SAFETY: ctx came from ggml_init and is freed once, here; the graph lives inside it.
        unsafe { self.api.raw.ggml_free(self.ctx.as_ptr()) }
    }
}

impl std::fmt::Debug for Matmul<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Matmul")
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("n_vectors", &self.n_vectors)
            .field("repeats", &self.repeats)
            .field("threads", &self.plan.n_threads)
            .finish()
    }
}

/// Checks the arguments of an I2_S product; returns the weights' full size (`rows·cols/4 + 32`).
fn check_i2s(
    len: usize,
    rows: usize,
    cols: usize,
    n_vectors: usize,
    repeats: usize,
    threads: usize,
) -> Result<usize> {
    let bad = |m: String| Err(Error::InvalidArgument(format!("I2_S matmul {rows}×{cols}: {m}")));
    if rows == 0 || !rows.is_multiple_of(I2S_ROW_MULTIPLE) {
        return bad(format!("rows must be a positive multiple of {I2S_ROW_MULTIPLE}"));
    }
    if cols == 0 || !cols.is_multiple_of(I2S_COL_MULTIPLE) {
        return bad(format!("cols must be a positive multiple of {I2S_COL_MULTIPLE}"));
    }
    if n_vectors == 0 || !(1..=MAX_REPEATS).contains(&repeats) || !(1..=512).contains(&threads) {
        return bad(format!(
            "need n_vectors ≥ 1 (got {n_vectors}), 1 ≤ repeats ≤ {MAX_REPEATS} (got {repeats}), \
             1 ≤ threads ≤ 512 (got {threads})"
        ));
    }
    let packed = rows * cols / 4;
    let full = packed + 32;
    if len != full && len != packed + 4 {
        return bad(format!(
            "{len} bytes given; I2_S needs {full} ({packed} packed + scale + padding) or {}",
            packed + 4
        ));
    }
    Ok(full)
}

impl Reference {
    /// Prepares the reference's I2_S product on a copy of `i2s` — x86 I2_S bytes exactly as a
    /// GGUF file stores them: `rows·cols/4` packed bytes, the f32 tensor scale, padding to
    /// `rows·cols/4 + 32` (the padding may be omitted). Every [`I2sMatmul::compute`] runs
    /// `repeats` identical products of the weights with the current input.
    pub fn i2s_matmul(
        &self,
        i2s: &[u8],
        rows: usize,
        cols: usize,
        n_vectors: usize,
        repeats: usize,
        threads: usize,
    ) -> Result<I2sMatmul> {
        let full = check_i2s(i2s.len(), rows, cols, n_vectors, repeats, threads)?;
        let mut weights = Aligned::zeroed(full);
        weights.bytes_mut()[..i2s.len()].copy_from_slice(i2s);
        let ptr = weights.ptr();
        // SAFETY: `ptr` points into `weights`, which the result owns (moved, never resized), and
        // holds ggml_nbytes = rows·cols/4 + 32 bytes of I2_S.
        unsafe {
            self.build(sys::ggml_type_GGML_TYPE_I2_S, ptr, weights, rows, cols, n_vectors, repeats, threads)
        }
    }

    /// The same product reading `i2s` in place, as the reference reads a mapped model's
    /// weights (the benchmarks give both engines the very same bytes, on the same pages):
    /// `i2s` must hold the padding (`rows·cols/4 + 32` bytes) and start on a 64-byte boundary,
    /// as ggml's own buffers do.
    pub fn i2s_matmul_in_place<'w>(
        &self,
        i2s: &'w [u8],
        rows: usize,
        cols: usize,
        n_vectors: usize,
        repeats: usize,
        threads: usize,
    ) -> Result<Matmul<'w>> {
        let full = check_i2s(i2s.len(), rows, cols, n_vectors, repeats, threads)?;
        if i2s.len() != full || i2s.as_ptr().align_offset(64) != 0 {
            return Err(Error::InvalidArgument(format!(
                "I2_S matmul {rows}×{cols} in place: needs {full} bytes (got {}) starting on a 64-byte \
                 boundary",
                i2s.len()
            )));
        }
        // ggml only reads src0 (the weights); the pointer is cast to mut for the tensor struct.
        let ptr = i2s.as_ptr() as *mut u8;
        // SAFETY: `ptr` is valid for rows·cols/4 + 32 bytes (checked above) for 'w, the life of
        // the result, and ggml never writes through a mul_mat's src0.
        unsafe {
            self.build(
                sys::ggml_type_GGML_TYPE_I2_S,
                ptr,
                Aligned::zeroed(0),
                rows,
                cols,
                n_vectors,
                repeats,
                threads,
            )
        }
    }

    /// Prepares the reference's F16 product (the lm_head's) reading `f16` in place: `rows`
    /// rows of `cols` little-endian f16 values, e.g. a mapped model's `token_embd`. Every
    /// [`Matmul::compute`] runs `repeats` identical products with the current input.
    pub fn f16_matmul<'w>(
        &self,
        f16: &'w [u8],
        rows: usize,
        cols: usize,
        repeats: usize,
        threads: usize,
    ) -> Result<Matmul<'w>> {
        let bad = |m: String| Err(Error::InvalidArgument(format!("F16 matmul {rows}×{cols}: {m}")));
        if rows == 0 || cols == 0 || rows.checked_mul(cols).and_then(|n| n.checked_mul(2)) != Some(f16.len())
        {
            return bad(format!("{} bytes given, rows × cols × 2 needed", f16.len()));
        }
        if !(1..=MAX_REPEATS).contains(&repeats) || !(1..=512).contains(&threads) {
            return bad(format!(
                "need 1 ≤ repeats ≤ {MAX_REPEATS} (got {repeats}), 1 ≤ threads ≤ 512 (got {threads})"
            ));
        }
        // ggml only reads src0 (the weights); the pointer is cast to mut for the tensor struct.
        let ptr = f16.as_ptr() as *mut u8;
        // SAFETY: `ptr` is valid for rows·cols·2 bytes (checked above) for 'w, the life of the
        // result, and ggml never writes through a mul_mat's src0.
        unsafe {
            self.build(sys::ggml_type_GGML_TYPE_F16, ptr, Aligned::zeroed(0), rows, cols, 1, repeats, threads)
        }
    }

    /// Prepares the reference's product with weights of any ggml block or float type `ty`
    /// whose rows its type traits describe (Q8_0, Q4_K, Q6_K, BF16, F16, ...), reading `bytes`
    /// in place: `rows` rows of `cols` values, e.g. a model's mapped `token_embd`. For one
    /// column, `ggml_mul_mat` converts the input to the type's `vec_dot_type` and calls its
    /// `vec_dot` per row (the lm_head). Every [`Matmul::compute`] runs `repeats` identical
    /// products with the current input.
    pub fn block_matmul<'w>(
        &self,
        ty: u32,
        bytes: &'w [u8],
        rows: usize,
        cols: usize,
        repeats: usize,
        threads: usize,
    ) -> Result<Matmul<'w>> {
        let bad = |m: String| Err(Error::InvalidArgument(format!("matmul of type {ty}, {rows}×{cols}: {m}")));
        let row_bytes = self.ggml_row_bytes(ty, cols)?;
        if rows == 0 || rows.checked_mul(row_bytes) != Some(bytes.len()) {
            return bad(format!("{} bytes given, rows × {row_bytes} needed", bytes.len()));
        }
        if !(1..=MAX_REPEATS).contains(&repeats) || !(1..=512).contains(&threads) {
            return bad(format!(
                "need 1 ≤ repeats ≤ {MAX_REPEATS} (got {repeats}), 1 ≤ threads ≤ 512 (got {threads})"
            ));
        }
        // ggml only reads src0 (the weights); the pointer is cast to mut for the tensor struct.
        let ptr = bytes.as_ptr() as *mut u8;
        // SAFETY: `ptr` is valid for rows · row_bytes bytes (checked above; ggml_nbytes of a
        // block type is exactly that) for 'w, the life of the result, and ggml never writes
        // through a mul_mat's src0.
        unsafe { self.build(ty, ptr, Aligned::zeroed(0), rows, cols, 1, repeats, threads) }
    }

    /// The graph of `repeats` identical `W · X` nodes, W of type `ty` at `w_ptr`.
    ///
    /// # Safety
    /// `w_ptr` must hold a `ty` tensor of `rows × cols` (ggml_nbytes) for as long as the
    /// result lives, and must not be written meanwhile; `weights` is kept alive with it.
    #[allow(clippy::too_many_arguments)]
    unsafe fn build<'w>(
        &self,
        ty: sys::ggml_type,
        w_ptr: *mut u8,
        weights: Aligned,
        rows: usize,
        cols: usize,
        n_vectors: usize,
        repeats: usize,
        threads: usize,
    ) -> Result<Matmul<'w>> {
        let input = Aligned::zeroed(cols * n_vectors * 4);
        let output = Aligned::zeroed(rows * n_vectors * 4);

        let api = self.api.clone();
        let raw = &api.raw;
        // SAFETY: pure size queries.
        let mem_size =
            unsafe { raw.ggml_tensor_overhead() * (repeats + 2) + raw.ggml_graph_overhead() } + 1024;
        take_last_error();
        // SAFETY: plain-data params; no_alloc: tensor data pointers are set to our buffers below,
        // so ggml allocates only tensor headers and the graph in its own memory.
        let ctx = unsafe {
            raw.ggml_init(sys::ggml_init_params {
                mem_size,
                mem_buffer: std::ptr::null_mut(),
                no_alloc: true,
            })
        };
        let ctx = NonNull::new(ctx)
            .ok_or_else(|| Error::Compute { what: "ggml_init".into(), reason: take_last_error() })?;
        let mut m = Matmul {
            api: api.clone(),
            ctx,
            graph: NonNull::dangling(),
            // SAFETY: an all-zero ggml_cplan (null pointers, no callback) is a valid value; it
            // is replaced by ggml_graph_plan's result below before any use.
            plan: unsafe { std::mem::zeroed() },
            _weights: weights,
            borrowed: PhantomData,
            input,
            output,
            work: Aligned::zeroed(0),
            rows,
            cols,
            n_vectors,
            repeats,
        };
        let fail = |what: &str| Error::Compute { what: what.into(), reason: take_last_error() };
        let (x_ptr, y_ptr) = (m.input.ptr(), m.output.ptr());
        // SAFETY: ctx is valid and sized for repeats + 2 tensor headers and one graph; the
        // weight tensor points at w_ptr (caller contract), the others into buffers owned by
        // `m` that are large enough (input: cols·n_vectors f32; output: rows·n_vectors f32,
        // shared by the identical nodes).
        unsafe {
            let ty_f32 = sys::ggml_type_GGML_TYPE_F32;
            let w = raw.ggml_new_tensor_2d(ctx.as_ptr(), ty, cols as i64, rows as i64);
            let x = raw.ggml_new_tensor_2d(ctx.as_ptr(), ty_f32, cols as i64, n_vectors as i64);
            let (w, x) = (
                w.as_mut().ok_or_else(|| fail("new tensor"))?,
                x.as_mut().ok_or_else(|| fail("new tensor"))?,
            );
            w.data = w_ptr.cast();
            x.data = x_ptr.cast();
            let graph =
                NonNull::new(raw.ggml_new_graph(ctx.as_ptr())).ok_or_else(|| fail("ggml_new_graph"))?;
            for _ in 0..repeats {
                let y = raw.ggml_mul_mat(ctx.as_ptr(), w, x).as_mut().ok_or_else(|| fail("ggml_mul_mat"))?;
                y.data = y_ptr.cast();
                raw.ggml_build_forward_expand(graph.as_ptr(), y);
            }
            m.graph = graph;
            m.plan = raw.ggml_graph_plan(graph.as_ptr(), threads as c_int, std::ptr::null_mut());
        }
        m.work = Aligned::zeroed(m.plan.work_size);
        m.plan.work_data = m.work.ptr();
        Ok(m)
    }
}

impl Matmul<'_> {
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn n_vectors(&self) -> usize {
        self.n_vectors
    }

    /// Products per [`compute`](Self::compute).
    pub fn repeats(&self) -> usize {
        self.repeats
    }

    /// Threads ggml computes with.
    pub fn threads(&self) -> usize {
        self.plan.n_threads.max(0) as usize
    }

    /// Sets the activations: `n_vectors` rows of `cols` values, one after the other.
    pub fn set_input(&mut self, x: &[f32]) -> Result<()> {
        if x.len() != self.cols * self.n_vectors {
            return Err(Error::InvalidArgument(format!(
                "I2_S matmul input has {} values, expected {} ({} × {})",
                x.len(),
                self.cols * self.n_vectors,
                self.n_vectors,
                self.cols
            )));
        }
        for (dst, v) in self.input.bytes_mut().chunks_exact_mut(4).zip(x) {
            dst.copy_from_slice(&v.to_ne_bytes());
        }
        Ok(())
    }

    /// Runs the graph: `repeats` identical products of the weights with the input.
    pub fn compute(&mut self) -> Result<()> {
        take_last_error();
        // SAFETY: the graph and plan were built for this context; every tensor's data and the
        // plan's work buffer point into buffers owned by self, unchanged since; `&mut self`
        // makes this the only user.
        let status = unsafe { self.api.raw.ggml_graph_compute(self.graph.as_ptr(), &mut self.plan) };
        if status != sys::ggml_status_GGML_STATUS_SUCCESS {
            return Err(Error::Compute {
                what: format!("ggml_graph_compute (status {status})"),
                reason: take_last_error(),
            });
        }
        Ok(())
    }

    /// The last result: `n_vectors` rows of `rows` values (ggml's layout: vector after vector).
    pub fn output(&self) -> Vec<f32> {
        self.output.bytes().chunks_exact(4).map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]])).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_the_reference_cannot_take_are_refused() {
        let r = Reference::open_built().unwrap();
        let bytes = vec![0u8; 6 * 128 / 4 + 32];
        let err = r.i2s_matmul(&bytes, 6, 128, 1, 1, 1).unwrap_err().to_string();
        assert!(err.contains("multiple of 4"), "{err}");
        let err = r.i2s_matmul(&bytes[..10], 8, 128, 1, 1, 1).unwrap_err().to_string();
        assert!(err.contains("10 bytes"), "{err}");
        let err = r.i2s_matmul(&vec![0u8; 8 * 128 / 4 + 32], 8, 128, 1, 0, 1).unwrap_err().to_string();
        assert!(err.contains("repeats"), "{err}");
    }

    #[test]
    fn f16_rows_of_ones_sum_the_input_in_place() {
        // Row r holds the f16 value r + 1 everywhere; the input is 0.5 everywhere: y_r = (r+1)·cols/2.
        let (rows, cols) = (6, 64);
        let halves = [0x3C00u16, 0x4000, 0x4200, 0x4400, 0x4500, 0x4600]; // 1, 2, 3, 4, 5, 6
        let bytes: Vec<u8> =
            (0..rows).flat_map(|r| (0..cols).flat_map(move |_| halves[r].to_le_bytes())).collect();
        let r = Reference::open_built().unwrap();
        let err = r.f16_matmul(&bytes[1..], rows, cols, 1, 1).unwrap_err().to_string();
        assert!(err.contains("rows × cols × 2"), "{err}");
        let mut m = r.f16_matmul(&bytes, rows, cols, 2, 2).unwrap();
        m.set_input(&vec![0.5f32; cols]).unwrap();
        m.compute().unwrap();
        let y = m.output();
        assert_eq!(y, (1..=rows).map(|k| (k * cols) as f32 / 2.0).collect::<Vec<_>>());
    }

    #[test]
    fn all_plus_one_rows_sum_the_quantized_input() {
        // Codes 2 (+1) everywhere, scale 1: y = (Σ 2q − Σq)/s = Σq / s ≈ Σx.
        let (rows, cols) = (8, 256);
        let mut bytes = vec![0xAAu8; rows * cols / 4];
        bytes.extend_from_slice(&1.0f32.to_le_bytes());
        bytes.resize(rows * cols / 4 + 32, 0);
        let r = Reference::open_built().unwrap();
        let mut m = r.i2s_matmul(&bytes, rows, cols, 1, 3, 2).unwrap();
        m.set_input(&vec![0.5f32; cols]).unwrap();
        m.compute().unwrap();
        let y = m.output();
        assert_eq!(y.len(), rows);
        for v in y {
            assert!((v - 128.0).abs() < 1e-3, "{v}");
        }
    }
}
