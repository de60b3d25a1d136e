//! GPT-OSS (`gpt_oss`) as mlx-lm runs it: biased attention with learned sinks, sliding-window
//! and full layers as `layer_types` says (alternating from a sliding layer by default), YaRN
//! RoPE (mlx-lm's form: `truncate` is ignored), and in every layer a sparse MoE whose router
//! has a bias, picks the top-k logits and softmaxes them, with biased experts and the clamped
//! SwiGLU (alpha 1.702, limit 7.0 — mlx-lm's constants).
//!
//! Experts load in the MLX layout (`mlp.experts.{gate,up,down}_proj`, dense or quantized in
//! any mode, e.g. `mlx_lm convert --q-mode mxfp4`) or as released, which mlx-lm converts at
//! load: `gate_up_proj` fused with gate and up rows interleaved, `*_bias` tensors, and MXFP4
//! weights as `*_blocks` (uint8 `[E, rows, cols / 32, 16]`) and `*_scales` (uint8 E8M0).

use mlx_rs::{Array, Dtype};
use serde_json::Value;

use super::layer_kinds::{windows, LayerKind, LayerRule, ListUse, Period};
use super::{config_size, Architecture};
use crate::diagnostic::{code, Diagnostic, Result};
use crate::engine::decoder::{Decoder, DecoderSpec};
use crate::engine::layers::LoadCtx;
use crate::engine::moe::{
    stacked_experts, ExpertActivation, MoeSpec, Routing, SwitchGlu, SwitchLinear,
};
use crate::engine::network::Network;
use crate::snapshot::config::KeyDefaults;
use crate::snapshot::{ModelConfig, QuantMode, QuantParams};

/// Registry entry.
pub const ARCH: Architecture = Architecture {
    model_types: &["gpt_oss"],
    load,
    convert: super::convert::gpt_oss::CONVERT,
    gguf: &[super::gguf::gpt_oss::GPT_OSS],
    keys: |_| KEYS,
};

/// mlx-lm's gpt_oss defaults (its LM head is never tied).
const KEYS: KeyDefaults = KeyDefaults {
    head_dim: Some(64),
    num_key_value_heads: Some(8),
    rope_theta: 150_000.0,
    rms_norm_eps: 1e-5,
    tie_word_embeddings: false,
    rope_parameters: false,
    required: &[],
};

/// mlx-lm's `SwigluOAI` defaults (config.json's `swiglu_limit` is not read by mlx-lm).
const ALPHA: f32 = 1.702;
const LIMIT: f32 = 7.0;

/// mlx-lm's gpt_oss: the layers `layer_types` lists, else sliding and full alternating.
const LAYERS: LayerRule = LayerRule {
    family: "gpt_oss",
    list: ListUse::Decides,
    other: LayerKind::Sliding,
    period: Some(Period {
        key: None,
        default: 2,
    }),
};

fn load(ctx: &LoadCtx<'_>) -> Result<Box<dyn Network>> {
    let config = ctx.config;
    if config
        .raw
        .get("swiglu_limit")
        .and_then(Value::as_f64)
        .is_some_and(|l| l as f32 != LIMIT)
    {
        tracing::info!("gpt_oss: swiglu_limit differs from 7.0; using 7.0 as mlx-lm does");
    }
    Ok(Box::new(Decoder::load(ctx, &spec(config)?)?))
}

/// The decoder spec of a GPT-OSS config.
pub fn spec(config: &ModelConfig) -> Result<DecoderSpec> {
    let base = DecoderSpec::llama(config);
    let moe = (0..config.num_hidden_layers)
        .map(|i| moe_spec(config, i).map(Some))
        .collect::<Result<Vec<_>>>()?;
    Ok(DecoderSpec {
        qkv_bias: true,
        o_bias: true,
        mlp_bias: false,
        qk_norm: false,
        sliding_window: windows(config, &LAYERS.kinds(config)?, Some(128))?,
        attn_sinks: true,
        moe,
        ..base
    })
}

fn moe_spec(config: &ModelConfig, layer: usize) -> Result<MoeSpec> {
    let p = format!("model.layers.{layer}.mlp");
    Ok(MoeSpec {
        router: format!("{p}.router"),
        router_bias: true,
        experts: format!("{p}.experts"),
        expert_bias: true,
        num_experts: config_size(config, "num_local_experts", Some(128))?,
        top_k: config_size(config, "num_experts_per_tok", Some(4))?,
        hidden: config.hidden_size,
        inner: config.intermediate_size,
        routing: Routing::TopKSoftmax,
        activation: ExpertActivation::ClampedSwiGlu {
            alpha: ALPHA,
            limit: LIMIT,
        },
        load_experts,
    })
}

/// The MLX layout, else the released one (fused gate/up, dense or MXFP4 blocks).
fn load_experts(ctx: &LoadCtx<'_>, spec: &MoeSpec) -> Result<SwitchGlu> {
    let p = &spec.experts;
    if ctx.contains(&format!("{p}.gate_proj.weight")) {
        return stacked_experts(ctx, spec);
    }
    tracing::debug!("{p}: released layout (fused gate_up_proj); splitting it as mlx-lm does");
    let (e, h, i) = (spec.num_experts, spec.hidden, spec.inner);
    // Tensor parallelism: gate and up rows interleave in pairs, so this rank's block of fused
    // rows is its share of both; down splits by columns, its bias added by rank 0 alone.
    let (column, row) = (ctx.column(), ctx.row());
    let gate_up = released_weight(&column, &format!("{p}.gate_up_proj"), [e, 2 * i, h], 1)?;
    let gate_up_bias = column.param(&format!("{p}.gate_up_proj_bias"), &[e, 2 * i])?;
    let down = released_weight(&row, &format!("{p}.down_proj"), [e, h, i], 2)?;
    let down_bias = row
        .bias_ctx()
        .map(|b| b.param(&format!("{p}.down_proj_bias"), &[e, h]))
        .transpose()?;
    let even = Array::from_iter((0..2 * i as i32).step_by(2), &[i as i32]);
    let odd = Array::from_iter((1..2 * i as i32).step_by(2), &[i as i32]);
    let rows = |w: &Released, idx: &Array| -> Result<SwitchLinear> {
        let bias = gate_up_bias.take_axis(idx, -1)?;
        w.rows(Some(idx), Some(bias))
    };
    Ok(SwitchGlu {
        gate_proj: rows(&gate_up, &even)?,
        up_proj: rows(&gate_up, &odd)?,
        down_proj: down.rows(None, down_bias)?,
        activation: spec.activation,
    })
}

/// A released expert weight `[E, rows, cols]`: dense, or MXFP4 blocks and scales.
enum Released {
    Dense(Array),
    Mxfp4 { weight: Array, scales: Array },
}

/// MXFP4 as MLX stores it: E2M1 values in groups of 32 with E8M0 scales.
const MXFP4: QuantParams = QuantParams {
    group_size: 32,
    bits: 4,
    mode: QuantMode::Mxfp4,
};

/// The released weight `[experts, rows, cols]` at `path`; tensor parallelism splits the MXFP4
/// blocks `[E, rows, groups, 16]` and scales `[E, rows, groups]` on `axis` (1: rows, 2: the
/// groups of the input columns), as the context's split does the dense weight.
fn released_weight(
    ctx: &LoadCtx<'_>,
    path: &str,
    [experts, rows, cols]: [usize; 3],
    axis: usize,
) -> Result<Released> {
    let blocks = format!("{path}_blocks");
    if !ctx.contains(&blocks) {
        return Ok(Released::Dense(
            ctx.param(&format!("{path}.weight"), &[experts, rows, cols])?,
        ));
    }
    let groups = cols / 32;
    let shape = [experts, rows, groups, 16];
    let bytes = bytes_tensor(ctx, &blocks, &shape, axis)?;
    // 16 bytes per group of 32 values: viewed as uint32 they are MLX's packed mxfp4 weight.
    let weight = bytes
        .reshape(&[experts as i32, rows as i32, (groups * 16) as i32])?
        .view_dtype(Dtype::Uint32)?;
    let scales = bytes_tensor(ctx, &format!("{path}_scales"), &shape[..3], axis)?;
    Ok(Released::Mxfp4 { weight, scales })
}

/// A uint8 tensor of the given shape (this rank's part of `axis` under a split).
fn bytes_tensor(ctx: &LoadCtx<'_>, name: &str, shape: &[usize], axis: usize) -> Result<Array> {
    let a = ctx.split_on(name, shape, axis)?;
    if a.dtype() != Dtype::Uint8 {
        return Err(Diagnostic::error(
            code::Snapshot::Quantization,
            format!(
                "`{name}` must hold MXFP4 bytes (uint8), found {:?}",
                a.dtype()
            ),
        )
        .with_file(&ctx.config.path));
    }
    Ok(a)
}

impl Released {
    /// The rows `idx` (all when `None`) of every expert as a switch projection with `bias`.
    /// Selected rows are computed now, so that the fused tensor is freed during loading
    /// rather than held until the first step.
    fn rows(&self, idx: Option<&Array>, bias: Option<Array>) -> Result<SwitchLinear> {
        let pick = |a: &Array| -> Result<Array> {
            let Some(idx) = idx else {
                return Ok(a.clone());
            };
            let rows = a.take_axis(idx, 1)?;
            rows.eval()?;
            Ok(rows)
        };
        if let Some(b) = &bias {
            b.eval()?;
        }
        match self {
            Released::Dense(w) => SwitchLinear::dense(&pick(w)?, bias),
            Released::Mxfp4 { weight, scales } => Ok(SwitchLinear::quantized(
                pick(weight)?,
                pick(scales)?,
                None,
                MXFP4,
                bias,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Result<ModelConfig> {
        super::super::test_config(
            "gpt_oss",
            &format!(r#","num_local_experts":4,"num_experts_per_tok":2{extra}"#),
        )
    }

    #[test]
    fn layers_alternate_from_a_sliding_one_by_default() {
        let s = spec(&config(r#","sliding_window":16"#).unwrap()).unwrap();
        assert_eq!(s.sliding_window, [Some(16), None, Some(16), None]);
        assert!(s.attn_sinks && s.qkv_bias && s.o_bias);
        let moe = s.moe[3].as_ref().unwrap();
        assert_eq!(moe.router, "model.layers.3.mlp.router");
        assert_eq!((moe.num_experts, moe.top_k), (4, 2));
        assert_eq!(moe.routing, Routing::TopKSoftmax);
        assert!(moe.router_bias && moe.expert_bias);
    }

    #[test]
    fn layer_types_are_followed_and_checked() {
        let types = r#","layer_types":["full_attention","sliding_attention","sliding_attention","full_attention"]"#;
        let s = spec(&config(types).unwrap()).unwrap();
        assert_eq!(s.sliding_window, [None, Some(128), Some(128), None]);
        let err = spec(&config(r#","layer_types":["full_attention"]"#).unwrap()).unwrap_err();
        assert!(err.message.contains("layer_types"), "{}", err.message);
        let err =
            spec(&config(r#","layer_types":["full_attention","x","x","x"]"#).unwrap()).unwrap_err();
        assert!(
            err.message.contains("unknown layer type"),
            "{}",
            err.message
        );
    }
}
