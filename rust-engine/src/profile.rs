//! Reference-build profiles: the float numerics that depend on the ISA bitnet.cpp was compiled
//! for.
//!
//! The reference is built with `-march=native` by default, and ggml's float helpers are
//! compiled for whatever that enables. The same source therefore computes other bits on an
//! AVX-512 CPU than on an AVX2 one. A profile names one such set of numerics; the engine
//! mirrors the profile of the build it faces, whatever CPU the engine itself runs on (the
//! kernel that computes, scalar, AVX2 or AVX-512, is a separate choice and never changes a bit).
//!
//! What differs, read in `3rdparty/llama.cpp/ggml/src/ggml.c` of `bitnet-llm-sys` 1.0.2:
//!
//! | operation | [`RefProfile::Avx2`] (`__AVX2__`, `__FMA__`, `__F16C__`) | [`RefProfile::Avx512`] (`__AVX512F__`, `__AVX512DQ__`) |
//! |---|---|---|
//! | `ggml_vec_dot_f16`, `ggml_vec_dot_f32` | 4 accumulators × 8 lanes, 32 elements a step; `GGML_F32x8_REDUCE` (accumulators 0+2, 1+3, 0+1, 128-bit halves, two `hadd`) | 4 × 16 lanes, 64 a step; accumulators 0+2, 1+3, 0+1, then gcc's `_mm512_reduce_add_ps` (256-bit halves, 128-bit halves, lanes 0+2 and 1+3, then those two) |
//! | leftovers of those dots | `n mod 32` (F16: each product added in f64; F32: in f32) | `n mod 64`, the same way |
//! | `ggml_v_expf` | ends `k + k·j` with `k = 2ⁿ` built from the exponent bits, special cases past `|n| > 126` | ends `scalef(j, n)` with the `+1` inside `j`; special cases past `|n| > 192` only |
//! | `ggml_vec_soft_max_f32` | groups of 8, each group's horizontal sum (hi+lo, movehl, movehdup) added in f64 | groups of 16, each group's `_mm512_reduce_add_ps` added in f64 |
//! | `ggml_vec_silu_f32` | `x / (1 + exp(−x))` 8 at a time with that `expf` | 16 at a time with that `expf` |
//! | `ggml_vec_dot_bf16` (a BF16 head) | 4 accumulators × 8 lanes, 32 elements a step (FMA; bf16 products are exact); accumulators (0+2)+(1+3), `hsum_float_8`; the rest in f64 | **with AVX512BF16**: 2 accumulators × 16 lanes of `VDPBF16PS` (odd then even products, each step an FMA with subnormals flushed), 64 a step; each `_mm512_reduce_add_ps` added in f64; the rest in f64 |
//! | `ggml_fp32_to_bf16_row` (its input) | one at a time, round to nearest even | **with AVX512BF16**: groups of 32 by `_mm512_cvtne2ps_pbh` (subnormals become ±0), the rest one at a time |
//!
//! Everything else on the forward pass is the same on both builds: the I2_S kernels and
//! `quantize_row_i8_s` (integer sums, no AVX-512 path), RMSNorm (a scalar f64 sum), RoPE
//! (scalar, fused by gcc on both since AVX-512F implies FMA), the f16 conversions (round to
//! nearest even either way), element-wise products, and the Q8_0, Q4_K and Q6_K heads (their
//! `__AVX2__` code on both: `quantize_row_q8_0` / `quantize_row_q8_K_ref`, the dots, the
//! `dequantize_row_*` of the embedding; see `ops/blocks.rs` and `ops/qdot.rs`).
//!
//! **The BF16 assumption.** [`RefProfile::Avx512`] is chosen from AVX-512F and DQ, but the
//! BF16 head's numerics come from AVX512BF16: every AVX-512 CPU this project has seen (Zen 4,
//! Sapphire Rapids) has it. A build with AVX-512F but without AVX512BF16 (Skylake-SP, Ice Lake)
//! compiles a third BF16 dot (2 × 16 lanes of multiply then add, 32 elements a step) and the
//! scalar activation conversion; the engine does not mirror it. Everything else about such a
//! build is the AVX-512 profile's. [`bf16_caveat`] says when a build is one of these.

use std::fmt;

/// The numerics of one kind of reference build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefProfile {
    /// A build for AVX2 + FMA + F16C without AVX-512 (`-march=x86-64-v3`, Zen 3, Haswell...).
    Avx2,
    /// A build with AVX-512F and AVX-512DQ (`-march=native` on Zen 4, Skylake-SP, Sapphire
    /// Rapids...; AVX512-FP16, VNNI and AMX do not change these numbers; a BF16 head assumes
    /// AVX512BF16, see [`bf16_caveat`]).
    Avx512,
}

/// Why a build's ISA has no profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoProfile {
    /// The ISA macros that decide, as the build defined them (those of [`DECIDING_MACROS`]).
    pub present: Vec<String>,
    /// One sentence: what the engine would need to mirror it.
    pub reason: String,
}

impl fmt::Display for NoProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (deciding macros: {})", self.reason, self.present.join(" "))
    }
}

/// The ISA macros that select ggml's float code paths on x86 (and the one that takes it
/// elsewhere entirely).
pub const DECIDING_MACROS: &[&str] =
    &["__AVX512F__", "__AVX512DQ__", "__AVX2__", "__AVX__", "__FMA__", "__F16C__", "__ARM_NEON"];

impl RefProfile {
    /// Every profile, in order of the ISA's age.
    pub const ALL: [RefProfile; 2] = [RefProfile::Avx2, RefProfile::Avx512];

    /// `"avx2"` or `"avx512"`: the name in receipts and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            RefProfile::Avx2 => "avx2",
            RefProfile::Avx512 => "avx512",
        }
    }

    /// The profile named `s` ([`name`](Self::name)), if any.
    pub fn parse(s: &str) -> Option<RefProfile> {
        RefProfile::ALL.into_iter().find(|p| p.name() == s)
    }

    /// f32 lanes of one vector in the reference's float code: 8 or 16.
    pub fn lanes(self) -> usize {
        match self {
            RefProfile::Avx2 => 8,
            RefProfile::Avx512 => 16,
        }
    }

    /// The profile of a build compiled with these ISA macros (as `gcc -dM -E` lists them, in
    /// the reference's build-info), or why there is none.
    pub fn from_isa_macros<S: AsRef<str>>(macros: &[S]) -> Result<RefProfile, NoProfile> {
        let has = |m: &str| macros.iter().any(|x| x.as_ref() == m);
        let present: Vec<String> = DECIDING_MACROS.iter().filter(|m| has(m)).map(|m| m.to_string()).collect();
        let none = |reason: &str| Err(NoProfile { present: present.clone(), reason: reason.to_string() });
        if has("__ARM_NEON") {
            return none("an ARM (NEON) build: its float code is not mirrored");
        }
        match (has("__AVX512F__"), has("__AVX512DQ__")) {
            (true, true) => return Ok(RefProfile::Avx512),
            // ggml's dots take 16 lanes from AVX-512F alone, its expf needs DQ as well.
            (true, false) => {
                return none("AVX-512F without AVX-512DQ mixes 16-lane dots with 8-lane softmax")
            }
            _ => {}
        }
        if has("__AVX2__") && has("__FMA__") && has("__F16C__") {
            return Ok(RefProfile::Avx2);
        }
        none("no AVX2 with FMA and F16C: ggml's 4-lane or scalar float code is not mirrored")
    }

    /// The profile of a `-march=native` build of the reference on this CPU.
    pub fn host() -> RefProfile {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512dq") {
                return RefProfile::Avx512;
            }
        }
        RefProfile::Avx2
    }
}

/// Why a BF16 head would not be bit-exact against a build with these ISA macros, if it would
/// not: an AVX-512 build without AVX512BF16 (see the module docs). `None` for every build
/// whose BF16 numerics a profile mirrors.
pub fn bf16_caveat<S: AsRef<str>>(macros: &[S]) -> Option<&'static str> {
    let has = |m: &str| macros.iter().any(|x| x.as_ref() == m);
    (has("__AVX512F__") && !has("__AVX512BF16__")).then_some(
        "an AVX-512 build without AVX512BF16 computes the BF16 lm_head with 16-lane multiply-adds \
         that no profile mirrors: a BF16 head will not be bit-exact",
    )
}

impl fmt::Display for RefProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_follow_the_macros_ggml_tests() {
        let v3 = ["__AVX__", "__AVX2__", "__FMA__", "__F16C__", "__SSE2__"];
        assert_eq!(RefProfile::from_isa_macros(&v3), Ok(RefProfile::Avx2));
        let zen4 = [&v3[..], &["__AVX512F__", "__AVX512DQ__", "__AVX512BW__", "__AVX512VNNI__"]].concat();
        assert_eq!(RefProfile::from_isa_macros(&zen4), Ok(RefProfile::Avx512));
        let spr = [&zen4[..], &["__AVX512FP16__", "__AMX_TILE__", "__AVXVNNI__"]].concat();
        assert_eq!(RefProfile::from_isa_macros(&spr), Ok(RefProfile::Avx512));
        let knl = [&v3[..], &["__AVX512F__"]].concat();
        assert!(RefProfile::from_isa_macros(&knl).unwrap_err().reason.contains("AVX-512DQ"));
        let sandy = ["__AVX__", "__SSE2__"];
        let err = RefProfile::from_isa_macros(&sandy).unwrap_err();
        assert_eq!(err.present, ["__AVX__"]);
        assert!(RefProfile::from_isa_macros(&["__ARM_NEON"]).is_err());
        assert!(RefProfile::from_isa_macros::<&str>(&[]).is_err());
    }

    #[test]
    fn only_avx512_builds_without_bf16_have_the_bf16_caveat() {
        let v3 = ["__AVX__", "__AVX2__", "__FMA__", "__F16C__"];
        assert_eq!(bf16_caveat(&v3), None);
        let skx = [&v3[..], &["__AVX512F__", "__AVX512DQ__"]].concat();
        assert!(bf16_caveat(&skx).is_some());
        let zen4 = [&skx[..], &["__AVX512BF16__"]].concat();
        assert_eq!(bf16_caveat(&zen4), None);
    }

    #[test]
    fn names_round_trip() {
        for p in RefProfile::ALL {
            assert_eq!(RefProfile::parse(p.name()), Some(p));
        }
        assert_eq!(RefProfile::parse("avx10"), None);
    }
}
