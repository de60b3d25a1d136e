//! Tool calls parsed back out of generated text.
//!
//! Supported format: Qwen2.5 / Hermes, one JSON object per call between `<tool_call>` and
//! `</tool_call>` (`{"name": …, "arguments": {…}}`). The OpenAI API wants `arguments` as a
//! JSON *string*; incoming assistant messages carry it that way, while chat templates expect
//! an object, so [`normalize_messages`] converts it back before rendering.

use serde_json::{json, Map, Value};

/// The start marker of a tool call.
pub const TOOL_CALL_START: &str = "<tool_call>";
/// The end marker of a tool call.
pub const TOOL_CALL_END: &str = "</tool_call>";

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

/// Parses the captured text (starting at the first `<tool_call>`): the calls, and the text
/// outside them. `None` when a block is not a valid call (the caller then returns the text
/// as content).
pub fn parse(captured: &str) -> Option<(Vec<ToolCall>, String)> {
    let mut calls = Vec::new();
    let mut rest = String::new();
    let mut s = captured;
    while let Some(start) = s.find(TOOL_CALL_START) {
        rest.push_str(&s[..start]);
        let body_start = start + TOOL_CALL_START.len();
        // A model that stops before the end marker (EOS, length) still meant the call.
        let (body, next) = match s[body_start..].find(TOOL_CALL_END) {
            Some(end) => (
                &s[body_start..body_start + end],
                body_start + end + TOOL_CALL_END.len(),
            ),
            None => (&s[body_start..], s.len()),
        };
        calls.push(parse_call(body.trim())?);
        s = &s[next..];
    }
    rest.push_str(s);
    if calls.is_empty() {
        return None;
    }
    Some((calls, rest.trim().to_string()))
}

fn parse_call(body: &str) -> Option<ToolCall> {
    let v: Value = serde_json::from_str(body).ok()?;
    let obj = v.as_object()?;
    let name = obj.get("name")?.as_str()?.to_string();
    let arguments = match obj.get("arguments").or_else(|| obj.get("parameters")) {
        None | Some(Value::Null) => "{}".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    Some(ToolCall { name, arguments })
}

/// Prepares OpenAI-style messages for a chat template: text parts joined into one string
/// (as mlx-lm does), assistant `tool_calls[].function.arguments` strings turned back into
/// objects. Errors name the offending message.
pub fn normalize_messages(messages: &[Value]) -> Result<Vec<Value>, String> {
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let Some(obj) = m.as_object() else {
            return Err(format!("messages[{i}] is not an object"));
        };
        match obj.get("role") {
            Some(Value::String(_)) => {}
            _ => return Err(format!("messages[{i}].role is missing or not a string")),
        }
        let mut obj: Map<String, Value> = obj.clone();
        match obj.get("content") {
            None | Some(Value::Null) | Some(Value::String(_)) => {}
            Some(Value::Array(parts)) => {
                let mut text = String::new();
                for (j, p) in parts.iter().enumerate() {
                    let kind = p.get("type").and_then(Value::as_str);
                    match (kind, p.get("text").and_then(Value::as_str)) {
                        (Some("text") | None, Some(t)) => text.push_str(t),
                        (Some(k), _) => {
                            return Err(format!(
                                "messages[{i}].content[{j}] has type `{k}`; only text parts are \
                                 supported"
                            ))
                        }
                        (None, None) => {
                            return Err(format!("messages[{i}].content[{j}] has no `text`"))
                        }
                    }
                }
                obj.insert("content".into(), Value::String(text));
            }
            Some(_) => {
                return Err(format!(
                    "messages[{i}].content must be a string, null or a list of text parts"
                ))
            }
        }
        if let Some(Value::Array(calls)) = obj.get_mut("tool_calls") {
            for call in calls {
                if let Some(f) = call.get_mut("function").and_then(Value::as_object_mut) {
                    if let Some(Value::String(args)) = f.get("arguments") {
                        if let Ok(parsed @ Value::Object(_)) = serde_json::from_str(args) {
                            f.insert("arguments".into(), parsed);
                        }
                    }
                }
            }
        }
        out.push(Value::Object(obj));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_qwen_tool_calls() {
        let text = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"now\"}\n</tool_call>";
        let (calls, rest) = parse(text).unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].name, "get_weather");
        assert_eq!(calls[0].arguments, r#"{"city":"Paris"}"#);
        assert_eq!(calls[1].arguments, "{}");
        assert_eq!(rest, "");
    }

    #[test]
    fn unterminated_call_still_parses_and_garbage_does_not() {
        let (calls, _) = parse("<tool_call>{\"name\": \"f\", \"arguments\": {}}").unwrap();
        assert_eq!(calls[0].name, "f");
        assert!(parse("<tool_call>not json</tool_call>").is_none());
    }

    #[test]
    fn normalizes_parts_and_arguments() {
        let msgs = vec![
            json!({"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}),
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}}]}),
        ];
        let out = normalize_messages(&msgs).unwrap();
        assert_eq!(out[0]["content"], "ab");
        assert_eq!(out[1]["tool_calls"][0]["function"]["arguments"]["x"], 1);
        let bad =
            vec![json!({"role": "user", "content": [{"type": "image_url", "image_url": {}}]})];
        assert!(normalize_messages(&bad).unwrap_err().contains("image_url"));
        assert!(normalize_messages(&[json!({"content": "x"})]).is_err());
    }
}
