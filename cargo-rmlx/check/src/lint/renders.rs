//! What a failed sample render means, and how serious it is.
//!
//! Every sample is an input rmlx really sends ([`SampleKind::reach`]), so the severity
//! follows from who sends it and why the render failed:
//! - a deliberate `raise_exception` is the template saying what it does not take: advice
//!   (`rmlx::lint::rejects-input`), except on the probe's seed (one user turn), which every
//!   model must take: an error;
//! - an engine gap (a filter, test, function or method jinja2 has and rmlx lacks) or a
//!   runaway template: an error whatever the sample, keeping the engine code;
//! - any other crash on an input every chat request may produce: an error
//!   (`rmlx::lint::render-failed`); on an input only a request using an optional capability
//!   produces (tools, a final assistant message): a warning that the model lacks that
//!   capability (`rmlx::lint::unsupported-input`).

use std::collections::BTreeMap;
use std::ops::Range;

use super::samples::{Reach, SampleKind};
use super::{
    CODE_REJECTS_INPUT, CODE_RENDER_FAILED, CODE_UNSUPPORTED_INPUT, PY_DICT_METHODS,
    PY_LIST_METHODS, PY_STR_METHODS,
};
use crate::diagnostic::{Diagnostic, Severity};
use crate::template;

/// Diagnostics for the sample renders that failed, one per distinct failure (code, span,
/// message) naming every sample it hit. `statics` are the static engine checks: a render
/// failure at a filter, test or function they call an engine gap is one. `tool_use`: the
/// template is a `tool_use` variant (tool calls are its ordinary input).
pub(super) fn render_failures(
    outputs: &BTreeMap<SampleKind, Result<String, Diagnostic>>,
    statics: &[Diagnostic],
    tool_use: bool,
) -> Vec<Diagnostic> {
    let mut groups: Vec<(&Diagnostic, Vec<SampleKind>)> = Vec::new();
    for (kind, r) in outputs {
        let Err(d) = r else { continue };
        match groups
            .iter_mut()
            .find(|(g, _)| g.code == d.code && g.span == d.span && g.message == d.message)
        {
            Some((_, kinds)) => kinds.push(*kind),
            None => groups.push((d, vec![*kind])),
        }
    }
    groups
        .into_iter()
        .map(|(d, kinds)| {
            if d.code == template::CODE_RAISED {
                rejected(d, &kinds)
            } else {
                crashed(d, &kinds, is_engine_gap(d, statics), tool_use)
            }
        })
        .collect()
}

/// "the single-turn sample (a single user turn)" or "the samples a, b".
fn which(kinds: &[SampleKind]) -> String {
    match kinds {
        [k] => format!("the {} sample ({})", k.name(), k.describe()),
        _ => {
            let names: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
            format!("the samples {}", names.join(", "))
        }
    }
}

/// The requests that produce the failed samples, when all of them are optional.
fn optional_only(kinds: &[SampleKind], tool_use: bool) -> Option<Vec<&'static str>> {
    kinds
        .iter()
        .map(|k| match k.reach_in(tool_use) {
            Reach::Every => None,
            Reach::Optional(when) => Some(when),
        })
        .collect()
}

/// Copies `d`'s source and span (with `label`, else `d`'s own label) onto `out`.
fn located(out: Diagnostic, d: &Diagnostic, label: Option<&str>) -> Diagnostic {
    match (d.source.clone(), d.span.clone()) {
        (Some(src), Some(span)) => {
            let label = label
                .map(str::to_string)
                .or_else(|| d.span_label.clone())
                .unwrap_or_default();
            out.with_source(src).with_span(span, label)
        }
        _ => out,
    }
}

/// A deliberate `raise_exception`.
fn rejected(d: &Diagnostic, kinds: &[SampleKind]) -> Diagnostic {
    let msg = d
        .message
        .strip_prefix("chat template raised an exception: ")
        .unwrap_or(&d.message);
    let message = format!("the template rejects {}: {msg}", which(kinds));
    let out = if kinds.contains(&SampleKind::SingleTurn) {
        Diagnostic::error(CODE_REJECTS_INPUT, message).with_help(
            "one user turn is the probe's seed and the plainest chat request: a model whose \
             template rejects it cannot be probed or served",
        )
    } else {
        Diagnostic::advice(CODE_REJECTS_INPUT, message).with_help(
            "a deliberate raise_exception: requests with this kind of conversation get the \
             template's message as an error; callers must not send them to this model",
        )
    };
    located(out, d, Some("raised here"))
}

/// A render that crashed; `gap`: the crash is an engine gap of rmlx.
fn crashed(d: &Diagnostic, kinds: &[SampleKind], gap: bool, tool_use: bool) -> Diagnostic {
    let code = match d.code {
        c if c == template::CODE_RENDER || c == template::CODE_SYNTAX => CODE_RENDER_FAILED,
        // `list.strip()`: Python has no such method either; the template does not handle
        // this input (not an engine gap).
        c if c == template::CODE_UNKNOWN_METHOD && !gap => CODE_RENDER_FAILED,
        c => c,
    };
    let optional = optional_only(kinds, tool_use).filter(|_| !gap);
    let Some(whens) = optional else {
        let out = Diagnostic::error(
            code,
            format!("render fails on {}: {}", which(kinds), d.message),
        );
        let help = if code == CODE_RENDER_FAILED {
            "every chat request can send this conversation and the template crashes on it; \
             guard the expression (e.g. `is defined`, `is string`) or fix the template"
                .to_string()
        } else {
            d.help.clone().unwrap_or_default()
        };
        return located(out, d, None).with_help(help);
    };
    let code = if code == CODE_RENDER_FAILED {
        CODE_UNSUPPORTED_INPUT
    } else {
        code
    };
    let out = Diagnostic::warning(
        code,
        format!(
            "the template cannot take {}; rmlx sends that only for {}: {}",
            which(kinds),
            whens.join(" and "),
            d.message
        ),
    )
    .with_help(
        "a missing capability, not a defect of ordinary chat: such requests to this model fail \
         with this template error; support the input, or reject it with \
         raise_exception('…') so that clients get a clear message",
    );
    located(out, d, None)
}

/// Is a render failure an engine gap of rmlx (jinja2 renders it, rmlx cannot) or a runaway
/// template (out of fuel)?
fn is_engine_gap(d: &Diagnostic, statics: &[Diagnostic]) -> bool {
    // A render error without a span matches any static finding of its code.
    let within = |s: &Option<Range<usize>>| match (&d.span, s) {
        (Some(r), Some(s)) => r.start <= s.start && s.end <= r.end,
        (None, _) => true,
        (Some(_), None) => false,
    };
    match d.code {
        c if c == template::CODE_FUEL => true,
        c if c == template::CODE_UNKNOWN_METHOD => is_python_method_gap(&d.message),
        c if c == template::CODE_UNKNOWN_FILTER
            || c == template::CODE_UNKNOWN_TEST
            || c == template::CODE_UNKNOWN_FUNCTION =>
        {
            statics
                .iter()
                .any(|s| s.code == c && s.severity == Severity::Error && within(&s.span))
        }
        _ => false,
    }
}

/// Does a render error "… <kind> has no method named <m>" name a method Python has on that
/// type (an engine gap), as opposed to one Python lacks too?
fn is_python_method_gap(message: &str) -> bool {
    let Some((before, name)) = message.rsplit_once(" has no method named ") else {
        return true;
    };
    let name = name.trim();
    let table = if before.ends_with("string") {
        PY_STR_METHODS
    } else if before.ends_with("sequence") {
        PY_LIST_METHODS
    } else if before.ends_with("map") {
        PY_DICT_METHODS
    } else {
        return true;
    };
    table.contains(&name)
}
