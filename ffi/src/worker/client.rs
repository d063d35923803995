//! The parent side: a handle on a worker process whose methods mirror the safe wrapper.

use std::io::{self, BufReader, BufWriter};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};

use super::protocol::{read_frame, tag, write_frame, Dec, Enc, ERR, OK, PROTOCOL_VERSION};
use super::LibraryChoice;
use crate::{
    BuildInfo, CaptureFilter, CapturedTensor, ContextParams, ModelInfo, QuantizeOptions, TensorEntry,
};

/// What went wrong talking to the worker. A crash or exit of the reference is distinguished
/// from a request the reference refused, so the caller can keep what it already has.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WorkerError {
    /// The worker died from a signal (GGML_ASSERT aborts with SIGABRT, 6; a segfault is 11).
    #[error("reference crashed (signal {signal}{}) during {during}", signal_name(*.signal))]
    Crashed { signal: i32, during: String },
    /// The worker exited by itself.
    #[error("reference exited (code {code}) during {during}")]
    Exited { code: i32, during: String },
    /// The reference refused or failed this request; the worker is still usable.
    #[error("reference error during {during}: {message}")]
    Request { during: String, message: String },
    /// The worker could not be started.
    #[error("cannot start the reference worker: {0}")]
    Spawn(String),
    /// The worker answered something unreadable.
    #[error("reference worker protocol error during {during}: {message}")]
    Protocol { during: String, message: String },
    /// The worker stopped answering (a stopped process, or no answer within the timeout set
    /// with [`RefWorker::set_timeout`]); it has been killed.
    #[error("reference worker stopped answering during {during}: {reason}; it was killed")]
    Unresponsive { during: String, reason: String },
    /// The caller's cancel flag was raised (Ctrl-C) while waiting; the worker was killed.
    #[error("interrupted during {during}; the reference worker was stopped")]
    Interrupted { during: String },
    /// A request after the worker died; carries the original failure.
    #[error("the reference worker is gone ({0})")]
    Gone(Box<WorkerError>),
}

impl WorkerError {
    /// True when the worker process is gone (crashed, exited, or died earlier).
    pub fn is_fatal(&self) -> bool {
        !matches!(self, WorkerError::Request { .. })
    }

    /// The signal that killed the worker, if that is what happened.
    pub fn signal(&self) -> Option<i32> {
        match self {
            WorkerError::Crashed { signal, .. } => Some(*signal),
            WorkerError::Gone(inner) => inner.signal(),
            _ => None,
        }
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        4 => ", SIGILL",
        6 => ", SIGABRT",
        7 => ", SIGBUS",
        8 => ", SIGFPE",
        9 => ", SIGKILL",
        11 => ", SIGSEGV",
        15 => ", SIGTERM",
        _ => "",
    }
}

/// A running reference worker.
pub struct RefWorker {
    child: Child,
    stdin: Option<BufWriter<ChildStdin>>,
    /// The answers; `None` while a [`Reading`] thread holds it (or after that thread was
    /// abandoned with the worker killed).
    stdout: Option<BufReader<ChildStdout>>,
    /// The answer to a started batch, read as soon as the worker sends it.
    reading: Option<Reading>,
    dead: Option<WorkerError>,
    build_info: BuildInfo,
    library: PathBuf,
    system_info: String,
    model: Option<ModelInfo>,
    /// A `start_eval_token` awaits its `finish_eval`.
    in_flight: bool,
    last_eval: std::time::Duration,
    /// Raised by the caller (a Ctrl-C handler) to stop waiting for an answer.
    cancel: Option<Arc<AtomicBool>>,
    /// The longest wait for one answer, if bounded.
    timeout: Option<Duration>,
}

/// How often a wait for the worker looks at the cancel flag and the worker's state.
const POLL_SLICE: Duration = Duration::from_millis(100);
/// How long the worker may stay stopped (SIGSTOP, SIGTSTP) before it counts as unresponsive.
const STOPPED_GRACE: Duration = Duration::from_secs(3);

/// An evaluation started with [`RefWorker::start_eval_token`], to be finished exactly once.
#[must_use = "finish the evaluation with RefWorker::finish_eval"]
#[derive(Debug)]
pub struct PendingEval {
    during: String,
}

impl std::fmt::Debug for RefWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefWorker").field("pid", &self.child.id()).field("library", &self.library).finish()
    }
}

type R<T> = Result<T, WorkerError>;

impl RefWorker {
    /// Start `cmd` (a program that calls [`super::serve_stdio`], e.g. `harness cpp-worker`),
    /// with piped stdin/stdout and inherited stderr, and make it load the chosen library.
    pub fn spawn(mut cmd: Command, library: LibraryChoice) -> R<RefWorker> {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child =
            cmd.spawn().map_err(|e| WorkerError::Spawn(format!("{:?}: {e}", cmd.get_program())))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(WorkerError::Spawn("no pipes to the child".into()));
        };
        let mut w = RefWorker {
            child,
            stdin: Some(BufWriter::with_capacity(1 << 16, stdin)),
            stdout: Some(BufReader::with_capacity(1 << 20, stdout)),
            reading: None,
            dead: None,
            build_info: BuildInfo::baked().map_err(|e| WorkerError::Spawn(e.to_string()))?,
            library: PathBuf::new(),
            system_info: String::new(),
            model: None,
            in_flight: false,
            last_eval: std::time::Duration::ZERO,
            cancel: None,
            timeout: None,
        };
        let mut hello = Enc::new().u32(PROTOCOL_VERSION);
        hello = match &library {
            LibraryChoice::Default => hello.u8(0),
            LibraryChoice::Built => hello.u8(1),
            LibraryChoice::Dir(d) => hello.u8(2).str(&d.to_string_lossy()),
            LibraryChoice::Build(march) => hello.u8(3).str(march),
        };
        let reply = w.call(tag::HELLO, hello, "start-up (loading the reference library)")?;
        let mut d = Dec::new(&reply);
        let during = "start-up";
        w.build_info = d.json("build info").map_err(|m| proto(during, m))?;
        w.library = PathBuf::from(d.str("library path").map_err(|m| proto(during, m))?);
        w.system_info = d.str("system info").map_err(|m| proto(during, m))?;
        Ok(w)
    }

    /// A flag that, once raised (by a Ctrl-C handler, say), ends any wait for an answer with
    /// [`WorkerError::Interrupted`] and kills the worker.
    pub fn set_cancel(&mut self, flag: Arc<AtomicBool>) {
        self.cancel = Some(flag);
    }

    /// The longest wait for one answer (`None`: unbounded, the default; a stopped worker is
    /// detected either way).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    /// Process id of the worker (for tests and diagnostics).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How the library the worker loaded was built.
    pub fn build_info(&self) -> &BuildInfo {
        &self.build_info
    }

    /// The library the worker loaded.
    pub fn library_path(&self) -> &Path {
        &self.library
    }

    /// llama.cpp's CPU feature line, from the worker.
    pub fn system_info(&self) -> &str {
        &self.system_info
    }

    /// Vocabulary size of the loaded model.
    pub fn vocab_size(&self) -> Option<usize> {
        self.model.as_ref().map(|m| m.n_vocab as usize)
    }

    /// Send one request and read its response, turning a dead worker into Crashed/Exited.
    fn call(&mut self, t: u8, payload: Enc, during: &str) -> R<Vec<u8>> {
        if self.in_flight {
            return Err(proto(during, "a started evaluation was not finished"));
        }
        self.send(t, payload, during)?;
        self.receive(during)
    }

    /// Write one request frame.
    fn send(&mut self, t: u8, payload: Enc, during: &str) -> R<()> {
        if let Some(dead) = &self.dead {
            return Err(WorkerError::Gone(Box::new(dead.clone())));
        }
        let sent = match self.stdin.as_mut() {
            Some(w) => write_frame(w, t, &payload.0),
            None => Err(std::io::ErrorKind::BrokenPipe.into()),
        };
        sent.map_err(|_| {
            // A broken pipe: the worker is gone; say how.
            let err = self.reap(during);
            self.dead = Some(err.clone());
            err
        })
    }

    /// Waits until the worker's answer starts to arrive, watching the cancel flag, the timeout
    /// and whether the worker process is stopped; kills the worker on any of those.
    fn wait_for_answer(&mut self, during: &str) -> R<()> {
        let Some(stdout) = self.stdout.as_ref() else { return Err(self.lost(during)) };
        if !stdout.buffer().is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let mut stopped_since: Option<Instant> = None;
        loop {
            let Some(stdout) = self.stdout.as_ref() else { return Err(self.lost(during)) };
            let fd = stdout.get_ref().as_fd();
            let mut fds = [PollFd::new(&fd, PollFlags::IN)];
            let slice = Timespec { tv_sec: 0, tv_nsec: POLL_SLICE.as_nanos() as _ };
            match poll(&mut fds, Some(&slice)) {
                // Readable, or the pipe closed (read_frame then says how the worker ended).
                Ok(n) if n > 0 => return Ok(()),
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(proto(during, format!("cannot wait for the worker: {e}"))),
            }
            self.check_waiting(started, &mut stopped_since, during)?;
        }
    }

    /// While an answer is awaited: the cancel flag, the timeout and a stopped worker, each of
    /// which kills the worker and ends the wait with its error.
    fn check_waiting(
        &mut self,
        started: Instant,
        stopped_since: &mut Option<Instant>,
        during: &str,
    ) -> R<()> {
        let failure = if self.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)) {
            Some(WorkerError::Interrupted { during: during.to_string() })
        } else if process_stopped(self.child.id()) {
            let since = *stopped_since.get_or_insert_with(Instant::now);
            (since.elapsed() >= STOPPED_GRACE).then(|| WorkerError::Unresponsive {
                during: during.to_string(),
                reason: format!("its process {} is stopped (SIGSTOP?)", self.child.id()),
            })
        } else {
            *stopped_since = None;
            self.timeout.filter(|t| started.elapsed() >= *t).map(|t| WorkerError::Unresponsive {
                during: during.to_string(),
                reason: format!("no answer in {} s", t.as_secs_f64()),
            })
        };
        match failure {
            Some(err) => Err(self.kill(err)),
            None => Ok(()),
        }
    }

    /// Kills the worker for `err`, which every later request then reports; returns `err`.
    fn kill(&mut self, err: WorkerError) -> WorkerError {
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.dead = Some(err.clone());
        err
    }

    /// The answers cannot be read any more: a reading thread was abandoned when the worker was
    /// killed (every later request reports that failure).
    fn lost(&self, during: &str) -> WorkerError {
        match &self.dead {
            Some(dead) => WorkerError::Gone(Box::new(dead.clone())),
            None => proto(during, "the worker's answers are being read elsewhere"),
        }
    }

    /// Read the response to the request sent last.
    fn receive(&mut self, during: &str) -> R<Vec<u8>> {
        self.wait_for_answer(during)?;
        let Some(stdout) = self.stdout.as_mut() else { return Err(self.lost(during)) };
        let frame = read_frame(stdout);
        self.answer(frame, during)
    }

    /// A response frame as the request's result, or how the worker failed.
    fn answer(&mut self, frame: io::Result<Option<(u8, Vec<u8>)>>, during: &str) -> R<Vec<u8>> {
        match frame {
            Ok(Some((OK, body))) => Ok(body),
            Ok(Some((ERR, body))) => Err(WorkerError::Request {
                during: during.to_string(),
                message: String::from_utf8_lossy(&body).into_owned(),
            }),
            Ok(Some((other, _))) => Err(proto(during, format!("unknown response tag {other}"))),
            // End of stream or a broken pipe: the worker is gone; say how.
            Ok(None) | Err(_) => {
                let err = self.reap(during);
                self.dead = Some(err.clone());
                Err(err)
            }
        }
    }

    /// Starts evaluating `token` at `pos` and returns at once: the worker computes while the
    /// caller does other work (the harness runs the Rust engine meanwhile), then
    /// [`RefWorker::finish_eval`] collects the logits. One evaluation may be in flight; any other
    /// request before `finish_eval` is refused.
    pub fn start_eval_token(&mut self, token: i32, pos: u32) -> R<PendingEval> {
        let during = format!("eval of token {token} at position {pos}");
        if self.in_flight {
            return Err(proto(&during, "a started evaluation was not finished"));
        }
        self.send(tag::EVAL_TOKEN, Enc::new().i32(token).u32(pos), &during)?;
        self.in_flight = true;
        Ok(PendingEval { during })
    }

    /// [`RefWorker::eval_batch`] split like [`RefWorker::start_eval_token`]: the worker
    /// evaluates the batch while the caller works; [`RefWorker::finish_eval`] collects the
    /// logits of every position.
    pub fn start_eval_batch(&mut self, tokens: &[i32], start_pos: u32) -> R<PendingEval> {
        let during = format!("eval of a batch of {} tokens at position {start_pos}", tokens.len());
        if self.in_flight {
            return Err(proto(&during, "a started evaluation was not finished"));
        }
        self.send(tag::EVAL_BATCH, Enc::new().i32s(tokens).u32(start_pos), &during)?;
        self.in_flight = true;
        // A batch's answer is large (2048 positions of a 128k vocabulary: 1 GiB), and the
        // worker blocks on the pipe until it is read. Read on a thread, it crosses while the
        // caller is still computing (the harness's own engine), not after.
        if let Some(mut stdout) = self.stdout.take() {
            let (tx, answer) = mpsc::channel();
            std::thread::spawn(move || {
                let read = match read_frame(&mut stdout) {
                    Ok(Some((OK, body))) => match decode_eval(&body) {
                        Ok(logits) => Read::Eval(logits),
                        Err(_) => Read::Frame(Ok(Some((OK, body)))),
                    },
                    other => Read::Frame(other),
                };
                // The worker was killed and the answer abandoned: nothing to hand back.
                let _ = tx.send((stdout, read));
            });
            self.reading = Some(Reading { answer });
        }
        Ok(PendingEval { during })
    }

    /// The logits of the evaluation started by [`RefWorker::start_eval_token`] (or
    /// [`RefWorker::start_eval_batch`]: every position's, row after row).
    pub fn finish_eval(&mut self, pending: PendingEval) -> R<Vec<f32>> {
        self.in_flight = false;
        let during = &pending.during;
        let decoded = match self.reading.take() {
            Some(reading) => match self.collect(reading, during)? {
                Read::Eval(decoded) => decoded,
                Read::Frame(frame) => {
                    decode_eval(&self.answer(frame, during)?).map_err(|m| proto(during, m))?
                }
            },
            None => decode_eval(&self.receive(during)?).map_err(|m| proto(during, m))?,
        };
        let (micros, logits) = decoded;
        self.last_eval = std::time::Duration::from_micros(u64::from(micros));
        Ok(logits)
    }

    /// Waits for a reading thread's answer as [`RefWorker::wait_for_answer`] waits for the
    /// pipe, and takes the answers' pipe back.
    fn collect(&mut self, reading: Reading, during: &str) -> R<Read> {
        let started = Instant::now();
        let mut stopped_since: Option<Instant> = None;
        loop {
            match reading.answer.recv_timeout(POLL_SLICE) {
                Ok((stdout, read)) => {
                    self.stdout = Some(stdout);
                    return Ok(read);
                }
                Err(RecvTimeoutError::Timeout) => self.check_waiting(started, &mut stopped_since, during)?,
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(self.kill(proto(during, "the thread reading the worker's answer stopped")));
                }
            }
        }
    }

    /// How long the worker itself spent computing the last `eval_token` or `eval_batch` (excluding
    /// the pipe).
    pub fn last_eval_time(&self) -> std::time::Duration {
        self.last_eval
    }

    /// Wait for a worker whose pipes closed and describe its end.
    fn reap(&mut self, during: &str) -> WorkerError {
        self.stdin = None;
        let status = match self.child.wait() {
            Ok(s) => s,
            Err(e) => return proto(during, format!("cannot wait for the worker: {e}")),
        };
        describe_exit(status, during)
    }

    /// Load a model and create its context (replacing any previous one).
    pub fn load_model(&mut self, path: &Path, params: ContextParams) -> R<ModelInfo> {
        let during = format!("loading {}", path.display());
        let p = Enc::new()
            .str(&path.to_string_lossy())
            .u32(params.n_ctx)
            .u32(params.n_threads)
            .u32(params.n_ubatch);
        let body = self.call(tag::LOAD_MODEL, p, &during)?;
        let info: ModelInfo = Dec::new(&body).json("model info").map_err(|m| proto(&during, m))?;
        self.model = Some(info.clone());
        Ok(info)
    }

    /// Metadata of the loaded model, asked again from the worker.
    pub fn model_info(&mut self) -> R<ModelInfo> {
        let body = self.call(tag::MODEL_INFO, Enc::new(), "model info")?;
        Dec::new(&body).json("model info").map_err(|m| proto("model info", m))
    }

    pub fn tokenize(&mut self, text: &str, add_special: bool, parse_special: bool) -> R<Vec<i32>> {
        let during = format!("tokenizing {} bytes", text.len());
        let body =
            self.call(tag::TOKENIZE, Enc::new().str(text).bool(add_special).bool(parse_special), &during)?;
        Dec::new(&body).i32s("tokens").map_err(|m| proto(&during, m))
    }

    /// [`RefWorker::tokenize`] of every string, in one round trip.
    pub fn tokenize_many(
        &mut self,
        texts: &[String],
        add_special: bool,
        parse_special: bool,
    ) -> R<Vec<Vec<i32>>> {
        let during = format!("tokenizing {} strings", texts.len());
        let count = u32::try_from(texts.len()).map_err(|_| proto(&during, "too many strings"))?;
        let mut req = Enc::new().bool(add_special).bool(parse_special).u32(count);
        for t in texts {
            req = req.str(t);
        }
        let body = self.call(tag::TOKENIZE_MANY, req, &during)?;
        let mut d = Dec::new(&body);
        let n = d.u32("count").map_err(|m| proto(&during, m))?;
        (0..n).map(|_| d.i32s("tokens").map_err(|m| proto(&during, m))).collect()
    }

    pub fn detokenize(&mut self, tokens: &[i32], remove_special: bool, unparse_special: bool) -> R<Vec<u8>> {
        let during = format!("detokenizing {} tokens", tokens.len());
        let p = Enc::new().i32s(tokens).bool(remove_special).bool(unparse_special);
        let body = self.call(tag::DETOKENIZE, p, &during)?;
        Ok(Dec::new(&body).bytes("text").map_err(|m| proto(&during, m))?.to_vec())
    }

    pub fn token_piece(&mut self, token: i32, special: bool) -> R<Vec<u8>> {
        let during = format!("rendering token {token}");
        let body = self.call(tag::TOKEN_PIECE, Enc::new().i32(token).bool(special), &during)?;
        Ok(Dec::new(&body).bytes("piece").map_err(|m| proto(&during, m))?.to_vec())
    }

    /// Teacher forcing: logits of `token` at `pos` (KV cache kept).
    pub fn eval_token(&mut self, token: i32, pos: u32) -> R<Vec<f32>> {
        let pending = self.start_eval_token(token, pos)?;
        self.finish_eval(pending)
    }

    /// Logits of every position of a batch, row after row (split into the context's ubatches).
    pub fn eval_batch(&mut self, tokens: &[i32], start_pos: u32) -> R<Vec<f32>> {
        let pending = self.start_eval_batch(tokens, start_pos)?;
        self.finish_eval(pending)
    }

    /// Logits plus the captured graph nodes for this position.
    pub fn eval_token_capture(
        &mut self,
        token: i32,
        pos: u32,
        filter: &CaptureFilter,
    ) -> R<(Vec<f32>, Vec<CapturedTensor>)> {
        let during = format!("eval (with capture) of token {token} at position {pos}");
        let body = self.call(tag::EVAL_CAPTURE, Enc::new().i32(token).u32(pos).json(filter), &during)?;
        decode_capture(&body).map_err(|m| proto(&during, m))
    }

    /// [`RefWorker::eval_batch`] plus the captured graph nodes (once per ubatch; see
    /// `Context::eval_batch_capture`).
    pub fn eval_batch_capture(
        &mut self,
        tokens: &[i32],
        start_pos: u32,
        filter: &CaptureFilter,
    ) -> R<(Vec<f32>, Vec<CapturedTensor>)> {
        let during =
            format!("eval (with capture) of a batch of {} tokens at position {start_pos}", tokens.len());
        let body =
            self.call(tag::EVAL_BATCH_CAPTURE, Enc::new().i32s(tokens).u32(start_pos).json(filter), &during)?;
        decode_capture(&body).map_err(|m| proto(&during, m))
    }

    /// Clear the KV cache.
    pub fn reset(&mut self) -> R<()> {
        self.call(tag::RESET, Enc::new(), "reset").map(|_| ())
    }

    /// Tensors of a GGUF file as ggml reads them.
    pub fn list_tensors(&mut self, path: &Path) -> R<Vec<TensorEntry>> {
        let during = format!("listing tensors of {}", path.display());
        let body = self.call(tag::LIST_TENSORS, Enc::new().str(&path.to_string_lossy()), &during)?;
        Dec::new(&body).json("tensor list").map_err(|m| proto(&during, m))
    }

    /// One tensor of a GGUF file, dequantized by ggml's type traits.
    pub fn dequantize(&mut self, path: &Path, name: &str) -> R<(TensorEntry, Vec<f32>)> {
        let during = format!("dequantizing {name} of {}", path.display());
        let body = self.call(tag::DEQUANTIZE, Enc::new().str(&path.to_string_lossy()).str(name), &during)?;
        let mut d = Dec::new(&body);
        let entry = d.json("tensor entry").map_err(|m| proto(&during, m))?;
        let data = d.f32s("values").map_err(|m| proto(&during, m))?;
        Ok((entry, data))
    }

    /// `llama_model_quantize` in the worker; see [`QuantizeOptions::threads`].
    pub fn quantize(&mut self, input: &Path, output: &Path, options: QuantizeOptions) -> R<()> {
        let during = format!("quantizing {} to {}", input.display(), output.display());
        let p = Enc::new().str(&input.to_string_lossy()).str(&output.to_string_lossy()).json(&options);
        self.call(tag::QUANTIZE, p, &during).map(|_| ())
    }

    /// Ask the worker to exit and wait for it.
    pub fn shutdown(mut self) -> R<ExitStatus> {
        self.call(tag::SHUTDOWN, Enc::new(), "shutdown")?;
        self.stdin = None;
        self.child.wait().map_err(|e| proto("shutdown", e.to_string()))
    }
}

impl Drop for RefWorker {
    fn drop(&mut self) {
        // Closing stdin ends a healthy worker; kill covers one stuck in C++.
        self.stdin = None;
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// An answer being read on a thread of its own: the pipe comes back with it.
struct Reading {
    answer: Receiver<(BufReader<ChildStdout>, Read)>,
}

/// What a reading thread read: an evaluation's answer, decoded, or any other frame (an error,
/// an end of stream), for [`RefWorker::answer`] to interpret.
enum Read {
    Eval((u32, Vec<f32>)),
    Frame(io::Result<Option<(u8, Vec<u8>)>>),
}

/// The body of an evaluation's answer: the worker's compute time (µs), then the logits.
fn decode_eval(body: &[u8]) -> Result<(u32, Vec<f32>), String> {
    let mut d = Dec::new(body);
    let micros = d.u32("eval time")?;
    Ok((micros, d.f32s("logits")?))
}

/// Whether process `pid` is stopped (state `T` or `t` in `/proc/<pid>/stat`).
/// Logits, then the captured tensors (JSON header and raw f32 data each).
fn decode_capture(body: &[u8]) -> Result<(Vec<f32>, Vec<CapturedTensor>), String> {
    let mut d = Dec::new(body);
    let logits = d.f32s("logits")?;
    let n = d.u32("capture count")?;
    let mut out = Vec::with_capacity(n.min(1 << 16) as usize);
    for _ in 0..n {
        let mut c: CapturedTensor = d.json("captured tensor")?;
        c.data = d.f32s("captured data")?;
        out.push(c);
    }
    Ok((logits, out))
}

fn process_stopped(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // The state follows the command name, which is in parentheses and may hold anything.
    let state = stat.rfind(')').and_then(|i| stat[i + 1..].trim_start().chars().next());
    matches!(state, Some('T' | 't'))
}

fn proto(during: &str, message: impl Into<String>) -> WorkerError {
    WorkerError::Protocol { during: during.to_string(), message: message.into() }
}

fn describe_exit(status: ExitStatus, during: &str) -> WorkerError {
    match (status.signal(), status.code()) {
        (Some(signal), _) => WorkerError::Crashed { signal, during: during.to_string() },
        (None, Some(code)) => WorkerError::Exited { code, during: during.to_string() },
        (None, None) => proto(during, format!("worker ended with {status}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_messages_name_the_signal_and_the_request() {
        let e = WorkerError::Crashed { signal: 6, during: "eval of token 5 at position 37".into() };
        assert_eq!(
            e.to_string(),
            "reference crashed (signal 6, SIGABRT) during eval of token 5 at position 37"
        );
        assert!(e.is_fatal());
        assert_eq!(WorkerError::Gone(Box::new(e)).signal(), Some(6));
        let r = WorkerError::Request { during: "x".into(), message: "y".into() };
        assert!(!r.is_fatal());
    }
}
