//! GGUF names of Gemma 3 (text): four norms per layer, q/k norms, norm weights stored `+1`;
//! the sliding-window pattern, local rope base and query scale are llama.cpp constants, not
//! metadata.

use serde_json::{json, Map, Value};

use super::{llama_layer_module, put, qk_norm_module, GgufArch};
use crate::diagnostic::Result;
use crate::gguf::arch::ModelParams;
use crate::gguf::reader::GgufFile;

/// `gemma3`.
pub const GEMMA3: GgufArch = GgufArch {
    name: "gemma3",
    model_type: "gemma3_text",
    hf_class: "Gemma3ForCausalLM",
    permutes_qk: false,
    norm_shift: 1.0,
    default_rope_theta: 1_000_000.0,
    layer_module,
    layer_param: super::no_layer_params,
    undo: super::nothing_to_undo,
    top_level: super::no_top_level,
    fused: &[],
    skip: super::skip_nothing,
    per_layer_sizes: false,
    config,
};

/// llama.cpp: every 6th layer attends globally.
const SLIDING_WINDOW_PATTERN: usize = 6;

fn layer_module(module: &str) -> Option<&'static str> {
    match module {
        "post_attention_norm" => Some("post_attention_layernorm"),
        "ffn_norm" => Some("pre_feedforward_layernorm"),
        "post_ffw_norm" => Some("post_feedforward_layernorm"),
        _ => qk_norm_module(module).or_else(|| llama_layer_module(module)),
    }
}

fn config(_: &GgufFile, p: &ModelParams, c: &mut Map<String, Value>) -> Result<()> {
    put(c, "hidden_activation", json!("gelu_pytorch_tanh"));
    put(c, "rope_local_base_freq", json!(10_000.0));
    put(c, "sliding_window", json!(p.sliding_window.unwrap_or(512)));
    put(c, "sliding_window_pattern", json!(SLIDING_WINDOW_PATTERN));
    let layer_types: Vec<&str> = (0..p.num_layers)
        .map(|i| {
            if (i + 1) % SLIDING_WINDOW_PATTERN == 0 {
                "full_attention"
            } else {
                "sliding_attention"
            }
        })
        .collect();
    put(c, "layer_types", json!(layer_types));
    // llama.cpp: 1/sqrt(hidden/heads) for the 27B model (62 layers), else 1/sqrt(head_dim).
    let scalar = if p.num_layers == 62 {
        p.hidden_size / p.num_heads
    } else {
        p.head_dim
    };
    put(c, "query_pre_attn_scalar", json!(scalar));
    put(c, "final_logit_softcapping", Value::Null);
    put(c, "attn_logit_softcapping", Value::Null);
    Ok(())
}
