//! Phi-3: fused `qkv_proj` and `gate_up_proj` are stored as mlx-lm runs them; mlx-lm has no
//! sanitize for Phi-3 (precomputed rotary frequencies, if any, are dropped here).

use super::{casts_all, drop_rotary, no_fixed_quant, Convert, Hints, Problem, Tensors};

/// The rules.
pub const CONVERT: Convert = Convert {
    sanitize,
    switch_modules: &[],
    fixed_quant: no_fixed_quant,
    keeps_dtype: casts_all,
    config_fix: super::config_kept,
    checks_decoder_shapes: false,
};

fn sanitize(t: &mut Tensors, _: &Hints<'_>) -> Result<(), Problem> {
    drop_rotary(t);
    Ok(())
}
