//! The one place that maps `general.architecture` to a graph.
//!
//! bitnet.cpp's llama.cpp fork knows three BitNet architectures (`LLM_ARCH_NAMES`, then
//! `llama_build_graph`); the engine implements all three:
//!
//! | `general.architecture` | reference graph      | FFN activation   | `blk.N.*.scale` multipliers | Q/K/V/O biases |
//! |------------------------|----------------------|------------------|-----------------------------|----------------|
//! | `bitnet-b1.58`         | `build_bitnet_158`   | `relu(gate)²·up` | not loaded                  | optional       |
//! | `bitnet-25`            | `build_bitnet_158`   | `relu(gate)²·up` | not loaded                  | optional       |
//! | `bitnet`               | `build_bitnet`       | `silu(gate)·up`  | optional, after each product | not loaded     |
//!
//! Common to all: RMSNorm with `<arch>.attention.layer_norm_rms_epsilon`, NEOX RoPE
//! (`llama_rope_type`), `attn_sub_norm` before the output projection, `ffn_sub_norm` before
//! `ffn_down`, and the lm_head is always `token_embd`.
//!
//! "Not loaded" means the reference's loader (`llm_load_tensors`) never creates that tensor for
//! the architecture: a file that has one is refused by the reference ("wrong number of
//! tensors"), and so it is by the engine, naming the tensor.

use std::fmt;

/// A BitNet architecture, as `general.architecture` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    /// `bitnet-b1.58` (BitNet b1.58 2B-4T): `build_bitnet_158`.
    BitnetB158,
    /// `bitnet-25`: older conversions of the same model; the same graph as `bitnet-b1.58`.
    Bitnet25,
    /// `bitnet` (1bitLLM bitnet_b1_58-large and -3B, as bitnet.cpp converts them):
    /// `build_bitnet`, a SiLU-gated FFN and optional per-tensor `.scale` multipliers.
    Bitnet,
}

/// The FFN activation of a graph, applied to the gate before it multiplies the up projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FfnActivation {
    /// `ggml_relu` then `ggml_sqr` (`LLM_FFN_RELU_SQR`).
    ReluSqr,
    /// `ggml_silu` (`LLM_FFN_SILU`), whose vector form depends on the reference-build profile.
    Silu,
}

/// The names of `general.architecture` the engine runs.
pub const SUPPORTED_ARCHITECTURES: [&str; 3] =
    [Arch::ALL[0].name(), Arch::ALL[1].name(), Arch::ALL[2].name()];

/// Traced operations after the last layer.
pub const FINAL_OPS: [&str; 2] = ["result_norm", "result_output"];

impl Arch {
    /// Every architecture, in the order of [`SUPPORTED_ARCHITECTURES`].
    pub const ALL: [Arch; 3] = [Arch::BitnetB158, Arch::Bitnet25, Arch::Bitnet];

    /// The `general.architecture` string.
    pub const fn name(self) -> &'static str {
        match self {
            Arch::BitnetB158 => "bitnet-b1.58",
            Arch::Bitnet25 => "bitnet-25",
            Arch::Bitnet => "bitnet",
        }
    }

    /// The architecture named `name` (exactly, as the reference compares it), if supported.
    pub fn from_name(name: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The reference's graph builder for this architecture (in its `llama.cpp`).
    pub const fn graph(self) -> &'static str {
        match self {
            Arch::BitnetB158 | Arch::Bitnet25 => "build_bitnet_158",
            Arch::Bitnet => "build_bitnet",
        }
    }

    /// The FFN activation of the graph.
    pub const fn ffn_activation(self) -> FfnActivation {
        match self {
            Arch::BitnetB158 | Arch::Bitnet25 => FfnActivation::ReluSqr,
            Arch::Bitnet => FfnActivation::Silu,
        }
    }

    /// Whether the loader reads the optional `blk.N.{attn_q,attn_k,attn_v,attn_output,
    /// ffn_gate,ffn_up,ffn_down}.scale` multipliers (shape `[1]`).
    pub const fn has_scales(self) -> bool {
        matches!(self, Arch::Bitnet)
    }

    /// Whether the loader reads the optional `blk.N.{attn_q,attn_k,attn_v,attn_output}.bias`.
    pub const fn has_attn_biases(self) -> bool {
        !matches!(self, Arch::Bitnet)
    }

    /// The names of one layer's traced tensors, in the order the engine's hook reports them;
    /// each is the name the reference's eval callback gives the same tensor (`cb(cur, name,
    /// il)`, where a later `cb` on the same tensor renames it), in the order it reports them.
    /// `up_scale` and `gate_scale` say whether the layer has those multipliers: the reference
    /// then reports the product before (`ffn_up`) and after (`ffn_up_s`) the multiplication.
    pub fn layer_ops(self, up_scale: bool, gate_scale: bool) -> Vec<&'static str> {
        let mut v = vec![
            "attn_norm",
            "Qcur",
            "Kcur",
            "Vcur",
            "kqv_out",
            "attn_sub_norm",
            "attn_o_out",
            "ffn_inp",
            "ffn_norm",
        ];
        match self.ffn_activation() {
            // `llm_build_ffn`'s result (`ffn_gate_par`) is renamed `ffn_out` by the caller.
            FfnActivation::ReluSqr => v.extend(["ffn_gate", "ffn_up", "ffn_out"]),
            // The same result is renamed `ffn_sub_out` by `build_bitnet`.
            // In the order ggml evaluates them (the gate's branch first, as the reference's
            // eval callback sees them).
            FfnActivation::Silu => {
                v.push("ffn_gate");
                if gate_scale {
                    v.push("ffn_gate_s");
                }
                v.extend(["ffn_silu", "ffn_up"]);
                if up_scale {
                    v.push("ffn_up_s");
                }
                v.push("ffn_sub_out");
            }
        }
        v.extend(["ffn_sub_norm", "ffn_down", "l_out"]);
        v
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_the_supported_list() {
        for (a, name) in Arch::ALL.into_iter().zip(SUPPORTED_ARCHITECTURES) {
            assert_eq!(a.name(), name);
            assert_eq!(Arch::from_name(name), Some(a));
        }
        assert_eq!(Arch::from_name("llama"), None);
        assert_eq!(Arch::from_name("BITNET"), None);
    }

    #[test]
    fn b158_and_25_share_a_graph_and_bitnet_has_its_own() {
        assert_eq!(Arch::BitnetB158.graph(), Arch::Bitnet25.graph());
        assert_eq!(Arch::BitnetB158.layer_ops(false, false), Arch::Bitnet25.layer_ops(false, false));
        assert_eq!(Arch::BitnetB158.layer_ops(false, false).len(), 15);
        let ops = Arch::Bitnet.layer_ops(true, true);
        let ffn: Vec<&str> = ops[9..ops.len() - 3].to_vec();
        assert_eq!(ffn, ["ffn_gate", "ffn_gate_s", "ffn_silu", "ffn_up", "ffn_up_s", "ffn_sub_out"]);
        assert_eq!(Arch::Bitnet.layer_ops(false, false).len(), 16);
    }
}
