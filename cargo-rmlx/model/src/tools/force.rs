//! `tool_choice: "required"` and a named function, enforced by constrained decoding: the
//! grammar (llguidance's Lark dialect) that makes the model write a call in its family's own
//! format, so the format's parser reads it back like any other call.
//!
//! Each call's name is one of the offered functions (the named one only, for a named
//! choice) and its arguments follow that function's `parameters` schema — as JSON for the
//! JSON formats (the layout `json.dumps` writes, as templates render arguments), as
//! `<parameter=K>` blocks for `qwen3-xml` (each value's type from the schema), in Gemma 4's
//! own notation for `gemma4`. `required` allows several calls where the format has a way to
//! write them (hermes, qwen3-xml, mistral, gemma4); llama3 and harmony write one. The grammar
//! ends with the call: the model's end-of-turn token (EOS) is then the only choice. Marker
//! strings are spelled by [`GuideEnv::spell`](crate::constrain::GuideEnv::spell) (a special
//! token by id), so the grammar produces exactly the tokens the template renders.

use serde_json::{json, Map, Value};

use super::choice::ToolChoice;
use super::output::OutputSpec;
use super::ToolFormat;
use crate::constrain::{lark_string, with_layout, ConstraintSpec};
use crate::diagnostic::{code, Diagnostic, Result};
use crate::reasoning::{Channel, Family};

/// The text of a JSON integer and number, as regular expressions.
const INTEGER: &str = r"-?[0-9]+";
const NUMBER: &str = r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?";

/// A function a forced call may name: its name and its `parameters` schema.
struct Function<'a> {
    name: &'a str,
    parameters: Value,
}

/// What a forced call is generated for: the model's output formats (tool calls, reasoning),
/// its chat template's source (it tells Mistral's two spellings apart) and the rendered
/// prompt (it says whether the turn starts inside a reasoning section).
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// Tool-call and reasoning formats.
    pub spec: &'a OutputSpec,
    /// The chat template's source.
    pub source: &'a str,
    /// The rendered prompt.
    pub prompt: &'a str,
}

/// The grammar forcing `choice` over `tools` for `target`; `spell` writes a marker string
/// as a grammar element. A model that reasons first may still do so (its reasoning section,
/// then the call); one whose prompt opened a reasoning section must close it first.
pub fn forced_call(
    target: Target<'_>,
    tools: &[Value],
    choice: &ToolChoice,
    spell: &dyn Fn(&str) -> String,
) -> Result<ConstraintSpec> {
    let functions = functions(tools, choice)?;
    let many = matches!(choice, ToolChoice::Required);
    let mut g = Grammar {
        spell,
        rules: Vec::new(),
    };
    let format = target.spec.tool_format.unwrap_or(ToolFormat::Hermes);
    let calls = match format {
        ToolFormat::Hermes => g.hermes(&functions, many),
        ToolFormat::QwenXml => g.qwen_xml(&functions, many),
        ToolFormat::Llama3 => g.llama3(&functions),
        ToolFormat::Mistral if target.source.contains("[ARGS]") => {
            g.mistral_named(&functions, many)
        }
        ToolFormat::Mistral => g.mistral_list(&functions, many),
        ToolFormat::Harmony => g.harmony(&functions),
        ToolFormat::Gemma4 => g.gemma4(&functions, many),
    };
    let prefix = match target.spec.reasoning {
        Some(family) if family.name == "harmony" => g.harmony_analysis(),
        Some(family) => g.reasoning(&family, family.initial(target.prompt)),
        None => String::new(),
    };
    let mut text = format!("start: {prefix} {calls}\n");
    for rule in g.rules {
        text.push_str(&rule);
        text.push('\n');
    }
    Ok(ConstraintSpec::Lark(text))
}

/// The functions `choice` allows, in the order of `tools`.
fn functions<'a>(tools: &'a [Value], choice: &ToolChoice) -> Result<Vec<Function<'a>>> {
    let mut out = Vec::new();
    for (i, tool) in tools.iter().enumerate() {
        let function = tool.get("function").unwrap_or(tool);
        let name = function
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| error(format!("tools[{i}] has no function name")))?;
        if matches!(choice, ToolChoice::Function(n) if n != name) {
            continue;
        }
        let parameters = function
            .get("parameters")
            .filter(|p| p.is_object())
            .cloned()
            .unwrap_or_else(|| json!({"type": "object"}));
        out.push(Function { name, parameters });
    }
    match (out.is_empty(), choice) {
        (false, _) => Ok(out),
        (true, ToolChoice::Function(n)) => Err(error(format!(
            "`tool_choice` names `{n}`, which `tools` does not list"
        ))),
        (true, _) => Err(error(
            "`tool_choice` asks for a call but `tools` is empty".into(),
        )),
    }
}

fn error(message: String) -> Diagnostic {
    Diagnostic::error(code::Constrain::Tools, message)
}

/// A JSON schema as a Lark element (llguidance's `%json`), in `json.dumps`' layout.
fn json_element(schema: Value) -> String {
    format!("%json {}", with_layout(schema))
}

/// The OpenAI-style call object `{"name": NAME, <args_key>: {…}}` of one of `functions`,
/// with an optional last member `extra`.
fn call_object(functions: &[Function<'_>], args_key: &str, extra: Option<(&str, Value)>) -> Value {
    let mut calls: Vec<Value> = functions
        .iter()
        .map(|f| {
            let mut properties = Map::new();
            properties.insert("name".into(), json!({"const": f.name}));
            properties.insert(args_key.into(), f.parameters.clone());
            if let Some((key, schema)) = &extra {
                properties.insert(key.to_string(), schema.clone());
            }
            json!({
                "type": "object",
                "properties": properties,
                "required": ["name", args_key],
                "additionalProperties": false,
            })
        })
        .collect();
    if calls.len() == 1 {
        calls.remove(0)
    } else {
        json!({"anyOf": calls})
    }
}

/// The grammar being written: named rules after `start`.
struct Grammar<'s> {
    spell: &'s dyn Fn(&str) -> String,
    rules: Vec<String>,
}

impl Grammar<'_> {
    fn spell(&self, text: &str) -> String {
        (self.spell)(text)
    }

    /// Adds `name: body` and returns `name`.
    fn rule(&mut self, name: String, body: String) -> String {
        self.rules.push(format!("{name}: {body}"));
        name
    }

    /// `one`, or one or more separated by `sep` when `many`.
    fn repeat(one: &str, sep: &str, many: bool) -> String {
        if many {
            format!("{one} ({sep} {one})*")
        } else {
            one.to_string()
        }
    }

    /// `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>`, calls separated by `\n`.
    fn hermes(&mut self, functions: &[Function<'_>], many: bool) -> String {
        let body = format!(
            "{} \"\\n\" {} \"\\n\" {}",
            self.spell("<tool_call>"),
            json_element(call_object(functions, "arguments", None)),
            self.spell("</tool_call>"),
        );
        let call = self.rule("call".into(), body);
        Self::repeat(&call, "\"\\n\"", many)
    }

    /// `<tool_call>\n<function=NAME>\n<parameter=K>\nV\n</parameter>\n…</function>\n</tool_call>`.
    fn qwen_xml(&mut self, functions: &[Function<'_>], many: bool) -> String {
        let mut alternatives = Vec::new();
        for (i, f) in functions.iter().enumerate() {
            let params = properties(&f.parameters)
                .into_iter()
                .enumerate()
                .map(|(j, (key, schema, required))| {
                    let value = xml_value(&schema);
                    let body = format!("{} {value}", lark_string(&format!("<parameter={key}>\n")));
                    let rule = self.rule(format!("p{i}_{j}"), body);
                    if required {
                        rule
                    } else {
                        format!("{rule}?")
                    }
                })
                .collect::<Vec<_>>()
                .join(" ");
            let open = lark_string(&format!("<function={}>\n", f.name));
            alternatives
                .push(self.rule(format!("f{i}"), format!("{open} {params} \"</function>\"")));
        }
        let body = format!(
            "{} \"\\n\" ({}) \"\\n\" {}",
            self.spell("<tool_call>"),
            alternatives.join(" | "),
            self.spell("</tool_call>"),
        );
        let call = self.rule("call".into(), body);
        Self::repeat(&call, "\"\\n\"", many)
    }

    /// `{"name": …, "parameters": {…}}`: Llama 3's templates take one call per turn.
    fn llama3(&mut self, functions: &[Function<'_>]) -> String {
        json_element(call_object(functions, "parameters", None))
    }

    /// `[TOOL_CALLS]NAME[ARGS]{…}`, once per call (v11+ templates), with the
    /// `[CALL_ID]id` that some render between name and arguments optional.
    fn mistral_named(&mut self, functions: &[Function<'_>], many: bool) -> String {
        let (open, args) = (self.spell("[TOOL_CALLS]"), self.spell("[ARGS]"));
        let call_id = format!("({} /[A-Za-z0-9]{{9}}/)?", self.spell("[CALL_ID]"));
        let alternatives: Vec<String> = functions
            .iter()
            .map(|f| {
                format!(
                    "{} {call_id} {args} {}",
                    lark_string(f.name),
                    json_element(f.parameters.clone())
                )
            })
            .collect();
        let call = self.rule(
            "call".into(),
            format!("{open} ({})", alternatives.join(" | ")),
        );
        if many {
            format!("{call}+")
        } else {
            call
        }
    }

    /// `[TOOL_CALLS] [{"name": …, "arguments": {…}}, …]` (v0.3 and Nemo templates; the space
    /// and each call's 9-character `id`, which the templates render, optional).
    fn mistral_list(&mut self, functions: &[Function<'_>], many: bool) -> String {
        let id = json!({"type": "string", "pattern": "^[A-Za-z0-9]{9}$"});
        let item = call_object(functions, "arguments", Some(("id", id)));
        let mut list = json!({"type": "array", "items": item, "minItems": 1});
        if !many {
            list["maxItems"] = json!(1);
        }
        format!(
            "{} \" \"? {}",
            self.spell("[TOOL_CALLS]"),
            json_element(list)
        )
    }

    /// One call to `functions.NAME`, its arguments as JSON, in either header order harmony
    /// has: `<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>{…}` (how the
    /// model writes it) or ` to=functions.NAME<|channel|>commentary json<|message|>{…}` (how
    /// the chat template renders one). The generation prompt has opened the message
    /// (`<|start|>assistant`); `<|call|>` is EOS.
    fn harmony(&mut self, functions: &[Function<'_>]) -> String {
        let (channel, message) = (self.spell("<|channel|>"), self.spell("<|message|>"));
        let constrain = self.spell("<|constrain|>");
        let mut alternatives = Vec::new();
        for f in functions {
            let to = lark_string(&format!("to=functions.{}", f.name));
            let args = json_element(f.parameters.clone());
            alternatives.push(format!(
                "{channel} \"commentary \" {to} \" \" {constrain} \"json\" {message} {args}"
            ));
            alternatives.push(format!(
                "\" \" {to} {channel} \"commentary json\" {message} {args}"
            ));
        }
        format!("({})", alternatives.join(" | "))
    }

    /// Harmony's optional analysis message before the call:
    /// `<|channel|>analysis<|message|>…<|end|><|start|>assistant`.
    fn harmony_analysis(&mut self) -> String {
        let end = self.spell("<|end|>");
        self.rules.push(format!("analysis[stop={end}]: /(.|\\n)*/"));
        format!(
            "({} \"analysis\" {} analysis {} \"assistant\")?",
            self.spell("<|channel|>"),
            self.spell("<|message|>"),
            self.spell("<|start|>"),
        )
    }

    /// A reasoning section before the call (`<think>…</think>`, Gemma 4's thought channel,
    /// `[THINK]…[/THINK]`): optional, or only its rest when the prompt opened it.
    fn reasoning(&mut self, family: &Family, starts: Channel) -> String {
        let (Some(open), Some(close)) = (family.open.first(), family.close.first()) else {
            return String::new();
        };
        let close = self.spell(close);
        self.rules
            .push(format!("thought[stop={close}]: /(.|\\n)*/"));
        // the blank after the section as literals: a whitespace lexeme there refuses the call
        // that follows in llguidance 1.9
        let blank = "(\"\\n\" | \" \")*";
        match starts {
            Channel::Reasoning => format!("thought {blank}"),
            _ => format!("({} thought {blank})?", self.spell(open)),
        }
    }

    /// `<|tool_call>call:NAME{key:value,…}<tool_call|>`, calls back to back.
    fn gemma4(&mut self, functions: &[Function<'_>], many: bool) -> String {
        let mut notation = Gemma4Notation::new(self);
        let alternatives: Vec<String> = functions
            .iter()
            .map(|f| {
                let args = notation.object(&f.parameters);
                format!("{} {args}", lark_string(&format!("call:{}", f.name)))
            })
            .collect();
        notation.finish();
        let body = format!(
            "{} ({}) {}",
            self.spell("<|tool_call>"),
            alternatives.join(" | "),
            self.spell("<tool_call|>")
        );
        let call = self.rule("call".into(), body);
        if many {
            format!("{call}+")
        } else {
            call
        }
    }
}

/// An object schema's properties in declaration order: (key, schema, required).
fn properties(schema: &Value) -> Vec<(String, Value, bool)> {
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| {
            p.iter()
                .map(|(k, v)| (k.clone(), v.clone(), required.contains(&k.as_str())))
                .collect()
        })
        .unwrap_or_default()
}

/// A `qwen3-xml` parameter value and its closing `\n</parameter>\n`, as one lexeme: the value
/// holds no `<`, so the first `<` starts the closing tag. Numbers, integers and booleans are
/// written as their JSON text; everything else (strings raw, objects and lists as JSON) free.
fn xml_value(schema: &Value) -> String {
    let value = match schema.get("type").and_then(Value::as_str) {
        Some("integer") => INTEGER,
        Some("number") => NUMBER,
        Some("boolean") => "(true|false)",
        _ => "[^<]*",
    };
    format!(r"/{value}\n<\/parameter>\n/")
}

/// Gemma 4's argument notation as grammar rules: strings between `<|"|>` markers, bare keys,
/// `{k:v,…}`, `[a,b]`, bare numbers and `true`/`false`/`null`, following a JSON schema where
/// it says a type, free values where it does not.
struct Gemma4Notation<'g, 's> {
    grammar: &'g mut Grammar<'s>,
    quote: String,
    next: usize,
    free_used: bool,
}

impl<'g, 's> Gemma4Notation<'g, 's> {
    fn new(grammar: &'g mut Grammar<'s>) -> Self {
        let quote = grammar.spell("<|\"|>");
        Self {
            grammar,
            quote,
            next: 0,
            free_used: false,
        }
    }

    fn fresh(&mut self, body: String) -> String {
        self.next += 1;
        self.grammar.rule(format!("g{}", self.next), body)
    }

    /// A value of `schema`.
    fn value(&mut self, schema: &Value) -> String {
        let q = self.quote.clone();
        if let Some(choices) = schema.get("enum").and_then(Value::as_array) {
            let alts: Vec<String> = choices.iter().map(|c| self.literal(c)).collect();
            if !alts.is_empty() {
                return format!("({})", alts.join(" | "));
            }
        }
        match schema.get("type").and_then(Value::as_str) {
            Some("string") => format!("{q} /[^<]*/ {q}"),
            Some("integer") => format!("/{INTEGER}/"),
            Some("number") => format!("/{NUMBER}/"),
            Some("boolean") => "(\"true\" | \"false\")".into(),
            Some("null") => "\"null\"".into(),
            Some("array") => {
                let item = match schema.get("items") {
                    Some(items) => self.value(items),
                    None => self.free(),
                };
                let item = self.fresh(item);
                format!("\"[\" ({item} (\",\" {item})*)? \"]\"")
            }
            Some("object") if schema.get("properties").is_some() => self.object(schema),
            _ => self.free(),
        }
    }

    /// An enum member as the notation writes it.
    fn literal(&self, v: &Value) -> String {
        match v {
            Value::String(s) => format!("{} {} {}", self.quote, lark_string(s), self.quote),
            other => lark_string(&other.to_string()),
        }
    }

    /// `{k:v,…}` over the schema's properties in order, optional ones skippable.
    fn object(&mut self, schema: &Value) -> String {
        let props = properties(schema);
        if props.is_empty() {
            return format!("\"{{\" ({})? \"}}\"", self.free_members());
        }
        // `after`: the properties from i on once something was written (each after a comma);
        // `first`: the same before anything was written. `None`: nothing left to write.
        let (mut after, mut first): (Option<String>, Option<String>) = (None, None);
        for (key, sub, required) in props.iter().rev() {
            let value = self.value(sub);
            let member = format!("{} \":\" {value}", lark_string(key));
            let rest = after.clone().unwrap_or_default();
            let a = if *required {
                format!("\",\" {member} {rest}")
            } else {
                format!("(\",\" {member})? {rest}")
            };
            let f = match (*required, &first) {
                (true, _) => format!("{member} {rest}"),
                (false, Some(skip)) => format!("{member} {rest} | {skip}"),
                (false, None) => format!("({member} {rest})?"),
            };
            after = Some(self.fresh(a));
            first = Some(self.fresh(f));
        }
        format!("\"{{\" {} \"}}\"", first.unwrap_or_default())
    }

    /// Any value (schema silent).
    fn free(&mut self) -> String {
        self.free_used = true;
        "gv".into()
    }

    fn free_members(&mut self) -> String {
        self.free_used = true;
        "gm (\",\" gm)*".into()
    }

    /// Adds the free-value rules if anything used them.
    fn finish(self) {
        if !self.free_used {
            return;
        }
        let q = &self.quote;
        let rules = [
            format!(
                "gv: {q} /[^<]*/ {q} | GNUM | \"true\" | \"false\" | \"null\" | \"[\" (gv (\",\" gv)*)? \"]\" | \"{{\" (gm (\",\" gm)*)? \"}}\""
            ),
            "gm: GKEY \":\" gv".into(),
            r"GKEY: /[A-Za-z_][A-Za-z0-9_]*/".into(),
            format!("GNUM: /{NUMBER}/"),
        ];
        self.grammar.rules.extend(rules);
    }
}
