//! `Model::decode_batch_traced` is `decode_batch` with a window on one row: the same logits for
//! every position, the traced row's `result_output` equal to that row of them, and every
//! operation of the model reported once, for a row in the first ubatch, in a later one, and at
//! a ubatch's end.

use bitnet_engine::gguf::GgufFile;
use bitnet_engine::model::{Model, ModelOptions};

fn fixture() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tiny-256-gqa-i2_s.gguf")
}

#[test]
fn a_traced_batch_computes_what_the_batch_computes() {
    let file = GgufFile::open(fixture()).unwrap();
    let tokens: Vec<u32> = (0..20).map(|i| 3 + (i * 37) % 400).collect();
    for threads in [1, 2] {
        let mut m =
            Model::load(&file, ModelOptions { n_ctx: 64, threads, ..ModelOptions::default() }).unwrap();
        let nv = m.config().n_vocab;
        let plain = m.decode_batch(&tokens, 0, 8).unwrap().to_vec();
        let mut names = vec!["inp_embd".to_string()];
        names.extend(m.traced_names());
        for row in [0, 5, 7, 13, 19] {
            m.reset();
            let mut seen: Vec<(String, Vec<f32>)> = Vec::new();
            let logits = m
                .decode_batch_traced(&tokens, 0, 8, row, &mut |n, d| seen.push((n.to_string(), d.to_vec())))
                .unwrap();
            let same = logits.iter().zip(&plain).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "threads {threads}, row {row}: tracing changed the logits");
            let out = &seen.iter().find(|(n, _)| n == "result_output").unwrap().1;
            assert!(out
                .iter()
                .zip(&plain[row * nv..(row + 1) * nv])
                .all(|(a, b)| a.to_bits() == b.to_bits()));
            let mut reported: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
            let mut expected: Vec<&str> = names.iter().map(String::as_str).collect();
            reported.sort_unstable();
            expected.sort_unstable();
            assert_eq!(reported, expected, "row {row}");
        }
        m.reset();
        let err = m.decode_batch_traced(&tokens, 0, 8, 20, &mut |_, _| {}).unwrap_err();
        assert!(err.to_string().contains("token 20 of a batch of 20"), "{err}");
    }
}
