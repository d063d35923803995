//! Property test: whatever the writer writes, the reader reads back identically.

use bitnet_engine::gguf::{Array, GgmlType, GgufFile, GgufWriter, Value};
use proptest::prelude::*;

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<u8>().prop_map(Value::U8),
        any::<i8>().prop_map(Value::I8),
        any::<u16>().prop_map(Value::U16),
        any::<i16>().prop_map(Value::I16),
        any::<u32>().prop_map(Value::U32),
        any::<i32>().prop_map(Value::I32),
        // Finite floats only: NaN != NaN would make equality meaningless (bits are kept anyway).
        (-1e30f32..1e30).prop_map(Value::F32),
        any::<bool>().prop_map(Value::Bool),
        ".{0,40}".prop_map(Value::String),
        any::<u64>().prop_map(Value::U64),
        any::<i64>().prop_map(Value::I64),
        (-1e300f64..1e300).prop_map(Value::F64),
    ]
}

fn array() -> impl Strategy<Value = Array> {
    let leaf = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..20).prop_map(Array::U8),
        prop::collection::vec(any::<i16>(), 0..20).prop_map(Array::I16),
        prop::collection::vec(any::<i32>(), 0..20).prop_map(Array::I32),
        prop::collection::vec(-1e9f32..1e9, 0..20).prop_map(Array::F32),
        prop::collection::vec(any::<bool>(), 0..20).prop_map(Array::Bool),
        prop::collection::vec(".{0,12}", 0..20).prop_map(Array::String),
        prop::collection::vec(any::<u64>(), 0..20).prop_map(Array::U64),
        prop::collection::vec(-1e9f64..1e9, 0..20).prop_map(Array::F64),
    ];
    // Nested arrays, as the format allows (the reader bounds the depth).
    leaf.prop_recursive(3, 32, 4, |inner| prop::collection::vec(inner, 0..4).prop_map(Array::Array))
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![3 => scalar(), 1 => array().prop_map(Value::Array)]
}

#[derive(Debug, Clone)]
struct Tensor {
    dims: Vec<u64>,
    ggml_type: GgmlType,
    data: Vec<u8>,
}

fn tensor() -> impl Strategy<Value = Tensor> {
    let shape = prop_oneof![
        (1u64..5).prop_map(|k| (GgmlType::I2_S, vec![128 * k, 2])),
        (1u64..40).prop_map(|n| (GgmlType::F32, vec![n])),
        (1u64..20, 1u64..4).prop_map(|(a, b)| (GgmlType::F16, vec![a, b])),
        (1u64..3).prop_map(|k| (GgmlType::Q8_0, vec![32 * k, 3])),
        Just((GgmlType::TQ2_0, vec![256, 1, 2])),
        Just((GgmlType::BF16, vec![3, 1, 1, 2])),
    ];
    shape.prop_flat_map(|(t, dims)| {
        let n = t.tensor_bytes(&dims).unwrap() as usize;
        prop::collection::vec(any::<u8>(), n).prop_map(move |data| Tensor {
            dims: dims.clone(),
            ggml_type: t,
            data,
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn write_then_read_is_identity(
        version in 2u32..=3,
        alignment in prop::sample::select(vec![None, Some(8u32), Some(32), Some(64)]),
        kvs in prop::collection::btree_map("[a-z.]{1,16}", value(), 0..12),
        tensors in prop::collection::vec(tensor(), 0..6),
    ) {
        let mut w = GgufWriter::new(version);
        if let Some(a) = alignment {
            w.add_metadata("general.alignment", Value::U32(a)).unwrap();
        }
        let kvs: Vec<(String, Value)> =
            kvs.into_iter().filter(|(k, _)| k != "general.alignment").collect();
        for (k, v) in &kvs {
            w.add_metadata(k.clone(), v.clone()).unwrap();
        }
        for (i, t) in tensors.iter().enumerate() {
            w.add_tensor_info(format!("t{i}"), &t.dims, t.ggml_type, t.data.len() as u64).unwrap();
        }
        let mut out = w.begin(Vec::new()).unwrap();
        for (i, t) in tensors.iter().enumerate() {
            out.write_tensor_data(&format!("t{i}"), &t.data).unwrap();
        }
        let bytes = out.finish().unwrap();

        let f = GgufFile::from_bytes(bytes, "roundtrip.gguf").unwrap();
        prop_assert_eq!(f.version(), version);
        prop_assert_eq!(f.alignment(), u64::from(alignment.unwrap_or(32)));
        let read: Vec<(String, Value)> = f
            .metadata()
            .iter()
            .filter(|(k, _)| k != "general.alignment")
            .cloned()
            .collect();
        prop_assert_eq!(read, kvs);
        prop_assert_eq!(f.tensors().len(), tensors.len());
        for (i, t) in tensors.iter().enumerate() {
            let info = f.tensor(&format!("t{i}")).unwrap();
            prop_assert_eq!(&info.dims, &t.dims);
            prop_assert_eq!(info.ggml_type, t.ggml_type);
            prop_assert_eq!(info.offset % f.alignment(), 0);
            prop_assert_eq!(f.tensor_data(info), &t.data[..]);
        }
    }
}

#[test]
fn mapped_file_reads_like_bytes() {
    let mut w = GgufWriter::new(3);
    w.add_metadata("general.architecture", Value::String("bitnet-b1.58".into())).unwrap();
    w.add_tensor_info("x", &[4], GgmlType::F32, 16).unwrap();
    let mut out = w.begin(Vec::new()).unwrap();
    out.write_tensor_data("x", &[1u8; 16]).unwrap();
    let bytes = out.finish().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    std::fs::write(&path, &bytes).unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.get_str("general.architecture").unwrap(), "bitnet-b1.58");
    assert_eq!(f.tensor_data(f.tensor("x").unwrap()), &[1u8; 16]);
    assert_eq!(f.as_bytes(), &bytes[..]);
}
