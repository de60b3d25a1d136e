//! Continuous batching on a model's worker thread: up to `max_batch` requests run together.
//!
//! Each tick of [`Scheduler::run`]:
//! 1. **admit**: jobs waiting in the queue join while there is room (the thread blocks on
//!    the queue only when nothing runs);
//! 2. **prefill**: the oldest sequence still reading its prompt runs one chunk
//!    (`engine::generate::PREFILL_CHUNK`, the same chunks as alone), so a long prompt delays
//!    the running streams by one chunk per step, never by its whole length; where several
//!    are reading their prompts, the oldest of them whose chunks add up to at most
//!    [`TOGETHER_ROWS`] tokens run theirs in one pass where the engine has one
//!    ([`crate::engine::Sequence::prefill_together`]: the same chunks and values as alone,
//!    the weights read once for all of them) — requests arriving together (a wave of
//!    clients) cost one such tick, not one tick each inside the others' streams;
//! 3. **decode**: every sequence with logits takes its step (its own sampler, penalties,
//!    stop strings, logprobs, budget, deadline — [`Stream::on_step`]); finished or cancelled
//!    ones leave at once; the others run their next token in one pass
//!    ([`crate::engine::Net::forward_batch`]: projections, MLP and LM head once for all
//!    rows, attention per sequence over its own cache).
//!
//! With `max_batch` 1 this is one generation at a time, pipelined on a GPU, as before
//! batching existed. Batch sizes and queue times go to `/metrics`.
//!
//! The version's prompt cache (`engine::prefix_cache`) hooks in at three points: admission
//! starts each sequence from the longest stored prefix of its prompt, each prefill chunk may
//! leave a snapshot, and a retired sequence stores its final state.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};

use super::metrics::Metrics;
use super::tools::output::OutputSpec;
use super::worker::{Job, Load, Stream};
use crate::diagnostic::Result;
use crate::engine::{PrefixCache, Sequence};
use crate::session::Session;

/// Traces one tick of [`Scheduler::run`] (`RUST_LOG=rmlx_serve::scheduler=trace`; ticks of
/// 250 ms or more at debug): where a slow tick's time went.
fn log_tick(active: usize, prefilled: Option<usize>, t: TickTimes) {
    let total = t.total.as_secs_f64() * 1e3;
    if total < 250.0 && !tracing::enabled!(tracing::Level::TRACE) {
        return;
    }
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let chunk = prefilled.map_or(String::new(), |n| format!(", a chunk after {n} tokens"));
    let line = format!(
        "tick {total:.1} ms: {active} running, {} fed; prefill {:.1} ms{chunk}, steps {:.1} ms, \
         pass {:.1} ms",
        t.fed,
        ms(t.prefill),
        ms(t.steps),
        ms(t.pass)
    );
    if total >= 250.0 {
        tracing::debug!("slow {line}");
    } else {
        tracing::trace!("{line}");
    }
}

/// Where one tick's time went (see [`log_tick`]).
#[derive(Debug, Default, Clone, Copy)]
struct TickTimes {
    total: std::time::Duration,
    prefill: std::time::Duration,
    steps: std::time::Duration,
    pass: std::time::Duration,
    fed: usize,
}

/// Prompt tokens that prefill together in one tick at most ([`Scheduler::prefill_together`]):
/// the running streams wait for that tick, so no longer than for one sequence's long chunk
/// (the host prefill's longest, `engine::decoder`'s 256 positions).
const TOGETHER_ROWS: usize = 256;

/// One running request: its engine state and its client side.
struct Slot {
    seq: Sequence,
    stream: Stream,
    /// Its next token is waiting to run.
    feeding: bool,
}

/// The batching loop of one model version (see the module docs).
pub struct Scheduler<'a> {
    name: &'a str,
    session: &'a Session,
    /// How chat output is parsed (reasoning, tool calls): each stream parses its own.
    spec: &'a OutputSpec,
    metrics: &'a Metrics,
    max_batch: usize,
    active: Vec<Slot>,
    load: &'a Load,
    prompt_cache: PrefixCache,
}

impl<'a> Scheduler<'a> {
    /// A scheduler running at most `max_batch` (at least 1) sequences together.
    pub(super) fn new(
        name: &'a str,
        session: &'a Session,
        spec: &'a OutputSpec,
        metrics: &'a Metrics,
        max_batch: usize,
        load: &'a Load,
    ) -> Self {
        Self {
            name,
            session,
            spec,
            metrics,
            max_batch: max_batch.max(1),
            active: Vec::new(),
            load,
            prompt_cache: PrefixCache::new(0),
        }
    }

    /// Serves through `cache` (the version's prompt cache) instead of none.
    pub(super) fn with_prompt_cache(mut self, cache: PrefixCache) -> Self {
        self.prompt_cache = cache;
        self
    }

    /// Publishes the batch's free slots (what `Worker::submit` may queue beyond its depth).
    fn publish_free(&self) {
        let free = self.max_batch.saturating_sub(self.active.len());
        self.load.free.store(free, Ordering::Relaxed);
    }

    /// Serves `queue` until it closes (the model was swapped out or the server stops) and
    /// every admitted request has finished.
    pub fn run(mut self, queue: &Receiver<Job>) {
        let mut open = true;
        loop {
            if self.active.is_empty() {
                if !open {
                    return;
                }
                match queue.recv() {
                    Ok(job) => self.admit(job),
                    Err(_) => return,
                }
            }
            while open && self.active.len() < self.max_batch {
                match queue.try_recv() {
                    Ok(job) => self.admit(job),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => open = false,
                }
            }
            self.publish_free();
            let tick = std::time::Instant::now();
            let prefilled = self.prefill();
            let prefill = tick.elapsed();
            let mut times = self.decode();
            (times.prefill, times.total) = (prefill, tick.elapsed());
            log_tick(self.active.len(), prefilled, times);
            self.publish_free();
        }
    }

    /// Takes a job off the queue into the batch (or ends it here: timed out, client gone,
    /// prompt refused).
    fn admit(&mut self, job: Job) {
        self.load.queued.fetch_sub(1, Ordering::Relaxed);
        self.metrics.queue_delta(self.name, -1);
        self.metrics
            .queue_time(self.name, job.arrived.elapsed().as_secs_f64());
        let opened = Stream::open(self.name, self.session, self.spec, job, self.metrics);
        let Some((stream, ids, opts)) = opened else {
            return;
        };
        let model = &self.session.model;
        match self.prompt_cache.start(model, &ids, &opts) {
            Ok(seq) => {
                let seq = seq.for_batches_of(self.max_batch);
                self.metrics.running_delta(self.name, 1);
                self.active.push(Slot {
                    seq,
                    stream,
                    feeding: false,
                });
            }
            Err(d) => stream.fail(d),
        }
    }

    /// One prefill chunk of the sequences still reading their prompts: of several together
    /// in one pass where the engine has one ([`Self::prefill_together`]), else of the oldest
    /// alone. Returns the prompt tokens in the oldest's cache before it (`None`: no sequence
    /// was prefilling).
    fn prefill(&mut self) -> Option<usize> {
        self.drop_gone_prefills();
        let i = self.active.iter().position(|s| s.seq.is_prefilling())?;
        let before = self.active[i].seq.prefilled();
        if self.prefill_together() {
            return Some(before);
        }
        let slot = &mut self.active[i];
        match slot.seq.prefill_chunk(&self.session.model) {
            Ok(()) => self.prompt_cache.after_chunk(&slot.seq),
            Err(d) => self.retire(i, Some(d)),
        }
        Some(before)
    }

    /// Ends the prefilling sequences nobody waits for any more.
    fn drop_gone_prefills(&mut self) {
        while let Some(i) =
            (self.active.iter()).position(|s| s.seq.is_prefilling() && s.stream.gone())
        {
            let before = self.active[i].seq.prefilled();
            tracing::debug!("prefill cancelled after {before} prompt tokens");
            self.retire(i, None);
        }
    }

    /// The next chunks of the oldest prefilling sequences, as many as add up to at most
    /// [`TOGETHER_ROWS`] prompt tokens, in one pass
    /// ([`Sequence::prefill_together`]: each weight tile dequantized once for all of them,
    /// and each sequence's values those it gets alone). `false` (nothing run) for fewer than
    /// two or where the engine has no such pass (another architecture, a chunk too short
    /// for the prefill GEMM).
    fn prefill_together(&mut self) -> bool {
        let mut rows = 0;
        let mut group: Vec<usize> = Vec::new();
        let prefilling = self.active.iter().enumerate();
        for (i, slot) in prefilling.filter(|(_, s)| s.seq.is_prefilling()) {
            // Oldest first and no skipping: the oldest always runs this tick.
            let len = slot.seq.next_chunk_len();
            if rows + len > TOGETHER_ROWS {
                break;
            }
            rows += len;
            group.push(i);
        }
        if group.len() < 2 {
            return false;
        }
        let mut seqs: Vec<&mut Sequence> = (self.active.iter_mut().enumerate())
            .filter(|(i, _)| group.contains(i))
            .map(|(_, slot)| &mut slot.seq)
            .collect();
        match Sequence::prefill_together(&mut seqs, &self.session.model) {
            Ok(false) => return false,
            Ok(true) => {
                for &i in &group {
                    self.prompt_cache.after_chunk(&self.active[i].seq);
                }
                tracing::trace!("prefilled {} prompts together ({rows} tokens)", group.len());
            }
            Err(d) => {
                tracing::warn!(
                    "prefill of {} prompts together failed: {}",
                    group.len(),
                    d.message
                );
                for &i in group.iter().rev() {
                    self.retire(i, Some(d.clone()));
                }
            }
        }
        true
    }

    /// One step of every sequence past its prompt, then one pass for their next tokens;
    /// returns how long each part took and how many were fed.
    fn decode(&mut self) -> TickTimes {
        let start = std::time::Instant::now();
        let (model, tok) = (&self.session.model, &self.session.tokenizer);
        let mut i = 0;
        while i < self.active.len() {
            let slot = &mut self.active[i];
            if slot.seq.is_prefilling() {
                i += 1;
                continue;
            }
            let stream = &mut slot.stream;
            match slot.seq.step(model, |s| stream.on_step(tok, s)) {
                Ok(Some(_)) => {
                    slot.feeding = true;
                    i += 1;
                }
                Ok(None) => self.retire(i, None),
                Err(d) => self.retire(i, Some(d)),
            }
        }
        let fed = self.active.iter().filter(|s| s.feeding).count();
        let steps = start.elapsed();
        if let Err(d) = self.feed() {
            // A failed pass leaves every fed sequence without logits: all of them end.
            tracing::warn!("batched decode step failed: {}", d.message);
            while let Some(i) = self.active.iter().position(|s| s.feeding) {
                self.retire(i, Some(d.clone()));
            }
        }
        TickTimes {
            steps,
            pass: start.elapsed() - steps,
            fed,
            ..TickTimes::default()
        }
    }

    /// Runs the waiting tokens: alone through the sequence's own step (pipelined when
    /// `max_batch` is 1), together through one batched pass ([`Sequence::feed_together`]).
    fn feed(&mut self) -> Result<()> {
        let fed: Vec<&mut Slot> = self.active.iter_mut().filter(|s| s.feeding).collect();
        if fed.is_empty() {
            return Ok(());
        }
        self.metrics.batch_size(self.name, fed.len());
        let mut seqs: Vec<&mut Sequence> = fed
            .into_iter()
            .map(|slot| {
                slot.feeding = false;
                &mut slot.seq
            })
            .collect();
        Sequence::feed_together(&mut seqs, &self.session.model)
    }

    /// Removes sequence `i` from the batch and ends its request (with `error`, if any).
    fn retire(&mut self, i: usize, error: Option<crate::diagnostic::Diagnostic>) {
        let slot = self.active.remove(i);
        self.metrics.running_delta(self.name, -1);
        // The prompt cache's series are current before the client hears the outcome.
        if let Some(d) = error {
            self.metrics.prompt_cache(self.name, &mut self.prompt_cache);
            slot.stream.fail(d);
            return;
        }
        let (out, cache) = slot.seq.finish_with_cache();
        self.prompt_cache.store(&out, &cache);
        self.metrics.prompt_cache(self.name, &mut self.prompt_cache);
        let tok = &self.session.tokenizer;
        slot.stream.finish(self.name, tok, out, self.metrics);
    }
}
