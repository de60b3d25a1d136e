//! Gemma 4's MoE branch (`enable_moe_block`), run beside the dense MLP of each layer.

use mlx_rs::Array;

use super::config::{Gemma4Config, MoeConfig};
use crate::diagnostic::{Diagnostic, Result};
use crate::engine::layers::LoadCtx;

/// The router, the stacked experts and the branch's three norms.
pub struct MoeBranch {}

impl MoeBranch {
    /// Loads the branch of layer prefix `p`.
    pub fn load(_ctx: &LoadCtx<'_>, _p: &str, _c: &Gemma4Config, _m: MoeConfig) -> Result<Self> {
        Err(Diagnostic::error(
            "rmlx::engine::moe",
            "gemma4: the MoE block is not supported yet",
        ))
    }

    /// `norm_1(dense) + norm_2(experts(h))`.
    pub fn forward(&self, _h: &Array, dense: &Array) -> Result<Array> {
        Ok(dense.clone())
    }
}
