//! The axum application: routes, bearer authentication, the request policy ([`super::guard`]),
//! opt-in CORS, the access log ([`super::access`]), OpenAI-shaped 404/405, the chat and
//! completion handlers (JSON and server-sent events), models, health, metrics and reload.

use crate::diagnostic::code;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::access::{self, AccessNote};
use super::api::{self, ApiCode, ApiError, ChatRequest, CompletionRequest, ErrorType, Prepared};
use super::guard::{self, Guard};
use super::metrics::Metrics;
use super::registry::{Outcome, Registry, State as ModelState, Trigger};
use super::tools::{Delta, ToolCall};
use super::worker::{Event, Finish, Job, JobError, SubmitError, TokenLogprob, Worker};
use crate::session::Prompt;

/// HTTP-level settings.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Bearer token required on `/v1/*`.
    pub api_key: Option<String>,
    /// Per-request time limit (queue wait included).
    pub timeout: Duration,
    /// `max_tokens` when a request sets none.
    pub default_max_tokens: usize,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// How long a client may take to send a request head (also the idle time of a kept-alive
    /// connection) and, separately, its body.
    pub read_timeout: Duration,
    /// Origins allowed by CORS (`*`: any); empty: no CORS headers.
    pub cors: Vec<String>,
}

/// Shared state of the handlers.
pub struct AppState {
    /// The models.
    pub registry: Arc<Registry>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Settings.
    pub cfg: HttpConfig,
    next_id: AtomicU64,
}

impl AppState {
    /// New state.
    pub fn new(registry: Arc<Registry>, metrics: Arc<Metrics>, cfg: HttpConfig) -> Self {
        Self {
            registry,
            metrics,
            cfg,
            next_id: AtomicU64::new(1),
        }
    }

    fn new_id(&self, prefix: &str) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        format!("{prefix}-{t:x}{n:06x}")
    }
}

/// The application; `policy` is the request policy of the bound address.
pub fn router(state: Arc<AppState>, policy: Guard) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/v1/models/{name}", get(model))
        .route("/v1/models/{name}/reload", post(reload))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    let app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .merge(api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.cfg.max_body_bytes))
        .layer(middleware::from_fn_with_state(
            Arc::new(policy),
            guard::check,
        ));
    // CORS outside the guard, so refusals carry its headers and preflights are answered.
    let app = match cors_layer(&state.cfg.cors) {
        Ok(Some(cors)) => app.layer(cors),
        Ok(None) => app,
        Err(e) => {
            tracing::warn!("CORS disabled: {}", e.message);
            app
        }
    };
    app.layer(middleware::from_fn(access::layer))
        .with_state(state)
}

/// The CORS layer for `origins` (`*`: any origin); `None` when the list is empty.
pub fn cors_layer(
    origins: &[String],
) -> crate::diagnostic::Result<Option<tower_http::cors::CorsLayer>> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let mut list = Vec::new();
        for o in origins {
            let valid = o.split_once("://").is_some_and(|(scheme, rest)| {
                !scheme.is_empty() && !rest.is_empty() && !rest.contains('/')
            });
            match HeaderValue::from_str(o) {
                Ok(v) if valid => list.push(v),
                _ => {
                    return Err(crate::diagnostic::Diagnostic::error(
                        code::Serve::CorsOrigin,
                        format!("`{o}` is not an origin"),
                    )
                    .with_help("an origin is `scheme://host[:port]`, e.g. `http://localhost:3000`, or `*` for any"))
                }
            }
        }
        AllowOrigin::list(list)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([axum::http::Method::GET, axum::http::Method::POST])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .expose_headers([
                header::RETRY_AFTER,
                axum::http::HeaderName::from_static("x-rmlx-model-version"),
            ])
            .max_age(Duration::from_secs(600)),
    ))
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &s.cfg.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if !given.is_some_and(|g| ct_eq(g.as_bytes(), key.as_bytes())) {
            let mut e = ApiError::coded(
                ApiCode::InvalidApiKey,
                "missing or wrong API key: send `Authorization: Bearer <key>`",
            )
            .into_response();
            e.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return e;
        }
    }
    next.run(req).await
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorType::NotFound,
        format!("no route for {} {}", req.method(), req.uri().path()),
    )
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::coded(
        ApiCode::MethodNotAllowed,
        format!(
            "method {} is not allowed for {} (see the Allow header)",
            req.method(),
            req.uri().path()
        ),
    )
}

async fn health(State(s): State<Arc<AppState>>) -> Response {
    let models: Vec<Value> = s
        .registry
        .entries
        .iter()
        .map(|e| {
            let (state, failure) = e.state();
            json!({
                "id": e.name,
                "state": match state {
                    ModelState::Loading => "loading",
                    ModelState::Ready => "ready",
                    ModelState::Failed => "failed",
                },
                "version": e.current().map(|w| w.version),
                "error": failure.map(|f| f.diagnostic.message.clone()),
            })
        })
        .collect();
    if s.registry.any_ready() {
        let mut body = json!({"status": "ok", "models": models});
        super::distributed::describe(&mut body); // distributed hook: the ranks' state
        (StatusCode::OK, Json(body)).into_response()
    } else {
        let loading = s
            .registry
            .entries
            .iter()
            .any(|e| e.state().0 == ModelState::Loading);
        let status = if loading { "loading" } else { "unavailable" };
        let mut body = json!({"status": status, "models": models});
        super::distributed::describe(&mut body); // distributed hook: the ranks' state
        let mut r = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        r
    }
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        s.metrics.render(),
    )
        .into_response()
}

async fn models(State(s): State<Arc<AppState>>) -> Json<Value> {
    let data: Vec<Value> = s
        .registry
        .entries
        .iter()
        .map(|e| s.registry.describe(e))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

fn unknown_model(s: &AppState, name: &str) -> ApiError {
    let names: Vec<&str> = s.registry.entries.iter().map(|e| e.name.as_str()).collect();
    let mut e = ApiError::coded(
        ApiCode::ModelNotFound,
        format!(
            "the model `{name}` does not exist (served: {})",
            names.join(", ")
        ),
    );
    e.param = Some("model".into());
    e
}

async fn model(State(s): State<Arc<AppState>>, Path(name): Path<String>) -> Response {
    match s.registry.get(&name) {
        Some(e) => Json(s.registry.describe(e)).into_response(),
        None => unknown_model(&s, &name).into_response(),
    }
}

async fn reload(State(s): State<Arc<AppState>>, Path(name): Path<String>) -> Response {
    let Some(entry) = s.registry.get(&name).cloned() else {
        return unknown_model(&s, &name).into_response();
    };
    let registry = s.registry.clone();
    let outcome =
        tokio::task::spawn_blocking(move || registry.reload(&entry, Trigger::Request)).await;
    match outcome {
        Ok(Outcome::Swapped { version, verdict }) => Json(json!({
            "model": name, "status": "reloaded", "version": version, "verdict": verdict,
        }))
        .into_response(),
        Ok(Outcome::Unchanged) => {
            Json(json!({"model": name, "status": "unchanged"})).into_response()
        }
        Ok(Outcome::Failed { failure, kept }) => {
            let mut e = ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorType::Reload,
                failure.diagnostic.message.clone(),
            )
            .with_code(failure.diagnostic.code);
            e.extra = Some(Box::new(json!({
                "model": name,
                "status": "failed",
                "kept_version": kept,
                "verdict": failure.verdict,
                "help": failure.diagnostic.help,
            })));
            e.into_response()
        }
        Err(e) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorType::Server,
            format!("the reload task failed: {e}"),
        )
        .into_response(),
    }
}

// ----------------------------------------------------------------------------------------
// Generation endpoints

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Completion,
}

impl Kind {
    fn endpoint(self) -> &'static str {
        match self {
            Kind::Chat => "chat.completions",
            Kind::Completion => "completions",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Kind::Chat => "/v1/chat/completions",
            Kind::Completion => "/v1/completions",
        }
    }

    /// The request field that holds the prompt.
    fn prompt_param(self) -> &'static str {
        match self {
            Kind::Chat => "messages",
            Kind::Completion => "prompt",
        }
    }
}

/// Records a request in the metrics when dropped (at the end of a stream, too); a stream's
/// record also writes its access-log line.
struct Record {
    metrics: Arc<Metrics>,
    model: String,
    kind: Kind,
    status: u16,
    started: Instant,
    armed: bool,
    /// (prompt, completion) tokens, once the generation ended.
    tokens: Option<(usize, usize)>,
    /// Write the access-log line on drop (streams).
    log_access: bool,
}

impl Record {
    fn new(metrics: Arc<Metrics>, kind: Kind) -> Self {
        Self {
            metrics,
            model: String::new(),
            kind,
            status: 200,
            started: Instant::now(),
            armed: true,
            tokens: None,
            log_access: false,
        }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let took = self.started.elapsed();
        self.metrics.request(
            &self.model,
            self.kind.endpoint(),
            self.status,
            took.as_secs_f64(),
        );
        if self.log_access {
            access::log(
                "POST",
                self.kind.path(),
                self.status,
                &self.model,
                self.tokens,
                took,
            );
        }
    }
}

/// Sets a request's cancel flag when dropped: the handler future or the response stream is
/// gone (finished, or the client disconnected).
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

async fn chat(State(s): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Response {
    generation(s, Kind::Chat, body).await
}

async fn completions(
    State(s): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    generation(s, Kind::Completion, body).await
}

fn body_error(r: BytesRejection) -> ApiError {
    let status = r.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::coded(
            ApiCode::RequestTooLarge,
            "the request body is larger than the server's limit (--max-body-bytes)",
        )
    } else {
        ApiError::new(status, ErrorType::InvalidRequest, r.body_text())
    }
}

fn parse(kind: Kind, body: &[u8], default_max_tokens: usize) -> Result<Prepared, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))?;
    match kind {
        Kind::Chat => ChatRequest::from_json(&value)?.prepare(default_max_tokens),
        Kind::Completion => CompletionRequest::from_json(&value)?.prepare(default_max_tokens),
    }
}

fn job_error(e: JobError, timeout: Duration, kind: Kind) -> ApiError {
    match e {
        JobError::Invalid(d) if d.code == code::Generate::ContextOverflow => {
            ApiError::param(kind.prompt_param(), d.message.clone())
                .with_code(ApiCode::ContextLengthExceeded)
        }
        JobError::Invalid(d) => ApiError::invalid(d.message.clone()).with_code(d.code),
        JobError::Timeout => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            ErrorType::Timeout,
            format!(
                "the request did not finish within {} s (--timeout)",
                timeout.as_secs()
            ),
        ),
        JobError::Internal(d) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorType::Server,
            d.message.clone(),
        )
        .with_code(d.code),
    }
}

async fn generation(s: Arc<AppState>, kind: Kind, body: Result<Bytes, BytesRejection>) -> Response {
    let mut rec = Record::new(s.metrics.clone(), kind);
    let mut response = match start(&s, kind, body, &mut rec).await {
        Ok(r) => r,
        Err(e) => {
            rec.status = e.status.as_u16();
            e.into_response()
        }
    };
    if response.extensions().get::<AccessNote>().is_none() {
        response.extensions_mut().insert(AccessNote {
            model: rec.model.clone(),
            ..AccessNote::default()
        });
    }
    response
}

async fn start(
    s: &Arc<AppState>,
    kind: Kind,
    body: Result<Bytes, BytesRejection>,
    rec: &mut Record,
) -> Result<Response, ApiError> {
    let body = body.map_err(body_error)?;
    let prepared = parse(kind, &body, s.cfg.default_max_tokens)?;
    let entry = match s.registry.find(prepared.model.as_deref()) {
        Some(e) => e.clone(),
        None => {
            let name = prepared.model.clone().unwrap_or_default();
            return Err(unknown_model(s, &name));
        }
    };
    rec.model = entry.name.clone();
    let Some(worker) = entry.current() else {
        s.metrics.rejected(&entry.name, "not-ready");
        let (state, failure) = entry.state();
        let msg = match (state, failure) {
            (_, Some(f)) => format!(
                "the model `{}` is not serving: {} ({})",
                entry.name, f.diagnostic.message, f.diagnostic.code
            ),
            _ => format!("the model `{}` is still loading", entry.name),
        };
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorType::ModelNotReady,
            msg,
        )
        .retry_after(5));
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let guard = CancelOnDrop(cancel.clone());
    let (tx, mut rx) = unbounded_channel();
    super::distributed::end_on_rank_death(&tx); // distributed hook: a dead rank ends the request
    let now = Instant::now();
    let deadline = now + s.cfg.timeout;
    let job = Job {
        req: prepared.req.clone(),
        cancel,
        deadline,
        arrived: rec.started,
        events: tx,
    };
    match worker.submit(job) {
        Ok(()) => {}
        Err(SubmitError::Full) => {
            s.metrics.rejected(&entry.name, "queue-full");
            return Err(ApiError::coded(
                ApiCode::QueueFull,
                format!(
                    "the queue of `{}` is full; retry later (--queue-depth)",
                    entry.name
                ),
            )
            .retry_after(1));
        }
        Err(SubmitError::Gone) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorType::ModelNotReady,
                format!("the model `{}` stopped; retry", entry.name),
            )
            .retry_after(1));
        }
    }
    let deadline = tokio::time::Instant::from_std(deadline);
    // The first event: the rendered prompt, or why it could not be rendered.
    let prompt = match tokio::time::timeout_at(deadline, rx.recv()).await {
        Ok(Some(Event::Prompt(p))) => p,
        Ok(Some(Event::Error(e))) => {
            let param = prepared.req.constraint.as_ref().map(|c| c.param.as_str());
            return Err(job_error(e, s.cfg.timeout, kind).constraint_param(param));
        }
        Ok(Some(_)) | Ok(None) => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorType::Server,
                "the model thread ended the request without an answer",
            ))
        }
        Err(_) => return Err(job_error(JobError::Timeout, s.cfg.timeout, kind)),
    };
    let ctx = Ctx {
        id: s.new_id(match kind {
            Kind::Chat => "chatcmpl",
            Kind::Completion => "cmpl",
        }),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        model: entry.name.clone(),
        kind,
        logprobs: prepared.req.logprobs.is_some(),
        include_usage: prepared.include_usage,
        prompt: prepared.return_prompt.then_some(prompt),
        timeout: s.cfg.timeout,
    };
    let version = worker.version;
    let mut response = if prepared.stream {
        let mut stream_rec = Record::new(rec.metrics.clone(), kind);
        stream_rec.model = rec.model.clone();
        stream_rec.started = rec.started;
        stream_rec.log_access = true;
        // The stream records (and logs) the request when it ends.
        rec.armed = false;
        let mut r = stream_response(ctx, rx, guard, stream_rec, deadline, worker);
        r.extensions_mut().insert(AccessNote {
            model: entry.name.clone(),
            tokens: None,
            deferred: true,
        });
        r
    } else {
        let r = collect(ctx, &mut rx, deadline).await;
        drop(guard);
        r?
    };
    response
        .headers_mut()
        .insert("x-rmlx-model-version", HeaderValue::from(version));
    Ok(response)
}

/// What every response of one request shares.
struct Ctx {
    id: String,
    created: u64,
    model: String,
    kind: Kind,
    logprobs: bool,
    include_usage: bool,
    prompt: Option<Prompt>,
    timeout: Duration,
}

fn prompt_json(p: &Prompt) -> Value {
    json!({"text": p.text, "ids": p.ids})
}

fn chat_logprob(lp: &TokenLogprob) -> Value {
    let entry = |t: &str, l: f32| json!({"token": t, "logprob": l, "bytes": t.as_bytes()});
    let mut v = entry(&lp.token, lp.logprob);
    v["top_logprobs"] = Value::Array(lp.top.iter().map(|(t, l)| entry(t, *l)).collect());
    v
}

/// Legacy completions logprobs for a run of tokens starting at text offset `offset`.
fn completion_logprobs(lps: &[TokenLogprob], mut offset: usize) -> Value {
    let mut tokens = Vec::new();
    let mut token_logprobs = Vec::new();
    let mut top = Vec::new();
    let mut offsets = Vec::new();
    for lp in lps {
        tokens.push(json!(lp.token));
        token_logprobs.push(json!(lp.logprob));
        let mut m = serde_json::Map::new();
        for (t, l) in &lp.top {
            m.entry(t.clone()).or_insert(json!(l));
        }
        top.push(Value::Object(m));
        offsets.push(json!(offset));
        offset += lp.token.len();
    }
    json!({
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top,
        "text_offset": offsets,
    })
}

async fn collect(
    ctx: Ctx,
    rx: &mut UnboundedReceiver<Event>,
    deadline: tokio::time::Instant,
) -> Result<Response, ApiError> {
    let mut answer = Delta::default();
    let mut logprobs: Vec<TokenLogprob> = Vec::new();
    loop {
        let ev = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(ev)) => ev,
            Ok(None) => {
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorType::Server,
                    "the model thread ended the request without an answer",
                ))
            }
            Err(_) => return Err(job_error(JobError::Timeout, ctx.timeout, ctx.kind)),
        };
        match ev {
            Event::Prompt(_) => {}
            Event::Delta { delta, logprobs: l } => {
                answer.content.push_str(&delta.content);
                answer.reasoning.push_str(&delta.reasoning);
                logprobs.extend(l);
            }
            Event::Error(e) => return Err(job_error(e, ctx.timeout, ctx.kind)),
            Event::Done {
                finish,
                tool_calls,
                prompt_tokens,
                completion_tokens,
                cached_tokens,
            } => {
                let choice = match ctx.kind {
                    Kind::Chat => {
                        let message = chat_message(&answer, &tool_calls, &ctx.id);
                        json!({
                            "index": 0,
                            "message": message,
                            "logprobs": ctx.logprobs.then(|| json!({
                                "content": logprobs.iter().map(chat_logprob).collect::<Vec<_>>()
                            })),
                            "finish_reason": finish.as_str(),
                        })
                    }
                    Kind::Completion => json!({
                        "index": 0,
                        "text": answer.content,
                        "logprobs": ctx.logprobs.then(|| completion_logprobs(&logprobs, 0)),
                        "finish_reason": finish.as_str(),
                    }),
                };
                let mut body = json!({
                    "id": ctx.id,
                    "object": match ctx.kind {
                        Kind::Chat => "chat.completion",
                        Kind::Completion => "text_completion",
                    },
                    "created": ctx.created,
                    "model": ctx.model,
                    "choices": [choice],
                    "usage": api::usage(prompt_tokens, completion_tokens, cached_tokens),
                });
                if let Some(p) = &ctx.prompt {
                    body["prompt"] = prompt_json(p);
                }
                let mut r = Json(body).into_response();
                r.extensions_mut().insert(AccessNote {
                    model: ctx.model.clone(),
                    tokens: Some((prompt_tokens, completion_tokens)),
                    deferred: false,
                });
                return Ok(r);
            }
        }
    }
}

/// The id of a request's call `index` (the same in the stream and the final message).
fn call_id(request: &str, index: usize) -> String {
    format!("call_{request}_{index}")
}

/// A chat completion's `message`: the answer, the reasoning (`reasoning_content`, as vLLM and
/// llama.cpp name it) and the tool calls (the content is `null` beside calls when empty).
fn chat_message(answer: &Delta, tool_calls: &[ToolCall], request: &str) -> Value {
    let mut message = json!({"role": "assistant", "content": answer.content});
    if !answer.reasoning.is_empty() {
        message["reasoning_content"] = json!(answer.reasoning);
    }
    if !tool_calls.is_empty() {
        let content = answer.content.trim();
        message["content"] = if content.is_empty() {
            Value::Null
        } else {
            json!(content)
        };
        message["tool_calls"] = tool_calls
            .iter()
            .enumerate()
            .map(|(i, c)| c.to_json(&call_id(request, i), None))
            .collect();
    }
    message
}

/// A chat chunk's `delta`: only the fields the piece has.
fn chat_delta(delta: &Delta, request: &str) -> Value {
    let mut v = json!({});
    if !delta.content.is_empty() {
        v["content"] = json!(delta.content);
    }
    if !delta.reasoning.is_empty() {
        v["reasoning_content"] = json!(delta.reasoning);
    }
    if !delta.tool_calls.is_empty() {
        let calls: Vec<Value> = delta
            .tool_calls
            .iter()
            .map(|t| match &t.name {
                Some(name) => json!({
                    "index": t.index,
                    "id": call_id(request, t.index),
                    "type": "function",
                    "function": {"name": name, "arguments": t.arguments},
                }),
                None => json!({"index": t.index, "function": {"arguments": t.arguments}}),
            })
            .collect();
        v["tool_calls"] = Value::Array(calls);
    }
    v
}

struct StreamState {
    ctx: Ctx,
    rx: UnboundedReceiver<Event>,
    _guard: CancelOnDrop,
    rec: Record,
    deadline: tokio::time::Instant,
    pending: VecDeque<SseEvent>,
    done: bool,
    offset: usize,
    // The version the request runs on stays alive until the stream ends.
    _worker: Arc<Worker>,
}

impl StreamState {
    fn chunk(&self, choices: Value) -> SseEvent {
        let mut v = json!({
            "id": self.ctx.id,
            "object": match self.ctx.kind {
                Kind::Chat => "chat.completion.chunk",
                Kind::Completion => "text_completion",
            },
            "created": self.ctx.created,
            "model": self.ctx.model,
            "choices": choices,
        });
        if self.ctx.include_usage {
            v["usage"] = Value::Null;
        }
        SseEvent::default().data(v.to_string())
    }

    fn choice(&self, delta: Value, logprobs: Option<Value>, finish: Option<Finish>) -> Value {
        match self.ctx.kind {
            Kind::Chat => json!([{
                "index": 0,
                "delta": delta,
                "logprobs": logprobs,
                "finish_reason": finish.map(Finish::as_str),
            }]),
            Kind::Completion => json!([{
                "index": 0,
                "text": delta,
                "logprobs": logprobs,
                "finish_reason": finish.map(Finish::as_str),
            }]),
        }
    }

    fn error(&mut self, e: ApiError) {
        self.rec.status = e.status.as_u16();
        self.pending
            .push_back(SseEvent::default().data(e.body().to_string()));
        self.done = true;
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Prompt(_) => {}
            Event::Delta { delta, logprobs } => {
                let lp = self.ctx.logprobs.then(|| match self.ctx.kind {
                    Kind::Chat => {
                        json!({"content": logprobs.iter().map(chat_logprob).collect::<Vec<_>>()})
                    }
                    Kind::Completion => completion_logprobs(&logprobs, self.offset),
                });
                self.offset += delta.content.len();
                let delta = match self.ctx.kind {
                    Kind::Chat => chat_delta(&delta, &self.ctx.id),
                    Kind::Completion => json!(delta.content),
                };
                let c = self.choice(delta, lp, None);
                let chunk = self.chunk(c);
                self.pending.push_back(chunk);
            }
            Event::Error(e) => self.error(job_error(e, self.ctx.timeout, self.ctx.kind)),
            Event::Done {
                finish,
                prompt_tokens,
                completion_tokens,
                cached_tokens,
                ..
            } => {
                // The calls went out as they were generated (`tool_calls` deltas).
                self.rec.tokens = Some((prompt_tokens, completion_tokens));
                let empty = match self.ctx.kind {
                    Kind::Chat => json!({}),
                    Kind::Completion => json!(""),
                };
                let c = self.choice(empty, None, Some(finish));
                let chunk = self.chunk(c);
                self.pending.push_back(chunk);
                if self.ctx.include_usage {
                    let mut v = json!({
                        "id": self.ctx.id,
                        "object": match self.ctx.kind {
                            Kind::Chat => "chat.completion.chunk",
                            Kind::Completion => "text_completion",
                        },
                        "created": self.ctx.created,
                        "model": self.ctx.model,
                        "choices": [],
                    });
                    v["usage"] = api::usage(prompt_tokens, completion_tokens, cached_tokens);
                    self.pending
                        .push_back(SseEvent::default().data(v.to_string()));
                }
                self.pending.push_back(SseEvent::default().data("[DONE]"));
                self.done = true;
            }
        }
    }
}

fn stream_response(
    ctx: Ctx,
    rx: UnboundedReceiver<Event>,
    guard: CancelOnDrop,
    rec: Record,
    deadline: tokio::time::Instant,
    worker: Arc<Worker>,
) -> Response {
    let mut st = StreamState {
        ctx,
        rx,
        _guard: guard,
        rec,
        deadline,
        pending: VecDeque::new(),
        done: false,
        offset: 0,
        _worker: worker,
    };
    if st.ctx.kind == Kind::Chat {
        let c = st.choice(json!({"role": "assistant", "content": ""}), None, None);
        let mut first = json!({
            "id": st.ctx.id,
            "object": "chat.completion.chunk",
            "created": st.ctx.created,
            "model": st.ctx.model,
            "choices": c,
        });
        if st.ctx.include_usage {
            first["usage"] = Value::Null;
        }
        if let Some(p) = &st.ctx.prompt {
            first["prompt"] = prompt_json(p);
        }
        st.pending
            .push_back(SseEvent::default().data(first.to_string()));
    } else if let Some(p) = &st.ctx.prompt {
        let c = st.choice(json!(""), None, None);
        let mut first: Value = json!({
            "id": st.ctx.id, "object": "text_completion", "created": st.ctx.created,
            "model": st.ctx.model, "choices": c,
        });
        first["prompt"] = prompt_json(p);
        st.pending
            .push_back(SseEvent::default().data(first.to_string()));
    }
    let stream = futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(ev) = st.pending.pop_front() {
                return Some((Ok::<_, Infallible>(ev), st));
            }
            if st.done {
                return None;
            }
            match tokio::time::timeout_at(st.deadline, st.rx.recv()).await {
                Ok(Some(ev)) => st.on_event(ev),
                Ok(None) => st.error(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorType::Server,
                    "the model thread ended the request without an answer",
                )),
                Err(_) => {
                    let e = job_error(JobError::Timeout, st.ctx.timeout, st.ctx.kind);
                    st.error(e)
                }
            }
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
