//! bitnet-parity harness library (being written).
#![forbid(unsafe_code)]
