//! Ministral 3 (`ministral3`, also the text model of `mistral3` checkpoints): the llama block
//! with its RoPE declared in `rope_parameters` (base and YaRN scaling), sliding-window layers
//! where `layer_types` says so, and Llama 4's position-dependent query scaling
//! `1 + β·ln(1 + ⌊pos / original_max_position_embeddings⌋)`.

use mlx_rs::Array;
use serde_json::Value;

use super::layer_kinds::{windows, LayerRule};
use super::Architecture;
use crate::diagnostic::{code, Result};
use crate::engine::attention::{Attention, AttentionSpec};
use crate::engine::cache::{Cache, CacheKind};
use crate::engine::ends::Ends;
use crate::engine::layers::{Linear, LoadCtx, RmsNorm, Rope};
use crate::engine::mlp::{Activation, GatedMlp};
use crate::engine::network::Network;
use crate::snapshot::config::KeyDefaults;
use crate::snapshot::ModelConfig;

/// Registry entry.
pub const ARCH: Architecture = Architecture {
    model_types: &["ministral3"],
    load,
    convert: super::convert::mistral3::CONVERT,
    gguf: &[super::gguf::ministral3::MISTRAL3],
    // Its RoPE is read from `rope_parameters` below, as mlx-lm's ministral3 does.
    keys: |_| KeyDefaults::LLAMA,
};

/// mlx-lm's ministral3: the layers `layer_types` lists, else global attention everywhere.
const LAYERS: LayerRule = LayerRule::listed("ministral3");

#[derive(Debug)]
struct Block {
    input_norm: RmsNorm,
    attn: Attention,
    post_attn_norm: RmsNorm,
    mlp: GatedMlp,
}

#[derive(Debug)]
struct Ministral3 {
    ends: Ends,
    blocks: Vec<Block>,
    rope: Rope,
    /// Llama 4 query scaling: (β, original context length).
    query_scaling: (f32, f32),
}

fn load(ctx: &LoadCtx<'_>) -> Result<Box<dyn Network>> {
    let c = ctx.config;
    let num = |key: &str| rope_parameter(c, key);
    let theta = num("rope_theta")?;
    let windows = windows(c, &LAYERS.kinds(c)?, None)?;
    let blocks = windows
        .iter()
        .enumerate()
        .map(|(i, w)| load_block(ctx, i, *w))
        .collect::<Result<Vec<_>>>()?;
    Ok(Box::new(Ministral3 {
        ends: Ends::load(ctx, false, None, c.tie_word_embeddings)?,
        blocks,
        rope: Rope::new(
            c.head_dim,
            theta,
            c.rope_scaling_in("rope_parameters")?.as_ref(),
        )?,
        query_scaling: (
            num("llama_4_scaling_beta")?,
            num("original_max_position_embeddings")?,
        ),
    }))
}

/// A number mlx-lm requires in `rope_parameters`.
fn rope_parameter(c: &ModelConfig, key: &str) -> Result<f32> {
    let v = c.raw.get("rope_parameters").and_then(|p| p.get(key));
    match v.and_then(Value::as_f64) {
        Some(x) if x.is_finite() => Ok(x as f32),
        _ => Err(c.located(
            code::Snapshot::Config,
            format!("ministral3 needs a number `rope_parameters.{key}`"),
            "rope_parameters",
        )),
    }
}

fn load_block(ctx: &LoadCtx<'_>, i: usize, window: Option<usize>) -> Result<Block> {
    let c = ctx.config;
    let (h, eps) = (c.hidden_size, c.rms_norm_eps);
    let p = format!("model.layers.{i}");
    let spec = AttentionSpec {
        n_heads: c.num_attention_heads,
        n_kv_heads: c.num_key_value_heads,
        head_dim: c.head_dim,
        qkv_bias: false,
        o_bias: false,
        qk_norm: None,
        window,
        scale: (c.head_dim as f32).powf(-0.5),
    };
    Ok(Block {
        input_norm: ctx.rms_norm(&format!("{p}.input_layernorm"), h, eps, false)?,
        attn: Attention::load(ctx, &format!("{p}.self_attn"), h, spec)?,
        post_attn_norm: ctx.rms_norm(&format!("{p}.post_attention_layernorm"), h, eps, false)?,
        mlp: GatedMlp::load(
            ctx,
            &format!("{p}.mlp"),
            h,
            c.intermediate_size,
            false,
            Activation::Silu,
        )?,
    })
}

impl Ministral3 {
    /// The per-position query scale `[L, 1]` for positions `offset..offset + len`.
    fn query_scale(&self, offset: usize, len: usize, dtype: mlx_rs::Dtype) -> Result<Array> {
        let (beta, original) = self.query_scaling;
        let scale: Vec<f32> = (offset..offset + len)
            .map(|p| 1.0 + beta * (1.0 + (p as f32 / original).floor()).ln())
            .collect();
        Ok(Array::from_slice(&scale, &[len as i32, 1]).as_dtype(dtype)?)
    }
}

impl Network for Ministral3 {
    fn hidden(&self, ids: &Array, cache: &mut Cache) -> Result<Array> {
        let len = ids.shape()[1] as usize;
        let offset = cache.offset;
        let mut x = self.ends.embed(ids)?;
        let scale = self.query_scale(offset, len, x.dtype())?;
        for (i, b) in self.blocks.iter().enumerate() {
            let a = &b.attn;
            let n = b.input_norm.forward(&x)?;
            let [q, k, v] = Linear::forward_many([&a.q_proj, &a.k_proj, &a.v_proj], &n)?;
            // Scaling each position's query commutes with RoPE (a rotation).
            let q = q.multiply(&scale)?;
            let o = a.core(q, k, v, cache.kv(i)?, offset, Some(&self.rope))?;
            x = x.add(&a.o_proj.forward(&o)?)?;
            x = x.add(&b.mlp.forward(&b.post_attn_norm.forward(&x)?)?)?;
        }
        cache.offset += len;
        Ok(x)
    }

    fn logits(&self, x: &Array) -> Result<Array> {
        self.ends.logits(x)
    }

    fn cache_kinds(&self) -> Vec<CacheKind> {
        vec![CacheKind::Kv; self.blocks.len()]
    }
}
