//! The XML tool-call body of Qwen3.5 and Qwen3-Coder inside `<tool_call>`:
//! `<function=NAME>\n<parameter=KEY>\nvalue\n</parameter>\n…</function>`. Values are written
//! untyped (strings raw, objects and lists as JSON, other scalars as text), so each value is
//! typed by the request's tool definition when it names the parameter's type, else read as
//! JSON when it parses as JSON, else kept as a string. The arguments object streams one
//! parameter at a time.

use std::collections::HashMap;

use serde_json::Value;

use super::{Calls, Delta};

const FUNCTION: &str = "<function=";
const PARAMETER: &str = "<parameter=";
const PARAMETER_END: &str = "</parameter>";

/// Declared parameter types: (function, parameter) → JSON-schema `type`.
#[derive(Debug, Default)]
pub struct ParamTypes(HashMap<(String, String), String>);

impl ParamTypes {
    /// The types declared in a request's `tools`.
    pub fn new(tools: Option<&Value>) -> Self {
        let mut map = HashMap::new();
        for def in tools.and_then(Value::as_array).into_iter().flatten() {
            let f = def.get("function").unwrap_or(def);
            let Some(name) = f.get("name").and_then(Value::as_str) else {
                continue;
            };
            let props = f
                .pointer("/parameters/properties")
                .and_then(Value::as_object);
            for (p, schema) in props.into_iter().flatten() {
                if let Some(t) = schema.get("type").and_then(Value::as_str) {
                    map.insert((name.to_string(), p.clone()), t.to_string());
                }
            }
        }
        Self(map)
    }

    /// The JSON value of a parameter written as `raw`.
    pub fn value(&self, function: &str, param: &str, raw: &str) -> Value {
        let declared = self.0.get(&(function.to_string(), param.to_string()));
        if declared.is_some_and(|t| t == "string") {
            return Value::String(raw.to_string());
        }
        match raw {
            "True" => return Value::Bool(true),
            "False" => return Value::Bool(false),
            "None" => return Value::Null,
            _ => {}
        }
        serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()))
    }
}

/// One XML call being generated.
#[derive(Debug, Default)]
pub struct XmlCall {
    call: Option<(usize, String)>,
    /// Parameters already forwarded.
    sent: usize,
}

impl XmlCall {
    /// Feeds the body's whole text so far.
    pub fn update(&mut self, body: &str, types: &ParamTypes, calls: &mut Calls, out: &mut Delta) {
        if self.call.is_none() {
            let Some(name) = function_name(body) else {
                return;
            };
            self.call = Some((calls.start(name.to_string(), out), name.to_string()));
        }
        let Some((index, name)) = &self.call else {
            return;
        };
        for (key, raw) in parameters(body).into_iter().skip(self.sent) {
            let v = types.value(name, &key, &raw);
            let sep = if self.sent == 0 { "{" } else { ", " };
            let fragment = format!("{sep}{}: {v}", Value::String(key));
            calls.args(*index, &fragment, out);
            self.sent += 1;
        }
    }

    /// The body ended; `false` when it held no function.
    pub fn finish(
        &mut self,
        body: &str,
        types: &ParamTypes,
        calls: &mut Calls,
        out: &mut Delta,
    ) -> bool {
        self.update(body, types, calls, out);
        let Some((index, _)) = &self.call else {
            return false;
        };
        let close = if self.sent == 0 { "{}" } else { "}" };
        calls.args(*index, close, out);
        true
    }
}

/// The function name, once its tag is complete.
fn function_name(body: &str) -> Option<&str> {
    let start = body.find(FUNCTION)? + FUNCTION.len();
    let len = body[start..].find('>')?;
    Some(body[start..start + len].trim())
}

/// The complete parameters in `body`, in order: (name, raw value without the newline after
/// the opening tag and before the closing one).
fn parameters(body: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(p) = rest.find(PARAMETER) {
        let after = &rest[p + PARAMETER.len()..];
        let Some(gt) = after.find('>') else { break };
        let value = &after[gt + 1..];
        let Some(end) = value.find(PARAMETER_END) else {
            break;
        };
        let raw = value[..end].strip_prefix('\n').unwrap_or(&value[..end]);
        let raw = raw.strip_suffix('\n').unwrap_or(raw);
        out.push((after[..gt].trim().to_string(), raw.to_string()));
        rest = &value[end + PARAMETER_END.len()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_are_typed_by_the_declaration_then_by_json() {
        let tools = json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"zip": {"type": "string"}, "n": {"type": "integer"}}}}}]);
        let t = ParamTypes::new(Some(&tools));
        assert_eq!(t.value("f", "zip", "01234"), json!("01234"));
        assert_eq!(t.value("f", "n", "5"), json!(5));
        assert_eq!(t.value("g", "x", "[1, 2]"), json!([1, 2]));
        assert_eq!(t.value("g", "x", "True"), json!(true));
        assert_eq!(t.value("g", "x", "Paris, France"), json!("Paris, France"));
    }
}
