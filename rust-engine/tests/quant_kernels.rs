//! QK256 kernels: every SIMD kernel (AVX2, AVX-512 VNNI) and the scalar one agree bit for bit,
//! and all equal a third, naive oracle.

mod quant_common;

use bitnet_engine::internals::quant::{code_at, QuantizedActs, TernaryMatrix, X86_GROUP_BYTES};
use bitnet_engine::quant::{pack_i2s_x86, I2sFlavor, Qk256Kernel};
use proptest::prelude::*;
use quant_common::{random_x86_tensor, Rng};

/// Σ c·q by element index through `code_at`: no chunking, no SIMD, i64.
fn naive_code_dot(data: &[u8], row: usize, cols: usize, q: &[i8]) -> i64 {
    let row_bytes = &data[row * cols / 4..(row + 1) * cols / 4];
    (0..cols).map(|i| i64::from(code_at(row_bytes, i, X86_GROUP_BYTES)) * i64::from(q[i])).sum()
}

fn matrix(data: &[u8], rows: usize, cols: usize, k: Qk256Kernel) -> TernaryMatrix<'_> {
    TernaryMatrix::new("test.weight", I2sFlavor::X86Qk256, data, rows, cols, None).unwrap().with_kernel(k)
}

/// The SIMD kernels this CPU runs (every available kernel but the scalar oracle).
fn simd_kernels() -> Vec<Qk256Kernel> {
    let ks: Vec<Qk256Kernel> = Qk256Kernel::available().into_iter().skip(1).collect();
    if ks.is_empty() {
        eprintln!("no SIMD QK256 kernel available: SIMD comparisons skipped");
    }
    ks
}

/// Every row length 128..=8192 (step 128), 5 rows of random bytes: integer sums of every
/// kernel equal the scalar ones and the naive oracle, for whole matrices and row ranges.
#[test]
fn simd_equals_scalar_for_every_row_length() {
    for simd in simd_kernels() {
        simd_equals_scalar_for_every_row_length_with(simd);
    }
}

fn simd_equals_scalar_for_every_row_length_with(simd: Qk256Kernel) {
    let mut rng = Rng::new(1);
    for cols in (128..=8192).step_by(128) {
        let rows = 5;
        let data = random_x86_tensor(&mut rng, rows, cols, 0.37);
        let q = rng.i8s(cols);
        let mut a = vec![0i32; rows];
        let mut b = vec![0i32; rows];
        matrix(&data, rows, cols, Qk256Kernel::scalar()).code_dots(&q, 0..rows, &mut a);
        matrix(&data, rows, cols, simd).code_dots(&q, 0..rows, &mut b);
        assert_eq!(a, b, "{} cols {cols}", simd.name());
        for (r, &v) in a.iter().enumerate() {
            assert_eq!(i64::from(v), naive_code_dot(&data, r, cols, &q), "cols {cols} row {r}");
        }
        let mut part = vec![0i32; 3];
        matrix(&data, rows, cols, simd).code_dots(&q, 1..4, &mut part);
        assert_eq!(part, a[1..4], "cols {cols} rows 1..4");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Random codes (any byte), activations, row lengths and row ranges: the f32 outputs
    /// of matvec, matvec_rows and matmul are bit-identical between kernels.
    #[test]
    fn matvec_bit_identical(
        chunks in 1usize..=64,
        rows in 1usize..=40,
        seed in any::<u64>(),
        scale in 0.001f32..10.0,
        range_seed in any::<(usize, usize)>(),
    ) {
        for simd in Qk256Kernel::available().into_iter().skip(1) {
        let cols = chunks * 128;
        let mut rng = Rng::new(seed);
        let data = random_x86_tensor(&mut rng, rows, cols, scale);
        let x = rng.activations(cols);
        let mut acts = QuantizedActs::with_kernel(cols, simd);
        acts.quantize(&x);

        let ms = matrix(&data, rows, cols, Qk256Kernel::scalar());
        let mv = matrix(&data, rows, cols, simd);
        let mut ys = vec![0f32; rows];
        let mut yv = vec![0f32; rows];
        ms.matvec(&acts, &mut ys);
        mv.matvec(&acts, &mut yv);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        prop_assert_eq!(bits(&ys), bits(&yv));

        let lo = range_seed.0 % rows;
        let hi = lo + range_seed.1 % (rows - lo + 1);
        let mut part = vec![0f32; hi - lo];
        mv.matvec_rows(&acts, lo..hi, &mut part);
        prop_assert_eq!(bits(&part), bits(&ys[lo..hi]));

        let mut acts2 = QuantizedActs::with_kernel(cols, simd);
        acts2.quantize(&rng.activations(cols));
        let batch = [acts, acts2];
        let mut ym = vec![0f32; 2 * rows];
        mv.matmul(&batch, &mut ym);
        let mut y2 = vec![0f32; rows];
        ms.matvec(&batch[1], &mut y2);
        prop_assert_eq!(bits(&ym[..rows]), bits(&ys));
        prop_assert_eq!(bits(&ym[rows..]), bits(&y2));
        }
    }
}

/// The reference's AVX2 dot adds `vpmaddubsw` results in int16 lanes over up to 32 chunks
/// before widening. With codes 2 (+1) and activations 127 over 32 chunks, one lane would
/// need 32 · 4 · (2·127 + 2·127) = 65024 > 32767, so the reference's lanes wrap (its sum
/// comes out as −8192 on this input). Ours is the exact Σc·q.
#[test]
fn extreme_input_gives_exact_sum_where_reference_lanes_wrap() {
    let cols = 4096; // 32 chunks: one full reference group
    let ternary = vec![1i8; cols];
    let data = pack_i2s_x86(&ternary, 1.0).unwrap();
    let q = vec![127i8; cols];

    // The per-lane partial sum the reference keeps in int16 (16 lanes over 32 chunks):
    let lane_sum: i64 = 32 * 4 * (2 * 127 + 2 * 127);
    assert!(lane_sum > i64::from(i16::MAX), "the input must overflow an int16 lane");

    let exact = (cols as i64) * 2 * 127;
    for k in Qk256Kernel::available() {
        let mut out = [0i32];
        matrix(&data, 1, cols, k).code_dots(&q, 0..1, &mut out);
        assert_eq!(i64::from(out[0]), exact, "kernel {}", k.name());
    }

    // The same at the most negative end.
    let q = vec![-128i8; cols];
    for k in Qk256Kernel::available() {
        let mut out = [0i32];
        matrix(&data, 1, cols, k).code_dots(&q, 0..1, &mut out);
        assert_eq!(i64::from(out[0]), -(cols as i64) * 2 * 128, "kernel {}", k.name());
    }
}

/// Invalid code 3 in every position with the most negative activations: the widest i16
/// excursion our AVX2 kernel allows (8 chunks per group); still exact.
#[test]
fn code_three_everywhere_is_still_exact() {
    let cols = 8192;
    let mut data = vec![0xffu8; cols / 4];
    data.extend_from_slice(&1.0f32.to_le_bytes());
    data.resize(cols / 4 + 32, 0);
    for v in [-128i8, 127] {
        let q = vec![v; cols];
        for k in Qk256Kernel::available() {
            let mut out = [0i32];
            matrix(&data, 1, cols, k).code_dots(&q, 0..1, &mut out);
            assert_eq!(i64::from(out[0]), 3 * cols as i64 * i64::from(v), "kernel {}", k.name());
        }
    }
}

/// The float epilogue is `((float)Σc·q − (float)Σq) / s · w`, computed here from the
/// ternary values themselves (Σc·q = Σt·q + Σq), independent of packing and kernels.
#[test]
fn matvec_follows_the_reference_formula() {
    let mut rng = Rng::new(7);
    let (rows, cols) = (6, 2560);
    let t = rng.ternary(rows * cols);
    let w = 0.0421f32;
    let data = pack_i2s_x86(&t, w).unwrap();
    let x = rng.activations(cols);
    for k in Qk256Kernel::available() {
        let mut acts = QuantizedActs::with_kernel(cols, k);
        acts.quantize(&x);
        let mut y = vec![0f32; rows];
        matrix(&data, rows, cols, k).matvec(&acts, &mut y);
        for r in 0..rows {
            let tq: i32 = (0..cols).map(|i| i32::from(t[r * cols + i]) * i32::from(acts.q()[i])).sum();
            let cq = tq + acts.sum();
            let expected = (cq as f32 - acts.sum() as f32) / acts.scale() * w;
            assert_eq!(y[r].to_bits(), expected.to_bits(), "kernel {} row {r}", k.name());
        }
    }
}

/// The process-wide choice honours `BITNET_QK256_IMPL` through `Qk256Kernel::resolve`,
/// tested with explicit settings (no process environment is mutated).
#[test]
fn kernel_override_is_honoured() {
    assert_eq!(Qk256Kernel::resolve(Some("scalar")).unwrap().name(), "scalar");
    assert_eq!(Qk256Kernel::resolve(Some("auto")).unwrap(), Qk256Kernel::best());
    assert_eq!(Qk256Kernel::resolve(Some("")).unwrap(), Qk256Kernel::best());
    if let Some(k) = Qk256Kernel::avx2() {
        assert_eq!(Qk256Kernel::resolve(Some("AVX2")).unwrap(), k);
    }
    match Qk256Kernel::avx512vnni() {
        Some(k) => {
            assert_eq!(Qk256Kernel::resolve(Some("AVX512VNNI")).unwrap(), k);
            assert_eq!(Qk256Kernel::best().name(), "avx512vnni");
        }
        None => {
            let err = Qk256Kernel::resolve(Some("avx512vnni")).unwrap_err().to_string();
            assert!(err.contains("avx512vnni") && err.contains("not available"), "{err}");
            if Qk256Kernel::avx2().is_some() {
                assert_eq!(Qk256Kernel::best().name(), "avx2");
            }
        }
    }
    let err = Qk256Kernel::resolve(Some("avx512")).unwrap_err().to_string();
    assert!(err.contains("avx512") && err.contains("BITNET_QK256_IMPL"), "{err}");
    assert!(err.contains("avx512vnni"), "the message lists the accepted values: {err}");
    // Whatever the environment says, the reported name is one of the known kernels or "invalid".
    assert!(["scalar", "avx2", "avx512vnni", "invalid"].contains(&bitnet_engine::quant::kernel_name()));
}

/// The AVX2 kernel's i16 accumulators (and the VNNI kernel's 4× i32 lanes) at their bounds:
/// every code 3 (the 4× lanes get 2·12·|q| per pair) with q all −128 or all 127, over lengths
/// that end a group early and late: exact for one row or a batch of columns.
#[test]
fn worst_case_codes_and_activations_stay_exact() {
    for simd in simd_kernels() {
        worst_case_codes_and_activations_stay_exact_with(simd);
    }
}

fn worst_case_codes_and_activations_stay_exact_with(simd: Qk256Kernel) {
    for chunks in [1usize, 4, 5, 6, 10, 11, 54] {
        let cols = chunks * 128;
        let mut data = vec![0xffu8; cols / 4];
        data.extend_from_slice(&1f32.to_le_bytes());
        data.resize(cols / 4 + 32, 0);
        for v in [-128i8, 127] {
            let q = vec![v; cols];
            let mut out = [0i32];
            matrix(&data, 1, cols, simd).code_dots(&q, 0..1, &mut out);
            assert_eq!(
                i64::from(out[0]),
                3 * cols as i64 * i64::from(v),
                "{} chunks {chunks} q {v}",
                simd.name()
            );
            let mut acts = QuantizedActs::with_kernel(cols, simd);
            acts.quantize(&vec![f32::from(v); cols]);
            let batch = vec![acts.clone(); 5];
            let mut ym = vec![0f32; 5];
            matrix(&data, 1, cols, simd).matmul_rows(&batch, 0..1, &mut ym);
            let mut y = [0f32];
            matrix(&data, 1, cols, Qk256Kernel::scalar()).matvec(&acts, &mut y);
            assert!(
                ym.iter().all(|v| v.to_bits() == y[0].to_bits()),
                "{} chunks {chunks}: {ym:?} vs {y:?}",
                simd.name()
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Batches of 1..=9 columns through `matmul_rows` (row-major) equal one matvec per
    /// column, bit for bit, for every kernel and any row range.
    #[test]
    fn matmul_rows_equals_matvec_per_column(
        chunks in 1usize..=24,
        rows in 1usize..=24,
        n in 1usize..=9,
        seed in any::<u64>(),
        range_seed in any::<(usize, usize)>(),
    ) {
        let cols = chunks * 128;
        let mut rng = Rng::new(seed);
        let data = random_x86_tensor(&mut rng, rows, cols, 0.25);
        let lo = range_seed.0 % rows;
        let hi = lo + range_seed.1 % (rows - lo + 1);
        for k in Qk256Kernel::available() {
            let m = matrix(&data, rows, cols, k);
            let batch: Vec<QuantizedActs> = (0..n)
                .map(|_| {
                    let mut a = QuantizedActs::with_kernel(cols, k);
                    a.quantize(&rng.activations(cols));
                    a
                })
                .collect();
            let mut got = vec![0f32; (hi - lo) * n];
            m.matmul_rows(&batch, lo..hi, &mut got);
            for (c, x) in batch.iter().enumerate() {
                let mut want = vec![0f32; rows];
                matrix(&data, rows, cols, Qk256Kernel::scalar()).matvec(x, &mut want);
                for (i, r) in (lo..hi).enumerate() {
                    prop_assert_eq!(got[i * n + c].to_bits(), want[r].to_bits(), "kernel {} col {} row {}", k.name(), c, r);
                }
            }
        }
    }
}

/// Rows long enough to end the VNNI kernels' i32 lane groups (4096 chunks) and, at the
/// far end, to wrap the i32 sum itself (3 · 127 · 5.9M > 2³¹): every kernel still gives
/// the scalar oracle's (wrapping) sum, for one row and through the batched kernels.
#[test]
fn long_rows_cross_lane_groups_and_wrap_like_scalar() {
    for chunks in [4095usize, 4096, 4097, 8193, 46_000] {
        let cols = chunks * 128;
        let rows = 5; // one 4-row tile and a leftover row in `matmul_rows`
        let mut data = vec![0xffu8; rows * cols / 4];
        data.extend_from_slice(&1f32.to_le_bytes());
        data.resize(rows * cols / 4 + 32, 0);
        for v in [-1f32, 1.0] {
            let mut acts = QuantizedActs::with_kernel(cols, Qk256Kernel::scalar());
            acts.quantize(&vec![v; cols]);
            let mut want = vec![0f32; rows];
            matrix(&data, rows, cols, Qk256Kernel::scalar()).matvec(&acts, &mut want);
            let batch = vec![acts; 5];
            for k in simd_kernels() {
                let mut got = vec![0f32; rows * 5];
                matrix(&data, rows, cols, k).matmul_rows(&batch, 0..rows, &mut got);
                for (i, g) in got.iter().enumerate() {
                    assert_eq!(g.to_bits(), want[i / 5].to_bits(), "{} chunks {chunks} x {v}", k.name());
                }
            }
        }
        // All five rows at once: four stretches of one row and a leftover row in the GEMV.
        let q: Vec<i8> = (0..cols).map(|i| if i % 3 == 0 { -128 } else { 127 }).collect();
        let mut want = vec![0i32; rows];
        matrix(&data, rows, cols, Qk256Kernel::scalar()).code_dots(&q, 0..rows, &mut want);
        for k in simd_kernels() {
            let mut out = vec![0i32; rows];
            matrix(&data, rows, cols, k).code_dots(&q, 0..rows, &mut out);
            assert_eq!(out, want, "{} chunks {chunks}, five rows", k.name());
        }
        let data = &data[(rows - 1) * cols / 4..];
        for v in [-128i8, 127] {
            let q = vec![v; cols];
            let exact = 3 * cols as i64 * i64::from(v);
            let mut want = [0i32];
            matrix(data, 1, cols, Qk256Kernel::scalar()).code_dots(&q, 0..1, &mut want);
            assert_eq!(want[0], exact as i32, "the oracle wraps like i32: chunks {chunks}");
            for k in simd_kernels() {
                let mut out = [0i32];
                matrix(data, 1, cols, k).code_dots(&q, 0..1, &mut out);
                assert_eq!(out, want, "{} chunks {chunks} q {v}", k.name());
            }
        }
    }
}
