//! What each family of the registry knows about llama.cpp's GGUF format: the
//! `general.architecture` name(s) it imports ([`GgufArch`], listed in its registry entry's
//! `gguf` field), the per-layer tensor names (GGUF module → the MLX-layout module the loader
//! reads), whether llama.cpp's converter permuted Q/K rows or shifted norm weights, and the
//! family's own `config.json` keys from the GGUF metadata. One file per family; the generic
//! machinery (metadata reading, name splitting, the permutation itself, the common config
//! keys) is `gguf::arch`.

pub mod gemma3;
pub mod gemma4;
pub mod gpt_oss;
pub mod llama;
pub mod ministral3;
pub mod olmo2;
pub mod phi3;
pub mod qwen3_5;
pub mod qwen3_moe;

use serde_json::{Map, Value};

use crate::diagnostic::Result;
use crate::gguf::arch::{req_usize, ModelParams};
use crate::gguf::reader::GgufFile;

/// One GGUF architecture a registry family imports.
#[derive(Debug)]
pub struct GgufArch {
    /// The `general.architecture` value (also the prefix of its metadata keys).
    pub name: &'static str,
    /// The `model_type` written to config.json.
    pub model_type: &'static str,
    /// The Hugging Face model class (`architectures[0]`).
    pub hf_class: &'static str,
    /// llama.cpp's converter permuted the Q/K rows for its rope layout (`LlamaModel.permute`).
    pub permutes_qk: bool,
    /// What the converter added to every norm weight (gemma's `1 + w` RMSNorm); 0 for none.
    pub norm_shift: f32,
    /// `rope_theta` when the GGUF has no `<name>.rope.freq_base`.
    pub default_rope_theta: f64,
    /// The module of a `blk.<i>.<module>.weight|bias` tensor under `model.layers.<i>.`
    /// (e.g. `attn_q` → `self_attn.q_proj`); `None` for a module the family does not have.
    pub layer_module: fn(&str) -> Option<&'static str>,
    /// A `blk.<i>.<rest>` tensor that is a bare parameter under `model.layers.<i>.` rather
    /// than a module's weight or bias (`attn_sinks.weight` → `self_attn.sinks`); consulted
    /// before `layer_module`.
    pub layer_param: fn(&str) -> Option<&'static str>,
    /// What the family's converter did to the tensor of this GGUF name beyond renaming, to be
    /// undone on import ([`Undo`]); read from the file's metadata where it depends on sizes.
    pub undo: fn(&GgufFile, &str) -> Result<Undo>,
    /// The MLX name of a tensor outside the `blk.<i>` blocks that the family has beyond the
    /// common ones (`per_layer_token_embd.weight` → `model.embed_tokens_per_layer.weight`).
    pub top_level: fn(&str) -> Option<&'static str>,
    /// Modules the converter fused from several MLX ones, split again on import.
    pub fused: &'static [Fused],
    /// Why a tensor the converter wrote is not an MLX weight (it is skipped, with this
    /// reason), e.g. the unused K/V projections of Gemma 4's KV-shared layers.
    pub skip: fn(&GgufFile, &str) -> Result<Option<&'static str>>,
    /// `head_count_kv` and `feed_forward_length` may be per-layer arrays that differ between
    /// layers (the family's `config` reads them; the common keys take layer 0's value).
    pub per_layer_sizes: bool,
    /// Adds the family's own config.json keys (activation, windows, experts, …).
    pub config: fn(&GgufFile, &ModelParams, &mut Map<String, Value>) -> Result<()>,
}

impl std::fmt::Display for GgufArch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl PartialEq for GgufArch {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

/// Every GGUF architecture of the registry, in registry order.
pub fn all() -> impl Iterator<Item = &'static GgufArch> {
    super::REGISTRY.iter().flat_map(|a| a.gguf.iter())
}

/// The entry importing `general.architecture` = `name`.
pub fn lookup(name: &str) -> Option<&'static GgufArch> {
    all().find(|g| g.name == name)
}

/// The llama layout every family starts from: attention, gated MLP, the two norms.
pub fn llama_layer_module(module: &str) -> Option<&'static str> {
    Some(match module {
        "attn_norm" => "input_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "ffn_norm" => "post_attention_layernorm",
        _ => return None,
    })
}

/// A converter's changes to one tensor beyond its name, which the import undoes (the Q/K
/// permutation and norm shift shared by several families are `GgufArch` flags instead).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Undo {
    /// Source row of each destination row (axis 0; for a vector, of each element).
    pub rows: Option<Vec<usize>>,
    /// Source column of each destination column (last axis); the tensor is written dense.
    pub cols: Option<Vec<usize>>,
    /// The converter stored `-exp(x)` (Qwen3.5's `A_log`): write `ln(-v)`; dense.
    pub neg_exp: bool,
    /// The MLX shape, when it differs from the GGUF's by unit axes; dense.
    pub shape: Option<Vec<usize>>,
    /// `(index, count)`: the tensor is part `index` of `count` equal row ranges of each
    /// matrix of the GGUF tensor (a [`Fused`] module split on import).
    pub part: Option<(usize, usize)>,
}

impl Undo {
    /// Whether the tensor's values or layout change (so it cannot stay quantized).
    pub fn rewrites_values(&self) -> bool {
        self.cols.is_some() || self.neg_exp || self.shape.is_some()
    }
}

/// One GGUF module the converter concatenated from several MLX modules along the rows of
/// each matrix (of each expert, for a 3-D stack), in equal parts.
#[derive(Debug)]
pub struct Fused {
    /// The GGUF module (`ffn_gate_up_exps`).
    pub gguf: &'static str,
    /// The MLX modules of its parts under `model.layers.<i>.`, in row order.
    pub parts: &'static [&'static str],
}

/// No family-specific top-level tensors (the `top_level` of most families).
pub fn no_top_level(_: &str) -> Option<&'static str> {
    None
}

/// Every mapped tensor is imported (the `skip` of most families).
pub fn skip_nothing(_: &GgufFile, _: &str) -> Result<Option<&'static str>> {
    Ok(None)
}

/// Nothing to undo (the `undo` of most families).
pub fn nothing_to_undo(_: &GgufFile, _: &str) -> Result<Undo> {
    Ok(Undo::default())
}

/// No bare per-layer parameters (the `layer_param` of most families).
pub fn no_layer_params(_: &str) -> Option<&'static str> {
    None
}

/// Per-head q/k norms (qwen3, gemma3, olmo2's whole-width ones).
pub fn qk_norm_module(module: &str) -> Option<&'static str> {
    match module {
        "attn_q_norm" => Some("self_attn.q_norm"),
        "attn_k_norm" => Some("self_attn.k_norm"),
        _ => None,
    }
}

/// The expert count, experts used per token and expert width of a MoE family `arch`
/// (`<arch>.expert_count`, `expert_used_count`, `expert_feed_forward_length`).
pub fn expert_sizes(g: &GgufFile, arch: &str) -> Result<(usize, usize, usize)> {
    let key = |k: &str| format!("{arch}.{k}");
    Ok((
        req_usize(g, &key("expert_count"), "num_experts")?,
        req_usize(g, &key("expert_used_count"), "num_experts_per_tok")?,
        req_usize(
            g,
            &key("expert_feed_forward_length"),
            "moe_intermediate_size",
        )?,
    ))
}

/// Sets `key` to `value` in a config being built.
pub fn put(c: &mut Map<String, Value>, key: &str, value: Value) {
    c.insert(key.to_owned(), value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_gguf_name_has_one_entry() {
        let names: Vec<&str> = all().map(|g| g.name).collect();
        for n in &names {
            assert_eq!(names.iter().filter(|x| *x == n).count(), 1, "{n}");
        }
        for entry in super::super::REGISTRY {
            for g in entry.gguf {
                assert!(
                    entry.model_types.contains(&g.model_type),
                    "{g} imports as `{}`, which its entry does not run",
                    g.model_type
                );
            }
        }
        assert!(lookup("bogus").is_none());
    }
}
