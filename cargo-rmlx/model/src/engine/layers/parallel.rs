//! Tensor-parallel loading (Megatron-style, as mlx-lm shards): the [`Parallel`] state a
//! [`LoadCtx`] carries, the loaders of column-parallel projections
//! ([`LoadCtx::column_linear`]: q/k/v, gate/up — this rank's output rows) and row-parallel
//! ones ([`LoadCtx::row_linear`]: o, down — this rank's input columns, outputs summed over the
//! ranks before the bias), fused column-parallel projections split part by part
//! ([`LoadCtx::column_fused_linear`]: Phi-3's q|k|v, gate|up), the same splits for stacked
//! experts ([`LoadCtx::column`], [`LoadCtx::row`]; a row-split bias read by rank 0 alone:
//! [`LoadCtx::bias_ctx`]), norms over a head-split width ([`WideRmsNorm`]), and the per-rank
//! config view ([`config_view`]: heads, KV heads and
//! inner widths divided, checked to divide). Each rank reads only its slice of a split tensor
//! (`Weights::array_slice`); quantized matrices split on group boundaries.

use mlx_rs::{Array, Dtype};
use serde_json::Value;

use super::{Linear, LoadCtx, RmsNorm};
use crate::diagnostic::{code, Diagnostic, Result};
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
    /// This rank's delta-net key heads (and the value heads that share them; Qwen3.5).
    delta_heads: Part,
    /// Which part the loaders below use.
    within: Within,
    split: Option<Split>,
    /// A fused column-parallel tensor's parts (local row widths, each split on its own).
    fused: Option<Fused>,
}

/// Which of a rank's parts a load reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Within {
    /// Feed-forward widths.
    #[default]
    Ffn,
    /// Attention heads (by KV-head group).
    Heads,
    /// Delta-net heads (by key-head group).
    DeltaHeads,
}

/// The local row widths of the parts of a fused projection (q|k|v, gate|up), at most three.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fused {
    widths: [usize; 3],
    len: usize,
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
                code::Engine::DistIndivisible,
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
            delta_heads: delta_heads(config, shard)?,
            within: Within::Ffn,
            split: None,
            fused: None,
        })
    }

    /// The part the loaders use now.
    fn part(&self) -> Part {
        match self.within {
            Within::Ffn => self.ffn,
            Within::Heads => self.heads,
            Within::DeltaHeads => self.delta_heads,
        }
    }

    /// The whole model's attention heads, given a rank's config view (`view` itself in a
    /// single-process run).
    pub fn whole_heads(&self, view: &ModelConfig) -> usize {
        if self.shard.is_single() {
            return view.num_attention_heads;
        }
        view.num_attention_heads / view.num_key_value_heads.max(1) * self.heads.of
    }
}

/// This rank's delta-net key heads (`linear_num_key_heads`, mlx-lm's default 16 when absent)
/// of a model that has delta-net layers; one part otherwise.
fn delta_heads(config: &ModelConfig, shard: Shard) -> Result<Part> {
    if !config.text_model_type.starts_with("qwen3_5") {
        return Ok(Part::default());
    }
    let n = crate::arch::config_size(config, DELTA_KEY_HEADS, Some(16))?;
    Part::spread(n, shard).ok_or_else(|| {
        config.located(
            code::Engine::DistIndivisible,
            format!(
                "{n} delta-net key heads cannot be spread over {} ranks (each rank needs one)",
                shard.size
            ),
            DELTA_KEY_HEADS,
        )
    })
}

const DELTA_KEY_HEADS: &str = "linear_num_key_heads";
const DELTA_VALUE_HEADS: &str = "linear_num_value_heads";

/// Which axis of a linear layer's tensors is split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Split {
    /// Output features (rows of `[…, out, in]`, the last axis of a bias `[…, out]`).
    Rows,
    /// Input features (the last axis of `[…, out, in]`, packed or not, and of the scales).
    Cols,
    /// The first axis (a depthwise convolution's channels, `[channels, kernel, 1]`).
    Channels,
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
    "olmo2",
    "phi3",
    "ministral3",
    "gpt_oss",
    "qwen3_5",
    "qwen3_5_text",
    "qwen3_5_moe",
    "qwen3_5_moe_text",
    "gemma4_text",
    "gemma4",
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
        let is_bias = name.ends_with(".bias") || name.ends_with("_bias");
        let axis = match split {
            Split::Rows if is_bias => shape.len() - 1,
            Split::Rows => shape.len().saturating_sub(2),
            Split::Cols => shape.len() - 1,
            Split::Channels => 0,
        };
        let part = p.part();
        let whole = [shape[axis]];
        let widths = match (split, &p.fused) {
            (Split::Rows | Split::Channels, Some(f)) => &f.widths[..f.len],
            _ => &whole[..],
        };
        // Each part of a fused tensor holds this rank's rows at its own offset.
        let places: Vec<(usize, usize)> = widths.iter().map(|&w| part.of_local(w)).collect();
        let mut full = shape.to_vec();
        full[axis] = places.iter().map(|p| p.1).sum();
        let mut base = 0;
        let mut pieces = Vec::with_capacity(widths.len());
        for (&local, (offset, width)) in widths.iter().zip(places) {
            let range = base + offset..base + offset + local;
            pieces.push(self.weights.array_slice(name, &full, axis, range, cast)?);
            base += width;
        }
        match pieces.len() {
            1 => Ok(pieces.remove(0)),
            _ => Ok(mlx_rs::ops::concatenate(&pieces, axis as i32)?),
        }
    }

    /// Tensor `name` (unprefixed) of local shape `shape` in its stored dtype: whole, or —
    /// when this context reads a split — this rank's part of `axis` (layouts the row/column
    /// rules do not place, e.g. MXFP4 blocks `[E, rows, groups, 16]`).
    pub fn split_on(&self, name: &str, shape: &[usize], axis: usize) -> Result<Array> {
        let name = self.full_name(name);
        let p = self.parallel;
        if p.split.is_none() || p.shard.is_single() {
            let shape: Vec<Option<usize>> = shape.iter().copied().map(Some).collect();
            return self.weights.array(&name, &shape, None);
        }
        let (offset, width) = p.part().of_local(shape[axis]);
        let mut full = shape.to_vec();
        full[axis] = width;
        let range = offset..offset + shape[axis];
        self.weights.array_slice(&name, &full, axis, range, None)
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
        ctx.parallel.within = Within::Heads;
        ctx
    }

    /// This context inside a delta-net block: the loaders split by this rank's delta-net
    /// key-head groups (each with its value heads).
    pub fn delta_heads(&self) -> Self {
        let mut ctx = *self;
        ctx.parallel.within = Within::DeltaHeads;
        ctx
    }

    /// A context reading this rank's channels (first axis) of a tensor whose channels are the
    /// concatenation of `parts` (this rank's widths of each): a delta-net's convolution.
    pub fn channels(&self, parts: &[usize]) -> Result<Self> {
        self.with_split(Split::Channels).fused(parts)
    }

    /// This context reading a tensor fused of `parts` (this rank's widths of each), each
    /// split on its own.
    fn fused(mut self, parts: &[usize]) -> Result<Self> {
        if self.parallel.shard.is_single() {
            return Ok(self);
        }
        let mut widths = [0; 3];
        if parts.len() > widths.len() {
            return Err(Diagnostic::error(
                code::Engine::DistFused,
                format!("a tensor fuses {} parts (at most 3 split)", parts.len()),
            ));
        }
        widths[..parts.len()].copy_from_slice(parts);
        self.parallel.fused = Some(Fused {
            widths,
            len: parts.len(),
        });
        Ok(self)
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

    /// A column-parallel linear layer whose output is the concatenation of `parts` (this rank's
    /// widths of each: Phi-3's q|k|v, gate|up): each part is split on its own rows, so this
    /// rank's output is its share of every part, in the same order.
    pub fn column_fused_linear(
        &self,
        path: &str,
        input: usize,
        parts: &[usize],
        bias: bool,
    ) -> Result<Linear> {
        let output = parts.iter().sum();
        self.column()
            .fused(parts)?
            .linear(path, input, output, bias)
    }

    /// Where the bias of a layer read through this context comes from: this context, unless
    /// it reads a row-parallel split, whose outputs the ranks sum — then rank 0 alone reads
    /// the whole bias (`None` on the others), so that the sum adds it once.
    pub fn bias_ctx(&self) -> Option<Self> {
        let p = self.parallel;
        if p.split != Some(Split::Cols) || p.shard.is_single() {
            return Some(*self);
        }
        let mut whole = *self;
        whole.parallel.split = None;
        (p.shard.rank == 0).then_some(whole)
    }

    /// An RMSNorm over a projection split by heads whose statistic spans every head (OLMo 2's
    /// q/k norms): this rank's slice of the weight; `local` is this rank's width.
    pub fn heads_rms_norm(&self, path: &str, local: usize, eps: f32) -> Result<WideRmsNorm> {
        let ctx = self.attention_heads().column();
        let norm = ctx.rms_norm(path, local, eps, false)?;
        let whole =
            (!self.parallel.shard.is_single()).then(|| self.parallel.heads.of_local(local).1);
        Ok(WideRmsNorm { norm, whole })
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

/// An RMSNorm whose input is split over the ranks by heads while its statistic spans the whole
/// width: each rank sums the squares of its slice, the sums are added over the ranks (one
/// value per position crosses the group, not the activations) and each rank scales its slice.
#[derive(Debug)]
pub struct WideRmsNorm {
    norm: RmsNorm,
    /// The whole width, when the input is a rank's slice of it.
    whole: Option<usize>,
}

impl WideRmsNorm {
    /// Normalises `x` (`[…, local]`) by the root mean square over the whole width.
    pub fn forward(&self, x: &Array) -> Result<Array> {
        let Some(whole) = self.whole else {
            return self.norm.forward(x);
        };
        let xf = x.as_dtype(Dtype::Float32)?;
        let squares = crate::engine::dist::all_sum(xf.square()?.sum_axis(-1, true)?)?;
        let mean = squares.divide(Array::from_f32(whole as f32))?;
        let inv = mlx_rs::ops::rsqrt(&mean.add(Array::from_f32(self.norm.eps))?)?;
        let y = xf.multiply(&inv)?.as_dtype(x.dtype())?;
        Ok(y.multiply(&self.norm.weight)?)
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
            code::Engine::DistUnsupportedArchitecture,
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
            code::Engine::DistIndivisible,
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
    for key in ["moe_intermediate_size", "shared_expert_intermediate_size"] {
        if let Some(width) = config.raw.get(key).and_then(Value::as_u64) {
            let local = split(config, key, width as usize, n, group)?;
            view.raw.insert(key.into(), Value::from(local as u64));
        }
    }
    delta_view(config, parallel, group, &mut view)?;
    Ok(view)
}

/// A delta-net model's view: this rank's key heads and the value heads that share them; the
/// output projection splits its input at key-head-group boundaries (whole quantization
/// groups).
fn delta_view(
    config: &ModelConfig,
    parallel: &Parallel,
    group: usize,
    view: &mut ModelConfig,
) -> Result<()> {
    if !config.text_model_type.starts_with("qwen3_5") {
        return Ok(());
    }
    let nk = crate::arch::config_size(config, DELTA_KEY_HEADS, Some(16))?;
    let nv = crate::arch::config_size(config, DELTA_VALUE_HEADS, Some(64))?;
    let dv = crate::arch::config_size(config, "linear_value_head_dim", Some(128))?;
    if nv % nk != 0 {
        return Err(config.located(
            code::Engine::DistIndivisible,
            format!("{nv} delta-net value heads do not form groups over {nk} key heads"),
            DELTA_VALUE_HEADS,
        ));
    }
    check_groups(config, DELTA_VALUE_HEADS, nv / nk * dv, group)?;
    let count = parallel.delta_heads.count;
    view.raw
        .insert(DELTA_KEY_HEADS.into(), Value::from(count as u64));
    view.raw.insert(
        DELTA_VALUE_HEADS.into(),
        Value::from((nv / nk * count) as u64),
    );
    Ok(())
}

/// `value / n`, when `n` divides `value` into whole quantization groups.
fn split(config: &ModelConfig, key: &str, value: usize, n: usize, group: usize) -> Result<usize> {
    if !value.is_multiple_of(n) {
        return Err(config.located(
            code::Engine::DistIndivisible,
            format!("`{key}` = {value} cannot be split over {n} ranks"),
            key,
        ));
    }
    check_groups(config, key, value / n, group)?;
    Ok(value / n)
}

/// A rank's share `width` must be whole quantization groups of `group` (1 when dense).
fn check_groups(config: &ModelConfig, key: &str, width: usize, group: usize) -> Result<()> {
    if width.is_multiple_of(group) {
        return Ok(());
    }
    Err(config.located(
        code::Engine::DistIndivisible,
        format!("`{key}`: a rank's share of {width} features is not a whole number of quantization groups of {group}"),
        key,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: Shard = Shard { rank: 1, size: 2 };

    fn view(model_type: &str, extra: &str) -> Result<ModelConfig> {
        let config = crate::arch::test_config(model_type, extra)?;
        config_view(&config, &Parallel::new(TWO, &config)?)
    }

    #[test]
    fn delta_net_heads_split_with_their_value_heads() {
        let v = view(
            "qwen3_5",
            r#","linear_num_key_heads":2,"linear_num_value_heads":4,"linear_value_head_dim":16"#,
        )
        .unwrap();
        assert_eq!(v.raw[DELTA_KEY_HEADS], 1);
        assert_eq!(v.raw[DELTA_VALUE_HEADS], 2);
        assert_eq!((v.num_attention_heads, v.num_key_value_heads), (2, 1));
    }

    #[test]
    fn shapes_that_do_not_split_keep_a_located_error() {
        let quantized = r#","linear_num_key_heads":2,"linear_num_value_heads":4,
            "linear_value_head_dim":16,"quantization":{"group_size":64,"bits":4}"#;
        let err = view("qwen3_5", quantized).unwrap_err();
        assert_eq!(err.code, "rmlx::engine::dist::indivisible");
        assert!(
            err.message.contains("quantization groups"),
            "{}",
            err.message
        );
        let err = view("qwen3_5", r#","linear_num_key_heads":1"#).unwrap_err();
        assert_eq!(err.code, "rmlx::engine::dist::indivisible");
        let err = view("olmo2", r#","num_key_value_heads":1"#).unwrap_err();
        assert_eq!(err.code, "rmlx::engine::dist::indivisible");
        let err = view("phi3", r#","intermediate_size":63"#).unwrap_err();
        assert_eq!(err.code, "rmlx::engine::dist::indivisible");
    }
}
