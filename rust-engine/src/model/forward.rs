//! One token through the network: the layer loop of the module docs, with every matrix
//! product and the attention heads split across the pool's threads.

use crate::ops::{self, rope::RopeMode, FloatKernel, Rope};
use crate::parallel::{Pool, Rows};

use super::attention::{attend, AttnScratch};
use super::config::Config;
use super::fault::{Fault, FaultKind};
use super::kv::KvCache;
use super::weights::{scale_idx, Layer, Linear, LinearInput};
use super::Scratch;

/// Output rows are split between threads at multiples of this (whole row blocks per kernel).
const ROW_ALIGN: usize = 16;

/// Receives `(name, layer, values)` for every traced tensor.
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

impl Forward<'_, '_> {
    /// Evaluates `token` at `pos` (already checked), leaving the logits in `s.logits`.
    pub fn token(self, token: u32, pos: usize, emit: Emit<'_>) {
        let Forward { c, exact, token_embd, output_norm, layers, rope, cache, s, attn, fault, kernel, pool } =
            self;
        token_embd.row(token as usize, &mut s.x);
        emit("inp_embd", None, &s.x);

        for (l, layer) in layers.iter().enumerate() {
            let faulty = |kind: FaultKind| fault.is_some_and(|f| f.hits(kind, l));
            let mm = |w: &Linear<'_>, x: &[f32], inp: &LinearInput, out: Rows<'_, f32>, scale, bias| {
                project(w, x, inp, out, scale, bias, kernel, exact)
            };

            // Attention block.
            ops::rms_norm(&s.x, &layer.attn_norm, c.rms_eps, &mut s.h);
            emit("attn_norm", Some(l), &s.h);
            // One quantization of attn_norm serves Q, K and V (the reference quantizes the
            // same input three times, with identical results).
            layer.wq.prepare(&s.h, &mut s.input, kernel, exact);
            let (h, inp) = (&s.h, &s.input);
            pool.split(
                (
                    Rows::new(&mut s.q, 1, ROW_ALIGN),
                    Rows::new(&mut s.k, 1, ROW_ALIGN),
                    Rows::new(&mut s.v, 1, ROW_ALIGN),
                ),
                |(q, k, v)| {
                    mm(&layer.wq, h, inp, q, layer.scales[scale_idx::Q], layer.bq.as_deref());
                    mm(&layer.wk, h, inp, k, layer.scales[scale_idx::K], layer.bk.as_deref());
                    mm(&layer.wv, h, inp, v, layer.scales[scale_idx::V], layer.bv.as_deref());
                },
            );
            let rope_mode = if faulty(FaultKind::RopeAdjacent) { RopeMode::Adjacent } else { RopeMode::Neox };
            rope.apply(&mut s.q, pos, rope_mode);
            rope.apply(&mut s.k, pos, rope_mode);
            emit("Qcur", Some(l), &s.q);
            emit("Kcur", Some(l), &s.k);
            emit("Vcur", Some(l), &s.v);
            cache.store(l, pos, &s.k, &s.v, kernel);
            let (q, cache_ref) = (&s.q, &*cache);
            pool.split((Rows::new(&mut s.attn, c.head_dim, 1), Rows::new(attn, 1, 1)), |(out, sc)| {
                attend(c, cache_ref, l, pos, q, out.range, out.data, &mut sc.data[0], kernel)
            });
            emit("kqv_out", Some(l), &s.attn);
            if faulty(FaultKind::SkipAttnSubNorm) {
                s.h.copy_from_slice(&s.attn);
            } else {
                ops::rms_norm(&s.attn, &layer.attn_sub_norm, c.rms_eps, &mut s.h);
            }
            emit("attn_sub_norm", Some(l), &s.h);
            layer.wo.prepare(&s.h, &mut s.input, kernel, exact);
            let (h, inp) = (&s.h, &s.input);
            pool.split(Rows::new(&mut s.o, 1, ROW_ALIGN), |o| {
                mm(&layer.wo, h, inp, o, layer.scales[scale_idx::O], layer.bo.as_deref())
            });
            emit("attn_o_out", Some(l), &s.o);
            ops::add_assign(&mut s.x, &s.o);
            emit("ffn_inp", Some(l), &s.x);

            // Feed-forward block.
            ops::rms_norm(&s.x, &layer.ffn_norm, c.rms_eps, &mut s.h);
            emit("ffn_norm", Some(l), &s.h);
            layer.ffn_gate.prepare(&s.h, &mut s.input, kernel, exact);
            let (h, inp) = (&s.h, &s.input);
            pool.split(
                (Rows::new(&mut s.gate, 1, ROW_ALIGN), Rows::new(&mut s.up, 1, ROW_ALIGN)),
                |(g, u)| {
                    mm(&layer.ffn_gate, h, inp, g, layer.scales[scale_idx::GATE], None);
                    mm(&layer.ffn_up, h, inp, u, layer.scales[scale_idx::UP], None);
                },
            );
            emit("ffn_gate", Some(l), &s.gate);
            emit("ffn_up", Some(l), &s.up);
            ops::relu_sqr_mul(&mut s.gate, &s.up);
            emit("ffn_out", Some(l), &s.gate);
            if faulty(FaultKind::SkipFfnSubNorm) {
                s.ff.copy_from_slice(&s.gate);
            } else {
                ops::rms_norm(&s.gate, &layer.ffn_sub_norm, c.rms_eps, &mut s.ff);
            }
            emit("ffn_sub_norm", Some(l), &s.ff);
            layer.ffn_down.prepare(&s.ff, &mut s.input, kernel, exact);
            let (ff, inp) = (&s.ff, &s.input);
            pool.split(Rows::new(&mut s.o, 1, ROW_ALIGN), |o| {
                mm(&layer.ffn_down, ff, inp, o, layer.scales[scale_idx::DOWN], None)
            });
            emit("ffn_down", Some(l), &s.o);
            ops::add_assign(&mut s.x, &s.o);
            emit("l_out", Some(l), &s.x);
        }
        cache.filled = pos + 1;

        ops::rms_norm(&s.x, output_norm, c.rms_eps, &mut s.h);
        emit("result_norm", None, &s.h);
        token_embd.prepare(&s.h, &mut s.input, kernel, exact);
        let (h, inp) = (&s.h, &s.input);
        pool.split(Rows::new(&mut s.logits, 1, ROW_ALIGN), |o| {
            token_embd.forward_rows(h, inp, o.range, o.data, kernel, exact)
        });
        emit("result_output", None, &s.logits);
    }
}

/// Rows `out.range` of `W·x` (input prepared), then the optional per-tensor scale and bias,
/// in the reference's order.
#[allow(clippy::too_many_arguments)]
fn project(
    w: &Linear<'_>,
    x: &[f32],
    inp: &LinearInput,
    out: Rows<'_, f32>,
    scale: Option<f32>,
    bias: Option<&[f32]>,
    kernel: FloatKernel,
    exact: bool,
) {
    w.forward_rows(x, inp, out.range.clone(), out.data, kernel, exact);
    if let Some(s) = scale {
        out.data.iter_mut().for_each(|v| *v *= s);
    }
    if let Some(b) = bias {
        ops::add_assign(out.data, &b[out.range]);
    }
}
