//! `rmlx-editor`: the editor side of the lint engine and the probe, free of any server
//! machinery (the `rmlx-lsp` binary is a thin tower-lsp-server front-end over this crate; it
//! sits on `rmlx-check` and `rmlx-model`, ARCHITECTURE.md "Crates and layers"):
//!
//! - [`position`]: byte spans ↔ LSP positions in UTF-16 code units;
//! - [`to_lsp`]: a [`Diagnostic`] as an LSP diagnostic (exact range, stable code, severity,
//!   `source: "rmlx"`, labels and other files as related information, help appended);
//! - [`tokenizer_related`]: for the BOS checks, where the tokenizer files decide it;
//! - [`probe_diagnostic`]: a probe verdict as a diagnostic on the template's first line;
//! - [`quick_fix`]: the mechanical fixes (a duplicated `{{ bos_token }}`);
//! - [`project`]: which model a template belongs to, and rmlx.toml's diagnostics;
//! - [`preview`]: sample conversations rendered for hover and "Preview render".

pub mod position;
pub mod preview;
pub mod project;

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use ls_types::{DiagnosticRelatedInformation, DiagnosticSeverity, Location, NumberOrString, Uri};

use crate::diagnostic::{Code, Diagnostic, Severity};
use crate::probe::{ProbeReport, Verdict};

// The layers below under the paths these modules were written with (`crate::lint`, …).
pub(crate) use rmlx_check::{lint, probe};
pub(crate) use rmlx_model::{build, diagnostic, manifest, template, tokenize};

pub use ls_types;
pub use position::{position_of, LineIndex};

/// The `source` of every diagnostic rmlx publishes.
pub const SOURCE: &str = "rmlx";

/// A document as the editor holds it: its URI, its file (when it has one) and its text.
#[derive(Debug, Clone, Copy)]
pub struct Document<'a> {
    /// The document's URI.
    pub uri: &'a Uri,
    /// Its file on disk, when the URI is a `file:` URI.
    pub path: Option<&'a Path>,
    /// The editor's text (what the diagnostics' spans point into).
    pub text: &'a str,
    /// Line index of `text`.
    pub index: &'a LineIndex,
}

/// The LSP severity of a [`Severity`]: advice is information.
pub fn severity(s: Severity) -> DiagnosticSeverity {
    match s {
        Severity::Error => DiagnosticSeverity::ERROR,
        Severity::Warning => DiagnosticSeverity::WARNING,
        Severity::Advice => DiagnosticSeverity::INFORMATION,
    }
}

/// Converts `d` into an LSP diagnostic on `doc`.
///
/// - A diagnostic about this document (no file, or the document's file) gets the exact
///   UTF-16 range of its primary span (computed in the text the span points into, which is
///   the document's text when the diagnostic came from linting it); secondary labels become
///   related information in the same document.
/// - A diagnostic without a span, or about another file (e.g. the model's tokenizer), sits on
///   the document's first line; the other file's location is related information.
/// - The help text is appended to the message (`help: …`); `extra` related locations (see
///   [`tokenizer_related`]) are added after the labels.
pub fn to_lsp(
    d: &Diagnostic,
    doc: &Document<'_>,
    extra: Vec<DiagnosticRelatedInformation>,
) -> ls_types::Diagnostic {
    let own_file = match (&d.file, doc.path) {
        (None, _) => true,
        (Some(f), Some(p)) => same_path(f, p),
        (Some(_), None) => false,
    };
    // The text spans index into; the document's own index when it is the same text.
    let own_text = d.source.as_deref().is_none_or(|s| s == doc.text);
    let other_index;
    let (text, index): (&str, &LineIndex) = match (own_text, d.source.as_deref()) {
        (false, Some(src)) => {
            other_index = LineIndex::new(src);
            (src, &other_index)
        }
        _ => (doc.text, doc.index),
    };
    let mut related = Vec::new();
    let range = match (&d.span, own_file) {
        (Some(span), true) => index.range(text, span.clone()),
        (span, _) => {
            if let (Some(span), Some(file)) = (span, &d.file) {
                if let Some(uri) = Uri::from_file_path(file) {
                    related.push(DiagnosticRelatedInformation {
                        location: Location::new(uri, index.range(text, span.clone())),
                        message: d.span_label.clone().unwrap_or_else(|| "here".into()),
                    });
                }
            }
            doc.index.line_range(doc.text, 0)
        }
    };
    if own_file {
        for l in &d.labels {
            related.push(DiagnosticRelatedInformation {
                location: Location::new(doc.uri.clone(), index.range(text, l.span.clone())),
                message: l.message.clone(),
            });
        }
    }
    related.extend(extra);
    let mut message = d.message.clone();
    if !own_file {
        if let Some(f) = &d.file {
            message.push_str(&format!(" ({})", f.display()));
        }
    }
    if let Some(help) = d.help.as_deref().filter(|h| !h.is_empty()) {
        message.push_str("\nhelp: ");
        message.push_str(help);
    }
    ls_types::Diagnostic {
        range,
        severity: Some(severity(d.severity)),
        code: Some(NumberOrString::String(d.code.to_string())),
        code_description: None,
        source: Some(SOURCE.to_string()),
        message,
        related_information: (!related.is_empty()).then_some(related),
        tags: None,
        data: None,
    }
}

/// Do two paths name the same file (equal, or equal once canonicalized)?
pub fn same_path(a: &Path, b: &Path) -> bool {
    a == b
        || match (a.canonicalize(), b.canonicalize()) {
            (Ok(x), Ok(y)) => x == y,
            _ => false,
        }
}

/// Byte span of the first `"key"` (a JSON object key: followed by `:`) in `json`.
pub fn json_key_span(json: &str, key: &str) -> Option<Range<usize>> {
    let needle = format!("\"{key}\"");
    let mut from = 0;
    while let Some(i) = json[from..].find(&needle) {
        let at = from + i;
        let end = at + needle.len();
        if json[end..].trim_start().starts_with(':') {
            return Some(at..end);
        }
        from = end;
    }
    None
}

/// Where the model's tokenizer files decide what a BOS diagnostic is about (the related
/// information of `rmlx::lint::double-bos`, `missing-bos` and `duplicate-bos`): the
/// post-processor in tokenizer.json that adds BOS when encoding with special tokens, and
/// `add_bos_token` / `bos_token` in tokenizer_config.json. `read` returns a file's text
/// (callers cache: tokenizer.json can be megabytes).
pub fn tokenizer_related(
    code: Code,
    model_dir: &Path,
    read: &dyn Fn(&Path) -> Option<Arc<str>>,
) -> Vec<DiagnosticRelatedInformation> {
    let mut keys: Vec<(&str, &str, String)> = Vec::new();
    if code == lint::CODE_DOUBLE_BOS || code == lint::CODE_MISSING_BOS {
        keys.push((
            "tokenizer.json",
            "post_processor",
            "the tokenizer adds BOS here: its post-processor runs when text is encoded with \
             special tokens"
                .into(),
        ));
        keys.push((
            "tokenizer_config.json",
            "add_bos_token",
            "the tokenizer config's add_bos_token".into(),
        ));
    }
    if code == lint::CODE_DOUBLE_BOS
        || code == lint::CODE_MISSING_BOS
        || code == lint::CODE_DUPLICATE_BOS
    {
        keys.push((
            "tokenizer_config.json",
            "bos_token",
            "`bos_token` (what {{ bos_token }} renders) is defined here".into(),
        ));
    }
    let mut out = Vec::new();
    for (file, key, message) in keys {
        let path = model_dir.join(file);
        let Some(text) = read(&path) else { continue };
        let Some(span) = json_key_span(&text, key) else {
            continue;
        };
        let Some(uri) = Uri::from_file_path(&path) else {
            continue;
        };
        let range =
            ls_types::Range::new(position_of(&text, span.start), position_of(&text, span.end));
        out.push(DiagnosticRelatedInformation {
            location: Location::new(uri, range),
            message,
        });
    }
    out
}

/// A probe verdict as a diagnostic (no span: editors put it on the template's first line).
/// `ok` is advice carrying the decoded answer; `inconclusive` a warning; every other verdict
/// an error. The evidence and the probe's hints are the help.
pub fn probe_diagnostic(r: &ProbeReport, model: &str) -> Diagnostic {
    let v = r.verdict;
    let answer = r.answer.trim();
    let message = format!("probe of {model}: {} — answered {answer:?}", v.name());
    let d = match v {
        Verdict::Ok => Diagnostic::advice(v.code(), message),
        Verdict::Inconclusive => Diagnostic::warning(v.code(), message),
        _ => Diagnostic::error(v.code(), message),
    };
    let mut help = format!(
        "{} (rule `{}`; {} prompt tokens, {} greedy steps",
        r.evidence.reason,
        r.evidence.rule,
        r.prompt_ids.len(),
        r.steps.len()
    );
    if let Some(e) = &r.expect {
        help.push_str(&format!(", expected {e:?}"));
    }
    help.push(')');
    for h in &r.hints {
        help.push_str("; ");
        help.push_str(h);
    }
    d.with_help(help)
}

/// A probe that could not run (the model did not load, the seed did not render) as a
/// diagnostic for the template's first line: the underlying diagnostic, its message
/// prefixed.
pub fn probe_failure(d: &Diagnostic, model: &str) -> Diagnostic {
    let mut out = d.clone();
    out.message = format!("probe of {model} could not run: {}", d.message);
    out
}

/// A mechanical fix: replace `span` of the document with `new_text`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuickFix {
    /// The code action's title.
    pub title: String,
    /// Byte span of the document to replace.
    pub span: Range<usize>,
    /// Replacement text.
    pub new_text: String,
}

/// The quick fix for a diagnostic with `code` whose primary span is `span` in `text`, when
/// the fix is mechanical: `rmlx::lint::duplicate-bos` whose span is a bare
/// `{{ bos_token }}` expression (removed).
pub fn quick_fix(code: Code, text: &str, span: &Range<usize>) -> Option<QuickFix> {
    if code != lint::CODE_DUPLICATE_BOS {
        return None;
    }
    let expr = text.get(span.clone())?;
    let inner = expr.strip_prefix("{{")?.strip_suffix("}}")?;
    let inner = inner.strip_prefix(['-', '+']).unwrap_or(inner);
    let inner = inner.strip_suffix(['-', '+']).unwrap_or(inner);
    if inner.trim() != "bos_token" {
        return None;
    }
    Some(QuickFix {
        title: format!("Remove the duplicated `{expr}`"),
        span: span.clone(),
        new_text: String::new(),
    })
}

#[cfg(test)]
mod tests;
