//! Gemma 4 (`gemma4_text`, and `gemma4` whose text model sits under `language_model`):
//! vision/audio towers and embedders are dropped (`gemma4`: `model.language_model.*` →
//! `language_model.model.*`), as are rotary tables and activation-clipping bounds, and the
//! K/V projections and k-norms of KV-shared layers (they read earlier layers' K/V). MoE
//! blocks: `experts.gate_up_proj` (gate rows first) is split into
//! `experts.switch_glu.{gate,up}_proj`, `experts.down_proj` becomes
//! `experts.switch_glu.down_proj`; the router projection is quantized affine 8-bit g64.

use serde_json::{json, Map, Value};

use super::order::ParamOrder;
use super::{
    casts_all, eight_bit_if, text_config_mut, Convert, FixedQuant, Hints, Problem, Tensors,
};

/// The rules.
pub const CONVERT: Convert = Convert {
    sanitize,
    switch_modules: &[
        "experts.switch_glu.gate_proj",
        "experts.switch_glu.up_proj",
        "experts.switch_glu.down_proj",
    ],
    fixed_quant,
    keeps_dtype: casts_all,
    config_fix,
    checks_decoder_shapes: false,
    order: ORDER,
};

/// mlx-lm's parameter order of Gemma 4 (text model and the multimodal wrapper's
/// `language_model`): the per-layer-input modules after the final norm, and in a layer the
/// MoE block and the per-layer-input gate after the four norms.
const ORDER: ParamOrder = &[
    (
        "model",
        &[
            "embed_tokens",
            "layers",
            "norm",
            "embed_tokens_per_layer",
            "per_layer_model_projection",
            "per_layer_projection_norm",
        ],
    ),
    (
        "layers",
        &[
            "self_attn",
            "mlp",
            "input_layernorm",
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "post_feedforward_layernorm",
            "router",
            "experts",
            "post_feedforward_layernorm_1",
            "post_feedforward_layernorm_2",
            "pre_feedforward_layernorm_2",
            "per_layer_input_gate",
            "per_layer_projection",
            "post_per_layer_input_norm",
            "layer_scalar",
        ],
    ),
    (
        "self_attn",
        &["q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm"],
    ),
    ("mlp", &["gate_proj", "down_proj", "up_proj"]),
    ("router", &["proj", "scale", "per_expert_scale"]),
    ("experts", &["switch_glu"]),
    ("switch_glu", &["gate_proj", "up_proj", "down_proj"]),
];

/// mlx-lm's `gemma4` arguments copy `vocab_size` (default 262144) into `text_config` and add
/// its default head counts (8 query, 1 KV) when absent.
fn config_fix(raw: &mut Map<String, Value>) {
    if raw.get("model_type").and_then(Value::as_str) != Some("gemma4") {
        return;
    }
    let vocab = raw.get("vocab_size").cloned().unwrap_or(json!(262_144));
    let Some(text) = text_config_mut(raw) else {
        return;
    };
    text.insert("vocab_size".into(), vocab);
    for (key, default) in [("num_attention_heads", 8), ("num_key_value_heads", 1)] {
        if !text.contains_key(key) {
            text.insert(key.into(), json!(default));
        }
    }
}

fn fixed_quant(path: &str) -> Option<FixedQuant> {
    eight_bit_if(path, &["router.proj"])
}

const TOWERS: &[&str] = &[
    "vision_tower",
    "multi_modal_projector",
    "audio_tower",
    "embed_audio",
    "embed_vision",
    "vision_embedder",
];

const UNUSED: &[&str] = &[
    "self_attn.rotary_emb",
    "input_max",
    "input_min",
    "output_max",
    "output_min",
];

fn sanitize(t: &mut Tensors, h: &Hints<'_>) -> Result<(), Problem> {
    if h.raw.get("model_type").and_then(|v| v.as_str()) == Some("gemma4") {
        unwrap_multimodal(t)?;
    }
    let text = h.text();
    let layers = Hints::count_or(text, "num_hidden_layers", 35)?;
    let shared = Hints::count_or(text, "num_kv_shared_layers", 20)?;
    let first_shared = layers.saturating_sub(shared);
    t.drop_if(
        |k| UNUSED.iter().any(|s| k.contains(s)),
        "unused (rotary table or clipping bound)",
    );
    t.drop_if(
        |k| {
            [
                ".self_attn.k_proj",
                ".self_attn.v_proj",
                ".self_attn.k_norm",
            ]
            .iter()
            .any(|s| k.contains(s))
                && layer_of(k).is_some_and(|i| i >= first_shared)
        },
        "K/V of a KV-shared layer (it reads an earlier layer's)",
    );
    for k in t.names() {
        if let Some(base) = k.strip_suffix(".experts.gate_up_proj") {
            let e = format!("{base}.experts.switch_glu");
            t.split_rows_in_halves(
                &k,
                &format!("{e}.gate_proj.weight"),
                &format!("{e}.up_proj.weight"),
            )?;
        }
    }
    t.rename(|k| {
        k.strip_suffix(".experts.down_proj")
            .map(|b| format!("{b}.experts.switch_glu.down_proj.weight"))
    })
}

/// mlx-lm's `gemma4` wrapper: towers dropped, `model.language_model.` →
/// `language_model.model.`, other `model.` prefixes removed.
fn unwrap_multimodal(t: &mut Tensors) -> Result<(), Problem> {
    t.drop_if(
        |k| {
            let k = k.strip_prefix("model.").unwrap_or(k);
            TOWERS.iter().any(|s| k.starts_with(s))
        },
        "vision/audio tower (not used for text)",
    );
    t.rename(|k| {
        let rest = k.strip_prefix("model.")?;
        Some(match rest.strip_prefix("language_model.") {
            Some(r) => format!("language_model.model.{r}"),
            None => rest.to_string(),
        })
    })
}

/// The layer index of `...layers.<i>....`.
fn layer_of(k: &str) -> Option<usize> {
    k.split("layers.").nth(1)?.split('.').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::super::tests::{listing, run_owned, shapes};
    use super::*;

    #[test]
    fn multimodal_text_model_with_shared_kv_and_experts() {
        let l = |i: usize, s: &str| format!("model.language_model.layers.{i}.{s}");
        let names: Vec<(String, Vec<usize>)> = vec![
            (l(0, "self_attn.k_proj.weight"), vec![4, 8]),
            (l(1, "self_attn.k_proj.weight"), vec![4, 8]),
            (l(1, "self_attn.v_proj.weight"), vec![4, 8]),
            (l(1, "self_attn.k_norm.weight"), vec![4]),
            (l(1, "self_attn.q_proj.weight"), vec![4, 8]),
            (l(0, "experts.gate_up_proj"), vec![2, 6, 8]),
            (l(0, "experts.down_proj"), vec![2, 8, 3]),
            (l(0, "router.proj.weight"), vec![2, 8]),
            ("model.vision_tower.encoder.w".into(), vec![2, 2]),
            (
                "model.embed_vision.embedding_projection.weight".into(),
                vec![2, 2],
            ),
        ];
        let config = serde_json::json!({
            "model_type": "gemma4",
            "text_config": {"num_hidden_layers": 2, "num_kv_shared_layers": 1}
        });
        let t = run_owned(&CONVERT, config, &names).unwrap();
        let got: Vec<String> = listing(&t);
        let m = "language_model.model.layers";
        assert_eq!(
            got,
            [
                format!("{m}.0.experts.switch_glu.down_proj.weight [2, 8, 3]"),
                format!("{m}.0.experts.switch_glu.gate_proj.weight [2, 3, 8]"),
                format!("{m}.0.experts.switch_glu.up_proj.weight [2, 3, 8]"),
                format!("{m}.0.router.proj.weight [2, 8]"),
                format!("{m}.0.self_attn.k_proj.weight [4, 8]"),
                format!("{m}.1.self_attn.q_proj.weight [4, 8]"),
            ]
        );
        assert_eq!(t.dropped.len(), 5);
        assert!(fixed_quant(&format!("{m}.0.router.proj")).is_some());
        // mlx-lm's own layout converts to itself.
        let again = shapes(&t);
        let config = serde_json::json!({
            "model_type": "gemma4",
            "text_config": {"num_hidden_layers": 2, "num_kv_shared_layers": 1}
        });
        assert_eq!(shapes(&run_owned(&CONVERT, config, &again).unwrap()), again);
    }
}
