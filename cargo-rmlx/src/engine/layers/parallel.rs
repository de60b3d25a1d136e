//! Tensor-parallel loading (Megatron-style, as mlx-lm shards): the [`Parallel`] state a
//! [`LoadCtx`] carries, the loaders of column-parallel projections
//! ([`LoadCtx::column_linear`]: q/k/v, gate/up — this rank's output rows) and row-parallel
//! ones ([`LoadCtx::row_linear`]: o, down — this rank's input columns, outputs summed over the
//! ranks before the bias), the same splits for stacked experts ([`LoadCtx::column`],
//! [`LoadCtx::row`]), and the per-rank config view ([`config_view`]: heads, KV heads and
//! inner widths divided, checked to divide). Each rank reads only its slice of a split tensor
//! (`Weights::array_slice`); quantized matrices split on group boundaries.

use mlx_rs::{Array, Dtype};
use serde_json::Value;

use super::{Linear, LoadCtx};
use crate::diagnostic::{Diagnostic, Result};
use crate::engine::dist::Shard;
use crate::snapshot::ModelConfig;

/// The tensor-parallel state of a load: this rank's shard, its share of the attention heads
/// and of the feed-forward widths, and which split applies to the tensors read now.
#[derive(Debug, Clone, Copy, Default)]
pub struct Parallel {
    /// This rank.
    pub shard: Shard,
    /// This rank's KV heads (and the query heads that share them).
    heads: Part,
    /// This rank's share of the feed-forward widths (an even split).
    ffn: Part,
    /// Which part the loaders below use: `heads` inside attention blocks, else `ffn`.
    attention: bool,
    split: Option<Split>,
}

/// Parts `start..start + count` of `of` equal parts of a width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    start: usize,
    count: usize,
    of: usize,
}

impl Default for Part {
    fn default() -> Self {
        Self {
            start: 0,
            count: 1,
            of: 1,
        }
    }
}

impl Part {
    /// `n` parts spread over the ranks of `shard` as evenly as possible (the first ranks
    /// take one more when `n` does not divide); `None` when some rank would get none.
    fn spread(n: usize, shard: Shard) -> Option<Self> {
        let (base, rem) = (n / shard.size, n % shard.size);
        let r = shard.rank;
        let count = base + usize::from(r < rem);
        (count > 0).then_some(Self {
            start: r * base + r.min(rem),
            count,
            of: n,
        })
    }

    /// This part of a width whose local share is `local`: (offset, full width).
    fn of_local(self, local: usize) -> (usize, usize) {
        let per = local / self.count;
        (per * self.start, per * self.of)
    }
}

impl Parallel {
    /// Loading for `shard` of a model with `config` (the full one): the parts of heads and
    /// feed-forward widths this rank holds.
    pub fn new(shard: Shard, config: &ModelConfig) -> Result<Self> {
        if shard.is_single() {
            return Ok(Self::default());
        }
        let heads = Part::spread(config.num_key_value_heads, shard).ok_or_else(|| {
            config.located(
                "rmlx::engine::dist::indivisible",
                format!(
                    "{} KV heads cannot be spread over {} ranks (each rank needs one)",
                    config.num_key_value_heads, shard.size
                ),
                "num_key_value_heads",
            )
        })?;
        Ok(Self {
            shard,
            heads,
            ffn: Part {
                start: shard.rank,
                count: 1,
                of: shard.size,
            },
            attention: false,
            split: None,
        })
    }
}

/// Which axis of a linear layer's tensors is split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Split {
    /// Output features (rows of `[…, out, in]`, the last axis of a bias `[…, out]`).
    Rows,
    /// Input features (the last axis of `[…, out, in]`, packed or not, and of the scales).
    Cols,
}

/// The model types whose networks load through the column/row loaders (the standard
/// decoder's attention, MLP and stacked experts).
const FAMILIES: &[&str] = &[
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "smollm3",
    "gemma3_text",
    "qwen3_moe",
];

impl LoadCtx<'_> {
    /// Reads tensor `name` (full name) of local shape `shape`: the whole tensor, or this
    /// rank's slice of it when a split applies.
    pub(super) fn read(&self, name: &str, shape: &[usize], cast: Option<Dtype>) -> Result<Array> {
        let p = self.parallel;
        let Some(split) = p.split.filter(|_| !p.shard.is_single()) else {
            let shape: Vec<Option<usize>> = shape.iter().copied().map(Some).collect();
            return self.weights.array(name, &shape, cast);
        };
        let axis = match split {
            Split::Rows if name.ends_with(".bias") => shape.len() - 1,
            Split::Rows => shape.len().saturating_sub(2),
            Split::Cols => shape.len() - 1,
        };
        let part = if p.attention { p.heads } else { p.ffn };
        let (offset, width) = part.of_local(shape[axis]);
        let mut full = shape.to_vec();
        full[axis] = width;
        let range = offset..offset + shape[axis];
        self.weights.array_slice(name, &full, axis, range, cast)
    }

    /// This context with `split` applied to what it reads (none in a single-process run).
    fn with_split(&self, split: Split) -> Self {
        let mut ctx = *self;
        ctx.parallel.split = (!self.parallel.shard.is_single()).then_some(split);
        ctx
    }

    /// This context inside an attention block: the column/row loaders split by this rank's
    /// heads instead of its feed-forward share.
    pub fn attention_heads(&self) -> Self {
        let mut ctx = *self;
        ctx.parallel.attention = true;
        ctx
    }

    /// A context reading column-parallel tensors: this rank's output rows (stacked experts'
    /// gate/up).
    pub fn column(&self) -> Self {
        self.with_split(Split::Rows)
    }

    /// A context reading row-parallel tensors: this rank's input columns (stacked experts'
    /// down). The caller sums the outputs over the ranks.
    pub fn row(&self) -> Self {
        self.with_split(Split::Cols)
    }

    /// A column-parallel linear layer (q/k/v, gate/up): `output` is this rank's share of the
    /// output features (the config view's widths), read as this rank's rows.
    pub fn column_linear(
        &self,
        path: &str,
        input: usize,
        output: usize,
        bias: bool,
    ) -> Result<Linear> {
        self.column().linear(path, input, output, bias)
    }

    /// A row-parallel linear layer (o, down): `input` is this rank's share of the input
    /// features, read as this rank's columns; its forward sums the ranks' partial outputs and
    /// then adds the (whole) bias once.
    pub fn row_linear(
        &self,
        path: &str,
        input: usize,
        output: usize,
        bias: bool,
    ) -> Result<Linear> {
        if self.parallel.shard.is_single() {
            return self.linear(path, input, output, bias);
        }
        let mut layer = self.row().linear(path, input, output, false)?;
        layer.bias = bias
            .then(|| self.param(&format!("{path}.bias"), &[output]))
            .transpose()?;
        layer.all_sum = true;
        Ok(layer)
    }
}

/// The config a rank's blocks read: its attention heads and KV heads (`parallel`'s part),
/// `intermediate_size` and `moe_intermediate_size` divided by the number of ranks. Errors
/// when the architecture has no tensor-parallel loading, or a width does not divide (or,
/// quantized, a rank's share is not a whole number of quantization groups).
pub fn config_view(config: &ModelConfig, parallel: &Parallel) -> Result<ModelConfig> {
    let shard = parallel.shard;
    let n = shard.size;
    let mut view = config.clone();
    if n <= 1 {
        return Ok(view);
    }
    if !FAMILIES.contains(&config.text_model_type.as_str()) {
        return Err(Diagnostic::error(
            "rmlx::engine::dist::unsupported-architecture",
            format!(
                "`{}` models cannot run tensor-parallel yet (supported: {})",
                config.text_model_type,
                FAMILIES.join(", ")
            ),
        )
        .with_file(&config.path)
        .with_help("run it in one process (without --hostfile)"));
    }
    let group = config
        .quantization
        .as_ref()
        .map_or(1, |q| q.default.group_size.max(1) as usize);
    let (heads, kv) = (config.num_attention_heads, config.num_key_value_heads);
    if kv == 0 || heads % kv != 0 {
        return Err(config.located(
            "rmlx::engine::dist::indivisible",
            format!("{heads} attention heads do not form groups over {kv} KV heads"),
            "num_attention_heads",
        ));
    }
    // The row-parallel output projection splits its input at KV-group boundaries.
    let per_group = heads / kv * config.head_dim;
    check_groups(config, "num_attention_heads", per_group, group)?;
    let part = parallel.heads;
    view.num_key_value_heads = part.count;
    view.num_attention_heads = heads / kv * part.count;
    view.intermediate_size = split(
        config,
        "intermediate_size",
        config.intermediate_size,
        n,
        group,
    )?;
    if let Some(moe) = config
        .raw
        .get("moe_intermediate_size")
        .and_then(Value::as_u64)
    {
        let local = split(config, "moe_intermediate_size", moe as usize, n, group)?;
        view.raw
            .insert("moe_intermediate_size".into(), Value::from(local as u64));
    }
    Ok(view)
}

/// `value / n`, when `n` divides `value` into whole quantization groups.
fn split(config: &ModelConfig, key: &str, value: usize, n: usize, group: usize) -> Result<usize> {
    if value % n != 0 {
        return Err(config.located(
            "rmlx::engine::dist::indivisible",
            format!("`{key}` = {value} cannot be split over {n} ranks"),
            key,
        ));
    }
    check_groups(config, key, value / n, group)?;
    Ok(value / n)
}

/// A rank's share `width` must be whole quantization groups of `group` (1 when dense).
fn check_groups(config: &ModelConfig, key: &str, width: usize, group: usize) -> Result<()> {
    if width % group == 0 {
        return Ok(());
    }
    Err(config.located(
        "rmlx::engine::dist::indivisible",
        format!("`{key}`: a rank's share of {width} features is not a whole number of quantization groups of {group}"),
        key,
    ))
}
