//! The generate loop shared by `generate`, the probe and the server: prefill in chunks, then
//! one token at a time, recording per step the chosen id, the top logits and logit health
//! (max |logit|, non-finite count), stopping at EOS (unless ignored) or the token budget.
//! [`generate_cancellable`] also asks, between prefill chunks, whether the run is still
//! wanted (the server's client may be gone or its deadline past before the first token).
//! [`generate_from`] starts from a cache already holding a prompt prefix (the prompt cache).

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::Array;

use super::cache::Cache;
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
    /// Prompt tokens taken from a cache instead of being run (see [`generate_from`]).
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
    let start = Start::fresh(model);
    generate_from(model, prompt_ids, opts, start, cancelled, on_step).map(|(out, _)| out)
}

/// Sees the cache at a prompt length marked in [`Start`].
pub type OnMark<'a> = Box<dyn FnMut(usize, &Cache) + 'a>;

/// Where a generation starts (the prompt cache's entry, `engine::prefix_cache`): a cache
/// already holding the first `cache.offset` prompt tokens, and prompt lengths at which
/// `on_mark` sees the cache during the prefill (the prefill is cut there).
pub struct Start<'a> {
    /// The state after the first `cache.offset` prompt tokens.
    pub cache: Cache,
    /// Prompt lengths after which `on_mark` is called.
    pub marks: Vec<usize>,
    /// Sees the cache at each mark: `(length, cache)`.
    pub on_mark: OnMark<'a>,
}

impl Start<'_> {
    /// An empty cache, no marks.
    pub fn fresh(model: &Model) -> Self {
        Self {
            cache: model.net.new_cache(),
            marks: Vec::new(),
            on_mark: Box::new(|_, _| {}),
        }
    }
}

/// [`generate_cancellable`] from `start`: only the prompt tokens from `start.cache.offset`
/// on are run. Returns the cache as the run left it too (it holds `cache.offset` tokens:
/// the prompt, then the generated ids fed back so far).
pub fn generate_from(
    model: &Model,
    prompt_ids: &[u32],
    opts: &GenerateOptions,
    start: Start<'_>,
    cancelled: impl Fn() -> bool,
    mut on_step: impl FnMut(&Step) -> ControlFlow<()>,
) -> Result<(GenerateOutput, Cache)> {
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
    let Start {
        mut cache,
        marks,
        mut on_mark,
    } = start;
    let cached_tokens = cache.offset;
    if cached_tokens >= prompt_ids.len() {
        return Err(Diagnostic::error(
            "rmlx::engine::resume",
            format!(
                "a generation resumed after {cached_tokens} of {} prompt tokens (internal \
                 error: at least one prompt token must be run)",
                prompt_ids.len()
            ),
        ));
    }
    let started = Instant::now();
    let mut logits = None;
    for (i, span) in prefill_spans(cached_tokens, prompt_ids.len(), &marks)
        .into_iter()
        .enumerate()
    {
        if i > 0 && cancelled() {
            tracing::debug!(
                "prefill cancelled after {} of {} tokens",
                span.start,
                prompt_ids.len()
            );
            let out = GenerateOutput {
                prompt_ids: prompt_ids.to_vec(),
                steps: Vec::new(),
                stop: StopReason::Stopped,
                prefill: started.elapsed(),
                decode: Duration::ZERO,
                cached_tokens,
            };
            return Ok((out, cache));
        }
        let ids: Vec<i32> = prompt_ids[span.clone()].iter().map(|&t| t as i32).collect();
        let input = Array::from_slice(&ids, &[1, ids.len() as i32]);
        let out = model.net.forward_last(&input, &mut cache)?;
        // Materialise the cache so the next chunk's graph does not hold this one.
        out.eval()?;
        if marks.contains(&span.end) {
            on_mark(span.end, &cache);
        }
        logits = Some(out);
    }
    let logits = logits.expect("at least one prompt token runs");
    let mut prefill = Duration::ZERO;
    let mut steps = Vec::with_capacity(max_tokens);
    let mut stop = StopReason::Length;
    // Greedy without penalties on a GPU: the token and its evidence are computed on the
    // device, only a few numbers cross to the host, and the next step is queued before this
    // one is read, so the device never idles on the host. On the CPU the logits are host
    // memory already and one pass over them (`describe_step`) is cheaper than the device
    // reductions; the host decode path waits on its input anyway.
    let on_device = sampler.is_greedy() && opts.penalties.is_neutral() && super::gpu_available();
    let pipeline = on_device;
    let mut pending = on_device
        .then(|| DeviceStep::queue(&logits, opts.top))
        .transpose()?;
    let mut logits = Some(logits);
    for i in 0..max_tokens {
        let last = i + 1 == max_tokens;
        let step = match pending.take() {
            Some(current) => {
                if pipeline && !last {
                    let input = current.next.reshape(&[1, 1])?;
                    let l = model.net.forward_last(&input, &mut cache)?;
                    pending = Some(DeviceStep::queue(&l, opts.top)?);
                }
                current.read()?
            }
            None => {
                let l = logits.take().expect("host mode keeps the logits");
                l.eval()?;
                let host: &[f32] = l.as_slice::<f32>();
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
                describe_step(host, id, opts.top)
            }
        };
        if i == 0 {
            prefill = started.elapsed();
        }
        let id = step.id;
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
        if last {
            break;
        }
        if !pipeline {
            let input = Array::from_slice(&[id as i32], &[1, 1]);
            let l = model.net.forward_last(&input, &mut cache)?;
            if on_device {
                pending = Some(DeviceStep::queue(&l, opts.top)?);
            } else {
                logits = Some(l);
            }
        }
    }
    let decode = started.elapsed().saturating_sub(prefill);
    let out = GenerateOutput {
        prompt_ids: prompt_ids.to_vec(),
        steps,
        stop,
        prefill,
        decode,
        cached_tokens,
    };
    Ok((out, cache))
}

/// The prefill's forward passes over prompt positions `from..len`: pieces of at most
/// [`PREFILL_CHUNK`] tokens, also cut at every mark inside the range.
fn prefill_spans(from: usize, len: usize, marks: &[usize]) -> Vec<std::ops::Range<usize>> {
    let mut cuts: Vec<usize> = (from..len)
        .step_by(PREFILL_CHUNK)
        .skip(1)
        .chain(marks.iter().copied().filter(|&m| m > from && m < len))
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut spans = Vec::with_capacity(cuts.len() + 1);
    let mut start = from;
    for end in cuts.into_iter().chain([len]) {
        spans.push(start..end);
        start = end;
    }
    spans
}

/// A greedy step evaluated on the device: the arg-max token and the numbers of its
/// [`Step`], queued with `async_eval` and read back when needed. Same semantics as
/// [`describe_step`]: non-finite logits are counted and left out of the arg-max, the
/// log-sum-exp and `max_abs_logit`.
struct DeviceStep {
    next: Array,
    top_ids: Array,
    top_logits: Array,
    chosen_logit: Array,
    lse: Array,
    max_abs: Array,
    non_finite: Array,
}

impl DeviceStep {
    fn queue(logits: &Array, k: usize) -> Result<Self> {
        use mlx_rs::ops::{argpartition_axis, indexing::argmax, select};
        let logits = logits.as_dtype(mlx_rs::Dtype::Float32)?;
        let vocab = logits.size();
        let finite = logits.is_finite()?;
        let masked = select(&finite, &logits, Array::from_f32(f32::NEG_INFINITY))?;
        let next = argmax(&masked, None)?;
        let k = k.clamp(1, vocab) as i32;
        let top_ids = if k == 1 {
            // The arg-max is the top-1: no partition over the vocabulary.
            next.reshape(&[1])?
        } else if k as usize == vocab {
            mlx_rs::ops::arange::<_, u32>(0, vocab as i32, None)?
        } else {
            argpartition_axis(masked.negative()?, k - 1, 0)?.index(..k)
        };
        let step = Self {
            top_logits: logits.take_axis(&top_ids, 0)?,
            chosen_logit: logits.take_axis(&next, 0)?,
            lse: masked.logsumexp(None)?,
            max_abs: select(&finite, logits.abs()?, Array::from_f32(0.0))?.max(None)?,
            non_finite: finite
                .logical_not()?
                .sum(None)?
                .as_dtype(mlx_rs::Dtype::Int32)?,
            next,
            top_ids,
        };
        mlx_rs::transforms::async_eval([
            &step.next,
            &step.top_ids,
            &step.top_logits,
            &step.chosen_logit,
            &step.lse,
            &step.max_abs,
            &step.non_finite,
        ])?;
        Ok(step)
    }

    fn read(self) -> Result<Step> {
        let scalar = |a: &Array| -> Result<f32> {
            a.try_item_cast::<f32>().map_err(|e| {
                Diagnostic::error("rmlx::engine::eval", format!("reading a step back: {e}"))
            })
        };
        let id = scalar(&self.next)? as u32;
        let ids = self.top_ids.as_dtype(mlx_rs::Dtype::Uint32)?;
        let mut top: Vec<(u32, f32)> = ids
            .as_slice::<u32>()
            .iter()
            .copied()
            .zip(self.top_logits.as_slice::<f32>().iter().copied())
            .collect();
        top.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let lse = scalar(&self.lse)?;
        Ok(Step {
            id,
            top_logprobs: top.iter().map(|(_, l)| l - lse).collect(),
            top,
            max_abs_logit: scalar(&self.max_abs)?,
            non_finite: scalar(&self.non_finite)? as usize,
            logprob: scalar(&self.chosen_logit)? - lse,
        })
    }
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
