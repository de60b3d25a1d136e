//! A request's output parser: the reasoning splitter ([`super::think`]) in front of the tool-call
//! format's parser, or harmony's parser alone (it carries both). [`OutputSpec`] is decided once
//! per loaded model from its chat template (and rmlx.toml's `tool-format`).

use serde_json::Value;

use super::harmony::Harmony;
use super::think::ThinkSplit;
use super::{detect, Calls, Delta, FormatParser, ToolCall, ToolFormat};
use crate::reasoning::{self, Family};

/// What a model's output looks like.
#[derive(Debug, Clone, Copy, Default)]
pub struct OutputSpec {
    /// The tool-call format.
    pub tool_format: Option<ToolFormat>,
    /// The reasoning family.
    pub reasoning: Option<Family>,
}

impl OutputSpec {
    /// The spec of a template (`configured` overrides the detected tool-call format).
    pub fn for_template(name: &str, source: &str, configured: Option<ToolFormat>) -> Self {
        let detected = detect(source);
        let tool_format = configured.or(detected);
        match (configured, detected) {
            (Some(c), d) if Some(c) != d => tracing::info!(
                "{name}: tool-call format `{}` (set in rmlx.toml; the template suggests {})",
                c.name(),
                d.map_or("none", ToolFormat::name)
            ),
            (_, Some(d)) => tracing::debug!("{name}: tool-call format `{}`", d.name()),
            (_, None) => tracing::debug!(
                "{name}: the chat template shows no known tool-call format; requests with tools \
                 are parsed as `hermes` (set `tool-format` in rmlx.toml to choose)"
            ),
        }
        let reasoning = reasoning::detect_family(source);
        if let Some(f) = reasoning {
            tracing::debug!("{name}: reasoning markers `{}`", f.name);
        }
        Self {
            tool_format,
            reasoning,
        }
    }

    fn harmony(&self) -> bool {
        self.tool_format == Some(ToolFormat::Harmony)
            || self.reasoning.is_some_and(|f| f.name == "harmony")
    }
}

/// The parser of one request's output.
#[derive(Debug)]
pub struct OutputParser {
    think: Option<ThinkSplit>,
    format: Option<Box<dyn FormatParser>>,
    markers: Vec<&'static str>,
    calls: Calls,
}

impl OutputParser {
    /// No parsing: the text is the answer (completions, `tool_choice: "none"` without
    /// reasoning).
    pub fn plain() -> Self {
        Self {
            think: None,
            format: None,
            markers: Vec::new(),
            calls: Calls::default(),
        }
    }

    /// The parser of a chat request: `tools` are its definitions when tool calls are parsed,
    /// `prompt` the rendered prompt (it says whether the turn starts inside the reasoning).
    pub fn chat(spec: &OutputSpec, tools: Option<&Value>, prompt: &str) -> Self {
        let mut p = Self::plain();
        if spec.harmony() {
            p.format = Some(Box::new(Harmony::new(tools.is_some())));
            p.markers.extend(super::harmony::MARKERS);
            return p;
        }
        if let Some(f) = spec.reasoning {
            p.think = Some(ThinkSplit::new(f, prompt));
            p.markers.extend(f.open.iter().chain(f.close));
        }
        if tools.is_some() {
            let format = spec.tool_format.unwrap_or(ToolFormat::Hermes);
            p.format = Some(format.parser(tools));
            p.markers.extend(format.markers());
        }
        p
    }

    /// The strings whose special tokens must stay in the decoded text.
    pub fn markers(&self) -> Vec<&'static str> {
        self.markers.clone()
    }

    /// Adds generated text.
    pub fn push(&mut self, text: &str) -> Delta {
        let mut out = Delta::default();
        if text.is_empty() {
            return out;
        }
        let answer = match &mut self.think {
            Some(t) => t.push(text, &mut out),
            None => text.to_string(),
        };
        self.answer(&answer, &mut out);
        out
    }

    /// The text ended: the rest, and the tool calls.
    pub fn finish(&mut self) -> (Delta, Vec<ToolCall>) {
        let mut out = Delta::default();
        if let Some(t) = &mut self.think {
            let answer = t.finish(&mut out);
            self.answer(&answer, &mut out);
        }
        if let Some(f) = &mut self.format {
            f.finish(&mut self.calls, &mut out);
        }
        (out, std::mem::take(&mut self.calls).into_list())
    }

    fn answer(&mut self, text: &str, out: &mut Delta) {
        match &mut self.format {
            Some(f) if !text.is_empty() => f.push(text, &mut self.calls, out),
            Some(_) => {}
            None => out.content.push_str(text),
        }
    }
}
