//! Gemma 3 (text): mlx-lm keeps the checkpoint's names (a stored `lm_head.weight` is kept,
//! an absent one means tied); only precomputed rotary frequencies are dropped. The standard
//! decoder's shapes are checked against config.json.

use super::{Convert, NAMES_KEPT};

/// The rules.
pub const CONVERT: Convert = Convert {
    checks_decoder_shapes: true,
    ..NAMES_KEPT
};
