//! The generate loop shared by `generate`, the probe and the server: prefill in chunks, then
//! one token at a time, recording per step the chosen id, the top logits and logit health
//! (max |logit|, non-finite count), stopping at EOS (unless ignored) or the token budget.
//! [`generate_cancellable`] also asks, between prefill chunks, whether the run is still
//! wanted (the server's client may be gone or its deadline past before the first token).
//! The per-sequence state and its steps live in [`super::sequence`], shared with the
//! server's batching scheduler: one loop, driven alone here or many at once there.
//! A [`Constraint`] (structured output) masks the logits of every step before penalties and
//! sampling (`Sequence::choose`), each sequence with its own `Guide`.
//! server's batching scheduler: one loop, driven alone here ([`drive`], also what the
//! prompt cache's `generate_cached` uses) or many at once there.

use std::ops::ControlFlow;
use std::time::Duration;

use super::cache::Cache;
use super::penalty::Penalties;
use super::sample::SamplerConfig;
use super::sequence::{Sequence, StartCache};
use super::Model;
use crate::constrain::Constraint;
use crate::diagnostic::Result;

/// Prompt tokens run through the model per forward pass during prefill.
pub const PREFILL_CHUNK: usize = 512;

/// Settings of one generation.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Sampling.
    pub sampler: SamplerConfig,
    /// Keep going past EOS.
    pub ignore_eos: bool,
    /// EOS ids (model's and tokenizer's).
    pub eos_ids: Vec<u32>,
    /// How many top logits to record per step.
    pub top: usize,
    /// Logit adjustments before sampling (the recorded evidence stays unadjusted).
    pub penalties: Penalties,
    /// Structured output: only tokens this grammar allows are sampled (the recorded
    /// evidence stays the model's).
    pub constraint: Option<Constraint>,
    /// Whether each step records its evidence beyond the chosen id — log-probabilities, the
    /// top logits, max |logit|, the non-finite count. Steps skip those reductions over the
    /// vocabulary when nobody reads them (bench, a server request without `logprobs`),
    /// whether picked on the device or on the host: their [`Step`] then holds the id and its
    /// logit, the rest NaN / zero. `RMLX_STEP_EVIDENCE=1` forces it on (A/B timing).
    pub evidence: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            sampler: SamplerConfig::default(),
            ignore_eos: false,
            eos_ids: Vec::new(),
            top: 5,
            penalties: Penalties::default(),
            constraint: None,
            evidence: true,
        }
    }
}

/// One generated token and the evidence around it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Step {
    /// The chosen token.
    pub id: u32,
    /// The highest logits of this step, best first: `(id, raw logit)`.
    pub top: Vec<(u32, f32)>,
    /// Largest finite |logit|.
    pub max_abs_logit: f32,
    /// Count of NaN/Inf logits.
    pub non_finite: usize,
    /// log-softmax of the chosen token.
    pub logprob: f32,
    /// log-softmax of each `top` entry, same order.
    pub top_logprobs: Vec<f32>,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopReason {
    /// An EOS token was produced.
    Eos,
    /// `max_tokens` reached.
    Length,
    /// The callback asked to stop (stop string, client gone).
    Stopped,
}

/// Everything a generation produced.
#[derive(Debug, Clone)]
pub struct GenerateOutput {
    /// The prompt.
    pub prompt_ids: Vec<u32>,
    /// The generated steps (EOS included when it ended the run).
    pub steps: Vec<Step>,
    /// Why it ended.
    pub stop: StopReason,
    /// Time to process the prompt and produce the first logits.
    pub prefill: Duration,
    /// Time spent on the remaining steps.
    pub decode: Duration,
    /// Time spent computing constraint masks (zero without a constraint).
    pub mask_time: Duration,
    /// Prompt tokens taken from a prefilled cache instead of being run (the prompt cache).
    pub cached_tokens: usize,
}

impl GenerateOutput {
    /// Generated ids.
    pub fn ids(&self) -> Vec<u32> {
        self.steps.iter().map(|s| s.id).collect()
    }
}

/// Runs `model` on `prompt_ids`. `on_step` sees each step as it is produced and may stop the
/// run early.
pub fn generate(
    model: &Model,
    prompt_ids: &[u32],
    opts: &GenerateOptions,
    on_step: impl FnMut(&Step) -> ControlFlow<()>,
) -> Result<GenerateOutput> {
    generate_cancellable(model, prompt_ids, opts, || false, on_step)
}

/// [`generate`], also asking `cancelled` before each prefill chunk after the first: when it
/// says yes, the run ends at once with no steps and [`StopReason::Stopped`] (a long prompt
/// is several chunks; nobody waits for its first token any more).
pub fn generate_cancellable(
    model: &Model,
    prompt_ids: &[u32],
    opts: &GenerateOptions,
    cancelled: impl Fn() -> bool,
    on_step: impl FnMut(&Step) -> ControlFlow<()>,
) -> Result<GenerateOutput> {
    let seq = Sequence::start(model, prompt_ids, opts, StartCache::fresh())?;
    drive(model, seq, cancelled, on_step, |_| {}).map(|(out, _)| out)
}

/// Drives one started sequence to its end: the prefill chunk by chunk (asking `cancelled`
/// between chunks, showing the sequence to `after_chunk` after each), then its steps.
/// Returns the output and the final cache.
pub fn drive(
    model: &Model,
    mut seq: Sequence,
    cancelled: impl Fn() -> bool,
    mut on_step: impl FnMut(&Step) -> ControlFlow<()>,
    mut after_chunk: impl FnMut(&Sequence),
) -> Result<(GenerateOutput, Cache)> {
    let mut chunks = 0;
    while seq.is_prefilling() {
        if chunks > 0 && cancelled() {
            tracing::debug!("prefill cancelled after {} prompt tokens", seq.prefilled());
            return Ok(seq.finish_with_cache());
        }
        seq.prefill_chunk(model)?;
        after_chunk(&seq);
        chunks += 1;
    }
    while seq.step(model, &mut on_step)?.is_some() {
        seq.feed(model)?;
    }
    Ok(seq.finish_with_cache())
}
