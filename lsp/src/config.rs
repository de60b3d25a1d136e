//! The server's settings: `initializationOptions` at start, replaced by
//! `workspace/didChangeConfiguration`. Both accept the settings object itself or wrapped as
//! `{"rmlx": {…}}` (what editors send for a settings section). Missing keys keep their
//! defaults; unknown keys are ignored.

use serde::Deserialize;
use serde_json::{Map, Value};

use rmlx_editor::preview::Sample;

/// Settings. See the README ("Editor setup") for the documented keys.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Config {
    /// Run the probe on save (and on open) for templates that belong to a model.
    pub probe: bool,
    /// Also probe when a template is opened.
    pub probe_on_open: bool,
    /// Wait this long after the last change before linting (milliseconds).
    pub debounce_ms: u64,
    /// Extra sample conversations for hover and "Preview render".
    pub samples: Vec<Sample>,
    /// The sample hover shows (a standard name such as `single-turn`, or a configured one).
    pub hover_sample: String,
    /// Template kwargs the template is rendered with in production (`enable_thinking`, …):
    /// passed to every lint render and preview.
    pub kwargs: Map<String, Value>,
    /// Publish advice (information-level) diagnostics.
    pub advice: bool,
    /// Treat every `*.jinja` file as a chat template (default: `chat_template.jinja`, files
    /// rmlx.toml names, files inside model directories).
    pub all_jinja: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            probe: true,
            probe_on_open: true,
            debounce_ms: 75,
            samples: Vec::new(),
            hover_sample: "single-turn".into(),
            kwargs: Map::new(),
            advice: true,
            all_jinja: false,
        }
    }
}

impl Config {
    /// Parses settings (`null` gives the defaults).
    pub fn from_value(v: &Value) -> Result<Self, String> {
        let v = match v {
            Value::Object(o) if o.get("rmlx").is_some_and(Value::is_object) => &o["rmlx"],
            Value::Null => return Ok(Self::default()),
            v => v,
        };
        Self::deserialize(v).map_err(|e| format!("invalid rmlx-lsp settings: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_wrapped_and_flat() {
        let c = Config::from_value(&json!({"rmlx": {"probe": false, "debounceMs": 10}})).unwrap();
        assert!(!c.probe);
        assert_eq!(c.debounce_ms, 10);
        assert!(c.probe_on_open);
        let c = Config::from_value(&json!({"samples": [
            {"name": "mine", "messages": [{"role": "user", "content": "hi"}]}
        ]}))
        .unwrap();
        assert_eq!(c.samples[0].name, "mine");
        assert!(c.samples[0].add_generation_prompt);
        assert_eq!(Config::from_value(&Value::Null).unwrap(), Config::default());
        assert!(Config::from_value(&json!({"debounceMs": "x"})).is_err());
    }
}
