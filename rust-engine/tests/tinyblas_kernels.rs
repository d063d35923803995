//! llamafile's tinyBLAS (the batched path's float products, `ops/tinyblas.rs`): every float
//! kernel this CPU runs equals the scalar oracle bit for bit, under both profiles, for F16
//! (bytes and bits) and F32 rows, one and eight columns at a time and in tiles of four rows,
//! on values of wide range (cancellations, subnormal products, large magnitudes).

use bitnet_engine::ops::tinyblas::{self, TinyRow};
use bitnet_engine::ops::FloatKernel;
use bitnet_engine::profile::RefProfile;
use half::f16;

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value of varied magnitude and sign: mostly ±[0, 4), sometimes tiny or large.
    fn value(&mut self) -> f32 {
        let u = (self.next() >> 40) as f32 / (1u64 << 24) as f32;
        let s = if self.next() & 1 == 0 { 1.0 } else { -1.0 };
        match self.next() % 16 {
            0 => s * u * 1e-6,
            1 => s * u * 3e4,
            2 => 0.0,
            _ => s * u * 4.0,
        }
    }
}

#[test]
fn every_kernel_equals_the_scalar_oracle() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for profile in RefProfile::ALL {
        let kn = tinyblas::lanes(profile);
        for k in [kn, 2 * kn, 32, 96, 256, 384, 2560] {
            if !k.is_multiple_of(kn) {
                continue;
            }
            for _ in 0..20 {
                let a32: Vec<f32> = (0..k).map(|_| rng.value()).collect();
                let a16: Vec<u16> = a32.iter().map(|&v| f16::from_f32(v).to_bits()).collect();
                let a16b: Vec<u8> = a16.iter().flat_map(|h| h.to_le_bytes()).collect();
                let cols: Vec<Vec<f32>> = (0..8).map(|_| (0..k).map(|_| rng.value()).collect()).collect();
                let b: [&[f32]; 8] = std::array::from_fn(|i| &cols[i][..]);
                for row in [TinyRow::F16Bytes(&a16b), TinyRow::F16(&a16), TinyRow::F32(&a32)] {
                    let want: Vec<u32> = b.iter().map(|c| tinyblas::dot(profile, row, c).to_bits()).collect();
                    for kernel in FloatKernel::available(profile) {
                        let eight = kernel.tinyblas(row, b).map(f32::to_bits);
                        assert_eq!(eight.to_vec(), want, "{profile} {} k {k} {row:?}", kernel.name());
                        for (c, w) in b.iter().zip(&want) {
                            assert_eq!(
                                kernel.tinyblas(row, [c])[0].to_bits(),
                                *w,
                                "{profile} {}",
                                kernel.name()
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn row_tiles_equal_the_scalar_oracle() {
    let mut rng = Rng(0x51_7cc1_b727_220a);
    for profile in RefProfile::ALL {
        let kn = tinyblas::lanes(profile);
        for k in [kn, 3 * kn, 2560] {
            let rows32: Vec<Vec<f32>> = (0..4).map(|_| (0..k).map(|_| rng.value()).collect()).collect();
            let rows16: Vec<Vec<u8>> = rows32
                .iter()
                .map(|r| r.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect())
                .collect();
            let cols: Vec<Vec<f32>> = (0..4).map(|_| (0..k).map(|_| rng.value()).collect()).collect();
            let b: [&[f32]; 4] = std::array::from_fn(|i| &cols[i][..]);
            let f16_rows: [TinyRow<'_>; 4] = std::array::from_fn(|r| TinyRow::F16Bytes(&rows16[r]));
            let f32_rows: [TinyRow<'_>; 4] = std::array::from_fn(|r| TinyRow::F32(&rows32[r]));
            // The same types in a tile, and a tile of mixed types.
            let mixed = [f16_rows[0], f32_rows[1], f16_rows[2], f32_rows[3]];
            for a in [f16_rows, f32_rows, mixed] {
                let want: Vec<Vec<u32>> = a
                    .iter()
                    .map(|&row| b.iter().map(|c| tinyblas::dot(profile, row, c).to_bits()).collect())
                    .collect();
                for kernel in FloatKernel::available(profile) {
                    let got: Vec<Vec<u32>> =
                        kernel.tinyblas_tile(a, b).iter().map(|r| r.map(f32::to_bits).to_vec()).collect();
                    assert_eq!(got, want, "{profile} {} k {k}", kernel.name());
                    let one: Vec<u32> =
                        kernel.tinyblas_tile(a, [b[2]]).iter().map(|[v]| v.to_bits()).collect();
                    let want_one: Vec<u32> = want.iter().map(|r| r[2]).collect();
                    assert_eq!(one, want_one, "{profile} {} k {k}, one column", kernel.name());
                }
            }
        }
    }
}

#[test]
fn the_f16_forms_agree() {
    // Bytes and bits of the same F16 row are the same row.
    let a: Vec<u16> = (0..64).map(|i| f16::from_f32(i as f32 * 0.37 - 9.0).to_bits()).collect();
    let bytes: Vec<u8> = a.iter().flat_map(|h| h.to_le_bytes()).collect();
    let b: Vec<f32> = (0..64).map(|i| (i as f32).sin()).collect();
    for p in RefProfile::ALL {
        assert_eq!(
            tinyblas::dot_f16_f32(p, &a, &b).to_bits(),
            tinyblas::dot_f16_bytes_f32(p, &bytes, &b).to_bits()
        );
    }
}

#[test]
fn the_profiles_put_elements_in_other_lanes() {
    // Elements 0, 8 and 16 share lane 0 of an AVX2 build (1e8 + 1 loses the 1, then
    // - 1e8 gives 0); an AVX-512 build has element 8 alone in lane 8 and keeps it.
    let mut a = vec![0f32; 32];
    a[0] = 1e8;
    a[8] = 1.0;
    a[16] = -1e8;
    let b = vec![1f32; 32];
    assert_eq!(tinyblas::dot_f32(RefProfile::Avx2, &a, &b), 0.0);
    assert_eq!(tinyblas::dot_f32(RefProfile::Avx512, &a, &b), 1.0);
}
