//! Float kernels: the AVX2 and AVX-512 twins equal the scalar emulation of ggml's lanes bit
//! for bit under every reference-build profile, on every length (whole steps and leftovers),
//! on hard values (ties, subnormals, infinities, values that overflow f16) and in softmax's
//! special exponent ranges.

use bitnet_engine::internals::ops;
use bitnet_engine::ops::FloatKernel;
use bitnet_engine::profile::RefProfile;
use proptest::prelude::*;

/// Every SIMD kernel this CPU runs, under every profile.
fn simd() -> Vec<FloatKernel> {
    let k: Vec<FloatKernel> = RefProfile::ALL
        .into_iter()
        .flat_map(|p| [FloatKernel::avx2(p), FloatKernel::avx512(p)])
        .flatten()
        .collect();
    if k.is_empty() {
        eprintln!("AVX2/FMA/F16C not available: SIMD comparisons skipped");
    }
    k
}

/// A deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Values of every magnitude class, biased to the ranges activations live in.
    fn f32(&mut self) -> f32 {
        let r = self.next();
        match r % 16 {
            0 => f32::from_bits((r >> 8) as u32 & 0x807f_ffff), // subnormal or zero
            1 => [0.0, -0.0, 65504.0, 65520.0, -1e9, 5.96e-8, 1.0, -1.0][(r >> 8) as usize % 8],
            _ => ((r >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32 * 10f32.powi((r % 9) as i32 - 4),
        }
    }

    /// Any finite f16 bit pattern (no NaN or infinity: their products are not interesting).
    fn f16(&mut self) -> u16 {
        loop {
            let b = self.next() as u16;
            if b & 0x7c00 != 0x7c00 {
                return b;
            }
        }
    }
}

fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

#[test]
fn dots_equal_scalar_for_every_length() {
    for k in simd() {
        dots_equal_scalar(k);
    }
}

fn dots_equal_scalar(k: FloatKernel) {
    let p = k.profile();
    let mut rng = Rng(7);
    for n in 0..=300 {
        for _ in 0..4 {
            let xf: Vec<f32> = (0..n).map(|_| rng.f32()).collect();
            let yf: Vec<f32> = (0..n).map(|_| rng.f32()).collect();
            let xh: Vec<u16> = (0..n).map(|_| rng.f16()).collect();
            let yh: Vec<u16> = (0..n).map(|_| rng.f16()).collect();
            let xb: Vec<u8> = xh.iter().flat_map(|v| v.to_le_bytes()).collect();
            let at = format!("{} {p} n={n}", k.name());
            assert!(same(k.dot_f32(&xf, &yf), ops::dot_f32(p, &xf, &yf)), "dot_f32 {at}");
            assert!(same(k.dot_f16(&xh, &yh), ops::dot_f16(p, &xh, &yh)), "dot_f16 {at}");
            assert!(same(k.dot_f16_f32(&xh, &yf), ops::dot_f16_f32(p, &xh, &yf)), "dot_f16_f32 {at}");
            let want = ops::dot_f16_bytes_f32(p, &xb, &yf);
            assert!(same(want, ops::dot_f16_f32(p, &xh, &yf)), "bytes and u16 forms differ {at}");
            let [a] = k.dot_f16_bytes_rows([&xb[..]], &yf);
            assert!(same(a, want), "rows<1> {at}");
        }
    }
}

/// The multi-row form gives each row exactly its single-row result, and an f16 `y`
/// widened to f32 gives exactly `dot_f16` (the lm_head relies on both).
#[test]
fn row_blocks_equal_single_rows_and_dot_f16() {
    let mut rng = Rng(11);
    let kernels: Vec<FloatKernel> = RefProfile::ALL.into_iter().flat_map(FloatKernel::available).collect();
    for n in [32usize, 96, 2560, 2560 + 17, 100] {
        let rows: Vec<Vec<u16>> = (0..4).map(|_| (0..n).map(|_| rng.f16()).collect()).collect();
        let bytes: Vec<Vec<u8>> =
            rows.iter().map(|r| r.iter().flat_map(|v| v.to_le_bytes()).collect()).collect();
        let yh: Vec<u16> = (0..n).map(|_| ops::f32_to_f16(rng.f32())).collect();
        let yf: Vec<f32> = yh.iter().map(|&h| ops::f16_to_f32(h)).collect();
        for &k in &kernels {
            let p = k.profile();
            let b: [&[u8]; 4] = std::array::from_fn(|i| &bytes[i][..]);
            let four = k.dot_f16_bytes_rows(b, &yf);
            let three = k.dot_f16_bytes_rows([b[0], b[1], b[2]], &yf);
            let two = k.dot_f16_bytes_rows([b[0], b[1]], &yf);
            let four_h = k.dot_f16_bytes_rows_f16(b, &yh);
            let one_h = k.dot_f16_bytes_rows_f16([b[3]], &yh);
            assert!(same(one_h[0], ops::dot_f16(p, &rows[3], &yh)));
            for i in 0..4 {
                let want = ops::dot_f16(p, &rows[i], &yh);
                assert!(same(four[i], want), "{} {p} n={n} row {i}", k.name());
                assert!(same(four_h[i], want), "{} {p} n={n} row {i} (f16 vector)", k.name());
                assert!(same(ops::dot_f16_bytes(p, b[i], &yh), want));
                if i < 3 {
                    assert!(same(three[i], want));
                }
                if i < 2 {
                    assert!(same(two[i], want));
                }
            }
        }
    }
}

/// The strided form gives each row exactly `dot_f16_f32`, and with an f16 vector widened to
/// f32 exactly `dot_f16` (attention's `K·q` and `V·p`): rows in groups of eight and leftover
/// rows, vectors with and without leftover elements (whole eights of them and not), hard
/// values (infinities and NaN too, whose sums are NaN; any f32 vector, not only f16 values).
#[test]
fn strided_rows_equal_dot_f16() {
    let mut rng = Rng(13);
    let kernels: Vec<FloatKernel> = RefProfile::ALL.into_iter().flat_map(FloatKernel::available).collect();
    for (n, rows, stride) in [
        (32usize, 128usize, 160usize),
        (96, 17, 96),
        (128, 9, 640),
        (0, 8, 3),
        (5, 8, 5),
        (100, 24, 131),
        (71, 1, 71),
    ] {
        for hard in [false, true] {
            let m: Vec<u16> = (0..(rows - 1) * stride + n)
                .map(|_| match rng.next() % 64 {
                    0 if hard => [0x7c00, 0xfc00, 0x7e00, 0x7bff, 0xfbff, 0x0001][(rng.next() % 6) as usize],
                    _ => rng.f16(),
                })
                .collect();
            let y16: Vec<u16> =
                (0..n).map(|_| if hard { rng.f16() } else { ops::f32_to_f16(rng.f32()) }).collect();
            let y16f: Vec<f32> = y16.iter().map(|&h| ops::f16_to_f32(h)).collect();
            let yf: Vec<f32> = (0..n).map(|_| rng.f32()).collect();
            for &k in &kernels {
                let p = k.profile();
                let mut out = vec![0f32; rows];
                k.dot_f16_strided(&m, stride, &y16f, &mut out);
                for (i, &o) in out.iter().enumerate() {
                    let want = ops::dot_f16(p, &m[i * stride..i * stride + n], &y16);
                    assert!(same(o, want), "{} {p} n={n} stride={stride} row {i}: {o} != {want}", k.name());
                }
                k.dot_f16_strided(&m, stride, &yf, &mut out);
                for (i, &o) in out.iter().enumerate() {
                    let want = ops::dot_f16_f32(p, &m[i * stride..i * stride + n], &yf);
                    assert!(
                        same(o, want),
                        "{} {p} n={n} stride={stride} row {i} (f32): {o} != {want}",
                        k.name()
                    );
                }
            }
        }
    }
}

/// RMSNorm of many rows (eight rows' sums of squares at once) gives each row exactly
/// `rms_norm`: row counts around multiples of eight, row lengths with and without leftover
/// elements, hard values (subnormals, squares that overflow, infinities, NaN).
#[test]
fn rms_norm_rows_equal_rms_norm() {
    let mut rng = Rng(17);
    let kernels: Vec<FloatKernel> = RefProfile::ALL.into_iter().flat_map(FloatKernel::available).collect();
    for (rows, d) in [(8usize, 2560usize), (17, 6912), (1, 64), (7, 13), (9, 8), (16, 1), (24, 100)] {
        for hard in [false, true] {
            let x: Vec<f32> = (0..rows * d)
                .map(|_| match rng.next() % 64 {
                    0 if hard => [f32::INFINITY, f32::NAN, 3e38, -2e19, 1e-45][(rng.next() % 5) as usize],
                    _ => rng.f32(),
                })
                .collect();
            let w: Vec<f32> = (0..d).map(|_| rng.f32()).collect();
            let mut want = vec![0f32; rows * d];
            for (xr, o) in x.chunks_exact(d).zip(want.chunks_exact_mut(d)) {
                bitnet_engine::ops::rms_norm(xr, &w, 1e-6, o);
            }
            for &k in &kernels {
                let mut out = vec![0f32; rows * d];
                k.rms_norm_rows(&x, &w, 1e-6, &mut out);
                for (i, (&o, &e)) in out.iter().zip(&want).enumerate() {
                    assert!(same(o, e), "{} rows={rows} d={d} element {i}: {o} != {e}", k.name());
                }
            }
        }
    }
}

/// The transpose of a batch's products moves every value to its place (blocks of eight and
/// the edges), for every kernel.
#[test]
fn transpose_cols_moves_every_value() {
    let mut kernels: Vec<FloatKernel> =
        RefProfile::ALL.into_iter().flat_map(FloatKernel::available).collect();
    kernels.push(FloatKernel::scalar(RefProfile::Avx2));
    for (rows, n) in [(2560usize, 32usize), (17, 9), (8, 8), (7, 16), (40, 1), (0, 5)] {
        let src: Vec<f32> = (0..rows * n + 3).map(|i| i as f32).collect();
        for cols in [0..n, n / 2..n, 0..n / 3, 1..n.min(9)] {
            for &k in &kernels {
                let mut dst = vec![f32::NAN; rows * cols.len()];
                k.transpose_cols(&src, n, cols.clone(), &mut dst);
                for (j, c) in cols.clone().enumerate() {
                    for r in 0..rows {
                        assert_eq!(
                            dst[j * rows + r],
                            src[r * n + c],
                            "{} {rows}×{n} {cols:?} r={r} c={c}",
                            k.name()
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn f16_conversions_equal_scalar() {
    let Some(&k) = simd().first() else { return };
    let mut rng = Rng(3);
    // Every f16 value plus its neighbourhood (ties to even and just off them), and random values.
    let mut xs: Vec<f32> = Vec::new();
    for h in 0..=u16::MAX {
        let v = ops::f16_to_f32(h);
        if v.is_finite() {
            let b = v.to_bits();
            xs.extend([v, f32::from_bits(b.wrapping_add(1)), f32::from_bits(b.wrapping_sub(1))]);
        }
    }
    xs.extend((0..100_000).map(|_| rng.f32()));
    xs.extend([f32::INFINITY, f32::NEG_INFINITY, 65519.99, 65520.0, 1e-8, -1e-8]);
    // Midpoints between neighbouring f16 values: exact ties.
    for h in 0..0x7bffu16 {
        let (a, b) = (ops::f16_to_f32(h), ops::f16_to_f32(h + 1));
        xs.push(((f64::from(a) + f64::from(b)) / 2.0) as f32);
    }
    for len in [xs.len(), 13, 8, 7] {
        let x = &xs[..len];
        let mut got = vec![0u16; len];
        k.f32_to_f16_row(x, &mut got);
        let want: Vec<u16> = x.iter().map(|&v| ops::f32_to_f16(v)).collect();
        assert_eq!(got, want);
        let mut r1 = x.to_vec();
        let mut r2 = x.to_vec();
        k.round_through_f16(&mut r1);
        ops::round_through_f16(&mut r2);
        assert!(r1.iter().zip(&r2).all(|(a, b)| same(*a, *b)));
    }
}

#[test]
fn softmax_equals_scalar_including_extreme_exponents() {
    for k in simd() {
        softmax_equals_scalar(k);
    }
}

fn softmax_equals_scalar(k: FloatKernel) {
    let p = k.profile();
    let mut rng = Rng(5);
    for len in [8usize, 16, 32, 48, 64, 96, 256, 13, 1, 24, 40] {
        for spread in [0.1f32, 10.0, 100.0, 150.0, 300.0, 1000.0, 1e5] {
            for n_valid in [1, len / 2 + 1, len] {
                let s: Vec<f32> = (0..len).map(|_| rng.f32().clamp(-1.0, 1.0) * spread).collect();
                let mut a = s.clone();
                let mut b = s.clone();
                k.softmax_scaled(&mut a, n_valid.min(len), 0.088);
                ops::softmax_scaled(p, &mut b, n_valid.min(len), 0.088);
                let at = format!("{} {p} len {len} spread {spread}", k.name());
                assert!(a.iter().zip(&b).all(|(x, y)| same(*x, *y)), "{at}");
            }
        }
    }
}

#[test]
fn silu_equals_scalar_for_every_length() {
    let mut rng = Rng(9);
    for k in simd() {
        for n in 0..=70 {
            let x: Vec<f32> = (0..n)
                .map(|i| match i % 7 {
                    0 => rng.f32() * 1e3,
                    1 => [f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 89.0, -104.0][i % 6],
                    _ => rng.f32() * 20.0,
                })
                .collect();
            let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
            k.silu(&x, &mut a);
            ops::silu(k.profile(), &x, &mut b);
            assert!(a.iter().zip(&b).all(|(x, y)| same(*x, *y)), "{} {} n={n}", k.name(), k.profile());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random finite inputs of any length: the f32 dot agrees bit for bit.
    #[test]
    fn dot_f32_bit_identical(x in proptest::collection::vec(-1e6f32..1e6, 0..200), seed in any::<u64>()) {
        for k in simd() {
            let mut rng = Rng(seed | 1);
            let y: Vec<f32> = x.iter().map(|_| rng.f32()).collect();
            prop_assert!(same(k.dot_f32(&x, &y), ops::dot_f32(k.profile(), &x, &y)));
        }
    }
}
