//! Qwen3.5 (`qwen3_5`, `qwen3_5_moe`): a hybrid decoder. Most layers mix tokens with gated
//! delta-net linear attention (`engine::deltanet`, recurrent cache); every
//! `full_attention_interval`-th layer is gated full attention (`Attention::load_with_gate`: q/k
//! norms, an output gate, RoPE over the first `partial_rotary_factor` of each head; KV cache).
//! Each layer then runs a SwiGLU MLP (`qwen3_5_moe`: routed experts plus a gated shared
//! expert). Parameters are in mlx-lm's layout; the multimodal
//! wrapper (`crate::arch::Wrapper`: `text_config`, tensors under `language_model.`) is
//! resolved before this module runs.

use mlx_rs::Array;
use serde_json::Value;

use super::layer_kinds::{LayerKind, LayerRule, ListUse, Period};
use super::{config_bool, config_size, Architecture};
use crate::diagnostic::{code, Diagnostic, Result};
use crate::engine::attention::{Attention, AttentionSpec};
use crate::engine::cache::{Cache, CacheKind};
use crate::engine::deltanet::{DeltaNetSpec, GatedDeltaNet};
use crate::engine::ends::Ends;
use crate::engine::layers::{Linear, LoadCtx, RmsNorm, Rope};
use crate::engine::mlp::{Activation, GatedMlp};
use crate::engine::moe::{stacked_experts, ExpertActivation, MoeSpec, Routing, SparseMoe};
use crate::engine::network::Network;
use crate::snapshot::config::KeyDefaults;
use crate::snapshot::{ModelConfig, RopeScaling};

/// Registry entry.
pub const ARCH: Architecture = Architecture {
    // Flat configs keep the outer type; a wrapper's `text_config` names the text model.
    model_types: &["qwen3_5", "qwen3_5_moe", "qwen3_5_text", "qwen3_5_moe_text"],
    load,
    convert: super::convert::qwen3_5::CONVERT,
    gguf: &[
        super::gguf::qwen3_5::QWEN35,
        super::gguf::qwen3_5::QWEN35MOE,
    ],
    keys: |_| KEYS,
};

/// mlx-lm's qwen3_5 defaults (its RoPE is read from `rope_parameters` by [`rope`]).
const KEYS: KeyDefaults = KeyDefaults {
    head_dim: None,
    num_key_value_heads: Some(8),
    rope_theta: 100_000.0,
    rms_norm_eps: 1e-6,
    tie_word_embeddings: false,
    rope_parameters: false,
    required: &[],
};

fn load(ctx: &LoadCtx<'_>) -> Result<Box<dyn Network>> {
    Ok(Box::new(Qwen35::load(ctx)?))
}

/// How a layer mixes positions.
#[derive(Debug)]
enum Mixer {
    /// Gated delta-net linear attention.
    Linear(GatedDeltaNet),
    /// Gated full attention.
    Full(Attention),
}

#[derive(Debug)]
struct Block {
    input_norm: RmsNorm,
    mixer: Mixer,
    post_attention_norm: RmsNorm,
    mlp: FeedForward,
}

/// A layer's feed-forward: the SwiGLU MLP, or — in every layer when `num_experts` > 0, as
/// mlx-lm builds it — routed experts plus a shared expert.
#[derive(Debug)]
// One per layer: boxing the dense MLP saves nothing worth an indirection (`Linear` carries
// the row-parallel flag of tensor parallelism).
#[allow(clippy::large_enum_variant)]
enum FeedForward {
    Dense(GatedMlp),
    Sparse(Box<SharedExpertMoe>),
}

impl FeedForward {
    fn forward(&self, x: &Array) -> Result<Array> {
        match self {
            FeedForward::Dense(mlp) => mlp.forward(x),
            FeedForward::Sparse(moe) => moe.forward(x),
        }
    }
}

/// Routed experts (`engine::moe`) plus one always-on shared expert whose output is scaled by
/// `sigmoid(shared_expert_gate(x))` (Qwen3-Next, Qwen3.5-MoE).
#[derive(Debug)]
struct SharedExpertMoe {
    routed: SparseMoe,
    shared: GatedMlp,
    shared_gate: Linear,
}

impl SharedExpertMoe {
    /// Loads `{p}.gate`, `{p}.switch_mlp`, `{p}.shared_expert` and `{p}.shared_expert_gate`.
    fn load(ctx: &LoadCtx<'_>, p: &str) -> Result<Self> {
        let c = ctx.config;
        let h = c.hidden_size;
        let spec = MoeSpec {
            router: format!("{p}.gate"),
            router_bias: false,
            experts: format!("{p}.switch_mlp"),
            expert_bias: false,
            num_experts: config_size(c, "num_experts", None)?,
            top_k: config_size(c, "num_experts_per_tok", None)?,
            hidden: h,
            inner: config_size(c, "moe_intermediate_size", None)?,
            // mlx-lm's Qwen3.5 renormalises the top-k weights unless told otherwise.
            routing: Routing::SoftmaxTopK {
                renormalize: config_bool(c, "norm_topk_prob", true)?,
            },
            activation: ExpertActivation::Glu(Activation::Silu),
            load_experts: stacked_experts,
        };
        let shared = config_size(c, "shared_expert_intermediate_size", None)?;
        Ok(Self {
            routed: SparseMoe::load(ctx, &spec)?,
            shared: GatedMlp::load(
                ctx,
                &format!("{p}.shared_expert"),
                h,
                shared,
                false,
                Activation::Silu,
            )?,
            shared_gate: ctx.linear(&format!("{p}.shared_expert_gate"), h, 1, false)?,
        })
    }

    fn forward(&self, x: &Array) -> Result<Array> {
        let routed = self.routed.forward(x)?;
        let gate = mlx_rs::ops::sigmoid(self.shared_gate.forward(x)?)?;
        Ok(routed.add(gate.multiply(self.shared.forward(x)?)?)?)
    }
}

/// A loaded Qwen3.5 network.
#[derive(Debug)]
struct Qwen35 {
    ends: Ends,
    blocks: Vec<Block>,
    rope: Rope,
}

impl Qwen35 {
    fn load(ctx: &LoadCtx<'_>) -> Result<Self> {
        let c = ctx.config;
        let delta = delta_spec(c)?;
        let blocks = LAYERS
            .kinds(c)?
            .into_iter()
            .enumerate()
            .map(|(i, kind)| {
                let is_linear = kind == LayerKind::Linear;
                load_block(ctx, &format!("model.layers.{i}"), is_linear, delta)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            ends: Ends::load(ctx, false, None, c.tie_word_embeddings)?,
            blocks,
            rope: rope(c)?,
        })
    }
}

/// The feed-forward at `p`: experts when config.json declares `num_experts` > 0.
fn feed_forward(ctx: &LoadCtx<'_>, p: &str) -> Result<FeedForward> {
    let c = ctx.config;
    if c.raw
        .get("num_experts")
        .and_then(Value::as_u64)
        .unwrap_or(0)
        > 0
    {
        return Ok(FeedForward::Sparse(Box::new(SharedExpertMoe::load(
            ctx, p,
        )?)));
    }
    let mlp = GatedMlp::load(
        ctx,
        p,
        c.hidden_size,
        c.intermediate_size,
        false,
        Activation::Silu,
    )?;
    Ok(FeedForward::Dense(mlp))
}

fn load_block(ctx: &LoadCtx<'_>, p: &str, is_linear: bool, delta: DeltaNetSpec) -> Result<Block> {
    let c = ctx.config;
    let (h, eps) = (c.hidden_size, c.rms_norm_eps);
    let mixer = if is_linear {
        Mixer::Linear(GatedDeltaNet::load(
            ctx,
            &format!("{p}.linear_attn"),
            h,
            delta,
        )?)
    } else {
        let spec = AttentionSpec {
            n_heads: c.num_attention_heads,
            n_kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            qkv_bias: c.attention_bias,
            o_bias: c.attention_bias,
            qk_norm: Some((eps, false)),
            window: None,
            scale: (c.head_dim as f32).powf(-0.5),
        };
        let path = format!("{p}.self_attn");
        Mixer::Full(Attention::load_with_gate(ctx, &path, h, spec, true)?)
    };
    let norm = |name: &str| ctx.rms_norm(&format!("{p}.{name}"), h, eps, false);
    Ok(Block {
        input_norm: norm("input_layernorm")?,
        mixer,
        post_attention_norm: norm("post_attention_layernorm")?,
        mlp: feed_forward(ctx, &format!("{p}.mlp"))?,
    })
}

/// mlx-lm places Qwen3.5's full-attention layers by `full_attention_interval` (default 4)
/// alone: layer `i` is full attention iff `(i + 1)` is a multiple of it.
const LAYERS: LayerRule = LayerRule {
    family: "qwen3_5",
    list: ListUse::MustAgree,
    other: LayerKind::Linear,
    period: Some(Period {
        key: Some("full_attention_interval"),
        default: 4,
    }),
};

fn delta_spec(c: &ModelConfig) -> Result<DeltaNetSpec> {
    Ok(DeltaNetSpec {
        n_k_heads: config_size(c, "linear_num_key_heads", Some(16))?,
        n_v_heads: config_size(c, "linear_num_value_heads", Some(64))?,
        k_head_dim: config_size(c, "linear_key_head_dim", Some(192))?,
        v_head_dim: config_size(c, "linear_value_head_dim", Some(128))?,
        conv_kernel: config_size(c, "linear_conv_kernel_dim", Some(4))?,
        eps: c.rms_norm_eps,
    })
}

/// RoPE of the full-attention layers, read as mlx-lm does: from `rope_parameters` (its
/// default when absent: base 100000, a quarter of each head rotated), or — when that is
/// null or empty — from the top-level `rope_theta`, `partial_rotary_factor` and
/// `rope_scaling`. The multimodal `mrope` sections reduce to plain RoPE for text.
fn rope(c: &ModelConfig) -> Result<Rope> {
    let params = match c.raw.get("rope_parameters") {
        None => Some(serde_json::Map::new()),
        Some(Value::Object(m)) if !m.is_empty() => Some(m.clone()),
        Some(Value::Null) | Some(Value::Object(_)) => None,
        Some(v) => {
            return Err(c.located(
                code::Snapshot::Config,
                format!("`rope_parameters` must be an object, found {v}"),
                "rope_parameters",
            ))
        }
    };
    let top = |key: &str| c.raw.get(key).and_then(Value::as_f64);
    let (theta, partial, scaling) = match &params {
        Some(p) => {
            let get = |key: &str| p.get(key).and_then(Value::as_f64);
            (
                get("rope_theta").unwrap_or(100_000.0),
                get("partial_rotary_factor").unwrap_or(0.25),
                rope_scaling(c, p)?,
            )
        }
        None => (
            top("rope_theta").unwrap_or(100_000.0),
            top("partial_rotary_factor").unwrap_or(0.25),
            c.rope_scaling.clone(),
        ),
    };
    if !(theta.is_finite() && theta > 0.0 && partial > 0.0 && partial <= 1.0) {
        return Err(c.located(
            code::Snapshot::Config,
            format!("RoPE base {theta} and partial_rotary_factor {partial} are not usable"),
            "rope_parameters",
        ));
    }
    let dims = (c.head_dim as f64 * partial) as usize;
    Rope::new(dims, theta as f32, scaling.as_ref())
}

/// The frequency scaling a `rope_parameters` object asks for (`type` or `rope_type`).
fn rope_scaling(
    c: &ModelConfig,
    p: &serde_json::Map<String, Value>,
) -> Result<Option<RopeScaling>> {
    let kind = p
        .get("type")
        .or_else(|| p.get("rope_type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    match kind {
        "default" | "mrope" => Ok(None),
        "linear" => match p.get("factor").and_then(Value::as_f64) {
            Some(f) if f.is_finite() && f > 0.0 => {
                Ok(Some(RopeScaling::Linear { factor: f as f32 }))
            }
            _ => Err(c.located(
                code::Snapshot::Config,
                "linear RoPE scaling needs a positive `factor`",
                "rope_parameters",
            )),
        },
        other => Err(Diagnostic::error(
            code::Snapshot::Config,
            format!(
                "qwen3_5: RoPE type `{other}` is not supported (default, mrope and linear are)"
            ),
        )
        .with_file(&c.path)),
    }
}

impl Network for Qwen35 {
    fn hidden(&self, ids: &Array, cache: &mut Cache) -> Result<Array> {
        let len = ids.shape()[1] as usize;
        let offset = cache.offset;
        let mut x = self.ends.embed(ids)?;
        for (i, block) in self.blocks.iter().enumerate() {
            let n = block.input_norm.forward(&x)?;
            let r = match &block.mixer {
                Mixer::Linear(net) => net.forward(&n, cache.recurrent(i)?)?,
                Mixer::Full(attn) => attn.forward(&n, cache.kv(i)?, offset, Some(&self.rope))?,
            };
            x = x.add(&r)?;
            let r = block.mlp.forward(&block.post_attention_norm.forward(&x)?)?;
            x = x.add(&r)?;
        }
        cache.offset += len;
        Ok(x)
    }

    fn logits(&self, x: &Array) -> Result<Array> {
        self.ends.logits(x)
    }

    fn cache_kinds(&self) -> Vec<CacheKind> {
        self.blocks
            .iter()
            .map(|b| match b.mixer {
                Mixer::Linear(_) => CacheKind::Recurrent,
                Mixer::Full(_) => CacheKind::Kv,
            })
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use mlx_rs::ops::concatenate;
    use mlx_rs::Array;
    use serde_json::json;

    use crate::engine::tests::{write_weights, Rng, Weights};
    use crate::engine::{DtypePolicy, Model};
    use crate::snapshot::Snapshot;

    const H: usize = 32;
    const VOCAB: usize = 40;

    fn config() -> serde_json::Value {
        json!({
            "model_type": "qwen3_5", "hidden_size": H, "intermediate_size": 48,
            "num_hidden_layers": 4, "full_attention_interval": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
            "linear_num_key_heads": 2, "linear_num_value_heads": 4,
            "linear_key_head_dim": 8, "linear_value_head_dim": 8, "linear_conv_kernel_dim": 4,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                "partial_rotary_factor": 0.5},
            "vocab_size": VOCAB, "tie_word_embeddings": true, "rms_norm_eps": 1e-6,
            "max_position_embeddings": 256
        })
    }

    fn weights(rng: &mut Rng) -> Weights {
        let mut w = Weights::new();
        let mut put = |name: String, shape: Vec<usize>, scale: f32, offset: f32| {
            let values = rng.vec(shape.iter().product(), scale);
            w.insert(name, (shape, values.iter().map(|v| v + offset).collect()));
        };
        put(
            "language_model.model.embed_tokens.weight".into(),
            vec![VOCAB, H],
            2.0,
            0.0,
        );
        put("language_model.model.norm.weight".into(), vec![H], 0.5, 1.0);
        for l in 0..4 {
            let p = format!("language_model.model.layers.{l}");
            let mut mats = vec![
                ("mlp.gate_proj", 48, H),
                ("mlp.up_proj", 48, H),
                ("mlp.down_proj", H, 48),
            ];
            if l % 2 == 0 {
                mats.extend([
                    ("linear_attn.in_proj_qkv", 64, H),
                    ("linear_attn.in_proj_z", 32, H),
                    ("linear_attn.in_proj_b", 4, H),
                    ("linear_attn.in_proj_a", 4, H),
                    ("linear_attn.out_proj", H, 32),
                ]);
                put(
                    format!("{p}.linear_attn.conv1d.weight"),
                    vec![64, 4, 1],
                    1.0,
                    0.0,
                );
                put(format!("{p}.linear_attn.A_log"), vec![4], 1.0, 0.5);
                put(format!("{p}.linear_attn.dt_bias"), vec![4], 1.0, 1.0);
                put(format!("{p}.linear_attn.norm.weight"), vec![8], 0.5, 1.0);
            } else {
                mats.extend([
                    ("self_attn.q_proj", 64, H),
                    ("self_attn.k_proj", 16, H),
                    ("self_attn.v_proj", 16, H),
                    ("self_attn.o_proj", H, 32),
                ]);
                put(format!("{p}.self_attn.q_norm.weight"), vec![8], 0.5, 1.0);
                put(format!("{p}.self_attn.k_norm.weight"), vec![8], 0.5, 1.0);
            }
            for (name, rows, cols) in mats {
                put(format!("{p}.{name}.weight"), vec![rows, cols], 0.6, 0.0);
            }
            put(format!("{p}.input_layernorm.weight"), vec![H], 0.5, 1.0);
            put(
                format!("{p}.post_attention_layernorm.weight"),
                vec![H],
                0.5,
                1.0,
            );
        }
        w
    }

    /// Writes a tiny qwen3_5 (linear-attention layers with recurrent state, global attention
    /// layers) into `dir`, for other modules' tests too.
    pub(crate) fn write_tiny(dir: &std::path::Path) {
        std::fs::write(dir.join("config.json"), config().to_string()).expect("config");
        write_weights(dir, &weights(&mut Rng(35)));
    }

    /// Logits `[len, vocab]` of `ids` fed in pieces of the given lengths, one cache throughout.
    fn run_in_pieces(model: &Model, ids: &[i32], pieces: &[usize]) -> Array {
        let mut cache = model.net.new_cache();
        let mut start = 0;
        let mut rows = Vec::new();
        for &n in pieces {
            let part = &ids[start..start + n];
            let input = Array::from_slice(part, &[1, n as i32]);
            let logits = model.net.forward_all(&input, &mut cache).expect("forward");
            logits.eval().expect("eval");
            rows.push(logits);
            start += n;
        }
        assert_eq!(start, ids.len());
        concatenate(&rows, 0).expect("concatenate")
    }

    #[test]
    fn chunked_prefill_and_decode_steps_match_one_pass() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_tiny(dir.path());
        let snap = Snapshot::open(dir.path()).expect("open tiny qwen3_5");
        let model = Model::load(&snap, DtypePolicy::Fixed(crate::manifest::Dtype::Float32))
            .expect("load tiny qwen3_5");
        let ids = [3, 17, 1, 29, 4, 11, 38, 0, 22, 5];
        let whole = run_in_pieces(&model, &ids, &[10]);
        for pieces in [&[4, 1, 3, 2][..], &[1; 10], &[2, 8]] {
            let split = run_in_pieces(&model, &ids, pieces);
            let diff = split
                .subtract(&whole)
                .and_then(|d| d.abs())
                .and_then(|d| d.max(None))
                .expect("diff")
                .item_exact::<f32>();
            assert!(
                diff < 1e-4,
                "pieces {pieces:?} differ from one pass by {diff}"
            );
        }
        let spread = whole.max(None).expect("max").item_exact::<f32>()
            - whole.min(None).expect("min").item_exact::<f32>();
        assert!(spread > 1.0, "degenerate logits (spread {spread})");
    }
}
