//! The chat-template lint engine: one function, [`lint_template`] (or [`lint_source`] for
//! text), shared by `cargo rmlx lint` and the language server. It returns [`Diagnostic`]s
//! with stable codes, byte spans in the template text and help.
//!
//! Checks, in order:
//! 1. **syntax** — the template compiles in the render environment
//!    (`rmlx::template::syntax`, located at the offending token);
//! 2. **engine gaps, statically** — every filter, test, method and function the template
//!    names exists in the engine (`rmlx::template::unknown-filter|unknown-test|
//!    unknown-method|unknown-function`), at the name's span, before any render reaches it;
//! 3. **inputs** — variables the template reads that nothing provides
//!    (`rmlx::lint::undeclared-variable`; advice when the template guards them with
//!    `is defined`/`default`, a warning otherwise);
//! 4. **sample renders** — the [`samples::SampleKind`] conversations, each a request rmlx's
//!    server really sends, after the server's own message preparation, with the generation
//!    prompt on. A crash on an input every chat request may produce is an error
//!    (`rmlx::lint::render-failed`), on an input only tool requests or a final assistant
//!    message produce a warning (`rmlx::lint::unsupported-input`: a missing capability); an
//!    engine gap or a runaway template is an error whatever the input; a deliberate
//!    `raise_exception` is advice (`rmlx::lint::rejects-input`), an error only on the
//!    probe's seed ([`renders`]);
//! 5. **generation prompt** — the render with `add_generation_prompt=true` must extend the
//!    render without it and add something (`rmlx::lint::generation-prompt`); the seed render
//!    must not start with BOS twice (`rmlx::lint::duplicate-bos`);
//! 6. **tokenizer** (when a model's tokenizer is known) — double BOS, a BOS the tokenizer
//!    expects but the template never emits, special-token-like strings that are not one token
//!    of the vocabulary, the seed prompt's token count ([`tokens`]);
//! 7. **capabilities** — a summary (system role, multi-turn, tools, tool calls, content
//!    parts passed as a list — rmlx never sends that, other runtimes do —, thinking flag)
//!    as advice (`rmlx::lint::capabilities`), also returned as data
//!    in [`LintReport::capabilities`];
//! 8. **tool-call format** — which format the model writes tool calls in and whether the
//!    server parses it, with the reasoning markers (`rmlx::lint::tool-format`, advice;
//!    [`tool_format`]).
//!
//! Which files get linted is decided by [`targets`] (files, model directories, the models
//! declared in rmlx.toml, the default search).

mod bos;
mod renders;
pub mod samples;
pub(crate) mod scan;
pub mod targets;
mod tokens;
mod tool_format;

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use serde_json::json;

use crate::diagnostic::{code, Code, Diagnostic, Severity};
use crate::template::{
    self, support, ChatTemplate, RenderContext, TemplateOptions, TemplateOrigin,
};
use crate::tokenize::Tokenizer;

use samples::SampleKind;
use scan::UseKind;

pub use tool_format::CODE_TOOL_FORMAT;

pub use targets::{
    find_templates, lint_targets, manifest_targets, targets_from_paths, LintTarget, TemplateRef,
};

/// A sample conversation fails to render (the template crashes on ordinary input).
pub const CODE_RENDER_FAILED: Code = Code::Lint(code::Lint::RenderFailed);
/// The template deliberately rejects a sample conversation (`raise_exception`).
pub const CODE_REJECTS_INPUT: Code = Code::Lint(code::Lint::RejectsInput);
/// The template crashes on an input rmlx sends only for an optional capability (tools, a
/// final assistant message): the model lacks that capability (a warning).
pub const CODE_UNSUPPORTED_INPUT: Code = Code::Lint(code::Lint::UnsupportedInput);
/// `add_generation_prompt` is ignored, adds nothing, or does not extend the prompt.
pub const CODE_GENERATION_PROMPT: Code = Code::Lint(code::Lint::GenerationPrompt);
/// The template reads a variable that nothing provides.
pub const CODE_UNDECLARED: Code = Code::Lint(code::Lint::UndeclaredVariable);
/// The template emits BOS and the tokenizer's post-processor adds another.
pub const CODE_DOUBLE_BOS: Code = Code::Lint(code::Lint::DoubleBos);
/// The tokenizer expects a BOS (its post-processor adds one) that the template never emits.
pub const CODE_MISSING_BOS: Code = Code::Lint(code::Lint::MissingBos);
/// A special-token-like string in the output is not a single token of the vocabulary.
pub const CODE_SPLIT_SPECIAL: Code = Code::Lint(code::Lint::SplitSpecialToken);
/// The template emits BOS twice at the start of the prompt (`{{ bos_token }}` twice).
pub const CODE_DUPLICATE_BOS: Code = Code::Lint(code::Lint::DuplicateBos);
/// The seed prompt's token count (advice).
pub const CODE_SEED_TOKENS: Code = Code::Lint(code::Lint::SeedTokens);
/// The capability summary (advice).
pub const CODE_CAPABILITIES: Code = Code::Lint(code::Lint::Capabilities);
/// The model's tokenizer could not be loaded; tokenizer checks were skipped.
pub const CODE_TOKENIZER: Code = Code::Lint(code::Lint::Tokenizer);

/// Kwargs names that switch a reasoning ("thinking") mode, and the two values tried.
const THINKING_FLAGS: &[&str] = &[
    "enable_thinking",
    "thinking",
    "enable_reasoning",
    "reasoning",
    "reasoning_effort",
];

/// Names jinja2 provides at run time inside macros and loops (never template inputs).
const RUNTIME_NAMES: &[&str] = &["loop", "caller", "varargs", "kwargs", "self", "super"];

/// Knobs of a lint run.
#[derive(Debug, Clone, Default)]
pub struct LintOptions {
    /// The render environment's options (fuel, fixed clock).
    pub template: TemplateOptions,
    /// Caller kwargs the template will be rendered with in production (e.g. from
    /// rmlx.toml); they count as provided inputs and are passed to every sample render.
    pub kwargs: serde_json::Map<String, serde_json::Value>,
}

/// Does the template handle an input?
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Support {
    /// Rendered, and the input shows up in the output.
    Yes,
    /// Rendered, but the input does not show up (silently dropped).
    Ignored,
    /// The template raises on it (`raise_exception`).
    Rejected,
    /// The template crashes on it.
    Fails,
    /// Not determined (an earlier failure stopped the checks).
    Unknown,
}

impl Support {
    fn as_str(self) -> &'static str {
        match self {
            Support::Yes => "yes",
            Support::Ignored => "ignored",
            Support::Rejected => "rejected",
            Support::Fails => "fails",
            Support::Unknown => "unknown",
        }
    }
}

/// What the template can do, derived from the sample renders.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Capabilities {
    /// A system message.
    pub system_role: Support,
    /// Earlier assistant turns.
    pub multi_turn: Support,
    /// Tool definitions (`tools`).
    pub tools: Support,
    /// Assistant tool calls and tool results.
    pub tool_calls: Support,
    /// Content given to the template as a list of typed text parts, unprepared, as
    /// transformers' `apply_chat_template` passes it. Informational for rmlx: its server
    /// joins text parts into one string before rendering, so this only matters to runtimes
    /// that pass the list through.
    pub content_parts: Support,
    /// `add_generation_prompt` appends an assistant header.
    pub generation_prompt: bool,
    /// The kwarg that switches a thinking mode, when one changes the output.
    pub thinking_flag: Option<String>,
    /// Uses `{% generation %}` tags (assistant masks for training).
    pub generation_tags: bool,
    /// Every top-level variable the template reads.
    pub inputs: Vec<String>,
}

/// Lint results for one template.
#[derive(Debug, Clone)]
pub struct LintReport {
    /// The template linted.
    pub origin: TemplateOrigin,
    /// Findings, errors first, then in source order.
    pub diagnostics: Vec<Diagnostic>,
    /// The capability summary (absent when the template does not compile).
    pub capabilities: Option<Capabilities>,
    /// Token count of the rendered seed prompt (with a tokenizer).
    pub seed_tokens: Option<usize>,
}

impl LintReport {
    /// A report holding only `d` (e.g. the file could not be read).
    pub fn failed(origin: TemplateOrigin, d: Diagnostic) -> Self {
        Self {
            origin,
            diagnostics: vec![d],
            capabilities: None,
            seed_tokens: None,
        }
    }

    /// Number of diagnostics of `severity`.
    pub fn count(&self, severity: Severity) -> usize {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == severity)
            .count()
    }

    /// Any error?
    pub fn has_errors(&self) -> bool {
        self.count(Severity::Error) > 0
    }

    /// A JSON summary of this template (for `--message-format json`).
    pub fn summary_json(&self) -> serde_json::Value {
        json!({
            "reason": "lint-template",
            "template": self.origin.to_string(),
            "file": self.origin.file(),
            "errors": self.count(Severity::Error),
            "warnings": self.count(Severity::Warning),
            "advice": self.count(Severity::Advice),
            "capabilities": self.capabilities,
            "seed_tokens": self.seed_tokens,
        })
    }
}

/// Compiles `source` and lints it (see [`lint_template`]). A template that does not compile
/// yields its syntax error only.
pub fn lint_source(
    source: &str,
    origin: TemplateOrigin,
    tokenizer: Option<&Tokenizer>,
    opts: &LintOptions,
) -> LintReport {
    match ChatTemplate::with_options(source, origin.clone(), &opts.template) {
        Ok(t) => lint_template(&t, tokenizer, opts),
        Err(d) => LintReport::failed(origin, d),
    }
}

/// Lints a compiled template, optionally against the model's tokenizer. See the module
/// documentation for the checks.
pub fn lint_template(
    t: &ChatTemplate,
    tokenizer: Option<&Tokenizer>,
    opts: &LintOptions,
) -> LintReport {
    let inputs = t.undeclared_variables();
    let mut cx = Cx::new(t, tokenizer, opts, &inputs);
    let scan = scan::scan(t.source());

    let mut static_diags = engine_checks(&scan);
    input_checks(&mut cx, &scan, &inputs);

    // Sample renders.
    let mut outputs: BTreeMap<SampleKind, Result<String, Diagnostic>> = BTreeMap::new();
    for kind in SampleKind::ALL {
        if cx.out_of_fuel {
            break;
        }
        let r = cx.render(
            kind.messages(),
            kind.tools_in(cx.tool_use),
            kind.add_generation_prompt(),
            &[],
        );
        outputs.insert(kind, r);
    }
    let render_diags = renders::render_failures(&outputs, &static_diags, cx.tool_use);
    // A static finding that a render actually hit is reported once, as the render error.
    static_diags.retain(|s| {
        !render_diags.iter().any(|r| {
            r.code == s.code
                && match (&r.span, &s.span) {
                    (Some(r), Some(s)) => r.start <= s.start && s.end <= r.end,
                    (r, s) => r == s,
                }
        })
    });
    cx.diags.extend(static_diags);
    cx.diags.extend(render_diags);

    let ok = |k: SampleKind| outputs.get(&k).and_then(|r| r.as_ref().ok());
    let generation_prompt = generation_prompt_check(&mut cx, &scan, &inputs, ok);
    if let Some(seed) = ok(SampleKind::SingleTurn) {
        bos::duplicate_check(&mut cx, &scan, seed);
    }
    let caps = capabilities(&mut cx, &inputs, &outputs, generation_prompt);

    let mut seed_tokens = None;
    if let Some(tok) = tokenizer {
        if let Some(seed) = ok(SampleKind::SingleTurn) {
            let rendered: Vec<&str> = outputs
                .values()
                .filter_map(|r| r.as_ref().ok().map(String::as_str))
                .collect();
            seed_tokens = tokens::check(&mut cx, &scan, tok, seed, &rendered);
        }
    }

    cx.diags.extend(tool_format::report(t.source(), &caps));
    let summary = capability_summary(&caps);
    cx.diags
        .push(Diagnostic::advice(CODE_CAPABILITIES, summary).with_help(
            "what the template does with each standard input (\"content parts passed as a list\" \
         is how transformers passes them; rmlx's server joins text parts into one string \
         first); see `--message-format json` for the data",
        ));

    let mut diagnostics: Vec<Diagnostic> = cx
        .diags
        .into_iter()
        .map(|d| {
            let d = if d.source.is_none() {
                d.with_source(t.shared_source())
            } else {
                d
            };
            match (d.file.is_none(), t.origin().file()) {
                (true, Some(f)) => d.with_file(f),
                _ => d,
            }
        })
        .collect();
    diagnostics.sort_by_key(|d| {
        (
            std::cmp::Reverse(d.severity),
            d.span.as_ref().map_or(usize::MAX, |s| s.start),
        )
    });
    LintReport {
        origin: t.origin().clone(),
        diagnostics,
        capabilities: Some(caps),
        seed_tokens,
    }
}

/// State of one lint run over one template.
struct Cx<'a> {
    t: &'a ChatTemplate,
    opts: &'a LintOptions,
    special: BTreeMap<String, String>,
    has_tokenizer: bool,
    /// The template is a `tool_use` variant: every request it receives has tools
    /// ([`samples::is_tool_use_variant`]).
    tool_use: bool,
    diags: Vec<Diagnostic>,
    out_of_fuel: bool,
}

impl<'a> Cx<'a> {
    fn new(
        t: &'a ChatTemplate,
        tok: Option<&Tokenizer>,
        opts: &'a LintOptions,
        inputs: &BTreeSet<String>,
    ) -> Self {
        let special = match tok {
            Some(tok) => tok.special_tokens().clone(),
            None => placeholder_tokens(inputs),
        };
        Self {
            t,
            opts,
            special,
            has_tokenizer: tok.is_some(),
            tool_use: samples::is_tool_use_variant(t.origin()),
            diags: Vec::new(),
            out_of_fuel: false,
        }
    }

    /// Renders one conversation with the template's production inputs plus `extra` kwargs.
    fn render(
        &mut self,
        messages: Vec<serde_json::Value>,
        tools: Option<Vec<serde_json::Value>>,
        add_generation_prompt: bool,
        extra: &[(&str, serde_json::Value)],
    ) -> Result<String, Diagnostic> {
        if self.out_of_fuel {
            return Err(Diagnostic::error(
                template::CODE_FUEL,
                "skipped after the template ran out of fuel",
            ));
        }
        let mut kwargs = self.opts.kwargs.clone();
        for (k, v) in extra {
            kwargs.insert((*k).to_string(), v.clone());
        }
        let r = self.t.render(&RenderContext {
            messages,
            tools,
            documents: None,
            add_generation_prompt,
            special_tokens: self.special.clone(),
            kwargs,
        });
        if let Err(d) = &r {
            if d.code == template::CODE_FUEL {
                self.out_of_fuel = true;
            }
        }
        r
    }

    fn at(&self, d: Diagnostic, span: Option<Range<usize>>, label: &str) -> Diagnostic {
        match span {
            Some(s) => d.with_span(s, label),
            None => d,
        }
    }
}

/// The special tokens templates see without a tokenizer: one list for lint and the editor's
/// previews.
pub fn placeholder_special_tokens() -> BTreeMap<String, String> {
    [
        ("bos_token", "<s>"),
        ("eos_token", "</s>"),
        ("unk_token", "<unk>"),
        ("pad_token", "<pad>"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Special tokens for a lint without the model's tokenizer: BOS/EOS placeholders that show
/// up in renders, and one for every other `*_token` the template reads (`sep_token`, …),
/// which the model's tokenizer config provides in production (lint cannot tell, so
/// [`input_checks`] does not report them either).
fn placeholder_tokens(inputs: &BTreeSet<String>) -> BTreeMap<String, String> {
    let mut special = placeholder_special_tokens();
    for name in inputs {
        if let Some(stem) = name.strip_suffix("_token") {
            special
                .entry(name.clone())
                .or_insert_with(|| format!("<{stem}>"));
        }
    }
    special
}

/// Static engine-gap checks over the scanned names.
fn engine_checks(scan: &scan::Scan<'_>) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for u in &scan.uses {
        if !seen.insert((u.name, u.span.start)) {
            continue;
        }
        match u.kind {
            UseKind::Filter if !support::has_filter(u.name) => {
                out.push(if support::JINJA2_FILTERS.contains(&u.name) {
                    Diagnostic::error(
                        template::CODE_UNKNOWN_FILTER,
                        format!("filter `{}` is missing from rmlx's engine", u.name),
                    )
                    .with_span(u.span.clone(), "not provided by rmlx")
                    .with_help(format!(
                        "an engine gap: jinja2 (transformers) has `{}` but rmlx does not, so a \
                         render that reaches it fails here only; rewrite that expression",
                        u.name
                    ))
                } else {
                    Diagnostic::warning(
                        template::CODE_UNKNOWN_FILTER,
                        format!("unknown filter `{}`", u.name),
                    )
                    .with_span(u.span.clone(), "no such filter")
                    .with_help(format!(
                        "neither rmlx nor jinja2 (transformers) has a filter `{}`: a render that \
                         reaches it fails in both (jinja2: \"No filter named '{}'\")",
                        u.name, u.name
                    ))
                });
            }
            UseKind::Test if !support::has_test(u.name) => {
                out.push(if support::JINJA2_TESTS.contains(&u.name) {
                    Diagnostic::error(
                        template::CODE_UNKNOWN_TEST,
                        format!("test `{}` is missing from rmlx's engine", u.name),
                    )
                    .with_span(u.span.clone(), "not provided by rmlx")
                    .with_help(format!(
                        "an engine gap: jinja2 (transformers) has the test `{}` but rmlx does \
                         not; rewrite that expression",
                        u.name
                    ))
                } else {
                    Diagnostic::warning(
                        template::CODE_UNKNOWN_TEST,
                        format!("unknown test `{}`", u.name),
                    )
                    .with_span(u.span.clone(), "no such test")
                    .with_help(format!(
                        "neither rmlx nor jinja2 (transformers) has a test `{}`: a render that \
                         reaches it fails in both",
                        u.name
                    ))
                });
            }
            UseKind::Method if !support::has_method(u.name) => {
                let python = python_method_owner(u.name);
                let (message, help) = match python {
                    Some(ty) => (
                        format!("method `{}()` is missing from rmlx's engine", u.name),
                        format!(
                            "an engine gap: Python's {ty} has `{}()` (transformers can call it) \
                             but rmlx does not; a render that reaches this call fails",
                            u.name
                        ),
                    ),
                    None => (
                        format!("unknown method `{}()`", u.name),
                        format!(
                            "Python's str, list and dict have no method `{}()` and neither does \
                             rmlx: a render that reaches this call fails in both",
                            u.name
                        ),
                    ),
                };
                out.push(
                    Diagnostic::warning(template::CODE_UNKNOWN_METHOD, message)
                        .with_span(u.span.clone(), "unknown method")
                        .with_help(help),
                );
            }
            UseKind::Call
                if !support::globals().contains(u.name)
                    && !scan.defined.contains(u.name)
                    && !RUNTIME_NAMES.contains(&u.name) =>
            {
                let jinja2 = support::JINJA2_GLOBALS.contains(&u.name);
                let d = if jinja2 {
                    Diagnostic::error(
                        template::CODE_UNKNOWN_FUNCTION,
                        format!("function `{}()` is missing from rmlx's engine", u.name),
                    )
                    .with_help("transformers provides it; rmlx does not: rewrite that call")
                } else {
                    Diagnostic::warning(
                        template::CODE_UNKNOWN_FUNCTION,
                        format!("calls `{}()`, which nothing defines", u.name),
                    )
                    .with_help(
                        "neither the engine nor the template defines this function (no macro or \
                         `set` of that name); a render that reaches it fails here and in \
                         transformers",
                    )
                };
                out.push(d.with_span(u.span.clone(), "unknown function"));
            }
            _ => {}
        }
    }
    out
}

/// Variables the template reads that nothing provides.
fn input_checks(cx: &mut Cx<'_>, scan: &scan::Scan<'_>, inputs: &BTreeSet<String>) {
    for var in inputs {
        let v = var.as_str();
        if matches!(
            v,
            "messages" | "tools" | "documents" | "add_generation_prompt"
        ) || scan.defined.contains(v)
            || cx.special.contains_key(v)
            || cx.opts.kwargs.contains_key(v)
            || support::globals().contains(v)
            || RUNTIME_NAMES.contains(&v)
        {
            continue;
        }
        let tokenish = v.ends_with("_token") || v.ends_with("_tokens");
        if tokenish && !cx.has_tokenizer {
            // Provided by the model's tokenizer config when it defines one; unknown here.
            continue;
        }
        let refs = scan.var_refs(v);
        let guarded = refs.iter().any(|r| r.guarded);
        let span = refs.first().map(|r| r.span.clone());
        let (severity, message, help) = if tokenish {
            (
                if guarded {
                    Severity::Advice
                } else {
                    Severity::Warning
                },
                format!("reads `{v}`, which the model's tokenizer config does not define"),
                format!(
                    "special tokens come from tokenizer_config.json; without `{v}` there it \
                     renders as an empty string"
                ),
            )
        } else if guarded {
            (
                Severity::Advice,
                format!("optional input `{v}`: only a caller kwarg provides it"),
                format!(
                    "the template checks whether `{v}` is defined; pass it as a template kwarg \
                     to change the default behavior"
                ),
            )
        } else {
            (
                Severity::Warning,
                format!("reads `{v}`, which nothing provides"),
                format!(
                    "transformers passes messages, tools, documents, add_generation_prompt, the \
                     tokenizer's special tokens and caller kwargs; `{v}` is none of them, so it \
                     is undefined (renders empty, is falsy) unless a caller passes it"
                ),
            )
        };
        let d = match severity {
            Severity::Advice => Diagnostic::advice(CODE_UNDECLARED, message),
            _ => Diagnostic::warning(CODE_UNDECLARED, message),
        }
        .with_help(help);
        let d = cx.at(d, span, "read here");
        cx.diags.push(d);
    }
}

const PY_STR_METHODS: &[&str] = &[
    "capitalize",
    "casefold",
    "center",
    "count",
    "encode",
    "endswith",
    "expandtabs",
    "find",
    "format",
    "format_map",
    "index",
    "isalnum",
    "isalpha",
    "isascii",
    "isdecimal",
    "isdigit",
    "isidentifier",
    "islower",
    "isnumeric",
    "isprintable",
    "isspace",
    "istitle",
    "isupper",
    "join",
    "ljust",
    "lower",
    "lstrip",
    "maketrans",
    "partition",
    "removeprefix",
    "removesuffix",
    "replace",
    "rfind",
    "rindex",
    "rjust",
    "rpartition",
    "rsplit",
    "rstrip",
    "split",
    "splitlines",
    "startswith",
    "strip",
    "swapcase",
    "title",
    "translate",
    "upper",
    "zfill",
];
const PY_LIST_METHODS: &[&str] = &[
    "append", "clear", "copy", "count", "extend", "index", "insert", "pop", "remove", "reverse",
    "sort",
];
const PY_DICT_METHODS: &[&str] = &[
    "clear",
    "copy",
    "fromkeys",
    "get",
    "items",
    "keys",
    "pop",
    "popitem",
    "setdefault",
    "update",
    "values",
];

/// Which Python type (str, list, dict) has a method of this name.
fn python_method_owner(name: &str) -> Option<&'static str> {
    if PY_STR_METHODS.contains(&name) {
        Some("str")
    } else if PY_LIST_METHODS.contains(&name) {
        Some("list")
    } else if PY_DICT_METHODS.contains(&name) {
        Some("dict")
    } else {
        None
    }
}

/// `add_generation_prompt=true` must extend the `false` render and add something.
fn generation_prompt_check<'o>(
    cx: &mut Cx<'_>,
    scan: &scan::Scan<'_>,
    inputs: &BTreeSet<String>,
    ok: impl Fn(SampleKind) -> Option<&'o String>,
) -> bool {
    let span = scan.first_ref("add_generation_prompt");
    if !inputs.contains("add_generation_prompt") {
        cx.diags.push(
            Diagnostic::warning(
                CODE_GENERATION_PROMPT,
                "the template never reads `add_generation_prompt`",
            )
            .with_help(
                "without it the prompt cannot end in the assistant header that makes the model \
                 answer (rmlx, mlx-lm and transformers all render chat prompts with \
                 add_generation_prompt=true); add `{% if add_generation_prompt %}…{% endif %}` \
                 at the end",
            ),
        );
        return false;
    }
    let Some(with) = ok(SampleKind::SingleTurn).cloned() else {
        return false;
    };
    let tools = SampleKind::SingleTurn.tools_in(cx.tool_use);
    let Ok(without) = cx.render(SampleKind::SingleTurn.messages(), tools, false, &[]) else {
        return false;
    };
    let problem = if with == without {
        Some("`add_generation_prompt=true` adds nothing to the prompt")
    } else if !with.starts_with(&without) {
        Some("the prompt with `add_generation_prompt=true` does not extend the prompt without it")
    } else {
        None
    };
    match problem {
        None => true,
        Some(msg) => {
            let tail = |s: &str| {
                let n = s.chars().count();
                let t: String = s.chars().skip(n.saturating_sub(40)).collect();
                format!("{t:?}")
            };
            let d = Diagnostic::warning(CODE_GENERATION_PROMPT, msg).with_help(format!(
                "rendering one user turn ends in {} without it and in {} with it; the \
                 generation prompt should only append the assistant header",
                tail(&without),
                tail(&with)
            ));
            let d = cx.at(d, span, "add_generation_prompt read here");
            cx.diags.push(d);
            false
        }
    }
}

fn support_of(r: Option<&Result<String, Diagnostic>>, shows: impl Fn(&str) -> bool) -> Support {
    match r {
        None => Support::Unknown,
        Some(Ok(out)) if shows(out) => Support::Yes,
        Some(Ok(_)) => Support::Ignored,
        Some(Err(d)) if d.code == template::CODE_RAISED => Support::Rejected,
        Some(Err(_)) => Support::Fails,
    }
}

fn capabilities(
    cx: &mut Cx<'_>,
    inputs: &BTreeSet<String>,
    outputs: &BTreeMap<SampleKind, Result<String, Diagnostic>>,
    generation_prompt: bool,
) -> Capabilities {
    use samples::*;
    let system_role = support_of(outputs.get(&SampleKind::System), |o| {
        o.contains(SYSTEM_TEXT)
    });
    let multi_turn = support_of(outputs.get(&SampleKind::MultiTurn), |o| {
        o.contains(GREETING) && o.contains(ASSISTANT_TEXT) && o.contains(SEED_QUESTION)
    });
    // Never sent by rmlx (the server joins text parts); rendered as transformers passes it.
    let content_parts = if cx.out_of_fuel {
        Support::Unknown
    } else {
        let tools = SampleKind::ContentParts.tools_in(cx.tool_use);
        let r = cx.render(SampleKind::raw_content_parts(), tools, true, &[]);
        // Templates may trim each part (gemma's `item['text'] | trim`).
        support_of(Some(&r), |o| {
            o.contains(PART_A)
                && o.contains(PART_B.trim())
                && !o.contains("'type': 'text'")
                && !o.contains("\"type\": \"text\"")
        })
    };
    let tool_calls = support_of(outputs.get(&SampleKind::ToolCall), |o| {
        o.contains(TOOL_ARGUMENT) && o.contains(TOOL_RESULT_KEY)
    });
    let tools = if cx.out_of_fuel {
        Support::Unknown
    } else {
        let r = cx.render(
            SampleKind::SingleTurn.messages(),
            SampleKind::ToolCall.tools(),
            true,
            &[],
        );
        support_of(Some(&r), |o| o.contains(TOOL_DESCRIPTION))
    };
    let mut thinking_flag = None;
    for flag in THINKING_FLAGS {
        if !inputs.contains(*flag) || cx.out_of_fuel {
            continue;
        }
        let (on, off) = if *flag == "reasoning_effort" {
            (json!("high"), json!("low"))
        } else {
            (json!(true), json!(false))
        };
        let msgs = SampleKind::SingleTurn.messages();
        let tools = SampleKind::SingleTurn.tools_in(cx.tool_use);
        let a = cx.render(msgs.clone(), tools.clone(), true, &[(flag, on)]);
        let b = cx.render(msgs, tools, true, &[(flag, off)]);
        if let (Ok(a), Ok(b)) = (a, b) {
            if a != b {
                thinking_flag = Some((*flag).to_string());
                break;
            }
        }
    }
    Capabilities {
        system_role,
        multi_turn,
        tools,
        tool_calls,
        content_parts,
        generation_prompt,
        thinking_flag,
        generation_tags: cx.t.uses_generation_tags(),
        inputs: inputs.iter().cloned().collect(),
    }
}

fn capability_summary(c: &Capabilities) -> String {
    let mut s = format!(
        "capabilities: system role {}, multi-turn {}, tools {}, tool calls {}, content parts \
         passed as a list {}, generation prompt {}",
        c.system_role.as_str(),
        c.multi_turn.as_str(),
        c.tools.as_str(),
        c.tool_calls.as_str(),
        c.content_parts.as_str(),
        if c.generation_prompt { "yes" } else { "no" },
    );
    match &c.thinking_flag {
        Some(f) => s.push_str(&format!(", thinking flag `{f}`")),
        None => s.push_str(", thinking flag none"),
    }
    if c.generation_tags {
        s.push_str(", {% generation %} tags");
    }
    s
}
