//! One engine in its own process (`harness bench-worker`), so that each engine's peak memory
//! is its own and neither pays for the other's pages.
//!
//! Both engines are timed the same way, in-process, by the worker: no pipe in the timed
//! region. The reference runs through `bitnet_cpp::Context` (llama_decode, logits copied into
//! a reused buffer); the Rust engine through `Model::eval`. The parent sends one request per
//! line (JSON) on stdin; the worker answers one line on stdout starting with [`REPLY_PREFIX`]
//! (anything else on stdout, e.g. a print from C++, is ignored by the parent).

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use anyhow::{anyhow, bail, Context as _};
use bitnet_cpp::{ContextParams, Reference};
use bitnet_engine::gguf::GgufFile;
use bitnet_engine::model::{Model, ModelOptions};
use bitnet_engine::profile::RefProfile;
use serde::{Deserialize, Serialize};

/// Marks the worker's protocol lines on stdout.
pub const REPLY_PREFIX: &str = "@bench ";

/// Which engine a worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum EngineKind {
    Rust,
    Cpp,
}

impl EngineKind {
    pub fn label(self) -> &'static str {
        match self {
            EngineKind::Rust => "rust",
            EngineKind::Cpp => "bitnet.cpp",
        }
    }
}

/// Arguments of the hidden `bench-worker` subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    #[arg(long, value_enum)]
    pub engine: EngineKind,
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub threads: usize,
    #[arg(long)]
    pub n_ctx: usize,
    /// The reference-build profile the Rust engine mirrors (the parent's reference's own).
    #[arg(long, value_parser = crate::profile_choice::parse_profile)]
    pub profile: Option<RefProfile>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// Reset the KV cache, then evaluate `tokens` tokens one at a time from position 0.
    Decode { tokens: usize },
    /// Reset, then evaluate `tokens` tokens as a prompt (a batch where the engine has one).
    Prefill { tokens: usize },
    /// Report memory use.
    Memory,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Reply {
    Ready {
        load_s: f64,
        threads_used: usize,
        n_ctx: usize,
        kernel: String,
        threading: Option<String>,
    },
    /// Seconds of each token.
    Decoded {
        token_s: Vec<f64>,
    },
    Prefilled {
        seconds: f64,
        method: String,
    },
    Memory(MemoryStatus),
    Error(String),
}

/// From /proc/self/status, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryStatus {
    pub vm_hwm: u64,
    pub rss_anon: u64,
    pub rss_file: u64,
    /// Resident bytes of the model's mapping, and how many are mapped with 2 MiB pages.
    #[serde(default)]
    pub model_mapped: u64,
    #[serde(default)]
    pub model_mapped_2mib: u64,
}

impl MemoryStatus {
    /// Parses the `VmHWM`, `RssAnon` and `RssFile` lines (in kB) of a /proc status file.
    pub fn parse(status: &str) -> MemoryStatus {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map_or(0, |kb| kb * 1024)
        };
        MemoryStatus {
            vm_hwm: field("VmHWM"),
            rss_anon: field("RssAnon"),
            rss_file: field("RssFile"),
            ..MemoryStatus::default()
        }
    }

    fn of_self(model: &Path) -> MemoryStatus {
        let (model_mapped, model_mapped_2mib) = super::page_cache::model_mapping(model);
        MemoryStatus {
            model_mapped,
            model_mapped_2mib,
            ..MemoryStatus::parse(&std::fs::read_to_string("/proc/self/status").unwrap_or_default())
        }
    }
}

/// The token evaluated at `pos` in every run: fixed, spread over the vocabulary, never 0.
pub fn token_at(pos: usize, n_vocab: usize) -> u32 {
    ((pos * 7919 + 13) % n_vocab.max(1)) as u32
}

/// The engine a worker drives.
enum Engine<'a> {
    Rust(Box<Model<'a>>),
    Cpp { ctx: bitnet_cpp::Context, logits: Vec<f32> },
}

impl Engine<'_> {
    fn reset(&mut self) {
        match self {
            Engine::Rust(m) => m.reset(),
            Engine::Cpp { ctx, .. } => ctx.reset(),
        }
    }

    fn eval(&mut self, token: u32, pos: usize) -> anyhow::Result<()> {
        match self {
            Engine::Rust(m) => {
                let logits = m.eval(token, pos)?;
                std::hint::black_box(logits);
            }
            Engine::Cpp { ctx, logits } => {
                ctx.eval_token_into(token as i32, pos as u32, logits)?;
                std::hint::black_box(&logits);
            }
        }
        Ok(())
    }

    fn prefill(&mut self, tokens: &[u32]) -> anyhow::Result<&'static str> {
        match self {
            Engine::Rust(m) => {
                std::hint::black_box(m.eval_batch(tokens, 0)?);
                Ok("batch")
            }
            Engine::Cpp { ctx, .. } => {
                let ids: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
                std::hint::black_box(ctx.eval_batch_last(&ids, 0)?);
                Ok("batch")
            }
        }
    }
}

/// Rust engine options: the reference's roundings mirrored (as `harness run` does), the
/// reference build's profile (the host's if the parent gave none), and the threads asked for.
fn rust_options(n_ctx: usize, threads: usize, profile: Option<RefProfile>) -> ModelOptions {
    ModelOptions {
        n_ctx,
        exact_reference_rounding: true,
        threads,
        profile: profile.unwrap_or_else(RefProfile::host),
    }
}

/// The child's loop. Returns the process exit code.
pub fn serve(args: &WorkerArgs) -> i32 {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match serve_inner(args, &mut out) {
        Ok(()) => 0,
        Err(e) => {
            let _ = reply(&mut out, &Reply::Error(format!("{e:#}")));
            eprintln!("bench-worker ({}): {e:#}", args.engine.label());
            2
        }
    }
}

fn reply(out: &mut impl Write, r: &Reply) -> std::io::Result<()> {
    writeln!(out, "{REPLY_PREFIX}{}", serde_json::to_string(r).map_err(std::io::Error::other)?)?;
    out.flush()
}

fn serve_inner(args: &WorkerArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let t0 = Instant::now();
    // Kept alive for the Rust model, which borrows the map.
    let file;
    let (mut engine, n_vocab, threads_used, n_ctx, kernel, threading) = match args.engine {
        EngineKind::Rust => {
            file = GgufFile::open(&args.model)?;
            let options = rust_options(args.n_ctx, args.threads, args.profile);
            let profile = options.profile;
            let model = Model::load(&file, options)?;
            let (n_vocab, n_ctx, threads_used) = (model.config().n_vocab, model.n_ctx(), model.threads());
            let kernel = format!(
                "qk256 {}, float {}, {} reference profile",
                model.kernel_name(),
                model.float_kernel_name(),
                profile
            );
            let threading =
                Some("rayon pool made at load: matrix rows and attention heads split".to_string());
            (Engine::Rust(Box::new(model)), n_vocab, threads_used, n_ctx, kernel, threading)
        }
        EngineKind::Cpp => {
            let reference = Reference::open_default()?;
            let model = reference.load_model(&args.model)?;
            let params = ContextParams {
                n_ctx: args.n_ctx as u32,
                n_threads: args.threads as u32,
                n_ubatch: bitnet_cpp::DEFAULT_N_UBATCH,
            };
            let ctx = model.new_context(params)?;
            let (n_vocab, n_ctx) = (model.n_vocab(), ctx.n_ctx() as usize);
            let kernel = reference.build_info().kernels.clone();
            let threading = Some("ggml (OpenMP): n_threads and n_threads_batch".to_string());
            (Engine::Cpp { ctx, logits: Vec::new() }, n_vocab, args.threads, n_ctx, kernel, threading)
        }
    };
    let ready = Reply::Ready { load_s: t0.elapsed().as_secs_f64(), threads_used, n_ctx, kernel, threading };
    reply(out, &ready)?;

    for line in std::io::stdin().lock().lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let request: Request =
            serde_json::from_str(&line).with_context(|| format!("bad request {line:?}"))?;
        let answer = match request {
            Request::Decode { tokens } => {
                engine.reset();
                let mut token_s = Vec::with_capacity(tokens);
                for pos in 0..tokens {
                    let t = Instant::now();
                    engine.eval(token_at(pos, n_vocab), pos)?;
                    token_s.push(t.elapsed().as_secs_f64());
                }
                Reply::Decoded { token_s }
            }
            Request::Prefill { tokens } => {
                engine.reset();
                let ids: Vec<u32> = (0..tokens).map(|p| token_at(p, n_vocab)).collect();
                let t = Instant::now();
                let method = engine.prefill(&ids)?;
                Reply::Prefilled { seconds: t.elapsed().as_secs_f64(), method: method.into() }
            }
            Request::Memory => Reply::Memory(MemoryStatus::of_self(&args.model)),
        };
        reply(out, &answer)?;
    }
    Ok(())
}

/// The parent's handle on a worker.
pub struct WorkerHandle {
    pub engine: EngineKind,
    child: Child,
    stdin: Option<BufWriter<ChildStdin>>,
    stdout: BufReader<ChildStdout>,
    pub ready: Reply,
}

impl WorkerHandle {
    /// Starts `harness bench-worker` for one engine and waits until its model is loaded; the
    /// Rust engine mirrors `profile`.
    pub fn spawn(
        engine: EngineKind,
        model: &Path,
        threads: usize,
        n_ctx: usize,
        profile: RefProfile,
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find the harness binary")?;
        let mut cmd = Command::new(exe);
        cmd.arg("bench-worker")
            .arg("--engine")
            .arg(match engine {
                EngineKind::Rust => "rust",
                EngineKind::Cpp => "cpp",
            })
            .arg("--model")
            .arg(model)
            .arg("--threads")
            .arg(threads.to_string())
            .arg("--n-ctx")
            .arg(n_ctx.to_string())
            .arg("--profile")
            .arg(profile.name())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if std::env::var_os("BITNET_CPP_LOG").is_none() {
            cmd.env("BITNET_CPP_LOG", "error");
        }
        let mut child = cmd.spawn().context("cannot start the bench worker")?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("no pipes to the bench worker");
        };
        let mut w = WorkerHandle {
            engine,
            child,
            stdin: Some(BufWriter::new(stdin)),
            stdout: BufReader::new(stdout),
            ready: Reply::Error("not started".into()),
        };
        w.ready = w.read_reply("loading the model")?;
        Ok(w)
    }

    fn read_reply(&mut self, during: &str) -> anyhow::Result<Reply> {
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.stdout.read_line(&mut line)?;
            if n == 0 {
                let status = self.child.wait()?;
                bail!("the {} bench worker ended ({status}) while {during}", self.engine.label());
            }
            if let Some(json) = line.trim_end().strip_prefix(REPLY_PREFIX) {
                let r: Reply = serde_json::from_str(json)
                    .with_context(|| format!("unreadable reply from the {} worker", self.engine.label()))?;
                if let Reply::Error(e) = r {
                    return Err(anyhow!("{} engine failed while {during}: {e}", self.engine.label()));
                }
                return Ok(r);
            }
        }
    }

    pub fn request(&mut self, r: &Request) -> anyhow::Result<Reply> {
        let during = format!("{r:?}");
        let stdin = self.stdin.as_mut().ok_or_else(|| anyhow!("the worker's input is closed"))?;
        writeln!(stdin, "{}", serde_json::to_string(r)?)?;
        stdin.flush()?;
        self.read_reply(&during)
    }

    /// Seconds per token of one decode run.
    pub fn decode(&mut self, tokens: usize) -> anyhow::Result<Vec<f64>> {
        match self.request(&Request::Decode { tokens })? {
            Reply::Decoded { token_s } => Ok(token_s),
            other => bail!("unexpected reply {other:?}"),
        }
    }

    pub fn prefill(&mut self, tokens: usize) -> anyhow::Result<(f64, String)> {
        match self.request(&Request::Prefill { tokens })? {
            Reply::Prefilled { seconds, method } => Ok((seconds, method)),
            other => bail!("unexpected reply {other:?}"),
        }
    }

    pub fn memory(&mut self) -> anyhow::Result<MemoryStatus> {
        match self.request(&Request::Memory)? {
            Reply::Memory(m) => Ok(m),
            other => bail!("unexpected reply {other:?}"),
        }
    }

    /// Closes the worker's input and waits for it to end.
    pub fn finish(mut self) -> anyhow::Result<()> {
        self.stdin = None;
        let status = self.child.wait()?;
        if !status.success() {
            bail!("the {} bench worker ended with {status}", self.engine.label());
        }
        Ok(())
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        // A worker abandoned on an error path: its input closes with `self`; make sure it ends.
        if let Ok(None) = self.child.try_wait() {
            self.stdin = None;
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_lines_parse() {
        let s =
            "Name:\tharness\nVmHWM:\t  123456 kB\nVmRSS:\t 1 kB\nRssAnon:\t    2048 kB\nRssFile:\t  10 kB\n";
        let m = MemoryStatus::parse(s);
        assert_eq!(
            m,
            MemoryStatus {
                vm_hwm: 123456 * 1024,
                rss_anon: 2048 * 1024,
                rss_file: 10 * 1024,
                ..MemoryStatus::default()
            }
        );
        assert_eq!(MemoryStatus::parse(""), MemoryStatus::default());
    }

    #[test]
    fn tokens_stay_in_the_vocabulary() {
        assert!((0..1000).all(|p| (token_at(p, 300) as usize) < 300));
        assert_eq!(token_at(0, 1), 0);
    }
}
