//! Metrics: one position's two logit vectors, and summaries over many positions.
//!
//! Everything is computed in f64 from the f32 logits. Definitions worth knowing:
//! - cosine of two zero vectors is 1 (they are identical), of a zero and a non-zero vector 0;
//!   so no receipt ever holds a NaN cosine.
//! - `kl` is KL(P_reference ‖ P_rust) of the softmaxes in nats (the reference is the truth);
//!   `kl_reverse` is KL(P_rust ‖ P_reference). Rounding can make a tiny negative; it is clamped to 0.
//! - a position whose vectors hold a NaN or an infinity gets `nonfinite` and no metrics; it
//!   counts as an argmax disagreement.
//! - percentiles are nearest-rank over the finite positions.

use crate::receipt::{Divergence, NonFinite, Percentiles, Position, Summary, TopToken, WorstPosition};

/// Compares the two logit vectors of one position. `next` is the teacher token that follows
/// (for Δp), `None` at the last position.
pub fn compare_position(
    pos: usize,
    token: u32,
    next: Option<u32>,
    rust: &[f32],
    reference: &[f32],
) -> Position {
    assert_eq!(rust.len(), reference.len(), "logit vectors of different lengths");
    let bit_exact = rust.iter().zip(reference).all(|(a, b)| a.to_bits() == b.to_bits());
    let count =
        |v: &[f32]| (v.iter().filter(|x| x.is_nan()).count(), v.iter().filter(|x| x.is_infinite()).count());
    let (rn, ri) = count(rust);
    let (fn_, fi) = count(reference);
    if rn + ri + fn_ + fi > 0 {
        return Position {
            pos,
            token,
            nonfinite: Some(NonFinite { rust_nan: rn, rust_inf: ri, reference_nan: fn_, reference_inf: fi }),
            cosine: None,
            rust_argmax: None,
            reference_argmax: None,
            rust_top_logit: None,
            reference_top_logit: None,
            argmax_match: false,
            kl: None,
            kl_reverse: None,
            max_abs_diff: None,
            top5_overlap: None,
            reference_prob_of_rust_argmax: None,
            delta_p_next: None,
            reference_margin: None,
            near_tie: false,
            bit_exact,
        };
    }
    let ra = argmax(rust);
    let fa = argmax(reference);
    let max_abs_diff =
        rust.iter().zip(reference).map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs()).fold(0.0, f64::max);
    // Softmaxes in f64. Identical vectors (the usual case for an exact engine) share one pass:
    // over a 128k vocabulary these exponentials are most of the harness's own cost per token.
    let f = Softmax::of(reference);
    let r_own;
    let r = if bit_exact {
        &f
    } else {
        r_own = Softmax::of(rust);
        &r_own
    };
    // Identical logits have identical log-probabilities: both KLs are exactly 0.
    let (kl, kl_reverse) = if bit_exact { (0.0, 0.0) } else { kl_both(&f, r, reference, rust) };
    let top_f = top_k(reference, 5);
    let top_r = if bit_exact { top_f.clone() } else { top_k(rust, 5) };
    let top5_overlap = top_f.iter().filter(|i| top_r.contains(i)).count();
    let margin = if reference.len() >= 2 {
        Some(f64::from(reference[top_f[0]]) - f64::from(reference[top_f[1]]))
    } else {
        None
    };
    let near_tie = ra != fa && is_near_tie(rust, reference, ra, fa);
    let delta_p_next =
        next.filter(|&n| (n as usize) < rust.len()).map(|n| f.prob(n as usize) - r.prob(n as usize));
    Position {
        pos,
        token,
        nonfinite: None,
        cosine: Some(cosine(rust, reference)),
        rust_argmax: Some(ra as u32),
        reference_argmax: Some(fa as u32),
        rust_top_logit: Some(f64::from(rust[ra])),
        reference_top_logit: Some(f64::from(reference[fa])),
        argmax_match: ra == fa,
        kl: Some(kl),
        kl_reverse: Some(kl_reverse),
        max_abs_diff: Some(max_abs_diff),
        top5_overlap: Some(top5_overlap),
        reference_prob_of_rust_argmax: Some(f.prob(ra)),
        delta_p_next,
        reference_margin: margin,
        near_tie,
        bit_exact,
    }
}

/// Relative gap under which two top candidates count as tied (see [`is_near_tie`]).
pub const NEAR_TIE_REL: f64 = 1e-3;

/// An argmax flip is a near tie when both engines put the two candidates within
/// `NEAR_TIE_REL · max(1, |top logit|)` of each other: each engine barely preferred its own
/// choice, so the flip says little about the computation.
fn is_near_tie(rust: &[f32], reference: &[f32], ra: usize, fa: usize) -> bool {
    let tol = |top: f32| NEAR_TIE_REL * f64::from(top).abs().max(1.0);
    let gap_ref = f64::from(reference[fa]) - f64::from(reference[ra]);
    let gap_rust = f64::from(rust[ra]) - f64::from(rust[fa]);
    gap_ref <= tol(reference[fa]) && gap_rust <= tol(rust[ra])
}

/// Cosine similarity in f64; 1 for two zero vectors, 0 when exactly one is zero.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    // Identical vectors are exactly 1, not 1 minus a rounding error.
    if a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
        && a.iter().any(|x| *x != 0.0)
    {
        return 1.0;
    }
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    match (aa == 0.0, bb == 0.0) {
        (true, true) => 1.0,
        (true, false) | (false, true) => 0.0,
        // Rounding can push |cos| a hair past 1.
        _ => (ab / (aa.sqrt() * bb.sqrt())).clamp(-1.0, 1.0),
    }
}

/// Index of the largest value (the first one on ties, like the reference's greedy sampler).
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// Indices of the `k` largest values, largest first (ties: lower index first).
pub fn top_k(v: &[f32], k: usize) -> Vec<usize> {
    // One pass keeping the best k in order: for k = 5 over a 128k vocabulary this is far
    // cheaper than partitioning an index array.
    let before = |a: usize, b: usize| v[a].total_cmp(&v[b]).is_gt() || (v[a] == v[b] && a < b);
    let mut best: Vec<usize> = Vec::with_capacity(k + 1);
    for i in 0..v.len() {
        if best.len() == k && !best.last().is_some_and(|&w| before(i, w)) {
            continue;
        }
        let at = best.iter().position(|&b| before(i, b)).unwrap_or(best.len());
        best.insert(at, i);
        best.truncate(k);
    }
    best
}

/// A softmax in f64: `exp(x_i − max)` for every i and their sum, so probabilities are
/// `e_i / sum` and log-probabilities `x_i − lse` without a second pass of exponentials.
struct Softmax {
    e: Vec<f64>,
    sum: f64,
    /// log Σ exp(x_i).
    lse: f64,
}

impl Softmax {
    fn of(v: &[f32]) -> Softmax {
        let max = v.iter().map(|&x| f64::from(x)).fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = v.iter().map(|&x| (f64::from(x) - max).exp()).collect();
        let sum: f64 = e.iter().sum();
        Softmax { e, sum, lse: max + sum.ln() }
    }

    fn prob(&self, i: usize) -> f64 {
        self.e[i] / self.sum
    }
}

/// KL(P ‖ Q) and KL(Q ‖ P) for P the softmax of `p_logits`, Q of `q_logits`; each clamped at 0
/// (rounding can make a tiny negative).
fn kl_both(p: &Softmax, q: &Softmax, p_logits: &[f32], q_logits: &[f32]) -> (f64, f64) {
    let (mut pq, mut qp) = (0f64, 0f64);
    for (i, (&a, &b)) in p_logits.iter().zip(q_logits).enumerate() {
        let d = (f64::from(a) - p.lse) - (f64::from(b) - q.lse);
        pq += p.prob(i) * d;
        qp -= q.prob(i) * d;
    }
    (pq.max(0.0), qp.max(0.0))
}

/// Nearest-rank percentile `p` (0–100) of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn percentiles(mut values: Vec<f64>) -> Option<Percentiles> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    Some(Percentiles {
        p1: percentile(&values, 1.0),
        p5: percentile(&values, 5.0),
        p50: percentile(&values, 50.0),
        p95: percentile(&values, 95.0),
        p99: percentile(&values, 99.0),
    })
}

/// Summarises positions given as `(case index, position)`, in order. `min_cosine` decides the
/// first divergence; `token_text` renders token ids for it.
pub fn summarize<'a>(
    positions: impl IntoIterator<Item = (usize, &'a Position)>,
    min_cosine: f64,
    token_text: &dyn Fn(u32) -> Option<String>,
) -> Summary {
    let all: Vec<(usize, &Position)> = positions.into_iter().collect();
    let n = all.len();
    let finite: Vec<&Position> = all.iter().map(|(_, p)| *p).filter(|p| p.nonfinite.is_none()).collect();
    let cosines: Vec<f64> = finite.iter().filter_map(|p| p.cosine).collect();
    let kls: Vec<f64> = finite.iter().filter_map(|p| p.kl).collect();
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let max = |v: &[f64]| v.iter().copied().reduce(f64::max);
    let min = |v: &[f64]| v.iter().copied().reduce(f64::min);
    let first_divergence = all.iter().find_map(|&(case, p)| {
        let reason = if p.nonfinite.is_some() {
            "nonfinite"
        } else if !p.argmax_match {
            "argmax"
        } else if p.cosine.is_some_and(|c| c < min_cosine) {
            "cosine"
        } else {
            return None;
        };
        let top = |id: Option<u32>, logit: Option<f64>| {
            Some(TopToken { id: id?, logit: logit?, text: id.and_then(token_text) })
        };
        Some(Divergence {
            case,
            pos: p.pos,
            token: p.token,
            reason: reason.to_string(),
            cosine: p.cosine,
            rust_top: top(p.rust_argmax, p.rust_top_logit),
            reference_top: top(p.reference_argmax, p.reference_top_logit),
            near_tie: p.near_tie,
        })
    });
    let mut worst: Vec<&(usize, &Position)> = all.iter().collect();
    // Non-finite positions (no cosine) are the worst of all.
    worst.sort_by(|(_, a), (_, b)| {
        let ca = a.cosine.unwrap_or(f64::NEG_INFINITY);
        let cb = b.cosine.unwrap_or(f64::NEG_INFINITY);
        ca.total_cmp(&cb).then(b.kl.unwrap_or(f64::INFINITY).total_cmp(&a.kl.unwrap_or(f64::INFINITY)))
    });
    Summary {
        positions: n,
        nonfinite_positions: n - finite.len(),
        bit_exact_positions: all.iter().filter(|(_, p)| p.bit_exact).count(),
        cosine_min: min(&cosines),
        cosine_mean: mean(&cosines),
        exact_match_rate: (n > 0)
            .then(|| all.iter().filter(|(_, p)| p.argmax_match).count() as f64 / n as f64),
        first_divergence,
        kl_mean: mean(&kls),
        kl_max: max(&kls),
        max_abs_diff: max(&finite.iter().filter_map(|p| p.max_abs_diff).collect::<Vec<_>>()),
        cosine_percentiles: percentiles(cosines),
        kl_percentiles: percentiles(kls),
        worst_positions: worst
            .iter()
            .take(5)
            .map(|(case, p)| WorstPosition {
                case: *case,
                pos: p.pos,
                cosine: p.cosine,
                kl: p.kl,
                argmax_match: p.argmax_match,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_vectors() {
        let v = [1.0f32, 3.0, -2.0, 0.5, 2.9, 0.0];
        let p = compare_position(0, 7, Some(1), &v, &v);
        assert_eq!(p.cosine, Some(1.0));
        assert_eq!(p.kl, Some(0.0));
        assert_eq!(p.kl_reverse, Some(0.0));
        assert_eq!(p.max_abs_diff, Some(0.0));
        assert!(p.argmax_match && p.bit_exact && !p.near_tie);
        assert_eq!(p.top5_overlap, Some(5));
        assert_eq!(p.delta_p_next, Some(0.0));
        assert!((p.reference_margin.unwrap() - 0.1).abs() < 1e-6);
    }

    #[test]
    fn zero_vectors_have_defined_cosine() {
        assert_eq!(cosine(&[0.0, 0.0], &[0.0, 0.0]), 1.0);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
        assert_eq!(cosine(&[1.0, 0.0], &[-1.0, 0.0]), -1.0);
    }

    #[test]
    fn near_tie_flip_is_labelled() {
        let reference = [5.0f32, 4.9999, 1.0];
        let rust = [4.9998f32, 5.0, 1.0];
        let p = compare_position(3, 0, None, &rust, &reference);
        assert!(!p.argmax_match);
        assert!(p.near_tie, "{p:?}");
        assert_eq!(p.delta_p_next, None);
        // A flip with a wide reference margin is not a near tie.
        let p = compare_position(3, 0, None, &[1.0, 9.0, 1.0], &[9.0, 1.0, 1.0]);
        assert!(!p.argmax_match && !p.near_tie);
    }

    #[test]
    fn kl_matches_a_hand_computation() {
        let f = [0.0f32, (2f32).ln()]; // P = (1/3, 2/3)
        let r = [0.0f32, 0.0]; // Q = (1/2, 1/2)
        let p = compare_position(0, 0, Some(1), &r, &f);
        let want = (1.0 / 3.0) * ((1.0f64 / 3.0) / 0.5).ln() + (2.0 / 3.0) * ((2.0f64 / 3.0) / 0.5).ln();
        assert!((p.kl.unwrap() - want).abs() < 1e-7);
        assert!((p.delta_p_next.unwrap() - (2.0 / 3.0 - 0.5)).abs() < 1e-7);
    }

    #[test]
    fn nonfinite_is_reported_before_metrics() {
        let p = compare_position(0, 0, None, &[f32::NAN, 1.0, f32::INFINITY], &[0.0, 1.0, 2.0]);
        let nf = p.nonfinite.clone().unwrap();
        assert_eq!((nf.rust_nan, nf.rust_inf, nf.reference_nan, nf.reference_inf), (1, 1, 0, 0));
        assert_eq!(p.cosine, None);
        assert!(!p.argmax_match);
        let s = summarize([(0, &p)], 0.99, &|_| None);
        assert_eq!(s.nonfinite_positions, 1);
        assert_eq!(s.first_divergence.unwrap().reason, "nonfinite");
        assert_eq!(s.exact_match_rate, Some(0.0));
        assert_eq!(s.cosine_min, None);
    }

    #[test]
    fn summary_finds_first_divergence_and_worst() {
        let a = [1.0f32, 2.0, 3.0];
        let ps: Vec<Position> = vec![
            compare_position(0, 1, Some(2), &a, &a),
            compare_position(1, 2, Some(0), &[1.0, 2.0, 3.1], &a),
            compare_position(2, 0, None, &[3.0, 2.0, 1.0], &a),
        ];
        let s = summarize(ps.iter().map(|p| (4, p)), 0.999999, &|id| Some(format!("t{id}")));
        assert_eq!(s.positions, 3);
        assert_eq!(s.bit_exact_positions, 1);
        let d = s.first_divergence.unwrap();
        assert_eq!((d.case, d.pos, d.reason.as_str()), (4, 1, "cosine"));
        assert_eq!(s.worst_positions[0].pos, 2);
        assert!((s.exact_match_rate.unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(s.cosine_percentiles.as_ref().unwrap().p1, s.cosine_min.unwrap());
    }

    #[test]
    fn top_k_orders_and_breaks_ties_by_index() {
        assert_eq!(top_k(&[1.0, 5.0, 5.0, 0.0, 9.0, 2.0, 3.0], 5), vec![4, 1, 2, 6, 5]);
        assert_eq!(top_k(&[1.0, 2.0], 5), vec![1, 0]);
    }
}
