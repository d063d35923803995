//! Causal grouped-query attention of one query over the cached positions, summing exactly
//! the terms the reference sums (see `kv.rs`), for a range of heads (one part per thread).

use std::ops::Range;

use crate::ops::FloatKernel;

use super::config::Config;
use super::kv::{KvCache, KvStore};

/// Per-thread buffers of attention, allocated once.
pub struct AttnScratch {
    scores: Vec<f32>,
    q16: Vec<u16>,
    p16: Vec<u16>,
}

impl AttnScratch {
    pub fn new(n_ctx: usize, head_dim: usize) -> AttnScratch {
        AttnScratch { scores: vec![0.0; n_ctx], q16: vec![0; head_dim], p16: vec![0; n_ctx] }
    }
}

/// Writes the attention output of heads `heads` (each `head_dim` values) into `out`, for
/// the query `q` (all heads) at `pos` in layer `l`.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    c: &Config,
    cache: &KvCache,
    l: usize,
    pos: usize,
    q: &[f32],
    heads: Range<usize>,
    out: &mut [f32],
    sc: &mut AttnScratch,
    kernel: FloatKernel,
) {
    let hd = c.head_dim;
    let group = c.n_head / c.n_head_kv;
    let n_kv = cache.attended(pos);
    let d = cache.n_embd_kv;
    let n_ctx = cache.n_ctx;
    let kq_scale = 1.0 / (hd as f32).sqrt();
    let scores = &mut sc.scores[..n_kv];
    for (h, out_h) in heads.zip(out.chunks_exact_mut(hd)) {
        let kvh = h / group;
        let q_h = &q[h * hd..(h + 1) * hd];
        match &cache.layers[l] {
            KvStore::F16 { k, v } => {
                // The reference converts Q to f16 for K·Q and the softmax to f16 for V·softmax.
                kernel.f32_to_f16_row(q_h, &mut sc.q16);
                for (j, s) in scores.iter_mut().enumerate() {
                    let key = &k[j * d + kvh * hd..j * d + (kvh + 1) * hd];
                    *s = kernel.dot_f16(key, &sc.q16);
                }
                kernel.softmax_scaled(scores, pos + 1, kq_scale);
                let p16 = &mut sc.p16[..n_kv];
                kernel.f32_to_f16_row(scores, p16);
                for (i, o) in out_h.iter_mut().enumerate() {
                    let row = (kvh * hd + i) * n_ctx;
                    *o = kernel.dot_f16(&v[row..row + n_kv], p16);
                }
            }
            KvStore::F32 { k, v } => {
                for (j, s) in scores.iter_mut().enumerate() {
                    let key = &k[j * d + kvh * hd..j * d + (kvh + 1) * hd];
                    *s = kernel.dot_f32(key, q_h);
                }
                kernel.softmax_scaled(scores, pos + 1, kq_scale);
                for (i, o) in out_h.iter_mut().enumerate() {
                    let row = (kvh * hd + i) * n_ctx;
                    *o = kernel.dot_f32(&v[row..row + n_kv], scores);
                }
            }
        }
    }
}
