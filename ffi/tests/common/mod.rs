//! Shared by the integration tests: a small bitnet-b1.58 model written with our GGUF writer
//! (F32 weights that are exactly ternary × a per-tensor scale, so I2_S loses nothing), an
//! independent float64 forward pass of the graph described in REFERENCE.md, and helpers.
#![allow(dead_code)]

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::Command;

use bitnet_cpp::worker::{LibraryChoice, RefWorker};
use bitnet_engine::gguf::{Array, GgmlType, GgufFile, GgufWriter, Value};

pub const ARCH: &str = "bitnet-b1.58";

/// Shape of a generated model.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub n_ctx: usize,
    pub rope_base: f32,
    pub eps: f32,
    pub seed: u64,
    /// Writes `attention.value_length` (and sizes attn_v to it) when set; a value different
    /// from the key length loads fine but trips a GGML_ASSERT when the graph is built.
    pub value_length: Option<usize>,
}

impl Spec {
    /// Grouped-query attention, dimensions multiples of 128 (I2_S chunks).
    pub fn small() -> Spec {
        Spec {
            n_embd: 256,
            n_ff: 384,
            n_layer: 2,
            n_head: 4,
            n_head_kv: 2,
            n_ctx: 128,
            rope_base: 10000.0,
            eps: 1e-5,
            seed: 0x05ee_df32,
            value_length: None,
        }
    }

    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }
}

/// The fixtures' deterministic generator.
pub use bitnet_fixtures::rng::Rng;

/// GPT-2's byte → printable character table (what byte-level BPE vocabularies store).
pub fn byte_to_char() -> Vec<char> {
    let mut printable: Vec<u32> = (33..=126).chain(161..=172).chain(174..=255).collect();
    let mut map = vec!['\0'; 256];
    for &b in &printable {
        map[b as usize] = char::from_u32(b).unwrap();
    }
    let mut next = 256;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            map[b as usize] = char::from_u32(next).unwrap();
            printable.push(b);
            next += 1;
        }
    }
    map
}

/// Byte-level tokens, a few merges, and the two Llama-3 specials (BOS, EOS).
pub struct Vocab {
    pub tokens: Vec<String>,
    pub types: Vec<i32>,
    pub merges: Vec<String>,
    pub bos: u32,
    pub eos: u32,
}

pub fn vocab() -> Vocab {
    let map = byte_to_char();
    let mut tokens: Vec<String> = map.iter().map(|c| c.to_string()).collect();
    let mut types = vec![1i32; 256];
    let merges: Vec<String> =
        ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "o n", "Ġ s"].iter().map(|s| s.to_string()).collect();
    for m in &merges {
        tokens.push(m.replace(' ', ""));
        types.push(1);
    }
    let bos = tokens.len() as u32;
    tokens.push("<|begin_of_text|>".into());
    types.push(3);
    let eos = tokens.len() as u32;
    tokens.push("<|end_of_text|>".into());
    types.push(3);
    Vocab { tokens, types, merges, bos, eos }
}

/// Weights of the generated model, kept in memory for the float64 forward pass.
pub struct Tensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub data: Vec<f32>,
}

fn ternary_tensor(rng: &mut Rng, name: String, cols: usize, rows: usize) -> Tensor {
    // A scale exactly representable in f32 and in f16 keeps every conversion exact.
    let scale = 0.0625f32;
    let data = (0..cols * rows).map(|_| f32::from(rng.ternary()) * scale).collect();
    Tensor { name, dims: vec![cols as u64, rows as u64], data }
}

fn norm_tensor(rng: &mut Rng, name: String, n: usize) -> Tensor {
    let data = (0..n).map(|_| 1.0 + 0.25 * rng.uniform(-1.0, 1.0)).collect();
    Tensor { name, dims: vec![n as u64], data }
}

/// All tensors of a model of this shape (token_embd F32, tied lm_head).
pub fn tensors(spec: &Spec, n_vocab: usize) -> Vec<Tensor> {
    let mut rng = Rng::new(spec.seed);
    let e = spec.n_embd;
    let kv = spec.head_dim() * spec.n_head_kv;
    let v_rows = spec.value_length.unwrap_or(spec.head_dim()) * spec.n_head_kv;
    let mut out = vec![Tensor {
        name: "token_embd.weight".into(),
        dims: vec![e as u64, n_vocab as u64],
        data: (0..e * n_vocab).map(|_| rng.uniform(-1.0, 1.0)).collect(),
    }];
    out.push(norm_tensor(&mut rng, "output_norm.weight".into(), e));
    for l in 0..spec.n_layer {
        let b = |s: &str| format!("blk.{l}.{s}.weight");
        out.push(norm_tensor(&mut rng, b("attn_norm"), e));
        out.push(ternary_tensor(&mut rng, b("attn_q"), e, e));
        out.push(ternary_tensor(&mut rng, b("attn_k"), e, kv));
        out.push(ternary_tensor(&mut rng, b("attn_v"), e, v_rows));
        out.push(norm_tensor(&mut rng, b("attn_sub_norm"), e));
        out.push(ternary_tensor(&mut rng, b("attn_output"), e, e));
        out.push(norm_tensor(&mut rng, b("ffn_norm"), e));
        out.push(ternary_tensor(&mut rng, b("ffn_gate"), e, spec.n_ff));
        out.push(ternary_tensor(&mut rng, b("ffn_up"), e, spec.n_ff));
        out.push(norm_tensor(&mut rng, b("ffn_sub_norm"), spec.n_ff));
        out.push(ternary_tensor(&mut rng, b("ffn_down"), spec.n_ff, e));
    }
    out
}

/// Write the F32 model to `dir/name.gguf`.
pub fn write_f32_model(dir: &Path, name: &str, spec: &Spec) -> PathBuf {
    let v = vocab();
    let n_vocab = v.tokens.len();
    let path = dir.join(format!("{name}.gguf"));
    let mut w = GgufWriter::new(3);
    let k = |s: &str| format!("{ARCH}.{s}");
    let meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(ARCH.into())),
        ("general.name".into(), Value::String(name.into())),
        ("general.file_type".into(), Value::U32(0)),
        (k("context_length"), Value::U32(spec.n_ctx as u32)),
        (k("embedding_length"), Value::U32(spec.n_embd as u32)),
        (k("block_count"), Value::U32(spec.n_layer as u32)),
        (k("feed_forward_length"), Value::U32(spec.n_ff as u32)),
        (k("attention.head_count"), Value::U32(spec.n_head as u32)),
        (k("attention.head_count_kv"), Value::U32(spec.n_head_kv as u32)),
        (k("attention.layer_norm_rms_epsilon"), Value::F32(spec.eps)),
        (k("rope.freq_base"), Value::F32(spec.rope_base)),
        (k("rope.dimension_count"), Value::U32(spec.head_dim() as u32)),
        (k("vocab_size"), Value::U32(n_vocab as u32)),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("llama-bpe".into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(Array::String(v.tokens.clone()))),
        ("tokenizer.ggml.token_type".into(), Value::Array(Array::I32(v.types.clone()))),
        ("tokenizer.ggml.merges".into(), Value::Array(Array::String(v.merges.clone()))),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(v.bos)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(v.eos)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(true)),
    ];
    let mut meta = meta;
    if let Some(v) = spec.value_length {
        meta.push((k("attention.value_length"), Value::U32(v as u32)));
    }
    for (key, value) in meta {
        w.add_metadata(key, value).unwrap();
    }
    let ts = tensors(spec, n_vocab);
    for t in &ts {
        w.add_tensor_info(&t.name, &t.dims, GgmlType::F32, (t.data.len() * 4) as u64).unwrap();
    }
    let mut out = w.begin(BufWriter::new(File::create(&path).unwrap())).unwrap();
    for t in &ts {
        let bytes: Vec<u8> = t.data.iter().flat_map(|x| x.to_le_bytes()).collect();
        out.write_tensor_data(&t.name, &bytes).unwrap();
    }
    out.finish().unwrap();
    path
}

/// A worker process running this crate's `bitnet-cpp-worker` binary on our built library.
pub fn worker() -> RefWorker {
    worker_with(LibraryChoice::Built, &[])
}

pub fn worker_with(choice: LibraryChoice, env: &[(&str, &str)]) -> RefWorker {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bitnet-cpp-worker"));
    cmd.env_remove("BITNET_CPP_DIR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    RefWorker::spawn(cmd, choice).expect("worker starts")
}

/// True when this crate was built against a user's prebuilt library (`BITNET_CPP_DIR`), which
/// is one build of unknown `-march`: tests of the per-march builds have nothing to check then.
pub fn built_from_prebuilt() -> bool {
    bitnet_cpp::BuildInfo::baked().unwrap().source.kind == "prebuilt"
}

/// The reference build for `-march=<march>`; a test that needs a build that was not made fails
/// with a message naming `BITNET_CPP_MARCH`.
pub fn build_for(march: &str) -> bitnet_cpp::BuiltReference {
    bitnet_cpp::built_reference(march).unwrap_or_else(|e| {
        panic!("{e} (the test suite needs the builds of the default BITNET_CPP_MARCH=native,x86-64-v3)")
    })
}

pub fn cosine(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let x = x as f64;
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    ab / (aa.sqrt() * bb.sqrt())
}

pub fn argmax<T: Copy + PartialOrd>(v: &[T]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

// ---------------------------------------------------------------------------------------
// The independent float64 forward pass (REFERENCE.md, "The bitnet-b1.58 graph").

/// Read a tensor of the file as f64 (F32 or F16 storage).
fn read_f64(f: &GgufFile, name: &str) -> Vec<f64> {
    let info = f.tensor(name).unwrap_or_else(|| panic!("tensor {name} missing"));
    let bytes = f.tensor_data(info);
    match info.ggml_type {
        GgmlType::F32 => {
            bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64).collect()
        }
        GgmlType::F16 => {
            bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64()).collect()
        }
        other => panic!("float64 forward reads F32/F16 only, {name} is {other:?}"),
    }
}

/// W (rows × cols, row-major as ggml stores it) @ x (cols) → rows.
fn matvec(w: &[f64], x: &[f64]) -> Vec<f64> {
    let cols = x.len();
    w.chunks_exact(cols).map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum()).collect()
}

fn rmsnorm(x: &[f64], weight: &[f64], eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let inv = 1.0 / (ms + eps).sqrt();
    x.iter().zip(weight).map(|(v, w)| v * inv * w).collect()
}

/// Round to the nearest f16 (what an F16 cache cell holds).
fn round_f16(x: f64) -> f64 {
    half::f16::from_f64(x).to_f64()
}

/// NEOX RoPE on one head: rotate the pairs (i, i + d/2).
fn rope_neox(v: &mut [f64], pos: usize, base: f64) {
    let d = v.len();
    for i in 0..d / 2 {
        let theta = pos as f64 * base.powf(-2.0 * i as f64 / d as f64);
        let (s, c) = theta.sin_cos();
        let (a, b) = (v[i], v[i + d / 2]);
        v[i] = a * c - b * s;
        v[i + d / 2] = a * s + b * c;
    }
}

/// Per position: the final normed hidden state (`result_norm`) and the logits.
pub struct Forward {
    pub result_norm: Vec<Vec<f64>>,
    pub logits: Vec<Vec<f64>>,
}

/// The whole sequence, causal, in float64, reading every weight from the file.
pub fn forward_f64(f: &GgufFile, spec: &Spec, tokens: &[i32]) -> Forward {
    let eps = spec.eps as f64;
    let (e, hd) = (spec.n_embd, spec.head_dim());
    let group = spec.n_head / spec.n_head_kv;
    let embd = read_f64(f, "token_embd.weight");
    let out_norm = read_f64(f, "output_norm.weight");
    let layers: Vec<_> = (0..spec.n_layer)
        .map(|l| {
            let g = |s: &str| read_f64(f, &format!("blk.{l}.{s}.weight"));
            [
                g("attn_norm"),
                g("attn_q"),
                g("attn_k"),
                g("attn_v"),
                g("attn_sub_norm"),
                g("attn_output"),
                g("ffn_norm"),
                g("ffn_gate"),
                g("ffn_up"),
                g("ffn_sub_norm"),
                g("ffn_down"),
            ]
        })
        .collect();
    let mut k_cache: Vec<Vec<Vec<f64>>> = vec![Vec::new(); spec.n_layer];
    let mut v_cache: Vec<Vec<Vec<f64>>> = vec![Vec::new(); spec.n_layer];
    let mut result = Forward { result_norm: Vec::new(), logits: Vec::new() };
    for (pos, &tok) in tokens.iter().enumerate() {
        let mut x = embd[tok as usize * e..(tok as usize + 1) * e].to_vec();
        for (l, w) in layers.iter().enumerate() {
            let [attn_norm, wq, wk, wv, attn_sub, wo, ffn_norm, wg, wu, ffn_sub, wd] = w;
            let h = rmsnorm(&x, attn_norm, eps);
            let mut q = matvec(wq, &h);
            let mut k = matvec(wk, &h);
            let v = matvec(wv, &h);
            for head in q.chunks_exact_mut(hd) {
                rope_neox(head, pos, spec.rope_base as f64);
            }
            for head in k.chunks_exact_mut(hd) {
                rope_neox(head, pos, spec.rope_base as f64);
            }
            // The reference's KV cache stores K and V as F16 (its default context setting).
            k_cache[l].push(k.iter().map(|&x| round_f16(x)).collect());
            v_cache[l].push(v.iter().map(|&x| round_f16(x)).collect());
            let mut attn = vec![0.0; e];
            for h_i in 0..spec.n_head {
                let kv_h = h_i / group;
                // Non-flash attention converts Q to F16 for K·Q.
                let qh: Vec<f64> = q[h_i * hd..(h_i + 1) * hd].iter().map(|&x| round_f16(x)).collect();
                let scores: Vec<f64> = (0..=pos)
                    .map(|p| {
                        let kh = &k_cache[l][p][kv_h * hd..(kv_h + 1) * hd];
                        qh.iter().zip(kh).map(|(a, b)| a * b).sum::<f64>() / (hd as f64).sqrt()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let exps: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = exps.iter().sum();
                for (p, ex) in exps.iter().enumerate() {
                    let vh = &v_cache[l][p][kv_h * hd..(kv_h + 1) * hd];
                    // ...and the softmax output to F16 for V·softmax.
                    let weight = round_f16(ex / z);
                    for (o, vv) in attn[h_i * hd..(h_i + 1) * hd].iter_mut().zip(vh) {
                        *o += weight * vv;
                    }
                }
            }
            let a = rmsnorm(&attn, attn_sub, eps);
            let o = matvec(wo, &a);
            let ffn_inp: Vec<f64> = x.iter().zip(&o).map(|(a, b)| a + b).collect();
            let fnorm = rmsnorm(&ffn_inp, ffn_norm, eps);
            let gate = matvec(wg, &fnorm);
            let up = matvec(wu, &fnorm);
            let act: Vec<f64> = gate
                .iter()
                .zip(&up)
                .map(|(g, u)| {
                    let r = g.max(0.0);
                    r * r * u
                })
                .collect();
            let act = rmsnorm(&act, ffn_sub, eps);
            let down = matvec(wd, &act);
            x = ffn_inp.iter().zip(&down).map(|(a, b)| a + b).collect();
        }
        let xn = rmsnorm(&x, &out_norm, eps);
        result.logits.push(matvec(&embd, &xn));
        result.result_norm.push(xn);
    }
    result
}
