//! The llama family (llama, mistral, qwen2, qwen3): mlx-lm's sanitize drops the precomputed
//! rotary frequencies and, for tied embeddings, `lm_head.weight`.

use super::order::ParamOrder;
use super::{drop_rotary, drop_tied_head, Convert, Hints, Problem, Tensors, NAMES_KEPT};

/// The rules.
pub const CONVERT: Convert = Convert {
    sanitize,
    checks_decoder_shapes: true,
    ..NAMES_KEPT
};

/// Also SmolLM3's: llama's layout with some layers without RoPE (no weights of their own).
pub fn sanitize(t: &mut Tensors, h: &Hints<'_>) -> Result<(), Problem> {
    drop_rotary(t);
    drop_tied_head(t, "lm_head.weight", h.tied());
    Ok(())
}

/// mlx-lm's parameter order of the llama layout (llama, mistral, qwen2, qwen3, smollm3,
/// gemma3, olmo2, phi3, ministral3, and mistral3's `language_model`): the MLP before the
/// layer's norms, a dense MLP declaring gate, down, up.
pub const ORDER: ParamOrder = &[
    ("model", &["embed_tokens", "layers", "norm"]),
    (
        "layers",
        &[
            "self_attn",
            "mlp",
            "input_layernorm",
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "post_feedforward_layernorm",
        ],
    ),
    (
        "self_attn",
        &[
            "q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj", "q_norm", "k_norm",
        ],
    ),
    (
        "mlp",
        &["gate_proj", "gate_up_proj", "down_proj", "up_proj"],
    ),
];

#[cfg(test)]
mod tests {
    use super::super::tests::{run, shapes};
    use super::*;

    #[test]
    fn tied_head_and_rotary_dropped() {
        let names: &[(&str, &[usize])] = &[
            ("lm_head.weight", &[8, 4]),
            ("model.embed_tokens.weight", &[8, 4]),
            ("model.layers.0.self_attn.rotary_emb.inv_freq", &[2]),
        ];
        let t = run(&CONVERT, serde_json::json!({}), names).unwrap();
        assert_eq!(
            shapes(&t),
            [("model.embed_tokens.weight".into(), vec![8, 4])]
        );
        assert_eq!(t.dropped.len(), 2);
        let t = run(
            &CONVERT,
            serde_json::json!({"tie_word_embeddings": false}),
            names,
        )
        .unwrap();
        assert_eq!(t.outs.len(), 2);
    }
}
