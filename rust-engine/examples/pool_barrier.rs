//! What one parallel section of the forward pass costs: `Pool::split` inside `Pool::install`
//! (as `Model::eval` runs a token) of parts of 20 µs of work each, with `gap` of serial work
//! before each split (a norm, a quantization: what separates two products of a token).
//! Prints the time per (gap + split) with one thread and with the pool: ideally equal (each
//! part runs on its own thread), the difference being what a split costs (waking the other
//! thread, the barrier at its end).
//!
//! ```text
//! cargo run --release -p bitnet-engine --example pool_barrier [threads] [iterations]
//! ```
//! A measurement on a shared machine: compare figures taken back to back only.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bitnet_engine::internals::parallel::{Pool, Rows};

/// Serial work of about `ns` nanoseconds (a busy loop calibrated once).
fn busy(iters: u64) -> u64 {
    let mut x = 0u64;
    for i in 0..iters {
        x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
    }
    x
}

fn calibrate(ns: u64) -> u64 {
    let n = 2_000_000;
    let mut per: Vec<f64> = (0..9)
        .map(|_| {
            let t = Instant::now();
            busy(n);
            t.elapsed().as_nanos() as f64 / n as f64
        })
        .collect();
    per.sort_by(f64::total_cmp);
    (ns as f64 / per[0]) as u64
}

/// Voluntary context switches of every thread of this process so far (a thread that sleeps
/// and is woken counts one): what a wake-up per split costs, independent of the machine's load.
fn voluntary_switches() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0 };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .flat_map(|s| {
            s.lines()
                .filter_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .filter_map(|v| v.trim().parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// Work of every part of a split: a thread's share of a decode product is 20–100 µs.
const PART_NS: u64 = 20_000;

/// Time per iteration of `iters` × (gap, split).
fn time(pool: &Pool, gap_iters: u64, part_iters: u64, iters: usize) -> Duration {
    let mut data = vec![0u64; 64 * pool.threads()];
    pool.install(|| {
        let t = Instant::now();
        for _ in 0..iters {
            black_box(busy(gap_iters));
            pool.split(Rows::new(&mut data, 64, 1), |r| r.data[0] += busy(part_iters));
        }
        t.elapsed() / iters as u32
    })
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("a number")).collect();
    let threads = args.first().copied().unwrap_or(2);
    let iters = args.get(1).copied().unwrap_or(20_000);
    let serial = Pool::new(1).expect("pool");
    let pool = Pool::new(threads).expect("pool");
    let rounds = 9;
    println!("threads {threads}; per gap, {rounds} rounds of (1 thread, pool) back to back; medians");
    println!(
        "{:>10} {:>14} {:>14} {:>16} {:>18}",
        "gap (ns)", "1 thread (ns)", "pool (ns)", "per split (ns)", "sleeps per split"
    );
    let part = calibrate(PART_NS);
    for gap in [0u64, 1_000, 5_000, 20_000, 100_000] {
        let g = calibrate(gap);
        let n = iters.min(200_000_000 / (gap as usize + PART_NS as usize));
        let mut t1 = Vec::new();
        let mut tn = Vec::new();
        let mut diff = Vec::new();
        let mut switches = 0;
        for _ in 0..rounds {
            let a = time(&serial, g, part, n).as_nanos() as i128;
            let before = voluntary_switches();
            let b = time(&pool, g, part, n).as_nanos() as i128;
            switches += voluntary_switches() - before;
            t1.push(a);
            tn.push(b);
            diff.push(b - a);
        }
        for v in [&mut t1, &mut tn, &mut diff] {
            v.sort();
        }
        let m = rounds / 2;
        let sleeps = switches as f64 / (rounds * n) as f64;
        println!("{:>10} {:>14} {:>14} {:>16} {:>18.3}", gap, t1[m], tn[m], diff[m], sleeps);
    }
}
