//! The worker side: answers requests on stdin/stdout with the in-process safe wrapper.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use super::protocol::{read_frame, tag, write_frame, Dec, Enc, ERR, OK, PROTOCOL_VERSION};
use crate::{CaptureFilter, Context, ContextParams, GgufTensors, Model, QuantizeOptions, Reference};

/// Which library a worker should load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LibraryChoice {
    /// `BITNET_CPP_DIR` at run time if set, else the default library built for this crate
    /// (the first `-march` of `BITNET_CPP_MARCH`).
    Default,
    /// The default library built for this crate, ignoring `BITNET_CPP_DIR`.
    Built,
    /// The library built for this `-march` value (`native`, `x86-64-v3`, ...; see
    /// [`crate::built_references`]), ignoring `BITNET_CPP_DIR`.
    Build(String),
    /// A user's folder (prebuilt library plus the headers it was built from).
    Dir(PathBuf),
}

impl LibraryChoice {
    /// [`LibraryChoice::Build`] of `march` when given, else [`LibraryChoice::Default`].
    pub fn from_build(march: Option<&str>) -> LibraryChoice {
        match march {
            Some(m) => LibraryChoice::Build(m.to_string()),
            None => LibraryChoice::Default,
        }
    }

    /// Load the chosen library in this process.
    pub fn open(&self) -> crate::Result<Reference> {
        match self {
            LibraryChoice::Default => Reference::open_default(),
            LibraryChoice::Built => Reference::open_built(),
            LibraryChoice::Build(march) => Reference::open_build(march),
            LibraryChoice::Dir(dir) => Reference::open_dir(dir),
        }
    }
}

#[derive(Default)]
struct State {
    reference: Option<Reference>,
    /// Context before model: dropped first (it holds the model alive anyway).
    context: Option<Context>,
    model: Option<Model>,
    tensors: Option<(PathBuf, GgufTensors)>,
}

extern "C" {
    /// POSIX dup2 from the C library that std already links.
    fn dup2(oldfd: i32, newfd: i32) -> i32;
}

/// Serve requests from stdin, answering on stdout, until stdin closes or `Shutdown`.
/// Returns the process exit code (0 on a clean end). Call it from a hidden subcommand, e.g.
/// `harness cpp-worker`, and spawn that with [`super::RefWorker::spawn`].
///
/// Before serving, stdout is moved to a private descriptor and descriptor 1 is pointed at
/// stderr, so that anything the C++ code prints cannot corrupt the protocol; stderr passes
/// through to the parent for logs and assertion messages.
pub fn serve_stdio() -> i32 {
    let _ = std::io::stdout().flush();
    let proto_out = match std::io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => File::from(fd),
        Err(e) => {
            eprintln!("cpp-worker: cannot duplicate stdout: {e}");
            return 2;
        }
    };
    // SAFETY: dup2 on two descriptors this process owns (stderr onto stdout); the protocol
    // continues on the duplicate made above. No Rust object caches descriptor 1's identity.
    if unsafe { dup2(2, 1) } < 0 {
        eprintln!("cpp-worker: cannot redirect stdout to stderr");
        return 2;
    }
    let mut input = BufReader::with_capacity(1 << 16, std::io::stdin().lock());
    let mut output = BufWriter::with_capacity(1 << 20, proto_out);
    let mut state = State::default();
    loop {
        let (t, payload) = match read_frame(&mut input) {
            Ok(Some(frame)) => frame,
            Ok(None) => return 0,
            Err(e) => {
                eprintln!("cpp-worker: cannot read a request: {e}");
                return 2;
            }
        };
        let reply = handle(&mut state, t, &payload);
        let written = match &reply {
            Ok(p) => write_frame(&mut output, OK, p),
            Err(msg) => write_frame(&mut output, ERR, msg.as_bytes()),
        };
        if let Err(e) = written {
            // The parent closed its end: it stopped early (an invalid input found while this
            // worker was still loading, say) and wants no answer. Nothing to report.
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return 0;
            }
            eprintln!("cpp-worker: cannot write a response: {e}");
            return 2;
        }
        if t == tag::SHUTDOWN {
            return 0;
        }
    }
}

fn reference(state: &State) -> Result<&Reference, String> {
    state.reference.as_ref().ok_or_else(|| "no library loaded (Hello first)".to_string())
}

fn context(state: &mut State) -> Result<&mut Context, String> {
    state.context.as_mut().ok_or_else(|| "no model loaded".to_string())
}

fn tensors<'a>(state: &'a mut State, path: &Path) -> Result<&'a GgufTensors, String> {
    let cached = matches!(&state.tensors, Some((p, _)) if p == path);
    if !cached {
        state.tensors = None;
        let t = reference(state)?.open_gguf_tensors(path).map_err(|e| e.to_string())?;
        state.tensors = Some((path.to_path_buf(), t));
    }
    Ok(&state.tensors.as_ref().expect("just set").1)
}

fn handle(state: &mut State, t: u8, payload: &[u8]) -> Result<Vec<u8>, String> {
    let mut d = Dec::new(payload);
    let e = |e: crate::Error| e.to_string();
    let out = match t {
        tag::HELLO => {
            let version = d.u32("protocol version")?;
            if version != PROTOCOL_VERSION {
                return Err(format!(
                    "protocol version {version} requested, this worker speaks {PROTOCOL_VERSION}"
                ));
            }
            let choice = match d.u8("library choice")? {
                0 => LibraryChoice::Default,
                1 => LibraryChoice::Built,
                2 => LibraryChoice::Dir(PathBuf::from(d.str("library dir")?)),
                3 => LibraryChoice::Build(d.str("library march")?),
                other => return Err(format!("unknown library choice {other}")),
            };
            let r = choice.open().map_err(e)?;
            let reply = Enc::new()
                .json(r.build_info())
                .str(&r.library_path().to_string_lossy())
                .str(&r.system_info());
            state.reference = Some(r);
            reply
        }
        tag::LOAD_MODEL => {
            let path = PathBuf::from(d.str("model path")?);
            let params = ContextParams {
                n_ctx: d.u32("n_ctx")?,
                n_threads: d.u32("n_threads")?,
                n_ubatch: d.u32("n_ubatch")?,
            };
            state.context = None;
            state.model = None;
            let model = reference(state)?.load_model(&path).map_err(e)?;
            let ctx = model.new_context(params).map_err(e)?;
            let info = model.info();
            state.model = Some(model);
            state.context = Some(ctx);
            Enc::new().json(&info)
        }
        tag::MODEL_INFO => {
            let m = state.model.as_ref().ok_or("no model loaded")?;
            Enc::new().json(&m.info())
        }
        tag::TOKENIZE => {
            let text = d.str("text")?;
            let (add, parse) = (d.bool("add_special")?, d.bool("parse_special")?);
            let m = state.model.as_ref().ok_or("no model loaded")?;
            Enc::new().i32s(&m.tokenize(&text, add, parse).map_err(e)?)
        }
        tag::TOKENIZE_MANY => {
            let (add, parse) = (d.bool("add_special")?, d.bool("parse_special")?);
            let n = d.u32("count")?;
            let m = state.model.as_ref().ok_or("no model loaded")?;
            let mut out = Enc::new().u32(n);
            for _ in 0..n {
                out = out.i32s(&m.tokenize(&d.str("text")?, add, parse).map_err(e)?);
            }
            out
        }
        tag::DETOKENIZE => {
            let tokens = d.i32s("tokens")?;
            let (remove, unparse) = (d.bool("remove_special")?, d.bool("unparse_special")?);
            let m = state.model.as_ref().ok_or("no model loaded")?;
            Enc::new().bytes(&m.detokenize(&tokens, remove, unparse).map_err(e)?)
        }
        tag::TOKEN_PIECE => {
            let token = d.i32("token")?;
            let special = d.bool("special")?;
            let m = state.model.as_ref().ok_or("no model loaded")?;
            Enc::new().bytes(&m.token_piece(token, special).map_err(e)?)
        }
        tag::EVAL_TOKEN => {
            let (token, pos) = (d.i32("token")?, d.u32("pos")?);
            let ctx = context(state)?;
            // The worker's own compute time travels with the logits, so a parent that overlaps
            // it with other work can still report each engine's time.
            let started = std::time::Instant::now();
            let logits = ctx.eval_token(token, pos).map_err(e)?;
            let micros = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
            Enc::new().u32(micros).f32s(&logits)
        }
        tag::EVAL_BATCH => {
            let tokens = d.i32s("tokens")?;
            let start = d.u32("start_pos")?;
            let ctx = context(state)?;
            let started = std::time::Instant::now();
            let logits = ctx.eval_batch(&tokens, start).map_err(e)?;
            let micros = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
            Enc::new().u32(micros).f32s(&logits)
        }
        tag::EVAL_BATCH_CAPTURE => {
            let tokens = d.i32s("tokens")?;
            let start = d.u32("start_pos")?;
            let filter: CaptureFilter = d.json("capture filter")?;
            let (logits, captured) =
                context(state)?.eval_batch_capture(&tokens, start, &filter).map_err(e)?;
            let mut enc = Enc::new().f32s(&logits).u32(captured.len() as u32);
            for c in &captured {
                enc = enc.json(c).f32s(&c.data);
            }
            enc
        }
        tag::EVAL_CAPTURE => {
            let (token, pos) = (d.i32("token")?, d.u32("pos")?);
            let filter: CaptureFilter = d.json("capture filter")?;
            let (logits, captured) = context(state)?.eval_token_capture(token, pos, &filter).map_err(e)?;
            let mut enc = Enc::new().f32s(&logits).u32(captured.len() as u32);
            for c in &captured {
                enc = enc.json(c).f32s(&c.data);
            }
            enc
        }
        tag::RESET => {
            context(state)?.reset();
            Enc::new()
        }
        tag::LIST_TENSORS => {
            let path = PathBuf::from(d.str("path")?);
            Enc::new().json(&tensors(state, &path)?.entries())
        }
        tag::DEQUANTIZE => {
            let path = PathBuf::from(d.str("path")?);
            let name = d.str("tensor name")?;
            let t = tensors(state, &path)?;
            let entry = t.entries().into_iter().find(|x| x.name == name);
            let entry = entry.ok_or_else(|| format!("{}: no tensor named {name:?}", path.display()))?;
            Enc::new().json(&entry).f32s(&t.dequantize(&name).map_err(e)?)
        }
        tag::QUANTIZE => {
            let input = PathBuf::from(d.str("input")?);
            let output = PathBuf::from(d.str("output")?);
            let options: QuantizeOptions = d.json("quantize options")?;
            reference(state)?.quantize(&input, &output, options).map_err(e)?;
            Enc::new()
        }
        tag::SHUTDOWN => Enc::new(),
        other => return Err(format!("unknown request tag {other}")),
    };
    d.finish("request")?;
    Ok(out.0)
}
