//! Building a tokenizer from a vocabulary, step for step as the reference's `llm_load_vocab`
//! does: defaults per vocabulary type and pre-tokenizer, then the special-token keys, then the
//! text-based detection that forces some tokens to CONTROL, then the special-token order.

use std::collections::HashMap;

use super::attr::TokenAttr;
use super::pretokenize::PreSplit;
use super::{Kind, SpecialIds, TokenData, Tokenizer, TokenizerError, TokenizerSpec};

/// Texts the reference treats as end-of-generation and forces to CONTROL.
const EOG_TEXTS: &[&str] =
    &["<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>", "<EOT>"];
/// Texts the reference takes for the end-of-turn token when no id is given.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<EOT>",
    "<｜end▁of▁sentence｜>",
];
const EOM_TEXTS: &[&str] = &["<|eom_id|>"];
const FIM_PRE_TEXTS: &[&str] = &["<|fim_prefix|>", "<fim-prefix>", "<｜fim▁begin｜>", "<PRE>"];
const FIM_SUF_TEXTS: &[&str] = &["<|fim_suffix|>", "<fim-suffix>", "<｜fim▁hole｜>", "<SUF>"];
const FIM_MID_TEXTS: &[&str] = &["<|fim_middle|>", "<fim-middle>", "<｜fim▁end｜>", "<MID>"];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<PAD>"];
const FIM_REP_TEXTS: &[&str] = &["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>"];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];

/// What a `tokenizer.ggml.pre` value selects for a BPE vocabulary.
struct PreConfig {
    split: PreSplit,
    /// Look a whole pre-tokenized word up before merging (Llama-3 does).
    ignore_merges: bool,
    add_bos: bool,
    clean_spaces: bool,
    /// chatglm-bpe clears the default BOS id.
    no_default_bos: bool,
}

fn pre_config(pre: Option<&str>) -> Result<PreConfig, TokenizerError> {
    let base = |split| PreConfig {
        split,
        ignore_merges: false,
        add_bos: false,
        clean_spaces: true,
        no_default_bos: false,
    };
    let Some(pre) = pre else {
        return Err(TokenizerError::UnsupportedPre("(missing: the reference would use \"default\")".into()));
    };
    Ok(match pre {
        "llama3" | "llama-v3" | "llama-bpe" => {
            PreConfig { ignore_merges: true, add_bos: true, ..base(PreSplit::Llama3) }
        }
        "dbrx" | "smaug-bpe" => base(PreSplit::Llama3),
        "chatglm-bpe" => PreConfig { no_default_bos: true, ..base(PreSplit::Llama3) },
        "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "jina-v1-en" | "jina-v2-es" | "jina-v2-de"
        | "jina-v2-code" | "mpt" | "olmo" | "jais" => base(PreSplit::Gpt2),
        other => return Err(TokenizerError::UnsupportedPre(other.to_string())),
    })
}

impl Tokenizer {
    /// Builds a tokenizer from vocabulary data (see [`TokenizerSpec`] for each field).
    ///
    /// Texts are cut at their first NUL character, as the reference reads GGUF strings as C
    /// strings; a token left empty becomes `[EMPTY_<id>]`, as there.
    pub fn from_spec(mut spec: TokenizerSpec) -> Result<Self, TokenizerError> {
        let n_vocab = clean_and_check(&mut spec)?;

        // Vocabulary type and its defaults.
        let (kind, pre_cfg) = match spec.model.as_str() {
            "gpt2" => {
                let cfg = pre_config(spec.pre.as_deref())?;
                (Kind::Bpe(cfg.split), Some(cfg))
            }
            "llama" => (Kind::Spm, None),
            other => return Err(TokenizerError::UnsupportedModel(other.to_string())),
        };
        let is_bpe = pre_cfg.is_some();
        let ignore_merges = pre_cfg.as_ref().is_some_and(|c| c.ignore_merges);
        let clean_spaces = pre_cfg.as_ref().is_some_and(|c| c.clean_spaces);
        let mut add_bos = pre_cfg.as_ref().is_none_or(|c| c.add_bos);
        let mut add_eos = false;
        let add_space_prefix = spec.add_space_prefix.unwrap_or(!is_bpe);

        let (mut tokens, token_to_id) = read_tokens(&mut spec)?;
        let merges = if is_bpe { read_merges(&spec.merges)? } else { HashMap::new() };

        // Special ids: type defaults, then keys (ids out of range keep the default).
        let default_id = |id: u32| (id < n_vocab as u32).then_some(id);
        let mut ids = SpecialIds::default();
        let mut bos = if is_bpe { default_id(11) } else { default_id(1) };
        if pre_cfg.as_ref().is_some_and(|c| c.no_default_bos) {
            bos = None;
        }
        let mut eos = if is_bpe { default_id(11) } else { default_id(2) };
        ids.unk = if is_bpe { None } else { default_id(0) };
        let in_range = |id: Option<u32>| id.filter(|&i| (i as usize) < n_vocab);
        bos = in_range(spec.bos_id).or(bos);
        eos = in_range(spec.eos_id).or(eos);
        let o = &spec.other_ids;
        for (slot, given) in [
            (&mut ids.eot, o.eot),
            (&mut ids.eom, o.eom),
            (&mut ids.unk, o.unk),
            (&mut ids.sep, o.sep),
            (&mut ids.pad, o.pad),
            (&mut ids.cls, o.cls),
            (&mut ids.mask, o.mask),
            (&mut ids.fim_pre, o.fim_pre),
            (&mut ids.fim_suf, o.fim_suf),
            (&mut ids.fim_mid, o.fim_mid),
            (&mut ids.fim_pad, o.fim_pad),
            (&mut ids.fim_rep, o.fim_rep),
            (&mut ids.fim_sep, o.fim_sep),
        ] {
            if let Some(id) = in_range(given) {
                *slot = Some(id);
            }
        }
        if let Some(v) = spec.add_bos {
            add_bos = v;
        }
        if let Some(v) = spec.add_eos {
            add_eos = v;
        }

        detect_by_text(&mut ids, &token_to_id, &mut tokens);
        let specials = special_order(&tokens);

        // End-of-generation tokens: fill-in-the-middle pad/repo/separator, the well-known
        // texts, then EOS, EOT and EOM.
        let mut eog: Vec<u32> = [ids.fim_pad, ids.fim_rep, ids.fim_sep, eos, ids.eot, ids.eom]
            .into_iter()
            .flatten()
            .chain(EOG_TEXTS.iter().filter_map(|t| token_to_id.get(*t).copied()))
            .collect();
        eog.sort_unstable();
        eog.dedup();

        let mut tok = Tokenizer {
            kind,
            model: spec.model,
            pre: spec.pre,
            tokens,
            token_to_id,
            merges,
            n_merges: spec.merges.len(),
            specials,
            pieces: Vec::new(),
            bos,
            eos,
            ids,
            eog,
            add_bos,
            add_eos,
            add_space_prefix,
            ignore_merges,
            clean_spaces,
        };
        tok.pieces = (0..n_vocab as u32).map(|id| tok.render_piece(id)).collect();
        tok.set_model_strip_attrs(spec.model_name.unwrap_or_default())?;
        Ok(tok)
    }

    /// Per-model strip attributes, set after the special list as in the reference, which
    /// fails to load when one of the tokens it names is missing.
    fn set_model_strip_attrs(&mut self, model_name: String) -> Result<(), TokenizerError> {
        let name = model_name.to_lowercase();
        let pre = self.pre.clone().unwrap_or_default();
        if ["jina-v2-de", "jina-v2-es", "jina-v2-code"].iter().any(|p| pre.contains(p)) {
            self.set_attr_by_text("<mask>", TokenAttr::LSTRIP, true, "a jina-v2 pre-tokenizer")?;
        } else if name.contains("phi-3") || name.contains("phi3") {
            for id in self.specials.clone() {
                self.tokens[id as usize].attr.set(TokenAttr::RSTRIP, true);
            }
            self.set_attr_by_text("</s>", TokenAttr::RSTRIP, true, "a Phi-3 model (general.name)")?;
            for t in ["<unk>", "<s>", "<|endoftext|>"] {
                self.set_attr_by_text(t, TokenAttr::RSTRIP, false, "a Phi-3 model (general.name)")?;
            }
        }
        Ok(())
    }

    fn set_attr_by_text(
        &mut self,
        text: &'static str,
        attr: TokenAttr,
        on: bool,
        reason: &'static str,
    ) -> Result<(), TokenizerError> {
        let &id = self.token_to_id.get(text).ok_or(TokenizerError::MissingToken { text, reason })?;
        self.tokens[id as usize].attr.set(attr, on);
        Ok(())
    }
}

/// Cuts every text at its first NUL, then checks the vocabulary's size and the lengths of
/// the per-token arrays; returns the vocabulary size.
fn clean_and_check(spec: &mut TokenizerSpec) -> Result<usize, TokenizerError> {
    for s in spec.tokens.iter_mut().chain(&mut spec.merges).chain([&mut spec.model]) {
        cut_at_nul(s);
    }
    for s in spec.pre.iter_mut().chain(spec.model_name.iter_mut()) {
        cut_at_nul(s);
    }
    let n_vocab = spec.tokens.len();
    if n_vocab == 0 {
        return Err(TokenizerError::EmptyVocab);
    }
    if u32::try_from(n_vocab).is_err() || n_vocab > i32::MAX as usize {
        return Err(TokenizerError::TooManyTokens(n_vocab));
    }
    check_len("tokenizer.ggml.token_type", n_vocab, spec.token_types.len(), true)?;
    if let Some(scores) = &spec.scores {
        check_len("tokenizer.ggml.scores", n_vocab, scores.len(), false)?;
    }
    Ok(n_vocab)
}

/// The tokens (taken out of `spec`) and the text → id map. Empty texts get a placeholder, as
/// in the reference; duplicates are fatal there.
fn read_tokens(spec: &mut TokenizerSpec) -> Result<(Vec<TokenData>, HashMap<String, u32>), TokenizerError> {
    let n_vocab = spec.tokens.len();
    let mut tokens = Vec::with_capacity(n_vocab);
    let mut token_to_id = HashMap::with_capacity(n_vocab);
    for (i, text) in std::mem::take(&mut spec.tokens).into_iter().enumerate() {
        let id = i as u32;
        let text = if text.is_empty() { format!("[EMPTY_{i}]") } else { text };
        if let Some(first) = token_to_id.insert(text.clone(), id) {
            return Err(TokenizerError::DuplicateToken { text, first, second: id });
        }
        let attr = match spec.token_types.get(i) {
            Some(&t) => TokenAttr::from_token_type(t),
            None => TokenAttr::NORMAL,
        };
        let score = spec.scores.as_ref().map_or(0.0, |s| s[i]);
        tokens.push(TokenData { text, score, attr });
    }
    Ok((tokens, token_to_id))
}

/// BPE merges, rule → rank: "left right", split at the first space after the first byte; the
/// first occurrence of a pair keeps its rank.
fn read_merges(rules: &[String]) -> Result<HashMap<String, u32>, TokenizerError> {
    let mut merges = HashMap::with_capacity(rules.len());
    for (rank, m) in rules.iter().enumerate() {
        if m.is_empty() {
            return Err(TokenizerError::EmptyMerge(rank));
        }
        // A rule without such a space becomes the pair ("", ""), which no pair of
        // non-empty symbols can hit: it only takes up a rank.
        if m.as_bytes()[1..].contains(&b' ') {
            merges.entry(m.clone()).or_insert(rank as u32);
        }
    }
    Ok(merges)
}

/// Text-based detection: an unset id takes a token with a well-known text, which is forced to
/// CONTROL (as are the well-known end-of-generation texts). The reference walks a hash map, so
/// with several candidates its pick is unspecified; we take the lowest id.
fn detect_by_text(ids: &mut SpecialIds, token_to_id: &HashMap<String, u32>, tokens: &mut [TokenData]) {
    let find =
        |texts: &[&str]| -> Option<u32> { texts.iter().filter_map(|t| token_to_id.get(*t).copied()).min() };
    let mut force_control = Vec::new();
    for (slot, texts) in [
        (&mut ids.eot, EOT_TEXTS),
        (&mut ids.eom, EOM_TEXTS),
        (&mut ids.fim_pre, FIM_PRE_TEXTS),
        (&mut ids.fim_suf, FIM_SUF_TEXTS),
        (&mut ids.fim_mid, FIM_MID_TEXTS),
        (&mut ids.fim_pad, FIM_PAD_TEXTS),
        (&mut ids.fim_rep, FIM_REP_TEXTS),
        (&mut ids.fim_sep, FIM_SEP_TEXTS),
    ] {
        if slot.is_none() {
            *slot = find(texts);
            force_control.extend(*slot);
        }
    }
    force_control.extend(EOG_TEXTS.iter().filter_map(|t| token_to_id.get(*t).copied()));
    for id in force_control {
        tokens[id as usize].attr.set(TokenAttr::CONTROL, true);
    }
}

/// The special tokens in the order they are matched in a text: longest first. The reference's
/// std::sort is not stable; equal lengths keep id order here (only overlapping specials of
/// equal length could tell the difference).
fn special_order(tokens: &[TokenData]) -> Vec<u32> {
    let mut specials: Vec<u32> = (0..tokens.len() as u32)
        .filter(|&id| {
            tokens[id as usize].attr.any(TokenAttr::CONTROL | TokenAttr::USER_DEFINED | TokenAttr::UNKNOWN)
        })
        .collect();
    specials.sort_by_key(|&id| std::cmp::Reverse(tokens[id as usize].text.len()));
    specials
}

fn cut_at_nul(s: &mut String) {
    if let Some(i) = s.find('\0') {
        s.truncate(i);
    }
}

fn check_len(
    field: &'static str,
    expected: usize,
    found: usize,
    empty_ok: bool,
) -> Result<(), TokenizerError> {
    if found == expected || (empty_ok && found == 0) {
        Ok(())
    } else {
        Err(TokenizerError::LengthMismatch { field, expected, found })
    }
}
