//! GGUF names of the llama family's entries: `llama` (Q/K rows permuted by the converter),
//! `qwen2` (q/k/v biases), `qwen3` (q/k norms) and `smollm3` (llama's layout; llama.cpp
//! leaves RoPE out of every 4th layer, a rule the GGUF does not store).

use serde_json::{json, Map, Value};

use super::{llama_layer_module, put, qk_norm_module, GgufArch};
use crate::diagnostic::Result;
use crate::gguf::arch::ModelParams;
use crate::gguf::reader::GgufFile;

/// `llama` (Llama 1/2/3, SmolLM, Mistral-style llama GGUFs).
pub const LLAMA: GgufArch = GgufArch {
    name: "llama",
    model_type: "llama",
    hf_class: "LlamaForCausalLM",
    permutes_qk: true,
    norm_shift: 0.0,
    default_rope_theta: 10_000.0,
    layer_module: llama_layer_module,
    layer_param: super::no_layer_params,
    undo: super::nothing_to_undo,
    top_level: super::no_top_level,
    fused: &[],
    skip: super::skip_nothing,
    per_layer_sizes: false,
    config: llama_config,
};

/// `qwen2` (Qwen2 / Qwen2.5).
pub const QWEN2: GgufArch = GgufArch {
    name: "qwen2",
    model_type: "qwen2",
    hf_class: "Qwen2ForCausalLM",
    permutes_qk: false,
    norm_shift: 0.0,
    default_rope_theta: 1_000_000.0,
    layer_module: llama_layer_module,
    layer_param: super::no_layer_params,
    undo: super::nothing_to_undo,
    top_level: super::no_top_level,
    fused: &[],
    skip: super::skip_nothing,
    per_layer_sizes: false,
    config: qwen2_config,
};

/// `qwen3`.
pub const QWEN3: GgufArch = GgufArch {
    name: "qwen3",
    model_type: "qwen3",
    hf_class: "Qwen3ForCausalLM",
    permutes_qk: false,
    norm_shift: 0.0,
    default_rope_theta: 1_000_000.0,
    layer_module: qwen3_layer_module,
    layer_param: super::no_layer_params,
    undo: super::nothing_to_undo,
    top_level: super::no_top_level,
    fused: &[],
    skip: super::skip_nothing,
    per_layer_sizes: false,
    config: qwen3_config,
};

/// `smollm3`.
pub const SMOLLM3: GgufArch = GgufArch {
    name: "smollm3",
    model_type: "smollm3",
    hf_class: "SmolLM3ForCausalLM",
    permutes_qk: true,
    norm_shift: 0.0,
    default_rope_theta: 2_000_000.0,
    layer_module: llama_layer_module,
    layer_param: super::no_layer_params,
    undo: super::nothing_to_undo,
    top_level: super::no_top_level,
    fused: &[],
    skip: super::skip_nothing,
    per_layer_sizes: false,
    config: smollm3_config,
};

/// llama.cpp's SmolLM3 graph: no RoPE in layers `i` with `(i + 1) % 4 == 0`.
const SMOLLM3_NO_ROPE_INTERVAL: usize = 4;

fn qwen3_layer_module(module: &str) -> Option<&'static str> {
    llama_layer_module(module).or_else(|| qk_norm_module(module))
}

/// SiLU MLP, no attention biases: the keys every llama-layout family shares.
fn silu_without_bias(c: &mut Map<String, Value>) {
    put(c, "hidden_act", json!("silu"));
    put(c, "attention_bias", json!(false));
}

fn llama_config(_: &GgufFile, _: &ModelParams, c: &mut Map<String, Value>) -> Result<()> {
    silu_without_bias(c);
    put(c, "mlp_bias", json!(false));
    Ok(())
}

fn qwen2_config(_: &GgufFile, p: &ModelParams, c: &mut Map<String, Value>) -> Result<()> {
    put(c, "hidden_act", json!("silu"));
    put(c, "use_sliding_window", json!(false));
    put(
        c,
        "sliding_window",
        json!(p.sliding_window.unwrap_or(p.max_position_embeddings)),
    );
    put(c, "max_window_layers", json!(p.num_layers));
    Ok(())
}

fn qwen3_config(_: &GgufFile, _: &ModelParams, c: &mut Map<String, Value>) -> Result<()> {
    silu_without_bias(c);
    put(c, "use_sliding_window", json!(false));
    Ok(())
}

fn smollm3_config(g: &GgufFile, p: &ModelParams, c: &mut Map<String, Value>) -> Result<()> {
    llama_config(g, p, c)?;
    put(c, "no_rope_layer_interval", json!(SMOLLM3_NO_ROPE_INTERVAL));
    let uses_rope: Vec<u8> = (0..p.num_layers)
        .map(|i| u8::from((i + 1) % SMOLLM3_NO_ROPE_INTERVAL != 0))
        .collect();
    put(c, "no_rope_layers", json!(uses_rope));
    Ok(())
}
