//! Splitting the rows of a matrix product (or the heads of attention) across threads.
//!
//! A [`Pool`] owns its worker threads for the life of a model (rayon's pool, created at
//! load), so evaluating a token spawns nothing and allocates nothing: work is cut into one
//! contiguous part per thread with [`Split`] (borrowed output slices, cut by rows) and run
//! with `rayon::join`, whose jobs live on the stack. The forward pass runs inside
//! [`Pool::install`], so the parts reach the other workers without a hand-off through the
//! caller's thread for every product.
//!
//! Results never depend on the number of threads: each output row is computed by exactly
//! one thread with the same operations as on one thread.

use std::ops::Range;

/// Most threads a model may ask for.
pub(crate) const MAX_THREADS: usize = 256;

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

    /// Runs `f` on one of the workers and waits for it; [`split`](Self::split) calls inside
    /// `f` then fan out to the other workers directly. Runs `f` on the caller without a pool.
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(p) => p.install(f),
            None => f(),
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

fn run<W: Split, F: Fn(W) + Sync>(parts: usize, work: W, f: &F) {
    if parts <= 1 {
        f(work);
        return;
    }
    let k = parts / 2;
    let (a, b) = work.cut(k, parts);
    rayon::join(|| run(k, a, f), || run(parts - k, b, f));
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
    fn cuts_respect_alignment() {
        let mut a = vec![0u8; 100];
        let (x, y) = Rows::new(&mut a, 1, 8).cut(1, 2);
        assert_eq!((x.range.clone(), y.range.clone()), (0..48, 48..100));
    }
}
