//! GPT-OSS: the experts' fused `gate_up_proj` (gate and up rows interleaved) is split into
//! `experts.gate_proj` / `experts.up_proj` (weights along the rows, biases along the last
//! axis), `*_proj_bias` become `*_proj.bias`; the router is quantized affine 8-bit g64.
//! The released MXFP4 experts (`*_blocks` uint8 `[.., groups, 16]`, `*_scales`) become
//! `*.weight` uint32 words and `*.scales`, split the same way, and stay MXFP4 (mlx-lm reads
//! `quant_method: mxfp4`). Checkpoints already in mlx-lm's names pass unchanged.

use super::order::ParamOrder;
use super::{casts_all, eight_bit_if, Convert, FixedQuant, Hints, Problem, Recipe, Tensors};

/// The rules.
pub const CONVERT: Convert = Convert {
    sanitize,
    switch_modules: &[
        "mlp.experts.gate_proj",
        "mlp.experts.up_proj",
        "mlp.experts.down_proj",
    ],
    fixed_quant,
    keeps_dtype: casts_all,
    config_fix: super::config_kept,
    checks_decoder_shapes: false,
    order: ORDER,
};

/// mlx-lm's parameter order of gpt-oss: the final norm before the layers, the attention
/// sinks before the projections, the experts before the router.
const ORDER: ParamOrder = &[
    ("model", &["embed_tokens", "norm", "layers"]),
    (
        "layers",
        &[
            "self_attn",
            "mlp",
            "input_layernorm",
            "post_attention_layernorm",
        ],
    ),
    (
        "self_attn",
        &["sinks", "q_proj", "k_proj", "v_proj", "o_proj"],
    ),
    ("mlp", &["experts", "router"]),
    ("experts", &["gate_proj", "up_proj", "down_proj"]),
];

fn fixed_quant(path: &str) -> Option<FixedQuant> {
    eight_bit_if(path, &["router"])
}

fn sanitize(t: &mut Tensors, _: &Hints<'_>) -> Result<(), Problem> {
    if t.outs.keys().any(|k| k.contains("gate_proj.weight")) {
        return Ok(()); // mlx-lm: already sanitized
    }
    for k in t.names() {
        if k.ends_with("_proj_bias") {
            continue;
        }
        let name = released_mxfp4(t, &k);
        if name.contains("gate_up_proj") {
            let Some(base) = name
                .strip_suffix("gate_up_proj.weight")
                .or_else(|| name.strip_suffix("gate_up_proj.scales"))
            else {
                return Err(Problem {
                    message: format!(
                        "`{k}` is not in a layout mlx-lm converts \
                         (`gate_up_proj.weight` `[experts, 2*intermediate, hidden]`)"
                    ),
                    tensor: Some(k.clone()),
                    help: None,
                });
            };
            let leaf = &name[base.len() + "gate_up_proj".len()..];
            let axis = t.outs[&name].shape.len().saturating_sub(2);
            let (gate, up) = (
                format!("{base}gate_proj{leaf}"),
                format!("{base}up_proj{leaf}"),
            );
            interleaved(t, &name, axis, &gate, &up)?;
        }
    }
    for k in t.names() {
        if let Some(base) = k.strip_suffix("gate_up_proj_bias") {
            let axis = t.outs[&k].shape.len().saturating_sub(1);
            let (gate, up) = (
                format!("{base}gate_proj.bias"),
                format!("{base}up_proj.bias"),
            );
            interleaved(t, &k, axis, &gate, &up)?;
        }
    }
    t.rename(|k| {
        k.strip_suffix("down_proj_bias")
            .map(|b| format!("{b}down_proj.bias"))
    })
}

/// The released MXFP4 expert tensors in MLX's names: `*_blocks` (uint8 `[.., groups, 16]`)
/// become `*.weight` (uint32 words), `*_scales` become `*.scales`. Returns the (new) name.
fn released_mxfp4(t: &mut Tensors, k: &str) -> String {
    let renamed = if let Some(base) = k.strip_suffix("_blocks") {
        format!("{base}.weight")
    } else if let Some(base) = k.strip_suffix("_scales") {
        format!("{base}.scales")
    } else {
        return k.to_string();
    };
    let mut out = t.outs.remove(k).expect("listed");
    if k.ends_with("_blocks") {
        let n = out.shape.len();
        if n >= 2 {
            let words = out.shape[n - 2] * out.shape[n - 1] / 4;
            out.shape.truncate(n - 2);
            out.shape.push(words);
        }
        out.recipe = Recipe::Words(Box::new(out.recipe));
        out.dtype = safetensors::Dtype::U32;
    }
    t.outs.insert(renamed.clone(), out);
    renamed
}

/// Gate rows at even, up rows at odd positions of `axis`.
fn interleaved(
    t: &mut Tensors,
    name: &str,
    axis: usize,
    gate: &str,
    up: &str,
) -> Result<(), Problem> {
    t.split(
        name,
        axis,
        &[(gate.to_string(), 0, 2), (up.to_string(), 1, 2)],
    )
}

#[cfg(test)]
mod tests {
    use super::super::tests::{listing, run_owned, shapes, stored};
    use super::super::Recipe;
    use super::*;

    #[test]
    fn fused_gate_up_is_deinterleaved() {
        let p = "model.layers.0.mlp.experts.";
        let names: Vec<(String, Vec<usize>)> = vec![
            (format!("{p}gate_up_proj.weight"), vec![4, 16, 8]),
            (format!("{p}gate_up_proj_bias"), vec![4, 16]),
            (format!("{p}down_proj.weight"), vec![4, 8, 8]),
            (format!("{p}down_proj_bias"), vec![4, 8]),
            ("model.layers.0.mlp.router.weight".into(), vec![4, 8]),
            ("model.layers.0.self_attn.sinks".into(), vec![2]),
        ];
        let t = run_owned(&CONVERT, serde_json::json!({}), &names).unwrap();
        let got: Vec<String> = listing(&t);
        assert_eq!(
            got,
            [
                format!("{p}down_proj.bias [4, 8]"),
                format!("{p}down_proj.weight [4, 8, 8]"),
                format!("{p}gate_proj.bias [4, 8]"),
                format!("{p}gate_proj.weight [4, 8, 8]"),
                format!("{p}up_proj.bias [4, 8]"),
                format!("{p}up_proj.weight [4, 8, 8]"),
                "model.layers.0.mlp.router.weight [4, 8]".to_string(),
                "model.layers.0.self_attn.sinks [2]".to_string(),
            ]
        );
        assert_eq!(
            t.outs[&format!("{p}up_proj.bias")].recipe,
            Recipe::Slice {
                of: Box::new(stored(&format!("{p}gate_up_proj_bias"))),
                axis: 1,
                start: 1,
                step: 2,
                len: 8
            }
        );
        // Idempotent on mlx-lm's names.
        let again: Vec<(String, Vec<usize>)> = shapes(&t);
        assert_eq!(
            shapes(&run_owned(&CONVERT, serde_json::json!({}), &again).unwrap()),
            again
        );
        assert!(fixed_quant("model.layers.0.mlp.router").is_some());
    }

    #[test]
    fn released_mxfp4_blocks_become_words() {
        let p = "model.layers.0.mlp.experts.";
        let names: Vec<(String, Vec<usize>)> = vec![
            (format!("{p}gate_up_proj_blocks"), vec![4, 16, 2, 16]),
            (format!("{p}gate_up_proj_scales"), vec![4, 16, 2]),
            (format!("{p}down_proj_blocks"), vec![4, 8, 2, 16]),
            (format!("{p}down_proj_scales"), vec![4, 8, 2]),
        ];
        let t = run_owned(&CONVERT, serde_json::json!({}), &names).unwrap();
        let got: Vec<String> = listing(&t);
        assert_eq!(
            got,
            [
                format!("{p}down_proj.scales [4, 8, 2]"),
                format!("{p}down_proj.weight [4, 8, 8]"),
                format!("{p}gate_proj.scales [4, 8, 2]"),
                format!("{p}gate_proj.weight [4, 8, 8]"),
                format!("{p}up_proj.scales [4, 8, 2]"),
                format!("{p}up_proj.weight [4, 8, 8]"),
            ]
        );
        let gate = &t.outs[&format!("{p}gate_proj.weight")];
        assert_eq!(gate.dtype, safetensors::Dtype::U32);
        let words = Recipe::Words(Box::new(stored(&format!("{p}gate_up_proj_blocks"))));
        assert_eq!(
            gate.recipe,
            Recipe::Slice {
                of: Box::new(words),
                axis: 1,
                start: 0,
                step: 2,
                len: 8
            }
        );
    }
}
