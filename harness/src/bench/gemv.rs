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

use std::time::Instant;

use anyhow::Context;
use bitnet_cpp::Reference;
use bitnet_engine::internals::parallel::{Pool, Rows};
use bitnet_engine::internals::quant::{QuantizedActs, TernaryMatrix};
use bitnet_engine::quant::{pack_i2s_x86, I2sFlavor};
use bitnet_fixtures::rng::Rng;

use super::report::{GemvResult, GemvSpeed};

/// `(rows, cols)`: attn_q/attn_output (2560×2560), ffn_gate/ffn_up (6912×2560) and ffn_down
/// (2560×6912) of the 2B-4T model. Rows are the output length, cols the input length.
pub const SHAPES: [(usize, usize); 3] = [(2560, 2560), (6912, 2560), (2560, 6912)];

/// The test data of one shape: x86 I2_S bytes (as a GGUF file stores them) and activations.
pub struct GemvData {
    pub rows: usize,
    pub cols: usize,
    pub i2s: Vec<u8>,
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
        Ok(GemvData { rows, cols, i2s, x })
    }

    pub fn matrix(&self) -> anyhow::Result<TernaryMatrix<'_>> {
        Ok(TernaryMatrix::new("gemv", I2sFlavor::X86Qk256, &self.i2s, self.rows, self.cols, None)?)
    }
}

/// Output rows per thread are cut at multiples of this (whole row blocks for the kernel), as
/// the engine's forward pass cuts them.
const ROW_ALIGN: usize = 16;

/// Rust: `batches` timed batches (after one warm-up batch) of `repeats` products, with the
/// engine's own thread pool (`parallel::Pool`, made once, as a model makes it at load): the
/// activations are quantized on one thread, then the rows are split between the threads.
/// Returns the seconds of each timed batch and the output.
pub fn time_rust(
    data: &GemvData,
    threads: usize,
    repeats: usize,
    batches: usize,
) -> anyhow::Result<(Vec<f64>, Vec<f32>)> {
    let m = data.matrix()?;
    let pool = Pool::new(threads)?;
    let mut y = vec![0f32; data.rows];
    let mut acts = QuantizedActs::new(data.cols);
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

/// The reference: its own `ggml_mul_mat` on a copy of the same bytes, same batches.
pub fn time_reference(
    reference: &Reference,
    data: &GemvData,
    threads: usize,
    repeats: usize,
    batches: usize,
) -> anyhow::Result<(Vec<f64>, Vec<f32>)> {
    let mut mm = reference
        .i2s_matmul(&data.i2s, data.rows, data.cols, 1, repeats, threads)
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

/// One shape at one thread count: the reference, then Rust (never at the same time), then
/// the outputs compared.
pub fn bench_shape(
    reference: &Reference,
    data: &GemvData,
    threads: usize,
    repeats: usize,
    batches: usize,
) -> anyhow::Result<GemvResult> {
    let (ref_times, ref_y) = time_reference(reference, data, threads, repeats, batches)?;
    let (rust_times, rust_y) = time_rust(data, threads, repeats, batches)?;
    let identical =
        ref_y.len() == rust_y.len() && ref_y.iter().zip(&rust_y).all(|(a, b)| a.to_bits() == b.to_bits());
    let max_abs_diff =
        ref_y.iter().zip(&rust_y).map(|(a, b)| f64::from((a - b).abs())).fold(0.0f64, f64::max);
    let (rows, cols) = (data.rows, data.cols);
    let rust = speed(&rust_times, repeats, rows, cols);
    let reference = speed(&ref_times, repeats, rows, cols);
    Ok(GemvResult {
        rows,
        cols,
        threads,
        packed_bytes: (rows * cols / 4) as u64,
        speedup: reference.us_per_product / rust.us_per_product,
        rust,
        reference,
        outputs_identical: identical,
        max_abs_diff,
    })
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
    fn threaded_rust_gemv_equals_one_thread() {
        let data = GemvData::new(64, 256).unwrap();
        let (_, one) = time_rust(&data, 1, 2, 1).unwrap();
        let (t, three) = time_rust(&data, 3, 2, 2).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(one, three);
        let m = data.matrix().unwrap();
        let mut acts = QuantizedActs::new(256);
        acts.quantize(&data.x);
        let mut y = vec![0f32; 64];
        m.matvec(&acts, &mut y);
        assert_eq!(y, one);
    }
}
