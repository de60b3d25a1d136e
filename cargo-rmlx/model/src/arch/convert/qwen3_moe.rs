//! Qwen3-MoE: per-expert projections `model.layers.<l>.mlp.experts.<e>.{gate,up,down}_proj`
//! are stacked into `mlp.switch_mlp.*` (`[experts, out, in]`); the router (`mlp.gate`) is
//! quantized affine 8-bit g64 whatever the requested settings; a tied head is dropped.

use super::order::ParamOrder;
use super::{
    casts_all, drop_tied_head, eight_bit_if, layers_with, Convert, FixedQuant, Hints, Problem,
    Tensors, SWITCH_MLP,
};

/// The rules.
pub const CONVERT: Convert = Convert {
    sanitize,
    switch_modules: SWITCH_MLP,
    fixed_quant,
    keeps_dtype: casts_all,
    config_fix: super::config_kept,
    checks_decoder_shapes: false,
    order: ORDER,
};

/// mlx-lm's parameter order of the Qwen MoE and hybrid families (`qwen3_moe`, `qwen3_5`,
/// `qwen3_5_moe`): norms before the MLP in a layer, the router before the experts, the
/// experts' `SwitchGLU` declaring gate, up, down but the dense MLPs gate, down, up.
pub const ORDER: ParamOrder = &[
    ("model", &["embed_tokens", "layers", "norm"]),
    (
        "layers",
        &[
            "linear_attn",
            "self_attn",
            "input_layernorm",
            "post_attention_layernorm",
            "mlp",
        ],
    ),
    (
        "linear_attn",
        &[
            "conv1d",
            "in_proj_qkv",
            "in_proj_z",
            "in_proj_b",
            "in_proj_a",
            "dt_bias",
            "A_log",
            "norm",
            "out_proj",
        ],
    ),
    (
        "self_attn",
        &["q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm"],
    ),
    (
        "mlp",
        &[
            "gate",
            "switch_mlp",
            "shared_expert",
            "shared_expert_gate",
            "gate_proj",
            "down_proj",
            "up_proj",
        ],
    ),
    ("switch_mlp", &["gate_proj", "up_proj", "down_proj"]),
    ("shared_expert", &["gate_proj", "down_proj", "up_proj"]),
];

fn fixed_quant(path: &str) -> Option<FixedQuant> {
    eight_bit_if(path, &["mlp.gate"])
}

fn sanitize(t: &mut Tensors, h: &Hints<'_>) -> Result<(), Problem> {
    drop_tied_head(t, "lm_head.weight", h.tied());
    let layers = layers_with(t, "model.layers.", ".mlp.experts.0.");
    if layers.is_empty() {
        return Ok(());
    }
    let experts = Hints::count(h.raw, "num_experts")?;
    for l in layers {
        let p = format!("model.layers.{l}.mlp");
        t.stack_experts(&format!("{p}.experts"), experts, &format!("{p}.switch_mlp"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{run_owned, shapes};
    use super::*;

    #[test]
    fn experts_are_stacked_per_projection() {
        let mut names: Vec<(String, Vec<usize>)> = vec![
            ("model.layers.0.mlp.gate.weight".into(), vec![2, 8]),
            ("model.layers.1.mlp.gate_proj.weight".into(), vec![16, 8]),
        ];
        for e in 0..2 {
            for p in ["gate_proj", "up_proj"] {
                names.push((
                    format!("model.layers.0.mlp.experts.{e}.{p}.weight"),
                    vec![4, 8],
                ));
            }
            names.push((
                format!("model.layers.0.mlp.experts.{e}.down_proj.weight"),
                vec![8, 4],
            ));
        }
        let t = run_owned(&CONVERT, serde_json::json!({"num_experts": 2}), &names).unwrap();
        let want: Vec<(String, Vec<usize>)> = vec![
            ("model.layers.0.mlp.gate.weight".into(), vec![2, 8]),
            (
                "model.layers.0.mlp.switch_mlp.down_proj.weight".into(),
                vec![2, 8, 4],
            ),
            (
                "model.layers.0.mlp.switch_mlp.gate_proj.weight".into(),
                vec![2, 4, 8],
            ),
            (
                "model.layers.0.mlp.switch_mlp.up_proj.weight".into(),
                vec![2, 4, 8],
            ),
            ("model.layers.1.mlp.gate_proj.weight".into(), vec![16, 8]),
        ];
        assert_eq!(shapes(&t), want);
        assert_eq!(
            fixed_quant("model.layers.0.mlp.gate"),
            Some(FixedQuant {
                group_size: 64,
                bits: 8
            })
        );
        assert_eq!(fixed_quant("model.layers.1.mlp.gate_proj"), None);

        let p = run_owned(&CONVERT, serde_json::json!({"num_experts": 3}), &names).unwrap_err();
        assert!(
            p.message.contains("experts.2.") && p.message.contains("3 experts"),
            "{p:?}"
        );
        let p = run_owned(&CONVERT, serde_json::json!({}), &names).unwrap_err();
        assert!(p.message.contains("num_experts"), "{p:?}");
    }
}
