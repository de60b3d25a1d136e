//! Constrained decoding (structured output) through llguidance.
//!
//! This module owns:
//! - the token environment of a loaded model ([`GuideEnv`], built once per model from its
//!   tokenizer and cached on the [`Session`](crate::session::Session)); `vocab` bridges our
//!   tokenizer to llguidance's token trie;
//! - compiling a [`ConstraintSpec`] (JSON schema, `json_object`, regex, Lark grammar) into a
//!   ready [`Constraint`]; a spec that does not compile is a `rmlx::constrain::invalid`
//!   diagnostic carrying llguidance's own error text;
//! - the per-sequence state of a running generation ([`Guide`]): per step the allowed-token
//!   mask applied to the logits (disallowed → -inf) before penalties and sampling, then the
//!   sampled token committed. EOS is allowed only where the grammar accepts. A grammar that
//!   allows no token (or fails) is a [`Masked::DeadEnd`]: the engine ends the run as if the
//!   budget ran out (`finish_reason: "length"`), never waits;
//! - how a grammar spells a marker string ([`GuideEnv::spell`]): by token id when the
//!   vocabulary has it as a special token, else as quoted text (the forced tool-call grammars
//!   of `serve::tools::force` are built with it).
//!
//! The engine's hook is two calls in `engine::sequence` (the one loop `generate` and the
//! server's batching scheduler share): [`Guide::mask`] on the host logits before
//! penalties/sampling (`Sequence::choose`), [`Guide::commit`] with the chosen id
//! (`Sequence::step`). Each sequence keeps its own [`Guide`], alone or in a batch.

mod vocab;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Value};

use crate::diagnostic::{code, Diagnostic, Result};
use crate::tokenize::Tokenizer;

/// What the output must match.
#[derive(Debug, Clone, PartialEq)]
pub enum ConstraintSpec {
    /// Any JSON object (OpenAI `response_format: {"type": "json_object"}`).
    JsonObject,
    /// JSON valid under this schema.
    JsonSchema(Value),
    /// Text matching this regular expression (Rust `regex` syntax), whole output.
    Regex(String),
    /// A grammar in llguidance's Lark dialect.
    Lark(String),
}

impl ConstraintSpec {
    /// A short name for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            ConstraintSpec::JsonObject => "json_object",
            ConstraintSpec::JsonSchema(_) => "json_schema",
            ConstraintSpec::Regex(_) => "regex",
            ConstraintSpec::Lark(_) => "grammar",
        }
    }

    fn grammar(&self) -> TopLevelGrammar {
        match self {
            ConstraintSpec::JsonObject => {
                TopLevelGrammar::from_json_schema(with_layout(json!({"type": "object"})))
            }
            ConstraintSpec::JsonSchema(s) => {
                TopLevelGrammar::from_json_schema(with_layout(s.clone()))
            }
            ConstraintSpec::Regex(rx) => TopLevelGrammar::from_regex(rx),
            ConstraintSpec::Lark(g) => TopLevelGrammar::from_lark(g.clone()),
        }
    }
}

/// The JSON layout we force unless the schema sets its own `x-guidance`: Python's
/// `json.dumps` separators (`", "`, `": "`) and no other whitespace. Flexible whitespace
/// would let a small model spend its whole budget on newlines.
pub(crate) fn with_layout(mut schema: Value) -> Value {
    if let Some(obj) = schema.as_object_mut() {
        if !obj.contains_key("x-guidance") {
            obj.insert(
                "x-guidance".into(),
                json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}),
            );
        }
    }
    schema
}

/// `text` as a quoted Lark string (JSON escaping, which llguidance's Lark reads).
pub fn lark_string(text: &str) -> String {
    Value::String(text.to_string()).to_string()
}

/// A model's token environment and grammar compiler, built once per loaded model.
#[derive(Clone)]
pub struct GuideEnv {
    factory: Arc<ParserFactory>,
    vocab_size: usize,
}

impl fmt::Debug for GuideEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GuideEnv {{ vocab_size: {} }}", self.vocab_size)
    }
}

impl GuideEnv {
    /// The environment of `tok` for a model with `vocab_size` logits ending at `eos_ids`.
    pub fn new(tok: &Tokenizer, vocab_size: usize, eos_ids: &[u32]) -> Result<Self> {
        let started = Instant::now();
        let env = vocab::tok_env(tok, vocab_size, eos_ids)?;
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| {
            Diagnostic::error(
                code::Constrain::Tokenizer,
                format!("building the token trie failed: {e}"),
            )
        })?;
        factory.quiet();
        tracing::debug!(
            "constraint environment for {vocab_size} tokens built in {:.0} ms",
            started.elapsed().as_secs_f64() * 1e3
        );
        Ok(Self {
            factory: Arc::new(factory),
            vocab_size,
        })
    }

    /// `text` as a Lark grammar element: `<[id]>` when the vocabulary holds it as one special
    /// token (a grammar's quoted text never produces special tokens), else a quoted string.
    pub fn spell(&self, text: &str) -> String {
        match self.factory.tok_env().tok_trie().get_special_token(text) {
            Some(id) => format!("<[{id}]>"),
            None => lark_string(text),
        }
    }

    /// Compiles `spec`; errors name the problem in llguidance's words.
    pub fn compile(&self, spec: &ConstraintSpec) -> Result<Constraint> {
        let started = Instant::now();
        let invalid = |e: String| {
            Diagnostic::error(
                code::Constrain::Invalid,
                format!("invalid {} constraint: {e}", spec.kind()),
            )
        };
        let parser = self
            .factory
            .create_parser(spec.grammar())
            .map_err(|e| invalid(e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(invalid(e));
        }
        tracing::debug!(
            "{} constraint compiled in {:.1} ms",
            spec.kind(),
            started.elapsed().as_secs_f64() * 1e3
        );
        Ok(Constraint {
            matcher,
            kind: spec.kind(),
            vocab_size: self.vocab_size,
        })
    }
}

/// A compiled constraint, not yet started: cloning it is cheap, and each generation runs
/// its own [`Guide`] from it.
#[derive(Clone)]
pub struct Constraint {
    matcher: Matcher,
    kind: &'static str,
    vocab_size: usize,
}

impl fmt::Debug for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Constraint({})", self.kind)
    }
}

impl Constraint {
    /// The state of one generation under this constraint.
    pub fn start(&self) -> Guide {
        Guide {
            matcher: self.matcher.clone(),
            vocab_size: self.vocab_size,
            mask_time: Duration::ZERO,
            masks: 0,
        }
    }
}

/// What [`Guide::mask`] left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Masked {
    /// Some tokens are allowed.
    Open,
    /// No token can continue the output (the grammar cannot be satisfied from here, or the
    /// matcher failed); the reason is logged.
    DeadEnd(String),
}

/// One generation's constraint state.
pub struct Guide {
    matcher: Matcher,
    vocab_size: usize,
    mask_time: Duration,
    masks: usize,
}

impl fmt::Debug for Guide {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guide {{ masks: {} }}", self.masks)
    }
}

impl Guide {
    /// Sets every logit the grammar forbids at this step to -inf (EOS stays only where the
    /// grammar accepts). `logits` has one entry per token of the model.
    pub fn mask(&mut self, logits: &mut [f32]) -> Masked {
        let started = Instant::now();
        let mask = self.matcher.compute_mask_or_eos();
        self.mask_time += started.elapsed();
        self.masks += 1;
        let mask = match mask {
            Ok(m) => m,
            Err(e) => return dead_end(format!("the grammar matcher failed: {e}")),
        };
        if mask.num_set() == 0 {
            return dead_end("the grammar allows no token here".into());
        }
        if logits.len() != self.vocab_size {
            return dead_end(format!(
                "{} logits for a {}-token constraint",
                logits.len(),
                self.vocab_size
            ));
        }
        forbid_unset(mask.as_slice(), logits);
        Masked::Open
    }

    /// Advances the grammar by the chosen token.
    pub fn commit(&mut self, id: u32) -> Masked {
        match self.matcher.consume_token(id) {
            Ok(()) => Masked::Open,
            Err(e) => dead_end(format!("token {id} was refused by the grammar: {e}")),
        }
    }

    /// Whether the grammar is complete and allows nothing but EOS.
    pub fn is_finished(&self) -> bool {
        self.matcher.is_stopped()
    }

    /// Time spent computing masks so far, and how many.
    pub fn mask_stats(&self) -> (Duration, usize) {
        (self.mask_time, self.masks)
    }
}

fn dead_end(reason: String) -> Masked {
    tracing::warn!("constrained decoding stopped: {reason}");
    Masked::DeadEnd(reason)
}

/// Sets `logits[i]` to -inf for every bit `i` not set in `words` (32 tokens per word).
fn forbid_unset(words: &[u32], logits: &mut [f32]) {
    for (w, chunk) in words.iter().zip(logits.chunks_mut(32)) {
        if *w == u32::MAX {
            continue;
        }
        for (bit, l) in chunk.iter_mut().enumerate() {
            if w & (1 << bit) == 0 {
                *l = f32::NEG_INFINITY;
            }
        }
    }
    // Tokens past the mask's words (none when the sizes agree) are forbidden too.
    for l in logits.iter_mut().skip(words.len() * 32) {
        *l = f32::NEG_INFINITY;
    }
}

#[cfg(test)]
mod tests;
