//! Ministral 3 (`ministral3`) and Mistral 3 (`mistral3`, its text model under
//! `language_model`): rotary tables and a tied head are dropped; `mistral3` drops the vision
//! tower and projector and moves `model.language_model.*` to `language_model.model.*`
//! (`lm_head` to `language_model.lm_head`). FP8 checkpoints (`weight_scale_inv`) are refused.

use serde_json::{Map, Value};

use super::{
    casts_all, drop_rotary, drop_tied_head, no_fixed_quant, text_config_mut, Convert, Hints,
    Problem, Tensors,
};

/// The rules.
pub const CONVERT: Convert = Convert {
    sanitize,
    switch_modules: &[],
    fixed_quant: no_fixed_quant,
    keeps_dtype: casts_all,
    config_fix,
    checks_decoder_shapes: false,
    order: super::llama::ORDER,
};

/// The keys mlx-lm's `mistral3` arguments set on its text config (`arch::Wrapper`'s
/// `text_defaults`: an absent `tie_word_embeddings` is false), written out.
fn config_fix(raw: &mut Map<String, Value>) {
    let Some(wrapper) = crate::arch::wrapper("mistral3") else {
        return;
    };
    if raw.get("model_type").and_then(Value::as_str) != Some("mistral3") {
        return;
    }
    let outer = raw.clone();
    if let Some(text) = text_config_mut(raw) {
        (wrapper.text_defaults)(&outer, text);
    }
}

fn sanitize(t: &mut Tensors, h: &Hints<'_>) -> Result<(), Problem> {
    if h.raw.get("model_type").and_then(Value::as_str) != Some("mistral3") {
        return text_model(t, h.tied());
    }
    let inner = h.text().get("model_type").and_then(Value::as_str);
    if !matches!(inner, None | Some("ministral3" | "mistral" | "llama")) {
        return Err(Problem {
            message: format!(
                "mistral3 with a `{}` text model is not supported",
                inner.unwrap_or("")
            ),
            tensor: None,
            help: Some("supported text models: ministral3, mistral, llama".into()),
        });
    }
    t.drop_if(
        |k| k.contains("vision_tower") || k.contains("multi_modal_projector"),
        "vision tower (not used for text)",
    );
    t.rename(|k| match k.strip_prefix("model.language_model.") {
        Some(rest) => Some(format!("model.{rest}")),
        None => k.strip_prefix("language_model.").map(str::to_string),
    })?;
    // The text config as the wrapper reads it (an absent `tie_word_embeddings` is false).
    let text = crate::arch::wrapper("mistral3").map(|w| w.text_config(h.raw).0);
    text_model(t, h.tied_in(text.as_ref().unwrap_or(h.text())))?;
    t.rename(|k| Some(format!("language_model.{k}")))
}

fn text_model(t: &mut Tensors, tied: bool) -> Result<(), Problem> {
    if let Some(k) = t.outs.keys().find(|k| k.contains("weight_scale_inv")) {
        return Err(Problem {
            message: format!("`{k}`: FP8 checkpoints are not converted yet"),
            tensor: Some(k.clone()),
            help: Some("convert a bf16 checkpoint".into()),
        });
    }
    drop_rotary(t);
    drop_tied_head(t, "lm_head.weight", tied);
    t.drop_if(
        |k| k.contains("activation_scale"),
        "FP8 activation scale (unused)",
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{run, run_owned, shapes};
    use super::*;

    #[test]
    fn text_model_moves_under_language_model() {
        let names: &[(&str, &[usize])] = &[
            ("lm_head.weight", &[8, 4]),
            ("model.language_model.embed_tokens.weight", &[8, 4]),
            ("model.vision_tower.x.weight", &[2, 2]),
            ("model.multi_modal_projector.linear_1.weight", &[2, 2]),
        ];
        let config = serde_json::json!({"model_type": "mistral3", "text_config": {"model_type": "ministral3"}});
        let t = run(&CONVERT, config.clone(), names).unwrap();
        let want: Vec<(String, Vec<usize>)> = vec![
            ("language_model.lm_head.weight".into(), vec![8, 4]),
            (
                "language_model.model.embed_tokens.weight".into(),
                vec![8, 4],
            ),
        ];
        assert_eq!(shapes(&t), want);
        // Idempotent on mlx-lm's layout.
        assert_eq!(shapes(&run_owned(&CONVERT, config, &want).unwrap()), want);
        // ministral3 alone: tied by default.
        let t = run(
            &CONVERT,
            serde_json::json!({"model_type": "ministral3"}),
            &names[..2],
        )
        .unwrap();
        assert_eq!(t.names(), ["model.language_model.embed_tokens.weight"]);
    }
}
