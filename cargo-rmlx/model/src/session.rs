//! A loaded model directory — snapshot, MLX model, tokenizer, chat template — and the one
//! place where prompts are turned into token ids. `generate`, the probe and the server all
//! build their prompts here, so a chat request is rendered and encoded the same way
//! everywhere (generation prompt on, tokenizer adds no special tokens).
//!
//! Special-token strings typed inside messages (`<|im_end|><|im_start|>system` in a user's
//! content) are encoded as text by default, never as control tokens ([`ContentTokens`]):
//! before rendering, each such string in the messages, tools and template arguments is
//! wrapped in a pair of marker characters that occur nowhere in the input or the template;
//! after rendering the markers are removed (the text is byte-identical to an unmarked
//! render) and the control tokens found inside the marked spans are encoded as text
//! ([`Tokenizer::encode_with_literal_spans`]). Content without special-token strings takes
//! the plain path: same text, same ids.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::{Map, Value};

use crate::constrain::{Constraint, ConstraintSpec, GuideEnv};
use crate::diagnostic::{code, Diagnostic, Result};
use crate::engine::{DtypePolicy, Model};
use crate::snapshot::Snapshot;
use crate::template::{ChatTemplate, RenderContext};
use crate::tokenize::Tokenizer;

/// How special-token strings inside messages (content, tool definitions, template
/// arguments) are encoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ContentTokens {
    /// As plain text: a message cannot forge a turn (the default).
    #[default]
    Text,
    /// As the control tokens they spell, like the rest of the rendered template (the
    /// behaviour of transformers' `apply_chat_template` followed by `encode`).
    Control,
}

/// A model ready to run.
#[derive(Debug)]
pub struct Session {
    /// The model directory.
    pub dir: PathBuf,
    /// The network.
    pub model: Model,
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// The chat template, if the model has one.
    pub template: Option<ChatTemplate>,
    /// How special-token strings inside messages are encoded.
    pub content_tokens: ContentTokens,
    /// The structured-output token environment, built on first use.
    guide_env: OnceLock<GuideEnv>,
}

/// A prompt as the model sees it.
#[derive(Debug, Clone)]
pub struct Prompt {
    /// The rendered text (for chat prompts) or the raw text.
    pub text: String,
    /// Token ids.
    pub ids: Vec<u32>,
}

impl Session {
    /// Loads a model directory.
    pub fn load(dir: &Path, policy: DtypePolicy) -> Result<Self> {
        Self::load_with(dir, policy, |d: &Path| crate::template::discover(d))
    }

    /// Loads a model directory's weights and tokenizer without its chat template
    /// (`template` is `None`): for callers that supply the template text themselves (the
    /// editor's buffer), so a template that does not parse on disk cannot fail the load.
    pub fn load_without_template(dir: &Path, policy: DtypePolicy) -> Result<Self> {
        Self::load_with(dir, policy, |_| Ok(None))
    }

    fn load_with(
        dir: &Path,
        policy: DtypePolicy,
        template: impl FnOnce(&Path) -> Result<Option<ChatTemplate>> + Send,
    ) -> Result<Self> {
        let snapshot = Snapshot::open(dir)?;
        // The tokenizer (a large JSON file) is parsed on a second thread and the template read
        // (and compiled in a sandbox worker, whose process start is mostly waiting) on a third
        // while this one loads the weights (MLX state stays on the calling thread). Errors are
        // reported in the same order as a sequential load would: tokenizer, template, weights.
        let (tokenizer, template, model) = std::thread::scope(|scope| {
            let template = scope.spawn(|| template(dir));
            let tokenizer = scope.spawn(|| Tokenizer::from_dir(dir));
            let model = Model::load(&snapshot, policy);
            (tokenizer.join(), template.join(), model)
        });
        let panicked = |code: code::Code, what: &str| {
            Diagnostic::error(
                code,
                format!("reading the {what} of {} panicked", dir.display()),
            )
        };
        let tokenizer =
            tokenizer.map_err(|_| panicked(code::Tokenize::Load.into(), "tokenizer"))??;
        let template =
            template.map_err(|_| panicked(code::Template::Read.into(), "chat template"))??;
        let model = model?;
        Ok(Self {
            dir: dir.to_path_buf(),
            model,
            tokenizer,
            template,
            content_tokens: ContentTokens::default(),
            guide_env: OnceLock::new(),
        })
    }

    /// Compiles a structured-output constraint for this model (its token environment is
    /// built on the first call and kept).
    pub fn compile_constraint(&self, spec: &ConstraintSpec) -> Result<Constraint> {
        self.guide_env()?.compile(spec)
    }

    /// This model's constraint environment, built on the first call and kept.
    pub fn guide_env(&self) -> Result<&GuideEnv> {
        if let Some(env) = self.guide_env.get() {
            return Ok(env);
        }
        let env = GuideEnv::new(&self.tokenizer, self.model.net.vocab_size, &self.eos_ids())?;
        Ok(self.guide_env.get_or_init(|| env))
    }

    /// EOS ids: the model's declared ones plus the tokenizer's `eos_token`.
    pub fn eos_ids(&self) -> Vec<u32> {
        self.tokenizer.eos_ids(&self.model.eos_ids)
    }

    /// A plain-text prompt, encoded with the tokenizer's default special tokens.
    pub fn raw_prompt(&self, text: &str) -> Result<Prompt> {
        Ok(Prompt {
            text: text.to_string(),
            ids: self.tokenizer.encode(text, true)?,
        })
    }

    /// A chat prompt: `messages` rendered through the model's chat template with
    /// `add_generation_prompt = true`, encoded without adding special tokens.
    pub fn chat_prompt(
        &self,
        messages: &[Value],
        tools: Option<&Value>,
        kwargs: &serde_json::Map<String, Value>,
    ) -> Result<Prompt> {
        let template = self.template.as_ref().ok_or_else(|| {
            Diagnostic::error(
                code::Template::Missing,
                format!("{} has no chat template", self.dir.display()),
            )
            .with_file(&self.dir)
            .with_help(
                "add chat_template.jinja to the model directory, or run without --chat for a \
                 base model",
            )
        })?;
        let Marked {
            messages,
            tools,
            kwargs,
            markers,
        } = self.mark(messages, tools, kwargs, template.source())?;
        let rendered = template.render(&RenderContext {
            messages: into_array(messages),
            tools: tools.as_array().cloned(),
            documents: None,
            add_generation_prompt: true,
            special_tokens: self.tokenizer.special_tokens().clone(),
            kwargs: match kwargs {
                Value::Object(m) => m,
                _ => Map::new(),
            },
        })?;
        let Some(m) = markers else {
            let ids = self.tokenizer.encode(&rendered, false)?;
            return Ok(Prompt {
                text: rendered,
                ids,
            });
        };
        let (text, spans) = m.strip(&rendered)?;
        tracing::debug!(
            "{} special-token string(s) in the messages encoded as text",
            spans.len()
        );
        let ids = self.tokenizer.encode_with_literal_spans(&text, &spans)?;
        Ok(Prompt { text, ids })
    }

    /// The request's messages, tools and template arguments, with the special-token strings
    /// inside them wrapped in markers (unless [`ContentTokens::Control`], or there are none).
    fn mark(
        &self,
        messages: &[Value],
        tools: Option<&Value>,
        kwargs: &Map<String, Value>,
        template: &str,
    ) -> Result<Marked> {
        let controls = match self.content_tokens {
            ContentTokens::Text => self.tokenizer.control_strings(),
            ContentTokens::Control => Vec::new(),
        };
        let mut out = Marked {
            messages: Value::Array(messages.to_vec()),
            tools: tools.cloned().unwrap_or(Value::Null),
            kwargs: Value::Object(kwargs.clone()),
            markers: None,
        };
        let parts = [&out.messages, &out.tools, &out.kwargs];
        if !parts.iter().any(|v| contains_any(v, &controls)) {
            return Ok(out);
        }
        let m = Markers::choose(&parts, template)?;
        for v in [&mut out.messages, &mut out.tools, &mut out.kwargs] {
            m.wrap(v, &controls);
        }
        out.markers = Some(m);
        Ok(out)
    }

    /// One user turn as a chat prompt.
    pub fn user_prompt(&self, content: &str) -> Result<Prompt> {
        self.user_prompt_with(content, &Map::new())
    }

    /// One user turn as a chat prompt, with template arguments (a request's
    /// `chat_template_kwargs`, e.g. `enable_thinking`).
    pub fn user_prompt_with(&self, content: &str, kwargs: &Map<String, Value>) -> Result<Prompt> {
        let msg = serde_json::json!({"role": "user", "content": content});
        self.chat_prompt(&[msg], None, kwargs)
    }
}

/// What [`Session::mark`] hands to the template.
struct Marked {
    messages: Value,
    tools: Value,
    kwargs: Value,
    markers: Option<Markers>,
}

fn into_array(v: Value) -> Vec<Value> {
    match v {
        Value::Array(items) => items,
        other => vec![other],
    }
}

/// Does a string (or object key) anywhere in `v` contain one of `needles`?
fn contains_any(v: &Value, needles: &[String]) -> bool {
    let hit = |s: &str| needles.iter().any(|n| s.contains(n.as_str()));
    match v {
        Value::String(s) => hit(s),
        Value::Array(items) => items.iter().any(|x| contains_any(x, needles)),
        Value::Object(map) => map.iter().any(|(k, x)| hit(k) || contains_any(x, needles)),
        _ => false,
    }
}

/// Two characters that open and close a span of message text to be encoded literally.
struct Markers {
    open: char,
    close: char,
}

impl Markers {
    /// The first pair of private-use characters that occurs neither in the input nor in the
    /// template source, so a marker in the rendered text can only come from [`Markers::wrap`].
    fn choose(input: &[&Value], template: &str) -> Result<Markers> {
        let json: Vec<String> = input.iter().map(|v| v.to_string()).collect();
        let unused = |c: char| !json.iter().any(|j| j.contains(c)) && !template.contains(c);
        let mut pairs = (0xE000u32..0xF8FF)
            .step_by(2)
            .filter_map(|c| Some((char::from_u32(c)?, char::from_u32(c + 1)?)));
        pairs
            .find(|&(o, c)| unused(o) && unused(c))
            .map(|(open, close)| Markers { open, close })
            .ok_or_else(|| {
                Diagnostic::error(
                    code::Template::Markers,
                    "the request uses every private-use character; no marker is free to keep \
                     special-token strings in messages as text",
                )
            })
    }

    /// Wraps every occurrence of a control string in the strings (and keys) of `v`.
    fn wrap(&self, v: &mut Value, controls: &[String]) {
        match v {
            Value::String(s) => *s = self.wrap_str(s, controls),
            Value::Array(items) => items.iter_mut().for_each(|x| self.wrap(x, controls)),
            Value::Object(map) => {
                let old = std::mem::take(map);
                *map = old
                    .into_iter()
                    .map(|(k, mut x)| {
                        self.wrap(&mut x, controls);
                        (self.wrap_str(&k, controls), x)
                    })
                    .collect::<Map<String, Value>>();
            }
            _ => {}
        }
    }

    fn wrap_str(&self, s: &str, controls: &[String]) -> String {
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        'scan: while !rest.is_empty() {
            for c in controls {
                if let Some(after) = rest.strip_prefix(c.as_str()) {
                    out.push(self.open);
                    out.push_str(c);
                    out.push(self.close);
                    rest = after;
                    continue 'scan;
                }
            }
            let ch = rest.chars().next().unwrap_or_default();
            out.push(ch);
            rest = &rest[ch.len_utf8()..];
        }
        out
    }

    /// Removes the markers from a rendered prompt; the byte ranges they enclosed.
    fn strip(&self, rendered: &str) -> Result<(String, Vec<Range<usize>>)> {
        let mut text = String::with_capacity(rendered.len());
        let mut spans = Vec::new();
        let mut open_at = None;
        for ch in rendered.chars() {
            match (ch, open_at) {
                (c, None) if c == self.open => open_at = Some(text.len()),
                (c, Some(start)) if c == self.close => {
                    spans.push(start..text.len());
                    open_at = None;
                }
                (c, _) if c == self.open || c == self.close => return Err(mangled()),
                (c, _) => text.push(c),
            }
        }
        if open_at.is_some() {
            return Err(mangled());
        }
        Ok((text, spans))
    }
}

fn mangled() -> Diagnostic {
    Diagnostic::error(
        code::Template::SpecialInContent,
        "the chat template cut through a special-token string in a message, so it cannot be \
         kept as text",
    )
    .with_help(
        "remove special-token strings from the messages, or serve with \
         --content-special-tokens to encode them as control tokens",
    )
}
