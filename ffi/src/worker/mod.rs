//! (worker: being written)
