//! GGUF names of Ministral 3 / Mistral 3's text model (llama.cpp's `mistral3`): llama's
//! tensors with Q/K rows permuted by the converter (it is llama.cpp's `LlamaModel`). The RoPE
//! settings the loader reads from config.json's `rope_parameters` come from the generic YaRN
//! keys plus two of the family's own: `rope.scaling.yarn_log_multiplier` (`mscale_all_dim`; llama.cpp
//! assumes `mscale` 1) and `attention.temperature_scale` (Llama 4's query scaling β, whose
//! step is the original context length; absent or 0: no scaling, as in llama.cpp).

use serde_json::{json, Map, Value};
use tracing::debug;

use super::{llama_layer_module, no_layer_params, nothing_to_undo, put, GgufArch};
use crate::diagnostic::Result;
use crate::gguf::arch::{short_f64, ModelParams};
use crate::gguf::reader::GgufFile;

/// `mistral3`.
pub const MISTRAL3: GgufArch = GgufArch {
    name: "mistral3",
    model_type: "ministral3",
    hf_class: "Ministral3ForCausalLM",
    permutes_qk: true,
    norm_shift: 0.0,
    default_rope_theta: 1_000_000.0,
    layer_module: llama_layer_module,
    layer_param: no_layer_params,
    undo: nothing_to_undo,
    top_level: super::no_top_level,
    fused: &[],
    skip: super::skip_nothing,
    per_layer_sizes: false,
    config,
};

fn config(g: &GgufFile, p: &ModelParams, c: &mut Map<String, Value>) -> Result<()> {
    let num = |key: &str| g.get_f64(&format!("mistral3.{key}")).map(short_f64);
    let beta = num("attention.temperature_scale").unwrap_or_else(|| {
        debug!("GGUF has no `mistral3.attention.temperature_scale`: no query scaling");
        0.0
    });
    let mut rope = match &p.rope_scaling {
        Some(Value::Object(yarn)) if yarn.get("rope_type") == Some(&json!("yarn")) => {
            let mut r = yarn.clone();
            r.remove("type");
            r.insert("mscale".into(), json!(1.0));
            let log_mul = num("rope.scaling.yarn_log_multiplier").unwrap_or_else(|| {
                debug!(
                    "GGUF has no YaRN log multiplier: `mscale_all_dim` 0, as llama.cpp reads it"
                );
                0.0
            });
            r.insert("mscale_all_dim".into(), json!(log_mul));
            r
        }
        _ => Map::from_iter([("rope_type".to_owned(), json!("default"))]),
    };
    rope.insert("rope_theta".into(), json!(p.rope_theta));
    rope.entry("original_max_position_embeddings")
        .or_insert(json!(p.max_position_embeddings));
    rope.insert("llama_4_scaling_beta".into(), json!(beta));
    put(c, "hidden_act", json!("silu"));
    put(c, "rope_parameters", Value::Object(rope));
    put(c, "rope_scaling", Value::Null);
    put(c, "sliding_window", Value::Null);
    Ok(())
}
