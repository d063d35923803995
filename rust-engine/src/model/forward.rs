//! Tokens through the network: the layer loop of the module docs, for `n` consecutive tokens
//! at once. Every matrix product reads its weights once for all `n` tokens and is split by
//! rows across the pool's threads; each token then attends in order (storing its key and
//! value first), so the result is exactly that of evaluating the tokens one at a time.

use crate::ops::{self, rope::RopeMode, FloatKernel, Rope};
use crate::parallel::{Pool, Rows};

use super::arch::FfnActivation;
use super::attention::{attend, AttnScratch};
use super::config::Config;
use super::fault::{Fault, FaultKind};
use super::kv::KvCache;
use super::scratch::Scratch;
use super::weights::{scale_idx, Layer, Linear, LinearInput};

/// The FFN matrices have no bias in this architecture.
const NO_BIAS: Option<Vec<f32>> = None;

/// Output rows are split between threads at multiples of this (whole row blocks per kernel).
const ROW_ALIGN: usize = 16;

/// Receives `(name, layer, values)` for every traced tensor (of the single token evaluated).
pub(super) type Emit<'e> = &'e mut dyn FnMut(&str, Option<usize>, &[f32]);

/// The model's parts, borrowed for one pass.
pub(super) struct Forward<'m, 'a> {
    pub c: &'m Config,
    pub exact: bool,
    pub token_embd: &'m Linear<'a>,
    pub output_norm: &'m [f32],
    pub layers: &'m [Layer<'a>],
    pub rope: &'m mut Rope,
    pub cache: &'m mut KvCache,
    pub s: &'m mut Scratch,
    pub attn: &'m mut [AttnScratch],
    pub fault: Option<Fault>,
    pub kernel: FloatKernel,
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
}

impl Forward<'_, '_> {
    /// Evaluates `tokens` at positions `pos..pos + n` (already checked, `n <= s.cap`), then,
    /// if `logits`, leaves the logits of the last one in `s.logits`. `emit` sees every traced
    /// tensor when `n == 1` (with more tokens it is not called).
    pub fn run(self, tokens: &[u32], pos: usize, logits: bool, emit: Emit<'_>) {
        let Forward { c, exact, token_embd, output_norm, layers, rope, cache, s, attn, fault, kernel, pool } =
            self;
        let n = tokens.len();
        let mut noop = |_: &str, _: Option<usize>, _: &[f32]| {};
        let emit: Emit<'_> = if n == 1 { emit } else { &mut noop };
        let (e, kv, f) = (c.n_embd, c.n_embd_kv(), c.n_ff);
        let mm = Mm { pool, kernel, exact, n };
        for (t, &token) in tokens.iter().enumerate() {
            token_embd.row(token as usize, &mut s.x[t * e..(t + 1) * e]);
        }
        emit("inp_embd", None, &s.x[..e]);

        for (l, layer) in layers.iter().enumerate() {
            let faulty = |kind: FaultKind| fault.is_some_and(|f| f.hits(kind, l));
            let product = |w, i: usize, bias| Product::new(w, layer.scales[i], bias);

            // Attention block.
            mm.rms_norm_each(&s.x[..n * e], &layer.attn_norm, c.rms_eps, &mut s.h[..n * e]);
            emit("attn_norm", Some(l), &s.h[..e]);
            // One quantization of attn_norm serves Q, K and V (the reference quantizes the
            // same input three times, with identical results).
            mm.three(
                [
                    product(&layer.wq, scale_idx::Q, &layer.bq),
                    product(&layer.wk, scale_idx::K, &layer.bk),
                    product(&layer.wv, scale_idx::V, &layer.bv),
                ],
                &s.h[..n * e],
                &mut s.input,
                [&mut s.tq[..n * e], &mut s.tk[..n * kv], &mut s.tv[..n * kv]],
            );
            mm.token_major(&s.tq, &mut s.q[..n * e]);
            mm.token_major(&s.tk, &mut s.k[..n * kv]);
            mm.token_major(&s.tv, &mut s.v[..n * kv]);
            let rope_mode = if faulty(FaultKind::RopeAdjacent) { RopeMode::Adjacent } else { RopeMode::Neox };
            for t in 0..n {
                let p = pos + t;
                let (q, k, v) = (
                    &mut s.q[t * e..(t + 1) * e],
                    &mut s.k[t * kv..(t + 1) * kv],
                    &s.v[t * kv..(t + 1) * kv],
                );
                rope.apply(q, p, rope_mode);
                rope.apply(k, p, rope_mode);
                emit("Qcur", Some(l), q);
                emit("Kcur", Some(l), k);
                emit("Vcur", Some(l), v);
                cache.store(l, p, k, v, kernel);
                let (q, cache) = (&*q, &*cache);
                pool.split(
                    (Rows::new(&mut s.attn[t * e..(t + 1) * e], c.head_dim, 1), Rows::new(&mut *attn, 1, 1)),
                    |(out, sc)| attend(c, cache, l, p, q, out.range, out.data, &mut sc.data[0], kernel),
                );
            }
            emit("kqv_out", Some(l), &s.attn[..e]);
            if faulty(FaultKind::SkipAttnSubNorm) {
                s.h[..n * e].copy_from_slice(&s.attn[..n * e]);
            } else {
                mm.rms_norm_each(&s.attn[..n * e], &layer.attn_sub_norm, c.rms_eps, &mut s.h[..n * e]);
            }
            emit("attn_sub_norm", Some(l), &s.h[..e]);
            mm.one(
                product(&layer.wo, scale_idx::O, &layer.bo),
                &s.h[..n * e],
                &mut s.input,
                &mut s.tq[..n * e],
            );
            mm.token_major(&s.tq, &mut s.o[..n * e]);
            emit("attn_o_out", Some(l), &s.o[..e]);
            ops::add_assign(&mut s.x[..n * e], &s.o[..n * e]);
            emit("ffn_inp", Some(l), &s.x[..e]);

            // Feed-forward block.
            mm.rms_norm_each(&s.x[..n * e], &layer.ffn_norm, c.rms_eps, &mut s.h[..n * e]);
            emit("ffn_norm", Some(l), &s.h[..e]);
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
            // The activation, into `s.gate`.
            match c.arch.ffn_activation() {
                FfnActivation::ReluSqr => {
                    // No `.scale` tensors in this architecture (see `arch.rs`).
                    emit("ffn_gate", Some(l), &s.gate[..f]);
                    emit("ffn_up", Some(l), &s.up[..f]);
                    ops::relu_sqr_mul(&mut s.gate[..n * f], &s.up[..n * f]);
                    emit("ffn_out", Some(l), &s.gate[..f]);
                }
                FfnActivation::Silu => {
                    // `silu(gate · gate_scale) · (up · up_scale)`, reported in ggml's order.
                    emit("ffn_gate", Some(l), &s.gate[..f]);
                    if let Some(k) = layer.scales[scale_idx::GATE] {
                        ops::scale(&mut s.gate[..n * f], k);
                        emit("ffn_gate_s", Some(l), &s.gate[..f]);
                    }
                    mm.silu_each(&s.gate[..n * f], &mut s.ff[..n * f]);
                    emit("ffn_silu", Some(l), &s.ff[..f]);
                    emit("ffn_up", Some(l), &s.up[..f]);
                    if let Some(k) = layer.scales[scale_idx::UP] {
                        ops::scale(&mut s.up[..n * f], k);
                        emit("ffn_up_s", Some(l), &s.up[..f]);
                    }
                    ops::mul(&s.ff[..n * f], &s.up[..n * f], &mut s.gate[..n * f]);
                    emit("ffn_sub_out", Some(l), &s.gate[..f]);
                }
            }
            if faulty(FaultKind::SkipFfnSubNorm) {
                s.ff[..n * f].copy_from_slice(&s.gate[..n * f]);
            } else {
                mm.rms_norm_each(&s.gate[..n * f], &layer.ffn_sub_norm, c.rms_eps, &mut s.ff[..n * f]);
            }
            emit("ffn_sub_norm", Some(l), &s.ff[..f]);
            mm.one(
                product(&layer.ffn_down, scale_idx::DOWN, &NO_BIAS),
                &s.ff[..n * f],
                &mut s.input,
                &mut s.tq[..n * e],
            );
            mm.token_major(&s.tq, &mut s.o[..n * e]);
            emit("ffn_down", Some(l), &s.o[..e]);
            ops::add_assign(&mut s.x[..n * e], &s.o[..n * e]);
            emit("l_out", Some(l), &s.x[..e]);
        }
        cache.filled = pos + n;
        if !logits {
            return;
        }

        // Logits of the last token only.
        let last = &s.x[(n - 1) * e..n * e];
        ops::rms_norm(last, output_norm, c.rms_eps, &mut s.h[..e]);
        emit("result_norm", None, &s.h[..e]);
        output(&mm, token_embd, &s.h[..e], &mut s.input, &mut s.logits);
        emit("result_output", None, &s.logits);
    }

    /// The output layer alone: `s.logits = token_embd · h` for one normed hidden state `h`
    /// (`n_embd` values), exactly as [`run`](Self::run) computes it.
    pub fn output_only(self, h: &[f32]) {
        let mm = Mm { pool: self.pool, kernel: self.kernel, exact: self.exact, n: 1 };
        output(&mm, self.token_embd, h, &mut self.s.input, &mut self.s.logits);
    }
}

/// The lm_head product of one token: the tied embedding matrix times `h`, rows split across
/// the pool.
fn output(mm: &Mm<'_>, token_embd: &Linear<'_>, h: &[f32], input: &mut LinearInput, logits: &mut [f32]) {
    let head = Mm { n: 1, ..*mm };
    head.one(Product { w: token_embd, scale: None, bias: None }, h, input, logits);
}

/// Runs products of `n` tokens split by rows across the pool.
#[derive(Clone, Copy)]
struct Mm<'p> {
    pool: &'p Pool,
    kernel: FloatKernel,
    exact: bool,
    n: usize,
}

impl Mm<'_> {
    /// Prepares `x` for `w` (int8 quantization per token for ternary weights), the tokens
    /// split across threads when there are several.
    fn prepare(&self, w: &Linear<'_>, x: &[f32], inp: &mut LinearInput) {
        if self.n == 1 || !matches!(w, Linear::Ternary(_)) {
            w.prepare(x, self.n, inp, self.kernel, self.exact);
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
            for (ot, t) in o.data.chunks_exact_mut(d).zip(o.range) {
                ops::rms_norm(&x[t * d..(t + 1) * d], weight, eps, ot);
            }
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
                self.kernel.silu(&x[t * d..(t + 1) * d], ot);
            }
        };
        if self.n == 1 {
            act(Rows::new(out, d, 1));
        } else {
            self.pool.split(Rows::new(out, d, 1), act);
        }
    }

    /// Copies a row-major product (`rows × n`, from the front of `src`) into token-major
    /// `dst` (`n × rows`), the tokens split across threads, in tiles of 16 rows so that both
    /// sides are read and written a cache line at a time.
    fn token_major(&self, src: &[f32], dst: &mut [f32]) {
        let n = self.n;
        if n == 1 {
            dst.copy_from_slice(&src[..dst.len()]);
            return;
        }
        const TILE: usize = 16;
        let rows = dst.len() / n;
        self.pool.split(Rows::new(dst, rows, 1), |d| {
            for r0 in (0..rows).step_by(TILE) {
                let r1 = (r0 + TILE).min(rows);
                for (dt, t) in d.data.chunks_exact_mut(rows).zip(d.range.clone()) {
                    for (r, v) in (r0..r1).zip(&mut dt[r0..r1]) {
                        *v = src[r * n + t];
                    }
                }
            }
        });
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
        p.w.forward_rows(x, self.n, inp, out.range.clone(), out.data, self.kernel, self.exact);
        if let Some(s) = p.scale {
            out.data.iter_mut().for_each(|v| *v *= s);
        }
        if let Some(b) = p.bias {
            for (o, &bias) in out.data.chunks_exact_mut(self.n).zip(&b[out.range]) {
                o.iter_mut().for_each(|v| *v += bias);
            }
        }
    }
}
