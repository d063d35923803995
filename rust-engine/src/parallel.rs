//! Splitting the rows of a matrix product (or the heads of attention) across threads.
//!
//! A [`Pool`] owns its worker threads for the life of a model (rayon's pool, created at
//! load), so evaluating a token spawns nothing and allocates nothing: work is cut into one
//! contiguous part per thread with [`Split`] (borrowed output slices, cut by rows) and run
//! with `rayon::join`, whose jobs live on the stack.
//!
//! **One parallel region per pass.** The forward pass runs inside [`Pool::install`], which
//! keeps the other workers awake for the whole pass: each polls for work (`rayon::yield_now`,
//! a `pause` between polls) instead of going back to sleep after every product, so a
//! [`split`](Pool::split) is taken up within a fraction of a microsecond, not after a futex
//! wake-up. After its own part, the thread that split waits for the others the same way,
//! spinning on a flag (bounded by [`SPIN_POLLS`]; then rayon's own wait) rather than
//! yielding its core: the barrier between two dependent products is a few cache-line
//! transfers. When the pass ends the workers go back to rayon's sleep. With one thread there
//! is no pool and no overhead: everything runs on the caller. Measured with
//! `examples/pool_barrier.rs` (2 threads, 20 µs of serial work between splits): 14 µs and
//! one sleep per split with plain fork-joins, under 1.5 µs and no sleep in a region.
//!
//! Results never depend on the number of threads: each output row is computed by exactly
//! one thread with the same operations as on one thread.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::Yield;

/// Most threads a model may ask for.
pub(crate) const MAX_THREADS: usize = 256;

/// Polls for work a worker makes inside [`Pool::install`] without finding any before it
/// leaves the region and sleeps until rayon wakes it, as outside a pass (a poll is a steal
/// attempt and a `pause`, about 50 ns on a Zen 4: this is about 5 ms of running). The pass
/// has no serial stretch near that long; the bound only keeps a worker from spinning through
/// an unexpected one. Counted in polls, not time, so that a worker the OS preempted on a busy
/// machine does not take the preemption for idleness.
const STAY_AWAKE_POLLS: u32 = 100_000;

/// Polls the thread that split makes for the other parts after finishing its own, before it
/// waits as `rayon::join` does (which yields its core and may sleep): the parts of a product
/// finish within microseconds of each other unless the machine is oversubscribed (a poll is
/// about 30 ns on a Zen 4: this is about 0.3 ms).
const SPIN_POLLS: u32 = 10_000;

/// Worker threads for one model. With one thread there is no pool: everything runs on the
/// caller.
pub struct Pool {
    threads: usize,
    pool: Option<rayon::ThreadPool>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("threads", &self.threads).finish()
    }
}

/// Why a pool could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("threads must be between 1 and {MAX_THREADS}, got {0}")]
    BadCount(usize),
    #[error("could not start {threads} worker threads: {reason}")]
    Spawn { threads: usize, reason: String },
}

impl Pool {
    /// A pool of `threads` workers (`1`: no workers, the caller computes everything).
    pub fn new(threads: usize) -> Result<Pool, PoolError> {
        if !(1..=MAX_THREADS).contains(&threads) {
            return Err(PoolError::BadCount(threads));
        }
        let pool = if threads == 1 {
            None
        } else {
            let p = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(|i| format!("bitnet-worker-{i}"))
                .build()
                .map_err(|e| PoolError::Spawn { threads, reason: e.to_string() })?;
            Some(p)
        };
        Ok(Pool { threads, pool })
    }

    /// Number of threads computing (workers, or 1 for the caller alone).
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f` on one of the workers, with the other workers kept awake until it returns
    /// (one parallel region: see the module docs), and waits for it. Runs `f` on the caller
    /// without a pool; inside a region already, simply runs `f`.
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            None => f(),
            Some(p) if p.current_thread_index().is_some() => f(),
            Some(p) => p.install(|| {
                let done = AtomicBool::new(false);
                with_awake_workers(self.threads - 1, &done, f)
            }),
        }
    }

    /// Cuts `work` into one part per thread and runs `f` on every part, in parallel; returns
    /// when all are done.
    pub fn split<W: Split, F: Fn(W) + Sync>(&self, work: W, f: F) {
        match &self.pool {
            None => f(work),
            Some(p) if p.current_thread_index().is_some() => run(self.threads, work, &f),
            Some(p) => p.install(|| run(self.threads, work, &f)),
        }
    }
}

/// Runs `f` with `helpers` workers polling for work meanwhile; `done` tells them to stop.
/// Every job here lives on the stack (`rayon::join`), so this allocates nothing. The helpers
/// are queued before `f` starts, so they are the oldest jobs: a thief takes them before any
/// part of a split (rayon steals the oldest job first).
fn with_awake_workers<R: Send>(helpers: usize, done: &AtomicBool, f: impl FnOnce() -> R + Send) -> R {
    if helpers == 0 {
        // Set even if `f` panics, so the helpers stop at once.
        let _stop = SetOnDrop(done);
        return f();
    }
    rayon::join(|| with_awake_workers(helpers - 1, done, f), || stay_awake(done)).0
}

/// A worker's loop inside a region: runs every job it can find (the parts other threads
/// queue), polling with a `pause` in between, until `done` or [`STAY_AWAKE_POLLS`] polls
/// without work.
fn stay_awake(done: &AtomicBool) {
    let mut idle = 0u32;
    while !done.load(Ordering::Acquire) && idle < STAY_AWAKE_POLLS {
        match rayon::yield_now() {
            Some(Yield::Executed) => idle = 0,
            _ => {
                std::hint::spin_loop();
                idle += 1;
            }
        }
    }
}

/// Sets its flag when dropped (also while unwinding).
struct SetOnDrop<'f>(&'f AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

fn run<W: Split, F: Fn(W) + Sync>(parts: usize, work: W, f: &F) {
    if parts <= 1 {
        f(work);
        return;
    }
    let k = parts / 2;
    let (a, b) = work.cut(k, parts);
    let b_done = AtomicBool::new(false);
    rayon::join(
        || {
            run(k, a, f);
            wait_for(&b_done);
        },
        || {
            let _done = SetOnDrop(&b_done);
            run(parts - k, b, f);
        },
    );
}

/// After the first half of a split: spins until the second half is done (by another
/// worker, or by this thread: `rayon::yield_local` runs it here if no one took it), for at
/// most [`SPIN_POLLS`] polls; then `rayon::join` waits its own way.
fn wait_for(b_done: &AtomicBool) {
    let mut polls = 0u32;
    while !b_done.load(Ordering::Acquire) && polls < SPIN_POLLS {
        match rayon::yield_local() {
            Some(Yield::Executed) => {}
            _ => {
                std::hint::spin_loop();
                polls += 1;
            }
        }
    }
}

/// Work that can be cut into parts: the first `k` of `n` parts, and the rest.
pub trait Split: Send + Sized {
    fn cut(self, k: usize, n: usize) -> (Self, Self);
}

/// Rows `range` of an output, borrowed: `data` holds `row_len` values per row. Cut at row
/// multiples of `align` (so row-blocked kernels keep whole blocks), in proportion to the parts.
#[derive(Debug)]
pub struct Rows<'s, T> {
    pub data: &'s mut [T],
    pub range: Range<usize>,
    row_len: usize,
    align: usize,
}

impl<'s, T> Rows<'s, T> {
    /// All of `data`, `row_len` values per row.
    ///
    /// # Panics
    /// If `row_len` or `align` is 0, or `data.len()` is not a multiple of `row_len`.
    pub fn new(data: &'s mut [T], row_len: usize, align: usize) -> Self {
        assert!(row_len > 0 && align > 0 && data.len().is_multiple_of(row_len));
        let rows = data.len() / row_len;
        Rows { data, range: 0..rows, row_len, align }
    }
}

impl<T: Send> Split for Rows<'_, T> {
    fn cut(self, k: usize, n: usize) -> (Self, Self) {
        let len = self.range.len();
        let at = ((len * k / n) / self.align * self.align).min(len);
        let (a, b) = self.data.split_at_mut(at * self.row_len);
        let mid = self.range.start + at;
        (
            Rows { data: a, range: self.range.start..mid, row_len: self.row_len, align: self.align },
            Rows { data: b, range: mid..self.range.end, row_len: self.row_len, align: self.align },
        )
    }
}

impl<A: Split, B: Split> Split for (A, B) {
    fn cut(self, k: usize, n: usize) -> (Self, Self) {
        let (a0, a1) = self.0.cut(k, n);
        let (b0, b1) = self.1.cut(k, n);
        ((a0, b0), (a1, b1))
    }
}

impl<A: Split, B: Split, C: Split> Split for (A, B, C) {
    fn cut(self, k: usize, n: usize) -> (Self, Self) {
        let (a0, a1) = self.0.cut(k, n);
        let (b0, b1) = self.1.cut(k, n);
        let (c0, c1) = self.2.cut(k, n);
        ((a0, b0, c0), (a1, b1, c1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_is_computed_once_whatever_the_thread_count() {
        for threads in [1, 2, 3, 5] {
            let pool = Pool::new(threads).unwrap();
            for rows in [0usize, 1, 7, 64, 1000] {
                let mut a = vec![0u32; rows];
                let mut b = vec![0u32; rows * 3];
                let mut parts = vec![0u8; threads];
                pool.split(
                    (Rows::new(&mut a, 1, 4), Rows::new(&mut b, 3, 1), Rows::new(&mut parts, 1, 1)),
                    |(a, b, p)| {
                        assert_eq!(p.data.len(), 1, "one scratch slot per part");
                        p.data[0] += 1;
                        for (i, r) in a.range.clone().enumerate() {
                            a.data[i] += r as u32 + 1;
                        }
                        for (i, r) in b.range.clone().enumerate() {
                            b.data[3 * i..3 * i + 3].iter_mut().for_each(|v| *v += r as u32);
                        }
                    },
                );
                assert!(parts.iter().all(|&p| p == 1), "threads {threads}: {parts:?}");
                assert!(a.iter().enumerate().all(|(i, &v)| v == i as u32 + 1));
                assert!(b.iter().enumerate().all(|(i, &v)| v == (i / 3) as u32));
            }
        }
        assert!(Pool::new(0).is_err());
    }

    #[test]
    fn a_region_runs_every_split_of_a_pass() {
        for threads in [1, 2, 3, 5] {
            let pool = Pool::new(threads).unwrap();
            let mut a = vec![0u32; 1000];
            let total = pool.install(|| {
                for round in 0..200u32 {
                    pool.split(Rows::new(&mut a, 1, 16), |a| {
                        for (v, r) in a.data.iter_mut().zip(a.range) {
                            *v += r as u32 + round;
                        }
                    });
                    // A nested region is the same region.
                    pool.install(|| {
                        pool.split(Rows::new(&mut a, 10, 1), |a| a.data.iter_mut().for_each(|v| *v += 1))
                    });
                }
                a.iter().map(|&v| u64::from(v)).sum::<u64>()
            });
            let expected: u64 = (0..1000u64).map(|r| 200 * r + (0..200).sum::<u64>() + 200).sum();
            assert_eq!(total, expected, "threads {threads}");
        }
    }

    #[test]
    fn a_panic_in_a_region_reaches_the_caller_and_the_pool_stays_usable() {
        let pool = Pool::new(2).unwrap();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.install(|| {
                let mut a = vec![0u8; 64];
                pool.split(Rows::new(&mut a, 1, 1), |p| assert!(p.range.start != 0, "part 0 fails"));
            })
        }));
        assert!(caught.is_err());
        let mut a = vec![0u8; 64];
        pool.install(|| pool.split(Rows::new(&mut a, 1, 1), |p| p.data.iter_mut().for_each(|v| *v = 1)));
        assert!(a.iter().all(|&v| v == 1));
    }

    #[test]
    fn cuts_respect_alignment() {
        let mut a = vec![0u8; 100];
        let (x, y) = Rows::new(&mut a, 1, 8).cut(1, 2);
        assert_eq!((x.range.clone(), y.range.clone()), (0..48, 48..100));
    }
}
