//! bitnet-parity: the harness that runs a Rust BitNet engine and bitnet.cpp on the same
//! tokens and reports, as versioned JSON receipts, where they agree and where they do not.
#![forbid(unsafe_code)]

pub mod bench;
pub mod cli;
pub mod compare;
pub mod diff;
pub mod environment;
pub mod exit;
pub mod files;
pub mod fixtures;
pub mod gate;
pub mod hazards;
pub mod inspect;
pub mod receipt;
pub mod report;
pub mod run;
pub mod schema;
pub mod thresholds;
pub mod tokenize_check;
pub mod trace;
