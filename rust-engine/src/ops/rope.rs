//! NEOX rotary position embedding, as `ggml_rope_ext` computes it (no YaRN scaling).
//!
//! NEOX rotates pairs `(i, i + d/2)` ("rotate halves"); the NORM mode used by Llama-2 GGUFs
//! rotates adjacent pairs `(2i, 2i+1)` instead. bitnet-b1.58 uses NEOX. The angles are
//! built exactly like ggml's cache: `theta_scale = powf(base, -2/d)` in f32, then
//! `theta_0 = pos`, `theta_{i+1} = theta_i · theta_scale`, with libm `cosf`/`sinf`.
//!
//! The rotation itself, `x0·cos − x1·sin` and `x0·sin + x1·cos`, is compiled by gcc
//! (`-O3 -march=native`, contraction on by default in GNU C) into one fused multiply-add
//! each: `fma(x0, cos, −(x1·sin))` and `fma(x0, sin, x1·cos)`. Measured against the
//! reference's captured `Qcur` on every element of a fixture; a reference built for a CPU
//! without FMA rounds both products separately (`fused = false`). On a CPU with FMA the NEOX
//! rotation runs eight pairs at a time (`avx2::rope_neox`, the same operations per lane);
//! a scalar `f32::mul_add` there is a call to libm's `fmaf`.

/// Pair layout of the rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RopeMode {
    /// Pairs `(i, i + d/2)`: bitnet-b1.58, Llama-3 HF conversions.
    Neox,
    /// Pairs `(2i, 2i + 1)`. Only reachable through fault injection here.
    Adjacent,
}

/// Rotation angles for one position, reusable without allocation.
#[derive(Debug, Clone)]
pub(crate) struct Rope {
    head_dim: usize,
    theta_scale: f32,
    cos: Vec<f32>,
    sin: Vec<f32>,
    pos: Option<usize>,
    /// The NEOX rotation eight pairs at a time, if the CPU has FMA (the same bits).
    #[cfg(target_arch = "x86_64")]
    simd: Option<super::avx2::Avx2Fma>,
}

impl Rope {
    pub(crate) fn new(head_dim: usize, freq_base: f32) -> Rope {
        Rope {
            head_dim,
            theta_scale: freq_base.powf(-2.0 / head_dim as f32),
            cos: vec![0.0; head_dim / 2],
            sin: vec![0.0; head_dim / 2],
            pos: None,
            #[cfg(target_arch = "x86_64")]
            simd: super::avx2::Avx2Fma::detect(),
        }
    }

    /// The same rotation computed by the scalar code alone (the SIMD path's oracle).
    #[cfg(test)]
    fn scalar(head_dim: usize, freq_base: f32) -> Rope {
        Rope {
            #[cfg(target_arch = "x86_64")]
            simd: None,
            ..Rope::new(head_dim, freq_base)
        }
    }

    fn prepare(&mut self, pos: usize) {
        if self.pos == Some(pos) {
            return;
        }
        let mut theta = pos as f32;
        for i in 0..self.head_dim / 2 {
            self.cos[i] = theta.cos();
            self.sin[i] = theta.sin();
            theta *= self.theta_scale;
        }
        self.pos = Some(pos);
    }

    /// Rotates every head of `x` (`n_heads × head_dim`, heads contiguous) for position `pos`.
    pub(crate) fn apply(&mut self, x: &mut [f32], pos: usize, mode: RopeMode) {
        self.prepare(pos);
        let d = self.head_dim;
        let half = d / 2;
        #[cfg(target_arch = "x86_64")]
        if let (Some(t), RopeMode::Neox) = (self.simd, mode) {
            for head in x.chunks_exact_mut(d) {
                super::avx2::rope_neox(t, head, &self.cos, &self.sin);
            }
            return;
        }
        for head in x.chunks_exact_mut(d) {
            for i in 0..half {
                let (a, b) = match mode {
                    RopeMode::Neox => (i, i + half),
                    RopeMode::Adjacent => (2 * i, 2 * i + 1),
                };
                let (x0, x1) = (head[a], head[b]);
                let (c, s) = (self.cos[i], self.sin[i]);
                // Fused multiply-adds, as an FMA build of the reference contracts them.
                head[a] = x0.mul_add(c, -(x1 * s));
                head[b] = x0.mul_add(s, x1 * c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SIMD rotation equals the scalar one bit for bit, on head sizes with and without
    /// leftover pairs and on hard values (infinities, NaN, subnormals, huge products).
    #[test]
    fn simd_equals_scalar() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for head_dim in [128usize, 64, 20, 2] {
            let x: Vec<f32> = (0..4 * head_dim)
                .map(|_| match next() % 16 {
                    0 => [f32::INFINITY, f32::NAN, -3e38, 1e-40, -0.0][(next() % 5) as usize],
                    r => ((next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 10f32.powi(r as i32 % 7 - 3),
                })
                .collect();
            for pos in [0usize, 1, 17, 511, 100_000] {
                let (mut a, mut b) = (x.clone(), x.clone());
                Rope::new(head_dim, 10000.0).apply(&mut a, pos, RopeMode::Neox);
                Rope::scalar(head_dim, 10000.0).apply(&mut b, pos, RopeMode::Neox);
                for (i, (u, v)) in a.iter().zip(&b).enumerate() {
                    assert!(
                        u.to_bits() == v.to_bits() || (u.is_nan() && v.is_nan()),
                        "d={head_dim} pos={pos} {i}"
                    );
                }
            }
        }
    }

    #[test]
    fn position_zero_is_identity_and_norm_is_kept() {
        let mut r = Rope::new(8, 10000.0);
        let orig: Vec<f32> = (0..16).map(|i| i as f32 - 3.5).collect();
        let mut x = orig.clone();
        r.apply(&mut x, 0, RopeMode::Neox);
        assert_eq!(x, orig);
        r.apply(&mut x, 17, RopeMode::Neox);
        let n0: f32 = orig.iter().map(|v| v * v).sum();
        let n1: f32 = x.iter().map(|v| v * v).sum();
        assert!((n0 - n1).abs() / n0 < 1e-5);
        // NEOX pairs element 0 with element 4 (half of 8): element 0 moved, using element 4.
        assert_ne!(x[0], orig[0]);
    }
}
