//! Feed-forward blocks shared by the architectures: the gated MLP ([`GatedMlp`]:
//! `down(act(gate(x)) * up(x))`) and its activations ([`Activation`]).

use mlx_rs::Array;

use super::layers::{Linear, LoadCtx};
use crate::diagnostic::Result;

/// Activation of the gated MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `silu(gate) * up` (llama, qwen).
    Silu,
    /// `gelu_tanh(gate) * up` (gemma).
    GeluTanh,
}

impl Activation {
    /// `act(gate)`.
    pub fn apply(self, gate: &Array) -> Result<Array> {
        Ok(match self {
            Activation::Silu => mlx_rs::nn::silu(gate)?,
            Activation::GeluTanh => mlx_rs::nn::gelu_approximate(gate)?,
        })
    }
}

/// `down_proj(act(gate_proj(x)) * up_proj(x))`.
#[derive(Debug)]
pub struct GatedMlp {
    /// Gate projection.
    pub gate_proj: Linear,
    /// Up projection.
    pub up_proj: Linear,
    /// Down projection.
    pub down_proj: Linear,
    /// Activation of the gate.
    pub activation: Activation,
}

impl GatedMlp {
    /// Loads `{prefix}.{gate,up,down}_proj` for widths `hidden` → `inner` → `hidden`.
    pub fn load(
        ctx: &LoadCtx<'_>,
        prefix: &str,
        hidden: usize,
        inner: usize,
        bias: bool,
        activation: Activation,
    ) -> Result<Self> {
        Ok(Self {
            gate_proj: ctx.column_linear(&format!("{prefix}.gate_proj"), hidden, inner, bias)?,
            up_proj: ctx.column_linear(&format!("{prefix}.up_proj"), hidden, inner, bias)?,
            down_proj: ctx.row_linear(&format!("{prefix}.down_proj"), inner, hidden, bias)?,
            activation,
        })
    }

    /// Whether every projection can run on the host kernels.
    pub fn host_capable(&self) -> bool {
        [&self.gate_proj, &self.up_proj, &self.down_proj]
            .iter()
            .all(|l| l.host_capable())
    }

    /// Applies the MLP to `x` (`[…, hidden]`).
    pub fn forward(&self, x: &Array) -> Result<Array> {
        let [gate, up] = Linear::forward_many([&self.gate_proj, &self.up_proj], x)?;
        let act = self.activation.apply(&gate)?;
        self.down_proj.forward(&act.multiply(&up)?)
    }
}
