//! GGUF names of Phi-3: the converter keeps the fused projections (`attn_qkv` = `qkv_proj`,
//! `ffn_up` = `gate_up_proj`, gate rows first — llama.cpp's SwiGLU splits it the same way),
//! which is the layout the loader reads; no Q/K permutation. Phi-3's long-context RoPE is
//! stored as two global tensors, `rope_factors_long` / `rope_factors_short`, and
//! `phi3.rope.scaling.original_context_length`; they become config.json's `longrope`
//! `rope_scaling` (the tensors themselves are skipped by the tensor mapping). The rotated
//! width is `phi3.rope.dimension_count` (→ `partial_rotary_factor`).

use serde_json::{json, Map, Value};

use super::{put, GgufArch};
use crate::diagnostic::{code, Diagnostic, Result};
use crate::gguf::arch::{short_f64, ModelParams};
use crate::gguf::quants::GgmlType;
use crate::gguf::reader::GgufFile;

/// `phi3` (Phi-3, Phi-3.5, Phi-4 mini).
pub const PHI3: GgufArch = GgufArch {
    name: "phi3",
    model_type: "phi3",
    hf_class: "Phi3ForCausalLM",
    permutes_qk: false,
    norm_shift: 0.0,
    default_rope_theta: 10_000.0,
    layer_module,
    layer_param: super::no_layer_params,
    undo: super::nothing_to_undo,
    top_level: super::no_top_level,
    fused: &[],
    skip: super::skip_nothing,
    per_layer_sizes: false,
    config,
};

/// The global tensors holding Phi-3's per-frequency RoPE factors (read into config.json).
pub const ROPE_FACTOR_TENSORS: [&str; 2] =
    ["rope_factors_long.weight", "rope_factors_short.weight"];

fn layer_module(module: &str) -> Option<&'static str> {
    Some(match module {
        "attn_norm" => "input_layernorm",
        "attn_qkv" => "self_attn.qkv_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_norm" => "post_attention_layernorm",
        "ffn_up" => "mlp.gate_up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    })
}

fn config(g: &GgufFile, p: &ModelParams, c: &mut Map<String, Value>) -> Result<()> {
    put(c, "hidden_act", json!("silu"));
    let window = p.sliding_window.map_or(Value::Null, |w| json!(w));
    put(c, "sliding_window", window);
    if let Some(dims) = g.get_u64("phi3.rope.dimension_count") {
        if dims as usize != p.head_dim {
            let factor = dims as f64 / p.head_dim as f64;
            put(c, "partial_rotary_factor", json!(factor));
        }
    }
    if let Some(scaling) = long_rope(g)? {
        put(c, "rope_scaling", scaling);
        if let Some(orig) = g.get_u64("phi3.rope.scaling.original_context_length") {
            put(c, "original_max_position_embeddings", json!(orig));
        }
    }
    Ok(())
}

/// `{"type": "longrope", long_factor, short_factor}` from the factor tensors; `None` when
/// the file has neither (a model without long-context RoPE).
fn long_rope(g: &GgufFile) -> Result<Option<Value>> {
    let [long, short] = ROPE_FACTOR_TENSORS.map(|n| factors(g, n));
    match (long?, short?) {
        (None, None) => Ok(None),
        (Some(l), Some(s)) => Ok(Some(json!({
            "type": "longrope",
            "long_factor": l,
            "short_factor": s,
        }))),
        _ => Err(Diagnostic::error(
            code::Gguf::MissingTensor,
            "GGUF file has only one of `rope_factors_long` / `rope_factors_short`",
        )
        .with_file(g.path())),
    }
}

/// The float32 values of the 1-D tensor `name`, when present.
fn factors(g: &GgufFile, name: &str) -> Result<Option<Vec<f64>>> {
    let Some(t) = g.tensor(name) else {
        return Ok(None);
    };
    if t.ggml_type() != GgmlType::F32 || t.shape().len() != 1 {
        return Err(Diagnostic::error(
            code::Gguf::BadTensor,
            format!("GGUF tensor `{name}` is not a 1-D float32 vector"),
        )
        .with_file(g.path()));
    }
    let bytes = t.read()?;
    let values = bytes
        .chunks_exact(4)
        .map(|b| short_f64(f32::from_le_bytes([b[0], b[1], b[2], b[3]]).into()))
        .collect();
    Ok(Some(values))
}
