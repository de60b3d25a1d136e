//! What happens to every tensor of a source model directory: which modules are quantized
//! (mlx-lm's rule), which are kept, re-quantized or dequantized, the dtype of every output
//! tensor, the checks of the weights against config.json, and the output `config.json`.
//!
//! mlx-lm's choices, reproduced here without instantiating a model:
//! - a module is quantizable when it is a `Linear` or `Embedding`; in the architectures
//!   cargo-rmlx runs (llama, mistral, qwen2, qwen3, gemma3_text) those are exactly the 2-D
//!   `<module>.weight` tensors. It is quantized when its last dimension (input features) is
//!   divisible by its group size; otherwise it stays dense (mlx-lm's `class_predicate`).
//! - before quantizing, every floating tensor is cast to the conversion dtype: `--dtype`, else
//!   config.json's `torch_dtype` (else `text_config.dtype`) when it is float16, bfloat16 or
//!   float32; with none of these the stored dtype is kept. Affine scales and biases come out
//!   in that dtype; the microscaling modes store 8-bit scales.
//! - `model.sanitize` drops `*.rotary_emb.inv_freq` and, for llama/mistral/qwen2/qwen3 with
//!   tied embeddings, `lm_head.weight`.

use std::collections::{BTreeMap, HashSet};

use mlx_rs::Dtype as MlxDtype;
use serde_json::{json, Map, Value};

use super::pyjson;
use super::source::SourceModel;
use super::writer::TensorSpec;
use crate::arch::convert::order;
use crate::diagnostic::{code, Code, Diagnostic, Result};
use crate::manifest::{describe_params, Dtype, ModuleOverride, Quantize};
use crate::mlx::quant::{is_float, mlx_dtype};
use crate::snapshot::{ModelConfig, QuantMode, QuantParams};

const CODE_MISMATCH: Code = Code::Build(code::Build::SourceMismatch);

/// What happens to one tensor or module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A dense tensor, copied (cast to the output dtype when floating).
    Dense,
    /// A quantized module copied as stored.
    Keep(QuantParams),
    /// A dense module quantized, or a quantized one dequantized and quantized again.
    Quantize {
        /// The source's quantization, if any.
        from: Option<QuantParams>,
        /// The output's.
        to: QuantParams,
    },
    /// A quantized module written dense.
    Dequantize(QuantParams),
}

/// One unit of work: a plain tensor, or a module (`<path>.weight` + scales/biases).
#[derive(Debug, Clone)]
pub struct Item {
    /// Tensor name (plain tensors) or module path (modules).
    pub name: String,
    /// Whether `name` is a module path.
    pub module: bool,
    /// What to do.
    pub action: Action,
    /// Floating dtype the work is done in (cast target; dequantize output).
    pub float_dtype: Option<MlxDtype>,
    /// Quantized with the family's fixed settings (mlx-lm's `quant_predicate`).
    pub fixed: bool,
    /// Tensors written, in order.
    pub outputs: Vec<TensorSpec>,
}

/// The whole conversion of one model.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Work items in output order.
    pub items: Vec<Item>,
    /// Source tensors not written, with the reason.
    pub dropped: Vec<(String, String)>,
    /// The conversion dtype (see the module docs), if any.
    pub dtype: Option<MlxDtype>,
    /// The `quantization` block of the output config, if anything is quantized.
    pub quantization: Option<Value>,
    /// Overrides that matched no module.
    pub unmatched_overrides: Vec<ModuleOverride>,
    /// Modules left dense because their input features are not a multiple of the group.
    pub not_divisible: Vec<String>,
}

impl Plan {
    /// All output tensors, in write order.
    pub fn specs(&self) -> Vec<TensorSpec> {
        self.items
            .iter()
            .flat_map(|i| i.outputs.iter().cloned())
            .collect()
    }

    /// Items with a given kind of action.
    pub fn count(&self, f: impl Fn(&Action) -> bool) -> usize {
        self.items.iter().filter(|i| f(&i.action)).count()
    }

    /// (from, to, modules) of every module whose quantization changes from one quantized
    /// form to another or to dense, grouped.
    pub fn requantized(&self) -> Vec<(QuantParams, Option<QuantParams>, Vec<String>)> {
        let mut groups: Vec<(QuantParams, Option<QuantParams>, Vec<String>)> = Vec::new();
        for i in &self.items {
            let (from, to) = match i.action {
                Action::Quantize { from: Some(f), to } => (f, Some(to)),
                Action::Dequantize(f) => (f, None),
                _ => continue,
            };
            match groups.iter_mut().find(|g| g.0 == from && g.1 == to) {
                Some(g) => g.2.push(i.name.clone()),
                None => groups.push((from, to, vec![i.name.clone()])),
            }
        }
        groups
    }
}

/// Python-style truthiness of a JSON value.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// Orders `model.layers.10` after `model.layers.9`.
pub fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let mut x = a.split('.');
    let mut y = b.split('.');
    loop {
        match (x.next(), y.next()) {
            (None, None) => return std::cmp::Ordering::Equal,
            (None, Some(_)) => return std::cmp::Ordering::Less,
            (Some(_), None) => return std::cmp::Ordering::Greater,
            (Some(p), Some(q)) => {
                let o = match (p.parse::<u64>(), q.parse::<u64>()) {
                    (Ok(m), Ok(n)) => m.cmp(&n),
                    _ => p.cmp(q),
                };
                if o != std::cmp::Ordering::Equal {
                    return o;
                }
            }
        }
    }
}

/// The conversion dtype: declared, else config.json's `torch_dtype` / `text_config.dtype`
/// when it names a float type (mlx-lm's rule).
pub fn conversion_dtype(raw: &Map<String, Value>, declared: Option<Dtype>) -> Option<MlxDtype> {
    if let Some(d) = declared {
        return Some(d.mlx());
    }
    let name = match raw.get("torch_dtype") {
        Some(Value::String(s)) => Some(s.as_str()),
        _ => raw
            .get("text_config")
            .and_then(|t| t.get("dtype"))
            .and_then(Value::as_str),
    };
    match name {
        Some("float16") => Some(MlxDtype::Float16),
        Some("bfloat16") => Some(MlxDtype::Bfloat16),
        Some("float32") => Some(MlxDtype::Float32),
        _ => None,
    }
}

fn params_json(q: &QuantParams) -> Value {
    json!({"group_size": q.group_size, "bits": q.bits, "mode": q.mode.as_str()})
}

struct Module {
    path: String,
    /// Every dimension but the last (`[out]`, or `[experts, out]` for switch layers).
    lead: Vec<usize>,
    cols: usize,
    source: Option<QuantParams>,
    weight_dtype: MlxDtype,
    scales_dtype: Option<MlxDtype>,
}

/// Plans the conversion of `src` to `quantize` / `dtype` (`dtype_explicit`: declared in
/// rmlx.toml, which also re-casts the scales of modules kept quantized).
pub fn plan(src: &SourceModel, quantize: &Quantize, declared_dtype: Option<Dtype>) -> Result<Plan> {
    let dtype = conversion_dtype(&src.raw, declared_dtype);
    let (modules, plain) = collect(src)?;
    if let Some(config) = &src.config {
        check_shapes(src, config, &modules, &plain)?;
    }
    let mut matched = vec![false; quant_overrides(quantize).len()];
    let mut not_divisible = Vec::new();
    let mut items: Vec<Item> = Vec::new();
    for m in &modules {
        let target = target_of(src, m, quantize, &mut matched, &mut not_divisible);
        items.push(module_item(src, m, target, dtype, declared_dtype.is_some()));
    }
    for name in &plain {
        items.push(plain_item(src, name, dtype)?);
    }
    let mut items = in_mlx_lm_order(src, items)?;
    count_leaf_parameters(&mut items);
    let quantization = quantization_block(src, quantize, &items);
    let unmatched_overrides = quant_overrides(quantize)
        .iter()
        .zip(&matched)
        .filter(|(_, m)| !**m)
        .map(|(o, _)| o.clone())
        .collect();
    Ok(Plan {
        items,
        dropped: src.tensors.dropped.clone(),
        dtype,
        quantization,
        unmatched_overrides,
        not_divisible,
    })
}

/// `items` in mlx-lm's parameter order (the family's [`crate::arch::convert::order`]).
fn in_mlx_lm_order(src: &SourceModel, items: Vec<Item>) -> Result<Vec<Item>> {
    order::sorted(src.rules.order, items, |i| &i.outputs[0].name).map_err(|p| {
        let file = p
            .tensor
            .as_deref()
            .map_or(src.dir.as_path(), |t| src.file_of(t));
        let d = Diagnostic::error(CODE_MISMATCH, p.message).with_file(file);
        match p.help {
            Some(h) => d.with_help(h),
            None => d,
        }
    })
}

fn unsupported_dtype(src: &SourceModel, name: &str, dtype: safetensors::Dtype) -> Diagnostic {
    Diagnostic::error(
        code::Build::UnsupportedDtype,
        format!("tensor `{name}` has unsupported dtype {dtype:?}"),
    )
    .with_file(src.file_of(name))
}

/// The modules (quantizable weights: 2-D `Linear`/`Embedding` weights, the family's 3-D
/// switch weights, and every weight stored quantized) and the plain tensors.
fn collect(src: &SourceModel) -> Result<(Vec<Module>, Vec<String>)> {
    let mut modules: Vec<Module> = Vec::new();
    let mut consumed: HashSet<String> = HashSet::new();
    for (name, out) in &src.tensors.outs {
        let Some(path) = name.strip_suffix(".weight") else {
            continue;
        };
        let wdt = mlx_dtype(out.dtype).ok_or_else(|| unsupported_dtype(src, name, out.dtype))?;
        let scales = format!("{path}.scales");
        if src.out(&scales).is_some() {
            modules.push(stored_quantized(src, path, wdt)?);
            consumed.extend([name.clone(), scales, format!("{path}.biases")]);
        } else if is_float(wdt) && is_module_shape(src, path, &out.shape) {
            consumed.insert(name.clone());
            let (cols, lead) = out.shape.split_last().expect("2 or 3 dimensions");
            modules.push(Module {
                path: path.to_string(),
                lead: lead.to_vec(),
                cols: *cols,
                source: None,
                weight_dtype: wdt,
                scales_dtype: None,
            });
        }
    }
    let mut plain = Vec::new();
    for name in src.tensors.outs.keys() {
        if consumed.contains(name) {
            continue;
        }
        if name.ends_with(".scales") || name.ends_with(".biases") {
            return Err(Diagnostic::error(
                CODE_MISMATCH,
                format!("`{name}` has no matching quantized `.weight`"),
            )
            .with_file(src.file_of(name)));
        }
        plain.push(name.clone());
    }
    Ok((modules, plain))
}

/// 2-D weights are `Linear`/`Embedding` weights; 3-D ones of the family's switch modules are
/// `SwitchLinear` weights.
fn is_module_shape(src: &SourceModel, path: &str, shape: &[usize]) -> bool {
    match shape.len() {
        2 => true,
        3 => src.rules.switch_modules.iter().any(|s| path.ends_with(s)),
        _ => false,
    }
}

/// A module stored quantized in the source, checked against config.json's settings.
fn stored_quantized(src: &SourceModel, path: &str, wdt: MlxDtype) -> Result<Module> {
    let name = format!("{path}.weight");
    let scales = format!("{path}.scales");
    let info = src.out(&name).expect("listed tensor");
    let sinfo = src.out(&scales).expect("listed tensor");
    let q = src
        .quantization
        .as_ref()
        .and_then(|q| q.for_module(path))
        .ok_or_else(|| {
            src.at_key(
                format!(
                    "`{path}` is stored quantized (it has `{scales}`) but config.json \
                     has no quantization settings for it"
                ),
                "model_type",
                "no `quantization` block for this model".into(),
            )
        })?;
    let (packed, lead) = match info.shape.split_last() {
        Some((p, lead)) if matches!(lead.len(), 1 | 2) => (*p, lead),
        _ => {
            return Err(src.at_key(
                format!(
                "quantized `{name}` has shape {:?}, expected 2 dimensions (3 for switch layers)",
                info.shape
            ),
                "quantization",
                "quantization settings".into(),
            ))
        }
    };
    let cols = packed * 32 / q.bits as usize;
    let groups = sinfo.shape.last().copied().unwrap_or(0);
    if (packed * 32) % q.bits as usize != 0
        || groups * q.group_size as usize != cols
        || sinfo.shape.split_last().map(|(_, l)| l) != Some(lead)
    {
        return Err(src
            .at_key(
                format!(
                    "`{name}` {:?} with `{scales}` {:?} is not {} quantization",
                    info.shape,
                    sinfo.shape,
                    describe_params(&q)
                ),
                "quantization",
                format!("config.json says {}", describe_params(&q)),
            )
            .with_help("the weights do not match config.json's quantization block"));
    }
    let sdt = mlx_dtype(sinfo.dtype);
    if q.mode == QuantMode::Affine && !sdt.is_some_and(is_float) {
        return Err(src.at_key(
            format!(
                "`{scales}` is {:?}, affine scales must be floats",
                sinfo.dtype
            ),
            "quantization",
            format!("config.json says {}", describe_params(&q)),
        ));
    }
    Ok(Module {
        path: path.to_string(),
        lead: lead.to_vec(),
        cols,
        source: Some(q),
        weight_dtype: wdt,
        scales_dtype: sdt,
    })
}

/// The output quantization of `m`: the declared settings (an rmlx.toml override first, then
/// the family's fixed settings as mlx-lm's `quant_predicate` gives them, then the default);
/// dense when the input features are not a multiple of the group size.
fn target_of(
    src: &SourceModel,
    m: &Module,
    quantize: &Quantize,
    matched: &mut [bool],
    not_divisible: &mut Vec<String>,
) -> Target {
    let spec = match quantize {
        Quantize::AsSource => return Target::plain(m.source),
        Quantize::Dense => return Target::plain(None),
        Quantize::Quantize(spec) => spec,
    };
    let user = spec.overrides.iter().position(|o| o.matches(&m.path));
    if let Some(i) = user {
        matched[i] = true;
    }
    let fixed = user
        .is_none()
        .then(|| (src.rules.fixed_quant)(&m.path))
        .flatten();
    let wanted = match fixed {
        // mlx-lm checks the default group size before asking its predicate.
        Some(_) if !m.cols.is_multiple_of(spec.default.group_size as usize) => None,
        Some(f) => Some(QuantParams {
            group_size: f.group_size,
            bits: f.bits,
            mode: QuantMode::Affine,
        }),
        None => spec.for_module(&m.path),
    };
    match wanted {
        Some(p) if !m.cols.is_multiple_of(p.group_size as usize) => {
            not_divisible.push(m.path.clone());
            Target::plain(None)
        }
        None if fixed.is_some() => {
            not_divisible.push(m.path.clone());
            Target::plain(None)
        }
        other => Target {
            params: other,
            fixed: fixed.is_some() && other.is_some(),
        },
    }
}

/// What a module becomes.
struct Target {
    params: Option<QuantParams>,
    /// Set by the family's fixed settings (written into config.json as mlx-lm writes them).
    fixed: bool,
}

impl Target {
    fn plain(params: Option<QuantParams>) -> Self {
        Self {
            params,
            fixed: false,
        }
    }
}

fn module_item(
    src: &SourceModel,
    m: &Module,
    target: Target,
    dtype: Option<MlxDtype>,
    explicit: bool,
) -> Item {
    let action = match (m.source, target.params) {
        (None, None) => Action::Dense,
        (Some(s), Some(t)) if s == t => Action::Keep(s),
        (from, Some(to)) => Action::Quantize { from, to },
        (Some(s), None) => Action::Dequantize(s),
    };
    let dtype = dtype.filter(|_| !(src.rules.keeps_dtype)(&format!("{}.weight", m.path)));
    // Dtype of floats produced for this module.
    let float_dtype = match m.source {
        None => dtype.unwrap_or(m.weight_dtype),
        Some(s) => dtype.unwrap_or(match (s.mode, m.scales_dtype) {
            (QuantMode::Affine, Some(d)) => d,
            _ => MlxDtype::Bfloat16,
        }),
    };
    let mut shape = m.lead.clone();
    shape.push(m.cols);
    let outputs = match action {
        Action::Dense | Action::Dequantize(_) => vec![TensorSpec {
            name: format!("{}.weight", m.path),
            dtype: float_dtype,
            parameters: shape.iter().product::<usize>() as u64,
            shape,
        }],
        Action::Keep(q) => {
            let scales_dtype = match (explicit, dtype) {
                (true, Some(d)) if m.scales_dtype.is_some_and(is_float) => d,
                _ => m.scales_dtype.expect("quantized source has scales"),
            };
            quantized_specs(&m.path, &m.lead, m.cols, q, scales_dtype, m.weight_dtype)
        }
        Action::Quantize { to, .. } => {
            let sd = if to.mode == QuantMode::Affine {
                float_dtype
            } else {
                MlxDtype::Uint8
            };
            quantized_specs(&m.path, &m.lead, m.cols, to, sd, MlxDtype::Uint32)
        }
    };
    Item {
        name: m.path.clone(),
        module: true,
        action,
        float_dtype: Some(float_dtype),
        fixed: target.fixed,
        outputs,
    }
}

fn plain_item(src: &SourceModel, name: &str, dtype: Option<MlxDtype>) -> Result<Item> {
    let info = src.out(name).expect("listed tensor");
    let sdt = mlx_dtype(info.dtype).ok_or_else(|| unsupported_dtype(src, name, info.dtype))?;
    let out = if is_float(sdt) && !(src.rules.keeps_dtype)(name) {
        dtype.unwrap_or(sdt)
    } else {
        sdt
    };
    Ok(Item {
        name: name.to_string(),
        module: false,
        action: Action::Dense,
        float_dtype: Some(out),
        fixed: false,
        outputs: vec![TensorSpec {
            name: name.to_string(),
            dtype: out,
            shape: info.shape.clone(),
            parameters: info.shape.iter().product::<usize>() as u64,
        }],
    })
}

/// mlx-lm's `total_parameters` counts the parameters of leaf modules only: a tensor held by a
/// module that has child modules (an attention block's `sinks`, a decoder layer's scalar)
/// counts for nothing.
fn count_leaf_parameters(items: &mut [Item]) {
    let mut parents: HashSet<String> = HashSet::new();
    for spec in items.iter().flat_map(|i| &i.outputs) {
        let parts: Vec<&str> = spec.name.split('.').collect();
        for n in 1..parts.len().saturating_sub(1) {
            parents.insert(parts[..n].join("."));
        }
    }
    for item in items.iter_mut().filter(|i| !i.module) {
        for spec in &mut item.outputs {
            let owner = spec.name.rsplit_once('.').map_or("", |(o, _)| o);
            if owner.is_empty() || parents.contains(owner) {
                spec.parameters = 0;
            }
        }
    }
}

/// The `quantization` block of the output config, if anything is quantized: the default,
/// then (in module order) every module quantized otherwise, and every module with the
/// family's fixed settings, written as mlx-lm writes them.
fn quantization_block(src: &SourceModel, quantize: &Quantize, items: &[Item]) -> Option<Value> {
    let final_params: Vec<(&str, QuantParams, bool)> = items
        .iter()
        .filter_map(|i| match i.action {
            Action::Keep(q) | Action::Quantize { to: q, .. } => Some((i.name.as_str(), q, i.fixed)),
            _ => None,
        })
        .collect();
    if final_params.is_empty() {
        return None;
    }
    let default = match quantize {
        Quantize::Quantize(spec) => spec.default,
        _ => src
            .quantization
            .as_ref()
            .map(|q| q.default)
            .unwrap_or_else(|| {
                let params: Vec<(&str, QuantParams)> =
                    final_params.iter().map(|p| (p.0, p.1)).collect();
                most_common(&params)
            }),
    };
    let mut block = Map::new();
    block.insert("group_size".into(), json!(default.group_size));
    block.insert("bits".into(), json!(default.bits));
    block.insert("mode".into(), json!(default.mode.as_str()));
    let mut specific: Vec<&(&str, QuantParams, bool)> = final_params
        .iter()
        .filter(|(_, q, fixed)| *fixed || *q != default)
        .collect();
    specific.sort_by(|a, b| natural_cmp(a.0, b.0));
    for (path, q, fixed) in specific {
        let entry = if *fixed {
            json!({"group_size": q.group_size, "bits": q.bits})
        } else {
            params_json(q)
        };
        block.insert(path.to_string(), entry);
    }
    Some(Value::Object(block))
}

fn quant_overrides(q: &Quantize) -> &[ModuleOverride] {
    match q {
        Quantize::Quantize(spec) => &spec.overrides,
        _ => &[],
    }
}

fn most_common(params: &[(&str, QuantParams)]) -> QuantParams {
    let mut counts: Vec<(QuantParams, usize)> = Vec::new();
    for (_, q) in params {
        match counts.iter_mut().find(|c| c.0 == *q) {
            Some(c) => c.1 += 1,
            None => counts.push((*q, 1)),
        }
    }
    counts
        .into_iter()
        .max_by_key(|c| c.1)
        .map(|c| c.0)
        .expect("non-empty")
}

fn quantized_specs(
    path: &str,
    lead: &[usize],
    cols: usize,
    q: QuantParams,
    scales_dtype: MlxDtype,
    weight_dtype: MlxDtype,
) -> Vec<TensorSpec> {
    let groups = cols / q.group_size as usize;
    let with_last = |last: usize| {
        let mut v = lead.to_vec();
        v.push(last);
        v
    };
    let rows: usize = lead.iter().product();
    let mut v = vec![
        TensorSpec {
            name: format!("{path}.weight"),
            dtype: weight_dtype,
            shape: with_last(cols * q.bits as usize / 32),
            parameters: (rows * cols) as u64,
        },
        TensorSpec {
            name: format!("{path}.scales"),
            dtype: scales_dtype,
            shape: with_last(groups),
            parameters: 0,
        },
    ];
    if q.mode == QuantMode::Affine {
        v.push(TensorSpec {
            name: format!("{path}.biases"),
            dtype: scales_dtype,
            shape: with_last(groups),
            parameters: 0,
        });
    }
    v
}

/// Checks the (logical) shapes of the standard tensors against config.json.
fn check_shapes(
    src: &SourceModel,
    c: &ModelConfig,
    modules: &[Module],
    plain: &[String],
) -> Result<()> {
    let file_of = |name: &str| {
        src.file_of(name).file_name().map_or_else(
            || "the weights".to_string(),
            |f| f.to_string_lossy().into_owned(),
        )
    };
    let mismatch = |name: &str, have: &[usize], want: &[(usize, &'static str)]| -> Result<()> {
        if have.len() != want.len() {
            let key = want.first().map_or("hidden_size", |w| w.1);
            return Err(src.at_key(
                format!(
                    "`{name}` in {} has shape {have:?}, config.json implies {:?}",
                    file_of(name),
                    want.iter().map(|w| w.0).collect::<Vec<_>>()
                ),
                key,
                "disagrees with the weights".into(),
            ));
        }
        for (h, (w, key)) in have.iter().zip(want) {
            if h != w {
                return Err(src
                    .at_key(
                        format!(
                            "`{name}` in {} has shape {have:?}, but config.json implies {:?}",
                            file_of(name),
                            want.iter().map(|w| w.0).collect::<Vec<_>>()
                        ),
                        key,
                        format!("implies {w}, the weights have {h}"),
                    )
                    .with_help(
                        "config.json and the weights come from different models (or a broken \
                         conversion)",
                    ));
            }
        }
        Ok(())
    };
    let hidden = (c.hidden_size, "hidden_size");
    let vocab = (c.vocab_size, "vocab_size");
    let inter = (c.intermediate_size, "intermediate_size");
    let q_out = (c.num_attention_heads * c.head_dim, "num_attention_heads");
    let kv_out = (c.num_key_value_heads * c.head_dim, "num_key_value_heads");
    let mut layers_seen = std::collections::BTreeSet::new();
    let mut embed = false;
    for m in modules {
        let p = m.path.as_str();
        let mut have = m.lead.clone();
        have.push(m.cols);
        let name = format!("{p}.weight");
        if p == "model.embed_tokens" {
            embed = true;
            mismatch(&name, &have, &[vocab, hidden])?;
        } else if p == "lm_head" {
            mismatch(&name, &have, &[vocab, hidden])?;
        } else if let Some(rest) = p.strip_prefix("model.layers.") {
            let (idx, sub) = rest.split_once('.').unwrap_or((rest, ""));
            if let Ok(i) = idx.parse::<usize>() {
                layers_seen.insert(i);
            }
            let want: Option<[(usize, &'static str); 2]> = match sub {
                "self_attn.q_proj" => Some([q_out, hidden]),
                "self_attn.k_proj" | "self_attn.v_proj" => Some([kv_out, hidden]),
                "self_attn.o_proj" => Some([hidden, q_out]),
                "mlp.gate_proj" | "mlp.up_proj" => Some([inter, hidden]),
                "mlp.down_proj" => Some([hidden, inter]),
                _ => None,
            };
            if let Some(w) = want {
                mismatch(&name, &have, &w)?;
            }
        }
    }
    for name in plain {
        if let Some(rest) = name.strip_prefix("model.layers.") {
            if let Some(i) = rest.split('.').next().and_then(|i| i.parse::<usize>().ok()) {
                layers_seen.insert(i);
            }
            if name.ends_with("layernorm.weight") {
                let have = &src.out(name).expect("listed").shape;
                mismatch(name, have, &[hidden])?;
            }
        } else if name == "model.norm.weight" {
            let have = &src.out(name).expect("listed").shape;
            mismatch(name, have, &[hidden])?;
        }
    }
    if !embed {
        return Err(Diagnostic::error(
            CODE_MISMATCH,
            "the weights have no `model.embed_tokens.weight`",
        )
        .with_file(src.dir.join("model.safetensors"))
        .with_help("is this a supported architecture in Hugging Face layout?"));
    }
    let n = c.num_hidden_layers;
    let expected: std::collections::BTreeSet<usize> = (0..n).collect();
    if layers_seen != expected {
        let have = layers_seen.len();
        let msg = match layers_seen.iter().next_back() {
            Some(max) if *max >= n => format!(
                "the weights have layers up to {max} ({have} layers), but config.json declares \
                 {n}"
            ),
            _ => format!("the weights have {have} layers, but config.json declares {n}"),
        };
        return Err(src.at_key(
            msg,
            "num_hidden_layers",
            format!("{n} layers declared, the weights have {have}"),
        ));
    }
    Ok(())
}

/// The output config.json: the source's, with `eos_token_id` from generation_config.json
/// (as mlx-lm's `load_config` does), without `_name_or_path`/`vision_config`, with the
/// `quantization` block and its `quantization_config` copy when anything is quantized,
/// `torch_dtype` set to a declared dtype, keys sorted, written like Python's
/// `json.dump(config, indent=4)`.
pub fn config_json(
    src: &SourceModel,
    plan: &Plan,
    declared_dtype: Option<Dtype>,
) -> Result<String> {
    let mut raw = src.raw.clone();
    let gen = src.dir.join("generation_config.json");
    if let Ok(text) = std::fs::read_to_string(&gen) {
        if let Ok(v) = serde_json::from_str::<Value>(&text) {
            if let Some(eos) = v.get("eos_token_id").filter(|e| truthy(e)) {
                raw.insert("eos_token_id".into(), eos.clone());
            }
        }
    }
    for k in [
        "_name_or_path",
        "vision_config",
        "quantization",
        "quantization_config",
    ] {
        raw.remove(k);
    }
    (src.rules.config_fix)(&mut raw);
    if let Some(d) = declared_dtype {
        raw.insert("torch_dtype".into(), json!(d.as_str()));
    }
    if let Some(q) = &plan.quantization {
        raw.insert("quantization".into(), q.clone());
        raw.insert("quantization_config".into(), q.clone());
    }
    let sorted: BTreeMap<String, Value> = raw.into_iter().collect();
    let obj: Map<String, Value> = sorted.into_iter().collect();
    pyjson::dumps(&Value::Object(obj), 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order() {
        let mut v = vec![
            "model.layers.10.a",
            "model.layers.9.a",
            "lm_head",
            "model.embed",
        ];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            v,
            [
                "lm_head",
                "model.embed",
                "model.layers.9.a",
                "model.layers.10.a"
            ]
        );
    }

    /// mlx-lm's `total_parameters` skips tensors of modules that have child modules.
    #[test]
    fn parameters_of_non_leaf_modules_are_not_counted() {
        let item = |name: &str, module: bool| Item {
            name: name.into(),
            module,
            action: Action::Dense,
            float_dtype: None,
            fixed: false,
            outputs: vec![TensorSpec {
                name: name.into(),
                dtype: MlxDtype::Float32,
                shape: vec![4],
                parameters: 4,
            }],
        };
        let mut items = vec![
            item("model.layers.0.self_attn.sinks", false),
            item("model.layers.0.self_attn.q_proj.weight", true),
            item("model.norm.weight", false),
            item("model.layers.0.layer_scalar", false),
        ];
        count_leaf_parameters(&mut items);
        let counted: Vec<u64> = items.iter().map(|i| i.outputs[0].parameters).collect();
        assert_eq!(counted, [0, 4, 4, 0]);
    }

    #[test]
    fn conversion_dtype_follows_mlx_lm() {
        let m = |s: &str| serde_json::from_str::<Map<String, Value>>(s).unwrap();
        assert_eq!(
            conversion_dtype(&m(r#"{"torch_dtype":"bfloat16"}"#), None),
            Some(MlxDtype::Bfloat16)
        );
        assert_eq!(
            conversion_dtype(&m(r#"{"torch_dtype":"bfloat16"}"#), Some(Dtype::Float32)),
            Some(MlxDtype::Float32)
        );
        // mlx-lm reads `torch_dtype`, not the newer top-level `dtype`.
        assert_eq!(conversion_dtype(&m(r#"{"dtype":"float16"}"#), None), None);
        assert_eq!(
            conversion_dtype(&m(r#"{"text_config":{"dtype":"float16"}}"#), None),
            Some(MlxDtype::Float16)
        );
        assert_eq!(
            conversion_dtype(&m(r#"{"torch_dtype":"int8"}"#), None),
            None
        );
    }
}
