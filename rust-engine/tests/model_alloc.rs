//! Evaluating a token allocates nothing once the model is loaded (every buffer, and the
//! thread pool, is made at load); a batch allocates its buffers on first use only.
//!
//! One exception, with several threads: each evaluation hands the pass to the pool through
//! rayon's job queue, whose blocks hold 63 jobs, so one small block is allocated every 63
//! tokens (and freed when used up). Nothing else.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use bitnet_engine::gguf::GgufFile;
use bitnet_engine::model::{Model, ModelOptions};

/// Counts every allocation made by any thread of this test process.
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours, passed through.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours, passed through.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours, passed through.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn decoding_allocates_nothing_per_token() {
    // A bitnet-b1.58 fixture, the architecture-`bitnet` model (SiLU FFN, `.scale` tensors) and
    // Q8_0 / Q6_K heads (their activation buffers are made at load too).
    for model in [
        "tiny-256-gqa-i2_s.gguf",
        "golden/models/arch-bitnet.gguf",
        "golden/models/q8_0-head.gguf",
        "golden/models/q6_k-head.gguf",
    ] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures").join(model);
        let file = GgufFile::open(&path).unwrap();
        for threads in [1, 2] {
            // The previous model's workers may still be exiting (and allocating as they do):
            // they must be gone before anything is counted.
            let threads_before = settled_thread_count();
            let mut m =
                Model::load(&file, ModelOptions { n_ctx: 128, threads, ..ModelOptions::default() }).unwrap();
            // Warm up: the first evaluations may touch lazily made thread-local state.
            for pos in 0..4 {
                m.eval(3 + pos as u32, pos).unwrap();
            }
            m.eval_batch(&[5; 40], 4).unwrap();
            let before = ALLOCATIONS.load(Ordering::Relaxed);
            for pos in 44..124 {
                m.eval(7 + pos as u32, pos).unwrap();
            }
            let tokens = ALLOCATIONS.load(Ordering::Relaxed) - before;
            m.reset();
            let before = ALLOCATIONS.load(Ordering::Relaxed);
            m.eval_batch(&[9; 70], 0).unwrap();
            let batch = ALLOCATIONS.load(Ordering::Relaxed) - before;
            eprintln!("{model}, threads {threads}: {tokens} allocations over 80 tokens, {batch} in a 70-token batch");
            // rayon's queue block: at most one per 63 hand-offs (see the module docs).
            let allowed = if threads == 1 { 0 } else { 80usize.div_ceil(63) };
            assert!(tokens <= allowed, "threads {threads}: decoding allocated {tokens} times");
            assert!(batch <= allowed, "threads {threads}: a batch allocated {batch} times after the first");
            drop(m);
            wait_for_thread_count(threads_before);
        }
    }
}

/// This process's threads (Linux: the entries of `/proc/self/task`); `None` elsewhere.
fn thread_count() -> Option<usize> {
    std::fs::read_dir("/proc/self/task").ok().map(|d| d.count())
}

/// The thread count once it has stopped changing for a moment (threads of earlier work may
/// still be exiting).
fn settled_thread_count() -> Option<usize> {
    let mut last = thread_count();
    for _ in 0..100 {
        std::thread::sleep(std::time::Duration::from_millis(20));
        let now = thread_count();
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

/// Waits (up to 10 s) until a dropped model's worker threads have exited: rayon lets them
/// finish in the background, and their exit allocates, which would be counted against the
/// next model (that made this test fail now and then on a busy machine).
fn wait_for_thread_count(want: Option<usize>) {
    let Some(want) = want else { return };
    for _ in 0..1000 {
        if thread_count().is_some_and(|n| n <= want) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
