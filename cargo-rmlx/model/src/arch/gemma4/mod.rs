//! Gemma 4 (`gemma4_text`; `gemma4` multimodal checkpoints run their text model): scaled
//! embeddings, per-layer input embeddings mixed into every layer, sliding and full attention
//! layers with their own head widths and RoPE (partial "proportional" RoPE on full layers),
//! trailing layers that read the keys/values of the last earlier layer of their type (their
//! cache kind is `None`), keys as values (`attention_k_eq_v`), a MoE branch beside the MLP,
//! a per-layer output scalar and final logit softcapping — mlx-lm 0.32.2's
//! `gemma4_text.py` in MLX layout.

mod config;
mod layer;
mod moe;

use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::Array;

pub use config::Gemma4Config;

use super::Architecture;
use crate::diagnostic::{code, Diagnostic, Result};
use crate::engine::cache::{Cache, CacheKind};
use crate::engine::ends::Ends;
use crate::engine::layers::{Embedding, Linear, LoadCtx, RmsNorm, Rope};
use crate::engine::network::Network;
use crate::snapshot::config::KeyDefaults;
use config::{LayerType, RopeKind, RopeParams};
use layer::{KeysValues, KvSource, Layer};

/// Registry entry.
pub const ARCH: Architecture = Architecture {
    // `gemma4` is the multimodal wrapper (`crate::arch::WRAPPERS`); listed here too because
    // mlx-lm runs its text model as `gemma4_text` even when `text_config` names no model_type.
    model_types: &["gemma4_text", "gemma4"],
    load,
    convert: crate::arch::convert::gemma4::CONVERT,
    gguf: &[super::gguf::gemma4::GEMMA4],
    keys: |_| KEYS,
};

/// mlx-lm's gemma4_text defaults (RoPE per layer type: `config::Gemma4Config`).
pub(crate) const KEYS: KeyDefaults = KeyDefaults {
    head_dim: Some(256),
    num_key_value_heads: Some(1),
    rope_theta: 10_000.0,
    rms_norm_eps: 1e-6,
    tie_word_embeddings: true,
    rope_parameters: false,
    required: &[],
};

fn load(ctx: &LoadCtx<'_>) -> Result<Box<dyn Network>> {
    let mut config = Gemma4Config::parse(ctx.config, &ctx.config.raw)?;
    if !ctx.parallel.shard.is_single() {
        config.tensor_parallel(ctx.config)?;
    }
    Ok(Box::new(Gemma4::load(ctx, &config)?))
}

/// A scalar as MLX applies a Python float to an array: rounded to the array's dtype.
fn scalar(x: f64, like: &Array) -> Result<Array> {
    Ok(Array::from_f32(x as f32).as_dtype(like.dtype())?)
}

/// Per-layer input embeddings: a second embedding table giving every layer its own input,
/// mixed with a projection of the main embedding.
struct PerLayerInputs {
    embed: Embedding,
    projection: Linear,
    norm: RmsNorm,
    layers: i32,
    width: i32,
    hidden: usize,
}

impl PerLayerInputs {
    fn load(ctx: &LoadCtx<'_>, p: &str, c: &Gemma4Config) -> Result<Option<Self>> {
        let Some(pl) = c.per_layer else {
            return Ok(None);
        };
        let all = c.layers * pl.width;
        Ok(Some(Self {
            embed: ctx.embedding(&format!("{p}embed_tokens_per_layer"), pl.vocab, all)?,
            projection: ctx.linear(
                &format!("{p}per_layer_model_projection"),
                c.hidden,
                all,
                false,
            )?,
            norm: ctx.rms_norm(
                &format!("{p}per_layer_projection_norm"),
                pl.width,
                c.eps,
                false,
            )?,
            layers: c.layers as i32,
            width: pl.width as i32,
            hidden: c.hidden,
        }))
    }

    /// `[B, L, layers, width]`: `(norm(proj(x) / √hidden) + embed(ids) · √width) / √2`, where
    /// `x` is the scaled main embedding.
    fn forward(&self, ids: &Array, x: &Array) -> Result<Array> {
        let (b, l) = (ids.shape()[0], ids.shape()[1]);
        let shape = [b, l, self.layers, self.width];
        let e = self.embed.forward(ids)?;
        let e = e.multiply(scalar((self.width as f64).sqrt(), &e)?)?;
        let p = self.projection.forward(x)?;
        let p = p.multiply(scalar((self.hidden as f64).powf(-0.5), &p)?)?;
        let p = self.norm.forward(&p.reshape(&shape)?)?;
        let sum = p.add(&e.reshape(&shape)?)?;
        Ok(sum.multiply(scalar(0.5f64.sqrt(), &sum)?)?)
    }
}

/// The loaded Gemma 4 text network.
pub struct Gemma4 {
    ends: Ends,
    per_layer: Option<PerLayerInputs>,
    layers: Vec<Layer>,
    /// Per layer: the layer whose keys/values it attends over (itself unless KV-shared).
    kv_sources: Vec<usize>,
    /// RoPE of sliding layers, then of full layers.
    ropes: [Rope; 2],
}

impl std::fmt::Debug for Gemma4 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gemma4")
            .field("layers", &self.layers.len())
            .field("kv_sources", &self.kv_sources)
            .finish()
    }
}

impl Gemma4 {
    /// Loads the text model (`model.*`, `lm_head`; a wrapper's prefix is the context's).
    pub fn load(ctx: &LoadCtx<'_>, c: &Gemma4Config) -> Result<Self> {
        let p = "model.";
        if let Some(pl) = c.per_layer.filter(|pl| pl.vocab < c.vocab) {
            return Err(ctx.config.located(
                code::Snapshot::Config,
                format!(
                    "gemma4: vocab_size_per_layer_input ({}) is smaller than vocab_size ({}); \
                     token ids past it have no per-layer embedding",
                    pl.vocab, c.vocab
                ),
                "vocab_size_per_layer_input",
            ));
        }
        let layers = (0..c.layers)
            .map(|i| Layer::load(ctx, p, c, i))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            ends: Ends::load(
                ctx,
                false,
                Some((c.hidden as f64).sqrt() as f32),
                c.tie_word_embeddings,
            )?
            .with_softcap(c.final_softcap),
            per_layer: PerLayerInputs::load(ctx, p, c)?,
            layers,
            kv_sources: c.kv_sources(),
            ropes: [rope(c, LayerType::Sliding)?, rope(c, LayerType::Full)?],
        })
    }
}

/// The rope of layer type `t`, over that type's head width.
fn rope(c: &Gemma4Config, t: LayerType) -> Result<Rope> {
    let (dims, RopeParams { theta, kind }) = match t {
        LayerType::Sliding => (c.head_dim, c.rope[0]),
        LayerType::Full => (c.global_head_dim, c.rope[1]),
    };
    let rope = match kind {
        RopeKind::Default { factor } => {
            let scaling =
                (factor != 1.0).then_some(crate::snapshot::RopeScaling::Linear { factor });
            Rope::new(dims, theta, scaling.as_ref())?
        }
        RopeKind::Proportional { partial, factor } => {
            Rope::proportional(dims, (dims as f64 * partial) as usize, theta, factor)?
        }
    };
    Ok(rope.traditional(c.rope_traditional))
}

impl Network for Gemma4 {
    fn hidden(&self, ids: &Array, cache: &mut Cache) -> Result<Array> {
        let len = ids.shape()[1];
        let mut x = self.ends.embed(ids)?;
        let per_layer = match &self.per_layer {
            Some(p) => Some(p.forward(ids, &x)?),
            None => None,
        };
        let offset = cache.offset;
        // The keys/values each layer attended over in this pass, for the shared-KV layers. (A
        // sliding layer's cache keeps one position less than it attended over, so the pass's
        // own values are read, as mlx-lm does, not the cache afterwards.)
        let mut attended: Vec<Option<KeysValues>> = vec![None; self.layers.len()];
        for (i, layer) in self.layers.iter().enumerate() {
            let src = self.kv_sources[i];
            let source = match src == i {
                true => KvSource::Own(cache.kv(i)?),
                false => KvSource::Shared(attended[src].clone().ok_or_else(|| {
                    Diagnostic::error(
                        code::Engine::Cache,
                        format!(
                            "layer {i} reads the keys of layer {src}, not run yet (internal error)"
                        ),
                    )
                })?),
            };
            let input = per_layer.as_ref().map(|p| p.index((.., .., i as i32, ..)));
            let rope = &self.ropes[layer.rope];
            let (h, kv) = layer.forward(&x, input.as_ref(), source, offset, rope)?;
            x = h;
            attended[i] = Some(kv);
        }
        cache.offset += len as usize;
        Ok(x)
    }

    fn logits(&self, hidden: &Array) -> Result<Array> {
        self.ends.logits(hidden)
    }

    fn cache_kinds(&self) -> Vec<CacheKind> {
        (0..self.layers.len())
            .map(|i| match self.kv_sources[i] == i {
                true => CacheKind::Kv,
                false => CacheKind::None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use mlx_rs::Array;

    use crate::engine::layers::{softcap, Rope};

    /// The proportional rope rotates the first `rotated / 2` pairs exactly as a full rope of
    /// the same width and base does, and passes the other features through unchanged.
    #[test]
    fn proportional_rope_rotates_only_its_leading_pairs() {
        let (dims, rotated) = (16usize, 4usize);
        let data: Vec<f32> = (0..2 * 3 * dims)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        let x = Array::from_slice(&data, &[1, 2, 3, dims as i32]);
        let got = Rope::proportional(dims, rotated, 10_000.0, 1.0)
            .unwrap()
            .forward(&x, 5)
            .unwrap();
        let full = Rope::new(dims, 10_000.0, None)
            .unwrap()
            .forward(&x, 5)
            .unwrap();
        let (got, full) = (
            got.as_slice::<f32>().to_vec(),
            full.as_slice::<f32>().to_vec(),
        );
        let half = dims / 2;
        for (i, ((g, f), x)) in got.iter().zip(&full).zip(&data).enumerate() {
            let feature = i % dims;
            let rotates = feature % half < rotated / 2;
            let want = if rotates { f } else { x };
            assert!((g - want).abs() < 1e-5, "feature {feature}: {g} vs {want}");
        }
        // Position 0 of the rotated part moves for a nonzero offset: the test is not vacuous.
        assert!((full[0] - data[0]).abs() > 1e-3);
    }

    #[test]
    fn softcap_is_tanh_scaled() {
        let x = Array::from_slice(&[-100.0f32, -3.0, 0.0, 2.5, 60.0], &[5]);
        let y = softcap(&x, 30.0).unwrap();
        for (y, x) in y
            .as_slice::<f32>()
            .iter()
            .zip([-100.0f32, -3.0, 0.0, 2.5, 60.0])
        {
            assert!((y - (x / 30.0).tanh() * 30.0).abs() < 1e-5);
        }
    }
}
