//! Conversion rules: how `cargo rmlx build` turns a Hugging Face checkpoint of one family into
//! the MLX layout, as `mlx_lm convert` does — mlx-lm's `sanitize` (renames and prefix moves,
//! dropped tensors, per-expert tensors stacked into switch tensors, fused tensors split, axis
//! moves, value shifts), which modules are `SwitchLinear`s, the fixed quantization of some
//! modules (`quant_predicate`) and the tensors kept in their stored dtype (`cast_predicate`).
//!
//! A family's rules are a [`Convert`] value in its own file (`convert/<family>.rs`): a
//! `sanitize` function composed of the steps of [`Tensors`], applied to the names and shapes
//! only. Nothing is read here: every output tensor carries a [`Recipe`] that the build
//! evaluates one tensor (one expert group) at a time. The rules are idempotent on the MLX
//! layout, so MLX directories (dense or quantized) pass through unchanged.

pub mod gemma3;
pub mod gemma4;
pub mod gpt_oss;
pub mod llama;
pub mod mistral3;
pub mod olmo2;
pub mod order;
pub mod phi3;
pub mod qwen3_5;
pub mod qwen3_moe;
pub mod smollm3;

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// How one family is converted.
#[derive(Debug, Clone, Copy)]
pub struct Convert {
    /// mlx-lm's `sanitize`, on names and shapes.
    pub sanitize: fn(&mut Tensors, &Hints<'_>) -> Result<(), Problem>,
    /// Module path suffixes of mlx-lm's `SwitchLinear`s (3-D `[experts, out, in]` weights,
    /// quantized along the last axis like a `Linear`).
    pub switch_modules: &'static [&'static str],
    /// mlx-lm's `quant_predicate`: modules quantized with fixed settings (affine) whatever
    /// the requested ones, written into config.json as `{"group_size": g, "bits": b}`.
    pub fixed_quant: fn(&str) -> Option<FixedQuant>,
    /// mlx-lm's `cast_predicate`: `true` for tensors kept in their stored dtype.
    pub keeps_dtype: fn(&str) -> bool,
    /// The changes mlx-lm's model arguments make to config.json while loading (they are
    /// written back by `mlx_lm convert`; e.g. defaults added to `text_config`).
    pub config_fix: fn(&mut Map<String, Value>),
    /// Whether the standard decoder's tensor shapes (`model.layers.*`, embeddings, heads)
    /// are checked against config.json's sizes before converting.
    pub checks_decoder_shapes: bool,
    /// mlx-lm's parameter order for this family ([`order`]): it decides which shard each
    /// tensor goes to and where its data lies in the file.
    pub order: order::ParamOrder,
}

/// Fixed affine settings of a module (mlx-lm's `{"group_size": g, "bits": b}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedQuant {
    /// Group size.
    pub group_size: i32,
    /// Bits.
    pub bits: i32,
}

/// mlx-lm's router/gate rule (`{"group_size": 64, "bits": 8}`) for paths ending in one of
/// `suffixes`.
pub fn eight_bit_if(path: &str, suffixes: &[&str]) -> Option<FixedQuant> {
    suffixes
        .iter()
        .any(|s| path.ends_with(s))
        .then_some(FixedQuant {
            group_size: 64,
            bits: 8,
        })
}

/// No fixed settings.
pub fn no_fixed_quant(_: &str) -> Option<FixedQuant> {
    None
}

/// Every tensor is cast to the conversion dtype.
pub fn casts_all(_: &str) -> bool {
    false
}

/// The rules of families whose checkpoint names are mlx-lm's: only precomputed rotary
/// frequencies are dropped (the base the other families' rules start from).
pub const NAMES_KEPT: Convert = Convert {
    sanitize: drop_rotary_only,
    switch_modules: &[],
    fixed_quant: no_fixed_quant,
    keeps_dtype: casts_all,
    config_fix: config_kept,
    checks_decoder_shapes: false,
    order: llama::ORDER,
};

/// mlx-lm's `SwitchGLU` experts under `mlp.switch_mlp` (Qwen MoE families).
pub const SWITCH_MLP: &[&str] = &[
    "mlp.switch_mlp.gate_proj",
    "mlp.switch_mlp.up_proj",
    "mlp.switch_mlp.down_proj",
];

fn drop_rotary_only(t: &mut Tensors, _: &Hints<'_>) -> Result<(), Problem> {
    drop_rotary(t);
    Ok(())
}

/// config.json is written back unchanged.
pub fn config_kept(_: &mut Map<String, Value>) {}

/// `text_config` of a multimodal config.json, if it is an object.
pub fn text_config_mut(raw: &mut Map<String, Value>) -> Option<&mut Map<String, Value>> {
    raw.get_mut("text_config").and_then(Value::as_object_mut)
}

/// The conversion rules of `model_type`: its registry entry's, or its wrapper's.
pub fn rules(model_type: &str) -> Option<&'static Convert> {
    match super::lookup(model_type) {
        Some(arch) => Some(&arch.convert),
        None => super::wrapper(model_type).map(|w| &w.convert),
    }
}

/// Every `model_type` the build converts, in registry order.
pub fn convertible_model_types() -> Vec<&'static str> {
    super::supported_model_types()
}

/// A conversion problem found on the names and shapes (the build adds the file).
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// What is wrong.
    pub message: String,
    /// The tensor it is about (located in its file).
    pub tensor: Option<String>,
    /// How to fix it.
    pub help: Option<String>,
}

impl Problem {
    fn about(tensor: &str, message: String) -> Self {
        Self {
            message,
            tensor: Some(tensor.to_string()),
            help: None,
        }
    }

    fn with_help(mut self, help: &str) -> Self {
        self.help = Some(help.to_string());
        self
    }
}

/// How an output tensor is computed from the stored ones.
#[derive(Debug, Clone, PartialEq)]
pub enum Recipe {
    /// A stored tensor as it is.
    Stored(String),
    /// Tensors of equal shape stacked along a new first axis (per-expert tensors).
    Stack(Vec<Recipe>),
    /// `len` entries of `axis`, from `start` every `step` (fused tensors split).
    Slice {
        /// The tensor sliced.
        of: Box<Recipe>,
        /// Axis (0-based).
        axis: usize,
        /// First index.
        start: usize,
        /// Stride.
        step: usize,
        /// Entries taken.
        len: usize,
    },
    /// Two axes swapped (torch `[C, 1, K]` conv weights to MLX `[C, K, 1]`).
    SwapAxes(Box<Recipe>, usize, usize),
    /// `x + 1` in the stored dtype (norm weights stored as `w - 1`).
    PlusOne(Box<Recipe>),
    /// uint8 blocks `[.., groups, 16]` read as uint32 words `[.., groups * 4]` (MXFP4 weights
    /// as released, in MLX's packing).
    Words(Box<Recipe>),
}

/// One tensor of the converted model.
#[derive(Debug, Clone, PartialEq)]
pub struct Out {
    /// Its recipe.
    pub recipe: Recipe,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its stored dtype (the source's).
    pub dtype: safetensors::Dtype,
}

/// The tensors of a model while the rules apply: output name → [`Out`], plus the source
/// tensors dropped (with the reason).
#[derive(Debug, Clone, Default)]
pub struct Tensors {
    /// Output tensors by name.
    pub outs: BTreeMap<String, Out>,
    /// Dropped tensors and why.
    pub dropped: Vec<(String, String)>,
}

impl Tensors {
    /// The stored tensors, each its own output.
    pub fn stored<'a>(
        tensors: impl IntoIterator<Item = (&'a str, Vec<usize>, safetensors::Dtype)>,
    ) -> Self {
        let outs = tensors
            .into_iter()
            .map(|(name, shape, dtype)| {
                let out = Out {
                    recipe: Recipe::Stored(name.to_string()),
                    shape,
                    dtype,
                };
                (name.to_string(), out)
            })
            .collect();
        Self {
            outs,
            dropped: Vec::new(),
        }
    }

    /// Output names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.outs.keys().cloned().collect()
    }

    /// Drops every tensor whose name satisfies `pred`.
    pub fn drop_if(&mut self, pred: impl Fn(&str) -> bool, why: &str) {
        let gone: Vec<String> = self.outs.keys().filter(|k| pred(k)).cloned().collect();
        for k in gone {
            self.outs.remove(&k);
            self.dropped.push((k, why.to_string()));
        }
    }

    /// Renames tensors (`f` returns the new name, or `None` to keep it).
    pub fn rename(&mut self, f: impl Fn(&str) -> Option<String>) -> Result<(), Problem> {
        let old = std::mem::take(&mut self.outs);
        for (k, v) in old {
            let new = f(&k).unwrap_or_else(|| k.clone());
            if self.outs.contains_key(&new) {
                return Err(Problem::about(
                    &k,
                    format!("`{k}` becomes `{new}`, which the checkpoint already has"),
                ));
            }
            self.outs.insert(new, v);
        }
        Ok(())
    }

    /// Replaces the recipe of every tensor satisfying `pred` (shape changes through `shape`).
    pub fn map(
        &mut self,
        pred: impl Fn(&str, &Out) -> bool,
        recipe: impl Fn(Recipe) -> Recipe,
        shape: impl Fn(&[usize]) -> Vec<usize>,
    ) {
        for (k, out) in self.outs.iter_mut() {
            if pred(k, out) {
                out.recipe = recipe(out.recipe.clone());
                out.shape = shape(&out.shape);
            }
        }
    }

    /// Takes tensor `name` out.
    fn take(&mut self, name: &str) -> Option<Out> {
        self.outs.remove(name)
    }

    /// Splits `name` along `axis` into `parts` (new name, start, step), each of `len`
    /// entries; `name` itself is removed.
    pub fn split(
        &mut self,
        name: &str,
        axis: usize,
        parts: &[(String, usize, usize)],
    ) -> Result<(), Problem> {
        let Some(out) = self.take(name) else {
            return Ok(());
        };
        let n = parts.len();
        let size = out.shape.get(axis).copied().unwrap_or(0);
        if size == 0 || size % n != 0 {
            return Err(Problem::about(
                name,
                format!(
                    "`{name}` has shape {:?}; axis {axis} must split into {n} equal parts",
                    out.shape
                ),
            ));
        }
        let len = size / n;
        for (new, start, step) in parts {
            let mut shape = out.shape.clone();
            shape[axis] = len;
            let recipe = Recipe::Slice {
                of: Box::new(out.recipe.clone()),
                axis,
                start: *start,
                step: *step,
                len,
            };
            self.outs.insert(
                new.clone(),
                Out {
                    recipe,
                    shape,
                    dtype: out.dtype,
                },
            );
        }
        Ok(())
    }

    /// Splits `[.., 2n, in]` fused expert weights (first half gate rows, second half up
    /// rows) into `first` and `second`.
    pub fn split_rows_in_halves(
        &mut self,
        name: &str,
        first: &str,
        second: &str,
    ) -> Result<(), Problem> {
        let Some(out) = self.outs.get(name) else {
            return Ok(());
        };
        let axis = out.shape.len().saturating_sub(2);
        let half = out.shape.get(axis).copied().unwrap_or(0) / 2;
        self.split(
            name,
            axis,
            &[(first.to_string(), 0, 1), (second.to_string(), half, 1)],
        )
    }

    /// Stacks per-expert tensors `<prefix>.<e>.<rest>` (e = 0..experts) into
    /// `<into>.<rest>` for every `rest` present for expert 0 (mlx-lm's switch layers). Every
    /// expert must be present with the same shape and dtype.
    pub fn stack_experts(
        &mut self,
        prefix: &str,
        experts: usize,
        into: &str,
    ) -> Result<(), Problem> {
        let first = format!("{prefix}.0.");
        let rests: Vec<String> = self
            .outs
            .keys()
            .filter_map(|k| k.strip_prefix(&first).map(str::to_string))
            .collect();
        for rest in rests {
            let mut parts = Vec::with_capacity(experts);
            let mut like: Option<(String, Out)> = None;
            for e in 0..experts {
                let name = format!("{prefix}.{e}.{rest}");
                let out = self
                    .take(&name)
                    .ok_or_else(|| missing_expert(prefix, e, experts, &rest))?;
                if let Some((first_name, f)) = &like {
                    if f.shape != out.shape || f.dtype != out.dtype {
                        return Err(Problem::about(
                            &name,
                            format!(
                                "experts of `{prefix}` disagree: `{name}` is {:?} {:?}, `{first_name}` is {:?} {:?}",
                                out.dtype, out.shape, f.dtype, f.shape
                            ),
                        )
                        .with_help("every expert of a layer must have the same shape and dtype"));
                    }
                }
                parts.push(out.recipe.clone());
                if like.is_none() {
                    like = Some((name, out));
                }
            }
            let (_, f) = like.expect("at least one expert");
            let mut shape = vec![experts];
            shape.extend(&f.shape);
            let extra = format!("{prefix}.{experts}.{rest}");
            if self.outs.contains_key(&extra) {
                return Err(Problem::about(
                    &extra,
                    format!("`{extra}` is beyond the {experts} experts config.json declares"),
                ));
            }
            self.outs.insert(
                format!("{into}.{rest}"),
                Out {
                    recipe: Recipe::Stack(parts),
                    shape,
                    dtype: f.dtype,
                },
            );
        }
        Ok(())
    }
}

fn missing_expert(prefix: &str, e: usize, experts: usize, rest: &str) -> Problem {
    Problem {
        message: format!(
            "the checkpoint has no `{prefix}.{e}.{rest}`: config.json declares {experts} experts"
        ),
        tensor: Some(format!("{prefix}.0.{rest}")),
        help: Some("a shard of the checkpoint may be missing, or `num_experts` is wrong".into()),
    }
}

/// Layer indices `i` of tensors named `<before><i>.<after…>` containing `marker`.
pub fn layers_with(tensors: &Tensors, before: &str, marker: &str) -> Vec<usize> {
    let mut v: Vec<usize> = tensors
        .outs
        .keys()
        .filter(|k| k.contains(marker))
        .filter_map(|k| k.strip_prefix(before)?.split('.').next()?.parse().ok())
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// config.json values the rules read (`text_config` for multimodal checkpoints).
pub struct Hints<'a> {
    /// The whole config.json.
    pub raw: &'a Map<String, Value>,
}

impl Hints<'_> {
    /// The text model's settings: `text_config` when present, else the top level.
    pub fn text(&self) -> &Map<String, Value> {
        match self.raw.get("text_config") {
            Some(Value::Object(t)) => t,
            _ => self.raw,
        }
    }

    /// `tie_word_embeddings` of the text model ([`Hints::text`]), else its family's default.
    pub fn tied(&self) -> bool {
        self.tied_in(self.text())
    }

    /// `tie_word_embeddings` of the text config `map`, else the default of its family
    /// (`arch::Architecture::keys`, mlx-lm's; found by the text's `model_type` or the outer
    /// one; tied where no entry runs it), logged.
    pub fn tied_in(&self, map: &Map<String, Value>) -> bool {
        if let Some(b) = map.get("tie_word_embeddings").and_then(Value::as_bool) {
            return b;
        }
        let t = [map, self.raw]
            .iter()
            .find_map(|m| m.get("model_type").and_then(Value::as_str))
            .unwrap_or_default();
        let tied = crate::arch::lookup(t).is_none_or(|a| (a.keys)(t).tie_word_embeddings);
        tracing::debug!("`{t}` without tie_word_embeddings: tied = {tied}, its family's default");
        tied
    }

    /// A non-negative integer of `map`, else `default` when absent.
    pub fn count_or(map: &Map<String, Value>, key: &str, default: usize) -> Result<usize, Problem> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(_) => Self::count(map, key),
        }
    }

    /// A non-negative integer of `map`, or a problem naming `key`.
    pub fn count(map: &Map<String, Value>, key: &str) -> Result<usize, Problem> {
        map.get(key)
            .and_then(Value::as_u64)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| Problem {
                message: format!("config.json needs `{key}` (a non-negative integer) to convert"),
                tensor: None,
                help: None,
            })
    }
}

/// Drops mlx-lm's precomputed rotary frequencies (`*.rotary_emb.inv_freq`).
pub fn drop_rotary(t: &mut Tensors) {
    t.drop_if(
        |k| k.contains("rotary_emb.inv_freq"),
        "precomputed rotary frequencies (unused)",
    );
}

/// Drops `lm_head.weight` when `tied` (mlx-lm's llama-style sanitize).
pub fn drop_tied_head(t: &mut Tensors, name: &str, tied: bool) {
    if tied {
        t.drop_if(|k| k == name, "tied to the embeddings");
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Runs `c`'s sanitize on float32 tensors of the given names and shapes.
    pub fn run(
        c: &Convert,
        config: serde_json::Value,
        tensors: &[(&str, &[usize])],
    ) -> Result<Tensors, Problem> {
        let mut t = Tensors::stored(
            tensors
                .iter()
                .map(|(n, s)| (*n, s.to_vec(), safetensors::Dtype::F32)),
        );
        let raw = config.as_object().cloned().unwrap_or_default();
        (c.sanitize)(&mut t, &Hints { raw: &raw })?;
        Ok(t)
    }

    /// [`run`] on owned names and shapes.
    pub fn run_owned(
        c: &Convert,
        config: serde_json::Value,
        tensors: &[(String, Vec<usize>)],
    ) -> Result<Tensors, Problem> {
        let refs: Vec<(&str, &[usize])> = tensors
            .iter()
            .map(|(n, s)| (n.as_str(), s.as_slice()))
            .collect();
        run(c, config, &refs)
    }

    /// `name [shape]` of every output, sorted by name.
    pub fn listing(t: &Tensors) -> Vec<String> {
        shapes(t)
            .iter()
            .map(|(n, s)| format!("{n} {s:?}"))
            .collect()
    }

    /// `(name, shape)` of every output, sorted by name.
    pub fn shapes(t: &Tensors) -> Vec<(String, Vec<usize>)> {
        t.outs
            .iter()
            .map(|(k, v)| (k.clone(), v.shape.clone()))
            .collect()
    }

    pub fn stored(name: &str) -> Recipe {
        Recipe::Stored(name.to_string())
    }

    #[test]
    fn every_convertible_type_has_rules_once() {
        let all = convertible_model_types();
        for t in &all {
            assert_eq!(all.iter().filter(|x| *x == t).count(), 1, "{t} twice");
            assert!(rules(t).is_some(), "{t}");
        }
        assert!(rules("bogus").is_none());
    }

    #[test]
    fn stacking_checks_experts() {
        let mk = |names: &[(&str, &[usize])]| {
            Tensors::stored(
                names
                    .iter()
                    .map(|(n, s)| (*n, s.to_vec(), safetensors::Dtype::BF16)),
            )
        };
        let mut t = mk(&[("e.0.w", &[2, 3]), ("e.1.w", &[2, 3])]);
        t.stack_experts("e", 2, "s").unwrap();
        assert_eq!(shapes(&t), [("s.w".to_string(), vec![2, 2, 3])]);
        assert_eq!(
            t.outs["s.w"].recipe,
            Recipe::Stack(vec![stored("e.0.w"), stored("e.1.w")])
        );

        let mut t = mk(&[("e.0.w", &[2, 3]), ("e.2.w", &[2, 3])]);
        let p = t.stack_experts("e", 3, "s").unwrap_err();
        assert!(p.message.contains("no `e.1.w`"), "{p:?}");

        let mut t = mk(&[("e.0.w", &[2, 3]), ("e.1.w", &[2, 4])]);
        let p = t.stack_experts("e", 2, "s").unwrap_err();
        assert_eq!(p.tensor.as_deref(), Some("e.1.w"));
        assert!(p.message.contains("disagree"), "{p:?}");

        let mut t = mk(&[("e.0.w", &[2]), ("e.1.w", &[2])]);
        let p = t.stack_experts("e", 1, "s").unwrap_err();
        assert!(p.message.contains("beyond the 1 experts"), "{p:?}");
    }

    #[test]
    fn splitting_needs_equal_parts() {
        let mut t = Tensors::stored([("g", vec![4, 6, 2], safetensors::Dtype::F32)]);
        t.split("g", 1, &[("a".into(), 0, 2), ("b".into(), 1, 2)])
            .unwrap();
        assert_eq!(t.outs["a"].shape, [4, 3, 2]);
        let mut t = Tensors::stored([("g", vec![5], safetensors::Dtype::F32)]);
        assert!(t
            .split("g", 0, &[("a".into(), 0, 1), ("b".into(), 2, 1)])
            .is_err());
    }
}
