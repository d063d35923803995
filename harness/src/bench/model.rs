//! The model a benchmark runs on: a given file, or a generated one with the real 2B-4T shapes
//! (made once into the cache folder), and the bytes a decode step must read from it.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use bitnet_engine::gguf::{GgmlType, GgufFile};
use bitnet_engine::model::{Config, KV_PAD};
use bitnet_fixtures::spec::{self, ModelSpec};
use bitnet_fixtures::{file_name, vocab_for, write_model, WeightForm};

use super::report::BytesPerToken;

/// Where the model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelChoice {
    File(PathBuf),
    /// The 2B-4T shapes with this many layers, cached in the folder.
    Shape2b {
        layers: u64,
        cache_dir: PathBuf,
    },
}

/// A resolved model file.
#[derive(Debug, Clone)]
pub struct BenchModelFile {
    pub path: PathBuf,
    /// `file` or `2b-shape`.
    pub kind: &'static str,
}

pub fn resolve(choice: &ModelChoice) -> anyhow::Result<BenchModelFile> {
    match choice {
        ModelChoice::File(p) => {
            if !p.is_file() {
                bail!("{}: no such model file", p.display());
            }
            Ok(BenchModelFile { path: p.clone(), kind: "file" })
        }
        ModelChoice::Shape2b { layers, cache_dir } => {
            if *layers == 0 || *layers > 1000 {
                bail!("--layers {layers}: expected 1 to 1000");
            }
            let spec = spec::bitnet_2b(*layers);
            let path = cache_dir.join(file_name(&spec, WeightForm::I2S));
            if is_complete(&path, &spec) {
                eprintln!("model: {} (cached)", path.display());
            } else {
                generate(&spec, &path)?;
            }
            Ok(BenchModelFile { path, kind: "2b-shape" })
        }
    }
}

/// A cached model is reused when it opens, holds exactly the tensors the spec lists (names,
/// shapes, types) and ends where its last tensor ends: a truncated or foreign file is remade.
fn is_complete(path: &Path, spec: &ModelSpec) -> bool {
    let Ok(file) = GgufFile::open(path) else { return false };
    let Some(n_vocab) = spec.pad_vocab_to else { return false };
    let plans = spec::tensors(spec, n_vocab as u64);
    let tensors = file.tensors();
    let same = tensors.len() == plans.len()
        && tensors.iter().zip(&plans).all(|(t, p)| {
            let ty_ok = match p.role {
                spec::Role::Embedding => t.ggml_type == GgmlType::F16,
                spec::Role::Norm | spec::Role::Scale => t.ggml_type == GgmlType::F32,
                spec::Role::Linear => t.ggml_type == GgmlType::I2_S,
            };
            t.name == p.name && t.dims == p.dims && ty_ok
        });
    let end = tensors.iter().map(|t| file.data_offset() + t.offset + t.n_bytes).max().unwrap_or(0);
    same && file.file_len() >= end && file.file_len() - end < file.alignment().max(32)
}

/// Counts bytes on their way to the file and reports progress on stderr.
struct Progress<W: Write> {
    inner: W,
    written: u64,
    expected: u64,
    last_percent: u64,
    started: Instant,
}

impl<W: Write> Write for Progress<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        let percent = (self.written * 100 / self.expected.max(1)).min(100);
        if percent >= self.last_percent + 5 {
            self.last_percent = percent;
            eprint!(
                "\r  {percent:3}% ({} of ~{} MB, {:.0} s)",
                self.written >> 20,
                self.expected >> 20,
                self.started.elapsed().as_secs_f64()
            );
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes the spec's I2_S form atomically (a temporary file in the same folder, then rename).
fn generate(spec: &ModelSpec, path: &Path) -> anyhow::Result<()> {
    let dir = path.parent().context("model path has no folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let n_vocab = spec.pad_vocab_to.unwrap_or(0) as u64;
    let expected: u64 = spec::tensors(spec, n_vocab)
        .iter()
        .map(|p| {
            let ty = match p.role {
                spec::Role::Embedding => GgmlType::F16,
                spec::Role::Norm | spec::Role::Scale => GgmlType::F32,
                spec::Role::Linear => GgmlType::I2_S,
            };
            ty.tensor_bytes(&p.dims).unwrap_or(0)
        })
        .sum();
    eprintln!("generating {} (once; about {} MB) …", path.display(), expected >> 20);
    let tmp = dir.join(format!(".{}.{}.tmp", file_name(spec, WeightForm::I2S), std::process::id()));
    let result = (|| -> anyhow::Result<()> {
        let file = File::create(&tmp)?;
        let out = Progress {
            inner: BufWriter::with_capacity(1 << 20, &file),
            written: 0,
            expected,
            last_percent: 0,
            started: Instant::now(),
        };
        write_model(spec, &vocab_for(spec), WeightForm::I2S, out)?;
        file.sync_all()?;
        Ok(())
    })();
    eprintln!();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.context(format!("cannot write {}", tmp.display())));
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename {} into place", tmp.display()))?;
    Ok(())
}

/// Bytes of the KV cache of an engine with `n_ctx` cells: f16 keys and values per layer.
pub fn kv_cache_bytes(c: &Config, n_ctx: usize) -> u64 {
    (c.n_layer * 2 * n_ctx.next_multiple_of(KV_PAD) * c.n_embd_kv() * 2) as u64
}

/// What one decode step reads, averaged over positions `0..decode_tokens`.
pub fn bytes_per_token(file: &GgufFile, c: &Config, decode_tokens: usize) -> BytesPerToken {
    let (mut ternary, mut lm_head, mut other, mut embedding_row) = (0u64, 0u64, 0u64, 0u64);
    for t in file.tensors() {
        if t.name == "token_embd.weight" {
            // The tied lm_head reads the whole table; the embedding lookup one row of it.
            lm_head += t.n_bytes;
            embedding_row = t.n_bytes / t.n_rows().max(1);
        } else if t.name == "output.weight" {
            // Loaded but unused by the bitnet-b1.58 graph (the head is tied in the reference).
        } else if t.ggml_type == GgmlType::I2_S {
            ternary += t.n_bytes;
        } else {
            other += t.n_bytes;
        }
    }
    // Per layer and position, K and V over the attended cells (padded to 32), f16.
    let n = decode_tokens.max(1);
    let kv_sum: u64 = (0..n)
        .map(|pos| {
            let cells = (pos + 1).next_multiple_of(KV_PAD);
            (c.n_layer * 2 * cells * c.n_embd_kv() * 2) as u64
        })
        .sum();
    let kv_cache_mean = kv_sum / n as u64;
    BytesPerToken {
        ternary_weights: ternary,
        lm_head,
        other_weights: other,
        embedding_row,
        kv_cache_mean,
        total: ternary + lm_head + other + embedding_row + kv_cache_mean,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_per_token_of_a_fixture_adds_up() {
        let spec = &spec::committed()[0];
        let path = bitnet_fixtures::ensure(spec, WeightForm::I2S);
        let file = GgufFile::open(&path).unwrap();
        let c = Config::from_gguf(&file).unwrap();
        let b = bytes_per_token(&file, &c, 4);
        let i2s: u64 =
            file.tensors().iter().filter(|t| t.ggml_type == GgmlType::I2_S).map(|t| t.n_bytes).sum();
        assert_eq!(b.ternary_weights, i2s);
        assert_eq!(b.lm_head, (c.n_vocab * c.n_embd * 2) as u64);
        assert_eq!(b.embedding_row, (c.n_embd * 2) as u64);
        // Four positions all attend 32 padded cells.
        assert_eq!(b.kv_cache_mean, (c.n_layer * 2 * 32 * c.n_embd_kv() * 2) as u64);
        let sum = b.ternary_weights + b.lm_head + b.other_weights + b.embedding_row + b.kv_cache_mean;
        assert_eq!(b.total, sum);
    }

    #[test]
    fn a_truncated_cached_model_is_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let spec = spec::bitnet_2b(1);
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, b"GGUF").unwrap();
        assert!(!is_complete(&path, &spec));
        assert!(!is_complete(&dir.path().join("missing.gguf"), &spec));
    }
}
