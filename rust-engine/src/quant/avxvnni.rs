//! AVX-VNNI kernels: the QK256 integer dot product with the 256-bit VEX `vpdpbusd` of Intel
//! client CPUs (Alder Lake and later), which have no AVX-512.
//!
//! The same operation as the AVX-512 VNNI kernels' (`avx512vnni.rs`), with 16 registers
//! instead of 32: the tile kernel and the GEMV's two-accumulator rows kernel are the shared
//! source of `vnni256.rs`, compiled here for `avx2,avxvnni`. Both must equal
//! [`scalar::grouped_dot`](super::scalar::grouped_dot) bit for bit: `tests/quant_kernels.rs`
//! holds every kernel the CPU runs to it, and `avx512vnni.rs` holds the AVX-512 instance of
//! this very source to it on CPUs without AVX-VNNI. Activation quantization is the AVX2 one.
//!
//! Speed: not measured yet (no AVX-VNNI CPU has run the bench). Ten operations per chunk and
//! row against the AVX2 kernel's fourteen, and no int16 stage to widen.

#![allow(unsafe_code)]

use std::arch::x86_64::*;

use super::avx2::{Avx2Token, PREFETCH_BYTES};
use super::vnni256::vnni256_kernels;

vnni256_kernels!("avx2,avxvnni", _mm256_dpbusd_avx_epi32);

/// Proof that this CPU has AVX-VNNI, AVX2 and FMA: only [`detect`](Self::detect) creates one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AvxVnniToken(Avx2Token);

impl AvxVnniToken {
    pub(crate) fn detect() -> Option<Self> {
        let avx2 = Avx2Token::detect()?;
        is_x86_feature_detected!("avxvnni").then_some(AvxVnniToken(avx2))
    }

    /// The AVX2 proof this token carries (activation quantization uses the AVX2 kernel).
    pub(crate) fn avx2(self) -> Avx2Token {
        self.0
    }
}

/// `Σ c·q` (codes 0..3 as stored) for `R` weight rows against one activation row `q`.
///
/// # Panics
/// If a row's byte length times 4 differs from `q.len()`, or `q.len()` is not a multiple of 128.
#[inline]
pub(crate) fn qk256_dots<const R: usize>(_t: AvxVnniToken, rows: [&[u8]; R], q: &[i8]) -> [i32; R] {
    let chunks = super::layout::qk256_row_chunks(&rows, q);
    // SAFETY: the token proves AVX2 and AVX-VNNI are available; every row holds `q.len() / 4`
    // bytes and `q` holds `128 · (q.len() / 128)` values, which is all the kernel reads.
    unsafe { rows2_kernel::<R>(rows.map(|r| r.as_ptr()), q.as_ptr(), chunks) }
}

/// `emit(i, sums)` for every row `i` of `R` stretches of whole rows, as
/// [`avx512vnni::qk256_dots_stretches`](super::avx512vnni::qk256_dots_stretches) gives them.
///
/// # Panics
/// As [`qk256_stretch_rows`](super::layout::qk256_stretch_rows).
#[inline]
pub(crate) fn qk256_dots_stretches<const R: usize>(
    _t: AvxVnniToken,
    stretches: [&[u8]; R],
    q: &[i8],
    mut emit: impl FnMut(usize, [i32; R]),
) {
    let rows = super::layout::qk256_stretch_rows(&stretches, q);
    // SAFETY: the token proves AVX2 and AVX-VNNI are available; every stretch holds `rows` rows
    // of `q.len() / 4` bytes and `q` holds `128 · (q.len() / 128)` values, which is all the
    // kernel reads.
    unsafe {
        stretches2_kernel::<R>(stretches.map(|s| s.as_ptr()), rows, q.as_ptr(), q.len() / 128, &mut emit)
    }
}

/// `Σ c·q` of `R` weight rows against `C` activation rows (columns): `out[r][c]`.
///
/// # Panics
/// If a row's byte length times 4 differs from a column's length, or that length is not a
/// multiple of 128.
#[inline]
pub(crate) fn qk256_dots_tile<const R: usize, const C: usize>(
    _t: AvxVnniToken,
    rows: [&[u8]; R],
    qs: [&[i8]; C],
) -> [[i32; C]; R] {
    let chunks = super::layout::qk256_tile_chunks(&rows, &qs);
    // SAFETY: the token proves AVX2 and AVX-VNNI are available; every row holds `n / 4` bytes
    // and every column `n` values, n = 128 · chunks, which is all the kernel reads.
    unsafe { tile_kernel::<R, C>(rows.map(|r| r.as_ptr()), qs.map(|q| q.as_ptr()), chunks) }
}
