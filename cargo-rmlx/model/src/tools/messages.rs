//! OpenAI-style messages prepared for a chat template: text parts joined into one string (as
//! mlx-lm does), assistant `tool_calls[].function.arguments` JSON strings turned back into the
//! objects chat templates expect.

use serde_json::{Map, Value};

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
    use serde_json::json;

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
