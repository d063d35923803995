//! Crash isolation: the reference runs in a child process, so that a `GGML_ASSERT` (abort) or
//! a segfault inside C++ ends only the child; the parent gets [`WorkerError::Crashed`] naming
//! the signal and the request, and keeps every result it already has.
//!
//! - [`serve_stdio`] is the child's main loop (called by a hidden subcommand, e.g.
//!   `harness cpp-worker`, or by this crate's `bitnet-cpp-worker` binary);
//! - [`RefWorker`] is the parent's handle, with methods mirroring the safe wrapper;
//! - [`protocol`] is the small binary framing between them (logits travel as raw f32 bytes).

mod client;
pub mod protocol;
mod server;

pub use client::{PendingEval, RefWorker, WorkerError};
pub use server::{serve_stdio, LibraryChoice};
