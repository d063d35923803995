//! GGUF files: a validating, zero-copy reader over a memory map, and a streaming writer.
//!
//! The reader checks every count, length and offset against the file size with
//! overflow-safe arithmetic before it allocates or slices anything; a bad file yields a
//! [`GgufError`] naming the field or tensor and the byte offset, never a panic.

mod error;
mod reader;
mod types;
mod value;
mod writer;

pub use error::{GgufError, GgufErrorKind};
pub use reader::{GgufFile, TensorInfo, DEFAULT_ALIGNMENT, MAX_ARRAY_NESTING, MAX_DIMS};
pub use types::{GgmlType, ShapeError};
pub use value::{Array, Value, ValueType};
pub use writer::{GgufWriter, TensorDataWriter};
