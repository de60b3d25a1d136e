//! The language server: open documents, lint on every change (debounced, versioned, stale
//! results discarded), rmlx.toml diagnostics, the probe on save and open (in the background,
//! with `$/progress`), hover, the "Preview render" code lens and command, the quick fix for a
//! duplicated `{{ bos_token }}`, and configuration. Every check is the `rmlx` library's
//! ([`rmlx_check::lint`], [`rmlx_editor`]); this file only moves data between them and the
//! client.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tower_lsp_server::jsonrpc::{Error, Result};
use tower_lsp_server::ls_types;
use tower_lsp_server::ls_types::notification::Progress;
use tower_lsp_server::ls_types::request::WorkDoneProgressCreate;
use tower_lsp_server::ls_types::*;
use tower_lsp_server::{Client, LanguageServer};

use rmlx_check::lint::{self, LintOptions};
use rmlx_editor::preview::{self, HoverInfo, Sample};
use rmlx_editor::project::{self, DocumentKind, ModelLink};
use rmlx_editor::{self as editor, Document, LineIndex};
use rmlx_model::diagnostic::{Diagnostic, Severity};
use rmlx_model::manifest::{self, Manifest};
use rmlx_model::template::{ChatTemplate, TemplateOrigin};
use rmlx_model::tokenize::Tokenizer;

use crate::config::Config;
use crate::probe::{Outcome, ProbeEvent, ProbeHandle, ProbeJob};
use crate::sync::lock;

/// Command: the rendered text of every sample conversation (argument: the document URI).
pub const CMD_PREVIEW: &str = "rmlx.previewRender";
/// Command: probe the template's model now (argument: the document URI).
pub const CMD_PROBE: &str = "rmlx.probe";

/// The tower-lsp-server language service object.
pub struct Backend {
    shared: Arc<Shared>,
}

struct Shared {
    client: Client,
    state: Mutex<State>,
    caches: Mutex<Caches>,
    probe: ProbeHandle,
    shut_down: Arc<AtomicBool>,
}

#[derive(Default)]
struct State {
    docs: HashMap<Uri, Doc>,
    config: Config,
    /// The client accepts `window/workDoneProgress/create`.
    progress: bool,
    /// The client accepts versioned `documentChanges` in workspace edits.
    document_changes: bool,
    /// A settings problem found before the client could be told.
    warning: Option<String>,
}

struct Doc {
    path: Option<PathBuf>,
    version: i32,
    text: Arc<str>,
    lint: Option<Linted>,
    /// The last probe's verdict (or why it could not run), on the first line.
    probe: Option<ls_types::Diagnostic>,
    /// One line about the last probe, for hover and the code lens.
    probe_summary: Option<String>,
    /// Serialises lint runs and publishing for this document.
    lock: Arc<tokio::sync::Mutex<()>>,
}

/// The diagnostics published for one version.
struct Linted {
    version: i32,
    kind: DocumentKind,
    diagnostics: Vec<ls_types::Diagnostic>,
    fixes: Vec<Fix>,
}

struct Fix {
    range: Range,
    title: String,
    new_text: String,
    diagnostic: ls_types::Diagnostic,
}

impl Doc {
    fn all_diagnostics(&self) -> Vec<ls_types::Diagnostic> {
        let mut out: Vec<_> = self
            .lint
            .as_ref()
            .map(|l| l.diagnostics.clone())
            .unwrap_or_default();
        out.extend(self.probe.clone());
        out
    }
}

type TokenizerResult = std::result::Result<Arc<Tokenizer>, Diagnostic>;

/// What the server reads from disk, cached and revalidated by modification time.
#[derive(Default)]
struct Caches {
    manifests: HashMap<PathBuf, (Option<SystemTime>, Option<Arc<Manifest>>)>,
    target_dirs: HashMap<PathBuf, PathBuf>,
    tokenizers: HashMap<PathBuf, (Vec<Option<SystemTime>>, TokenizerResult)>,
    files: HashMap<PathBuf, (Option<SystemTime>, Option<Arc<str>>)>,
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

impl Caches {
    /// The target directory for the manifest at `path`: cargo's (through `cargo metadata`,
    /// as the CLI finds it) when rmlx.toml sits at a cargo workspace root, else `target/`
    /// next to it.
    fn target_dir(&mut self, path: &Path) -> PathBuf {
        if let Some(t) = self.target_dirs.get(path) {
            return t.clone();
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        let cargo = dir.join("Cargo.toml");
        let target = cargo
            .is_file()
            .then(|| manifest::locate(Some(&cargo)).ok().flatten())
            .flatten()
            .filter(|loc| editor::same_path(&loc.manifest, path))
            .map_or_else(|| dir.join("target"), |loc| loc.target_dir);
        self.target_dirs.insert(path.to_path_buf(), target.clone());
        target
    }

    /// The rmlx.toml that governs `doc` (the nearest one above it), as saved on disk.
    fn manifest_for(&mut self, doc: &Path) -> Option<Arc<Manifest>> {
        let path = project::find_manifest(doc.parent()?)?;
        let stamp = mtime(&path);
        if let Some((s, m)) = self.manifests.get(&path) {
            if *s == stamp {
                return m.clone();
            }
        }
        let target = self.target_dir(&path);
        let m = match Manifest::load(&path, target) {
            Ok(m) => Some(Arc::new(m)),
            Err(d) => {
                tracing::debug!("{}: {}", path.display(), d.message);
                None
            }
        };
        self.manifests.insert(path, (stamp, m.clone()));
        m
    }

    fn tokenizer(&mut self, dir: &Path) -> TokenizerResult {
        let stamp = vec![
            mtime(&dir.join("tokenizer.json")),
            mtime(&dir.join("tokenizer_config.json")),
        ];
        if let Some((s, t)) = self.tokenizers.get(dir) {
            if *s == stamp {
                return t.clone();
            }
        }
        let t = Tokenizer::from_dir(dir).map(Arc::new);
        self.tokenizers
            .insert(dir.to_path_buf(), (stamp, t.clone()));
        t
    }

    fn read(&mut self, path: &Path) -> Option<Arc<str>> {
        let stamp = mtime(path);
        if let Some((s, t)) = self.files.get(path) {
            if *s == stamp {
                return t.clone();
            }
        }
        let t = std::fs::read_to_string(path).ok().map(Arc::from);
        self.files.insert(path.to_path_buf(), (stamp, t.clone()));
        t
    }
}

/// A document's kind and model, from the manifest on disk.
fn resolve(
    caches: &Mutex<Caches>,
    uri: &Uri,
    path: Option<&Path>,
    all_jinja: bool,
) -> (DocumentKind, Option<ModelLink>) {
    let Some(path) = path else {
        let name = uri.path().as_str().rsplit('/').next().unwrap_or("");
        return (project::classify(Path::new(name), None, all_jinja), None);
    };
    let manifest = lock(caches).manifest_for(path);
    let kind = project::classify(path, manifest.as_deref(), all_jinja);
    let link = match kind {
        DocumentKind::Template => project::model_for(path, manifest.as_deref()),
        _ => None,
    };
    (kind, link)
}

struct LintOutput {
    kind: DocumentKind,
    diagnostics: Vec<ls_types::Diagnostic>,
    fixes: Vec<Fix>,
}

/// The lint of one document version (runs on a blocking thread).
fn lint_document(
    caches: &Mutex<Caches>,
    uri: &Uri,
    path: Option<&Path>,
    text: &str,
    cfg: &Config,
) -> LintOutput {
    let (kind, link) = resolve(caches, uri, path, cfg.all_jinja);
    let mut diags: Vec<Diagnostic> = Vec::new();
    match kind {
        DocumentKind::Other => {}
        DocumentKind::Manifest => {
            if let Some(p) = path {
                let target = lock(caches).target_dir(p);
                diags = project::manifest_diagnostics(p, text, target).1;
            }
        }
        DocumentKind::Template => {
            let tok = link.as_ref().map(|l| lock(caches).tokenizer(&l.dir));
            let origin = match path {
                Some(p) => TemplateOrigin::File {
                    path: p.to_path_buf(),
                },
                None => TemplateOrigin::Inline {
                    name: uri.to_string(),
                },
            };
            let opts = LintOptions {
                kwargs: cfg.kwargs.clone(),
                ..LintOptions::default()
            };
            let tokenizer = tok.as_ref().and_then(|t| t.as_ref().ok()).cloned();
            let report = lint::lint_source(text, origin, tokenizer.as_deref(), &opts);
            diags = report.diagnostics;
            if let Some(Err(e)) = &tok {
                diags.push(
                    Diagnostic::warning(
                        lint::CODE_TOKENIZER,
                        format!("tokenizer checks skipped: {}", e.message),
                    )
                    .with_help(e.help.clone().unwrap_or_else(|| {
                        "the model directory needs a valid tokenizer.json".into()
                    })),
                );
            }
            // The summaries are hover's (seed token count) and lint's JSON output's.
            diags.retain(|d| d.code != lint::CODE_CAPABILITIES && d.code != lint::CODE_SEED_TOKENS);
        }
    }
    if !cfg.advice {
        diags.retain(|d| d.severity != Severity::Advice);
    }
    let index = LineIndex::new(text);
    let doc = Document {
        uri,
        path,
        text,
        index: &index,
    };
    let mut out = LintOutput {
        kind,
        diagnostics: Vec::with_capacity(diags.len()),
        fixes: Vec::new(),
    };
    for d in &diags {
        let extra = match &link {
            Some(l) => {
                let read = |p: &Path| lock(caches).read(p);
                editor::tokenizer_related(d.code, &l.dir, &read)
            }
            None => Vec::new(),
        };
        let l = editor::to_lsp(d, &doc, extra);
        if let Some(fix) = d
            .span
            .as_ref()
            .filter(|_| d.source.as_deref().is_none_or(|s| s == text))
            .and_then(|s| editor::quick_fix(d.code, text, s))
        {
            out.fixes.push(Fix {
                range: index.range(text, fix.span.clone()),
                title: fix.title,
                new_text: fix.new_text,
                diagnostic: l.clone(),
            });
        }
        out.diagnostics.push(l);
    }
    out
}

impl Backend {
    /// A backend for `client`; `shut_down` is set when the client sends `shutdown`.
    pub fn new(client: Client, shut_down: Arc<AtomicBool>) -> Self {
        let (tx, rx) = unbounded_channel();
        let shared = Arc::new(Shared {
            client,
            state: Mutex::new(State::default()),
            caches: Mutex::new(Caches::default()),
            probe: ProbeHandle::spawn(tx),
            shut_down,
        });
        tokio::spawn(probe_events(shared.clone(), rx));
        Self { shared }
    }

    /// A handle that outlives the service (to stop the probe worker at exit).
    pub fn handle(&self) -> BackendHandle {
        BackendHandle {
            shared: self.shared.clone(),
        }
    }
}

/// See [`Backend::handle`].
pub struct BackendHandle {
    shared: Arc<Shared>,
}

impl BackendHandle {
    /// Stops the probe worker (models are freed on their thread).
    pub fn stop_probe(&self) {
        self.shared.probe.stop(Duration::from_secs(30));
    }
}

impl Shared {
    fn config(&self) -> Config {
        lock(&self.state).config.clone()
    }

    fn version(&self, uri: &Uri) -> Option<i32> {
        lock(&self.state).docs.get(uri).map(|d| d.version)
    }

    /// The per-document lock that serialises its lint and republish passes.
    fn doc_lock(&self, uri: &Uri) -> Option<Arc<tokio::sync::Mutex<()>>> {
        lock(&self.state).docs.get(uri).map(|d| d.lock.clone())
    }

    /// Lints `uri` at `version` after `delay` (unless a newer version arrived meanwhile) and
    /// publishes the result unless the document changed while it ran.
    async fn lint(self: Arc<Self>, uri: Uri, version: i32, delay: Duration) {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
            if self.version(&uri) != Some(version) {
                return;
            }
        }
        let Some(serial) = self.doc_lock(&uri) else {
            return;
        };
        let _serial = serial.lock().await;
        let (path, text, cfg) = {
            let st = lock(&self.state);
            match st.docs.get(&uri) {
                Some(d) if d.version == version => {
                    (d.path.clone(), d.text.clone(), st.config.clone())
                }
                _ => return,
            }
        };
        let me = self.clone();
        let u = uri.clone();
        let out = tokio::task::spawn_blocking(move || {
            lint_document(&me.caches, &u, path.as_deref(), &text, &cfg)
        })
        .await;
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                tracing::error!("lint of {} failed: {e}", uri.as_str());
                return;
            }
        };
        let all = {
            let mut st = lock(&self.state);
            let Some(doc) = st.docs.get_mut(&uri) else {
                return;
            };
            if doc.version != version {
                return;
            }
            doc.lint = Some(Linted {
                version,
                kind: out.kind,
                diagnostics: out.diagnostics,
                fixes: out.fixes,
            });
            doc.all_diagnostics()
        };
        self.client
            .publish_diagnostics(uri, all, Some(version))
            .await;
    }

    /// Re-publishes the current lint results with the current probe diagnostic, when the
    /// lint is up to date (otherwise the pending lint publishes both).
    async fn republish(self: Arc<Self>, uri: Uri) {
        let Some(serial) = self.doc_lock(&uri) else {
            return;
        };
        let _serial = serial.lock().await;
        let msg = {
            let st = lock(&self.state);
            st.docs.get(&uri).and_then(|d| match &d.lint {
                Some(l) if l.version == d.version => Some((d.all_diagnostics(), d.version)),
                _ => None,
            })
        };
        if let Some((all, version)) = msg {
            self.client
                .publish_diagnostics(uri, all, Some(version))
                .await;
        }
    }

    fn relint_all(self: &Arc<Self>) {
        let docs: Vec<(Uri, i32)> = lock(&self.state)
            .docs
            .iter()
            .map(|(u, d)| (u.clone(), d.version))
            .collect();
        for (uri, version) in docs {
            tokio::spawn(self.clone().lint(uri, version, Duration::ZERO));
        }
    }

    /// Queues a probe of the document's current text when it is a template with a model.
    /// `force`: regardless of the `probe` setting (the command).
    async fn probe(self: Arc<Self>, uri: Uri, on_open: bool, force: bool) -> Option<u64> {
        let cfg = self.config();
        if !force && (!cfg.probe || (on_open && !cfg.probe_on_open)) {
            return None;
        }
        let (path, text) = {
            let st = lock(&self.state);
            let d = st.docs.get(&uri)?;
            (d.path.clone()?, d.text.clone())
        };
        let me = self.clone();
        let u = uri.clone();
        let p = path.clone();
        let (kind, link) =
            tokio::task::spawn_blocking(move || resolve(&me.caches, &u, Some(&p), cfg.all_jinja))
                .await
                .ok()?;
        let link = link.filter(|_| kind == DocumentKind::Template)?;
        Some(self.probe.submit(ProbeJob {
            uri,
            path: Some(path),
            text: text.to_string(),
            link,
            generation: 0,
        }))
    }

    async fn progress_begin(&self, token: &NumberOrString, title: &str, message: String) -> bool {
        if !lock(&self.state).progress {
            return false;
        }
        let create =
            self.client
                .send_request::<WorkDoneProgressCreate>(WorkDoneProgressCreateParams {
                    token: token.clone(),
                });
        match tokio::time::timeout(Duration::from_secs(5), create).await {
            Ok(Ok(())) => {}
            _ => return false,
        }
        self.client
            .send_notification::<Progress>(ProgressParams {
                token: token.clone(),
                value: ProgressParamsValue::WorkDone(WorkDoneProgress::Begin(
                    WorkDoneProgressBegin {
                        title: title.to_string(),
                        cancellable: Some(false),
                        message: Some(message),
                        percentage: None,
                    },
                )),
            })
            .await;
        true
    }

    async fn progress(&self, token: &NumberOrString, value: WorkDoneProgress) {
        self.client
            .send_notification::<Progress>(ProgressParams {
                token: token.clone(),
                value: ProgressParamsValue::WorkDone(value),
            })
            .await;
    }
}

/// Turns the probe worker's events into `$/progress` and the verdict diagnostic.
async fn probe_events(shared: Arc<Shared>, mut rx: UnboundedReceiver<ProbeEvent>) {
    let mut tokens: HashMap<u64, NumberOrString> = HashMap::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            ProbeEvent::Loading { generation, model } => {
                let token = NumberOrString::String(format!("rmlx/probe/{generation}"));
                if shared
                    .progress_begin(&token, "rmlx probe", format!("loading {model}"))
                    .await
                {
                    tokens.insert(generation, token);
                }
            }
            ProbeEvent::Running { generation, model } => {
                let message = format!("probing {model}");
                match tokens.get(&generation) {
                    Some(token) => {
                        shared
                            .progress(
                                token,
                                WorkDoneProgress::Report(WorkDoneProgressReport {
                                    cancellable: Some(false),
                                    message: Some(message),
                                    percentage: None,
                                }),
                            )
                            .await
                    }
                    None => {
                        let token = NumberOrString::String(format!("rmlx/probe/{generation}"));
                        if shared.progress_begin(&token, "rmlx probe", message).await {
                            tokens.insert(generation, token);
                        }
                    }
                }
            }
            ProbeEvent::Done {
                uri,
                generation,
                model,
                outcome,
                elapsed,
            } => {
                let summary = match &outcome {
                    Outcome::Report(r) => format!(
                        "{} — {:?} ({:.2} s)",
                        r.verdict.name(),
                        r.answer.trim(),
                        elapsed.as_secs_f64()
                    ),
                    Outcome::Failed(d) => format!("could not run: {}", d.message),
                    Outcome::TemplateError => "not run: the template does not compile".into(),
                    Outcome::Superseded => "superseded by a newer save".into(),
                };
                if let Some(token) = tokens.remove(&generation) {
                    shared
                        .progress(
                            &token,
                            WorkDoneProgress::End(WorkDoneProgressEnd {
                                message: Some(summary.clone()),
                            }),
                        )
                        .await;
                }
                if matches!(outcome, Outcome::Superseded)
                    || !shared.probe.is_latest(&uri, generation)
                {
                    continue;
                }
                let d = match &outcome {
                    Outcome::Report(r) => Some(editor::probe_diagnostic(r, &model)),
                    Outcome::Failed(d) => Some(editor::probe_failure(d, &model)),
                    _ => None,
                };
                let open = 'store: {
                    let mut st = lock(&shared.state);
                    let Some(doc) = st.docs.get_mut(&uri) else {
                        break 'store false;
                    };
                    let index = LineIndex::new(&doc.text);
                    let text = doc.text.clone();
                    doc.probe = d.map(|d| {
                        // The verdict sits on the first line whatever spans the diagnostic has.
                        let mut d = d;
                        d.span = None;
                        d.labels.clear();
                        let view = Document {
                            uri: &uri,
                            path: doc.path.as_deref(),
                            text: &text,
                            index: &index,
                        };
                        editor::to_lsp(&d, &view, Vec::new())
                    });
                    doc.probe_summary = Some(format!("{model}: {summary}"));
                    true
                };
                // Logged once the document holds the result, so a client acting on the log
                // (asking for the code lenses, say) sees it.
                shared
                    .client
                    .log_message(
                        MessageType::INFO,
                        format!("rmlx probe of {model} ({}): {summary}", uri.as_str()),
                    )
                    .await;
                if open {
                    tokio::spawn(shared.clone().republish(uri));
                }
            }
        }
    }
}

fn file_path(uri: &Uri) -> Option<PathBuf> {
    uri.scheme()
        .as_str()
        .eq_ignore_ascii_case("file")
        .then(|| uri.to_file_path().map(|p| p.into_owned()))
        .flatten()
}

fn ranges_overlap(a: &Range, b: &Range) -> bool {
    let le = |x: &Position, y: &Position| (x.line, x.character) <= (y.line, y.character);
    le(&a.start, &b.end) && le(&b.start, &a.end)
}

fn uri_argument(args: &[Value]) -> Result<Uri> {
    args.first()
        .and_then(|v| {
            v.as_str()
                .or_else(|| v.get("uri").and_then(Value::as_str))
                .map(str::to_string)
        })
        .and_then(|s| s.parse::<Uri>().ok())
        .ok_or_else(|| Error::invalid_params("expected the document URI as the first argument"))
}

impl LanguageServer for Backend {
    async fn initialize(&self, params: InitializeParams) -> Result<InitializeResult> {
        // Bad settings must not keep the server from starting: defaults, and a warning once
        // the client is ready for messages.
        let (config, warning) = match params.initialization_options.as_ref() {
            Some(v) => match Config::from_value(v) {
                Ok(c) => (c, None),
                Err(e) => (Config::default(), Some(format!("{e}; using the defaults"))),
            },
            None => (Config::default(), None),
        };
        {
            let mut st = lock(&self.shared.state);
            st.config = config;
            st.warning = warning;
            st.progress = params
                .capabilities
                .window
                .as_ref()
                .and_then(|w| w.work_done_progress)
                .unwrap_or(false);
            st.document_changes = params
                .capabilities
                .workspace
                .as_ref()
                .and_then(|w| w.workspace_edit.as_ref())
                .and_then(|e| e.document_changes)
                .unwrap_or(false);
        }
        Ok(InitializeResult {
            offset_encoding: None,
            server_info: Some(ServerInfo {
                name: "rmlx-lsp".into(),
                version: Some(env!("CARGO_PKG_VERSION").into()),
            }),
            capabilities: ServerCapabilities {
                position_encoding: Some(PositionEncodingKind::UTF16),
                text_document_sync: Some(TextDocumentSyncCapability::Options(
                    TextDocumentSyncOptions {
                        open_close: Some(true),
                        change: Some(TextDocumentSyncKind::FULL),
                        will_save: None,
                        will_save_wait_until: None,
                        save: Some(TextDocumentSyncSaveOptions::SaveOptions(SaveOptions {
                            include_text: Some(false),
                        })),
                    },
                )),
                hover_provider: Some(HoverProviderCapability::Simple(true)),
                code_action_provider: Some(CodeActionProviderCapability::Options(
                    CodeActionOptions {
                        code_action_kinds: Some(vec![CodeActionKind::QUICKFIX]),
                        work_done_progress_options: Default::default(),
                        resolve_provider: None,
                    },
                )),
                code_lens_provider: Some(CodeLensOptions {
                    resolve_provider: Some(false),
                }),
                execute_command_provider: Some(ExecuteCommandOptions {
                    commands: vec![CMD_PREVIEW.into(), CMD_PROBE.into()],
                    work_done_progress_options: Default::default(),
                }),
                ..ServerCapabilities::default()
            },
        })
    }

    async fn initialized(&self, _: InitializedParams) {
        let warning = lock(&self.shared.state).warning.take();
        if let Some(w) = warning {
            self.shared
                .client
                .show_message(MessageType::WARNING, w)
                .await;
        }
        self.shared
            .client
            .log_message(
                MessageType::INFO,
                format!("rmlx-lsp {} ready", env!("CARGO_PKG_VERSION")),
            )
            .await;
    }

    async fn shutdown(&self) -> Result<()> {
        self.shared.shut_down.store(true, Ordering::SeqCst);
        let shared = self.shared.clone();
        let _ =
            tokio::task::spawn_blocking(move || shared.probe.stop(Duration::from_secs(30))).await;
        Ok(())
    }

    async fn did_open(&self, params: DidOpenTextDocumentParams) {
        let doc = params.text_document;
        let uri = doc.uri.clone();
        {
            let mut st = lock(&self.shared.state);
            if st.docs.get(&uri).is_some_and(|d| d.version > doc.version) {
                return;
            }
            let lock = st
                .docs
                .get(&uri)
                .map(|d| d.lock.clone())
                .unwrap_or_default();
            st.docs.insert(
                uri.clone(),
                Doc {
                    path: file_path(&uri),
                    version: doc.version,
                    text: Arc::from(doc.text),
                    lint: None,
                    probe: None,
                    probe_summary: None,
                    lock,
                },
            );
        }
        let shared = self.shared.clone();
        tokio::spawn(
            shared
                .clone()
                .lint(uri.clone(), doc.version, Duration::ZERO),
        );
        tokio::spawn(async move {
            shared.probe(uri, true, false).await;
        });
    }

    async fn did_change(&self, params: DidChangeTextDocumentParams) {
        let uri = params.text_document.uri;
        let version = params.text_document.version;
        let delay = {
            let mut st = lock(&self.shared.state);
            let delay = Duration::from_millis(st.config.debounce_ms);
            let doc = match st.docs.get_mut(&uri) {
                Some(d) => d,
                None => return,
            };
            // Out-of-order or repeated notifications never roll the text back.
            if version <= doc.version {
                return;
            }
            let mut text = doc.text.to_string();
            for change in params.content_changes {
                match change.range {
                    None => text = change.text,
                    Some(range) => {
                        let index = LineIndex::new(&text);
                        let start = index.offset(&text, range.start);
                        let end = index.offset(&text, range.end).max(start);
                        text.replace_range(start..end, &change.text);
                    }
                }
            }
            doc.text = Arc::from(text);
            doc.version = version;
            delay
        };
        tokio::spawn(self.shared.clone().lint(uri, version, delay));
    }

    async fn did_save(&self, params: DidSaveTextDocumentParams) {
        let uri = params.text_document.uri;
        let is_manifest = file_path(&uri)
            .is_some_and(|p| p.file_name().is_some_and(|n| n == manifest::FILE_NAME));
        if is_manifest {
            // Templates' models may have changed: re-resolve every open document.
            self.shared.relint_all();
            return;
        }
        let shared = self.shared.clone();
        tokio::spawn(async move {
            shared.probe(uri, false, false).await;
        });
    }

    async fn did_close(&self, params: DidCloseTextDocumentParams) {
        let uri = params.text_document.uri;
        lock(&self.shared.state).docs.remove(&uri);
        self.shared.probe.forget(&uri);
        self.shared
            .client
            .publish_diagnostics(uri, Vec::new(), None)
            .await;
    }

    async fn did_change_configuration(&self, params: DidChangeConfigurationParams) {
        match Config::from_value(&params.settings) {
            Ok(c) => {
                lock(&self.shared.state).config = c;
                self.shared.relint_all();
            }
            Err(e) => {
                self.shared
                    .client
                    .show_message(MessageType::WARNING, format!("{e}; settings unchanged"))
                    .await;
            }
        }
    }

    async fn hover(&self, params: HoverParams) -> Result<Option<Hover>> {
        let uri = params.text_document_position_params.text_document.uri;
        let (path, text, cfg, summary) = {
            let st = lock(&self.shared.state);
            let Some(d) = st.docs.get(&uri) else {
                return Ok(None);
            };
            (
                d.path.clone(),
                d.text.clone(),
                st.config.clone(),
                d.probe_summary.clone(),
            )
        };
        let shared = self.shared.clone();
        let markdown = tokio::task::spawn_blocking(move || {
            let (kind, link) = resolve(&shared.caches, &uri, path.as_deref(), cfg.all_jinja);
            if kind != DocumentKind::Template {
                return None;
            }
            let tok = link
                .as_ref()
                .and_then(|l| lock(&shared.caches).tokenizer(&l.dir).ok());
            let origin = match &path {
                Some(p) => TemplateOrigin::File { path: p.clone() },
                None => TemplateOrigin::Inline {
                    name: uri.to_string(),
                },
            };
            let t = match ChatTemplate::new(text.to_string(), origin) {
                Ok(t) => t,
                Err(d) => {
                    return Some(format!(
                        "**rmlx** · the template does not compile: {}",
                        d.message
                    ))
                }
            };
            let sample = Sample::standard_all()
                .into_iter()
                .chain(cfg.samples.iter().cloned())
                .find(|s| s.name == cfg.hover_sample)
                .unwrap_or_else(|| Sample::standard(lint::samples::SampleKind::SingleTurn));
            let p = preview::render_samples(&t, tok.as_deref(), &[sample], &cfg.kwargs).pop()?;
            let bos = tok.as_ref().map(|t| match t.resolve_bos() {
                Some(b) => format!("`{}` (id {}, chosen by: {})", b.token, b.id, b.rule),
                None => "none in the vocabulary".into(),
            });
            Some(preview::hover_markdown(
                &p,
                &HoverInfo {
                    model: link.as_ref().map(|l| l.name.as_str()),
                    bos,
                    probe: summary,
                },
            ))
        })
        .await
        .ok()
        .flatten();
        Ok(markdown.map(|value| Hover {
            contents: HoverContents::Markup(MarkupContent {
                kind: MarkupKind::Markdown,
                value,
            }),
            range: None,
        }))
    }

    async fn code_lens(&self, params: CodeLensParams) -> Result<Option<Vec<CodeLens>>> {
        let uri = params.text_document.uri;
        let (kind, summary) = {
            let st = lock(&self.shared.state);
            let Some(d) = st.docs.get(&uri) else {
                return Ok(None);
            };
            (
                d.lint.as_ref().map(|l| l.kind.clone()),
                d.probe_summary.clone(),
            )
        };
        if kind != Some(DocumentKind::Template) {
            return Ok(None);
        }
        let range = Range::new(Position::new(0, 0), Position::new(0, 0));
        let arg = vec![json!(uri.as_str())];
        let mut lenses = vec![CodeLens {
            range,
            command: Some(Command {
                title: "Preview render".into(),
                command: CMD_PREVIEW.into(),
                arguments: Some(arg.clone()),
            }),
            data: None,
        }];
        if let Some(s) = summary {
            lenses.push(CodeLens {
                range,
                command: Some(Command {
                    title: format!("Probe again (last: {s})"),
                    command: CMD_PROBE.into(),
                    arguments: Some(arg),
                }),
                data: None,
            });
        }
        Ok(Some(lenses))
    }

    async fn execute_command(&self, params: ExecuteCommandParams) -> Result<Option<Value>> {
        let uri = uri_argument(&params.arguments)?;
        match params.command.as_str() {
            CMD_PREVIEW => {
                let (path, text, version, cfg) = {
                    let st = lock(&self.shared.state);
                    let d = st
                        .docs
                        .get(&uri)
                        .ok_or_else(|| Error::invalid_params("the document is not open"))?;
                    (d.path.clone(), d.text.clone(), d.version, st.config.clone())
                };
                let shared = self.shared.clone();
                let u = uri.clone();
                let value = tokio::task::spawn_blocking(move || {
                    let (_, link) = resolve(&shared.caches, &u, path.as_deref(), cfg.all_jinja);
                    let tok = link
                        .as_ref()
                        .and_then(|l| lock(&shared.caches).tokenizer(&l.dir).ok());
                    let origin = match &path {
                        Some(p) => TemplateOrigin::File { path: p.clone() },
                        None => TemplateOrigin::Inline {
                            name: u.to_string(),
                        },
                    };
                    let mut samples = Sample::standard_all();
                    samples.extend(cfg.samples.iter().cloned());
                    match ChatTemplate::new(text.to_string(), origin) {
                        Ok(t) => json!({
                            "uri": u.as_str(),
                            "version": version,
                            "model": link.as_ref().map(|l| l.name.clone()),
                            "samples": preview::render_samples(&t, tok.as_deref(), &samples, &cfg.kwargs),
                        }),
                        Err(d) => json!({
                            "uri": u.as_str(),
                            "version": version,
                            "error": d.message.clone(),
                        }),
                    }
                })
                .await
                .map_err(|_| Error::internal_error())?;
                Ok(Some(value))
            }
            CMD_PROBE => {
                let generation = self.shared.clone().probe(uri, false, true).await;
                Ok(Some(json!({ "queued": generation.is_some() })))
            }
            other => Err(Error::invalid_params(format!("unknown command {other}"))),
        }
    }

    async fn code_action(&self, params: CodeActionParams) -> Result<Option<CodeActionResponse>> {
        let uri = params.text_document.uri;
        let st = lock(&self.shared.state);
        let Some(doc) = st.docs.get(&uri) else {
            return Ok(None);
        };
        let Some(lint) = doc.lint.as_ref().filter(|l| l.version == doc.version) else {
            return Ok(None);
        };
        let mut actions = Vec::new();
        for fix in &lint.fixes {
            if !ranges_overlap(&fix.range, &params.range)
                && !params
                    .context
                    .diagnostics
                    .iter()
                    .any(|d| d.range == fix.diagnostic.range && d.code == fix.diagnostic.code)
            {
                continue;
            }
            let edit = TextEdit::new(fix.range, fix.new_text.clone());
            let workspace_edit = if st.document_changes {
                WorkspaceEdit {
                    document_changes: Some(DocumentChanges::Edits(vec![TextDocumentEdit {
                        text_document: OptionalVersionedTextDocumentIdentifier {
                            uri: uri.clone(),
                            version: Some(doc.version),
                        },
                        edits: vec![OneOf::Left(edit)],
                    }])),
                    ..WorkspaceEdit::default()
                }
            } else {
                WorkspaceEdit {
                    changes: Some(HashMap::from([(uri.clone(), vec![edit])])),
                    ..WorkspaceEdit::default()
                }
            };
            actions.push(CodeActionOrCommand::CodeAction(CodeAction {
                title: fix.title.clone(),
                kind: Some(CodeActionKind::QUICKFIX),
                diagnostics: Some(vec![fix.diagnostic.clone()]),
                edit: Some(workspace_edit),
                is_preferred: Some(true),
                ..CodeAction::default()
            }));
        }
        Ok(Some(actions))
    }
}
