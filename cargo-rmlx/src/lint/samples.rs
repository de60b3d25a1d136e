//! The standard sample conversations lint renders every template with. They are written so
//! that their pieces can be recognised in a render (distinct marker texts per role and
//! part), which is how the capability summary is derived.

use serde_json::{json, Value};

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
    /// Tools, an assistant tool call with dict arguments, a tool result.
    ToolCall,
    /// User content given as a list of typed parts.
    ContentParts,
    /// Ends with the assistant's answer, generation prompt off.
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
                "a tool-call exchange (tools, an assistant tool call with dict arguments, a tool \
                 result)"
            }
            SampleKind::ContentParts => "user content given as a list of text parts",
            SampleKind::AssistantLast => {
                "a conversation ending in an assistant message (add_generation_prompt=false)"
            }
        }
    }

    /// The conversation's messages.
    pub fn messages(self) -> Vec<Value> {
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
                    "content": "",
                    "tool_calls": [{
                        "id": "call00001",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": {"city": TOOL_ARGUMENT}},
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
        (self == SampleKind::ToolCall).then(|| vec![weather_tool()])
    }

    /// `add_generation_prompt` of the sample.
    pub fn add_generation_prompt(self) -> bool {
        self != SampleKind::AssistantLast
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
