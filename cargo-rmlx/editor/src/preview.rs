//! Sample conversations rendered through a template, as hover and the "Preview render"
//! command show them: the lint engine's standard samples ([`SampleKind`]) plus any the user
//! configures, each with its rendered text, its token count under the model's tokenizer
//! (encoded without adding special tokens, as the probe and the server encode chat
//! prompts), and the special tokens in it.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::lint::samples::SampleKind;
use crate::template::{ChatTemplate, RenderContext};
use crate::tokenize::Tokenizer;

/// One sample conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sample {
    /// Short name (`single-turn`, or the user's).
    pub name: String,
    /// What it is.
    #[serde(default)]
    pub description: String,
    /// The messages.
    pub messages: Vec<Value>,
    /// Tool schemas.
    #[serde(default)]
    pub tools: Option<Vec<Value>>,
    /// `add_generation_prompt`.
    #[serde(default = "yes")]
    pub add_generation_prompt: bool,
}

fn yes() -> bool {
    true
}

impl Sample {
    /// A standard sample of the lint engine.
    pub fn standard(kind: SampleKind) -> Self {
        Self {
            name: kind.name().to_string(),
            description: kind.describe().to_string(),
            messages: kind.messages(),
            tools: kind.tools(),
            add_generation_prompt: kind.add_generation_prompt(),
        }
    }

    /// Every standard sample, in lint's order (the first, `single-turn`, is the probe's seed
    /// conversation).
    pub fn standard_all() -> Vec<Self> {
        SampleKind::ALL.into_iter().map(Self::standard).collect()
    }
}

/// A special token that occurs in a rendered sample.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpecialCount {
    /// Its text.
    pub token: String,
    /// Its id.
    pub id: u32,
    /// How often it occurs.
    pub count: usize,
}

/// One sample, rendered.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Preview {
    /// The sample's name.
    pub name: String,
    /// What it is.
    pub description: String,
    /// `add_generation_prompt`.
    pub add_generation_prompt: bool,
    /// The rendered prompt, byte-exact.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Why it did not render.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Its token count (with a tokenizer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<usize>,
    /// The special tokens in it (with a tokenizer), in order of first occurrence.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub special_tokens: Vec<SpecialCount>,
}

/// Renders each sample through `t` with the tokenizer's special tokens (placeholders
/// without one) and `kwargs`, and counts tokens when there is a tokenizer.
pub fn render_samples(
    t: &ChatTemplate,
    tokenizer: Option<&Tokenizer>,
    samples: &[Sample],
    kwargs: &serde_json::Map<String, Value>,
) -> Vec<Preview> {
    let special = tokenizer.map_or_else(crate::lint::placeholder_special_tokens, |t| {
        t.special_tokens().clone()
    });
    samples
        .iter()
        .map(|s| {
            let r = t.render(&RenderContext {
                messages: s.messages.clone(),
                tools: s.tools.clone(),
                documents: None,
                add_generation_prompt: s.add_generation_prompt,
                special_tokens: special.clone(),
                kwargs: kwargs.clone(),
            });
            let mut p = Preview {
                name: s.name.clone(),
                description: s.description.clone(),
                add_generation_prompt: s.add_generation_prompt,
                text: None,
                error: None,
                tokens: None,
                special_tokens: Vec::new(),
            };
            match r {
                Ok(text) => {
                    if let Some(tok) = tokenizer {
                        match tok.encode(&text, false) {
                            Ok(ids) => {
                                p.tokens = Some(ids.len());
                                p.special_tokens = specials(tok, &ids);
                            }
                            Err(d) => p.error = Some(d.message.clone()),
                        }
                    }
                    p.text = Some(text);
                }
                Err(d) => p.error = Some(d.message.clone()),
            }
            p
        })
        .collect()
}

fn specials(tok: &Tokenizer, ids: &[u32]) -> Vec<SpecialCount> {
    let mut out: Vec<SpecialCount> = Vec::new();
    for &id in ids {
        if !tok.is_special(id) {
            continue;
        }
        match out.iter_mut().find(|s| s.id == id) {
            Some(s) => s.count += 1,
            None => out.push(SpecialCount {
                token: tok.id_to_piece(id).unwrap_or_else(|| format!("#{id}")),
                id,
                count: 1,
            }),
        }
    }
    out
}

/// A Markdown code fence around `text` that `text` cannot close.
pub fn fenced(text: &str, lang: &str) -> String {
    let mut longest = 0;
    let mut run = 0;
    for c in text.chars() {
        if c == '`' {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    let fence = "`".repeat((longest + 1).max(3));
    let nl = if text.ends_with('\n') { "" } else { "\n" };
    format!("{fence}{lang}\n{text}{nl}{fence}")
}

/// What hover shows on a template.
#[derive(Debug, Clone, Default)]
pub struct HoverInfo<'a> {
    /// The model the template belongs to (name, and its BOS resolution).
    pub model: Option<&'a str>,
    /// The BOS chain's result, e.g. "`<|im_start|>` (id 1, from bos_token)".
    pub bos: Option<String>,
    /// The last probe verdict, one line.
    pub probe: Option<String>,
}

/// The hover text: the sample (normally the seed conversation, `single-turn`) rendered with
/// its line breaks visible, its token count, the special tokens in it, the model's BOS and
/// the last probe verdict.
pub fn hover_markdown(p: &Preview, info: &HoverInfo<'_>) -> String {
    let mut out = format!("**rmlx** · sample `{}`: {}", p.name, p.description);
    if p.add_generation_prompt {
        out.push_str(" (generation prompt on)");
    }
    out.push_str("\n\n");
    match (&p.text, &p.error) {
        (Some(text), None) => {
            // Line breaks shown as ↵ so trailing newlines and blank lines are visible.
            let shown = text.replace("\r\n", "␍↵\n").replace('\n', "↵\n");
            out.push_str(&fenced(&shown, "text"));
            out.push_str("\n\n");
        }
        (_, Some(e)) => {
            out.push_str(&format!("does not render: {e}\n\n"));
        }
        (None, None) => {}
    }
    match (p.tokens, info.model) {
        (Some(n), Some(m)) => out.push_str(&format!(
            "**{n} tokens** with {m}'s tokenizer (encoded without adding special tokens, as \
             the probe and the server encode chat prompts)"
        )),
        (Some(n), None) => out.push_str(&format!("**{n} tokens**")),
        (None, _) => out.push_str(
            "token count: no model tokenizer (the template is not in a model directory or \
             declared in rmlx.toml)",
        ),
    }
    if !p.special_tokens.is_empty() {
        let list: Vec<String> = p
            .special_tokens
            .iter()
            .map(|s| format!("`{}` (id {}) ×{}", s.token, s.id, s.count))
            .collect();
        out.push_str(&format!("  \nspecial tokens: {}", list.join(", ")));
    }
    if let Some(b) = &info.bos {
        out.push_str(&format!("  \nBOS: {b}"));
    }
    if let Some(pr) = &info.probe {
        out.push_str(&format!("  \nlast probe: {pr}"));
    }
    out
}
