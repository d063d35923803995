//! The engine protocol, version 1 (`docs/engine-protocol.md`): its messages, the float
//! encoding, the splitting of a command line, and [`serve`], the engine side's main loop.
//!
//! Both sides live here so that they cannot drift: the client ([`super::external`]) and
//! [`serve`] read and write the same structs.
//!
//! Every message is one JSON object on one line. Requests are [`Request`] (tagged by `"op"`);
//! answers are `{"ok": true, …fields}` with the fields of one of the `*Answer` structs, or
//! `{"ok": false, "error": "…"}`. Unknown fields are ignored on both sides, so additions that an
//! older peer can ignore keep the version.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::{Engine, EngineError};

/// The protocol version this harness speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The longest line either side accepts, in bytes (without its `\n`): 256 MiB holds the base64
/// of 50 million floats, far more than a logits row or a traced tensor of any BitNet model,
/// while a runaway peer cannot make the other side allocate without bound.
pub const MAX_LINE_BYTES: usize = 256 << 20;

/// The optional requests an engine may announce in its hello.
pub const CAP_TOKENIZE: &str = "tokenize";
/// `trace_names` and `trace`.
pub const CAP_TRACE: &str = "trace";
/// A batched path: `load` may carry `n_ubatch`, `eval` may ask `"logits": "all"`.
pub const CAP_BATCH: &str = "batch";
/// The `logits` of an `eval` that wants the logits of every position.
pub const LOGITS_ALL: &str = "all";

/// A request, as the harness writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Hello {
        protocol: u32,
    },
    Load(LoadRequest),
    Tokenize {
        text: String,
        add_bos: bool,
        parse_special: bool,
    },
    Detokenize {
        ids: Vec<u32>,
    },
    Reset {
        case: usize,
    },
    /// Evaluates `tokens` at positions `pos..`; the answer holds the logits of the last one,
    /// or with `logits: "all"` ([`CAP_BATCH`]) those of every position, on the batched path.
    Eval {
        tokens: Vec<u32>,
        pos: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        logits: Option<String>,
    },
    TraceNames,
    Trace {
        token: u32,
        pos: usize,
        names: Vec<String>,
    },
    Shutdown,
}

impl Request {
    /// The request's `op`, for messages.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Hello { .. } => "hello",
            Request::Load(_) => "load",
            Request::Tokenize { .. } => "tokenize",
            Request::Detokenize { .. } => "detokenize",
            Request::Reset { .. } => "reset",
            Request::Eval { .. } => "eval",
            Request::TraceNames => "trace_names",
            Request::Trace { .. } => "trace",
            Request::Shutdown => "shutdown",
        }
    }
}

/// The `load` request: the model an engine is to load, and what the run needs of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadRequest {
    /// Path of the GGUF file.
    pub model: PathBuf,
    /// Positions the run evaluates at most.
    pub n_ctx: usize,
    /// Threads the engine may use.
    pub threads: usize,
    /// The ubatch size of the batched path (llama.cpp's `n_ubatch`), sent to engines that
    /// announced [`CAP_BATCH`] when the run compares batches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_ubatch: Option<usize>,
}

/// The answer to `hello`: who the engine is and which optional requests it answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HelloAnswer {
    pub protocol: u32,
    pub name: String,
    pub version: String,
    /// Free text: how the engine was built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<String>,
    /// The reference build whose numerics the engine mirrors (`avx2`, `avx512`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// [`CAP_TOKENIZE`], [`CAP_TRACE`].
    #[serde(default)]
    pub capabilities: Vec<String>,
}

impl HelloAnswer {
    /// A hello of this protocol version with no optional fields.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> HelloAnswer {
        HelloAnswer {
            protocol: PROTOCOL_VERSION,
            name: name.into(),
            version: version.into(),
            build: None,
            profile: None,
            capabilities: Vec::new(),
        }
    }

    /// Whether the engine announced `capability`.
    pub fn can(&self, capability: &str) -> bool {
        self.capabilities.iter().any(|c| c == capability)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadAnswer {
    pub n_vocab: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizeAnswer {
    pub ids: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetokenizeAnswer {
    pub text: String,
}

/// The answer to `eval`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalAnswer {
    /// [`encode_f32s`] of the logits of the last token; with `logits: "all"`, of the logits of
    /// every position, one row after the other (`tokens × n_vocab` values).
    pub logits: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceNamesAnswer {
    pub names: Vec<String>,
}

/// One traced tensor: its name and its values ([`encode_f32s`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedTensor {
    pub name: String,
    pub data: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceAnswer {
    pub tensors: Vec<NamedTensor>,
}

/// An answer with no fields besides `ok` (`reset`, `shutdown`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmptyAnswer {}

/// Base64 (RFC 4648, padded) of `values` as little-endian binary32: every bit survives.
pub fn encode_f32s(values: &[f32]) -> String {
    let mut bytes = Vec::with_capacity(values.len() * 4);
    for v in values {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The inverse of [`encode_f32s`]; an error (one line) for text that is not padded base64 or
/// whose length is not a whole number of floats.
pub fn decode_f32s(text: &str) -> Result<Vec<f32>, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("not base64 (RFC 4648, padded): {e}"))?;
    if !bytes.len().is_multiple_of(4) {
        return Err(format!("{} bytes is not a whole number of f32 values", bytes.len()));
    }
    Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

/// Splits an engine command line into words the way a POSIX shell would, without running one:
/// `'…'` and `"…"` quote, `\` escapes; no variables, globs or redirections.
pub fn split_command(command: &str) -> Result<Vec<String>, String> {
    let words = shlex::split(command)
        .ok_or_else(|| format!("engine command {command:?} has an unclosed quote or a trailing backslash"))?;
    if words.is_empty() {
        return Err("the engine command is empty".into());
    }
    Ok(words)
}

/// What [`read_line`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A whole line, without its `\n` (a last line without `\n` counts too).
    Text(Vec<u8>),
    /// A line longer than the limit; its bytes up to the limit were dropped, the rest is
    /// still unread.
    TooLong,
    /// The stream ended.
    Eof,
}

/// Reads one line of at most `max` bytes (without its `\n`), never holding more than that.
pub fn read_line<R: BufRead + ?Sized>(input: &mut R, max: usize) -> std::io::Result<Line> {
    let mut buf = Vec::new();
    let n = std::io::Read::take(input, max as u64 + 1).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(Line::Eof);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        return Ok(Line::Text(buf));
    }
    if buf.len() > max {
        return Ok(Line::TooLong);
    }
    Ok(Line::Text(buf))
}

/// Skips the rest of the current line (after [`Line::TooLong`]); false at the end of the stream.
fn skip_line(input: &mut dyn BufRead) -> std::io::Result<bool> {
    loop {
        let chunk = input.fill_buf()?;
        if chunk.is_empty() {
            return Ok(false);
        }
        if let Some(i) = chunk.iter().position(|&b| b == b'\n') {
            input.consume(i + 1);
            return Ok(true);
        }
        let n = chunk.len();
        input.consume(n);
    }
}

/// `{"ok": true, …fields of answer}` as one line of JSON.
/// (`ok` first, then the answer's fields in their declared order, as the spec shows them.)
pub fn ok_line<T: Serialize>(answer: &T) -> String {
    // The answers are structs: they serialize to an object, `{}` or `{"field":…}`.
    match serde_json::to_string(answer) {
        Ok(fields) if fields.len() > 2 && fields.starts_with('{') => {
            format!("{{\"ok\":true,{}", &fields[1..])
        }
        Ok(fields) if fields == "{}" => r#"{"ok":true}"#.to_string(),
        Ok(_) => error_line("internal error: an answer that is not a JSON object"),
        Err(e) => error_line(&format!("the answer could not be written: {e}")),
    }
}

/// `{"ok": false, "error": …}` as one line of JSON (the error on one line).
pub fn error_line(error: &str) -> String {
    let one_line = error.replace(['\n', '\r'], " ");
    format!(r#"{{"ok":false,"error":{}}}"#, serde_json::Value::String(one_line))
}

/// Loads the model of a `load` request into an engine. `'m` is how long the engine may borrow
/// from what the loader opened (a loader that maps a GGUF file for a `Model<'m>` can leak it:
/// the process ends with the session).
pub type Loader<'m> = Box<dyn FnOnce(&LoadRequest) -> Result<Box<dyn Engine + 'm>, String> + 'm>;

/// The engine side of the protocol on stdin and stdout: answers every request until `shutdown`
/// or the end of stdin. `hello` is what the engine says about itself (its `protocol` is set to
/// [`PROTOCOL_VERSION`]); `load` is called at the first `load` request.
///
/// Nothing the harness sends can make it panic: a request it cannot read, or one the engine
/// refuses, is answered with `{"ok": false}` and the loop goes on. An `Err` is an I/O error of
/// stdin or stdout (the harness went away).
///
/// ```no_run
/// use harness::engine::protocol::{serve, HelloAnswer, CAP_TOKENIZE};
/// use harness::engine::rust::RustSide;
/// use bitnet_engine::{gguf::GgufFile, model::ModelOptions};
///
/// let mut hello = HelloAnswer::new("my-engine", "0.1.0");
/// hello.capabilities.push(CAP_TOKENIZE.into());
/// serve(hello, Box::new(|req| {
///     let file: &'static GgufFile = Box::leak(Box::new(GgufFile::open(&req.model).map_err(|e| e.to_string())?));
///     let options = ModelOptions { n_ctx: req.n_ctx, threads: req.threads, ..ModelOptions::default() };
///     Ok(Box::new(RustSide::load(file, options)?))
/// }))
/// .unwrap();
/// ```
pub fn serve<'m>(hello: HelloAnswer, load: Loader<'m>) -> std::io::Result<()> {
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    serve_on(&mut stdin.lock(), &mut stdout.lock(), hello, load)
}

/// [`serve`] on any pair of streams (for tests, or an engine listening elsewhere).
pub fn serve_on<'m>(
    input: &mut dyn BufRead,
    output: &mut dyn Write,
    mut hello: HelloAnswer,
    load: Loader<'m>,
) -> std::io::Result<()> {
    hello.protocol = PROTOCOL_VERSION;
    let mut server = Server { hello, loader: Some(load), engine: None };
    loop {
        let line = match read_line(input, MAX_LINE_BYTES)? {
            Line::Eof => return Ok(()),
            Line::TooLong => {
                let more = skip_line(input)?;
                reply(output, &error_line(&format!("request line longer than {MAX_LINE_BYTES} bytes")))?;
                if !more {
                    return Ok(());
                }
                continue;
            }
            Line::Text(line) => line,
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let request = match serde_json::from_slice::<Request>(&line) {
            Ok(r) => r,
            Err(e) => {
                reply(output, &error_line(&format!("unreadable request: {e}")))?;
                continue;
            }
        };
        let shutdown = request == Request::Shutdown;
        let answer = server.answer(request).unwrap_or_else(|e| error_line(&e));
        reply(output, &answer)?;
        if shutdown {
            if let Some(engine) = server.engine.take() {
                engine.shutdown();
            }
            return Ok(());
        }
    }
}

fn reply(output: &mut dyn Write, line: &str) -> std::io::Result<()> {
    output.write_all(line.as_bytes())?;
    output.write_all(b"\n")?;
    output.flush()
}

struct Server<'m> {
    hello: HelloAnswer,
    loader: Option<Loader<'m>>,
    engine: Option<Box<dyn Engine + 'm>>,
}

fn failed(e: EngineError) -> String {
    e.to_string()
}

impl<'m> Server<'m> {
    /// The answer line to `request`, or the error text of an `{"ok": false}` answer.
    fn answer(&mut self, request: Request) -> Result<String, String> {
        let op = request.op();
        match request {
            Request::Hello { .. } => Ok(ok_line(&self.hello)),
            Request::Load(req) => {
                let load = self.loader.take().ok_or("a model is already loaded (or its loading failed)")?;
                let engine = load(&req)?;
                let n_vocab = engine.n_vocab();
                self.engine = Some(engine);
                Ok(ok_line(&LoadAnswer { n_vocab }))
            }
            Request::Shutdown => Ok(ok_line(&EmptyAnswer {})),
            request => {
                let engine = self.engine.as_mut().ok_or_else(|| format!("{op}: no model is loaded yet"))?;
                Self::answer_loaded(engine.as_mut(), request).map_err(|e| format!("{op}: {e}"))
            }
        }
    }

    fn answer_loaded(engine: &mut (dyn Engine + 'm), request: Request) -> Result<String, String> {
        match request {
            Request::Tokenize { text, add_bos, parse_special } => {
                match engine.tokenize(&text, add_bos, parse_special).map_err(failed)? {
                    Some(ids) => Ok(ok_line(&TokenizeAnswer { ids })),
                    None => Err("this engine has no tokenizer".into()),
                }
            }
            Request::Detokenize { ids } => match engine.detokenize(&ids).map_err(failed)? {
                Some(text) => Ok(ok_line(&DetokenizeAnswer { text })),
                None => Err("this engine has no tokenizer".into()),
            },
            Request::Reset { case } => {
                engine.reset(case).map_err(failed)?;
                Ok(ok_line(&EmptyAnswer {}))
            }
            Request::Eval { tokens, pos, logits } => {
                if tokens.is_empty() {
                    return Err("no tokens to evaluate".into());
                }
                match logits.as_deref() {
                    None => {}
                    Some(LOGITS_ALL) => {
                        return match engine.eval_batch(&tokens, pos).map_err(failed)? {
                            Some(all) => Ok(ok_line(&EvalAnswer { logits: encode_f32s(&all) })),
                            None => Err("this engine has no batched path".into()),
                        };
                    }
                    Some(other) => return Err(format!("logits {other:?}: expected \"all\" or nothing")),
                }
                engine.start_eval(&tokens, pos).map_err(failed)?;
                let logits = engine.finish_eval().map_err(failed)?;
                Ok(ok_line(&EvalAnswer { logits: encode_f32s(&logits) }))
            }
            Request::TraceNames => match engine.trace_names().map_err(failed)? {
                Some(names) => Ok(ok_line(&TraceNamesAnswer { names })),
                None => Err("this engine does not trace".into()),
            },
            Request::Trace { token, pos, names } => {
                let traced = engine.eval_traced(token, pos, &names).map_err(failed)?;
                let tensors = traced
                    .into_iter()
                    .map(|(name, data)| NamedTensor { name, data: encode_f32s(&data) })
                    .collect();
                Ok(ok_line(&TraceAnswer { tensors }))
            }
            other => Err(format!("unexpected request {}", other.op())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{EngineResult, Identity};
    use crate::receipt::ExternalIdentity;

    #[test]
    fn floats_keep_every_bit() {
        let values = [0.0, -0.0, 1.5, f32::MIN_POSITIVE / 4.0, f32::INFINITY, f32::from_bits(0x7fc0_1234)];
        let back = decode_f32s(&encode_f32s(&values)).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back), bits(&values));
        assert_eq!(encode_f32s(&[1.0, 2.0]), "AACAPwAAAEA=");
    }

    #[test]
    fn bad_base64_is_an_error() {
        assert!(decode_f32s("AACAPwAAAEA").is_err(), "padding is required");
        assert!(decode_f32s("AACA").is_err(), "3 bytes");
        assert!(decode_f32s("@@@@").is_err());
        assert_eq!(decode_f32s("").unwrap(), Vec::<f32>::new());
    }

    #[test]
    fn commands_split_like_a_shell() {
        assert_eq!(
            split_command(r#"python3 "my engine.py" --x 'a b' c\ d"#).unwrap(),
            ["python3", "my engine.py", "--x", "a b", "c d"]
        );
        assert!(split_command("a 'b").is_err());
        assert!(split_command("   ").is_err());
    }

    #[test]
    fn requests_have_the_documented_form() {
        let line = serde_json::to_string(&Request::Eval { tokens: vec![1], pos: 0, logits: None }).unwrap();
        assert_eq!(line, r#"{"op":"eval","tokens":[1],"pos":0}"#);
        let all = Request::Eval { tokens: vec![1, 2], pos: 0, logits: Some(LOGITS_ALL.into()) };
        assert_eq!(
            serde_json::to_string(&all).unwrap(),
            r#"{"op":"eval","tokens":[1,2],"pos":0,"logits":"all"}"#
        );
        let line = serde_json::to_string(&Request::TraceNames).unwrap();
        assert_eq!(line, r#"{"op":"trace_names"}"#);
        let load: Request =
            serde_json::from_str(r#"{"op":"load","model":"/m.gguf","n_ctx":64,"threads":1,"extra":true}"#)
                .unwrap();
        assert_eq!(
            load,
            Request::Load(LoadRequest { model: "/m.gguf".into(), n_ctx: 64, threads: 1, n_ubatch: None })
        );
        assert_eq!(ok_line(&LoadAnswer { n_vocab: 3 }), r#"{"ok":true,"n_vocab":3}"#);
        assert_eq!(error_line("a\nb"), r#"{"ok":false,"error":"a b"}"#);
    }

    #[test]
    fn long_lines_are_refused_without_being_held() {
        let mut input: &[u8] = b"abcdef\nxy\nlast";
        assert_eq!(read_line(&mut input, 4).unwrap(), Line::TooLong);
        assert!(skip_line(&mut input).unwrap());
        assert_eq!(read_line(&mut input, 4).unwrap(), Line::Text(b"xy".to_vec()));
        assert_eq!(read_line(&mut input, 4).unwrap(), Line::Text(b"last".to_vec()));
        assert_eq!(read_line(&mut input, 4).unwrap(), Line::Eof);
    }

    /// Logits = [token, pos] as floats.
    struct Echo;

    impl Engine for Echo {
        fn identity(&self) -> Identity {
            Identity::External(ExternalIdentity {
                name: "echo".into(),
                version: "0".into(),
                build: None,
                profile: None,
                command: String::new(),
            })
        }
        fn n_vocab(&self) -> usize {
            2
        }
        fn tokenize(&mut self, _: &str, _: bool, _: bool) -> EngineResult<Option<Vec<u32>>> {
            Ok(None)
        }
        fn reset(&mut self, _: usize) -> EngineResult<()> {
            Ok(())
        }
        fn start_eval(&mut self, _: &[u32], _: usize) -> EngineResult<()> {
            Ok(())
        }
        fn finish_eval(&mut self) -> EngineResult<Vec<f32>> {
            Ok(vec![1.0, 2.0])
        }
    }

    /// Echo with a batched path: every row is [token, pos].
    struct Batched;

    impl Engine for Batched {
        fn identity(&self) -> Identity {
            Echo.identity()
        }
        fn n_vocab(&self) -> usize {
            2
        }
        fn tokenize(&mut self, _: &str, _: bool, _: bool) -> EngineResult<Option<Vec<u32>>> {
            Ok(None)
        }
        fn reset(&mut self, _: usize) -> EngineResult<()> {
            Ok(())
        }
        fn start_eval(&mut self, _: &[u32], _: usize) -> EngineResult<()> {
            Ok(())
        }
        fn finish_eval(&mut self) -> EngineResult<Vec<f32>> {
            Ok(vec![1.0, 2.0])
        }
        fn eval_batch(&mut self, tokens: &[u32], pos: usize) -> EngineResult<Option<Vec<f32>>> {
            Ok(Some(tokens.iter().enumerate().flat_map(|(i, &t)| [t as f32, (pos + i) as f32]).collect()))
        }
    }

    #[test]
    fn logits_all_answers_every_row_or_says_there_is_no_batched_path() {
        let requests = [
            r#"{"op":"load","model":"x","n_ctx":4,"threads":1,"n_ubatch":2}"#,
            r#"{"op":"eval","tokens":[5,6],"pos":3,"logits":"all"}"#,
            r#"{"op":"eval","tokens":[5],"pos":3,"logits":"some"}"#,
        ];
        for (engine, ok) in [(true, [true, true, false]), (false, [true, false, false])] {
            let mut out = Vec::new();
            let load: Loader<'static> = if engine {
                Box::new(|req| {
                    assert_eq!(req.n_ubatch, Some(2));
                    Ok(Box::new(Batched))
                })
            } else {
                Box::new(|_| Ok(Box::new(Echo)))
            };
            let input = requests.join("\n");
            serve_on(&mut input.as_bytes(), &mut out, HelloAnswer::new("b", "0"), load).unwrap();
            let answers: Vec<serde_json::Value> =
                String::from_utf8(out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
            let oks: Vec<bool> = answers.iter().map(|a| a["ok"].as_bool().unwrap()).collect();
            assert_eq!(oks, ok);
            if engine {
                let rows = decode_f32s(answers[1]["logits"].as_str().unwrap()).unwrap();
                assert_eq!(rows, [5.0, 3.0, 6.0, 4.0]);
            } else {
                assert!(answers[1]["error"].as_str().unwrap().contains("no batched path"));
            }
        }
    }

    #[test]
    fn serve_answers_every_request_in_order_and_survives_garbage() {
        let requests = [
            r#"{"op":"hello","protocol":1}"#,
            r#"{"op":"eval","tokens":[1],"pos":0}"#,
            "not json",
            r#"{"op":"fly"}"#,
            r#"{"op":"load","model":"x","n_ctx":4,"threads":1}"#,
            r#"{"op":"load","model":"x","n_ctx":4,"threads":1}"#,
            r#"{"op":"tokenize","text":"a","add_bos":true,"parse_special":false}"#,
            r#"{"op":"eval","tokens":[],"pos":0}"#,
            r#"{"op":"eval","tokens":[1],"pos":0}"#,
            r#"{"op":"trace_names"}"#,
            r#"{"op":"shutdown"}"#,
            r#"{"op":"reset","case":0}"#,
        ];
        let input = requests.join("\n");
        let mut out = Vec::new();
        let load: Loader<'static> = Box::new(|_| Ok(Box::new(Echo)));
        serve_on(&mut input.as_bytes(), &mut out, HelloAnswer::new("echo", "0"), load).unwrap();
        let answers: Vec<serde_json::Value> =
            String::from_utf8(out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let oks: Vec<bool> = answers.iter().map(|a| a["ok"].as_bool().unwrap()).collect();
        assert_eq!(oks, [true, false, false, false, true, false, false, false, true, false, true]);
        assert_eq!(answers[0]["protocol"], 1);
        assert_eq!(answers[4]["n_vocab"], 2);
        assert_eq!(answers[8]["logits"], "AACAPwAAAEA=");
        assert!(answers[1]["error"].as_str().unwrap().contains("no model"));
    }
}
