//! Which attention each layer runs, decoded once for every architecture: `layer_types` of
//! config.json, the pattern a family falls back to without it (`sliding_window_pattern`,
//! `full_attention_interval`, GPT-OSS's alternation) and the window of the sliding layers
//! (`sliding_window`). Each family passes its [`LayerRule`] — how mlx-lm 0.32.2 reads these
//! keys for it — so a missing key behaves as mlx-lm, a malformed one is a located
//! `rmlx::snapshot::config` / `size-limit` error, and every default taken is logged.

use serde_json::Value;

use super::config_size;
use crate::diagnostic::{code, Result};
use crate::snapshot::ModelConfig;

/// The attention of one layer (an entry of `layer_types`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// Global attention (`full_attention`).
    Full,
    /// Attention over the last `sliding_window` positions (`sliding_attention`).
    Sliding,
    /// Linear attention, a recurrent layer (`linear_attention`).
    Linear,
}

impl LayerKind {
    /// The `layer_types` entry.
    pub fn key(self) -> &'static str {
        match self {
            LayerKind::Full => "full_attention",
            LayerKind::Sliding => "sliding_attention",
            LayerKind::Linear => "linear_attention",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [LayerKind::Full, LayerKind::Sliding, LayerKind::Linear]
            .into_iter()
            .find(|k| k.key() == s)
    }
}

/// How a family reads `layer_types` when config.json has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListUse {
    /// The list decides; without it, the family's [`Period`] (or full attention everywhere).
    Decides,
    /// The list decides, as in transformers, though mlx-lm places the layers by the period
    /// alone: a list that disagrees with the period is followed with a warning.
    DecidesOverPeriod,
    /// mlx-lm places the layers by the period alone: a list that disagrees is an error.
    MustAgree,
    /// mlx-lm does not read it: every layer is full attention, whatever the list says
    /// (logged).
    Ignored,
}

/// Layer `i` is full attention iff `(i + 1)` is a multiple of the period, else the family's
/// other kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    /// The config.json key holding the period, if the family has one.
    pub key: Option<&'static str>,
    /// mlx-lm's default when the key is absent (or the period when there is no key).
    pub default: usize,
}

/// How one family reads its layers' attention kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerRule {
    /// The family, for messages.
    pub family: &'static str,
    /// How `layer_types` is read.
    pub list: ListUse,
    /// The kind of the layers that are not full attention.
    pub other: LayerKind,
    /// Without a list: the period of full-attention layers; `None`: every layer is full.
    pub period: Option<Period>,
}

impl LayerRule {
    /// The layers `layer_types` lists (full or sliding attention), else global attention
    /// everywhere: mlx-lm's llama and ministral3.
    pub const fn listed(family: &'static str) -> Self {
        Self {
            family,
            list: ListUse::Decides,
            other: LayerKind::Sliding,
            period: None,
        }
    }

    /// The attention kind of each of `config`'s layers.
    pub fn kinds(&self, config: &ModelConfig) -> Result<Vec<LayerKind>> {
        let list = config.raw.get("layer_types").filter(|v| !v.is_null());
        if self.list == ListUse::Ignored {
            if list.is_some() {
                tracing::debug!(
                    "{}: mlx-lm's {} does not read `layer_types`; every layer attends globally",
                    config.path.display(),
                    self.family
                );
            }
            return self.derived(config);
        }
        let listed = list.map(|v| self.parse_list(config, v)).transpose()?;
        match (self.list, listed) {
            (ListUse::Decides | ListUse::Ignored, Some(kinds)) => Ok(kinds),
            (ListUse::MustAgree, Some(kinds)) => {
                if kinds != self.derived(config)? {
                    return Err(self.disagrees(config));
                }
                Ok(kinds)
            }
            (ListUse::DecidesOverPeriod, Some(kinds)) => {
                if kinds != self.derived(config)? {
                    tracing::warn!(
                        "{}: {}; following `layer_types`",
                        config.path.display(),
                        self.disagrees(config).message
                    );
                }
                Ok(kinds)
            }
            (_, None) => self.derived(config),
        }
    }

    /// The kinds from the period (or all full), with the defaults taken logged.
    fn derived(&self, config: &ModelConfig) -> Result<Vec<LayerKind>> {
        let n = config.num_hidden_layers;
        let Some(period) = self.period else {
            tracing::debug!("{}: every layer attends globally", self.family);
            return Ok(vec![LayerKind::Full; n]);
        };
        let every = match period.key {
            Some(key) => config_size(config, key, Some(period.default))?,
            None => period.default,
        };
        Ok((0..n)
            .map(|i| match (i + 1) % every {
                0 => LayerKind::Full,
                _ => self.other,
            })
            .collect())
    }

    /// `layer_types` checked: one entry per layer, each full attention or the family's other
    /// kind.
    fn parse_list(&self, config: &ModelConfig, v: &Value) -> Result<Vec<LayerKind>> {
        let n = config.num_hidden_layers;
        let bad = |msg: String| config.located(code::Snapshot::Config, msg, "layer_types");
        let entries = v.as_array().filter(|a| a.len() == n).ok_or_else(|| {
            bad(format!(
                "`layer_types` must list the attention of each of the {n} layers, found {v}"
            ))
        })?;
        entries
            .iter()
            .map(|e| {
                e.as_str()
                    .and_then(LayerKind::parse)
                    .filter(|k| *k == LayerKind::Full || *k == self.other)
                    .ok_or_else(|| {
                        bad(format!(
                            "unknown layer type {e} for {} ({} or {})",
                            self.family,
                            LayerKind::Full.key(),
                            self.other.key()
                        ))
                    })
            })
            .collect()
    }

    fn disagrees(&self, config: &ModelConfig) -> crate::diagnostic::Diagnostic {
        let key = self.period.and_then(|p| p.key).unwrap_or("layer_types");
        config
            .located(
                code::Snapshot::Config,
                format!(
                    "`layer_types` does not match `{key}` over {} layers",
                    config.num_hidden_layers
                ),
                "layer_types",
            )
            .with_help(format!(
                "mlx-lm places the full-attention layers of {} by `{key}` alone (default {}); \
                 fix whichever is wrong",
                self.family,
                self.period.map_or(0, |p| p.default)
            ))
    }
}

/// The window of the sliding layers: `sliding_window` (a positive size), or `default` when
/// absent or `null` (logged); `None` when neither.
pub fn sliding_window(config: &ModelConfig, default: Option<usize>) -> Result<Option<usize>> {
    match config.raw.get("sliding_window") {
        None | Some(Value::Null) => {
            if let Some(d) = default {
                tracing::debug!("no `sliding_window` in config.json; using mlx-lm's default {d}");
            }
            Ok(default)
        }
        Some(_) => config_size(config, "sliding_window", None).map(Some),
    }
}

/// Per layer, the window of a sliding layer (`None` for the others), read with
/// [`sliding_window`] only when some layer slides (mlx-lm ignores the key otherwise).
pub fn windows(
    config: &ModelConfig,
    kinds: &[LayerKind],
    default: Option<usize>,
) -> Result<Vec<Option<usize>>> {
    if !kinds.contains(&LayerKind::Sliding) {
        return Ok(vec![None; kinds.len()]);
    }
    let window = sliding_window(config, default)?.ok_or_else(|| {
        config.located(
            code::Snapshot::Config,
            "sliding-attention layers need a positive `sliding_window`",
            "layer_types",
        )
    })?;
    Ok(kinds
        .iter()
        .map(|k| (*k == LayerKind::Sliding).then_some(window))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::test_config;
    use LayerKind::{Full, Linear, Sliding};

    const PATTERN: LayerRule = LayerRule {
        family: "gemma3",
        list: ListUse::MustAgree,
        other: Sliding,
        period: Some(Period {
            key: Some("sliding_window_pattern"),
            default: 6,
        }),
    };
    const LISTED: LayerRule = LayerRule::listed("llama");

    fn kinds(rule: LayerRule, extra: &str) -> Result<Vec<LayerKind>> {
        rule.kinds(&test_config("llama", extra).unwrap())
    }

    fn types(kinds: &[LayerKind]) -> String {
        let names: Vec<String> = kinds.iter().map(|k| format!("\"{}\"", k.key())).collect();
        format!(r#","layer_types":[{}]"#, names.join(","))
    }

    #[test]
    fn absent_list_takes_the_period_or_its_default() {
        // 4 layers: the default period 6 leaves every layer sliding.
        assert_eq!(kinds(PATTERN, "").unwrap(), vec![Sliding; 4]);
        let two = kinds(PATTERN, r#","sliding_window_pattern":2"#).unwrap();
        assert_eq!(two, [Sliding, Full, Sliding, Full]);
        assert_eq!(
            kinds(LISTED, r#","layer_types":null"#).unwrap(),
            vec![Full; 4]
        );
    }

    #[test]
    fn a_deciding_list_is_read_as_written() {
        let want = [Full, Sliding, Sliding, Full];
        assert_eq!(kinds(LISTED, &types(&want)).unwrap(), want);
    }

    #[test]
    fn an_agreeing_list_must_match_the_period() {
        let extra = format!(
            r#","sliding_window_pattern":2{}"#,
            types(&[Sliding, Full, Sliding, Full])
        );
        assert!(kinds(PATTERN, &extra).is_ok());
        let err = kinds(PATTERN, &types(&[Sliding, Full, Sliding, Full])).unwrap_err();
        assert!(
            err.message.contains("sliding_window_pattern"),
            "{}",
            err.message
        );
        assert_eq!(
            err.code,
            crate::diagnostic::Code::from(code::Snapshot::Config)
        );
    }

    #[test]
    fn a_list_deciding_over_the_period_is_followed() {
        let rule = LayerRule {
            list: ListUse::DecidesOverPeriod,
            ..PATTERN
        };
        let want = [Sliding, Full, Sliding, Full];
        assert_eq!(kinds(rule, &types(&want)).unwrap(), want);
    }

    #[test]
    fn an_ignored_list_leaves_every_layer_global() {
        let rule = LayerRule {
            list: ListUse::Ignored,
            ..LISTED
        };
        assert_eq!(kinds(rule, &types(&[Sliding; 4])).unwrap(), vec![Full; 4]);
        assert_eq!(kinds(rule, &types(&[Linear])).unwrap(), vec![Full; 4]);
    }

    #[test]
    fn malformed_lists_and_periods_are_located_errors() {
        for extra in [
            r#","layer_types":"full_attention""#.to_string(),
            types(&[Full, Full]),
            r#","layer_types":["full_attention","x","full_attention","full_attention"]"#.into(),
            types(&[Full, Linear, Full, Full]),
        ] {
            let err = kinds(LISTED, &extra).unwrap_err();
            assert!(err.message.contains("layer"), "{extra}: {}", err.message);
            assert!(err.span.is_some(), "{extra}: not located");
        }
        for bad in ["0", "-1", "2.5", "\"6\""] {
            let extra = format!(r#","sliding_window_pattern":{bad}"#);
            assert!(kinds(PATTERN, &extra).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn windows_are_read_only_where_a_layer_slides() {
        let c = test_config("llama", r#","sliding_window":"none""#).unwrap();
        assert_eq!(windows(&c, &[Full; 4], None).unwrap(), vec![None; 4]);
        assert!(windows(&c, &[Sliding; 4], Some(512)).is_err());
        let c = test_config("llama", r#","sliding_window":null"#).unwrap();
        let w = windows(&c, &[Sliding, Full, Sliding, Full], Some(512)).unwrap();
        assert_eq!(w, [Some(512), None, Some(512), None]);
        let err = windows(&c, &[Sliding; 4], None).unwrap_err();
        assert!(err.message.contains("sliding_window"), "{}", err.message);
        let c = test_config("llama", r#","sliding_window":16"#).unwrap();
        assert_eq!(windows(&c, &[Sliding], Some(512)).unwrap(), [Some(16)]);
        for bad in ["0", "-3", "2.5", "true"] {
            let c = test_config("llama", &format!(r#","sliding_window":{bad}"#)).unwrap();
            let err = sliding_window(&c, Some(512)).unwrap_err();
            assert!(err.span.is_some(), "{bad}: not located");
        }
    }
}
