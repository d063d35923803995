//! An engine in another process, speaking the engine protocol (`docs/engine-protocol.md`) on its
//! stdin and stdout: the client side.
//!
//! The child runs in its own process group (Ctrl-C reaches the harness alone, which then stops
//! it, wrapper scripts' children included), its stderr is the harness's, and its pipes are
//! served by two threads (one writes request lines, one hands whole answer lines to a channel),
//! so that nothing blocks without a deadline: an engine that does not answer in time, or stops
//! reading its stdin, is killed and reported as [`EngineError::Hung`]. Once an engine has failed that way (hung,
//! crashed, broke the protocol, interrupted) it is dead: every later call returns the same error.

use std::io::{BufReader, BufWriter, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use super::protocol::{
    decode_f32s, read_line, split_command, DetokenizeAnswer, EmptyAnswer, EvalAnswer, HelloAnswer, Line,
    LoadAnswer, LoadRequest, Request, TokenizeAnswer, TraceAnswer, TraceNamesAnswer, CAP_BATCH, CAP_TOKENIZE,
    CAP_TRACE, LOGITS_ALL, MAX_LINE_BYTES, PROTOCOL_VERSION,
};
use super::{Engine, EngineError, EngineResult, ExternalIdentity, Identity};

/// How often a wait looks at the cancel flag.
const POLL: Duration = Duration::from_millis(50);
/// How long an engine that closed its stdout gets to exit before it is killed (for its status).
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// How long `shutdown` waits for the engine's answer and exit before killing it.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Pipelined requests (in `tokenize_many`) are sent in batches of at most this many bytes, so
/// that a batch's answers are not all held in memory at once.
const PIPELINE_BYTES: usize = 1 << 20;

/// What the reader thread hands over.
enum Event {
    Line(Vec<u8>),
    TooLong,
    Eof,
    ReadError(String),
}

/// A request in flight: what messages say about it.
#[derive(Debug, Clone)]
struct InFlight {
    what: String,
}

/// A program speaking the engine protocol, started by [`ExternalEngine::start`].
pub struct ExternalEngine {
    command: String,
    /// The engine's own name and version once it said hello (else the command).
    label: String,
    child: Child,
    /// Request lines for the writer thread; `None` once the engine is stopped.
    requests: Option<Sender<Vec<u8>>>,
    lines: Receiver<Event>,
    timeout: Duration,
    cancel: Arc<AtomicBool>,
    hello: HelloAnswer,
    n_vocab: usize,
    /// The `eval` sent by `start_eval`, awaiting `finish_eval`.
    pending_eval: Option<InFlight>,
    /// Tokens of the batched `eval` in flight (`start_eval_batch`).
    pending_batch: usize,
    /// The error that ended the engine; returned by every later call.
    dead: Option<EngineError>,
}

impl std::fmt::Debug for ExternalEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalEngine")
            .field("command", &self.command)
            .field("pid", &self.child.id())
            .field("n_vocab", &self.n_vocab)
            .finish()
    }
}

impl ExternalEngine {
    /// Starts `command` (split like a shell would, without one), says hello, and loads `model`.
    ///
    /// Every wait for an answer lasts at most `timeout`; raising `cancel` ends a wait with
    /// [`EngineError::Interrupted`]. The child is killed if any step fails, and on drop.
    pub fn start(
        command: &str,
        model: &Path,
        n_ctx: usize,
        threads: usize,
        timeout: Duration,
        cancel: Arc<AtomicBool>,
    ) -> EngineResult<ExternalEngine> {
        let load = LoadRequest { model: model.to_path_buf(), n_ctx, threads, n_ubatch: None };
        ExternalEngine::start_with(command, load, timeout, cancel)
    }

    /// [`ExternalEngine::start`] with the whole `load` request; its `n_ubatch` is sent only to
    /// an engine that announced the `batch` capability (others never see the field).
    pub fn start_with(
        command: &str,
        load: LoadRequest,
        timeout: Duration,
        cancel: Arc<AtomicBool>,
    ) -> EngineResult<ExternalEngine> {
        let words = split_command(command).map_err(EngineError::Failed)?;
        let mut child = Command::new(&words[0])
            .args(&words[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .map_err(|e| EngineError::Failed(format!("engine `{command}` could not be started: {e}")))?;
        let (stdin, stdout) = match (child.stdin.take(), child.stdout.take()) {
            (Some(i), Some(o)) => (i, o),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(EngineError::Failed(format!(
                    "engine `{command}`: its pipes could not be opened"
                )));
            }
        };
        let (tx, lines) = mpsc::channel();
        let (requests, rx) = mpsc::channel();
        let pipes = std::thread::Builder::new()
            .name("engine-stdout".into())
            .spawn(move || read_answers(stdout, tx))
            .and_then(|_| {
                std::thread::Builder::new()
                    .name("engine-stdin".into())
                    .spawn(move || write_requests(stdin, rx))
            });
        if let Err(e) = pipes {
            let _ = child.kill();
            let _ = child.wait();
            return Err(EngineError::Failed(format!("engine `{command}`: no thread for its pipes: {e}")));
        }
        let mut engine = ExternalEngine {
            command: command.to_string(),
            label: format!("engine `{command}`"),
            child,
            requests: Some(requests),
            lines,
            timeout,
            cancel,
            hello: HelloAnswer::new("", ""),
            n_vocab: 0,
            pending_eval: None,
            pending_batch: 0,
            dead: None,
        };
        engine.hello()?;
        engine.load(load)?;
        Ok(engine)
    }

    /// What the engine said in its hello.
    pub fn hello_answer(&self) -> &HelloAnswer {
        &self.hello
    }

    /// The process id of the engine (its process group too).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn hello(&mut self) -> EngineResult<()> {
        let what = "hello";
        let value = self.round_trip(&Request::Hello { protocol: PROTOCOL_VERSION }, what)?;
        let protocol = value.get("protocol").and_then(serde_json::Value::as_u64);
        if protocol != Some(u64::from(PROTOCOL_VERSION)) {
            let said = value.get("protocol").map_or("no version".to_string(), |v| format!("version {v}"));
            return Err(self.die(EngineError::Protocol(format!(
                "{} speaks engine protocol {said}; this harness speaks version {PROTOCOL_VERSION} only (answer to {what})",
                self.label
            ))));
        }
        self.hello = self.parse(value, what)?;
        self.label = format!("engine {} {} (`{}`)", self.hello.name, self.hello.version, self.command);
        Ok(())
    }

    fn load(&mut self, mut load: LoadRequest) -> EngineResult<()> {
        let what = format!("load of {}", load.model.display());
        if !self.hello.can(CAP_BATCH) {
            load.n_ubatch = None;
        }
        let request = Request::Load(load);
        let answer: LoadAnswer = self.call(&request, &what)?;
        if answer.n_vocab == 0 {
            return Err(
                self.die(EngineError::Protocol(format!("{} answered {what} with n_vocab 0", self.label)))
            );
        }
        self.n_vocab = answer.n_vocab;
        Ok(())
    }

    /// Sends `request` and waits for its answer, parsed as `T`.
    fn call<T: DeserializeOwned>(&mut self, request: &Request, what: &str) -> EngineResult<T> {
        let value = self.round_trip(request, what)?;
        self.parse(value, what)
    }

    fn round_trip(
        &mut self,
        request: &Request,
        what: &str,
    ) -> EngineResult<serde_json::Map<String, serde_json::Value>> {
        self.send(request, what)?;
        self.receive(what)
    }

    /// Hands one request line to the writer thread.
    fn send(&mut self, request: &Request, what: &str) -> EngineResult<()> {
        self.write_lines(&[request], what)
    }

    fn write_lines(&mut self, requests: &[&Request], what: &str) -> EngineResult<()> {
        if let Some(e) = &self.dead {
            return Err(e.clone());
        }
        if let Some(pending) = &self.pending_eval {
            let msg = format!("{}: {what} sent while the answer to {} is awaited", self.label, pending.what);
            return Err(EngineError::Protocol(msg));
        }
        let mut lines = Vec::new();
        for request in requests {
            // Serializing our own request types cannot fail.
            let mut line = serde_json::to_vec(request).unwrap_or_default();
            line.push(b'\n');
            lines.extend(line);
        }
        let sent = self.requests.as_ref().is_some_and(|tx| tx.send(lines).is_ok());
        if sent {
            return Ok(());
        }
        // The writer thread ended on a closed pipe: the engine is gone; its exit status says why.
        let why = self.exit_reason("closed its stdin");
        Err(self.die(EngineError::Crashed(format!("{} {why} before answering {what}", self.label))))
    }

    /// Waits for the next answer line: an `{"ok": true}` object, or the error it stands for.
    fn receive(&mut self, what: &str) -> EngineResult<serde_json::Map<String, serde_json::Value>> {
        if let Some(e) = &self.dead {
            return Err(e.clone());
        }
        let deadline = Instant::now() + self.timeout;
        let event = loop {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(self.die(EngineError::Interrupted));
            }
            let now = Instant::now();
            if now >= deadline {
                let msg = format!(
                    "{} did not answer {what} within {}; it was stopped",
                    self.label,
                    humantime::format_duration(self.timeout)
                );
                return Err(self.die(EngineError::Hung(msg)));
            }
            match self.lines.recv_timeout(POLL.min(deadline - now)) {
                Ok(event) => break event,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break Event::Eof,
            }
        };
        let line = match event {
            Event::Line(line) => line,
            Event::TooLong => {
                let msg =
                    format!("{} answered {what} with a line longer than {MAX_LINE_BYTES} bytes", self.label);
                return Err(self.die(EngineError::Protocol(msg)));
            }
            Event::ReadError(e) => {
                let msg = format!("{}: its stdout could not be read ({e}) while awaiting {what}", self.label);
                return Err(self.die(EngineError::Crashed(msg)));
            }
            Event::Eof => {
                let why = self.exit_reason("closed its stdout");
                return Err(
                    self.die(EngineError::Crashed(format!("{} {why} before answering {what}", self.label)))
                );
            }
        };
        let object = match serde_json::from_slice::<serde_json::Value>(&line) {
            Ok(serde_json::Value::Object(object)) => object,
            Ok(_) => return Err(self.die_protocol(what, "an answer that is not a JSON object".into())),
            Err(e) => {
                return Err(self.die_protocol(what, format!("malformed JSON ({e}): {}", excerpt(&line))))
            }
        };
        match object.get("ok") {
            Some(serde_json::Value::Bool(true)) => Ok(object),
            Some(serde_json::Value::Bool(false)) => {
                let error =
                    object.get("error").and_then(serde_json::Value::as_str).unwrap_or("(no error text)");
                Err(EngineError::Failed(format!("{} refused {what}: {}", self.label, error.trim())))
            }
            _ => Err(self.die_protocol(what, "an answer without a boolean `ok`".into())),
        }
    }

    fn parse<T: DeserializeOwned>(
        &mut self,
        object: serde_json::Map<String, serde_json::Value>,
        what: &str,
    ) -> EngineResult<T> {
        serde_json::from_value(serde_json::Value::Object(object))
            .map_err(|e| self.die_protocol(what, format!("an answer of the wrong form ({e})")))
    }

    fn die_protocol(&mut self, what: &str, detail: String) -> EngineError {
        self.die(EngineError::Protocol(format!(
            "{} broke the protocol answering {what}: {detail}",
            self.label
        )))
    }

    /// Marks the engine dead with `error`, stops its process, and returns the error.
    fn die(&mut self, error: EngineError) -> EngineError {
        self.kill();
        self.dead = Some(error.clone());
        error
    }

    /// Kills the engine's whole process group (a wrapper script's children too) and reaps it.
    fn kill(&mut self) {
        self.requests = None;
        if let Ok(None) = self.child.try_wait() {
            let group = rustix::process::Pid::from_child(&self.child);
            if rustix::process::kill_process_group(group, rustix::process::Signal::KILL).is_err() {
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
    }

    /// Why the engine went away: its exit status, given a moment to exit; `fallback` when it is
    /// still running (it is then killed).
    fn exit_reason(&mut self, fallback: &str) -> String {
        let deadline = Instant::now() + EXIT_GRACE;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return describe_exit(status),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
                _ => return format!("{fallback} (and was stopped)"),
            }
        }
    }

    /// `eval at position 3`. (The case is the run's to name: it counts cases from 1, the
    /// protocol's `reset` from 0.)
    fn eval_what(tokens: &[u32], pos: usize) -> String {
        match tokens.len() {
            1 => format!("eval at position {pos}"),
            n => format!("eval of {n} tokens at positions {pos}..{}", pos + n),
        }
    }

    fn decode(&mut self, text: &str, len: Option<usize>, what: &str, field: &str) -> EngineResult<Vec<f32>> {
        let values = decode_f32s(text).map_err(|e| self.die_protocol(what, format!("`{field}`: {e}")))?;
        match len {
            Some(n) if values.len() != n => {
                Err(self
                    .die_protocol(what, format!("`{field}` holds {} values, n_vocab is {n}", values.len())))
            }
            _ => Ok(values),
        }
    }
}

fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}{}", signal_name(signal)),
        _ => format!("ended ({status})"),
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        6 => " (SIGABRT)",
        7 => " (SIGBUS)",
        9 => " (SIGKILL)",
        11 => " (SIGSEGV)",
        15 => " (SIGTERM)",
        _ => "",
    }
}

/// The start of a bad line, for messages.
fn excerpt(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(&line[..line.len().min(80)]);
    let more = if line.len() > 80 { "…" } else { "" };
    format!("{:?}{more}", text)
}

/// The writer thread: request lines to the engine's stdin, until the client or the pipe closes.
fn write_requests(stdin: ChildStdin, requests: Receiver<Vec<u8>>) {
    let mut stdin = BufWriter::new(stdin);
    for lines in requests {
        if stdin.write_all(&lines).and_then(|()| stdin.flush()).is_err() {
            return;
        }
    }
}

/// The reader thread: whole lines of the engine's stdout, until its end.
fn read_answers(stdout: std::process::ChildStdout, tx: mpsc::Sender<Event>) {
    let mut reader = BufReader::with_capacity(1 << 16, stdout);
    loop {
        let event = match read_line(&mut reader, MAX_LINE_BYTES) {
            Ok(Line::Text(line)) if line.iter().all(u8::is_ascii_whitespace) => continue,
            Ok(Line::Text(line)) => Event::Line(line),
            Ok(Line::TooLong) => Event::TooLong,
            Ok(Line::Eof) => Event::Eof,
            Err(e) => Event::ReadError(e.to_string()),
        };
        let last = !matches!(event, Event::Line(_));
        if tx.send(event).is_err() || last {
            return;
        }
    }
}

impl Engine for ExternalEngine {
    /// The text of `ids`, when the engine announced `tokenize` (which includes `detokenize`).
    fn detokenize(&mut self, ids: &[u32]) -> EngineResult<Option<String>> {
        if !self.hello.can(CAP_TOKENIZE) {
            return Ok(None);
        }
        let answer: DetokenizeAnswer = self.call(&Request::Detokenize { ids: ids.to_vec() }, "detokenize")?;
        Ok(Some(answer.text))
    }

    fn identity(&self) -> Identity {
        Identity::External(ExternalIdentity {
            name: self.hello.name.clone(),
            version: self.hello.version.clone(),
            build: self.hello.build.clone(),
            profile: self.hello.profile.clone(),
            command: self.command.clone(),
        })
    }

    fn n_vocab(&self) -> usize {
        self.n_vocab
    }

    fn runs_elsewhere(&self) -> bool {
        true
    }

    fn tokenize(&mut self, text: &str, add_bos: bool, parse_special: bool) -> EngineResult<Option<Vec<u32>>> {
        if !self.hello.can(CAP_TOKENIZE) {
            return Ok(None);
        }
        let request = Request::Tokenize { text: text.to_string(), add_bos, parse_special };
        let answer: TokenizeAnswer =
            self.call(&request, &format!("tokenize of {}", excerpt(text.as_bytes())))?;
        Ok(Some(answer.ids))
    }

    /// Pipelined: a batch of requests is written before their answers are read.
    fn tokenize_many(
        &mut self,
        texts: &[String],
        add_bos: bool,
        parse_special: bool,
    ) -> EngineResult<Option<Vec<Vec<u32>>>> {
        if !self.hello.can(CAP_TOKENIZE) {
            return Ok(None);
        }
        let mut all = Vec::with_capacity(texts.len());
        let mut rest = texts;
        while !rest.is_empty() {
            // At least one request per batch, however long.
            let mut n = 1;
            let mut bytes = rest[0].len();
            while n < rest.len() && bytes + rest[n].len() < PIPELINE_BYTES {
                bytes += rest[n].len();
                n += 1;
            }
            let requests: Vec<Request> = rest[..n]
                .iter()
                .map(|t| Request::Tokenize { text: t.clone(), add_bos, parse_special })
                .collect();
            let refs: Vec<&Request> = requests.iter().collect();
            self.write_lines(&refs, "tokenize")?;
            for text in &rest[..n] {
                let what = format!("tokenize of {}", excerpt(text.as_bytes()));
                let object = self.receive(&what)?;
                let answer: TokenizeAnswer = self.parse(object, &what)?;
                all.push(answer.ids);
            }
            rest = &rest[n..];
        }
        Ok(Some(all))
    }

    fn reset(&mut self, case: usize) -> EngineResult<()> {
        let _: EmptyAnswer = self.call(&Request::Reset { case }, &format!("reset for case {}", case + 1))?;
        Ok(())
    }

    fn start_eval(&mut self, tokens: &[u32], pos: usize) -> EngineResult<()> {
        let what = Self::eval_what(tokens, pos);
        self.send(&Request::Eval { tokens: tokens.to_vec(), pos, logits: None }, &what)?;
        self.pending_eval = Some(InFlight { what });
        Ok(())
    }

    fn finish_eval(&mut self) -> EngineResult<Vec<f32>> {
        let Some(InFlight { what }) = self.pending_eval.take() else {
            return Err(EngineError::Protocol(format!("{}: no evaluation was started", self.label)));
        };
        let answer: EvalAnswer = {
            let object = self.receive(&what)?;
            self.parse(object, &what)?
        };
        self.decode(&answer.logits, Some(self.n_vocab), &what, "logits")
    }

    /// `eval` with `"logits": "all"`, when the engine announced `batch`.
    fn eval_batch(&mut self, tokens: &[u32], pos: usize) -> EngineResult<Option<Vec<f32>>> {
        if !self.start_eval_batch(tokens, pos)? {
            return Ok(None);
        }
        self.finish_eval_batch().map(Some)
    }

    fn start_eval_batch(&mut self, tokens: &[u32], pos: usize) -> EngineResult<bool> {
        if !self.hello.can(CAP_BATCH) {
            return Ok(false);
        }
        let what = format!("batched {}", Self::eval_what(tokens, pos));
        let request = Request::Eval { tokens: tokens.to_vec(), pos, logits: Some(LOGITS_ALL.into()) };
        self.send(&request, &what)?;
        self.pending_eval = Some(InFlight { what });
        self.pending_batch = tokens.len();
        Ok(true)
    }

    fn finish_eval_batch(&mut self) -> EngineResult<Vec<f32>> {
        let Some(InFlight { what }) = self.pending_eval.take() else {
            return Err(EngineError::Protocol(format!("{}: no batched evaluation was started", self.label)));
        };
        let answer: EvalAnswer = {
            let object = self.receive(&what)?;
            self.parse(object, &what)?
        };
        let tokens = std::mem::take(&mut self.pending_batch);
        let n = tokens * self.n_vocab;
        let logits = self.decode(&answer.logits, None, &what, "logits")?;
        if logits.len() != n {
            let detail = format!(
                "`logits` holds {} values, {tokens} tokens × n_vocab {} are {n}",
                logits.len(),
                self.n_vocab
            );
            return Err(self.die_protocol(&what, detail));
        }
        Ok(logits)
    }

    fn trace_names(&mut self) -> EngineResult<Option<Vec<String>>> {
        if !self.hello.can(CAP_TRACE) {
            return Ok(None);
        }
        let answer: TraceNamesAnswer = self.call(&Request::TraceNames, "trace_names")?;
        Ok(Some(answer.names))
    }

    fn eval_traced(
        &mut self,
        token: u32,
        pos: usize,
        names: &[String],
    ) -> EngineResult<Vec<(String, Vec<f32>)>> {
        if !self.hello.can(CAP_TRACE) {
            return Err(EngineError::Failed(format!("{} does not trace", self.label)));
        }
        let what = format!("trace at position {pos}");
        let request = Request::Trace { token, pos, names: names.to_vec() };
        let answer: TraceAnswer = self.call(&request, &what)?;
        let mut tensors = Vec::with_capacity(answer.tensors.len());
        for t in answer.tensors {
            let data = self.decode(&t.data, None, &what, &format!("tensors[{}].data", t.name))?;
            tensors.push((t.name, data));
        }
        Ok(tensors)
    }

    fn shutdown(mut self: Box<Self>) {
        if self.dead.is_none()
            && self.pending_eval.is_none()
            && self.send(&Request::Shutdown, "shutdown").is_ok()
        {
            self.timeout = self.timeout.min(SHUTDOWN_GRACE);
            let _ = self.receive("shutdown");
            self.requests = None;
            let deadline = Instant::now() + SHUTDOWN_GRACE;
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(POLL);
            }
        }
        // Drop kills what is left.
    }
}

impl Drop for ExternalEngine {
    fn drop(&mut self) {
        self.kill();
    }
}
