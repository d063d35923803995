//! The key/value cache, laid out like the reference's so that attention sums the same
//! terms in the same order.
//!
//! Keys: one row of `n_embd_kv` per position. Values: transposed, one row of `n_ctx` per
//! value dimension (the reference's `v_trans` layout), so the attention-weighted sum is a
//! contiguous dot product over positions. Capacity is padded to a multiple of 32 and
//! zero-filled: the reference attends over a range padded to 32 cells whose unused cells
//! are zero and masked, and its lane grouping depends on that padded length.

use crate::ops::{f32_to_f16, FloatKernel};

use super::numerics::Numerics;

/// The reference pads both the context and the attended range to this many cells
/// (`llama_kv_cache_get_padding` without flash attention).
pub const KV_PAD: usize = 32;

/// Stored as f16 (the reference's default cache type) or as f32 (rounding switch off).
pub(super) enum KvStore {
    F16 { k: Vec<u16>, v: Vec<u16> },
    F32 { k: Vec<f32>, v: Vec<f32> },
}

pub(super) struct KvCache {
    pub n_ctx: usize,
    pub n_embd_kv: usize,
    pub layers: Vec<KvStore>,
    /// Positions `0..filled` hold keys and values.
    pub filled: usize,
}

impl KvCache {
    /// A cache of `n_ctx` positions (rounded up to [`KV_PAD`]), stored as f16 exactly when
    /// `nx.exact_rounding` (attention relies on that).
    pub(super) fn new(n_layer: usize, n_ctx: usize, n_embd_kv: usize, nx: Numerics) -> KvCache {
        let f16 = nx.exact_rounding;
        let n_ctx = n_ctx.next_multiple_of(KV_PAD);
        let len = n_ctx * n_embd_kv;
        let layers = (0..n_layer)
            .map(|_| {
                if f16 {
                    KvStore::F16 { k: vec![0; len], v: vec![0; len] }
                } else {
                    KvStore::F32 { k: vec![0.0; len], v: vec![0.0; len] }
                }
            })
            .collect();
        KvCache { n_ctx, n_embd_kv, layers, filled: 0 }
    }

    /// Forgets every position (values are zeroed, as the reference clears its buffer).
    pub(super) fn clear(&mut self) {
        for l in &mut self.layers {
            match l {
                KvStore::F16 { k, v } => {
                    k.fill(0);
                    v.fill(0);
                }
                KvStore::F32 { k, v } => {
                    k.fill(0.0);
                    v.fill(0.0);
                }
            }
        }
        self.filled = 0;
    }

    /// Stores the key and value of layer `l` at `pos` (rounded to f16 through `nx.kernel` for
    /// an f16 cache).
    pub(super) fn store(&mut self, l: usize, pos: usize, key: &[f32], value: &[f32], nx: Numerics) {
        let kernel: FloatKernel = nx.kernel;
        let (n_ctx, d) = (self.n_ctx, self.n_embd_kv);
        match &mut self.layers[l] {
            KvStore::F16 { k, v } => {
                kernel.f32_to_f16_row(key, &mut k[pos * d..(pos + 1) * d]);
                // The value column goes to a transposed layout: convert in groups of eight
                // with the row kernel, then scatter.
                let mut buf = [0u16; 8];
                let mut chunks = value.chunks_exact(8);
                for (g, c) in (&mut chunks).enumerate() {
                    kernel.f32_to_f16_row(c, &mut buf);
                    for (i, &h) in buf.iter().enumerate() {
                        v[(8 * g + i) * n_ctx + pos] = h;
                    }
                }
                let done = value.len() - chunks.remainder().len();
                for (i, &x) in chunks.remainder().iter().enumerate() {
                    v[(done + i) * n_ctx + pos] = f32_to_f16(x);
                }
            }
            KvStore::F32 { k, v } => {
                k[pos * d..(pos + 1) * d].copy_from_slice(key);
                for (i, &x) in value.iter().enumerate() {
                    v[i * n_ctx + pos] = x;
                }
            }
        }
    }

    /// How many cells the reference attends over when the last filled position is `pos`:
    /// `pos + 1` rounded up to 32, at most the (padded) context.
    pub(super) fn attended(&self, pos: usize) -> usize {
        (pos + 1).next_multiple_of(KV_PAD).min(self.n_ctx)
    }
}
