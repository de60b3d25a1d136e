//! Python's `json.dump(obj, f, indent=N)` byte for byte (ASCII-escaped strings, Python float
//! repr, `", "`-free indented layout), so the config.json and index files we write are the
//! ones `mlx_lm convert` writes.

use std::fmt::Write;

use serde_json::Value;

use crate::template::pyfmt::float_repr;

/// `json.dumps(v, indent=indent)`.
pub fn dumps(v: &Value, indent: usize) -> String {
    let mut out = String::new();
    write_value(&mut out, v, indent, 0);
    out
}

fn newline(out: &mut String, indent: usize, depth: usize) {
    out.push('\n');
    for _ in 0..indent * depth {
        out.push(' ');
    }
}

fn write_value(out: &mut String, v: &Value, indent: usize, depth: usize) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                let _ = write!(out, "{i}");
            } else if let Some(u) = n.as_u64() {
                let _ = write!(out, "{u}");
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                if f.is_nan() {
                    out.push_str("NaN");
                } else if f.is_infinite() {
                    out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
                } else {
                    out.push_str(&float_repr(f));
                }
            }
        }
        Value::String(s) => write_str(out, s),
        Value::Array(a) => {
            if a.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(out, indent, depth + 1);
                write_value(out, x, indent, depth + 1);
            }
            newline(out, indent, depth);
            out.push(']');
        }
        Value::Object(m) => {
            if m.is_empty() {
                out.push_str("{}");
                return;
            }
            out.push('{');
            for (i, (k, x)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(out, indent, depth + 1);
                write_str(out, k);
                out.push_str(": ");
                write_value(out, x, indent, depth + 1);
            }
            newline(out, indent, depth);
            out.push('}');
        }
    }
}

fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            c => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
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
        assert_eq!(dumps(&v, 4), want);
    }
}
