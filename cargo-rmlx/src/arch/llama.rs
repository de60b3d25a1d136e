//! The llama family: Llama 2/3, SmolLM, TinyLlama and Mistral share one layout; Qwen2 adds
//! q/k/v biases; Qwen3 normalises each q/k head. All are the standard dense decoder.

use super::Architecture;
use crate::diagnostic::Result;
use crate::engine::decoder::{Decoder, DecoderSpec};
use crate::engine::layers::LoadCtx;
use crate::engine::network::Network;

/// Registry entry.
pub const ARCH: Architecture = Architecture {
    model_types: &["llama", "mistral", "qwen2", "qwen3"],
    load,
    convert: super::convert::llama::CONVERT,
};

fn load(ctx: &LoadCtx<'_>) -> Result<Box<dyn Network>> {
    let config = ctx.config;
    let base = DecoderSpec::llama(config);
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
        _ => base,
    };
    Ok(Box::new(Decoder::load(ctx, &spec)?))
}
