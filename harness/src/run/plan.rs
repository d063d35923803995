//! Stage 2 of a run: the prompts, tokenized by both engines, and the positions of every case.

use anyhow::anyhow;

use super::sides::{side_name, Engines, Side, Specs};
use super::{IdsFrom, ModelFile, RunArgs};
use crate::engine::{EngineError, EngineSpec};
use crate::exit::{Exit, Failure};
use crate::inputs;
use crate::receipt::{CorpusAgreement, Shard, TokenizerMismatch};
use crate::report::term::Progress;
use crate::tokenize_check::Tokenizing;

/// A case to evaluate: prompt text and the ids both engines will see.
pub(super) struct Plan {
    /// The case's index among every prompt of the run (0-based): with `--shard`, not its index
    /// among the cases evaluated.
    pub index: usize,
    pub prompt: String,
    pub ids: Vec<u32>,
    pub n_prompt: usize,
    /// Total positions to evaluate (prompt + continuation, capped by --max-tokens).
    pub n_positions: usize,
}

/// Every case, and where the two tokenizers disagreed on their prompts.
pub(super) struct Plans {
    pub cases: Vec<Plan>,
    pub mismatches: Vec<TokenizerMismatch>,
    /// The tokenizers on the built-in corpus, when both can tokenize any text.
    pub corpus: Option<CorpusAgreement>,
    /// With `--shard`: which cases of the whole run these are.
    pub shard: Option<Shard>,
}

/// `--shard I/N`: the part of the cases a run evaluates. Case `k` (0-based, in prompt order)
/// belongs to shard `k mod N + 1`, so every shard gets every N-th case: shards are the same
/// size to within one case, and long and short prompts spread evenly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardSpec {
    /// 1-based.
    pub index: usize,
    pub count: usize,
}

impl ShardSpec {
    /// `I/N` with 1 ≤ I ≤ N.
    pub fn parse(s: &str) -> Result<ShardSpec, String> {
        let bad = || format!("{s:?}: expected I/N with 1 <= I <= N (e.g. 2/4)");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) =
            (i.trim().parse::<usize>().map_err(|_| bad())?, n.trim().parse::<usize>().map_err(|_| bad())?);
        if index == 0 || index > count {
            return Err(bad());
        }
        Ok(ShardSpec { index, count })
    }

    /// Whether case `k` (0-based) belongs to this shard.
    pub fn contains(&self, k: usize) -> bool {
        k % self.count == self.index - 1
    }
}

/// The prompts the user gave (or the fixture's), checked before any engine starts; `None` when
/// a saved reference will supply its own (no prompt arguments).
pub(super) fn given_prompts(args: &RunArgs, specs: &Specs) -> Result<Option<Vec<String>>, Failure> {
    let replaying = matches!(specs.a, EngineSpec::Saved(_)) || matches!(specs.b, EngineSpec::Saved(_));
    if replaying && args.prompt.is_empty() && args.prompts_file.is_none() {
        return Ok(None);
    }
    inputs::resolve_prompts(&args.prompt, args.prompts_file.as_deref()).map(Some)
}

/// Tokenizes every prompt with both engines, decides the ids, and sizes every case.
pub(super) fn plan_cases(
    args: &RunArgs,
    model: &ModelFile,
    engines: &mut Engines<'_>,
    given: Option<Vec<String>>,
    ui: &Progress,
) -> Result<Plans, Failure> {
    let prompts = match (given, &engines.saved) {
        (Some(p), _) => p,
        (None, Some((_, footer))) => footer.cases.iter().map(|c| c.prompt.clone()).collect(),
        (None, None) => unreachable!("prompts are resolved up front unless a saved reference holds them"),
    };
    let mut plans = Plans { cases: Vec::new(), mismatches: Vec::new(), corpus: None, shard: None };
    let shard = args.shard.unwrap_or(ShardSpec { index: 1, count: 1 });
    for (i, prompt) in prompts.iter().enumerate().filter(|(i, _)| shard.contains(*i)) {
        check_saved_prompt(engines, i, prompt)?;
        let ids = decide_ids(args, model, engines, i, prompt, &mut plans.mismatches)?;
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= model.config.n_vocab) {
            return Err(Failure::new(
                Exit::PromptInvalid,
                anyhow!(
                    "prompt {}: token id {bad} is outside the vocabulary ({} tokens)",
                    i + 1,
                    model.config.n_vocab
                ),
            ));
        }
        let n_positions = positions(args, model, engines, i, ids.len(), ui)?;
        plans.cases.push(Plan { index: i, prompt: prompt.clone(), n_prompt: ids.len(), ids, n_positions });
    }
    plans.shard = args.shard.map(|s| Shard {
        index: s.index,
        count: s.count,
        total_cases: prompts.len(),
        prompts_sha256: prompts_sha256(&prompts),
        cases: plans.cases.iter().map(|p| p.index).collect(),
    });
    if let Some(s) = &plans.shard {
        ui.say(&format!("shard {}/{}: {} of {} cases", s.index, s.count, s.cases.len(), s.total_cases));
    }
    Ok(plans)
}

/// sha256 over every prompt, each as its length (u64 little endian) then its UTF-8 bytes.
fn prompts_sha256(prompts: &[String]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in prompts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    super::identity::hex(&h.finalize())
}

/// A saved reference replays its own prompts, in order.
fn check_saved_prompt(engines: &Engines<'_>, i: usize, prompt: &str) -> Result<(), Failure> {
    let Some((_, footer)) = &engines.saved else { return Ok(()) };
    match footer.cases.get(i) {
        None => Err(Failure::new(Exit::BadInput, anyhow!("the saved reference has no prompt {}", i + 1))),
        Some(c) if c.prompt != prompt => Err(Failure::new(
            Exit::BadInput,
            anyhow!("prompt {} differs from the one in the saved reference", i + 1),
        )),
        Some(_) => Ok(()),
    }
}

/// One side's ids for `prompt` (BOS first, no special-token parsing), `None` when the engine
/// has no tokenizer.
fn side_ids(
    side: &mut Side<'_>,
    spec: &EngineSpec,
    model: &ModelFile,
    prompt: &str,
) -> Result<Option<Vec<u32>>, Failure> {
    match side {
        // The Rust engine is not loaded yet; its tokenizer is the file's.
        Side::RustPending => Ok(Some(model.tokenizer.encode(prompt, true, false))),
        Side::Ready(e) => e.tokenize(prompt, true, false).map_err(|e| tokenizer_failure(spec, e)),
    }
}

fn tokenizer_failure(spec: &EngineSpec, e: EngineError) -> Failure {
    Failure::new(Exit::ReferenceUnavailable, anyhow!("{} failed while tokenizing: {e}", side_name(spec)))
}

/// The ids both engines will see: those both tokenizers give, or on a disagreement the side
/// `--ids-from` names (`rust`: side A, `cpp`: side B).
fn decide_ids(
    args: &RunArgs,
    model: &ModelFile,
    engines: &mut Engines<'_>,
    i: usize,
    prompt: &str,
    mismatches: &mut Vec<TokenizerMismatch>,
) -> Result<Vec<u32>, Failure> {
    let a = side_ids(&mut engines.a, &engines.specs.a, model, prompt)?;
    let b = side_ids(&mut engines.b, &engines.specs.b, model, prompt)?;
    let (a_ids, b_ids) = match (a, b) {
        (Some(a), Some(b)) => (a, b),
        // An engine without a tokenizer takes the other side's ids (or the file's).
        (Some(ids), None) | (None, Some(ids)) => return Ok(ids),
        (None, None) => return Ok(model.tokenizer.encode(prompt, true, false)),
    };
    if a_ids == b_ids {
        return Ok(a_ids);
    }
    let first = a_ids.iter().zip(&b_ids).position(|(x, y)| x != y).unwrap_or(a_ids.len().min(b_ids.len()));
    mismatches.push(TokenizerMismatch {
        case: i,
        first_index: first,
        rust_ids: a_ids.clone(),
        reference_ids: b_ids.clone(),
    });
    match args.ids_from {
        Some(IdsFrom::Rust) => Ok(a_ids),
        Some(IdsFrom::Cpp) => Ok(b_ids),
        None => Err(Failure::new(
            Exit::TokenizerMismatch,
            anyhow!(
                "prompt {}: the tokenizers disagree at token {first} (rust {:?}, reference {:?}); \
                 pass --ids-from rust|cpp to compare anyway",
                i + 1,
                a_ids.get(first),
                b_ids.get(first)
            ),
        )),
    }
}

/// How many positions case `i` evaluates: prompt plus `--continue`, capped by `--max-tokens`;
/// a replay compares what was saved unless told otherwise.
fn positions(
    args: &RunArgs,
    model: &ModelFile,
    engines: &Engines<'_>,
    i: usize,
    n_prompt: usize,
    ui: &Progress,
) -> Result<usize, Failure> {
    let saved = engines.saved.as_ref().map(|(path, footer)| (path, footer.cases[i].n_positions));
    let n_positions = match (saved, args.continue_tokens, args.max_tokens) {
        (Some((_, n)), None, None) => n,
        _ => {
            let total = n_prompt + args.continue_tokens.unwrap_or(0);
            args.max_tokens.map_or(total, |m| m.min(total))
        }
    };
    if let Some((path, saved)) = saved {
        if n_positions > saved {
            return Err(Failure::new(
                Exit::BadInput,
                anyhow!(
                    "prompt {}: --continue/--max-tokens ask for {n_positions} positions, {} saved {saved}",
                    i + 1,
                    path.display()
                ),
            ));
        }
        if n_positions < saved {
            ui.say(&format!(
                "note: prompt {}: comparing {n_positions} of the {saved} positions saved (--continue/--max-tokens)",
                i + 1
            ));
        }
    }
    if n_positions == 0 {
        return Err(Failure::new(Exit::PromptInvalid, anyhow!("prompt {}: no tokens to evaluate", i + 1)));
    }
    if n_positions > model.limit {
        return Err(Failure::new(
            Exit::PromptInvalid,
            anyhow!(
                "prompt {}: needs {n_positions} positions, the context holds {} (the model's \
                 context_length, or --n-ctx)",
                i + 1,
                model.limit
            ),
        ));
    }
    Ok(n_positions)
}

/// Both tokenizers on the built-in corpus (as `harness tokenize-check`), when both sides have a
/// tokenizer for any text (a saved reference has not).
pub(super) fn corpus_agreement(
    model: &ModelFile,
    engines: &mut Engines<'_>,
    ui: &Progress,
) -> Result<Option<CorpusAgreement>, Failure> {
    if engines.saved.is_some() {
        return Ok(None);
    }
    let a = tokenizing(&mut engines.a, &engines.specs.a, model);
    let b = tokenizing(&mut engines.b, &engines.specs.b, model);
    ui.step("checking the tokenizers on the built-in corpus");
    let strings = crate::corpus::builtin_corpus();
    let Some(mut c) = crate::tokenize_check::check(a, b, &strings, "builtin")? else { return Ok(None) };
    for m in &mut c.modes {
        m.mismatches.truncate(20);
    }
    Ok(Some(c))
}

/// A side's tokenizer for the corpus check (the Rust engine, not loaded yet: the file's).
fn tokenizing<'x, 'e>(side: &'x mut Side<'e>, spec: &EngineSpec, model: &'x ModelFile) -> Tokenizing<'x, 'e> {
    match side {
        Side::RustPending => Tokenizing::Rust(&model.tokenizer),
        Side::Ready(e) => Tokenizing::Engine(e.as_mut(), side_name(spec)),
    }
}
