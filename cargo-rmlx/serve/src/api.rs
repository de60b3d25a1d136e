//! The OpenAI-compatible request bodies, their validation into a [`GenRequest`], and
//! OpenAI-style errors.
//!
//! Unknown fields are ignored (clients send many); fields we cannot honour with a non-neutral
//! value (`n > 1`, `echo`) are refused with a 400 naming the parameter rather than silently
//! ignored. Structured output (`response_format` and the `guided_*` / `json_schema`
//! extensions) becomes a [`ConstraintRequest`]; it is compiled on the model's thread.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::tools::{self, choice::ToolChoice};
use super::worker::{GenRequest, PromptInput};
use crate::constrain::ConstraintSpec;
use crate::diagnostic::Code;
use crate::engine::{Penalties, SamplerConfig};

/// Most stop strings per request.
pub const MAX_STOP: usize = 16;
/// Most `top_logprobs` (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// A response's `usage`: token counts, with the prompt tokens taken from the prompt cache in
/// `prompt_tokens_details.cached_tokens` (OpenAI's field).
pub fn usage(prompt: usize, completion: usize, cached: usize) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

/// `error.type` of a response: OpenAI's types, and this server's for reloads and stopped
/// models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    /// `invalid_request_error`.
    InvalidRequest,
    /// `not_found_error`: no route.
    NotFound,
    /// `rate_limit_error`: the model's queue is full.
    RateLimit,
    /// `server_error`.
    Server,
    /// `timeout_error`: generation ran past `--timeout`.
    Timeout,
    /// `reload_error`: `POST /v1/models/{name}/reload` failed.
    Reload,
    /// `model_not_ready`: no version of the model is loaded.
    ModelNotReady,
}

impl ErrorType {
    /// The string on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::InvalidRequest => "invalid_request_error",
            ErrorType::NotFound => "not_found_error",
            ErrorType::RateLimit => "rate_limit_error",
            ErrorType::Server => "server_error",
            ErrorType::Timeout => "timeout_error",
            ErrorType::Reload => "reload_error",
            ErrorType::ModelNotReady => "model_not_ready",
        }
    }
}

/// The OpenAI-style `error.code`s this server answers with, each with its HTTP status and
/// `error.type` (one exhaustive table: [`ApiCode::wire`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiCode {
    /// Missing or wrong `Authorization` (`--api-key`).
    InvalidApiKey,
    /// A route without this method.
    MethodNotAllowed,
    /// `model` names no served model.
    ModelNotFound,
    /// The body exceeds `--max-body-bytes`.
    RequestTooLarge,
    /// The prompt does not fit the context.
    ContextLengthExceeded,
    /// The model's queue is full (`--queue-depth`).
    QueueFull,
    /// A `Host` other than loopback on a loopback server.
    HostNotAllowed,
    /// A POST without `Content-Type: application/json`.
    UnsupportedMediaType,
    /// The body did not arrive within `--read-timeout`.
    RequestTimeout,
    /// A parameter whose value this server cannot honour.
    UnsupportedParameter,
}

impl ApiCode {
    /// The code's string, HTTP status and `error.type`.
    pub fn wire(self) -> (&'static str, StatusCode, ErrorType) {
        use ErrorType::{InvalidRequest, RateLimit};
        match self {
            ApiCode::InvalidApiKey => ("invalid_api_key", StatusCode::UNAUTHORIZED, InvalidRequest),
            ApiCode::MethodNotAllowed => (
                "method_not_allowed",
                StatusCode::METHOD_NOT_ALLOWED,
                InvalidRequest,
            ),
            ApiCode::ModelNotFound => ("model_not_found", StatusCode::NOT_FOUND, InvalidRequest),
            ApiCode::RequestTooLarge => (
                "request_too_large",
                StatusCode::PAYLOAD_TOO_LARGE,
                InvalidRequest,
            ),
            ApiCode::ContextLengthExceeded => (
                "context_length_exceeded",
                StatusCode::BAD_REQUEST,
                InvalidRequest,
            ),
            ApiCode::QueueFull => ("queue_full", StatusCode::TOO_MANY_REQUESTS, RateLimit),
            ApiCode::HostNotAllowed => ("host_not_allowed", StatusCode::FORBIDDEN, InvalidRequest),
            ApiCode::UnsupportedMediaType => (
                "unsupported_media_type",
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                InvalidRequest,
            ),
            ApiCode::RequestTimeout => (
                "request_timeout",
                StatusCode::REQUEST_TIMEOUT,
                InvalidRequest,
            ),
            ApiCode::UnsupportedParameter => (
                "unsupported_parameter",
                StatusCode::BAD_REQUEST,
                InvalidRequest,
            ),
        }
    }
}

/// `error.code` of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// An OpenAI-style code.
    Api(ApiCode),
    /// The stable code of the library diagnostic the error reports (`rmlx::<area>::<what>`).
    Diagnostic(Code),
}

impl ErrorCode {
    /// The string on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Api(c) => c.wire().0,
            ErrorCode::Diagnostic(c) => c.as_str(),
        }
    }
}

impl From<ApiCode> for ErrorCode {
    fn from(c: ApiCode) -> Self {
        ErrorCode::Api(c)
    }
}

impl From<Code> for ErrorCode {
    fn from(c: Code) -> Self {
        ErrorCode::Diagnostic(c)
    }
}

/// An OpenAI-style error response: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// `error.type`.
    pub kind: ErrorType,
    /// `error.message`.
    pub message: String,
    /// `error.param`.
    pub param: Option<String>,
    /// `error.code`.
    pub code: Option<ErrorCode>,
    /// `Retry-After` seconds.
    pub retry_after: Option<u32>,
    /// Extra top-level fields.
    pub extra: Option<Box<Value>>,
}

impl ApiError {
    /// A new error.
    pub fn new(status: StatusCode, kind: ErrorType, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            param: None,
            code: None,
            retry_after: None,
            extra: None,
        }
    }

    /// 400 `invalid_request_error`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorType::InvalidRequest, message)
    }

    /// 400 for one parameter.
    pub fn param(param: &str, message: impl Into<String>) -> Self {
        let mut e = Self::invalid(message);
        e.param = Some(param.to_string());
        e
    }

    /// An error with an OpenAI-style code, its status and `error.type` the code's.
    pub fn coded(code: ApiCode, message: impl Into<String>) -> Self {
        let (_, status, kind) = code.wire();
        Self::new(status, kind, message).with_code(code)
    }

    /// Sets `error.code` (an [`ApiCode`] brings its status and `error.type` along).
    pub fn with_code(mut self, code: impl Into<ErrorCode>) -> Self {
        let code = code.into();
        if let ErrorCode::Api(c) = code {
            (_, self.status, self.kind) = c.wire();
        }
        self.code = Some(code);
        self
    }

    /// Names `param` (the request field of the output constraint) on a constraint that did
    /// not compile.
    pub fn constraint_param(mut self, param: Option<&str>) -> Self {
        let failed = matches!(self.code, Some(ErrorCode::Diagnostic(Code::Constrain(_))));
        if failed && self.param.is_none() {
            self.param = param.map(str::to_string);
        }
        self
    }

    /// Sets `Retry-After`.
    pub fn retry_after(mut self, secs: u32) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        let mut v = json!({
            "error": {
                "message": self.message,
                "type": self.kind.as_str(),
                "param": self.param,
                "code": self.code.map(ErrorCode::as_str),
            }
        });
        if let Some(Value::Object(extra)) = self.extra.as_deref() {
            for (k, x) in extra {
                v[k] = x.clone();
            }
        }
        v
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut().insert("retry-after", HeaderValue::from(s));
        }
        r
    }
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with `usage`.
    #[serde(default)]
    pub include_usage: bool,
}

/// The sampling and limit fields both endpoints share.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Common {
    /// The model name.
    pub model: Option<String>,
    /// Stream server-sent events.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// Token budget.
    pub max_tokens: Option<i64>,
    /// Token budget (newer name, chat).
    pub max_completion_tokens: Option<i64>,
    /// Temperature (0 = greedy, the default).
    pub temperature: Option<f64>,
    /// Nucleus mass.
    pub top_p: Option<f64>,
    /// Top-k (0 or -1 = off).
    pub top_k: Option<i64>,
    /// Min-p.
    pub min_p: Option<f64>,
    /// Seed.
    pub seed: Option<i64>,
    /// Stop strings.
    pub stop: Option<Value>,
    /// OpenAI presence penalty in [-2, 2] over the generated tokens.
    pub presence_penalty: Option<f64>,
    /// OpenAI frequency penalty in [-2, 2] over the generated tokens.
    pub frequency_penalty: Option<f64>,
    /// Extension (mlx-lm, vLLM): repetition penalty > 0 over the latest tokens; 1 = off.
    pub repetition_penalty: Option<f64>,
    /// Extension (mlx-lm): how many of the latest tokens the repetition penalty sees.
    pub repetition_context_size: Option<i64>,
    /// Token id (as a string) → bias in [-100, 100] added to its logit.
    pub logit_bias: Option<Map<String, Value>>,
    /// Only 1.
    pub n: Option<i64>,
    /// Extension: keep generating past EOS.
    pub ignore_eos: Option<bool>,
    /// Extension: return the prompt text and token ids as the model saw them.
    pub return_prompt: Option<bool>,
    /// OpenAI structured output: `text`, `json_object` or `json_schema`.
    pub response_format: Option<Value>,
    /// Extension (vLLM): a JSON schema (object or JSON text) the output must match.
    pub guided_json: Option<Value>,
    /// Extension (llama.cpp): a JSON schema object the output must match.
    pub json_schema: Option<Value>,
    /// Extension (vLLM): a regular expression the whole output must match.
    pub guided_regex: Option<String>,
    /// Extension (vLLM): a grammar in llguidance's Lark syntax the output must match.
    pub guided_grammar: Option<String>,
}

/// A structured-output constraint as requested: what, and which request field said so
/// (the `param` of a 400 when it does not compile).
#[derive(Debug, Clone, PartialEq)]
pub struct ConstraintRequest {
    /// The constraint.
    pub spec: ConstraintSpec,
    /// The request field it came from.
    pub param: String,
}

impl ConstraintRequest {
    fn new(spec: ConstraintSpec, param: &str) -> Option<Self> {
        Some(Self {
            spec,
            param: param.to_string(),
        })
    }
}

/// A JSON schema given as an object (or `true`), or as JSON text (vLLM accepts both).
fn schema_value(param: &str, v: &Value) -> Result<Value, ApiError> {
    let v = match v {
        Value::String(text) => serde_json::from_str(text)
            .map_err(|e| ApiError::param(param, format!("`{param}` is not valid JSON: {e}")))?,
        other => other.clone(),
    };
    if v.is_object() || v == Value::Bool(true) {
        Ok(v)
    } else {
        Err(ApiError::param(
            param,
            format!("`{param}` must be a JSON schema object"),
        ))
    }
}

/// `response_format` as a constraint (`None` for `text`).
fn response_format(rf: &Value) -> Result<Option<ConstraintRequest>, ApiError> {
    let kind = rf.get("type").and_then(Value::as_str);
    match kind {
        Some("text") => Ok(None),
        Some("json_object") => Ok(ConstraintRequest::new(
            ConstraintSpec::JsonObject,
            "response_format",
        )),
        Some("json_schema") => {
            let param = "response_format.json_schema.schema";
            let schema = rf
                .get("json_schema")
                .and_then(|j| j.get("schema"))
                .ok_or_else(|| {
                    ApiError::param(
                        param,
                        "`response_format.json_schema.schema` is required for `json_schema`",
                    )
                })?;
            let schema = schema_value(param, schema)?;
            Ok(ConstraintRequest::new(
                ConstraintSpec::JsonSchema(schema),
                param,
            ))
        }
        _ => Err(ApiError::param(
            "response_format.type",
            "`response_format.type` must be `text`, `json_object` or `json_schema`",
        )),
    }
}

impl Common {
    /// The structured-output constraint, if the request asks for one (at most one field).
    fn constraint(&self) -> Result<Option<ConstraintRequest>, ApiError> {
        let mut found = Vec::new();
        if let Some(rf) = self.response_format.as_ref().filter(|v| !v.is_null()) {
            found.extend(response_format(rf)?);
        }
        for (param, v) in [
            ("guided_json", &self.guided_json),
            ("json_schema", &self.json_schema),
        ] {
            if let Some(v) = v.as_ref().filter(|v| !v.is_null()) {
                let schema = schema_value(param, v)?;
                found.extend(ConstraintRequest::new(
                    ConstraintSpec::JsonSchema(schema),
                    param,
                ));
            }
        }
        if let Some(rx) = &self.guided_regex {
            found.extend(ConstraintRequest::new(
                ConstraintSpec::Regex(rx.clone()),
                "guided_regex",
            ));
        }
        if let Some(g) = &self.guided_grammar {
            found.extend(ConstraintRequest::new(
                ConstraintSpec::Lark(g.clone()),
                "guided_grammar",
            ));
        }
        if found.len() > 1 {
            let names: Vec<&str> = found.iter().map(|c| c.param.as_str()).collect();
            return Err(ApiError::param(
                &found[1].param,
                format!(
                    "only one output constraint per request; got {}",
                    names.join(", ")
                ),
            ));
        }
        Ok(found.pop())
    }
}

/// A request body's fields of type `T`, read from the JSON object `body`; a field of the
/// wrong type is a 400 whose `param` is the field's JSON path.
fn typed<T: DeserializeOwned>(body: &Value) -> Result<T, ApiError> {
    if !body.is_object() {
        return Err(ApiError::invalid("the request body must be a JSON object"));
    }
    serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            ApiError::invalid(format!("invalid request body: {inner}"))
        } else {
            ApiError::param(&path, format!("invalid `{path}`: {inner}"))
        }
    })
}

/// The `param` of an error from [`tools::normalize_messages`]: the path it starts with
/// (`messages[0].content`).
fn message_param(message: &str) -> &str {
    message
        .split_whitespace()
        .next()
        .filter(|p| p.starts_with("messages["))
        .unwrap_or("messages")
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    /// Shared fields (read by [`ChatRequest::from_json`]).
    #[serde(skip)]
    pub common: Common,
    /// The conversation.
    pub messages: Option<Value>,
    /// Return logprobs.
    pub logprobs: Option<bool>,
    /// Alternatives per token.
    pub top_logprobs: Option<i64>,
    /// Tool definitions (passed to the template).
    pub tools: Option<Value>,
    /// `none` (no tools offered, nothing parsed), `auto`, `required` or a named function.
    pub tool_choice: Option<Value>,
    /// Extra template variables.
    pub chat_template_kwargs: Option<Map<String, Value>>,
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    /// Shared fields (read by [`CompletionRequest::from_json`]).
    #[serde(skip)]
    pub common: Common,
    /// A string, a one-string list, or a list of token ids.
    pub prompt: Option<Value>,
    /// Alternatives per token (legacy integer form).
    pub logprobs: Option<i64>,
    /// Refused when true.
    pub echo: Option<bool>,
    /// Refused when set.
    pub suffix: Option<Value>,
}

/// A validated request.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The model named.
    pub model: Option<String>,
    /// The generation.
    pub req: GenRequest,
    /// SSE.
    pub stream: bool,
    /// Last chunk with usage.
    pub include_usage: bool,
    /// Include the prompt in the response.
    pub return_prompt: bool,
}

fn seed_now() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn finite(name: &str, v: f64) -> Result<f64, ApiError> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(ApiError::param(
            name,
            format!("`{name}` must be a finite number"),
        ))
    }
}

/// The most a `logit_bias` entry may name (OpenAI's bound).
const MAX_LOGIT_BIAS: usize = 300;

impl Common {
    /// Penalties and `logit_bias`, validated (OpenAI ranges; token ids checked against the
    /// vocabulary when the job runs).
    fn penalties(&self) -> Result<Penalties, ApiError> {
        let mut out = Penalties::default();
        for (name, v, slot) in [
            ("presence_penalty", self.presence_penalty, &mut out.presence),
            (
                "frequency_penalty",
                self.frequency_penalty,
                &mut out.frequency,
            ),
        ] {
            if let Some(v) = v {
                let v = finite(name, v)?;
                if !(-2.0..=2.0).contains(&v) {
                    return Err(ApiError::param(
                        name,
                        format!("`{name}` must be in [-2, 2]"),
                    ));
                }
                *slot = v as f32;
            }
        }
        if let Some(v) = self.repetition_penalty {
            let v = finite("repetition_penalty", v)?;
            // 0 is what some clients send for "unset"; it means off, like 1.
            if v < 0.0 {
                return Err(ApiError::param(
                    "repetition_penalty",
                    "`repetition_penalty` must be positive (1 = off)",
                ));
            }
            out.repetition = if v == 0.0 { 1.0 } else { v as f32 };
        }
        if let Some(n) = self.repetition_context_size {
            if n < 0 {
                return Err(ApiError::param(
                    "repetition_context_size",
                    "`repetition_context_size` must be 0 or more",
                ));
            }
            out.repetition_context = n as usize;
        }
        if let Some(map) = &self.logit_bias {
            if map.len() > MAX_LOGIT_BIAS {
                return Err(ApiError::param(
                    "logit_bias",
                    format!("`logit_bias` may name at most {MAX_LOGIT_BIAS} tokens"),
                ));
            }
            for (key, value) in map {
                let id: u32 = key.trim().parse().map_err(|_| {
                    ApiError::param(
                        "logit_bias",
                        format!("`logit_bias` keys are token ids, got {key:?}"),
                    )
                })?;
                let bias = value
                    .as_f64()
                    .filter(|b| b.is_finite() && (-100.0..=100.0).contains(b))
                    .ok_or_else(|| {
                        ApiError::param(
                            "logit_bias",
                            format!("`logit_bias[{key}]` must be a number in [-100, 100]"),
                        )
                    })?;
                out.logit_bias.push((id, bias as f32));
            }
            out.logit_bias.sort_by_key(|b| b.0);
        }
        Ok(out)
    }

    /// Validates the shared fields; `default_max_tokens` when the request sets none.
    fn validate(
        &self,
        default_max_tokens: usize,
        max_tokens_field: Option<i64>,
        prompt: PromptInput,
    ) -> Result<Prepared, ApiError> {
        let max_tokens = match max_tokens_field {
            None => default_max_tokens,
            Some(n) if n >= 1 => n as usize,
            Some(_) => {
                return Err(ApiError::param(
                    "max_tokens",
                    "`max_tokens` must be at least 1",
                ))
            }
        };
        let temperature = finite("temperature", self.temperature.unwrap_or(0.0))?;
        if temperature < 0.0 {
            return Err(ApiError::param(
                "temperature",
                "`temperature` must be 0 or more",
            ));
        }
        let top_p = finite("top_p", self.top_p.unwrap_or(1.0))?;
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::param("top_p", "`top_p` must be in (0, 1]"));
        }
        let top_k = match self.top_k.unwrap_or(0) {
            -1 | 0 => 0,
            k if k > 0 => k as usize,
            _ => {
                return Err(ApiError::param(
                    "top_k",
                    "`top_k` must be 0 (off), -1 (off) or more",
                ))
            }
        };
        let min_p = finite("min_p", self.min_p.unwrap_or(0.0))?;
        if !(0.0..=1.0).contains(&min_p) {
            return Err(ApiError::param("min_p", "`min_p` must be in [0, 1]"));
        }
        let penalties = self.penalties()?;
        let constraint = self.constraint()?;
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::param("n", "only `n: 1` is supported")
                .with_code(ApiCode::UnsupportedParameter));
        }
        let stop = match &self.stop {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => {
                let mut out = Vec::new();
                for s in items {
                    match s {
                        Value::String(s) => out.push(s.clone()),
                        _ => {
                            return Err(ApiError::param(
                                "stop",
                                "`stop` must be a string or a list of strings",
                            ))
                        }
                    }
                }
                out
            }
            Some(_) => {
                return Err(ApiError::param(
                    "stop",
                    "`stop` must be a string or a list of strings",
                ))
            }
        };
        if stop.len() > MAX_STOP {
            return Err(ApiError::param(
                "stop",
                format!("at most {MAX_STOP} stop strings"),
            ));
        }
        if stop.iter().any(String::is_empty) {
            return Err(ApiError::param("stop", "stop strings must not be empty"));
        }
        let seed = match self.seed {
            Some(s) => s as u64,
            None if temperature > 0.0 => seed_now(),
            None => 0,
        };
        let stream = self.stream.unwrap_or(false);
        Ok(Prepared {
            model: self.model.clone(),
            req: GenRequest {
                prompt,
                max_tokens,
                sampler: SamplerConfig {
                    temperature: temperature as f32,
                    top_p: top_p as f32,
                    top_k,
                    min_p: min_p as f32,
                    seed,
                },
                ignore_eos: self.ignore_eos.unwrap_or(false),
                stop,
                penalties,
                logprobs: None,
                parse_tools: false,
                constraint,
                forced_call: None,
            },
            stream,
            include_usage: stream
                && self
                    .stream_options
                    .as_ref()
                    .is_some_and(|o| o.include_usage),
            return_prompt: self.return_prompt.unwrap_or(false),
        })
    }
}

impl ChatRequest {
    /// Reads a request body.
    pub fn from_json(body: &Value) -> Result<Self, ApiError> {
        let mut r: Self = typed(body)?;
        r.common = typed(body)?;
        Ok(r)
    }

    /// Validates a chat request.
    pub fn prepare(self, default_max_tokens: usize) -> Result<Prepared, ApiError> {
        let messages = match &self.messages {
            Some(Value::Array(m)) if !m.is_empty() => m,
            Some(Value::Array(_)) => {
                return Err(ApiError::param("messages", "`messages` must not be empty"))
            }
            Some(_) => {
                return Err(ApiError::param(
                    "messages",
                    "`messages` must be a list of messages",
                ))
            }
            None => {
                return Err(ApiError::param(
                    "messages",
                    "missing required parameter `messages`",
                ))
            }
        };
        let messages = tools::normalize_messages(messages).map_err(|m| {
            let param = message_param(&m).to_string();
            ApiError::param(&param, m)
        })?;
        let tool_defs = match &self.tools {
            None | Some(Value::Null) => None,
            Some(Value::Array(t)) if t.is_empty() => None,
            Some(Value::Array(t)) => {
                for (i, def) in t.iter().enumerate() {
                    let named = def
                        .get("function")
                        .and_then(|f| f.get("name"))
                        .is_some_and(Value::is_string);
                    if !named {
                        return Err(ApiError::param(
                            "tools",
                            format!("tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\": …}}}}"),
                        ));
                    }
                }
                Some(Value::Array(t.clone()))
            }
            Some(_) => return Err(ApiError::param("tools", "`tools` must be a list")),
        };
        let (tool_defs, forced_call) = self.tool_choice(tool_defs)?;
        let logprobs = match (self.logprobs.unwrap_or(false), self.top_logprobs) {
            (false, Some(n)) if n > 0 => {
                return Err(ApiError::param(
                    "top_logprobs",
                    "`top_logprobs` needs `logprobs: true`",
                ))
            }
            (false, _) => None,
            (true, n) => {
                let n = n.unwrap_or(0);
                if !(0..=MAX_TOP_LOGPROBS as i64).contains(&n) {
                    return Err(ApiError::param(
                        "top_logprobs",
                        format!("`top_logprobs` must be between 0 and {MAX_TOP_LOGPROBS}"),
                    ));
                }
                Some(n as usize)
            }
        };
        let max_tokens = self.common.max_completion_tokens.or(self.common.max_tokens);
        let parse_tools = tool_defs.is_some();
        let prompt = PromptInput::Chat {
            messages,
            tools: tool_defs,
            kwargs: self.chat_template_kwargs.clone().unwrap_or_default(),
        };
        let mut p = self
            .common
            .validate(default_max_tokens, max_tokens, prompt)?;
        p.req.logprobs = logprobs;
        p.req.parse_tools = parse_tools;
        if let (Some(_), Some(c)) = (&forced_call, &p.req.constraint) {
            return Err(ApiError::param(
                "tool_choice",
                format!(
                    "`tool_choice` forcing a call and `{}` are two output constraints; send one",
                    c.param
                ),
            ));
        }
        p.req.forced_call = forced_call;
        Ok(p)
    }
}

impl ChatRequest {
    /// Applies `tool_choice` to the validated tool definitions: the tools offered to the
    /// template (none for `"none"`), and the choice when it forces a call (`required`, a named
    /// function: enforced by the grammar of [`tools::force`]).
    fn tool_choice(
        &self,
        tool_defs: Option<Value>,
    ) -> Result<(Option<Value>, Option<ToolChoice>), ApiError> {
        let list = tool_defs
            .as_ref()
            .and_then(Value::as_array)
            .map(Vec::as_slice);
        let choice = ToolChoice::parse(self.tool_choice.as_ref(), list)
            .map_err(|m| ApiError::param("tool_choice", m))?;
        let offered = tool_defs.filter(|_| choice != ToolChoice::None);
        Ok((offered, Some(choice).filter(ToolChoice::forces_a_call)))
    }
}

impl CompletionRequest {
    /// Reads a request body.
    pub fn from_json(body: &Value) -> Result<Self, ApiError> {
        let mut r: Self = typed(body)?;
        r.common = typed(body)?;
        Ok(r)
    }

    /// Validates a completion request.
    pub fn prepare(self, default_max_tokens: usize) -> Result<Prepared, ApiError> {
        let bad = || {
            ApiError::param(
                "prompt",
                "`prompt` must be a string, a list of one string, or a list of token ids",
            )
        };
        let prompt = match &self.prompt {
            Some(Value::String(s)) => PromptInput::Text(s.clone()),
            Some(Value::Array(items)) => match items.as_slice() {
                [Value::String(s)] => PromptInput::Text(s.clone()),
                [] => return Err(bad()),
                ids if ids
                    .iter()
                    .all(|v| v.as_u64().is_some_and(|n| n <= u32::MAX as u64)) =>
                {
                    PromptInput::Ids(
                        ids.iter()
                            .filter_map(Value::as_u64)
                            .map(|n| n as u32)
                            .collect(),
                    )
                }
                _ => {
                    return Err(ApiError::param(
                        "prompt",
                        "only one prompt per request is supported",
                    )
                    .with_code(ApiCode::UnsupportedParameter))
                }
            },
            None => {
                return Err(ApiError::param(
                    "prompt",
                    "missing required parameter `prompt`",
                ))
            }
            Some(_) => return Err(bad()),
        };
        if self.echo.unwrap_or(false) {
            return Err(ApiError::param("echo", "`echo` is not supported")
                .with_code(ApiCode::UnsupportedParameter));
        }
        if self.suffix.as_ref().is_some_and(|s| !s.is_null()) {
            return Err(ApiError::param("suffix", "`suffix` is not supported")
                .with_code(ApiCode::UnsupportedParameter));
        }
        let logprobs = match self.logprobs {
            None => None,
            Some(n) if (0..=MAX_TOP_LOGPROBS as i64).contains(&n) => Some(n as usize),
            Some(_) => {
                return Err(ApiError::param(
                    "logprobs",
                    format!("`logprobs` must be between 0 and {MAX_TOP_LOGPROBS}"),
                ))
            }
        };
        let max_tokens = self.common.max_tokens;
        let mut p = self
            .common
            .validate(default_max_tokens, max_tokens, prompt)?;
        p.req.logprobs = logprobs;
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(v: Value) -> Result<Prepared, ApiError> {
        ChatRequest::from_json(&v)?.prepare(512)
    }

    const API_CODES: [ApiCode; 10] = [
        ApiCode::InvalidApiKey,
        ApiCode::MethodNotAllowed,
        ApiCode::ModelNotFound,
        ApiCode::RequestTooLarge,
        ApiCode::ContextLengthExceeded,
        ApiCode::QueueFull,
        ApiCode::HostNotAllowed,
        ApiCode::UnsupportedMediaType,
        ApiCode::RequestTimeout,
        ApiCode::UnsupportedParameter,
    ];

    #[test]
    fn an_api_code_brings_its_status_and_type_onto_the_wire() {
        let mut seen = std::collections::HashSet::new();
        for code in API_CODES {
            let (name, status, kind) = code.wire();
            assert!(seen.insert(name), "{name} twice");
            assert!(status.is_client_error(), "{name}: {status}");
            // A parameter error given the code answers with the code's status and type.
            let e = ApiError::param("p", "m").with_code(code);
            assert_eq!((e.status, e.kind), (status, kind));
            let body = e.body();
            assert_eq!(body["error"]["code"], name);
            assert_eq!(body["error"]["type"], kind.as_str());
            assert_eq!(body["error"]["param"], "p");
        }
    }

    #[test]
    fn diagnostic_codes_keep_the_status_and_name_the_constraint_param() {
        let code = Code::from(crate::diagnostic::code::Constrain::Invalid);
        let e = ApiError::invalid("bad schema").with_code(code);
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.body()["error"]["code"], code.as_str());
        assert_eq!(
            e.constraint_param(Some("response_format")).param.as_deref(),
            Some("response_format")
        );
        let other = Code::from(crate::diagnostic::code::Generate::ContextOverflow);
        let e = ApiError::invalid("long")
            .with_code(other)
            .constraint_param(Some("x"));
        assert_eq!(e.param, None);
    }

    #[test]
    fn chat_defaults_are_greedy_with_the_server_budget() {
        let p =
            chat(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})).unwrap();
        assert_eq!(p.req.max_tokens, 512);
        assert_eq!(p.req.sampler.temperature, 0.0);
        assert!(!p.stream && !p.include_usage);
        let p = chat(json!({"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 7, "max_tokens": 9, "stop": "x", "stream": true, "stream_options": {"include_usage": true}, "logprobs": true, "top_logprobs": 3})).unwrap();
        assert_eq!(p.req.max_tokens, 7);
        assert_eq!(p.req.stop, vec!["x"]);
        assert!(p.include_usage);
        assert_eq!(p.req.logprobs, Some(3));
    }

    #[test]
    fn penalties_and_logit_bias_are_parsed() {
        let msg = json!([{"role": "user", "content": "hi"}]);
        let p = chat(json!({"messages": msg, "presence_penalty": 0.5, "frequency_penalty": -0.25, "repetition_penalty": 1.3, "repetition_context_size": 64, "logit_bias": {"17": -100, " 3": 2.5}})).unwrap();
        let pen = &p.req.penalties;
        assert_eq!(pen.presence, 0.5);
        assert_eq!(pen.frequency, -0.25);
        assert_eq!(pen.repetition, 1.3);
        assert_eq!(pen.repetition_context, 64);
        assert_eq!(pen.logit_bias, vec![(3, 2.5), (17, -100.0)]);
        let p = chat(json!({"messages": msg, "repetition_penalty": 0})).unwrap();
        assert!(p.req.penalties.is_neutral());
    }

    #[test]
    fn chat_validation_errors_name_the_parameter() {
        let msg = json!([{"role": "user", "content": "hi"}]);
        let cases = [
            (json!({"messages": []}), "messages"),
            (json!({}), "messages"),
            (json!({"messages": msg, "temperature": -1}), "temperature"),
            (json!({"messages": msg, "top_p": 0}), "top_p"),
            (json!({"messages": msg, "max_tokens": 0}), "max_tokens"),
            (json!({"messages": msg, "n": 2}), "n"),
            (
                json!({"messages": msg, "presence_penalty": 2.5}),
                "presence_penalty",
            ),
            (
                json!({"messages": msg, "frequency_penalty": -3}),
                "frequency_penalty",
            ),
            (
                json!({"messages": msg, "repetition_penalty": -1}),
                "repetition_penalty",
            ),
            (
                json!({"messages": msg, "logit_bias": {"abc": 1}}),
                "logit_bias",
            ),
            (
                json!({"messages": msg, "logit_bias": {"5": 101}}),
                "logit_bias",
            ),
            (json!({"messages": msg, "stop": [1]}), "stop"),
            (json!({"messages": msg, "top_logprobs": 2}), "top_logprobs"),
            (
                json!({"messages": msg, "tools": [{"type": "function"}]}),
                "tools",
            ),
            (
                json!({"messages": msg, "response_format": {"type": "xml"}}),
                "response_format.type",
            ),
            (
                json!({"messages": msg, "response_format": {"type": "json_schema"}}),
                "response_format.json_schema.schema",
            ),
            (
                json!({"messages": msg, "guided_json": "{not json"}),
                "guided_json",
            ),
            (
                json!({"messages": msg, "guided_regex": "a+", "guided_json": {}}),
                "guided_regex",
            ),
            (
                json!({"messages": msg, "temperature": "hot"}),
                "temperature",
            ),
            (
                json!({"messages": msg, "stream_options": {"include_usage": 1}}),
                "stream_options.include_usage",
            ),
            (
                json!({"messages": [{"role": "user", "content": 5}]}),
                "messages[0].content",
            ),
            (
                json!({"messages": [msg[0], {"role": 1}]}),
                "messages[1].role",
            ),
            (
                json!({"messages": msg, "top_logprobs": "3"}),
                "top_logprobs",
            ),
        ];
        for (body, param) in cases {
            let e = chat(body.clone()).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
        }
    }

    #[test]
    fn completion_prompt_forms() {
        let c = |v: Value| CompletionRequest::from_json(&v)?.prepare(16);
        assert!(matches!(
            c(json!({"prompt": "a"})).unwrap().req.prompt,
            PromptInput::Text(_)
        ));
        assert!(matches!(
            c(json!({"prompt": ["a"]})).unwrap().req.prompt,
            PromptInput::Text(_)
        ));
        assert!(
            matches!(c(json!({"prompt": [1, 2]})).unwrap().req.prompt, PromptInput::Ids(ref v) if v == &[1, 2])
        );
        assert!(c(json!({"prompt": ["a", "b"]})).is_err());
        assert!(c(json!({"prompt": "a", "echo": true})).is_err());
        assert_eq!(
            c(json!({"prompt": "a", "logprobs": 2}))
                .unwrap()
                .req
                .logprobs,
            Some(2)
        );
    }

    #[test]
    fn output_constraints_on_both_endpoints() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        let spec = |v: Value| -> Option<(ConstraintSpec, String)> {
            let p = if v.get("messages").is_some() {
                chat(v).unwrap()
            } else {
                CompletionRequest::from_json(&v)
                    .unwrap()
                    .prepare(16)
                    .unwrap()
            };
            p.req.constraint.map(|c| (c.spec, c.param))
        };
        let msg = json!([{"role": "user", "content": "hi"}]);
        let rf = json!({"type": "json_schema", "json_schema": {"name": "x", "schema": schema}});
        assert_eq!(
            spec(json!({"messages": msg, "response_format": rf})),
            Some((
                ConstraintSpec::JsonSchema(schema.clone()),
                "response_format.json_schema.schema".into()
            ))
        );
        assert_eq!(
            spec(json!({"prompt": "a", "response_format": {"type": "json_object"}})),
            Some((ConstraintSpec::JsonObject, "response_format".into()))
        );
        assert_eq!(
            spec(json!({"prompt": "a", "guided_json": schema.to_string()})),
            Some((
                ConstraintSpec::JsonSchema(schema.clone()),
                "guided_json".into()
            ))
        );
        assert_eq!(
            spec(json!({"prompt": "a", "json_schema": schema})),
            Some((
                ConstraintSpec::JsonSchema(schema.clone()),
                "json_schema".into()
            ))
        );
        assert_eq!(
            spec(json!({"prompt": "a", "guided_regex": "[0-9]+"})),
            Some((
                ConstraintSpec::Regex("[0-9]+".into()),
                "guided_regex".into()
            ))
        );
        assert_eq!(
            spec(json!({"messages": msg, "guided_grammar": "start: \"x\""})),
            Some((
                ConstraintSpec::Lark("start: \"x\"".into()),
                "guided_grammar".into()
            ))
        );
        assert_eq!(
            spec(json!({"messages": msg, "response_format": {"type": "text"}})),
            None
        );
    }
}
