//! The llama family: Llama 2/3, SmolLM, TinyLlama and Mistral share one layout; Qwen2 adds
//! q/k/v biases; Qwen3 normalises each q/k head; SmolLM3 leaves RoPE out of every
//! `no_rope_layer_interval`-th layer (or those `no_rope_layers` marks 0). All are the
//! standard dense decoder; llama, mistral and smollm3 slide where `layer_types` says so.

use serde_json::Value;

use super::layer_kinds::{windows, LayerRule, ListUse};
use super::Architecture;
use crate::diagnostic::{code, Result};
use crate::engine::decoder::{Decoder, DecoderSpec};
use crate::engine::layers::LoadCtx;
use crate::engine::network::Network;
use crate::snapshot::config::KeyDefaults;
use crate::snapshot::ModelConfig;

/// Registry entry.
pub const ARCH: Architecture = Architecture {
    model_types: &["llama", "mistral", "qwen2", "qwen3"],
    load,
    convert: super::convert::llama::CONVERT,
    gguf: &[
        super::gguf::llama::LLAMA,
        super::gguf::llama::QWEN2,
        super::gguf::llama::QWEN3,
    ],
    keys: |model_type| match model_type {
        "qwen2" => QWEN2_KEYS,
        "qwen3" => QWEN3_KEYS,
        _ => KeyDefaults::LLAMA,
    },
};

/// mlx-lm's qwen2: base 1000000; KV heads and `rms_norm_eps` required.
const QWEN2_KEYS: KeyDefaults = KeyDefaults {
    rope_theta: 1_000_000.0,
    required: &["rms_norm_eps", "num_key_value_heads"],
    ..KeyDefaults::LLAMA
};

/// mlx-lm's qwen3: RoPE from `rope_parameters` when the top level has none; no defaults
/// (transformers' where it has one: untied embeddings).
const QWEN3_KEYS: KeyDefaults = KeyDefaults {
    tie_word_embeddings: false,
    rope_parameters: true,
    required: &[
        "rms_norm_eps",
        "num_key_value_heads",
        "head_dim",
        "tie_word_embeddings",
        "rope_theta",
    ],
    ..KeyDefaults::LLAMA
};

/// Registry entry of SmolLM3 (the same network; its own conversion rules).
pub const SMOLLM3: Architecture = Architecture {
    model_types: &["smollm3"],
    load,
    convert: super::convert::smollm3::CONVERT,
    gguf: &[super::gguf::llama::SMOLLM3],
    keys: |_| KeyDefaults::LLAMA,
};

/// mlx-lm's llama (also mistral and smollm3).
const LAYERS: LayerRule = LayerRule::listed("llama");

/// mlx-lm's qwen2 and qwen3 do not read `layer_types` (nor `use_sliding_window`).
const QWEN_LAYERS: LayerRule = LayerRule {
    family: "qwen2/qwen3",
    list: ListUse::Ignored,
    ..LAYERS
};

fn load(ctx: &LoadCtx<'_>) -> Result<Box<dyn Network>> {
    let config = ctx.config;
    let rule = match config.model_type.as_str() {
        "qwen2" | "qwen3" => QWEN_LAYERS,
        _ => LAYERS,
    };
    let base = DecoderSpec {
        sliding_window: windows(config, &rule.kinds(config)?, None)?,
        ..DecoderSpec::llama(config)
    };
    let spec = match config.model_type.as_str() {
        // Qwen2: biases on q/k/v (never on o).
        "qwen2" => DecoderSpec {
            qkv_bias: true,
            o_bias: false,
            ..base
        },
        // Qwen3: RMSNorm over each q/k head, no biases by default.
        "qwen3" => DecoderSpec {
            qk_norm: true,
            ..base
        },
        "smollm3" => DecoderSpec {
            no_rope: smollm3_no_rope(config)?,
            ..base
        },
        _ => base,
    };
    Ok(Box::new(Decoder::load(ctx, &spec)?))
}

/// SmolLM3's NoPE layers: `no_rope_layers[i] == 0`, or else every
/// `no_rope_layer_interval`-th layer (default 4), as mlx-lm reads them.
fn smollm3_no_rope(config: &ModelConfig) -> Result<Vec<bool>> {
    let n = config.num_hidden_layers;
    match config.raw.get("no_rope_layers") {
        None | Some(Value::Null) => {
            let interval = match config.raw.get("no_rope_layer_interval") {
                None | Some(Value::Null) => 4,
                Some(v) => match v.as_u64() {
                    Some(k) if k > 0 => k as usize,
                    _ => {
                        return Err(config.located(
                            code::Snapshot::Config,
                            format!(
                                "`no_rope_layer_interval` must be a positive integer, found {v}"
                            ),
                            "no_rope_layer_interval",
                        ))
                    }
                },
            };
            Ok((0..n).map(|i| (i + 1) % interval == 0).collect())
        }
        Some(Value::Array(flags)) if flags.len() == n => flags
            .iter()
            .map(|f| match f.as_u64() {
                Some(0) => Ok(true),
                Some(1) => Ok(false),
                _ => Err(config.located(
                    code::Snapshot::Config,
                    format!("`no_rope_layers` entries must be 0 or 1, found {f}"),
                    "no_rope_layers",
                )),
            })
            .collect(),
        Some(other) => Err(config.located(
            code::Snapshot::Config,
            format!("`no_rope_layers` must list one 0/1 flag per layer ({n}), found {other}"),
            "no_rope_layers",
        )),
    }
}
