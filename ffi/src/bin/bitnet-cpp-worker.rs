//! The reference worker as a standalone program: serves the worker protocol on stdin/stdout.
//! The harness embeds the same loop as its hidden `cpp-worker` subcommand; this binary exists
//! for this crate's own tests and for debugging.

fn main() {
    std::process::exit(bitnet_cpp::worker::serve_stdio());
}
