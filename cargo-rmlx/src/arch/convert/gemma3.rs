//! Gemma 3 (text): mlx-lm keeps the checkpoint's names (a stored `lm_head.weight` is kept,
//! an absent one means tied); only precomputed rotary frequencies are dropped.

use super::{casts_all, drop_rotary, no_fixed_quant, Convert, Hints, Problem, Tensors};

/// The rules.
pub const CONVERT: Convert = Convert {
    sanitize,
    switch_modules: &[],
    fixed_quant: no_fixed_quant,
    keeps_dtype: casts_all,
    config_fix: super::config_kept,
    checks_decoder_shapes: true,
};

fn sanitize(t: &mut Tensors, _: &Hints<'_>) -> Result<(), Problem> {
    drop_rotary(t);
    Ok(())
}
