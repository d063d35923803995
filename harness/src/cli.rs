//! What the user typed: the clap command line.

use clap::{Parser, Subcommand};

use crate::{bench, diff, fixtures, gate, inspect, merge, report, run, tokenize_check};

/// bitnet-parity: does a Rust BitNet engine compute what bitnet.cpp computes?
///
/// With no subcommand, `harness` runs the parity check (`harness run`) on the model named by
/// CROSSVAL_GGUF, or on the embedded default fixture.
#[derive(Debug, Parser)]
#[command(name = "harness", version, about, long_about = None, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// With no subcommand: the options of `run`.
    #[command(flatten)]
    pub run: run::RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run both engines on the same tokens and write a parity receipt (the default).
    Run(Box<run::RunArgs>),
    /// Check a receipt against thresholds (exit 0 pass, 1 fail, 2 unreadable).
    Gate(gate::GateArgs),
    /// Compare two receipts metric by metric.
    Diff(diff::DiffArgs),
    /// Put the receipts of a run split across machines (`run --shard I/N`) back together.
    Merge(merge::MergeArgs),
    /// Write a self-contained HTML report of a receipt: plots per prompt, layer trace heat map.
    Report(report::ReportArgs),
    /// Describe a GGUF file: architecture, hyper-parameters, tokenizer, tensors.
    Inspect(inspect::InspectArgs),
    /// Measure decode/prefill speed and kernel throughput of both engines.
    Bench(bench::BenchArgs),
    /// Write the deterministic fixture models.
    Fixtures(fixtures::FixturesArgs),
    /// Compare the Rust tokenizer with the reference's on a corpus of strings.
    TokenizeCheck(tokenize_check::TokenizeCheckArgs),
    /// Internal: serve the C++ reference over stdin/stdout for the harness's parent process.
    #[command(hide = true)]
    CppWorker,
    /// Internal: one engine of `bench`, timed in its own process.
    #[command(hide = true)]
    BenchWorker(bench::WorkerArgs),
}
