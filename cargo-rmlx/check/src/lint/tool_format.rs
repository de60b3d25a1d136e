//! The tool-call format and reasoning markers a template's model writes, as the server will
//! read them (`rmlx::lint::tool-format`, advice): which format [`crate::tools::detect`]
//! finds (so the server parses the calls) or that a template offering tools writes none the
//! server knows (calls would stay in the answer text unless rmlx.toml sets `tool-format`).

use crate::diagnostic::{code, Code, Diagnostic};
use crate::reasoning;
use crate::tools::{self, ToolFormat};

use super::{Capabilities, Support};

/// The tool-call format report (advice).
pub const CODE_TOOL_FORMAT: Code = Code::Lint(code::Lint::ToolFormat);

/// The report, when the template takes tools or writes a known format.
pub fn report(source: &str, caps: &Capabilities) -> Option<Diagnostic> {
    let format = tools::detect(source);
    let family = reasoning::detect_family(source);
    let takes_tools = matches!(caps.tools, Support::Yes) || matches!(caps.tool_calls, Support::Yes);
    let thinking = family.map_or(String::new(), |f| {
        format!(
            "; reasoning between `{}` markers is returned as `reasoning_content`",
            f.name
        )
    });
    let d = match format {
        Some(f) => Diagnostic::advice(
            CODE_TOOL_FORMAT,
            format!(
                "tool calls in the `{}` format: the server parses them{thinking}",
                f.name()
            ),
        )
        .with_span(marker_span(source, f), "the format's marker"),
        None if takes_tools => Diagnostic::advice(
            CODE_TOOL_FORMAT,
            format!(
                "the template takes tools but writes no tool-call format the server knows: \
                 calls are read as `hermes`{thinking}"
            ),
        )
        .with_help(format!(
            "set `tool-format` for the model in rmlx.toml to one of: {}",
            ToolFormat::names().join(", ")
        )),
        None => return None,
    };
    Some(d)
}

/// Where the format's first marker occurs in the source.
fn marker_span(source: &str, f: ToolFormat) -> std::ops::Range<usize> {
    f.markers()
        .iter()
        .filter_map(|m| source.find(m).map(|at| at..at + m.len()))
        .min_by_key(|r| r.start)
        .unwrap_or(0..0)
}
