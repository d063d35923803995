//! Flavour detection and quantize → dequantize round trips for every flavour.

mod quant_common;

use bitnet_engine::internals::quant::{QuantizedActs, TernaryMatrix};
use bitnet_engine::quant::{
    check_i2s_integrity, detect_flavor_with, pack_bitnet32_f16, pack_i2s_arm64, pack_i2s_x86,
    pack_split32_codes, pack_split32_scales, quantize_i2s_x86, I2sFlavor, Qk256Kernel, QuantError,
    SiblingScaleType,
};
use proptest::prelude::*;
use quant_common::Rng;

fn detect(
    dims: &[u64],
    data: &[u8],
    sibling: bool,
    forced: Option<&str>,
) -> Result<bitnet_engine::quant::FlavorDetection, QuantError> {
    detect_flavor_with("blk.3.ffn_down.weight", dims, data, sibling, forced)
}

/// Block scales exactly representable in f16, so f16 storage round-trips them.
fn f16_exact_scales(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| half::f16::from_f32(0.001 + rng.unit() as f32).to_f32()).collect()
}

// ---------- detection ----------

#[test]
fn x86_is_chosen_and_arm64_reported_never_guessed() {
    let (rows, cols) = (640usize, 2560usize);
    let mut rng = Rng::new(11);
    let data = pack_i2s_x86(&rng.ternary(rows * cols), 0.02).unwrap();
    let d = detect(&[cols as u64, rows as u64], &data, false, None).unwrap();
    assert_eq!(d.flavor, I2sFlavor::X86Qk256);
    assert_eq!(d.candidates, [I2sFlavor::X86Qk256, I2sFlavor::Arm64]);
    assert!(!d.forced);
    assert!(d.note.contains("arm64") && d.note.contains("never guessed"), "{}", d.note);
    assert!(d.note.contains("2e-2"), "tail scale reported: {}", d.note);
}

#[test]
fn arm64_only_when_forced() {
    let (rows, cols) = (4usize, 256usize);
    let data = pack_i2s_arm64(&vec![1; rows * cols], 1.0).unwrap();
    let dims = [cols as u64, rows as u64];
    assert_eq!(detect(&dims, &data, false, None).unwrap().flavor, I2sFlavor::X86Qk256);
    let d = detect(&dims, &data, false, Some("arm64")).unwrap();
    assert_eq!(d.flavor, I2sFlavor::Arm64);
    assert!(d.forced);
    // A row length of 64 fits only the ARM layout, which is never guessed: an error that
    // says how to force it.
    let data = pack_i2s_arm64(&[0; 64 * 2], 1.0).unwrap();
    let err = detect(&[64, 2], &data, false, None).unwrap_err().to_string();
    assert!(err.contains("BITNET_I2S_FLAVOR=arm64"), "{err}");
    assert_eq!(detect(&[64, 2], &data, false, Some("ARM")).unwrap().flavor, I2sFlavor::Arm64);
}

#[test]
fn bitnet32_f16_detected() {
    let (rows, cols) = (3usize, 96usize); // 96 is not a multiple of 128: only 32-blocks fit
    let mut rng = Rng::new(5);
    let scales = f16_exact_scales(&mut rng, rows * cols / 32);
    let data = pack_bitnet32_f16(&rng.ternary(rows * cols), &scales).unwrap();
    let d = detect(&[cols as u64, rows as u64], &data, false, None).unwrap();
    assert_eq!(d.flavor, I2sFlavor::BitNet32F16);
    assert_eq!(d.candidates, [I2sFlavor::BitNet32F16]);
}

#[test]
fn split32_needs_its_sibling() {
    let (rows, cols) = (2usize, 2560usize);
    let codes = pack_split32_codes(&vec![0; rows * cols]).unwrap();
    let dims = [cols as u64, rows as u64];
    let d = detect(&dims, &codes, true, None).unwrap();
    assert_eq!(d.flavor, I2sFlavor::Split32WithSibling);
    let err = detect(&dims, &codes, false, None).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, QuantError::NoFlavorFits { .. }));
    assert!(msg.contains("blk.3.ffn_down.weight.scale") && msg.contains("absent"), "{msg}");
    let err = detect(&dims, &codes, false, Some("split32")).unwrap_err();
    assert!(matches!(err, QuantError::ForcedFlavorMismatch { .. }), "{err}");
}

/// At n = 512 the x86 size (n/4 + 32 = 160) equals the BitNet32F16 size (16 blocks × 10):
/// priority picks x86 when its tail holds a valid scale and says so; an invalid tail
/// demotes it.
#[test]
fn ambiguity_is_resolved_by_priority_and_tail() {
    let dims = [128u64, 4];
    let x86 = pack_i2s_x86(&vec![1; 512], 0.5).unwrap();
    let d = detect(&dims, &x86, false, None).unwrap();
    assert_eq!(d.flavor, I2sFlavor::X86Qk256);
    assert!(d.is_ambiguous());
    assert_eq!(d.candidates, [I2sFlavor::X86Qk256, I2sFlavor::BitNet32F16, I2sFlavor::Arm64]);
    assert!(d.note.contains("ambiguous") && d.note.contains("priority"), "{}", d.note);

    // A BitNet32F16 tensor whose bytes at n/4 read as a NaN f32: not a valid x86 tail.
    let mut scales = vec![1.0f32; 16];
    scales[12] = f32::NAN; // block 12's f16 scale sits at bytes 128..130; 130..132 are codes
    let mut b32 = pack_bitnet32_f16(&vec![1; 512], &scales).unwrap();
    b32[130] = 0xff;
    b32[131] = 0xff;
    let tail = f32::from_le_bytes(b32[128..132].try_into().unwrap());
    assert!(tail.is_nan());
    let d = detect(&dims, &b32, false, None).unwrap();
    assert_eq!(d.flavor, I2sFlavor::BitNet32F16);
    assert!(d.note.contains("not a valid I2_S scale"), "{}", d.note);
}

#[test]
fn no_fit_error_names_tensor_shape_and_every_size() {
    let dims = [2560u64, 2560];
    let err = detect(&dims, &vec![0u8; 1000], false, None).unwrap_err();
    let msg = err.to_string();
    let n = 2560u64 * 2560;
    for needle in [
        "blk.3.ffn_down.weight".to_string(),
        "[2560, 2560]".to_string(),
        "1000 bytes".to_string(),
        format!("x86-qk256 {} bytes", n / 4 + 32),
        format!("bitnet32-f16 {} bytes", n / 32 * 10),
        format!("split32-sibling {} bytes", n / 4),
        format!("arm64 {} bytes", n / 4 + 32),
    ] {
        assert!(msg.contains(&needle), "missing `{needle}` in: {msg}");
    }
    let err = detect(&[100, 3], &[0u8; 10], false, None).unwrap_err().to_string();
    assert!(err.contains("row length 100 is not a multiple of 128"), "{err}");
}

#[test]
fn override_errors() {
    let data = pack_i2s_x86(&[0; 256], 1.0).unwrap();
    let err = detect(&[256, 1], &data, false, Some("tl2")).unwrap_err();
    assert!(matches!(err, QuantError::UnknownFlavorName { .. }));
    assert!(err.to_string().contains("BITNET_I2S_FLAVOR"), "{err}");
    let err = detect(&[256, 1], &data, false, Some("bitnet32-f16")).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("needs 80 bytes") && msg.contains("96 bytes"), "{msg}");
    // "auto" and "" mean no override.
    for f in ["auto", "", " AUTO "] {
        let d = detect(&[256, 1], &data, false, Some(f)).unwrap();
        assert!(!d.forced);
    }
    assert!(matches!(detect(&[], &data, false, None), Err(QuantError::BadShape { .. })));
}

// ---------- round trips ----------

/// A flavour, its tensor bytes and its sibling scale bytes.
type Case<'a> = (I2sFlavor, &'a [u8], Option<&'a [u8]>);

fn assert_bits_eq(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.to_bits(), y.to_bits(), "{what}: element {i}: {x} vs {y}");
    }
}

/// The reference quantizer then dequantize gives `scale · sign(w)` (0 below 1e-6).
#[test]
fn x86_reference_quantizer_round_trip() {
    let mut rng = Rng::new(21);
    let (rows, cols) = (4, 384);
    let mut w: Vec<f32> = rng.activations(rows * cols);
    w[5] = 0.0;
    w[6] = 5e-7;
    let data = quantize_i2s_x86(&w).unwrap();
    let m = TernaryMatrix::new("w", I2sFlavor::X86Qk256, &data, rows, cols, None).unwrap();
    let scale = w.iter().fold(0f32, |a, v| a.max(v.abs()));
    assert_eq!(m.tensor_scale(), Some(scale));
    let want: Vec<f32> = w
        .iter()
        .map(|&v| {
            let t = if v.abs() < 1e-6 { 0.0 } else { v.signum() };
            scale * t
        })
        .collect();
    assert_bits_eq(&m.dequantize(), &want, "x86");
    assert!(check_i2s_integrity(&data, rows * cols).is_clean());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// pack → dequantize gives back `scale · t` for every flavour, and every flavour's
    /// matvec equals the float formula computed from the ternary values.
    #[test]
    fn every_flavour_round_trips(rows in 1usize..6, blocks in 1usize..12, seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let t = rng.ternary(rows * blocks * 128);
        let cols = blocks * 128;
        let n = rows * cols;
        let w = 0.001 + rng.unit() as f32;
        let bscales = f16_exact_scales(&mut rng, n / 32);
        let x = rng.activations(cols);
        let mut acts = QuantizedActs::with_kernel(cols, Qk256Kernel::scalar());
        acts.quantize(&x);

        let x86 = pack_i2s_x86(&t, w).unwrap();
        let arm = pack_i2s_arm64(&t, w).unwrap();
        let b32 = pack_bitnet32_f16(&t, &bscales).unwrap();
        let s32 = pack_split32_codes(&t).unwrap();
        let sib32 = pack_split32_scales(&bscales, SiblingScaleType::F32);
        let sib16 = pack_split32_scales(&bscales, SiblingScaleType::F16);
        let cases: [Case<'_>; 5] = [
            (I2sFlavor::X86Qk256, &x86, None),
            (I2sFlavor::Arm64, &arm, None),
            (I2sFlavor::BitNet32F16, &b32, None),
            (I2sFlavor::Split32WithSibling, &s32, Some(&sib32)),
            (I2sFlavor::Split32WithSibling, &s32, Some(&sib16)),
        ];
        for (flavor, data, sib) in cases {
            let m = TernaryMatrix::new("w", flavor, data, rows, cols, sib).unwrap();
            let block_scaled = m.tensor_scale().is_none();
            let scale_of = |i: usize| if block_scaled { bscales[i / 32] } else { w };
            let want: Vec<f32> = (0..n).map(|i| scale_of(i) * f32::from(t[i])).collect();
            let got = m.dequantize();
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                prop_assert_eq!(a.to_bits(), b.to_bits(), "{} element {}", flavor, i);
            }

            let mut y = vec![0f32; rows];
            m.matvec(&acts, &mut y);
            for r in 0..rows {
                let tq = |range: std::ops::Range<usize>| -> i32 {
                    range.map(|i| i32::from(t[r * cols + i]) * i32::from(acts.q()[i])).sum()
                };
                let expected = if block_scaled {
                    let acc = (0..cols / 32).fold(0f32, |acc, k| {
                        acc + bscales[r * cols / 32 + k] * tq(32 * k..32 * k + 32) as f32
                    });
                    acc / acts.scale()
                } else {
                    let cq = tq(0..cols) + acts.sum();
                    (cq as f32 - acts.sum() as f32) / acts.scale() * w
                };
                prop_assert_eq!(y[r].to_bits(), expected.to_bits(), "{} row {}", flavor, r);
            }
        }
    }
}

#[test]
fn matrix_rejects_wrong_sizes() {
    let data = pack_i2s_x86(&[0; 256], 1.0).unwrap();
    let err = TernaryMatrix::new("blk.0.attn_q.weight", I2sFlavor::X86Qk256, &data[..90], 1, 256, None)
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("blk.0.attn_q.weight") && msg.contains("expected 96 bytes, got 90"), "{msg}");
    let err = TernaryMatrix::new("w", I2sFlavor::X86Qk256, &data, 2, 96, None).unwrap_err();
    assert!(matches!(err, QuantError::BadShape { .. }), "{err}");
    let codes = pack_split32_codes(&[0; 64]).unwrap();
    let err = TernaryMatrix::new("w", I2sFlavor::Split32WithSibling, &codes, 1, 64, None).unwrap_err();
    assert!(err.to_string().contains("w.scale"), "{err}");
    let err =
        TernaryMatrix::new("w", I2sFlavor::Split32WithSibling, &codes, 1, 64, Some(&[0; 6])).unwrap_err();
    assert!(err.to_string().contains("8 (f32) or 4 (f16)"), "{err}");
}
