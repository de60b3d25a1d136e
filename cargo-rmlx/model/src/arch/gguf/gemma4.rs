//! GGUF names of Gemma 4 (text; llama.cpp's `gemma4`, imported as `gemma4_text`). What the
//! converter (`Gemma4Model`) writes and the import reads back:
//! - per-layer sizes as arrays: `head_count_kv` (sliding vs full layers, with
//!   `num_global_key_value_heads`) and `feed_forward_length` (twice as wide on KV-shared
//!   layers with `use_double_wide_mlp`); head widths `key_length` (full) and
//!   `key_length_swa` (sliding); `attention.sliding_window_pattern` (one boolean per layer);
//!   `attention.shared_kv_layers`; `embedding_length_per_layer_input`;
//! - RoPE bases `rope.freq_base` (full) and `rope.freq_base_swa`; the full layers'
//!   proportional partial RoPE as the global `rope_freqs` tensor (factor 1 for a rotated
//!   pair, 1e30 for a pass-through one), read here into `partial_rotary_factor`;
//! - `attention_k_eq_v`: full layers without `attn_v` use their keys as values;
//! - the MoE block: router `ffn_gate_inp` with its input scale `ffn_gate_inp.scale`, the
//!   per-expert scale as `ffn_down_exps.scale`, gate and up experts fused
//!   (`ffn_gate_up_exps`, gate rows first, split again here);
//! - per-layer inputs: `per_layer_token_embd`, `per_layer_model_proj`,
//!   `per_layer_proj_norm`, and per layer `inp_gate`, `proj`, `post_norm`;
//! - norms as they are (no `+1` shift, unlike Gemma 3); `layer_output_scale` is the layer
//!   scalar. The K/V projections the checkpoint still carries on KV-shared layers are
//!   skipped, as mlx-lm's `sanitize` drops them.

use serde_json::{json, Map, Value};
use tracing::debug;

use super::{expert_sizes, llama_layer_module, put, qk_norm_module, Fused, GgufArch};
use crate::diagnostic::{code, Diagnostic, Result};
use crate::gguf::arch::{layers_with, req_usize, short_f64, sliding_layers, ModelParams};
use crate::gguf::reader::GgufFile;

/// `gemma4`.
pub const GEMMA4: GgufArch = GgufArch {
    name: "gemma4",
    model_type: "gemma4_text",
    hf_class: "Gemma4ForCausalLM",
    permutes_qk: false,
    norm_shift: 0.0,
    default_rope_theta: 1_000_000.0,
    layer_module,
    layer_param,
    undo: super::nothing_to_undo,
    top_level,
    fused: &[Fused {
        gguf: "ffn_gate_up_exps",
        parts: &["experts.switch_glu.gate_proj", "experts.switch_glu.up_proj"],
    }],
    skip,
    per_layer_sizes: true,
    config,
};

const ARCH: &str = "gemma4";

fn key(k: &str) -> String {
    format!("{ARCH}.{k}")
}

fn layer_module(module: &str) -> Option<&'static str> {
    Some(match module {
        "post_attention_norm" => "post_attention_layernorm",
        "ffn_norm" => "pre_feedforward_layernorm",
        "post_ffw_norm" => "post_feedforward_layernorm",
        "post_ffw_norm_1" => "post_feedforward_layernorm_1",
        "pre_ffw_norm_2" => "pre_feedforward_layernorm_2",
        "post_ffw_norm_2" => "post_feedforward_layernorm_2",
        "ffn_gate_inp" => "router.proj",
        "ffn_gate_exps" => "experts.switch_glu.gate_proj",
        "ffn_up_exps" => "experts.switch_glu.up_proj",
        "ffn_down_exps" => "experts.switch_glu.down_proj",
        "inp_gate" => "per_layer_input_gate",
        "proj" => "per_layer_projection",
        "post_norm" => "post_per_layer_input_norm",
        _ => return qk_norm_module(module).or_else(|| llama_layer_module(module)),
    })
}

fn layer_param(rest: &str) -> Option<&'static str> {
    match rest {
        "layer_output_scale.weight" => Some("layer_scalar"),
        "ffn_gate_inp.scale" => Some("router.scale"),
        "ffn_down_exps.scale" => Some("router.per_expert_scale"),
        _ => None,
    }
}

fn top_level(name: &str) -> Option<&'static str> {
    match name {
        "per_layer_token_embd.weight" => Some("model.embed_tokens_per_layer.weight"),
        "per_layer_model_proj.weight" => Some("model.per_layer_model_projection.weight"),
        "per_layer_proj_norm.weight" => Some("model.per_layer_projection_norm.weight"),
        _ => None,
    }
}

/// The number of KV-shared layers (the last ones), 0 when the file has none.
fn shared_kv_layers(g: &GgufFile) -> usize {
    g.get_u64(&key("attention.shared_kv_layers"))
        .map_or(0, |n| n as usize)
}

fn skip(g: &GgufFile, name: &str) -> Result<Option<&'static str>> {
    let Some((layer, rest)) = name.strip_prefix("blk.").and_then(|r| r.split_once('.')) else {
        return Ok(None);
    };
    let kv = ["attn_k.weight", "attn_v.weight", "attn_k_norm.weight"];
    if !kv.contains(&rest) {
        return Ok(None);
    }
    let layers = req_usize(g, &key("block_count"), "num_hidden_layers")?;
    let shared = layer
        .parse::<usize>()
        .is_ok_and(|i| i + shared_kv_layers(g) >= layers);
    Ok(shared.then_some(
        "a KV-shared layer attends over an earlier layer's keys and values; its own K/V \
         projections are unused (mlx-lm drops them too)",
    ))
}

fn config(g: &GgufFile, p: &ModelParams, c: &mut Map<String, Value>) -> Result<()> {
    let n = p.num_layers;
    let sliding = layer_kinds(g, n)?;
    let shared = shared_kv_layers(g);
    if shared >= n {
        return Err(bad(
            g,
            "attention.shared_kv_layers",
            "must be below the block count",
        ));
    }
    let heads_kv = per_layer(g, "attention.head_count_kv", "num_key_value_heads", n)?;
    let first = |want: bool| sliding.iter().position(|&s| s == want);
    let kv_sliding = first(true).map_or(p.num_kv_heads, |i| heads_kv[i]);
    let kv_full = match (g.get_array(&key("attention.head_count_kv")), first(false)) {
        (Some(_), Some(i)) => json!(heads_kv[i]),
        _ => Value::Null,
    };
    put(c, "num_key_value_heads", json!(kv_sliding));
    put(c, "num_global_key_value_heads", kv_full);
    let swa_dim = req_usize(g, &key("attention.key_length_swa"), "head_dim")?;
    put(c, "head_dim", json!(swa_dim));
    put(c, "global_head_dim", json!(p.head_dim));
    mlp_config(g, p, shared, c)?;
    let types: Vec<&str> = sliding
        .iter()
        .map(|&s| match s {
            true => "sliding_attention",
            false => "full_attention",
        })
        .collect();
    put(c, "layer_types", json!(types));
    put(c, "num_kv_shared_layers", json!(shared));
    put(
        c,
        "attention_k_eq_v",
        json!(k_eq_v(g, &sliding, n - shared)?),
    );
    let window = p
        .sliding_window
        .ok_or_else(|| missing(g, "attention.sliding_window"))?;
    put(c, "sliding_window", json!(window));
    put(c, "rope_parameters", rope_parameters(g, p, swa_dim)?);
    let softcap = g.get_f64(&key("final_logit_softcapping")).map(short_f64);
    put(c, "final_logit_softcapping", json!(softcap));
    put(c, "hidden_activation", json!("gelu_pytorch_tanh"));
    put(c, "attention_bias", json!(false));
    per_layer_inputs(g, c)
}

/// Per layer, whether it is a sliding-window layer (llama.cpp requires the list).
fn layer_kinds(g: &GgufFile, n: usize) -> Result<Vec<bool>> {
    if g.get_array(&key("attention.sliding_window_pattern"))
        .is_none()
    {
        return Err(missing(g, "attention.sliding_window_pattern"));
    }
    sliding_layers(g, ARCH, n, 1)
}

/// The dense MLP's width, whether KV-shared layers have one twice as wide, and the MoE block.
fn mlp_config(
    g: &GgufFile,
    p: &ModelParams,
    shared: usize,
    c: &mut Map<String, Value>,
) -> Result<()> {
    let n = p.num_layers;
    let ff = per_layer(g, "feed_forward_length", "intermediate_size", n)?;
    let own = ff[0];
    let wide = |f: usize| f == 2 * own;
    let double_wide = shared > 0 && ff[n - shared..].iter().all(|&f| wide(f));
    let uniform = ff[..n - shared].iter().all(|&f| f == own)
        && ff[n - shared..]
            .iter()
            .all(|&f| f == own || (double_wide && wide(f)));
    if !uniform {
        return Err(bad(
            g,
            "feed_forward_length",
            "is neither one width nor one width with twice it on the KV-shared layers",
        ));
    }
    put(c, "intermediate_size", json!(own));
    put(c, "use_double_wide_mlp", json!(double_wide));
    let routed = layers_with(g, "ffn_gate_inp.weight");
    put(c, "enable_moe_block", json!(!routed.is_empty()));
    if routed.is_empty() {
        return Ok(());
    }
    if routed.len() != n {
        return Err(bad(
            g,
            "expert_count",
            "applies to only some layers; Gemma 4 has the MoE block on every layer or none",
        ));
    }
    let (experts, used, width) = expert_sizes(g, ARCH)?;
    put(c, "num_experts", json!(experts));
    put(c, "top_k_experts", json!(used));
    put(c, "moe_intermediate_size", json!(width));
    Ok(())
}

/// `attention_k_eq_v`: the full layers that compute keys have no value projection (on all
/// of them or none; sliding layers always have one).
fn k_eq_v(g: &GgufFile, sliding: &[bool], own_kv: usize) -> Result<bool> {
    let values = layers_with(g, "attn_v.weight");
    let lacks = |i: &usize| !values.contains(i);
    let (swa, full): (Vec<usize>, Vec<usize>) = (0..own_kv).partition(|&i| sliding[i]);
    let k_eq_v = full.iter().any(lacks);
    if swa.iter().any(lacks) || (k_eq_v && !full.iter().all(lacks)) {
        return Err(Diagnostic::error(
            code::Gguf::UnsupportedArchitecture,
            "GGUF gemma4: `attn_v` is missing on some layers that compute keys but not on \
             others of their kind; Gemma 4 reuses keys as values on all full layers or none",
        )
        .with_file(g.path()));
    }
    Ok(k_eq_v)
}

/// `rope_parameters` per layer type: sliding layers rotate every feature with
/// `rope.freq_base_swa`; full layers rotate the pairs whose `rope_freqs` factor is 1
/// (proportional RoPE) with `rope.freq_base`.
fn rope_parameters(g: &GgufFile, p: &ModelParams, swa_dim: usize) -> Result<Value> {
    for (k, dim) in [
        ("rope.dimension_count_swa", swa_dim),
        ("rope.dimension_count", p.head_dim),
    ] {
        if g.get_u64(&key(k)).is_some_and(|r| r as usize != dim) {
            return Err(bad(g, k, "is not the head width (only pass-through pairs may stay unrotated, through `rope_freqs`)"));
        }
    }
    let swa_theta = match g.get_f64(&key("rope.freq_base_swa")) {
        Some(t) => short_f64(t),
        None => {
            debug!("GGUF has no `gemma4.rope.freq_base_swa`: sliding layers use the full base, as in llama.cpp");
            p.rope_theta
        }
    };
    let full = match rotated_pairs(g, p.head_dim)? {
        Some(pairs) => json!({
            "rope_type": "proportional",
            "partial_rotary_factor": (2 * pairs) as f64 / p.head_dim as f64,
            "rope_theta": p.rope_theta,
        }),
        None => json!({"rope_type": "default", "rope_theta": p.rope_theta}),
    };
    Ok(json!({
        "sliding_attention": {"rope_type": "default", "rope_theta": swa_theta},
        "full_attention": full,
    }))
}

/// The number of leading pairs `rope_freqs` rotates (factor 1; the rest 1e30 or more, which
/// freezes them), or `None` without the tensor.
fn rotated_pairs(g: &GgufFile, head_dim: usize) -> Result<Option<usize>> {
    let Some(info) = g.tensor_info("rope_freqs.weight") else {
        return Ok(None);
    };
    let data = g.view(info).read()?;
    let factors = crate::gguf::quants::dequantize(info.ggml_type, &data)?;
    let pairs = factors.iter().take_while(|&&f| f == 1.0).count();
    if factors.len() != head_dim / 2 || factors[pairs..].iter().any(|&f| f < 1e29) {
        return Err(Diagnostic::error(
            code::Gguf::UnsupportedArchitecture,
            format!(
                "GGUF gemma4: `rope_freqs` ({} factors) is not proportional RoPE over a head of \
                 {head_dim} (factors 1, then 1e30)",
                factors.len()
            ),
        )
        .with_file(g.path()));
    }
    Ok(Some(pairs))
}

/// Per-layer input embeddings: their width, and their vocabulary (the table's rows).
fn per_layer_inputs(g: &GgufFile, c: &mut Map<String, Value>) -> Result<()> {
    let width = g
        .get_u64(&key("embedding_length_per_layer_input"))
        .unwrap_or(0);
    put(c, "hidden_size_per_layer_input", json!(width));
    if width == 0 {
        return Ok(());
    }
    match g.tensor_info("per_layer_token_embd.weight") {
        Some(t) if t.dims.len() == 2 => {
            put(c, "vocab_size_per_layer_input", json!(t.dims[1]));
            Ok(())
        }
        _ => Err(Diagnostic::error(
            code::Gguf::MissingTensor,
            "GGUF gemma4 has per-layer inputs but no 2-D `per_layer_token_embd.weight`",
        )
        .with_file(g.path())),
    }
}

/// One value per layer of `k` (a number is every layer's).
fn per_layer(g: &GgufFile, k: &str, hf_key: &str, n: usize) -> Result<Vec<usize>> {
    let full = key(k);
    match g.get_i64_array(&full) {
        Some(v) if v.len() == n && v.iter().all(|&x| x > 0) => {
            Ok(v.iter().map(|&x| x as usize).collect())
        }
        Some(_) => Err(bad(g, k, "must list one positive value per layer")),
        None => Ok(vec![req_usize(g, &full, hf_key)?; n]),
    }
}

fn missing(g: &GgufFile, k: &str) -> Diagnostic {
    Diagnostic::error(
        code::Gguf::MissingMetadata,
        format!("GGUF metadata `{}` is missing", key(k)),
    )
    .with_file(g.path())
}

fn bad(g: &GgufFile, k: &str, what: &str) -> Diagnostic {
    Diagnostic::error(
        code::Gguf::BadMetadata,
        format!("GGUF metadata `{}` {what}", key(k)),
    )
    .with_file(g.path())
}
