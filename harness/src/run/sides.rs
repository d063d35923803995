//! Stage 1 of a run: the two engines, named, started and loaded, and the reference-build
//! profile the Rust engine mirrors.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use bitnet_cpp::worker::LibraryChoice;
use bitnet_cpp::ContextParams;
use bitnet_engine::model::{Model, ModelOptions};

use super::identity::ModelHash;
use super::plan::Plans;
use super::RunMode;
use super::{model_failure, ModeChoice, ModelFile, RunArgs};
use crate::engine::cpp::{library_choice, CppSide};
use crate::engine::external::ExternalEngine;
use crate::engine::protocol::LoadRequest;
use crate::engine::rust::RustSide;
use crate::engine::saved::{SavedFooter, SavedSide, MODE_BATCH};
use crate::engine::{Engine, EngineSpec, Identity};
use crate::exit::{Exit, Failure, OrExit};
use crate::profile_choice::{ProfileChoice, ProfileSource};
use crate::receipt;
use crate::report::term::Progress;

/// How long an external engine may take to answer one request, unless `--engine-timeout`.
const DEFAULT_ENGINE_TIMEOUT: Duration = Duration::from_secs(600);

/// Which engines, as the user named them: side A (under test) and side B (held against).
#[derive(Clone)]
pub(super) struct Specs {
    pub a: EngineSpec,
    pub b: EngineSpec,
}

impl Specs {
    /// `--engine`/`--engine-cmd` (default `rust`) and `--against`/`--reference`/`--reference-build`
    /// (default `cpp`, the default build).
    pub fn from_args(args: &RunArgs, given: bool) -> Result<Specs, Failure> {
        let a = match (&args.engine_cmd, &args.engine) {
            _ if given => EngineSpec::Given,
            (Some(cmd), _) => EngineSpec::Command(cmd.clone()),
            (None, Some(spec)) => spec.clone(),
            (None, None) => EngineSpec::Rust,
        };
        let b = match (&args.against, &args.reference) {
            (Some(spec), _) => spec.clone(),
            (None, Some(path)) => EngineSpec::Saved(path.clone()),
            (None, None) => EngineSpec::Cpp(args.reference_build.clone().filter(|m| !m.is_empty())),
        };
        for spec in [&a, &b] {
            if let EngineSpec::Cpp(Some(march)) = spec {
                library_choice(Some(march))?;
            }
        }
        if args.save_reference.is_some() && matches!(b, EngineSpec::Saved(_)) {
            return Err(Failure::new(
                Exit::BadInput,
                anyhow!("--save-reference saves what side B computes; side B is already a saved reference"),
            ));
        }
        Ok(Specs { a, b })
    }

    fn both(&self) -> [&EngineSpec; 2] {
        [&self.a, &self.b]
    }
}

/// How a side is spoken of in messages.
pub(super) fn side_name(spec: &EngineSpec) -> String {
    match spec {
        EngineSpec::Rust => "the Rust engine".into(),
        EngineSpec::Cpp(_) | EngineSpec::CppDir(_) => "the C++ reference".into(),
        EngineSpec::Saved(p) => format!("the saved reference {}", p.display()),
        EngineSpec::Command(c) => format!("the engine `{c}`"),
        EngineSpec::Given => "the engine under test".into(),
    }
}

/// An engine loaded in the background, and the seconds it took.
type Loaded = (Box<dyn Engine + Send>, f64);

/// An engine on its way up.
enum Start {
    /// Loaded once the cases are planned (its cache is sized to them).
    Rust,
    /// Handed over, loaded, by the program calling the library.
    Given,
    Saved(Box<SavedSide>),
    /// Loading in another process; the thread returns it and the seconds it took.
    Loading(JoinHandle<Result<Loaded, Failure>>),
}

pub(super) struct Starting {
    a: Start,
    b: Start,
}

/// Starts both engines: those in other processes load the model in the background while this
/// process reads and hashes it (if something fails first, they see their pipe close and exit).
pub(super) fn start(
    specs: &Specs,
    model: &ModelFile,
    args: &RunArgs,
    cancel: &Arc<AtomicBool>,
    ui: &Progress,
) -> Result<Starting, Failure> {
    let mode = ModeChoice::from_args(args)?;
    let one = |spec: &EngineSpec| -> Result<Start, Failure> {
        let (path, n_ctx, threads) = (model.path.clone(), model.n_ctx(), args.threads as usize);
        let cancel = Arc::clone(cancel);
        let spawn = |f: Box<dyn FnOnce() -> Result<Box<dyn Engine + Send>, Failure> + Send>| {
            Start::Loading(std::thread::spawn(move || {
                let t = Instant::now();
                f().map(|e| (e, t.elapsed().as_secs_f64()))
            }))
        };
        Ok(match spec.clone() {
            EngineSpec::Rust => Start::Rust,
            EngineSpec::Given => Start::Given,
            EngineSpec::Saved(p) => Start::Saved(Box::new(SavedSide::open(&p).or_exit(Exit::BadInput)?)),
            EngineSpec::Cpp(_) | EngineSpec::CppDir(_) => {
                ui.step("starting the C++ reference (it loads the model)");
                let library = match spec {
                    EngineSpec::Cpp(march) => library_choice(march.as_deref())?,
                    EngineSpec::CppDir(dir) => LibraryChoice::Dir(dir.clone()),
                    _ => unreachable!("a bitnet.cpp spec"),
                };
                let params = ContextParams {
                    n_ctx: n_ctx as u32,
                    n_threads: threads as u32,
                    n_ubatch: mode.engine_ubatch() as u32,
                };
                spawn(Box::new(move || {
                    let side = CppSide::start_with(library, &path, params, cancel).map_err(|e| {
                        Failure::new(
                            Exit::ReferenceUnavailable,
                            anyhow!("cannot start the C++ reference: {e}"),
                        )
                    })?;
                    Ok(Box::new(side) as Box<dyn Engine + Send>)
                }))
            }
            EngineSpec::Command(cmd) => {
                ui.step(&format!("starting the engine `{cmd}` (it loads the model)"));
                let timeout = args.engine_timeout.map_or(DEFAULT_ENGINE_TIMEOUT, Duration::from_secs);
                let n_ubatch = mode.sizes().map(|(_, u)| u);
                let load = LoadRequest { model: path, n_ctx, threads, n_ubatch };
                spawn(Box::new(move || {
                    let side = ExternalEngine::start_with(&cmd, load, timeout, cancel).map_err(|e| {
                        Failure::new(
                            Exit::ReferenceUnavailable,
                            anyhow!("cannot start the engine `{cmd}`: {e}"),
                        )
                    })?;
                    Ok(Box::new(side) as Box<dyn Engine + Send>)
                }))
            }
        })
    };
    Ok(Starting { a: one(&specs.a)?, b: one(&specs.b)? })
}

/// A side of the run.
pub(super) enum Side<'f> {
    RustPending,
    Ready(Box<dyn Engine + 'f>),
}

/// The two engines of a run, and what the run knows about them.
pub(super) struct Engines<'f> {
    pub specs: Specs,
    pub a: Side<'f>,
    pub b: Side<'f>,
    /// The profile the Rust engine mirrors, when a side is the Rust engine.
    pub profile: Option<ProfileChoice>,
    /// A saved reference's footer (either side), which fixes prompts, positions and tokens.
    pub saved: Option<(PathBuf, SavedFooter)>,
    /// Seconds each side took to load (A, B).
    pub load_s: [f64; 2],
}

/// Waits for both engines, checks a saved reference against the model, and chooses the
/// profile the Rust engine will mirror.
pub(super) fn join<'f>(
    starting: Starting,
    given: Option<Box<dyn Engine + 'f>>,
    specs: &Specs,
    model: &'f ModelFile,
    model_hash: &ModelHash<'_>,
    args: &RunArgs,
    ui: &Progress,
) -> Result<Engines<'f>, Failure> {
    let mut saved = None;
    let mut given = given;
    let mut finish = |start: Start| -> Result<(Side<'f>, f64), Failure> {
        Ok(match start {
            Start::Rust => (Side::RustPending, 0.0),
            Start::Given => (Side::Ready(given.take().expect("a given engine for side A")), 0.0),
            Start::Saved(s) => {
                check_saved(&s, model_hash.get(), model.config.n_vocab)?;
                check_saved_mode(&s, ModeChoice::from_args(args)?)?;
                saved = Some((s.path().to_path_buf(), s.footer().clone()));
                (Side::Ready(s), 0.0)
            }
            Start::Loading(handle) => {
                ui.step("waiting for the engines to load the model");
                let (engine, secs) = handle.join().map_err(|_| {
                    Failure::new(Exit::Internal, anyhow!("the thread starting an engine panicked"))
                })??;
                (Side::Ready(engine as Box<dyn Engine + 'f>), secs)
            }
        })
    };
    let (a, a_s) = finish(starting.a)?;
    let (b, b_s) = finish(starting.b)?;
    for side in [&a, &b] {
        if let Side::Ready(engine) = side {
            if engine.n_vocab() != model.config.n_vocab {
                return Err(Failure::new(
                    Exit::ReferenceUnavailable,
                    anyhow!(
                        "{} reports {} logits per position, the model has {} tokens",
                        engine.identity().label(),
                        engine.n_vocab(),
                        model.config.n_vocab
                    ),
                ));
            }
        }
    }
    let mut engines = Engines { specs: specs.clone(), a, b, profile: None, saved, load_s: [a_s, b_s] };
    engines.profile = engines.choose_profile(args.reference_profile);
    if let Some(p) = &engines.profile {
        if let Some(w) = p.warning() {
            // Shown even with --quiet: unless overridden, it decides the verdict.
            if args.quiet {
                eprintln!("{w}");
            } else {
                ui.say(&w);
            }
        }
        ui.say(&format!("reference profile: {} ({})", p.profile, p.source));
    }
    Ok(engines)
}

/// A saved reference must fit the model before any logit is read: the same file (sha256), a
/// schema this harness reads, its vocabulary size (the length of every row) and its token ids.
fn check_saved(s: &SavedSide, sha256: &str, n_vocab: usize) -> Result<(), Failure> {
    let (path, footer) = (s.path().display(), s.footer());
    let bad = |exit, msg: String| Err(Failure::new(exit, anyhow!("{path}: {msg}")));
    if footer.model_sha256 != sha256 {
        return bad(
            Exit::BadInput,
            format!("saved from a different model (sha256 {}), this one is {sha256}", footer.model_sha256),
        );
    }
    let major = |v: &str| v.split('.').next().map(str::to_string);
    if major(&footer.schema_version) != major(receipt::SCHEMA_VERSION) {
        return bad(
            Exit::BadInput,
            format!(
                "saved with schema {}, this harness reads {}",
                footer.schema_version,
                receipt::SCHEMA_VERSION
            ),
        );
    }
    if footer.n_vocab != n_vocab {
        return bad(
            Exit::BadInput,
            format!("footer n_vocab {} does not match the model's {n_vocab}", footer.n_vocab),
        );
    }
    for (i, c) in footer.cases.iter().enumerate() {
        if let Some(&t) = c.token_ids.iter().find(|&&t| t as usize >= n_vocab) {
            return bad(
                Exit::PromptInvalid,
                format!(
                    "case {} holds token id {t}, outside the vocabulary of the model ({n_vocab} tokens)",
                    i + 1
                ),
            );
        }
    }
    Ok(())
}

/// A saved reference holds the logits of one path: a batched run needs a file saved by a
/// batched run with the same batch sizes, a decode run one of decode logits.
fn check_saved_mode(s: &SavedSide, mode: ModeChoice) -> Result<(), Failure> {
    let footer = s.footer();
    let saved = match (footer.mode.as_str(), footer.batch, footer.ubatch) {
        (MODE_BATCH, Some(b), Some(u)) => Some((b, u)),
        _ => None,
    };
    let wanted = match mode.mode {
        RunMode::Decode => None,
        RunMode::Batch => mode.sizes(),
        RunMode::Both => {
            return Err(Failure::new(
                Exit::BadInput,
                anyhow!(
                    "{}: --mode both needs two live paths; a saved reference holds one",
                    s.path().display()
                ),
            ))
        }
    };
    if saved == wanted {
        return Ok(());
    }
    let describe = |sizes: Option<(usize, usize)>| match sizes {
        Some((b, u)) => format!("batched logits (--mode batch --batch {b} --ubatch {u})"),
        None => "one-token logits (--mode decode)".to_string(),
    };
    Err(Failure::new(
        Exit::BadInput,
        anyhow!("{}: holds {}, this run compares {}", s.path().display(), describe(saved), describe(wanted)),
    ))
}

impl<'f> Engines<'f> {
    fn sides(&self) -> [&Side<'f>; 2] {
        [&self.a, &self.b]
    }

    /// Whether a side is the Rust engine.
    pub fn has_rust(&self) -> bool {
        self.specs.both().iter().any(|s| **s == EngineSpec::Rust)
    }

    /// The profile of the bitnet.cpp build on the other side (live: its build-info; saved: the
    /// footer's), or the host's when no side is bitnet.cpp; `chosen` wins.
    fn choose_profile(&self, chosen: Option<bitnet_engine::profile::RefProfile>) -> Option<ProfileChoice> {
        if !self.has_rust() {
            return None;
        }
        let build = self.specs.both().into_iter().zip(self.sides()).find_map(|(spec, side)| match side {
            Side::Ready(e) if spec.is_reference_build() => {
                let from = match spec {
                    EngineSpec::Saved(_) => ProfileSource::SavedReference,
                    _ => ProfileSource::BuildInfo,
                };
                e.identity().isa().map(|isa| (isa.to_vec(), from))
            }
            _ => None,
        });
        Some(match build {
            Some((isa, from)) => ProfileChoice::for_build(&isa, from, chosen),
            None => ProfileChoice {
                profile: chosen.unwrap_or_else(bitnet_engine::profile::RefProfile::host),
                source: if chosen.is_some() { ProfileSource::Override } else { ProfileSource::Host },
                hazard: None,
            },
        })
    }

    /// Loads the Rust engine for the sides that are it, with a cache for the longest case.
    pub fn load_rust(
        &mut self,
        model: &'f ModelFile,
        plans: &Plans,
        args: &RunArgs,
        ui: &Progress,
    ) -> Result<(), Failure> {
        let longest = plans.cases.iter().map(|p| p.n_positions).max().unwrap_or(1);
        let n_ctx = longest.next_multiple_of(32).min(model.limit.max(1));
        let profile = self.profile.clone();
        for (i, side) in [&mut self.a, &mut self.b].into_iter().enumerate() {
            if !matches!(side, Side::RustPending) {
                continue;
            }
            ui.step("loading the Rust engine");
            let t = Instant::now();
            let choice = profile.as_ref().expect("a profile is chosen whenever a side is the Rust engine");
            let options = ModelOptions {
                n_ctx,
                exact_reference_rounding: !args.no_exact_rounding,
                threads: args.threads as usize,
                profile: choice.profile,
            };
            let loaded = Model::load(&model.file, options).map_err(model_failure)?;
            // A fault goes into the engine under test (side A), or side B when only it is Rust.
            let fault = args.inject_fault.filter(|_| i == 0 || self.specs.a != EngineSpec::Rust);
            if let Some(f) = fault {
                ui.say(&format!(
                    "warning: fault {f} injected into the Rust engine (it shows first at {})",
                    f.first_affected_op()
                ));
            }
            let engine = RustSide::new(loaded, model.tokenizer.clone())
                .with_ubatch(ModeChoice::from_args(args)?.engine_ubatch())
                .with_profile_record(choice.record())
                .with_fault(fault);
            *side = Side::Ready(Box::new(engine));
            self.load_s[i] += t.elapsed().as_secs_f64();
        }
        Ok(())
    }

    /// Both engines, once loaded.
    pub fn pair(&mut self) -> (&mut (dyn Engine + 'f), &mut (dyn Engine + 'f)) {
        match (&mut self.a, &mut self.b) {
            (Side::Ready(a), Side::Ready(b)) => (a.as_mut(), b.as_mut()),
            _ => unreachable!("both engines are loaded before the evaluation"),
        }
    }

    /// The identities of both sides, for the receipt (a pending side cannot occur here).
    pub fn identities(&self) -> [Identity; 2] {
        let id = |s: &Side<'f>| match s {
            Side::Ready(e) => e.identity(),
            Side::RustPending => unreachable!("engines are loaded before the receipt is written"),
        };
        [id(&self.a), id(&self.b)]
    }

    /// Adds this process's reading of the model to the load time of the Rust sides.
    pub fn note_reading(&mut self, secs: f64) {
        for (i, spec) in self.specs.both().into_iter().enumerate() {
            if *spec == EngineSpec::Rust {
                self.load_s[i] += secs;
            }
        }
    }

    pub fn shutdown(self) {
        for side in [self.a, self.b] {
            if let Side::Ready(e) = side {
                e.shutdown();
            }
        }
    }
}
