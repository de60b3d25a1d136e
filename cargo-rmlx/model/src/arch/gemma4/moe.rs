//! Gemma 4's MoE branch (`enable_moe_block`), run beside the dense MLP of each layer: its own
//! router (RMSNorm with a learned scale times `hidden^-0.5`, projection, top-k, softmax over
//! the k, times a learned per-expert scale) and stacked GELU-tanh experts
//! (`engine::moe::SwitchGlu`), each branch with its own norms.

use mlx_rs::Array;

use super::config::{Gemma4Config, MoeConfig};
use crate::diagnostic::Result;
use crate::engine::layers::{Linear, LoadCtx, RmsNorm};
use crate::engine::mlp::Activation;
use crate::engine::moe::{combine, route, ExpertActivation, Routing, SwitchGlu};

/// The router, the stacked experts and the branch's three norms.
pub struct MoeBranch {
    proj: Linear,
    /// `router.scale · hidden^-0.5`: the weight of the router's input norm.
    router_norm: Array,
    /// `router.per_expert_scale` (`[experts]`).
    per_expert_scale: Array,
    experts: SwitchGlu,
    top_k: usize,
    eps: f32,
    /// Norm of the dense MLP's output (`post_feedforward_layernorm_1`).
    dense_norm: RmsNorm,
    /// Norm of the experts' input (`pre_feedforward_layernorm_2`).
    pre_norm: RmsNorm,
    /// Norm of the experts' output (`post_feedforward_layernorm_2`).
    post_norm: RmsNorm,
}

impl MoeBranch {
    /// Loads the branch of the layer under `p`.
    pub fn load(ctx: &LoadCtx<'_>, p: &str, c: &Gemma4Config, m: MoeConfig) -> Result<Self> {
        let (h, eps) = (c.hidden, c.eps);
        let norm = |name: &str| ctx.rms_norm(&format!("{p}.{name}"), h, eps, false);
        let scale = ctx.param(&format!("{p}.router.scale"), &[h])?;
        let root = Array::from_f32((h as f64).powf(-0.5) as f32).as_dtype(scale.dtype())?;
        Ok(Self {
            proj: ctx.linear(&format!("{p}.router.proj"), h, m.experts, false)?,
            router_norm: scale.multiply(&root)?,
            per_expert_scale: ctx.param(&format!("{p}.router.per_expert_scale"), &[m.experts])?,
            experts: SwitchGlu::load(
                ctx,
                &format!("{p}.experts.switch_glu"),
                m.experts,
                (h, m.inner),
                false,
                ExpertActivation::Glu(Activation::GeluTanh),
            )?,
            top_k: m.top_k,
            eps,
            dense_norm: norm("post_feedforward_layernorm_1")?,
            pre_norm: norm("pre_feedforward_layernorm_2")?,
            post_norm: norm("post_feedforward_layernorm_2")?,
        })
    }

    /// `norm_1(dense) + norm_2(experts(pre_norm_2(h)))`, where `dense` is the dense MLP's
    /// output for the same stream `h`.
    pub fn forward(&self, h: &Array, dense: &Array) -> Result<Array> {
        let x = mlx_rs::fast::rms_norm(h, Some(&self.router_norm), self.eps)?;
        let (experts, weights) = route(&self.proj.forward(&x)?, self.top_k, Routing::TopKSoftmax)?;
        let weights = weights.multiply(self.per_expert_scale.take_axis(&experts, 0)?)?;
        let y = self.experts.forward(&self.pre_norm.forward(h)?, &experts)?;
        // Tensor parallelism: the ranks' experts hold parts of their inner width; the mix is
        // summed before its norm.
        let y = crate::engine::dist::all_sum(combine(&y, &weights)?)?;
        let y = self.post_norm.forward(&y)?;
        Ok(self.dense_norm.forward(dense)?.add(&y)?)
    }
}
