//! One Gemma 4 decoder layer: its attention variant (own keys/values or those of an earlier
//! layer, keys reused as values with `attention_k_eq_v`, the head width and RoPE of its layer
//! type, q/k norms and an unscaled v norm, softmax scale 1), the GELU-tanh MLP (twice as wide on
//! shared-KV layers), the optional MoE branch, the per-layer-input gate and the layer scalar.

use mlx_rs::Array;

use super::config::{Gemma4Config, LayerType};
use super::moe::MoeBranch;
use crate::diagnostic::{code, Result};
use crate::engine::attention::{attend, merge_heads, split_heads};
use crate::engine::cache::KvLayer;
use crate::engine::layers::{Linear, LoadCtx, RmsNorm, Rope};
use crate::engine::mlp::{Activation, GatedMlp};

/// Keys and values as attention reads them, `[B, kv_heads, T, head_dim]` each.
pub type KeysValues = (Array, Array);

/// Where a layer's keys/values come from.
pub enum KvSource<'a> {
    /// Computed by the layer and appended to its cache.
    Own(&'a mut KvLayer),
    /// Those an earlier layer attended over in this same pass (shared-KV layers).
    Shared(KeysValues),
}

/// A layer's own key/value projections (absent on shared-KV layers).
struct KvProj {
    k_proj: Linear,
    /// `None` with `attention_k_eq_v`: the keys, before their norm, are the values.
    v_proj: Option<Linear>,
    k_norm: RmsNorm,
}

/// Gemma 4 attention (see the module docs).
struct Attention {
    q_proj: Linear,
    o_proj: Linear,
    q_norm: RmsNorm,
    kv: Option<KvProj>,
    heads: i32,
    kv_heads: i32,
    head_dim: i32,
    window: Option<usize>,
    eps: f32,
}

impl Attention {
    fn load(ctx: &LoadCtx<'_>, p: &str, c: &Gemma4Config, i: usize) -> Result<Self> {
        let t = c.layer_types[i];
        let head_dim = match t {
            LayerType::Full => c.global_head_dim,
            LayerType::Sliding => c.head_dim,
        };
        let k_eq_v = c.k_eq_v && t == LayerType::Full;
        let kv_heads = match (k_eq_v, c.global_kv_heads) {
            (true, Some(n)) => n,
            _ => c.kv_heads,
        };
        let (h, q, kv) = (c.hidden, c.heads * head_dim, kv_heads * head_dim);
        // Tensor parallelism: this rank's heads; a single global KV head stays whole.
        let whole_kv = k_eq_v && c.whole_global_kv;
        let heads = ctx.attention_heads();
        let kv_ctx = if whole_kv { *ctx } else { heads.column() };
        let ctx = &heads;
        let kv_proj = (i < c.first_shared())
            .then(|| -> Result<KvProj> {
                Ok(KvProj {
                    k_proj: kv_ctx.linear(&format!("{p}.k_proj"), h, kv, false)?,
                    v_proj: (!k_eq_v)
                        .then(|| kv_ctx.linear(&format!("{p}.v_proj"), h, kv, false))
                        .transpose()?,
                    k_norm: ctx.rms_norm(&format!("{p}.k_norm"), head_dim, c.eps, false)?,
                })
            })
            .transpose()?;
        Ok(Self {
            q_proj: ctx.column_linear(&format!("{p}.q_proj"), h, q, false)?,
            o_proj: ctx.row_linear(&format!("{p}.o_proj"), q, h, false)?,
            q_norm: ctx.rms_norm(&format!("{p}.q_norm"), head_dim, c.eps, false)?,
            kv: kv_proj,
            heads: c.heads as i32,
            kv_heads: kv_heads as i32,
            head_dim: head_dim as i32,
            window: (t == LayerType::Sliding).then_some(c.sliding_window),
            eps: c.eps,
        })
    }

    /// `x` → (output projected back to the residual width, the keys/values attended over).
    fn forward(
        &self,
        x: &Array,
        source: KvSource<'_>,
        offset: usize,
        rope: &Rope,
    ) -> Result<(Array, KeysValues)> {
        let q = split_heads(self.q_proj.forward(x)?, self.heads, self.head_dim)?;
        let q = rope.forward(&self.q_norm.forward(&q)?, offset)?;
        let (k, v) = match source {
            KvSource::Shared(kv) => kv,
            KvSource::Own(cache) => {
                let (k, v) = self.keys_values(x, offset, rope)?;
                cache.update(k, v, self.window)?
            }
        };
        let o = attend(&q, &k, &v, offset, self.window, 1.0, None)?;
        Ok((self.o_proj.forward(&merge_heads(o)?)?, (k, v)))
    }

    /// This layer's new keys (normed, rotated) and values (normed without a scale).
    fn keys_values(&self, x: &Array, offset: usize, rope: &Rope) -> Result<KeysValues> {
        let Some(p) = &self.kv else {
            return Err(crate::diagnostic::Diagnostic::error(
                code::Engine::Cache,
                "a KV-shared layer was asked for its own keys (internal error)",
            ));
        };
        let (n, d) = (self.kv_heads, self.head_dim);
        let k = split_heads(p.k_proj.forward(x)?, n, d)?;
        let v = match &p.v_proj {
            Some(v_proj) => split_heads(v_proj.forward(x)?, n, d)?,
            None => k.clone(),
        };
        let k = rope.forward(&p.k_norm.forward(&k)?, offset)?;
        let v = mlx_rs::fast::rms_norm(&v, None, self.eps)?;
        Ok((k, v))
    }
}

/// The per-layer-input gate: `h + norm(proj(gelu_tanh(gate(h)) · input))`.
struct PerLayerGate {
    gate: Linear,
    projection: Linear,
    norm: RmsNorm,
}

impl PerLayerGate {
    fn forward(&self, h: &Array, input: &Array) -> Result<Array> {
        let g = Activation::GeluTanh.apply(&self.gate.forward(h)?)?;
        let g = self.projection.forward(&g.multiply(input)?)?;
        Ok(h.add(&self.norm.forward(&g)?)?)
    }
}

/// One decoder layer.
pub struct Layer {
    input_norm: RmsNorm,
    attn: Attention,
    post_attn_norm: RmsNorm,
    pre_ff_norm: RmsNorm,
    mlp: GatedMlp,
    moe: Option<MoeBranch>,
    post_ff_norm: RmsNorm,
    per_layer: Option<PerLayerGate>,
    /// `layer_scalar` (`[1]`): the layer's output is multiplied by it.
    scalar: Array,
    /// Index of the layer type's rope.
    pub rope: usize,
}

impl Layer {
    /// Loads layer `i` under `{prefix}layers.{i}`.
    pub fn load(ctx: &LoadCtx<'_>, prefix: &str, c: &Gemma4Config, i: usize) -> Result<Self> {
        let p = format!("{prefix}layers.{i}");
        let (h, eps) = (c.hidden, c.eps);
        let norm = |name: &str| ctx.rms_norm(&format!("{p}.{name}"), h, eps, false);
        let shared = i >= c.first_shared();
        let inner = c.intermediate * if shared && c.double_wide_mlp { 2 } else { 1 };
        let per_layer = c
            .per_layer
            .map(|pl| -> Result<PerLayerGate> {
                Ok(PerLayerGate {
                    gate: ctx.linear(&format!("{p}.per_layer_input_gate"), h, pl.width, false)?,
                    projection: ctx.linear(
                        &format!("{p}.per_layer_projection"),
                        pl.width,
                        h,
                        false,
                    )?,
                    norm: norm("post_per_layer_input_norm")?,
                })
            })
            .transpose()?;
        Ok(Self {
            input_norm: norm("input_layernorm")?,
            attn: Attention::load(ctx, &format!("{p}.self_attn"), c, i)?,
            post_attn_norm: norm("post_attention_layernorm")?,
            pre_ff_norm: norm("pre_feedforward_layernorm")?,
            mlp: GatedMlp::load(
                ctx,
                &format!("{p}.mlp"),
                h,
                inner,
                false,
                Activation::GeluTanh,
            )?,
            moe: c.moe.map(|m| MoeBranch::load(ctx, &p, c, m)).transpose()?,
            post_ff_norm: norm("post_feedforward_layernorm")?,
            per_layer,
            scalar: ctx.param(&format!("{p}.layer_scalar"), &[1])?,
            rope: match c.layer_types[i] {
                LayerType::Sliding => 0,
                LayerType::Full => 1,
            },
        })
    }

    /// Runs the layer on the residual stream `x`; returns the new stream and the keys/values
    /// its attention read (for the layers sharing them).
    pub fn forward(
        &self,
        x: &Array,
        per_layer_input: Option<&Array>,
        source: KvSource<'_>,
        offset: usize,
        rope: &Rope,
    ) -> Result<(Array, KeysValues)> {
        let (a, kv) = self
            .attn
            .forward(&self.input_norm.forward(x)?, source, offset, rope)?;
        let h = x.add(&self.post_attn_norm.forward(&a)?)?;
        let dense = self.mlp.forward(&self.pre_ff_norm.forward(&h)?)?;
        let ff = match &self.moe {
            None => dense,
            Some(moe) => moe.forward(&h, &dense)?,
        };
        let mut h = h.add(&self.post_ff_norm.forward(&ff)?)?;
        if let (Some(gate), Some(input)) = (&self.per_layer, per_layer_input) {
            h = gate.forward(&h, input)?;
        }
        Ok((h.multiply(&self.scalar)?, kv))
    }
}
