//! `tool_choice`: `none` (no tools offered to the template, nothing parsed), `auto` (the
//! default: the model decides, calls are parsed), `required` and a named function (the model
//! must call: the grammar of [`super::force`] constrains the decoding to a call in the model's
//! format).

use serde_json::Value;

/// A validated `tool_choice`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// No tools.
    None,
    /// The model decides.
    Auto,
    /// Some tool must be called.
    Required,
    /// This function must be called.
    Function(String),
}

impl ToolChoice {
    /// Reads `tool_choice` against the request's tool definitions (`tools`, already checked
    /// to be named functions). The error is the message for the request's `tool_choice`
    /// parameter (the server answers it as an invalid-parameter error).
    pub fn parse(value: Option<&Value>, tools: Option<&[Value]>) -> Result<Self, String> {
        let choice = match value {
            None | Some(Value::Null) => return Ok(ToolChoice::Auto),
            Some(Value::String(s)) => match s.as_str() {
                "none" => return Ok(ToolChoice::None),
                "auto" => return Ok(ToolChoice::Auto),
                "required" => ToolChoice::Required,
                other => {
                    return Err(format!(
                        "`tool_choice` must be \"none\", \"auto\", \"required\" or \
                         {{\"type\": \"function\", \"function\": {{\"name\": …}}}}, got {other:?}"
                    ))
                }
            },
            Some(v) => match v.pointer("/function/name").and_then(Value::as_str) {
                Some(name) if v.get("type").and_then(Value::as_str) == Some("function") => {
                    ToolChoice::Function(name.to_string())
                }
                _ => {
                    return Err(
                        "`tool_choice` as an object must be {\"type\": \"function\", \
                         \"function\": {\"name\": …}}"
                            .into(),
                    )
                }
            },
        };
        let names: Vec<&str> = tools
            .unwrap_or_default()
            .iter()
            .filter_map(|t| t.pointer("/function/name").and_then(Value::as_str))
            .collect();
        if names.is_empty() {
            return Err("`tool_choice` asks for a tool call but `tools` is empty".into());
        }
        if let ToolChoice::Function(name) = &choice {
            if !names.contains(&name.as_str()) {
                return Err(format!(
                    "`tool_choice` names `{name}`, which is not in `tools` ({})",
                    names.join(", ")
                ));
            }
        }
        Ok(choice)
    }

    /// Whether the model must call a tool.
    pub fn forces_a_call(&self) -> bool {
        matches!(self, ToolChoice::Required | ToolChoice::Function(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tool_choice_values_are_validated_against_the_tools() {
        let tools = vec![json!({"type": "function", "function": {"name": "get_weather"}})];
        let t = Some(tools.as_slice());
        assert_eq!(ToolChoice::parse(None, t).unwrap(), ToolChoice::Auto);
        assert_eq!(
            ToolChoice::parse(Some(&json!("none")), None).unwrap(),
            ToolChoice::None
        );
        assert_eq!(
            ToolChoice::parse(Some(&json!("required")), t).unwrap(),
            ToolChoice::Required
        );
        let named = json!({"type": "function", "function": {"name": "get_weather"}});
        assert_eq!(
            ToolChoice::parse(Some(&named), t).unwrap(),
            ToolChoice::Function("get_weather".into())
        );
        let other = json!({"type": "function", "function": {"name": "nope"}});
        for bad in [json!("always"), other, json!({"name": "x"})] {
            let e = ToolChoice::parse(Some(&bad), t).unwrap_err();
            assert!(e.contains("`tool_choice`"), "{bad}: {e}");
        }
        assert!(ToolChoice::parse(Some(&json!("required")), None).is_err());
    }
}
