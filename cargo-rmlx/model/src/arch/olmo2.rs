//! OLMo 2 (`olmo2`): no pre-norms — the attention and MLP outputs are normalised before their
//! residual adds (`post_attention_layernorm`, `post_feedforward_layernorm`); queries and keys
//! are RMS-normalised over their whole projection (all heads at once) before RoPE.
//!
//! Tensor parallelism splits q/k/v by heads, o by its input columns and the MLP as usual; the
//! q/k norms see every head through [`WideRmsNorm`] (the ranks add their sums of squares).

use mlx_rs::Array;

use super::Architecture;
use crate::diagnostic::Result;
use crate::engine::attention::{attend_projected, AttentionSpec};
use crate::engine::cache::{Cache, CacheKind};
use crate::engine::ends::Ends;
use crate::engine::layers::parallel::WideRmsNorm;
use crate::engine::layers::{Linear, LoadCtx, RmsNorm, Rope};
use crate::engine::mlp::{Activation, GatedMlp};
use crate::engine::network::Network;
use crate::snapshot::config::KeyDefaults;

/// Registry entry.
pub const ARCH: Architecture = Architecture {
    model_types: &["olmo2"],
    load,
    convert: super::convert::olmo2::CONVERT,
    gguf: &[super::gguf::olmo2::OLMO2],
    keys: |_| KeyDefaults::LLAMA,
};

#[derive(Debug)]
struct Block {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    q_norm: WideRmsNorm,
    k_norm: WideRmsNorm,
    attn: AttentionSpec,
    post_attn_norm: RmsNorm,
    mlp: GatedMlp,
    post_ff_norm: RmsNorm,
}

#[derive(Debug)]
struct Olmo2 {
    ends: Ends,
    blocks: Vec<Block>,
    rope: Rope,
}

fn load(ctx: &LoadCtx<'_>) -> Result<Box<dyn Network>> {
    let c = ctx.config;
    let blocks = (0..c.num_hidden_layers)
        .map(|i| load_block(ctx, i))
        .collect::<Result<Vec<_>>>()?;
    Ok(Box::new(Olmo2 {
        ends: Ends::load(ctx, false, None, c.tie_word_embeddings)?,
        blocks,
        rope: Rope::new(c.head_dim, c.rope_theta, c.rope_scaling.as_ref())?,
    }))
}

fn load_block(ctx: &LoadCtx<'_>, i: usize) -> Result<Block> {
    let c = ctx.config;
    let (h, eps, bias) = (c.hidden_size, c.rms_norm_eps, c.attention_bias);
    let (q, kv) = (
        c.num_attention_heads * c.head_dim,
        c.num_key_value_heads * c.head_dim,
    );
    let a = format!("model.layers.{i}.self_attn");
    let norm =
        |name: &str, dim: usize| ctx.rms_norm(&format!("model.layers.{i}.{name}"), dim, eps, false);
    let heads = ctx.attention_heads(); // tensor parallelism: this rank's heads
    Ok(Block {
        q_proj: heads.column_linear(&format!("{a}.q_proj"), h, q, bias)?,
        k_proj: heads.column_linear(&format!("{a}.k_proj"), h, kv, bias)?,
        v_proj: heads.column_linear(&format!("{a}.v_proj"), h, kv, bias)?,
        o_proj: heads.row_linear(&format!("{a}.o_proj"), q, h, bias)?,
        q_norm: ctx.heads_rms_norm(&format!("{a}.q_norm"), q, eps)?,
        k_norm: ctx.heads_rms_norm(&format!("{a}.k_norm"), kv, eps)?,
        attn: AttentionSpec {
            n_heads: c.num_attention_heads,
            n_kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            qkv_bias: bias,
            o_bias: bias,
            qk_norm: None,
            window: None,
            scale: (c.head_dim as f32).powf(-0.5),
        },
        post_attn_norm: norm("post_attention_layernorm", h)?,
        mlp: GatedMlp::load(
            ctx,
            &format!("model.layers.{i}.mlp"),
            h,
            c.intermediate_size,
            c.mlp_bias,
            Activation::Silu,
        )?,
        post_ff_norm: norm("post_feedforward_layernorm", h)?,
    })
}

impl Block {
    fn attention(&self, x: &Array, cache: &mut Cache, i: usize, rope: &Rope) -> Result<Array> {
        let [q, k, v] = Linear::forward_many([&self.q_proj, &self.k_proj, &self.v_proj], x)?;
        let (q, k) = (self.q_norm.forward(&q)?, self.k_norm.forward(&k)?);
        let offset = cache.offset;
        let o = attend_projected(q, k, v, &self.attn, cache.kv(i)?, offset, Some(rope))?;
        self.o_proj.forward(&o)
    }
}

impl Network for Olmo2 {
    fn hidden(&self, ids: &Array, cache: &mut Cache) -> Result<Array> {
        let mut x = self.ends.embed(ids)?;
        for (i, b) in self.blocks.iter().enumerate() {
            let r = b.attention(&x, cache, i, &self.rope)?;
            x = x.add(&b.post_attn_norm.forward(&r)?)?;
            let r = b.mlp.forward(&x)?;
            x = x.add(&b.post_ff_norm.forward(&r)?)?;
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
