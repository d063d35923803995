//! The ISA-dependent float ops against the reference's own outputs, case by case and bit for
//! bit: `fixtures/golden/ops-avx2.json` (bitnet.cpp built for `x86-64-v3`) and
//! `ops-avx512.json` (built `-march=native` on an AVX-512 CPU), made from the same inputs.
//! Every kernel this CPU runs (scalar, AVX2, AVX-512) must reproduce each file under the
//! matching profile, so a machine without AVX-512 still proves the AVX-512 mirror exact.

use std::collections::BTreeMap;
use std::path::PathBuf;

use bitnet_engine::internals::ops::{self, BlockInput};
use bitnet_engine::ops::{BlockType, FloatKernel};
use bitnet_engine::profile::RefProfile;
use serde_json::Value;

/// One case: the op, its sizes, and its arrays as little-endian bytes.
struct Case {
    op: String,
    field: BTreeMap<String, String>,
}

impl Case {
    fn usize(&self, k: &str) -> usize {
        self.field[k].parse().unwrap_or_else(|_| panic!("{}: {k} is not a count", self.op))
    }

    fn bytes(&self, k: &str) -> Vec<u8> {
        let s = &self.field[k];
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
    }

    fn f32s(&self, k: &str) -> Vec<f32> {
        self.bytes(k).chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect()
    }
}

fn golden(name: &str) -> Vec<Case> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/golden").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: Value = serde_json::from_str(&text).expect("golden JSON");
    assert_eq!(v["format"], "bitnet-parity golden ops 1", "{name}");
    v["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| {
            let o = c.as_object().expect("case object");
            Case {
                op: o["op"].as_str().expect("op").to_string(),
                // Sizes are numbers or strings; arrays are hex strings.
                field: o
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_string)))
                    .collect(),
            }
        })
        .collect()
}

/// What `kernel` computes for `case`, or `None` for an op this test does not know.
fn compute(kernel: FloatKernel, case: &Case) -> Option<Vec<f32>> {
    match case.op.as_str() {
        "mul_mat_f16" => {
            // ggml converts x to f16, then one `ggml_vec_dot_f16` per row.
            let (n, rows) = (case.usize("n"), case.usize("rows"));
            let w = case.bytes("w");
            let x: Vec<u16> = case.f32s("x").iter().map(|&v| ops::f32_to_f16(v)).collect();
            assert_eq!((w.len(), x.len()), (2 * n * rows, n));
            let row = |r: usize| &w[2 * n * r..2 * n * (r + 1)];
            let mut y = Vec::new();
            for r in 0..rows {
                let one = kernel.dot_f16_bytes_rows_f16([row(r)], &x)[0];
                let u16_row: Vec<u16> =
                    row(r).chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect();
                // The other forms of the same dot must agree with it bit for bit.
                assert_eq!(one.to_bits(), kernel.dot_f16(&u16_row, &x).to_bits(), "dot_f16 n={n}");
                let xf: Vec<f32> = x.iter().map(|&h| ops::f16_to_f32(h)).collect();
                assert_eq!(one.to_bits(), kernel.dot_f16_bytes_rows([row(r)], &xf)[0].to_bits());
                y.push(one);
            }
            if rows >= 3 {
                let three = kernel.dot_f16_bytes_rows_f16([row(0), row(1), row(2)], &x);
                assert_eq!(three.map(f32::to_bits), [y[0], y[1], y[2]].map(f32::to_bits), "3 rows n={n}");
            }
            Some(y)
        }
        "soft_max" => {
            let (n, rows, valid) = (case.usize("n"), case.usize("rows"), case.usize("valid"));
            let scale = f32::from_le_bytes(case.bytes("scale").try_into().expect("4 bytes"));
            let mut x = case.f32s("x");
            assert_eq!(x.len(), n * rows);
            for row in x.chunks_exact_mut(n) {
                kernel.softmax_scaled(row, valid, scale);
            }
            Some(x)
        }
        "silu" => {
            let x = case.f32s("x");
            let mut y = vec![0f32; x.len()];
            kernel.silu(&x, &mut y);
            Some(y)
        }
        op => {
            // A head in a block type: ggml converts x to the type's vec_dot_type, then one
            // vec_dot per row.
            let ty = block_type(op)?;
            let (n, rows) = (case.usize("n"), case.usize("rows"));
            let (w, x) = (case.bytes("w"), case.f32s("x"));
            let rb = ty.row_bytes(n);
            assert_eq!((w.len(), x.len()), (rb * rows, n), "{op} n={n}");
            let row = |r: usize| &w[rb * r..rb * (r + 1)];
            let mut input = BlockInput::with_capacity(n);
            kernel.prepare_block_input(ty, &x, &mut input);
            let y: Vec<f32> = (0..rows).map(|r| kernel.dot_block_rows(ty, [row(r)], &input)[0]).collect();
            // The scalar oracle, and several rows at once, give the same bits.
            let scalar = FloatKernel::scalar(kernel.profile());
            for (r, yr) in y.iter().enumerate() {
                assert_eq!(
                    yr.to_bits(),
                    scalar.dot_block_rows(ty, [row(r)], &input)[0].to_bits(),
                    "{op} n={n}"
                );
            }
            if rows >= 3 {
                let three = kernel.dot_block_rows(ty, [row(0), row(1), row(2)], &input);
                assert_eq!(
                    three.map(f32::to_bits),
                    [y[0], y[1], y[2]].map(f32::to_bits),
                    "{op} 3 rows n={n}"
                );
            }
            Some(y)
        }
    }
}

/// The block type of a `mul_mat_<type>` case.
fn block_type(op: &str) -> Option<BlockType> {
    Some(match op {
        "mul_mat_q8_0" => BlockType::Q8_0,
        "mul_mat_q4_K" => BlockType::Q4_K,
        "mul_mat_q6_K" => BlockType::Q6_K,
        "mul_mat_bf16" => BlockType::BF16,
        _ => return None,
    })
}

/// Ops whose outputs differ between the two builds (the rest: Q8_0, Q4_K, Q6_K, identical).
const BUILD_DEPENDENT: [&str; 4] = ["mul_mat_f16", "soft_max", "silu", "mul_mat_bf16"];
/// Every op of the files, and the fewest cases each must have.
const OPS: [(&str, usize); 7] = [
    ("mul_mat_f16", 50),
    ("soft_max", 50),
    ("silu", 50),
    ("mul_mat_q8_0", 4),
    ("mul_mat_q4_K", 4),
    ("mul_mat_q6_K", 4),
    ("mul_mat_bf16", 4),
];

/// Cases of each op whose every output is bit-identical, and the cases compared.
fn agreement(kernel: FloatKernel, cases: &[Case]) -> BTreeMap<String, (usize, usize)> {
    let mut tally: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for case in cases {
        let Some(got) = compute(kernel, case) else { continue };
        let want = case.f32s("y");
        let exact = got.len() == want.len() && got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
        let t = tally.entry(case.op.clone()).or_default();
        t.0 += usize::from(exact);
        t.1 += 1;
    }
    tally
}

fn check_profile(file: &str, profile: RefProfile) {
    let cases = golden(file);
    for kernel in FloatKernel::available(profile) {
        let tally = agreement(kernel, &cases);
        eprintln!("{file} with the {} kernel, profile {profile}: {tally:?}", kernel.name());
        assert_eq!(
            tally.keys().map(String::as_str).collect::<Vec<_>>().len(),
            OPS.len(),
            "{file}: {tally:?}"
        );
        for (op, fewest) in OPS {
            let (exact, total) = tally[op];
            assert!(total >= fewest, "{file}: only {total} {op} cases");
            assert_eq!(exact, total, "{file}, kernel {}, profile {profile}: {op}", kernel.name());
        }
    }
}

#[test]
fn avx2_profile_reproduces_the_x86_64_v3_build() {
    check_profile("ops-avx2.json", RefProfile::Avx2);
}

#[test]
fn avx512_profile_reproduces_the_avx512_build() {
    check_profile("ops-avx512.json", RefProfile::Avx512);
}

/// The files differ where the builds differ, and a profile does not reproduce the other
/// build: the test above could fail.
#[test]
fn the_wrong_profile_does_not_reproduce_the_other_build() {
    for (file, wrong) in [("ops-avx512.json", RefProfile::Avx2), ("ops-avx2.json", RefProfile::Avx512)] {
        let tally = agreement(FloatKernel::best(wrong), &golden(file));
        for (op, _) in OPS {
            let (exact, total) = tally[op];
            if BUILD_DEPENDENT.contains(&op) {
                assert!(exact < total * 3 / 4, "{file} under {wrong}: {op} {exact}/{total} exact");
            } else {
                // The Q8_0 and K-quant products are the same code on both builds.
                assert_eq!(exact, total, "{file} under {wrong}: {op}");
            }
        }
    }
}
