//! Head and embedding types (Q8_0, Q4_K, Q6_K, BF16) against the real bitnet.cpp, in-process,
//! for every reference build this crate has (`x86-64-v3`, and `native`, an AVX-512 build on an
//! AVX-512 host), the engine mirroring the profile of the build's ISA:
//!
//! - operation by operation on random rows: the embedding lookup (`to_float`), the activation
//!   conversion (`from_float` of the `vec_dot_type`) and the dot (`vec_dot`), with the weights
//!   quantized by ggml itself (`from_float_ref`), for every float kernel this CPU runs;
//! - whole models quantized by the reference's own `llama_model_quantize` (one thread, ftype
//!   I2_S, head types through `token_embedding_type` / `output_tensor_type`): every position of
//!   a prompt and of 32 greedy continuation tokens bit-identical;
//! - a head type the engine does not mirror is refused: one line naming the tensor and the
//!   type, exit code 5.

use std::path::Path;

use bitnet_cpp::{ContextParams, QuantizeOptions, Reference};
use bitnet_engine::gguf::{GgmlType, GgufFile};
use bitnet_engine::internals::ops::{dequantize_row, BlockInput};
use bitnet_engine::model::{Model, ModelError, ModelOptions};
use bitnet_engine::ops::{BlockType, FloatKernel};
use bitnet_engine::profile::RefProfile;
use bitnet_engine::tokenizer::Tokenizer;
use bitnet_fixtures::{spec, write_spec, WeightForm};

const PROMPT: &str = "The quick brown fox jumps over the lazy dog, then 42 cats sat on 7 mats; \
                      naïve café owners counted 1234567 coins while the river ran north.";

/// Every reference build with its profile.
fn builds() -> Vec<(String, Reference, RefProfile)> {
    let mut v = Vec::new();
    for build in bitnet_cpp::built_references().unwrap() {
        let Some(march) = build.march.clone() else { continue };
        let reference = Reference::open_build(&march).unwrap();
        let isa = &reference.build_info().isa.as_ref().expect("a build we compiled knows its ISA").macros;
        let profile = RefProfile::from_isa_macros(isa).expect("every x86 build here has a profile");
        v.push((march, reference, profile));
    }
    assert!(!v.is_empty(), "no reference build");
    v
}

/// xorshift64*: deterministic values without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// A row of `n` values of one of several kinds: plain, spread over many binades, with exact
/// zeros and whole zero blocks, with subnormals (which BF16 conversions treat differently),
/// with ties for the roundings.
fn row(rng: &mut Rng, n: usize, kind: usize) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let u = rng.unit();
            match kind % 5 {
                0 => u,
                1 => u * 2f32.powi((rng.next() % 40) as i32 - 20),
                2 if i % 256 < 32 || rng.next().is_multiple_of(7) => 0.0,
                3 if rng.next().is_multiple_of(5) => f32::from_bits((rng.next() as u32 & 0x807f_ffff) | 1),
                4 => {
                    (u * 64.0).round() / 8.0 + if rng.next().is_multiple_of(3) { 1.0 / 65536.0 } else { 0.0 }
                }
                _ => u * 3.0,
            }
        })
        .collect()
}

/// The engine's converted activation as ggml lays it out.
fn input_bytes(input: &BlockInput) -> Vec<u8> {
    match input.block_type().expect("prepared") {
        BlockType::Q8_0 => input
            .q8_0()
            .iter()
            .flat_map(|b| b.d.to_le_bytes().into_iter().chain(b.qs.iter().map(|&q| q as u8)))
            .collect(),
        BlockType::Q4_K | BlockType::Q6_K => input
            .q8_k()
            .iter()
            .flat_map(|b| {
                let mut v = b.d.to_le_bytes().to_vec();
                v.extend(b.qs.iter().map(|&q| q as u8));
                v.extend(b.bsums.iter().flat_map(|s| s.to_le_bytes()));
                v
            })
            .collect(),
        BlockType::BF16 => input.bf16().iter().flat_map(|h| h.to_le_bytes()).collect(),
    }
}

/// Row lengths tried for each type (K-quants need multiples of 256; BF16 takes any length,
/// and its tails after whole steps of 32 or 64 take another path).
fn lengths(ty: BlockType) -> Vec<usize> {
    match ty {
        BlockType::Q8_0 => vec![32, 64, 96, 384, 2560],
        BlockType::Q4_K | BlockType::Q6_K => vec![256, 512, 768, 2560],
        BlockType::BF16 => vec![1, 7, 31, 32, 33, 63, 64, 65, 100, 384, 1000, 2560],
    }
}

#[test]
fn block_ops_match_each_build_on_random_rows() {
    for (march, reference, profile) in builds() {
        for ty in BlockType::ALL {
            let id = ty.ggml().id();
            let dot_type = reference.ggml_vec_dot_type(id).unwrap();
            let (mut rows_checked, mut dots) = (0, 0);
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ u64::from(id));
            for n in lengths(ty) {
                for kind in 0..5 {
                    // Weights as ggml's quantizer writes them; the embedding lookup of each.
                    let w_rows: Vec<Vec<u8>> = (0..3)
                        .map(|_| reference.ggml_from_float_ref(id, &row(&mut rng, n, kind + 1)).unwrap())
                        .collect();
                    for w in &w_rows {
                        let theirs = reference.ggml_to_float(id, w, n).unwrap();
                        let mut ours = vec![0f32; n];
                        dequantize_row(ty, w, &mut ours);
                        let differ =
                            ours.iter().zip(&theirs).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
                        assert_eq!(differ, 0, "{march}: {ty:?} to_float n={n} kind={kind}");
                        rows_checked += 1;
                    }
                    // The activation, converted by both; then each row's dot.
                    let x = row(&mut rng, n, kind);
                    let y = reference.ggml_from_float(dot_type, &x).unwrap();
                    let want: Vec<f32> =
                        w_rows.iter().map(|w| reference.ggml_vec_dot(id, n, w, &y).unwrap()).collect();
                    for kernel in FloatKernel::available(profile) {
                        let mut input = BlockInput::with_capacity(n);
                        kernel.prepare_block_input(ty, &x, &mut input);
                        assert!(
                            input_bytes(&input) == y,
                            "{march}: {ty:?} activation n={n} kind={kind}, {} kernel",
                            kernel.name()
                        );
                        for (w, want) in w_rows.iter().zip(&want) {
                            let got = kernel.dot_block_rows(ty, [w], &input)[0];
                            assert_eq!(
                                got.to_bits(),
                                want.to_bits(),
                                "{march} ({profile}): {ty:?} vec_dot n={n} kind={kind}, {} kernel: {got} vs {want}",
                                kernel.name()
                            );
                            dots += 1;
                        }
                        let [a, b] = kernel.dot_block_rows(ty, [&w_rows[0], &w_rows[2]], &input);
                        assert_eq!([a.to_bits(), b.to_bits()], [want[0].to_bits(), want[2].to_bits()]);
                    }
                }
            }
            eprintln!(
                "{march} ({profile}): {ty:?}: {rows_checked} rows decoded, {dots} dots, all bit-identical"
            );
        }
    }
}

/// The whole one-column `ggml_mul_mat` (the lm_head's path: the activation converted once,
/// then `vec_dot` per row, rows split over threads) gives what the engine's kernels give.
#[test]
fn one_column_products_equal_ggml_mul_mat() {
    for (march, reference, profile) in builds() {
        let mut rng = Rng(0x1234_5678_9ABC_DEF1);
        for ty in BlockType::ALL {
            let id = ty.ggml().id();
            let lengths: &[usize] = if ty == BlockType::BF16 { &[1000, 2560] } else { &[2560] };
            for &n in lengths {
                let rows = 48;
                let w: Vec<u8> = (0..rows)
                    .flat_map(|r| reference.ggml_from_float_ref(id, &row(&mut rng, n, r)).unwrap())
                    .collect();
                let x = row(&mut rng, n, 0);
                let mut m = reference.block_matmul(id, &w, rows, n, 1, 2).unwrap();
                m.set_input(&x).unwrap();
                m.compute().unwrap();
                let want = m.output();
                let rb = ty.row_bytes(n);
                for kernel in FloatKernel::available(profile) {
                    let mut input = BlockInput::with_capacity(n);
                    kernel.prepare_block_input(ty, &x, &mut input);
                    for (r, want) in want.iter().enumerate() {
                        let got = kernel.dot_block_rows(ty, [&w[r * rb..(r + 1) * rb]], &input)[0];
                        assert_eq!(
                            got.to_bits(),
                            want.to_bits(),
                            "{march}: {ty:?} n={n} row {r}, {}",
                            kernel.name()
                        );
                    }
                }
            }
        }
    }
}

/// A model quantized by `reference` from the F32 form of `spec` with the given head type
/// (`None`: the quantizer's default), written into `dir`.
fn quantized(
    reference: &Reference,
    s: &spec::ModelSpec,
    head: Option<GgmlType>,
    dir: &Path,
) -> std::path::PathBuf {
    let src = write_spec(s, WeightForm::F32, dir).unwrap();
    let name = head.map_or("default".to_string(), |t| t.name().to_string());
    let out = dir.join(format!("{}-{name}-head.gguf", s.name));
    let t = head.map(GgmlType::id);
    let options =
        QuantizeOptions { output_tensor_type: t, token_embedding_type: t, ..QuantizeOptions::default() };
    reference.quantize(&src, &out, options).unwrap();
    out
}

/// Positions bit-identical between the engine and the reference: the prompt teacher-forced,
/// then `extra` tokens chosen greedily from the reference's logits.
fn bit_exact(
    reference: &Reference,
    path: &Path,
    profile: RefProfile,
    extra: usize,
) -> (usize, usize, GgmlType) {
    let file = GgufFile::open(path).unwrap();
    let tok = Tokenizer::from_gguf(&file).unwrap();
    let mut ids = tok.encode(PROMPT, true, false);
    let n_prompt = ids.len();
    let mut model =
        Model::load(&file, ModelOptions { n_ctx: 128, profile, ..ModelOptions::default() }).unwrap();
    let cpp_model = reference.load_model(path).unwrap();
    let mut ctx = cpp_model
        .new_context(ContextParams { n_ctx: 128, n_threads: 1, n_ubatch: bitnet_cpp::DEFAULT_N_UBATCH })
        .unwrap();
    let mut exact = 0;
    let mut pos = 0;
    while pos < n_prompt + extra {
        let want = ctx.eval_token(ids[pos] as i32, pos as u32).unwrap();
        let got = model.eval(ids[pos], pos).unwrap();
        exact += usize::from(
            got.len() == want.len() && got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
        );
        if pos + 1 == ids.len() {
            let next = want.iter().enumerate().fold(0, |best, (i, v)| if *v > want[best] { i } else { best });
            ids.push(next as u32);
        }
        pos += 1;
    }
    (exact, pos, model.head_type())
}

#[test]
fn quantized_heads_match_each_build_at_every_position() {
    let dir = tempfile::tempdir().unwrap();
    let committed = spec::committed();
    let (tiny_256, tiny_384) = (&committed[0], &committed[1]);
    assert_eq!((tiny_256.n_embd, tiny_384.n_embd), (256, 384));
    let cases = [
        (tiny_384, None, GgmlType::Q8_0),
        (tiny_256, Some(GgmlType::Q8_0), GgmlType::Q8_0),
        (tiny_256, Some(GgmlType::Q6_K), GgmlType::Q6_K),
        (tiny_256, Some(GgmlType::Q4_K), GgmlType::Q4_K),
        (tiny_256, Some(GgmlType::BF16), GgmlType::BF16),
        (tiny_384, Some(GgmlType::BF16), GgmlType::BF16),
    ];
    for (march, reference, profile) in builds() {
        let sub = dir.path().join(&march);
        for (s, head, expected) in cases {
            let path = quantized(&reference, s, head, &sub);
            let (exact, n, got) = bit_exact(&reference, &path, profile, 32);
            eprintln!(
                "{} vs {march} ({profile}): head {got}: {exact}/{n} positions bit-exact",
                path.file_name().unwrap().to_string_lossy()
            );
            assert_eq!(got, expected, "{march}: {}", path.display());
            assert_eq!(exact, n, "{march}: {}: logits not bit-identical", path.display());
        }
    }
}

#[test]
fn an_unsupported_head_type_is_refused_in_one_line_with_exit_5() {
    let dir = tempfile::tempdir().unwrap();
    let reference = Reference::open_built().unwrap();
    let s = &spec::committed()[0];
    for head in [GgmlType::Q4_0, GgmlType::Q5_K, GgmlType::Q2_K] {
        let path = quantized(&reference, s, Some(head), dir.path());
        let file = GgufFile::open(&path).unwrap();
        let err = Model::load(&file, ModelOptions::default()).err().expect("refused");
        assert!(matches!(err, ModelError::UnsupportedHeadType { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("\"token_embd.weight\"") && msg.contains(head.name()), "{msg}");
        // The reference itself runs such a file: only the engine refuses it.
        reference.load_model(&path).unwrap();

        let out = std::process::Command::new(env!("CARGO_BIN_EXE_harness"))
            .current_dir(dir.path())
            .args(["run", "--quiet", "--model"])
            .arg(&path)
            .env_remove("CROSSVAL_GGUF")
            .env_remove("BITNET_CPP_DIR")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(5), "{head}: {stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{stderr}");
        assert!(errors[0].contains("token_embd.weight") && errors[0].contains(head.name()), "{stderr}");
    }
}
