//! Gemma 4 tool calls, as its chat template writes them: `<|tool_call>call:NAME{key:value,…}
//! <tool_call|>`, values in the template's own notation — strings between `<|"|>` markers,
//! objects `{key:value}` with bare (or `<|"|>`-quoted) keys, lists `[a,b]`, bare numbers,
//! `true`/`false`/`null`. The name streams as soon as `call:NAME{` is complete; the arguments
//! are converted to JSON and sent once the call ends. `<|tool_response>` (where the model
//! hands over to the tool) is dropped.

use serde_json::{Map, Number, Value};

use super::blocks::{BlockFormat, Blocks, Piece};
use super::{Calls, Delta};

const START: &str = "<|tool_call>";
const END: &str = "<tool_call|>";
const QUOTE: &str = "<|\"|>";
const RESPONSE: &str = "<|tool_response>";
/// Markers of the format.
pub const MARKERS: &[&str] = &[START, END, QUOTE, RESPONSE];

/// The parser.
#[derive(Debug)]
pub struct Gemma4 {
    blocks: Blocks,
    call: Option<usize>,
}

impl Default for Gemma4 {
    fn default() -> Self {
        Self {
            blocks: Blocks::new(&[START], &[END]),
            call: None,
        }
    }
}

/// `NAME` of `call:NAME{`, once the brace is there.
fn call_name(body: &str) -> Option<&str> {
    let rest = body.trim_start().strip_prefix("call:")?;
    Some(rest[..rest.find('{')?].trim())
}

impl BlockFormat for Gemma4 {
    fn blocks(&mut self) -> &mut Blocks {
        &mut self.blocks
    }

    fn handle(&mut self, piece: Piece, calls: &mut Calls, out: &mut Delta) {
        match piece {
            Piece::Text(t) => out.content.push_str(&t.replace(RESPONSE, "")),
            Piece::Open => self.call = None,
            Piece::Body(b) => self.start(&b, calls, out),
            Piece::Close(b, closed) => {
                self.start(&b, calls, out);
                let Some(i) = self.call.take() else {
                    tracing::warn!("a {START} block is not a tool call; returned as text");
                    out.content.push_str(START);
                    out.content.push_str(&b);
                    if closed {
                        out.content.push_str(END);
                    }
                    return;
                };
                let args = b.find('{').map(|at| parse_arguments(&b[at..]));
                let args = match args {
                    Some(Ok(v)) => v.to_string(),
                    Some(Err(e)) => {
                        tracing::warn!("tool call {i}: arguments not understood ({e}): {b:?}");
                        "{}".to_string()
                    }
                    None => "{}".to_string(),
                };
                calls.args(i, &args, out);
            }
        }
    }
}

impl Gemma4 {
    fn start(&mut self, body: &str, calls: &mut Calls, out: &mut Delta) {
        if self.call.is_none() {
            if let Some(name) = call_name(body) {
                self.call = Some(calls.start(name.to_string(), out));
            }
        }
    }
}

/// The arguments object `{key:value,…}` (trailing text ignored) as JSON.
pub fn parse_arguments(s: &str) -> Result<Value, String> {
    let mut p = Reader { s, at: 0 };
    let v = p.value()?;
    match v {
        Value::Object(_) => Ok(v),
        _ => Err("the arguments are not an object".into()),
    }
}

struct Reader<'a> {
    s: &'a str,
    at: usize,
}

impl<'a> Reader<'a> {
    fn rest(&self) -> &'a str {
        &self.s[self.at..]
    }

    fn skip_ws(&mut self) {
        let r = self.rest();
        self.at += r.len() - r.trim_start().len();
    }

    fn eat(&mut self, token: &str) -> bool {
        self.skip_ws();
        let found = self.rest().starts_with(token);
        if found {
            self.at += token.len();
        }
        found
    }

    fn value(&mut self) -> Result<Value, String> {
        self.skip_ws();
        if self.eat(QUOTE) {
            return self.quoted().map(Value::String);
        }
        if self.eat("{") {
            return self.object();
        }
        if self.eat("[") {
            return self.list();
        }
        self.scalar()
    }

    fn quoted(&mut self) -> Result<String, String> {
        let len = self.rest().find(QUOTE).ok_or("an unterminated string")?;
        let s = self.rest()[..len].to_string();
        self.at += len + QUOTE.len();
        Ok(s)
    }

    fn object(&mut self) -> Result<Value, String> {
        let mut map = Map::new();
        loop {
            if self.eat("}") {
                return Ok(Value::Object(map));
            }
            let key = if self.eat(QUOTE) {
                self.quoted()?
            } else {
                let len = self.rest().find(':').ok_or("a key without a value")?;
                let k = self.rest()[..len].trim().to_string();
                self.at += len;
                k
            };
            if !self.eat(":") {
                return Err(format!("no `:` after the key `{key}`"));
            }
            map.insert(key, self.value()?);
            if !self.eat(",") && !self.rest().trim_start().starts_with('}') {
                return Err("an object without its `}`".into());
            }
        }
    }

    fn list(&mut self) -> Result<Value, String> {
        let mut items = Vec::new();
        loop {
            if self.eat("]") {
                return Ok(Value::Array(items));
            }
            items.push(self.value()?);
            if !self.eat(",") && !self.rest().trim_start().starts_with(']') {
                return Err("a list without its `]`".into());
            }
        }
    }

    fn scalar(&mut self) -> Result<Value, String> {
        let r = self.rest();
        let len = r.find([',', '}', ']']).unwrap_or(r.len());
        let word = r[..len].trim();
        self.at += len;
        Ok(match word {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            "null" => Value::Null,
            _ => match serde_json::from_str::<Number>(word) {
                Ok(n) => Value::Number(n),
                Err(_) if word.is_empty() => return Err("a missing value".into()),
                Err(_) => Value::String(word.to_string()),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_template_notation_reads_as_json() {
        let s = r#"{city:<|"|>Paris, "FR"<|"|>,days:3,opts:{metric:true,tags:[<|"|>a<|"|>,null]},<|"|>k<|"|>:-1.5}"#;
        assert_eq!(
            parse_arguments(s).unwrap(),
            json!({"city": "Paris, \"FR\"", "days": 3, "opts": {"metric": true, "tags": ["a", null]}, "k": -1.5})
        );
        assert_eq!(parse_arguments("{}").unwrap(), json!({}));
        assert!(parse_arguments(r#"{city:<|"|>Par"#).is_err());
    }
}
