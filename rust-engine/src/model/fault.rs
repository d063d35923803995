//! Deliberate faults: perturb one operation of one layer, to prove that layer-by-layer
//! tracing names the operation where two engines stop agreeing. Never on by default; the
//! harness exposes them only through a hidden option.

use std::fmt;
use std::str::FromStr;

/// Which operation to perturb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// RoPE pairs adjacent elements `(2i, 2i+1)` instead of NEOX halves, for Q and K
    /// (first visible at `Qcur`).
    RopeAdjacent,
    /// Skip `attn_sub_norm` (RMSNorm and its weight) before the output projection.
    SkipAttnSubNorm,
    /// Skip `ffn_sub_norm` before the down projection.
    SkipFfnSubNorm,
}

/// A fault in one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub kind: FaultKind,
    pub layer: usize,
}

impl Fault {
    /// The traced operation where this fault first shows (e.g. `Qcur-1`).
    pub fn first_affected_op(&self) -> String {
        let op = match self.kind {
            FaultKind::RopeAdjacent => "Qcur",
            FaultKind::SkipAttnSubNorm => "attn_sub_norm",
            FaultKind::SkipFfnSubNorm => "ffn_sub_norm",
        };
        format!("{op}-{}", self.layer)
    }

    pub(crate) fn hits(&self, kind: FaultKind, layer: usize) -> bool {
        self.kind == kind && self.layer == layer
    }
}

impl FaultKind {
    pub const ALL: [FaultKind; 3] =
        [FaultKind::RopeAdjacent, FaultKind::SkipAttnSubNorm, FaultKind::SkipFfnSubNorm];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::RopeAdjacent => "rope-adjacent",
            FaultKind::SkipAttnSubNorm => "skip-attn-sub-norm",
            FaultKind::SkipFfnSubNorm => "skip-ffn-sub-norm",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.kind.name(), self.layer)
    }
}

impl FromStr for Fault {
    type Err = String;

    /// `KIND@LAYER`, e.g. `rope-adjacent@1`.
    fn from_str(s: &str) -> Result<Fault, String> {
        let (kind, layer) = s.split_once('@').ok_or_else(|| format!("{s:?}: expected KIND@LAYER"))?;
        let kind = FaultKind::ALL.into_iter().find(|k| k.name() == kind).ok_or_else(|| {
            let names: Vec<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
            format!("unknown fault {kind:?} (known: {})", names.join(", "))
        })?;
        let layer = layer.parse().map_err(|_| format!("{layer:?} is not a layer number"))?;
        Ok(Fault { kind, layer })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let f: Fault = "rope-adjacent@1".parse().unwrap();
        assert_eq!(f, Fault { kind: FaultKind::RopeAdjacent, layer: 1 });
        assert_eq!(f.to_string(), "rope-adjacent@1");
        assert_eq!(f.first_affected_op(), "Qcur-1");
        assert!("nope@1".parse::<Fault>().is_err());
        assert!("rope-adjacent".parse::<Fault>().is_err());
    }
}
