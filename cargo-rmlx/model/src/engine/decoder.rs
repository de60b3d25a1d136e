//! The standard decoder block stack, shared by the llama-like architectures, Gemma 3 and the
//! MoE decoders (Qwen3-MoE, GPT-OSS): embeddings, N blocks of (RMSNorm → GQA attention with
//! RoPE → residual, RMSNorm → gated MLP or sparse MoE → residual) — or Gemma's four-norm
//! "sandwich" form — final norm, LM head (tied or separate). An architecture module describes
//! its variant with a [`DecoderSpec`]; the one host fast path for decode steps on the CPU
//! lives here (dense blocks only). Decode steps of several sequences at once
//! ([`Network::hidden_batch`]) run every projection and feed-forward once for all rows and
//! attention per sequence: on the host path in plain Rust over each sequence's host-held
//! keys/values (`attention::host`), on the MLX path as one graph per block for the whole
//! batch over a shared, left-padded key/value buffer (`cache::batch_update`).

mod host_prefill;

use mlx_rs::{Array, Dtype};

use super::attention::host::{Query, RopeTable, Scratch};
use super::attention::{Attention, AttentionSpec};
use super::cache::{BatchMasks, Cache, CacheKind};
use super::ends::Ends;
use super::layers::{Linear, LoadCtx, RmsNorm, Rope};
use super::mlp::{Activation, GatedMlp};
use super::moe::{MoeSpec, SparseMoe};
use super::network::Network;
use crate::diagnostic::{code, Diagnostic, Result};
use crate::snapshot::RopeScaling;

/// What distinguishes one dense decoder from another.
#[derive(Debug, Clone)]
pub struct DecoderSpec {
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
    /// Per layer: `true` for a layer without rotary embeddings (SmolLM3's NoPE layers).
    pub no_rope: Vec<bool>,
    /// RoPE frequency scaling (of global layers).
    pub rope_scaling: Option<RopeScaling>,
    /// Learned attention sinks in every layer (`self_attn.sinks`, gpt-oss).
    pub attn_sinks: bool,
    /// Per layer: `Some(spec)` when its feed-forward is a sparse MoE, `None` (or a shorter
    /// list) for the dense gated MLP.
    pub moe: Vec<Option<MoeSpec>>,
}

impl DecoderSpec {
    /// The llama form for `config`: no biases but those config.json declares, SiLU, plain
    /// norms, global attention everywhere.
    pub fn llama(config: &crate::snapshot::ModelConfig) -> Self {
        Self {
            qkv_bias: config.attention_bias,
            o_bias: config.attention_bias,
            mlp_bias: config.mlp_bias,
            activation: Activation::Silu,
            attn_scale: (config.head_dim as f32).powf(-0.5),
            qk_norm: false,
            norm_one_plus: false,
            embed_scale: None,
            sandwich_norms: false,
            sliding_window: vec![None; config.num_hidden_layers],
            local_rope_theta: None,
            no_rope: vec![false; config.num_hidden_layers],
            rope_scaling: config.rope_scaling.clone(),
            attn_sinks: false,
            moe: Vec::new(),
        }
    }
}

struct Block {
    input_norm: RmsNorm,
    attn: Attention,
    /// Index into `Decoder::ropes`; `None` for a NoPE layer.
    rope: Option<usize>,
    /// Llama: the pre-MLP norm. Gemma (sandwich): the norm of the attention output.
    post_attn_norm: RmsNorm,
    /// Gemma only: pre-MLP norm and MLP-output norm.
    sandwich: Option<(RmsNorm, RmsNorm)>,
    mlp: FeedForward,
}

/// The feed-forward half of a block.
enum FeedForward {
    Dense(GatedMlp),
    Moe(SparseMoe),
}

impl FeedForward {
    fn forward(&self, x: &Array) -> Result<Array> {
        match self {
            FeedForward::Dense(mlp) => mlp.forward(x),
            FeedForward::Moe(moe) => moe.forward(x),
        }
    }

    /// The dense MLP when the host decode path can run it (SiLU, host-capable projections).
    fn host_mlp(&self) -> Option<&GatedMlp> {
        match self {
            FeedForward::Dense(mlp) if mlp.activation == Activation::Silu && mlp.host_capable() => {
                Some(mlp)
            }
            _ => None,
        }
    }
}

/// A loaded dense decoder.
pub struct Decoder {
    ends: Ends,
    blocks: Vec<Block>,
    /// Global rope, then (gemma3) the local-layer rope.
    ropes: Vec<Rope>,
    /// Whether one-token steps take the host path, decided at the first step.
    host_decode: std::sync::OnceLock<bool>,
    /// Whether short prompt chunks may take the host path (`host_prefill`), decided once.
    host_prefill: std::sync::OnceLock<bool>,
    /// Per-head width (of the rope tables of host attention).
    head_dim: usize,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("layers", &self.blocks.len())
            .finish()
    }
}

impl Decoder {
    /// Loads all weights following HF llama-style names (`model.layers.N.self_attn.q_proj`…).
    pub fn load(ctx: &LoadCtx<'_>, spec: &DecoderSpec) -> Result<Self> {
        let c = ctx.config;
        let mut ropes = vec![Rope::new(
            c.head_dim,
            c.rope_theta,
            spec.rope_scaling.as_ref(),
        )?];
        if let Some(theta) = spec.local_rope_theta {
            ropes.push(Rope::new(c.head_dim, theta, None)?);
        }
        let blocks = (0..c.num_hidden_layers)
            .map(|i| load_block(ctx, spec, i, ropes.len() - 1))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            ends: Ends::load(
                ctx,
                spec.norm_one_plus,
                spec.embed_scale,
                c.tie_word_embeddings,
            )?,
            blocks,
            ropes,
            host_decode: std::sync::OnceLock::new(),
            host_prefill: std::sync::OnceLock::new(),
            head_dim: c.head_dim,
        })
    }

    /// Whether one-token steps take [`Self::hidden_host_decode`]: the CPU host kernel covers
    /// every projection, norms are float32, and the block is the llama form (no sandwich
    /// norms, SiLU).
    fn host_decode(&self) -> bool {
        *self.host_decode.get_or_init(|| {
            let ok = super::qmv::enabled()
                && self.blocks.iter().all(|b| {
                    b.sandwich.is_none()
                        && b.mlp.host_mlp().is_some()
                        && b.input_norm.host_capable()
                        && b.post_attn_norm.host_capable()
                        && b.attn.host_capable()
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

    /// One decode step of `caches.len()` sequences (`x`: `[B, 1, hidden]`, row `b` on
    /// `caches[b]`) with the residual stream on the host: norms, projections (the `qmv`
    /// kernel, each weight row read once for all B rows), SiLU gate and residual adds run
    /// there, and attention too (RoPE, cache update, attention per sequence at its own
    /// offset, over its host-held keys/values) where the block allows
    /// ([`Attention::host_attention_capable`]); otherwise MLX runs the attention, one
    /// evaluation per block for all sequences.
    fn hidden_host_decode(&self, x: Array, caches: &mut [&mut Cache]) -> Result<Array> {
        let shape = x.shape().to_vec();
        let x = x.as_dtype(Dtype::Float32)?;
        let mut h: Vec<f32> = crate::mlx::host::host_slice::<f32>(&x, "embedding")?.to_vec();
        let width = h.len() / caches.len().max(1);
        let offsets: Vec<usize> = caches.iter().map(|c| c.offset).collect();
        let tables = self.rope_tables(&offsets)?;
        let mut scratch = Scratch::default();
        let attend = |i: usize, block: &Block, mut qkv: Vec<Vec<f32>>| {
            let a = &block.attn;
            if a.host_attention_capable() {
                let tables = block.rope.map(|r| tables[r].as_slice());
                host_attention(i, a, &mut qkv, caches, tables, &mut scratch)
            } else {
                let rope = block.rope.map(|r| &self.ropes[r]);
                mlx_attention(i, a, &qkv, caches, &offsets, rope)
            }
        };
        self.host_blocks(&mut h, width, &Linear::host_forward_many, attend)?;
        caches.iter_mut().for_each(|c| c.offset += 1);
        Ok(Array::from_slice(&h, &shape))
    }

    /// Every block on host rows `h` (`width` values each), the residual stream kept there:
    /// norms, projections run by `project`, residual adds and the SiLU-gated MLP;
    /// `attend(i, block, [q, k, v])` gives block `i`'s attention output (`o_proj`'s input).
    /// The decode step and the host prefill differ only in `project` and `attend`.
    fn host_blocks(
        &self,
        h: &mut [f32],
        width: usize,
        project: Project<'_>,
        mut attend: impl FnMut(usize, &Block, Vec<Vec<f32>>) -> Result<Vec<f32>>,
    ) -> Result<()> {
        for (i, block) in self.blocks.iter().enumerate() {
            let a = &block.attn;
            let n = norm_rows(&block.input_norm, h, width)?;
            let qkv = project(&[&a.q_proj, &a.k_proj, &a.v_proj], &n)?;
            let o = attend(i, block, qkv)?;
            let r = project(&[&a.o_proj], &o)?.remove(0);
            h.iter_mut().zip(&r).for_each(|(h, r)| *h += r);
            let n = norm_rows(&block.post_attn_norm, h, width)?;
            let r = host_mlp(block, &n, project)?;
            h.iter_mut().zip(&r).for_each(|(h, r)| *h += r);
        }
        Ok(())
    }

    /// Per rope (global, then local), the rotation of each sequence's new position — only
    /// when some block attends on the host.
    fn rope_tables(&self, offsets: &[usize]) -> Result<Vec<Vec<RopeTable>>> {
        if !self.blocks.iter().any(|b| b.attn.host_attention_capable()) {
            return Ok(Vec::new());
        }
        let head_dim = self.head_dim;
        self.ropes
            .iter()
            .map(|rope| RopeTable::at_positions(rope, offsets, head_dim))
            .collect()
    }

    /// The MLX path of one decode step of several sequences: every block once for all rows,
    /// attention included (each row at its own position, masked to its own keys/values).
    fn hidden_batch_mlx(&self, mut x: Array, caches: &mut [&mut Cache]) -> Result<Array> {
        let offsets: Vec<i32> = caches.iter().map(|c| c.offset as i32).collect();
        let offsets = Array::from_slice(&offsets, &[offsets.len() as i32]);
        let mut masks = BatchMasks::default();
        for (i, block) in self.blocks.iter().enumerate() {
            let rope = block.rope.map(|r| &self.ropes[r]);
            let mut kvs = caches
                .iter_mut()
                .map(|c| c.kv(i))
                .collect::<Result<Vec<_>>>()?;
            let n = block.input_norm.forward(&x)?;
            let r = (block.attn).forward_batch(&n, &mut kvs, &offsets, rope, &mut masks)?;
            x = block.feed_forward(x, r)?;
        }
        caches.iter_mut().for_each(|c| c.offset += 1);
        Ok(x)
    }
}

impl Block {
    /// The rest of the block after attention: residual add of the attention output `r`, then
    /// the feed-forward half (llama form or Gemma's sandwich form).
    fn feed_forward(&self, x: Array, r: Array) -> Result<Array> {
        Ok(match &self.sandwich {
            None => {
                let x = x.add(&r)?;
                let r = self.mlp.forward(&self.post_attn_norm.forward(&x)?)?;
                x.add(&r)?
            }
            Some((pre_ff, post_ff)) => {
                let x = x.add(&self.post_attn_norm.forward(&r)?)?;
                let r = self.mlp.forward(&pre_ff.forward(&x)?)?;
                x.add(&post_ff.forward(&r)?)?
            }
        })
    }
}

/// Attention of block `i` on the host for every sequence: `qkv` holds the B rows of the
/// projected queries, keys and values (queries and keys are rotated in place); `tables[b]`
/// rotates sequence `b`'s position (`None`: a NoPE layer). Each sequence's rotation and cache
/// update, then the attention of all of them in one kernel-pool job (every sequence's query
/// heads as items). Returns the B rows of `o_proj`'s input.
fn host_attention(
    i: usize,
    a: &Attention,
    qkv: &mut [Vec<f32>],
    caches: &mut [&mut Cache],
    tables: Option<&[RopeTable]>,
    scratch: &mut Scratch,
) -> Result<Vec<f32>> {
    let rows = caches.len().max(1);
    let [q, k, v] = qkv else {
        return Err(Diagnostic::error(
            code::Engine::HostKernel,
            "host attention without q, k and v (internal error)",
        ));
    };
    let (qw, kw) = (q.len() / rows, k.len() / rows);
    let mut held = Vec::with_capacity(rows);
    let parts = caches
        .iter_mut()
        .zip(q.chunks_mut(qw))
        .zip(k.chunks_mut(kw));
    for (b, ((cache, q), k)) in parts.enumerate() {
        let v = &v[b * kw..(b + 1) * kw];
        held.push(a.host_prepare([q, k], v, cache.kv(i)?, tables.map(|t| &t[b]))?);
    }
    let queries: Vec<Query<'_>> = q
        .chunks(qw)
        .zip(held)
        .map(|(q, kv)| Query { q, kv })
        .collect();
    let mut out = vec![0f32; q.len()];
    a.host_attend(&queries, scratch, &mut out);
    Ok(out)
}

/// Attention of block `i` through MLX (one graph per sequence at its own offset, evaluated
/// together) for blocks the host attention does not cover. Returns the B rows of `o_proj`'s
/// input.
fn mlx_attention(
    i: usize,
    a: &Attention,
    qkv: &[Vec<f32>],
    caches: &mut [&mut Cache],
    offsets: &[usize],
    rope: Option<&Rope>,
) -> Result<Vec<f32>> {
    let rows = caches
        .iter_mut()
        .zip(offsets)
        .enumerate()
        .map(|(b, (cache, &offset))| {
            let [q, k, v] = [0, 1, 2].map(|j| host_row(&qkv[j], b, offsets.len()));
            a.core(q, k, v, cache.kv(i)?, offset, rope)
        })
        .collect::<Result<Vec<_>>>()?;
    let o = mlx_rs::ops::concatenate(&rows, 0)?.as_dtype(Dtype::Float32)?;
    Ok(crate::mlx::host::host_slice::<f32>(&o, "attention output")?.to_vec())
}

/// Row `b` of `rows` host rows (`data`), as an MLX array `[1, 1, width]`.
fn host_row(data: &[f32], b: usize, rows: usize) -> Array {
    let width = data.len() / rows;
    Array::from_slice(&data[b * width..(b + 1) * width], &[1, 1, width as i32])
}

/// `norm` applied to each `width`-wide host row of `h`.
fn norm_rows(norm: &RmsNorm, h: &[f32], width: usize) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(h.len());
    for row in h.chunks(width) {
        out.extend(norm.host_forward(row)?);
    }
    Ok(out)
}

/// Host rows through several layers sharing their input (see `Linear::host_forward_many`).
type Project<'a> = &'a dyn Fn(&[&Linear], &[f32]) -> Result<Vec<Vec<f32>>>;

/// The dense SiLU-gated MLP of `block` on host rows `n`, its projections run by `project`.
fn host_mlp(block: &Block, n: &[f32], project: Project<'_>) -> Result<Vec<f32>> {
    let mlp = block.mlp.host_mlp().ok_or_else(|| {
        Diagnostic::error(
            code::Engine::HostKernel,
            "host decode of a block the host path does not cover (internal error)",
        )
    })?;
    let mut gu = project(&[&mlp.gate_proj, &mlp.up_proj], n)?;
    let up = gu.pop().expect("two outputs");
    let mut act = gu.pop().expect("two outputs");
    silu_times(&mut act, &up);
    Ok(project(&[&mlp.down_proj], &act)?.remove(0))
}

/// Values of a prefill chunk's gate from which the SiLU runs on the rayon threads.
const PARALLEL_SILU: usize = 1 << 14;

/// Values of a decode step's gate (two or more sequences) from which the SiLU runs in the
/// kernel pool, in [`SILU_CHUNK`]-value items.
const POOLED_SILU: usize = 2048;
const SILU_CHUNK: usize = 1024;

/// `g = silu(g) · u` element-wise; a batched decode step's rows (from [`POOLED_SILU`]
/// values) in the kernel pool, a prefill chunk's (from [`PARALLEL_SILU`]) on the rayon
/// threads, either of which otherwise waits between the projections (the same arithmetic
/// per element either way).
fn silu_times(gate: &mut [f32], up: &[f32]) {
    let silu = |(g, u): (&mut f32, &f32)| *g = *g / (1.0 + (-*g).exp()) * u;
    if gate.len() < POOLED_SILU {
        gate.iter_mut().zip(up).for_each(silu);
        return;
    }
    if gate.len() < PARALLEL_SILU {
        let mut items: Vec<_> = gate
            .chunks_mut(SILU_CHUNK)
            .zip(up.chunks(SILU_CHUNK))
            .collect();
        super::pool::for_each_mut(&mut items, |(g, u)| g.iter_mut().zip(*u).for_each(silu));
        return;
    }
    use rayon::prelude::*;
    gate.par_chunks_mut(4096)
        .zip(up.par_chunks(4096))
        .for_each(|(g, u)| g.iter_mut().zip(u).for_each(silu));
}

/// Block `i` of `spec`; `local_rope` is the rope index of sliding-window layers.
fn load_block(ctx: &LoadCtx<'_>, spec: &DecoderSpec, i: usize, local_rope: usize) -> Result<Block> {
    let c = ctx.config;
    let (h, eps, one_plus) = (c.hidden_size, c.rms_norm_eps, spec.norm_one_plus);
    let p = format!("model.layers.{i}");
    let window = spec.sliding_window.get(i).copied().flatten();
    let attn = AttentionSpec {
        n_heads: c.num_attention_heads,
        n_kv_heads: c.num_key_value_heads,
        head_dim: c.head_dim,
        qkv_bias: spec.qkv_bias,
        o_bias: spec.o_bias,
        qk_norm: spec.qk_norm.then_some((eps, one_plus)),
        window,
        scale: spec.attn_scale,
    };
    let norm = |name: &str| ctx.rms_norm(&format!("{p}.{name}"), h, eps, one_plus);
    let sandwich = if spec.sandwich_norms {
        Some((
            norm("pre_feedforward_layernorm")?,
            norm("post_feedforward_layernorm")?,
        ))
    } else {
        None
    };
    let mut attention = Attention::load(ctx, &format!("{p}.self_attn"), h, attn)?;
    if spec.attn_sinks {
        attention = attention.with_sinks(ctx, &format!("{p}.self_attn"))?;
    }
    let mlp = match spec.moe.get(i).and_then(Option::as_ref) {
        Some(moe) => FeedForward::Moe(SparseMoe::load(ctx, moe)?),
        None => FeedForward::Dense(GatedMlp::load(
            ctx,
            &format!("{p}.mlp"),
            h,
            c.intermediate_size,
            spec.mlp_bias,
            spec.activation,
        )?),
    };
    Ok(Block {
        input_norm: norm("input_layernorm")?,
        attn: attention,
        rope: match (spec.no_rope.get(i).copied().unwrap_or(false), window) {
            (true, _) => None,
            (false, Some(_)) => Some(local_rope),
            (false, None) => Some(0),
        },
        post_attn_norm: norm("post_attention_layernorm")?,
        sandwich,
        mlp,
    })
}

impl Network for Decoder {
    fn hidden(&self, ids: &Array, cache: &mut Cache) -> Result<Array> {
        let len = ids.shape()[1];
        let mut x = self.ends.embed(ids)?;
        if len == 1 && self.host_decode() {
            return self.hidden_host_decode(x, &mut [cache]);
        }
        if self.host_prefill(ids.shape()[0] as usize, len as usize) {
            return self.hidden_host_prefill(x, cache);
        }
        let offset = cache.offset;
        for (i, block) in self.blocks.iter().enumerate() {
            let rope = block.rope.map(|r| &self.ropes[r]);
            let r =
                block
                    .attn
                    .forward(&block.input_norm.forward(&x)?, cache.kv(i)?, offset, rope)?;
            x = block.feed_forward(x, r)?;
        }
        cache.offset += len as usize;
        Ok(x)
    }

    fn hidden_batch(&self, ids: &Array, caches: &mut [&mut Cache]) -> Result<Option<Array>> {
        let x = self.ends.embed(ids)?;
        Ok(Some(if self.host_decode() {
            self.hidden_host_decode(x, caches)?
        } else {
            self.hidden_batch_mlx(x, caches)?
        }))
    }

    fn hidden_together(
        &self,
        ids: &[Array],
        caches: &mut [&mut Cache],
    ) -> Result<Option<Vec<Array>>> {
        let rows: Vec<usize> = ids.iter().map(|i| i.shape()[1] as usize).collect();
        let one_row_each = ids.iter().all(|i| i.shape()[0] == 1);
        if !one_row_each || ids.len() != caches.len() || !self.host_prefill_together(&rows) {
            return Ok(None);
        }
        let xs = ids
            .iter()
            .map(|i| self.ends.embed(i))
            .collect::<Result<Vec<_>>>()?;
        self.hidden_host_prefill_together(&xs, caches).map(Some)
    }

    fn logits(&self, x: &Array) -> Result<Array> {
        self.ends.logits(x)
    }

    fn cache_kinds(&self) -> Vec<CacheKind> {
        vec![CacheKind::Kv; self.blocks.len()]
    }
}
