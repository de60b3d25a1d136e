//! Architecture specs: how each supported `model_type` maps onto the shared transformer.
//! Adding an architecture = adding a match arm here (and its name to
//! `snapshot::config::SUPPORTED_MODEL_TYPES`), plus layer flags if it needs new math.

use super::transformer::{Activation, ArchSpec};
use crate::diagnostic::{Diagnostic, Result};
use crate::snapshot::ModelConfig;

/// The spec for `config.model_type`.
pub fn spec(config: &ModelConfig) -> Result<ArchSpec> {
    let attn_scale = (config.head_dim as f32).powf(-0.5);
    match config.model_type.as_str() {
        // Llama 2/3, SmolLM, TinyLlama and Mistral share one layout.
        "llama" | "mistral" => Ok(ArchSpec {
            qkv_bias: config.attention_bias,
            o_bias: config.attention_bias,
            mlp_bias: config.mlp_bias,
            activation: Activation::Silu,
            attn_scale,
        }),
        other => Err(Diagnostic::error(
            "rmlx::snapshot::unsupported-architecture",
            format!("unsupported model_type `{other}`"),
        )
        .with_file(&config.path)),
    }
}
