//! The standard sample conversations lint renders every template with. Each one is a chat
//! request that rmlx's server (or probe) really sends to a template: written as an OpenAI
//! client sends it ([`SampleKind::request`]: content as a list of text parts, tool-call
//! arguments as a JSON string, `content: null` next to tool calls) and then prepared by the
//! server's own message preparation ([`crate::tools::normalize_messages`]) into what the
//! template receives ([`SampleKind::messages`]), always with `add_generation_prompt = true`.
//! [`SampleKind::reach`] says whether every chat request can produce the input or only a
//! request that uses an optional capability (tools; a conversation ending in an assistant
//! message), which decides whether a template that fails on it has a defect or lacks a
//! capability.
//!
//! The marker texts (per role and part) are distinct so that their pieces can be recognised
//! in a render, which is how the capability summary is derived.

use serde_json::{json, Value};

use crate::template::TemplateOrigin;
use crate::tools::normalize_messages;

/// The seed question, as the probe asks it (DESIGN.md).
pub const SEED_QUESTION: &str = "What is the capital of France?";
/// System prompt of the `system` sample.
pub const SYSTEM_TEXT: &str = "You are a concise geography assistant.";
/// The assistant turn of the `multi-turn` sample.
pub const ASSISTANT_TEXT: &str = "Hello! How can I help you today?";
/// First user turn of the `multi-turn` sample.
pub const GREETING: &str = "Hi there!";
/// The two text parts of the `content-parts` sample.
pub const PART_A: &str = "What is the capital";
/// See [`PART_A`].
pub const PART_B: &str = " of France?";
/// Final assistant answer of the `assistant-last` sample.
pub const ANSWER_TEXT: &str = "The capital of France is Paris.";
/// Description of the sample tool (its presence shows tool definitions are rendered).
pub const TOOL_DESCRIPTION: &str = "Look up the current weather for a city.";
/// The tool call's argument value (its presence shows tool calls are rendered).
pub const TOOL_ARGUMENT: &str = "Paris";
/// A key inside the tool result (its presence shows tool results are rendered).
pub const TOOL_RESULT_KEY: &str = "temperature_c";

/// The name of the template variant that transformers renders for requests with tools
/// (`[{"name": "tool_use", …}]` in a config, `additional_chat_templates/tool_use.jinja`).
pub const TOOL_USE: &str = "tool_use";

/// Is `origin` the `tool_use` variant of a model's templates: one that only ever receives
/// requests with tools (rmlx's server renders the default template; transformers picks this
/// one when tools are passed)? True for a config entry named `tool_use` and for a file or
/// buffer whose name, without extension, is `tool_use` or ends in `-tool_use`/`_tool_use`
/// (how llama.cpp names these variants when it stores them as files).
pub fn is_tool_use_variant(origin: &TemplateOrigin) -> bool {
    let named = |stem: &str| {
        stem == TOOL_USE
            || stem
                .strip_suffix(TOOL_USE)
                .is_some_and(|head| head.ends_with('-') || head.ends_with('_'))
    };
    match origin {
        TemplateOrigin::ConfigKey { name, .. } => name.as_deref() == Some(TOOL_USE),
        TemplateOrigin::File { path } => {
            path.file_stem().and_then(|s| s.to_str()).is_some_and(named)
        }
        TemplateOrigin::Inline { name } => {
            let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
            named(base.strip_suffix(".jinja").unwrap_or(base))
        }
        TemplateOrigin::Builtin { .. } => false,
    }
}

/// Which chat requests produce a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Any chat request may (a plain question, a system prompt, an ongoing conversation; the
    /// probe's seed): a template that fails on it fails ordinary traffic.
    Every,
    /// Only requests that use an optional capability, named here ("requests with tools"):
    /// a template that fails on it lacks that capability.
    Optional(&'static str),
}

/// Which sample conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SampleKind {
    /// One user turn (the probe's seed), generation prompt on.
    SingleTurn,
    /// A system message and a user turn.
    System,
    /// user, assistant, user.
    MultiTurn,
    /// Tools, an assistant tool call, a tool result.
    ToolCall,
    /// User content sent as a list of text parts (joined into one string by the server).
    ContentParts,
    /// Ends with the assistant's answer (a client asking to continue it).
    AssistantLast,
}

impl SampleKind {
    /// Every sample, in the order lint renders them.
    pub const ALL: [SampleKind; 6] = [
        SampleKind::SingleTurn,
        SampleKind::System,
        SampleKind::MultiTurn,
        SampleKind::ToolCall,
        SampleKind::ContentParts,
        SampleKind::AssistantLast,
    ];

    /// Short stable name.
    pub fn name(self) -> &'static str {
        match self {
            SampleKind::SingleTurn => "single-turn",
            SampleKind::System => "system",
            SampleKind::MultiTurn => "multi-turn",
            SampleKind::ToolCall => "tool-call",
            SampleKind::ContentParts => "content-parts",
            SampleKind::AssistantLast => "assistant-last",
        }
    }

    /// What the conversation is, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            SampleKind::SingleTurn => "a single user turn",
            SampleKind::System => "a system message followed by a user turn",
            SampleKind::MultiTurn => "a multi-turn conversation (user, assistant, user)",
            SampleKind::ToolCall => {
                "a tool-call exchange: tools, an assistant message with a tool call, a tool \
                 result"
            }
            SampleKind::ContentParts => {
                "user content sent as a list of text parts (the server joins them into one \
                 string)"
            }
            SampleKind::AssistantLast => "a conversation ending in an assistant message",
        }
    }

    /// Which requests produce this sample.
    pub fn reach(self) -> Reach {
        self.reach_in(false)
    }

    /// Which requests produce this sample for a template that only receives requests with
    /// tools when `tool_use` is set ([`is_tool_use_variant`]): then tool calls are its
    /// ordinary traffic.
    pub fn reach_in(self, tool_use: bool) -> Reach {
        match self {
            SampleKind::ToolCall if tool_use => Reach::Every,
            SampleKind::ToolCall => Reach::Optional("chat requests with tools and tool calls"),
            SampleKind::AssistantLast => {
                Reach::Optional("chat requests whose last message is the assistant's")
            }
            _ => Reach::Every,
        }
    }

    /// The conversation as the template receives it: [`Self::request`] after the server's
    /// message preparation.
    pub fn messages(self) -> Vec<Value> {
        // The samples are fixed, valid requests (a unit test prepares every one).
        normalize_messages(&self.request())
            .unwrap_or_else(|e| panic!("sample {} is not a valid request: {e}", self.name()))
    }

    /// The conversation's messages as an OpenAI client sends them (before the server's
    /// message preparation).
    pub fn request(self) -> Vec<Value> {
        match self {
            SampleKind::SingleTurn => vec![user(SEED_QUESTION)],
            SampleKind::System => vec![
                json!({"role": "system", "content": SYSTEM_TEXT}),
                user(SEED_QUESTION),
            ],
            SampleKind::MultiTurn => vec![
                user(GREETING),
                json!({"role": "assistant", "content": ASSISTANT_TEXT}),
                user(SEED_QUESTION),
            ],
            SampleKind::ToolCall => vec![
                user("What is the weather like in the capital of France?"),
                json!({
                    "role": "assistant",
                    "content": null,
                    "tool_calls": [{
                        "id": "call00001",
                        "type": "function",
                        "function": {
                            "name": "get_weather",
                            "arguments": json!({"city": TOOL_ARGUMENT}).to_string(),
                        },
                    }],
                }),
                json!({
                    "role": "tool",
                    "tool_call_id": "call00001",
                    "name": "get_weather",
                    "content": format!("{{\"{TOOL_RESULT_KEY}\": 21}}"),
                }),
            ],
            SampleKind::ContentParts => vec![json!({
                "role": "user",
                "content": [
                    {"type": "text", "text": PART_A},
                    {"type": "text", "text": PART_B},
                ],
            })],
            SampleKind::AssistantLast => vec![
                user(SEED_QUESTION),
                json!({"role": "assistant", "content": ANSWER_TEXT}),
            ],
        }
    }

    /// The tool schemas of the sample (`None` except for the tool-call sample).
    pub fn tools(self) -> Option<Vec<Value>> {
        self.tools_in(false)
    }

    /// The tool schemas of the sample for a `tool_use` variant (`tool_use`: every sample
    /// carries them) or any other template.
    pub fn tools_in(self, tool_use: bool) -> Option<Vec<Value>> {
        (tool_use || self == SampleKind::ToolCall).then(|| vec![weather_tool()])
    }

    /// `add_generation_prompt` of the sample: always on, as the server and the probe render
    /// every chat prompt.
    pub fn add_generation_prompt(self) -> bool {
        true
    }

    /// User content as a list of text parts, passed to the template unprepared (as
    /// transformers' `apply_chat_template` passes it). rmlx never sends this: lint renders it
    /// only to describe the template for other runtimes ([`super::Capabilities`]).
    pub fn raw_content_parts() -> Vec<Value> {
        SampleKind::ContentParts.request()
    }
}

fn user(text: &str) -> Value {
    json!({"role": "user", "content": text})
}

/// The sample tool schema (OpenAI function format, as transformers passes it).
pub fn weather_tool() -> Value {
    json!({
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": TOOL_DESCRIPTION,
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "The city name."}
                },
                "required": ["city"],
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_is_a_request_the_server_accepts() {
        for kind in SampleKind::ALL {
            assert!(
                normalize_messages(&kind.request()).is_ok(),
                "{}",
                kind.name()
            );
            assert!(kind.add_generation_prompt(), "{}", kind.name());
        }
    }

    #[test]
    fn the_template_receives_prepared_messages() {
        // Text parts arrive joined, exactly as the single turn.
        assert_eq!(
            SampleKind::ContentParts.messages(),
            SampleKind::SingleTurn.messages()
        );
        assert!(SampleKind::ContentParts.request()[0]["content"].is_array());
        // Tool-call arguments arrive as an object; the client sent a JSON string.
        let sent = &SampleKind::ToolCall.request()[1]["tool_calls"][0]["function"]["arguments"];
        assert!(sent.is_string(), "{sent}");
        let got = &SampleKind::ToolCall.messages()[1]["tool_calls"][0]["function"]["arguments"];
        assert_eq!(got["city"], TOOL_ARGUMENT);
    }

    #[test]
    fn tool_use_variants_are_recognised_by_name() {
        use std::path::PathBuf;
        let file = |p: &str| TemplateOrigin::File {
            path: PathBuf::from(p),
        };
        assert!(is_tool_use_variant(&file(
            "m/additional_chat_templates/tool_use.jinja"
        )));
        assert!(is_tool_use_variant(&file(
            "t/Hermes-3-Llama-3.1-8B-tool_use.jinja"
        )));
        assert!(!is_tool_use_variant(&file("m/chat_template.jinja")));
        assert!(!is_tool_use_variant(&file("t/no_tool_use_here.jinja.bak")));
        assert!(!is_tool_use_variant(&file("t/notool_use.jinja")));
        let key = |name: Option<&str>| TemplateOrigin::ConfigKey {
            path: PathBuf::from("tokenizer_config.json"),
            key: "chat_template".into(),
            name: name.map(str::to_string),
        };
        assert!(is_tool_use_variant(&key(Some("tool_use"))));
        assert!(!is_tool_use_variant(&key(Some("default"))));
        assert!(!is_tool_use_variant(&key(None)));
        let inline = |n: &str| TemplateOrigin::Inline { name: n.into() };
        assert!(is_tool_use_variant(&inline("untitled:x_tool_use.jinja")));
        assert!(!is_tool_use_variant(&inline("untitled:chat.jinja")));
        assert_eq!(
            SampleKind::SingleTurn.tools_in(true).map(|t| t.len()),
            Some(1)
        );
        assert_eq!(SampleKind::SingleTurn.tools_in(false), None);
        assert_eq!(SampleKind::ToolCall.reach_in(true), Reach::Every);
    }

    #[test]
    fn only_tool_calls_and_a_final_assistant_message_are_optional() {
        let optional: Vec<SampleKind> = SampleKind::ALL
            .into_iter()
            .filter(|k| matches!(k.reach(), Reach::Optional(_)))
            .collect();
        assert_eq!(optional, [SampleKind::ToolCall, SampleKind::AssistantLast]);
    }
}
