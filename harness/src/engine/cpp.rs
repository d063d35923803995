//! bitnet.cpp, live, as an [`Engine`]: the reference library loaded in a worker process (so a
//! crash in C++ ends only the worker), started from this program or from the harness binary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::anyhow;
use bitnet_cpp::worker::{LibraryChoice, PendingEval, RefWorker, WorkerError};
use bitnet_cpp::{BuildInfo, CaptureFilter, ContextParams};

use super::{Engine, EngineError, EngineResult, Identity, NamedTensors};
use crate::exit::{Exit, Failure};
use crate::receipt::ReferenceEngine;

/// Starts a reference worker process, in its own process group (so a Ctrl-C in the terminal
/// reaches the harness, which then stops cleanly, and not the worker). The program is
/// [`worker_program`]'s.
pub fn spawn_worker(library: LibraryChoice) -> Result<RefWorker, WorkerError> {
    use std::os::unix::process::CommandExt;
    let (program, args) = worker_program().map_err(WorkerError::Spawn)?;
    let mut cmd = Command::new(program);
    cmd.args(args).process_group(0);
    // The reference's own log (model loading, vocabulary warnings) is noise in a parity run;
    // BITNET_CPP_LOG=warn|info|debug brings it back.
    if std::env::var_os("BITNET_CPP_LOG").is_none() {
        cmd.env("BITNET_CPP_LOG", "error");
    }
    RefWorker::spawn(cmd, library)
}

/// The program that serves the worker protocol, and its arguments: `BITNET_PARITY_WORKER` if
/// set (the `harness` binary, run as `harness cpp-worker`, or `bitnet-cpp-worker`); else this
/// program when it is the harness; else a `harness` or `bitnet-cpp-worker` binary next to this
/// program or one folder up (a test binary in `target/debug/deps/` finds `target/debug/harness`).
pub fn worker_program() -> Result<(PathBuf, Vec<&'static str>), String> {
    let args_for = |p: &Path| {
        let is_harness = p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("harness"));
        if is_harness {
            vec!["cpp-worker"]
        } else {
            Vec::new()
        }
    };
    if let Some(p) = std::env::var_os("BITNET_PARITY_WORKER").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        return Ok((p.clone(), args_for(&p)));
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    if exe.file_name().is_some_and(|n| n == "harness") {
        return Ok((exe, vec!["cpp-worker"]));
    }
    let dirs = exe.parent().into_iter().chain(exe.parent().and_then(Path::parent));
    for dir in dirs {
        for name in ["harness", "bitnet-cpp-worker"] {
            let p = dir.join(name);
            if p.is_file() {
                let args = args_for(&p);
                return Ok((p, args));
            }
        }
    }
    Err(format!(
        "no bitnet.cpp worker program next to {}: build one (`cargo build -p harness` or \
         `cargo build -p bitnet-cpp --bin bitnet-cpp-worker`) or set BITNET_PARITY_WORKER",
        exe.display()
    ))
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

/// bitnet.cpp in a worker process with a model loaded.
pub struct CppSide {
    worker: RefWorker,
    identity: ReferenceEngine,
    n_vocab: usize,
    pending: Option<PendingEval>,
    batch_logits: Option<Vec<f32>>,
    /// Tokens of the batch [`Engine::start_eval_batch`] started.
    pending_batch: usize,
}

/// The row of position `row` of a tensor captured from a batch of `n_tokens` tokens: the token
/// is the outermost dimension of every per-token tensor ggml builds (`[n_embd, n_tokens]`,
/// `[head_dim, n_head, n_tokens]`, `[n_vocab, n_outputs]`). `None` when the outermost
/// dimension that is not 1 does not count `n_tokens` (a tensor that is not per token).
pub fn token_row(ne: [i64; 4], data: &[f32], row: usize, n_tokens: usize) -> Option<Vec<f32>> {
    if n_tokens == 1 && row == 0 {
        return Some(data.to_vec());
    }
    let outer = (0..4).rev().find(|&d| ne[d] > 1)?;
    if ne[outer] as usize != n_tokens || row >= n_tokens || !data.len().is_multiple_of(n_tokens) {
        return None;
    }
    let len = data.len() / n_tokens;
    Some(data[row * len..(row + 1) * len].to_vec())
}

impl CppSide {
    /// Starts a worker for `library` and loads `model` with a context of `n_ctx` positions;
    /// raising `cancel` (Ctrl-C) ends any wait for the worker, now or later, and stops it.
    pub fn start(
        library: LibraryChoice,
        model: &Path,
        n_ctx: usize,
        threads: usize,
        cancel: Arc<AtomicBool>,
    ) -> Result<CppSide, WorkerError> {
        let params = ContextParams {
            n_ctx: n_ctx as u32,
            n_threads: threads as u32,
            n_ubatch: bitnet_cpp::DEFAULT_N_UBATCH,
        };
        CppSide::start_with(library, model, params, cancel)
    }

    /// [`CppSide::start`] with every setting of the context (`n_ubatch` decides how batches
    /// are split, see [`Engine::eval_batch`]).
    pub fn start_with(
        library: LibraryChoice,
        model: &Path,
        params: ContextParams,
        cancel: Arc<AtomicBool>,
    ) -> Result<CppSide, WorkerError> {
        let threads = params.n_threads as usize;
        let mut worker = spawn_worker(library)?;
        worker.set_cancel(cancel);
        let info = worker.load_model(model, params)?;
        let identity = engine_identity(worker.build_info(), Some(worker.library_path()), threads);
        let n_vocab = info.n_vocab as usize;
        Ok(CppSide { worker, identity, n_vocab, pending: None, batch_logits: None, pending_batch: 0 })
    }

    /// The worker, for requests beyond the [`Engine`] interface.
    pub fn worker(&mut self) -> &mut RefWorker {
        &mut self.worker
    }
}

/// What the eval callback keeps: the tensors of `names`, or every node when `names` is empty.
fn capture_filter(names: &[String]) -> CaptureFilter {
    if names.is_empty() {
        CaptureFilter::All
    } else {
        CaptureFilter::Names(names.to_vec())
    }
}

/// A worker error as an engine error, naming what was asked.
fn engine_error(e: WorkerError) -> EngineError {
    match e {
        WorkerError::Interrupted { .. } => EngineError::Interrupted,
        e if e.is_fatal() => EngineError::Crashed(e.to_string()),
        e => EngineError::Failed(e.to_string()),
    }
}

impl Engine for CppSide {
    fn identity(&self) -> Identity {
        Identity::Cpp(Box::new(self.identity.clone()))
    }

    fn n_vocab(&self) -> usize {
        self.n_vocab
    }

    fn runs_elsewhere(&self) -> bool {
        true
    }

    fn tokenize(&mut self, text: &str, add_bos: bool, parse_special: bool) -> EngineResult<Option<Vec<u32>>> {
        let ids = self.worker.tokenize(text, add_bos, parse_special).map_err(engine_error)?;
        Ok(Some(ids.into_iter().map(|t| t as u32).collect()))
    }

    fn tokenize_many(
        &mut self,
        texts: &[String],
        add_bos: bool,
        parse_special: bool,
    ) -> EngineResult<Option<Vec<Vec<u32>>>> {
        let all = self.worker.tokenize_many(texts, add_bos, parse_special).map_err(engine_error)?;
        Ok(Some(all.into_iter().map(|ids| ids.into_iter().map(|t| t as u32).collect()).collect()))
    }

    fn detokenize(&mut self, ids: &[u32]) -> EngineResult<Option<String>> {
        let ids: Vec<i32> = ids.iter().map(|&t| t as i32).collect();
        let bytes = self.worker.detokenize(&ids, false, false).map_err(engine_error)?;
        Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
    }

    fn reset(&mut self, _case: usize) -> EngineResult<()> {
        self.worker.reset().map_err(engine_error)
    }

    fn start_eval(&mut self, tokens: &[u32], pos: usize) -> EngineResult<()> {
        let pending = match tokens {
            [token] => self.worker.start_eval_token(*token as i32, pos as u32).map_err(engine_error)?,
            _ => {
                // Batches are evaluated synchronously (the worker has no split form for them);
                // the last row is the one wanted.
                let ids: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
                let mut logits = self.worker.eval_batch(&ids, pos as u32).map_err(engine_error)?;
                let last = logits.len().saturating_sub(self.n_vocab);
                logits.drain(..last);
                self.batch_logits = Some(logits);
                return Ok(());
            }
        };
        self.pending = Some(pending);
        Ok(())
    }

    fn finish_eval(&mut self) -> EngineResult<Vec<f32>> {
        if let Some(l) = self.batch_logits.take() {
            return Ok(l);
        }
        let pending =
            self.pending.take().ok_or_else(|| EngineError::Protocol("no evaluation was started".into()))?;
        self.worker.finish_eval(pending).map_err(engine_error)
    }

    fn last_eval_seconds(&self) -> Option<f64> {
        Some(self.worker.last_eval_time().as_secs_f64())
    }

    fn eval_batch(&mut self, tokens: &[u32], pos: usize) -> EngineResult<Option<Vec<f32>>> {
        self.start_eval_batch(tokens, pos)?;
        self.finish_eval_batch().map(Some)
    }

    fn start_eval_batch(&mut self, tokens: &[u32], pos: usize) -> EngineResult<bool> {
        let ids: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
        self.pending = Some(self.worker.start_eval_batch(&ids, pos as u32).map_err(engine_error)?);
        self.pending_batch = tokens.len();
        Ok(true)
    }

    fn finish_eval_batch(&mut self) -> EngineResult<Vec<f32>> {
        let pending = self
            .pending
            .take()
            .ok_or_else(|| EngineError::Protocol("no batched evaluation was started".into()))?;
        let logits = self.worker.finish_eval(pending).map_err(engine_error)?;
        let tokens = std::mem::take(&mut self.pending_batch);
        if logits.len() != tokens * self.n_vocab {
            return Err(EngineError::Protocol(format!(
                "the worker answered a batch of {tokens} tokens with {} logits",
                logits.len()
            )));
        }
        Ok(logits)
    }

    /// The reference's batched graph runs one ubatch at a time, and the eval callback sees each
    /// ubatch's nodes with one row per token of that ubatch: the caller feeds the ubatch that
    /// holds the position alone (see `run::tracing`), and its row is sliced out here.
    fn eval_batch_traced(
        &mut self,
        tokens: &[u32],
        pos: usize,
        row: usize,
        names: &[String],
    ) -> EngineResult<Option<NamedTensors>> {
        let filter = capture_filter(names);
        let ids: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
        let (_, captured) =
            self.worker.eval_batch_capture(&ids, pos as u32, &filter).map_err(engine_error)?;
        let n = tokens.len();
        let rows = captured.into_iter().filter_map(|c| token_row(c.ne, &c.data, row, n).map(|d| (c.name, d)));
        Ok(Some(rows.collect()))
    }

    fn trace_names(&mut self) -> EngineResult<Option<Vec<String>>> {
        // The reference reports every node its eval callback sees.
        Ok(Some(Vec::new()))
    }

    fn eval_traced(
        &mut self,
        token: u32,
        pos: usize,
        names: &[String],
    ) -> EngineResult<Vec<(String, Vec<f32>)>> {
        let filter = capture_filter(names);
        let (_, captured) =
            self.worker.eval_token_capture(token as i32, pos as u32, &filter).map_err(engine_error)?;
        Ok(captured.into_iter().map(|c| (c.name, c.data)).collect())
    }

    fn shutdown(self: Box<Self>) {
        let _ = self.worker.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::{portable_path, token_row};

    #[test]
    fn a_captured_tensor_gives_the_row_of_its_token() {
        // [2, 3] (3 tokens of 2 values), [2, 1, 3], and one that is not per token.
        let data: Vec<f32> = (0..6).map(|v| v as f32).collect();
        assert_eq!(token_row([2, 3, 1, 1], &data, 1, 3), Some(vec![2.0, 3.0]));
        assert_eq!(token_row([2, 1, 3, 1], &data, 2, 3), Some(vec![4.0, 5.0]));
        assert_eq!(token_row([3, 2, 1, 1], &data, 0, 3), None);
        assert_eq!(token_row([6, 1, 1, 1], &data, 0, 1), Some(data.clone()));
    }
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
