//! The reference side of a run: a live bitnet.cpp worker process, or logits saved earlier.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;

use anyhow::{anyhow, bail, Context};
use bitnet_cpp::worker::{LibraryChoice, RefWorker, WorkerError};
use bitnet_cpp::{BuildInfo, ContextParams};
use serde::{Deserialize, Serialize};

use crate::exit::{Exit, Failure};
use crate::files::{AtomicFile, FileError};
use crate::receipt::ReferenceEngine;

/// How the reference process is started: the harness binary itself, re-executed as the
/// hidden `cpp-worker` subcommand, in its own process group (so a Ctrl-C in the terminal
/// reaches the harness, which then stops cleanly, and not the worker).
pub fn spawn_worker(library: LibraryChoice) -> Result<RefWorker, WorkerError> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe()
        .map_err(|e| WorkerError::Spawn(format!("cannot find the harness binary: {e}")))?;
    let mut cmd = Command::new(exe);
    cmd.arg("cpp-worker").process_group(0);
    // The reference's own log (model loading, vocabulary warnings) is noise in a parity run;
    // BITNET_CPP_LOG=warn|info|debug brings it back.
    if std::env::var_os("BITNET_CPP_LOG").is_none() {
        cmd.env("BITNET_CPP_LOG", "error");
    }
    RefWorker::spawn(cmd, library)
}

/// The library a live run loads: the build for `--reference-build MARCH` (`BITNET_CPP_BUILD`),
/// else the default (`BITNET_CPP_DIR` at run time if set, else the first build). A build this
/// harness was not built with is exit 4, in one line naming those it was built with.
pub fn library_choice(build: Option<&str>) -> Result<LibraryChoice, Failure> {
    match build.filter(|m| !m.is_empty()) {
        None => Ok(LibraryChoice::Default),
        Some(march) => match bitnet_cpp::built_reference(march) {
            Ok(_) => Ok(LibraryChoice::Build(march.to_string())),
            Err(e) => {
                Err(Failure::new(Exit::ReferenceUnavailable, anyhow!("--reference-build {march}: {e}")))
            }
        },
    }
}

/// What the reference computes, for the receipt.
pub fn engine_identity(info: &BuildInfo, library: Option<&Path>, threads: usize) -> ReferenceEngine {
    let source = match (info.source.kind.as_str(), &info.source.package) {
        ("registry", Some(pkg)) => format!("registry:{pkg}"),
        (kind, _) => format!("{kind}:{}", info.source.path.display()),
    };
    let portable = |s: &str| portable_path(s, &info.source.path);
    let flags =
        info.compile.iter().map(|g| portable(&format!("{}: {}", g.group, g.args.join(" ")))).collect();
    ReferenceEngine {
        source,
        version: info.source.version.clone(),
        compiler: info.compiler.as_ref().map(|c| c.cxx_version.clone()),
        flags,
        isa: info.isa.as_ref().map(|i| i.macros.clone()).unwrap_or_default(),
        library_path: library.map(|p| portable(&p.display().to_string())),
        threads,
        kv_cache_type: "f16".into(),
        flash_attention: false,
    }
}

/// `text` with the machine's own folders replaced by names that mean the same on any
/// machine, so that receipts committed as baselines leak no home folder and a diff between
/// two machines does not report paths as identity changes: the reference's source root
/// becomes `$BITNET_CPP`, the build cache `<target>/bitnet-cpp-ref/` becomes
/// `$TARGET/bitnet-cpp-ref/`, and the home folder `~`.
pub fn portable_path(text: &str, source_root: &Path) -> String {
    let mut out = text.to_string();
    let root = source_root.display().to_string();
    if root.len() > 1 {
        out = out.replace(&root, "$BITNET_CPP");
    }
    // Every absolute path that runs into the build cache (flags are space-separated).
    const CACHE: &str = "/bitnet-cpp-ref/";
    let mut rebuilt = String::with_capacity(out.len());
    for (i, word) in out.split(' ').enumerate() {
        if i > 0 {
            rebuilt.push(' ');
        }
        match (word.find('/'), word.find(CACHE)) {
            (Some(start), Some(at)) if start < at => {
                rebuilt.push_str(&word[..start]);
                rebuilt.push_str("$TARGET");
                rebuilt.push_str(&word[at..]);
            }
            _ => rebuilt.push_str(word),
        }
    }
    out = rebuilt;
    if let Some(home) =
        std::env::var_os("HOME").map(|h| h.to_string_lossy().into_owned()).filter(|h| h.len() > 1)
    {
        out = out.replace(&format!("{}/", home.trim_end_matches('/')), "~/");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::portable_path;
    use std::path::Path;

    #[test]
    fn machine_folders_become_portable_names() {
        let root = Path::new("/home/ci/.cargo/registry/src/x/bitnet-llm-sys-1.0.2/bitnet.cpp");
        let flags = "ggml-c: -O3 -I/home/ci/.cargo/registry/src/x/bitnet-llm-sys-1.0.2/bitnet.cpp/include -march=native";
        assert_eq!(portable_path(flags, root), "ggml-c: -O3 -I$BITNET_CPP/include -march=native");
        let lib = "/work/main/target/bitnet-cpp-ref/0123/libbitnet_cpp_ref.so";
        assert_eq!(portable_path(lib, root), "$TARGET/bitnet-cpp-ref/0123/libbitnet_cpp_ref.so");
        assert_eq!(portable_path("-L/opt/x y", root), "-L/opt/x y");
    }
}

/// A live worker with a model loaded.
pub struct LiveReference {
    pub worker: RefWorker,
}

impl LiveReference {
    /// Starts a worker and loads the model; raising `cancel` (Ctrl-C) ends any wait for the
    /// worker, now or later, and stops it.
    pub fn start(
        library: LibraryChoice,
        model: &Path,
        n_ctx: usize,
        threads: usize,
        cancel: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<LiveReference, WorkerError> {
        let mut worker = spawn_worker(library)?;
        worker.set_cancel(cancel);
        worker.load_model(model, ContextParams { n_ctx: n_ctx as u32, n_threads: threads as u32 })?;
        Ok(LiveReference { worker })
    }
}

// ---------------------------------------------------------------------------------------
// Saved reference files (`--save-reference FILE`, `--reference FILE`).
//
// Layout: MAGIC | u32 format version | logits of every position of every case, f32 LE, in
// order | JSON footer | u64 footer length | MAGIC. The logits are written as they arrive, so a
// long run never holds them all; the footer (written last) says what they are.

const MAGIC: &[u8; 16] = b"BITNET-PARITY-RF";
const FORMAT_VERSION: u32 = 1;

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
        if version != FORMAT_VERSION {
            bail!(
                "{}: saved reference format {version} is not supported (expected {FORMAT_VERSION})",
                path.display()
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
