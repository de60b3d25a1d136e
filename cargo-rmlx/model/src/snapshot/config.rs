//! `config.json` of a model directory: the architecture hyper-parameters, the MLX
//! quantization block (with per-module overrides) and the EOS/BOS ids, parsed with errors that
//! point into the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::diagnostic::{code, Code, Diagnostic, Result};

/// Upper bounds of the sizes in config.json (and the GGUF metadata they come from), far above
/// any released model: a corrupt value is reported before anything is allocated from it.
pub const SIZE_LIMITS: &[(&str, u64)] = &[
    ("hidden_size", 1 << 17),
    ("intermediate_size", 1 << 20),
    ("num_hidden_layers", 1 << 12),
    ("num_attention_heads", 1 << 12),
    ("num_key_value_heads", 1 << 12),
    ("head_dim", 1 << 12),
    ("vocab_size", 1 << 24),
    ("max_position_embeddings", 1 << 28),
    ("sliding_window", 1 << 28),
];

/// The upper bound of a config.json size key, if it has one.
pub fn size_limit(key: &str) -> Option<u64> {
    SIZE_LIMITS.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// Largest MLX quantization group size accepted (MLX itself uses 16 to 128).
pub const MAX_GROUP_SIZE: u64 = 1 << 12;

/// The quantization settings of one module (or the default for all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantParams {
    /// Elements sharing one scale (and bias).
    pub group_size: i32,
    /// Bits per element.
    pub bits: i32,
    /// MLX quantization mode.
    pub mode: QuantMode,
}

/// MLX quantization modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantMode {
    /// `scale * q + bias` per group.
    Affine,
    /// Microscaling FP4 (e2m1 with e8m0 scales, groups of 32).
    Mxfp4,
    /// Microscaling FP8 (e4m3, groups of 32).
    Mxfp8,
    /// NVIDIA FP4 (groups of 16, e4m3 scales).
    Nvfp4,
}

impl QuantMode {
    /// The name MLX and mlx-lm use.
    pub fn as_str(self) -> &'static str {
        match self {
            QuantMode::Affine => "affine",
            QuantMode::Mxfp4 => "mxfp4",
            QuantMode::Mxfp8 => "mxfp8",
            QuantMode::Nvfp4 => "nvfp4",
        }
    }

    /// Parses an MLX mode name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "affine" => QuantMode::Affine,
            "mxfp4" => QuantMode::Mxfp4,
            "mxfp8" => QuantMode::Mxfp8,
            "nvfp4" => QuantMode::Nvfp4,
            _ => return None,
        })
    }

    /// Whether the mode stores a per-group bias next to the scales.
    pub fn has_biases(self) -> bool {
        self == QuantMode::Affine
    }
}

/// The `quantization` block: defaults plus per-module overrides keyed by module path
/// (`model.embed_tokens`, `model.layers.3.mlp.down_proj`); `None` means "kept dense".
#[derive(Debug, Clone, PartialEq)]
pub struct Quantization {
    /// Settings for modules without an override.
    pub default: QuantParams,
    /// Per-module settings.
    pub overrides: BTreeMap<String, Option<QuantParams>>,
}

impl Quantization {
    /// Settings for the module at `path` (an override, else the default).
    pub fn for_module(&self, path: &str) -> Option<QuantParams> {
        match self.overrides.get(path) {
            Some(o) => *o,
            None => Some(self.default),
        }
    }
}

/// RoPE frequency scaling (`rope_scaling`).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Positions divided by `factor`.
    Linear {
        /// Scale factor.
        factor: f32,
    },
    /// Llama 3's wavelength-dependent scaling.
    Llama3 {
        /// Scale factor.
        factor: f32,
        /// Low-frequency factor.
        low_freq_factor: f32,
        /// High-frequency factor.
        high_freq_factor: f32,
        /// Context length the model was trained with.
        original_max_position_embeddings: f32,
    },
    /// Phi-3's "longrope" / "su" scaling as mlx-lm applies it: the long-context factors at
    /// every length, and the rotated features scaled by `sqrt(1 + ln(f) / ln(original))`
    /// where `f = max_position_embeddings / original_max_position_embeddings > 1`.
    LongRope {
        /// Per-frequency factors for long contexts.
        long_factor: Vec<f32>,
        /// Context length the model was trained with.
        original_max_position_embeddings: f32,
        /// Context length it was extended to.
        max_position_embeddings: f32,
    },
    /// YaRN (GPT-OSS, DeepSeek), as mlx-lm computes it: frequencies blended between
    /// interpolation and extrapolation over a ramp of dimensions, inputs scaled by `mscale`.
    Yarn {
        /// Scale factor.
        factor: f32,
        /// Context length the model was trained with.
        original_max_position_embeddings: f32,
        /// Rotations at which the ramp starts (fast end).
        beta_fast: f32,
        /// Rotations at which the ramp ends (slow end).
        beta_slow: f32,
        /// Attention-magnitude scale.
        mscale: f32,
        /// Attention-magnitude scale over all dimensions.
        mscale_all_dim: f32,
    },
}

/// What config.json's absent keys common to every family mean for one family — mlx-lm
/// 0.32.2's `ModelArgs` defaults, declared by each registry entry (`arch::Architecture::keys`)
/// and applied once, here, with each default taken logged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KeyDefaults {
    /// `head_dim`; `None`: `hidden_size / num_attention_heads`.
    pub head_dim: Option<usize>,
    /// `num_key_value_heads`; `None`: `num_attention_heads`.
    pub num_key_value_heads: Option<usize>,
    /// `rope_theta`.
    pub rope_theta: f32,
    /// `rms_norm_eps`.
    pub rms_norm_eps: f32,
    /// `tie_word_embeddings`.
    pub tie_word_embeddings: bool,
    /// Without top-level `rope_theta` / `rope_scaling`, read them from transformers 5's
    /// `rope_parameters` (mlx-lm's qwen3 does).
    pub rope_parameters: bool,
    /// The keys above that mlx-lm refuses a config without: the fallback (transformers' config
    /// default where it is a constant) is taken with a warning.
    pub required: &'static [&'static str],
}

impl KeyDefaults {
    /// mlx-lm's llama (also olmo2's): head width and KV heads from the query heads, base
    /// 10000, tied embeddings; `rms_norm_eps` required.
    pub const LLAMA: Self = Self {
        head_dim: None,
        num_key_value_heads: None,
        rope_theta: 10_000.0,
        rms_norm_eps: 1e-6,
        tie_word_embeddings: true,
        rope_parameters: false,
        required: &["rms_norm_eps"],
    };
}

/// A parsed `config.json`.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// Where it was read from.
    pub path: PathBuf,
    /// `model_type`.
    pub model_type: String,
    /// The text model's `model_type`: `text_config.model_type` of a multimodal wrapper
    /// (`crate::arch::Wrapper`), else `model_type`. The registry entry running it is chosen
    /// by this.
    pub text_model_type: String,
    /// Prefix of the text model's tensor names (`language_model.` in wrappers, else empty).
    pub weight_prefix: String,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP (0 when config.json declares only expert widths).
    pub intermediate_size: usize,
    /// Number of transformer blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA).
    pub num_key_value_heads: usize,
    /// Per-head width.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// RoPE base.
    pub rope_theta: f32,
    /// RoPE scaling, if any.
    pub rope_scaling: Option<RopeScaling>,
    /// Maximum context length.
    pub max_position_embeddings: usize,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Whether the LM head reuses the embedding.
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v/o projections.
    pub attention_bias: bool,
    /// Biases on MLP projections.
    pub mlp_bias: bool,
    /// `bos_token_id`, if given.
    pub bos_token_id: Option<u32>,
    /// `eos_token_id` (int or list).
    pub eos_token_ids: Vec<u32>,
    /// `torch_dtype` / `dtype`, if given.
    pub torch_dtype: Option<String>,
    /// The MLX quantization block, if the weights are quantized.
    pub quantization: Option<Quantization>,
    /// The whole file (a wrapper's: its text config with the outer quantization, EOS/BOS and
    /// dtype keys), for architecture-specific keys.
    pub raw: Map<String, Value>,
    /// The file's text (diagnostics point into it).
    pub text: Arc<str>,
}

/// Reads a JSON file, turning syntax errors into a located diagnostic.
pub fn read_json(path: &Path, code: impl Into<Code>) -> Result<(Arc<str>, Value)> {
    let code_prefix = code.into();
    let text = std::fs::read_to_string(path)
        .map_err(|e| Diagnostic::io(code_prefix, "cannot read", path, &e))?;
    parse_json(path, text.into(), code_prefix)
}

/// Parses the JSON `text` of `path`, turning syntax errors into a located diagnostic.
pub fn parse_json(
    path: &Path,
    text: Arc<str>,
    code_prefix: impl Into<Code>,
) -> Result<(Arc<str>, Value)> {
    let value = serde_json::from_str::<Value>(&text).map_err(|e| {
        let span = char_at(
            &text,
            crate::diagnostic::offset_at(&text, e.line(), e.column()),
        );
        Diagnostic::error(code_prefix, format!("{} is not valid JSON", path.display()))
            .with_file(path)
            .with_source(text.clone())
            .with_span(span, e.to_string())
    })?;
    Ok((text, value))
}

/// The span of the character at (or containing) byte `offset`; empty at the end of the text.
fn char_at(text: &str, offset: usize) -> std::ops::Range<usize> {
    let mut start = offset.min(text.len());
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    let len = text[start..].chars().next().map_or(0, char::len_utf8);
    start..start + len
}

impl ModelConfig {
    /// Reads `<dir>/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        if !path.is_file() {
            return Err(Diagnostic::error(
                code::Snapshot::MissingConfig,
                format!("{} has no config.json", dir.display()),
            )
            .with_file(&path)
            .with_help("a model directory holds config.json, *.safetensors and tokenizer.json"));
        }
        let (text, value) = read_json(&path, code::Snapshot::Config)?;
        Self::from_value(&path, text, value)
    }

    /// Parses the text of a config.json read from `path`.
    pub fn from_text(path: &Path, text: &str) -> Result<Self> {
        let (text, value) = parse_json(path, text.into(), code::Snapshot::Config)?;
        Self::from_value(path, text, value)
    }

    fn from_value(path: &Path, text: Arc<str>, value: Value) -> Result<Self> {
        let Value::Object(raw) = value else {
            return Err(Diagnostic::error(
                code::Snapshot::Config,
                "config.json must hold a JSON object",
            )
            .with_file(path));
        };
        let model_type = Fields {
            path,
            text: &text,
            raw: &raw,
        }
        .string("model_type")?;
        let (raw, weight_prefix, text_model_type) = match crate::arch::wrapper(&model_type) {
            Some(w) => {
                let (merged, inner) = w.text_config(&raw);
                (merged, w.prefix.to_string(), inner)
            }
            None => (raw, String::new(), model_type.clone()),
        };
        let fields = Fields {
            path,
            text: &text,
            raw: &raw,
        };
        let Some(arch) = crate::arch::lookup(&text_model_type) else {
            let what = if text_model_type == model_type {
                format!("unsupported model_type `{model_type}`")
            } else {
                format!("unsupported text model_type `{text_model_type}` inside `{model_type}`")
            };
            return Err(fields
                .located(code::Snapshot::UnsupportedArchitecture, what, "model_type")
                .with_help(format!(
                    "supported architectures: {}",
                    crate::arch::supported_model_types().join(", ")
                )));
        };
        let keys = Defaults {
            fields: &fields,
            of: (arch.keys)(&text_model_type),
            family: &text_model_type.clone(),
        };
        let hidden_size = fields.usize("hidden_size")?;
        let num_attention_heads = fields.usize("num_attention_heads")?;
        if num_attention_heads == 0 {
            return Err(fields.located(
                code::Snapshot::Config,
                "num_attention_heads must be positive",
                "num_attention_heads",
            ));
        }
        let num_key_value_heads = match fields.opt_usize("num_key_value_heads")? {
            Some(n) => n,
            None => keys.take(
                "num_key_value_heads",
                keys.of.num_key_value_heads.unwrap_or(num_attention_heads),
            ),
        };
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(fields.located(
                code::Snapshot::Config,
                format!(
                    "num_key_value_heads ({num_key_value_heads}) must divide \
                     num_attention_heads ({num_attention_heads})"
                ),
                "num_key_value_heads",
            ));
        }
        let head_dim = match fields.opt_usize("head_dim")? {
            Some(n) => n,
            None => keys.take(
                "head_dim",
                keys.of
                    .head_dim
                    .unwrap_or(hidden_size / num_attention_heads),
            ),
        };
        let max_position_embeddings = match fields.opt_usize("max_position_embeddings")? {
            Some(n) => n,
            None => {
                tracing::warn!(
                    "{}: no max_position_embeddings; assuming a context of 4096 tokens",
                    path.display()
                );
                4096
            }
        };
        let vocab_size = fields.usize("vocab_size")?;
        let eos_token_ids = fields.ids("eos_token_id", vocab_size)?;
        let bos_token_id = match raw.get("bos_token_id") {
            Some(Value::Array(_)) => {
                return Err(fields.located(
                    code::Snapshot::Config,
                    "`bos_token_id` must be one integer",
                    "bos_token_id",
                ))
            }
            _ => fields.ids("bos_token_id", vocab_size)?.first().copied(),
        };
        let quantization = match fields.quantization_block()? {
            None => native_microscaling(&raw),
            block => block,
        };
        let rope_scaling = match keys.rope_key("rope_scaling") {
            None | Some(Value::Null) => None,
            Some(v) => fields.rope_scaling(v, max_position_embeddings)?,
        };
        Ok(Self {
            path: path.to_path_buf(),
            model_type,
            text_model_type,
            weight_prefix,
            hidden_size,
            intermediate_size: match fields.opt_usize("intermediate_size")? {
                Some(n) => n,
                // Models whose every layer is a mixture of experts (Qwen3.5-MoE) declare only
                // the experts' widths; architectures that need a dense MLP check their tensors.
                None if raw.contains_key("moe_intermediate_size") => 0,
                None => return Err(fields.missing("intermediate_size")),
            },
            num_hidden_layers: fields.usize("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: keys.f32("rms_norm_eps", keys.of.rms_norm_eps)?,
            rope_theta: keys.rope_theta()?,
            rope_scaling,
            max_position_embeddings,
            vocab_size,
            tie_word_embeddings: match fields.opt_bool("tie_word_embeddings")? {
                Some(b) => b,
                None => keys.take("tie_word_embeddings", keys.of.tie_word_embeddings),
            },
            attention_bias: fields.opt_bool("attention_bias")?.unwrap_or(false),
            mlp_bias: fields.opt_bool("mlp_bias")?.unwrap_or(false),
            bos_token_id,
            eos_token_ids,
            torch_dtype: raw
                .get("torch_dtype")
                .or_else(|| raw.get("dtype"))
                .and_then(Value::as_str)
                .map(str::to_string),
            quantization,
            raw: raw.clone(),
            text: text.clone(),
        })
    }

    /// The `quantization` block of a config.json read from `path` (without requiring a
    /// supported architecture: the build reads it for every source it converts).
    pub fn quantization_of(
        path: &Path,
        text: &Arc<str>,
        raw: &Map<String, Value>,
    ) -> Result<Option<Quantization>> {
        Fields { path, text, raw }.quantization_block()
    }

    /// An error about `key`, pointing at it in config.json.
    pub fn located(&self, code: impl Into<Code>, msg: impl Into<String>, key: &str) -> Diagnostic {
        Fields {
            path: &self.path,
            text: &self.text,
            raw: &self.raw,
        }
        .located(code, msg, key)
    }

    /// RoPE scaling declared under `key` (transformers 5's `rope_parameters`, read by some
    /// architectures instead of `rope_scaling`), parsed and checked like `rope_scaling`.
    pub fn rope_scaling_in(&self, key: &str) -> Result<Option<RopeScaling>> {
        match self.raw.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => Fields {
                path: &self.path,
                text: &self.text,
                raw: &self.raw,
            }
            .rope_scaling(v, self.max_position_embeddings),
        }
    }

    /// Checks the sizes that decide allocations against the tensors actually present: the
    /// number of `model.layers.<i>` blocks must be `num_hidden_layers`.
    pub fn check_tensors<'a>(&self, names: impl Iterator<Item = &'a str>) -> Result<()> {
        let present = names
            .filter_map(|n| {
                n.strip_prefix(self.weight_prefix.as_str())?
                    .strip_prefix("model.layers.")?
                    .split('.')
                    .next()
            })
            .filter_map(|i| i.parse::<usize>().ok())
            .max()
            .map_or(0, |m| m + 1);
        if present == self.num_hidden_layers {
            return Ok(());
        }
        let holds = match present {
            0 => format!("no `{}model.layers.*` tensors", self.weight_prefix),
            n => format!(
                "{n} ({p}model.layers.0 to {p}model.layers.{})",
                n - 1,
                p = self.weight_prefix
            ),
        };
        Err(self
            .located(
                code::Snapshot::ConfigMismatch,
                format!(
                    "config.json declares {} layers, the weights hold {holds}",
                    self.num_hidden_layers
                ),
                "num_hidden_layers",
            )
            .with_help("config.json and the weights belong to different models, or the conversion was cut short"))
    }
}

/// A checkpoint quantized to a microscaling format at release (gpt-oss:
/// `quantization_config.quant_method = "mxfp4"`) has no MLX `quantization` block; mlx-lm then
/// quantizes, in that mode (group 32), exactly the modules stored with scales. So do the
/// loader (the default applies only where `.scales` exist, `LoadCtx::quant`) and the build.
pub fn native_microscaling(raw: &Map<String, Value>) -> Option<Quantization> {
    let method = raw
        .get("quantization_config")?
        .get("quant_method")?
        .as_str()?;
    let (mode, bits) = match method {
        "mxfp4" => (QuantMode::Mxfp4, 4),
        "mxfp8" => (QuantMode::Mxfp8, 8),
        _ => return None,
    };
    tracing::debug!("quantization_config: {method} weights where the checkpoint stores scales");
    Some(Quantization {
        default: QuantParams {
            group_size: 32,
            bits,
            mode,
        },
        overrides: BTreeMap::new(),
    })
}

/// One token id: a non-negative integer below 2^32 (never truncated); `None` otherwise.
pub fn token_id(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|n| u32::try_from(n).ok())
}

/// An integer or list of integers as token ids (the one parser of `eos_token_id` and its
/// kin); `None` when any is not a [`token_id`].
pub fn token_ids(v: &Value) -> Option<Vec<u32>> {
    match v {
        Value::Number(_) => token_id(v).map(|n| vec![n]),
        Value::Array(a) => a.iter().map(token_id).collect(),
        _ => None,
    }
}

/// Typed access to config keys with errors that point at the key in the file.
struct Fields<'a> {
    path: &'a Path,
    text: &'a Arc<str>,
    raw: &'a Map<String, Value>,
}

/// A family's [`KeyDefaults`] applied to one config.json.
struct Defaults<'a> {
    fields: &'a Fields<'a>,
    of: KeyDefaults,
    family: &'a str,
}

impl Defaults<'_> {
    /// `value`, the family's default for the absent `key`, logged (a warning where mlx-lm
    /// would refuse the config).
    fn take<T: std::fmt::Display>(&self, key: &str, value: T) -> T {
        let file = self.fields.path.display();
        if self.of.required.contains(&key) {
            tracing::warn!(
                "{file}: no `{key}`; mlx-lm's {} requires it, assuming {value}",
                self.family
            );
        } else {
            tracing::debug!(
                "{file}: no `{key}`; using mlx-lm's {} default {value}",
                self.family
            );
        }
        value
    }

    /// The number `key`, else `default` (logged).
    fn f32(&self, key: &str, default: f32) -> Result<f32> {
        match self.fields.opt_f32(key)? {
            Some(x) => Ok(x),
            None => Ok(self.take(key, default)),
        }
    }

    /// The top-level `key`, else (for families reading transformers 5's nesting) the whole
    /// `rope_parameters` object standing for it.
    fn rope_key(&self, key: &str) -> Option<&Value> {
        let raw = self.fields.raw;
        match raw.get(key) {
            None | Some(Value::Null) if self.of.rope_parameters => raw.get("rope_parameters"),
            v => v,
        }
    }

    /// `rope_theta`, else `rope_parameters.rope_theta` where the family reads it, else the
    /// family's default.
    fn rope_theta(&self) -> Result<f32> {
        if let Some(x) = self.fields.opt_f32("rope_theta")? {
            return Ok(x);
        }
        let nested = self
            .rope_key("rope_theta")
            .and_then(|p| p.get("rope_theta"));
        match nested {
            None | Some(Value::Null) => Ok(self.take("rope_theta", self.of.rope_theta)),
            Some(v) => v.as_f64().map(|x| x as f32).ok_or_else(|| {
                self.fields.located(
                    code::Snapshot::Config,
                    format!("`rope_parameters.rope_theta` must be a number, found {v}"),
                    "rope_parameters",
                )
            }),
        }
    }
}

impl Fields<'_> {
    fn located(&self, code: impl Into<Code>, msg: impl Into<String>, key: &str) -> Diagnostic {
        let d = Diagnostic::error(code, msg).with_file(self.path);
        let needle = format!("\"{key}\"");
        match self.text.find(&needle) {
            Some(start) => d
                .with_source(self.text.clone())
                .with_span(start..start + needle.len(), "here"),
            None => d,
        }
    }

    fn missing(&self, key: &str) -> Diagnostic {
        Diagnostic::error(
            code::Snapshot::Config,
            format!("config.json has no `{key}`"),
        )
        .with_file(self.path)
    }

    fn string(&self, key: &str) -> Result<String> {
        match self.raw.get(key) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(self.located(
                code::Snapshot::Config,
                format!("`{key}` must be a string"),
                key,
            )),
            None => Err(self.missing(key)),
        }
    }

    fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| self.missing(key))
    }

    /// A size, checked against [`size_limit`] before anything is allocated from it.
    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        let n = match self.raw.get(key) {
            None | Some(Value::Null) => return Ok(None),
            Some(v) => v.as_u64().ok_or_else(|| {
                self.located(
                    code::Snapshot::Config,
                    format!("`{key}` must be a non-negative integer, found {v}"),
                    key,
                )
            })?,
        };
        match size_limit(key) {
            Some(max) if n > max => Err(self
                .located(
                    code::Snapshot::SizeLimit,
                    format!("`{key}` is {n}, above the limit of {max}"),
                    key,
                )
                .with_help("config.json is corrupt or not for this kind of model")),
            _ => Ok(Some(n as usize)),
        }
    }

    /// Token ids (an integer or a list) below `vocab_size`; absent or null is empty.
    fn ids(&self, key: &str, vocab_size: usize) -> Result<Vec<u32>> {
        let v = match self.raw.get(key) {
            None | Some(Value::Null) => return Ok(Vec::new()),
            Some(v) => v,
        };
        let values: Vec<&Value> = match v {
            Value::Array(a) => a.iter().collect(),
            other => vec![other],
        };
        let mut ids = Vec::with_capacity(values.len());
        for x in values {
            match (x.as_u64(), token_id(x)) {
                (_, Some(id)) if (id as usize) < vocab_size => ids.push(id),
                (Some(n), _) => {
                    return Err(self.located(
                        code::Snapshot::Config,
                        format!("`{key}` {n} is not a token id: vocab_size is {vocab_size}"),
                        key,
                    ))
                }
                (None, _) => {
                    return Err(self.located(
                        code::Snapshot::Config,
                        format!("`{key}` must be an integer or a list of integers, found {x}"),
                        key,
                    ))
                }
            }
        }
        Ok(ids)
    }

    fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        match self.raw.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_f64().map(|n| Some(n as f32)).ok_or_else(|| {
                self.located(
                    code::Snapshot::Config,
                    format!("`{key}` must be a number"),
                    key,
                )
            }),
        }
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.raw.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.located(
                code::Snapshot::Config,
                format!("`{key}` must be true or false"),
                key,
            )),
        }
    }

    fn quant_params(
        &self,
        v: &Map<String, Value>,
        base: Option<QuantParams>,
    ) -> Result<QuantParams> {
        let bad = |what: &str| {
            self.located(
                code::Snapshot::Quantization,
                format!("invalid quantization block: {what}"),
                "quantization",
            )
        };
        // A per-module block without `mode` is affine, whatever the default's mode: mlx-lm
        // hands the block to `to_quantized`, whose mode defaults to affine (the 8-bit router
        // of an mxfp4 build is stored so).
        let mode = match v.get("mode") {
            None => QuantMode::Affine,
            Some(Value::String(s)) => {
                QuantMode::parse(s).ok_or_else(|| bad(&format!("unknown mode `{s}`")))?
            }
            Some(_) => return Err(bad("`mode` must be a string")),
        };
        // Read as JSON numbers and range-checked before narrowing, so a message shows the
        // value written in the file.
        let int = |key: &str, range: std::ops::RangeInclusive<u64>, default: Option<i32>| {
            let Some(x) = v.get(key) else {
                return default.ok_or_else(|| bad(&format!("`{key}` is missing")));
            };
            match x.as_u64() {
                Some(n) if range.contains(&n) => Ok(n as i32),
                _ => Err(bad(&format!(
                    "`{key}` must be an integer in {}..={}, found {x}",
                    range.start(),
                    range.end()
                ))),
            }
        };
        Ok(QuantParams {
            group_size: int("group_size", 1..=MAX_GROUP_SIZE, base.map(|b| b.group_size))?,
            bits: int("bits", 1..=8, base.map(|b| b.bits))?,
            mode,
        })
    }

    /// The MLX `quantization` block, if any.
    fn quantization_block(&self) -> Result<Option<Quantization>> {
        match self.raw.get("quantization") {
            None | Some(Value::Null) => Ok(None),
            Some(q) => Ok(Some(self.quantization(q)?)),
        }
    }

    fn quantization(&self, q: &Value) -> Result<Quantization> {
        let Value::Object(map) = q else {
            return Err(self.located(
                code::Snapshot::Quantization,
                "`quantization` must be an object",
                "quantization",
            ));
        };
        let default = self.quant_params(map, None)?;
        let mut overrides = BTreeMap::new();
        for (k, v) in map {
            match v {
                Value::Object(o) => {
                    overrides.insert(k.clone(), Some(self.quant_params(o, Some(default))?));
                }
                Value::Bool(false) => {
                    overrides.insert(k.clone(), None);
                }
                _ => {}
            }
        }
        Ok(Quantization { default, overrides })
    }

    /// A list of positive RoPE factors (`rope_scaling.long_factor`).
    fn factors(&self, v: Option<&Value>) -> Result<Vec<f32>> {
        let bad = |what: String| self.located(code::Snapshot::RopeScaling, what, "rope_scaling");
        let Some(Value::Array(items)) = v else {
            return Err(bad("rope_scaling needs a `long_factor` list".into()));
        };
        items
            .iter()
            .map(|x| match x.as_f64() {
                Some(f) if f.is_finite() && f > 0.0 => Ok(f as f32),
                _ => Err(bad(format!(
                    "`long_factor` entries must be positive numbers, found {x}"
                ))),
            })
            .collect()
    }

    fn rope_scaling(&self, v: &Value, max_positions: usize) -> Result<Option<RopeScaling>> {
        let bad = |what: String| self.located(code::Snapshot::RopeScaling, what, "rope_scaling");
        let Value::Object(m) = v else {
            return Err(bad("`rope_scaling` must be an object".into()));
        };
        let kind = m
            .get("rope_type")
            .or_else(|| m.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let num = |key: &str, default: Option<f32>| -> Result<f32> {
            match m.get(key).and_then(Value::as_f64) {
                Some(x) => Ok(x as f32),
                None => default.ok_or_else(|| bad(format!("rope_scaling needs `{key}`"))),
            }
        };
        Ok(match kind {
            "default" => None,
            "linear" => Some(RopeScaling::Linear {
                factor: num("factor", None)?,
            }),
            "llama3" => Some(RopeScaling::Llama3 {
                factor: num("factor", None)?,
                low_freq_factor: num("low_freq_factor", Some(1.0))?,
                high_freq_factor: num("high_freq_factor", Some(4.0))?,
                original_max_position_embeddings: num(
                    "original_max_position_embeddings",
                    Some(8192.0),
                )?,
            }),
            "longrope" | "su" => Some(RopeScaling::LongRope {
                long_factor: self.factors(m.get("long_factor"))?,
                original_max_position_embeddings: match self
                    .opt_f32("original_max_position_embeddings")?
                {
                    Some(n) => n,
                    None => num("original_max_position_embeddings", Some(4096.0))?,
                },
                max_position_embeddings: max_positions as f32,
            }),
            // mlx-lm reads these keys and no others (it ignores `truncate`).
            "yarn" | "deepseek_yarn" => Some(RopeScaling::Yarn {
                factor: num("factor", None)?,
                original_max_position_embeddings: num(
                    "original_max_position_embeddings",
                    Some(4096.0),
                )?,
                beta_fast: num("beta_fast", Some(32.0))?,
                beta_slow: num("beta_slow", Some(1.0))?,
                mscale: num("mscale", Some(1.0))?,
                mscale_all_dim: num("mscale_all_dim", Some(0.0))?,
            }),
            other => {
                return Err(bad(format!("unsupported rope_scaling type `{other}`"))
                    .with_help("supported: linear, llama3, yarn, longrope"))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<ModelConfig> {
        let v: Value = serde_json::from_str(json).unwrap();
        ModelConfig::from_value(Path::new("config.json"), json.into(), v)
    }

    const BASE: &str = r#"{"model_type":"llama","hidden_size":64,"intermediate_size":128,
        "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,
        "vocab_size":100,"max_position_embeddings":256"#;

    /// A config of `model_type` with only the keys every family requires, plus `extra`.
    fn bare(model_type: &str, extra: &str) -> Result<ModelConfig> {
        parse(&format!(
            r#"{{"model_type":"{model_type}","hidden_size":64,"intermediate_size":128,
            "num_hidden_layers":2,"num_attention_heads":8,"vocab_size":100{extra}}}"#
        ))
    }

    #[test]
    fn absent_common_keys_take_the_family_defaults() {
        let shape = |c: &ModelConfig| {
            (
                c.head_dim,
                c.num_key_value_heads,
                c.rope_theta,
                c.rms_norm_eps,
                c.tie_word_embeddings,
            )
        };
        // mlx-lm's defaults (transformers' for the keys mlx-lm requires).
        let families = [
            ("llama", (8, 8, 10_000.0, 1e-6, true)),
            ("qwen2", (8, 8, 1_000_000.0, 1e-6, true)),
            ("qwen3", (8, 8, 10_000.0, 1e-6, false)),
            ("phi3", (8, 8, 10_000.0, 1e-6, false)),
            ("gemma3_text", (256, 1, 1_000_000.0, 1e-6, true)),
            ("gpt_oss", (64, 8, 150_000.0, 1e-5, false)),
            ("qwen3_5_text", (8, 8, 100_000.0, 1e-6, false)),
        ];
        for (model_type, want) in families {
            assert_eq!(shape(&bare(model_type, "").unwrap()), want, "{model_type}");
        }
        // Written keys win over every default; `null` counts as absent.
        let extra = r#","head_dim":8,"num_key_value_heads":2,"rope_theta":5.0,
            "rms_norm_eps":0.5,"tie_word_embeddings":null"#;
        assert_eq!(
            shape(&bare("gemma3_text", extra).unwrap()),
            (8, 2, 5.0, 0.5, true)
        );
    }

    #[test]
    fn qwen3_reads_rope_parameters_when_the_top_level_has_none() {
        let nested = r#","rope_parameters":{"rope_type":"linear","factor":2.0,"rope_theta":500.0}"#;
        let c = bare("qwen3", nested).unwrap();
        assert_eq!(c.rope_theta, 500.0);
        assert!(matches!(c.rope_scaling, Some(RopeScaling::Linear { factor }) if factor == 2.0));
        let c = bare("qwen3", &format!(r#","rope_theta":7.0{nested}"#)).unwrap();
        assert_eq!(c.rope_theta, 7.0);
        // Families that do not read `rope_parameters` keep their default.
        let c = bare("llama", nested).unwrap();
        assert_eq!((c.rope_theta, c.rope_scaling.is_none()), (10_000.0, true));
        let err = bare("qwen3", r#","rope_parameters":{"rope_theta":"x"}"#).unwrap_err();
        assert!(
            err.message.contains("rope_parameters.rope_theta"),
            "{}",
            err.message
        );
    }

    #[test]
    fn intermediate_size_may_be_absent_only_beside_expert_widths() {
        let sparse = r#"{"model_type":"qwen3_5_moe","text_config":{"model_type":"qwen3_5_moe_text",
            "hidden_size":64,"num_hidden_layers":2,"num_attention_heads":4,
            "num_key_value_heads":2,"vocab_size":100,"max_position_embeddings":256,
            "moe_intermediate_size":32}}"#;
        let c = parse(sparse).unwrap();
        assert_eq!(
            (c.intermediate_size, c.text_model_type.as_str()),
            (0, "qwen3_5_moe_text")
        );
        let dense = BASE.replace("\"intermediate_size\":128,", "") + "}";
        let err = parse(&dense).unwrap_err();
        assert!(format!("{err:?}").contains("intermediate_size"), "{err:?}");
    }

    #[test]
    fn parses_defaults_and_quantization_overrides() {
        let c = parse(&format!(
            "{BASE},\"eos_token_id\":[2,3],\"quantization\":{{\"group_size\":32,\"bits\":4,\
             \"model.embed_tokens\":{{\"group_size\":32,\"bits\":8}},\"lm_head\":false}}}}"
        ))
        .unwrap();
        assert_eq!(c.head_dim, 16);
        assert_eq!(c.eos_token_ids, vec![2, 3]);
        let q = c.quantization.unwrap();
        assert_eq!(q.default.bits, 4);
        assert_eq!(q.for_module("model.embed_tokens").unwrap().bits, 8);
        assert_eq!(q.for_module("lm_head"), None);
        assert_eq!(
            q.for_module("model.layers.0.mlp.up_proj").unwrap().mode,
            QuantMode::Affine
        );
    }

    /// mlx-lm writes routers as `{"group_size": 64, "bits": 8}` next to an mxfp4 default:
    /// an entry without `mode` is affine (mlx-lm's `to_quantized` default).
    #[test]
    fn module_entries_without_mode_are_affine() {
        let c = parse(&format!(
            "{BASE},\"quantization\":{{\"group_size\":32,\"bits\":4,\"mode\":\"mxfp4\",\
             \"model.layers.0.mlp.gate\":{{\"group_size\":64,\"bits\":8}}}}}}"
        ))
        .unwrap();
        let q = c.quantization.unwrap();
        assert_eq!(q.default.mode, QuantMode::Mxfp4);
        assert_eq!(
            q.for_module("model.layers.0.mlp.gate"),
            Some(QuantParams {
                group_size: 64,
                bits: 8,
                mode: QuantMode::Affine
            })
        );
    }

    #[test]
    fn module_overrides_without_mode_are_affine() {
        let c = parse(&format!(
            "{BASE},\"quantization\":{{\"group_size\":32,\"bits\":4,\"mode\":\"mxfp4\",\
             \"model.layers.0.mlp.router\":{{\"group_size\":64,\"bits\":8}}}}}}"
        ))
        .unwrap();
        let q = c.quantization.unwrap();
        assert_eq!(q.default.mode, QuantMode::Mxfp4);
        let router = q.for_module("model.layers.0.mlp.router").unwrap();
        assert_eq!(
            (router.mode, router.bits, router.group_size),
            (QuantMode::Affine, 8, 64)
        );
    }

    #[test]
    fn released_mxfp4_checkpoints_read_as_mxfp4() {
        let c = parse(&format!(
            "{BASE},\"quantization_config\":{{\"quant_method\":\"mxfp4\"}}}}"
        ))
        .unwrap();
        let q = c.quantization.unwrap();
        assert_eq!(
            (q.default.mode, q.default.bits, q.default.group_size),
            (QuantMode::Mxfp4, 4, 32)
        );
        let other = parse(&format!(
            "{BASE},\"quantization_config\":{{\"quant_method\":\"gptq\"}}}}"
        ))
        .unwrap();
        assert!(other.quantization.is_none());
    }

    #[test]
    fn yarn_rope_scaling_with_mlx_lm_defaults() {
        let c = parse(&format!(
            "{BASE},\"rope_scaling\":{{\"rope_type\":\"yarn\",\"factor\":32.0,\
             \"original_max_position_embeddings\":4096,\"truncate\":false}}}}"
        ))
        .unwrap();
        assert_eq!(
            format!("{:?}", c.rope_scaling),
            "Some(Yarn { factor: 32.0, original_max_position_embeddings: 4096.0, \
             beta_fast: 32.0, beta_slow: 1.0, mscale: 1.0, mscale_all_dim: 0.0 })"
        );
    }

    #[test]
    fn unknown_model_type_points_at_the_key() {
        let err = parse(r#"{"model_type":"bogus"}"#).unwrap_err();
        assert_eq!(err.code, "rmlx::snapshot::unsupported-architecture");
        assert!(err.message.contains("bogus"));
        assert_eq!(err.span, Some(1..13));
    }

    #[test]
    fn llama3_rope_scaling() {
        let c = parse(&format!(
            "{BASE},\"rope_scaling\":{{\"rope_type\":\"llama3\",\"factor\":8.0}}}}"
        ))
        .unwrap();
        assert!(
            matches!(c.rope_scaling, Some(RopeScaling::Llama3 { factor, .. }) if factor == 8.0)
        );
    }

    #[test]
    fn json_syntax_error_is_located() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{\n  \"a\": ,\n}").unwrap();
        let err = ModelConfig::from_dir(dir.path()).unwrap_err();
        assert_eq!(err.code, "rmlx::snapshot::config");
        assert_eq!(err.line_col(err.span.clone().unwrap().start), Some((2, 8)));
    }

    fn with(key: &str, value: &str) -> String {
        let re = format!("\"{key}\":");
        let start = BASE.find(&re).unwrap() + re.len();
        let end = start
            + BASE[start..]
                .find([',', '\n'])
                .unwrap_or(BASE.len() - start);
        format!("{}{value}{}}}", &BASE[..start], &BASE[end..])
    }

    #[test]
    fn absurd_layer_count_is_refused_before_anything_is_allocated() {
        let text = with("num_hidden_layers", "4294967295");
        let err = parse(&text).unwrap_err();
        assert_eq!(err.code, "rmlx::snapshot::size-limit");
        assert!(err.message.contains("4294967295"), "{}", err.message);
        let span = err.span.clone().unwrap();
        assert_eq!(&text[span], "\"num_hidden_layers\"");
    }

    #[test]
    fn group_size_reports_the_value_written() {
        let err = parse(&format!(
            "{BASE},\"quantization\":{{\"group_size\":2147483648,\"bits\":4}}}}"
        ))
        .unwrap_err();
        assert_eq!(err.code, "rmlx::snapshot::quantization");
        assert!(err.message.contains("found 2147483648"), "{}", err.message);
        assert!(!err.message.contains('-'), "{}", err.message);
        let err = parse(&format!(
            "{BASE},\"quantization\":{{\"group_size\":64,\"bits\":-1}}}}"
        ))
        .unwrap_err();
        assert!(err.message.contains("found -1"), "{}", err.message);
    }

    #[test]
    fn token_ids_outside_the_vocabulary_are_refused() {
        for ids in ["4294967296", "[2, 4294967296]", "100", "-1", "\"2\""] {
            let err = parse(&format!("{BASE},\"eos_token_id\":{ids}}}")).unwrap_err();
            assert_eq!(err.code, "rmlx::snapshot::config", "{ids}");
            assert!(err.message.contains("eos_token_id"), "{}", err.message);
        }
        let err = parse(&format!("{BASE},\"bos_token_id\":4294967296}}")).unwrap_err();
        assert!(err.message.contains("4294967296"), "{}", err.message);
        let c = parse(&format!(
            "{BASE},\"eos_token_id\":99,\"bos_token_id\":null}}"
        ))
        .unwrap();
        assert_eq!((c.eos_token_ids, c.bos_token_id), (vec![99], None));
    }

    #[test]
    fn token_ids_never_truncate() {
        assert_eq!(
            token_id(&serde_json::json!(4_294_967_295_u64)),
            Some(u32::MAX)
        );
        assert_eq!(token_id(&serde_json::json!(4_294_967_301_u64)), None);
        assert_eq!(token_ids(&serde_json::json!([1, 4_294_967_297_u64])), None);
        assert_eq!(token_ids(&serde_json::json!(7)), Some(vec![7]));
        assert_eq!(token_ids(&serde_json::json!([5, 4])), Some(vec![5, 4]));
        for bad in [
            serde_json::json!(-1),
            serde_json::json!("2"),
            serde_json::json!(null),
            serde_json::json!(1.5),
        ] {
            assert_eq!(token_ids(&bad), None, "{bad}");
        }
    }

    #[test]
    fn layer_count_must_match_the_tensors() {
        let text = format!("{BASE}}}");
        let c = parse(&text).unwrap();
        let names = ["model.layers.0.mlp.up_proj.weight", "model.norm.weight"];
        let err = c.check_tensors(names.into_iter()).unwrap_err();
        assert_eq!(err.code, "rmlx::snapshot::config-mismatch");
        assert!(
            err.message
                .contains("declares 2 layers, the weights hold 1"),
            "{}",
            err.message
        );
        assert_eq!(&text[err.span.clone().unwrap()], "\"num_hidden_layers\"");
        let both = ["model.layers.0.a", "model.layers.1.a", "model.layers.x.b"];
        c.check_tensors(both.into_iter()).unwrap();
    }
}
