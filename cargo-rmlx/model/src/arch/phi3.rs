//! Phi-3 (`phi3`): the llama block with fused projections — one `qkv_proj` for queries, keys
//! and values and one `gate_up_proj` for the MLP — partial rotary embeddings
//! (`partial_rotary_factor`) and Phi-3's long-context RoPE (`longrope`/`su`, applied as mlx-lm
//! does: the long factors at every length). Head width is `hidden_size / num_attention_heads`,
//! and the LM head is untied unless config.json says otherwise.
//!
//! Tensor parallelism splits each part of the fused projections on its own rows (this rank's
//! q, k and v heads; its share of gate and of up), and o/down by their input columns.

use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::Array;
use serde_json::Value;

use super::Architecture;
use crate::diagnostic::Result;
use crate::engine::attention::{attend_projected, AttentionSpec};
use crate::engine::cache::{Cache, CacheKind};
use crate::engine::ends::Ends;
use crate::engine::layers::{Linear, LoadCtx, RmsNorm, Rope};
use crate::engine::network::Network;
use crate::snapshot::config::KeyDefaults;
use crate::snapshot::{ModelConfig, RopeScaling};

/// Registry entry.
pub const ARCH: Architecture = Architecture {
    model_types: &["phi3"],
    load,
    convert: super::convert::phi3::CONVERT,
    gguf: &[super::gguf::phi3::PHI3],
    keys: |_| KEYS,
};

/// mlx-lm's phi3: llama's defaults with untied embeddings.
const KEYS: KeyDefaults = KeyDefaults {
    tie_word_embeddings: false,
    ..KeyDefaults::LLAMA
};

#[derive(Debug)]
struct Block {
    input_norm: RmsNorm,
    qkv_proj: Linear,
    o_proj: Linear,
    post_attn_norm: RmsNorm,
    gate_up_proj: Linear,
    down_proj: Linear,
}

#[derive(Debug)]
struct Phi3 {
    ends: Ends,
    blocks: Vec<Block>,
    attn: AttentionSpec,
    rope: Rope,
    inner: i32,
}

fn load(ctx: &LoadCtx<'_>) -> Result<Box<dyn Network>> {
    let c = ctx.config;
    // The whole model's head count (a tensor-parallel rank's config holds its own heads).
    let head_dim = c.hidden_size / ctx.parallel.whole_heads(c);
    let blocks = (0..c.num_hidden_layers)
        .map(|i| load_block(ctx, i, head_dim))
        .collect::<Result<Vec<_>>>()?;
    Ok(Box::new(Phi3 {
        ends: Ends::load(ctx, false, None, c.tie_word_embeddings)?,
        blocks,
        attn: AttentionSpec {
            n_heads: c.num_attention_heads,
            n_kv_heads: c.num_key_value_heads,
            head_dim,
            qkv_bias: false,
            o_bias: false,
            qk_norm: None,
            window: None,
            scale: (head_dim as f32).powf(-0.5),
        },
        rope: rope(c, head_dim)?,
        inner: c.intermediate_size as i32,
    }))
}

/// The rotary embedding over `partial_rotary_factor` of each head; rope scaling other than
/// longrope/su/linear is ignored with a warning, as mlx-lm does.
fn rope(c: &ModelConfig, head_dim: usize) -> Result<Rope> {
    let factor = c
        .raw
        .get("partial_rotary_factor")
        .and_then(Value::as_f64)
        .unwrap_or(1.0);
    let dims = (head_dim as f64 * factor) as usize;
    let scaling = match &c.rope_scaling {
        Some(s @ (RopeScaling::LongRope { .. } | RopeScaling::Linear { .. })) => Some(s),
        Some(other) => {
            tracing::warn!(
                "phi3 supports longrope/su/linear rope scaling only; ignoring {other:?}"
            );
            None
        }
        None => None,
    };
    Rope::new(dims, c.rope_theta, scaling)
}

fn load_block(ctx: &LoadCtx<'_>, i: usize, head_dim: usize) -> Result<Block> {
    let c = ctx.config;
    let (h, eps) = (c.hidden_size, c.rms_norm_eps);
    let (q, kv) = (
        c.num_attention_heads * head_dim,
        c.num_key_value_heads * head_dim,
    );
    let inner = c.intermediate_size;
    let p = format!("model.layers.{i}");
    let heads = ctx.attention_heads(); // tensor parallelism: this rank's heads
    Ok(Block {
        input_norm: ctx.rms_norm(&format!("{p}.input_layernorm"), h, eps, false)?,
        qkv_proj: heads.column_fused_linear(
            &format!("{p}.self_attn.qkv_proj"),
            h,
            &[q, kv, kv],
            false,
        )?,
        o_proj: heads.row_linear(&format!("{p}.self_attn.o_proj"), q, h, false)?,
        post_attn_norm: ctx.rms_norm(&format!("{p}.post_attention_layernorm"), h, eps, false)?,
        gate_up_proj: ctx.column_fused_linear(
            &format!("{p}.mlp.gate_up_proj"),
            h,
            &[inner, inner],
            false,
        )?,
        down_proj: ctx.row_linear(&format!("{p}.mlp.down_proj"), inner, h, false)?,
    })
}

impl Phi3 {
    fn attention(&self, b: &Block, x: &Array, cache: &mut Cache, i: usize) -> Result<Array> {
        let qkv = b.qkv_proj.forward(x)?;
        let q_end = (self.attn.n_heads * self.attn.head_dim) as i32;
        let k_end = q_end + (self.attn.n_kv_heads * self.attn.head_dim) as i32;
        let (q, k, v) = (
            qkv.index((.., .., ..q_end)),
            qkv.index((.., .., q_end..k_end)),
            qkv.index((.., .., k_end..)),
        );
        let offset = cache.offset;
        let o = attend_projected(q, k, v, &self.attn, cache.kv(i)?, offset, Some(&self.rope))?;
        b.o_proj.forward(&o)
    }

    fn mlp(&self, b: &Block, x: &Array) -> Result<Array> {
        let gu = b.gate_up_proj.forward(x)?;
        let gate = gu.index((.., .., ..self.inner));
        let up = gu.index((.., .., self.inner..));
        let act = mlx_rs::nn::silu(&gate)?.multiply(&up)?;
        b.down_proj.forward(&act)
    }
}

impl Network for Phi3 {
    fn hidden(&self, ids: &Array, cache: &mut Cache) -> Result<Array> {
        let mut x = self.ends.embed(ids)?;
        for (i, b) in self.blocks.iter().enumerate() {
            let r = self.attention(b, &b.input_norm.forward(&x)?, cache, i)?;
            x = x.add(&r)?;
            let r = self.mlp(b, &b.post_attn_norm.forward(&x)?)?;
            x = x.add(&r)?;
        }
        cache.offset += ids.shape()[1] as usize;
        Ok(x)
    }

    fn logits(&self, x: &Array) -> Result<Array> {
        self.ends.logits(x)
    }

    fn cache_kinds(&self) -> Vec<CacheKind> {
        vec![CacheKind::Kv; self.blocks.len()]
    }
}
