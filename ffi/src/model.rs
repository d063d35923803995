//! A model loaded by the reference: metadata, vocabulary, tokenizer.

use std::ffi::{c_char, CString};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::library::{take_last_error, Api, Reference};
use crate::sys;

/// Owns one `llama_model`; freed when the last [`Model`] or [`crate::Context`] holding it drops.
pub(crate) struct ModelHandle {
    pub(crate) api: Arc<Api>,
    pub(crate) ptr: NonNull<sys::llama_model>,
    pub(crate) path: PathBuf,
}

// SAFETY: a llama_model is immutable once loaded; llama.cpp reads it from any thread and
// from several contexts at once (that is how its server runs parallel slots). It is freed
// only in Drop, when no Rust reference remains.
unsafe impl Send for ModelHandle {}
// SAFETY: see above: every method through a shared reference only reads the model.
unsafe impl Sync for ModelHandle {}

impl Drop for ModelHandle {
    fn drop(&mut self) {
        // SAFETY: ptr came from llama_load_model_from_file and is freed exactly once, here;
        // contexts hold an Arc to this handle, so none is alive any more.
        unsafe { self.api.raw.llama_free_model(self.ptr.as_ptr()) }
    }
}

/// A model loaded by the reference. Cheap to clone (shared handle).
#[derive(Clone)]
pub struct Model {
    pub(crate) inner: Arc<ModelHandle>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("path", &self.inner.path).finish()
    }
}

/// What the reference reports about a loaded model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub path: PathBuf,
    /// `llama_model_desc`, e.g. "bitnet-b1.58 2B I2_S - 2 bpw ternary".
    pub description: String,
    pub n_vocab: u32,
    pub n_ctx_train: u32,
    pub n_embd: u32,
    pub n_layer: u32,
    pub n_head: u32,
    /// `llama_vocab_type` (1 SPM, 2 BPE, ...).
    pub vocab_type: u32,
    /// `llama_rope_type` (0 NORM, 2 NEOX, -1 none).
    pub rope_type: i32,
    pub size_bytes: u64,
    pub n_params: u64,
    pub bos: i32,
    pub eos: i32,
    pub add_bos: bool,
    /// Every scalar metadata pair, as the reference renders it (arrays are summarised by it).
    pub metadata: Vec<(String, String)>,
}

/// Read a string that a llama.cpp getter writes into a caller buffer, growing the buffer when
/// the returned length says it was too small.
fn read_string(mut call: impl FnMut(*mut c_char, usize) -> i32) -> Option<String> {
    let mut buf = vec![0u8; 256];
    loop {
        let n = call(buf.as_mut_ptr().cast(), buf.len());
        if n < 0 {
            return None;
        }
        let n = n as usize;
        if n < buf.len() {
            return Some(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        buf.resize(n + 1, 0);
    }
}

fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::InvalidArgument(format!("path {} contains a NUL byte", path.display())))
}

impl Reference {
    /// Load a GGUF model with the reference's defaults (mmap, CPU only). A failure is a typed
    /// error carrying the reason the reference logged, never a null pointer.
    pub fn load_model(&self, path: &Path) -> Result<Model> {
        if !path.is_file() {
            return Err(Error::ModelLoad { path: path.to_path_buf(), reason: "no such file".into() });
        }
        let c = c_path(path)?;
        let api = &self.api.raw;
        take_last_error();
        // SAFETY: default params are plain data; the path is a valid C string that outlives the
        // call; the library copies what it keeps.
        let ptr = unsafe {
            let mut params = api.llama_model_default_params();
            params.n_gpu_layers = 0;
            api.llama_load_model_from_file(c.as_ptr(), params)
        };
        let ptr = NonNull::new(ptr)
            .ok_or_else(|| Error::ModelLoad { path: path.to_path_buf(), reason: take_last_error() })?;
        Ok(Model { inner: Arc::new(ModelHandle { api: self.api.clone(), ptr, path: path.to_path_buf() }) })
    }
}

impl Model {
    fn api(&self) -> &sys::BitnetCppApi {
        &self.inner.api.raw
    }

    fn raw(&self) -> *const sys::llama_model {
        self.inner.ptr.as_ptr()
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Vocabulary size (= length of a logits row).
    pub fn n_vocab(&self) -> usize {
        // SAFETY: the model pointer is valid for the life of self.
        unsafe { self.api().llama_n_vocab(self.raw()) }.max(0) as usize
    }

    /// One metadata value as the reference renders it, if the key exists and is scalar.
    pub fn meta(&self, key: &str) -> Option<String> {
        let key = CString::new(key).ok()?;
        let api = self.api();
        // SAFETY: valid model; key is a C string; the callee writes at most `len` bytes.
        read_string(|buf, len| unsafe { api.llama_model_meta_val_str(self.raw(), key.as_ptr(), buf, len) })
    }

    /// All metadata pairs in file order.
    pub fn metadata(&self) -> Vec<(String, String)> {
        let api = self.api();
        // SAFETY: valid model.
        let n = unsafe { api.llama_model_meta_count(self.raw()) }.max(0);
        (0..n)
            .filter_map(|i| {
                // SAFETY: 0 <= i < count; the callee writes at most `len` bytes.
                let k =
                    read_string(|b, l| unsafe { api.llama_model_meta_key_by_index(self.raw(), i, b, l) })?;
                // SAFETY: as above.
                let v = read_string(|b, l| unsafe {
                    api.llama_model_meta_val_str_by_index(self.raw(), i, b, l)
                })?;
                Some((k, v))
            })
            .collect()
    }

    /// Everything the reference reports about the model.
    pub fn info(&self) -> ModelInfo {
        let api = self.api();
        let m = self.raw();
        // SAFETY: the model pointer is valid for the life of self; the getters only read it and
        // the description is written into a buffer of the stated length.
        unsafe {
            ModelInfo {
                path: self.inner.path.clone(),
                description: read_string(|b, l| api.llama_model_desc(m, b, l)).unwrap_or_default(),
                n_vocab: api.llama_n_vocab(m).max(0) as u32,
                n_ctx_train: api.llama_n_ctx_train(m).max(0) as u32,
                n_embd: api.llama_n_embd(m).max(0) as u32,
                n_layer: api.llama_n_layer(m).max(0) as u32,
                n_head: api.llama_n_head(m).max(0) as u32,
                vocab_type: api.llama_vocab_type(m),
                rope_type: api.llama_rope_type(m),
                size_bytes: api.llama_model_size(m),
                n_params: api.llama_model_n_params(m),
                bos: api.llama_token_bos(m),
                eos: api.llama_token_eos(m),
                add_bos: api.llama_add_bos_token(m),
                metadata: self.metadata(),
            }
        }
    }

    /// Tokenize text. `add_special` adds BOS (if the model says so); `parse_special` lets the
    /// text contain special tokens such as `<|eot_id|>`.
    pub fn tokenize(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<i32>> {
        let len = i32::try_from(text.len())
            .map_err(|_| Error::Tokenizer(format!("text of {} bytes is too long", text.len())))?;
        let mut tokens = vec![0i32; text.len() + 2];
        for _ in 0..2 {
            // SAFETY: text points to len bytes (not NUL-terminated, as the API allows); tokens
            // has room for tokens.len() entries, which is what we pass.
            let n = unsafe {
                self.api().llama_tokenize(
                    self.raw(),
                    text.as_ptr().cast(),
                    len,
                    tokens.as_mut_ptr(),
                    tokens.len() as i32,
                    add_special,
                    parse_special,
                )
            };
            if n >= 0 {
                tokens.truncate(n as usize);
                return Ok(tokens);
            }
            if n == i32::MIN {
                break;
            }
            tokens.resize((-n) as usize, 0);
        }
        Err(Error::Tokenizer(format!("llama_tokenize failed on {} bytes of text", text.len())))
    }

    fn check_token(&self, token: i32) -> Result<()> {
        let n = self.n_vocab();
        if token < 0 || token as usize >= n {
            return Err(Error::InvalidArgument(format!("token {token} is outside the vocabulary (0..{n})")));
        }
        Ok(())
    }

    /// The bytes of one token as the reference renders it (may be part of a UTF-8 character).
    pub fn token_piece(&self, token: i32, special: bool) -> Result<Vec<u8>> {
        self.check_token(token)?;
        let mut buf = vec![0u8; 64];
        for _ in 0..2 {
            // SAFETY: buf has buf.len() writable bytes, which is what we pass.
            let n = unsafe {
                self.api().llama_token_to_piece(
                    self.raw(),
                    token,
                    buf.as_mut_ptr().cast(),
                    buf.len() as i32,
                    0,
                    special,
                )
            };
            if n >= 0 {
                buf.truncate(n as usize);
                return Ok(buf);
            }
            buf.resize((-n) as usize, 0);
        }
        Err(Error::Tokenizer(format!("llama_token_to_piece failed for token {token}")))
    }

    /// Bytes of a token sequence (the reference's detokenizer).
    pub fn detokenize(&self, tokens: &[i32], remove_special: bool, unparse_special: bool) -> Result<Vec<u8>> {
        for &t in tokens {
            self.check_token(t)?;
        }
        let mut buf = vec![0u8; tokens.len() * 8 + 16];
        for _ in 0..2 {
            // SAFETY: tokens points to tokens.len() ids; buf has buf.len() writable bytes.
            let n = unsafe {
                self.api().llama_detokenize(
                    self.raw(),
                    tokens.as_ptr(),
                    tokens.len() as i32,
                    buf.as_mut_ptr().cast(),
                    buf.len() as i32,
                    remove_special,
                    unparse_special,
                )
            };
            if n >= 0 {
                buf.truncate(n as usize);
                return Ok(buf);
            }
            buf.resize((-n) as usize, 0);
        }
        Err(Error::Tokenizer(format!("llama_detokenize failed for {} tokens", tokens.len())))
    }
}
