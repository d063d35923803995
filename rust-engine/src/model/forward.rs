//! Tokens through the network: the layer loop of the module docs, for `n` consecutive tokens
//! at once. Every matrix product reads its weights once for all `n` tokens and is split by
//! rows across the pool's threads; each token then attends in order (storing its key and
//! value first), so the result is exactly that of evaluating the tokens one at a time.
//!
//! [`Forward::run_ubatch`] is the reference's batched path (`llama_decode` of a batch, logits
//! at every position): the same layers, with the ubatch's attention range and its tinyBLAS
//! products (`V·softmax`, F16/F32 matrices; see `ops/tinyblas.rs`), and the lm_head for every
//! token.
//!
//! [`Forward::run`] reads top to bottom: [`embed`](Forward::embed), then per layer
//! [`attention_block`](Forward::attention_block) and [`ffn_block`](Forward::ffn_block), then
//! [`output_block`](Forward::output_block). Shapes in the comments are token-major,
//! `(n, d)` = `n` tokens of `d` values. Tracing and fault injection go through [`Hooks`]:
//! the blocks report each traced tensor with [`Hooks::emit`] and ask [`Hooks::faulty`]
//! before an operation a fault can perturb.

use crate::ops::tinyblas::{self, TinyRow};
use crate::ops::{self, rope::RopeMode, Rope};
use crate::parallel::{Pool, Rows};

use super::arch::FfnActivation;
use super::attention::{Attention, AttnScratch, Ubatch};
use super::config::Config;
use super::fault::{Fault, FaultKind};
use super::kv::KvCache;
use super::numerics::Numerics;
use super::scratch::Scratch;
use super::weights::{scale_idx, Layer, Linear, LinearInput, ProductInput};

/// The FFN matrices have no bias in this architecture.
const NO_BIAS: Option<Vec<f32>> = None;

/// Output rows are split between threads at multiples of this (whole row blocks per kernel).
const ROW_ALIGN: usize = 16;

/// Receives `(name, layer, values)` for every traced tensor (of the one token traced).
pub(super) type Emit<'e> = &'e mut dyn FnMut(&str, Option<usize>, &[f32]);

/// What a pass does besides computing: report traced tensors and inject the deliberate
/// fault. Neither changes a bit of a normal run (no trace sink, no fault).
pub(super) struct Hooks<'e> {
    emit: Option<Emit<'e>>,
    fault: Option<Fault>,
    /// The token of the pass whose tensors are reported (0 in a single-token pass).
    row: usize,
    /// Whether a pass of several tokens reports (the batched path traces one of its rows; the
    /// decode path's multi-token passes report nothing).
    rows: bool,
}

impl<'e> Hooks<'e> {
    /// No tracing; `fault` (normally `None`) is injected.
    pub(super) fn silent(fault: Option<Fault>) -> Self {
        Hooks { emit: None, fault, row: 0, rows: false }
    }

    /// Every traced tensor goes to `emit` (of a single-token pass only).
    pub(super) fn traced(emit: Emit<'e>, fault: Option<Fault>) -> Self {
        Hooks { emit: Some(emit), fault, row: 0, rows: false }
    }

    /// Every traced tensor of token `row` of the pass goes to `emit`, whatever the pass's size.
    pub(super) fn traced_row(emit: Emit<'e>, fault: Option<Fault>, row: usize) -> Self {
        Hooks { emit: Some(emit), fault, row, rows: true }
    }

    /// Reports the traced token's row of `rows` (token-major rows of `width` values) as the
    /// tensor `name` of layer `layer` (`None` outside the layers).
    fn emit(&mut self, name: &str, layer: Option<usize>, rows: &[f32], width: usize) {
        if let Some(emit) = &mut self.emit {
            let r = self.row * width;
            emit(name, layer, &rows[r..r + width]);
        }
    }

    /// Reports `data`, computed for token `t` of the pass alone, when `t` is the traced token.
    fn emit_token(&mut self, name: &str, layer: Option<usize>, t: usize, data: &[f32]) {
        if let (Some(emit), true) = (&mut self.emit, t == self.row) {
            emit(name, layer, data);
        }
    }

    /// Whether the injected fault perturbs operation `kind` of layer `l`.
    fn faulty(&self, kind: FaultKind, l: usize) -> bool {
        self.fault.is_some_and(|f| f.hits(kind, l))
    }
}

/// The model's parts, borrowed for one pass.
pub(super) struct Forward<'m, 'a> {
    pub c: &'m Config,
    pub nx: Numerics,
    pub token_embd: &'m Linear<'a>,
    pub output_norm: &'m [f32],
    pub layers: &'m [Layer<'a>],
    pub rope: &'m mut Rope,
    pub cache: &'m mut KvCache,
    pub s: &'m mut Scratch,
    pub attn: &'m mut [AttnScratch],
    pub pool: &'m Pool,
}

/// One product of a layer: the matrix and its optional per-tensor scale and bias.
struct Product<'p, 'a> {
    w: &'p Linear<'a>,
    scale: Option<f32>,
    bias: Option<&'p [f32]>,
}

impl<'p, 'a> Product<'p, 'a> {
    fn new(w: &'p Linear<'a>, scale: Option<f32>, bias: &'p Option<Vec<f32>>) -> Self {
        Product { w, scale, bias: bias.as_deref() }
    }

    /// Matrix `i` of [`scale_idx`] in `layer`, with its scale and `bias`.
    fn of(layer: &'p Layer<'a>, w: &'p Linear<'a>, i: usize, bias: &'p Option<Vec<f32>>) -> Self {
        Product::new(w, layer.scales[i], bias)
    }
}

impl Forward<'_, '_> {
    /// Evaluates `tokens` at positions `pos..pos + n` (already checked, `n <= s.cap`), then,
    /// if `logits`, leaves the logits of the last one in `s.logits`. `hooks` sees every
    /// traced tensor when `n == 1` (with more tokens nothing is traced; faults still apply).
    pub(super) fn run(mut self, tokens: &[u32], pos: usize, logits: bool, mut hooks: Hooks<'_>) {
        let n = tokens.len();
        self.layers_pass(tokens, pos, None, &mut hooks);
        if logits {
            self.output_block(n, &mut hooks);
        }
    }

    /// The reference's batched path (`llama_decode` of a batch, logits at every position):
    /// `tokens` at positions `pos..pos + n` (already checked, `n <= s.cap`), which are all or
    /// part of the ubatch `ub`, computed as the reference computes that ubatch (its float
    /// products with ≥ 2 columns go through tinyBLAS, see `ops/tinyblas.rs`). The logits of
    /// every token go to rows `row0..row0 + n` of `s.batch_logits` (`n_vocab` values each).
    pub(super) fn run_ubatch(
        mut self,
        tokens: &[u32],
        pos: usize,
        ub: Ubatch,
        row0: usize,
        mut hooks: Hooks<'_>,
    ) {
        let n = tokens.len();
        self.layers_pass(tokens, pos, Some(ub), &mut hooks);
        let (c, s) = (self.c, &mut *self.s);
        let (e, nv) = (c.n_embd, c.n_vocab);
        let mm = Mm { pool: self.pool, nx: self.nx, n, ref_cols: ub.len };
        // result_norm (n, n_embd) -> logits = token_embd · result_norm (n, n_vocab).
        mm.rms_norm_each(&s.x[..n * e], self.output_norm, c.rms_eps, &mut s.h[..n * e]);
        hooks.emit("result_norm", None, &s.h[..n * e], e);
        let head = Product { w: self.token_embd, scale: None, bias: None };
        mm.one(head, &s.h[..n * e], &mut s.input, &mut s.head[..nv * n]);
        mm.token_major(&s.head[..nv * n], &mut s.batch_logits[row0 * nv..(row0 + n) * nv]);
        hooks.emit("result_output", None, &s.batch_logits[row0 * nv..(row0 + n) * nv], nv);
    }

    /// Embedding and every layer for `tokens` at `pos..`; `ub` is the ubatch of the batched
    /// path (`None`: one token at a time, the bits of `eval`).
    fn layers_pass(&mut self, tokens: &[u32], pos: usize, ub: Option<Ubatch>, hooks: &mut Hooks<'_>) {
        let n = tokens.len();
        if n > 1 && !hooks.rows {
            hooks.emit = None;
        }
        let mm = Mm { pool: self.pool, nx: self.nx, n, ref_cols: ub.map_or(1, |u| u.len) };
        self.embed(tokens, hooks);
        let layers = self.layers;
        for (l, layer) in layers.iter().enumerate() {
            self.attention_block(l, layer, pos, ub, &mm, hooks);
            self.ffn_block(l, layer, &mm, hooks);
        }
        self.cache.filled = pos + n;
    }

    /// tokens (n,) -> x (n, n_embd): the embedding rows (`ggml_get_rows`).
    fn embed(&mut self, tokens: &[u32], hooks: &mut Hooks<'_>) {
        let e = self.c.n_embd;
        for (t, &token) in tokens.iter().enumerate() {
            self.token_embd.row(token as usize, &mut self.s.x[t * e..(t + 1) * e]);
        }
        hooks.emit("inp_embd", None, &self.s.x[..tokens.len() * e], e);
    }

    /// x (n, n_embd) -> x + Wo·sub_norm(attention(RoPE(Wq·h), RoPE(Wk·h), Wv·h)), h = norm(x).
    fn attention_block(
        &mut self,
        l: usize,
        layer: &Layer<'_>,
        pos: usize,
        ub: Option<Ubatch>,
        mm: &Mm<'_>,
        hooks: &mut Hooks<'_>,
    ) {
        self.qkv(l, layer, mm, hooks);
        for t in 0..mm.n {
            self.attend_token(l, (pos, t), ub, hooks);
        }
        let e = self.c.n_embd;
        hooks.emit("kqv_out", Some(l), &self.s.attn[..mm.n * e], e);
        self.attn_output(l, layer, mm, hooks);
    }

    /// x (n, n_embd) -> h = attn_norm(x) (n, n_embd)
    ///   -> q = Wq·h + bq (n, n_embd), k = Wk·h + bk (n, n_embd_kv), v = Wv·h + bv (n, n_embd_kv).
    fn qkv(&mut self, l: usize, layer: &Layer<'_>, mm: &Mm<'_>, hooks: &mut Hooks<'_>) {
        let (c, s, n) = (self.c, &mut *self.s, mm.n);
        let (e, kv) = (c.n_embd, c.n_embd_kv());
        mm.rms_norm_each(&s.x[..n * e], &layer.attn_norm, c.rms_eps, &mut s.h[..n * e]);
        hooks.emit("attn_norm", Some(l), &s.h[..n * e], e);
        // One quantization of attn_norm serves Q, K and V (the reference quantizes the same
        // input three times, with identical results).
        mm.three(
            [
                Product::of(layer, &layer.wq, scale_idx::Q, &layer.bq),
                Product::of(layer, &layer.wk, scale_idx::K, &layer.bk),
                Product::of(layer, &layer.wv, scale_idx::V, &layer.bv),
            ],
            &s.h[..n * e],
            &mut s.input,
            [&mut s.tq[..n * e], &mut s.tk[..n * kv], &mut s.tv[..n * kv]],
        );
        mm.token_major(&s.tq, &mut s.q[..n * e]);
        mm.token_major(&s.tk, &mut s.k[..n * kv]);
        mm.token_major(&s.tv, &mut s.v[..n * kv]);
    }

    /// Token `t`, at position `p = pos + t` (of ubatch `ub` in the batched path):
    /// q (n_embd), k (n_embd_kv) -> RoPE (NEOX) -> k, v into the cache at `p`
    ///   -> attn (n_embd) = softmax(K·q / sqrt(head_dim)) · V per head, heads split across the pool.
    fn attend_token(
        &mut self,
        l: usize,
        (pos, t): (usize, usize),
        ub: Option<Ubatch>,
        hooks: &mut Hooks<'_>,
    ) {
        let (c, s, p) = (self.c, &mut *self.s, pos + t);
        let (e, kv) = (c.n_embd, c.n_embd_kv());
        let mode = if hooks.faulty(FaultKind::RopeAdjacent, l) { RopeMode::Adjacent } else { RopeMode::Neox };
        let (q, k, v) =
            (&mut s.q[t * e..(t + 1) * e], &mut s.k[t * kv..(t + 1) * kv], &s.v[t * kv..(t + 1) * kv]);
        self.rope.apply(q, p, mode);
        self.rope.apply(k, p, mode);
        hooks.emit_token("Qcur", Some(l), t, q);
        hooks.emit_token("Kcur", Some(l), t, k);
        hooks.emit_token("Vcur", Some(l), t, v);
        self.cache.store(l, p, k, v, self.nx);
        let attention = Attention { c, cache: &*self.cache, nx: self.nx, ubatch: ub };
        let q = &*q;
        let heads = Rows::new(&mut s.attn[t * e..(t + 1) * e], c.head_dim, 1);
        self.pool.split((heads, Rows::new(&mut *self.attn, 1, 1)), |(out, sc)| {
            attention.heads(l, p, q, out, &mut sc.data[0])
        });
    }

    /// attn (n, n_embd) -> h = attn_sub_norm(attn) -> o = Wo·h + bo (n, n_embd) -> x += o.
    fn attn_output(&mut self, l: usize, layer: &Layer<'_>, mm: &Mm<'_>, hooks: &mut Hooks<'_>) {
        let (c, s, n) = (self.c, &mut *self.s, mm.n);
        let e = c.n_embd;
        if hooks.faulty(FaultKind::SkipAttnSubNorm, l) {
            s.h[..n * e].copy_from_slice(&s.attn[..n * e]);
        } else {
            mm.rms_norm_each(&s.attn[..n * e], &layer.attn_sub_norm, c.rms_eps, &mut s.h[..n * e]);
        }
        hooks.emit("attn_sub_norm", Some(l), &s.h[..n * e], e);
        let wo = Product::of(layer, &layer.wo, scale_idx::O, &layer.bo);
        mm.one(wo, &s.h[..n * e], &mut s.input, &mut s.tq[..n * e]);
        mm.token_major(&s.tq, &mut s.o[..n * e]);
        hooks.emit("attn_o_out", Some(l), &s.o[..n * e], e);
        mm.zip_each(&mut s.x[..n * e], &s.o[..n * e], ops::add_assign);
        hooks.emit("ffn_inp", Some(l), &s.x[..n * e], e);
    }

    /// x (n, n_embd) -> h = ffn_norm(x) -> gate = Wg·h, up = Wu·h (n, n_ff)
    ///   -> act(gate)·up (n, n_ff) -> ffn_sub_norm -> o = Wd·(..) (n, n_embd) -> x += o.
    fn ffn_block(&mut self, l: usize, layer: &Layer<'_>, mm: &Mm<'_>, hooks: &mut Hooks<'_>) {
        let (c, n) = (self.c, mm.n);
        let (e, f) = (c.n_embd, c.n_ff);
        {
            let s = &mut *self.s;
            mm.rms_norm_each(&s.x[..n * e], &layer.ffn_norm, c.rms_eps, &mut s.h[..n * e]);
            hooks.emit("ffn_norm", Some(l), &s.h[..n * e], e);
            // `llm_build_ffn` reports the gate and up products before their multipliers
            // (`ffn_up`, then `ffn_up_s`), so those are applied after the products here.
            mm.two(
                [Product::new(&layer.ffn_gate, None, &NO_BIAS), Product::new(&layer.ffn_up, None, &NO_BIAS)],
                &s.h[..n * e],
                &mut s.input,
                [&mut s.tg[..n * f], &mut s.tu[..n * f]],
            );
            mm.token_major(&s.tg, &mut s.gate[..n * f]);
            mm.token_major(&s.tu, &mut s.up[..n * f]);
        }
        self.ffn_activation(l, layer, mm, hooks);
        let s = &mut *self.s;
        if hooks.faulty(FaultKind::SkipFfnSubNorm, l) {
            s.ff[..n * f].copy_from_slice(&s.gate[..n * f]);
        } else {
            mm.rms_norm_each(&s.gate[..n * f], &layer.ffn_sub_norm, c.rms_eps, &mut s.ff[..n * f]);
        }
        hooks.emit("ffn_sub_norm", Some(l), &s.ff[..n * f], f);
        let down = Product::of(layer, &layer.ffn_down, scale_idx::DOWN, &NO_BIAS);
        mm.one(down, &s.ff[..n * f], &mut s.input, &mut s.tq[..n * e]);
        mm.token_major(&s.tq, &mut s.o[..n * e]);
        hooks.emit("ffn_down", Some(l), &s.o[..n * e], e);
        mm.zip_each(&mut s.x[..n * e], &s.o[..n * e], ops::add_assign);
        hooks.emit("l_out", Some(l), &s.x[..n * e], e);
    }

    /// gate, up (n, n_ff) -> gate = relu(gate)²·up (`bitnet-b1.58`, `bitnet-25`)
    /// or silu(gate · gate_scale)·(up · up_scale) (`bitnet`), reported in ggml's order.
    fn ffn_activation(&mut self, l: usize, layer: &Layer<'_>, mm: &Mm<'_>, hooks: &mut Hooks<'_>) {
        let (s, n, f) = (&mut *self.s, mm.n, self.c.n_ff);
        hooks.emit("ffn_gate", Some(l), &s.gate[..n * f], f);
        match self.c.arch.ffn_activation() {
            FfnActivation::ReluSqr => {
                // No `.scale` tensors in this architecture (see `arch.rs`).
                hooks.emit("ffn_up", Some(l), &s.up[..n * f], f);
                mm.zip_each(&mut s.gate[..n * f], &s.up[..n * f], ops::relu_sqr_mul);
                hooks.emit("ffn_out", Some(l), &s.gate[..n * f], f);
            }
            FfnActivation::Silu => {
                if let Some(k) = layer.scales[scale_idx::GATE] {
                    ops::scale(&mut s.gate[..n * f], k);
                    hooks.emit("ffn_gate_s", Some(l), &s.gate[..n * f], f);
                }
                mm.silu_each(&s.gate[..n * f], &mut s.ff[..n * f]);
                hooks.emit("ffn_silu", Some(l), &s.ff[..n * f], f);
                hooks.emit("ffn_up", Some(l), &s.up[..n * f], f);
                if let Some(k) = layer.scales[scale_idx::UP] {
                    ops::scale(&mut s.up[..n * f], k);
                    hooks.emit("ffn_up_s", Some(l), &s.up[..n * f], f);
                }
                ops::mul(&s.ff[..n * f], &s.up[..n * f], &mut s.gate[..n * f]);
                hooks.emit("ffn_sub_out", Some(l), &s.gate[..n * f], f);
            }
        }
    }

    /// x of the last token (n_embd) -> h = result_norm(x) (n_embd) -> logits = token_embd·h (n_vocab).
    fn output_block(&mut self, n: usize, hooks: &mut Hooks<'_>) {
        let (c, s) = (self.c, &mut *self.s);
        let e = c.n_embd;
        ops::rms_norm(&s.x[(n - 1) * e..n * e], self.output_norm, c.rms_eps, &mut s.h[..e]);
        hooks.emit("result_norm", None, &s.h[..e], e);
        let mm = Mm { pool: self.pool, nx: self.nx, n: 1, ref_cols: 1 };
        output(&mm, self.token_embd, &s.h[..e], &mut s.input, &mut s.logits);
        hooks.emit("result_output", None, &s.logits, c.n_vocab);
    }

    /// The output layer alone: `s.logits = token_embd · h` for one normed hidden state `h`
    /// (`n_embd` values), exactly as [`run`](Self::run) computes it.
    pub(super) fn output_only(self, h: &[f32]) {
        let mm = Mm { pool: self.pool, nx: self.nx, n: 1, ref_cols: 1 };
        output(&mm, self.token_embd, h, &mut self.s.input, &mut self.s.logits);
    }
}

/// The lm_head product of one token: the tied embedding matrix times `h`, rows split across
/// the pool.
fn output(mm: &Mm<'_>, token_embd: &Linear<'_>, h: &[f32], input: &mut LinearInput, logits: &mut [f32]) {
    let head = Mm { n: 1, ..*mm };
    head.one(Product { w: token_embd, scale: None, bias: None }, h, input, logits);
}

/// Rows × columns of a tinyBLAS register tile: 4 × 4 = 16 accumulators and 8 loads per 16
/// FMAs, where one row against eight columns needs 9 loads per 8 (4 × 6 made the compiler
/// spill accumulators). 256 positions of the 2B-shaped model, batched, one thread (AMD Zen
/// 4): 7.7 → 5.8 s.
const TILE_ROWS: usize = 4;
const TILE_COLS: usize = 4;

/// Runs products of `n` tokens split by rows across the pool.
#[derive(Clone, Copy)]
struct Mm<'p> {
    pool: &'p Pool,
    nx: Numerics,
    n: usize,
    /// Columns of the reference's product (`src1->ne[1]`): 1 when it evaluates one token at a
    /// time, the ubatch's tokens in its batched path (`n` is this pass's part of them).
    ref_cols: usize,
}

impl Mm<'_> {
    /// Whether the reference computes products with `w` through llamafile's tinyBLAS (F16
    /// or F32 weights, ≥ 2 columns, rows a multiple of its lanes): then the input is used
    /// unrounded, each element summed as [`tinyblas`] says.
    fn tinyblas(&self, w: &Linear<'_>) -> bool {
        matches!(w, Linear::F16 { .. } | Linear::F32 { .. })
            && tinyblas::takes(self.nx.kernel.profile(), w.cols(), self.ref_cols)
    }

    /// Prepares `x` for `w` (int8 quantization per token for ternary weights), the tokens
    /// split across threads when there are several.
    fn prepare(&self, w: &Linear<'_>, x: &[f32], inp: &mut LinearInput) {
        if self.tinyblas(w) {
            return;
        }
        if self.n == 1 || !matches!(w, Linear::Ternary(_)) {
            w.prepare(x, self.n, inp, self.nx);
            return;
        }
        let d = w.cols();
        self.pool.split(Rows::new(&mut inp.acts[..self.n], 1, 1), |a| {
            for (acts, t) in a.data.iter_mut().zip(a.range) {
                acts.quantize(&x[t * d..(t + 1) * d]);
            }
        });
    }

    /// RMSNorm of each token of `x` (token-major, `weight.len()` values each), the tokens
    /// split across threads when there are several.
    fn rms_norm_each(&self, x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
        let d = weight.len();
        let norm = |o: Rows<'_, f32>| {
            let x = &x[o.range.start * d..o.range.end * d];
            self.nx.kernel.rms_norm_rows(x, weight, eps, o.data);
        };
        if self.n == 1 {
            norm(Rows::new(out, d, 1));
        } else {
            self.pool.split(Rows::new(out, d, 1), norm);
        }
    }

    /// SiLU of each token of `x` (token-major, `n_ff` values each) into `out`:
    /// `ggml_vec_silu_f32` row by row, so its vectors start again at every token. The
    /// tokens are split across threads when there are several.
    fn silu_each(&self, x: &[f32], out: &mut [f32]) {
        let d = x.len() / self.n;
        let act = |o: Rows<'_, f32>| {
            for (ot, t) in o.data.chunks_exact_mut(d).zip(o.range) {
                self.nx.kernel.silu(&x[t * d..(t + 1) * d], ot);
            }
        };
        if self.n == 1 {
            act(Rows::new(out, d, 1));
        } else {
            self.pool.split(Rows::new(out, d, 1), act);
        }
    }

    /// `f(out_t, other_t)` for the row of every token of `out` and `other` (token-major, of
    /// one width): an element-wise operation, the tokens split across threads when there
    /// are several (one thread alone would leave the others waiting).
    fn zip_each(&self, out: &mut [f32], other: &[f32], f: impl Fn(&mut [f32], &[f32]) + Sync) {
        if self.n == 1 {
            return f(out, other);
        }
        let d = out.len() / self.n;
        self.pool.split(Rows::new(out, d, 1), |o| f(o.data, &other[o.range.start * d..o.range.end * d]));
    }

    /// Copies a row-major product (`rows × n`, from the front of `src`) into token-major
    /// `dst` (`n × rows`), the tokens split across threads, in 8 × 8 blocks (a transpose in
    /// registers; one value at a time this was 4 % of a prefill).
    fn token_major(&self, src: &[f32], dst: &mut [f32]) {
        let n = self.n;
        if n == 1 {
            dst.copy_from_slice(&src[..dst.len()]);
            return;
        }
        let rows = dst.len() / n;
        let kernel = self.nx.kernel;
        self.pool.split(Rows::new(dst, rows, 1), |d| kernel.transpose_cols(src, n, d.range, d.data));
    }

    fn one(&self, p: Product<'_, '_>, x: &[f32], inp: &mut LinearInput, out: &mut [f32]) {
        self.prepare(p.w, x, inp);
        let inp = &*inp;
        self.pool.split(Rows::new(out, self.n, ROW_ALIGN), |o| self.rows(&p, x, inp, o));
    }

    /// Two products of the same input (gate and up) in one parallel section.
    fn two(&self, p: [Product<'_, '_>; 2], x: &[f32], inp: &mut LinearInput, out: [&mut [f32]; 2]) {
        self.prepare(p[0].w, x, inp);
        let inp = &*inp;
        let [o0, o1] = out;
        self.pool.split((Rows::new(o0, self.n, ROW_ALIGN), Rows::new(o1, self.n, ROW_ALIGN)), |(a, b)| {
            self.rows(&p[0], x, inp, a);
            self.rows(&p[1], x, inp, b);
        });
    }

    /// Three products of the same input (Q, K, V) in one parallel section.
    fn three(&self, p: [Product<'_, '_>; 3], x: &[f32], inp: &mut LinearInput, out: [&mut [f32]; 3]) {
        self.prepare(p[0].w, x, inp);
        let inp = &*inp;
        let [o0, o1, o2] = out;
        let rows = |o| Rows::new(o, self.n, ROW_ALIGN);
        self.pool.split((rows(o0), rows(o1), rows(o2)), |(a, b, c)| {
            self.rows(&p[0], x, inp, a);
            self.rows(&p[1], x, inp, b);
            self.rows(&p[2], x, inp, c);
        });
    }

    /// One thread's rows of a product (row-major over the tokens), then the optional
    /// per-tensor scale and bias, in the reference's order.
    fn rows(&self, p: &Product<'_, '_>, x: &[f32], inp: &LinearInput, out: Rows<'_, f32>) {
        if self.tinyblas(p.w) {
            self.tinyblas_rows(p.w, x, out.range.clone(), out.data);
        } else {
            let input = ProductInput { x, n: self.n, prepared: inp };
            p.w.forward_rows(input, out.range.clone(), out.data, self.nx);
        }
        if let Some(s) = p.scale {
            out.data.iter_mut().for_each(|v| *v *= s);
        }
        if let Some(b) = p.bias {
            for (o, &bias) in out.data.chunks_exact_mut(self.n).zip(&b[out.range]) {
                o.iter_mut().for_each(|v| *v += bias);
            }
        }
    }

    /// Rows `rows` of `W · x_t` (row-major, as [`Linear::forward_rows`]) as tinyBLAS computes
    /// them: each element alone, `x_t` unrounded (see [`Mm::tinyblas`]).
    fn tinyblas_rows(&self, w: &Linear<'_>, x: &[f32], rows: std::ops::Range<usize>, out: &mut [f32]) {
        let (kernel, n) = (self.nx.kernel, self.n);
        let row_of = |r: usize| match w {
            Linear::F16 { data, cols, .. } => TinyRow::F16Bytes(&data[r * cols * 2..(r + 1) * cols * 2]),
            Linear::F32 { data, cols, .. } => TinyRow::F32(&data[r * cols..(r + 1) * cols]),
            _ => unreachable!("tinyBLAS takes only F16 and F32 weights (Mm::tinyblas)"),
        };
        let d = w.cols();
        let col = |t: usize| &x[t * d..(t + 1) * d];
        // Register tiles of TILE_ROWS × TILE_COLS outputs (each output alone is the same
        // bits): the tile's rows stay in cache across all columns. Leftover columns go
        // TILE_ROWS rows × one column at a time, leftover rows one row with eight columns or
        // one.
        let whole = rows.len() / TILE_ROWS * TILE_ROWS;
        let (tiled, rest) = out.split_at_mut(whole * n);
        for (ob, r0) in tiled.chunks_exact_mut(TILE_ROWS * n).zip(rows.clone().step_by(TILE_ROWS)) {
            let a: [TinyRow<'_>; TILE_ROWS] = std::array::from_fn(|i| row_of(r0 + i));
            let mut t0 = 0;
            while t0 + TILE_COLS <= n {
                let b: [&[f32]; TILE_COLS] = std::array::from_fn(|j| col(t0 + j));
                for (i, vals) in kernel.tinyblas_tile(a, b).into_iter().enumerate() {
                    ob[i * n + t0..i * n + t0 + TILE_COLS].copy_from_slice(&vals);
                }
                t0 += TILE_COLS;
            }
            for t in t0..n {
                for (i, [v]) in kernel.tinyblas_tile(a, [col(t)]).into_iter().enumerate() {
                    ob[i * n + t] = v;
                }
            }
        }
        for (o, r) in rest.chunks_exact_mut(n).zip(rows.start + whole..rows.end) {
            let a = row_of(r);
            // Eight tokens a call (the row loaded once for them, eight independent FMA
            // chains), then the rest one by one.
            let mut groups = o.chunks_exact_mut(8);
            for (g, o8) in (&mut groups).enumerate() {
                o8.copy_from_slice(&kernel.tinyblas(a, std::array::from_fn::<_, 8, _>(|i| col(8 * g + i))));
            }
            let rest = groups.into_remainder();
            let done = n - rest.len();
            for (t, ot) in (done..n).zip(rest) {
                [*ot] = kernel.tinyblas(a, [col(t)]);
            }
        }
    }
}
