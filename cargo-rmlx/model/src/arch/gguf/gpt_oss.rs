//! GGUF names of GPT-OSS (llama.cpp's `gpt-oss`): biased attention with learned sinks
//! (`attn_sinks.weight` → `self_attn.sinks`), a post-attention norm before the MoE block, a
//! biased router (`ffn_gate_inp`) and experts stacked per projection with biases
//! (`ffn_{gate,up,down}_exps`, the MLX layout `mlp.experts.*` the loader reads). Released
//! checkpoints keep their experts MXFP4 in the GGUF; the import keeps them MXFP4 exactly
//! (MLX `mxfp4`, see `gguf::quants::mxfp4_codes`). No Q/K permutation. Sliding and full layers
//! alternate from a sliding one (llama.cpp's fixed pattern of 2, unless the file stores
//! `sliding_window_pattern`); YaRN comes from the generic `rope.scaling.*` keys.

use serde_json::{json, Map, Value};

use super::{expert_sizes, llama_layer_module, put, GgufArch};
use crate::diagnostic::Result;
use crate::gguf::arch::{req_usize, sliding_layers, ModelParams};
use crate::gguf::reader::GgufFile;

/// `gpt-oss`.
pub const GPT_OSS: GgufArch = GgufArch {
    name: "gpt-oss",
    model_type: "gpt_oss",
    hf_class: "GptOssForCausalLM",
    permutes_qk: false,
    norm_shift: 0.0,
    default_rope_theta: 150_000.0,
    layer_module,
    layer_param,
    undo: super::nothing_to_undo,
    top_level: super::no_top_level,
    fused: &[],
    skip: super::skip_nothing,
    per_layer_sizes: false,
    config,
};

/// llama.cpp's GPT-OSS graph: every 2nd layer attends globally, starting with a sliding one.
const SLIDING_WINDOW_PATTERN: usize = 2;

/// GPT-OSS's own modules; the attention has llama's names, and there is no dense MLP.
fn layer_module(module: &str) -> Option<&'static str> {
    Some(match module {
        "post_attention_norm" => "post_attention_layernorm",
        "ffn_norm" | "ffn_gate" | "ffn_up" | "ffn_down" => return None,
        "ffn_gate_inp" => "mlp.router",
        "ffn_gate_exps" => "mlp.experts.gate_proj",
        "ffn_up_exps" => "mlp.experts.up_proj",
        "ffn_down_exps" => "mlp.experts.down_proj",
        _ => return llama_layer_module(module),
    })
}

fn layer_param(rest: &str) -> Option<&'static str> {
    (rest == "attn_sinks.weight").then_some("self_attn.sinks")
}

fn config(g: &GgufFile, p: &ModelParams, c: &mut Map<String, Value>) -> Result<()> {
    // The experts' width is config.json's `intermediate_size` (llama.cpp's loader reads
    // `expert_feed_forward_length`; `feed_forward_length` is the same number in the
    // converter's files).
    let (experts, used, width) = expert_sizes(g, "gpt-oss")?;
    let sliding = sliding_layers(g, "gpt-oss", p.num_layers, SLIDING_WINDOW_PATTERN)?;
    let layer_types: Vec<&str> = sliding
        .iter()
        .map(|&s| {
            if s {
                "sliding_attention"
            } else {
                "full_attention"
            }
        })
        .collect();
    let window = req_usize(g, "gpt-oss.attention.sliding_window", "sliding_window")?;
    put(c, "intermediate_size", json!(width));
    put(c, "attention_bias", json!(true));
    put(c, "num_local_experts", json!(experts));
    put(c, "num_experts_per_tok", json!(used));
    put(c, "experts_per_token", json!(used));
    put(c, "sliding_window", json!(window));
    put(c, "layer_types", json!(layer_types));
    put(c, "swiglu_limit", json!(7.0));
    Ok(())
}
