//! The generate loop shared by `generate`, the probe and the server: prefill in chunks, then
//! one token at a time, recording per step the chosen id, the top logits and logit health
//! (max |logit|, non-finite count), stopping at EOS (unless ignored) or the token budget.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use mlx_rs::Array;

use super::penalty::{Penalties, PenaltyState};
use super::sample::{top_k, Sampler, SamplerConfig};
use super::Model;
use crate::diagnostic::{Diagnostic, Result};

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
    mut on_step: impl FnMut(&Step) -> ControlFlow<()>,
) -> Result<GenerateOutput> {
    if prompt_ids.is_empty() {
        return Err(Diagnostic::error(
            "rmlx::generate::empty-prompt",
            "the prompt encodes to zero tokens",
        ));
    }
    if prompt_ids.len() > model.max_context {
        return Err(Diagnostic::error(
            "rmlx::generate::context-overflow",
            format!(
                "the prompt has {} tokens but the model's context length is {}",
                prompt_ids.len(),
                model.max_context
            ),
        )
        .with_help("shorten the prompt (max_position_embeddings in config.json sets the limit)"));
    }
    let vocab = model.net.vocab_size;
    if let Some(bad) = prompt_ids.iter().find(|&&id| id as usize >= vocab) {
        return Err(Diagnostic::error(
            "rmlx::generate::bad-token",
            format!("prompt token id {bad} is outside the model's vocabulary ({vocab})"),
        )
        .with_help("the tokenizer and the model do not belong together"));
    }
    if let Some(bad) = opts
        .penalties
        .max_biased_id()
        .filter(|&id| id as usize >= vocab)
    {
        return Err(Diagnostic::error(
            "rmlx::generate::bad-token",
            format!("logit_bias names token id {bad}, outside the model's vocabulary ({vocab})"),
        ));
    }
    let room = model.max_context - prompt_ids.len();
    let max_tokens = if opts.max_tokens > room {
        tracing::warn!(
            "max tokens lowered from {} to {room}: the context holds {} tokens",
            opts.max_tokens,
            model.max_context
        );
        room
    } else {
        opts.max_tokens
    };

    let mut sampler = Sampler::new(opts.sampler);
    let mut penalties = PenaltyState::new(&opts.penalties, prompt_ids);
    let mut adjusted = Vec::new();
    let mut cache = model.net.new_cache();
    let started = Instant::now();
    let mut logits = None;
    for chunk in prompt_ids.chunks(PREFILL_CHUNK) {
        let ids: Vec<i32> = chunk.iter().map(|&t| t as i32).collect();
        let input = Array::from_slice(&ids, &[1, ids.len() as i32]);
        let out = model.net.forward_last(&input, &mut cache)?;
        // Materialise the cache so the next chunk's graph does not hold this one.
        out.eval()?;
        logits = Some(out);
    }
    let mut logits = logits.expect("prompt is non-empty");
    let mut prefill = Duration::ZERO;
    let mut steps = Vec::with_capacity(max_tokens);
    let mut stop = StopReason::Length;
    for i in 0..max_tokens {
        logits.eval()?;
        let host: &[f32] = logits.as_slice::<f32>();
        let id = if opts.penalties.is_neutral() {
            sampler.sample(host)
        } else {
            adjusted.clear();
            adjusted.extend_from_slice(host);
            penalties.apply(&mut adjusted);
            let id = sampler.sample(&adjusted);
            penalties.push(id);
            id
        };
        let step = describe_step(host, id, opts.top);
        if i == 0 {
            prefill = started.elapsed();
        }
        let is_eos = opts.eos_ids.contains(&id);
        let flow = on_step(&step);
        steps.push(step);
        if is_eos && !opts.ignore_eos {
            stop = StopReason::Eos;
            break;
        }
        if flow.is_break() {
            stop = StopReason::Stopped;
            break;
        }
        if i + 1 == max_tokens {
            break;
        }
        let input = Array::from_slice(&[id as i32], &[1, 1]);
        logits = model.net.forward_last(&input, &mut cache)?;
    }
    let decode = started.elapsed().saturating_sub(prefill);
    Ok(GenerateOutput {
        prompt_ids: prompt_ids.to_vec(),
        steps,
        stop,
        prefill,
        decode,
    })
}

/// The evidence recorded for one step.
fn describe_step(logits: &[f32], id: u32, k: usize) -> Step {
    let mut max_abs = 0f32;
    let mut non_finite = 0;
    let mut max = f32::NEG_INFINITY;
    for &l in logits {
        if l.is_finite() {
            max_abs = max_abs.max(l.abs());
            max = max.max(l);
        } else {
            non_finite += 1;
        }
    }
    let lse = max
        + logits
            .iter()
            .filter(|l| l.is_finite())
            .map(|&l| ((l - max) as f64).exp())
            .sum::<f64>()
            .ln() as f32;
    let top = top_k(logits, k);
    let logprob = logits.get(id as usize).map_or(f32::NAN, |l| l - lse);
    Step {
        id,
        top_logprobs: top.iter().map(|(_, l)| l - lse).collect(),
        top,
        max_abs_logit: max_abs,
        non_finite,
        logprob,
    }
}
