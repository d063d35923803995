//! Quantizing a GGUF file with the reference's `llama_model_quantize`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::library::{take_last_error, Reference};
use crate::sys;

/// `LLAMA_FTYPE_MOSTLY_I2_S`: I2_S linear weights, token embeddings kept F16.
pub const FTYPE_MOSTLY_I2_S: u32 = sys::llama_ftype_LLAMA_FTYPE_MOSTLY_I2_S;

/// Options of [`Reference::quantize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuantizeOptions {
    /// A `llama_ftype` value; [`FTYPE_MOSTLY_I2_S`] by default.
    pub ftype: u32,
    /// Quantizer threads. **With I2_S, more than 1 corrupts the output**: the reference
    /// quantizes in row chunks that each write their own scale inside the next chunk's data
    /// (REFERENCE.md). The file loads and produces garbage. Only use `threads > 1` to
    /// reproduce that bug on purpose; [`Reference::quantize_i2s`] always uses 1.
    pub threads: u32,
    /// ggml type id for `output.weight` (`--output-tensor-type`), or `None` for the quantizer's
    /// own choice. The quantizer treats a tied `token_embd.weight` (no `output.weight` in the
    /// file) as the output: this type applies to it too, unless `token_embedding_type` is set.
    #[serde(default)]
    pub output_tensor_type: Option<u32>,
    /// ggml type id for `token_embd.weight` (`--token-embedding-type`), or `None` for the
    /// quantizer's own choice (for ftype I2_S: F16, or for a tied head Q8_0 when the row length
    /// is not a multiple of 256).
    #[serde(default)]
    pub token_embedding_type: Option<u32>,
}

impl Default for QuantizeOptions {
    fn default() -> Self {
        QuantizeOptions {
            ftype: FTYPE_MOSTLY_I2_S,
            threads: 1,
            output_tensor_type: None,
            token_embedding_type: None,
        }
    }
}

impl Reference {
    /// Quantize `input` (F32/F16 GGUF) to I2_S in `output`, with one thread (the only correct
    /// setting for I2_S).
    pub fn quantize_i2s(&self, input: &Path, output: &Path) -> Result<()> {
        self.quantize(input, output, QuantizeOptions::default())
    }

    /// `llama_model_quantize` with explicit options; see [`QuantizeOptions::threads`].
    pub fn quantize(&self, input: &Path, output: &Path, options: QuantizeOptions) -> Result<()> {
        let err = |reason: String| Error::Quantize {
            input: input.to_path_buf(),
            output: output.to_path_buf(),
            reason,
        };
        if !input.is_file() {
            return Err(err("no such input file".into()));
        }
        if options.threads == 0 {
            return Err(err("threads must be at least 1 (0 would mean all cores)".into()));
        }
        for (what, ty) in [
            ("output_tensor_type", options.output_tensor_type),
            ("token_embedding_type", options.token_embedding_type),
        ] {
            if ty.is_some_and(|t| t >= sys::ggml_type_GGML_TYPE_COUNT) {
                return Err(err(format!("{what} {} is not a ggml type id", ty.unwrap_or_default())));
            }
        }
        let cin = std::ffi::CString::new(input.as_os_str().as_encoded_bytes())
            .map_err(|_| err("input path contains a NUL byte".into()))?;
        let cout = std::ffi::CString::new(output.as_os_str().as_encoded_bytes())
            .map_err(|_| err("output path contains a NUL byte".into()))?;
        let api = &self.api.raw;
        take_last_error();
        // SAFETY: default params are plain data; both paths are valid C strings; the function
        // reads and writes only the named files.
        let status = unsafe {
            let mut p = api.llama_model_quantize_default_params();
            p.nthread = options.threads as i32;
            p.ftype = options.ftype;
            if let Some(t) = options.output_tensor_type {
                p.output_tensor_type = t;
            }
            if let Some(t) = options.token_embedding_type {
                p.token_embedding_type = t;
            }
            api.llama_model_quantize(cin.as_ptr(), cout.as_ptr(), &p)
        };
        if status != 0 {
            return Err(err(format!("status {status}: {}", take_last_error())));
        }
        Ok(())
    }
}
