//! A map of where every field of a valid GGUF file sits, so tests can corrupt one field on
//! purpose (a count, a length, a type id, an offset) instead of only flipping random bits.
//!
//! Written independently of the engine's reader: a test that reused the reader's own parsing
//! to find the fields could not catch a reader that misplaces them.

use std::ops::Range;

/// What a header field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    Version,
    TensorCount,
    KvCount,
    /// The u64 length of a string (key, value, array element or tensor name).
    StringLen,
    /// The u32 type id of a metadata value.
    ValueType,
    /// The u32 element type id of an array.
    ArrayType,
    /// The u64 element count of an array.
    ArrayCount,
    /// A scalar metadata value (hyper-parameters live here), `size` bytes.
    Scalar,
    NDims,
    Dim,
    /// The u32 ggml type id of a tensor.
    TensorType,
    /// The u64 data offset of a tensor.
    TensorOffset,
}

#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub kind: FieldKind,
    pub at: usize,
    pub size: usize,
}

/// One tensor's data, located.
#[derive(Debug, Clone)]
pub struct TensorData {
    pub name: String,
    pub type_id: u32,
    /// Absolute byte range of the data in the file.
    pub range: Range<usize>,
    pub n_elements: u64,
}

#[derive(Debug, Clone)]
pub struct GgufMap {
    pub fields: Vec<Field>,
    /// Where the tensor infos end (the data section starts at the next alignment multiple).
    pub header_end: usize,
    pub data_offset: usize,
    pub tensors: Vec<TensorData>,
}

struct Walk<'a> {
    b: &'a [u8],
    pos: usize,
    fields: Vec<Field>,
}

impl Walk<'_> {
    fn field(&mut self, kind: FieldKind, size: usize) -> u64 {
        let at = self.pos;
        self.fields.push(Field { kind, at, size });
        self.pos += size;
        let mut v = [0u8; 8];
        v[..size].copy_from_slice(&self.b[at..at + size]);
        u64::from_le_bytes(v)
    }

    fn string(&mut self) -> String {
        let n = self.field(FieldKind::StringLen, 8) as usize;
        let s = String::from_utf8(self.b[self.pos..self.pos + n].to_vec()).expect("valid fixture");
        self.pos += n;
        s
    }

    fn scalar_size(t: u64) -> Option<usize> {
        match t {
            0 | 1 | 7 => Some(1),
            2 | 3 => Some(2),
            4..=6 => Some(4),
            10..=12 => Some(8),
            _ => None,
        }
    }

    /// A value of type `t`; returns a u32 value when it is one (for general.alignment).
    fn value(&mut self, t: u64) -> Option<u64> {
        if let Some(size) = Self::scalar_size(t) {
            return Some(self.field(FieldKind::Scalar, size));
        }
        match t {
            8 => {
                self.string();
            }
            9 => {
                let et = self.field(FieldKind::ArrayType, 4);
                let n = self.field(FieldKind::ArrayCount, 8);
                match Self::scalar_size(et) {
                    // Scalar arrays: the elements are data, not structure.
                    Some(size) => self.pos += size * n as usize,
                    None => {
                        for _ in 0..n {
                            self.value(et);
                        }
                    }
                }
            }
            other => panic!("fixture has value type {other}"),
        }
        None
    }
}

/// Bytes of a ggml tensor of `type_id` and `n` elements, for the types the fixtures use.
fn tensor_bytes(type_id: u32, n: u64) -> u64 {
    match type_id {
        0 => n * 4,
        1 => n * 2,
        36 => n / 4 + 32,
        other => panic!("fixture has tensor type {other}"),
    }
}

/// Maps a valid GGUF file (panics on anything else: it is for committed fixtures).
pub fn map(b: &[u8]) -> GgufMap {
    assert_eq!(&b[..4], b"GGUF");
    let mut w = Walk { b, pos: 4, fields: Vec::new() };
    w.field(FieldKind::Version, 4);
    let n_tensors = w.field(FieldKind::TensorCount, 8);
    let n_kv = w.field(FieldKind::KvCount, 8);
    let mut alignment = 32u64;
    for _ in 0..n_kv {
        let key = w.string();
        let t = w.field(FieldKind::ValueType, 4);
        let v = w.value(t);
        if key == "general.alignment" {
            alignment = v.expect("u32 alignment");
        }
    }
    let mut infos = Vec::new();
    for _ in 0..n_tensors {
        let name = w.string();
        let n_dims = w.field(FieldKind::NDims, 4);
        let n: u64 = (0..n_dims).map(|_| w.field(FieldKind::Dim, 8)).product();
        let type_id = w.field(FieldKind::TensorType, 4) as u32;
        let offset = w.field(FieldKind::TensorOffset, 8);
        infos.push((name, type_id, offset, n));
    }
    let header_end = w.pos;
    let data_offset = (header_end as u64).next_multiple_of(alignment) as usize;
    let tensors = infos
        .into_iter()
        .map(|(name, type_id, offset, n)| {
            let start = data_offset + offset as usize;
            TensorData {
                name,
                type_id,
                range: start..start + tensor_bytes(type_id, n) as usize,
                n_elements: n,
            }
        })
        .collect();
    GgufMap { fields: w.fields, header_end, data_offset, tensors }
}
