//! Python's `json.dump(obj, f, indent=N)` byte for byte (ASCII-escaped strings, Python float
//! repr, `", "`-free indented layout), so the config.json and index files we write are the
//! ones `mlx_lm convert` writes. The writer is the template engine's `json.dumps`
//! (`template::pyfmt::json_dumps`); this module only fixes Python's defaults.

use serde_json::Value;

use crate::diagnostic::{code, Diagnostic, Result};
use crate::template::pyfmt::{json_dumps, JsonOptions};

/// `json.dumps(v, indent=indent)`: the template engine's `json.dumps` (one implementation)
/// with Python's defaults (`ensure_ascii=True`, separators `,` and `: ` when indented).
pub fn dumps(v: &Value, indent: usize) -> Result<String> {
    let opts = JsonOptions {
        ensure_ascii: true,
        indent: Some(" ".repeat(indent)),
        separators: None,
        sort_keys: false,
    };
    json_dumps(&minijinja::Value::from_serialize(v), &opts)
        .map_err(|e| Diagnostic::error(code::Build::Internal, format!("cannot write JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_python_json_dump() {
        let v: Value = serde_json::from_str(
            r#"{"a": 1e-05, "b": 100000.0, "c": [1, "é\n"], "d": {}, "e": [], "f": null,
                "g": {"x": true}, "h": 1e16, "i": 0.02}"#,
        )
        .unwrap();
        // json.dumps(v, indent=4) in Python 3.11:
        let want = "{\n    \"a\": 1e-05,\n    \"b\": 100000.0,\n    \"c\": [\n        1,\n        \
                    \"\\u00e9\\n\"\n    ],\n    \"d\": {},\n    \"e\": [],\n    \"f\": null,\n    \
                    \"g\": {\n        \"x\": true\n    },\n    \"h\": 1e+16,\n    \"i\": 0.02\n}";
        assert_eq!(dumps(&v, 4).unwrap(), want);
    }
}
