//! Python-compatible text forms of template values: `str()` (what `{{ x }}` prints in
//! jinja2), `repr()` (items inside printed lists and dicts), float `repr`, and
//! `json.dumps` with its keyword arguments (the `tojson` filter of transformers).
//!
//! Chat templates are written against Python semantics: `{{ none }}` prints `None`,
//! `{{ ['a'] }}` prints `['a']`, `1e16|tojson` is `1e+16`. Byte-exact prompts need these.

use std::fmt::Write;

use minijinja::value::ValueKind;
use minijinja::{Error, ErrorKind, Value};

use super::env::PyGenerator;
use super::limits;

/// Python `repr(float)`: shortest round-trip digits; scientific below 1e-4 and from 1e16.
pub fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if f == 0.0 {
        return if f.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    // Rust's `{:e}` gives the shortest round-trip digits, like Python's repr.
    let sci = format!("{:e}", f);
    let (mantissa, exp) = match sci.split_once('e') {
        Some((m, e)) => (m, e.parse::<i32>().unwrap_or(0)),
        None => (sci.as_str(), 0),
    };
    let (neg, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    if !(-4..16).contains(&exp) {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    } else if exp < 0 {
        out.push_str("0.");
        for _ in 0..(-exp - 1) {
            out.push('0');
        }
        out.push_str(&digits);
    } else {
        let int_len = exp as usize + 1;
        if digits.len() <= int_len {
            out.push_str(&digits);
            for _ in digits.len()..int_len {
                out.push('0');
            }
            out.push_str(".0");
        } else {
            out.push_str(&digits[..int_len]);
            out.push('.');
            out.push_str(&digits[int_len..]);
        }
    }
    out
}

fn number_str(v: &Value) -> String {
    if v.is_integer() {
        v.to_string()
    } else {
        match f64::try_from(v.clone()) {
            Ok(f) => float_repr(f),
            Err(_) => v.to_string(),
        }
    }
}

/// Python `str(x)` of a template value (what jinja2 prints for `{{ x }}`). Fails when the
/// text would be over the template size limit or the value nests too deeply.
pub fn py_str(v: &Value) -> Result<String, Error> {
    match v.kind() {
        ValueKind::Undefined => Ok(String::new()),
        ValueKind::String => Ok(v.as_str().unwrap_or_default().to_string()),
        _ => {
            let mut s = String::new();
            py_repr_into(v, &mut s)?;
            Ok(s)
        }
    }
}

/// Python `repr(s)` of a string.
pub fn str_repr(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// Python `repr(x)` of a template value, appended to `out` (see [`py_str`] for the limits).
pub fn py_repr_into(v: &Value, out: &mut String) -> Result<(), Error> {
    repr_at(v, out, 0)
}

fn repr_at(v: &Value, out: &mut String, depth: usize) -> Result<(), Error> {
    limits::check_depth("str()", depth)?;
    limits::check_bytes("str()", out.len() as u128)?;
    match v.kind() {
        ValueKind::Undefined => {}
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if v.is_true() { "True" } else { "False" }),
        ValueKind::Number => out.push_str(&number_str(v)),
        ValueKind::String => str_repr(v.as_str().unwrap_or_default(), out),
        ValueKind::Seq => {
            out.push('[');
            if let Ok(iter) = v.try_iter() {
                for (i, item) in iter.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    repr_at(&item, out, depth + 1)?;
                }
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            if let Some(pairs) = v.as_object().and_then(|o| o.try_iter_pairs()) {
                for (i, (k, val)) in pairs.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    repr_at(&k, out, depth + 1)?;
                    out.push_str(": ");
                    repr_at(&val, out, depth + 1)?;
                }
            }
            out.push('}');
        }
        _ => {
            let _ = write!(out, "{v}");
        }
    }
    limits::check_bytes("str()", out.len() as u128)
}

/// Options of Python's `json.dumps` as transformers' `tojson` passes them.
#[derive(Debug, Clone, Default)]
pub struct JsonOptions {
    /// `ensure_ascii` (transformers: false).
    pub ensure_ascii: bool,
    /// `indent`: `None`, a number of spaces, or a string.
    pub indent: Option<String>,
    /// `separators` (item, key); defaults depend on `indent` like Python.
    pub separators: Option<(String, String)>,
    /// `sort_keys`.
    pub sort_keys: bool,
}

/// Python `json.dumps(v, **opts)`.
pub fn json_dumps(v: &Value, opts: &JsonOptions) -> Result<String, Error> {
    let (item_sep, key_sep) = match &opts.separators {
        Some((a, b)) => (a.clone(), b.clone()),
        None if opts.indent.is_some() => (",".to_string(), ": ".to_string()),
        None => (", ".to_string(), ": ".to_string()),
    };
    let mut w = JsonWriter {
        opts,
        item_sep,
        key_sep,
        out: String::new(),
    };
    w.value(v, 0)?;
    Ok(w.out)
}

struct JsonWriter<'a> {
    opts: &'a JsonOptions,
    item_sep: String,
    key_sep: String,
    out: String,
}

impl JsonWriter<'_> {
    fn newline(&mut self, depth: usize) -> Result<(), Error> {
        if let Some(ind) = &self.opts.indent {
            let grow = 1 + depth as u128 * ind.len() as u128;
            limits::check_bytes("tojson", self.out.len() as u128 + grow)?;
            self.out.push('\n');
            for _ in 0..depth {
                self.out.push_str(ind);
            }
        }
        Ok(())
    }

    fn string(&mut self, s: &str) {
        self.out.push('"');
        for c in s.chars() {
            match c {
                '"' => self.out.push_str("\\\""),
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                '\r' => self.out.push_str("\\r"),
                '\t' => self.out.push_str("\\t"),
                '\u{8}' => self.out.push_str("\\b"),
                '\u{c}' => self.out.push_str("\\f"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(self.out, "\\u{:04x}", c as u32);
                }
                c if self.opts.ensure_ascii && (c as u32) > 0x7e => {
                    let mut buf = [0u16; 2];
                    for unit in c.encode_utf16(&mut buf) {
                        let _ = write!(self.out, "\\u{:04x}", unit);
                    }
                }
                c => self.out.push(c),
            }
        }
        self.out.push('"');
    }

    fn key(&mut self, k: &Value) -> Result<(), Error> {
        match k.kind() {
            ValueKind::String => self.string(k.as_str().unwrap_or_default()),
            ValueKind::None => self.out.push_str("\"null\""),
            ValueKind::Bool => {
                self.out
                    .push_str(if k.is_true() { "\"true\"" } else { "\"false\"" })
            }
            ValueKind::Number => {
                let s = self.number(k);
                self.string(&s);
            }
            other => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: keys must be str, int, float, bool or None, not {other}"),
                ))
            }
        }
        Ok(())
    }

    fn number(&self, v: &Value) -> String {
        if v.is_integer() {
            return v.to_string();
        }
        match f64::try_from(v.clone()) {
            Ok(f) if f.is_nan() => "NaN".into(),
            Ok(f) if f.is_infinite() => {
                if f > 0.0 {
                    "Infinity".into()
                } else {
                    "-Infinity".into()
                }
            }
            Ok(f) => float_repr(f),
            Err(_) => v.to_string(),
        }
    }

    fn value(&mut self, v: &Value, depth: usize) -> Result<(), Error> {
        limits::check_bytes("tojson", self.out.len() as u128)?;
        if depth > 500 {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson: value nested too deeply",
            ));
        }
        match v.kind() {
            ValueKind::None => self.out.push_str("null"),
            ValueKind::Bool => self
                .out
                .push_str(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number => {
                let s = self.number(v);
                self.out.push_str(&s);
            }
            ValueKind::String => self.string(v.as_str().unwrap_or_default()),
            ValueKind::Iterable if v.downcast_object_ref::<PyGenerator>().is_some() => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "Object of type generator is not JSON serializable",
                ));
            }
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = v.try_iter()?.collect();
                if items.is_empty() {
                    self.out.push_str("[]");
                    return Ok(());
                }
                self.out.push('[');
                self.newline(depth + 1)?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        let sep = self.item_sep.clone();
                        self.out.push_str(&sep);
                        self.newline(depth + 1)?;
                    }
                    self.value(item, depth + 1)?;
                }
                self.newline(depth)?;
                self.out.push(']');
            }
            ValueKind::Map => {
                let mut pairs: Vec<(Value, Value)> =
                    match v.as_object().and_then(|o| o.try_iter_pairs()) {
                        Some(it) => it.collect(),
                        None => Vec::new(),
                    };
                if self.opts.sort_keys {
                    pairs.sort_by(|a, b| a.0.cmp(&b.0));
                }
                if pairs.is_empty() {
                    self.out.push_str("{}");
                    return Ok(());
                }
                self.out.push('{');
                self.newline(depth + 1)?;
                for (i, (k, val)) in pairs.iter().enumerate() {
                    if i > 0 {
                        let sep = self.item_sep.clone();
                        self.out.push_str(&sep);
                        self.newline(depth + 1)?;
                    }
                    self.key(k)?;
                    let sep = self.key_sep.clone();
                    self.out.push_str(&sep);
                    self.value(val, depth + 1)?;
                }
                self.newline(depth)?;
                self.out.push('}');
            }
            ValueKind::Undefined => {
                return Err(Error::new(
                    ErrorKind::UndefinedError,
                    "tojson: Object of type Undefined is not JSON serializable",
                ))
            }
            other => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: Object of type {other} is not JSON serializable"),
                ))
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_like_python() {
        let cases = [
            (1.0, "1.0"),
            (0.5, "0.5"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (1e15, "1000000000000000.0"),
            (123456.789, "123456.789"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.25e-7, "1.25e-07"),
            (-2.5, "-2.5"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1e300, "1e+300"),
        ];
        for (f, want) in cases {
            assert_eq!(float_repr(f), want, "{f}");
        }
    }

    #[test]
    fn str_and_repr() {
        let v = Value::from_serialize(serde_json::json!(
            [{"a": 1, "b": null, "c": true, "d": "it's", "e": 1.0, "f": [] }, "x\n"]
        ));
        assert_eq!(
            py_str(&v).unwrap(),
            r#"[{'a': 1, 'b': None, 'c': True, 'd': "it's", 'e': 1.0, 'f': []}, 'x\n']"#
        );
        assert_eq!(py_str(&Value::from(())).unwrap(), "None");
        assert_eq!(py_str(&Value::from(false)).unwrap(), "False");
        assert_eq!(py_str(&Value::UNDEFINED).unwrap(), "");
    }

    #[test]
    fn dumps_like_python() {
        let v = Value::from_serialize(serde_json::json!(
            {"b": [1, 2.5, "é\"\u{1}"], "a": {}, "c": [], "d": null}
        ));
        let d = JsonOptions::default();
        assert_eq!(
            json_dumps(&v, &d).unwrap(),
            r#"{"b": [1, 2.5, "é\"\u0001"], "a": {}, "c": [], "d": null}"#
        );
        let o = JsonOptions {
            ensure_ascii: true,
            indent: Some("  ".into()),
            sort_keys: true,
            ..d.clone()
        };
        assert_eq!(
            json_dumps(&v, &o).unwrap(),
            "{\n  \"a\": {},\n  \"b\": [\n    1,\n    2.5,\n    \"\\u00e9\\\"\\u0001\"\n  ],\n  \"c\": [],\n  \"d\": null\n}"
        );
        let o = JsonOptions {
            separators: Some((",".into(), ":".into())),
            ..d
        };
        assert_eq!(
            json_dumps(&v, &o).unwrap(),
            r#"{"b":[1,2.5,"é\"\u0001"],"a":{},"c":[],"d":null}"#
        );
    }
}
