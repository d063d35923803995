//! The BitNet forward pass with a KV cache: one token at a time ([`Model::eval`]), or
//! several through each weight at once ([`Model::eval_batch`], same bits). The graph is the
//! one of the file's architecture ([`Arch`], parsed once by [`Config::from_gguf`]).
//!
//! Per layer, as the reference's `build_bitnet_158` (`bitnet-b1.58`, `bitnet-25`; names are
//! what the hook reports): `attn_norm` → `Qcur`/`Kcur`/`Vcur` (I2_S matmuls, optional biases,
//! NEOX RoPE on Q and K) → attention (`kqv_out`) → `attn_sub_norm` → `attn_o_out` → `ffn_inp`
//! (residual) → `ffn_norm` → `ffn_gate`, `ffn_up` → `ffn_out` = relu(gate)²·up →
//! `ffn_sub_norm` → `ffn_down` → `l_out` (residual). Then `result_norm` and `result_output`
//! (the logits).
//!
//! `build_bitnet` (`bitnet`) is the same skeleton without biases, with optional per-tensor
//! multipliers (`blk.N.*.scale`, `ggml_mul` right after each of the seven products) and a
//! SiLU-gated FFN: `ffn_gate` → `ffn_gate_s` → `ffn_silu`, `ffn_up` → `ffn_up_s`, then
//! `ffn_sub_out` = silu(gate)·up (see [`Arch::layer_ops`]).
//!
//! Like the reference's graphs, the lm_head is always `token_embd` (even when a
//! `bitnet-b1.58` file has an `output.weight`: the reference loads it and never uses it).
//!
//! With [`ModelOptions::exact_reference_rounding`] (the default) the engine also rounds
//! where the reference's default context does: keys and values stored as f16, the query
//! rounded to f16 before `K·Q`, the softmax output rounded to f16 before `V·softmax`, and
//! the input of an F16 matrix (the lm_head) rounded to f16. Switched off, all of those
//! stay f32, which shows how much of any difference the roundings explain.
//!
//! # Speed without changing a bit
//!
//! | file          | holds                                                                  |
//! |---------------|------------------------------------------------------------------------|
//! | `forward.rs`  | the layer loop for `n` tokens, one function per block; `Hooks` (traces, faults) |
//! | `attention.rs`| one query's attention over the cache, for a range of heads              |
//! | `numerics.rs` | [`Numerics`]: float kernel, reference profile, f16 rounding, in one value |
//! | `weights.rs`  | `Linear`: prepare an input once, then any rows of `W·x`                 |
//! | `scratch.rs`  | every activation buffer, made at load (and once more for the first batch) |
//! | `kv.rs`       | the cache, laid out like the reference's                                |
//!
//! The kernels come from [`crate::ops::FloatKernel`] (carried with the rounding choice in
//! [`Numerics`]) and [`crate::quant::Qk256Kernel`] (scalar oracles or AVX2, chosen by
//! `BITNET_QK256_IMPL` or [`Model::set_kernel`]); the
//! threads from [`crate::internals::parallel::Pool`] ([`ModelOptions::threads`]). Every output row is
//! computed by one thread with the same operations whatever the kernel, thread count or
//! batch, so logits are bit-identical across all of them (`tests/model_kernels.rs`), and
//! nothing is allocated per token (`tests/model_alloc.rs`).

mod arch;
mod attention;
mod config;
mod error;
mod fault;
mod forward;
mod kv;
mod numerics;
mod scratch;
mod weights;

use crate::gguf::{GgmlType, GgufFile};
use crate::ops::{FloatKernel, Rope};
use crate::parallel::Pool;
use crate::profile::RefProfile;
use crate::quant::{FlavorDetection, Qk256Kernel};

pub use crate::parallel::PoolError;
pub use arch::{Arch, FfnActivation, FINAL_OPS, SUPPORTED_ARCHITECTURES};
use attention::AttnScratch;
pub use config::Config;
pub use error::ModelError;
pub use fault::{Fault, FaultKind};
use forward::{Forward, Hooks};
use kv::KvCache;
pub use kv::KV_PAD;
pub use numerics::Numerics;
use scratch::Scratch;
pub use weights::HEAD_TYPES;
use weights::{load_head, load_layer, load_vector, scale_idx, Layer, Linear};

/// Tokens evaluated together by [`Model::eval_batch`] (longer batches go in chunks of this).
pub const BATCH_TOKENS: usize = 32;

/// How to run the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelOptions {
    /// Context size (positions the KV cache holds); rounded up to a multiple of 32.
    pub n_ctx: usize,
    /// Mirror the reference's f16 roundings (see the module docs). On by default.
    pub exact_reference_rounding: bool,
    /// Threads computing each token (matrix rows and attention heads are split between
    /// them); created once at load. Results do not depend on it. Default 1.
    pub threads: usize,
    /// The reference build whose float numerics to mirror (see [`crate::profile`]). Default:
    /// what a `-march=native` build of the reference on this CPU computes.
    pub profile: RefProfile,
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions { n_ctx: 512, exact_reference_rounding: true, threads: 1, profile: RefProfile::host() }
    }
}

impl ModelOptions {
    /// The same options with `threads` threads.
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
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
    /// One attention scratch per thread.
    attn: Vec<AttnScratch>,
    fault: Option<Fault>,
    qk256: Qk256Kernel,
    numerics: Numerics,
    pool: Pool,
}

/// Receives named intermediate tensors (`attn_norm-0`, ..., `result_norm`).
pub type Hook<'h> = &'h mut dyn FnMut(&str, &[f32]);

impl<'a> Model<'a> {
    /// Reads hyper-parameters and weights; every missing tensor or wrong shape is an error
    /// naming it.
    pub fn load(file: &'a GgufFile, options: ModelOptions) -> Result<Model<'a>, ModelError> {
        let config = Config::from_gguf(file)?;
        let c = &config;
        let qk256 = Qk256Kernel::from_env()?;
        let mut flavors = Vec::new();
        let token_embd = load_head(file, "token_embd.weight", c.n_embd, c.n_vocab, &mut flavors)?;
        let output_norm = load_vector(file, "output_norm.weight", c.n_embd)?;
        let layers =
            (0..c.n_layer).map(|l| load_layer(file, c, l, &mut flavors)).collect::<Result<Vec<_>, _>>()?;
        let numerics = Numerics {
            kernel: FloatKernel::matching(qk256, options.profile),
            exact_rounding: options.exact_reference_rounding,
        };
        let n_ctx = options.n_ctx.max(1);
        let cache = KvCache::new(c.n_layer, n_ctx, c.n_embd_kv(), numerics);
        let s = Scratch::new(c, 1, qk256);
        let pool = Pool::new(options.threads)?;
        let attn = (0..pool.threads()).map(|_| AttnScratch::new(cache.n_ctx, c.head_dim)).collect();
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
            attn,
            fault: None,
            qk256,
            numerics,
            pool,
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

    /// The ggml type of `token_embd.weight`: the embedding and, in every bitnet graph, the
    /// lm_head (one of [`HEAD_TYPES`]; a file with another is refused at load).
    pub fn head_type(&self) -> GgmlType {
        self.token_embd.ggml_type()
    }

    /// The I2_S flavour detected for each ternary tensor, in load order.
    pub fn flavors(&self) -> &[(String, FlavorDetection)] {
        &self.flavors
    }

    /// Name of the QK256 kernel in use (`avx512vnni`, `avx2`, `scalar`).
    pub fn kernel_name(&self) -> &'static str {
        self.qk256.name()
    }

    /// Name of the float kernels in use (`avx512`, `avx2`, `scalar`): dots, f16 conversion,
    /// softmax.
    pub fn float_kernel_name(&self) -> &'static str {
        self.numerics.kernel.name()
    }

    /// The numerics choices in use: float kernels, the profile they mirror, the rounding.
    pub fn numerics(&self) -> Numerics {
        self.numerics
    }

    /// The reference build whose float numerics the model mirrors.
    pub fn profile(&self) -> RefProfile {
        self.options.profile
    }

    /// Switches the float kernels (never a bit of the result) or the profile they mirror
    /// (the bits of every F16/F32 product and softmax); the QK256 kernel stays. For tests
    /// that prove every kernel computes every profile alike.
    pub fn set_float_kernel(&mut self, kernel: FloatKernel) {
        self.options.profile = kernel.profile();
        self.numerics.kernel = kernel;
    }

    /// Switches every kernel: the QK256 kernel of every ternary matrix and of activation
    /// quantization, and the float kernels (scalar with scalar, else the best). Results are
    /// identical for every choice; this exists to prove it, and to time the kernels.
    pub fn set_kernel(&mut self, qk256: Qk256Kernel) {
        self.qk256 = qk256;
        self.numerics.kernel = FloatKernel::matching(qk256, self.options.profile);
        self.token_embd.set_kernel(qk256);
        for layer in &mut self.layers {
            for m in layer.linears_mut() {
                m.set_kernel(qk256);
            }
        }
        self.s = Scratch::new(&self.config, self.s.cap, qk256);
    }

    /// Threads computing each token.
    pub fn threads(&self) -> usize {
        self.pool.threads()
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
        self.check(token, pos)?;
        let fault = self.fault;
        let (pass, pool) = self.pass();
        // The whole pass is one parallel region: it runs on a worker while the others stay
        // awake for its row splits (no wake-up per product, see `parallel.rs`).
        pool.install(|| pass.run(&[token], pos, true, Hooks::silent(fault)));
        Ok(&self.s.logits)
    }

    /// The output layer alone: the logits for a final-normed hidden state `h` (`n_embd`
    /// values), computed as [`eval`](Self::eval) computes them (same kernels, roundings and
    /// thread split). For micro-benchmarks of the lm_head, the largest product of a decode
    /// step; the KV cache is untouched.
    pub fn project_output(&mut self, h: &[f32]) -> Result<&[f32], ModelError> {
        if h.len() != self.config.n_embd {
            return Err(ModelError::HiddenLength { got: h.len(), n_embd: self.config.n_embd });
        }
        let (pass, pool) = self.pass();
        pool.install(|| pass.output_only(h));
        Ok(&self.s.logits)
    }

    /// Evaluates `tokens` at positions `start_pos..` and returns the logits of the last one:
    /// exactly what evaluating them one at a time with [`eval`](Self::eval) gives (every
    /// cache entry and the logits, bit for bit), but reading each weight once per
    /// [`BATCH_TOKENS`] tokens. The first batch longer than one token allocates the batch
    /// buffers (kept for later batches).
    pub fn eval_batch(&mut self, tokens: &[u32], start_pos: usize) -> Result<&[f32], ModelError> {
        self.check_batch(tokens, start_pos)?;
        if tokens.len() > 1 && self.s.cap < BATCH_TOKENS {
            self.s = Scratch::new(&self.config, BATCH_TOKENS, self.qk256);
        }
        let cap = self.s.cap;
        let chunks = tokens.len().div_ceil(cap);
        for (i, chunk) in tokens.chunks(cap).enumerate() {
            let fault = self.fault;
            let (pass, pool) = self.pass();
            let logits = i + 1 == chunks;
            pool.install(|| pass.run(chunk, start_pos + i * cap, logits, Hooks::silent(fault)));
        }
        Ok(&self.s.logits)
    }

    /// What the reference's `llama_decode` computes for one batch of `tokens` at positions
    /// `start_pos..`, with that `n_ubatch` (0: the whole batch in one ubatch, as llama.cpp
    /// reads 0) and logits requested at every position: `tokens.len() × n_vocab` logits, row
    /// after row, under the model's profile. The cache is filled as by [`eval`](Self::eval).
    ///
    /// These are not the bits of `eval`: the reference splits the batch into ubatches of
    /// `n_ubatch` tokens, and in a ubatch of several tokens its float products with ≥ 2
    /// columns go through llamafile's tinyBLAS (the attention's `V·softmax`, with the softmax
    /// unrounded, and an F16 or F32 lm_head; see `ops/tinyblas.rs`, `model/attention.rs`). A
    /// ubatch of one token computes what `eval` computes.
    pub fn decode_batch(
        &mut self,
        tokens: &[u32],
        start_pos: usize,
        n_ubatch: usize,
    ) -> Result<&[f32], ModelError> {
        self.check_batch(tokens, start_pos)?;
        self.batched(tokens, start_pos, n_ubatch, None)
    }

    /// [`decode_batch`](Self::decode_batch), handing every named intermediate tensor of token
    /// `row` of `tokens` (position `start_pos + row`) to `hook`, as the batched path computed it:
    /// the rows the reference's eval callback holds for that position.
    pub fn decode_batch_traced(
        &mut self,
        tokens: &[u32],
        start_pos: usize,
        n_ubatch: usize,
        row: usize,
        hook: Hook<'_>,
    ) -> Result<&[f32], ModelError> {
        if row >= tokens.len() {
            return Err(ModelError::TraceRow { row, tokens: tokens.len() });
        }
        self.check_batch(tokens, start_pos)?;
        let mut emit = with_layer_names(hook);
        self.batched(tokens, start_pos, n_ubatch, Some((row, &mut emit)))
    }

    /// The checks of a batch: not empty, every token in the vocabulary, every position in the
    /// context, the first one next in the cache.
    fn check_batch(&self, tokens: &[u32], start_pos: usize) -> Result<(), ModelError> {
        let Some(last) = tokens.len().checked_sub(1) else {
            return Err(ModelError::EmptyBatch);
        };
        self.check(tokens[0], start_pos)?;
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.config.n_vocab) {
            return Err(ModelError::TokenOutOfRange { token: bad, n_vocab: self.config.n_vocab });
        }
        if start_pos + last >= self.cache.n_ctx {
            return Err(ModelError::ContextFull { pos: start_pos + last, n_ctx: self.cache.n_ctx });
        }
        Ok(())
    }

    /// The batched path over ubatches of `n_ubatch` (0: one ubatch), tracing token `row` of
    /// `tokens` into the emitter when given (that part runs on this thread: the emitter is not
    /// `Send`; the bits do not depend on the thread).
    fn batched(
        &mut self,
        tokens: &[u32],
        start_pos: usize,
        n_ubatch: usize,
        mut trace: Option<(usize, forward::Emit<'_>)>,
    ) -> Result<&[f32], ModelError> {
        let n_ubatch = if n_ubatch == 0 { tokens.len() } else { n_ubatch };
        if tokens.len() > 1 && self.s.cap < BATCH_TOKENS {
            self.s = Scratch::new(&self.config, BATCH_TOKENS, self.qk256);
        }
        let (cap, nv) = (self.s.cap, self.config.n_vocab);
        self.s.batch_logits.resize(tokens.len() * nv, 0.0);
        self.s.head.resize(cap * nv, 0.0);
        let mut row = 0;
        for ubatch in tokens.chunks(n_ubatch) {
            let ub = attention::Ubatch { last: start_pos + row + ubatch.len() - 1, len: ubatch.len() };
            for part in ubatch.chunks(cap) {
                let fault = self.fault;
                let traced = trace.as_mut().filter(|(r, _)| (row..row + part.len()).contains(r));
                match traced {
                    Some((r, emit)) => {
                        let hooks = Hooks::traced_row(&mut **emit, fault, *r - row);
                        let (pass, _) = self.pass();
                        pass.run_ubatch(part, start_pos + row, ub, row, hooks);
                    }
                    None => {
                        let (pass, pool) = self.pass();
                        pool.install(|| {
                            pass.run_ubatch(part, start_pos + row, ub, row, Hooks::silent(fault))
                        });
                    }
                }
                row += part.len();
            }
        }
        Ok(&self.s.batch_logits[..tokens.len() * nv])
    }

    /// [`eval`](Self::eval), handing every named intermediate tensor to `hook`.
    pub fn eval_traced(&mut self, token: u32, pos: usize, hook: Hook<'_>) -> Result<&[f32], ModelError> {
        self.check(token, pos)?;
        let fault = self.fault;
        let mut emit = with_layer_names(hook);
        let (pass, _) = self.pass();
        pass.run(&[token], pos, true, Hooks::traced(&mut emit, fault));
        Ok(&self.s.logits)
    }

    /// The names of the traced operations, in the order [`eval_traced`](Self::eval_traced)
    /// reports them: each layer's ([`Arch::layer_ops`], which depend on the architecture and
    /// on the layer's `.scale` tensors) with the layer appended (`Qcur-1`), then
    /// [`FINAL_OPS`]. These are the reference's names for the same tensors, so a trace of
    /// both engines compares by name. (`eval_traced` also reports the embedding row,
    /// `inp_embd`, before them.)
    pub fn traced_names(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for (l, layer) in self.layers.iter().enumerate() {
            let (up, gate) = (layer.scales[scale_idx::UP].is_some(), layer.scales[scale_idx::GATE].is_some());
            v.extend(self.config.arch.layer_ops(up, gate).into_iter().map(|op| format!("{op}-{l}")));
        }
        v.extend(FINAL_OPS.iter().map(|op| op.to_string()));
        v
    }

    /// The model's parts, borrowed for one forward pass, and the pool.
    fn pass(&mut self) -> (Forward<'_, 'a>, &Pool) {
        let Model { config, token_embd, output_norm, layers, rope, cache, s, attn, numerics, pool, .. } =
            self;
        let pass =
            Forward { c: config, nx: *numerics, token_embd, output_norm, layers, rope, cache, s, attn, pool };
        (pass, pool)
    }

    fn check(&self, token: u32, pos: usize) -> Result<(), ModelError> {
        if token as usize >= self.config.n_vocab {
            return Err(ModelError::TokenOutOfRange { token, n_vocab: self.config.n_vocab });
        }
        if pos >= self.cache.n_ctx {
            return Err(ModelError::ContextFull { pos, n_ctx: self.cache.n_ctx });
        }
        if pos > self.cache.filled {
            return Err(ModelError::PositionGap { pos, filled: self.cache.filled });
        }
        Ok(())
    }
}

/// The forward pass's `(name, layer, values)` reports as the reference names them: `Qcur-1`
/// for a layer's tensor, the bare name outside the layers.
fn with_layer_names<'h>(hook: Hook<'h>) -> impl FnMut(&str, Option<usize>, &[f32]) + 'h {
    move |name, layer, t| match layer {
        Some(l) => hook(&format!("{name}-{l}"), t),
        None => hook(name, t),
    }
}
