//! The one type for every user-facing problem: [`Diagnostic`].
//!
//! A bad rmlx.toml key, a template syntax error, a truncated weights file, a probe verdict:
//! each is a `Diagnostic` with a severity, a stable code (`rmlx::<area>::<what>`), a message,
//! optionally the file and byte span it is about, extra labels and help. The CLI renders it
//! with miette (it implements [`miette::Diagnostic`]); the language server converts the same
//! value into an LSP diagnostic. Library functions return [`Result<T>`] with this error type.
//! Codes are typed ([`code`]): each maps to the CLI's exit code in one exhaustive table.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use miette::{LabeledSpan, NamedSource, SourceCode};

pub mod code;

pub use code::{Code, Exit};

/// How serious a [`Diagnostic`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// A hint the user may act on.
    Advice,
    /// Suspicious but not fatal.
    Warning,
    /// The operation cannot go on.
    Error,
}

/// A secondary location with its own message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Label {
    /// Byte range in the diagnostic's source text.
    pub span: Range<usize>,
    /// What this location shows.
    pub message: String,
}

/// One user-facing problem. See the module documentation. Boxed so `Result<T, Diagnostic>`
/// stays one pointer wide on the success path; fields are reached through `Deref`.
#[derive(Clone, serde::Serialize)]
#[serde(transparent)]
pub struct Diagnostic(Box<DiagnosticData>);

/// The fields of a [`Diagnostic`].
#[derive(Clone, serde::Serialize)]
pub struct DiagnosticData {
    /// Error, warning or advice.
    pub severity: Severity,
    /// Stable code, e.g. `rmlx::snapshot::missing-tensor` (serialized as that string).
    pub code: Code,
    /// One-line description, lowercase, no trailing period.
    pub message: String,
    /// The file the diagnostic is about, when there is one.
    pub file: Option<PathBuf>,
    /// The primary byte span in `source` (needs `source`).
    pub span: Option<Range<usize>>,
    /// Message of the primary span.
    pub span_label: Option<String>,
    /// Further labelled spans in the same source.
    pub labels: Vec<Label>,
    /// What to do about it.
    pub help: Option<String>,
    /// The text the spans point into (e.g. the template or rmlx.toml), shared cheaply.
    #[serde(skip)]
    pub source: Option<Arc<str>>,
    /// The error this diagnostic wraps (e.g. an MLX exception), its [`std::error::Error::source`].
    #[serde(skip)]
    pub cause: Option<Arc<dyn std::error::Error + Send + Sync>>,
    /// `source` named after `file`, built on first render.
    #[serde(skip)]
    named: OnceLock<Option<NamedSource<Arc<str>>>>,
}

/// Result with [`Diagnostic`] as the error.
pub type Result<T, E = Diagnostic> = std::result::Result<T, E>;

impl Diagnostic {
    /// A new error diagnostic.
    pub fn error(code: impl Into<Code>, message: impl Into<String>) -> Self {
        Self::new(Severity::Error, code, message)
    }

    /// A new warning diagnostic.
    pub fn warning(code: impl Into<Code>, message: impl Into<String>) -> Self {
        Self::new(Severity::Warning, code, message)
    }

    /// A new advice diagnostic.
    pub fn advice(code: impl Into<Code>, message: impl Into<String>) -> Self {
        Self::new(Severity::Advice, code, message)
    }

    fn new(severity: Severity, code: impl Into<Code>, message: impl Into<String>) -> Self {
        Self(Box::new(DiagnosticData {
            severity,
            code: code.into(),
            message: message.into(),
            file: None,
            span: None,
            span_label: None,
            labels: Vec::new(),
            help: None,
            source: None,
            cause: None,
            named: OnceLock::new(),
        }))
    }

    /// Names the file this is about.
    pub fn with_file(mut self, file: impl AsRef<Path>) -> Self {
        self.file = Some(file.as_ref().to_path_buf());
        self
    }

    /// Attaches the source text that spans point into.
    pub fn with_source(mut self, source: impl Into<Arc<str>>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Sets the primary span (byte range into the source) and its label.
    pub fn with_span(mut self, span: Range<usize>, label: impl Into<String>) -> Self {
        self.span = Some(span);
        self.span_label = Some(label.into());
        self
    }

    /// Adds a secondary labelled span.
    pub fn with_label(mut self, span: Range<usize>, message: impl Into<String>) -> Self {
        self.labels.push(Label {
            span,
            message: message.into(),
        });
        self
    }

    /// Keeps the error this diagnostic wraps as its [`std::error::Error::source`]. The
    /// message should still say what failed: the CLI's report does not print the cause chain.
    pub fn with_cause(mut self, cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.cause = Some(Arc::new(cause));
        self
    }

    /// The exit code of a command this diagnostic stops.
    pub fn exit_code(&self) -> u8 {
        self.code.exit().code()
    }

    /// Sets the help text.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Is this an error (as opposed to a warning or advice)?
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// An I/O failure on `path`, with the operation that failed.
    pub fn io(code: impl Into<Code>, what: &str, path: &Path, err: &std::io::Error) -> Self {
        Self::error(code, format!("{what} {}: {err}", path.display())).with_file(path)
    }

    /// 1-based (line, column in chars) of a byte offset in the source, for plain-text output.
    pub fn line_col(&self, offset: usize) -> Option<(usize, usize)> {
        let src = self.source.as_deref()?;
        let offset = offset.min(src.len());
        let before = src.get(..offset)?;
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Some((line, col))
    }
}

/// Byte offset of a 1-based line and 1-based byte column (serde_json's and most parsers'
/// convention) in `text`: the one conversion for every parser error that reports a position.
/// Line or column 0 count as 1; a column past the line's end is the line's end (before its
/// `\n` or `\r\n`); a line past the last one is the end of the text; an offset inside a
/// multibyte character moves back to its start.
pub fn offset_at(text: &str, line: usize, column: usize) -> usize {
    let mut start = 0;
    for (i, l) in text.split_inclusive('\n').enumerate() {
        if i + 1 >= line {
            let content = l.strip_suffix('\n').unwrap_or(l);
            let content = content.strip_suffix('\r').unwrap_or(content);
            let mut offset = start + column.saturating_sub(1).min(content.len());
            while !text.is_char_boundary(offset) {
                offset -= 1;
            }
            return offset;
        }
        start += l.len();
    }
    text.len()
}

impl std::ops::Deref for Diagnostic {
    type Target = DiagnosticData;

    fn deref(&self) -> &DiagnosticData {
        &self.0
    }
}

impl std::ops::DerefMut for Diagnostic {
    fn deref_mut(&mut self) -> &mut DiagnosticData {
        &mut self.0
    }
}

impl fmt::Debug for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Diagnostic")
            .field("severity", &self.severity)
            .field("code", &self.code)
            .field("message", &self.message)
            .field("file", &self.file)
            .field("span", &self.span)
            .field("help", &self.help)
            .finish()
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Diagnostic {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause
            .as_deref()
            .map(|c| c as &(dyn std::error::Error + 'static))
    }
}

impl miette::Diagnostic for Diagnostic {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.code.as_str()))
    }

    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
            Severity::Advice => miette::Severity::Advice,
        })
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display + 'a>)
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        let named = self.named.get_or_init(|| {
            let src = self.source.clone()?;
            let name = self
                .file
                .as_ref()
                .map_or_else(String::new, |f| f.display().to_string());
            Some(NamedSource::new(name, src))
        });
        named.as_ref().map(|s| s as &dyn SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        self.source.as_ref()?;
        let len = self.source.as_deref().map_or(0, str::len);
        let clamp = move |r: &Range<usize>| {
            let start = r.start.min(len);
            let end = r.end.clamp(start, len);
            (start, end - start)
        };
        let primary = self
            .span
            .iter()
            .map(move |r| LabeledSpan::new_primary_with_span(self.span_label.clone(), clamp(r)));
        let rest = self
            .labels
            .iter()
            .map(move |l| LabeledSpan::new_with_span(Some(l.message.clone()), clamp(&l.span)));
        Some(Box::new(primary.chain(rest)))
    }
}

impl From<mlx_rs::error::Exception> for Diagnostic {
    fn from(e: mlx_rs::error::Exception) -> Self {
        Diagnostic::error(code::Engine::Mlx, format!("MLX error: {e}")).with_cause(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mlx_errors_keep_their_cause_as_source() {
        let d = Diagnostic::from(mlx_rs::error::Exception::from("shape mismatch"));
        assert_eq!(d.code, "rmlx::engine::mlx");
        assert!(d.message.starts_with("MLX error: "), "{}", d.message);
        let source = std::error::Error::source(&d).expect("the MLX exception as source");
        assert!(source.to_string().contains("shape mismatch"), "{source}");
        assert_eq!(d.exit_code(), 3);
    }

    #[test]
    fn offset_at_edge_cases() {
        let text = "ab\ncd\r\nxé\n";
        assert_eq!(offset_at(text, 1, 1), 0);
        assert_eq!(offset_at(text, 1, 0), 0, "column 0 is the line start");
        assert_eq!(offset_at(text, 0, 2), 1, "line 0 is the first line");
        assert_eq!(offset_at(text, 2, 2), 4);
        assert_eq!(offset_at(text, 1, 9), 2, "past the end: before the newline");
        assert_eq!(offset_at(text, 2, 9), 5, "CRLF: before the \\r");
        assert_eq!(offset_at(text, 3, 2), 8, "the start of é");
        assert_eq!(offset_at(text, 3, 3), 8, "inside é: back to its start");
        assert_eq!(offset_at(text, 3, 4), 10);
        assert_eq!(offset_at(text, 4, 1), text.len(), "line beyond the text");
        assert_eq!(offset_at(text, 40, 7), text.len());
        assert_eq!(offset_at("", 1, 1), 0);
        assert_eq!(offset_at("x", 1, 5), 1, "last line without newline");
    }

    #[test]
    fn offset_at_matches_serde_json_positions() {
        for (text, at) in [
            ("{\"a\": }", 6),
            ("{\n  \"é\": x}", 10),
            ("[1,\r\n 2,\r\n ?]", 11),
        ] {
            let e = serde_json::from_str::<serde_json::Value>(text).unwrap_err();
            assert_eq!(offset_at(text, e.line(), e.column()), at, "{text:?}: {e}");
        }
    }

    #[test]
    fn the_code_serializes_as_its_string() {
        let d = Diagnostic::error(code::Manifest::UnknownKey, "unknown key `x`");
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["code"], "rmlx::manifest::unknown-key");
        assert_eq!(d.exit_code(), 2);
    }
}
