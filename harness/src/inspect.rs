//! `harness inspect MODEL [--json]`: what a GGUF file holds, as the engine sees it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bitnet_engine::gguf::{Array, GgmlType, GgufFile, TensorInfo, Value};
use bitnet_engine::quant::{check_i2s_integrity, detect_flavor, I2sFlavor};
use serde::Serialize;

use crate::exit::{Exit, Failure, OrExit};
use crate::hazards::{head_report, model_hazards, HeadReport, OUTPUT, TOKEN_EMBD};
use crate::receipt::Hazard;
use crate::report::term::printable;

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The GGUF file to inspect.
    pub model: PathBuf,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Everything `inspect` reports about the file; also the JSON shape of `inspect --json`, which
/// adds `reference_build` ([`ReferenceBuild`]).
#[derive(Debug, Serialize)]
pub struct InspectReport {
    pub path: String,
    pub file_size: u64,
    pub gguf_version: u32,
    pub alignment: u64,
    pub data_offset: u64,
    pub architecture: Option<String>,
    /// The head: token_embd's and output.weight's types (null: tied), and what the reference's
    /// graph for the architecture multiplies by.
    pub head: HeadReport,
    /// The reference hazards the file brings to any run (`untied_output_ignored`), as a
    /// receipt's `hazards` records them.
    pub hazards: Vec<Hazard>,
    /// `<architecture>.*` keys with the prefix removed, plus `general.*` scalars.
    pub hyperparameters: BTreeMap<String, serde_json::Value>,
    pub tokenizer: Option<TokenizerSummary>,
    pub metadata_keys: usize,
    pub tensors: Vec<TensorReport>,
    /// Names of the I2_S tensors whose bytes have integrity problems (see [`I2sReport::problems`]).
    pub corrupt_i2s_tensors: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct TokenizerSummary {
    pub model: String,
    pub pre: Option<String>,
    pub n_tokens: usize,
    pub n_merges: usize,
    pub bos_id: Option<u64>,
    pub eos_id: Option<u64>,
    pub add_bos: Option<bool>,
}

#[derive(Debug, Serialize)]
pub struct TensorReport {
    pub name: String,
    /// ggml order: the first dimension is the row length.
    pub dims: Vec<u64>,
    pub ggml_type: String,
    pub n_bytes: u64,
    /// Offset in the file (absolute).
    pub file_offset: u64,
    /// For I2_S tensors: the detected flavour (layout) and how it was decided.
    /// Boxed: most tensors have none, and a file may hold many tensors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub i2s: Option<Box<I2sReport>>,
}

#[derive(Debug, Serialize)]
pub struct I2sReport {
    /// The flavour used, or null when no flavour fits (then `note` says why).
    pub flavor: Option<String>,
    /// Every flavour whose size fits, in priority order.
    pub candidates: Vec<String>,
    /// Whether `BITNET_I2S_FLAVOR` forced it.
    pub forced: bool,
    pub note: String,
    /// Integrity problems of the bytes, one sentence each (empty when clean): invalid code 3,
    /// a zero, negative, NaN or infinite scale, or extra bytes after the tensor. Such a tensor
    /// is corrupt (typically a multi-threaded reference quantization) and `run` judges the
    /// file invalid input.
    pub problems: Vec<String>,
}

/// The reference library built into this harness (`bitnet_cpp::BuildInfo::baked`), as far as
/// the Rust engine's profile goes: which reference-build profile a `run` against it mirrors.
#[derive(Debug, Serialize)]
pub struct ReferenceBuild {
    /// The library's path.
    pub library: String,
    /// The ISA macros it was compiled with (empty when unknown).
    pub isa: Vec<String>,
    /// `avx2` or `avx512`, or null when no profile mirrors this build.
    pub isa_profile: Option<String>,
    /// Why no profile mirrors it (the hazard a run would record), or null.
    pub profile_hazard: Option<String>,
}

impl ReferenceBuild {
    /// From the baked build-info; `None` if it cannot be read.
    pub fn baked() -> Option<ReferenceBuild> {
        let info = bitnet_cpp::BuildInfo::baked().ok()?;
        let isa = info.isa.map(|i| i.macros).unwrap_or_default();
        let choice = crate::profile_choice::ProfileChoice::for_build(
            &isa,
            crate::profile_choice::ProfileSource::BuildInfo,
            None,
        );
        Some(ReferenceBuild {
            library: info.library.display().to_string(),
            isa_profile: choice.hazard.is_none().then(|| choice.profile.name().to_string()),
            profile_hazard: choice.hazard,
            isa,
        })
    }
}

/// `inspect --json`: the file's report, and the built-in reference's profile.
#[derive(Serialize)]
struct JsonReport<'a> {
    #[serde(flatten)]
    model: &'a InspectReport,
    reference_build: Option<ReferenceBuild>,
}

pub fn run(args: &InspectArgs) -> Result<Exit, Failure> {
    let report = inspect(&args.model)?;
    let reference_build = ReferenceBuild::baked();
    if args.json {
        // Streamed, not built as one string: for a file of many tensors the report is larger
        // than the file, and memory should stay a small multiple of the file.
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let json = JsonReport { model: &report, reference_build };
        serde_json::to_writer_pretty(&mut out, &json).or_exit(Exit::Internal)?;
        writeln!(out).or_exit(Exit::Internal)?;
    } else {
        print!("{}", printable(&render_text(&report)));
        let line = match &reference_build {
            Some(ReferenceBuild { isa_profile: Some(p), .. }) => format!("profile {p}"),
            Some(ReferenceBuild { profile_hazard: Some(h), .. }) => format!("no profile ({h})"),
            _ => "build-info unreadable".to_string(),
        };
        println!("built-in reference: {line}");
    }
    Ok(Exit::Ok)
}

/// Opens and describes `path`; any structural problem is a [`Exit::BadInput`] failure.
pub fn inspect(path: &Path) -> Result<InspectReport, Failure> {
    let file = GgufFile::open(path).or_exit(Exit::BadInput)?;
    Ok(describe(&file))
}

pub fn describe(file: &GgufFile) -> InspectReport {
    let architecture = file.get("general.architecture").and_then(Value::as_str).map(str::to_string);
    let mut hyperparameters = BTreeMap::new();
    for (key, value) in file.metadata() {
        let short = match &architecture {
            Some(arch) => key.strip_prefix(arch.as_str()).and_then(|k| k.strip_prefix('.')),
            None => None,
        };
        if let Some(short) = short {
            hyperparameters.insert(short.to_string(), json_value(value));
        } else if key.starts_with("general.") && !matches!(value, Value::Array(_)) {
            hyperparameters.insert(key.clone(), json_value(value));
        }
    }
    // Where each tensor's data starts, sorted: what follows a tensor is found by bisection.
    let mut starts: Vec<u64> = file.tensors().iter().map(|t| t.offset).collect();
    starts.sort_unstable();
    let tensors: Vec<TensorReport> = file
        .tensors()
        .iter()
        .map(|t| TensorReport {
            name: t.name.clone(),
            dims: t.dims.clone(),
            ggml_type: t.ggml_type.name().to_string(),
            n_bytes: t.n_bytes,
            file_offset: file.data_offset() + t.offset,
            i2s: (t.ggml_type == GgmlType::I2_S).then(|| Box::new(i2s_report(file, t, &starts))),
        })
        .collect();
    let corrupt_i2s_tensors = tensors
        .iter()
        .filter(|t| t.i2s.as_ref().is_some_and(|r| !r.problems.is_empty()))
        .map(|t| t.name.clone())
        .collect();
    InspectReport {
        path: file.path().display().to_string(),
        file_size: file.file_len(),
        gguf_version: file.version(),
        alignment: file.alignment(),
        data_offset: file.data_offset(),
        architecture,
        head: head_report(file),
        hazards: model_hazards(file),
        hyperparameters,
        tokenizer: tokenizer_summary(file),
        metadata_keys: file.metadata().len(),
        tensors,
        corrupt_i2s_tensors,
    }
}

fn i2s_report(file: &GgufFile, t: &TensorInfo, starts: &[u64]) -> I2sReport {
    let has_sibling = file.tensor(&format!("{}.scale", t.name)).is_some();
    match detect_flavor(&t.name, &t.dims, file.tensor_data(t), has_sibling) {
        Ok(d) => I2sReport {
            flavor: Some(d.flavor.name().to_string()),
            candidates: d.candidates.iter().map(|f| f.name().to_string()).collect(),
            forced: d.forced,
            note: d.note,
            problems: integrity_problems(file, t, d.flavor, starts),
        },
        Err(e) => I2sReport {
            flavor: None,
            candidates: Vec::new(),
            forced: false,
            note: e.to_string(),
            problems: Vec::new(),
        },
    }
}

/// Integrity problems of a tensor in one of bitnet.cpp's layouts (codes, then one f32 tensor
/// scale, then padding to `n/4 + 32` bytes): what [`check_i2s_integrity`] finds, plus extra
/// bytes between the tensor and the next one.
///
/// The extra bytes are the tell of `llama_model_quantize` with several threads: each row chunk
/// returns `chunk/4 + 32` bytes, the quantizer writes the sum (`n/4 + 32·chunks`), and the
/// next tensor starts after all of it, although the header's size (ggml_nbytes) is `n/4 + 32`.
/// A single-threaded quantization (and our writer) leaves no gap but alignment padding.
fn integrity_problems(file: &GgufFile, t: &TensorInfo, flavor: I2sFlavor, starts: &[u64]) -> Vec<String> {
    if !matches!(flavor, I2sFlavor::X86Qk256 | I2sFlavor::Arm64) {
        return Vec::new();
    }
    let mut problems = check_i2s_integrity(file.tensor_data(t), t.n_elements() as usize).problems();
    let end = t.offset + t.n_bytes;
    let next = starts.get(starts.partition_point(|&o| o < end)).copied();
    let next = next.unwrap_or_else(|| file.file_len() - file.data_offset());
    let extra = next.saturating_sub(end.next_multiple_of(file.alignment()));
    if extra > 0 {
        let chunks = if extra % 32 == 0 {
            format!(
                " (the size of {} more 32-byte chunk tails: a multi-threaded I2_S quantization wrote each \
                 chunk's own scale into the data)",
                extra / 32
            )
        } else {
            String::new()
        };
        problems.push(format!(
            "{extra} unexpected bytes after the tensor's n/4 + 32 before the next data{chunks}"
        ));
    }
    problems
}

fn tokenizer_summary(file: &GgufFile) -> Option<TokenizerSummary> {
    let model = file.get("tokenizer.ggml.model")?.as_str()?.to_string();
    let len = |key: &str| file.get(key).and_then(Value::as_array).map_or(0, Array::len);
    Some(TokenizerSummary {
        model,
        pre: file.get("tokenizer.ggml.pre").and_then(Value::as_str).map(str::to_string),
        n_tokens: len("tokenizer.ggml.tokens"),
        n_merges: len("tokenizer.ggml.merges"),
        bos_id: file.get("tokenizer.ggml.bos_token_id").and_then(Value::as_u64),
        eos_id: file.get("tokenizer.ggml.eos_token_id").and_then(Value::as_u64),
        add_bos: file.get("tokenizer.ggml.add_bos_token").and_then(Value::as_bool),
    })
}

/// Scalars as JSON; arrays summarised (a vocabulary does not belong in a hyper-parameter list).
fn json_value(v: &Value) -> serde_json::Value {
    use serde_json::json;
    match v {
        Value::String(s) => json!(s),
        Value::Bool(b) => json!(b),
        // Through the f32's shortest decimal form, so 1e-5 stays 1e-5 rather than 9.99999974e-6.
        Value::F32(x) => format!("{x}").parse::<f64>().map_or(json!(null), |v| json!(v)),
        Value::F64(x) => json!(x),
        Value::Array(a) => json!(format!("[{}; {}]", a.element_type(), a.len())),
        other => other.as_i64().map_or_else(|| json!(other.as_u64()), |x| json!(x)),
    }
}

/// `head: token_embd.weight q8_0, output.weight tied; the reference's lm_head: token_embd.weight`.
fn head_line(h: &HeadReport) -> String {
    let embd = match h.token_embd_type.as_deref() {
        Some(t) if h.token_embd_supported => t.to_string(),
        Some(t) => format!("{t} (the Rust engine has no mirror of this type: run stops with exit 5)"),
        None => "missing".to_string(),
    };
    let output = match &h.output_type {
        Some(t) => format!("{t} (untied)"),
        None => "tied".to_string(),
    };
    let lm_head = match h.reference_lm_head {
        Some(t) => format!("; the reference's lm_head: {t}"),
        None => String::new(),
    };
    format!("head: {TOKEN_EMBD} {embd}, {OUTPUT} {output}{lm_head}")
}

fn render_text(r: &InspectReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{}: GGUF v{}, {} bytes, alignment {}, data at byte {}, {} metadata keys, {} tensors",
        r.path,
        r.gguf_version,
        r.file_size,
        r.alignment,
        r.data_offset,
        r.metadata_keys,
        r.tensors.len()
    );
    let graph = r.head.graph.map_or(String::new(), |g| format!(" (the reference's graph: {g})"));
    let _ = writeln!(s, "architecture: {}{graph}", r.architecture.as_deref().unwrap_or("(none)"));
    let _ = writeln!(s, "{}", head_line(&r.head));
    if let Some(note) = r.head.output_note.as_ref().filter(|_| r.hazards.is_empty()) {
        let _ = writeln!(s, "note: {note}");
    }
    for h in &r.hazards {
        let _ = writeln!(s, "{}", crate::hazards::line(h));
    }
    let _ = writeln!(s, "hyper-parameters:");
    for (k, v) in &r.hyperparameters {
        let _ = writeln!(s, "  {k} = {v}");
    }
    match &r.tokenizer {
        Some(t) => {
            let _ = writeln!(
                s,
                "tokenizer: {} (pre {}), {} tokens, {} merges, bos {}, eos {}, add_bos {}",
                t.model,
                t.pre.as_deref().unwrap_or("-"),
                t.n_tokens,
                t.n_merges,
                t.bos_id.map_or("-".into(), |x| x.to_string()),
                t.eos_id.map_or("-".into(), |x| x.to_string()),
                t.add_bos.map_or("-".into(), |x| x.to_string()),
            );
        }
        None => {
            let _ = writeln!(s, "tokenizer: (none)");
        }
    }
    let _ = writeln!(s, "tensors:");
    let name_w = r.tensors.iter().map(|t| t.name.len()).max().unwrap_or(4).max(4);
    let _ =
        writeln!(s, "  {:name_w$}  {:>18}  {:>6}  {:>12}  i2_s flavour", "name", "shape", "type", "bytes");
    for t in &r.tensors {
        let dims = t.dims.iter().map(u64::to_string).collect::<Vec<_>>().join("×");
        let flavor = match t.i2s.as_deref() {
            Some(I2sReport { flavor: Some(f), candidates, .. }) if candidates.len() > 1 => {
                let others: Vec<&str> = candidates.iter().map(String::as_str).filter(|c| c != f).collect();
                format!("{f} (same size: {})", others.join(", "))
            }
            Some(I2sReport { flavor: Some(f), .. }) => f.clone(),
            Some(I2sReport { flavor: None, note, .. }) => format!("NONE FITS: {note}"),
            None => String::new(),
        };
        let corrupt = if t.i2s.as_ref().is_some_and(|r| !r.problems.is_empty()) { "  CORRUPT" } else { "" };
        let _ = writeln!(
            s,
            "  {:name_w$}  {:>18}  {:>6}  {:>12}  {flavor}{corrupt}",
            t.name, dims, t.ggml_type, t.n_bytes
        );
    }
    if !r.corrupt_i2s_tensors.is_empty() {
        let _ = writeln!(
            s,
            "I2_S integrity: {} tensor(s) are corrupt; results on this file mean nothing:",
            r.corrupt_i2s_tensors.len()
        );
        for t in r.tensors.iter().filter(|t| r.corrupt_i2s_tensors.contains(&t.name)) {
            for p in t.i2s.iter().flat_map(|i| &i.problems) {
                let _ = writeln!(s, "  {}: {p}", t.name);
            }
        }
    }
    s
}
