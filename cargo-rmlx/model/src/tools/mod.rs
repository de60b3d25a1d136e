//! Tool calls and reasoning parsed back out of generated text, per chat-template family.
//!
//! The OpenAI API returns tool calls as `tool_calls[]` (streamed as `tool_calls[i].function.
//! arguments` fragments) and, like vLLM and llama.cpp, a thinking model's reasoning as
//! `reasoning_content`. Each family writes them its own way; one small module per format:
//!
//! | format ([`ToolFormat`]) | model output | module |
//! |---|---|---|
//! | `hermes` | `<tool_call>{"name": …, "arguments": {…}}</tool_call>` (Qwen2.5, Qwen3, SmolLM3, Hermes) | [`hermes`] |
//! | `qwen3-xml` | `<tool_call><function=NAME><parameter=K>v</parameter></function></tool_call>` (Qwen3.5, Qwen3-Coder) | [`hermes`] + [`qwen_xml`] |
//! | `llama3` | `{"name": …, "parameters": {…}}` as the whole answer, or after `<|python_tag|>` | [`llama3`] |
//! | `mistral` | `[TOOL_CALLS][{…}, …]`, `[TOOL_CALLS]NAME[ARGS]{…}` (v11+, Ministral 3), `[CALL_ID]` | [`mistral`] |
//! | `harmony` | `to=functions.NAME<|channel|>commentary json<|message|>{…}<|call|>` (GPT-OSS) | [`harmony`] |
//! | `gemma4` | `<|tool_call>call:NAME{key:<|"|>v<|"|>}<tool_call|>` | [`gemma4`] |
//!
//! [`detect`] reads the format from the chat template's source (serve and lint use it; rmlx.toml
//! can set it, `tool-format`). [`output::OutputParser`] runs a request's output through the
//! reasoning splitter ([`think`], markers from [`crate::reasoning`]) and the format's parser,
//! fed piece by piece; [`choice`] holds `tool_choice`, [`force`] the grammar that enforces `required` and named functions. [`messages`] prepares incoming messages; [`marker`] finds markers in streamed text.

pub mod blocks;
pub mod choice;
pub mod force;
pub mod gemma4;
pub mod harmony;
pub mod hermes;
pub mod json;
pub mod llama3;
pub mod marker;
pub mod messages;
pub mod mistral;
pub mod output;
pub mod qwen_xml;
pub mod think;

use serde_json::{json, Value};

pub use messages::normalize_messages;

/// One parsed call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// Function name.
    pub name: String,
    /// Arguments as a JSON string (OpenAI's representation).
    pub arguments: String,
}

impl ToolCall {
    /// The OpenAI `tool_calls[]` entry.
    pub fn to_json(&self, id: &str, index: Option<usize>) -> Value {
        let mut v = json!({
            "id": id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        });
        if let Some(i) = index {
            v["index"] = json!(i);
        }
        v
    }
}

/// A piece of one call, as streamed: the name once (the call's first delta), then argument
/// fragments whose concatenation is the call's `arguments`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolDelta {
    /// Which call (`tool_calls[i].index`).
    pub index: usize,
    /// The function name, in the call's first delta only.
    pub name: Option<String>,
    /// An arguments fragment (possibly empty).
    pub arguments: String,
}

/// What a piece of generated text adds to the answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    /// Visible answer text.
    pub content: String,
    /// Reasoning text (`reasoning_content`).
    pub reasoning: String,
    /// Tool-call pieces, in order.
    pub tool_calls: Vec<ToolDelta>,
}

impl Delta {
    /// Nothing in it.
    pub fn is_empty(&self) -> bool {
        self.content.is_empty() && self.reasoning.is_empty() && self.tool_calls.is_empty()
    }

    /// Plain answer text.
    pub fn text(content: impl Into<String>) -> Self {
        Self {
            content: content.into(),
            ..Self::default()
        }
    }

    /// Appends `other` (tool pieces of the same call merged).
    pub fn append(&mut self, other: Delta) {
        self.content.push_str(&other.content);
        self.reasoning.push_str(&other.reasoning);
        for t in other.tool_calls {
            self.push_tool(t);
        }
    }

    fn push_tool(&mut self, t: ToolDelta) {
        match self.tool_calls.last_mut() {
            Some(last) if last.index == t.index && t.name.is_none() => {
                last.arguments.push_str(&t.arguments)
            }
            _ => self.tool_calls.push(t),
        }
    }
}

/// The calls of one generation, kept in step with the deltas sent for them.
#[derive(Debug, Default)]
pub struct Calls {
    list: Vec<ToolCall>,
}

impl Calls {
    /// Announces a call; returns its index.
    pub fn start(&mut self, name: String, out: &mut Delta) -> usize {
        let index = self.list.len();
        out.push_tool(ToolDelta {
            index,
            name: Some(name.clone()),
            arguments: String::new(),
        });
        self.list.push(ToolCall {
            name,
            arguments: String::new(),
        });
        index
    }

    /// Adds an arguments fragment to call `index`.
    pub fn args(&mut self, index: usize, fragment: &str, out: &mut Delta) {
        if fragment.is_empty() {
            return;
        }
        if let Some(c) = self.list.get_mut(index) {
            c.arguments.push_str(fragment);
        }
        out.push_tool(ToolDelta {
            index,
            name: None,
            arguments: fragment.to_string(),
        });
    }

    /// Gives every call without arguments `{}`.
    pub fn fill_empty(&mut self, out: &mut Delta) {
        let empty: Vec<usize> = (0..self.list.len())
            .filter(|&i| self.list[i].arguments.is_empty())
            .collect();
        for i in empty {
            self.args(i, "{}", out);
        }
    }

    /// The calls.
    pub fn into_list(self) -> Vec<ToolCall> {
        self.list
    }

    /// How many calls were announced.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// No call announced.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

/// A parser of one tool-call format, fed the answer text piece by piece.
pub trait FormatParser: Send + std::fmt::Debug {
    /// Adds text.
    fn push(&mut self, text: &str, calls: &mut Calls, out: &mut Delta);
    /// The text ended (EOS, a stop string or the budget): flushes what was held back.
    fn finish(&mut self, calls: &mut Calls, out: &mut Delta);
}

/// A tool-call format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    /// `<tool_call>` + JSON object.
    Hermes,
    /// `<tool_call>` + `<function=…>` XML.
    QwenXml,
    /// A JSON object with `name`/`parameters`, optionally after `<|python_tag|>`.
    Llama3,
    /// `[TOOL_CALLS]`.
    Mistral,
    /// GPT-OSS harmony messages to `functions.NAME`.
    Harmony,
    /// Gemma 4's `<|tool_call>call:NAME{…}<tool_call|>`.
    Gemma4,
}

/// Every format, in detection order.
pub const FORMATS: &[ToolFormat] = &[
    ToolFormat::Harmony,
    ToolFormat::Gemma4,
    ToolFormat::QwenXml,
    ToolFormat::Hermes,
    ToolFormat::Mistral,
    ToolFormat::Llama3,
];

impl ToolFormat {
    /// The stable name (rmlx.toml's `tool-format`, lint, logs).
    pub fn name(self) -> &'static str {
        match self {
            ToolFormat::Hermes => "hermes",
            ToolFormat::QwenXml => "qwen3-xml",
            ToolFormat::Llama3 => "llama3",
            ToolFormat::Mistral => "mistral",
            ToolFormat::Harmony => "harmony",
            ToolFormat::Gemma4 => "gemma4",
        }
    }

    /// The format named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        FORMATS.iter().copied().find(|f| f.name() == name)
    }

    /// All names, for help texts.
    pub fn names() -> Vec<&'static str> {
        FORMATS.iter().map(|f| f.name()).collect()
    }

    /// Whether a template's source writes tool calls in this format.
    fn matches(self, source: &str) -> bool {
        let has = |s: &str| source.contains(s);
        match self {
            ToolFormat::Harmony => has("<|channel|>") && has("functions."),
            ToolFormat::Gemma4 => has("<|tool_call>"),
            ToolFormat::QwenXml => has("<tool_call>") && has("<function="),
            ToolFormat::Hermes => has("<tool_call>"),
            ToolFormat::Mistral => has("[TOOL_CALLS]"),
            ToolFormat::Llama3 => {
                has("<|python_tag|>") || (has("<|start_header_id|>") && has("\"parameters\""))
            }
        }
    }

    /// The strings the format's parser reads (their special tokens stay in the text).
    pub fn markers(self) -> &'static [&'static str] {
        match self {
            ToolFormat::Hermes | ToolFormat::QwenXml => hermes::MARKERS,
            ToolFormat::Llama3 => llama3::MARKERS,
            ToolFormat::Mistral => mistral::MARKERS,
            ToolFormat::Harmony => harmony::MARKERS,
            ToolFormat::Gemma4 => gemma4::MARKERS,
        }
    }

    /// A fresh parser; `tools` are the request's definitions (parameter types for formats
    /// that write values untyped).
    pub fn parser(self, tools: Option<&Value>) -> Box<dyn FormatParser> {
        match self {
            ToolFormat::Hermes | ToolFormat::QwenXml => Box::new(hermes::Hermes::new(tools)),
            ToolFormat::Llama3 => Box::new(llama3::Llama3::default()),
            ToolFormat::Mistral => Box::new(mistral::Mistral::default()),
            ToolFormat::Harmony => Box::new(harmony::Harmony::new(true)),
            ToolFormat::Gemma4 => Box::new(gemma4::Gemma4::default()),
        }
    }
}

/// The tool-call format a chat template writes, read from its source.
pub fn detect(template_source: &str) -> Option<ToolFormat> {
    FORMATS.iter().copied().find(|f| f.matches(template_source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_detected_from_their_markers_and_names_round_trip() {
        let cases = [
            (
                "{{ '<|start|>assistant to=' }}{{ 'functions.' + n + '<|channel|>commentary' }}",
                Some(ToolFormat::Harmony),
            ),
            ("{{ '<|tool_call>call:' + name }}", Some(ToolFormat::Gemma4)),
            (
                "{{ '<tool_call>\\n<function=' + name }}",
                Some(ToolFormat::QwenXml),
            ),
            (
                "{{ '<tool_call>\\n' + call | tojson }}",
                Some(ToolFormat::Hermes),
            ),
            (
                "{{ '[TOOL_CALLS]' + name + '[ARGS]' }}",
                Some(ToolFormat::Mistral),
            ),
            (
                "<|start_header_id|>{{ '\"parameters\": ' }}",
                Some(ToolFormat::Llama3),
            ),
            ("{{ messages[0].content }}", None),
        ];
        for (src, want) in cases {
            assert_eq!(detect(src), want, "{src}");
        }
        for f in FORMATS {
            assert_eq!(ToolFormat::from_name(f.name()), Some(*f));
        }
    }

    #[test]
    fn deltas_merge_argument_fragments_of_the_same_call() {
        let (mut calls, mut out) = (Calls::default(), Delta::default());
        let i = calls.start("f".into(), &mut out);
        calls.args(i, "{\"a\"", &mut out);
        calls.args(i, ": 1}", &mut out);
        let j = calls.start("g".into(), &mut out);
        calls.args(j, "{}", &mut out);
        assert_eq!(out.tool_calls.len(), 2);
        assert_eq!(out.tool_calls[0].name.as_deref(), Some("f"));
        assert_eq!(out.tool_calls[0].arguments, "{\"a\": 1}");
        assert_eq!(out.tool_calls[1].arguments, "{}");
        assert_eq!(calls.into_list()[0].arguments, "{\"a\": 1}");
    }
}
