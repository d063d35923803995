//! The verdict `run` writes into a receipt: the same checks `harness gate` makes, against the
//! thresholds the run recorded, so a receipt that says `pass` passes the gate with them.

use crate::gate::{self, Outcome};
use crate::receipt::{Receipt, Verdict};
use crate::thresholds::{self, Overrides};

/// `invalid_input` when the model's I2_S data is corrupt (both engines would "agree" on
/// garbage); `incomplete` when the run did not finish; otherwise `pass` or `fail` by the
/// gate's checks against `receipt.settings.thresholds`, plus any tokenizer disagreement.
/// The receipt's own `verdict` field is ignored.
pub fn judge(r: &Receipt) -> Verdict {
    if !r.model.integrity_problems.is_empty() {
        let mut tensors: Vec<&str> = r.model.integrity_problems.iter().map(|p| p.tensor.as_str()).collect();
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
    let state = &r.run_state;
    let mut reasons = Vec::new();
    if state.interrupted {
        reasons.push("interrupted before every position was evaluated".to_string());
    }
    // Side A is the Rust engine unless the receipt says otherwise (1.2), side B the reference.
    if let Some(f) = &state.reference_failure {
        reasons.push(format!("reference failed: {f}"));
    }
    if let Some(f) = &state.rust_failure {
        match r.engines.rust.kind.as_str() {
            "rust-engine" => reasons.push(format!("rust engine failed: {f}")),
            _ => reasons.push(format!("{} failed: {f}", r.engines.rust.name)),
        }
    }
    if !reasons.is_empty() || !state.completed {
        if reasons.is_empty() {
            reasons.push("not every planned position was evaluated".into());
        }
        return Verdict { status: "incomplete".into(), reasons };
    }
    let resolved = thresholds::resolve(&r.settings.thresholds, None, &Overrides::default());
    for c in gate::evaluate(r, &resolved) {
        // The verdict being decided here is not an input to itself.
        if c.outcome == Outcome::Fail && c.name != "verdict.status" {
            reasons.push(format!("{} {}", c.name, c.detail));
        }
    }
    let t = &r.tokenizer;
    if !t.agree {
        reasons.push(format!("tokenizers disagree on {} prompt(s)", t.mismatches.len()));
    }
    if let Some(c) = t.corpus.as_ref().filter(|c| c.agreement_rate < 1.0) {
        let bad: usize = c.modes.iter().map(|m| c.strings - m.agreeing).sum();
        reasons.push(format!(
            "tokenizers disagree on {bad} of {} corpus checks ({:.2}% agreement)",
            c.strings * c.modes.len(),
            100.0 * c.agreement_rate
        ));
    }
    Verdict { status: if reasons.is_empty() { "pass" } else { "fail" }.into(), reasons }
}
