//! The served models and their versions.
//!
//! Each [`Entry`] holds the version in service (an `Arc<Worker>`), its state, and the last
//! failure. [`Registry::reload`] is the one way a version enters service, at startup, on
//! `POST /v1/models/{name}/reload` and under `--watch`: build (declared models) → load →
//! probe on a fresh worker thread → swap. The swap replaces the `Arc` under a mutex: requests
//! already queued on the old version finish there; new requests go to the new one. When any
//! step fails, the version in service (if any) stays.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use super::metrics::Metrics;
use super::worker::{dir_stamp, LiveThreads, LoadFailure, Worker, WorkerConfig};
use super::ServeEvent;
use crate::build::{build_model, BuildOptions, Event as BuildEvent};
use crate::diagnostic::Diagnostic;
use crate::engine::DtypePolicy;
use crate::manifest::{Manifest, ModelDecl};

/// Where a served model comes from.
#[derive(Debug, Clone)]
pub struct ModelSource {
    /// The name requests use in `model`.
    pub name: String,
    /// The directory that is loaded.
    pub dir: PathBuf,
    /// Declared in rmlx.toml: built into `dir` before every load.
    pub decl: Option<ModelDecl>,
}

/// The state of a model, as `/v1/models` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The first load is under way.
    Loading,
    /// A version serves.
    Ready,
    /// No version serves: the last attempt failed.
    Failed,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Loading => "loading",
            State::Ready => "ready",
            State::Failed => "failed",
        }
    }
}

/// A failed build, load or probe.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The diagnostic.
    pub diagnostic: Diagnostic,
    /// The probe verdict, when the probe ran.
    pub verdict: Option<&'static str>,
    /// The probe report, when the probe ran.
    pub probe: Option<Value>,
    /// When.
    pub at: SystemTime,
    /// The version that attempt would have been.
    pub version: u64,
}

#[derive(Debug)]
struct Status {
    state: State,
    reloading: bool,
    current: Option<Arc<Worker>>,
    stamp: Vec<(String, u64, Option<Duration>)>,
    last_failure: Option<Failure>,
}

/// One served model.
#[derive(Debug)]
pub struct Entry {
    /// Its name.
    pub name: String,
    source: Mutex<ModelSource>,
    status: Mutex<Status>,
    reload_lock: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Entry {
    /// The version in service.
    pub fn current(&self) -> Option<Arc<Worker>> {
        lock(&self.status).current.clone()
    }

    /// The state and, when nothing serves, why.
    pub fn state(&self) -> (State, Option<Failure>) {
        let s = lock(&self.status);
        (s.state, s.last_failure.clone())
    }

    /// Where it comes from.
    pub fn source(&self) -> ModelSource {
        lock(&self.source).clone()
    }

    /// Replaces the declaration (rmlx.toml changed).
    pub fn set_decl(&self, decl: ModelDecl) {
        lock(&self.source).decl = Some(decl);
    }
}

/// Settings the registry loads models with.
#[derive(Debug, Clone)]
pub struct LoadSettings {
    /// Compute dtype.
    pub policy: DtypePolicy,
    /// Probe before serving.
    pub probe: bool,
    /// Requests that may wait per model.
    pub queue_depth: usize,
    /// Sequences a model generates together (continuous batching).
    pub max_batch: usize,
    /// How special-token strings in messages are encoded.
    pub content_tokens: crate::session::ContentTokens,
    /// `[serve] tool-format`: the tool-call format of models that set none.
    pub tool_format: Option<crate::tools::ToolFormat>,
    /// Byte budget of each loaded version's prompt cache (0: off).
    pub prompt_cache_bytes: usize,
}

/// Why a reload happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Server start.
    Startup,
    /// `POST /v1/models/{name}/reload`.
    Request,
    /// A watched file changed.
    Watch,
}

impl Trigger {
    /// In words.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Startup => "startup",
            Trigger::Request => "request",
            Trigger::Watch => "file change",
        }
    }
}

/// What a reload did.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// A new version serves.
    Swapped {
        /// Its version.
        version: u64,
        /// Its probe verdict.
        verdict: Option<&'static str>,
    },
    /// Nothing changed on disk since the version in service was loaded.
    Unchanged,
    /// The attempt failed; `kept` is the version still serving.
    Failed {
        /// Why.
        failure: Failure,
        /// The version that keeps serving.
        kept: Option<u64>,
    },
}

/// The callback that reports what happens (the CLI prints it).
pub type EventSink = Arc<dyn Fn(ServeEvent<'_>) + Send + Sync>;

/// All served models.
pub struct Registry {
    /// The models, in the order given.
    pub entries: Vec<Arc<Entry>>,
    /// The manifest, when models are declared (replaced when rmlx.toml changes).
    pub manifest: Mutex<Option<Manifest>>,
    settings: LoadSettings,
    metrics: Arc<Metrics>,
    events: EventSink,
    versions: AtomicU64,
    live: LiveThreads,
    closing: AtomicBool,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("entries", &self.entries)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// A registry of `sources`, none loaded yet.
    pub fn new(
        sources: Vec<ModelSource>,
        manifest: Option<Manifest>,
        settings: LoadSettings,
        metrics: Arc<Metrics>,
        events: EventSink,
    ) -> Self {
        let entries = sources
            .into_iter()
            .map(|s| {
                metrics.set_ready(&s.name, false);
                Arc::new(Entry {
                    name: s.name.clone(),
                    source: Mutex::new(s),
                    status: Mutex::new(Status {
                        state: State::Loading,
                        reloading: false,
                        current: None,
                        stamp: Vec::new(),
                        last_failure: None,
                    }),
                    reload_lock: Mutex::new(()),
                })
            })
            .collect();
        Self {
            entries,
            manifest: Mutex::new(manifest),
            settings,
            metrics,
            events,
            versions: AtomicU64::new(0),
            live: LiveThreads::default(),
            closing: AtomicBool::new(false),
        }
    }

    /// The model a request names: by name, or by the directory it was given as; the first
    /// model when the request names none.
    pub fn find(&self, model: Option<&str>) -> Option<&Arc<Entry>> {
        match model {
            None | Some("") => self.entries.first(),
            Some(m) => self.entries.iter().find(|e| e.name == m).or_else(|| {
                self.entries
                    .iter()
                    .find(|e| lock(&e.source).dir.as_os_str() == m)
            }),
        }
    }

    /// The entry named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Entry>> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// Whether any model serves.
    pub fn any_ready(&self) -> bool {
        self.entries.iter().any(|e| e.current().is_some())
    }

    /// Builds (when declared), loads, probes and swaps in a new version of `entry`. Blocks;
    /// reloads of one model run one at a time. Under [`Trigger::Watch`], a model whose files
    /// are unchanged since the version in service is left alone.
    pub fn reload(&self, entry: &Entry, trigger: Trigger) -> Outcome {
        let _one_at_a_time = lock(&entry.reload_lock);
        lock(&entry.status).reloading = true;
        let outcome = self.reload_locked(entry, trigger);
        let mut st = lock(&entry.status);
        st.reloading = false;
        match &outcome {
            Outcome::Failed { failure, .. } => {
                if st.current.is_none() {
                    st.state = State::Failed;
                }
                st.last_failure = Some(failure.clone());
            }
            Outcome::Swapped { .. } => st.last_failure = None,
            Outcome::Unchanged => {}
        }
        outcome
    }

    fn reload_locked(&self, entry: &Entry, trigger: Trigger) -> Outcome {
        let name = entry.name.as_str();
        let source = entry.source();
        let version = self.versions.fetch_add(1, Ordering::Relaxed) + 1;
        let kept = || entry.current().map(|w| w.version);
        let fail = |failure: LoadFailure| {
            self.metrics.reload(name, "failed");
            let failure = Failure {
                diagnostic: failure.diagnostic,
                verdict: failure.verdict,
                probe: failure.probe,
                at: SystemTime::now(),
                version,
            };
            let kept = kept();
            (self.events)(ServeEvent::Failed {
                model: name,
                diagnostic: &failure.diagnostic,
                kept,
            });
            Outcome::Failed { failure, kept }
        };
        if let Some(decl) = &source.decl {
            let manifest = lock(&self.manifest).clone();
            if let Some(manifest) = manifest {
                let opts = BuildOptions {
                    progress: false,
                    ..BuildOptions::default()
                };
                let events = &self.events;
                let mut on = |e: BuildEvent<'_>| match e {
                    BuildEvent::Building { name, what, reason } => (events)(ServeEvent::Building {
                        model: name,
                        what: &what,
                        reason: &reason,
                    }),
                    BuildEvent::Diagnostic(d) => (events)(ServeEvent::Note {
                        model: name,
                        diagnostic: &d,
                    }),
                    _ => {}
                };
                if let Err(d) = build_model(&manifest, decl, &opts, &mut on) {
                    return fail(LoadFailure {
                        diagnostic: d,
                        verdict: None,
                        probe: None,
                    });
                }
            }
        }
        let stamp = dir_stamp(&source.dir);
        if trigger == Trigger::Watch {
            let st = lock(&entry.status);
            if st.current.is_some() && st.stamp == stamp {
                return Outcome::Unchanged;
            }
        }
        (self.events)(ServeEvent::Loading {
            model: name,
            version,
            trigger: trigger.as_str(),
        });
        let cfg = WorkerConfig {
            name: name.to_string(),
            dir: source.dir.clone(),
            version,
            policy: self.settings.policy,
            probe: self.settings.probe.then(|| {
                source
                    .decl
                    .as_ref()
                    .map(|d| d.probe.clone())
                    .unwrap_or_default()
            }),
            queue_depth: self.settings.queue_depth,
            max_batch: self.settings.max_batch,
            content_tokens: self.settings.content_tokens,
            tool_format: source
                .decl
                .as_ref()
                .and_then(|d| d.tool_format)
                .or(self.settings.tool_format),
            prompt_cache_bytes: self.settings.prompt_cache_bytes,
            live: self.live.clone(),
        };
        match Worker::start(cfg, self.metrics.clone()) {
            Ok(worker) => {
                let verdict = worker.verdict;
                let old = {
                    let mut st = lock(&entry.status);
                    if self.closing.load(Ordering::SeqCst) {
                        // Shutting down: this version never enters service; dropping it
                        // closes its queue and its thread frees the model.
                        tracing::debug!("{name} v{version}: loaded during shutdown, not served");
                        return Outcome::Unchanged;
                    }
                    st.state = State::Ready;
                    st.stamp = stamp;
                    st.current.replace(worker)
                };
                // The old version finishes what is queued on it, then its thread exits.
                drop(old);
                self.metrics.reload(name, "ok");
                self.metrics.set_ready(name, true);
                (self.events)(ServeEvent::Ready {
                    model: name,
                    version,
                    verdict,
                });
                Outcome::Swapped { version, verdict }
            }
            Err(f) => fail(f),
        }
    }

    /// Takes every model out of service for good because of `d` (a rank of a distributed
    /// server died): state `failed` with `d` as the last error; queued requests end with the
    /// old version's thread.
    pub fn out_of_service(&self, d: &Diagnostic) {
        for entry in &self.entries {
            let retired = {
                let mut st = lock(&entry.status);
                st.state = State::Failed;
                st.last_failure = Some(Failure {
                    diagnostic: d.clone(),
                    verdict: None,
                    probe: None,
                    at: SystemTime::now(),
                    version: st.current.as_ref().map_or(0, |w| w.version),
                });
                st.current.take()
            };
            drop(retired);
            self.metrics.set_ready(&entry.name, false);
        }
    }

    /// Takes every model out of service and waits, at most `timeout`, until their threads
    /// have finished what was queued and freed the models; whether they all did. Loads still
    /// under way finish without entering service.
    pub fn shutdown(&self, timeout: Duration) -> bool {
        self.closing.store(true, Ordering::SeqCst);
        for entry in &self.entries {
            let retired = lock(&entry.status).current.take();
            drop(retired);
            self.metrics.set_ready(&entry.name, false);
        }
        let idle = self.live.wait_idle(timeout);
        if !idle {
            tracing::warn!(
                "{} model thread(s) still running after {} s",
                self.live.running(),
                timeout.as_secs()
            );
        }
        idle
    }

    /// `/v1/models`' view of one entry: no filesystem paths (the model directory is shown as
    /// the model's name, other absolute paths as their file name).
    pub fn describe(&self, entry: &Entry) -> Value {
        let dir = lock(&entry.source).dir.clone();
        let mut v = self.describe_raw(entry);
        redact_paths(&mut v, &dir.display().to_string(), &entry.name);
        v
    }

    fn describe_raw(&self, entry: &Entry) -> Value {
        let st = lock(&entry.status);
        let src = lock(&entry.source);
        let secs = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        };
        let mut v = json!({
            "id": entry.name,
            "object": "model",
            "created": st.current.as_ref().map_or(0, |w| secs(w.loaded_at)),
            "owned_by": "rmlx",
            "state": st.state.as_str(),
            "reloading": st.reloading,
            "declared": src.decl.is_some(),
        });
        if let Some(w) = &st.current {
            v["version"] = json!(w.version);
            v["max_context"] = json!(w.max_context);
            v["probe"] = json!({"verdict": w.verdict, "report": w.probe});
        }
        if let Some(f) = &st.last_failure {
            v["last_error"] = json!({
                "code": f.diagnostic.code,
                "message": f.diagnostic.message,
                "help": f.diagnostic.help,
                "file": f.diagnostic.file,
                "verdict": f.verdict,
                "probe": f.probe,
                "version": f.version,
                "at": secs(f.at),
            });
        }
        v
    }
}

/// Replaces `dir` by `name` in every string of `v`, then every remaining absolute path by its
/// file name, so that a response never shows where the server's files are.
pub fn redact_paths(v: &mut Value, dir: &str, name: &str) {
    match v {
        Value::String(s) => *s = redact_str(s, dir, name),
        Value::Array(items) => items.iter_mut().for_each(|x| redact_paths(x, dir, name)),
        Value::Object(map) => map.values_mut().for_each(|x| redact_paths(x, dir, name)),
        _ => {}
    }
}

fn redact_str(s: &str, dir: &str, name: &str) -> String {
    let s = if dir.len() > 1 {
        s.replace(dir, name)
    } else {
        s.to_string()
    };
    let mut out = String::with_capacity(s.len());
    let mut word = String::new();
    for c in s.chars().chain(std::iter::once(' ')) {
        if c.is_whitespace() || matches!(c, '`' | '\'' | '"' | '(' | ')' | ',') {
            out.push_str(&redact_word(&word));
            word.clear();
            out.push(c);
        } else {
            word.push(c);
        }
    }
    out.pop();
    out
}

fn redact_word(w: &str) -> String {
    let core = w.trim_end_matches([':', '.', ';']);
    if core.len() > 1 && core.starts_with('/') {
        let file = std::path::Path::new(core)
            .file_name()
            .map_or_else(String::new, |f| f.to_string_lossy().into_owned());
        format!("{file}{}", &w[core.len()..])
    } else {
        w.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_redacted() {
        let mut v = json!({
            "a": "/srv/models/m failed its probe",
            "b": ["cannot read `/srv/other/x.json`: gone", "see /etc/passwd."],
            "c": "ratio 1/2 and a / b",
        });
        redact_paths(&mut v, "/srv/models/m", "m");
        assert_eq!(v["a"], "m failed its probe");
        assert_eq!(v["b"][0], "cannot read `x.json`: gone");
        assert_eq!(v["b"][1], "see passwd.");
        assert_eq!(v["c"], "ratio 1/2 and a / b");
    }
}
