//! Helpers shared by the `quant_*` integration tests.
#![allow(dead_code)]

/// A small deterministic generator (xorshift64*), so failures reproduce.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }

    pub fn i8s(&mut self, n: usize) -> Vec<i8> {
        (0..n).map(|_| self.next_u64() as i8).collect()
    }

    pub fn ternary(&mut self, n: usize) -> Vec<i8> {
        (0..n).map(|_| (self.next_u64() % 3) as i8 - 1).collect()
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Roughly normal values times a magnitude spanning 10^-4 .. 10^4.
    pub fn activations(&mut self, n: usize) -> Vec<f32> {
        let mag = 10f64.powf(-4.0 + 8.0 * self.unit());
        (0..n)
            .map(|_| {
                let g: f64 = (0..4).map(|_| self.unit()).sum::<f64>() - 2.0;
                (g * mag) as f32
            })
            .collect()
    }
}

/// An x86 I2_S tensor of `rows × cols` with arbitrary code bytes (including the invalid
/// code 3) and the given scale.
pub fn random_x86_tensor(rng: &mut Rng, rows: usize, cols: usize, scale: f32) -> Vec<u8> {
    let mut data = rng.bytes(rows * cols / 4);
    data.extend_from_slice(&scale.to_le_bytes());
    data.resize(rows * cols / 4 + 32, 0);
    data
}
