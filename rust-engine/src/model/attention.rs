//! Causal grouped-query attention of one query over the cached positions, summing exactly
//! the terms the reference sums (see `kv.rs`), for a range of heads (one part per thread).
//!
//! In a ubatch of several tokens (`llama_decode` with a batch, see [`Ubatch`]) the reference
//! attends over the cells of the whole ubatch (`kv_self.n` = the filled cells rounded up to
//! 32, the later tokens' cells masked with −inf), and its `V·softmax` is a product of two
//! matrices with ≥ 2 columns (`kq` is `n_kv × n_tokens × n_head`, contiguous): llamafile's
//! tinyBLAS takes it, with the softmax **unrounded** (F32 `B`), where one token's
//! `ggml_vec_dot_f16` rounds it to f16 (`ops/tinyblas.rs`). `K·Q` stays `ggml_vec_dot_f16`
//! with `Q` rounded to f16 in both paths: `q` is a permuted view (`ggml_permute(q_cur, 0, 2,
//! 1, 3)`), not contiguous, so sgemm's first offer is skipped, and its second (after `Q` is
//! converted to F16, the `vec_dot_type`) is declined on x86 (F16 `A` wants an F32 `B`).

use crate::ops::tinyblas::{self, TinyRow};
use crate::parallel::Rows;

use super::config::Config;
use super::kv::{KvCache, KvStore};
use super::numerics::Numerics;

/// Per-thread buffers of attention, allocated once.
pub(super) struct AttnScratch {
    scores: Vec<f32>,
    /// A head's query rounded through f16.
    q: Vec<f32>,
}

impl AttnScratch {
    pub(super) fn new(n_ctx: usize, head_dim: usize) -> AttnScratch {
        AttnScratch { scores: vec![0.0; n_ctx], q: vec![0.0; head_dim] }
    }
}

/// The ubatch a token is evaluated in, as the reference's `llama_decode` splits a batch:
/// `len` tokens, the last at position `last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ubatch {
    pub last: usize,
    pub len: usize,
}

/// Attention over one layer's cache, with the model's numerics.
pub(super) struct Attention<'m> {
    pub c: &'m Config,
    pub cache: &'m KvCache,
    pub nx: Numerics,
    /// The ubatch of the batched path; `None` for one token at a time (`eval`).
    pub ubatch: Option<Ubatch>,
}

impl Attention<'_> {
    /// Heads `out.range` of the attention output of the query `q` (n_head × head_dim) at
    /// `pos` in layer `l`: for each head h (KV head h / group),
    /// scores (n_kv) = K_h · q_h, p = softmax(scores · 1/sqrt(head_dim)) over `0..=pos`,
    /// out_h (head_dim) = V_h · p.
    ///
    /// With [`Numerics::exact_rounding`] the reference's f16 roundings apply: K and V are
    /// f16 in the cache, q_h is rounded to f16 before `K·q` and p before `V·p` (except in a
    /// ubatch of several tokens, whose `V·p` is tinyBLAS's, with p unrounded).
    pub(super) fn heads(&self, l: usize, pos: usize, q: &[f32], out: Rows<'_, f32>, sc: &mut AttnScratch) {
        let (c, kernel) = (self.c, self.nx.kernel);
        let hd = c.head_dim;
        let group = c.n_head / c.n_head_kv;
        let n_kv = self.cache.attended(self.ubatch.map_or(pos, |u| u.last));
        // tinyBLAS takes `V·softmax` (k = n_kv, a multiple of 32) for ≥ 2 columns.
        let tiny = self.ubatch.is_some_and(|u| tinyblas::takes(kernel.profile(), n_kv, u.len));
        let d = self.cache.n_embd_kv;
        let n_ctx = self.cache.n_ctx;
        let kq_scale = 1.0 / (hd as f32).sqrt();
        let scores = &mut sc.scores[..n_kv];
        for (h, out_h) in out.range.zip(out.data.chunks_exact_mut(hd)) {
            let kvh = h / group;
            let q_h = &q[h * hd..(h + 1) * hd];
            match (self.nx.exact_rounding, &self.cache.layers[l]) {
                (true, KvStore::F16 { k, v }) => {
                    // q_h and p rounded to f16 as the reference rounds them, kept as f32 (the
                    // products are the same): converted once, not once per key or value row.
                    sc.q.copy_from_slice(q_h);
                    kernel.round_through_f16(&mut sc.q);
                    // Only the unmasked cells: softmax replaces every later score with −∞.
                    kernel.dot_f16_strided(&k[kvh * hd..], d, &sc.q, &mut scores[..=pos]);
                    kernel.softmax_scaled(scores, pos + 1, kq_scale);
                    if tiny {
                        for (i, o) in out_h.iter_mut().enumerate() {
                            let row = (kvh * hd + i) * n_ctx;
                            [*o] = kernel.tinyblas(TinyRow::F16(&v[row..row + n_kv]), [&*scores]);
                        }
                        continue;
                    }
                    kernel.round_through_f16(scores);
                    kernel.dot_f16_strided(&v[kvh * hd * n_ctx..], n_ctx, scores, out_h);
                }
                (false, KvStore::F32 { k, v }) => {
                    for (j, s) in scores.iter_mut().enumerate() {
                        let key = &k[j * d + kvh * hd..j * d + (kvh + 1) * hd];
                        *s = kernel.dot_f32(key, q_h);
                    }
                    kernel.softmax_scaled(scores, pos + 1, kq_scale);
                    for (i, o) in out_h.iter_mut().enumerate() {
                        let row = (kvh * hd + i) * n_ctx;
                        let vr = &v[row..row + n_kv];
                        *o = if tiny {
                            kernel.tinyblas(TinyRow::F32(vr), [&*scores])[0]
                        } else {
                            kernel.dot_f32(vr, scores)
                        };
                    }
                }
                _ => unreachable!("the KV cache is made f16 exactly when Numerics::exact_rounding"),
            }
        }
    }
}
