//! Times the engine alone on a GGUF model: decode (one token at a time) and a batched
//! prefill, at a given thread count. For profiling (`perf record`); `harness bench` is the
//! measurement against the reference.
//!
//! ```text
//! cargo run --release -p bitnet-engine --example decode_timing -- MODEL.gguf [TOKENS] [THREADS] [PREFILL]
//! ```

use std::time::Instant;

use bitnet_engine::gguf::GgufFile;
use bitnet_engine::model::{Model, ModelOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        eprintln!("usage: decode_timing MODEL.gguf [TOKENS=32] [THREADS=1] [PREFILL=128]");
        std::process::exit(2);
    };
    let arg = |i: usize, default: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default);
    let (tokens, threads, prefill) = (arg(2, 32), arg(3, 1), arg(4, 128));

    let file = GgufFile::open(std::path::Path::new(path))?;
    let n_ctx = tokens.max(prefill) + 1;
    let mut model = Model::load(&file, ModelOptions { n_ctx, threads, ..ModelOptions::default() })?;
    let n_vocab = model.config().n_vocab;
    let token = |pos: usize| ((pos * 7919 + 13) % n_vocab) as u32;
    println!(
        "{path}: {} layers, QK256 kernel {}, float kernel {}, {} thread(s)",
        model.config().n_layer,
        model.kernel_name(),
        model.float_kernel_name(),
        model.threads()
    );

    for round in 0..2 {
        model.reset();
        let mut times: Vec<f64> = Vec::with_capacity(tokens);
        for pos in 0..tokens {
            let t = Instant::now();
            model.eval(token(pos), pos)?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let total: f64 = times.iter().sum();
        times.sort_by(f64::total_cmp);
        println!(
            "decode {round}: {:.2} ms/token mean, {:.2} median, {:.2} min ({:.1} tokens/s)",
            total / tokens as f64,
            times[times.len() / 2],
            times[0],
            tokens as f64 * 1e3 / total
        );
    }
    if prefill > 0 {
        let ids: Vec<u32> = (0..prefill).map(token).collect();
        for round in 0..2 {
            model.reset();
            let t = Instant::now();
            model.eval_batch(&ids, 0)?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            println!("prefill {round}: {prefill} tokens in {ms:.1} ms ({:.2} ms/token)", ms / prefill as f64);
        }
    }
    Ok(())
}
