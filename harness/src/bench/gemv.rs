//! QK256 GEMV micro-benchmarks: the Rust `TernaryMatrix::matvec` against the reference's own
//! I2_S `ggml_mul_mat` (through `bitnet_cpp::I2sMatmul`) on identical bytes and activations.
//!
//! What one "product" is, on both sides: quantize the f32 activation row to int8
//! (`quantize_row_i8_s`), then the integer dot products and the float epilogue for every row.
//! The matrix is already in cache: the same product is repeated `repeats` times per timed
//! batch (the reference: one ggml graph of `repeats` identical mul_mat nodes, so its worker
//! threads start once per batch and meet at a barrier between nodes, as in a llama.cpp
//! decode; the Rust side: the engine's own thread pool, made once, splitting the rows of
//! every product, as in the engine's decode). A batch's time ÷ `repeats` is one product;
//! the median over batches is reported.
//!
//! Every QK256 kernel this CPU runs (`Qk256Kernel::available()`: the scalar oracle, AVX2,
//! AVX-512 VNNI) is timed against the same reference timing, and each one's output is
//! compared with the reference's bit for bit.

use std::time::Instant;

use anyhow::Context;
use bitnet_cpp::Reference;
use bitnet_engine::internals::parallel::{Pool, Rows};
use bitnet_engine::internals::quant::{QuantizedActs, TernaryMatrix};
use bitnet_engine::quant::{pack_i2s_x86, I2sFlavor, Qk256Kernel};
use bitnet_fixtures::rng::Rng;

use super::huge::HugeBuffer;
use super::report::{GemvKernelResult, GemvResult, GemvSpeed};

/// `(rows, cols)`: attn_q/attn_output (2560×2560), ffn_gate/ffn_up (6912×2560) and ffn_down
/// (2560×6912) of the 2B-4T model. Rows are the output length, cols the input length.
pub const SHAPES: [(usize, usize); 3] = [(2560, 2560), (6912, 2560), (2560, 6912)];

/// The test data of one shape: x86 I2_S bytes (as a GGUF file stores them, on 2 MiB pages as
/// a mapped model's weights are; both engines read these very bytes) and activations.
pub struct GemvData {
    pub rows: usize,
    pub cols: usize,
    pub i2s: HugeBuffer,
    pub x: Vec<f32>,
}

impl GemvData {
    /// Uniform random ternary codes, a scale, and roughly normal activations; deterministic.
    pub fn new(rows: usize, cols: usize) -> anyhow::Result<GemvData> {
        let mut rng = Rng::for_stream(0x6E3F, &format!("gemv-{rows}x{cols}"));
        let codes: Vec<i8> = (0..rows * cols).map(|_| rng.ternary()).collect();
        let mut i2s = pack_i2s_x86(&codes, rng.uniform(0.01, 0.05))?;
        // As stored in a file: n/4 packed bytes, the scale, padding to n/4 + 32.
        i2s.resize(rows * cols / 4 + 32, 0);
        let x = (0..cols).map(|_| rng.normalish(1.0)).collect();
        Ok(GemvData { rows, cols, i2s: HugeBuffer::copy_of(&i2s), x })
    }

    /// The matrix, computed with `kernel`.
    pub fn matrix(&self, kernel: Qk256Kernel) -> anyhow::Result<TernaryMatrix<'_>> {
        Ok(TernaryMatrix::new("gemv", I2sFlavor::X86Qk256, self.i2s.bytes(), self.rows, self.cols, None)?
            .with_kernel(kernel))
    }
}

/// Output rows per thread are cut at multiples of this (whole row blocks for the kernel), as
/// the engine's forward pass cuts them.
const ROW_ALIGN: usize = 16;

/// Rust with `kernel`: `batches` timed batches (after one warm-up batch) of `repeats` products,
/// with the engine's own thread pool (`parallel::Pool`, made once, as a model makes it at
/// load): the activations are quantized on one thread, then the rows are split between the
/// threads. Returns the seconds of each timed batch and the output.
pub fn time_rust(
    data: &GemvData,
    kernel: Qk256Kernel,
    pool: &Pool,
    repeats: usize,
    batches: usize,
) -> anyhow::Result<(Vec<f64>, Vec<f32>)> {
    let m = data.matrix(kernel)?;
    let mut y = vec![0f32; data.rows];
    let mut acts = QuantizedActs::with_kernel(data.cols, kernel);
    let times = pool.install(|| {
        let mut times = Vec::with_capacity(batches);
        for batch in 0..=batches {
            let start = Instant::now();
            for _ in 0..repeats {
                acts.quantize(&data.x);
                let (m, acts) = (&m, &acts);
                pool.split(Rows::new(&mut y, 1, ROW_ALIGN), |o| m.matvec_rows(acts, o.range.clone(), o.data));
            }
            if batch > 0 {
                times.push(start.elapsed().as_secs_f64());
            }
        }
        times
    });
    Ok((times, y))
}

/// The reference: its own `ggml_mul_mat` reading the same bytes in place, same batches.
pub fn time_reference(
    reference: &Reference,
    data: &GemvData,
    threads: usize,
    repeats: usize,
    batches: usize,
) -> anyhow::Result<(Vec<f64>, Vec<f32>)> {
    let mut mm = reference
        .i2s_matmul_in_place(data.i2s.bytes(), data.rows, data.cols, 1, repeats, threads)
        .context("cannot build the reference's mul_mat")?;
    mm.set_input(&data.x)?;
    mm.compute()?;
    let mut times = Vec::with_capacity(batches);
    for _ in 0..batches {
        let start = Instant::now();
        mm.compute()?;
        times.push(start.elapsed().as_secs_f64());
    }
    Ok((times, mm.output()))
}

pub fn median(xs: &[f64]) -> f64 {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn speed(batch_s: &[f64], repeats: usize, rows: usize, cols: usize) -> GemvSpeed {
    let s = median(batch_s) / repeats as f64;
    GemvSpeed {
        us_per_product: s * 1e6,
        gb_per_s: (rows * cols / 4) as f64 / s / 1e9,
        gop_per_s: (2 * rows * cols) as f64 / s / 1e9,
    }
}

/// How the products are timed: products per batch and timed batches, per side.
#[derive(Debug, Clone, Copy)]
pub struct Batches {
    pub repeats: usize,
    pub batches: usize,
}

/// One shape at one thread count: the reference, then each of `kernels` in turn (never two at
/// the same time), each output compared with the reference's. `chosen` (the engine's kernel)
/// fills the top-level Rust fields; it must be one of `kernels`.
pub fn bench_shape(
    reference: &Reference,
    data: &GemvData,
    threads: usize,
    kernels: &[Qk256Kernel],
    chosen: Qk256Kernel,
    timing: Batches,
) -> anyhow::Result<GemvResult> {
    let Batches { repeats, batches } = timing;
    let (ref_times, ref_y) = time_reference(reference, data, threads, repeats, batches)?;
    let (rows, cols) = (data.rows, data.cols);
    let reference = speed(&ref_times, repeats, rows, cols);
    let pool = Pool::new(threads)?;
    let mut rows_by_kernel = Vec::with_capacity(kernels.len());
    for &kernel in kernels {
        let (rust_times, rust_y) = time_rust(data, kernel, &pool, repeats, batches)?;
        let rust = speed(&rust_times, repeats, rows, cols);
        let (outputs_identical, max_abs_diff) = compare(&ref_y, &rust_y);
        rows_by_kernel.push(GemvKernelResult {
            kernel: kernel.name().into(),
            speedup: reference.us_per_product / rust.us_per_product,
            rust,
            outputs_identical,
            max_abs_diff,
        });
    }
    let main = rows_by_kernel
        .iter()
        .find(|k| k.kernel == chosen.name())
        .cloned()
        .with_context(|| format!("the engine's kernel {} is not among those timed", chosen.name()))?;
    Ok(GemvResult {
        rows,
        cols,
        threads,
        packed_bytes: (rows * cols / 4) as u64,
        kernel: main.kernel,
        rust: main.rust,
        reference,
        speedup: main.speedup,
        outputs_identical: main.outputs_identical,
        max_abs_diff: main.max_abs_diff,
        kernels: rows_by_kernel,
    })
}

/// Bit-for-bit equality of two outputs, and their largest absolute difference.
fn compare(reference: &[f32], rust: &[f32]) -> (bool, f64) {
    let identical =
        reference.len() == rust.len() && reference.iter().zip(rust).all(|(a, b)| a.to_bits() == b.to_bits());
    let max_abs_diff =
        reference.iter().zip(rust).map(|(a, b)| f64::from((a - b).abs())).fold(0.0f64, f64::max);
    (identical, max_abs_diff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn threaded_rust_gemv_equals_one_thread_for_every_kernel() {
        let data = GemvData::new(64, 256).unwrap();
        let m = data.matrix(Qk256Kernel::scalar()).unwrap();
        let mut acts = QuantizedActs::with_kernel(256, Qk256Kernel::scalar());
        acts.quantize(&data.x);
        let mut oracle = vec![0f32; 64];
        m.matvec(&acts, &mut oracle);
        let (one_pool, three_pool) = (Pool::new(1).unwrap(), Pool::new(3).unwrap());
        for kernel in Qk256Kernel::available() {
            let (_, one) = time_rust(&data, kernel, &one_pool, 2, 1).unwrap();
            let (t, three) = time_rust(&data, kernel, &three_pool, 2, 2).unwrap();
            assert_eq!(t.len(), 2);
            assert_eq!(one, three, "{}", kernel.name());
            assert_eq!(one, oracle, "{}", kernel.name());
        }
    }

    #[test]
    fn compare_is_bitwise() {
        assert_eq!(compare(&[1.0, -0.0], &[1.0, -0.0]), (true, 0.0));
        assert_eq!(compare(&[1.0, 0.0], &[1.0, -0.0]), (false, 0.0));
        assert_eq!(compare(&[1.0, 2.0], &[1.5, 2.0]), (false, 0.5));
    }
}
