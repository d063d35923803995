//! The bitnet-b1.58 forward pass, one token at a time, with a KV cache.
//!
//! Per layer, as the reference's `build_bitnet_158` (names are what the hook reports):
//! `attn_norm` → `Qcur`/`Kcur`/`Vcur` (I2_S matmuls, optional biases, NEOX RoPE on Q and K)
//! → attention (`kqv_out`) → `attn_sub_norm` → `attn_o_out` → `ffn_inp` (residual) →
//! `ffn_norm` → `ffn_gate`, `ffn_up` → `ffn_out` = relu(gate)²·up → `ffn_sub_norm` →
//! `ffn_down` → `l_out` (residual). Then `result_norm` and `result_output` (the logits).
//!
//! Like the reference's graph for this architecture, the lm_head is always `token_embd`
//! (even when an `output.weight` exists: the reference loads it and never uses it).
//!
//! With [`ModelOptions::exact_reference_rounding`] (the default) the engine also rounds
//! where the reference's default context does: keys and values stored as f16, the query
//! rounded to f16 before `K·Q`, the softmax output rounded to f16 before `V·softmax`, and
//! the input of an F16 matrix (the lm_head) rounded to f16. Switched off, all of those
//! stay f32, which shows how much of any difference the roundings explain.

mod config;
mod error;
mod fault;
mod kv;
mod weights;

use crate::gguf::GgufFile;
use crate::ops::{self, rope::RopeMode, Rope};
use crate::quant::{kernel_name, FlavorDetection};

pub use config::{Config, SUPPORTED_ARCHITECTURES};
pub use error::ModelError;
pub use fault::{Fault, FaultKind};
pub use kv::KV_PAD;
use kv::{KvCache, KvStore};
use weights::{load_layer, load_linear, load_vector, scale_idx, Layer, Linear, LinearScratch};

/// How to run the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelOptions {
    /// Context size (positions the KV cache holds); rounded up to a multiple of 32.
    pub n_ctx: usize,
    /// Mirror the reference's f16 roundings (see the module docs). On by default.
    pub exact_reference_rounding: bool,
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions { n_ctx: 512, exact_reference_rounding: true }
    }
}

/// A loaded model borrowing its weights from the GGUF map.
pub struct Model<'a> {
    config: Config,
    options: ModelOptions,
    token_embd: Linear<'a>,
    output_norm: Vec<f32>,
    layers: Vec<Layer<'a>>,
    flavors: Vec<(String, FlavorDetection)>,
    rope: Rope,
    cache: KvCache,
    s: Scratch,
    fault: Option<Fault>,
}

/// Activations of one token, allocated once.
struct Scratch {
    x: Vec<f32>,
    h: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    o: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    ff: Vec<f32>,
    scores: Vec<f32>,
    q16: Vec<u16>,
    p16: Vec<u16>,
    logits: Vec<f32>,
    lin: LinearScratch,
}

/// Receives named intermediate tensors (`attn_norm-0`, ..., `result_norm`).
pub type Hook<'h> = &'h mut dyn FnMut(&str, &[f32]);

impl<'a> Model<'a> {
    /// Reads hyper-parameters and weights; every missing tensor or wrong shape is an error
    /// naming it.
    pub fn load(file: &'a GgufFile, options: ModelOptions) -> Result<Model<'a>, ModelError> {
        let config = Config::from_gguf(file)?;
        let c = &config;
        let mut flavors = Vec::new();
        let token_embd = load_linear(file, "token_embd.weight", c.n_embd, c.n_vocab, &mut flavors)?;
        let output_norm = load_vector(file, "output_norm.weight", c.n_embd)?;
        let layers =
            (0..c.n_layer).map(|l| load_layer(file, c, l, &mut flavors)).collect::<Result<Vec<_>, _>>()?;
        let n_ctx = options.n_ctx.max(1);
        let cache = KvCache::new(c.n_layer, n_ctx, c.n_embd_kv(), options.exact_reference_rounding);
        let s = Scratch {
            x: vec![0.0; c.n_embd],
            h: vec![0.0; c.n_embd],
            q: vec![0.0; c.n_embd],
            k: vec![0.0; c.n_embd_kv()],
            v: vec![0.0; c.n_embd_kv()],
            attn: vec![0.0; c.n_embd],
            o: vec![0.0; c.n_embd],
            gate: vec![0.0; c.n_ff],
            up: vec![0.0; c.n_ff],
            ff: vec![0.0; c.n_ff],
            scores: vec![0.0; cache.n_ctx],
            q16: vec![0; c.head_dim],
            p16: vec![0; cache.n_ctx],
            logits: vec![0.0; c.n_vocab],
            lin: LinearScratch::new(c.n_embd.max(c.n_ff)),
        };
        Ok(Model {
            rope: Rope::new(c.head_dim, c.rope_freq_base),
            config,
            options,
            token_embd,
            output_norm,
            layers,
            flavors,
            cache,
            s,
            fault: None,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn options(&self) -> &ModelOptions {
        &self.options
    }

    /// Context size actually allocated (the requested one rounded up to 32).
    pub fn n_ctx(&self) -> usize {
        self.cache.n_ctx
    }

    /// The I2_S flavour detected for each ternary tensor, in load order.
    pub fn flavors(&self) -> &[(String, FlavorDetection)] {
        &self.flavors
    }

    /// Name of the QK256 kernel in use (`avx2`, `scalar`).
    pub fn kernel_name(&self) -> &'static str {
        kernel_name()
    }

    /// Injects a deliberate fault (see [`Fault`]), or removes it with `None`. For proving that
    /// layer tracing finds the operation that differs; never used in a normal run.
    pub fn set_fault(&mut self, fault: Option<Fault>) {
        self.fault = fault;
    }

    /// Forgets the KV cache.
    pub fn reset(&mut self) {
        self.cache.clear();
    }

    /// Evaluates `token` at `pos` and returns the logits. Positions must be evaluated in
    /// order from 0 (re-evaluating an earlier position overwrites it and forgets the ones after).
    pub fn eval(&mut self, token: u32, pos: usize) -> Result<&[f32], ModelError> {
        self.eval_with(token, pos, None)
    }

    /// [`eval`](Self::eval), handing every named intermediate tensor to `hook`.
    pub fn eval_traced(&mut self, token: u32, pos: usize, hook: Hook<'_>) -> Result<&[f32], ModelError> {
        self.eval_with(token, pos, Some(hook))
    }

    fn eval_with(
        &mut self,
        token: u32,
        pos: usize,
        mut hook: Option<Hook<'_>>,
    ) -> Result<&[f32], ModelError> {
        let c = &self.config;
        if token as usize >= c.n_vocab {
            return Err(ModelError::TokenOutOfRange { token, n_vocab: c.n_vocab });
        }
        if pos >= self.cache.n_ctx {
            return Err(ModelError::ContextFull { pos, n_ctx: self.cache.n_ctx });
        }
        if pos > self.cache.filled {
            return Err(ModelError::PositionGap { pos, filled: self.cache.filled });
        }
        let exact = self.options.exact_reference_rounding;
        let mut emit = |name: &str, layer: Option<usize>, t: &[f32]| {
            if let Some(h) = hook.as_mut() {
                match layer {
                    Some(l) => h(&format!("{name}-{l}"), t),
                    None => h(name, t),
                }
            }
        };
        let s = &mut self.s;
        self.token_embd.row(token as usize, &mut s.x);
        emit("inp_embd", None, &s.x);

        for (l, layer) in self.layers.iter().enumerate() {
            let lin = &mut s.lin;
            // Attention block.
            ops::rms_norm(&s.x, &layer.attn_norm, c.rms_eps, &mut s.h);
            emit("attn_norm", Some(l), &s.h);
            // One quantization of attn_norm serves Q, K and V (the reference quantizes the
            // same input three times, with identical results).
            lin.acts.quantize(&s.h);
            project(&layer.wq, &s.h, &mut s.q, lin, layer.scales[scale_idx::Q], layer.bq.as_deref(), exact);
            project(&layer.wk, &s.h, &mut s.k, lin, layer.scales[scale_idx::K], layer.bk.as_deref(), exact);
            project(&layer.wv, &s.h, &mut s.v, lin, layer.scales[scale_idx::V], layer.bv.as_deref(), exact);
            let fault = |kind: FaultKind| self.fault.is_some_and(|f| f.hits(kind, l));
            let rope_mode = if fault(FaultKind::RopeAdjacent) { RopeMode::Adjacent } else { RopeMode::Neox };
            self.rope.apply(&mut s.q, pos, rope_mode);
            self.rope.apply(&mut s.k, pos, rope_mode);
            emit("Qcur", Some(l), &s.q);
            emit("Kcur", Some(l), &s.k);
            emit("Vcur", Some(l), &s.v);
            self.cache.store(l, pos, &s.k, &s.v);
            attention(c, &self.cache, l, pos, &s.q, &mut s.attn, &mut s.scores, &mut s.q16, &mut s.p16);
            emit("kqv_out", Some(l), &s.attn);
            if fault(FaultKind::SkipAttnSubNorm) {
                s.h.copy_from_slice(&s.attn);
            } else {
                ops::rms_norm(&s.attn, &layer.attn_sub_norm, c.rms_eps, &mut s.h);
            }
            emit("attn_sub_norm", Some(l), &s.h);
            lin.acts.quantize(&s.h);
            project(&layer.wo, &s.h, &mut s.o, lin, layer.scales[scale_idx::O], layer.bo.as_deref(), exact);
            emit("attn_o_out", Some(l), &s.o);
            ops::add_assign(&mut s.x, &s.o);
            emit("ffn_inp", Some(l), &s.x);

            // Feed-forward block.
            ops::rms_norm(&s.x, &layer.ffn_norm, c.rms_eps, &mut s.h);
            emit("ffn_norm", Some(l), &s.h);
            lin.acts.quantize(&s.h);
            project(&layer.ffn_gate, &s.h, &mut s.gate, lin, layer.scales[scale_idx::GATE], None, exact);
            project(&layer.ffn_up, &s.h, &mut s.up, lin, layer.scales[scale_idx::UP], None, exact);
            emit("ffn_gate", Some(l), &s.gate);
            emit("ffn_up", Some(l), &s.up);
            ops::relu_sqr_mul(&mut s.gate, &s.up);
            emit("ffn_out", Some(l), &s.gate);
            if fault(FaultKind::SkipFfnSubNorm) {
                s.ff.copy_from_slice(&s.gate);
            } else {
                ops::rms_norm(&s.gate, &layer.ffn_sub_norm, c.rms_eps, &mut s.ff);
            }
            emit("ffn_sub_norm", Some(l), &s.ff);
            lin.acts.quantize(&s.ff);
            project(&layer.ffn_down, &s.ff, &mut s.o, lin, layer.scales[scale_idx::DOWN], None, exact);
            emit("ffn_down", Some(l), &s.o);
            ops::add_assign(&mut s.x, &s.o);
            emit("l_out", Some(l), &s.x);
        }
        self.cache.filled = pos + 1;

        ops::rms_norm(&s.x, &self.output_norm, c.rms_eps, &mut s.h);
        emit("result_norm", None, &s.h);
        let quantized = false;
        self.token_embd.forward(&s.h, &mut s.logits, &mut s.lin, quantized, exact);
        emit("result_output", None, &s.logits);
        Ok(&self.s.logits)
    }
}

/// `out = W·x` (x already quantized in `lin.acts` for ternary W), then the optional
/// per-tensor scale and bias, in the reference's order.
fn project(
    w: &Linear<'_>,
    x: &[f32],
    out: &mut [f32],
    lin: &mut LinearScratch,
    scale: Option<f32>,
    bias: Option<&[f32]>,
    exact: bool,
) {
    w.forward(x, out, lin, true, exact);
    if let Some(s) = scale {
        out.iter_mut().for_each(|v| *v *= s);
    }
    if let Some(b) = bias {
        ops::add_assign(out, b);
    }
}

/// Causal grouped-query attention of the query at `pos` over the cached positions,
/// summing exactly the terms the reference sums (see [`kv`]).
#[allow(clippy::too_many_arguments)]
fn attention(
    c: &Config,
    cache: &KvCache,
    l: usize,
    pos: usize,
    q: &[f32],
    out: &mut [f32],
    scores: &mut [f32],
    q16: &mut [u16],
    p16: &mut [u16],
) {
    let hd = c.head_dim;
    let group = c.n_head / c.n_head_kv;
    let n_kv = cache.attended(pos);
    let d = cache.n_embd_kv;
    let n_ctx = cache.n_ctx;
    let kq_scale = 1.0 / (hd as f32).sqrt();
    let scores = &mut scores[..n_kv];
    for h in 0..c.n_head {
        let kvh = h / group;
        let q_h = &q[h * hd..(h + 1) * hd];
        let out_h = &mut out[h * hd..(h + 1) * hd];
        match &cache.layers[l] {
            KvStore::F16 { k, v } => {
                for (dst, &x) in q16.iter_mut().zip(q_h) {
                    *dst = ops::f32_to_f16(x);
                }
                for (j, sc) in scores.iter_mut().enumerate() {
                    let key = &k[j * d + kvh * hd..j * d + (kvh + 1) * hd];
                    *sc = ops::dot_f16(key, q16);
                }
                ops::softmax_scaled(scores, pos + 1, kq_scale);
                let p16 = &mut p16[..n_kv];
                for (dst, &p) in p16.iter_mut().zip(scores.iter()) {
                    *dst = ops::f32_to_f16(p);
                }
                for (i, o) in out_h.iter_mut().enumerate() {
                    let row = (kvh * hd + i) * n_ctx;
                    *o = ops::dot_f16(&v[row..row + n_kv], p16);
                }
            }
            KvStore::F32 { k, v } => {
                for (j, sc) in scores.iter_mut().enumerate() {
                    let key = &k[j * d + kvh * hd..j * d + (kvh + 1) * hd];
                    *sc = ops::dot_f32(key, q_h);
                }
                ops::softmax_scaled(scores, pos + 1, kq_scale);
                for (i, o) in out_h.iter_mut().enumerate() {
                    let row = (kvh * hd + i) * n_ctx;
                    *o = ops::dot_f32(&v[row..row + n_kv], scores);
                }
            }
        }
    }
}
