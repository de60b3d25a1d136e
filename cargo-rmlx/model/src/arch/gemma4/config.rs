//! The Gemma 4 text hyper-parameters, read as mlx-lm 0.32.2 reads them (its `ModelArgs`
//! defaults for absent keys, `null` as mlx-lm treats it), validated before anything is
//! allocated: layer kinds, shared-KV sources, per-type RoPE, head widths, MoE sizes.

use serde_json::{Map, Value};

use super::KEYS;
use crate::arch::layer_kinds::{sliding_window, LayerKind, LayerRule, ListUse, Period};
use crate::diagnostic::{code, Diagnostic, Result};
use crate::snapshot::config::size_limit;
use crate::snapshot::ModelConfig;

/// The attention kind of one layer (`layer_types`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerType {
    /// Local attention over the last `sliding_window` positions.
    Sliding,
    /// Global attention.
    Full,
}

impl LayerType {
    /// The `layer_types` / `rope_parameters` key.
    pub fn key(self) -> &'static str {
        match self {
            LayerType::Sliding => "sliding_attention",
            LayerType::Full => "full_attention",
        }
    }
}

/// The RoPE of one layer type (`rope_parameters[type]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeKind {
    /// Every feature rotated with base `theta` (`default`; `linear` divides positions by
    /// `factor`).
    Default {
        /// `factor` of `linear` (1 for `default`).
        factor: f32,
    },
    /// `proportional`: the first `partial_rotary_factor · head_dim` features rotated with
    /// periods `factor · theta^(2i / head_dim)`, the rest left as they are.
    Proportional {
        /// `partial_rotary_factor`.
        partial: f64,
        /// `factor`.
        factor: f32,
    },
}

/// RoPE settings of one layer type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeParams {
    /// `rope_theta`.
    pub theta: f32,
    /// The rotation.
    pub kind: RopeKind,
}

/// The MoE block's sizes (`enable_moe_block`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoeConfig {
    /// `num_experts`.
    pub experts: usize,
    /// `top_k_experts`.
    pub top_k: usize,
    /// `moe_intermediate_size`.
    pub inner: usize,
}

/// Per-layer input embeddings (`hidden_size_per_layer_input`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerLayerConfig {
    /// Width of each layer's input.
    pub width: usize,
    /// `vocab_size_per_layer_input`.
    pub vocab: usize,
}

/// Everything the Gemma 4 text network is built from.
#[derive(Debug, Clone, PartialEq)]
pub struct Gemma4Config {
    /// `hidden_size`.
    pub hidden: usize,
    /// `num_hidden_layers`.
    pub layers: usize,
    /// `intermediate_size` of the dense MLP.
    pub intermediate: usize,
    /// `num_attention_heads`.
    pub heads: usize,
    /// Head width of sliding layers.
    pub head_dim: usize,
    /// Head width of full layers (`global_head_dim`, falling back to `head_dim`).
    pub global_head_dim: usize,
    /// `num_key_value_heads`.
    pub kv_heads: usize,
    /// KV heads of full layers with `attention_k_eq_v`.
    pub global_kv_heads: Option<usize>,
    /// Tensor parallelism: those full layers' single KV head is read whole on every rank.
    pub whole_global_kv: bool,
    /// `rms_norm_eps`.
    pub eps: f32,
    /// `vocab_size`.
    pub vocab: usize,
    /// Per-layer input embeddings, if any.
    pub per_layer: Option<PerLayerConfig>,
    /// The last `kv_shared_layers` layers read the keys/values of an earlier layer.
    pub kv_shared_layers: usize,
    /// Attention kind of each layer.
    pub layer_types: Vec<LayerType>,
    /// Window of sliding layers.
    pub sliding_window: usize,
    /// RoPE of sliding layers, then of full layers.
    pub rope: [RopeParams; 2],
    /// `rope_traditional`: rotate adjacent pairs.
    pub rope_traditional: bool,
    /// Full layers use their keys as values (`attention_k_eq_v`).
    pub k_eq_v: bool,
    /// `final_logit_softcapping`.
    pub final_softcap: Option<f32>,
    /// Shared-KV layers have an MLP twice as wide (`use_double_wide_mlp`).
    pub double_wide_mlp: bool,
    /// The MoE branch, if enabled.
    pub moe: Option<MoeConfig>,
    /// The embeddings are the LM head.
    pub tie_word_embeddings: bool,
}

impl Gemma4Config {
    /// Reads the text model's keys from `section` (config.json itself for `gemma4_text`, its
    /// `text_config` for `gemma4`); `config` locates errors.
    pub fn parse(config: &ModelConfig, section: &Map<String, Value>) -> Result<Self> {
        let f = Keys { config, section };
        // The whole model's head counts: a tensor-parallel view holds its rank's
        // (`tensor_parallel` takes those afterwards).
        let layers = config.num_hidden_layers;
        let heads = f.size("num_attention_heads", Some(8))?;
        let head_dim = config.head_dim;
        let global_head_dim = match f.opt_size("global_head_dim", "head_dim", Some(512))? {
            Some(0) | None => head_dim,
            Some(n) => n,
        };
        let layer_types = layer_types(config)?;
        let kv_shared_layers = f.size("num_kv_shared_layers", Some(20))?;
        let this = Self {
            hidden: config.hidden_size,
            layers,
            intermediate: f.size("intermediate_size", None)?,
            heads,
            head_dim,
            global_head_dim,
            kv_heads: f.size("num_key_value_heads", KEYS.num_key_value_heads)?,
            global_kv_heads: f.opt_size(
                "num_global_key_value_heads",
                "num_key_value_heads",
                None,
            )?,
            whole_global_kv: false,
            eps: config.rms_norm_eps,
            vocab: config.vocab_size,
            per_layer: f.per_layer()?,
            kv_shared_layers,
            sliding_window: sliding_window(config, Some(512))?.unwrap_or(512),
            rope: [f.rope(LayerType::Sliding)?, f.rope(LayerType::Full)?],
            rope_traditional: f.flag("rope_traditional", false)?,
            k_eq_v: f.flag("attention_k_eq_v", false)?,
            final_softcap: f.number("final_logit_softcapping", Some(30.0))?,
            double_wide_mlp: f.flag("use_double_wide_mlp", true)?,
            moe: f.moe()?,
            tie_word_embeddings: config.tie_word_embeddings,
            layer_types,
        };
        this.validate(&f)?;
        Ok(this)
    }

    /// A tensor-parallel rank's widths, from its config view (`engine::layers::parallel`):
    /// its query and KV heads and its share of the dense MLP (the MoE width is the view's
    /// already). Full layers with their own KV-head count (`num_global_key_value_heads` with
    /// `attention_k_eq_v`) keep a single global KV head whole on every rank (each rank's
    /// query heads share it); another count that differs from `num_key_value_heads` is a
    /// located error.
    pub fn tensor_parallel(&mut self, view: &ModelConfig) -> Result<()> {
        let global = self.global_kv_heads.filter(|_| self.k_eq_v);
        if global.is_some_and(|g| g != 1 && g != self.kv_heads) {
            return Err(view.located(
                code::Engine::DistIndivisible,
                "gemma4: full layers' `num_global_key_value_heads` must be 1 or \
                 num_key_value_heads to split over ranks"
                    .to_string(),
                "num_global_key_value_heads",
            ));
        }
        self.whole_global_kv = global == Some(1);
        if !self.whole_global_kv {
            self.global_kv_heads = self.global_kv_heads.map(|_| view.num_key_value_heads);
        }
        self.heads = view.num_attention_heads;
        self.kv_heads = view.num_key_value_heads;
        self.intermediate = view.intermediate_size;
        Ok(())
    }

    /// Index of the first layer that reads another layer's keys/values.
    pub fn first_shared(&self) -> usize {
        self.layers - self.kv_shared_layers
    }

    /// For each layer, the layer whose keys/values it attends over: itself, or for a shared
    /// layer the last non-shared layer of its type (mlx-lm's `previous_kvs`).
    pub fn kv_sources(&self) -> Vec<usize> {
        let m = self.first_shared();
        (0..self.layers)
            .map(|j| {
                if j < m {
                    return j;
                }
                let t = self.layer_types[j];
                (0..m)
                    .rev()
                    .find(|&i| self.layer_types[i] == t)
                    .expect("validated: every shared layer type has a source")
            })
            .collect()
    }

    fn validate(&self, f: &Keys<'_>) -> Result<()> {
        let err = |key: &str, msg: String| Err(f.located(key, msg));
        if self.heads == 0 || self.layers == 0 || self.hidden == 0 || self.sliding_window == 0 {
            return err(
                "num_hidden_layers",
                "hidden_size, num_hidden_layers, num_attention_heads and sliding_window must be \
                 positive"
                    .into(),
            );
        }
        for (key, kv) in [
            ("num_key_value_heads", Some(self.kv_heads)),
            ("num_global_key_value_heads", self.global_kv_heads),
        ] {
            if let Some(kv) = kv {
                if kv == 0 || !self.heads.is_multiple_of(kv) {
                    return err(
                        key,
                        format!(
                            "`{key}` ({kv}) must divide num_attention_heads ({})",
                            self.heads
                        ),
                    );
                }
            }
        }
        if self.final_softcap.is_some_and(|c| c <= 0.0) {
            return err(
                "final_logit_softcapping",
                "final_logit_softcapping must be positive (or null for none)".into(),
            );
        }
        if self.kv_shared_layers >= self.layers {
            return err(
                "num_kv_shared_layers",
                format!(
                    "num_kv_shared_layers ({}) must be smaller than num_hidden_layers ({})",
                    self.kv_shared_layers, self.layers
                ),
            );
        }
        let m = self.first_shared();
        if let Some(t) = self.layer_types[m..]
            .iter()
            .find(|t| !self.layer_types[..m].contains(t))
        {
            return err(
                "num_kv_shared_layers",
                format!(
                    "a KV-shared layer is a {} layer, but no earlier layer of that type computes \
                     keys and values",
                    t.key()
                ),
            );
        }
        Ok(())
    }
}

/// mlx-lm's Gemma 4: the layers `layer_types` lists, else `sliding_window_pattern - 1`
/// sliding layers then one full layer, repeated (default pattern 5).
const LAYERS: LayerRule = LayerRule {
    family: "gemma4",
    list: ListUse::Decides,
    other: LayerKind::Sliding,
    period: Some(Period {
        key: Some("sliding_window_pattern"),
        default: 5,
    }),
};

/// The attention kind of each layer.
fn layer_types(config: &ModelConfig) -> Result<Vec<LayerType>> {
    let kinds = LAYERS.kinds(config)?;
    Ok(kinds
        .into_iter()
        .map(|k| match k {
            LayerKind::Full => LayerType::Full,
            // The rule admits full and sliding layers only.
            LayerKind::Sliding | LayerKind::Linear => LayerType::Sliding,
        })
        .collect())
}

/// Typed reads of one config section with mlx-lm's defaults and located errors.
struct Keys<'a> {
    config: &'a ModelConfig,
    section: &'a Map<String, Value>,
}

impl Keys<'_> {
    fn located(&self, key: &str, msg: String) -> Diagnostic {
        self.config
            .located(code::Snapshot::Config, format!("gemma4: {msg}"), key)
    }

    /// A size that must be there (or has mlx-lm's `default`), bounded like config.json's
    /// other sizes (`bound_key`'s limit) before anything is allocated from it.
    fn size(&self, key: &str, default: Option<usize>) -> Result<usize> {
        self.opt_size(key, key, default)?
            .ok_or_else(|| self.located(key, format!("config has no `{key}`")))
    }

    /// A size, `None` when absent without a default or `null`.
    fn opt_size(
        &self,
        key: &str,
        bound_key: &str,
        default: Option<usize>,
    ) -> Result<Option<usize>> {
        let n = match self.section.get(key) {
            None => return Ok(default),
            Some(Value::Null) => return Ok(None),
            Some(v) => v.as_u64().ok_or_else(|| {
                self.located(
                    key,
                    format!("`{key}` must be a non-negative integer, found {v}"),
                )
            })?,
        };
        let max = size_limit(bound_key).unwrap_or(1 << 24);
        if n > max {
            return Err(self.located(key, format!("`{key}` is {n}, above the limit of {max}")));
        }
        Ok(Some(n as usize))
    }

    /// A number (`None` when `null`; `default` when absent).
    fn number(&self, key: &str, default: Option<f32>) -> Result<Option<f32>> {
        match self.section.get(key) {
            None => Ok(default),
            Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite())
                .map(|x| Some(x as f32))
                .ok_or_else(|| self.located(key, format!("`{key}` must be a number, found {v}"))),
        }
    }

    /// A boolean; `null` counts as false, like Python's truthiness in mlx-lm.
    fn flag(&self, key: &str, default: bool) -> Result<bool> {
        match self.section.get(key) {
            None => Ok(default),
            Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(self.located(key, format!("`{key}` must be true or false, found {v}"))),
        }
    }

    /// `rope_parameters[type]` (mlx-lm's defaults when `rope_parameters` is absent).
    fn rope(&self, t: LayerType) -> Result<RopeParams> {
        let params = match self.section.get("rope_parameters") {
            None | Some(Value::Null) => return Ok(default_rope(t)),
            Some(Value::Object(p)) => p.get(t.key()).and_then(Value::as_object),
            Some(v) => {
                return Err(self.located(
                    "rope_parameters",
                    format!("`rope_parameters` must be an object, found {v}"),
                ))
            }
        };
        let empty = Map::new();
        let p = params.unwrap_or(&empty);
        let num = |k: &str, default: f64| -> Result<f64> {
            match p.get(k) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => v.as_f64().filter(|x| x.is_finite()).ok_or_else(|| {
                    self.located(
                        "rope_parameters",
                        format!(
                            "rope_parameters.{}.{k} must be a number, found {v}",
                            t.key()
                        ),
                    )
                }),
            }
        };
        let theta = num("rope_theta", 10_000.0)? as f32;
        let rope_type = p
            .get("type")
            .or_else(|| p.get("rope_type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let partial = num("partial_rotary_factor", 1.0)?;
        let kind = match rope_type {
            "default" | "linear" => {
                if partial != 1.0 {
                    tracing::warn!(
                        "gemma4: rope_parameters.{}.partial_rotary_factor = {partial} is ignored \
                         for rope_type `{rope_type}` (every feature is rotated), as mlx-lm does",
                        t.key()
                    );
                }
                let factor = match rope_type {
                    "linear" => num("factor", 1.0)? as f32,
                    _ => 1.0,
                };
                RopeKind::Default { factor }
            }
            "proportional" if (0.0..=1.0).contains(&partial) => RopeKind::Proportional {
                partial,
                factor: num("factor", 1.0)? as f32,
            },
            other => {
                return Err(self.located(
                    "rope_parameters",
                    format!(
                        "rope_parameters.{}: rope_type `{other}` with partial_rotary_factor \
                         {partial} is not supported (default, linear, proportional with a factor \
                         in [0, 1])",
                        t.key()
                    ),
                ))
            }
        };
        Ok(RopeParams { theta, kind })
    }

    /// Per-layer inputs when `hidden_size_per_layer_input` is positive.
    fn per_layer(&self) -> Result<Option<PerLayerConfig>> {
        let width = self
            .opt_size("hidden_size_per_layer_input", "hidden_size", Some(256))?
            .unwrap_or(0);
        if width == 0 {
            return Ok(None);
        }
        let vocab = self.opt_size("vocab_size_per_layer_input", "vocab_size", Some(262_144))?;
        let vocab = vocab.ok_or_else(|| {
            self.located(
                "vocab_size_per_layer_input",
                "`vocab_size_per_layer_input` is needed with per-layer inputs".into(),
            )
        })?;
        Ok(Some(PerLayerConfig { width, vocab }))
    }

    /// The MoE sizes when `enable_moe_block` is set.
    fn moe(&self) -> Result<Option<MoeConfig>> {
        if !self.flag("enable_moe_block", false)? {
            return Ok(None);
        }
        let need = |key: &str| -> Result<usize> {
            match self.opt_size(key, "intermediate_size", None)? {
                Some(n) if n > 0 => Ok(n),
                _ => Err(self.located(
                    key,
                    format!("`{key}` must be a positive integer with enable_moe_block"),
                )),
            }
        };
        let (experts, top_k) = (need("num_experts")?, need("top_k_experts")?);
        if top_k > experts {
            return Err(self.located(
                "top_k_experts",
                format!("top_k_experts ({top_k}) exceeds num_experts ({experts})"),
            ));
        }
        Ok(Some(MoeConfig {
            experts,
            top_k,
            inner: need("moe_intermediate_size")?,
        }))
    }
}

/// mlx-lm's `rope_parameters` when config.json has none.
fn default_rope(t: LayerType) -> RopeParams {
    match t {
        LayerType::Sliding => RopeParams {
            theta: 10_000.0,
            kind: RopeKind::Default { factor: 1.0 },
        },
        LayerType::Full => RopeParams {
            theta: 1_000_000.0,
            kind: RopeKind::Proportional {
                partial: 0.25,
                factor: 1.0,
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn parse(extra: &str) -> Result<Gemma4Config> {
        let text = format!(
            r#"{{"model_type": "gemma4_text", "hidden_size": 64, "intermediate_size": 96,
                "num_hidden_layers": 6, "num_attention_heads": 4, "num_key_value_heads": 2,
                "vocab_size": 1000, "head_dim": 16{extra}}}"#
        );
        let config = ModelConfig::from_text(Path::new("config.json"), &text)?;
        Gemma4Config::parse(&config, &config.raw)
    }

    #[test]
    fn absent_keys_take_mlx_lm_defaults() {
        let c = parse(r#", "num_kv_shared_layers": 0"#).unwrap();
        assert_eq!(c.global_head_dim, 512);
        assert_eq!(c.sliding_window, 512);
        assert_eq!(c.final_softcap, Some(30.0));
        assert!(c.double_wide_mlp && c.tie_word_embeddings && !c.k_eq_v);
        assert_eq!(
            c.per_layer.map(|p| (p.width, p.vocab)),
            Some((256, 262_144))
        );
        // Pattern 5: four sliding layers, then a full one.
        let full: Vec<usize> = (0..6)
            .filter(|&i| c.layer_types[i] == LayerType::Full)
            .collect();
        assert_eq!(full, [4]);
        assert_eq!(
            c.rope,
            [
                default_rope(LayerType::Sliding),
                default_rope(LayerType::Full)
            ]
        );
        // mlx-lm's default of 20 shared layers does not fit 6 layers.
        let err = parse("").unwrap_err();
        assert!(
            err.message.contains("num_kv_shared_layers"),
            "{}",
            err.message
        );
    }

    #[test]
    fn nulls_disable_optional_mechanisms() {
        let c = parse(
            r#", "num_kv_shared_layers": 0, "final_logit_softcapping": null,
               "hidden_size_per_layer_input": null, "global_head_dim": null,
               "use_double_wide_mlp": null"#,
        )
        .unwrap();
        assert_eq!(c.final_softcap, None);
        assert_eq!(c.per_layer, None);
        assert_eq!(c.global_head_dim, 16);
        assert!(!c.double_wide_mlp);
    }

    #[test]
    fn shared_layers_read_the_last_earlier_layer_of_their_type() {
        let types = r#"["sliding_attention", "full_attention", "sliding_attention",
                        "full_attention", "sliding_attention", "full_attention"]"#;
        let c = parse(&format!(
            r#", "num_kv_shared_layers": 3, "layer_types": {types}"#
        ))
        .unwrap();
        assert_eq!(c.first_shared(), 3);
        assert_eq!(c.kv_sources(), [0, 1, 2, 1, 2, 1]);
        // A shared full layer without an earlier full layer has no source.
        let types = r#"["sliding_attention", "sliding_attention", "full_attention",
                        "full_attention", "full_attention", "full_attention"]"#;
        let err = parse(&format!(
            r#", "num_kv_shared_layers": 4, "layer_types": {types}"#
        ))
        .unwrap_err();
        assert!(err.message.contains("full_attention"), "{}", err.message);
    }

    #[test]
    fn rope_parameters_per_layer_type() {
        let c = parse(
            r#", "num_kv_shared_layers": 0, "rope_parameters": {
                "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.5,
                                   "rope_theta": 5000.0, "factor": 2.0},
                "sliding_attention": {"rope_type": "linear", "factor": 4.0}}"#,
        )
        .unwrap();
        assert_eq!(
            c.rope,
            [
                RopeParams {
                    theta: 10_000.0,
                    kind: RopeKind::Default { factor: 4.0 }
                },
                RopeParams {
                    theta: 5000.0,
                    kind: RopeKind::Proportional {
                        partial: 0.5,
                        factor: 2.0
                    }
                }
            ]
        );
        let err = parse(
            r#", "num_kv_shared_layers": 0, "rope_parameters": {
                "full_attention": {"rope_type": "yarn", "factor": 2.0}}"#,
        )
        .unwrap_err();
        assert!(err.message.contains("yarn"), "{}", err.message);
    }

    #[test]
    fn moe_sizes_are_checked() {
        let c = parse(
            r#", "num_kv_shared_layers": 0, "enable_moe_block": true, "num_experts": 4,
               "top_k_experts": 2, "moe_intermediate_size": 32"#,
        )
        .unwrap();
        assert_eq!(
            c.moe,
            Some(MoeConfig {
                experts: 4,
                top_k: 2,
                inner: 32
            })
        );
        for bad in [
            r#", "num_kv_shared_layers": 0, "enable_moe_block": true, "num_experts": 2,
               "top_k_experts": 3, "moe_intermediate_size": 32"#,
            r#", "num_kv_shared_layers": 0, "enable_moe_block": true, "num_experts": 4"#,
            r#", "num_kv_shared_layers": 0, "num_global_key_value_heads": 3"#,
            r#", "num_kv_shared_layers": 0, "global_head_dim": 1e30"#,
        ] {
            assert!(parse(bad).is_err(), "accepted {bad}");
        }
    }
}
