//! Feed-forward blocks shared by the architectures: the gated MLP ([`GatedMlp`]:
//! `down(act(gate(x)) * up(x))`) and its activations ([`Activation`]).

use mlx_rs::error::Result as MlxResult;
use mlx_rs::transforms::compile::compile;
use mlx_rs::Array;

use super::layers::{Fused, Linear, LoadCtx};
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

    /// `act(gate) * up`; SiLU's as one fused MLX kernel (a compiled function kept per
    /// thread, like mlx-lm's `swiglu`, instead of a sigmoid, two products and a re-trace per
    /// call).
    pub fn gated(self, gate: &Array, up: &Array) -> Result<Array> {
        match self {
            Activation::Silu => SWIGLU
                .with_borrow_mut(|f| f((gate, up)))
                .map_err(Into::into),
            Activation::GeluTanh => Ok(self.apply(gate)?.multiply(up)?),
        }
    }
}

/// A compiled function of two arrays.
type Compiled2 = Box<dyn for<'a> FnMut((&'a Array, &'a Array)) -> MlxResult<Array>>;

thread_local! {
    /// `silu(gate) * up`, compiled shapeless once per thread (a compiled function is erased
    /// from MLX's cache when dropped, so it must outlive the calls).
    static SWIGLU: std::cell::RefCell<Compiled2> = std::cell::RefCell::new(Box::new(compile(
        |(g, u): (&Array, &Array)| g.multiply(mlx_rs::ops::sigmoid(g)?)?.multiply(u),
        true,
    )));
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
    /// gate|up as one matmul (the MLX decode path, [`Linear::fuse`]).
    gate_up: Option<Fused>,
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
        let mut gate_proj =
            ctx.column_linear(&format!("{prefix}.gate_proj"), hidden, inner, bias)?;
        let mut up_proj = ctx.column_linear(&format!("{prefix}.up_proj"), hidden, inner, bias)?;
        let gate_up = Linear::fuse(&mut [&mut gate_proj, &mut up_proj])?;
        Ok(Self {
            gate_proj,
            up_proj,
            down_proj: ctx.row_linear(&format!("{prefix}.down_proj"), inner, hidden, bias)?,
            activation,
            gate_up,
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
        let [gate, up] = match &self.gate_up {
            Some(fused) => fused.forward(x)?,
            None => Linear::forward_many([&self.gate_proj, &self.up_proj], x)?,
        };
        self.down_proj.forward(&self.activation.gated(&gate, &up)?)
    }
}
