//! mlx-lm's parameter order: the order of `tree_flatten(model.parameters())`, in which
//! `mlx_lm convert` hands the tensors to MLX's safetensors writer (and splits shards). It is
//! the order in which each module of mlx-lm's model assigns its attributes in `__init__`,
//! lists by index — knowledge of each family, declared as a [`ParamOrder`] in its rules.
//!
//! A [`ParamOrder`] is a list of groups `(parent, children)`: the children of a module
//! named `parent` (the last non-numeric component of the path above them; `""` for the
//! model itself), in declaration order. Numeric components (list entries) order
//! numerically; the top level ([`TOP`]: `model`, `lm_head`, both under a multimodal
//! wrapper's `language_model`) is every family's unless its order says otherwise; the
//! children of any other module without a group are a layer's leaves, ordered as MLX's
//! layers declare them ([`LEAVES`]). A name with a component its group does not list
//! is an error: mlx-lm's model would not load such a tensor either.

use std::cmp::Ordering;

use super::Problem;

/// Groups `(parent, children in declaration order)`.
pub type ParamOrder = &'static [(&'static str, &'static [&'static str])];

/// The groups every family shares: mlx-lm's `Model` holds `model` then `lm_head` (when
/// untied); a multimodal wrapper holds the text model's `Model` as `language_model`.
pub const TOP: ParamOrder = &[
    ("", &["language_model", "model", "lm_head"]),
    ("language_model", &["model", "lm_head"]),
];

/// Arrays of MLX's own layers (`Linear`, `QuantizedLinear`, `Embedding`, `RMSNorm`,
/// `Conv1d`, mlx-lm's `SwitchLinear` and its quantized form), in declaration order.
pub const LEAVES: &[&str] = &["weight", "scales", "biases", "global_scale", "bias"];

/// One path component's place among its siblings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Place {
    Index(u64),
    Rank(usize),
}

/// The sort key of `name` under `order`, or why it has none.
fn key(order: ParamOrder, name: &str) -> Result<Vec<Place>, Problem> {
    let mut parent = "";
    let mut key = Vec::new();
    for part in name.split('.') {
        if let Ok(i) = part.parse::<u64>() {
            key.push(Place::Index(i));
            continue;
        }
        let group = order.iter().chain(TOP).find(|(p, _)| *p == parent);
        let children = group.map_or(LEAVES, |(_, c)| *c);
        let rank = children.iter().position(|c| *c == part).ok_or_else(|| {
            let under = if parent.is_empty() {
                "at the top level".to_string()
            } else {
                format!("under `{parent}`")
            };
            let message = format!(
                "`{name}`: mlx-lm's model has no `{part}` {under} (it has {})",
                children.join(", ")
            );
            Problem::about(name, message).with_help(
                "`mlx_lm convert` rejects a tensor its model lacks too; if it converts this \
                 checkpoint, the family's `ParamOrder` in cargo-rmlx misses the name",
            )
        })?;
        key.push(Place::Rank(rank));
        parent = part;
    }
    Ok(key)
}

/// `items` sorted by the parameter name `name_of` gives, in mlx-lm's order.
pub fn sorted<T>(
    order: ParamOrder,
    items: Vec<T>,
    name_of: impl Fn(&T) -> &str,
) -> Result<Vec<T>, Problem> {
    let mut keyed = items
        .into_iter()
        .map(|t| Ok((key(order, name_of(&t))?, t)))
        .collect::<Result<Vec<_>, Problem>>()?;
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(keyed.into_iter().map(|(_, t)| t).collect())
}

/// Compares two parameter names in mlx-lm's order.
pub fn compare(order: ParamOrder, a: &str, b: &str) -> Result<Ordering, Problem> {
    Ok(key(order, a)?.cmp(&key(order, b)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDER: ParamOrder = &[
        ("model", &["embed_tokens", "layers", "norm"]),
        ("layers", &["self_attn", "mlp"]),
        ("mlp", &["gate_proj", "down_proj", "up_proj"]),
    ];

    #[test]
    fn declaration_order_then_indices_then_leaves() {
        let names = vec![
            "lm_head.weight",
            "model.norm.weight",
            "model.layers.10.mlp.up_proj.weight",
            "model.layers.2.mlp.down_proj.biases",
            "model.layers.2.mlp.down_proj.bias",
            "model.layers.2.mlp.down_proj.weight",
            "model.layers.2.mlp.down_proj.scales",
            "model.layers.2.self_attn",
            "model.embed_tokens.weight",
        ];
        let names = sorted(ORDER, names, |n| n).unwrap();
        assert_eq!(
            names,
            [
                "model.embed_tokens.weight",
                "model.layers.2.self_attn",
                "model.layers.2.mlp.down_proj.weight",
                "model.layers.2.mlp.down_proj.scales",
                "model.layers.2.mlp.down_proj.biases",
                "model.layers.2.mlp.down_proj.bias",
                "model.layers.10.mlp.up_proj.weight",
                "model.norm.weight",
                "lm_head.weight",
            ]
        );
        assert_eq!(
            compare(ORDER, "model.layers.9.mlp", "model.layers.10.self_attn"),
            Ok(Ordering::Less)
        );
    }

    #[test]
    fn unknown_components_are_named() {
        let err = |a| compare(ORDER, a, "lm_head.weight").unwrap_err().message;
        let err = err("model.layers.0.mlp.fc1.weight");
        assert!(err.contains("no `fc1` under `mlp`"), "{err}");
        assert!(err.contains("gate_proj, down_proj, up_proj"), "{err}");
        let top = compare(ORDER, "vision_tower.weight", "lm_head.weight").unwrap_err();
        assert!(top.message.contains("no `vision_tower` at the top level"));
        assert_eq!(
            compare(ORDER, "language_model.lm_head.weight", "model.norm.weight"),
            Ok(Ordering::Less),
            "a wrapper's text model comes first"
        );
        assert_eq!(top.tensor.as_deref(), Some("vision_tower.weight"));
        let leaf = compare(ORDER, "model.norm.weight_2", "lm_head.weight").unwrap_err();
        assert!(leaf.message.contains("no `weight_2` under `norm`"));
    }
}
