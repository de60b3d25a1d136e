//! SmolLM3: llama's layout (its no-RoPE layers have no weights of their own); mlx-lm's
//! sanitize drops rotary frequencies and a tied `lm_head.weight`.

use super::{casts_all, no_fixed_quant, Convert};

/// The rules.
pub const CONVERT: Convert = Convert {
    sanitize: super::llama::sanitize,
    switch_modules: &[],
    fixed_quant: no_fixed_quant,
    keeps_dtype: casts_all,
    config_fix: super::config_kept,
    checks_decoder_shapes: false,
};
