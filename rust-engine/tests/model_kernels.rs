//! The whole forward pass gives identical bits whatever the kernels and thread count: the
//! scalar oracles on one thread against AVX2 and AVX-512 on 1, 2 and 3 threads, under each
//! reference-build profile, every position, every traced tensor, both rounding modes, on the
//! committed fixtures.

use bitnet_engine::gguf::GgufFile;
use bitnet_engine::model::{Model, ModelOptions};
use bitnet_engine::ops::FloatKernel;
use bitnet_engine::profile::RefProfile;
use bitnet_engine::quant::Qk256Kernel;

const FIXTURES: [&str; 2] = ["tiny-256-gqa-i2_s.gguf", "tiny-384-mha-i2_s.gguf"];
const POSITIONS: usize = 40;

fn fixture(name: &str) -> GgufFile {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures").join(name);
    GgufFile::open(&path).unwrap()
}

fn token(pos: usize, n_vocab: usize) -> u32 {
    ((pos * 7919 + 13) % n_vocab) as u32
}

/// Every traced tensor and the logits of every position, as bits.
fn run(
    file: &GgufFile,
    exact: bool,
    threads: usize,
    kernel: Qk256Kernel,
    float: FloatKernel,
) -> Vec<(String, Vec<u32>)> {
    let opts = ModelOptions { n_ctx: 64, exact_reference_rounding: exact, threads, profile: float.profile() };
    let mut m = Model::load(file, opts).unwrap();
    m.set_kernel(kernel);
    m.set_float_kernel(float);
    let n_vocab = m.config().n_vocab;
    let mut out = Vec::new();
    for pos in 0..POSITIONS {
        let mut hook = |name: &str, t: &[f32]| {
            out.push((format!("{pos}:{name}"), t.iter().map(|v| v.to_bits()).collect()));
        };
        // Trace odd positions; plain eval (the pool's install path) on even ones.
        let logits = if pos % 2 == 1 {
            m.eval_traced(token(pos, n_vocab), pos, &mut hook).unwrap().to_vec()
        } else {
            m.eval(token(pos, n_vocab), pos).unwrap().to_vec()
        };
        out.push((format!("{pos}:logits"), logits.iter().map(|v| v.to_bits()).collect()));
    }
    out
}

#[test]
fn kernels_and_threads_do_not_change_a_bit() {
    // The SIMD ternary kernels take turns across the runs, so each meets several float kernels
    // and thread counts without multiplying the runs.
    let simds: Vec<Qk256Kernel> = Qk256Kernel::available().into_iter().skip(1).collect();
    if simds.is_empty() {
        eprintln!("no SIMD QK256 kernel available: nothing to compare");
        return;
    }
    for name in FIXTURES {
        let file = fixture(name);
        for profile in RefProfile::ALL {
            for exact in [true, false] {
                let oracle = run(&file, exact, 1, Qk256Kernel::scalar(), FloatKernel::scalar(profile));
                // Every SIMD float kernel on one thread, the best one on two and three.
                let mut runs: Vec<(usize, FloatKernel)> =
                    FloatKernel::available(profile).into_iter().skip(1).map(|k| (1, k)).collect();
                runs.extend([2, 3].map(|t| (t, FloatKernel::best(profile))));
                for (i, (threads, float)) in runs.into_iter().enumerate() {
                    let simd = simds[i % simds.len()];
                    let got = run(&file, exact, threads, simd, float);
                    assert_eq!(got.len(), oracle.len());
                    for (g, o) in got.iter().zip(&oracle) {
                        assert_eq!(g.0, o.0);
                        assert!(
                            g.1 == o.1,
                            "{name} {profile} exact={exact} threads={threads} float {} qk256 {}: {} differs",
                            float.name(),
                            simd.name(),
                            g.0
                        );
                    }
                }
            }
        }
    }
}

/// The profile reaches the forward pass: the two builds' numerics give other logits (the F16
/// lm_head already at position 0), and apart from the lm_head the first traced tensor that
/// differs is the attention's: everything before it is ISA-independent.
#[test]
fn the_profile_changes_attention_and_nothing_before_it() {
    let file = fixture(FIXTURES[1]);
    let [a, b] = RefProfile::ALL.map(|p| run(&file, true, 1, Qk256Kernel::scalar(), FloatKernel::scalar(p)));
    let differs = |x: &&(String, Vec<u32>), y: &&(String, Vec<u32>)| x.1 != y.1;
    let first = a.iter().zip(&b).find(|(x, y)| differs(x, y)).map(|(x, _)| x.0.as_str());
    assert_eq!(first, Some("0:logits"));
    let lm_head = |n: &str| n.ends_with(":logits") || n.ends_with(":result_output");
    let first_traced =
        a.iter().zip(&b).find(|(x, y)| !lm_head(&x.0) && differs(x, y)).map(|(x, _)| x.0.as_str());
    assert!(first_traced.is_some_and(|n| n.contains(":kqv_out-")), "{first_traced:?}");
}

/// `eval_batch` is `eval` token after token: the same logits after every batch and the same
/// cache (checked by continuing token by token after it), for batches of 1 to 70 tokens
/// (longer than one chunk of `BATCH_TOKENS`), starting at 0 or mid-sequence, on 1 and 2
/// threads, both rounding modes, both kernels.
#[test]
fn eval_batch_equals_eval_token_by_token() {
    let kernels: Vec<Qk256Kernel> = Qk256Kernel::available();
    for name in FIXTURES {
        let file = fixture(name);
        for exact in [true, false] {
            for threads in [1, 2] {
                for &kernel in &kernels {
                    let opts = ModelOptions {
                        n_ctx: 96,
                        exact_reference_rounding: exact,
                        threads,
                        ..Default::default()
                    };
                    let mut one = Model::load(&file, opts.clone()).unwrap();
                    let mut batch = Model::load(&file, opts).unwrap();
                    one.set_kernel(kernel);
                    batch.set_kernel(kernel);
                    let n_vocab = one.config().n_vocab;
                    let ids: Vec<u32> = (0..90).map(|p| token(p, n_vocab)).collect();
                    let step = |m: &mut Model<'_>, p: usize| m.eval(ids[p], p).unwrap().to_vec();
                    let mut pos = 0;
                    // Batches of varying length (1 and longer than BATCH_TOKENS included).
                    for len in [1usize, 5, 70, 2, 3] {
                        let mut want = Vec::new();
                        for p in pos..pos + len {
                            want = step(&mut one, p);
                        }
                        let got = batch.eval_batch(&ids[pos..pos + len], pos).unwrap().to_vec();
                        assert!(
                            got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{name} exact={exact} threads={threads} {} batch {pos}..{}",
                            kernel.name(),
                            pos + len
                        );
                        pos += len;
                    }
                    // The caches agree: the next token gives the same logits.
                    let a = step(&mut one, pos);
                    let b = step(&mut batch, pos);
                    assert!(
                        a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                        "{name}: cache differs"
                    );
                }
            }
        }
    }
}

#[test]
fn eval_batch_refuses_bad_input() {
    let file = fixture(FIXTURES[0]);
    let mut m = Model::load(&file, ModelOptions { n_ctx: 32, ..ModelOptions::default() }).unwrap();
    assert!(m.eval_batch(&[], 0).is_err());
    assert!(m.eval_batch(&[1, 2], 1).is_err(), "skips position 0");
    assert!(m.eval_batch(&[1; 33], 0).is_err(), "runs past the context");
    assert!(m.eval_batch(&[1, u32::MAX], 0).is_err(), "token outside the vocabulary");
    assert!(m.eval_batch(&[1, 2, 3], 0).is_ok());
}

#[test]
fn the_output_layer_alone_gives_the_logits_of_eval() {
    for name in FIXTURES {
        let file = fixture(name);
        for (exact, threads) in [(true, 1), (true, 2), (false, 3)] {
            let opts =
                ModelOptions { n_ctx: 8, exact_reference_rounding: exact, threads, ..Default::default() };
            let mut m = Model::load(&file, opts).unwrap();
            let n_vocab = m.config().n_vocab;
            let mut norm = Vec::new();
            let logits = m
                .eval_traced(token(0, n_vocab), 0, &mut |n: &str, t: &[f32]| {
                    if n == "result_norm" {
                        norm = t.to_vec();
                    }
                })
                .unwrap()
                .to_vec();
            let alone = m.project_output(&norm).unwrap();
            assert!(
                alone.iter().map(|v| v.to_bits()).eq(logits.iter().map(|v| v.to_bits())),
                "{name} exact={exact} threads={threads}"
            );
            let err = m.project_output(&norm[1..]).unwrap_err().to_string();
            assert!(err.contains("n_embd"), "{err}");
        }
    }
}
