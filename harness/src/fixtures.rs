//! `harness fixtures`: writes the deterministic fixture models (see the `bitnet-fixtures` crate):
//! the generated ones, then those the reference's own quantizer makes from generated F32 models
//! (`bitnet_fixtures::quantized`), through a reference worker process.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use bitnet_cpp::worker::LibraryChoice;
use bitnet_cpp::QuantizeOptions;
use bitnet_engine::gguf::{GgmlType, GgufFile};
use bitnet_fixtures::quantized::QuantizedFixture;
use bitnet_fixtures::{spec, write_spec, WeightForm};

use crate::exit::{Exit, Failure, OrExit};

#[derive(Debug, clap::Args)]
pub struct FixturesArgs {
    /// Output folder [default: fixtures, or ~/.cache/bitnet-parity/models with --shape].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write a model with real shapes instead of the tiny fixtures: `2b` is BitNet b1.58 2B-4T
    /// (n_embd 2560, n_ff 6912, 20/5 heads, vocab 128256).
    #[arg(long, value_parser = ["2b"])]
    pub shape: Option<String>,
    /// Number of layers for --shape.
    #[arg(long, default_value_t = 30, requires = "shape")]
    pub layers: u64,
    /// With --shape, also write the F32 form (about 8 GB per 30 layers).
    #[arg(long, requires = "shape")]
    pub with_f32: bool,
    /// Write only the generated fixtures, not those quantized by the reference (which need the
    /// C++ library).
    #[arg(long, conflicts_with = "shape")]
    pub no_reference: bool,
}

pub fn run(args: &FixturesArgs) -> Result<Exit, Failure> {
    let (specs, forms, out) = if args.shape.is_some() {
        let out = match &args.out {
            Some(dir) => dir.clone(),
            None => default_cache_dir().or_exit(Exit::BadInput)?,
        };
        let forms =
            if args.with_f32 { vec![WeightForm::I2S, WeightForm::F32] } else { vec![WeightForm::I2S] };
        (vec![spec::bitnet_2b(args.layers)], forms, out)
    } else {
        let out = args.out.clone().unwrap_or_else(|| PathBuf::from("fixtures"));
        (spec::committed(), vec![WeightForm::I2S, WeightForm::F32], out)
    };
    for s in &specs {
        for &form in &forms {
            eprintln!("writing {} ({})…", s.name, form.suffix());
            let path = write_spec(s, form, &out)
                .with_context(|| format!("cannot write fixture {} into {}", s.name, out.display()))
                .or_exit(Exit::BadInput)?;
            println!("{}", path.display());
        }
    }
    if args.shape.is_none() && !args.no_reference {
        for path in write_quantized(&out, &bitnet_fixtures::quantized::all())? {
            println!("{}", path.display());
        }
    }
    Ok(Exit::Ok)
}

/// The options of `llama_model_quantize` for a reference-quantized fixture: ftype I2_S, one
/// thread (more corrupts I2_S), the fixture's head types.
pub fn quantize_options(q: &QuantizedFixture) -> QuantizeOptions {
    QuantizeOptions {
        output_tensor_type: q.output_type.map(|t| t as u32),
        token_embedding_type: q.token_embd_type.map(|t| t as u32),
        ..QuantizeOptions::default()
    }
}

/// The reference build that quantizes the fixtures: the one for `-march=x86-64-v3`, whose code
/// is the same on every host. (The quantizer is compiled with the build's `-march`, and its
/// output can depend on it: on an AVX-512 host the `native` build's Q4_K blocks differ in a few
/// bytes from the x86-64-v3 build's.)
pub const QUANTIZER_BUILD: &str = "x86-64-v3";

/// Writes each fixture of `fixtures` into `out` (as `<name>-i2_s.gguf`): its F32 source is
/// generated into a scratch folder in `out`, then quantized by the reference built for
/// [`QUANTIZER_BUILD`] (never `BITNET_CPP_DIR`: the committed bytes are this build's; the default
/// build when that one was not built, with a warning) in a worker process,
/// into a temporary file whose I2_S padding is zeroed ([`zero_i2s_padding`]) and which is then
/// renamed into place. Returns the paths written.
pub fn write_quantized(out: &Path, fixtures: &[QuantizedFixture]) -> Result<Vec<PathBuf>, Failure> {
    if fixtures.is_empty() {
        return Ok(Vec::new());
    }
    let scratch = out.join(format!(".quantize-sources.{}", std::process::id()));
    let result = (|| {
        std::fs::create_dir_all(&scratch)
            .with_context(|| format!("cannot create {}", scratch.display()))
            .or_exit(Exit::OutputFailed)?;
        let library = if bitnet_cpp::built_reference(QUANTIZER_BUILD).is_ok() {
            LibraryChoice::Build(QUANTIZER_BUILD.into())
        } else {
            eprintln!(
                "warning: no reference built for -march={QUANTIZER_BUILD} (BITNET_CPP_MARCH); quantizing with \
                 the default build, whose bytes may differ from the committed fixtures'"
            );
            LibraryChoice::Built
        };
        let mut worker = crate::engine::cpp::spawn_worker(library).map_err(|e| {
            Failure::new(Exit::ReferenceUnavailable, anyhow!("cannot start the C++ reference: {e}"))
        })?;
        let mut written = Vec::new();
        for q in fixtures {
            eprintln!("quantizing {} with the reference ({})…", q.name, q.covers);
            let source = write_spec(&q.source, WeightForm::F32, &scratch)
                .with_context(|| {
                    format!("cannot write the F32 source of {} into {}", q.name, scratch.display())
                })
                .or_exit(Exit::OutputFailed)?;
            let target = out.join(q.file_name());
            let tmp = out.join(format!(".{}.{}.tmp", q.file_name(), std::process::id()));
            if let Err(e) = worker.quantize(&source, &tmp, quantize_options(q)) {
                let _ = std::fs::remove_file(&tmp);
                return Err(Failure::new(
                    Exit::ReferenceUnavailable,
                    anyhow!(
                        "the reference could not quantize {} into {}: {e}",
                        source.display(),
                        target.display()
                    ),
                ));
            }
            let normalized = (|| -> anyhow::Result<()> {
                let mut bytes = std::fs::read(&tmp)?;
                zero_i2s_padding(&mut bytes)?;
                std::fs::write(&tmp, &bytes)?;
                std::fs::rename(&tmp, &target)?;
                Ok(())
            })();
            if let Err(e) = normalized {
                let _ = std::fs::remove_file(&tmp);
                return Err(Failure::new(
                    Exit::OutputFailed,
                    e.context(format!("cannot write {}", target.display())),
                ));
            }
            written.push(target);
        }
        let _ = worker.shutdown();
        Ok(written)
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// Zeroes the padding of every I2_S tensor of a GGUF file in memory: the 28 bytes after the f32
/// scale that end each tensor (`n/4` bytes of codes, the scale, padding to `n/4 + 32`). The
/// reference's `quantize_i2_s` clears the codes and writes the scale but never the padding, so a
/// file it writes holds whatever its heap held there, different from run to run; nothing reads
/// those bytes. Returns how many non-zero bytes were cleared.
pub fn zero_i2s_padding(bytes: &mut Vec<u8>) -> anyhow::Result<usize> {
    let file = GgufFile::from_bytes(std::mem::take(bytes), "quantized fixture")?;
    let mut ranges = Vec::new();
    for t in file.tensors().iter().filter(|t| t.ggml_type == GgmlType::I2_S) {
        let start = file.data_offset() + t.offset + t.n_elements() / 4 + 4;
        let end = file.data_offset() + t.offset + t.n_bytes;
        ranges.push(start as usize..end as usize);
    }
    *bytes = file.as_bytes().to_vec();
    let mut cleared = 0;
    for r in ranges {
        for b in &mut bytes[r] {
            cleared += usize::from(*b != 0);
            *b = 0;
        }
    }
    Ok(cleared)
}

/// `$XDG_CACHE_HOME/bitnet-parity/models` or `~/.cache/bitnet-parity/models`: outside any repo.
pub fn default_cache_dir() -> anyhow::Result<PathBuf> {
    Ok(crate::files::cache_root()?.join("models"))
}
