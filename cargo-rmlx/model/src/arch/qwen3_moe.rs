//! Qwen3-MoE (`qwen3_moe`, e.g. Qwen3-30B-A3B) as mlx-lm runs it: the Qwen3 decoder (q/k
//! norms, no biases) whose feed-forward is a sparse MoE — softmax router, top-k,
//! renormalised when `norm_topk_prob`, SiLU-gated experts — in the layers `decoder_sparse_step`
//! selects outside `mlp_only_layers`, and the dense MLP elsewhere. mlx-lm's attention takes
//! no RoPE scaling for this family, so `rope_scaling` is ignored (logged).
//!
//! Experts load stacked (`mlp.switch_mlp.*`, the MLX layout) or, as mlx-lm's `sanitize`
//! accepts them, one tensor per expert (`mlp.experts.<e>.*`, the Hugging Face layout).

use mlx_rs::Array;
use serde_json::Value;

use super::{config_bool, config_size, Architecture};
use crate::diagnostic::{code, Result};
use crate::engine::decoder::{Decoder, DecoderSpec};
use crate::engine::layers::LoadCtx;
use crate::engine::mlp::Activation;
use crate::engine::moe::{
    stacked_experts, ExpertActivation, MoeSpec, Routing, SwitchGlu, SwitchLinear,
};
use crate::engine::network::Network;
use crate::snapshot::config::KeyDefaults;
use crate::snapshot::ModelConfig;

/// Registry entry.
pub const ARCH: Architecture = Architecture {
    model_types: &["qwen3_moe"],
    load,
    convert: super::convert::qwen3_moe::CONVERT,
    gguf: &[super::gguf::qwen3_moe::QWEN3MOE],
    keys: |_| KEYS,
};

/// mlx-lm's qwen3_moe has no defaults for these keys; transformers' where it has one
/// (untied embeddings).
const KEYS: KeyDefaults = KeyDefaults {
    tie_word_embeddings: false,
    required: &[
        "rms_norm_eps",
        "num_key_value_heads",
        "head_dim",
        "rope_theta",
        "tie_word_embeddings",
    ],
    ..KeyDefaults::LLAMA
};

fn load(ctx: &LoadCtx<'_>) -> Result<Box<dyn Network>> {
    Ok(Box::new(Decoder::load(ctx, &spec(ctx.config)?)?))
}

/// The decoder spec of a Qwen3-MoE config.
pub fn spec(config: &ModelConfig) -> Result<DecoderSpec> {
    let base = DecoderSpec::llama(config);
    if config.rope_scaling.is_some() {
        tracing::info!("qwen3_moe: rope_scaling ignored, as mlx-lm's qwen3_moe does");
    }
    let moe = sparse_layers(config)?
        .into_iter()
        .enumerate()
        .map(|(i, sparse)| sparse.then(|| moe_spec(config, i)).transpose())
        .collect::<Result<Vec<_>>>()?;
    Ok(DecoderSpec {
        qkv_bias: false,
        o_bias: false,
        mlp_bias: false,
        qk_norm: true,
        rope_scaling: None,
        moe,
        ..base
    })
}

/// Which layers are sparse: `(i + 1) % decoder_sparse_step == 0` and not in `mlp_only_layers`.
fn sparse_layers(config: &ModelConfig) -> Result<Vec<bool>> {
    let step = config_size(config, "decoder_sparse_step", None)?;
    let dense_only: Vec<u64> = match config.raw.get("mlp_only_layers") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_u64).collect(),
        Some(v) => {
            return Err(config.located(
                code::Snapshot::Config,
                format!("`mlp_only_layers` must be a list of layer indices, found {v}"),
                "mlp_only_layers",
            ))
        }
    };
    Ok((0..config.num_hidden_layers)
        .map(|i| (i + 1) % step == 0 && !dense_only.contains(&(i as u64)))
        .collect())
}

fn moe_spec(config: &ModelConfig, layer: usize) -> Result<MoeSpec> {
    let p = format!("model.layers.{layer}.mlp");
    Ok(MoeSpec {
        router: format!("{p}.gate"),
        router_bias: false,
        experts: format!("{p}.switch_mlp"),
        expert_bias: false,
        num_experts: config_size(config, "num_experts", None)?,
        top_k: config_size(config, "num_experts_per_tok", None)?,
        hidden: config.hidden_size,
        inner: config_size(config, "moe_intermediate_size", None)?,
        routing: Routing::SoftmaxTopK {
            renormalize: config_bool(config, "norm_topk_prob", false)?,
        },
        activation: ExpertActivation::Glu(Activation::Silu),
        load_experts,
    })
}

/// Stacked experts, or per-expert tensors stacked here (mlx-lm's `sanitize`).
fn load_experts(ctx: &LoadCtx<'_>, spec: &MoeSpec) -> Result<SwitchGlu> {
    let mlp = spec.experts.trim_end_matches(".switch_mlp");
    let per_expert = format!("{mlp}.experts.0.gate_proj.weight");
    if !ctx.contains(&per_expert) {
        return stacked_experts(ctx, spec);
    }
    tracing::debug!("{mlp}: experts stored one per tensor; stacking them");
    // Tensor parallelism: gate/up by this rank's rows, down by its columns.
    let stack = |ctx: LoadCtx<'_>, name: &str, rows: usize, cols: usize| -> Result<SwitchLinear> {
        let parts = (0..spec.num_experts)
            .map(|e| ctx.param(&format!("{mlp}.experts.{e}.{name}.weight"), &[rows, cols]))
            .collect::<Result<Vec<Array>>>()?;
        let stacked = mlx_rs::ops::stack(&parts, 0)?;
        stacked.eval()?; // now, so the per-expert tensors are freed during loading
        SwitchLinear::dense(&stacked, None)
    };
    Ok(SwitchGlu {
        gate_proj: stack(ctx.column(), "gate_proj", spec.inner, spec.hidden)?,
        up_proj: stack(ctx.column(), "up_proj", spec.inner, spec.hidden)?,
        down_proj: stack(ctx.row(), "down_proj", spec.hidden, spec.inner)?,
        activation: spec.activation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Result<ModelConfig> {
        super::super::test_config(
            "qwen3_moe",
            &format!(
                r#","num_experts":4,"num_experts_per_tok":2,"moe_intermediate_size":32{extra}"#
            ),
        )
    }

    #[test]
    fn sparse_layers_follow_the_step_and_mlp_only_layers() {
        let c = config(r#","decoder_sparse_step":2,"mlp_only_layers":[3],"norm_topk_prob":true"#)
            .unwrap();
        let s = spec(&c).unwrap();
        let sparse: Vec<bool> = s.moe.iter().map(Option::is_some).collect();
        assert_eq!(sparse, [false, true, false, false]);
        let moe = s.moe[1].as_ref().unwrap();
        assert_eq!(moe.router, "model.layers.1.mlp.gate");
        assert_eq!(moe.experts, "model.layers.1.mlp.switch_mlp");
        assert_eq!((moe.num_experts, moe.top_k, moe.inner), (4, 2, 32));
        assert_eq!(moe.routing, Routing::SoftmaxTopK { renormalize: true });
        assert!(s.qk_norm && !s.qkv_bias);
    }

    #[test]
    fn a_missing_moe_key_is_reported() {
        let c = config(r#","mlp_only_layers":[],"norm_topk_prob":false"#).unwrap();
        let err = spec(&c).unwrap_err();
        assert_eq!(err.code, "rmlx::snapshot::config");
        assert!(
            err.message.contains("decoder_sparse_step"),
            "{}",
            err.message
        );
    }
}
