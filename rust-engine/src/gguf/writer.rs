//! The GGUF writer: declares metadata and tensors, then streams tensor data in order.
//!
//! Tensors are declared first (name, shape, type, byte size) so that the header with every
//! offset can be written before any data; data is then streamed tensor by tensor, so a
//! multi-gigabyte model never has to sit in memory.

use std::io::Write;

use super::error::{GgufError, GgufErrorKind};
use super::reader::DEFAULT_ALIGNMENT;
use super::types::GgmlType;
use super::value::{Array, Value};

struct Declared {
    name: String,
    dims: Vec<u64>,
    ggml_type: GgmlType,
    n_bytes: u64,
    offset: u64,
}

/// Collects metadata and tensor declarations; [`GgufWriter::begin`] writes the header.
pub struct GgufWriter {
    version: u32,
    alignment: u64,
    metadata: Vec<(String, Value)>,
    tensors: Vec<Declared>,
    data_len: u64,
}

fn writer_err(msg: impl Into<String>) -> GgufError {
    GgufError::new(GgufErrorKind::Writer(msg.into()))
}

impl GgufWriter {
    /// A writer for GGUF `version` (2 or 3; the two are identical for little-endian files).
    /// The alignment is taken from a `general.alignment` u32 entry when one is added.
    pub fn new(version: u32) -> GgufWriter {
        GgufWriter {
            version,
            alignment: DEFAULT_ALIGNMENT,
            metadata: Vec::new(),
            tensors: Vec::new(),
            data_len: 0,
        }
    }

    pub fn add_metadata(&mut self, key: impl Into<String>, value: Value) -> Result<(), GgufError> {
        let key = key.into();
        if self.metadata.iter().any(|(k, _)| *k == key) {
            return Err(writer_err(format!("metadata key {key:?} added twice")));
        }
        if !self.tensors.is_empty() && key == "general.alignment" {
            return Err(writer_err("general.alignment must be set before any tensor is declared"));
        }
        if key == "general.alignment" {
            match value {
                Value::U32(a) if a.is_power_of_two() => self.alignment = u64::from(a),
                _ => return Err(writer_err("general.alignment must be a u32 power of two")),
            }
        }
        self.metadata.push((key, value));
        Ok(())
    }

    /// Declares a tensor; `n_bytes` must equal the exact size its type and shape require.
    pub fn add_tensor_info(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ggml_type: GgmlType,
        n_bytes: u64,
    ) -> Result<(), GgufError> {
        let name = name.into();
        let expected = ggml_type
            .tensor_bytes(dims)
            .map_err(|e| writer_err(format!("tensor {name:?} {dims:?} {ggml_type}: {e}")))?;
        if expected != n_bytes {
            return Err(writer_err(format!(
                "tensor {name:?} {dims:?} {ggml_type} needs {expected} bytes, {n_bytes} were declared"
            )));
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(writer_err(format!("tensor {name:?} declared twice")));
        }
        let offset = self.data_len;
        self.data_len = (offset + n_bytes).next_multiple_of(self.alignment);
        self.tensors.push(Declared { name, dims: dims.to_vec(), ggml_type, n_bytes, offset });
        Ok(())
    }

    /// Writes the header (metadata, tensor infos, padding) and returns the data stage.
    pub fn begin<W: Write>(self, mut out: W) -> Result<TensorDataWriter<W>, GgufError> {
        let mut header = Vec::new();
        header.extend_from_slice(b"GGUF");
        header.extend_from_slice(&self.version.to_le_bytes());
        header.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        header.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut header, k);
            header.extend_from_slice(&v.value_type().id().to_le_bytes());
            put_value(&mut header, v);
        }
        for t in &self.tensors {
            put_str(&mut header, &t.name);
            header.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                header.extend_from_slice(&d.to_le_bytes());
            }
            header.extend_from_slice(&t.ggml_type.id().to_le_bytes());
            header.extend_from_slice(&t.offset.to_le_bytes());
        }
        let padded = (header.len() as u64).next_multiple_of(self.alignment) as usize;
        header.resize(padded, 0);
        out.write_all(&header).map_err(|e| GgufError::new(e.into()))?;
        Ok(TensorDataWriter { out, tensors: self.tensors, next: 0, alignment: self.alignment })
    }
}

/// Second stage: tensor data, in declaration order.
pub struct TensorDataWriter<W: Write> {
    out: W,
    tensors: Vec<Declared>,
    next: usize,
    alignment: u64,
}

impl<W: Write> TensorDataWriter<W> {
    /// Name of the tensor whose data is expected next, if any.
    pub fn next_tensor(&self) -> Option<&str> {
        self.tensors.get(self.next).map(|t| t.name.as_str())
    }

    /// Writes the whole data of the next tensor (which must be `name`) and its padding.
    pub fn write_tensor_data(&mut self, name: &str, bytes: &[u8]) -> Result<(), GgufError> {
        self.write_tensor_with(name, |w| w.write_all(bytes))
    }

    /// Streams the data of the next tensor (which must be `name`): `fill` writes exactly
    /// the declared number of bytes, in as many pieces as it likes, so very large tensors
    /// never have to be held in memory.
    pub fn write_tensor_with(
        &mut self,
        name: &str,
        fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<(), GgufError> {
        let t = self.tensors.get(self.next).ok_or_else(|| {
            writer_err(format!("tensor {name:?} written but every declared tensor is done"))
        })?;
        if t.name != name {
            return Err(writer_err(format!("expected data for tensor {:?}, got {name:?}", t.name)));
        }
        let expected = t.n_bytes;
        let mut sink = Counted { inner: &mut self.out, written: 0, limit: expected };
        fill(&mut sink).map_err(|e| GgufError::new(e.into()))?;
        let written = sink.written;
        if written != expected {
            return Err(writer_err(format!("tensor {name:?} got {written} of its {expected} bytes")));
        }
        let pad = written.next_multiple_of(self.alignment) - written;
        self.out.write_all(&vec![0u8; pad as usize]).map_err(|e| GgufError::new(e.into()))?;
        self.next += 1;
        Ok(())
    }

    /// Checks every declared tensor was written, flushes, and returns the sink.
    pub fn finish(mut self) -> Result<W, GgufError> {
        if let Some(t) = self.tensors.get(self.next) {
            return Err(writer_err(format!("tensor {:?} was declared but never written", t.name)));
        }
        self.out.flush().map_err(|e| GgufError::new(e.into()))?;
        Ok(self.out)
    }
}

/// Passes bytes through, refusing to exceed the tensor's declared size.
struct Counted<'a, W: Write> {
    inner: &'a mut W,
    written: u64,
    limit: u64,
}

impl<W: Write> Write for Counted<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.written + buf.len() as u64 > self.limit {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("more than the declared {} bytes", self.limit),
            ));
        }
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn put_value(buf: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => buf.push(*x),
        Value::I8(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => buf.push(u8::from(*x)),
        Value::String(s) => put_str(buf, s),
        Value::Array(a) => put_array(buf, a),
    }
}

fn put_array(buf: &mut Vec<u8>, a: &Array) {
    buf.extend_from_slice(&a.element_type().id().to_le_bytes());
    buf.extend_from_slice(&(a.len() as u64).to_le_bytes());
    macro_rules! each_le {
        ($v:expr) => {
            for x in $v {
                buf.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match a {
        Array::U8(v) => buf.extend_from_slice(v),
        Array::I8(v) => each_le!(v),
        Array::U16(v) => each_le!(v),
        Array::I16(v) => each_le!(v),
        Array::U32(v) => each_le!(v),
        Array::I32(v) => each_le!(v),
        Array::F32(v) => each_le!(v),
        Array::U64(v) => each_le!(v),
        Array::I64(v) => each_le!(v),
        Array::F64(v) => each_le!(v),
        Array::Bool(v) => buf.extend(v.iter().map(|&b| u8::from(b))),
        Array::String(v) => v.iter().for_each(|s| put_str(buf, s)),
        Array::Array(v) => v.iter().for_each(|inner| put_array(buf, inner)),
    }
}
