//! One sequence being generated: its prompt, its cache, its sampler (seeded RNG), penalties,
//! token budget and recorded steps. [`super::generate`] drives one [`Sequence`] to its end;
//! the server's scheduler (`serve::scheduler`) drives many, prefilling them chunk by chunk
//! and decoding them together through [`super::Net::forward_batch`]. Both go through the same
//! methods, so a sequence behaves the same alone or in a batch.
//!
//! The life of a sequence: [`Sequence::start`] → [`Sequence::prefill_chunk`] until
//! [`Sequence::is_prefilling`] is false → repeatedly [`Sequence::step`] (pick a token from
//! the logits, record it, decide whether to go on) and feed the token back — one sequence
//! with [`Sequence::feed`], several with `Net::forward_batch` + [`Sequence::set_logits`] —
//! → [`Sequence::finish`].
//!
//! Two hooks, each one function, for the features that plug in here:
//! - **where the cache is created**: [`Sequence::start`] takes a [`StartCache`] — a fresh
//!   cache ([`StartCache::fresh`]) or a cache already holding the first `tokens` prompt
//!   positions ([`StartCache::Prefilled`], what a prompt cache hands over); prefill then
//!   runs only the remaining prompt tokens. [`Sequence::with_marks`] names prompt lengths
//!   where the prefill pauses ([`Sequence::at_mark`] shows the cache there, for the prompt
//!   cache's snapshots), and [`Sequence::finish_with_cache`] gives the final cache back.
//! - **where logits become a token**: [`Sequence::choose`] gets the host logits of a step and
//!   returns the token (penalties and `logit_bias` applied to a copy, then the sampler). A
//!   constraint mask goes there; anything that must see the logits on the host also makes
//!   [`Sequence::device_sampling`] say no (greedy steps on a GPU are otherwise picked on the
//!   device, where `choose` does not run).
//!
//! A constraint (structured output, `crate::constrain`) plugs into the second hook: each
//! sequence runs its own [`Guide`]; `choose` masks the logits before penalties and sampling,
//! [`Sequence::step`] commits the chosen token. A complete grammar ends the sequence like EOS,
//! a dead end (no token allowed, a token refused; logged) like the token budget.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::Array;

use super::cache::Cache;
use super::generate::{GenerateOptions, GenerateOutput, Step, StopReason, PREFILL_CHUNK};
use super::penalty::PenaltyState;
use super::sample::Sampler;
use super::Model;
use crate::constrain::{Constraint, Guide, Masked};
use crate::diagnostic::{code, Diagnostic, Result};
use device_step::{evidence_wanted, BatchPicks, DeviceStep, Pending};

mod device_step;
mod evidence;

/// The cache a sequence starts from (the cache-creation hook, see the module docs).
#[derive(Debug)]
pub enum StartCache {
    /// An empty cache of the model's declared kinds.
    Fresh,
    /// A cache holding the first `tokens` prompt positions already (its `offset` must equal
    /// `tokens`, and at least one prompt token must be left to run).
    Prefilled {
        /// The cache.
        cache: Cache,
        /// Prompt tokens it holds.
        tokens: usize,
    },
}

impl StartCache {
    /// An empty cache.
    pub fn fresh() -> Self {
        StartCache::Fresh
    }
}

/// One sequence's generation state (see the module docs).
pub struct Sequence {
    prompt_ids: Vec<u32>,
    opts: GenerateOptions,
    max_tokens: usize,
    cache: Cache,
    /// Prompt tokens already in the cache.
    prefilled: usize,
    /// Prompt tokens the cache held at the start (not run).
    cached: usize,
    /// Prompt lengths where a prefill chunk ends (see [`Sequence::with_marks`]).
    marks: Vec<usize>,
    sampler: Sampler,
    penalties: PenaltyState,
    /// The constraint's state (structured output).
    guide: Option<Guide>,
    /// Scratch copy of the logits for penalties and the constraint mask.
    adjusted: Vec<f32>,
    /// Greedy steps picked on the device (GPU, no host-side logit adjustments).
    on_device: bool,
    /// The next step is queued before the current one is read (one sequence on a GPU).
    pipeline: bool,
    /// Logits of the next step (host sampling).
    logits: Option<Array>,
    /// The next step queued on the device.
    pending: Option<Pending>,
    /// The token to run next.
    next_input: Option<u32>,
    steps: Vec<Step>,
    stop: Option<StopReason>,
    started: Instant,
    prefill_time: Duration,
    /// Host time spent building and queuing pipelined decode steps (logged at the end: a
    /// decode that takes about this long per step is bound by the host, not the device).
    queue_time: Duration,
    /// Of `queue_time`, building the step's graph (the rest is `async_eval`'s encoding).
    build_time: Duration,
}

impl std::fmt::Debug for Sequence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sequence")
            .field("prompt", &self.prompt_ids.len())
            .field("prefilled", &self.prefilled)
            .field("steps", &self.steps.len())
            .field("stop", &self.stop)
            .finish()
    }
}

impl Sequence {
    /// Checks the prompt and options against `model` and sets up the sequence on `cache`.
    pub fn start(
        model: &Model,
        prompt_ids: &[u32],
        opts: &GenerateOptions,
        cache: StartCache,
    ) -> Result<Self> {
        check_prompt(model, prompt_ids, opts)?;
        let (cache, prefilled) = match cache {
            StartCache::Fresh => (model.net.new_cache(), 0),
            StartCache::Prefilled { cache, tokens } => {
                if tokens >= prompt_ids.len() || cache.offset != tokens {
                    return Err(Diagnostic::error(
                        code::Generate::PrefilledCache,
                        format!(
                            "a prefilled cache at offset {} handed over as holding {tokens} of \
                             {} prompt tokens (internal error)",
                            cache.offset,
                            prompt_ids.len()
                        ),
                    ));
                }
                (cache, tokens)
            }
        };
        let sampler = Sampler::new(opts.sampler);
        let on_device = device_sampling(&sampler, opts);
        Ok(Self {
            prompt_ids: prompt_ids.to_vec(),
            max_tokens: token_budget(model, prompt_ids.len(), opts.max_tokens),
            opts: opts.clone(),
            cache,
            prefilled,
            cached: prefilled,
            marks: Vec::new(),
            penalties: PenaltyState::new(&opts.penalties, prompt_ids),
            sampler,
            guide: opts.constraint.as_ref().map(Constraint::start),
            adjusted: Vec::new(),
            on_device,
            pipeline: on_device,
            logits: None,
            pending: None,
            next_input: None,
            steps: Vec::new(),
            stop: None,
            started: Instant::now(),
            prefill_time: Duration::ZERO,
            queue_time: Duration::ZERO,
            build_time: Duration::ZERO,
        })
    }

    /// Turns off pipelining (the scheduler feeds several sequences in one pass, so a
    /// sequence's next step cannot be queued on its own).
    pub fn unpipelined(mut self) -> Self {
        self.pipeline = false;
        self
    }

    /// The sequence as a scheduler running up to `max_batch` sequences together runs it:
    /// pipelined only when it always runs alone (`max_batch` 1).
    pub fn for_batches_of(self, max_batch: usize) -> Self {
        if max_batch > 1 {
            self.unpipelined()
        } else {
            self
        }
    }

    /// Cuts the prefill's chunks at these prompt lengths too, so that [`Self::at_mark`]
    /// can show the cache there.
    pub fn with_marks(mut self, marks: Vec<usize>) -> Self {
        self.marks = marks;
        self
    }

    /// The prompt tokens run so far and the cache holding them, when the prefill has just
    /// reached one of the marks.
    pub fn at_mark(&self) -> Option<(&[u32], &Cache)> {
        self.marks
            .contains(&self.prefilled)
            .then(|| (&self.prompt_ids[..self.prefilled], &self.cache))
    }

    /// Whether prompt tokens are still to run.
    pub fn is_prefilling(&self) -> bool {
        self.prefilled < self.prompt_ids.len()
    }

    /// Prompt tokens already in the cache.
    pub fn prefilled(&self) -> usize {
        self.prefilled
    }

    /// Runs the next chunk of at most [`PREFILL_CHUNK`] prompt tokens, ending at the next
    /// mark if one comes first; after the last one the first step's logits are ready.
    pub fn prefill_chunk(&mut self, model: &Model) -> Result<()> {
        let (end, input) = self.next_chunk();
        let out = model.net.forward_last(&input, &mut self.cache)?;
        self.chunk_done(end, out)
    }

    /// The next chunk of each of `rows` (all still prefilling) in one pass where the model
    /// has one ([`super::Net::forward_last_together`]): the chunks and values
    /// [`Self::prefill_chunk`] gives each alone. Returns `false` (nothing run) where it has
    /// none; the caller then runs them one at a time.
    pub fn prefill_together(rows: &mut [&mut Sequence], model: &Model) -> Result<bool> {
        if rows.iter().any(|s| !s.is_prefilling()) {
            return Ok(false);
        }
        let (ends, inputs): (Vec<usize>, Vec<Array>) = rows.iter().map(|s| s.next_chunk()).unzip();
        let mut caches: Vec<&mut Cache> = rows.iter_mut().map(|s| &mut s.cache).collect();
        let Some(outs) = model.net.forward_last_together(&inputs, &mut caches)? else {
            return Ok(false);
        };
        for ((seq, end), out) in rows.iter_mut().zip(ends).zip(outs) {
            seq.chunk_done(end, out)?;
        }
        Ok(true)
    }

    /// Prompt tokens the next [`Self::prefill_chunk`] runs (0 once the prompt is in).
    pub fn next_chunk_len(&self) -> usize {
        self.next_chunk_end() - self.prefilled
    }

    /// Where the next prefill chunk ends (at most [`PREFILL_CHUNK`] tokens, the next mark if
    /// one comes first) and its ids (`[1, L]` int32).
    fn next_chunk(&self) -> (usize, Array) {
        let end = self.next_chunk_end();
        let ids: Vec<i32> = self.prompt_ids[self.prefilled..end]
            .iter()
            .map(|&t| t as i32)
            .collect();
        (end, Array::from_slice(&ids, &[1, ids.len() as i32]))
    }

    fn next_chunk_end(&self) -> usize {
        let next_mark = self.marks.iter().copied().filter(|&m| m > self.prefilled);
        next_mark
            .chain([self.prefilled + PREFILL_CHUNK, self.prompt_ids.len()])
            .min()
            .unwrap_or(self.prompt_ids.len())
    }

    /// A chunk ending at `end` ran, `out` its last position's logits: after the last one
    /// they are the first step's.
    fn chunk_done(&mut self, end: usize, out: Array) -> Result<()> {
        // Materialise the cache so the next chunk's graph does not hold this one.
        out.eval()?;
        self.prefilled = end;
        if !self.is_prefilling() {
            self.set_logits(out)?;
        }
        Ok(())
    }

    /// Runs the tokens `rows` wait on ([`Self::step`] returned them): one sequence through
    /// its own step ([`Self::feed`]; pipelined, it has run already), several through one
    /// batched pass ([`super::Net::forward_batch`], then [`Self::set_batch_logits`]).
    pub fn feed_together(rows: &mut [&mut Sequence], model: &Model) -> Result<()> {
        if let [one] = rows {
            return one.feed(model);
        }
        if rows.is_empty() {
            return Ok(());
        }
        let mut ids = Vec::with_capacity(rows.len());
        let mut caches = Vec::with_capacity(rows.len());
        for seq in rows.iter_mut() {
            let (id, cache) = seq.pending_input().ok_or_else(|| {
                Diagnostic::error(
                    code::Generate::NoLogits,
                    "a sequence joined a batched pass with no token to run (internal error)",
                )
            })?;
            ids.push(id);
            caches.push(cache);
        }
        let logits = model.net.forward_batch(&ids, &mut caches)?;
        drop(caches);
        Self::set_batch_logits(rows, &logits)
    }

    /// Hands the logits of one batched pass (`[B, vocab]`, row `b` for `rows[b]`) over:
    /// the rows whose steps are bare device picks (greedy on a GPU, unpipelined, no
    /// evidence asked for) get them from one evaluation for the whole batch
    /// ([`BatchPicks`]); the others get their row through [`Self::set_logits`].
    fn set_batch_logits(rows: &mut [&mut Sequence], logits: &Array) -> Result<()> {
        let batched = device_step::batch_picks_enabled();
        let bare =
            |s: &Sequence| batched && s.on_device && !s.pipeline && !evidence_wanted(&s.opts);
        let picks = match rows.iter().any(|s| bare(s)) {
            true => Some(BatchPicks::queue(logits)?),
            false => None,
        };
        let host = Self::host_logits(rows, logits)?;
        for (b, seq) in rows.iter_mut().enumerate() {
            match (&picks, host) {
                (Some(picks), _) if bare(seq) => seq.pending = Some(Pending::Row(picks.clone(), b)),
                (_, Some((all, vocab))) if !seq.on_device => {
                    let row = &all[b * vocab..(b + 1) * vocab];
                    seq.set_logits(Array::from_slice(row, &[vocab as i32]))?
                }
                _ => seq.set_logits(logits.index(b as i32))?,
            }
        }
        Ok(())
    }

    /// The batch's float32 logits (`[B, vocab]`) read on the host once, with the vocabulary
    /// size, when some row is picked on the host: its row is then a copy of those values,
    /// where a lazy `logits[b]` took one MLX evaluation per row (each a hand-off to MLX's
    /// stream thread and back, while the pool's helper waited).
    fn host_logits<'a>(
        rows: &[&mut Sequence],
        logits: &'a Array,
    ) -> Result<Option<(&'a [f32], usize)>> {
        let shape = logits.shape();
        let fits = logits.dtype() == mlx_rs::Dtype::Float32
            && shape.len() == 2
            && shape[0] as usize == rows.len();
        if !fits || rows.iter().all(|s| s.on_device) {
            return Ok(None);
        }
        let all = crate::mlx::host::host_slice::<f32>(logits, "batch logits")?;
        Ok(Some((all, all.len() / rows.len().max(1))))
    }

    /// Hands the logits (`[vocab]`) of the next step over.
    pub fn set_logits(&mut self, logits: Array) -> Result<()> {
        if self.on_device {
            self.pending = Some(Pending::Own(DeviceStep::queue(&logits, &self.opts)?));
        } else {
            self.logits = Some(logits);
        }
        Ok(())
    }

    /// Produces the next step from the logits handed over, shows it to `on_step`, records it
    /// and decides whether the sequence goes on: `Some(token)` to run next, `None` when it
    /// has ended (EOS, budget, `on_step` said stop).
    pub fn step(
        &mut self,
        model: &Model,
        on_step: impl FnOnce(&Step) -> ControlFlow<()>,
    ) -> Result<Option<u32>> {
        if self.steps.len() >= self.max_tokens {
            self.stop = Some(StopReason::Length);
            return Ok(None);
        }
        let last = self.steps.len() + 1 == self.max_tokens;
        let Some(step) = self.next_step(model, last)? else {
            // The constraint allows no token (logged): the output cannot grow.
            self.stop = Some(StopReason::Length);
            return Ok(None);
        };
        if self.steps.is_empty() {
            self.prefill_time = self.started.elapsed();
        }
        let id = step.id;
        let is_eos = self.opts.eos_ids.contains(&id);
        let flow = on_step(&step);
        self.steps.push(step);
        let grammar_stop = self.commit_to_guide(id, is_eos);
        self.stop = if is_eos && !self.opts.ignore_eos {
            Some(StopReason::Eos)
        } else if grammar_stop.is_some() {
            grammar_stop
        } else if flow.is_break() {
            Some(StopReason::Stopped)
        } else if last {
            Some(StopReason::Length)
        } else {
            None
        };
        self.next_input = self.stop.is_none().then_some(id);
        Ok(self.next_input)
    }

    /// Advances the constraint by the chosen token (not by EOS): the stop it calls for —
    /// [`StopReason::Eos`] when the grammar is complete, [`StopReason::Length`] when the
    /// token was refused (logged) — or `None` to go on.
    fn commit_to_guide(&mut self, id: u32, is_eos: bool) -> Option<StopReason> {
        let guide = self.guide.as_mut().filter(|_| !is_eos)?;
        match guide.commit(id) {
            Masked::DeadEnd(_) => Some(StopReason::Length),
            Masked::Open if guide.is_finished() => Some(StopReason::Eos),
            Masked::Open => None,
        }
    }

    /// Runs the token [`Self::step`] returned through the model on its own (a pipelined
    /// sequence has done so already).
    pub fn feed(&mut self, model: &Model) -> Result<()> {
        if self.pipeline {
            return Ok(());
        }
        let Some(id) = self.next_input.take() else {
            return Ok(());
        };
        let input = Array::from_slice(&[id as i32], &[1, 1]);
        let l = model.net.forward_last(&input, &mut self.cache)?;
        self.set_logits(l)
    }

    /// The token to run next and the cache to run it on (batched decode).
    pub fn pending_input(&mut self) -> Option<(u32, &mut Cache)> {
        let id = self.next_input.take()?;
        Some((id, &mut self.cache))
    }

    /// Steps produced so far.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// Ends the sequence: with no steps and [`StopReason::Stopped`] when it was cut short
    /// before its first step, else as it stopped.
    pub fn finish(self) -> GenerateOutput {
        self.finish_with_cache().0
    }

    /// [`Self::finish`], giving the cache back too: it holds the prompt, then the generated
    /// ids fed back so far (`cache.offset` tokens in all). Layers decoded on the host stay
    /// there: the prompt cache copies them into MLX arrays once ([`Cache::compact`]), and any
    /// MLX use moves them back first ([`KvLayer::flush`](super::cache::KvLayer::flush)) —
    /// moving them here would copy a stored state twice, and a discarded one for nothing.
    pub fn finish_with_cache(self) -> (GenerateOutput, Cache) {
        let total = self.started.elapsed();
        let prefill = if self.steps.is_empty() {
            total
        } else {
            self.prefill_time
        };
        let (mask_time, masks) = self
            .guide
            .as_ref()
            .map_or((Duration::ZERO, 0), Guide::mask_stats);
        if self.pipeline && self.steps.len() > 1 {
            let per_step = |d: Duration| d.as_secs_f64() * 1e3 / (self.steps.len() - 1) as f64;
            tracing::debug!(
                "decode: {} steps in {:.1} ms each, of which the host built and queued the next \
                 step {:.2} ms (its graph built in {:.2} ms)",
                self.steps.len(),
                per_step(total.saturating_sub(prefill)),
                per_step(self.queue_time),
                per_step(self.build_time)
            );
        }
        if masks > 0 {
            tracing::debug!(
                "constraint: {masks} masks, {:.0} µs each on average",
                mask_time.as_secs_f64() * 1e6 / masks as f64
            );
        }
        let out = GenerateOutput {
            prompt_ids: self.prompt_ids,
            steps: self.steps,
            stop: self.stop.unwrap_or(StopReason::Stopped),
            prefill,
            decode: total.saturating_sub(prefill),
            mask_time,
            cached_tokens: self.cached,
        };
        (out, self.cache)
    }

    /// Queues the step after `current` (pipelined: the device runs it while the host reads
    /// `current` and handles it).
    fn queue_next(&mut self, model: &Model, current: &DeviceStep) -> Result<()> {
        let queued = Instant::now();
        let input = current.next.reshape(&[1, 1])?;
        let l = model.net.forward_last(&input, &mut self.cache)?;
        self.build_time += queued.elapsed();
        self.pending = Some(Pending::Own(DeviceStep::queue(&l, &self.opts)?));
        self.queue_time += queued.elapsed();
        Ok(())
    }

    /// The next [`Step`]: read back from the device (queuing the following one first when
    /// pipelined and not `last`), or picked on the host by [`Self::choose`]; `None` when the
    /// constraint allows no token.
    fn next_step(&mut self, model: &Model, last: bool) -> Result<Option<Step>> {
        match self.pending.take() {
            Some(Pending::Own(current)) => {
                if self.pipeline && !last {
                    self.queue_next(model, &current)?;
                }
                return current.read().map(Some);
            }
            Some(Pending::Row(picks, row)) => return picks.read(row).map(Some),
            None => {}
        }
        let l = self.logits.take().ok_or_else(|| {
            Diagnostic::error(
                code::Generate::NoLogits,
                "a step was asked for before its logits were computed (internal error)",
            )
        })?;
        l.eval()?;
        let host: &[f32] = l.as_slice::<f32>();
        let evidence = evidence_wanted(&self.opts);
        Ok(self
            .choose(host)
            .map(|id| evidence::host_step(host, id, self.opts.top, evidence)))
    }

    /// The hook where logits become a token (see the module docs): on a copy of the logits
    /// the constraint mask, then penalties and `logit_bias`, then the sequence's own
    /// sampler. `None` when the constraint allows no token (logged).
    fn choose(&mut self, logits: &[f32]) -> Option<u32> {
        if self.opts.penalties.is_neutral() && self.guide.is_none() {
            return Some(self.sampler.sample(logits));
        }
        self.adjusted.clear();
        self.adjusted.extend_from_slice(logits);
        if let Some(guide) = self.guide.as_mut() {
            if let Masked::DeadEnd(_) = guide.mask(&mut self.adjusted) {
                return None;
            }
        }
        if self.opts.penalties.is_neutral() {
            return Some(self.sampler.sample(&self.adjusted));
        }
        self.penalties.apply(&mut self.adjusted);
        let id = self.sampler.sample(&self.adjusted);
        self.penalties.push(id);
        Some(id)
    }
}

/// Whether greedy steps are picked on the device: greedy without host-side logit
/// adjustments (penalties, a constraint mask) on a GPU. On the CPU the logits are host
/// memory already and one pass over them (`evidence::host_step`) is cheaper than the device
/// reductions.
pub fn device_sampling(sampler: &Sampler, opts: &GenerateOptions) -> bool {
    sampler.is_greedy()
        && opts.penalties.is_neutral()
        && opts.constraint.is_none()
        && super::gpu_available()
}

/// Refuses prompts the model cannot run.
fn check_prompt(model: &Model, prompt_ids: &[u32], opts: &GenerateOptions) -> Result<()> {
    if prompt_ids.is_empty() {
        return Err(Diagnostic::error(
            code::Generate::EmptyPrompt,
            "the prompt encodes to zero tokens",
        ));
    }
    if prompt_ids.len() > model.max_context {
        return Err(Diagnostic::error(
            code::Generate::ContextOverflow,
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
            code::Generate::BadToken,
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
            code::Generate::BadToken,
            format!("logit_bias names token id {bad}, outside the model's vocabulary ({vocab})"),
        ));
    }
    Ok(())
}

/// `max_tokens`, lowered (and logged) to what the context leaves after the prompt.
fn token_budget(model: &Model, prompt_len: usize, max_tokens: usize) -> usize {
    let room = model.max_context - prompt_len;
    if max_tokens > room {
        tracing::warn!(
            "max tokens lowered from {max_tokens} to {room}: the context holds {} tokens",
            model.max_context
        );
        return room;
    }
    max_tokens
}
