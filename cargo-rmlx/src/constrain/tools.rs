//! Grammars that force a tool call, for `tool_choice: "required"` and a named function.
//!
//! The agreed entry point for the server's tool handling is [`tool_call_spec`]:
//! `tool_call_spec(format, tools, choice) -> Result<ConstraintSpec>`, where `tools` is the
//! request's OpenAI `tools` list (`[{"type": "function", "function": {"name", "parameters"}}]`)
//! and `choice` says which calls may be made. The result compiles like any other constraint
//! ([`GuideEnv::compile`](super::GuideEnv::compile)). Each call's arguments are constrained by
//! the function's `parameters` schema, its name by the list.

use serde_json::{json, Value};

use super::ConstraintSpec;
use crate::diagnostic::{Diagnostic, Result};

/// How a chat family writes a tool call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolCallFormat {
    /// Hermes / Qwen 2.5 / Qwen 3: `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>`,
    /// several calls separated by a newline.
    Hermes,
}

/// Which calls the model must make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolChoice<'a> {
    /// `tool_choice: "required"`: one or more calls of any listed function.
    Required,
    /// `tool_choice: {"type": "function", "function": {"name": …}}`: exactly one call of it.
    Named(&'a str),
}

/// A constraint forcing `format`'s tool-call shape over `tools` as `choice` asks.
pub fn tool_call_spec(
    format: ToolCallFormat,
    tools: &[Value],
    choice: ToolChoice<'_>,
) -> Result<ConstraintSpec> {
    let mut calls = Vec::new();
    for (i, tool) in tools.iter().enumerate() {
        let function = tool.get("function").unwrap_or(tool);
        let name = function
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                Diagnostic::error(
                    "rmlx::constrain::tools",
                    format!("tools[{i}] has no function name"),
                )
            })?;
        if matches!(choice, ToolChoice::Named(n) if n != name) {
            continue;
        }
        let parameters = function
            .get("parameters")
            .filter(|p| p.is_object())
            .cloned()
            .unwrap_or_else(|| json!({"type": "object"}));
        calls.push(json!({
            "type": "object",
            "properties": {"name": {"const": name}, "arguments": parameters},
            "required": ["name", "arguments"],
            "additionalProperties": false,
        }));
    }
    if calls.is_empty() {
        let msg = match choice {
            ToolChoice::Named(n) => {
                format!("`tool_choice` names `{n}`, which `tools` does not list")
            }
            ToolChoice::Required => "`tool_choice: \"required\"` needs at least one tool".into(),
        };
        return Err(Diagnostic::error("rmlx::constrain::tools", msg));
    }
    let schema = super::with_layout(if calls.len() == 1 {
        calls.remove(0)
    } else {
        json!({"anyOf": calls})
    });
    let repeat = match choice {
        ToolChoice::Required => "(\"\\n\" call)*",
        ToolChoice::Named(_) => "",
    };
    let grammar = match format {
        ToolCallFormat::Hermes => format!(
            "start: call {repeat}\ncall: \"<tool_call>\\n\" body \"\\n</tool_call>\"\nbody: %json {schema}\n"
        ),
    };
    Ok(ConstraintSpec::Lark(grammar))
}
