//! The decoder-only transformer every supported architecture is an instance of: embeddings,
//! N blocks of (RMSNorm → GQA attention with RoPE → residual, RMSNorm → gated MLP →
//! residual), final norm, LM head (tied or separate). Architectures differ by an
//! [`ArchSpec`] built from config.json (see `arch.rs`), not by code.

use mlx_rs::fast::{scaled_dot_product_attention, ScaledDotProductAttentionMask};
use mlx_rs::{Array, Dtype};

use super::cache::{KvCache, LayerCache};
use super::layers::{Embedding, Linear, LoadCtx, RmsNorm, Rope};
use crate::diagnostic::Result;

/// Activation of the gated MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `silu(gate) * up` (llama, qwen).
    Silu,
    /// `gelu_tanh(gate) * up` (gemma).
    GeluTanh,
}

/// What distinguishes one architecture from another, as flags.
#[derive(Debug, Clone)]
pub struct ArchSpec {
    /// Biases on q/k/v projections.
    pub qkv_bias: bool,
    /// Bias on the output projection.
    pub o_bias: bool,
    /// Biases on the MLP projections.
    pub mlp_bias: bool,
    /// MLP activation.
    pub activation: Activation,
    /// Softmax scale of attention (usually `head_dim^-0.5`).
    pub attn_scale: f32,
    /// RMSNorm over each query/key head before RoPE (qwen3, gemma3).
    pub qk_norm: bool,
    /// RMSNorm weights are stored as `w` and applied as `1 + w` (gemma).
    pub norm_one_plus: bool,
    /// Embeddings multiplied by this (gemma: sqrt(hidden), rounded to bf16).
    pub embed_scale: Option<f32>,
    /// Gemma's four norms per block: the attention and MLP outputs are normalised before
    /// their residual adds (`post_attention_layernorm`, `post_feedforward_layernorm`) and the
    /// MLP input by `pre_feedforward_layernorm`.
    pub sandwich_norms: bool,
    /// Per layer: `Some(window)` for sliding-window (local) attention, `None` for global.
    pub sliding_window: Vec<Option<usize>>,
    /// RoPE base of local layers, when it differs from `rope_theta` (gemma3).
    pub local_rope_theta: Option<f32>,
}

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    /// Sliding window of this layer (local attention).
    window: Option<usize>,
    /// Index into `Transformer::ropes`.
    rope: usize,
    n_heads: i32,
    n_kv_heads: i32,
    head_dim: i32,
    scale: f32,
}

struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    activation: Activation,
}

struct Block {
    input_norm: RmsNorm,
    attn: Attention,
    /// Llama: the pre-MLP norm. Gemma (sandwich): the norm of the attention output.
    post_attn_norm: RmsNorm,
    /// Gemma only: pre-MLP norm and MLP-output norm.
    sandwich: Option<(RmsNorm, RmsNorm)>,
    mlp: Mlp,
}

/// A loaded model, ready to run.
pub struct Transformer {
    embed: Embedding,
    blocks: Vec<Block>,
    norm: RmsNorm,
    lm_head: Option<Linear>,
    /// Global rope, then (gemma3) the local-layer rope.
    ropes: Vec<Rope>,
    embed_scale: Option<f32>,
    /// Compute dtype of activations.
    pub dtype: Dtype,
    /// Vocabulary size (logit count).
    pub vocab_size: usize,
    /// Whether one-token steps take the host path, decided at the first step.
    host_decode: std::sync::OnceLock<bool>,
}

impl std::fmt::Debug for Transformer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transformer")
            .field("layers", &self.blocks.len())
            .field("dtype", &self.dtype)
            .finish()
    }
}

impl Transformer {
    /// Loads all weights following HF llama-style names (`model.layers.N.self_attn.q_proj`…).
    pub fn load(ctx: &LoadCtx<'_>, spec: &ArchSpec) -> Result<Self> {
        let c = ctx.config;
        let (h, hd) = (c.hidden_size, c.head_dim);
        let (nh, nkv) = (c.num_attention_heads, c.num_key_value_heads);
        let eps = c.rms_norm_eps;
        let embed = ctx.embedding("model.embed_tokens", c.vocab_size, h)?;
        let one_plus = spec.norm_one_plus;
        let mut ropes = vec![Rope::new(hd, c.rope_theta, c.rope_scaling.as_ref())?];
        if let Some(theta) = spec.local_rope_theta {
            ropes.push(Rope::new(hd, theta, None)?);
        }
        let mut blocks = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let a = format!("{p}.self_attn");
            let m = format!("{p}.mlp");
            let window = spec.sliding_window.get(i).copied().flatten();
            let qk_norm = |name: &str| -> Result<Option<RmsNorm>> {
                if spec.qk_norm {
                    Ok(Some(ctx.rms_norm(
                        &format!("{a}.{name}"),
                        hd,
                        eps,
                        one_plus,
                    )?))
                } else {
                    Ok(None)
                }
            };
            let sandwich = if spec.sandwich_norms {
                Some((
                    ctx.rms_norm(&format!("{p}.pre_feedforward_layernorm"), h, eps, one_plus)?,
                    ctx.rms_norm(&format!("{p}.post_feedforward_layernorm"), h, eps, one_plus)?,
                ))
            } else {
                None
            };
            blocks.push(Block {
                input_norm: ctx.rms_norm(&format!("{p}.input_layernorm"), h, eps, one_plus)?,
                attn: Attention {
                    q_proj: ctx.linear(&format!("{a}.q_proj"), h, nh * hd, spec.qkv_bias)?,
                    k_proj: ctx.linear(&format!("{a}.k_proj"), h, nkv * hd, spec.qkv_bias)?,
                    v_proj: ctx.linear(&format!("{a}.v_proj"), h, nkv * hd, spec.qkv_bias)?,
                    o_proj: ctx.linear(&format!("{a}.o_proj"), nh * hd, h, spec.o_bias)?,
                    q_norm: qk_norm("q_norm")?,
                    k_norm: qk_norm("k_norm")?,
                    window,
                    rope: if window.is_some() { ropes.len() - 1 } else { 0 },
                    n_heads: nh as i32,
                    n_kv_heads: nkv as i32,
                    head_dim: hd as i32,
                    scale: spec.attn_scale,
                },
                post_attn_norm: ctx.rms_norm(
                    &format!("{p}.post_attention_layernorm"),
                    h,
                    eps,
                    one_plus,
                )?,
                sandwich,
                mlp: Mlp {
                    gate_proj: ctx.linear(
                        &format!("{m}.gate_proj"),
                        h,
                        c.intermediate_size,
                        spec.mlp_bias,
                    )?,
                    up_proj: ctx.linear(
                        &format!("{m}.up_proj"),
                        h,
                        c.intermediate_size,
                        spec.mlp_bias,
                    )?,
                    down_proj: ctx.linear(
                        &format!("{m}.down_proj"),
                        c.intermediate_size,
                        h,
                        spec.mlp_bias,
                    )?,
                    activation: spec.activation,
                },
            });
        }
        let norm = ctx.rms_norm("model.norm", h, eps, one_plus)?;
        let lm_head = if c.tie_word_embeddings {
            if ctx.weights.contains("lm_head.weight") {
                tracing::info!(
                    "config.json says tie_word_embeddings but lm_head.weight exists; using the \
                     tied embedding as mlx-lm does"
                );
            }
            None
        } else {
            Some(ctx.linear("lm_head", h, c.vocab_size, false)?)
        };
        Ok(Self {
            embed,
            blocks,
            norm,
            lm_head,
            ropes,
            embed_scale: spec.embed_scale,
            dtype: ctx.dtype,
            vocab_size: c.vocab_size,
            host_decode: std::sync::OnceLock::new(),
        })
    }

    /// Runs `ids` (`[1, L]` int32) through the model, appending to `cache`; returns the
    /// logits of the last position as float32 `[vocab]` (lazy; evaluate to compute).
    pub fn forward_last(&self, ids: &Array, cache: &mut KvCache) -> Result<Array> {
        let len = ids.shape()[1];
        let x = self.hidden(ids, cache)?;
        // Only the last position's logits are needed.
        let last = x.take_axis(Array::from_int(len - 1), 1)?;
        Ok(self.head(&last)?.reshape(&[-1])?)
    }

    /// Like [`Self::forward_last`] but returns the logits of every position, `[L, vocab]`
    /// float32 (teacher forcing).
    pub fn forward_all(&self, ids: &Array, cache: &mut KvCache) -> Result<Array> {
        let len = ids.shape()[1];
        let x = self.hidden(ids, cache)?;
        Ok(self.head(&x)?.reshape(&[len, -1])?)
    }

    /// Final norm and LM head → float32 logits.
    fn head(&self, x: &Array) -> Result<Array> {
        let x = self.norm.forward(x)?;
        let logits = match &self.lm_head {
            Some(head) => head.forward(&x)?,
            None => self.embed.as_linear(&x)?,
        };
        Ok(logits.as_dtype(Dtype::Float32)?)
    }

    /// Embeddings and all blocks: the residual stream `[1, L, hidden]` after the last block.
    fn hidden(&self, ids: &Array, cache: &mut KvCache) -> Result<Array> {
        let len = ids.shape()[1];
        let mut x = self.embed.forward(ids)?;
        if let Some(scale) = self.embed_scale {
            x = x.multiply(Array::from_f32(scale).as_dtype(x.dtype())?)?;
        }
        if len == 1 && self.host_decode() {
            return self.hidden_host_decode(x, cache);
        }
        for (block, layer_cache) in self.blocks.iter().zip(cache.layers.iter_mut()) {
            let rope = &self.ropes[block.attn.rope];
            let r = block.attn.forward(
                &block.input_norm.forward(&x)?,
                layer_cache,
                cache.offset,
                rope,
            )?;
            match &block.sandwich {
                None => {
                    x = x.add(&r)?;
                    let r = block.mlp.forward(&block.post_attn_norm.forward(&x)?)?;
                    x = x.add(&r)?;
                }
                Some((pre_ff, post_ff)) => {
                    x = x.add(&block.post_attn_norm.forward(&r)?)?;
                    let r = block.mlp.forward(&pre_ff.forward(&x)?)?;
                    x = x.add(&post_ff.forward(&r)?)?;
                }
            }
        }
        cache.offset += len as usize;
        Ok(x)
    }

    /// Whether one-token steps take [`Self::hidden_host_decode`]: the CPU host kernel covers
    /// every projection, norms are float32, and the block is the llama form (no sandwich
    /// norms, SiLU).
    fn host_decode(&self) -> bool {
        *self.host_decode.get_or_init(|| {
            let ok = super::qmv::enabled()
                && self.blocks.iter().all(|b| {
                    b.sandwich.is_none()
                        && b.mlp.activation == Activation::Silu
                        && b.input_norm.host_capable()
                        && b.post_attn_norm.host_capable()
                        && [
                            &b.attn.q_proj,
                            &b.attn.k_proj,
                            &b.attn.v_proj,
                            &b.attn.o_proj,
                            &b.mlp.gate_proj,
                            &b.mlp.up_proj,
                            &b.mlp.down_proj,
                        ]
                        .iter()
                        .all(|l| l.host_capable())
                });
            if super::qmv::enabled() {
                tracing::debug!(
                    "decode steps: {}",
                    if ok {
                        "host blocks (MLX runs attention only)"
                    } else {
                        "MLX blocks with host projections (layer form or weights not covered)"
                    }
                );
            }
            ok
        })
    }

    /// One decode step with the residual stream on the host: norms, projections (the `qmv`
    /// kernel), SiLU gate and residual adds run there; MLX runs what needs the KV cache
    /// (RoPE, cache update, attention) — one MLX evaluation per block instead of four.
    fn hidden_host_decode(&self, x: Array, cache: &mut KvCache) -> Result<Array> {
        let shape = x.shape().to_vec();
        let x = x.as_dtype(Dtype::Float32)?;
        let mut h: Vec<f32> = super::qmv::host_slice::<f32>(&x, "embedding")?.to_vec();
        for (block, layer_cache) in self.blocks.iter().zip(cache.layers.iter_mut()) {
            let a = &block.attn;
            let n = block.input_norm.host_forward(&h)?;
            let qkv = Linear::host_forward_many(&[&a.q_proj, &a.k_proj, &a.v_proj], &n)?;
            let [q, k, v] =
                [0, 1, 2].map(|i| Array::from_slice(&qkv[i], &[1, 1, qkv[i].len() as i32]));
            let o = a.core(q, k, v, layer_cache, cache.offset, &self.ropes[a.rope])?;
            let o = o.as_dtype(Dtype::Float32)?;
            let o = super::qmv::host_slice::<f32>(&o, "attention output")?;
            let r = Linear::host_forward_many(&[&a.o_proj], o)?.remove(0);
            h.iter_mut().zip(&r).for_each(|(h, r)| *h += r);
            let n = block.post_attn_norm.host_forward(&h)?;
            let mut gu =
                Linear::host_forward_many(&[&block.mlp.gate_proj, &block.mlp.up_proj], &n)?;
            let up = gu.pop().expect("two outputs");
            let mut act = gu.pop().expect("two outputs");
            act.iter_mut()
                .zip(&up)
                .for_each(|(g, u)| *g = *g / (1.0 + (-*g).exp()) * u);
            let r = Linear::host_forward_many(&[&block.mlp.down_proj], &act)?.remove(0);
            h.iter_mut().zip(&r).for_each(|(h, r)| *h += r);
        }
        cache.offset += 1;
        Ok(Array::from_slice(&h, &shape))
    }

    /// A fresh cache for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.blocks.len())
    }
}

impl Attention {
    fn forward(
        &self,
        x: &Array,
        cache: &mut LayerCache,
        offset: usize,
        rope: &Rope,
    ) -> Result<Array> {
        let [q, k, v] = Linear::forward_many([&self.q_proj, &self.k_proj, &self.v_proj], x)?;
        let o = self.core(q, k, v, cache, offset, rope)?;
        self.o_proj.forward(&o)
    }

    /// Attention from projected `q`, `k`, `v` (`[B, L, heads · head_dim]`) to the input of
    /// `o_proj`: head split, q/k norms, RoPE, cache update, scaled dot-product attention.
    fn core(
        &self,
        q: Array,
        k: Array,
        v: Array,
        cache: &mut LayerCache,
        offset: usize,
        rope: &Rope,
    ) -> Result<Array> {
        let (b, l) = (q.shape()[0], q.shape()[1]);
        let heads = |a: Array, n: i32| -> Result<Array> {
            if l == 1 {
                // One position: [B, 1, n, d] and [B, n, 1, d] share a layout.
                return Ok(a.reshape(&[b, n, 1, self.head_dim])?);
            }
            Ok(a.reshape(&[b, l, n, self.head_dim])?
                .transpose_axes(&[0, 2, 1, 3])?)
        };
        let mut q = heads(q, self.n_heads)?;
        let mut k = heads(k, self.n_kv_heads)?;
        let v = heads(v, self.n_kv_heads)?;
        if let Some(n) = &self.q_norm {
            q = n.forward(&q)?;
        }
        if let Some(n) = &self.k_norm {
            k = n.forward(&k)?;
        }
        let q = rope.forward(&q, offset)?;
        let k = rope.forward(&k, offset)?;
        let (k, v) = cache.update(k, v, self.window)?;
        let total = k.shape()[2] as usize;
        let o = match self.window {
            // Some keys fall outside the window of some queries: explicit mask.
            Some(w) if l > 1 && offset + l as usize > w => {
                let mask = sliding_mask(l as usize, total, w)?;
                scaled_dot_product_attention(&q, &k, &v, self.scale, &mask, None)?
            }
            _ => {
                let mask = (l > 1).then_some(ScaledDotProductAttentionMask::Causal);
                scaled_dot_product_attention(&q, &k, &v, self.scale, mask, None)?
            }
        };
        if l == 1 {
            return Ok(o.reshape(&[b, 1, self.n_heads * self.head_dim])?);
        }
        Ok(o.transpose_axes(&[0, 2, 1, 3])?
            .reshape(&[b, l, self.n_heads * self.head_dim])?)
    }
}

impl Mlp {
    fn forward(&self, x: &Array) -> Result<Array> {
        let [gate, up] = Linear::forward_many([&self.gate_proj, &self.up_proj], x)?;
        let act = match self.activation {
            Activation::Silu => mlx_rs::nn::silu(&gate)?,
            Activation::GeluTanh => mlx_rs::nn::gelu_approximate(&gate)?,
        };
        self.down_proj.forward(&act.multiply(&up)?)
    }
}

/// Boolean mask `[q_len, k_len]` for sliding-window causal attention, where the queries are
/// the last `q_len` positions of `k_len`: query i (absolute k_len - q_len + i) sees key j iff
/// j <= i_abs and i_abs - j < window.
fn sliding_mask(q_len: usize, k_len: usize, window: usize) -> Result<Array> {
    let first = k_len - q_len;
    let mut m = Vec::with_capacity(q_len * k_len);
    for i in 0..q_len {
        let qi = first + i;
        for j in 0..k_len {
            m.push(j <= qi && qi - j < window);
        }
    }
    Ok(Array::from_slice(&m, &[q_len as i32, k_len as i32]))
}
