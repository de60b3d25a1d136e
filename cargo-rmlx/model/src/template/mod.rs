//! Chat templates: the ONLY chat-template render path of the project (generate, probe,
//! server, lint and LSP all go through [`ChatTemplate`]).
//!
//! This module owns: compiling a template in a minijinja environment configured like
//! Hugging Face transformers' `apply_chat_template` ([`env`]), the render context
//! ([`RenderContext`]: `messages`, `tools`, `documents`, `add_generation_prompt`, the
//! tokenizer's special tokens, caller kwargs), mapping parse and render errors to located
//! [`Diagnostic`]s in the original template text, and template discovery in a model
//! directory ([`discover`]: `chat_template.jinja`, else `tokenizer_config.json`'s
//! `chat_template`, never a silent ChatML fallback). The project's own ChatML template
//! (`templates/chatml.jinja`) is available as [`ChatTemplate::chatml`].

mod env;
mod guarded;
pub mod limits;
mod preprocess;
pub mod pyfmt;
pub mod sandbox;
mod strftime;
pub mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use minijinja::{Environment, ErrorKind};
use tracing::{debug, info, warn};

use crate::diagnostic::{code, Code, Diagnostic, Result};

pub use env::RaisedByTemplate;
pub use limits::ResourceLimit;

/// Template does not parse.
pub const CODE_SYNTAX: Code = Code::Template(code::Template::Syntax);
/// Template failed while rendering.
pub const CODE_RENDER: Code = Code::Template(code::Template::Render);
/// Template called `raise_exception(msg)`: it rejects this input on purpose.
pub const CODE_RAISED: Code = Code::Template(code::Template::Raised);
/// Template uses a filter the engine does not provide.
pub const CODE_UNKNOWN_FILTER: Code = Code::Template(code::Template::UnknownFilter);
/// Template uses a test (`is …`) the engine does not provide.
pub const CODE_UNKNOWN_TEST: Code = Code::Template(code::Template::UnknownTest);
/// Template calls a global function the engine does not provide.
pub const CODE_UNKNOWN_FUNCTION: Code = Code::Template(code::Template::UnknownFunction);
/// Template calls a method (`x.foo()`) the engine does not provide.
pub const CODE_UNKNOWN_METHOD: Code = Code::Template(code::Template::UnknownMethod);
/// Template exceeded its instruction budget (endless loop or runaway recursion).
pub const CODE_FUEL: Code = Code::Template(code::Template::FuelExhausted);
/// No chat template where one was required.
pub const CODE_MISSING: Code = Code::Template(code::Template::Missing);
/// A template file or its config could not be read.
pub const CODE_READ: Code = Code::Template(code::Template::Read);
/// The `chat_template` entry of a config file has an unexpected shape.
pub const CODE_CONFIG: Code = Code::Template(code::Template::Config);
/// The render context (variables) is not usable, e.g. not a JSON object.
pub const CODE_CONTEXT: Code = Code::Template(code::Template::Context);
/// A template file is not valid UTF-8.
pub const CODE_ENCODING: Code = Code::Template(code::Template::Encoding);
/// Compiling or rendering the template would exceed a resource limit (memory, output size,
/// nesting, expression length) or ended the sandboxed render process.
pub const CODE_RESOURCES: Code = Code::Template(code::Template::Resources);

/// Largest template text compiled (32 MiB; real templates are a few KiB).
pub const MAX_TEMPLATE_BYTES: usize = 32 << 20;

/// Default instruction budget per render: far above any real template on a long
/// conversation (a few thousand to a few hundred thousand), small enough that an endless
/// template fails within about a second.
pub const DEFAULT_FUEL: u64 = 20_000_000;

/// The ChatML template written by this project (`templates/chatml.jinja`).
pub const CHATML_SOURCE: &str = include_str!("../../../../templates/chatml.jinja");

/// Knobs of the template environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateOptions {
    /// Instruction budget per render (`None`: unlimited). Default [`DEFAULT_FUEL`].
    pub fuel: Option<u64>,
    /// Fixed clock for `strftime_now`, as Unix seconds; rendered in local time like
    /// Python's `datetime.fromtimestamp(now)`. `None` uses the current time.
    pub now: Option<i64>,
}

impl Default for TemplateOptions {
    fn default() -> Self {
        Self {
            fuel: Some(DEFAULT_FUEL),
            now: None,
        }
    }
}

/// Where a template's text came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum TemplateOrigin {
    /// A template file (`chat_template.jinja`, an rmlx.toml override, `--template F`).
    File {
        /// The file.
        path: PathBuf,
    },
    /// The `chat_template` key of a JSON config (`tokenizer_config.json`,
    /// `chat_template.json`); `name` is set for the list form `[{name, template}]`.
    ConfigKey {
        /// The config file.
        path: PathBuf,
        /// The key, `chat_template`.
        key: String,
        /// The entry's name in the list form (`default`, `tool_use`, …).
        name: Option<String>,
    },
    /// Shipped with rmlx (`templates/chatml.jinja`).
    Builtin {
        /// Path of the template in this repository.
        name: String,
    },
    /// Text given directly (tests, editors with unsaved buffers).
    Inline {
        /// A name to show.
        name: String,
    },
}

impl TemplateOrigin {
    /// The file the template text lives in (decoded from JSON for [`TemplateOrigin::ConfigKey`]).
    pub fn file(&self) -> Option<&Path> {
        match self {
            TemplateOrigin::File { path } | TemplateOrigin::ConfigKey { path, .. } => Some(path),
            TemplateOrigin::Builtin { .. } | TemplateOrigin::Inline { .. } => None,
        }
    }
}

impl fmt::Display for TemplateOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TemplateOrigin::File { path } => write!(f, "{}", path.display()),
            TemplateOrigin::ConfigKey { path, key, name } => {
                write!(f, "{} `{key}`", path.display())?;
                if let Some(n) = name {
                    write!(f, " [{n}]")?;
                }
                Ok(())
            }
            TemplateOrigin::Builtin { name } => write!(f, "built-in {name}"),
            TemplateOrigin::Inline { name } => f.write_str(name),
        }
    }
}

/// The variables of one render, transformers-style. See [`RenderContext::to_variables`].
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RenderContext {
    /// The conversation: objects with `role`, `content` (a string or a list of parts), and
    /// optionally `tool_calls`, `reasoning_content`, …
    pub messages: Vec<serde_json::Value>,
    /// Tool schemas; `None` renders as Python `None` (not undefined), like transformers.
    pub tools: Option<Vec<serde_json::Value>>,
    /// RAG documents; `None` renders as `None`.
    pub documents: Option<Vec<serde_json::Value>>,
    /// Append the assistant header so the model starts answering.
    pub add_generation_prompt: bool,
    /// The tokenizer's special tokens (`bos_token`, `eos_token`, …).
    pub special_tokens: BTreeMap<String, String>,
    /// Caller kwargs (`enable_thinking`, `date_string`, …); they override everything above.
    pub kwargs: serde_json::Map<String, serde_json::Value>,
}

impl RenderContext {
    /// A context with `messages` and nothing else.
    pub fn new(messages: Vec<serde_json::Value>) -> Self {
        Self {
            messages,
            ..Self::default()
        }
    }

    /// The full variable set handed to the template, in transformers' order:
    /// `messages`, `tools`, `documents`, `add_generation_prompt`, special tokens, kwargs
    /// (kwargs override earlier keys). This is the object `render --context` takes.
    pub fn to_variables(&self) -> serde_json::Map<String, serde_json::Value> {
        use serde_json::Value as J;
        let mut vars = serde_json::Map::new();
        vars.insert("messages".into(), J::Array(self.messages.clone()));
        vars.insert("tools".into(), self.tools.clone().map_or(J::Null, J::Array));
        vars.insert(
            "documents".into(),
            self.documents.clone().map_or(J::Null, J::Array),
        );
        vars.insert(
            "add_generation_prompt".into(),
            J::Bool(self.add_generation_prompt),
        );
        for (k, v) in &self.special_tokens {
            vars.insert(k.clone(), J::String(v.clone()));
        }
        for (k, v) in &self.kwargs {
            if matches!(
                k.as_str(),
                "messages" | "tools" | "documents" | "add_generation_prompt"
            ) {
                warn!(key = %k, "template kwarg overrides a core render variable");
            } else if self.special_tokens.contains_key(k) {
                debug!(key = %k, "template kwarg overrides a special token");
            }
            vars.insert(k.clone(), v.clone());
        }
        vars
    }
}

/// A compiled chat template: its original text, where it came from, and the
/// transformers-compatible environment holding it. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct ChatTemplate {
    source: Arc<str>,
    origin: TemplateOrigin,
    opts: TemplateOptions,
    /// Hash of the text and options: names the compiled template in sandbox workers.
    key: Arc<str>,
    env: Arc<Environment<'static>>,
    generation_tags: usize,
    /// Maps positions in the compiled (rewritten) text back to `source`.
    offsets: Arc<preprocess::OffsetMap>,
}

impl fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("origin", &self.origin)
            .field("len", &self.source.len())
            .finish()
    }
}

const TEMPLATE_NAME: &str = "chat_template";

impl ChatTemplate {
    /// Compiles `source` with the default [`TemplateOptions`]. A syntax error is a located
    /// `rmlx::template::syntax` diagnostic.
    pub fn new(source: impl Into<String>, origin: TemplateOrigin) -> Result<ChatTemplate> {
        Self::with_options(source, origin, &TemplateOptions::default())
    }

    /// Compiles `source` with explicit options.
    pub fn with_options(
        source: impl Into<String>,
        origin: TemplateOrigin,
        opts: &TemplateOptions,
    ) -> Result<ChatTemplate> {
        let source: Arc<str> = Arc::from(source.into());
        let shell = ChatTemplate::uncompiled(source.clone(), origin.clone(), opts);
        if let Some(checked) = sandbox::compile(&shell) {
            checked?;
        }
        Self::compile_facts(source, origin, opts).map_err(|facts| shell.diagnostic_from(facts))
    }

    /// A template value that holds its text but nothing compiled (for diagnostics).
    fn uncompiled(source: Arc<str>, origin: TemplateOrigin, opts: &TemplateOptions) -> Self {
        ChatTemplate {
            key: template_key(&source, opts),
            source,
            origin,
            opts: opts.clone(),
            env: Arc::new(Environment::new()),
            generation_tags: 0,
            offsets: Arc::new(preprocess::OffsetMap::default()),
        }
    }

    /// Compiles `source`; a failure as [`ErrorFacts`] (origin-independent).
    fn compile_facts(
        source: impl Into<Arc<str>>,
        origin: TemplateOrigin,
        opts: &TemplateOptions,
    ) -> std::result::Result<ChatTemplate, ErrorFacts> {
        let source: Arc<str> = source.into();
        let mut tmpl = ChatTemplate::uncompiled(source.clone(), origin, opts);
        check_compilable(&source)?;
        let rewritten = preprocess::rewrite(&source);
        if rewritten.generation_tags > 0 {
            debug!(
                origin = %tmpl.origin,
                tags = rewritten.generation_tags,
                "{{% generation %}} tags passed through (rendered as their body)"
            );
        }
        let (text, offsets) = preprocess::guard_for_iterables(&rewritten.text);
        tmpl.generation_tags = rewritten.generation_tags;
        tmpl.offsets = Arc::new(offsets);
        let mut env = env::build(opts);
        // minijinja folds constant expressions while compiling, and can panic there too.
        engine_call(&tmpl.origin, || env.add_template_owned(TEMPLATE_NAME, text))?
            .map_err(|e| tmpl.error_facts(&e, true))?;
        tmpl.env = Arc::new(env);
        Ok(tmpl)
    }

    /// Reads and compiles a template file (see [`read_template_file`]).
    pub fn from_file(path: impl AsRef<Path>) -> Result<ChatTemplate> {
        let path = path.as_ref();
        let text = read_template_file(path)?;
        Self::new(
            text,
            TemplateOrigin::File {
                path: path.to_path_buf(),
            },
        )
    }

    /// The project's own ChatML template (`templates/chatml.jinja`). Callers that use it
    /// as a fallback must log why (DESIGN.md: no silent fallback).
    pub fn chatml() -> Result<ChatTemplate> {
        Self::new(
            CHATML_SOURCE,
            TemplateOrigin::Builtin {
                name: "templates/chatml.jinja".into(),
            },
        )
    }

    /// The original template text (before any internal rewriting); spans index into it.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The original template text, shared (for diagnostics that point into it).
    pub fn shared_source(&self) -> Arc<str> {
        self.source.clone()
    }

    /// Where the text came from.
    pub fn origin(&self) -> &TemplateOrigin {
        &self.origin
    }

    /// Does the template use `{% generation %}` tags (assistant masks)?
    pub fn uses_generation_tags(&self) -> bool {
        self.generation_tags > 0
    }

    /// Top-level variables the template reads without defining them (`messages`, `tools`,
    /// `bos_token`, `enable_thinking`, …): what inputs it depends on.
    pub fn undeclared_variables(&self) -> BTreeSet<String> {
        match self.env.get_template(TEMPLATE_NAME) {
            Ok(t) => t.undeclared_variables(false).into_iter().collect(),
            Err(_) => BTreeSet::new(),
        }
    }

    /// Renders with a [`RenderContext`].
    pub fn render(&self, ctx: &RenderContext) -> Result<String> {
        self.render_vars(&serde_json::Value::Object(ctx.to_variables()))
    }

    /// Renders with the whole variable set given as one JSON object (its keys are the
    /// template variables), as `cargo rmlx render --context FILE` does.
    pub fn render_json(&self, vars: &serde_json::Value) -> Result<String> {
        if !vars.is_object() {
            return Err(Diagnostic::error(
                CODE_CONTEXT,
                format!(
                    "render context must be a JSON object, not {}",
                    json_kind(vars)
                ),
            )
            .with_help(
                "give an object whose keys are the template variables, e.g. \
                 {\"messages\": [...], \"add_generation_prompt\": true, \"bos_token\": \"<s>\"}",
            ));
        }
        self.render_vars(vars)
    }

    /// THE render function: in a sandbox worker when the front-end enabled the sandbox
    /// ([`sandbox::init`]), else in this process; the same [`ChatTemplate::render_here`]
    /// runs in both places.
    fn render_vars(&self, vars: &serde_json::Value) -> Result<String> {
        if let Some(result) = sandbox::render(self, vars) {
            return result;
        }
        self.render_here(vars).map_err(|f| self.diagnostic_from(f))
    }

    /// Renders in this process, the output capped at [`limits::MAX_VALUE_BYTES`].
    fn render_here(&self, vars: &serde_json::Value) -> std::result::Result<String, ErrorFacts> {
        let tmpl = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| self.error_facts(&e, false))?;
        let mut out = limits::CappedWriter::default();
        // A panic inside the engine (e.g. minijinja 2.24 overflows on `[x] * 2**63`) is a
        // failed render, not a dead thread.
        let rendered = engine_call(&self.origin, || tmpl.render_captured_to(vars, &mut out))?;
        match rendered {
            Ok(_) => String::from_utf8(out.buf)
                .map_err(|e| ErrorFacts::internal(format!("render produced invalid UTF-8: {e}"))),
            Err(e) if out.overflowed => Err(ErrorFacts {
                code: CODE_RESOURCES.into(),
                message: format!(
                    "chat template output is over the limit of {} MiB",
                    limits::MAX_VALUE_BYTES >> 20
                ),
                label: "output grows past the limit here".into(),
                help: RESOURCES_HELP.into(),
                span: self.span_of(&e),
            }),
            Err(e) => Err(self.error_facts(&e, false)),
        }
    }

    /// A `rmlx::template::resources` error about this template without a position (the
    /// sandbox worker ended before it could say where).
    fn resource_error(&self, why: String) -> Diagnostic {
        self.diagnostic_from(ErrorFacts {
            code: CODE_RESOURCES.into(),
            message: format!(
                "chat template {} exhausted its resources: {why}",
                self.origin
            ),
            label: String::new(),
            help: RESOURCES_HELP.into(),
            span: None,
        })
    }

    /// Maps a minijinja error to the origin-independent facts of its diagnostic.
    fn error_facts(&self, err: &minijinja::Error, parsing: bool) -> ErrorFacts {
        let detail = err
            .detail()
            .map(str::to_string)
            .unwrap_or_else(|| err.kind().to_string());
        let (code, message, label, help): (Code, String, &str, String) =
            if let Some(msg) = raised_message(err) {
                (
                    CODE_RAISED,
                    format!("chat template raised an exception: {msg}"),
                    "raise_exception called here",
                    "the template rejects this input on purpose (e.g. a role it does not \
                     support, or turns that do not alternate); change the conversation or the \
                     template"
                        .into(),
                )
            } else if let Some(limit) = find_source::<ResourceLimit>(err) {
                (
                    CODE_RESOURCES,
                    format!("chat template exceeds a resource limit: {}", limit.0),
                    "this would exceed the limit",
                    RESOURCES_HELP.into(),
                )
            } else {
                classify(err.kind(), &detail, parsing)
            };
        ErrorFacts {
            code: code.into(),
            message,
            label: label.into(),
            help,
            span: self.span_of(err),
        }
    }

    /// The located diagnostic of `facts` in this template's text and file.
    fn diagnostic_from(&self, facts: ErrorFacts) -> Diagnostic {
        // Restores a code received (as its string) from a sandbox worker.
        let code = code::Template::ALL
            .iter()
            .map(|&c| Code::from(c))
            .find(|c| *c == facts.code.as_str())
            .unwrap_or(CODE_RENDER);
        let mut d = Diagnostic::error(code, facts.message).with_source(self.source.clone());
        if let Some(file) = self.origin.file() {
            d = d.with_file(file);
        }
        if let Some(span) = facts.span {
            let len = self.source.len();
            let start = span.start.min(len);
            d = d.with_span(start..span.end.clamp(start, len), facts.label);
        }
        let help = match &self.origin {
            TemplateOrigin::ConfigKey { key, .. } => {
                let note = format!("positions are in the template text decoded from `{key}`");
                if facts.help.is_empty() {
                    note
                } else {
                    format!("{}; {note}", facts.help)
                }
            }
            _ => facts.help,
        };
        if !help.is_empty() {
            d = d.with_help(help);
        }
        d
    }

    /// Byte span of an error in the original source: minijinja's range mapped back through
    /// [`preprocess`]'s rewrites, else the whole reported line.
    fn span_of(&self, err: &minijinja::Error) -> Option<Range<usize>> {
        let len = self.source.len();
        if let Some(r) = err.range() {
            let start = self.offsets.to_original(r.start).min(len);
            let end = self.offsets.to_original(r.end);
            return Some(start..end.clamp(start, len));
        }
        let line = err.line()?;
        let mut offset = 0;
        for (i, l) in self.source.split_inclusive('\n').enumerate() {
            if i + 1 == line {
                return Some(offset..offset + l.trim_end_matches('\n').len());
            }
            offset += l.len();
        }
        None
    }
}

const RESOURCES_HELP: &str = "chat templates run under memory, output, nesting and time limits; \
     a real template stays far below them — look for a size, width or count argument that \
     is far too large, or a loop that keeps doubling a string";

/// What a diagnostic says about a template error, without the template's text or file:
/// what a sandbox worker sends back (see [`sandbox`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ErrorFacts {
    /// The stable code (one of this module's `CODE_*`).
    pub code: String,
    /// The message.
    pub message: String,
    /// The label of the span.
    pub label: String,
    /// Help text (may be empty).
    pub help: String,
    /// Byte range in the original template text.
    pub span: Option<Range<usize>>,
}

impl ErrorFacts {
    /// A render failure that is not the template's fault.
    fn internal(message: String) -> Self {
        ErrorFacts {
            code: CODE_RENDER.into(),
            message,
            label: String::new(),
            help: String::new(),
            span: None,
        }
    }
}

/// Checks minijinja cannot make itself: template size and operator chains per tag.
fn check_compilable(source: &str) -> std::result::Result<(), ErrorFacts> {
    if source.len() > MAX_TEMPLATE_BYTES {
        return Err(ErrorFacts {
            code: CODE_RESOURCES.into(),
            message: format!(
                "chat template is {} bytes, over the limit of {} MiB",
                source.len(),
                MAX_TEMPLATE_BYTES >> 20
            ),
            label: String::new(),
            help: RESOURCES_HELP.into(),
            span: None,
        });
    }
    if let Some((ops, span)) = preprocess::overlong_expression(source) {
        return Err(ErrorFacts {
            code: CODE_RESOURCES.into(),
            message: format!(
                "chat template has an expression with more than {} operators (found {ops} \
                 before giving up); compiling it would overflow the stack",
                preprocess::MAX_OPERATORS_PER_TAG
            ),
            label: "this expression is too long".into(),
            help: "split the expression over several `{% set %}` statements".into(),
            span: Some(span),
        });
    }
    Ok(())
}

/// Stable hash of a template text and its options (the sandbox cache key).
fn template_key(source: &str, opts: &TemplateOptions) -> Arc<str> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(format!("{:?} {:?}\n", opts.fuel, opts.now));
    h.update(source.as_bytes());
    let digest = h.finalize();
    Arc::from(
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
    )
}

/// Code, message, label and help of an engine error of `kind`.
fn classify(kind: ErrorKind, detail: &str, parsing: bool) -> (Code, String, &'static str, String) {
    match kind {
        ErrorKind::SyntaxError => (
            CODE_SYNTAX,
            format!("syntax error in chat template: {detail}"),
            "here",
            "chat templates are Jinja as rendered by transformers (jinja2 with loop controls \
             and {% generation %})"
                .into(),
        ),
        ErrorKind::UnknownFilter => (
            CODE_UNKNOWN_FILTER,
            format!("chat template uses an unknown filter: {detail}"),
            "unknown filter",
            unsupported_help("filter"),
        ),
        ErrorKind::UnknownTest => (
            CODE_UNKNOWN_TEST,
            format!("chat template uses an unknown test: {detail}"),
            "unknown test",
            unsupported_help("test"),
        ),
        ErrorKind::UnknownFunction => (
            CODE_UNKNOWN_FUNCTION,
            format!("chat template calls an unknown function: {detail}"),
            "unknown function",
            unsupported_help("function"),
        ),
        ErrorKind::UnknownMethod => (
            CODE_UNKNOWN_METHOD,
            format!("chat template calls an unknown method: {detail}"),
            "unknown method",
            unsupported_help("method"),
        ),
        ErrorKind::OutOfFuel => (
            CODE_FUEL,
            "chat template ran out of fuel: it looped or recursed without end".to_string(),
            "still running here",
            "a chat template should finish in far fewer instructions; look for a loop or \
             recursive macro that never ends (TemplateOptions::fuel sets the limit)"
                .into(),
        ),
        kind if parsing => (
            CODE_SYNTAX,
            format!("chat template does not compile: {kind}: {detail}"),
            "here",
            String::new(),
        ),
        kind => (
            CODE_RENDER,
            format!("cannot render chat template: {kind}: {detail}"),
            "while rendering this",
            String::new(),
        ),
    }
}

fn unsupported_help(what: &str) -> String {
    format!(
        "rmlx renders templates with minijinja plus Python compatibility; this {what} is not \
         provided (transformers' jinja2 may have it): rewrite that part of the template"
    )
}

fn raised_message(err: &minijinja::Error) -> Option<String> {
    find_source::<RaisedByTemplate>(err).map(|r| r.0.clone())
}

/// The first error of type `E` in `err`'s source chain.
fn find_source<E: std::error::Error + 'static>(err: &minijinja::Error) -> Option<&E> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<E>() {
            return Some(r);
        }
        cur = e.source();
    }
    None
}

/// What kind of JSON value `v` is, with its article ("an array"), for messages.
pub fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Renders a conversation the way `generate --chat`, the probe and the server do:
/// `messages` + the tokenizer's special tokens + `kwargs`, `tools`/`documents` = None.
pub fn render_chat(
    template: &ChatTemplate,
    special_tokens: &BTreeMap<String, String>,
    messages: &[serde_json::Value],
    add_generation_prompt: bool,
    kwargs: &serde_json::Map<String, serde_json::Value>,
) -> Result<String> {
    template.render(&RenderContext {
        messages: messages.to_vec(),
        tools: None,
        documents: None,
        add_generation_prompt,
        special_tokens: special_tokens.clone(),
        kwargs: kwargs.clone(),
    })
}

/// One template text found in a model directory, not yet compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateSource {
    /// The template text.
    pub text: String,
    /// Where it came from.
    pub origin: TemplateOrigin,
}

impl TemplateSource {
    /// Compiles it with the default options.
    pub fn compile(&self) -> Result<ChatTemplate> {
        ChatTemplate::new(self.text.clone(), self.origin.clone())
    }

    /// Compiles it with explicit options.
    pub fn compile_with(&self, opts: &TemplateOptions) -> Result<ChatTemplate> {
        ChatTemplate::with_options(self.text.clone(), self.origin.clone(), opts)
    }
}

/// Every template text of a model directory: the default one and named alternatives
/// (`tool_use`, `rag`, files under `additional_chat_templates/`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiscoveredTemplates {
    /// The template transformers would use by default.
    pub default: Option<TemplateSource>,
    /// Named alternatives, in file order.
    pub named: Vec<(String, TemplateSource)>,
}

impl DiscoveredTemplates {
    /// A named template (`"default"` gives the default one).
    pub fn get(&self, name: &str) -> Option<&TemplateSource> {
        if name == "default" {
            if let Some(d) = &self.default {
                return Some(d);
            }
        }
        self.named.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// Names of the alternatives.
    pub fn names(&self) -> Vec<&str> {
        self.named.iter().map(|(n, _)| n.as_str()).collect()
    }
}

/// The default chat template of a model directory, compiled: `chat_template.jinja`, else
/// `chat_template.json`'s, else `tokenizer_config.json`'s `chat_template` (a string, or
/// the `default` entry of a `[{name, template}]` list). `Ok(None)` when there is none: the
/// caller decides what to do (and logs it); there is no silent ChatML fallback here.
pub fn discover(model_dir: impl AsRef<Path>) -> Result<Option<ChatTemplate>> {
    let found = discover_sources(model_dir.as_ref())?;
    match found.default {
        Some(src) => {
            info!(origin = %src.origin, "chat template");
            src.compile().map(Some)
        }
        None => Ok(None),
    }
}

/// Like [`discover`] but an error (`rmlx::template::missing`) when there is no template.
pub fn discover_required(model_dir: impl AsRef<Path>) -> Result<ChatTemplate> {
    let dir = model_dir.as_ref();
    discover(dir)?.ok_or_else(|| {
        Diagnostic::error(
            CODE_MISSING,
            format!("no chat template in {}", dir.display()),
        )
        .with_file(dir)
        .with_help(
            "add chat_template.jinja to the model directory, set a template in rmlx.toml, or \
             use the model without --chat (base models have no template)",
        )
    })
}

/// All template texts of a model directory without compiling them. See [`discover`].
pub fn discover_sources(model_dir: &Path) -> Result<DiscoveredTemplates> {
    let mut out = DiscoveredTemplates::default();

    let jinja = model_dir.join("chat_template.jinja");
    if let Some(text) = read_opt(&jinja)? {
        out.default = Some(TemplateSource {
            text,
            origin: TemplateOrigin::File {
                path: jinja.clone(),
            },
        });
    }

    for file in ["chat_template.json", "tokenizer_config.json"] {
        let path = model_dir.join(file);
        let Some(text) = read_opt(&path)? else {
            continue;
        };
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            Diagnostic::error(CODE_CONFIG, format!("cannot parse {}: {e}", path.display()))
                .with_file(&path)
        })?;
        let Some(entry) = json.get("chat_template") else {
            continue;
        };
        let (default, named) = config_templates(&path, entry)?;
        if out.default.is_some() {
            if default.is_some() {
                info!(
                    shadowed = %path.display(),
                    used = %jinja.display(),
                    "chat template: a template file takes precedence over the config's chat_template"
                );
            }
        } else {
            out.default = default;
        }
        for (n, t) in named {
            if out.get(&n).is_none() {
                out.named.push((n, t));
            }
        }
    }

    let extra = model_dir.join("additional_chat_templates");
    if let Ok(entries) = std::fs::read_dir(&extra) {
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jinja"))
            .collect();
        files.sort();
        for path in files {
            let Some(name) = path
                .file_stem()
                .and_then(|s| s.to_str())
                .map(str::to_string)
            else {
                continue;
            };
            if let Some(text) = read_opt(&path)? {
                if out.get(&name).is_none() {
                    out.named.push((
                        name,
                        TemplateSource {
                            text,
                            origin: TemplateOrigin::File { path },
                        },
                    ));
                }
            }
        }
    }

    if out.default.is_none() {
        if out.named.is_empty() {
            info!(dir = %model_dir.display(), "no chat template in the model directory");
        } else {
            warn!(
                dir = %model_dir.display(),
                names = ?out.names(),
                "named chat templates but none called `default`: no default template"
            );
        }
    }
    Ok(out)
}

type ConfigTemplates = (Option<TemplateSource>, Vec<(String, TemplateSource)>);

fn config_templates(path: &Path, entry: &serde_json::Value) -> Result<ConfigTemplates> {
    let origin = |name: Option<&str>| TemplateOrigin::ConfigKey {
        path: path.to_path_buf(),
        key: "chat_template".into(),
        name: name.map(str::to_string),
    };
    let bad = |what: &str| {
        Diagnostic::error(
            CODE_CONFIG,
            format!("`chat_template` in {} {what}", path.display()),
        )
        .with_file(path)
        .with_help("expected a string, or a list of {\"name\": …, \"template\": …} objects")
    };
    let mut default = None;
    let mut named = Vec::new();
    let mut add = |name: &str, text: &str| {
        let src = TemplateSource {
            text: text.to_string(),
            origin: origin(Some(name)),
        };
        if name == "default" {
            default = Some(src);
        } else {
            named.push((name.to_string(), src));
        }
    };
    match entry {
        serde_json::Value::Null => return Ok((None, Vec::new())),
        serde_json::Value::String(s) => {
            return Ok((
                Some(TemplateSource {
                    text: s.clone(),
                    origin: origin(None),
                }),
                Vec::new(),
            ))
        }
        serde_json::Value::Array(items) => {
            for item in items {
                let name = item.get("name").and_then(|v| v.as_str());
                let text = item.get("template").and_then(|v| v.as_str());
                match (name, text) {
                    (Some(n), Some(t)) => add(n, t),
                    _ => {
                        return Err(bad(
                            "has a list entry without a string `name` and `template`",
                        ))
                    }
                }
            }
        }
        serde_json::Value::Object(map) => {
            for (n, t) in map {
                match t.as_str() {
                    Some(t) => add(n, t),
                    None => return Err(bad(&format!("has a non-string template `{n}`"))),
                }
            }
        }
        _ => return Err(bad("is neither a string nor a list")),
    }
    Ok((default, named))
}

/// Reads a template file as UTF-8 text. A file that is not UTF-8 is an
/// `rmlx::template::encoding` error naming the line, column and byte offset of the first
/// invalid byte.
pub fn read_template_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path)
        .map_err(|e| Diagnostic::io(CODE_READ, "cannot read chat template", path, &e))?;
    decode_template(bytes, path)
}

/// Decodes template bytes read from `path` (named in the error) as UTF-8. See
/// [`read_template_file`].
pub fn decode_template(bytes: Vec<u8>, path: &Path) -> Result<String> {
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        let valid = String::from_utf8_lossy(&bytes[..at]);
        let line = valid.matches('\n').count() + 1;
        let col = valid.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        let bad = bytes.get(at).copied().unwrap_or_default();
        Diagnostic::error(
            CODE_ENCODING,
            format!(
                "chat template {} is not UTF-8: invalid byte 0x{bad:02x} at line {line}, \
                 column {col} (byte offset {at})",
                path.display()
            ),
        )
        .with_file(path)
        .with_help(
            "chat templates are UTF-8 text (transformers reads them as UTF-8); re-save the file \
             as UTF-8",
        )
    })
}

fn read_opt(path: &Path) -> Result<Option<String>> {
    match std::fs::read(path) {
        Ok(bytes) => decode_template(bytes, path).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Diagnostic::io(CODE_READ, "cannot read", path, &e)),
    }
}

#[cfg(test)]
mod tests;

/// Runs a call into the template engine, turning a panic inside it (e.g. minijinja 2.24
/// overflows on `[x] * 2**63`, at compile time while folding constants or while rendering)
/// into a failed render instead of a dead thread.
fn engine_call<T>(
    origin: &TemplateOrigin,
    call: impl FnOnce() -> T,
) -> std::result::Result<T, ErrorFacts> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(call)).map_err(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        warn!(origin = %origin, "the template engine panicked: {what}");
        ErrorFacts::internal(format!(
            "the template engine failed on this template: {what}"
        ))
    })
}
