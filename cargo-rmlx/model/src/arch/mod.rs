//! The architecture registry: one [`Architecture`] entry per supported family of
//! `model_type`s, each defined in its own module that composes the engine's shared blocks
//! (`engine::attention`, `engine::mlp`, `engine::decoder`, norms, RoPE) into a
//! [`Network`] and declares its cache kinds. Everything else that knows about architectures
//! reads this table: config parsing (which `model_type`s are supported), loading, and the
//! build's conversion rules.
//!
//! Adding an architecture: a module here with a `pub const ARCH: Architecture`, listed in
//! [`REGISTRY`]; its GGUF import (when llama.cpp defines it) is a `gguf::GgufArch` in
//! `gguf/<family>.rs`, listed in the entry's `gguf` field.

pub mod convert;
pub mod gemma3;
pub mod gemma4;
pub mod gguf;
pub mod gpt_oss;
pub mod layer_kinds;
pub mod llama;
pub mod ministral3;
pub mod olmo2;
pub mod phi3;
pub mod qwen3_5;
pub mod qwen3_moe;

use serde_json::{Map, Value};

use crate::diagnostic::{code, Diagnostic, Result};
use crate::engine::layers::LoadCtx;
use crate::engine::network::Network;
use crate::snapshot::config::KeyDefaults;
use crate::snapshot::ModelConfig;

/// One supported architecture family.
#[derive(Debug)]
pub struct Architecture {
    /// The `model_type` values (config.json) this entry runs.
    pub model_types: &'static [&'static str],
    /// Builds the network from the weights (MLX layout: the names mlx-lm's model holds).
    pub load: fn(&LoadCtx<'_>) -> Result<Box<dyn Network>>,
    /// How `cargo rmlx build` converts a checkpoint of this family.
    pub convert: Convert,
    /// The GGUF architectures `cargo rmlx convert` imports as this family (empty: none).
    pub gguf: &'static [gguf::GgufArch],
    /// What config.json's absent common keys mean for a `model_type` of this entry.
    pub keys: fn(model_type: &str) -> KeyDefaults,
}

pub use convert::Convert;

/// Every supported architecture.
pub static REGISTRY: &[&Architecture] = &[
    &llama::ARCH,
    &llama::SMOLLM3,
    &gemma3::ARCH,
    &olmo2::ARCH,
    &phi3::ARCH,
    &ministral3::ARCH,
    &qwen3_5::ARCH,
    &qwen3_moe::ARCH,
    &gpt_oss::ARCH,
    &gemma4::ARCH,
];

/// A multimodal checkpoint whose text model is run: its config holds the text model's under
/// `text_config` (or, where `text_config` is absent, is the text config itself), its text
/// tensors are named `{prefix}{text model's names}` (MLX layout), and the other towers'
/// tensors are not read.
#[derive(Debug)]
pub struct Wrapper {
    /// The outer `model_type` values.
    pub model_types: &'static [&'static str],
    /// Prefix of the text model's tensors.
    pub prefix: &'static str,
    /// Keys the wrapper's loader sets on the text config when it lacks them, from the outer
    /// config or as constants (mlx-lm's `ModelArgs.__post_init__` of the wrapper).
    pub text_defaults: fn(outer: &Map<String, Value>, text: &mut Map<String, Value>),
    /// How `cargo rmlx build` converts such a checkpoint.
    pub convert: Convert,
}

/// Outer keys that apply to the text model too (MLX writes them at the top level).
const OUTER_KEYS: [&str; 6] = [
    "quantization",
    "quantization_config",
    "eos_token_id",
    "bos_token_id",
    "torch_dtype",
    "dtype",
];

impl Wrapper {
    /// The text config of `outer` (merged with the outer keys that apply to it) and its
    /// `model_type`.
    pub fn text_config(&self, outer: &Map<String, Value>) -> (Map<String, Value>, String) {
        let outer_type = outer
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let mut text = match outer.get("text_config") {
            Some(Value::Object(t)) => t.clone(),
            _ => {
                tracing::debug!(
                    "`{outer_type}` without text_config: the config is the text config"
                );
                outer.clone()
            }
        };
        (self.text_defaults)(outer, &mut text);
        for key in OUTER_KEYS {
            if let Some(v) = outer.get(key) {
                text.insert(key.to_string(), v.clone());
            }
        }
        let inner = match text.get("model_type").and_then(Value::as_str) {
            Some(t) if text.contains_key("hidden_size") || t != outer_type => t.to_string(),
            _ => outer_type.to_string(),
        };
        (text, inner)
    }
}

/// Every supported multimodal wrapper.
pub static WRAPPERS: &[&Wrapper] = &[&MISTRAL3, &GEMMA4, &QWEN3_5];

/// Mistral 3 (Ministral 3, Mistral Small 3.x): a ministral3 / mistral4 / llama text model
/// beside a vision tower; the text model's embeddings are untied unless it says otherwise.
const MISTRAL3: Wrapper = Wrapper {
    model_types: &["mistral3"],
    prefix: "language_model.",
    convert: convert::mistral3::CONVERT,
    text_defaults: |_, text| {
        text.entry("tie_word_embeddings")
            .or_insert(Value::Bool(false));
    },
};

/// Gemma 4 (multimodal): the text model takes the outer vocabulary size (262144 when
/// absent) and defaults to 8 query heads and 1 key/value head, as mlx-lm's wrapper does.
const GEMMA4: Wrapper = Wrapper {
    model_types: &["gemma4"],
    prefix: "language_model.",
    convert: convert::gemma4::CONVERT,
    text_defaults: |outer, text| {
        let vocab = outer
            .get("vocab_size")
            .cloned()
            .unwrap_or(Value::from(262_144));
        text.insert("vocab_size".into(), vocab);
        text.entry("num_attention_heads").or_insert(Value::from(8));
        text.entry("num_key_value_heads").or_insert(Value::from(1));
    },
};

/// Qwen3.5 (dense and MoE): the text model under `language_model`; a config without
/// `text_config` is the text config itself.
const QWEN3_5: Wrapper = Wrapper {
    model_types: &["qwen3_5", "qwen3_5_moe"],
    prefix: "language_model.",
    convert: convert::qwen3_5::CONVERT,
    text_defaults: |_, _| {},
};

/// The wrapper of the outer `model_type`, if it is one.
pub fn wrapper(model_type: &str) -> Option<&'static Wrapper> {
    WRAPPERS
        .iter()
        .copied()
        .find(|w| w.model_types.contains(&model_type))
}

/// The entry running `model_type`, if any.
pub fn lookup(model_type: &str) -> Option<&'static Architecture> {
    REGISTRY
        .iter()
        .copied()
        .find(|a| a.model_types.contains(&model_type))
}

/// Every supported `model_type` (text architectures, then wrappers), in registry order.
pub fn supported_model_types() -> Vec<&'static str> {
    let text = REGISTRY.iter().flat_map(|a| a.model_types.iter().copied());
    let wrappers = WRAPPERS.iter().flat_map(|w| w.model_types.iter().copied());
    let mut all: Vec<&str> = Vec::new();
    for t in text.chain(wrappers) {
        if !all.contains(&t) {
            all.push(t);
        }
    }
    all
}

/// Builds the network of `ctx.config.text_model_type`.
pub fn load(ctx: &LoadCtx<'_>) -> Result<Box<dyn Network>> {
    let config: &ModelConfig = ctx.config;
    if !config.weight_prefix.is_empty() {
        tracing::info!(
            "`{}`: running the text model (`{}`, tensors under `{}`); other towers are not loaded",
            config.model_type,
            config.text_model_type,
            config.weight_prefix
        );
    }
    match lookup(&config.text_model_type) {
        Some(arch) => (arch.load)(ctx),
        None => Err(unsupported(config)),
    }
}

/// Largest value of an architecture-specific size key without its own entry in
/// `snapshot::config::SIZE_LIMITS` (expert counts, expert widths).
const OTHER_SIZE_LIMIT: u64 = 1 << 20;

/// The positive integer `key` of config.json, `default` when absent (an error pointing at the
/// key when absent without a default, or not a positive size within its bound).
pub fn config_size(config: &ModelConfig, key: &str, default: Option<usize>) -> Result<usize> {
    let max = crate::snapshot::config::size_limit(key).unwrap_or(OTHER_SIZE_LIMIT);
    match config.raw.get(key) {
        None | Some(serde_json::Value::Null) => {
            default.map(|d| defaulted(config, key, d)).ok_or_else(|| {
                config.located(
                    code::Snapshot::Config,
                    format!(
                        "config.json of a `{}` model needs `{key}`",
                        config.model_type
                    ),
                    "model_type",
                )
            })
        }
        Some(v) => match v.as_u64() {
            Some(n) if n > 0 && n <= max => Ok(n as usize),
            _ => Err(config.located(
                code::Snapshot::SizeLimit,
                format!("`{key}` must be a positive size up to {max}, found {v}"),
                key,
            )),
        },
    }
}

/// The boolean `key` of config.json, `default` when absent.
pub fn config_bool(config: &ModelConfig, key: &str, default: bool) -> Result<bool> {
    match config.raw.get(key) {
        None | Some(serde_json::Value::Null) => Ok(defaulted(config, key, default)),
        Some(v) => v.as_bool().ok_or_else(|| {
            config.located(
                code::Snapshot::Config,
                format!("`{key}` must be true or false, found {v}"),
                key,
            )
        }),
    }
}

/// The finite number `key` of config.json, `default` when absent or `null` (logged).
pub fn config_number(config: &ModelConfig, key: &str, default: f64) -> Result<f64> {
    match config.raw.get(key) {
        None | Some(serde_json::Value::Null) => Ok(defaulted(config, key, default)),
        Some(v) => v.as_f64().filter(|x| x.is_finite()).ok_or_else(|| {
            config.located(
                code::Snapshot::Config,
                format!("`{key}` must be a number, found {v}"),
                key,
            )
        }),
    }
}

/// `default`, noting that config.json left `key` to the family's (mlx-lm's) default.
fn defaulted<T: std::fmt::Display>(config: &ModelConfig, key: &str, default: T) -> T {
    tracing::debug!(
        "{}: no `{key}`; using the {} default {default}",
        config.path.display(),
        config.text_model_type
    );
    default
}

/// The exit-5 error for a `model_type` no entry runs.
pub fn unsupported(config: &ModelConfig) -> Diagnostic {
    Diagnostic::error(
        code::Snapshot::UnsupportedArchitecture,
        format!("unsupported model_type `{}`", config.text_model_type),
    )
    .with_file(&config.path)
    .with_help(format!(
        "supported architectures: {}",
        supported_model_types().join(", ")
    ))
}

/// A small config.json of `model_type` (4 layers, hidden 64, 4/2 heads, vocab 100) plus the
/// `extra` keys (`,"key":value…`), parsed: for the architectures' spec tests.
#[cfg(test)]
pub(crate) fn test_config(model_type: &str, extra: &str) -> Result<ModelConfig> {
    ModelConfig::from_text(
        std::path::Path::new("config.json"),
        &format!(
            r#"{{"model_type":"{model_type}","hidden_size":64,"intermediate_size":64,
            "num_hidden_layers":4,"num_attention_heads":4,"num_key_value_heads":2,
            "vocab_size":100,"max_position_embeddings":256{extra}}}"#
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_model_type_has_one_entry() {
        let text: Vec<&str> = REGISTRY
            .iter()
            .flat_map(|a| a.model_types.iter().copied())
            .collect();
        for t in &text {
            let n = text.iter().filter(|x| *x == t).count();
            assert_eq!(n, 1, "{t} registered {n} times");
        }
        for t in supported_model_types() {
            assert!(
                lookup(t).is_some() || wrapper(t).is_some(),
                "{t} runs nothing"
            );
        }
        assert!(lookup("bogus").is_none() && wrapper("bogus").is_none());
    }
}
