//! Gemma 3 (text): the standard dense decoder in Gemma's form — scaled embeddings, (1 + w)
//! norms, four norms per block, GELU-tanh, q/k norms, sliding-window local layers with their
//! own RoPE base interleaved with global layers.

use serde_json::Value;

use super::Architecture;
use crate::diagnostic::{code, Result};
use crate::engine::decoder::{Decoder, DecoderSpec};
use crate::engine::layers::LoadCtx;
use crate::engine::mlp::Activation;
use crate::engine::network::Network;
use crate::snapshot::config::size_limit;
use crate::snapshot::ModelConfig;

/// Registry entry.
pub const ARCH: Architecture = Architecture {
    model_types: &["gemma3_text"],
    load,
    convert: super::convert::gemma3::CONVERT,
    gguf: &[super::gguf::gemma3::GEMMA3],
};

fn load(ctx: &LoadCtx<'_>) -> Result<Box<dyn Network>> {
    Ok(Box::new(Decoder::load(ctx, &spec(ctx.config)?)?))
}

/// Gemma 3 (text): scaled embeddings, (1 + w) norms, sandwich norms, GELU-tanh, q/k norms,
/// local sliding-window layers with their own rope base interleaved with global layers.
/// The decoder spec of a Gemma 3 config (public for the config fuzzer).
pub fn spec(config: &ModelConfig) -> Result<DecoderSpec> {
    let base = DecoderSpec::llama(config);
    let raw = &config.raw;
    let num = |k: &str| raw.get(k).and_then(Value::as_f64);
    let window = match raw.get("sliding_window") {
        None | Some(Value::Null) => 512,
        Some(w) => match (w.as_u64(), size_limit("sliding_window")) {
            (Some(n), Some(max)) if n > 0 && n <= max => n as usize,
            _ => {
                return Err(config.located(
                    code::Snapshot::SizeLimit,
                    format!("`sliding_window` must be a positive size, found {w}"),
                    "sliding_window",
                ))
            }
        },
    };
    let n = config.num_hidden_layers;
    let sliding: Vec<Option<usize>> = match raw.get("layer_types").and_then(Value::as_array) {
        Some(types) if types.len() == n => types
            .iter()
            .map(|t| (t.as_str() == Some("sliding_attention")).then_some(window))
            .collect(),
        _ => {
            let pattern = raw
                .get("sliding_window_pattern")
                .and_then(Value::as_u64)
                .unwrap_or(6)
                .max(1) as usize;
            (0..n)
                .map(|i| ((i + 1) % pattern != 0).then_some(window))
                .collect()
        }
    };
    let scalar = num("query_pre_attn_scalar").unwrap_or(config.head_dim as f64) as f32;
    // mlx-lm and transformers round sqrt(hidden) to bfloat16 before scaling.
    let embed_scale = half::bf16::from_f32((config.hidden_size as f32).sqrt()).to_f32();
    Ok(DecoderSpec {
        activation: Activation::GeluTanh,
        attn_scale: scalar.powf(-0.5),
        qk_norm: true,
        norm_one_plus: true,
        embed_scale: Some(embed_scale),
        sandwich_norms: true,
        sliding_window: sliding,
        local_rope_theta: Some(num("rope_local_base_freq").unwrap_or(10_000.0) as f32),
        ..base
    })
}
