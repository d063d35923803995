//! Run-time choice of the float kernels, and the reference-build profile they mirror.
//!
//! The kernel (the scalar emulation of ggml's lanes, which is the oracle; its AVX2 + FMA +
//! F16C twin; or its AVX-512 twin) and the profile (which build of the reference to mirror,
//! see [`crate::profile`]) are separate choices: every kernel computes every profile, with
//! identical bits; only speed differs.

use super::blocks::{self, BlockQ8K, BlockQ8_0, BlockType, QK8_0, QK_K};
use super::tinyblas::{self, TinyRow};
#[cfg(target_arch = "x86_64")]
use super::{avx2, avx512, qdot_avx2, qdot_avx512, tinyblas_x86};
use super::{dot, qdot, softmax};
use crate::profile::RefProfile;

/// A float-kernel implementation with the profile it mirrors. Only constructible for kernels
/// this CPU can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FloatKernel {
    imp: Imp,
    profile: RefProfile,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Imp {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2(avx2::Avx2Fma),
    #[cfg(target_arch = "x86_64")]
    Avx512(avx512::Avx512),
}

/// The code that computes a profile-dependent operation: the kernel and the profile together.
#[derive(Clone, Copy)]
enum Path {
    Scalar(RefProfile),
    /// AVX2 registers, one per vector of an AVX2 build.
    #[cfg(target_arch = "x86_64")]
    Avx2x1(avx2::Avx2Fma),
    /// AVX2 registers, two per vector of an AVX-512 build.
    #[cfg(target_arch = "x86_64")]
    Avx2x2(avx2::Avx2Fma),
    /// AVX-512 registers for an AVX-512 build.
    #[cfg(target_arch = "x86_64")]
    Avx512(avx512::Avx512),
}

impl FloatKernel {
    /// The scalar emulation (plain loops over ggml's lane structure).
    pub fn scalar(profile: RefProfile) -> Self {
        FloatKernel { imp: Imp::Scalar, profile }
    }

    /// The AVX2 kernels, if this CPU has AVX2, FMA and F16C.
    pub fn avx2(profile: RefProfile) -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            avx2::Avx2Fma::detect().map(|t| FloatKernel { imp: Imp::Avx2(t), profile })
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = profile;
            None
        }
    }

    /// The AVX-512 kernels, if this CPU has AVX-512F and DQ (besides AVX2, FMA and F16C).
    /// For the AVX2 profile they run the AVX2 code (the reference's vectors are 256 bits).
    pub fn avx512(profile: RefProfile) -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            avx512::Avx512::detect().map(|t| FloatKernel { imp: Imp::Avx512(t), profile })
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = profile;
            None
        }
    }

    /// Every kernel this CPU runs, scalar first.
    pub fn available(profile: RefProfile) -> Vec<Self> {
        [Some(Self::scalar(profile)), Self::avx2(profile), Self::avx512(profile)]
            .into_iter()
            .flatten()
            .collect()
    }

    /// The fastest kernel this CPU runs.
    pub fn best(profile: RefProfile) -> Self {
        Self::avx512(profile).or_else(|| Self::avx2(profile)).unwrap_or_else(|| Self::scalar(profile))
    }

    /// The float kernel that goes with a QK256 kernel choice: scalar with scalar (so
    /// `BITNET_QK256_IMPL=scalar` runs the whole engine on the oracles), else the best.
    pub(crate) fn matching(qk256: crate::quant::Qk256Kernel, profile: RefProfile) -> Self {
        if qk256 == crate::quant::Qk256Kernel::scalar() {
            Self::scalar(profile)
        } else {
            Self::best(profile)
        }
    }

    /// `"scalar"`, `"avx2"` or `"avx512"`: the kernel that computes.
    pub fn name(self) -> &'static str {
        match self.imp {
            Imp::Scalar => "scalar",
            #[cfg(target_arch = "x86_64")]
            Imp::Avx2(_) => "avx2",
            #[cfg(target_arch = "x86_64")]
            Imp::Avx512(_) => "avx512",
        }
    }

    /// The reference build whose numerics this kernel mirrors.
    pub fn profile(self) -> RefProfile {
        self.profile
    }

    /// This kernel with another profile.
    pub fn with_profile(self, profile: RefProfile) -> Self {
        FloatKernel { profile, ..self }
    }

    #[inline]
    fn path(self) -> Path {
        match self.imp {
            Imp::Scalar => Path::Scalar(self.profile),
            #[cfg(target_arch = "x86_64")]
            Imp::Avx2(t) => Self::avx2_path(t, self.profile),
            #[cfg(target_arch = "x86_64")]
            Imp::Avx512(t) => match self.profile {
                RefProfile::Avx512 => Path::Avx512(t),
                RefProfile::Avx2 => Self::avx2_path(t.avx2, self.profile),
            },
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    fn avx2_path(t: avx2::Avx2Fma, profile: RefProfile) -> Path {
        match profile {
            RefProfile::Avx2 => Path::Avx2x1(t),
            RefProfile::Avx512 => Path::Avx2x2(t),
        }
    }

    /// The AVX2 token of an AVX2 or AVX-512 kernel, for the operations that do not depend
    /// on the profile (f16 conversions).
    #[cfg(target_arch = "x86_64")]
    #[inline]
    fn avx2_token(self) -> Option<avx2::Avx2Fma> {
        match self.imp {
            Imp::Scalar => None,
            Imp::Avx2(t) => Some(t),
            Imp::Avx512(t) => Some(t.avx2),
        }
    }

    /// [`dot::dot_f16`].
    #[inline]
    pub fn dot_f16(self, x: &[u16], y: &[u16]) -> f32 {
        match self.path() {
            Path::Scalar(p) => dot::dot_f16(p, x, y),
            #[cfg(target_arch = "x86_64")]
            Path::Avx2x1(t) => avx2::dot_f16::<1>(t, x, y),
            #[cfg(target_arch = "x86_64")]
            Path::Avx2x2(t) => avx2::dot_f16::<2>(t, x, y),
            #[cfg(target_arch = "x86_64")]
            Path::Avx512(t) => avx512::dot_f16(t, x, y),
        }
    }

    /// [`dot::dot_f16_f32`] of each row of the f16 matrix `m` against `y`: `out[i]` is the
    /// dot of `m[i·stride..i·stride + y.len()]` with `y`, the bits of one
    /// [`dot_f16_f32`](Self::dot_f16_f32) per row. With `y` rounded through f16 these are
    /// the bits of `dot_f16` (attention's `K·q` and `V·p`), converting `y` only once.
    ///
    /// # Panics
    /// If a row reaches past the end of `m`.
    pub fn dot_f16_strided(self, m: &[u16], stride: usize, y: &[f32], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if let Path::Avx512(t) = self.path() {
            return avx512::dot_f16_strided(t, m, stride, y, out);
        }
        let n = y.len();
        if let Some(last) = out.len().checked_sub(1) {
            assert!(last * stride + n <= m.len(), "an f16 row reaches past the matrix");
        }
        for (i, o) in out.iter_mut().enumerate() {
            *o = self.dot_f16_f32(&m[i * stride..i * stride + n], y);
        }
    }

    /// Columns `cols` of the row-major `src` (`rows × n`, from its front) as the rows of
    /// `dst`: `dst[(c − cols.start)·rows + r] = src[r·n + c]` with `rows = dst.len() /
    /// cols.len()` (a batch's products, row-major, to token-major). Only moves values.
    ///
    /// # Panics
    /// If `dst` is not whole rows, `cols` exceeds `n` or `src` holds fewer than `rows · n` values.
    pub fn transpose_cols(self, src: &[f32], n: usize, cols: std::ops::Range<usize>, dst: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if let Some(t) = self.avx2_token() {
            return avx2::transpose_cols(t, src, n, cols, dst);
        }
        let w = cols.len();
        if w == 0 {
            return;
        }
        let rows = dst.len() / w;
        assert!(dst.len() == rows * w && cols.end <= n && src.len() >= rows * n, "transpose shapes");
        for (d, c) in dst.chunks_exact_mut(rows.max(1)).zip(cols) {
            for (r, v) in d.iter_mut().enumerate() {
                *v = src[r * n + c];
            }
        }
    }

    /// [`super::rms_norm`] of each row of `x` (rows of `weight.len()` values) into the same
    /// row of `out`, the same bits; eight rows' sums of squares at once where the CPU allows.
    ///
    /// # Panics
    /// If `x` and `out` differ in length or are not whole rows.
    pub fn rms_norm_rows(self, x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
        let d = weight.len();
        assert!(x.len() == out.len() && d > 0 && x.len().is_multiple_of(d), "rows of rms_norm");
        let (mut xs, mut os) = (x.chunks_exact(d), out.chunks_exact_mut(d));
        #[cfg(target_arch = "x86_64")]
        if let Some(t) = self.avx2_token() {
            while xs.len() >= 8 {
                let rows: [&[f32]; 8] = std::array::from_fn(|_| xs.next().expect("eight rows left"));
                for (r, s) in rows.into_iter().zip(avx2::sum_squares8(t, rows)) {
                    super::rms_norm_with_sum(r, s, weight, eps, os.next().expect("as many rows out"));
                }
            }
        }
        for (r, o) in xs.zip(os) {
            super::rms_norm(r, weight, eps, o);
        }
    }

    /// [`dot::dot_f32`].
    #[inline]
    pub fn dot_f32(self, x: &[f32], y: &[f32]) -> f32 {
        match self.path() {
            Path::Scalar(p) => dot::dot_f32(p, x, y),
            #[cfg(target_arch = "x86_64")]
            Path::Avx2x1(t) => avx2::dot_f32::<1>(t, x, y),
            #[cfg(target_arch = "x86_64")]
            Path::Avx2x2(t) => avx2::dot_f32::<2>(t, x, y),
            #[cfg(target_arch = "x86_64")]
            Path::Avx512(t) => avx512::dot_f32(t, x, y),
        }
    }

    /// [`dot::dot_f16_f32`].
    #[inline]
    pub fn dot_f16_f32(self, x: &[u16], y: &[f32]) -> f32 {
        match self.path() {
            Path::Scalar(p) => dot::dot_f16_f32(p, x, y),
            #[cfg(target_arch = "x86_64")]
            Path::Avx2x1(t) => avx2::dot_f16_f32::<1>(t, x, y),
            #[cfg(target_arch = "x86_64")]
            Path::Avx2x2(t) => avx2::dot_f16_f32::<2>(t, x, y),
            #[cfg(target_arch = "x86_64")]
            Path::Avx512(t) => avx512::dot_f16_f32(t, x, y),
        }
    }

    /// [`dot::dot_f16_bytes_f32`] of `R` rows at once (the rows share the loads of `y`).
    #[inline]
    pub fn dot_f16_bytes_rows<const R: usize>(self, rows: [&[u8]; R], y: &[f32]) -> [f32; R] {
        match self.path() {
            Path::Scalar(p) => rows.map(|r| dot::dot_f16_bytes_f32(p, r, y)),
            #[cfg(target_arch = "x86_64")]
            Path::Avx2x1(t) => avx2::dot_f16_bytes_rows::<R, 1>(t, rows, y),
            #[cfg(target_arch = "x86_64")]
            Path::Avx2x2(t) => avx2::dot_f16_bytes_rows::<R, 2>(t, rows, y),
            #[cfg(target_arch = "x86_64")]
            Path::Avx512(t) => avx512::dot_f16_bytes_rows::<R>(t, rows, y),
        }
    }

    /// [`dot::dot_f16_bytes`] of `R` rows at once (the rows share the loads of `y`).
    #[inline]
    pub fn dot_f16_bytes_rows_f16<const R: usize>(self, rows: [&[u8]; R], y: &[u16]) -> [f32; R] {
        match self.path() {
            Path::Scalar(p) => rows.map(|r| dot::dot_f16_bytes(p, r, y)),
            #[cfg(target_arch = "x86_64")]
            Path::Avx2x1(t) => avx2::dot_f16_bytes_rows_f16::<R, 1>(t, rows, y),
            #[cfg(target_arch = "x86_64")]
            Path::Avx2x2(t) => avx2::dot_f16_bytes_rows_f16::<R, 2>(t, rows, y),
            #[cfg(target_arch = "x86_64")]
            Path::Avx512(t) => avx512::dot_f16_bytes_rows_f16::<R>(t, rows, y),
        }
    }

    /// [`tinyblas::dot`] of the row `a` with each of the columns `b`: elements of llamafile's
    /// tinyBLAS under this kernel's profile. Every length must be the row's, a multiple of the
    /// profile's lanes ([`tinyblas::takes`]).
    #[inline]
    pub fn tinyblas<const C: usize>(self, a: TinyRow<'_>, b: [&[f32]; C]) -> [f32; C] {
        match self.path() {
            Path::Scalar(p) => b.map(|col| tinyblas::dot(p, a, col)),
            #[cfg(target_arch = "x86_64")]
            Path::Avx2x1(t) => tinyblas_x86::avx2::<1, C>(t, a, b),
            #[cfg(target_arch = "x86_64")]
            Path::Avx2x2(t) => tinyblas_x86::avx2::<2, C>(t, a, b),
            #[cfg(target_arch = "x86_64")]
            Path::Avx512(t) => tinyblas_x86::avx512::<C>(t, a, b),
        }
    }

    /// [`tinyblas`](Self::tinyblas) of `R` rows with the same `C` columns: `out[r][c]`, the
    /// same bits (a register tile with AVX-512, the rows one by one otherwise).
    #[inline]
    pub fn tinyblas_tile<const R: usize, const C: usize>(
        self,
        a: [TinyRow<'_>; R],
        b: [&[f32]; C],
    ) -> [[f32; C]; R] {
        match self.path() {
            #[cfg(target_arch = "x86_64")]
            Path::Avx512(t) => tinyblas_x86::avx512_tile::<R, C>(t, a, b),
            _ => a.map(|row| self.tinyblas(row, b)),
        }
    }

    /// `out[i] = f32_to_f16(x[i])` (the same on every build).
    pub fn f32_to_f16_row(self, x: &[f32], out: &mut [u16]) {
        #[cfg(target_arch = "x86_64")]
        if let Some(t) = self.avx2_token() {
            return avx2::f32_to_f16_row(t, x, out);
        }
        assert_eq!(x.len(), out.len());
        for (o, &v) in out.iter_mut().zip(x) {
            *o = dot::f32_to_f16(v);
        }
    }

    /// [`dot::round_through_f16`] (the same on every build).
    pub fn round_through_f16(self, x: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if let Some(t) = self.avx2_token() {
            return avx2::round_through_f16(t, x);
        }
        dot::round_through_f16(x)
    }

    /// [`softmax::softmax_scaled`].
    pub fn softmax_scaled(self, scores: &mut [f32], n_valid: usize, scale: f32) {
        let p = self.profile;
        match self.path() {
            Path::Scalar(p) => softmax::softmax_scaled(p, scores, n_valid, scale),
            #[cfg(target_arch = "x86_64")]
            Path::Avx2x1(t) => {
                softmax::softmax_with(p, scores, n_valid, scale, |g, m| avx2::exp_sub_sum::<1>(t, g, m))
            }
            #[cfg(target_arch = "x86_64")]
            Path::Avx2x2(t) => {
                softmax::softmax_with(p, scores, n_valid, scale, |g, m| avx2::exp_sub_sum::<2>(t, g, m))
            }
            #[cfg(target_arch = "x86_64")]
            Path::Avx512(t) => {
                softmax::softmax_with(p, scores, n_valid, scale, |g, m| avx512::exp_sub_sum(t, g, m))
            }
        }
    }

    /// [`softmax::silu`].
    pub fn silu(self, x: &[f32], out: &mut [f32]) {
        let done = match self.path() {
            Path::Scalar(_) => 0,
            #[cfg(target_arch = "x86_64")]
            Path::Avx2x1(t) => avx2::silu::<1>(t, x, out),
            #[cfg(target_arch = "x86_64")]
            Path::Avx2x2(t) => avx2::silu::<2>(t, x, out),
            #[cfg(target_arch = "x86_64")]
            Path::Avx512(t) => avx512::silu(t, x, out),
        };
        softmax::silu(self.profile, &x[done..], &mut out[done..]);
    }
}

/// An activation converted to a block type's `vec_dot_type` (what `ggml_mul_mat` does before
/// its dots): Q8_0 blocks for Q8_0, Q8_K blocks for Q4_K and Q6_K, bf16 for BF16. Made by
/// [`FloatKernel::prepare_block_input`], read by [`FloatKernel::dot_block_rows`]; reused
/// without allocating once it has held a row as long.
#[derive(Debug, Clone, Default)]
pub struct BlockInput {
    ty: Option<BlockType>,
    q8_0: Vec<BlockQ8_0>,
    q8_k: Vec<BlockQ8K>,
    bf16: Vec<u16>,
}

impl BlockInput {
    /// Room for a row of up to `n` values of any block type.
    pub fn with_capacity(n: usize) -> BlockInput {
        BlockInput {
            ty: None,
            q8_0: Vec::with_capacity(n / QK8_0),
            q8_k: Vec::with_capacity(n / QK_K),
            bf16: Vec::with_capacity(n),
        }
    }

    /// The weight type it was prepared for.
    pub fn block_type(&self) -> Option<BlockType> {
        self.ty
    }

    /// The Q8_0 activation (after preparing for Q8_0).
    pub fn q8_0(&self) -> &[BlockQ8_0] {
        &self.q8_0
    }

    /// The Q8_K activation (after preparing for Q4_K or Q6_K).
    pub fn q8_k(&self) -> &[BlockQ8K] {
        &self.q8_k
    }

    /// The bf16 activation (after preparing for BF16).
    pub fn bf16(&self) -> &[u16] {
        &self.bf16
    }

    /// Sets a Q8_0 activation made elsewhere (tests give blocks no quantizer writes).
    pub fn set_q8_0(&mut self, blocks: &[BlockQ8_0]) {
        self.ty = Some(BlockType::Q8_0);
        self.q8_0.clear();
        self.q8_0.extend_from_slice(blocks);
    }

    /// Sets a Q8_K activation made elsewhere, for `ty` (Q4_K or Q6_K).
    ///
    /// # Panics
    /// If `ty` is not a K-quant.
    pub fn set_q8_k(&mut self, ty: BlockType, blocks: &[BlockQ8K]) {
        assert!(matches!(ty, BlockType::Q4_K | BlockType::Q6_K), "{ty:?} does not take Q8_K");
        self.ty = Some(ty);
        self.q8_k.clear();
        self.q8_k.extend_from_slice(blocks);
    }
}

impl FloatKernel {
    /// Converts `x` to the `vec_dot_type` of `ty` into `input`: `quantize_row_q8_0`,
    /// `quantize_row_q8_k` or `fp32_to_bf16_row` (the profile's).
    ///
    /// # Panics
    /// If `x.len()` is not a whole number of `ty`'s blocks.
    pub fn prepare_block_input(self, ty: BlockType, x: &[f32], input: &mut BlockInput) {
        assert_eq!(x.len() % ty.block_elems(), 0, "{ty:?} activation of {} values", x.len());
        input.ty = Some(ty);
        match ty {
            BlockType::Q8_0 => {
                input.q8_0.resize(x.len() / QK8_0, BlockQ8_0::ZERO);
                blocks::quantize_row_q8_0(x, &mut input.q8_0);
            }
            BlockType::Q4_K | BlockType::Q6_K => {
                input.q8_k.resize(x.len() / QK_K, BlockQ8K::ZERO);
                blocks::quantize_row_q8_k(x, &mut input.q8_k);
            }
            BlockType::BF16 => {
                input.bf16.resize(x.len(), 0);
                blocks::fp32_to_bf16_row(self.profile, x, &mut input.bf16);
            }
        }
    }

    /// `R` rows of type `ty` (the file's bytes) dotted with `input` (prepared for `ty`):
    /// `ggml_vec_dot_q8_0_q8_0`, `_q4_K_q8_K`, `_q6_K_q8_K` or `ggml_vec_dot_bf16` of the
    /// profile's build (`qdot.rs`).
    ///
    /// # Panics
    /// If `input` was prepared for another type, or a row's length does not match it.
    #[inline]
    pub fn dot_block_rows<const R: usize>(
        self,
        ty: BlockType,
        rows: [&[u8]; R],
        input: &BlockInput,
    ) -> [f32; R] {
        assert_eq!(input.ty, Some(ty), "activation prepared for {:?}, rows are {ty:?}", input.ty);
        #[cfg(target_arch = "x86_64")]
        if let Imp::Avx512(t) = self.imp {
            // The reference's own instructions where the CPU has them (same bits as the forms
            // below, which compute what they compute).
            match (ty, self.profile, t.vnni, t.bf16) {
                (BlockType::Q8_0, _, Some(v), _) => {
                    return qdot_avx512::dot_q8_0_rows_vnni(v, rows, &input.q8_0)
                }
                (BlockType::BF16, RefProfile::Avx512, _, Some(b)) => {
                    return qdot_avx512::dot_bf16_rows_native(b, rows, &input.bf16)
                }
                _ => {}
            }
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(t) = self.avx2_token() {
            return match (ty, self.profile) {
                (BlockType::Q8_0, _) => qdot_avx2::dot_q8_0_rows(t, rows, &input.q8_0),
                (BlockType::Q4_K, _) => qdot_avx2::dot_q4_k_rows(t, rows, &input.q8_k),
                (BlockType::Q6_K, _) => qdot_avx2::dot_q6_k_rows(t, rows, &input.q8_k),
                (BlockType::BF16, RefProfile::Avx2) => qdot_avx2::dot_bf16_rows::<R, 1>(t, rows, &input.bf16),
                (BlockType::BF16, RefProfile::Avx512) => {
                    qdot_avx2::dot_bf16_rows::<R, 2>(t, rows, &input.bf16)
                }
            };
        }
        match ty {
            BlockType::Q8_0 => rows.map(|r| qdot::dot_q8_0(r, &input.q8_0)),
            BlockType::Q4_K => rows.map(|r| qdot::dot_q4_k(r, &input.q8_k)),
            BlockType::Q6_K => rows.map(|r| qdot::dot_q6_k(r, &input.q8_k)),
            BlockType::BF16 => rows.map(|r| qdot::dot_bf16(self.profile, r, &input.bf16)),
        }
    }
}
