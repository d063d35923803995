//! Activation quantization: the mirror of the reference's `quantize_row_i8_s`, its edge
//! cases, and SIMD/scalar agreement.

mod quant_common;

use bitnet_engine::internals::quant::{
    quantize_row_i8_s, quantize_row_i8_s_with, ActRounding, QuantizedActs,
};
use bitnet_engine::quant::Qk256Kernel;
use proptest::prelude::*;
use quant_common::Rng;

/// The reference's formula written out in f64 for finite, NaN-free rows: max in double with
/// the 1e-5 floor, s rounded to f32, then q = round-half-even of `x·s` — of the exact product
/// for fused rounding, of the f32-rounded product for unfused — clamped to [-128, 127].
fn oracle(x: &[f32], rounding: ActRounding) -> (Vec<i8>, f32, i32) {
    let max = x.iter().fold(0.00001f64, |m, &v| m.max(f64::from(v).abs()));
    let s = (127.0 / max) as f32;
    let q: Vec<i8> = x
        .iter()
        .map(|&v| {
            // Exact in f64: two 24-bit significands multiply into at most 48 bits.
            let exact = f64::from(v) * f64::from(s);
            let p = match rounding {
                ActRounding::Fused => exact,
                ActRounding::Unfused => f64::from(v * s),
            };
            p.round_ties_even().clamp(-128.0, 127.0) as i8
        })
        .collect();
    let sum = q.iter().map(|&v| i32::from(v)).sum();
    (q, s, sum)
}

fn kernels() -> Vec<Qk256Kernel> {
    Qk256Kernel::available()
}

fn quantize(k: Qk256Kernel, x: &[f32], rounding: ActRounding) -> (Vec<i8>, f32, i32) {
    let mut a = QuantizedActs::with_kernel(x.len(), k).with_rounding(rounding);
    a.quantize(x);
    (a.q().to_vec(), a.scale(), a.sum())
}

#[test]
fn matches_the_oracle_on_random_rows() {
    let mut rng = Rng::new(3);
    for len in [1usize, 7, 31, 32, 33, 127, 128, 2560, 6912] {
        for _ in 0..20 {
            let x = rng.activations(len);
            for rounding in [ActRounding::Fused, ActRounding::Unfused] {
                let want = oracle(&x, rounding);
                for k in kernels() {
                    let got = quantize(k, &x, rounding);
                    assert_eq!(got.0, want.0, "len {len} {rounding:?} {}", k.name());
                    assert_eq!(got.1.to_bits(), want.1.to_bits());
                    assert_eq!(got.2, want.2);
                }
            }
        }
    }
}

/// Finds an element whose fused and unfused roundings differ and checks that each mode
/// follows its own rule: the proof that the choice of [`ActRounding`] matters.
#[test]
fn fused_and_unfused_rounding_differ_where_expected() {
    // Look near every half-integer k + 0.5, for a few row maxima, for an x whose f32
    // product x·s rounds onto k + 0.5 while the exact product does not lie on it: then
    // ties-to-even and the exact value round to different integers.
    let mut found = None;
    'search: for max in [3.0f32, 1.7, 0.09, 11.3, 250.0, 0.6] {
        let s = (127.0 / f64::from(max)) as f32;
        for k in 0..126 {
            let centre = (k as f32 + 0.5) / s;
            for d in -8i32..=8 {
                let x = f32::from_bits((centre.to_bits() as i32 + d) as u32);
                let exact = f64::from(x) * f64::from(s);
                let rounded = f64::from(x * s);
                if exact.round_ties_even() != rounded.round_ties_even() {
                    found = Some((max, x, s));
                    break 'search;
                }
            }
        }
    }
    let (max, x, s) = found.expect("such an element exists");
    let row = [max, x];
    let mut qf = [0i8; 2];
    let mut qu = [0i8; 2];
    quantize_row_i8_s(&row, &mut qf);
    quantize_row_i8_s_with(&row, &mut qu, ActRounding::Unfused);
    assert_eq!(qf[1], oracle(&row, ActRounding::Fused).0[1]);
    assert_eq!(qu[1], oracle(&row, ActRounding::Unfused).0[1]);
    assert_ne!(qf[1], qu[1], "x = {x:e}, s = {s:e}");
    for k in kernels() {
        assert_eq!(quantize(k, &row, ActRounding::Fused).0, qf);
        assert_eq!(quantize(k, &row, ActRounding::Unfused).0, qu);
    }
}

#[test]
fn all_zeros_use_the_floor() {
    for k in kernels() {
        for len in [1, 40, 2560] {
            let (q, s, sum) = quantize(k, &vec![0.0; len], ActRounding::Fused);
            assert_eq!(s, (127.0 / 0.00001f64) as f32);
            assert!(q.iter().all(|&v| v == 0));
            assert_eq!(sum, 0);
        }
    }
}

#[test]
fn signed_zeros_and_tiny_values() {
    let x = [0.0f32, -0.0, 1e-7, -1e-7, 5e-6, -5e-6, f32::MIN_POSITIVE, 1e-45];
    for k in kernels() {
        for rounding in [ActRounding::Fused, ActRounding::Unfused] {
            let got = quantize(k, &x, rounding);
            assert_eq!(got.0, oracle(&x, rounding).0, "{}", k.name());
            // max = 1e-5 (floor): 5e-6 · 127/1e-5 = 63.5 → ties to even
            assert_eq!(got.0[0..2], [0, 0]);
        }
    }
}

#[test]
fn huge_values_stay_in_range() {
    let x = [f32::MAX, -f32::MAX, 1e30, -3e38, 0.5];
    for k in kernels() {
        let (q, s, sum) = quantize(k, &x, ActRounding::Fused);
        assert_eq!(q, oracle(&x, ActRounding::Fused).0);
        assert_eq!(q[0], 127);
        assert_eq!(q[1], -127);
        assert!(s > 0.0 && s.is_finite());
        assert_eq!(sum, q.iter().map(|&v| i32::from(v)).sum::<i32>());
    }
}

/// An infinite element makes s = 0, every q 0 (the reference's `inf·0` NaN reads as 0
/// through `nearest_int`), and any matvec output NaN.
#[test]
fn infinity_gives_zero_scale() {
    let mut x = vec![0.25f32; 100];
    x[37] = f32::INFINITY;
    for k in kernels() {
        let (q, s, sum) = quantize(k, &x, ActRounding::Fused);
        assert_eq!(s, 0.0);
        assert!(q.iter().all(|&v| v == 0), "{}", k.name());
        assert_eq!(sum, 0);
    }
}

/// NaN policy: the reference's `MAX` recurrence forgets a NaN when a later element is not
/// NaN, so the scale comes from the elements after the last NaN. Every kernel gives the
/// same answer (the SIMD path hands NaN rows to the scalar mirror).
#[test]
fn nan_policy() {
    let mut x = vec![0.5f32; 64];
    x[3] = 4.0; // before the NaN: forgotten by the max
    x[10] = f32::NAN;
    for k in kernels() {
        let (q, s, _) = quantize(k, &x, ActRounding::Fused);
        assert_eq!(s, (127.0f64 / 0.5) as f32, "{}", k.name());
        assert_eq!(q[3], 127, "4.0 · 254 clamps");
        assert_eq!(q[10], 0, "the canonical NaN reads as 0");
        assert_eq!(q[11], 127);
    }
    let mut x = vec![0.5f32; 64];
    x[63] = f32::NAN; // last: the scale is NaN
    for k in kernels() {
        let (_, s, _) = quantize(k, &x, ActRounding::Fused);
        assert!(s.is_nan(), "{}", k.name());
    }
}

#[test]
fn buffer_is_reused() {
    let mut a = QuantizedActs::with_kernel(16, Qk256Kernel::scalar());
    a.quantize(&[1.0; 16]);
    assert_eq!(a.q(), &[127i8; 16]);
    a.quantize(&[-2.0, 1.0]);
    assert_eq!(a.q(), &[-127i8, 64]);
    assert_eq!(a.sum(), -63);
    assert_eq!(a.len(), 2);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any finite or infinite values (no NaN), any length: every kernel gives the same bits.
    #[test]
    fn simd_equals_scalar(x in prop::collection::vec(
        prop_oneof![
            8 => -100.0f32..100.0,
            1 => prop::num::f32::NORMAL | prop::num::f32::SUBNORMAL | prop::num::f32::ZERO,
            1 => Just(f32::INFINITY),
        ],
        1..400,
    )) {
        let want = quantize(Qk256Kernel::scalar(), &x, ActRounding::Fused);
        for k in kernels() {
            for rounding in [ActRounding::Fused, ActRounding::Unfused] {
                let a = quantize(Qk256Kernel::scalar(), &x, rounding);
                let b = quantize(k, &x, rounding);
                prop_assert_eq!(&a.0, &b.0);
                prop_assert_eq!(a.1.to_bits(), b.1.to_bits());
                prop_assert_eq!(a.2, b.2);
            }
        }
        if x.iter().all(|v| v.is_finite()) {
            prop_assert_eq!(want.0, oracle(&x, ActRounding::Fused).0);
        }
    }
}
