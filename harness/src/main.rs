//! The `harness` binary: a thin layer over the `harness` library.

use std::process::ExitCode;

use clap::Parser;
use harness::cli::{Cli, Command};
use harness::exit::{Exit, Failure};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(exit) => exit.into(),
        Err(failure) => {
            // Errors quote paths and fields from files: never raw control characters.
            eprintln!("error: {}", harness::report::term::printable(&failure.to_string()));
            failure.exit.into()
        }
    }
}

fn run(cli: Cli) -> Result<Exit, Failure> {
    harness::environment::check()?;
    match cli.command.unwrap_or_else(|| Command::Run(Box::new(cli.run))) {
        Command::Run(args) => harness::run::run(&args),
        Command::Inspect(args) => harness::inspect::run(&args),
        Command::Fixtures(args) => harness::fixtures::run(&args),
        Command::Gate(args) => harness::gate::run(&args),
        Command::Diff(args) => harness::diff::run(&args),
        Command::Merge(args) => harness::merge::run(&args),
        Command::Report(args) => harness::report::run(&args),
        Command::TokenizeCheck(args) => harness::tokenize_check::run(&args),
        Command::CppWorker => std::process::exit(bitnet_cpp::worker::serve_stdio()),
        Command::Bench(args) => harness::bench::run(&args),
        Command::BenchWorker(args) => std::process::exit(harness::bench::serve_worker(&args)),
    }
}
