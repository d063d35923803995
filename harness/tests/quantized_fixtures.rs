//! The fixtures quantized by the reference's own `llama_model_quantize`
//! (`bitnet_fixtures::quantized`): every committed file is what `harness fixtures` writes today,
//! and what every reference build this harness has writes from the same F32 source (so an AVX2
//! host and an AVX-512 host regenerate the same bytes); each holds the head types and tensors it
//! claims; and each committed I2_S fixture has a baseline receipt of its own bytes, which
//! `.ci/run` gates and diffs.
//!
//! The reference's quantizer leaves the 28 padding bytes after each I2_S tensor's scale
//! uninitialized (its heap's leftovers, different from run to run); `harness fixtures` zeroes
//! them, the only change made to the reference's bytes.
//!
//! Regenerate them with `cargo run -p harness -- fixtures` (then their baselines, see
//! fixtures/README.md). The generated fixtures' own regeneration test is
//! fixtures/tests/regenerate.rs; these need the reference, which only the harness links.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use bitnet_cpp::Reference;
use bitnet_engine::gguf::{GgmlType, GgufFile, Value};
use bitnet_fixtures::quantized::{self, QuantizedFixture};
use bitnet_fixtures::{committed_dir, file_name, spec, write_spec, WeightForm};
use common::receipts::{code, harness, repo_root, stderr, stdout};
use harness::fixtures::{quantize_options, zero_i2s_padding, QUANTIZER_BUILD};

/// Largest committed fixture (the generated ones are held to 1 MB too).
const MAX_COMMITTED_BYTES: u64 = 1 << 20;

fn committed(q: &QuantizedFixture) -> Vec<u8> {
    let path = committed_dir().join(q.file_name());
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run `cargo run -p harness -- fixtures`", path.display()))
}

#[test]
fn harness_fixtures_writes_the_committed_files() {
    let dir = tempfile::tempdir().unwrap();
    let o = harness(dir.path(), &["fixtures", "--out", "out"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let out = dir.path().join("out");
    for q in quantized::all() {
        let fresh = std::fs::read(out.join(q.file_name())).unwrap();
        assert!(
            fresh == committed(&q),
            "{} differs from what `harness fixtures` writes today; run `cargo run -p harness -- fixtures` \
             and regenerate its baseline",
            q.file_name()
        );
    }
    // Nothing but the fixtures, their F32 forms and the quantized ones is left behind.
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut expected: Vec<String> = spec::committed()
        .iter()
        .flat_map(|s| [file_name(s, WeightForm::I2S), file_name(s, WeightForm::F32)])
        .chain(quantized::all().iter().map(QuantizedFixture::file_name))
        .collect();
    expected.sort();
    assert_eq!(names, expected);
}

/// The build that makes the fixtures (x86-64-v3, the same code on every host) writes the
/// committed bytes; every other build writes the same ternary weights, norms and scales, and may
/// differ only in a K-quant head (measured: the AVX-512 `native` build's Q4_K blocks differ in 13
/// bytes from the x86-64-v3 build's: the quantizer is compiled with the build's `-march`).
#[test]
fn every_reference_build_quantizes_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let builds = bitnet_cpp::built_references().unwrap();
    let mut fixed_build_checked = false;
    for build in builds.iter().filter_map(|b| b.march.clone()) {
        let reference = Reference::open_build(&build).unwrap();
        for q in quantized::all() {
            let source = write_spec(&q.source, WeightForm::F32, dir.path()).unwrap();
            let out = dir.path().join(format!("{build}-{}", q.file_name()));
            reference.quantize(&source, &out, quantize_options(&q)).unwrap();
            // The reference leaves each I2_S tensor's padding uninitialized; `harness fixtures`
            // zeroes it, and so does this comparison.
            let mut bytes = std::fs::read(&out).unwrap();
            zero_i2s_padding(&mut bytes).unwrap();
            let want = committed(&q);
            if build == QUANTIZER_BUILD {
                assert!(
                    bytes == want,
                    "{}: the -march={build} build quantizes it to other bytes",
                    q.file_name()
                );
                fixed_build_checked = true;
                continue;
            }
            let (ours, theirs) = (
                GgufFile::from_bytes(bytes, "fresh").unwrap(),
                GgufFile::from_bytes(want, "committed").unwrap(),
            );
            assert_eq!(ours.tensors().len(), theirs.tensors().len(), "{}", q.file_name());
            for t in theirs.tensors() {
                let o = ours.tensor(&t.name).unwrap();
                let same = ours.tensor_data(o) == theirs.tensor_data(t) && o.ggml_type == t.ggml_type;
                let head = matches!(t.ggml_type, GgmlType::Q4_K | GgmlType::Q6_K);
                assert!(same || head, "{}: {} differs under -march={build}", q.file_name(), t.name);
                if !same {
                    eprintln!(
                        "note: {}: {} ({:?}) differs under -march={build}",
                        q.file_name(),
                        t.name,
                        t.ggml_type
                    );
                }
            }
        }
    }
    assert!(fixed_build_checked, "no reference built for -march={QUANTIZER_BUILD}");
}

fn type_of(file: &GgufFile, name: &str) -> Option<GgmlType> {
    file.tensor(name).map(|t| t.ggml_type)
}

#[test]
fn each_quantized_fixture_holds_what_it_claims() {
    let open = |name: &str| {
        let path = committed_dir().join(format!("{name}-i2_s.gguf"));
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size < MAX_COMMITTED_BYTES, "{}: {size} bytes", path.display());
        GgufFile::open(&path).unwrap()
    };
    let arch = |f: &GgufFile| f.get("general.architecture").and_then(Value::as_str).unwrap().to_string();
    let i2s = |f: &GgufFile| f.tensors().iter().filter(|t| t.ggml_type == GgmlType::I2_S).count();

    let f = open("q8_0-head-384");
    assert_eq!(arch(&f), "bitnet-b1.58");
    assert_eq!(f.tensor("token_embd.weight").unwrap().dims[0], 384);
    assert_eq!(type_of(&f, "token_embd.weight"), Some(GgmlType::Q8_0), "the default for n_embd 384");
    assert_eq!(type_of(&f, "output.weight"), None);
    assert_eq!(i2s(&f), 14);

    for (name, ty) in [("q6_k-head-256", GgmlType::Q6_K), ("q4_k-head-256", GgmlType::Q4_K)] {
        let f = open(name);
        assert_eq!(arch(&f), "bitnet-b1.58");
        assert_eq!(type_of(&f, "token_embd.weight"), Some(ty), "{name}");
        assert_eq!(type_of(&f, "output.weight"), None, "{name}");
        assert_eq!(i2s(&f), 14, "{name}");
    }

    let f = open("arch-bitnet-256");
    assert_eq!(arch(&f), "bitnet");
    assert_eq!(type_of(&f, "token_embd.weight"), Some(GgmlType::F16));
    let scales: BTreeSet<&str> =
        f.tensors().iter().filter(|t| t.name.ends_with(".scale")).map(|t| t.name.as_str()).collect();
    assert_eq!(scales.len(), 2 * 7, "{scales:?}");
    for l in 0..2 {
        for p in ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"] {
            let name = format!("blk.{l}.{p}.scale");
            let t = f.tensor(&name).unwrap_or_else(|| panic!("{name}"));
            assert_eq!((t.ggml_type, t.dims.as_slice()), (GgmlType::F32, &[1u64][..]), "{name}");
        }
    }
    assert_eq!(i2s(&f), 14);

    let f = open("untied-head-256");
    assert_eq!(arch(&f), "bitnet-b1.58");
    assert_eq!(type_of(&f, "token_embd.weight"), Some(GgmlType::F16));
    assert_eq!(type_of(&f, "output.weight"), Some(GgmlType::F16));
    let (e, o) = (f.tensor("token_embd.weight").unwrap(), f.tensor("output.weight").unwrap());
    assert_eq!(e.dims, o.dims);
    assert!(f.tensor_data(e) != f.tensor_data(o), "the untied head must differ from the embedding");
}

/// `fixtures/*-i2_s.gguf` is exactly the generated and the quantized fixtures; each has a
/// baseline receipt made from its own bytes (sha256) that reads with this harness; and
/// `.ci/run` gates and diffs every file of that pattern.
#[test]
fn every_committed_i2s_fixture_is_known_and_has_a_baseline() {
    let on_disk: BTreeSet<String> = std::fs::read_dir(committed_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with("-i2_s.gguf"))
        .collect();
    let known: BTreeSet<String> = spec::committed()
        .iter()
        .map(|s| file_name(s, WeightForm::I2S))
        .chain(quantized::all().iter().map(QuantizedFixture::file_name))
        .collect();
    assert_eq!(on_disk, known, "fixtures/*-i2_s.gguf vs the fixtures the generator knows");

    let root = repo_root();
    for name in &known {
        let model = committed_dir().join(name);
        let baseline = root.join("receipts/baselines").join(name.replace(".gguf", ".json"));
        let r = harness::schema::read_receipt(&baseline).unwrap_or_else(|f| panic!("{f}"));
        let sha = harness::run::sha256_hex(&std::fs::read(&model).unwrap());
        assert_eq!(
            r.model.sha256,
            sha,
            "{} was made from other bytes than {}: regenerate it (fixtures/README.md)",
            baseline.display(),
            model.display()
        );
        assert_eq!(r.verdict.status, "pass", "{}: {:?}", baseline.display(), r.verdict.reasons);
    }
    let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
    assert!(
        ci.contains("for model in fixtures/*-i2_s.gguf; do"),
        ".ci/run no longer loops over the fixtures"
    );
    assert!(Path::new(&root.join("receipts/baselines")).is_dir());
}
