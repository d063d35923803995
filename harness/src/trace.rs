//! Layer-by-layer tracing: where, inside the graph, do the two engines stop agreeing?
//!
//! At one position, both engines hand out their named intermediate tensors (the reference
//! through its eval callback, the Rust engine through its hook, with the reference's names).
//! They are compared in graph order; the first operation whose cosine falls below the
//! threshold is the first divergent operation.

pub use crate::receipt::{Trace, TraceOp};

/// Operations after the last layer (the engine's list).
pub use bitnet_engine::model::FINAL_OPS;

/// The names compared for `model`, in graph order: the engine reports, for its architecture
/// and the layer's optional tensors, the names the reference's eval callback gives the same
/// tensors (`Model::traced_names`, e.g. `ffn_out` for `bitnet-b1.58`, `ffn_silu` and
/// `ffn_sub_out` for `bitnet`).
pub fn traced_names(model: &bitnet_engine::model::Model<'_>) -> Vec<String> {
    model.traced_names()
}

/// Splits `Qcur-1` into (`Qcur`, Some(1)); names without a layer suffix give None.
pub(crate) fn split_name(name: &str) -> (String, Option<usize>) {
    match name.rsplit_once('-') {
        Some((op, l)) if l.chars().all(|c| c.is_ascii_digit()) && !l.is_empty() => {
            (op.to_string(), l.parse().ok())
        }
        _ => (name.to_string(), None),
    }
}

fn compare_op(name: &str, rust: &[f32], reference: &[f32], min_cosine: f64) -> TraceOp {
    let (op, layer) = split_name(name);
    let cosine = crate::compare::cosine(rust, reference);
    let (mut err, mut energy, mut max_abs) = (0f64, 0f64, 0f64);
    for (&a, &b) in rust.iter().zip(reference) {
        let d = f64::from(a) - f64::from(b);
        err += d * d;
        energy += f64::from(b) * f64::from(b);
        max_abs = f64::max(max_abs, d.abs());
    }
    let nmse = if energy > 0.0 { err / energy } else { err };
    // Non-finite values would poison every number: count them as total disagreement.
    let finite = cosine.is_finite() && nmse.is_finite() && max_abs.is_finite();
    TraceOp {
        name: name.to_string(),
        op,
        layer,
        elements: rust.len(),
        cosine: if finite { cosine } else { 0.0 },
        max_abs_diff: if finite { max_abs } else { f64::MAX },
        nmse: if finite { nmse } else { f64::MAX },
        bit_exact: rust.iter().zip(reference).all(|(a, b)| a.to_bits() == b.to_bits()),
        below_threshold: !finite || cosine < min_cosine,
    }
}

/// Compares the two engines' tensors (`(name, values)`, a name may repeat: the last one counts,
/// e.g. `Qcur` after RoPE) in the graph order of `names`.
pub fn compare(
    names: &[String],
    rust: &[(String, Vec<f32>)],
    reference: &[(String, Vec<f32>)],
    min_cosine: f64,
) -> (Vec<TraceOp>, Option<String>, Vec<String>) {
    let last = |list: &[(String, Vec<f32>)], n: &str| {
        list.iter().rev().find(|(k, _)| k == n).map(|(_, v)| v.clone())
    };
    let mut ops = Vec::new();
    let mut unmatched = Vec::new();
    for name in names {
        match (last(rust, name), last(reference, name)) {
            (Some(a), Some(b)) if a.len() == b.len() => ops.push(compare_op(name, &a, &b, min_cosine)),
            (Some(a), Some(b)) => {
                unmatched.push(format!("{name} (rust {} values, reference {})", a.len(), b.len()))
            }
            (Some(_), None) => unmatched.push(format!("{name} (reference did not report it)")),
            (None, Some(_)) => unmatched.push(format!("{name} (rust did not report it)")),
            (None, None) => unmatched.push(format!("{name} (neither engine reported it)")),
        }
    }
    let first = ops.iter().find(|o| o.below_threshold).map(|o| o.name.clone());
    (ops, first, unmatched)
}

/// The per-layer table printed after a traced run.
pub fn render(t: &Trace) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "trace at case {} position {} (token {}, {}): operations below cosine {}",
        t.case + 1,
        t.pos,
        t.token,
        t.reason.replace('_', " "),
        t.min_cosine
    );
    let _ = writeln!(s, "  {:<8} {:>14} {:>12}  first below threshold", "layer", "min cosine", "max |Δ|");
    let mut groups: Vec<(String, Vec<&TraceOp>)> = Vec::new();
    for op in &t.ops {
        let key = op.layer.map_or("output".to_string(), |l| l.to_string());
        match groups.last_mut() {
            Some((k, v)) if *k == key => v.push(op),
            _ => groups.push((key, vec![op])),
        }
    }
    for (key, ops) in &groups {
        let min = ops.iter().map(|o| o.cosine).fold(f64::INFINITY, f64::min);
        let max_abs = ops.iter().map(|o| o.max_abs_diff).fold(0.0, f64::max);
        let first = ops
            .iter()
            .find(|o| o.below_threshold)
            .map_or("-".to_string(), |o| format!("{} (cosine {:.6}, nmse {:.2e})", o.name, o.cosine, o.nmse));
        let exact = if ops.iter().all(|o| o.bit_exact) { "  bit-exact" } else { "" };
        let _ = writeln!(s, "  {key:<8} {min:>14.9} {max_abs:>12.3e}  {first}{exact}");
    }
    let _ = writeln!(s, "first divergent operation: {}", t.first_divergent_op.as_deref().unwrap_or("none"));
    for u in &t.unmatched {
        let _ = writeln!(s, "  not compared: {u}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split() {
        assert_eq!(split_name("Qcur-12"), ("Qcur".to_string(), Some(12)));
        assert_eq!(split_name("ffn_sqr(relu)-3"), ("ffn_sqr(relu)".to_string(), Some(3)));
        assert_eq!(split_name("result_norm"), ("result_norm".to_string(), None));
    }

    #[test]
    fn first_divergent_op_uses_the_last_report_of_a_name() {
        let names = vec!["a-0".to_string(), "Qcur-0".to_string(), "b-0".to_string()];
        let rust = vec![
            ("a-0".to_string(), vec![1.0, 2.0]),
            ("Qcur-0".to_string(), vec![1.0, 0.0]),
            ("b-0".to_string(), vec![0.0, 1.0]),
        ];
        let reference = vec![
            ("a-0".to_string(), vec![1.0, 2.0]),
            ("Qcur-0".to_string(), vec![0.0, 1.0]), // before RoPE: different
            ("Qcur-0".to_string(), vec![1.0, 0.0]), // after: equal
            ("b-0".to_string(), vec![1.0, 0.0]),
        ];
        let (ops, first, unmatched) = compare(&names, &rust, &reference, 0.99);
        assert!(unmatched.is_empty());
        assert!(ops[1].bit_exact);
        assert_eq!(first.as_deref(), Some("b-0"));
        assert_eq!(ops[2].cosine, 0.0);
    }
}
