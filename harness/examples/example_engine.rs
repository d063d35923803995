//! An engine in its own process, speaking the engine protocol (`docs/engine-protocol.md`) on
//! stdin and stdout: the protocol's working example, and the README's demo of a wrong engine.
//!
//! It is this workspace's Rust engine ([`RustSide`]) behind
//! [`harness::engine::protocol::serve`], in one of two modes:
//!
//! - **Without `--mistake`** it loads the model as it is: a correct engine, whose logits are
//!   bit-identical to the in-process Rust engine's.
//! - **With `--mistake iq2s-sequential`** it decodes every I2_S tensor the way a widespread
//!   mistake does: with the IQ2_S code table `{−2, −1, +1, +2}` (code 0 → −2, 1 → −1, 2 → +1,
//!   3 → +2) instead of I2_S's `{−1, 0, +1}`, and with sequential packing (byte `i` holds
//!   elements `4i..4i+3`, lowest bits first) instead of I2_S's 128-element chunks of 32 bytes
//!   (byte `b` holding elements `b, b+32, b+64, b+96` from the highest bits down), times the
//!   tensor's real scale (the f32 after the `n/4` code bytes). The wrongly decoded values are
//!   written as F32 tensors into a temporary copy of the GGUF (same names, shapes and metadata),
//!   which the Rust engine loads and maps; the copy is deleted once mapped. (The F32 copy is
//!   16 times the size of the I2_S data: fine for fixtures, heavy for a 2B model.)
//!
//! Run it with the harness (the first build of the example takes a moment):
//!
//! ```sh
//! cargo build -p harness --example example_engine
//! # a correct engine against bitnet.cpp: the receipt passes
//! cargo run -p harness -- run --model fixtures/tiny-256-gqa-i2_s.gguf \
//!     --engine-cmd "target/debug/examples/example_engine"
//! # the classic mistake: the receipt fails at position 0; --trace names the first op
//! cargo run -p harness -- run --model fixtures/tiny-256-gqa-i2_s.gguf --trace \
//!     --engine-cmd "target/debug/examples/example_engine --mistake iq2s-sequential"
//! ```
//!
//! Its hello: name `example-engine`, capabilities `tokenize` and `trace` (the reference's op
//! names, from the Rust engine). Logs go to stderr; stdout carries the protocol alone.

use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;

use bitnet_engine::gguf::{GgmlType, GgufFile, GgufWriter};
use bitnet_engine::model::ModelOptions;
use harness::engine::protocol::{serve, HelloAnswer, LoadRequest, CAP_TOKENIZE, CAP_TRACE};
use harness::engine::rust::RustSide;
use harness::engine::Engine;

/// The mistakes this engine can make on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mistake {
    /// IQ2_S's code table and sequential packing for I2_S data.
    Iq2sSequential,
}

impl Mistake {
    fn name(self) -> &'static str {
        match self {
            Mistake::Iq2sSequential => "iq2s-sequential",
        }
    }
}

const USAGE: &str = "usage: example_engine [--mistake iq2s-sequential]\n\
    An engine speaking the harness's engine protocol on stdin/stdout (docs/engine-protocol.md).";

fn main() -> ExitCode {
    let mistake = match parse_args(std::env::args().skip(1)) {
        Ok(Some(m)) => m,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("example_engine: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut hello = HelloAnswer::new("example-engine", env!("CARGO_PKG_VERSION"));
    hello.build = Some(format!(
        "harness example over bitnet-engine; I2_S decoding: {}",
        mistake.map_or("correct", Mistake::name)
    ));
    hello.profile = Some(ModelOptions::default().profile.name().to_string());
    hello.capabilities = vec![CAP_TOKENIZE.into(), CAP_TRACE.into()];
    match serve(hello, Box::new(move |req: &LoadRequest| load(req, mistake))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("example_engine: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The mistake to make (`Some(None)`: none), or `None` for `--help`.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Option<Mistake>>, String> {
    let mut mistake = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--mistake" => match args.next().as_deref() {
                Some("iq2s-sequential") => mistake = Some(Mistake::Iq2sSequential),
                other => return Err(format!("unknown mistake {other:?} (known: iq2s-sequential)")),
            },
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Some(mistake))
}

/// Opens the model (rewritten with the mistake, if any) and the Rust engine on it. The file is
/// leaked: the engine borrows it until the process exits.
fn load(req: &LoadRequest, mistake: Option<Mistake>) -> Result<Box<dyn Engine>, String> {
    let original = GgufFile::open(&req.model).map_err(|e| e.to_string())?;
    let file = match mistake {
        None => original,
        Some(Mistake::Iq2sSequential) => {
            let dir = tempfile::tempdir().map_err(|e| format!("no temporary directory: {e}"))?;
            let path = dir.path().join("iq2s-sequential.gguf");
            let n = write_misdecoded(&original, &path)?;
            eprintln!("example_engine: decoded {n} I2_S tensors with the IQ2_S table and sequential packing");
            // Mapped: the copy can go (the map keeps its pages until the process exits).
            GgufFile::open(&path).map_err(|e| e.to_string())?
        }
    };
    let file: &'static GgufFile = Box::leak(Box::new(file));
    let options =
        ModelOptions { n_ctx: req.n_ctx.max(1), threads: req.threads.max(1), ..ModelOptions::default() };
    Ok(Box::new(RustSide::load(file, options)?))
}

/// Writes `file` to `path` with every I2_S tensor replaced by its wrongly decoded F32 values;
/// returns how many tensors were replaced.
fn write_misdecoded(file: &GgufFile, path: &Path) -> Result<usize, String> {
    let mut writer = GgufWriter::new(file.version());
    for (key, value) in file.metadata() {
        writer.add_metadata(key.clone(), value.clone()).map_err(|e| e.to_string())?;
    }
    let mut replaced = 0;
    for t in file.tensors() {
        if t.ggml_type == GgmlType::I2_S {
            writer.add_tensor_info(&t.name, &t.dims, GgmlType::F32, t.n_elements() * 4)
        } else {
            writer.add_tensor_info(&t.name, &t.dims, t.ggml_type, t.n_bytes)
        }
        .map_err(|e| e.to_string())?;
    }
    let out = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut data = writer.begin(BufWriter::new(out)).map_err(|e| e.to_string())?;
    for t in file.tensors() {
        let bytes = file.tensor_data(t);
        if t.ggml_type == GgmlType::I2_S {
            let values = iq2s_sequential(bytes, t.n_elements() as usize).ok_or_else(|| {
                format!("tensor {}: {} bytes cannot hold I2_S data and its scale", t.name, bytes.len())
            })?;
            data.write_tensor_with(&t.name, |w| {
                let mut row = Vec::with_capacity(values.len() * 4);
                values.iter().for_each(|v| row.extend_from_slice(&v.to_le_bytes()));
                w.write_all(&row)
            })
            .map_err(|e| e.to_string())?;
            replaced += 1;
        } else {
            data.write_tensor_data(&t.name, bytes).map_err(|e| e.to_string())?;
        }
    }
    data.finish().map_err(|e| e.to_string())?.flush().map_err(|e| e.to_string())?;
    Ok(replaced)
}

/// The mistake: `n` values from I2_S bytes read with IQ2_S's code table and sequential packing,
/// times the real per-tensor scale (the f32 right after the `n / 4` code bytes). `None` when the
/// bytes are too few.
fn iq2s_sequential(bytes: &[u8], n: usize) -> Option<Vec<f32>> {
    const IQ2S_TABLE: [f32; 4] = [-2.0, -1.0, 1.0, 2.0];
    let codes = bytes.get(..n.div_ceil(4))?;
    let s = bytes.get(n / 4..n / 4 + 4)?;
    let scale = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    let values =
        (0..n).map(|i| IQ2S_TABLE[usize::from((codes[i / 4] >> (2 * (i % 4))) & 3)] * scale).collect();
    Some(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_packing_with_the_iq2s_table() {
        // Codes 0,1,2,3 in byte 0 (lowest bits first), then 3,3,3,3; scale 0.5.
        let mut bytes = vec![0b11_10_01_00, 0xff];
        bytes.extend_from_slice(&0.5f32.to_le_bytes());
        assert_eq!(iq2s_sequential(&bytes, 8).unwrap(), [-1.0, -0.5, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0]);
        assert_eq!(iq2s_sequential(&bytes[..5], 8), None);
    }
}
