//! The QK256 kernels both VNNI instruction sets run, written once: `vpdpbusd` on 256-bit
//! vectors is the same operation in its AVX-512 VL form (EVEX, 32 registers) and its AVX-VNNI
//! form (VEX, 16 registers, Intel client CPUs), so [`vnni256_kernels!`] compiles one source
//! for each, given the target features and the intrinsic:
//!
//! - `tile_kernel` (batched products, `R` rows × `C` columns of accumulators);
//! - `rows2_kernel` and `stretches2_kernel` (GEMV with two accumulators per row, what fits
//!   16 registers; the AVX-512 kernel has its own four-accumulator rows kernel, see
//!   `avx512vnni.rs`);
//! - the helpers `hsum4_i32`, `load_128_i8`, `hsum_i32`.
//!
//! Instantiated in `avx512vnni.rs` and `avxvnni.rs`. The AVX-512 instance of every kernel is
//! held to the scalar oracle on any AVX-512 VNNI CPU (the AVX-VNNI one, where it runs, by the
//! same tests), so the source the AVX-VNNI kernel compiles is tested even on a CPU without
//! AVX-VNNI. The items use `_mm256_*` intrinsics, `__m256i` and `PREFETCH_BYTES` from the
//! invoking module's scope.

/// Chunks accumulated in i32 lanes before they are folded into the totals: a lane gains at
/// most 4·192·128 = 98304 in magnitude per chunk (the AVX-512 rows kernel's 64·c0 plane; the
/// other kernels' lanes less), and 4096 · 98304 ≈ 4.0·10⁸ < 2³¹, so no lane (nor the sum of
/// two) overflows within a group. Beyond it the totals wrap, like the scalar oracle's.
pub(crate) const GROUP_CHUNKS: usize = 4096;

/// Defines the shared kernels (see the module docs) in the invoking module, compiled with
/// `$features` and `vpdpbusd` as `$dpbusd`.
macro_rules! vnni256_kernels {
    ($features:literal, $dpbusd:ident) => {
        /// `R` rows × one column with two accumulators per row, for 16 registers (AVX-VNNI): the
        /// codes extracted as the AVX2 kernel does (`w >> 4` once, then `& 12` gives 4·c0 and 4·c2,
        /// `& 3` gives c1 and c3), the 4× planes into one accumulator and the others into another,
        /// joined (an exact shift: every 4× lane is a multiple of 4) when a group ends. Ten
        /// operations per chunk and row, and 4·2 + 4 + 2 registers for four rows.
        ///
        /// # Safety
        /// `$features` must be available; each `w[r]` must be valid for `32 · chunks` bytes and `q`
        /// for `128 · chunks` bytes.
        // The AVX-512 instance runs only in the tests (`avx512vnni.rs`), as a twin of AVX-VNNI's.
        #[allow(dead_code)]
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn rows2_kernel<const R: usize>(w: [*const u8; R], q: *const i8, chunks: usize) -> [i32; R] {
            let m3 = _mm256_set1_epi8(3);
            let m12 = _mm256_set1_epi8(12);
            let mut sums = [0i32; R];
            let mut start = 0;
            while start < chunks {
                let end = (start + $crate::quant::vnni256::GROUP_CHUNKS).min(chunks);
                let mut acc1 = [_mm256_setzero_si256(); R];
                let mut acc4 = [_mm256_setzero_si256(); R];
                for ch in start..end {
                    // SAFETY: ch < chunks: the chunk's 128 activations at 128·ch are in bounds (caller
                    // contract).
                    let a = unsafe { load_128_i8(q.add(128 * ch)) };
                    for r in 0..R {
                        // SAFETY: the 32 weight bytes at 32·ch of row r are in bounds (caller contract).
                        let wv = unsafe { _mm256_loadu_si256(w[r].add(32 * ch) as *const __m256i) };
                        _mm_prefetch::<_MM_HINT_T0>(w[r].wrapping_add(32 * ch + PREFETCH_BYTES) as *const i8);
                        let hi = _mm256_srli_epi16::<4>(wv);
                        acc4[r] = $dpbusd(acc4[r], _mm256_and_si256(hi, m12), a[0]);
                        acc1[r] = $dpbusd(acc1[r], _mm256_and_si256(hi, m3), a[1]);
                        acc4[r] = $dpbusd(acc4[r], _mm256_and_si256(wv, m12), a[2]);
                        acc1[r] = $dpbusd(acc1[r], _mm256_and_si256(wv, m3), a[3]);
                    }
                }
                for r in 0..R {
                    let x = _mm256_add_epi32(_mm256_srai_epi32::<2>(acc4[r]), acc1[r]);
                    sums[r] = sums[r].wrapping_add(hsum_i32(x));
                }
                start = end;
            }
            sums
        }

        /// [`rows2_kernel`] over `rows` rows of each of `R` stretches, row by row.
        ///
        /// # Safety
        /// `$features` must be available; each `w[k]` must be valid for `rows · 32 · chunks` bytes and
        /// `q` for `128 · chunks` bytes.
        // The AVX-512 instance runs only in the tests (`avx512vnni.rs`), as a twin of AVX-VNNI's.
        #[allow(dead_code)]
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn stretches2_kernel<const R: usize>(
            mut w: [*const u8; R],
            rows: usize,
            q: *const i8,
            chunks: usize,
            emit: &mut impl FnMut(usize, [i32; R]),
        ) {
            for i in 0..rows {
                // SAFETY: row i of every stretch, 32·chunks bytes at w[k], and the chunks of q are in
                // bounds (caller contract).
                emit(i, unsafe { rows2_kernel::<R>(w, q, chunks) });
                for p in &mut w {
                    *p = p.wrapping_add(32 * chunks);
                }
            }
        }

        /// `R` rows × `C` columns, a register tile: per chunk, the `R` weight loads and the code
        /// extraction are shared by the `C` columns and each activation load by the `R` rows, so the
        /// loop is bound by `vpdpbusd` rather than by loads. Codes are extracted plainly (three
        /// shifts, four masks), one accumulator per row and column.
        ///
        /// # Safety
        /// `$features` must be available; each `w[r]` must be valid for `32 · chunks` bytes and
        /// each `q[c]` for `128 · chunks` bytes.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn tile_kernel<const R: usize, const C: usize>(
            w: [*const u8; R],
            q: [*const i8; C],
            chunks: usize,
        ) -> [[i32; C]; R] {
            let m3 = _mm256_set1_epi8(3);
            let mut sums = [[0i32; C]; R];
            let mut start = 0;
            while start < chunks {
                let end = (start + $crate::quant::vnni256::GROUP_CHUNKS).min(chunks);
                let mut acc = [[_mm256_setzero_si256(); C]; R];
                for ch in start..end {
                    // SAFETY: the 32 weight bytes at 32·ch of every row are in bounds (caller contract).
                    let wv: [__m256i; R] = std::array::from_fn(|r| unsafe {
                        _mm256_loadu_si256(w[r].add(32 * ch) as *const __m256i)
                    });
                    for k in 0..4 {
                        // SAFETY: ch < chunks and k < 4: the 32 activations at 128·ch + 32·k of every
                        // column are in bounds (caller contract).
                        let a: [__m256i; C] = std::array::from_fn(|c| unsafe {
                            _mm256_loadu_si256(q[c].add(128 * ch + 32 * k) as *const __m256i)
                        });
                        for r in 0..R {
                            let codes = match k {
                                0 => _mm256_and_si256(_mm256_srli_epi16::<6>(wv[r]), m3),
                                1 => _mm256_and_si256(_mm256_srli_epi16::<4>(wv[r]), m3),
                                2 => _mm256_and_si256(_mm256_srli_epi16::<2>(wv[r]), m3),
                                _ => _mm256_and_si256(wv[r], m3),
                            };
                            for c in 0..C {
                                acc[r][c] = $dpbusd(acc[r][c], codes, a[c]);
                            }
                        }
                    }
                }
                for r in 0..R {
                    let mut c = 0;
                    while c + 4 <= C {
                        let s4 = hsum4_i32([acc[r][c], acc[r][c + 1], acc[r][c + 2], acc[r][c + 3]]);
                        for (k, s) in s4.into_iter().enumerate() {
                            sums[r][c + k] = sums[r][c + k].wrapping_add(s);
                        }
                        c += 4;
                    }
                    for c in c..C {
                        sums[r][c] = sums[r][c].wrapping_add(hsum_i32(acc[r][c]));
                    }
                }
                start = end;
            }
            sums
        }

        /// The sums of the eight i32 lanes of each of four vectors (wrapping), with three horizontal
        /// adds for all four instead of three shuffles and adds for each: the same integers (wrapping
        /// addition is associative and commutative).
        #[inline]
        #[target_feature(enable = $features)]
        fn hsum4_i32(v: [__m256i; 4]) -> [i32; 4] {
            // [a0+a1, a2+a3, b0+b1, b2+b3 | a4+a5, a6+a7, b4+b5, b6+b7], the same for c and d.
            let ab = _mm256_hadd_epi32(v[0], v[1]);
            let cd = _mm256_hadd_epi32(v[2], v[3]);
            // [a0..3, b0..3, c0..3, d0..3 | a4..7, b4..7, c4..7, d4..7]
            let abcd = _mm256_hadd_epi32(ab, cd);
            let s = _mm_add_epi32(_mm256_castsi256_si128(abcd), _mm256_extracti128_si256::<1>(abcd));
            [
                _mm_cvtsi128_si32(s),
                _mm_extract_epi32::<1>(s),
                _mm_extract_epi32::<2>(s),
                _mm_extract_epi32::<3>(s),
            ]
        }

        /// Four unaligned 32-byte loads: one chunk's 128 activations.
        ///
        /// # Safety
        /// `p` must be valid for 128 bytes.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn load_128_i8(p: *const i8) -> [__m256i; 4] {
            let p = p as *const __m256i;
            // SAFETY: 4 × 32 = 128 bytes at p (caller contract); unaligned loads.
            unsafe {
                [
                    _mm256_loadu_si256(p),
                    _mm256_loadu_si256(p.add(1)),
                    _mm256_loadu_si256(p.add(2)),
                    _mm256_loadu_si256(p.add(3)),
                ]
            }
        }

        /// The sum of the eight i32 lanes (wrapping).
        #[inline]
        #[target_feature(enable = $features)]
        fn hsum_i32(v: __m256i) -> i32 {
            let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
            _mm_cvtsi128_si32(s)
        }
    };
}

pub(crate) use vnni256_kernels;
