//! The lm_head alone: the output product of one decode step (`token_embd · h`: F16 weights with
//! the f32 input rounded to f16, 128256 × 2560 on the 2B shapes: 626 MB read per product; or
//! a Q8_0, Q4_K, Q6_K or BF16 head with the input converted to the type's `vec_dot_type`),
//! timed in both engines on the **same mapped bytes** of the model file.
//!
//! It is the largest item of a decode step, so it bounds the decode ratio: the reference runs
//! its own `ggml_mul_mat` reading the map in place (`bitnet_cpp::Reference::f16_matmul`,
//! `block_matmul`); the
//! Rust engine runs `Model::project_output` (its forward pass's own code path, thread split
//! included). The two alternate batch by batch (reference first in even batches), since this
//! product is bound by memory bandwidth, which drifts on a shared machine; the speed-up is the
//! median of per-batch ratios. The outputs are compared bit for bit.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context};
use bitnet_cpp::Reference;
use bitnet_engine::gguf::{GgmlType, GgufFile};
use bitnet_engine::model::{Model, ModelOptions};
use bitnet_engine::ops::BlockType;
use bitnet_engine::profile::RefProfile;
use bitnet_fixtures::rng::Rng;

use super::gemv::median;
use super::report::{LmHeadResult, LmHeadSpeed};

/// Products per timed batch (one product reads the whole matrix: ~20 ms on the 2B shapes).
pub const REPEATS: usize = 4;

/// Times the lm_head of `model` at `threads` threads over `batches` alternating batches (after
/// one warm-up batch each), the Rust engine mirroring `profile` (the reference build's: the
/// F16 and BF16 dot products differ between builds). `Ok(None)` when `token_embd` is of
/// another type (F32, I2_S: nothing comparable to time).
pub fn bench(
    model: &Path,
    threads: usize,
    batches: usize,
    reference: &Reference,
    profile: RefProfile,
) -> anyhow::Result<Option<LmHeadResult>> {
    let file = GgufFile::open(model).with_context(|| format!("cannot open {}", model.display()))?;
    let Some(info) = file.tensor("token_embd.weight") else {
        bail!("{}: no token_embd.weight", model.display())
    };
    let block = BlockType::from_ggml(info.ggml_type);
    if (info.ggml_type != GgmlType::F16 && block.is_none()) || info.dims.len() != 2 {
        return Ok(None);
    }
    let (cols, rows) = (info.dims[0] as usize, info.dims[1] as usize);
    let data = file.tensor_data(info);

    let mut rng = Rng::for_stream(0x1A4E, "lm-head");
    let h: Vec<f32> = (0..cols).map(|_| rng.normalish(1.0)).collect();

    let mut rust =
        Model::load(&file, ModelOptions { n_ctx: 1, exact_reference_rounding: true, threads, profile })
            .context("cannot load the model in the Rust engine")?;
    let mut cpp = match block {
        Some(ty) => reference.block_matmul(ty.ggml().id(), data, rows, cols, REPEATS, threads),
        None => reference.f16_matmul(data, rows, cols, REPEATS, threads),
    }
    .context("cannot build the reference's lm_head product")?;
    cpp.set_input(&h)?;

    let mut rust_s = Vec::with_capacity(batches);
    let mut ref_s = Vec::with_capacity(batches);
    for batch in 0..=batches {
        let mut time_ref = || -> anyhow::Result<f64> {
            let t = Instant::now();
            cpp.compute()?;
            Ok(t.elapsed().as_secs_f64())
        };
        let mut time_rust = || -> anyhow::Result<f64> {
            let t = Instant::now();
            for _ in 0..REPEATS {
                rust.project_output(&h)?;
            }
            Ok(t.elapsed().as_secs_f64())
        };
        let (r, c) = if batch % 2 == 0 {
            let c = time_ref()?;
            (time_rust()?, c)
        } else {
            let r = time_rust()?;
            (r, time_ref()?)
        };
        // Batch 0 is the warm-up (threads started, buffers grown, pages mapped).
        if batch > 0 {
            rust_s.push(r);
            ref_s.push(c);
        }
    }

    let ref_y = cpp.output();
    let rust_y = rust.project_output(&h)?;
    let outputs_identical =
        ref_y.len() == rust_y.len() && ref_y.iter().zip(rust_y).all(|(a, b)| a.to_bits() == b.to_bits());
    let max_abs_diff = ref_y.iter().zip(rust_y).map(|(a, b)| f64::from((a - b).abs())).fold(0.0f64, f64::max);
    let bytes = data.len() as u64;
    let speed = |batch_s: &[f64]| {
        let s = median(batch_s) / REPEATS as f64;
        LmHeadSpeed { ms_per_product: s * 1e3, gb_per_s: bytes as f64 / s / 1e9 }
    };
    let paired: Vec<f64> = ref_s.iter().zip(&rust_s).map(|(c, r)| c / r).collect();
    Ok(Some(LmHeadResult {
        threads,
        rows,
        cols,
        bytes,
        rust: speed(&rust_s),
        reference: speed(&ref_s),
        speedup: median(&paired),
        outputs_identical,
        max_abs_diff,
    }))
}
