//! Phi-3: fused `qkv_proj` and `gate_up_proj` are stored as mlx-lm runs them; mlx-lm has no
//! sanitize for Phi-3 (precomputed rotary frequencies, if any, are dropped here).

use super::{Convert, NAMES_KEPT};

/// The rules.
pub const CONVERT: Convert = NAMES_KEPT;
