//! `harness tokenize-check` on every fixture vocabulary: 100 % agreement on the built-in corpus.

use std::process::Command;

#[test]
fn every_fixture_vocabulary_agrees_on_the_builtin_corpus() {
    for s in bitnet_fixtures::spec::committed() {
        let model = bitnet_fixtures::ensure(&s, bitnet_fixtures::WeightForm::I2S);
        let out = Command::new(env!("CARGO_BIN_EXE_harness"))
            .args(["tokenize-check", "--json", "--model"])
            .arg(&model)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(r["agreement_rate"], 1.0, "{}", s.name);
        assert!(r["strings"].as_u64().unwrap() >= 300);
        assert_eq!(r["modes"].as_array().unwrap().len(), 4);
    }
}

#[test]
fn a_corpus_file_is_read_with_its_escapes() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("c.txt");
    std::fs::write(&corpus, "# a comment\nhello world\ntab\\tand newline\\n\n<|begin_of_text|>special\n")
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_harness"))
        .arg("tokenize-check")
        .arg("--corpus")
        .arg(&corpus)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("(3 strings)") && text.contains("agreement: 100.00%"), "{text}");
}
