//! The metrics of batched runs, computed on a helper thread while the engines evaluate the next
//! batch (or the next case).
//!
//! A batch's logits arrive from both engines at once, `batch × n_vocab` values per side; their
//! metrics (softmaxes, KL, top-5 over a 128k vocabulary) and sha256 cost about a tenth of the
//! batch's evaluation on the 2B shape. Computed in line, the engines waited for them after every
//! case. Here the run hands each batch to [`Measurer`]'s thread and goes on evaluating: the
//! metrics use the core an engine leaves idle when it finishes its batch before the other one.
//! The thread runs at the lowest priority (nice 19) so that it takes that idle time and not
//! the engines' (the slower engine decides the run's time); when the run waits for it (at the
//! end, or when it is a whole batch behind), nothing else of the run is computing.
//!
//! Everything is measured in the order the batches were evaluated, so the receipt is the one
//! the in-line computation wrote, byte for byte.

use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::thread::Scope;

use anyhow::anyhow;

use super::evaluate::LogitDigests;
use crate::compare::compare_position;
use crate::exit::{Exit, Failure};
use crate::receipt::Position;

/// One batch of a case, with what its metrics need.
pub(super) struct Batch {
    /// Position of the batch's first token.
    pub start: usize,
    /// The teacher tokens of the batch's positions, then the one after the batch when known
    /// (each position's next token, for Δp).
    pub tokens: Vec<u32>,
    /// Positions in the batch.
    pub n: usize,
    /// Both sides' logits of every position, row after row (`n × n_vocab` each).
    pub logits: [Vec<f32>; 2],
    /// `--mode both`: both sides' decode logits of the batch's positions (empty otherwise).
    pub decoded: Vec<[Vec<f32>; 2]>,
}

/// A message to the measuring thread: a batch, and whether it ends its case (a case that ends
/// without a batch, after a failure, sends `None`).
struct Job {
    batch: Option<Batch>,
    last: bool,
}

/// What the batched pass of a case produced.
#[derive(Default)]
pub(super) struct BatchPass {
    pub positions: Vec<Position>,
    /// sha256 of each side's batch logits.
    pub hashes: [String; 2],
    /// `--mode both`: each side's batch logits against its decode logits.
    pub self_positions: [Vec<Position>; 2],
}

/// The measuring thread's two ends: batches in, one [`BatchPass`] out per case.
pub(super) struct Measurer {
    jobs: SyncSender<Job>,
    passes: Receiver<BatchPass>,
}

impl Measurer {
    /// Starts the measuring thread in `scope`; it ends when the measurer is dropped.
    pub fn start<'s>(scope: &'s Scope<'s, '_>) -> Measurer {
        // A rendezvous channel: a batch is handed over only when the thread is done with the
        // previous one, so at most two batches' logits are alive (the one being measured and
        // the one just evaluated), one more than an in-line computation held; a run that
        // evaluates faster than it measures waits for the measurements instead of piling up.
        let (jobs, inbox) = mpsc::sync_channel::<Job>(0);
        let (outbox, passes) = mpsc::channel();
        scope.spawn(move || measure(inbox, outbox));
        Measurer { jobs, passes }
    }

    /// Hands over the next batch of the current case (`last`: the case ends with it).
    pub fn send(&self, batch: Batch, last: bool) -> Result<(), Failure> {
        self.jobs.send(Job { batch: Some(batch), last }).map_err(|_| gone())
    }

    /// Ends the current case without a further batch.
    pub fn end_case(&self) -> Result<(), Failure> {
        self.jobs.send(Job { batch: None, last: true }).map_err(|_| gone())
    }

    /// The pass of the oldest case whose end was sent and whose pass was not taken yet, waiting
    /// for the thread to measure it.
    pub fn pass(&self) -> Result<BatchPass, Failure> {
        self.passes.recv().map_err(|_| gone())
    }
}

/// The measuring thread ended before the run (it panicked, a bug).
fn gone() -> Failure {
    Failure::new(Exit::Internal, anyhow!("the thread measuring batched logits stopped"))
}

/// The measuring thread: every batch in order, a pass out at every case's end.
fn measure(inbox: Receiver<Job>, outbox: Sender<BatchPass>) {
    lower_priority();
    let mut pass = BatchPass::default();
    let mut digests = LogitDigests::new();
    for Job { batch, last } in inbox {
        if let Some(batch) = batch {
            measure_batch(&batch, &mut pass, &mut digests);
        }
        if last {
            let mut done = std::mem::take(&mut pass);
            done.hashes = std::mem::replace(&mut digests, LogitDigests::new()).finish();
            if outbox.send(done).is_err() {
                return;
            }
        }
    }
}

/// Every position of one batch: its digest, its comparison, and with `--mode both` each side's
/// batch logits against its decode logits. A large batch is split over two threads (one side's
/// digest and half of the positions each): when the run waits for the metrics (at its end, or
/// in `--mode both`), both cores are idle.
fn measure_batch(batch: &Batch, pass: &mut BatchPass, digests: &mut LogitDigests) {
    let n = batch.n;
    if n == 0 {
        return;
    }
    let n_vocab = batch.logits[0].len() / n;
    let [da, db] = &mut digests.sides;
    if n * n_vocab < SPLIT_VALUES {
        for i in 0..n {
            da.add(row(&batch.logits[0], n_vocab, i));
            db.add(row(&batch.logits[1], n_vocab, i));
        }
        measure_positions(batch, n_vocab, 0..n, pass);
        return;
    }
    let half = n.div_ceil(2);
    let second = std::thread::scope(|s| {
        let second = s.spawn(|| {
            lower_priority();
            let mut second = BatchPass::default();
            (0..n).for_each(|i| db.add(row(&batch.logits[1], n_vocab, i)));
            measure_positions(batch, n_vocab, half..n, &mut second);
            second
        });
        (0..n).for_each(|i| da.add(row(&batch.logits[0], n_vocab, i)));
        measure_positions(batch, n_vocab, 0..half, pass);
        second.join()
    });
    // The helper only computes metrics; a panic there is a bug, reported as it happened.
    let second = second.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    pass.positions.extend(second.positions);
    for (all, part) in pass.self_positions.iter_mut().zip(second.self_positions) {
        all.extend(part);
    }
}

/// Batches of fewer logits (both sides) are measured on one thread: a thread costs more than
/// it saves on them.
const SPLIT_VALUES: usize = 1 << 20;

/// Row `i` of `n_vocab` values.
fn row(logits: &[f32], n_vocab: usize, i: usize) -> &[f32] {
    &logits[i * n_vocab..(i + 1) * n_vocab]
}

/// The comparisons of the batch's positions `range` (indices within the batch), appended.
fn measure_positions(batch: &Batch, n_vocab: usize, range: std::ops::Range<usize>, pass: &mut BatchPass) {
    let Batch { start, tokens, logits: [ra, rb], decoded, .. } = batch;
    for i in range {
        let (la, lb) = (row(ra, n_vocab, i), row(rb, n_vocab, i));
        let (pos, token, next) = (start + i, tokens[i], tokens.get(i + 1).copied());
        pass.positions.push(compare_position(pos, token, next, la, lb));
        if let Some(rows) = decoded.get(i) {
            for (side, batch) in [la, lb].into_iter().enumerate() {
                pass.self_positions[side].push(compare_position(pos, token, next, batch, &rows[side]));
            }
        }
    }
}

/// Makes the calling thread the last to get a core (nice 19). PRIO_PROCESS with no id sets the
/// calling thread's nice value on Linux (a per-thread attribute there); failing to lower it
/// only costs speed.
pub(super) fn lower_priority() {
    let _ = rustix::process::setpriority_process(None, 19);
}

#[cfg(test)]
mod tests {
    use super::{Batch, Measurer};
    use crate::compare::compare_position;
    use crate::run::evaluate::LogitDigests;

    /// Deterministic, distinct logits for (side, position).
    fn row(side: usize, pos: usize, n_vocab: usize) -> Vec<f32> {
        (0..n_vocab).map(|i| ((i * 7 + pos * 13 + side) % 11) as f32 * 0.25 - 1.0).collect()
    }

    fn batch(start: usize, n: usize, ids: &[u32], n_vocab: usize, decoded: bool) -> Batch {
        let rows = |side| (start..start + n).flat_map(|p| row(side, p, n_vocab)).collect::<Vec<_>>();
        Batch {
            start,
            tokens: ids[start..(start + n + 1).min(ids.len())].to_vec(),
            n,
            logits: [rows(0), rows(1)],
            decoded: if decoded {
                (start..start + n).map(|p| [row(1, p, n_vocab), row(0, p, n_vocab)]).collect()
            } else {
                Vec::new()
            },
        }
    }

    #[test]
    fn passes_equal_an_in_line_computation_case_by_case() {
        // Small batches are measured on one thread, large ones split over two.
        for n_vocab in [16, super::SPLIT_VALUES / 8] {
            cases_of(n_vocab);
        }
    }

    fn cases_of(n_vocab: usize) {
        let ids = [3u32, 1, 4, 1, 5, 9, 2, 6];
        std::thread::scope(|s| {
            let m = Measurer::start(s);
            // Case 1: batches of 3, 3 and 1 over 7 positions; case 2: a failure before any
            // batch; case 3: one batch of 8 (no next token for the last), with decode rows.
            m.send(batch(0, 3, &ids, n_vocab, false), false).unwrap();
            m.send(batch(3, 3, &ids, n_vocab, false), false).unwrap();
            m.send(batch(6, 1, &ids, n_vocab, false), true).unwrap();
            m.end_case().unwrap();
            m.send(batch(0, 8, &ids, n_vocab, true), true).unwrap();
            for (n, decoded) in [(7, false), (0, false), (8, true)] {
                let pass = m.pass().unwrap();
                let mut digests = LogitDigests::new();
                let mut want = Vec::new();
                let mut want_self: [Vec<_>; 2] = Default::default();
                for pos in 0..n {
                    let (a, b) = (row(0, pos, n_vocab), row(1, pos, n_vocab));
                    digests.add([&a, &b]);
                    let next = ids.get(pos + 1).copied();
                    want.push(compare_position(pos, ids[pos], next, &a, &b));
                    if decoded {
                        want_self[0].push(compare_position(pos, ids[pos], next, &a, &b));
                        want_self[1].push(compare_position(pos, ids[pos], next, &b, &a));
                    }
                }
                assert_eq!(pass.positions, want);
                assert_eq!(pass.self_positions, want_self);
                assert_eq!(pass.hashes, digests.finish());
            }
        });
    }
}
