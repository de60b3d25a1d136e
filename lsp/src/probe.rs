//! The probe in the background: one worker thread owns the loaded models (MLX streams are
//! thread-local, so a [`Session`] is loaded and used on one thread), one [`Session`] per
//! model directory, loaded on first use and reloaded when the model's files change. Jobs
//! arrive over a channel; each carries a generation number, and a job (or its result) is
//! dropped when a newer probe of the same document was submitted after it: a newer save
//! cancels an older probe. A probe in progress cannot be interrupted mid-step, but it is
//! only a few greedy steps.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc::UnboundedSender;
use tower_lsp_server::ls_types::Uri;

use rmlx_check::probe::{self, ProbeReport};
use rmlx_editor::project::ModelLink;
use rmlx_model::diagnostic::{code, Diagnostic};
use rmlx_model::engine::DtypePolicy;
use rmlx_model::session::Session;
use rmlx_model::template::{ChatTemplate, TemplateOrigin};

use crate::sync::lock;

/// A probe to run: the template text as the editor holds it, for the model it belongs to.
#[derive(Debug, Clone)]
pub struct ProbeJob {
    /// The template document.
    pub uri: Uri,
    /// Its file, when it has one (names the template in diagnostics).
    pub path: Option<PathBuf>,
    /// The template text to probe with.
    pub text: String,
    /// The model.
    pub link: ModelLink,
    /// Set by [`ProbeHandle::submit`].
    pub generation: u64,
}

/// What the worker reports, in order, for one job.
#[derive(Debug)]
pub enum ProbeEvent {
    /// The model is being loaded (not cached, or its files changed).
    Loading {
        /// The job's generation.
        generation: u64,
        /// The model's name.
        model: String,
    },
    /// The probe itself is running.
    Running {
        /// The job's generation.
        generation: u64,
        /// The model's name.
        model: String,
    },
    /// The job finished (or was superseded while it ran).
    Done {
        /// The job's document.
        uri: Uri,
        /// The job's generation.
        generation: u64,
        /// The model's name.
        model: String,
        /// What happened.
        outcome: Outcome,
        /// Time from the job's start on the worker to its end.
        elapsed: Duration,
    },
}

/// How a probe job ended.
#[derive(Debug)]
pub enum Outcome {
    /// A verdict.
    Report(Box<ProbeReport>),
    /// The probe could not run: the model did not load, the seed did not render or encode.
    Failed(Diagnostic),
    /// The edited template does not compile (the lint diagnostics say why); not probed.
    TemplateError,
    /// A newer probe of the document was submitted; this one's result is void.
    Superseded,
}

enum Msg {
    Job(Box<ProbeJob>),
    Stop,
}

/// The handle the server holds on the probe worker.
pub struct ProbeHandle {
    tx: Mutex<Sender<Msg>>,
    latest: Arc<Mutex<HashMap<Uri, u64>>>,
    counter: AtomicU64,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl ProbeHandle {
    /// Starts the worker thread; its events go to `events`.
    pub fn spawn(events: UnboundedSender<ProbeEvent>) -> Self {
        let (tx, rx) = channel();
        let latest: Arc<Mutex<HashMap<Uri, u64>>> = Arc::default();
        let l = latest.clone();
        let thread = std::thread::Builder::new()
            .name("rmlx-probe".into())
            .spawn(move || worker(rx, l, events))
            .expect("spawn the probe thread");
        Self {
            tx: Mutex::new(tx),
            latest,
            counter: AtomicU64::new(0),
            thread: Mutex::new(Some(thread)),
        }
    }

    /// Queues a probe; it supersedes every earlier probe of the same document. Returns its
    /// generation.
    pub fn submit(&self, mut job: ProbeJob) -> u64 {
        let generation = self.counter.fetch_add(1, Ordering::SeqCst) + 1;
        job.generation = generation;
        lock(&self.latest).insert(job.uri.clone(), generation);
        let _ = lock(&self.tx).send(Msg::Job(Box::new(job)));
        generation
    }

    /// Is `generation` the newest probe submitted for `uri`?
    pub fn is_latest(&self, uri: &Uri, generation: u64) -> bool {
        is_latest(&self.latest, uri, generation)
    }

    /// Forgets a document (closed): its queued or running probe is void.
    pub fn forget(&self, uri: &Uri) {
        let generation = self.counter.fetch_add(1, Ordering::SeqCst) + 1;
        lock(&self.latest).insert(uri.clone(), generation);
    }

    /// Stops the worker after the probe it is running (if any) and waits for it, at most
    /// `timeout`. Its models are freed on its own thread.
    pub fn stop(&self, timeout: Duration) {
        let _ = lock(&self.tx).send(Msg::Stop);
        let Some(handle) = lock(&self.thread).take() else {
            return;
        };
        let start = Instant::now();
        while !handle.is_finished() && start.elapsed() < timeout {
            std::thread::sleep(Duration::from_millis(10));
        }
        if handle.is_finished() {
            let _ = handle.join();
        } else {
            tracing::warn!("the probe thread did not stop within {timeout:?}");
        }
    }
}

fn is_latest(latest: &Mutex<HashMap<Uri, u64>>, uri: &Uri, generation: u64) -> bool {
    lock(latest).get(uri).copied() == Some(generation)
}

/// A loaded model and the stamp of the files it was loaded from.
struct Cached {
    session: Session,
    stamp: Vec<(PathBuf, u64, Option<SystemTime>)>,
}

/// Size and modification time of the files a load reads (config, weights, tokenizer).
fn model_stamp(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                        n.ends_with(".safetensors")
                            || (n.ends_with(".json") && n != "chat_template.json")
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let m = std::fs::metadata(&p).ok();
            let len = m.as_ref().map_or(0, |m| m.len());
            let mtime = m.and_then(|m| m.modified().ok());
            (p, len, mtime)
        })
        .collect()
}

fn worker(
    rx: Receiver<Msg>,
    latest: Arc<Mutex<HashMap<Uri, u64>>>,
    events: UnboundedSender<ProbeEvent>,
) {
    let mut models: HashMap<PathBuf, Cached> = HashMap::new();
    'outer: while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        for msg in batch {
            let job = match msg {
                Msg::Stop => break 'outer,
                Msg::Job(j) => j,
            };
            if !is_latest(&latest, &job.uri, job.generation) {
                continue;
            }
            let started = Instant::now();
            let outcome = run_contained(&job, &mut models, &latest, &events);
            let outcome = if is_latest(&latest, &job.uri, job.generation) {
                outcome
            } else {
                Outcome::Superseded
            };
            let _ = events.send(ProbeEvent::Done {
                uri: job.uri.clone(),
                generation: job.generation,
                model: job.link.name.clone(),
                outcome,
                elapsed: started.elapsed(),
            });
        }
    }
    // Models are dropped here, on the thread that made them.
    drop(models);
}

/// [`run`], with a panic turned into a failed probe (the model it used is dropped: its state
/// is unknown) so that one bad probe does not stop every later one.
fn run_contained(
    job: &ProbeJob,
    models: &mut HashMap<PathBuf, Cached>,
    latest: &Mutex<HashMap<Uri, u64>>,
    events: &UnboundedSender<ProbeEvent>,
) -> Outcome {
    let caught = std::panic::catch_unwind(AssertUnwindSafe(|| run(job, models, latest, events)));
    caught.unwrap_or_else(|panic| {
        let why = crate::service::panic_message(panic.as_ref());
        tracing::error!("the probe of {} panicked: {why}", job.link.dir.display());
        models.remove(&job.link.dir);
        Outcome::Failed(Diagnostic::error(
            code::Probe::Panicked,
            format!("the probe stopped on an internal error: {why}"),
        ))
    })
}

fn run(
    job: &ProbeJob,
    models: &mut HashMap<PathBuf, Cached>,
    latest: &Mutex<HashMap<Uri, u64>>,
    events: &UnboundedSender<ProbeEvent>,
) -> Outcome {
    let dir = &job.link.dir;
    let stamp = model_stamp(dir);
    if models.get(dir).is_some_and(|c| c.stamp != stamp) {
        tracing::info!("{}: model files changed; reloading", dir.display());
        models.remove(dir);
    }
    if !models.contains_key(dir) {
        let _ = events.send(ProbeEvent::Loading {
            generation: job.generation,
            model: job.link.name.clone(),
        });
        let t0 = Instant::now();
        // The template on disk plays no part: the probe renders the editor's text, so a
        // saved template that does not parse must not fail the load.
        match Session::load_without_template(dir, DtypePolicy::Auto) {
            Ok(session) => {
                tracing::info!(
                    "{}: loaded in {:.2}s",
                    dir.display(),
                    t0.elapsed().as_secs_f64()
                );
                models.insert(dir.clone(), Cached { session, stamp });
            }
            Err(d) => return Outcome::Failed(d),
        }
        if !is_latest(latest, &job.uri, job.generation) {
            return Outcome::Superseded;
        }
    }
    let cached = models.get_mut(dir).expect("loaded above");
    let origin = match &job.path {
        Some(p) => TemplateOrigin::File { path: p.clone() },
        None => TemplateOrigin::Inline {
            name: job.uri.to_string(),
        },
    };
    let template = match ChatTemplate::new(job.text.clone(), origin) {
        Ok(t) => t,
        Err(_) => return Outcome::TemplateError,
    };
    cached.session.template = Some(template);
    let _ = events.send(ProbeEvent::Running {
        generation: job.generation,
        model: job.link.name.clone(),
    });
    match probe::probe(&cached.session, &job.link.probe_options()) {
        Ok(r) => Outcome::Report(Box::new(r)),
        Err(d) => Outcome::Failed(d),
    }
}
