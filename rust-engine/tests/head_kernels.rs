//! The head dots (Q8_0, Q4_K, Q6_K, BF16): every SIMD kernel this CPU runs (AVX2, and AVX-512
//! with VNNI and AVX512-BF16 where the CPU has them) equals the scalar oracle bit for bit
//! under every reference-build profile, on arbitrary blocks — any scale, any quant, the −128
//! corners of the sign trick, arbitrary `bsums` — and on BF16 subnormals and every length.

use bitnet_engine::internals::ops::{
    dequantize_row, fp32_to_bf16_row, BlockInput, BlockQ8K, BlockQ8_0, QK_K,
};
use bitnet_engine::ops::{BlockType, FloatKernel};
use bitnet_engine::profile::RefProfile;

/// Every kernel this CPU runs under every profile, the scalar oracle first.
fn kernels() -> Vec<FloatKernel> {
    RefProfile::ALL.into_iter().flat_map(FloatKernel::available).collect()
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

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// Finite f16 bits (subnormals included).
    fn f16(&mut self) -> u16 {
        loop {
            let b = self.next() as u16;
            if b & 0x7c00 != 0x7c00 {
                return b;
            }
        }
    }

    /// An int8 biased to the corners (−128, −127, 0, 127).
    fn i8(&mut self) -> i8 {
        let r = self.next();
        match r % 8 {
            0 => [-128, -127, 0, 127][(r >> 8) as usize % 4],
            _ => (r >> 16) as i8,
        }
    }

    /// Finite bf16 bits: subnormals, zeros, and ordinary values of any binade.
    fn bf16(&mut self) -> u16 {
        let r = self.next();
        match r % 8 {
            0 => (r >> 16) as u16 & 0x807f, // zero or subnormal
            1 => [0x0080, 0x8080, 0x3f80, 0x7f7f][(r >> 8) as usize % 4], // smallest normal, 1, max
            _ => ((r >> 16) as u16 & 0x8000) | (((r >> 24) % 0xfe + 1) as u16) << 7 | (r >> 40) as u16 & 0x7f,
        }
    }
}

/// Weight rows of `ty` with arbitrary content (scales finite).
fn weight_row(rng: &mut Rng, ty: BlockType, n: usize) -> Vec<u8> {
    let mut row = Vec::with_capacity(ty.row_bytes(n));
    for _ in 0..n / ty.block_elems() {
        match ty {
            BlockType::Q8_0 => {
                row.extend(rng.f16().to_le_bytes());
                row.extend((0..32).map(|_| rng.i8() as u8));
            }
            BlockType::Q4_K => {
                row.extend(rng.f16().to_le_bytes());
                row.extend(rng.f16().to_le_bytes());
                row.extend(rng.bytes(12 + 128));
            }
            BlockType::Q6_K => {
                row.extend(rng.bytes(128 + 64 + 16));
                row.extend(rng.f16().to_le_bytes());
            }
            BlockType::BF16 => row.extend(rng.bf16().to_le_bytes()),
        }
    }
    row
}

/// An activation of `ty`'s `vec_dot_type` from values of several binades, with the block
/// extreme negative (quants reach −127).
fn activation(rng: &mut Rng, ty: BlockType, n: usize, profile: RefProfile) -> BlockInput {
    let mut input = BlockInput::with_capacity(n);
    let x: Vec<f32> = (0..n)
        .map(|i| {
            let r = rng.next();
            let v = ((r >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32;
            if i % 7 == 0 {
                -1.0 // the block's extreme, sign negative: quants reach −127
            } else {
                v * 10f32.powi((r % 5) as i32 - 2)
            }
        })
        .collect();
    FloatKernel::scalar(profile).prepare_block_input(ty, &x, &mut input);
    input
}

fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

#[test]
fn block_dots_equal_the_scalar_oracle() {
    let mut rng = Rng(0x005E_ED0F_4EAD);
    let mut compared = 0;
    for ty in BlockType::ALL {
        let lengths: Vec<usize> = match ty {
            BlockType::Q8_0 => vec![32, 64, 160, 2560],
            BlockType::Q4_K | BlockType::Q6_K => vec![256, 512, 2560],
            BlockType::BF16 => (1..=300).step_by(7).chain([511, 512, 513, 2560]).collect(),
        };
        for n in lengths {
            for _ in 0..4 {
                let rows: Vec<Vec<u8>> = (0..3).map(|_| weight_row(&mut rng, ty, n)).collect();
                for profile in RefProfile::ALL {
                    let input = activation(&mut rng, ty, n, profile);
                    let oracle = FloatKernel::scalar(profile);
                    let want: Vec<f32> =
                        rows.iter().map(|r| oracle.dot_block_rows(ty, [r], &input)[0]).collect();
                    for k in kernels().into_iter().filter(|k| k.profile() == profile) {
                        for (r, w) in rows.iter().zip(&want) {
                            let got = k.dot_block_rows(ty, [r], &input)[0];
                            assert!(same(got, *w), "{ty:?} n={n} {profile} {}: {got} vs {w}", k.name());
                        }
                        let three = k.dot_block_rows(ty, [&rows[0], &rows[1], &rows[2]], &input);
                        assert!(
                            three.iter().zip(&want).all(|(a, b)| same(*a, *b)),
                            "{ty:?} n={n} {}",
                            k.name()
                        );
                        compared += 1;
                    }
                }
            }
        }
    }
    eprintln!("{compared} row sets compared");
}

/// Hand-made Q8_K activations: any quants (−128 included) and any `bsums`, which no quantizer
/// writes, still give the same bits on every kernel.
#[test]
fn k_quant_dots_agree_on_arbitrary_activations() {
    let mut rng = Rng(0x00B5_0005);
    for ty in [BlockType::Q4_K, BlockType::Q6_K] {
        for _ in 0..20 {
            let n = 2 * QK_K;
            let row = weight_row(&mut rng, ty, n);
            let mut input = BlockInput::with_capacity(n);
            let blocks: Vec<BlockQ8K> = (0..n / QK_K)
                .map(|_| BlockQ8K {
                    d: f32::from_bits(0x3c00_0000 | (rng.next() as u32 & 0x00ff_ffff)),
                    qs: std::array::from_fn(|_| rng.i8()),
                    bsums: std::array::from_fn(|_| rng.next() as i16),
                })
                .collect();
            input.set_q8_k(ty, &blocks);
            let want = FloatKernel::scalar(RefProfile::Avx2).dot_block_rows(ty, [&row], &input)[0];
            for k in kernels() {
                let got = k.dot_block_rows(ty, [&row], &input)[0];
                assert!(same(got, want), "{ty:?} {} {}: {got} vs {want}", k.profile(), k.name());
            }
        }
    }
}

#[test]
fn q8_0_sign_trick_corners_agree() {
    // Weights −128 against activations −128, 127, 0: the wrapping negation of −128 in
    // `sign(y, x)` is part of the reference's integer sum.
    let mut rng = Rng(0x00C0_12E5);
    for _ in 0..50 {
        let n = 64;
        let row = weight_row(&mut rng, BlockType::Q8_0, n);
        let mut input = BlockInput::with_capacity(n);
        let blocks: Vec<BlockQ8_0> =
            (0..n / 32).map(|_| BlockQ8_0 { d: rng.f16(), qs: std::array::from_fn(|_| rng.i8()) }).collect();
        input.set_q8_0(&blocks);
        let want = FloatKernel::scalar(RefProfile::Avx2).dot_block_rows(BlockType::Q8_0, [&row], &input)[0];
        for k in kernels() {
            let got = k.dot_block_rows(BlockType::Q8_0, [&row], &input)[0];
            assert!(same(got, want), "{} {}: {got} vs {want}", k.profile(), k.name());
        }
    }
}

#[test]
fn bf16_activation_conversion_differs_only_on_subnormals() {
    let x = [1.0f32, f32::from_bits(0x0001_8000), -f32::from_bits(0x0040_0000), 3.0e38, -0.0];
    let x: Vec<f32> = x.iter().cycle().take(40).copied().collect();
    let (mut a, mut b) = (vec![0u16; 40], vec![0u16; 40]);
    fp32_to_bf16_row(RefProfile::Avx2, &x, &mut a);
    fp32_to_bf16_row(RefProfile::Avx512, &x, &mut b);
    for i in 0..40 {
        if i < 32 && x[i].is_subnormal() {
            assert_eq!(b[i], if x[i] < 0.0 { 0x8000 } else { 0 }, "{i}");
            assert_ne!(a[i], b[i], "{i}");
        } else {
            assert_eq!(a[i], b[i], "{i}");
        }
    }
    // The embedding lookup of BF16 is the exact widening.
    let bytes: Vec<u8> = a.iter().flat_map(|h| h.to_le_bytes()).collect();
    let mut back = vec![0f32; 40];
    dequantize_row(BlockType::BF16, &bytes, &mut back);
    assert_eq!(back[0], 1.0);
}

/// Products below the smallest normal: `VDPBF16PS` flushes each step's result to zero (the
/// AVX512BF16 build), the AVX2 build's FMAs keep the subnormals. Every kernel agrees, the
/// AVX-512 kernel with the instruction itself where the CPU has it.
#[test]
fn bf16_dot_flushes_subnormal_steps_like_vdpbf16ps() {
    let n = 128;
    let row: Vec<u8> = (0..n).flat_map(|_| 0x0080u16.to_le_bytes()).collect(); // 2^-126
    let x = vec![0.5f32; n];
    for profile in RefProfile::ALL {
        let mut input = BlockInput::with_capacity(n);
        FloatKernel::scalar(profile).prepare_block_input(BlockType::BF16, &x, &mut input);
        let want = match profile {
            RefProfile::Avx512 => 0.0,
            RefProfile::Avx2 => f32::MIN_POSITIVE * 0.5 * n as f32,
        };
        for k in kernels().into_iter().filter(|k| k.profile() == profile) {
            let got = k.dot_block_rows(BlockType::BF16, [&row], &input)[0];
            assert_eq!(got, want, "{profile} {}", k.name());
        }
    }
}
