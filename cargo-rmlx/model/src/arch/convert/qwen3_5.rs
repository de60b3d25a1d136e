//! Qwen3.5 (dense `qwen3_5` and `qwen3_5_moe`): the text model moves under
//! `language_model.` (`model.language_model.*` → `language_model.model.*`, `lm_head` →
//! `language_model.lm_head`), vision and multi-token-prediction weights are dropped, the
//! gated delta-net's conv weights go from torch's `[C, 1, K]` to MLX's `[C, K, 1]`, and — only
//! when such unconverted conv weights are present — the RMSNorm weights stored as `w - 1`
//! get their 1 back. MoE: `experts.gate_up_proj` (gate rows first, then up) is split into
//! `switch_mlp.gate_proj` / `up_proj`, `experts.down_proj` becomes `switch_mlp.down_proj`;
//! router and shared-expert gate are quantized affine 8-bit g64; `A_log` keeps its dtype.

use serde_json::{Map, Value};

use super::{
    eight_bit_if, text_config_mut, Convert, FixedQuant, Hints, Problem, Recipe, Tensors, SWITCH_MLP,
};

/// The rules.
pub const CONVERT: Convert = Convert {
    sanitize,
    switch_modules: SWITCH_MLP,
    fixed_quant,
    keeps_dtype: |path| path.ends_with("A_log"),
    config_fix,
    checks_decoder_shapes: false,
    order: super::qwen3_moe::ORDER,
};

/// mlx-lm renames the text model's `rope_parameters.rope_type` to `type` (moving it last).
fn config_fix(raw: &mut Map<String, Value>) {
    let text = match raw.contains_key("text_config") {
        true => match text_config_mut(raw) {
            Some(t) => t,
            None => return,
        },
        false => raw,
    };
    if let Some(Value::Object(rope)) = text.get_mut("rope_parameters") {
        if !rope.contains_key("type") {
            if let Some(t) = rope.shift_remove("rope_type") {
                rope.insert("type".into(), t);
            }
        }
    }
}

fn fixed_quant(path: &str) -> Option<FixedQuant> {
    eight_bit_if(path, &["mlp.gate", "shared_expert_gate"])
}

const SHIFTED_NORMS: &[&str] = &[
    ".input_layernorm.weight",
    ".post_attention_layernorm.weight",
    "model.norm.weight",
    ".q_norm.weight",
    ".k_norm.weight",
];

fn sanitize(t: &mut Tensors, h: &Hints<'_>) -> Result<(), Problem> {
    t.drop_if(
        |k| k.starts_with("vision_tower") || k.starts_with("model.visual"),
        "vision tower (not used for text)",
    );
    t.rename(|k| {
        Some(if let Some(rest) = k.strip_prefix("model.language_model") {
            format!("language_model.model{rest}")
        } else if k.starts_with("language_model.") {
            k.to_string()
        } else {
            format!("language_model.{k}")
        })
    })?;
    split_experts(t, h)?;
    let torch_conv =
        |k: &str, shape: &[usize]| k.contains("conv1d.weight") && shape.last() != Some(&1);
    let unconverted = t.outs.iter().any(|(k, o)| torch_conv(k, &o.shape));
    t.drop_if(
        |k| k.contains("mtp."),
        "multi-token prediction head (not used)",
    );
    if h.tied() {
        t.drop_if(
            |k| k == "language_model.lm_head.weight",
            "tied to the embeddings",
        );
    }
    t.map(
        |k, o| torch_conv(k, &o.shape) && o.shape.len() == 3,
        |r| Recipe::SwapAxes(Box::new(r), 1, 2),
        |s| vec![s[0], s[2], s[1]],
    );
    if unconverted {
        t.map(
            |k, o| o.shape.len() == 1 && SHIFTED_NORMS.iter().any(|s| k.ends_with(s)),
            |r| Recipe::PlusOne(Box::new(r)),
            <[usize]>::to_vec,
        );
    }
    Ok(())
}

/// `experts.gate_up_proj` → `switch_mlp.{gate,up}_proj.weight` (halves), `experts.down_proj`
/// → `switch_mlp.down_proj.weight`, for each layer of the text config.
fn split_experts(t: &mut Tensors, h: &Hints<'_>) -> Result<(), Problem> {
    let layers = Hints::count_or(h.text(), "num_hidden_layers", 0)?;
    for l in 0..layers {
        let p = format!("language_model.model.layers.{l}.mlp");
        let gate_up = format!("{p}.experts.gate_up_proj");
        if !t.outs.contains_key(&gate_up) {
            continue;
        }
        let s = format!("{p}.switch_mlp");
        t.split_rows_in_halves(
            &gate_up,
            &format!("{s}.gate_proj.weight"),
            &format!("{s}.up_proj.weight"),
        )?;
        let down = format!("{p}.experts.down_proj");
        let down_out = t.outs.remove(&down).ok_or_else(|| Problem {
            message: format!("the checkpoint has `{gate_up}` but no `{down}`"),
            tensor: Some(gate_up.clone()),
            help: None,
        })?;
        t.outs
            .insert(format!("{p}.switch_mlp.down_proj.weight"), down_out);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{listing, run_owned, shapes, stored};
    use super::*;

    fn hf(moe: bool) -> Vec<(String, Vec<usize>)> {
        let l = "model.language_model.layers.0";
        let mut v = vec![
            ("lm_head.weight".to_string(), vec![8, 4]),
            ("model.language_model.norm.weight".into(), vec![4]),
            (format!("{l}.input_layernorm.weight"), vec![4]),
            (format!("{l}.linear_attn.conv1d.weight"), vec![6, 1, 3]),
            (format!("{l}.linear_attn.norm.weight"), vec![2]),
            (format!("{l}.linear_attn.A_log"), vec![2]),
            ("model.visual.blocks.0.w".into(), vec![2, 2]),
            ("mtp.fc.weight".into(), vec![4, 8]),
        ];
        if moe {
            v.push((format!("{l}.mlp.experts.gate_up_proj"), vec![2, 6, 4]));
            v.push((format!("{l}.mlp.experts.down_proj"), vec![2, 4, 3]));
        }
        v
    }

    #[test]
    fn text_model_moves_and_conv_and_norms_are_fixed() {
        let names = hf(true);
        let config =
            serde_json::json!({"model_type": "qwen3_5", "text_config": {"num_hidden_layers": 1}});
        let t = run_owned(&CONVERT, config, &names).unwrap();
        let l = "language_model.model.layers.0";
        let got: Vec<String> = listing(&t);
        assert_eq!(
            got,
            [
                "language_model.lm_head.weight [8, 4]".to_string(),
                format!("{l}.input_layernorm.weight [4]"),
                format!("{l}.linear_attn.A_log [2]"),
                format!("{l}.linear_attn.conv1d.weight [6, 3, 1]"),
                format!("{l}.linear_attn.norm.weight [2]"),
                format!("{l}.mlp.switch_mlp.down_proj.weight [2, 4, 3]"),
                format!("{l}.mlp.switch_mlp.gate_proj.weight [2, 3, 4]"),
                format!("{l}.mlp.switch_mlp.up_proj.weight [2, 3, 4]"),
                "language_model.model.norm.weight [4]".to_string(),
            ]
        );
        let norm = &t.outs["language_model.model.norm.weight"].recipe;
        assert_eq!(
            *norm,
            Recipe::PlusOne(Box::new(stored("model.language_model.norm.weight")))
        );
        // The gated norm is not shifted.
        let gated = &t.outs[&format!("{l}.linear_attn.norm.weight")].recipe;
        assert!(matches!(gated, Recipe::Stored(_)));
        let up = &t.outs[&format!("{l}.mlp.switch_mlp.up_proj.weight")].recipe;
        assert!(
            matches!(
                up,
                Recipe::Slice {
                    start: 3,
                    step: 1,
                    len: 3,
                    axis: 1,
                    ..
                }
            ),
            "{up:?}"
        );
        assert!((CONVERT.keeps_dtype)(&format!("{l}.linear_attn.A_log")));
        assert!(fixed_quant(&format!("{l}.mlp.shared_expert_gate")).is_some());

        // mlx-lm's own output converts to itself.
        let again = shapes(&t);
        let config =
            serde_json::json!({"model_type": "qwen3_5", "text_config": {"num_hidden_layers": 1}});
        let t2 = run_owned(&CONVERT, config, &again).unwrap();
        assert_eq!(shapes(&t2), again);
        assert!(t2
            .outs
            .values()
            .all(|o| matches!(o.recipe, Recipe::Stored(_))));
    }
}
