//! The GGUF reader: parses and validates a whole file up front, then hands out
//! zero-copy slices of the memory map.
//!
//! Layout (versions 2 and 3, little-endian):
//! `"GGUF" | version u32 | n_tensors u64 | n_kv u64 | n_kv × (key, type u32, value) |
//!  n_tensors × (name, n_dims u32, dims u64 × n_dims, type u32, offset u64) | pad to alignment | data`.
//! Strings are `len u64 | bytes`. Every count and length is bounded by the bytes left in the
//! file before anything is allocated, so a hostile header cannot make us allocate more than a
//! small multiple of the file size (`harness/tests/reliability_mutation.rs` measures it on
//! headers built for the purpose: the reader's own structures stay under ~4.5 times the file).

use std::collections::HashSet;
use std::fmt::Display;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

use super::error::{GgufError, GgufErrorKind};
use super::types::GgmlType;
use super::value::{Array, Value, ValueType};
use crate::mmap::Bytes;

/// ggml supports at most four dimensions (`GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;
/// Deepest array nesting we accept; real files never nest, hostile ones could blow the stack.
pub const MAX_ARRAY_NESTING: usize = 8;
/// Alignment when `general.alignment` is absent (`GGUF_DEFAULT_ALIGNMENT`).
pub const DEFAULT_ALIGNMENT: u64 = 32;

// Smallest on-disk sizes, used to bound counts by the bytes that remain.
/// key length (8) + value type (4) + smallest value (1).
const MIN_KV_BYTES: u64 = 13;
/// name length (8) + n_dims (4) + type (4) + offset (8).
const MIN_TENSOR_INFO_BYTES: u64 = 24;
/// A string is at least its u64 length.
const MIN_STRING_BYTES: u64 = 8;
/// A nested array is at least its element type (4) and count (8).
const MIN_ARRAY_BYTES: u64 = 12;
/// Inside a nested array, room reserved up front for at most this many elements; more grow as
/// they are actually read. Each nesting level's count is bounded by the same remaining bytes,
/// so reserving every level's full count would multiply the memory by the nesting depth.
const NESTED_PREALLOC: usize = 1024;

/// One tensor's description from the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the row length (contiguous), `dims[1]` the number of rows.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset of the data, relative to the start of the data section.
    pub offset: u64,
    /// Exact byte size (`ggml_nbytes`).
    pub n_bytes: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        // Checked when the file was opened: the product cannot overflow.
        self.dims.iter().product()
    }

    /// Number of rows: the product of all dims but the first.
    pub fn n_rows(&self) -> u64 {
        self.dims.iter().skip(1).product()
    }

    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }
}

/// A parsed, validated GGUF file.
pub struct GgufFile {
    path: PathBuf,
    bytes: Bytes,
    version: u32,
    metadata: Vec<(String, Value)>,
    tensors: Vec<TensorInfo>,
    alignment: u64,
    data_offset: u64,
    /// Tensor indices sorted by name: [`GgufFile::tensor`] bisects instead of scanning, so a
    /// hostile file of a million tiny tensors cannot make name lookups quadratic.
    by_name: Vec<usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("n_metadata", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Memory-maps and validates `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, GgufError> {
        let path = path.as_ref();
        let bytes = Bytes::map(path).map_err(|e| GgufError::new(GgufErrorKind::Io(e)).with_path(path))?;
        Self::parse(path.to_path_buf(), bytes).map_err(|e| e.with_path(path))
    }

    /// Parses an in-memory file; `label` stands for the path in messages.
    pub fn from_bytes(bytes: Vec<u8>, label: impl Into<PathBuf>) -> Result<GgufFile, GgufError> {
        let label = label.into();
        Self::parse(label.clone(), Bytes::Owned(bytes)).map_err(|e| e.with_path(label))
    }

    fn parse(path: PathBuf, bytes: Bytes) -> Result<GgufFile, GgufError> {
        let buf = bytes.as_slice();
        let mut c = Cursor { buf, pos: 0 };

        let magic = c.take(4, "magic")?;
        if magic != b"GGUF" {
            return Err(GgufError::at(0, GgufErrorKind::BadMagic(magic.to_vec())));
        }
        let version = c.u32("version")?;
        if version != 2 && version != 3 {
            return Err(GgufError::at(4, GgufErrorKind::UnsupportedVersion(version)));
        }
        let n_tensors_at = c.pos;
        let n_tensors = c.u64("tensor count")?;
        let n_kv_at = c.pos;
        let n_kv = c.u64("metadata count")?;
        c.bound_count(n_kv, MIN_KV_BYTES, "metadata count", n_kv_at)?;
        // Tensor infos come after the metadata, so this is a loose first bound; the exact
        // check happens again once the metadata has been read.
        c.bound_count(n_tensors, MIN_TENSOR_INFO_BYTES, "tensor count", n_tensors_at)?;

        let mut metadata: Vec<(String, Value)> = Vec::with_capacity(n_kv as usize);
        let mut keys = SeenNames::default();
        for i in 0..n_kv {
            let key_at = c.pos;
            let key = c.string(&format!("metadata[{i}] key"))?;
            let what = format!("metadata {key:?}");
            let type_at = c.pos;
            let type_id = c.u32(&what)?;
            let vt = ValueType::from_id(type_id).ok_or_else(|| {
                GgufError::at(type_at, GgufErrorKind::UnknownValueType { what: what.clone(), type_id })
            })?;
            let value = c.value(vt, &what, 0)?;
            if keys.repeated(&key, metadata.iter().map(|(k, _)| k.as_str())) {
                return Err(GgufError::at(key_at, GgufErrorKind::DuplicateKey { key }));
            }
            metadata.push((key, value));
        }

        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, Value::U32(a))) if a.is_power_of_two() => u64::from(*a),
            Some((_, v)) => {
                return Err(GgufError::new(GgufErrorKind::BadAlignment {
                    found: format!("{} {}", v.value_type(), v.summary()),
                }))
            }
        };

        c.bound_count(n_tensors, MIN_TENSOR_INFO_BYTES, "tensor count", n_tensors_at)?;
        let mut tensors: Vec<TensorInfo> = Vec::with_capacity(n_tensors as usize);
        let mut names = SeenNames::default();
        for i in 0..n_tensors {
            let info_at = c.pos;
            let name = c.string(&format!("tensor_info[{i}] name"))?;
            let what = format!("tensor {name:?}");
            let dims_at = c.pos;
            let n_dims = c.u32(&format!("{what} n_dims"))?;
            if n_dims > MAX_DIMS {
                return Err(GgufError::at(
                    dims_at,
                    GgufErrorKind::TooManyDims { tensor: name, n_dims, max: MAX_DIMS },
                ));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64(&format!("{what} dims"))?);
            }
            if dims.contains(&0) {
                return Err(GgufError::at(dims_at, GgufErrorKind::EmptyDim { tensor: name, dims }));
            }
            let type_at = c.pos;
            let type_id = c.u32(&format!("{what} type"))?;
            let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| {
                GgufError::at(type_at, GgufErrorKind::UnknownTensorType { tensor: name.clone(), type_id })
            })?;
            let n_bytes = ggml_type.tensor_bytes(&dims).map_err(|reason| {
                GgufError::at(
                    dims_at,
                    GgufErrorKind::BadShape {
                        tensor: name.clone(),
                        ggml_type: ggml_type.name().to_string(),
                        dims: dims.clone(),
                        reason,
                    },
                )
            })?;
            let offset_at = c.pos;
            let offset = c.u64(&format!("{what} offset"))?;
            if offset % alignment != 0 {
                return Err(GgufError::at(
                    offset_at,
                    GgufErrorKind::MisalignedTensor { tensor: name, offset, alignment },
                ));
            }
            if names.repeated(&name, tensors.iter().map(|t| t.name.as_str())) {
                return Err(GgufError::at(info_at, GgufErrorKind::DuplicateTensor { tensor: name }));
            }
            tensors.push(TensorInfo { name, dims, ggml_type, offset, n_bytes });
        }

        let file_len = buf.len() as u64;
        // The data section starts at the next multiple of the alignment.
        let data_offset = (c.pos as u64).next_multiple_of(alignment);
        for t in &tensors {
            let start = data_offset.checked_add(t.offset);
            let end = start.and_then(|s| s.checked_add(t.n_bytes));
            match (start, end) {
                (Some(_), Some(end)) if end <= file_len => {}
                _ => {
                    return Err(GgufError::new(GgufErrorKind::TensorOutOfBounds {
                        tensor: t.name.clone(),
                        start: data_offset.saturating_add(t.offset),
                        end: data_offset.saturating_add(t.offset).saturating_add(t.n_bytes),
                        file_len,
                    }))
                }
            }
        }
        let mut by_offset: Vec<&TensorInfo> = tensors.iter().collect();
        by_offset.sort_by_key(|t| t.offset);
        for pair in by_offset.windows(2) {
            // In bounds (checked above), so the sum cannot overflow.
            if pair[0].offset + pair[0].n_bytes > pair[1].offset {
                return Err(GgufError::new(GgufErrorKind::OverlappingTensors {
                    first: pair[0].name.clone(),
                    second: pair[1].name.clone(),
                }));
            }
        }

        let mut by_name: Vec<usize> = (0..tensors.len()).collect();
        by_name.sort_unstable_by(|&a, &b| tensors[a].name.cmp(&tensors[b].name));
        Ok(GgufFile { path, bytes, version, metadata, tensors, alignment, data_offset, by_name })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn file_len(&self) -> u64 {
        self.bytes.as_slice().len() as u64
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// The whole file.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.as_slice()
    }

    /// Metadata in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        let k = self.by_name.binary_search_by(|&i| self.tensors[i].name.as_str().cmp(name)).ok()?;
        Some(&self.tensors[self.by_name[k]])
    }

    /// The tensor's bytes, a zero-copy slice of the map (bounds were checked at open).
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let start = (self.data_offset + info.offset) as usize;
        &self.bytes.as_slice()[start..start + info.n_bytes as usize]
    }

    fn require(&self, key: &str) -> Result<&Value, GgufError> {
        self.get(key).ok_or_else(|| {
            GgufError::new(GgufErrorKind::MissingKey { key: key.to_string() }).with_path(&self.path)
        })
    }

    fn wrong(&self, key: &str, expected: &str, v: &Value) -> GgufError {
        GgufError::new(GgufErrorKind::wrong_type(key, expected, v.value_type())).with_path(&self.path)
    }

    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| self.wrong(key, "a string", v))
    }

    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        let v = self.require(key)?;
        v.as_u64().ok_or_else(|| self.wrong(key, "a non-negative integer", v))
    }

    pub fn get_u32(&self, key: &str) -> Result<u32, GgufError> {
        let v = self.require(key)?;
        v.as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .ok_or_else(|| self.wrong(key, "an integer in u32 range", v))
    }

    /// f32 values, or f64 values that are exactly representable... any float, narrowed.
    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        let v = self.require(key)?;
        v.as_f64().map(|x| x as f32).ok_or_else(|| self.wrong(key, "a float", v))
    }

    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        let v = self.require(key)?;
        v.as_bool().ok_or_else(|| self.wrong(key, "a bool", v))
    }

    pub fn get_array(&self, key: &str) -> Result<&Array, GgufError> {
        let v = self.require(key)?;
        v.as_array().ok_or_else(|| self.wrong(key, "an array", v))
    }

    pub fn get_str_array(&self, key: &str) -> Result<&[String], GgufError> {
        match self.get_array(key)? {
            Array::String(v) => Ok(v),
            other => Err(self.wrong_array(key, "an array of strings", other)),
        }
    }

    pub fn get_i32_array(&self, key: &str) -> Result<&[i32], GgufError> {
        match self.get_array(key)? {
            Array::I32(v) => Ok(v),
            other => Err(self.wrong_array(key, "an array of i32", other)),
        }
    }

    pub fn get_f32_array(&self, key: &str) -> Result<&[f32], GgufError> {
        match self.get_array(key)? {
            Array::F32(v) => Ok(v),
            other => Err(self.wrong_array(key, "an array of f32", other)),
        }
    }

    fn wrong_array(&self, key: &str, expected: &str, a: &Array) -> GgufError {
        GgufError::new(GgufErrorKind::WrongType {
            key: key.to_string(),
            expected: expected.to_string(),
            found: format!("an array of {}", a.element_type()),
        })
        .with_path(&self.path)
    }
}

/// Names seen so far, remembered by their 64-bit hash: about 10 bytes a name where a set of
/// cloned names would cost the name again plus 24 bytes, for a hostile flood of tiny keys too.
#[derive(Default)]
struct SeenNames(HashSet<u64>);

impl SeenNames {
    /// Whether `name` was seen before. `earlier` (the names so far) is only searched when the
    /// hash was seen before, to tell a real repeat from a hash collision.
    fn repeated<'a>(&mut self, name: &str, mut earlier: impl Iterator<Item = &'a str>) -> bool {
        let mut h = DefaultHasher::new();
        name.hash(&mut h);
        !self.0.insert(h.finish()) && earlier.any(|e| e == name)
    }
}

/// A bounds-checked little-endian reader over the file bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take<W: Display + ?Sized>(&mut self, n: u64, what: &W) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::at(
                self.pos,
                GgufErrorKind::Truncated { what: what.to_string(), needed: n, available: self.remaining() },
            ));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize, W: Display + ?Sized>(&mut self, what: &W) -> Result<[u8; N], GgufError> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32<W: Display + ?Sized>(&mut self, what: &W) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64<W: Display + ?Sized>(&mut self, what: &W) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Fails unless `count` items of at least `min_bytes` each fit in what remains.
    fn bound_count<W: Display + ?Sized>(
        &self,
        count: u64,
        min_bytes: u64,
        what: &W,
        at: usize,
    ) -> Result<(), GgufError> {
        let max = self.remaining() / min_bytes;
        if count > max {
            return Err(GgufError::at(
                at,
                GgufErrorKind::CountTooLarge { what: what.to_string(), count, max },
            ));
        }
        Ok(())
    }

    fn string<W: Display + ?Sized>(&mut self, what: &W) -> Result<String, GgufError> {
        let len_at = self.pos;
        let len = self.u64(&format_args!("{what} length"))?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| GgufError::at(len_at, GgufErrorKind::InvalidUtf8 { what: what.to_string() }))
    }

    fn value<W: Display + ?Sized>(
        &mut self,
        vt: ValueType,
        what: &W,
        depth: usize,
    ) -> Result<Value, GgufError> {
        Ok(match vt {
            ValueType::U8 => Value::U8(u8::from_le_bytes(self.array(what)?)),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.array(what)?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.array(what)?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.array(what)?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            ValueType::Bool => Value::Bool(self.bool(what)?),
            ValueType::String => Value::String(self.string(what)?),
            ValueType::Array => Value::Array(self.array_value(what, depth)?),
        })
    }

    fn bool<W: Display + ?Sized>(&mut self, what: &W) -> Result<bool, GgufError> {
        let at = self.pos;
        match self.array::<1, W>(what)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(GgufError::at(at, GgufErrorKind::InvalidBool { what: what.to_string(), value })),
        }
    }

    fn array_value<W: Display + ?Sized>(&mut self, what: &W, depth: usize) -> Result<Array, GgufError> {
        if depth >= MAX_ARRAY_NESTING {
            return Err(GgufError::at(
                self.pos,
                GgufErrorKind::NestingTooDeep { what: what.to_string(), max: MAX_ARRAY_NESTING },
            ));
        }
        let type_at = self.pos;
        let type_id = self.u32(what)?;
        let et = ValueType::from_id(type_id).ok_or_else(|| {
            GgufError::at(
                type_at,
                GgufErrorKind::UnknownValueType { what: format!("{what} element"), type_id },
            )
        })?;
        let count_at = self.pos;
        let n = self.u64(&format_args!("{what} count"))?;
        let min = et.scalar_size().unwrap_or(match et {
            ValueType::String => MIN_STRING_BYTES,
            _ => MIN_ARRAY_BYTES,
        });
        self.bound_count(n, min, &format_args!("{what} element count"), count_at)?;
        let n = n as usize;
        let reserve = if depth == 0 { n } else { n.min(NESTED_PREALLOC) };
        macro_rules! scalars {
            ($variant:ident, $ty:ty) => {{
                let raw = self.take(n as u64 * min, what)?;
                Array::$variant(
                    raw.chunks_exact(std::mem::size_of::<$ty>())
                        .map(|c| <$ty>::from_le_bytes(c.try_into().expect("chunk size")))
                        .collect(),
                )
            }};
        }
        Ok(match et {
            ValueType::U8 => Array::U8(self.take(n as u64, what)?.to_vec()),
            ValueType::I8 => scalars!(I8, i8),
            ValueType::U16 => scalars!(U16, u16),
            ValueType::I16 => scalars!(I16, i16),
            ValueType::U32 => scalars!(U32, u32),
            ValueType::I32 => scalars!(I32, i32),
            ValueType::F32 => scalars!(F32, f32),
            ValueType::U64 => scalars!(U64, u64),
            ValueType::I64 => scalars!(I64, i64),
            ValueType::F64 => scalars!(F64, f64),
            ValueType::Bool => {
                let mut v = Vec::with_capacity(reserve);
                for _ in 0..n {
                    v.push(self.bool(what)?);
                }
                Array::Bool(v)
            }
            ValueType::String => {
                let mut v = Vec::with_capacity(reserve);
                for i in 0..n {
                    v.push(self.string(&format_args!("{what}[{i}]"))?);
                }
                Array::String(v)
            }
            ValueType::Array => {
                let mut v = Vec::with_capacity(reserve);
                for i in 0..n {
                    v.push(self.array_value(&format_args!("{what}[{i}]"), depth + 1)?);
                }
                Array::Array(v)
            }
        })
    }
}
