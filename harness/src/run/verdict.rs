//! The verdict `run` writes into a receipt.

use crate::receipt::{ModelInfo, RunState, Summary, Thresholds, TokenizerAgreement, Verdict};

/// `invalid_input` when the model's I2_S data is corrupt (both engines would "agree" on
/// garbage); `incomplete` when the run did not finish; otherwise `pass` or `fail` against
/// `thresholds`, with one reason per failed check.
pub fn judge(
    model: &ModelInfo,
    state: &RunState,
    tokenizer: &TokenizerAgreement,
    summary: &Summary,
    t: &Thresholds,
) -> Verdict {
    if !model.integrity_problems.is_empty() {
        let mut tensors: Vec<&str> = model.integrity_problems.iter().map(|p| p.tensor.as_str()).collect();
        tensors.dedup();
        return Verdict {
            status: "invalid_input".into(),
            reasons: vec![format!(
                "corrupt I2_S data in {} tensor(s): {} — results on this file mean nothing",
                tensors.len(),
                tensors.join(", ")
            )],
        };
    }
    let mut reasons = Vec::new();
    if state.interrupted {
        reasons.push("interrupted before every position was evaluated".to_string());
    }
    if let Some(f) = &state.reference_failure {
        reasons.push(format!("reference failed: {f}"));
    }
    if let Some(f) = &state.rust_failure {
        reasons.push(format!("rust engine failed: {f}"));
    }
    if !reasons.is_empty() || !state.completed {
        if reasons.is_empty() {
            reasons.push("not every planned position was evaluated".into());
        }
        return Verdict { status: "incomplete".into(), reasons };
    }
    reasons.extend(failed_checks(summary, t));
    if !tokenizer.agree {
        reasons.push(format!("tokenizers disagree on {} prompt(s)", tokenizer.mismatches.len()));
    }
    if let Some(c) = tokenizer.corpus.as_ref().filter(|c| c.agreement_rate < 1.0) {
        let bad: usize = c.modes.iter().map(|m| c.strings - m.agreeing).sum();
        reasons.push(format!(
            "tokenizers disagree on {bad} of {} corpus checks ({:.2}% agreement)",
            c.strings * c.modes.len(),
            100.0 * c.agreement_rate
        ));
    }
    Verdict { status: if reasons.is_empty() { "pass" } else { "fail" }.into(), reasons }
}

/// Every threshold `summary` misses, one sentence each.
pub fn failed_checks(s: &Summary, t: &Thresholds) -> Vec<String> {
    let mut out = Vec::new();
    if s.positions == 0 {
        out.push("no position was compared".into());
    }
    if s.nonfinite_positions > 0 {
        out.push(format!("{} position(s) with NaN or Inf logits", s.nonfinite_positions));
    }
    if let Some(c) = s.cosine_min.filter(|&c| c < t.min_cosine) {
        out.push(format!("cosine_min {c:.9} < {} (min_cosine)", t.min_cosine));
    }
    if let Some(e) = s.exact_match_rate.filter(|&e| e < t.min_exact_match) {
        out.push(format!("exact_match_rate {e:.6} < {} (min_exact_match)", t.min_exact_match));
    }
    if let Some(k) = s.kl_max.filter(|&k| k > t.max_kl) {
        out.push(format!("kl_max {k:.3e} > {:e} (max_kl)", t.max_kl));
    }
    if let (Some(limit), Some(d)) = (t.max_first_divergence, &s.first_divergence) {
        if d.pos < limit {
            out.push(format!("first divergence at position {} < {limit} (max_first_divergence)", d.pos));
        }
    }
    out
}
