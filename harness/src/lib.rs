//! bitnet-parity: the harness that runs a Rust BitNet engine and bitnet.cpp on the same
//! tokens and reports, as versioned JSON receipts, where they agree and where they do not.
#![forbid(unsafe_code)]

pub mod bench;
pub mod check;
pub mod cli;
pub mod compare;
pub mod corpus;
pub mod diff;
pub mod engine;
pub mod environment;
pub mod exit;
pub mod files;
pub mod fixtures;
pub mod gate;
pub mod hazards;
pub mod inputs;
pub mod inspect;
pub mod merge;
pub mod profile_choice;
pub mod receipt;
pub mod report;
pub mod run;
pub mod schema;
pub mod thresholds;
pub mod tokenize_check;
pub mod trace;
