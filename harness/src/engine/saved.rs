//! A saved reference as an [`Engine`]: the logits, token ids and build identity that a live
//! run wrote with `--save-reference`, replayed on another machine or later.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};

use super::{Engine, EngineError, EngineResult, Identity};
use crate::files::{AtomicFile, FileError};
use crate::receipt::ReferenceEngine;

// ---------------------------------------------------------------------------------------
// Saved reference files (`--save-reference FILE`, `--reference FILE`).
//
// Layout: MAGIC | u32 format version | logits of every position of every case, f32 LE, in
// order | JSON footer | u64 footer length | MAGIC. The logits are written as they arrive, so a
// long run never holds them all; the footer (written last) says what they are.
//
// Format 2 adds the footer's `mode` (with `batch` and `ubatch`): which path of the reference
// computed the logits. Format 1 files, which have none, hold decode logits and are still read.

const MAGIC: &[u8; 16] = b"BITNET-PARITY-RF";
/// The format written.
pub const FORMAT_VERSION: u32 = 2;
/// The formats read.
const FORMATS_READ: [u32; 2] = [1, 2];

/// The `mode` of a footer whose logits come from one-token evaluations.
pub const MODE_DECODE: &str = "decode";
/// The `mode` of a footer whose logits come from the batched path (`run --mode batch`).
pub const MODE_BATCH: &str = "batch";

fn decode_mode() -> String {
    MODE_DECODE.into()
}

/// The footer of a saved reference file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedFooter {
    pub format_version: u32,
    /// The receipt schema version of the harness that wrote it.
    pub schema_version: String,
    pub model_sha256: String,
    pub model_path: String,
    pub n_vocab: usize,
    pub reference: ReferenceEngine,
    pub cases: Vec<SavedCase>,
    /// [`MODE_DECODE`] (one token at a time) or [`MODE_BATCH`] (the batched path, in batches
    /// of `batch` tokens split into ubatches of `ubatch`). Since format 2; format 1 is decode.
    #[serde(default = "decode_mode")]
    pub mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ubatch: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedCase {
    pub prompt: String,
    pub token_ids: Vec<u32>,
    pub n_prompt_tokens: usize,
    /// Positions with logits stored (may be fewer than tokens if the run stopped early).
    pub n_positions: usize,
}

/// Streams logits to a temporary file ([`AtomicFile`]) renamed into place when finished. Every
/// error names the file being saved.
pub struct SavedWriter {
    out: BufWriter<File>,
    file: AtomicFile,
}

impl SavedWriter {
    pub fn create(path: &Path) -> Result<SavedWriter, FileError> {
        let mut file = AtomicFile::create(path)?;
        let handle = file.file().try_clone().map_err(|e| file.write_error(e))?;
        let mut w = SavedWriter { out: BufWriter::new(handle), file };
        w.write(MAGIC)?;
        w.write(&FORMAT_VERSION.to_le_bytes())?;
        Ok(w)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), FileError> {
        self.out.write_all(bytes).map_err(|e| self.file.write_error(e))
    }

    pub fn push_logits(&mut self, logits: &[f32]) -> Result<(), FileError> {
        for v in logits {
            self.write(&v.to_le_bytes())?;
        }
        Ok(())
    }

    /// Writes the footer and renames the file into place; on any failure (a full disk) the
    /// temporary file is removed, so no half-written file is left.
    pub fn finish(mut self, footer: &SavedFooter) -> Result<(), FileError> {
        let json = serde_json::to_vec(footer).expect("a footer serializes");
        self.write(&json)?;
        self.write(&(json.len() as u64).to_le_bytes())?;
        self.write(MAGIC)?;
        self.out.flush().map_err(|e| self.file.write_error(e))?;
        self.file.commit()
    }

    /// Removes the temporary file (a run that could not finish saves nothing).
    pub fn abandon(self) {
        drop(self);
    }
}

/// A saved reference opened for reading.
pub struct SavedReference {
    pub footer: SavedFooter,
    file: BufReader<File>,
    /// Byte offset of each case's first logit.
    case_offsets: Vec<u64>,
}

impl SavedReference {
    /// Opens `path`, checking its framing, format version and sizes.
    pub fn open(path: &Path) -> anyhow::Result<SavedReference> {
        let ctx = || format!("{}: not a usable saved reference", path.display());
        // Checked before opening: opening a FIFO would wait for a writer, and a stream cannot
        // be read by seeking.
        let meta = std::fs::metadata(path).with_context(|| format!("cannot open {}", path.display()))?;
        if !meta.is_file() {
            bail!("{}: not a regular file (a saved reference is read by seeking)", path.display());
        }
        let mut f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let len = f.metadata()?.len();
        let min = (MAGIC.len() * 2 + 4 + 8) as u64;
        if len < min {
            bail!("{}: too short to be a saved reference ({len} bytes)", path.display());
        }
        let mut head = [0u8; 20];
        f.read_exact(&mut head).with_context(ctx)?;
        if &head[..16] != MAGIC {
            bail!("{}: not a saved reference file (bad magic)", path.display());
        }
        let version = u32::from_le_bytes(head[16..20].try_into().expect("4 bytes"));
        if !FORMATS_READ.contains(&version) {
            bail!(
                "{}: saved reference format {version} is not supported (this harness reads {:?})",
                path.display(),
                FORMATS_READ
            );
        }
        let mut tail = [0u8; 24];
        f.seek(SeekFrom::End(-24)).with_context(ctx)?;
        f.read_exact(&mut tail).with_context(ctx)?;
        if &tail[8..] != MAGIC {
            bail!("{}: saved reference is truncated (no end marker)", path.display());
        }
        let footer_len = u64::from_le_bytes(tail[..8].try_into().expect("8 bytes"));
        let data_end =
            len.checked_sub(24).and_then(|v| v.checked_sub(footer_len)).filter(|&e| e >= 20).ok_or_else(
                || anyhow!("{}: footer length {footer_len} does not fit the file", path.display()),
            )?;
        let mut json = vec![0u8; footer_len as usize];
        f.seek(SeekFrom::Start(data_end)).with_context(ctx)?;
        f.read_exact(&mut json).with_context(ctx)?;
        let footer: SavedFooter = serde_json::from_slice(&json)
            .with_context(|| format!("{}: unreadable footer", path.display()))?;
        let batch_sizes = footer.batch.zip(footer.ubatch).filter(|&(b, u)| u >= 1 && u <= b);
        match footer.mode.as_str() {
            MODE_DECODE => {}
            MODE_BATCH if batch_sizes.is_some() => {}
            MODE_BATCH => bail!("{}: footer mode batch without valid batch and ubatch sizes", path.display()),
            other => bail!("{}: footer mode {other:?} is not decode or batch", path.display()),
        }
        let mut case_offsets = Vec::new();
        let mut at = 20u64;
        for (i, c) in footer.cases.iter().enumerate() {
            if c.n_prompt_tokens > c.token_ids.len() || c.n_positions > c.token_ids.len() {
                bail!(
                    "{}: case {} claims {} prompt tokens and {} positions but holds {} token ids",
                    path.display(),
                    i + 1,
                    c.n_prompt_tokens,
                    c.n_positions,
                    c.token_ids.len()
                );
            }
            case_offsets.push(at);
            let bytes = (c.n_positions as u64).checked_mul(footer.n_vocab as u64 * 4);
            at = bytes
                .and_then(|b| at.checked_add(b))
                .ok_or_else(|| anyhow!("{}: sizes overflow", path.display()))?;
        }
        if at != data_end {
            bail!(
                "{}: holds {} bytes of logits, its footer describes {}",
                path.display(),
                data_end - 20,
                at - 20
            );
        }
        Ok(SavedReference { footer, file: BufReader::new(f), case_offsets })
    }

    /// Logits of `case` at `pos`.
    pub fn logits(&mut self, case: usize, pos: usize) -> anyhow::Result<Vec<f32>> {
        let c =
            self.footer.cases.get(case).ok_or_else(|| anyhow!("no case {case} in the saved reference"))?;
        if pos >= c.n_positions {
            bail!("the saved reference has {} positions for case {case}, not {}", c.n_positions, pos + 1);
        }
        let n = self.footer.n_vocab;
        self.file.seek(SeekFrom::Start(self.case_offsets[case] + (pos * n * 4) as u64))?;
        let mut bytes = vec![0u8; n * 4];
        self.file.read_exact(&mut bytes)?;
        Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect())
    }
}

/// A saved reference being replayed.
pub struct SavedSide {
    saved: SavedReference,
    path: PathBuf,
    case: usize,
    pending: Option<EngineResult<Vec<f32>>>,
}

impl SavedSide {
    /// Opens `path` (framing, format and sizes checked).
    pub fn open(path: &Path) -> anyhow::Result<SavedSide> {
        Ok(SavedSide { saved: SavedReference::open(path)?, path: path.to_path_buf(), case: 0, pending: None })
    }

    pub fn footer(&self) -> &SavedFooter {
        &self.saved.footer
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file holds batched logits (`run --mode batch`).
    pub fn is_batched(&self) -> bool {
        self.saved.footer.mode == MODE_BATCH
    }

    fn logits(&mut self, tokens: &[u32], pos: usize) -> EngineResult<Vec<f32>> {
        if self.is_batched() {
            return Err(EngineError::Failed(format!(
                "{}: holds batched logits, not one-token ones (compare it with --mode batch)",
                self.path.display()
            )));
        }
        let last = pos + tokens.len().saturating_sub(1);
        self.row(last)
    }

    /// The saved logits of the current case at `pos`. They are those of the saved tokens: a run
    /// checks its ids against them first (the tokenizer agreement), and `--ids-from` compares
    /// anyway on purpose.
    fn row(&mut self, pos: usize) -> EngineResult<Vec<f32>> {
        let c = self.case;
        if c >= self.saved.footer.cases.len() {
            return Err(EngineError::Failed(format!("{}: holds no case {}", self.path.display(), c + 1)));
        }
        self.saved.logits(c, pos).map_err(|e| EngineError::Failed(format!("{}: {e}", self.path.display())))
    }
}

impl Engine for SavedSide {
    fn identity(&self) -> Identity {
        let mut r = self.saved.footer.reference.clone();
        r.source = format!("saved:{}", self.path.display());
        Identity::Cpp(Box::new(r))
    }

    fn n_vocab(&self) -> usize {
        self.saved.footer.n_vocab
    }

    /// The saved prompt ids of the case whose prompt is `text` (the run's settings: BOS added,
    /// no special-token parsing); `None` for any other text or settings.
    fn tokenize(&mut self, text: &str, add_bos: bool, parse_special: bool) -> EngineResult<Option<Vec<u32>>> {
        if !add_bos || parse_special {
            return Ok(None);
        }
        let case = self.saved.footer.cases.iter().find(|c| c.prompt == text);
        Ok(case.map(|c| c.token_ids[..c.n_prompt_tokens].to_vec()))
    }

    fn tokenize_many(&mut self, _: &[String], _: bool, _: bool) -> EngineResult<Option<Vec<Vec<u32>>>> {
        // A saved file holds its prompts only: no corpus to check.
        Ok(None)
    }

    fn reset(&mut self, case: usize) -> EngineResult<()> {
        self.case = case;
        Ok(())
    }

    fn start_eval(&mut self, tokens: &[u32], pos: usize) -> EngineResult<()> {
        self.pending = Some(self.logits(tokens, pos));
        Ok(())
    }

    fn finish_eval(&mut self) -> EngineResult<Vec<f32>> {
        self.pending.take().unwrap_or_else(|| Err(EngineError::Protocol("no evaluation was started".into())))
    }

    /// The saved batched logits (a file saved by `run --mode batch`; the run checks that its
    /// batch sizes are the file's); `None` for a file of one-token logits.
    fn eval_batch(&mut self, tokens: &[u32], pos: usize) -> EngineResult<Option<Vec<f32>>> {
        if !self.is_batched() {
            return Ok(None);
        }
        let mut all = Vec::with_capacity(tokens.len() * self.saved.footer.n_vocab);
        for p in pos..pos + tokens.len() {
            all.extend(self.row(p)?);
        }
        Ok(Some(all))
    }
}
