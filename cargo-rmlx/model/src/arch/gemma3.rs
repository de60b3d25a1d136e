//! Gemma 3 (text): the standard dense decoder in Gemma's form — scaled embeddings, (1 + w)
//! norms, four norms per block, GELU-tanh, q/k norms, sliding-window local layers with their
//! own RoPE base interleaved with global layers.

use super::layer_kinds::{windows, LayerKind, LayerRule, ListUse, Period};
use super::{config_number, Architecture};
use crate::diagnostic::Result;
use crate::engine::decoder::{Decoder, DecoderSpec};
use crate::engine::layers::LoadCtx;
use crate::engine::mlp::Activation;
use crate::engine::network::Network;
use crate::snapshot::config::KeyDefaults;
use crate::snapshot::ModelConfig;

/// Registry entry.
pub const ARCH: Architecture = Architecture {
    model_types: &["gemma3_text"],
    load,
    convert: super::convert::gemma3::CONVERT,
    gguf: &[super::gguf::gemma3::GEMMA3],
    keys: |_| KEYS,
};

/// mlx-lm's gemma3_text defaults.
const KEYS: KeyDefaults = KeyDefaults {
    head_dim: Some(256),
    num_key_value_heads: Some(1),
    rope_theta: 1_000_000.0,
    rms_norm_eps: 1e-6,
    tie_word_embeddings: true,
    rope_parameters: false,
    required: &[],
};

/// Gemma 3's global layers: `layer_types` (transformers' reading), else every
/// `sliding_window_pattern`-th layer (default 6), which is all mlx-lm reads.
const LAYERS: LayerRule = LayerRule {
    family: "gemma3",
    list: ListUse::DecidesOverPeriod,
    other: LayerKind::Sliding,
    period: Some(Period {
        key: Some("sliding_window_pattern"),
        default: 6,
    }),
};

fn load(ctx: &LoadCtx<'_>) -> Result<Box<dyn Network>> {
    Ok(Box::new(Decoder::load(ctx, &spec(ctx.config)?)?))
}

/// Gemma 3 (text): scaled embeddings, (1 + w) norms, sandwich norms, GELU-tanh, q/k norms,
/// local sliding-window layers with their own rope base interleaved with global layers.
/// The decoder spec of a Gemma 3 config (public for the config fuzzer).
pub fn spec(config: &ModelConfig) -> Result<DecoderSpec> {
    let base = DecoderSpec::llama(config);
    let kinds = LAYERS.kinds(config)?;
    let sliding = windows(config, &kinds, Some(512))?;
    let scalar = config_number(config, "query_pre_attn_scalar", 256.0)? as f32;
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
        local_rope_theta: Some(config_number(config, "rope_local_base_freq", 10_000.0)? as f32),
        ..base
    })
}
