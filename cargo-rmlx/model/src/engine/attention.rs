//! Attention blocks shared by the architectures: [`Attention`] (q/k/v/o projections, optional
//! per-head q/k norms, RoPE — full or partial, as the [`Rope`] given —, global or
//! sliding-window causal attention over a [`KvLayer`], optional attention sinks, optionally a
//! sigmoid output gate produced by the query projection: [`Attention::load_with_gate`]; one
//! decode step of several sequences in one graph over the batch's shared key/value buffer,
//! each row masked to its own positions: [`Attention::forward_batch`]) and
//! the pieces an architecture with its own attention variant composes: [`split_heads`],
//! [`merge_heads`], [`attend`] and [`sliding_mask`]. One-token decode steps on the CPU attend
//! on the host instead ([`Attention::host_decode`]; a batched step's sequences: each
//! [`Attention::host_prepare`], then one [`Attention::host_attend`]; module [`host`]), and so do long causal
//! prompt chunks on the CPU (module [`prefill`]).

pub mod host;
pub mod prefill;

use mlx_rs::fast::{scaled_dot_product_attention, ScaledDotProductAttentionMask};
use mlx_rs::Array;

use super::cache::{batch_update, BatchMasks, KvLayer};
use super::layers::{Fused, Linear, LoadCtx, RmsNorm, Rope};
use crate::diagnostic::Result;

/// The shape and options of a standard attention block.
#[derive(Debug, Clone)]
pub struct AttentionSpec {
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (GQA).
    pub n_kv_heads: usize,
    /// Per-head width.
    pub head_dim: usize,
    /// Biases on q/k/v.
    pub qkv_bias: bool,
    /// Bias on o.
    pub o_bias: bool,
    /// Per-head RMSNorm of queries and keys before RoPE: `Some((eps, one_plus))`.
    pub qk_norm: Option<(f32, bool)>,
    /// Sliding window, `None` for global attention.
    pub window: Option<usize>,
    /// Softmax scale.
    pub scale: f32,
}

/// Multi-head attention with grouped KV heads (see the module docs).
#[derive(Debug)]
pub struct Attention {
    /// Query projection.
    pub q_proj: Linear,
    /// Key projection.
    pub k_proj: Linear,
    /// Value projection.
    pub v_proj: Linear,
    /// Output projection.
    pub o_proj: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    /// Per-head attention-sink logits (gpt-oss), `[n_heads]`.
    sinks: Option<Array>,
    spec: AttentionSpec,
    /// `q_proj` yields each head's query followed by an output gate of the same width.
    output_gate: bool,
    /// q|k|v as one matmul (the MLX decode path, [`Linear::fuse`]).
    qkv: Option<Fused>,
}

impl Attention {
    /// Loads `{prefix}.{q,k,v,o}_proj` (and `q_norm`/`k_norm`) for a residual width `hidden`.
    pub fn load(
        ctx: &LoadCtx<'_>,
        prefix: &str,
        hidden: usize,
        spec: AttentionSpec,
    ) -> Result<Self> {
        Self::load_with_gate(ctx, prefix, hidden, spec, false)
    }

    /// Like [`Self::load`]; with `output_gate` (Qwen3.5, Qwen3-Next) `q_proj` yields, per
    /// head, the query and then a gate of the same width, and the attention output is
    /// multiplied by `sigmoid(gate)` before `o_proj`.
    pub fn load_with_gate(
        ctx: &LoadCtx<'_>,
        prefix: &str,
        hidden: usize,
        spec: AttentionSpec,
        output_gate: bool,
    ) -> Result<Self> {
        let ctx = &ctx.attention_heads(); // tensor parallelism: this rank's heads
        let (q, kv) = (
            spec.n_heads * spec.head_dim,
            spec.n_kv_heads * spec.head_dim,
        );
        let norm = |name: &str| -> Result<Option<RmsNorm>> {
            spec.qk_norm
                .map(|(eps, one_plus)| {
                    ctx.rms_norm(&format!("{prefix}.{name}"), spec.head_dim, eps, one_plus)
                })
                .transpose()
        };
        let projection = |name: &str, width: usize| {
            ctx.column_linear(&format!("{prefix}.{name}"), hidden, width, spec.qkv_bias)
        };
        let mut q_proj = projection("q_proj", q * (1 + output_gate as usize))?;
        let mut k_proj = projection("k_proj", kv)?;
        let mut v_proj = projection("v_proj", kv)?;
        let qkv = Linear::fuse(&mut [&mut q_proj, &mut k_proj, &mut v_proj])?;
        Ok(Self {
            q_proj,
            k_proj,
            v_proj,
            qkv,
            o_proj: ctx.row_linear(&format!("{prefix}.o_proj"), q, hidden, spec.o_bias)?,
            q_norm: norm("q_norm")?,
            k_norm: norm("k_norm")?,
            sinks: None,
            spec,
            output_gate,
        })
    }

    /// Adds learned attention sinks, `{prefix}.sinks` (`[n_heads]`): one extra logit per head
    /// that takes part in the softmax but adds no value (gpt-oss). Tensor parallelism: this
    /// rank's heads' sinks.
    pub fn with_sinks(mut self, ctx: &LoadCtx<'_>, prefix: &str) -> Result<Self> {
        let ctx = ctx.attention_heads().column();
        self.sinks = Some(ctx.param(&format!("{prefix}.sinks"), &[self.spec.n_heads])?);
        Ok(self)
    }

    /// Whether every projection can run on the host kernels (see `Decoder`'s host decode).
    pub fn host_capable(&self) -> bool {
        !self.output_gate
            && [&self.q_proj, &self.k_proj, &self.v_proj, &self.o_proj]
                .iter()
                .all(|l| l.host_capable())
    }

    /// Whether [`Self::host_decode`] covers this block: no sinks, no output gate, float32
    /// q/k norms if any.
    pub fn host_attention_capable(&self) -> bool {
        self.sinks.is_none()
            && !self.output_gate
            && [&self.q_norm, &self.k_norm]
                .iter()
                .all(|n| n.as_ref().is_none_or(RmsNorm::host_capable))
    }

    /// One decode step of one sequence on the host: projected `q`, `k`, `v` (one position,
    /// `heads · head_dim` each; `q` and `k` are normalised and rotated in place) → the cache
    /// update and attention, written to `out` (the input of `o_proj`).
    pub fn host_decode(
        &self,
        [q, k]: [&mut [f32]; 2],
        v: &[f32],
        cache: &mut KvLayer,
        rope: Option<&host::RopeTable>,
        scratch: &mut host::Scratch,
        out: &mut [f32],
    ) -> Result<()> {
        let kv = self.host_prepare([&mut *q, k], v, cache, rope)?;
        host::attend(q, kv, self.spec.scale, scratch, out);
        Ok(())
    }

    /// The part of [`Self::host_decode`] before attention: `q` and `k` normalised and rotated
    /// in place, the new key/value appended to `cache`; returns the host-held layer.
    pub fn host_prepare<'c>(
        &self,
        [q, k]: [&mut [f32]; 2],
        v: &[f32],
        cache: &'c mut KvLayer,
        rope: Option<&host::RopeTable>,
    ) -> Result<&'c host::HostKv> {
        let s = &self.spec;
        for (x, norm) in [(&mut *q, &self.q_norm), (&mut *k, &self.k_norm)] {
            for head in x.chunks_mut(s.head_dim) {
                if let Some(n) = norm {
                    let normed = n.host_forward(head)?;
                    head.copy_from_slice(&normed);
                }
                if let Some(r) = rope {
                    r.apply(head);
                }
            }
        }
        let kv = cache.host(k.len() / s.head_dim, s.head_dim, s.window)?;
        kv.push(k, v);
        Ok(kv)
    }

    /// The attention of a decode step's sequences after [`Self::host_prepare`], all their
    /// query heads in one job ([`host::attend_rows`]); `out`: the rows of `o_proj`'s input.
    pub fn host_attend(
        &self,
        rows: &[host::Query<'_>],
        scratch: &mut host::Scratch,
        out: &mut [f32],
    ) {
        host::attend_rows(rows, self.spec.scale, scratch, out);
    }

    /// `x` (`[B, L, hidden]`) → attention output projected back to `[B, L, hidden]`.
    pub fn forward(
        &self,
        x: &Array,
        cache: &mut KvLayer,
        offset: usize,
        rope: Option<&Rope>,
    ) -> Result<Array> {
        let [q, k, v] = self.project(x)?;
        if !self.output_gate {
            let o = self.core(q, k, v, cache, offset, rope)?;
            return self.o_proj.forward(&o);
        }
        let (q, gate) = self.split_gate(&q)?;
        let o = self.core(q, k, v, cache, offset, rope)?;
        self.o_proj
            .forward(&o.multiply(mlx_rs::ops::sigmoid(&gate)?)?)
    }

    /// One decode step of `B` sequences through MLX, one graph for the whole batch: `x`
    /// `[B, 1, hidden]`, row `b` on `caches[b]` at position `offsets[b]` (`[B]` int32).
    /// Projections, RoPE (each row at its own position), the cache update (one write into
    /// the batch's shared buffer, [`batch_update`]) and masked attention run once for all
    /// rows.
    pub fn forward_batch(
        &self,
        x: &Array,
        caches: &mut [&mut KvLayer],
        offsets: &Array,
        rope: Option<&Rope>,
        masks: &mut BatchMasks,
    ) -> Result<Array> {
        let [q, k, v] = self.project(x)?;
        let (q, gate) = match self.output_gate {
            true => {
                let (q, gate) = self.split_gate(&q)?;
                (q, Some(gate))
            }
            false => (q, None),
        };
        let [mut q, mut k, v] = self.heads(q, k, v)?;
        if let Some(rope) = rope {
            q = rope.forward_rows(&q, offsets)?;
            k = rope.forward_rows(&k, offsets)?;
        }
        let s = &self.spec;
        let (k, v, mask) = batch_update(caches, &k, &v, s.window, masks)?;
        let mask = mask.as_ref().map(ScaledDotProductAttentionMask::Array);
        let o = scaled_dot_product_attention(&q, &k, &v, s.scale, mask, self.sinks.as_ref())?;
        let o = merge_heads(o)?;
        match gate {
            Some(gate) => self
                .o_proj
                .forward(&o.multiply(mlx_rs::ops::sigmoid(&gate)?)?),
            None => self.o_proj.forward(&o),
        }
    }

    /// The q, k and v projections of `x`: one fused matmul where loaded so.
    fn project(&self, x: &Array) -> Result<[Array; 3]> {
        match &self.qkv {
            Some(fused) => fused.forward(x),
            None => Linear::forward_many([&self.q_proj, &self.k_proj, &self.v_proj], x),
        }
    }

    /// The gated query projection `[B, L, heads · 2 · head_dim]` → queries and gates, each
    /// `[B, L, heads · head_dim]`.
    fn split_gate(&self, q: &Array) -> Result<(Array, Array)> {
        let s = &self.spec;
        let (b, l) = (q.shape()[0], q.shape()[1]);
        let per_head = q.reshape(&[b, l, s.n_heads as i32, 2 * s.head_dim as i32])?;
        let halves = per_head.split_equal(2, -1)?;
        let width = (s.n_heads * s.head_dim) as i32;
        Ok((
            halves[0].reshape(&[b, l, width])?,
            halves[1].reshape(&[b, l, width])?,
        ))
    }

    /// Attention from projected `q`, `k`, `v` (`[B, L, heads · head_dim]`) to the input of
    /// `o_proj`: head split, q/k norms, RoPE (none for NoPE layers), cache update, scaled
    /// dot-product attention.
    pub fn core(
        &self,
        q: Array,
        k: Array,
        v: Array,
        cache: &mut KvLayer,
        offset: usize,
        rope: Option<&Rope>,
    ) -> Result<Array> {
        let heads = self.heads(q, k, v)?;
        rope_cache_attend(heads, &self.spec, cache, offset, rope, self.sinks.as_ref())
    }

    /// Projected `q`, `k`, `v` (`[B, L, heads · head_dim]`) split into heads (`[B, heads, L,
    /// head_dim]`), queries and keys normalised where the block has q/k norms.
    fn heads(&self, q: Array, k: Array, v: Array) -> Result<[Array; 3]> {
        let s = &self.spec;
        let hd = s.head_dim as i32;
        let mut q = split_heads(q, s.n_heads as i32, hd)?;
        let mut k = split_heads(k, s.n_kv_heads as i32, hd)?;
        let v = split_heads(v, s.n_kv_heads as i32, hd)?;
        if let Some(n) = &self.q_norm {
            q = n.forward(&q)?;
        }
        if let Some(n) = &self.k_norm {
            k = n.forward(&k)?;
        }
        Ok([q, k, v])
    }
}

/// Attention from projected `q`, `k`, `v` (`[B, L, heads · head_dim]`, any norms already
/// applied) to the input of the output projection, for architectures that project (fused
/// q/k/v) or normalise (whole-width q/k norms) their own way: head split, RoPE, cache update,
/// attention, head merge. `spec.qk_norm` is not applied here.
pub fn attend_projected(
    q: Array,
    k: Array,
    v: Array,
    spec: &AttentionSpec,
    cache: &mut KvLayer,
    offset: usize,
    rope: Option<&Rope>,
) -> Result<Array> {
    let hd = spec.head_dim as i32;
    let q = split_heads(q, spec.n_heads as i32, hd)?;
    let k = split_heads(k, spec.n_kv_heads as i32, hd)?;
    let v = split_heads(v, spec.n_kv_heads as i32, hd)?;
    rope_cache_attend([q, k, v], spec, cache, offset, rope, None)
}

/// Heads (`[B, n, L, d]`) → RoPE, cache update, attention (with `sinks`, if any) →
/// `[B, L, n_heads · d]`.
fn rope_cache_attend(
    [mut q, mut k, v]: [Array; 3],
    spec: &AttentionSpec,
    cache: &mut KvLayer,
    offset: usize,
    rope: Option<&Rope>,
    sinks: Option<&Array>,
) -> Result<Array> {
    if let Some(rope) = rope {
        q = rope.forward(&q, offset)?;
        k = rope.forward(&k, offset)?;
    }
    let (k, v) = cache.update(k, v, spec.window)?;
    let o = attend(&q, &k, &v, offset, spec.window, spec.scale, sinks)?;
    merge_heads(o)
}

/// `[B, L, n · d]` → `[B, n, L, d]`.
pub fn split_heads(a: Array, n: i32, d: i32) -> Result<Array> {
    let (b, l) = (a.shape()[0], a.shape()[1]);
    if l == 1 {
        // One position: [B, 1, n, d] and [B, n, 1, d] share a layout.
        return Ok(a.reshape(&[b, n, 1, d])?);
    }
    Ok(a.reshape(&[b, l, n, d])?.transpose_axes(&[0, 2, 1, 3])?)
}

/// `[B, n, L, d]` → `[B, L, n · d]`.
pub fn merge_heads(o: Array) -> Result<Array> {
    let s = o.shape().to_vec();
    let (b, n, l, d) = (s[0], s[1], s[2], s[3]);
    if l == 1 {
        return Ok(o.reshape(&[b, 1, n * d])?);
    }
    Ok(o.transpose_axes(&[0, 2, 1, 3])?.reshape(&[b, l, n * d])?)
}

/// Scaled dot-product attention of the new queries `q` (`[B, H, L, d]`, the last `L` of
/// `offset + L` positions) over `k`/`v` as returned by [`KvLayer::update`]: causal, and limited
/// to `window` positions when given. `sinks`: per-head attention-sink logits (`[H]`).
pub fn attend(
    q: &Array,
    k: &Array,
    v: &Array,
    offset: usize,
    window: Option<usize>,
    scale: f32,
    sinks: Option<&Array>,
) -> Result<Array> {
    let l = q.shape()[2] as usize;
    let total = k.shape()[2] as usize;
    let masked_by_window = window.is_some_and(|w| offset + l > w);
    if !masked_by_window && sinks.is_none() && prefill::applies(q, k, v) {
        return prefill::attend(q, k, v, scale);
    }
    Ok(match window {
        // Some keys fall outside the window of some queries: explicit mask.
        Some(w) if l > 1 && offset + l > w => {
            let mask = sliding_mask(l, total, w)?;
            scaled_dot_product_attention(q, k, v, scale, &mask, sinks)?
        }
        _ => {
            let mask = (l > 1).then_some(ScaledDotProductAttentionMask::Causal);
            scaled_dot_product_attention(q, k, v, scale, mask, sinks)?
        }
    })
}

/// Boolean mask `[q_len, k_len]` for sliding-window causal attention, where the queries are
/// the last `q_len` positions of `k_len`: query i (absolute k_len - q_len + i) sees key j iff
/// j <= i_abs and i_abs - j < window.
pub fn sliding_mask(q_len: usize, k_len: usize, window: usize) -> Result<Array> {
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
