//! GPT-OSS: the experts' fused `gate_up_proj` (gate and up rows interleaved) is split into
//! `experts.gate_proj` / `experts.up_proj` (weights along the rows, biases along the last
//! axis), `*_proj_bias` become `*_proj.bias`; the router is quantized affine 8-bit g64.
//! Checkpoints already in mlx-lm's names pass unchanged.

use super::{casts_all, eight_bit_if, Convert, FixedQuant, Hints, Problem, Tensors};

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
};

fn fixed_quant(path: &str) -> Option<FixedQuant> {
    eight_bit_if(path, &["router"])
}

fn sanitize(t: &mut Tensors, _: &Hints<'_>) -> Result<(), Problem> {
    if t.outs.keys().any(|k| k.contains("gate_proj.weight")) {
        return Ok(()); // mlx-lm: already sanitized
    }
    if let Some(k) = t
        .outs
        .keys()
        .find(|k| k.ends_with("_blocks") || k.ends_with("_scales"))
    {
        return Err(Problem {
            message: format!("`{k}` is a native MXFP4 expert tensor; converting those is not supported yet"),
            tensor: Some(k.clone()),
            help: Some("convert a dense (bf16) GPT-OSS checkpoint, or load an MLX directory made by mlx-lm".into()),
        });
    }
    for k in t.names() {
        if let Some(base) = k.strip_suffix("gate_up_proj.weight") {
            let axis = t.outs[&k].shape.len().saturating_sub(2);
            interleaved(
                t,
                &k,
                axis,
                &format!("{base}gate_proj.weight"),
                &format!("{base}up_proj.weight"),
            )?;
        } else if let Some(base) = k.strip_suffix("gate_up_proj_bias") {
            let axis = t.outs[&k].shape.len().saturating_sub(1);
            interleaved(
                t,
                &k,
                axis,
                &format!("{base}gate_proj.bias"),
                &format!("{base}up_proj.bias"),
            )?;
        } else if k.contains("gate_up_proj") {
            return Err(Problem {
                message: format!("`{k}` is not in a layout mlx-lm converts (`gate_up_proj.weight` `[experts, 2*intermediate, hidden]`)"),
                tensor: Some(k.clone()),
                help: None,
            });
        }
    }
    t.rename(|k| {
        k.strip_suffix("down_proj_bias")
            .map(|b| format!("{b}down_proj.bias"))
    })
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
    use super::super::tests::{run, shapes, stored};
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
        let refs: Vec<(&str, &[usize])> = names
            .iter()
            .map(|(n, s)| (n.as_str(), s.as_slice()))
            .collect();
        let t = run(&CONVERT, serde_json::json!({}), &refs).unwrap();
        let got: Vec<String> = shapes(&t)
            .iter()
            .map(|(n, s)| format!("{n} {s:?}"))
            .collect();
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
        let refs: Vec<(&str, &[usize])> = again
            .iter()
            .map(|(n, s)| (n.as_str(), s.as_slice()))
            .collect();
        assert_eq!(
            shapes(&run(&CONVERT, serde_json::json!({}), &refs).unwrap()),
            again
        );
        assert!(fixed_quant("model.layers.0.mlp.router").is_some());
    }
}
