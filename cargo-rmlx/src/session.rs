//! A loaded model directory — snapshot, MLX model, tokenizer, chat template — and the one
//! place where prompts are turned into token ids. `generate`, the probe and the server all
//! build their prompts here, so a chat request is rendered and encoded the same way
//! everywhere (generation prompt on, tokenizer adds no special tokens).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::diagnostic::{Diagnostic, Result};
use crate::engine::{DtypePolicy, Model};
use crate::snapshot::Snapshot;
use crate::template::{ChatTemplate, RenderContext};
use crate::tokenize::Tokenizer;

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
        // The tokenizer (a large JSON file) and the template are read on a second thread
        // while this one loads the weights (MLX state stays on the calling thread). Errors are
        // reported in the same order as a sequential load would.
        let (text_side, model) = std::thread::scope(|scope| {
            let text_side =
                scope.spawn(|| -> Result<_> { Ok((Tokenizer::from_dir(dir)?, template(dir)?)) });
            let model = Model::load(&snapshot, policy);
            (text_side.join(), model)
        });
        let (tokenizer, template) = text_side.map_err(|_| {
            Diagnostic::error(
                "rmlx::tokenize::load",
                format!("reading the tokenizer of {} panicked", dir.display()),
            )
        })??;
        let model = model?;
        Ok(Self {
            dir: dir.to_path_buf(),
            model,
            tokenizer,
            template,
        })
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
                "rmlx::template::missing",
                format!("{} has no chat template", self.dir.display()),
            )
            .with_file(&self.dir)
            .with_help(
                "add chat_template.jinja to the model directory, or run without --chat for a \
                 base model",
            )
        })?;
        let text = template.render(&RenderContext {
            messages: messages.to_vec(),
            tools: tools.and_then(|t| t.as_array().cloned()),
            documents: None,
            add_generation_prompt: true,
            special_tokens: self.tokenizer.special_tokens().clone(),
            kwargs: kwargs.clone(),
        })?;
        let ids = self.tokenizer.encode(&text, false)?;
        Ok(Prompt { text, ids })
    }

    /// One user turn as a chat prompt.
    pub fn user_prompt(&self, content: &str) -> Result<Prompt> {
        let msg = serde_json::json!({"role": "user", "content": content});
        self.chat_prompt(&[msg], None, &serde_json::Map::new())
    }
}
