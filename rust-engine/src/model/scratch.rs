//! Activations of the forward pass for up to `cap` tokens, allocated at load for one token and
//! again only when a longer batch first arrives: nothing is allocated per token.
//!
//! Per-token vectors are token-major (`x[t·n_embd..]`); the outputs of the matrix products
//! are row-major (`t*[r·n + t]`, all tokens of a row together) so that each thread's rows
//! are one contiguous slice, and are copied out token-major afterwards.

use crate::quant::Qk256Kernel;

use super::config::Config;
use super::weights::LinearInput;

pub(super) struct Scratch {
    /// Tokens the buffers hold.
    pub cap: usize,
    pub x: Vec<f32>,
    pub h: Vec<f32>,
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub attn: Vec<f32>,
    pub o: Vec<f32>,
    pub gate: Vec<f32>,
    pub up: Vec<f32>,
    pub ff: Vec<f32>,
    /// Row-major products: Q (also O and down), K, V, gate, up.
    pub tq: Vec<f32>,
    pub tk: Vec<f32>,
    pub tv: Vec<f32>,
    pub tg: Vec<f32>,
    pub tu: Vec<f32>,
    pub logits: Vec<f32>,
    /// The logits of every position of a [`super::Model::decode_batch`] call, row after row
    /// (grown on the first call that needs more).
    pub batch_logits: Vec<f32>,
    /// The lm_head's row-major product (`n_vocab × cap`) in the batched path (made by its
    /// first call).
    pub head: Vec<f32>,
    pub input: LinearInput,
}

impl Scratch {
    pub(super) fn new(c: &Config, cap: usize, kernel: Qk256Kernel) -> Scratch {
        let (e, kv, f) = (c.n_embd * cap, c.n_embd_kv() * cap, c.n_ff * cap);
        Scratch {
            cap,
            x: vec![0.0; e],
            h: vec![0.0; e],
            q: vec![0.0; e],
            k: vec![0.0; kv],
            v: vec![0.0; kv],
            attn: vec![0.0; e],
            o: vec![0.0; e],
            gate: vec![0.0; f],
            up: vec![0.0; f],
            ff: vec![0.0; f],
            tq: vec![0.0; e],
            tk: vec![0.0; kv],
            tv: vec![0.0; kv],
            tg: vec![0.0; f],
            tu: vec![0.0; f],
            logits: vec![0.0; c.n_vocab],
            batch_logits: Vec::new(),
            head: Vec::new(),
            input: LinearInput::new(cap, c.n_embd.max(c.n_ff), kernel),
        }
    }
}
