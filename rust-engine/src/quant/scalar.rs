//! Scalar kernels: plain loops that are obviously right. They are the oracle the SIMD
//! kernels are tested against, and the kernels for the flavours that have no SIMD path.

use super::layout::BLOCK32_CODE_BYTES;

/// `Σ c_i·q_i` over one row packed in groups of `G` bytes (32: x86 I2_S, 16: ARM, 8: one
/// 32-element block), with the codes as stored (0..3), exact in i32 (wrapping only beyond
/// ~5.6M elements). `G` is a constant so the loops have fixed trip counts and vectorize.
pub(super) fn grouped_dot<const G: usize>(w: &[u8], q: &[i8]) -> i32 {
    let elems = 4 * G;
    assert_eq!(w.len() * 4, q.len(), "weight row and activations differ in length");
    assert_eq!(q.len() % elems, 0, "row length must be a multiple of {elems}");
    let mut sum = 0i32;
    for (wg, qg) in w.chunks_exact(G).zip(q.chunks_exact(elems)) {
        for (k, qk) in qg.chunks_exact(G).enumerate() {
            let shift = 6 - 2 * k as u32;
            for (&byte, &a) in wg.iter().zip(qk) {
                let c = i32::from((byte >> shift) & 3);
                sum = sum.wrapping_add(c * i32::from(a));
            }
        }
    }
    sum
}

/// `Σ (c_j − 1)·q_j` over one 32-element block (8 code bytes): the block's ternary dot
/// product, with code 3 counting as +2 exactly as the integer formula `Σc·q − Σq` does.
pub(super) fn block32_ternary_dot(codes: &[u8], q: &[i8]) -> i32 {
    assert_eq!(codes.len(), BLOCK32_CODE_BYTES);
    assert_eq!(q.len(), 32);
    let mut sum = 0i32;
    for (k, qk) in q.chunks_exact(BLOCK32_CODE_BYTES).enumerate() {
        let shift = 6 - 2 * k as u32;
        for (&byte, &a) in codes.iter().zip(qk) {
            let c = i32::from((byte >> shift) & 3);
            sum += (c - 1) * i32::from(a);
        }
    }
    sum
}
