//! `harness inspect` on hand-made bad GGUF files: each one exits 2 with a one-line message
//! naming the problem, and never panics.

use std::path::Path;
use std::process::Command;

/// A raw GGUF builder that can write anything, valid or not.
#[derive(Clone)]
struct Raw {
    magic: [u8; 4],
    version: u32,
    n_tensors: Option<u64>,
    n_kv: Option<u64>,
    kvs: Vec<Vec<u8>>,
    infos: Vec<Vec<u8>>,
    data: Vec<u8>,
    alignment: usize,
}

fn s(x: &str) -> Vec<u8> {
    let mut v = (x.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(x.as_bytes());
    v
}

fn kv(key: &str, type_id: u32, value: &[u8]) -> Vec<u8> {
    let mut v = s(key);
    v.extend_from_slice(&type_id.to_le_bytes());
    v.extend_from_slice(value);
    v
}

fn info(name: &str, dims: &[u64], type_id: u32, offset: u64) -> Vec<u8> {
    let mut v = s(name);
    v.extend_from_slice(&(dims.len() as u32).to_le_bytes());
    for d in dims {
        v.extend_from_slice(&d.to_le_bytes());
    }
    v.extend_from_slice(&type_id.to_le_bytes());
    v.extend_from_slice(&offset.to_le_bytes());
    v
}

impl Raw {
    /// A valid file: an architecture string, an F32 vector and an I2_S matrix.
    fn valid() -> Raw {
        let mut data = vec![0u8; 32]; // "norm": 8 f32
        data.extend(vec![0x55u8; 256 * 4 / 4]); // "w": I2_S 256×4 codes (all code 1 = 0)
        data.extend_from_slice(&1.0f32.to_le_bytes());
        data.extend(vec![0u8; 28]);
        Raw {
            magic: *b"GGUF",
            version: 3,
            n_tensors: None,
            n_kv: None,
            kvs: vec![kv("general.architecture", 8, &s("bitnet-b1.58"))],
            infos: vec![info("norm", &[8], 0, 0), info("w", &[256, 4], 36, 32)],
            data,
            alignment: 32,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut v = self.magic.to_vec();
        v.extend_from_slice(&self.version.to_le_bytes());
        v.extend_from_slice(&self.n_tensors.unwrap_or(self.infos.len() as u64).to_le_bytes());
        v.extend_from_slice(&self.n_kv.unwrap_or(self.kvs.len() as u64).to_le_bytes());
        for k in &self.kvs {
            v.extend_from_slice(k);
        }
        for i in &self.infos {
            v.extend_from_slice(i);
        }
        while !v.len().is_multiple_of(self.alignment) {
            v.push(0);
        }
        v.extend_from_slice(&self.data);
        v
    }
}

fn inspect(path: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_harness")).arg("inspect").arg(path).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn expect_bad(dir: &Path, name: &str, bytes: &[u8], needle: &str) {
    let path = dir.join(format!("{name}.gguf"));
    std::fs::write(&path, bytes).unwrap();
    let (code, _, stderr) = inspect(&path);
    assert_eq!(code, 2, "{name}: exit code {code}, stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{name}: panicked: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{name}: expected one line, got {stderr:?}");
    assert!(lines[0].starts_with("error: "), "{name}: {stderr}");
    assert!(lines[0].contains(&*path.to_string_lossy()), "{name}: message does not name the file: {stderr}");
    assert!(lines[0].contains(needle), "{name}: {:?} does not mention {needle:?}", lines[0]);
}

#[test]
fn the_valid_base_file_inspects() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.gguf");
    std::fs::write(&path, Raw::valid().bytes()).unwrap();
    let (code, stdout, stderr) = inspect(&path);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("norm") && stdout.contains("i2_s"), "{stdout}");
}

#[test]
fn every_fixture_inspects_with_every_tensor_and_its_flavour() {
    for s in bitnet_fixtures::spec::committed() {
        let path = bitnet_fixtures::ensure(&s, bitnet_fixtures::WeightForm::I2S);
        let file = bitnet_engine::gguf::GgufFile::open(&path).unwrap();
        let (code, stdout, stderr) = inspect(&path);
        assert_eq!(code, 0, "{stderr}");
        for t in file.tensors() {
            let line = stdout.lines().find(|l| l.split_whitespace().next() == Some(t.name.as_str()));
            let line = line.unwrap_or_else(|| panic!("{} missing from inspect output", t.name));
            if t.ggml_type == bitnet_engine::gguf::GgmlType::I2_S {
                assert!(line.contains("x86-qk256") || line.contains("x86"), "{line}");
            }
        }
        let out = Command::new(env!("CARGO_BIN_EXE_harness"))
            .args(["inspect", "--json"])
            .arg(&path)
            .output()
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["tensors"].as_array().unwrap().len(), file.tensors().len());
        assert_eq!(json["architecture"], "bitnet-b1.58");
        assert_eq!(json["hyperparameters"]["attention.layer_norm_rms_epsilon"], 1e-5);
    }
}

#[test]
fn bad_files_exit_2_with_a_message_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let valid = Raw::valid();
    let good = valid.bytes();

    expect_bad(d, "empty", &[], "magic");
    expect_bad(d, "magic-only", b"GGUF", "version");
    expect_bad(d, "mid-header", &good[..14], "tensor count");
    expect_bad(d, "wrong-magic", &[b"GGML".as_slice(), &good[4..]].concat(), "not a GGUF file");

    let mut r = valid.clone();
    r.version = 1;
    expect_bad(d, "version-1", &r.bytes(), "version 1");
    r.version = 4;
    expect_bad(d, "version-4", &r.bytes(), "version 4");

    let mut r = valid.clone();
    r.n_tensors = Some(1 << 60);
    expect_bad(d, "tensor-count-2^60", &r.bytes(), "tensor count is 1152921504606846976");

    let mut r = valid.clone();
    r.n_kv = Some(1 << 60);
    expect_bad(d, "kv-count-2^60", &r.bytes(), "metadata count");

    // A key whose length runs past the end of the file.
    let mut r = valid.clone();
    r.kvs = vec![[(1u64 << 40).to_le_bytes().as_slice(), b"general"].concat()];
    expect_bad(d, "key-length-past-eof", &r.bytes(), "metadata[0] key");

    // A string value whose length runs past the end of the file.
    let mut r = valid.clone();
    r.kvs = vec![kv("general.name", 8, &[(1u64 << 50).to_le_bytes().as_slice(), b"x"].concat())];
    expect_bad(d, "string-length-past-eof", &r.bytes(), "general.name");

    let mut r = valid.clone();
    r.kvs.push(kv("general.weird", 99, &[0; 8]));
    expect_bad(d, "unknown-value-type", &r.bytes(), "unknown value type id 99");

    // An array claiming 2^40 u32 elements.
    let mut r = valid.clone();
    let arr = [4u32.to_le_bytes().as_slice(), &(1u64 << 40).to_le_bytes(), &[0; 8]].concat();
    r.kvs.push(kv("tokenizer.ggml.token_type", 9, &arr));
    expect_bad(d, "array-count-huge", &r.bytes(), "tokenizer.ggml.token_type");

    let mut r = valid.clone();
    r.kvs.push(kv("general.flag", 7, &[7]));
    expect_bad(d, "bool-not-0-or-1", &r.bytes(), "bool must be 0 or 1");

    // Arrays nested ten deep.
    let mut nested = [7u32.to_le_bytes().as_slice(), &1u64.to_le_bytes(), &[1]].concat();
    for _ in 0..10 {
        nested = [9u32.to_le_bytes().as_slice(), &1u64.to_le_bytes(), &nested].concat();
    }
    let mut r = valid.clone();
    r.kvs.push(kv("general.nested", 9, &nested[..]));
    expect_bad(d, "arrays-nested-too-deep", &r.bytes(), "nests arrays deeper");

    let mut r = valid.clone();
    r.kvs.push([3u64.to_le_bytes().as_slice(), &[0xff, 0xfe, 0x41], &8u32.to_le_bytes(), &s("v")].concat());
    expect_bad(d, "key-not-utf8", &r.bytes(), "not valid UTF-8");

    let mut r = valid.clone();
    r.kvs.push(kv("general.architecture", 8, &s("again")));
    expect_bad(d, "duplicate-key", &r.bytes(), "duplicate metadata key");

    let mut r = valid.clone();
    r.kvs.push(kv("general.alignment", 4, &33u32.to_le_bytes()));
    expect_bad(d, "alignment-not-power-of-two", &r.bytes(), "general.alignment");

    let mut r = valid.clone();
    r.infos[0] = info("norm", &[8, 1, 1, 1, 1], 0, 0);
    expect_bad(d, "five-dims", &r.bytes(), "5 dimensions");

    let mut r = valid.clone();
    r.infos[0] = info("norm", &[8, 0], 0, 0);
    expect_bad(d, "zero-dim", &r.bytes(), "zero-length dimension");

    let mut r = valid.clone();
    r.infos[0] = info("norm", &[8], 4, 0);
    expect_bad(d, "removed-type-id", &r.bytes(), "unknown ggml type id 4");
    r.infos[0] = info("norm", &[8], 1000, 0);
    expect_bad(d, "unknown-type-id", &r.bytes(), "\"norm\" has unknown ggml type id 1000");

    let mut r = valid.clone();
    r.infos[0] = info("norm", &[1 << 40, 1 << 40], 0, 0);
    expect_bad(d, "element-count-overflow", &r.bytes(), "overflows");

    let mut r = valid.clone();
    r.infos[0] = info("norm", &[33], 8, 0); // Q8_0 rows must be multiples of 32
    expect_bad(d, "q8_0-row-not-block-multiple", &r.bytes(), "not a multiple of the block size");

    let mut r = valid.clone();
    r.infos[1] = info("w", &[256, 4], 36, 36);
    expect_bad(d, "misaligned-offset", &r.bytes(), "not a multiple of the alignment");

    let mut r = valid.clone();
    r.infos[1] = info("w", &[256, 4], 36, 0);
    expect_bad(d, "overlapping-tensors", &r.bytes(), "overlap");

    let mut r = valid.clone();
    r.infos[0] = info("norm", &[8], 0, 1 << 62);
    expect_bad(d, "offset-far-past-eof", &r.bytes(), "\"norm\" data");

    let mut r = valid.clone();
    r.infos.push(info("norm", &[8], 0, 0));
    expect_bad(d, "duplicate-tensor", &r.bytes(), "duplicate tensor name");

    // I2_S whose bytes do not match its shape: the data stops 16 bytes into its 32-byte tail.
    let bytes = valid.bytes();
    expect_bad(d, "i2s-bytes-short-of-shape", &bytes[..bytes.len() - 16], "\"w\" data");
    // ... or a shape that needs more than the bytes present (8 rows where 4 were written).
    let mut r = valid.clone();
    r.infos[1] = info("w", &[256, 8], 36, 32);
    expect_bad(d, "i2s-shape-larger-than-bytes", &r.bytes(), "\"w\" data");
}

#[test]
fn every_truncation_of_a_fixture_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = bitnet_fixtures::committed_dir().join("tiny-256-gqa-i2_s.gguf");
    let bytes = std::fs::read(fixture).unwrap();
    // Cut inside the header (every few bytes) and inside the data; every cut must fail cleanly.
    let mut cuts: Vec<usize> = (0..2048).step_by(7).collect();
    cuts.extend((2048..bytes.len()).step_by(bytes.len() / 40));
    for cut in cuts {
        let path = dir.path().join("cut.gguf");
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let (code, _, stderr) = inspect(&path);
        assert_eq!(code, 2, "cut at {cut}: exit {code}: {stderr}");
        assert!(stderr.starts_with("error: ") && stderr.lines().count() == 1, "cut at {cut}: {stderr}");
    }
}
