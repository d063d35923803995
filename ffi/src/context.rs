//! An evaluation context: KV cache, teacher-forced evaluation, batches, captures.

use std::ffi::c_void;
use std::ptr::NonNull;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::capture::{eval_callback, CaptureFilter, CaptureState, CapturedTensor};
use crate::error::{Error, Result};
use crate::library::take_last_error;
use crate::model::{Model, ModelHandle};
use crate::sys;

/// Settings of a context. The KV cache is F16 and flash attention off, as the reference's
/// defaults (both change numbers, see REFERENCE.md); they are not configurable here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextParams {
    /// Context length (KV cache cells); positions must stay below it.
    pub n_ctx: u32,
    /// Threads for evaluation (single tokens and batches alike).
    pub n_threads: u32,
    /// llama.cpp's `n_ubatch`: the most tokens one graph evaluation takes; a batch of more is
    /// split into ubatches of this many (the last one shorter). It decides the reference's
    /// batched numerics, so a batched comparison fixes it. llama.cpp's default is 512.
    #[serde(default = "default_n_ubatch")]
    pub n_ubatch: u32,
}

/// llama.cpp's default `n_ubatch`.
pub const DEFAULT_N_UBATCH: u32 = 512;

fn default_n_ubatch() -> u32 {
    DEFAULT_N_UBATCH
}

impl Default for ContextParams {
    fn default() -> Self {
        ContextParams { n_ctx: 512, n_threads: 1, n_ubatch: DEFAULT_N_UBATCH }
    }
}

/// A `llama_context` on a model. It holds the model, so it can never outlive it; it is `Send`
/// (one thread at a time) but not `Sync`: every evaluation takes `&mut self`.
pub struct Context {
    ptr: NonNull<sys::llama_context>,
    /// Boxed so the address given to the eval callback stays put.
    capture: Box<CaptureState>,
    n_vocab: usize,
    n_ctx: u32,
    n_ubatch: u32,
    // Declared last: dropped after the context is freed in Drop.
    model: Arc<ModelHandle>,
}

// SAFETY: a llama_context may be used from any thread as long as calls are not concurrent,
// which `&mut self` on every evaluation guarantees; the model it points to is Sync.
unsafe impl Send for Context {}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: ptr came from llama_new_context_with_model and is freed exactly once; the
        // model (held by self.model) is still alive here and freed after, if last.
        unsafe { self.model.api.raw.llama_free(self.ptr.as_ptr()) }
    }
}

impl Model {
    /// A new context with an empty KV cache.
    pub fn new_context(&self, params: ContextParams) -> Result<Context> {
        if params.n_ctx == 0 || params.n_threads == 0 || params.n_ubatch == 0 {
            return Err(Error::InvalidArgument(format!(
                "n_ctx ({}), n_threads ({}) and n_ubatch ({}) must be positive",
                params.n_ctx, params.n_threads, params.n_ubatch
            )));
        }
        let api = &self.inner.api.raw;
        let capture = Box::new(CaptureState::new(api.ggml_get_type_traits));
        take_last_error();
        // SAFETY: default params are plain data; the model pointer is valid; the callback's
        // user data is the boxed CaptureState, which the returned Context owns and drops only
        // after freeing the llama context.
        let ptr = unsafe {
            let mut p = api.llama_context_default_params();
            p.n_ctx = params.n_ctx;
            // One logical batch may hold the whole context (n_batch must be at least any batch
            // fed); llama_decode splits it into ubatches of n_ubatch (clamped to n_batch).
            p.n_batch = params.n_ctx;
            p.n_ubatch = params.n_ubatch.min(params.n_ctx);
            p.n_threads = params.n_threads as i32;
            p.n_threads_batch = params.n_threads as i32;
            p.type_k = sys::ggml_type_GGML_TYPE_F16;
            p.type_v = sys::ggml_type_GGML_TYPE_F16;
            p.flash_attn = false;
            p.no_perf = true;
            p.cb_eval = Some(eval_callback);
            p.cb_eval_user_data = &*capture as *const CaptureState as *mut c_void;
            api.llama_new_context_with_model(self.inner.ptr.as_ptr(), p)
        };
        let ptr = NonNull::new(ptr)
            .ok_or_else(|| Error::Context { n_ctx: params.n_ctx, reason: take_last_error() })?;
        // SAFETY: ptr is the context just created.
        let n_ctx = unsafe { api.llama_n_ctx(ptr.as_ptr()) };
        let n_ubatch = params.n_ubatch.min(params.n_ctx);
        Ok(Context { ptr, capture, n_vocab: self.n_vocab(), n_ctx, n_ubatch, model: self.inner.clone() })
    }
}

impl Context {
    fn api(&self) -> &sys::BitnetCppApi {
        &self.model.api.raw
    }

    /// Logits row length.
    pub fn n_vocab(&self) -> usize {
        self.n_vocab
    }

    /// Context length actually allocated.
    pub fn n_ctx(&self) -> u32 {
        self.n_ctx
    }

    /// The ubatch size batches are split into (`ContextParams::n_ubatch`, at most `n_ctx`).
    pub fn n_ubatch(&self) -> u32 {
        self.n_ubatch
    }

    /// Clear the KV cache (start a new sequence).
    pub fn reset(&mut self) {
        // SAFETY: valid context, exclusive access.
        unsafe { self.api().llama_kv_cache_clear(self.ptr.as_ptr()) }
    }

    fn check(&self, tokens: &[i32], start_pos: u32) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::InvalidArgument("no tokens to evaluate".into()));
        }
        if let Some(&t) = tokens.iter().find(|&&t| t < 0 || t as usize >= self.n_vocab) {
            return Err(Error::InvalidArgument(format!(
                "token {t} is outside the vocabulary (0..{})",
                self.n_vocab
            )));
        }
        let end = start_pos as u64 + tokens.len() as u64;
        if end > self.n_ctx as u64 {
            return Err(Error::InvalidArgument(format!(
                "positions {start_pos}..{end} exceed the context length {}",
                self.n_ctx
            )));
        }
        Ok(())
    }

    /// Run `llama_decode` on tokens at consecutive positions from `start_pos` (sequence 0),
    /// asking for logits at every position (or at the last one only); return them row after row.
    fn decode(&mut self, tokens: &[i32], start_pos: u32, last_only: bool) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        self.decode_into(tokens, start_pos, last_only, &mut out)?;
        Ok(out)
    }

    /// [`decode`](Self::decode) into a caller's buffer (cleared first), so that a caller
    /// evaluating token after token does not allocate.
    fn decode_into(
        &mut self,
        tokens: &[i32],
        start_pos: u32,
        last_only: bool,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        self.check(tokens, start_pos)?;
        let n = tokens.len();
        let mut token = tokens.to_vec();
        let mut pos: Vec<i32> = (0..n).map(|i| (start_pos as usize + i) as i32).collect();
        let mut n_seq_id = vec![1i32; n];
        let mut seq = vec![0i32; n];
        let mut seq_ptrs: Vec<*mut i32> = seq.iter_mut().map(|s| s as *mut i32).collect();
        let mut want: Vec<i8> = (0..n).map(|i| (!last_only || i + 1 == n) as i8).collect();
        let batch = sys::llama_batch {
            n_tokens: n as i32,
            token: token.as_mut_ptr(),
            embd: std::ptr::null_mut(),
            pos: pos.as_mut_ptr(),
            n_seq_id: n_seq_id.as_mut_ptr(),
            seq_id: seq_ptrs.as_mut_ptr(),
            logits: want.as_mut_ptr(),
            all_pos_0: 0,
            all_pos_1: 0,
            all_seq_id: 0,
        };
        let what = if n == 1 {
            format!("token {} at position {start_pos}", tokens[0])
        } else {
            format!("a batch of {n} tokens at positions {start_pos}..{}", start_pos as usize + n)
        };
        take_last_error();
        // SAFETY: every array of the batch has n entries and lives until after the call (the
        // library copies the batch); the context is valid and used by this thread only.
        let status = unsafe { self.api().llama_decode(self.ptr.as_ptr(), batch) };
        if status != 0 {
            return Err(Error::Decode { status, what, reason: take_last_error() });
        }
        let first = if last_only { n - 1 } else { 0 };
        out.clear();
        out.reserve((n - first) * self.n_vocab);
        for i in first..n {
            // SAFETY: valid context; i indexes an output requested above.
            let row = unsafe { self.api().llama_get_logits_ith(self.ptr.as_ptr(), i as i32) };
            if row.is_null() {
                return Err(Error::Decode { status: 0, what, reason: format!("no logits for output {i}") });
            }
            // SAFETY: a non-null logits row holds n_vocab floats, valid until the next decode.
            out.extend_from_slice(unsafe { std::slice::from_raw_parts(row, self.n_vocab) });
        }
        Ok(())
    }

    /// Teacher forcing: evaluate one token at `pos` (the KV cache must hold positions
    /// `0..pos`) and return its logits (`n_vocab` values). The KV cache keeps the token.
    pub fn eval_token(&mut self, token: i32, pos: u32) -> Result<Vec<f32>> {
        self.decode(&[token], pos, false)
    }

    /// [`eval_token`](Self::eval_token) writing the logits into `out` (cleared first): no
    /// allocation once `out` has grown, for timing loops.
    pub fn eval_token_into(&mut self, token: i32, pos: u32, out: &mut Vec<f32>) -> Result<()> {
        self.decode_into(&[token], pos, false, out)
    }

    /// Evaluate several tokens at once at positions `start_pos..`; logits of every position,
    /// row after row (`tokens.len() * n_vocab` values).
    pub fn eval_batch(&mut self, tokens: &[i32], start_pos: u32) -> Result<Vec<f32>> {
        self.decode(tokens, start_pos, false)
    }

    /// Evaluate several tokens at once (a prompt's prefill) computing logits for the last
    /// position only, as llama.cpp's own prompt processing does; returns those `n_vocab` values.
    pub fn eval_batch_last(&mut self, tokens: &[i32], start_pos: u32) -> Result<Vec<f32>> {
        self.decode(tokens, start_pos, true)
    }

    /// Like [`Context::eval_batch`] (logits of every position), also returning the graph nodes
    /// that `filter` selects, in evaluation order. A batch longer than [`Context::n_ubatch`] is
    /// evaluated as several graphs, so each node is then reported once per ubatch; captured
    /// per-token tensors hold one row per token of their ubatch (`ne` says how many).
    pub fn eval_batch_capture(
        &mut self,
        tokens: &[i32],
        start_pos: u32,
        filter: &CaptureFilter,
    ) -> Result<(Vec<f32>, Vec<CapturedTensor>)> {
        self.capture.begin(filter.clone());
        let logits = self.decode(tokens, start_pos, false);
        let (captured, errors) = self.capture.end();
        let logits = logits?;
        if let Some(e) = errors.first() {
            return Err(Error::InvalidArgument(format!("cannot capture {e}")));
        }
        Ok((logits, captured))
    }

    /// Like [`Context::eval_token`], also returning the graph nodes that `filter` selects, as
    /// computed for this position, in evaluation order (repeated names are all kept).
    pub fn eval_token_capture(
        &mut self,
        token: i32,
        pos: u32,
        filter: &CaptureFilter,
    ) -> Result<(Vec<f32>, Vec<CapturedTensor>)> {
        self.capture.begin(filter.clone());
        let logits = self.decode(&[token], pos, false);
        let (captured, errors) = self.capture.end();
        let logits = logits?;
        if let Some(e) = errors.first() {
            return Err(Error::InvalidArgument(format!("cannot capture {e}")));
        }
        Ok((logits, captured))
    }
}
