//! GGUF names of Qwen3-MoE: qwen3's attention, a router (`ffn_gate_inp`) and the experts
//! stacked per projection (`ffn_{gate,up,down}_exps`, `[experts, out, in]`), which is the
//! MLX layout (`mlp.switch_mlp.*`) the loader reads. llama.cpp always renormalises the top-k
//! weights. A layer without a router is a dense MLP layer (`mlp_only_layers`).

use serde_json::{json, Map, Value};

use super::{expert_sizes, llama_layer_module, put, qk_norm_module, GgufArch};
use crate::diagnostic::Result;
use crate::gguf::arch::{layers_with, ModelParams};
use crate::gguf::reader::GgufFile;

/// `qwen3moe`.
pub const QWEN3MOE: GgufArch = GgufArch {
    name: "qwen3moe",
    model_type: "qwen3_moe",
    hf_class: "Qwen3MoeForCausalLM",
    permutes_qk: false,
    norm_shift: 0.0,
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

fn layer_module(module: &str) -> Option<&'static str> {
    match module {
        "ffn_gate_inp" => Some("mlp.gate"),
        "ffn_gate_exps" => Some("mlp.switch_mlp.gate_proj"),
        "ffn_up_exps" => Some("mlp.switch_mlp.up_proj"),
        "ffn_down_exps" => Some("mlp.switch_mlp.down_proj"),
        _ => qk_norm_module(module).or_else(|| llama_layer_module(module)),
    }
}

fn config(g: &GgufFile, p: &ModelParams, c: &mut Map<String, Value>) -> Result<()> {
    let (experts, used, width) = expert_sizes(g, "qwen3moe")?;
    let sparse = layers_with(g, "ffn_gate_inp.weight");
    let dense: Vec<usize> = (0..p.num_layers).filter(|i| !sparse.contains(i)).collect();
    put(c, "hidden_act", json!("silu"));
    put(c, "attention_bias", json!(false));
    put(c, "num_experts", json!(experts));
    put(c, "num_experts_per_tok", json!(used));
    put(c, "moe_intermediate_size", json!(width));
    put(c, "norm_topk_prob", json!(true));
    put(c, "decoder_sparse_step", json!(1));
    put(c, "mlp_only_layers", json!(dense));
    Ok(())
}
