//! GGUF names of Qwen3.5 (llama.cpp's `qwen35`, and `qwen35moe` with routed experts and a gated
//! shared expert), imported as the flat text model (`qwen3_5_text` / `qwen3_5_moe_text`).
//!
//! llama.cpp's converter (Qwen3-Next's, plus the value-head reorder of Qwen3.5) changes the
//! delta-net layers beyond their names; the import undoes each change ([`Undo`]):
//! - `A_log` is stored as `ssm_a = -exp(A_log)` (→ `ln(-a)`), `dt_bias` as `ssm_dt.bias`;
//! - the convolution is squeezed to `[channels, kernel]` (→ MLX's `[channels, kernel, 1]`);
//! - with more value heads than key heads, every tensor indexed by value head has its heads
//!   reordered from grouped by key head (`g0v0, g0v1, g1v0, …`) to tiled (`g0v0, g1v0, g0v1,
//!   …`): the value rows of `attn_qkv` and of the convolution's channels, the rows of
//!   `attn_gate` (z), `ssm_beta` (b), `ssm_alpha` (a), the elements of `ssm_a` / `ssm_dt`,
//!   and the columns of `ssm_out` (→ back to grouped);
//! - the RMS norms stored `w − 1` in the checkpoint are stored `w` (+1), which is already the
//!   MLX value; the gated norm of the delta-net was never shifted.
//!
//! Full-attention layers keep qwen3's names (the query projection is twice as wide: query and
//! output gate). Which layers are linear comes from `attention.recurrent_layers`, else
//! `full_attention_interval` (llama.cpp's default 4).

use serde_json::{json, Map, Value};

use super::{expert_sizes, llama_layer_module, put, qk_norm_module, GgufArch, Undo};
use crate::diagnostic::{code, Diagnostic, Result};
use crate::gguf::arch::{req_usize, ModelParams};
use crate::gguf::reader::GgufFile;

/// `qwen35`.
pub const QWEN35: GgufArch = GgufArch {
    name: "qwen35",
    model_type: "qwen3_5_text",
    hf_class: "Qwen3_5ForCausalLM",
    permutes_qk: false,
    norm_shift: 0.0,
    default_rope_theta: 10_000_000.0,
    layer_module,
    layer_param,
    undo,
    top_level: super::no_top_level,
    fused: &[],
    skip: super::skip_nothing,
    per_layer_sizes: false,
    config,
};

/// `qwen35moe`.
pub const QWEN35MOE: GgufArch = GgufArch {
    name: "qwen35moe",
    model_type: "qwen3_5_moe_text",
    hf_class: "Qwen3_5MoeForCausalLM",
    config: moe_config,
    ..QWEN35
};

/// llama.cpp's default when the file has neither recurrent layers nor an interval.
const FULL_ATTENTION_INTERVAL: usize = 4;

/// Qwen3.5's own modules; attention, q/k norms and the dense MLP have llama's and qwen3's names.
fn layer_module(module: &str) -> Option<&'static str> {
    Some(match module {
        "post_attention_norm" => "post_attention_layernorm",
        "ffn_norm" => return None,
        "attn_qkv" => "linear_attn.in_proj_qkv",
        "attn_gate" => "linear_attn.in_proj_z",
        "ssm_beta" => "linear_attn.in_proj_b",
        "ssm_alpha" => "linear_attn.in_proj_a",
        "ssm_conv1d" => "linear_attn.conv1d",
        "ssm_norm" => "linear_attn.norm",
        "ssm_out" => "linear_attn.out_proj",
        "ffn_gate_inp" => "mlp.gate",
        "ffn_gate_exps" => "mlp.switch_mlp.gate_proj",
        "ffn_up_exps" => "mlp.switch_mlp.up_proj",
        "ffn_down_exps" => "mlp.switch_mlp.down_proj",
        "ffn_gate_inp_shexp" => "mlp.shared_expert_gate",
        "ffn_gate_shexp" => "mlp.shared_expert.gate_proj",
        "ffn_up_shexp" => "mlp.shared_expert.up_proj",
        "ffn_down_shexp" => "mlp.shared_expert.down_proj",
        _ => return qk_norm_module(module).or_else(|| llama_layer_module(module)),
    })
}

fn layer_param(rest: &str) -> Option<&'static str> {
    match rest {
        "ssm_a" => Some("linear_attn.A_log"),
        "ssm_dt.bias" => Some("linear_attn.dt_bias"),
        _ => None,
    }
}

/// The delta-net's head layout, from the `ssm.*` metadata.
struct Heads {
    /// Key heads and their width.
    nk: usize,
    dk: usize,
    /// Value heads and their width.
    nv: usize,
    dv: usize,
}

impl Heads {
    fn read(g: &GgufFile, arch: &str) -> Result<Self> {
        let key = |k: &str| format!("{arch}.ssm.{k}");
        let nk = req_usize(g, &key("group_count"), "linear_num_key_heads")?;
        let nv = req_usize(g, &key("time_step_rank"), "linear_num_value_heads")?;
        let dk = req_usize(g, &key("state_size"), "linear_key_head_dim")?;
        let inner = req_usize(g, &key("inner_size"), "linear_value_head_dim")?;
        if nv % nk != 0 || inner % nv != 0 {
            return Err(Diagnostic::error(
                code::Gguf::BadMetadata,
                format!(
                    "GGUF `{arch}.ssm.*`: {nv} value heads of {inner} values in all do not \
                     divide among {nk} key heads"
                ),
            )
            .with_file(g.path()));
        }
        Ok(Self {
            nk,
            dk,
            nv,
            dv: inner / nv,
        })
    }

    /// For each row of `nv` heads of `width` in grouped order, its row in the tiled order.
    fn grouped_from_tiled(&self, width: usize) -> Vec<usize> {
        let per_key = self.nv / self.nk;
        (0..self.nv)
            .flat_map(|h| {
                let tiled = (h % per_key) * self.nk + h / per_key;
                (0..width).map(move |d| tiled * width + d)
            })
            .collect()
    }

    /// The rows of q, k (unchanged) then v (reordered), as in `attn_qkv` and the convolution.
    fn qkv_rows(&self) -> Vec<usize> {
        let qk = 2 * self.nk * self.dk;
        (0..qk)
            .chain(self.grouped_from_tiled(self.dv).into_iter().map(|r| qk + r))
            .collect()
    }
}

fn undo(g: &GgufFile, name: &str) -> Result<Undo> {
    let Some(rest) = name
        .strip_prefix("blk.")
        .and_then(|r| r.split_once('.'))
        .map(|(_, rest)| rest)
    else {
        return Ok(Undo::default());
    };
    if !rest.starts_with("ssm_") && !rest.starts_with("attn_qkv") && !rest.starts_with("attn_gate")
    {
        return Ok(Undo::default());
    }
    let arch = g.architecture().unwrap_or("qwen35");
    let heads = Heads::read(g, arch)?;
    let reorder = heads.nv != heads.nk;
    let rows = |r: Vec<usize>| reorder.then_some(r);
    Ok(match rest {
        "attn_qkv.weight" => Undo {
            rows: rows(heads.qkv_rows()),
            ..Undo::default()
        },
        "ssm_conv1d.weight" => Undo {
            rows: rows(heads.qkv_rows()),
            shape: Some(conv_shape(g, name)?),
            ..Undo::default()
        },
        "attn_gate.weight" => Undo {
            rows: rows(heads.grouped_from_tiled(heads.dv)),
            ..Undo::default()
        },
        "ssm_beta.weight" | "ssm_alpha.weight" | "ssm_dt.bias" => Undo {
            rows: rows(heads.grouped_from_tiled(1)),
            ..Undo::default()
        },
        "ssm_a" => Undo {
            rows: rows(heads.grouped_from_tiled(1)),
            neg_exp: true,
            ..Undo::default()
        },
        "ssm_out.weight" => Undo {
            cols: rows(heads.grouped_from_tiled(heads.dv)),
            ..Undo::default()
        },
        _ => Undo::default(),
    })
}

/// MLX's depthwise convolution weight `[channels, kernel, 1]` of the squeezed GGUF one.
fn conv_shape(g: &GgufFile, name: &str) -> Result<Vec<usize>> {
    match g.tensor_info(name).map(|t| t.shape()) {
        Some(s) if s.len() == 2 => Ok(vec![s[0], s[1], 1]),
        other => Err(Diagnostic::error(
            code::Gguf::BadTensor,
            format!("GGUF tensor `{name}` has shape {other:?}, not [channels, kernel]"),
        )
        .with_file(g.path())),
    }
}

fn config(g: &GgufFile, p: &ModelParams, c: &mut Map<String, Value>) -> Result<()> {
    let arch = g.architecture().unwrap_or("qwen35");
    let heads = Heads::read(g, arch)?;
    let kernel = req_usize(
        g,
        &format!("{arch}.ssm.conv_kernel"),
        "linear_conv_kernel_dim",
    )?;
    let (interval, layer_types) = layer_kinds(g, arch, p.num_layers)?;
    let rotated = g
        .get_u64(&format!("{arch}.rope.dimension_count"))
        .map_or(p.head_dim, |d| d as usize);
    put(c, "hidden_act", json!("silu"));
    put(c, "attention_bias", json!(false));
    put(c, "linear_num_key_heads", json!(heads.nk));
    put(c, "linear_num_value_heads", json!(heads.nv));
    put(c, "linear_key_head_dim", json!(heads.dk));
    put(c, "linear_value_head_dim", json!(heads.dv));
    put(c, "linear_conv_kernel_dim", json!(kernel));
    put(c, "full_attention_interval", json!(interval));
    put(c, "layer_types", json!(layer_types));
    let rope = json!({
        "rope_type": "default",
        "rope_theta": p.rope_theta,
        "partial_rotary_factor": rotated as f64 / p.head_dim as f64,
    });
    put(c, "rope_parameters", rope);
    Ok(())
}

fn moe_config(g: &GgufFile, p: &ModelParams, c: &mut Map<String, Value>) -> Result<()> {
    config(g, p, c)?;
    let (experts, used, width) = expert_sizes(g, "qwen35moe")?;
    let shared = req_usize(
        g,
        "qwen35moe.expert_shared_feed_forward_length",
        "shared_expert_intermediate_size",
    )?;
    put(c, "num_experts", json!(experts));
    put(c, "num_experts_per_tok", json!(used));
    put(c, "moe_intermediate_size", json!(width));
    put(c, "shared_expert_intermediate_size", json!(shared));
    put(c, "norm_topk_prob", json!(true));
    Ok(())
}

/// The full-attention interval and each layer's type: `attention.recurrent_layers` (one
/// boolean per layer) must be that interval's pattern, which is what the loader runs.
fn layer_kinds(g: &GgufFile, arch: &str, n: usize) -> Result<(usize, Vec<&'static str>)> {
    let interval = g
        .get_u64(&format!("{arch}.full_attention_interval"))
        .map_or(FULL_ATTENTION_INTERVAL, |i| i as usize)
        .max(1);
    let pattern: Vec<bool> = (0..n).map(|i| (i + 1) % interval != 0).collect();
    let key = format!("{arch}.attention.recurrent_layers");
    if let Some(list) = g.get_array(&key) {
        let declared: Vec<Option<bool>> = list.iter().map(|v| v.as_bool()).collect();
        if declared.len() != n || declared.iter().zip(&pattern).any(|(d, p)| *d != Some(*p)) {
            return Err(Diagnostic::error(
                code::Gguf::UnsupportedArchitecture,
                format!(
                    "GGUF `{key}` is not the pattern of a full-attention layer every \
                     {interval} layers, the only placement the Qwen3.5 engine runs"
                ),
            )
            .with_file(g.path()));
        }
    }
    let types = pattern
        .iter()
        .map(|&linear| {
            if linear {
                "linear_attention"
            } else {
                "full_attention"
            }
        })
        .collect();
    Ok((interval, types))
}

#[cfg(test)]
mod tests {
    use super::Heads;

    /// llama.cpp's converter: value heads grouped by key head `[nk, r, width]` → tiled
    /// `[r, nk, width]`; for each tiled row, the grouped row it came from.
    fn tiled_from_grouped(nk: usize, r: usize, width: usize) -> Vec<usize> {
        let mut out = Vec::new();
        for v in 0..r {
            for g in 0..nk {
                out.extend((0..width).map(|d| (g * r + v) * width + d));
            }
        }
        out
    }

    #[test]
    fn value_heads_return_to_grouped_order() {
        for (nk, nv, width) in [(2, 4, 16), (2, 6, 3), (16, 64, 1), (4, 4, 2)] {
            let heads = Heads {
                nk,
                dk: 8,
                nv,
                dv: width,
            };
            let converter = tiled_from_grouped(nk, nv / nk, width);
            let undo = heads.grouped_from_tiled(width);
            for (grouped, &tiled) in undo.iter().enumerate() {
                assert_eq!(converter[tiled], grouped, "nk {nk} nv {nv} width {width}");
            }
            let qkv = heads.qkv_rows();
            assert_eq!(qkv.len(), 2 * nk * 8 + nv * width);
            assert!(qkv[..2 * nk * 8].iter().enumerate().all(|(i, &r)| i == r));
        }
    }
}
