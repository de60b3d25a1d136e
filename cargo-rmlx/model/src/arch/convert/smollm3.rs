//! SmolLM3: llama's layout (its no-RoPE layers have no weights of their own); mlx-lm's
//! sanitize drops rotary frequencies and a tied `lm_head.weight`.

use super::Convert;

/// The rules.
pub const CONVERT: Convert = Convert {
    checks_decoder_shapes: false,
    ..super::llama::CONVERT
};
