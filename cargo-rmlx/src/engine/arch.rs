//! Architecture specs: how each supported `model_type` maps onto the shared transformer.
//! Adding an architecture = adding a match arm here (and its name to
//! `snapshot::config::SUPPORTED_MODEL_TYPES`), plus layer flags if it needs new math.

use serde_json::Value;

use super::transformer::{Activation, ArchSpec};
use crate::diagnostic::{Diagnostic, Result};
use crate::snapshot::config::size_limit;
use crate::snapshot::ModelConfig;

/// The spec for `config.model_type`.
pub fn spec(config: &ModelConfig) -> Result<ArchSpec> {
    let base = ArchSpec {
        qkv_bias: config.attention_bias,
        o_bias: config.attention_bias,
        mlp_bias: config.mlp_bias,
        activation: Activation::Silu,
        attn_scale: (config.head_dim as f32).powf(-0.5),
        qk_norm: false,
        norm_one_plus: false,
        embed_scale: None,
        sandwich_norms: false,
        sliding_window: vec![None; config.num_hidden_layers],
        local_rope_theta: None,
    };
    match config.model_type.as_str() {
        // Llama 2/3, SmolLM, TinyLlama and Mistral share one layout.
        "llama" | "mistral" => Ok(base),
        // Qwen2: biases on q/k/v (never on o).
        "qwen2" => Ok(ArchSpec {
            qkv_bias: true,
            o_bias: false,
            ..base
        }),
        // Qwen3: RMSNorm over each q/k head, no biases by default.
        "qwen3" => Ok(ArchSpec {
            qk_norm: true,
            ..base
        }),
        "gemma3_text" => gemma3(config, base),
        other => Err(Diagnostic::error(
            "rmlx::snapshot::unsupported-architecture",
            format!("unsupported model_type `{other}`"),
        )
        .with_file(&config.path)),
    }
}

/// Gemma 3 (text): scaled embeddings, (1 + w) norms, sandwich norms, GELU-tanh, q/k norms,
/// local sliding-window layers with their own rope base interleaved with global layers.
fn gemma3(config: &ModelConfig, base: ArchSpec) -> Result<ArchSpec> {
    let raw = &config.raw;
    let num = |k: &str| raw.get(k).and_then(Value::as_f64);
    let window = match raw.get("sliding_window") {
        None | Some(Value::Null) => 512,
        Some(w) => match (w.as_u64(), size_limit("sliding_window")) {
            (Some(n), Some(max)) if n > 0 && n <= max => n as usize,
            _ => {
                return Err(config.located(
                    "rmlx::snapshot::size-limit",
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
    Ok(ArchSpec {
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
