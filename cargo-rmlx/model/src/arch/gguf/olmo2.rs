//! GGUF names of OLMo 2: no pre-norms, a norm after attention and after the MLP, q/k norms
//! over the whole projection width; no Q/K permutation (llama.cpp runs it with NeoX rope).

use serde_json::{json, Map, Value};

use super::{llama_layer_module, put, qk_norm_module, GgufArch};
use crate::diagnostic::Result;
use crate::gguf::arch::ModelParams;
use crate::gguf::reader::GgufFile;

/// `olmo2`.
pub const OLMO2: GgufArch = GgufArch {
    name: "olmo2",
    model_type: "olmo2",
    hf_class: "Olmo2ForCausalLM",
    permutes_qk: false,
    norm_shift: 0.0,
    default_rope_theta: 500_000.0,
    layer_module,
    layer_param: super::no_layer_params,
    undo: super::nothing_to_undo,
    top_level: super::no_top_level,
    fused: &[],
    skip: super::skip_nothing,
    per_layer_sizes: false,
    config,
};

fn layer_module(module: &str) -> Option<&'static str> {
    match module {
        "post_attention_norm" => Some("post_attention_layernorm"),
        "post_ffw_norm" => Some("post_feedforward_layernorm"),
        // OLMo 2 has no pre-norms: `attn_norm` / `ffn_norm` are not its tensors.
        "attn_norm" | "ffn_norm" => None,
        _ => qk_norm_module(module).or_else(|| llama_layer_module(module)),
    }
}

fn config(_: &GgufFile, _: &ModelParams, c: &mut Map<String, Value>) -> Result<()> {
    put(c, "hidden_act", json!("silu"));
    put(c, "attention_bias", json!(false));
    Ok(())
}
