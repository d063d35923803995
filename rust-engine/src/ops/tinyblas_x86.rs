//! AVX2 + FMA + F16C and AVX-512 twins of the tinyBLAS oracles in `tinyblas.rs`: the same
//! lanes, FMAs and `hsum`, so the same bits (`tests/ops_kernels.rs` holds them together). As in
//! `avx2.rs`, `H` is the number of 8-lane registers making one of the reference's vectors: 1
//! mirrors an AVX2 build, 2 an AVX-512 build on a CPU without AVX-512. Each call computes one
//! row against `C` columns at once (independent FMA chains, the row loaded once); the AVX-512
//! one also `R` rows × `C` columns ([`avx512_tile`]), for the lm_head of a batch.

#![allow(unsafe_code)]

use std::arch::x86_64::*;

use super::avx2::{lane_sum16, quad_sum, Avx2Fma};
use super::avx512::{reduce_add, Avx512};
use super::tinyblas::TinyRow;

/// A row's first element, as the loads below read it.
#[derive(Clone, Copy)]
enum RowPtr {
    F16(*const u8),
    F32(*const f32),
}

/// The row's pointer, after checking that it and every column hold `k` elements and that `k`
/// is whole vectors of `kn` lanes.
fn checked<const C: usize>(a: TinyRow<'_>, b: &[&[f32]; C], kn: usize) -> (RowPtr, usize) {
    let k = a.len();
    assert!(k.is_multiple_of(kn), "tinyBLAS takes only rows of a multiple of {kn} values, not {k}");
    for col in b {
        assert_eq!(col.len(), k, "tinyBLAS row and column differ in length");
    }
    let p = match a {
        TinyRow::F16Bytes(x) => RowPtr::F16(x.as_ptr()),
        TinyRow::F16(x) => RowPtr::F16(x.as_ptr() as *const u8),
        TinyRow::F32(x) => RowPtr::F32(x.as_ptr()),
    };
    (p, k)
}

/// Eight row elements from element `i`, as f32.
///
/// # Safety
/// The row must be valid for `i + 8` elements.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load8(a: RowPtr, i: usize) -> __m256 {
    match a {
        // SAFETY: 16 readable bytes at 2i (caller contract); unaligned load.
        RowPtr::F16(p) => _mm256_cvtph_ps(unsafe { _mm_loadu_si128(p.add(2 * i) as *const __m128i) }),
        // SAFETY: 8 readable f32 at i (caller contract); unaligned load.
        RowPtr::F32(p) => unsafe { _mm256_loadu_ps(p.add(i)) },
    }
}

/// # Safety
/// The row and every column must be valid for `k` elements, `k` a multiple of `8·H`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_body<const H: usize, const C: usize>(a: RowPtr, b: [*const f32; C], k: usize) -> [f32; C] {
    let mut acc = [[_mm256_setzero_ps(); H]; C];
    let mut l = 0;
    while l < k {
        for h in 0..H {
            let at = l + 8 * h;
            // SAFETY: at + 8 <= k (k is whole steps of 8H).
            let av = unsafe { load8(a, at) };
            for (acc_c, b_c) in acc.iter_mut().zip(b) {
                // SAFETY: as above, within column c.
                let bv = unsafe { _mm256_loadu_ps(b_c.add(at)) };
                acc_c[h] = _mm256_fmadd_ps(av, bv, acc_c[h]);
            }
        }
        l += 8 * H;
    }
    acc.map(|v| {
        if H == 1 {
            // hsum(__m256): hi + lo, then (t0+t2) + (t1+t3).
            quad_sum(_mm_add_ps(_mm256_extractf128_ps::<1>(v[0]), _mm256_castps256_ps128(v[0])))
        } else {
            lane_sum16(v[0], v[1])
        }
    })
}

/// [`tinyblas::dot_f16_f32`](super::tinyblas::dot_f16_f32) / `dot_f32` of the row `a` with
/// each of the `C` columns `b`, in AVX2 registers (`H` = 1: an AVX2 build; 2: an AVX-512 one).
///
/// # Panics
/// If a length differs or is not whole vectors.
pub(crate) fn avx2<const H: usize, const C: usize>(_t: Avx2Fma, a: TinyRow<'_>, b: [&[f32]; C]) -> [f32; C] {
    let (p, k) = checked(a, &b, 8 * H);
    // SAFETY: the token proves the features; the row and columns hold k elements, whole steps.
    unsafe { avx2_body::<H, C>(p, b.map(<[f32]>::as_ptr), k) }
}

/// # Safety
/// The row and every column must be valid for `k` elements, `k` a multiple of 16.
#[target_feature(enable = "avx512f,avx512dq,avx2,fma,f16c")]
unsafe fn avx512_body<const C: usize>(a: RowPtr, b: [*const f32; C], k: usize) -> [f32; C] {
    let mut acc = [_mm512_setzero_ps(); C];
    let mut l = 0;
    while l < k {
        let av = match a {
            // SAFETY: l + 16 <= k: 32 readable bytes at 2l; unaligned load.
            RowPtr::F16(p) => _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(p.add(2 * l) as *const __m256i) }),
            // SAFETY: as above, 16 f32 at l.
            RowPtr::F32(p) => unsafe { _mm512_loadu_ps(p.add(l)) },
        };
        for (acc_c, b_c) in acc.iter_mut().zip(b) {
            // SAFETY: as above, within column c.
            let bv = unsafe { _mm512_loadu_ps(b_c.add(l)) };
            *acc_c = _mm512_fmadd_ps(av, bv, *acc_c);
        }
        l += 16;
    }
    let mut out = [0f32; C];
    for (o, v) in out.iter_mut().zip(acc) {
        *o = reduce_add(v);
    }
    out
}

/// [`avx2`] for an AVX-512 build, in AVX-512 registers.
///
/// # Panics
/// If a length differs or is not whole vectors.
pub(crate) fn avx512<const C: usize>(_t: Avx512, a: TinyRow<'_>, b: [&[f32]; C]) -> [f32; C] {
    let (p, k) = checked(a, &b, 16);
    // SAFETY: the token proves the features; the row and columns hold k elements, whole steps.
    unsafe { avx512_body::<C>(p, b.map(<[f32]>::as_ptr), k) }
}

/// # Safety
/// Every row (F16 if `F16`, else F32) and column must be valid for `k` elements, `k` a
/// multiple of 16.
#[target_feature(enable = "avx512f,avx512dq,avx2,fma,f16c")]
unsafe fn avx512_tile_body<const F16: bool, const R: usize, const C: usize>(
    a: [*const u8; R],
    b: [*const f32; C],
    k: usize,
) -> [[f32; C]; R] {
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    let mut l = 0;
    while l < k {
        let mut av = [_mm512_setzero_ps(); R];
        for (v, &p) in av.iter_mut().zip(&a) {
            // SAFETY: l + 16 <= k: 16 readable elements at l of the row; unaligned loads.
            *v = unsafe {
                if F16 {
                    _mm512_cvtph_ps(_mm256_loadu_si256(p.add(2 * l) as *const __m256i))
                } else {
                    _mm512_loadu_ps((p as *const f32).add(l))
                }
            };
        }
        for (c, b_c) in b.iter().enumerate() {
            // SAFETY: as above, within column c.
            let bv = unsafe { _mm512_loadu_ps(b_c.add(l)) };
            for r in 0..R {
                acc[r][c] = _mm512_fmadd_ps(av[r], bv, acc[r][c]);
            }
        }
        l += 16;
    }
    let mut out = [[0f32; C]; R];
    for (o_r, acc_r) in out.iter_mut().zip(acc) {
        for (o, v) in o_r.iter_mut().zip(acc_r) {
            *o = reduce_add(v);
        }
    }
    out
}

/// [`avx512`] for `R` rows at once: `out[r][c]` is row `r` with column `c`, each the same FMA
/// chain (lane j over elements j, j + 16, … in order) and `reduce_add` as one row alone, so
/// the same bits. A register tile: per 16 elements, `R + C` loads feed `R·C` FMAs, where one
/// row against `C` columns needs `1 + C` loads for `C` (the loads, not the FMAs, bounded that
/// one: about 40 % of the FMA rate on AMD Zen 4).
///
/// # Panics
/// If a length differs or is not whole vectors.
pub(crate) fn avx512_tile<const R: usize, const C: usize>(
    _t: Avx512,
    a: [TinyRow<'_>; R],
    b: [&[f32]; C],
) -> [[f32; C]; R] {
    let p = a.map(|row| checked(row, &b, 16).0);
    let k = a.first().map_or(0, |row| row.len());
    for row in &a {
        assert_eq!(row.len(), k, "tinyBLAS rows differ in length");
    }
    let cols = b.map(<[f32]>::as_ptr);
    // One loop per element type, so that no row's type is looked at inside it.
    match p {
        ps if ps.iter().all(|p| matches!(p, RowPtr::F16(_))) => {
            let rows = ps.map(|p| match p {
                RowPtr::F16(x) => x,
                RowPtr::F32(x) => x as *const u8,
            });
            // SAFETY: the token proves the features; every row (F16) and column holds k
            // elements (checked), whole steps of 16.
            unsafe { avx512_tile_body::<true, R, C>(rows, cols, k) }
        }
        ps if ps.iter().all(|p| matches!(p, RowPtr::F32(_))) => {
            let rows = ps.map(|p| match p {
                RowPtr::F16(x) => x,
                RowPtr::F32(x) => x as *const u8,
            });
            // SAFETY: as above, every row F32.
            unsafe { avx512_tile_body::<false, R, C>(rows, cols, k) }
        }
        _ => a.map(|row| avx512(_t, row, b)),
    }
}
