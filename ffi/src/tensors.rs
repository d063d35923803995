//! Reading a GGUF file's tensors with ggml's own parser and dequantizing them with ggml's own
//! type traits (`to_float`): the ground truth for tensor-level comparisons.
//!
//! ggml's `gguf_init_from_file` cannot load I2_S data itself (it sizes the data section with
//! `ggml_row_size`, which counts an I2_S weight as one byte, and fails reading past the end),
//! so it parses the header only (`no_alloc`), and each tensor's `ggml_nbytes` bytes are read
//! from the file at the offset ggml computed — the way llama.cpp's own loader does it.

use std::ffi::{c_void, CStr};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::library::{take_last_error, Api, Reference};
use crate::sys;

/// `dequantize_row_i2_s(x, y, n, scale)`: the I2_S entry of ggml's type traits has this real
/// signature (the tensor's single scale is a fourth argument), although the table stores it
/// cast to the three-argument `ggml_to_float_t`.
type DequantizeI2s = unsafe extern "C" fn(x: *const u8, y: *mut f32, n: i64, scale: f32);

/// One tensor of the file, as ggml sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorEntry {
    pub name: String,
    pub ggml_type: u32,
    /// ggml's name for the type (`f32`, `f16`, `i2_s`, ...).
    pub type_name: String,
    /// ggml dims, `ne[0]` = row length.
    pub ne: Vec<i64>,
    /// `ggml_nbytes` (I2_S: n/4 + 32).
    pub n_bytes: u64,
}

/// A GGUF file parsed by `gguf_init_from_file` (tensor descriptors in a ggml context).
pub struct GgufTensors {
    api: Arc<Api>,
    path: PathBuf,
    file: File,
    gguf: NonNull<sys::gguf_context>,
    ctx: NonNull<sys::ggml_context>,
}

// SAFETY: the contexts are owned exclusively by this value and only read after loading.
unsafe impl Send for GgufTensors {}

impl Drop for GgufTensors {
    fn drop(&mut self) {
        // SAFETY: both pointers came from gguf_init_from_file and are freed once, here.
        unsafe {
            self.api.raw.ggml_free(self.ctx.as_ptr());
            self.api.raw.gguf_free(self.gguf.as_ptr());
        }
    }
}

impl Reference {
    /// Parse a GGUF file with ggml; tensor data is read on demand.
    pub fn open_gguf_tensors(&self, path: &Path) -> Result<GgufTensors> {
        let err = |reason: String| Error::Tensor { path: path.to_path_buf(), reason };
        if !path.is_file() {
            return Err(err("no such file".into()));
        }
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| err("path contains a NUL byte".into()))?;
        let file = File::open(path).map_err(|e| err(e.to_string()))?;
        let mut ctx: *mut sys::ggml_context = std::ptr::null_mut();
        take_last_error();
        // SAFETY: valid C string; ctx receives a new ggml context holding tensor descriptors.
        let gguf = unsafe {
            self.api
                .raw
                .gguf_init_from_file(c.as_ptr(), sys::gguf_init_params { no_alloc: true, ctx: &mut ctx })
        };
        let gguf =
            NonNull::new(gguf).ok_or_else(|| err(format!("ggml cannot read it: {}", take_last_error())))?;
        let Some(ctx) = NonNull::new(ctx) else {
            // SAFETY: gguf is valid and not stored anywhere else.
            unsafe { self.api.raw.gguf_free(gguf.as_ptr()) };
            return Err(err("ggml created no tensor context".into()));
        };
        Ok(GgufTensors { api: self.api.clone(), path: path.to_path_buf(), file, gguf, ctx })
    }
}

impl GgufTensors {
    fn raw(&self) -> &sys::BitnetCppApi {
        &self.api.raw
    }

    fn error(&self, reason: String) -> Error {
        Error::Tensor { path: self.path.clone(), reason }
    }

    fn tensor(&self, name: &str) -> Result<&sys::ggml_tensor> {
        let c = std::ffi::CString::new(name).map_err(|_| self.error(format!("bad tensor name {name:?}")))?;
        // SAFETY: valid context and C string.
        let t = unsafe { self.raw().ggml_get_tensor(self.ctx.as_ptr(), c.as_ptr()) };
        // SAFETY: a non-null result points into the context, alive as long as self.
        unsafe { t.as_ref() }.ok_or_else(|| self.error(format!("no tensor named {name:?}")))
    }

    fn entry(&self, t: &sys::ggml_tensor) -> TensorEntry {
        // SAFETY: t.name is NUL-terminated; ggml_type_name returns a static string; ggml_nbytes
        // reads only t's fields.
        unsafe {
            TensorEntry {
                name: CStr::from_ptr(t.name.as_ptr()).to_string_lossy().into_owned(),
                ggml_type: t.type_,
                type_name: CStr::from_ptr(self.raw().ggml_type_name(t.type_)).to_string_lossy().into_owned(),
                ne: t.ne.to_vec(),
                n_bytes: self.raw().ggml_nbytes(t) as u64,
            }
        }
    }

    /// Every tensor, in file order.
    pub fn entries(&self) -> Vec<TensorEntry> {
        // SAFETY: valid gguf context.
        let n = unsafe { self.raw().gguf_get_n_tensors(self.gguf.as_ptr()) }.max(0);
        (0..n)
            .filter_map(|i| {
                // SAFETY: 0 <= i < n; the name is a NUL-terminated string owned by gguf.
                let name = unsafe { CStr::from_ptr(self.raw().gguf_get_tensor_name(self.gguf.as_ptr(), i)) }
                    .to_string_lossy()
                    .into_owned();
                self.tensor(&name).ok().map(|t| self.entry(t))
            })
            .collect()
    }

    /// The tensor's bytes exactly as stored (`ggml_nbytes` long), read at ggml's offset.
    pub fn raw_bytes(&self, name: &str) -> Result<Vec<u8>> {
        let t = self.tensor(name)?;
        let n = self.entry(t).n_bytes as usize;
        let c = std::ffi::CString::new(name).map_err(|_| self.error(format!("bad tensor name {name:?}")))?;
        // SAFETY: valid gguf context and C string; the index is checked before use.
        let offset = unsafe {
            let i = self.raw().gguf_find_tensor(self.gguf.as_ptr(), c.as_ptr());
            if i < 0 {
                return Err(self.error(format!("no tensor named {name:?}")));
            }
            self.raw().gguf_get_data_offset(self.gguf.as_ptr())
                + self.raw().gguf_get_tensor_offset(self.gguf.as_ptr(), i)
        };
        let mut buf = vec![0u8; n];
        self.file
            .read_exact_at(&mut buf, offset as u64)
            .map_err(|e| self.error(format!("reading {n} bytes of {name} at offset {offset}: {e}")))?;
        Ok(buf)
    }

    /// All values as f32, converted by ggml: F32 copied, other types through their traits'
    /// `to_float` (I2_S with its per-tensor scale, read where ggml reads it: after the n/4
    /// packed bytes).
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.tensor(name)?;
        let bytes = self.raw_bytes(name)?;
        let bytes = bytes.as_slice();
        // SAFETY: reads t's dims only.
        let n = unsafe { self.raw().ggml_nelements(t) }.max(0) as usize;
        let mut out = vec![0f32; n];
        match t.type_ {
            sys::ggml_type_GGML_TYPE_F32 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            ty => {
                // SAFETY: ggml_get_type_traits returns a pointer into a static table.
                let tr = unsafe { &*self.raw().ggml_get_type_traits(ty) };
                let to_float = tr
                    .to_float
                    .ok_or_else(|| self.error(format!("ggml has no to_float for {name}'s type {ty}")))?;
                if ty == sys::ggml_type_GGML_TYPE_I2_S {
                    let packed = n / 4;
                    let s = bytes.get(packed..packed + 4).ok_or_else(|| {
                        self.error(format!("I2_S tensor {name} is too short for its scale"))
                    })?;
                    let scale = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
                    // SAFETY: the I2_S slot of the traits table holds dequantize_row_i2_s, whose
                    // real signature is DequantizeI2s (see ggml-quants.h); both are plain C
                    // function pointers of the same size.
                    let f: DequantizeI2s = unsafe { std::mem::transmute(to_float) };
                    // SAFETY: bytes holds n/4 packed bytes (plus the scale); out holds n floats.
                    unsafe { f(bytes.as_ptr(), out.as_mut_ptr(), n as i64, scale) };
                } else {
                    // SAFETY: a block-quantized or half type occupies exactly ggml_nbytes bytes
                    // for n elements (n a multiple of the block size, as ggml requires); out
                    // holds n floats.
                    unsafe { to_float(bytes.as_ptr() as *const c_void, out.as_mut_ptr(), n as i64) };
                }
            }
        }
        Ok(out)
    }
}
