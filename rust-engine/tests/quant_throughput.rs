//! Single-thread throughput of every kernel (scalar, AVX2, AVX-512 VNNI): matvec in GB/s of
//! packed weights (256 rows sit in L2, the model's shapes in L3, then from DRAM), and a
//! 16-column matmul. Prints numbers, asserts nothing about time. Run with
//! `cargo test --release -p bitnet-engine --test quant_throughput -- --ignored --nocapture`.

mod quant_common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use bitnet_engine::internals::quant::{QuantizedActs, TernaryMatrix};
use bitnet_engine::quant::{I2sFlavor, Qk256Kernel};
use quant_common::{random_x86_tensor, Rng};

/// Seconds this thread has spent on a CPU: from `/proc/thread-self/schedstat` on Linux, so
/// the numbers hold up on a shared machine; wall time elsewhere.
fn thread_seconds(wall: Instant) -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or_else(|| wall.elapsed().as_secs_f64(), |ns| ns as f64 * 1e-9)
}

/// Runs `f` in batches of at least ~2 ms (so reading the clock costs nothing) for about
/// `budget` of CPU time; returns CPU seconds per call (best of 5 rounds).
fn time_per_call(budget: Duration, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    f();
    let once = t.elapsed().as_secs_f64().max(1e-7);
    let batch = ((2e-3 / once).ceil() as u32).max(1);
    let wall = Instant::now();
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let start = thread_seconds(wall);
        let mut calls = 0u32;
        while thread_seconds(wall) - start < budget.as_secs_f64() / 5.0 {
            for _ in 0..batch {
                f();
            }
            calls += batch;
        }
        best = best.min((thread_seconds(wall) - start) / f64::from(calls));
    }
    best
}

fn kernels() -> Vec<Qk256Kernel> {
    Qk256Kernel::available()
}

#[test]
#[ignore = "measurement, prints numbers"]
fn matvec_throughput() {
    let mut rng = Rng::new(99);
    println!("single thread, x86 I2_S matvec, CPU time (activation quantization timed separately)");
    for (rows, cols) in [(256usize, 2560usize), (2560, 2560), (6912, 2560), (2560, 6912)] {
        let data = random_x86_tensor(&mut rng, rows, cols, 0.01);
        let x = rng.activations(cols);
        let mut out = vec![0f32; rows];
        for k in kernels() {
            let m =
                TernaryMatrix::new("w", I2sFlavor::X86Qk256, &data, rows, cols, None).unwrap().with_kernel(k);
            let mut acts = QuantizedActs::with_kernel(cols, k);
            acts.quantize(&x);
            let t = time_per_call(Duration::from_millis(900), || {
                m.matvec(black_box(&acts), &mut out);
                black_box(&out);
            });
            let tq = time_per_call(Duration::from_millis(300), || {
                acts.quantize(black_box(&x));
            });
            println!(
                "  {rows:>5} x {cols:<5} {:<10}: {:>8.1} us  {:>6.2} GB/s   (quantize acts {:.2} us)",
                k.name(),
                t * 1e6,
                m.packed_bytes() as f64 / t / 1e9,
                tq * 1e6
            );
        }
    }

    // A batch of 16 activation rows (prefill): `matmul`, in ns per weight row and column.
    println!("single thread, x86 I2_S matmul of 16 columns, CPU time");
    for (rows, cols) in [(2560usize, 2560usize), (6912, 2560)] {
        let data = random_x86_tensor(&mut rng, rows, cols, 0.01);
        let n = 16;
        let mut out = vec![0f32; rows * n];
        for k in kernels() {
            let m =
                TernaryMatrix::new("w", I2sFlavor::X86Qk256, &data, rows, cols, None).unwrap().with_kernel(k);
            let xs: Vec<QuantizedActs> = (0..n)
                .map(|_| {
                    let mut a = QuantizedActs::with_kernel(cols, k);
                    a.quantize(&rng.activations(cols));
                    a
                })
                .collect();
            let t = time_per_call(Duration::from_millis(900), || {
                m.matmul(black_box(&xs), &mut out);
                black_box(&out);
            });
            println!(
                "  {rows:>5} x {cols:<5} x {n} {:<10}: {:>8.1} us  {:>6.2} ns per row and column",
                k.name(),
                t * 1e6,
                t * 1e9 / (rows * n) as f64
            );
        }
    }

    // Streaming from memory: cycle through more distinct matrices than the L3 holds.
    let (rows, cols, count) = (6912usize, 2560usize, 24usize);
    let mats: Vec<Vec<u8>> = (0..count).map(|_| random_x86_tensor(&mut rng, rows, cols, 0.01)).collect();
    let x = rng.activations(cols);
    let mut out = vec![0f32; rows];
    for k in kernels() {
        let ms: Vec<TernaryMatrix<'_>> = mats
            .iter()
            .map(|d| {
                TernaryMatrix::new("w", I2sFlavor::X86Qk256, d, rows, cols, None).unwrap().with_kernel(k)
            })
            .collect();
        let mut acts = QuantizedActs::with_kernel(cols, k);
        acts.quantize(&x);
        let t = time_per_call(Duration::from_millis(1500), || {
            for m in &ms {
                m.matvec(black_box(&acts), &mut out);
            }
            black_box(&out);
        });
        let bytes = ms.iter().map(|m| m.packed_bytes()).sum::<usize>() as f64;
        println!("  {count} x ({rows} x {cols}) from DRAM {:<10}: {:>6.2} GB/s", k.name(), bytes / t / 1e9);
    }
}
