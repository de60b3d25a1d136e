//! One loaded version of a model, on its own thread.
//!
//! MLX arrays and streams are bound to the thread that made them, so a [`Worker`] thread
//! loads the [`Session`], probes it, and then runs every generation for it from a bounded
//! queue ([`Worker::submit`] refuses work beyond the bound): its [`Scheduler`] keeps up to
//! `max_batch` of them running together (continuous batching). Results stream back to the
//! HTTP side as [`Event`]s over a tokio channel; [`Stream`] is one request's side of that
//! (detokenizing, stop strings, logprobs, tool calls, the outcome). A request's cancel flag
//! (client gone) and deadline are checked between prefill chunks and between tokens. The
//! thread also owns the version's prompt cache (`engine::prefix_cache`, used by the
//! scheduler): a reload starts with an empty one.
//!
//! When the last handle to a worker is dropped (the model was hot-swapped), its queue
//! closes: the thread finishes the requests already queued, then exits and frees the model.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Map, Value};
use tokio::sync::mpsc::UnboundedSender;

use super::api::ConstraintRequest;
use super::metrics::Metrics;
use super::scheduler::Scheduler;
use super::text::{Flow, TextStream};
use super::tools::choice::ToolChoice;
use super::tools::output::{OutputParser, OutputSpec};
use super::tools::{force, Delta, ToolCall, ToolFormat};
use crate::constrain::Constraint;
use crate::diagnostic::{code, Code, Diagnostic, Result};
use crate::engine::{
    DtypePolicy, GenerateOptions, GenerateOutput, Penalties, PrefixCache, SamplerConfig, Step,
    StopReason,
};
use crate::manifest::ProbeDecl;
use crate::probe::{self, ProbeOptions};
use crate::session::{ContentTokens, Prompt, Session};
use crate::tokenize::Tokenizer;

/// What a request asks the model to continue.
#[derive(Debug, Clone)]
pub enum PromptInput {
    /// Messages rendered through the chat template (the one prompt path, as the probe).
    Chat {
        /// OpenAI messages, normalised for templates.
        messages: Vec<Value>,
        /// Tool definitions passed to the template.
        tools: Option<Value>,
        /// Extra template variables (`chat_template_kwargs`).
        kwargs: Map<String, Value>,
    },
    /// Plain text, encoded with the tokenizer's default special tokens.
    Text(String),
    /// Token ids, used as they are.
    Ids(Vec<u32>),
}

/// A generation request, validated.
#[derive(Debug, Clone)]
pub struct GenRequest {
    /// The prompt.
    pub prompt: PromptInput,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Sampling.
    pub sampler: SamplerConfig,
    /// Keep going past EOS.
    pub ignore_eos: bool,
    /// Stop strings (not included in the output).
    pub stop: Vec<String>,
    /// Penalties and `logit_bias`.
    pub penalties: Penalties,
    /// Per-token logprobs: `Some(n)` with the `n` most likely alternatives.
    pub logprobs: Option<usize>,
    /// Parse tool calls out of the output (tools offered, `tool_choice` not `none`).
    pub parse_tools: bool,
    /// Structured output: the grammar the output must match.
    pub constraint: Option<ConstraintRequest>,
    /// `tool_choice` `required` or a named function: the output must be a call in the
    /// model's tool-call format (the grammar is built once the format is known).
    pub forced_call: Option<ToolChoice>,
}

/// The log-probability of one generated token.
#[derive(Debug, Clone)]
pub struct TokenLogprob {
    /// The token's text.
    pub token: String,
    /// log-softmax of the token.
    pub logprob: f32,
    /// The most likely tokens at this step: (text, logprob).
    pub top: Vec<(String, f32)>,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// EOS or a stop string.
    Stop,
    /// The token budget.
    Length,
    /// The output was tool calls.
    ToolCalls,
}

impl Finish {
    /// OpenAI's `finish_reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::ToolCalls => "tool_calls",
        }
    }
}

/// A failed request, as the worker sees it.
#[derive(Debug, Clone)]
pub enum JobError {
    /// The request cannot be served as asked (template render error, prompt too long…).
    Invalid(Diagnostic),
    /// The deadline passed.
    Timeout,
    /// Anything else.
    Internal(Diagnostic),
}

/// What a running request streams back.
#[derive(Debug, Clone)]
pub enum Event {
    /// The prompt as the model sees it (always first).
    Prompt(Prompt),
    /// New output (possibly empty) and the logprobs of the tokens behind it.
    Delta {
        /// Final answer text, reasoning and tool-call pieces.
        delta: Delta,
        /// One entry per generated token, when logprobs were asked for.
        logprobs: Vec<TokenLogprob>,
    },
    /// The end.
    Done {
        /// Why.
        finish: Finish,
        /// Tool calls parsed from the output.
        tool_calls: Vec<ToolCall>,
        /// Prompt tokens.
        prompt_tokens: usize,
        /// Generated tokens (EOS not counted).
        completion_tokens: usize,
        /// Prompt tokens taken from the prompt cache.
        cached_tokens: usize,
    },
    /// The request failed.
    Error(JobError),
}

/// A request on its way to a worker.
#[derive(Debug)]
pub struct Job {
    /// What to generate.
    pub req: GenRequest,
    /// Set when the client is gone.
    pub cancel: Arc<AtomicBool>,
    /// When the request must be done.
    pub deadline: Instant,
    /// When the request arrived (time to first token counts from here).
    pub arrived: Instant,
    /// Where results go.
    pub events: UnboundedSender<Event>,
}

/// Why [`Worker::submit`] refused a job.
#[derive(Debug)]
pub enum SubmitError {
    /// The queue is full.
    Full,
    /// The worker thread is gone.
    Gone,
}

/// A model load that did not end in service.
#[derive(Debug, Clone)]
pub struct LoadFailure {
    /// What went wrong.
    pub diagnostic: Diagnostic,
    /// The probe verdict, when the probe ran.
    pub verdict: Option<&'static str>,
    /// The probe report, when the probe ran.
    pub probe: Option<Value>,
}

/// Settings of a worker.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Model name (for logs and metrics).
    pub name: String,
    /// The model directory.
    pub dir: PathBuf,
    /// Version number of this load.
    pub version: u64,
    /// Compute dtype.
    pub policy: DtypePolicy,
    /// Probe before serving with the model's `[models.<name>.probe]` (empty when it is not
    /// declared; `None`: `--no-probe`).
    pub probe: Option<ProbeDecl>,
    /// Requests that may wait while a full batch runs.
    pub queue_depth: usize,
    /// Sequences generated together (continuous batching); 1 runs one at a time.
    pub max_batch: usize,
    /// How special-token strings in messages are encoded.
    pub content_tokens: ContentTokens,
    /// The tool-call format set in rmlx.toml (else detected from the chat template).
    pub tool_format: Option<ToolFormat>,
    /// Byte budget of this version's prompt cache (0: off).
    pub prompt_cache_bytes: usize,
    /// Counts this worker's thread while it runs (shutdown waits for it).
    pub live: LiveThreads,
}

/// Counts running model threads, so shutdown can wait until every model is freed on its own
/// thread: MLX's global state is torn down when the process exits, and a model thread still
/// holding arrays (or finishing a step) at that moment can crash the exit.
#[derive(Debug, Clone, Default)]
pub struct LiveThreads(Arc<LiveCount>);

#[derive(Debug, Default)]
struct LiveCount {
    running: std::sync::Mutex<usize>,
    /// Notified whenever a thread is counted out.
    changed: std::sync::Condvar,
}

/// Held by a running model thread; its drop (also on panic) counts the thread out.
#[derive(Debug)]
pub struct LiveGuard(LiveThreads);

impl LiveThreads {
    /// Counts a thread in until the guard drops.
    pub fn enter(&self) -> LiveGuard {
        *self.count() += 1;
        LiveGuard(self.clone())
    }

    /// Threads running now.
    pub fn running(&self) -> usize {
        *self.count()
    }

    /// Waits until no thread runs, at most `timeout`; whether none does.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let (n, _) = self
            .0
            .changed
            .wait_timeout_while(self.count(), timeout, |n| *n > 0)
            .unwrap_or_else(|e| e.into_inner());
        *n == 0
    }

    fn count(&self) -> std::sync::MutexGuard<'_, usize> {
        self.0.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        *self.0.count() -= 1;
        self.0 .0.changed.notify_all();
    }
}

/// A handle on a loaded, probed model version.
#[derive(Debug)]
pub struct Worker {
    /// Model name.
    pub name: String,
    /// Version number (increases with every load attempt of the model).
    pub version: u64,
    /// The directory it was loaded from.
    pub dir: PathBuf,
    /// When it entered service.
    pub loaded_at: SystemTime,
    /// The probe verdict (`None` with `--no-probe`).
    pub verdict: Option<&'static str>,
    /// The probe report.
    pub probe: Option<Value>,
    /// The model's context length.
    pub max_context: usize,
    tx: SyncSender<Job>,
    metrics: Arc<Metrics>,
    load: Arc<Load>,
    queue_depth: usize,
}

/// What a worker holds now, shared between [`Worker::submit`] and its scheduler: jobs in the
/// queue and sequences in the batch. A job is accepted while the queue holds fewer than
/// `queue_depth` plus the batch's free slots (those are taken at the next step).
#[derive(Debug, Default)]
pub(super) struct Load {
    /// Jobs submitted and not yet taken into the batch.
    pub queued: AtomicUsize,
    /// Free slots of the batch.
    pub free: AtomicUsize,
}

impl Worker {
    /// Starts a worker thread that loads and probes the model; returns once it serves, or
    /// why it does not.
    pub fn start(
        cfg: WorkerConfig,
        metrics: Arc<Metrics>,
    ) -> std::result::Result<Arc<Worker>, LoadFailure> {
        // The bound that matters is checked in `submit`; the channel only has room for it.
        let (tx, rx) = sync_channel::<Job>(cfg.queue_depth + cfg.max_batch.max(1));
        let load = Arc::new(Load {
            queued: AtomicUsize::new(0),
            free: AtomicUsize::new(cfg.max_batch.max(1)),
        });
        let thread_load = load.clone();
        let (ready_tx, ready_rx) = sync_channel(1);
        let thread_cfg = cfg.clone();
        let thread_metrics = metrics.clone();
        let live = cfg.live.enter();
        let spawned = std::thread::Builder::new()
            .name(format!("rmlx-{}-v{}", cfg.name, cfg.version))
            .spawn(move || {
                let _live = live;
                worker_main(thread_cfg, rx, ready_tx, thread_metrics, thread_load)
            });
        if let Err(e) = spawned {
            return Err(LoadFailure {
                diagnostic: Diagnostic::error(
                    code::Serve::Thread,
                    format!("cannot start a model thread: {e}"),
                ),
                verdict: None,
                probe: None,
            });
        }
        let loaded: std::result::Result<Loaded, LoadFailure> =
            ready_rx.recv().unwrap_or_else(|_| {
                Err(LoadFailure {
                    diagnostic: Diagnostic::error(
                        code::Serve::Thread,
                        format!("the thread loading {} died", cfg.dir.display()),
                    ),
                    verdict: None,
                    probe: None,
                })
            });
        let loaded = loaded?;
        Ok(Arc::new(Worker {
            name: cfg.name,
            version: cfg.version,
            dir: cfg.dir,
            loaded_at: SystemTime::now(),
            verdict: loaded.verdict,
            probe: loaded.probe,
            max_context: loaded.max_context,
            tx,
            metrics,
            queue_depth: cfg.queue_depth,
            load,
        }))
    }

    /// Queues a job; refuses it when the queue behind a full batch is full.
    pub fn submit(&self, job: Job) -> std::result::Result<(), SubmitError> {
        let room = self.queue_depth + self.load.free.load(Ordering::Relaxed);
        let queued = self.load.queued.fetch_add(1, Ordering::Relaxed);
        if queued >= room {
            self.load.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(SubmitError::Full);
        }
        self.metrics.queue_delta(&self.name, 1);
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.load.queued.fetch_sub(1, Ordering::Relaxed);
                self.metrics.queue_delta(&self.name, -1);
                Err(match e {
                    TrySendError::Full(_) => SubmitError::Full,
                    TrySendError::Disconnected(_) => SubmitError::Gone,
                })
            }
        }
    }
}

struct Loaded {
    verdict: Option<&'static str>,
    probe: Option<Value>,
    max_context: usize,
}

fn worker_main(
    cfg: WorkerConfig,
    rx: Receiver<Job>,
    ready: SyncSender<std::result::Result<Loaded, LoadFailure>>,
    metrics: Arc<Metrics>,
    load: Arc<Load>,
) {
    let fail = |diagnostic: Diagnostic| LoadFailure {
        diagnostic,
        verdict: None,
        probe: None,
    };
    let started = Instant::now();
    // distributed hook: with --hostfile every rank loads this version and frees it when this
    // thread ends, however it ends (serve::distributed)
    let _on_ranks = super::distributed::Retire(cfg.version);
    let session = match super::distributed::load_session(&cfg.dir, cfg.policy, cfg.version) {
        Ok(mut s) => {
            s.content_tokens = cfg.content_tokens;
            s
        }
        Err(d) => {
            let _ = ready.send(Err(fail(d)));
            return;
        }
    };
    tracing::debug!(
        "{} v{}: loaded {} in {:.1}s",
        cfg.name,
        cfg.version,
        cfg.dir.display(),
        started.elapsed().as_secs_f64()
    );
    let mut loaded = Loaded {
        verdict: None,
        probe: None,
        max_context: session.model.max_context,
    };
    if let Some(settings) = &cfg.probe {
        match probe::probe(
            &session,
            &ProbeOptions::from_decl(&cfg.name, Some(settings)),
        ) {
            Ok(report) => {
                let verdict = report.verdict;
                let reason = report.evidence.reason.clone();
                metrics.probe(&cfg.name, verdict.name());
                let json = serde_json::to_value(&report).unwrap_or(Value::Null);
                if !verdict.is_healthy() {
                    let d = Diagnostic::error(
                        code::Serve::ProbeFailed,
                        format!(
                            "{} failed its probe: verdict `{}` ({reason})",
                            cfg.dir.display(),
                            verdict.name()
                        ),
                    )
                    .with_file(&cfg.dir)
                    .with_help(
                        "run `cargo rmlx probe` on it for the evidence, or serve it anyway with \
                         --no-probe",
                    );
                    let _ = ready.send(Err(LoadFailure {
                        diagnostic: d,
                        verdict: Some(verdict.name()),
                        probe: Some(json),
                    }));
                    return;
                }
                loaded.verdict = Some(verdict.name());
                loaded.probe = Some(json);
            }
            Err(d) => {
                metrics.probe(&cfg.name, "error");
                let _ = ready.send(Err(fail(d)));
                return;
            }
        }
    }
    if let Err(d) = warm_gpu(&cfg, &session) {
        let _ = ready.send(Err(fail(d)));
        return;
    }
    if ready.send(Ok(loaded)).is_err() {
        return;
    }
    drop(ready);
    let source = session.template.as_ref().map_or("", |t| t.source());
    let spec = OutputSpec::for_template(&cfg.name, source, cfg.tool_format);
    // one prompt cache per loaded version, on this thread (a reload starts empty)
    let prompt_cache = PrefixCache::new(cfg.prompt_cache_bytes);
    Scheduler::new(&cfg.name, &session, &spec, &metrics, cfg.max_batch, &load)
        .with_prompt_cache(prompt_cache)
        .run(&rx);
    tracing::debug!("{} v{}: retired", cfg.name, cfg.version);
}

/// On a GPU, runs the serving path once per prompt-length class and batch size before the
/// version takes requests, so that MLX compiles its kernels now and not mid-serving
/// (`engine::warmup`; a hot reload keeps serving the old version meanwhile). Not with
/// `--hostfile`: every rank runs the passes of rank 0's requests only.
fn warm_gpu(cfg: &WorkerConfig, session: &Session) -> Result<()> {
    if !crate::engine::gpu_available() {
        return Ok(());
    }
    if super::distributed::is_distributed() {
        tracing::info!("{}: no GPU warm-up across ranks (--hostfile)", cfg.name);
        return Ok(());
    }
    tracing::info!(
        "{} v{}: warming the GPU's kernels for prompts and batches of 1 to {} (compiling them \
         the first time on a machine can take a minute)",
        cfg.name,
        cfg.version,
        cfg.max_batch
    );
    let w = crate::engine::warmup::warm_up(&session.model, cfg.max_batch)?;
    tracing::info!(
        "{} v{}: warmed in {:.1}s ({} prompts, {} batch sizes, {} key/value capacities)",
        cfg.name,
        cfg.version,
        w.elapsed.as_secs_f64(),
        w.prefills,
        w.batches,
        w.capacities
    );
    Ok(())
}

/// Renders or encodes a request's prompt.
pub fn build_prompt(session: &Session, input: &PromptInput) -> Result<Prompt> {
    match input {
        PromptInput::Chat {
            messages,
            tools,
            kwargs,
        } => session.chat_prompt(messages, tools.as_ref(), kwargs),
        PromptInput::Text(t) => session.raw_prompt(t),
        PromptInput::Ids(ids) => Ok(Prompt {
            text: session.tokenizer.decode(ids, false)?,
            ids: ids.clone(),
        }),
    }
}

fn classify(d: Diagnostic) -> JobError {
    match d.code {
        Code::Template(_) | Code::Generate(_) | Code::Tokenize(_) | Code::Constrain(_) => {
            JobError::Invalid(d)
        }
        _ => JobError::Internal(d),
    }
}

/// Why the on-step callback stopped the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Halt {
    StopString,
    ClientGone,
    Timeout,
}

/// The request's output constraint, compiled: its structured-output field, or the grammar
/// of a forced tool call in the model's formats (`hermes` where the template shows none, as
/// the parser assumes).
fn output_constraint(
    session: &Session,
    spec: &OutputSpec,
    req: &GenRequest,
    prompt: &Prompt,
) -> Result<Option<Constraint>> {
    if let Some(c) = &req.constraint {
        return session.compile_constraint(&c.spec).map(Some);
    }
    let (Some(choice), PromptInput::Chat { tools, .. }) = (&req.forced_call, &req.prompt) else {
        return Ok(None);
    };
    let env = session.guide_env()?;
    let tools = tools
        .as_ref()
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let target = force::Target {
        spec,
        source: session.template.as_ref().map_or("", |t| t.source()),
        prompt: &prompt.text,
    };
    let grammar = force::forced_call(target, tools, choice, &|t| env.spell(t))?;
    tracing::debug!("forced tool-call grammar: {grammar:?}");
    env.compile(&grammar).map(Some)
}

/// How a request's output is parsed: chat requests by the model's formats, the rest as text.
fn output_parser(spec: &OutputSpec, req: &GenRequest, prompt: &Prompt) -> OutputParser {
    match &req.prompt {
        PromptInput::Chat { tools, .. } => {
            let tools = tools.as_ref().filter(|_| req.parse_tools);
            OutputParser::chat(spec, tools, &prompt.text)
        }
        PromptInput::Text(_) | PromptInput::Ids(_) => OutputParser::plain(),
    }
}

/// One request on the worker thread: what it asked for, where its output goes, and the
/// text state between the model's steps and the client ([`TextStream`]: detokenizer, stop
/// strings, its own reasoning and tool-call parser). The scheduler owns its [`crate::engine::Sequence`]; this owns everything else.
pub(super) struct Stream {
    req: GenRequest,
    cancel: Arc<AtomicBool>,
    deadline: Instant,
    arrived: Instant,
    events: UnboundedSender<Event>,
    eos_ids: Vec<u32>,
    text: TextStream,
    halt: Option<Halt>,
    first_token: Option<Duration>,
    generated: usize,
    prompt_tokens: usize,
}

impl Stream {
    /// Takes a job off the queue: refuses it when its time ran out or its client left,
    /// builds its prompt and announces it. Returns the stream and its prompt ids and
    /// generation options, or `None` when the job ended here (its outcome already sent).
    pub(super) fn open(
        name: &str,
        session: &Session,
        spec: &OutputSpec,
        job: Job,
        metrics: &Metrics,
    ) -> Option<(Self, Vec<u32>, GenerateOptions)> {
        let Job {
            req,
            cancel,
            deadline,
            arrived,
            events,
        } = job;
        if Instant::now() >= deadline {
            metrics.cancelled(name, "timeout");
            let _ = events.send(Event::Error(JobError::Timeout));
            return None;
        }
        if cancel.load(Ordering::Relaxed) {
            metrics.cancelled(name, "client-gone");
            return None;
        }
        let prompt = match build_prompt(session, &req.prompt) {
            Ok(p) => p,
            Err(d) => {
                let _ = events.send(Event::Error(classify(d)));
                return None;
            }
        };
        // Compiled before the prompt is announced, so a bad constraint is a 400 even when
        // streaming.
        let constraint = match output_constraint(session, spec, &req, &prompt) {
            Ok(c) => c,
            Err(d) => {
                let _ = events.send(Event::Error(classify(d)));
                return None;
            }
        };
        let prompt_tokens = prompt.ids.len();
        let ids = prompt.ids.clone();
        let parser = output_parser(spec, &req, &prompt);
        if events.send(Event::Prompt(prompt)).is_err() {
            metrics.cancelled(name, "client-gone");
            return None;
        }
        let eos_ids = session.eos_ids();
        let opts = GenerateOptions {
            max_tokens: req.max_tokens,
            sampler: req.sampler,
            ignore_eos: req.ignore_eos,
            eos_ids: eos_ids.clone(),
            top: req.logprobs.unwrap_or(0).max(1),
            penalties: req.penalties.clone(),
            constraint,
            evidence: req.logprobs.is_some(),
        };
        let stream = Self {
            text: TextStream::new(&session.tokenizer, req.stop.clone(), parser),
            req,
            cancel,
            deadline,
            arrived,
            events,
            eos_ids,
            halt: None,
            first_token: None,
            generated: 0,
            prompt_tokens,
        };
        Some((stream, ids, opts))
    }

    /// Whether nobody waits for this request any more (deadline past or client gone).
    pub(super) fn gone(&self) -> bool {
        Instant::now() >= self.deadline || self.cancel.load(Ordering::Relaxed)
    }

    /// The request failed: tells the client.
    pub(super) fn fail(self, d: Diagnostic) {
        let _ = self.events.send(Event::Error(classify(d)));
    }

    /// Sees one generated step: streams its text and logprobs, or says stop (stop string,
    /// client gone, deadline).
    pub(super) fn on_step(&mut self, tok: &Tokenizer, step: &Step) -> ControlFlow<()> {
        if self.first_token.is_none() {
            self.first_token = Some(self.arrived.elapsed());
        }
        // The deadline first: a handler that timed out also drops (cancels) its request.
        if Instant::now() >= self.deadline {
            self.halt = Some(Halt::Timeout);
            return ControlFlow::Break(());
        }
        if self.cancel.load(Ordering::Relaxed) {
            self.halt = Some(Halt::ClientGone);
            return ControlFlow::Break(());
        }
        if !self.req.ignore_eos && self.eos_ids.contains(&step.id) {
            return ControlFlow::Continue(());
        }
        self.generated += 1;
        let (delta, flow) = self.text.push(tok, step.id);
        let piece = |id: u32| tok.decode(&[id], false).unwrap_or_default();
        let logprobs = match self.req.logprobs {
            Some(n) => vec![TokenLogprob {
                token: piece(step.id),
                logprob: step.logprob,
                top: step
                    .top
                    .iter()
                    .zip(&step.top_logprobs)
                    .take(n)
                    .map(|((id, _), lp)| (piece(*id), *lp))
                    .collect(),
            }],
            None => Vec::new(),
        };
        if (!delta.is_empty() || !logprobs.is_empty())
            && self.events.send(Event::Delta { delta, logprobs }).is_err()
        {
            self.halt = Some(Halt::ClientGone);
            return ControlFlow::Break(());
        }
        if flow == Flow::Stop {
            self.halt = Some(Halt::StopString);
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }

    /// The sequence ended: records metrics and sends the held-back text and the outcome.
    pub(super) fn finish(
        mut self,
        name: &str,
        tok: &Tokenizer,
        out: GenerateOutput,
        metrics: &Metrics,
    ) {
        if out.steps.is_empty() && out.stop == StopReason::Stopped {
            // Cancelled during the prefill: the same two reasons, the deadline first.
            self.halt = Some(if Instant::now() >= self.deadline {
                Halt::Timeout
            } else {
                Halt::ClientGone
            });
        }
        let ttft = self.first_token.map(|d| d.as_secs_f64());
        let decode_tps = (out.steps.len() > 1)
            .then(|| (out.steps.len() - 1) as f64 / out.decode.as_secs_f64().max(1e-9));
        metrics.generation(name, self.prompt_tokens, out.steps.len(), ttft, decode_tps);
        match self.halt {
            Some(Halt::ClientGone) => {
                metrics.cancelled(name, "client-gone");
                return;
            }
            Some(Halt::Timeout) => {
                metrics.cancelled(name, "timeout");
                let _ = self.events.send(Event::Error(JobError::Timeout));
                return;
            }
            _ => {}
        }
        // The text still held back (the decoder's tail, a marker that never completed).
        let (tail, tool_calls) = self.text.finish(tok);
        let finish = match (self.halt, out.stop) {
            _ if !tool_calls.is_empty() => Finish::ToolCalls,
            (Some(Halt::StopString), _) | (_, StopReason::Eos) => Finish::Stop,
            _ => Finish::Length,
        };
        if !tail.is_empty() {
            let _ = self.events.send(Event::Delta {
                delta: tail,
                logprobs: Vec::new(),
            });
        }
        let _ = self.events.send(Event::Done {
            finish,
            tool_calls,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.generated,
            cached_tokens: out.cached_tokens,
        });
    }
}

/// A cheap fingerprint of a model directory (names, sizes, modification times of its
/// visible files), to tell whether a file event changed anything.
pub fn dir_stamp(dir: &Path) -> Vec<(String, u64, Option<Duration>)> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name.ends_with('~') {
                continue;
            }
            let Ok(meta) = std::fs::metadata(e.path()) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok());
            out.push((name, meta.len(), mtime));
        }
    }
    out.sort();
    out
}
