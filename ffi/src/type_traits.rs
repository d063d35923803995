//! One row through a ggml type's own functions, from the reference's type traits
//! (`ggml_get_type_traits`): `to_float` (the embedding lookup of `ggml_get_rows`),
//! `from_float` (the activation conversion `ggml_mul_mat` does before its dots),
//! `from_float_ref` (the quantizer that writes files) and `vec_dot` (one output of a
//! one-column product). They let a test hold a mirror's kernels to the reference's on any
//! input, operation by operation, for whichever build is loaded.
//!
//! Only block and float types with ggml's usual signatures are accepted: the bitnet types
//! (I2_S, I8_S, TL1, TL2) have entries of another shape and are refused.

use std::ffi::c_void;

use crate::error::{Error, Result};
use crate::library::Reference;
use crate::sys;

/// A buffer aligned like ggml's own allocations (64 bytes), `len` bytes long.
struct Aligned {
    lines: Vec<Line>,
    len: usize,
}

#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u8; 64]);

impl Aligned {
    fn zeroed(len: usize) -> Aligned {
        Aligned { lines: vec![Line([0; 64]); len.div_ceil(64).max(1)], len }
    }

    fn from_bytes(bytes: &[u8]) -> Aligned {
        let mut a = Aligned::zeroed(bytes.len());
        a.bytes_mut().copy_from_slice(bytes);
        a
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the lines are contiguous plain bytes, at least `len` of them.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr() as *const u8, self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above; exclusively borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr() as *mut u8, self.len) }
    }
}

/// A ggml type's traits, checked to be one these functions can call.
struct Traits {
    ty: sys::ggml_type,
    blck_size: usize,
    type_size: usize,
    to_float: sys::ggml_to_float_t,
    from_float: sys::ggml_from_float_t,
    from_float_ref: sys::ggml_from_float_t,
    vec_dot: sys::ggml_vec_dot_t,
    vec_dot_type: sys::ggml_type,
}

impl Traits {
    /// Bytes of a row of `n` values, or why `n` is not a row length of the type.
    fn row_bytes(&self, n: usize) -> Result<usize> {
        if n == 0 || !n.is_multiple_of(self.blck_size) || n > i32::MAX as usize {
            return Err(Error::InvalidArgument(format!(
                "ggml type {}: {n} values are not a whole number of blocks of {}",
                self.ty, self.blck_size
            )));
        }
        Ok(n / self.blck_size * self.type_size)
    }
}

fn missing(ty: sys::ggml_type, what: &str) -> Error {
    Error::InvalidArgument(format!("ggml type {ty} has no {what} in the reference's type traits"))
}

impl Reference {
    fn traits(&self, ty: sys::ggml_type) -> Result<Traits> {
        let bitnet = [
            sys::ggml_type_GGML_TYPE_I2_S,
            sys::ggml_type_GGML_TYPE_I8_S,
            sys::ggml_type_GGML_TYPE_TL1,
            sys::ggml_type_GGML_TYPE_TL2,
        ];
        if ty >= sys::ggml_type_GGML_TYPE_COUNT || bitnet.contains(&ty) {
            return Err(Error::InvalidArgument(format!(
                "ggml type {ty}: not a type whose row functions can be called here"
            )));
        }
        // SAFETY: ty < GGML_TYPE_COUNT; the result points into ggml's static traits table.
        let t = unsafe { &*self.api.raw.ggml_get_type_traits(ty) };
        if t.blck_size <= 0 || t.type_size == 0 {
            return Err(Error::InvalidArgument(format!("ggml type {ty} is removed or has no size")));
        }
        Ok(Traits {
            ty,
            blck_size: t.blck_size as usize,
            type_size: t.type_size,
            to_float: t.to_float,
            from_float: t.from_float,
            from_float_ref: t.from_float_ref,
            vec_dot: t.vec_dot,
            vec_dot_type: t.vec_dot_type,
        })
    }

    /// The type whose rows `ty`'s `vec_dot` multiplies with (ggml's `vec_dot_type`: Q8_0 for
    /// Q8_0, Q8_K for the K-quants, BF16 for BF16, F16 for F16...).
    pub fn ggml_vec_dot_type(&self, ty: u32) -> Result<u32> {
        Ok(self.traits(ty)?.vec_dot_type)
    }

    /// Bytes of one row of `n` values of `ty`.
    pub fn ggml_row_bytes(&self, ty: u32, n: usize) -> Result<usize> {
        self.traits(ty)?.row_bytes(n)
    }

    /// `to_float` of `ty` on one row (`bytes` holds `n` values).
    pub fn ggml_to_float(&self, ty: u32, bytes: &[u8], n: usize) -> Result<Vec<f32>> {
        let t = self.traits(ty)?;
        let rb = t.row_bytes(n)?;
        if bytes.len() != rb {
            return Err(Error::InvalidArgument(format!(
                "ggml type {ty}: {} bytes given, {rb} hold {n} values",
                bytes.len()
            )));
        }
        let f = t.to_float.ok_or_else(|| missing(ty, "to_float"))?;
        let input = Aligned::from_bytes(bytes);
        let mut out = vec![0f32; n];
        // SAFETY: `input` holds one row of n values of ty (checked), `out` n floats; to_float
        // reads and writes only those.
        unsafe { f(input.bytes().as_ptr() as *const c_void, out.as_mut_ptr(), n as i64) };
        Ok(out)
    }

    fn convert(&self, ty: u32, x: &[f32], reference: bool) -> Result<Vec<u8>> {
        let t = self.traits(ty)?;
        let rb = t.row_bytes(x.len())?;
        let f = if reference { t.from_float_ref } else { t.from_float };
        let f = f.ok_or_else(|| missing(ty, if reference { "from_float_ref" } else { "from_float" }))?;
        let mut out = Aligned::zeroed(rb);
        // SAFETY: `x` holds n values, `out` one row of n values of ty (rb bytes); the function
        // reads and writes only those.
        unsafe { f(x.as_ptr(), out.bytes_mut().as_mut_ptr() as *mut c_void, x.len() as i64) };
        Ok(out.bytes().to_vec())
    }

    /// `from_float` of `ty` on one row: for a `vec_dot_type`, the conversion `ggml_mul_mat`
    /// applies to its activation (`quantize_row_q8_0`, `quantize_row_q8_K`,
    /// `ggml_fp32_to_bf16_row`, ...), as this build compiles it.
    pub fn ggml_from_float(&self, ty: u32, x: &[f32]) -> Result<Vec<u8>> {
        self.convert(ty, x, false)
    }

    /// `from_float_ref` of `ty` on one row: the quantizer that writes model files
    /// (`quantize_row_q4_K_ref`, ...; what `llama_model_quantize` calls without an importance
    /// matrix).
    pub fn ggml_from_float_ref(&self, ty: u32, x: &[f32]) -> Result<Vec<u8>> {
        self.convert(ty, x, true)
    }

    /// `vec_dot` of `ty`: one row `w` of `n` values of `ty` with one row `y` of `n` values of
    /// its `vec_dot_type` (one output of a one-column `ggml_mul_mat`).
    pub fn ggml_vec_dot(&self, ty: u32, n: usize, w: &[u8], y: &[u8]) -> Result<f32> {
        let t = self.traits(ty)?;
        let dt = self.traits(t.vec_dot_type)?;
        let (wb, yb) = (t.row_bytes(n)?, dt.row_bytes(n)?);
        if w.len() != wb || y.len() != yb {
            return Err(Error::InvalidArgument(format!(
                "ggml type {ty}: rows of {} and {} bytes given, {wb} and {yb} hold {n} values",
                w.len(),
                y.len()
            )));
        }
        let f = t.vec_dot.ok_or_else(|| missing(ty, "vec_dot"))?;
        let (w, y) = (Aligned::from_bytes(w), Aligned::from_bytes(y));
        let mut s = 0f32;
        // SAFETY: both rows hold n values of their types (checked); nrc = 1 computes one
        // output into `s` (strides unused).
        unsafe {
            f(
                n as i32,
                &mut s,
                0,
                w.bytes().as_ptr() as *const c_void,
                0,
                y.bytes().as_ptr() as *const c_void,
                0,
                1,
            )
        };
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_rows_round_trip_and_dot() {
        let r = Reference::open_built().unwrap();
        let q8_0 = sys::ggml_type_GGML_TYPE_Q8_0;
        let x: Vec<f32> = (0..64).map(|i| i as f32 - 32.0).collect();
        let q = r.ggml_from_float_ref(q8_0, &x).unwrap();
        assert_eq!(q.len(), 2 * 34);
        let back = r.ggml_to_float(q8_0, &q, 64).unwrap();
        for (a, b) in x.iter().zip(&back) {
            assert!((a - b).abs() <= 32.0 / 127.0, "{a} {b}");
        }
        assert_eq!(r.ggml_vec_dot_type(q8_0).unwrap(), q8_0);
        let y = r.ggml_from_float(q8_0, &vec![1.0; 64]).unwrap();
        let s = r.ggml_vec_dot(q8_0, 64, &q, &y).unwrap();
        assert!((s - x.iter().sum::<f32>()).abs() < 1.0, "{s}");
        assert!(r.ggml_to_float(q8_0, &q, 60).is_err());
        assert!(r.ggml_vec_dot(q8_0, 64, &q[1..], &y).is_err());
        assert!(r.ggml_to_float(sys::ggml_type_GGML_TYPE_I2_S, &q, 64).is_err());
    }
}
