//! The GGUF error type: every failure names the file, the field or tensor, and the byte offset.

use std::fmt;
use std::path::PathBuf;

use super::types::ShapeError;
use super::value::ValueType;

/// An error reading or writing a GGUF file.
#[derive(Debug, thiserror::Error)]
pub struct GgufError {
    /// The file concerned, when known.
    pub path: Option<PathBuf>,
    /// Byte offset in the file where the problem was found, when it has one.
    pub offset: Option<u64>,
    /// Boxed: errors travel through many `Result`s and should stay small.
    pub kind: Box<GgufErrorKind>,
}

impl fmt::Display for GgufError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(p) = &self.path {
            write!(f, "{}: ", p.display())?;
        }
        if let Some(o) = self.offset {
            write!(f, "at byte {o}: ")?;
        }
        write!(f, "{}", self.kind)
    }
}

impl GgufError {
    pub(crate) fn new(kind: GgufErrorKind) -> Self {
        GgufError { path: None, offset: None, kind: Box::new(kind) }
    }

    /// An error found at byte `pos` of the file.
    pub(crate) fn at(pos: usize, kind: GgufErrorKind) -> Self {
        GgufError { path: None, offset: Some(pos as u64), kind: Box::new(kind) }
    }

    pub(crate) fn with_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.path = Some(path.into());
        self
    }
}

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum GgufErrorKind {
    #[error("cannot read the file: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a GGUF file (magic bytes {0:02x?}, expected \"GGUF\")")]
    BadMagic(Vec<u8>),
    #[error("GGUF version {0} is not supported (only versions 2 and 3)")]
    UnsupportedVersion(u32),
    #[error("file ends early: {what} needs {needed} bytes, only {available} left")]
    Truncated { what: String, needed: u64, available: u64 },
    #[error("{what} is {count}, more than the file could hold (at most {max})")]
    CountTooLarge { what: String, count: u64, max: u64 },
    #[error("{what} is not valid UTF-8")]
    InvalidUtf8 { what: String },
    #[error("{what} has unknown value type id {type_id}")]
    UnknownValueType { what: String, type_id: u32 },
    #[error("{what} nests arrays deeper than {max} levels")]
    NestingTooDeep { what: String, max: usize },
    #[error("{what} holds {value} where a bool must be 0 or 1")]
    InvalidBool { what: String, value: u8 },
    #[error("duplicate metadata key {key:?}")]
    DuplicateKey { key: String },
    #[error("general.alignment must be a u32 power of two, found {found}")]
    BadAlignment { found: String },
    #[error("tensor {tensor:?} has {n_dims} dimensions (at most {max})")]
    TooManyDims { tensor: String, n_dims: u32, max: u32 },
    #[error("tensor {tensor:?} has a zero-length dimension {dims:?}")]
    EmptyDim { tensor: String, dims: Vec<u64> },
    #[error("tensor {tensor:?} has unknown ggml type id {type_id}")]
    UnknownTensorType { tensor: String, type_id: u32 },
    #[error("tensor {tensor:?} of type {ggml_type} with shape {dims:?}: {reason}")]
    BadShape { tensor: String, ggml_type: String, dims: Vec<u64>, reason: ShapeError },
    #[error("duplicate tensor name {tensor:?}")]
    DuplicateTensor { tensor: String },
    #[error("tensor {tensor:?} data offset {offset} is not a multiple of the alignment {alignment}")]
    MisalignedTensor { tensor: String, offset: u64, alignment: u64 },
    #[error("tensor {tensor:?} data [{start}, {end}) lies outside the file ({file_len} bytes)")]
    TensorOutOfBounds { tensor: String, start: u64, end: u64, file_len: u64 },
    #[error("tensors {first:?} and {second:?} overlap in the data section")]
    OverlappingTensors { first: String, second: String },
    #[error("metadata key {key:?} is missing")]
    MissingKey { key: String },
    #[error("metadata key {key:?} is {found}, expected {expected}")]
    WrongType { key: String, expected: String, found: String },
    #[error("writer: {0}")]
    Writer(String),
}

impl GgufErrorKind {
    pub(crate) fn wrong_type(key: &str, expected: &str, found: ValueType) -> Self {
        GgufErrorKind::WrongType {
            key: key.to_string(),
            expected: expected.to_string(),
            found: found.name().to_string(),
        }
    }
}
