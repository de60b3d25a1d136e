//! OLMo 2: the checkpoint's names are mlx-lm's (post-norms and q/k norms included); only
//! precomputed rotary frequencies are dropped.

use super::{Convert, NAMES_KEPT};

/// The rules.
pub const CONVERT: Convert = NAMES_KEPT;
