//! The minijinja [`Environment`] configured like Hugging Face transformers'
//! `apply_chat_template` (jinja2 `ImmutableSandboxedEnvironment(trim_blocks=True,
//! lstrip_blocks=True)` + loop controls + `{% generation %}`):
//!
//! - trim_blocks, lstrip_blocks, no trailing newline kept, no auto-escaping;
//! - lenient undefined values (jinja2's default `Undefined`);
//! - Python `str()` output formatting (`None`, `True`, `['a']`) and a Python `string` filter;
//! - Python methods on values: minijinja-contrib `pycompat` plus what it lacks
//!   (`rsplit`, `index`, `partition`, `removeprefix`, …);
//! - `raise_exception(msg)`, `strftime_now(fmt)`, a `tojson` matching
//!   `json.dumps(x, ensure_ascii=False, …)` with its keyword arguments;
//! - a fuel limit so runaway templates fail fast.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use minijinja::value::{from_args, Enumerator, Kwargs, Object, ObjectRepr, Rest, ValueKind};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, State, UndefinedBehavior, Value};
use tracing::debug;

use super::guarded;
use super::limits::{check_bytes, check_output, check_width};
use super::pyfmt::{json_dumps, py_str, JsonOptions};
use super::strftime;
use super::TemplateOptions;

/// The message of a `raise_exception(msg)` call, attached as the error's source so the
/// caller can tell a deliberate template rejection from an engine failure.
#[derive(Debug, Clone)]
pub struct RaisedByTemplate(pub String);

impl std::fmt::Display for RaisedByTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedByTemplate {}

/// A fresh environment with the transformers-compatible configuration.
pub fn build(opts: &TemplateOptions) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(false);
    env.set_undefined_behavior(UndefinedBehavior::Lenient);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_debug(true);
    env.set_fuel(opts.fuel);
    env.set_formatter(python_formatter);
    env.set_unknown_method_callback(unknown_method);
    minijinja_contrib::add_to_environment(&mut env);

    env.add_global("dict", Value::from_object(PyDict));
    env.add_function("raise_exception", raise_exception);
    let now = opts.now;
    env.add_function("strftime_now", move |fmt: &str| -> Result<String, Error> {
        let t = now.map_or_else(strftime::Instant::now, strftime::Instant::at);
        strftime::strftime_local(fmt, t)
    });
    env.add_filter(super::preprocess::ITERABLE_FILTER, iterable_guard);
    env.add_filter("tojson", tojson);
    env.add_filter("string", |v: &Value| py_str(v).map(Value::from));
    env.add_filter("join", join);
    // jinja2 string filters stringify their input with Python `str()` first
    // (`[{'type': 'text'}]|trim`), not with minijinja's JSON-like form.
    env.add_filter(
        "trim",
        |v: &Value, chars: Option<Value>| -> Result<Value, Error> {
            let s = py_str(v)?;
            Ok(Value::from(match chars.as_ref().and_then(|c| c.as_str()) {
                Some(c) => s.trim_matches(|x| c.contains(x)).to_string(),
                None => s.trim().to_string(),
            }))
        },
    );
    env.add_filter("upper", |v: &Value| {
        py_str(v).map(|s| Value::from(s.to_uppercase()))
    });
    env.add_filter("lower", |v: &Value| {
        py_str(v).map(|s| Value::from(s.to_lowercase()))
    });
    env.add_filter("capitalize", |v: &Value| -> Result<Value, Error> {
        let s = py_str(v)?;
        let mut chars = s.chars();
        Ok(Value::from(match chars.next() {
            Some(first) => {
                first.to_uppercase().collect::<String>() + &chars.as_str().to_lowercase()
            }
            None => String::new(),
        }))
    });
    env.add_filter("replace", replace);
    env.add_filter("format", guarded::format);
    env.add_filter("batch", guarded::batch);
    env.add_filter("slice", guarded::slice);
    env.add_filter("pprint", guarded::pprint);
    env.add_filter(guarded::NAMESPACE_FILTER, |v: Value, ns: Value| {
        guarded::namespace_value(v, &ns)
    });
    // jinja2's map/select/reject/selectattr/rejectattr/unique return one-shot generators.
    env.add_filter("map", |st: &State, v: Value, args: Rest<Value>| {
        minijinja::filters::map(st, v, args).map(generator)
    });
    env.add_filter(
        "select",
        |st: &State, v: Value, t: Option<Cow<'_, str>>, args: Rest<Value>| {
            minijinja::filters::select(st, v, t, args).map(generator)
        },
    );
    env.add_filter(
        "reject",
        |st: &State, v: Value, t: Option<Cow<'_, str>>, args: Rest<Value>| {
            minijinja::filters::reject(st, v, t, args).map(generator)
        },
    );
    env.add_filter(
        "selectattr",
        |st: &State, v: Value, a: Cow<'_, str>, t: Option<Cow<'_, str>>, args: Rest<Value>| {
            minijinja::filters::selectattr(st, v, a, t, args).map(generator)
        },
    );
    env.add_filter(
        "rejectattr",
        |st: &State, v: Value, a: Cow<'_, str>, t: Option<Cow<'_, str>>, args: Rest<Value>| {
            minijinja::filters::rejectattr(st, v, a, t, args).map(generator)
        },
    );
    env.add_filter("unique", |st: &State, v: Value, kwargs: Kwargs| {
        let items: Vec<Value> = minijinja::filters::unique(st, v, kwargs)?
            .try_iter()?
            .collect();
        Ok::<_, Error>(generator(items))
    });
    env.add_filter("escape", |v: &Value| escape(v, false));
    env.add_filter("e", |v: &Value| escape(v, false));
    env.add_filter("forceescape", |v: &Value| escape(v, true));
    env.add_filter("length", length);
    env.add_filter("count", length);
    env.add_filter("indent", indent);
    env.add_test("iterable", is_iterable);
    env.add_test("sequence", is_sequence);
    env
}

/// Inserted around every for-loop iterable (see `preprocess::guard_for_iterables`): jinja2
/// cannot iterate `None`, numbers or booleans (Python raises), while minijinja iterates `none`
/// as empty. Undefined iterates as empty in both.
fn iterable_guard(v: Value) -> Result<Value, Error> {
    let ty = match v.kind() {
        ValueKind::None => "NoneType",
        ValueKind::Bool => "bool",
        ValueKind::Number if v.as_i64().is_some() && !v.to_string().contains('.') => "int",
        ValueKind::Number => "float",
        _ => return Ok(v),
    };
    Err(Error::new(
        ErrorKind::InvalidOperation,
        format!("'{ty}' object is not iterable"),
    ))
}

/// A Python generator (what jinja2's `map`, `select`, … return): iterable once — items are
/// consumed as they are iterated, as in Python — always true, without a length, not
/// indexable, not JSON-serializable, printed as `<generator object>`.
#[derive(Debug)]
pub struct PyGenerator {
    items: Mutex<VecDeque<Value>>,
}

fn generator(items: Vec<Value>) -> Value {
    Value::from_object(PyGenerator {
        items: Mutex::new(items.into()),
    })
}

struct Drain(Arc<PyGenerator>);

impl Iterator for Drain {
    type Item = Value;
    fn next(&mut self) -> Option<Value> {
        self.0.items.lock().ok()?.pop_front()
    }
}

impl Object for PyGenerator {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Iterable
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Iter(Box::new(Drain(self.clone())))
    }

    fn is_true(self: &Arc<Self>) -> bool {
        true
    }

    fn render(self: &Arc<Self>, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<generator object>")
    }
}

/// jinja2 `replace(old, new, count=None)` on `str()` of its input, size-checked.
fn replace(v: &Value, old: &Value, new: &Value, count: Option<i64>) -> Result<Value, Error> {
    let (s, old, new) = (py_str(v)?, py_str(old)?, py_str(new)?);
    let count = count.unwrap_or(-1);
    guarded::replaced_len("replace", &s, &old, &new, count)?;
    Ok(Value::from(if count >= 0 {
        s.replacen(&old, &new, count as usize)
    } else {
        s.replace(&old, &new)
    }))
}

/// jinja2 `escape` (markupsafe): `&`, `<`, `>`, `'`, `"` become `&amp;`, `&lt;`, `&gt;`,
/// `&#39;`, `&#34;`; an already safe string is returned unchanged unless `force`.
fn escape(v: &Value, force: bool) -> Result<Value, Error> {
    if v.is_safe() && !force {
        return Ok(v.clone());
    }
    let s = py_str(v)?;
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&#39;"),
            '"' => out.push_str("&#34;"),
            c => out.push(c),
        }
    }
    Ok(Value::from_safe_string(out))
}

/// jinja2 `length`: `len(Undefined)` is 0.
fn length(v: &Value) -> Result<Value, Error> {
    if v.is_undefined() {
        return Ok(Value::from(0));
    }
    minijinja::filters::length(v).map(Value::from)
}

/// jinja2 `iterable` (`iter(x)` succeeds): none, numbers and booleans are not iterable;
/// undefined is (it iterates as empty).
fn is_iterable(v: &Value) -> bool {
    match v.kind() {
        ValueKind::Undefined => true,
        ValueKind::None | ValueKind::Bool | ValueKind::Number => false,
        _ => v.try_iter().is_ok(),
    }
}

/// jinja2 `sequence` (has `len` and `__getitem__`): strings, lists and dicts are sequences,
/// and so is undefined.
fn is_sequence(v: &Value) -> bool {
    matches!(
        v.kind(),
        ValueKind::Undefined
            | ValueKind::String
            | ValueKind::Seq
            | ValueKind::Map
            | ValueKind::Bytes
    )
}

/// jinja2 `indent(width=4, first=False, blank=False)`, including its handling of a
/// trailing newline (`s + "\n"` then `splitlines`).
fn indent(
    v: &Value,
    width: Option<Value>,
    first: Option<bool>,
    blank: Option<bool>,
    kwargs: Kwargs,
) -> Result<Value, Error> {
    let width = match kwargs.get::<Option<Value>>("width")?.or(width) {
        None => "    ".to_string(),
        Some(w) => match w.as_str() {
            Some(s) => s.to_string(),
            None => {
                let n = w.as_i64().unwrap_or(4).max(0);
                check_width("indent", n.into())?;
                " ".repeat(n as usize)
            }
        },
    };
    let first = kwargs
        .get::<Option<bool>>("first")?
        .or(first)
        .unwrap_or(false);
    let blank = kwargs
        .get::<Option<bool>>("blank")?
        .or(blank)
        .unwrap_or(false);
    kwargs.assert_all_used()?;
    let s = format!("{}\n", py_str(v)?);
    let lines = py_splitlines(&s);
    let grown = (lines.len() as u128 + 1) * (width.len() as u128 + 1);
    check_bytes("indent", s.len() as u128 + grown)?;
    let mut rv = if blank {
        lines.join(&format!("\n{width}"))
    } else {
        let mut it = lines.into_iter();
        let mut rv = it.next().unwrap_or_default().to_string();
        let rest: Vec<String> = it
            .map(|l| {
                if l.is_empty() {
                    String::new()
                } else {
                    format!("{width}{l}")
                }
            })
            .collect();
        if !rest.is_empty() {
            rv.push('\n');
            rv.push_str(&rest.join("\n"));
        }
        rv
    };
    if first {
        rv = format!("{width}{rv}");
    }
    Ok(Value::from(rv))
}

/// Python `str.splitlines()` (no keepends).
fn py_splitlines(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let bytes: Vec<(usize, char)> = s.char_indices().collect();
    let mut i = 0;
    while i < bytes.len() {
        let (pos, c) = bytes[i];
        let is_break = matches!(
            c,
            '\n' | '\r'
                | '\u{b}'
                | '\u{c}'
                | '\u{1c}'
                | '\u{1d}'
                | '\u{1e}'
                | '\u{85}'
                | '\u{2028}'
                | '\u{2029}'
        );
        if is_break {
            out.push(&s[start..pos]);
            let mut next = pos + c.len_utf8();
            if c == '\r' && bytes.get(i + 1).is_some_and(|(_, n)| *n == '\n') {
                next += 1;
                i += 1;
            }
            start = next;
        }
        i += 1;
    }
    if start < s.len() {
        out.push(&s[start..]);
    }
    out
}

/// Python's `dict` as a jinja2 global: `dict(pairs)`, `dict(mapping)`, `dict(**kw)`,
/// `dict.fromkeys(keys, value=None)`. Any other attribute call `dict.x(arg)` behaves like
/// `dict(arg)`, as in jinja2, where it resolves to the generic alias `dict['x']`.
#[derive(Debug)]
struct PyDict;

impl std::fmt::Display for PyDict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<class 'dict'>")
    }
}

impl Object for PyDict {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn call(self: &Arc<Self>, _state: &State<'_, '_>, args: &[Value]) -> Result<Value, Error> {
        let (value, kwargs): (Option<Value>, Kwargs) = from_args(args)?;
        let value = match value {
            Some(v) if matches!(v.kind(), ValueKind::Seq | ValueKind::Iterable) => {
                let mut pairs = Vec::new();
                for item in v.try_iter()? {
                    let kv: Vec<Value> = item.try_iter()?.collect();
                    match <[Value; 2]>::try_from(kv) {
                        Ok([k, v]) => pairs.push((k, v)),
                        Err(_) => {
                            return Err(Error::new(
                                ErrorKind::InvalidOperation,
                                "dict(): sequence elements must be pairs",
                            ))
                        }
                    }
                }
                Some(Value::from_iter(pairs))
            }
            other => other,
        };
        minijinja::functions::dict(value, kwargs)
    }

    fn call_method(
        self: &Arc<Self>,
        state: &State<'_, '_>,
        method: &str,
        args: &[Value],
    ) -> Result<Value, Error> {
        if method == "fromkeys" {
            let (keys, value): (Value, Option<Value>) = from_args(args)?;
            let value = value.unwrap_or(Value::from(()));
            let pairs: Vec<(Value, Value)> = keys.try_iter()?.map(|k| (k, value.clone())).collect();
            return Ok(Value::from_iter(pairs));
        }
        debug!(
            method,
            "dict.{method}(...) behaves as dict(...), like jinja2's generic alias"
        );
        self.call(state, args)
    }
}

fn python_formatter(
    out: &mut minijinja::Output,
    state: &State,
    value: &Value,
) -> Result<(), Error> {
    match value.kind() {
        ValueKind::Undefined => Ok(()),
        ValueKind::String => {
            let s = value.as_str().unwrap_or_default();
            check_output(s.len())?;
            out.write_str(s).map_err(Error::from)
        }
        ValueKind::None | ValueKind::Bool | ValueKind::Number | ValueKind::Seq | ValueKind::Map => {
            let s = py_str(value)?;
            check_output(s.len())?;
            out.write_str(&s).map_err(Error::from)
        }
        _ => minijinja::escape_formatter(out, state, value),
    }
}

fn raise_exception(msg: Option<Value>) -> Result<Value, Error> {
    let msg = match msg {
        Some(m) => py_str(&m)?,
        None => String::new(),
    };
    Err(Error::new(ErrorKind::InvalidOperation, msg.clone()).with_source(RaisedByTemplate(msg)))
}

/// jinja2 `join(d='', attribute=None)` with Python `str()` of the items.
fn join(v: &Value, sep: Option<&str>, kwargs: Kwargs) -> Result<Value, Error> {
    let attribute: Option<Value> = kwargs.get("attribute")?;
    let sep: String = match sep {
        Some(s) => s.to_string(),
        None => kwargs.get::<Option<String>>("d")?.unwrap_or_default(),
    };
    kwargs.assert_all_used()?;
    if v.is_undefined() {
        return Ok(Value::from(""));
    }
    if v.is_none() {
        // Python: str.join(map(str, None))
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "'NoneType' object is not iterable",
        ));
    }
    if let Some(s) = v.as_str() {
        // join over a string's characters
        let sep_bytes = sep.len() as u128 * s.chars().count() as u128;
        check_bytes("join", s.len() as u128 + sep_bytes)?;
        let chars: Vec<String> = s.chars().map(String::from).collect();
        return Ok(Value::from(chars.join(&sep)));
    }
    let mut out = String::new();
    for (i, item) in v.try_iter()?.enumerate() {
        if i > 0 {
            check_bytes("join", (out.len() + sep.len()) as u128)?;
            out.push_str(&sep);
        }
        let item = match &attribute {
            Some(attr) => match attr.as_str() {
                Some(path) => {
                    let mut cur = item;
                    for part in path.split('.') {
                        cur = match part.parse::<usize>() {
                            Ok(idx) => cur.get_item(&Value::from(idx))?,
                            Err(_) => cur.get_attr(part)?,
                        };
                    }
                    cur
                }
                None => item.get_item(attr)?,
            },
            None => item,
        };
        let piece = py_str(&item)?;
        check_bytes("join", (out.len() + piece.len()) as u128)?;
        out.push_str(&piece);
    }
    Ok(Value::from(out))
}

/// `tojson` like transformers: `json.dumps(x, ensure_ascii=False, indent=None,
/// separators=None, sort_keys=False)`; positional arguments in that order are accepted too.
fn tojson(v: &Value, args: Rest<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    let mut opts = JsonOptions::default();
    let names = ["ensure_ascii", "indent", "separators", "sort_keys"];
    let mut given: Vec<(&str, Value)> = Vec::new();
    for (i, a) in args.iter().enumerate() {
        let Some(name) = names.get(i) else {
            return Err(Error::new(
                ErrorKind::TooManyArguments,
                "tojson takes at most 4 positional arguments",
            ));
        };
        given.push((name, a.clone()));
    }
    for name in names {
        if let Some(val) = kwargs.get::<Option<Value>>(name)? {
            given.push((name, val));
        }
    }
    kwargs.assert_all_used()?;
    for (name, val) in given {
        match name {
            "ensure_ascii" => opts.ensure_ascii = val.is_true(),
            "sort_keys" => opts.sort_keys = val.is_true(),
            "indent" => {
                opts.indent = match val.kind() {
                    ValueKind::None | ValueKind::Undefined => None,
                    ValueKind::String => Some(val.as_str().unwrap_or_default().to_string()),
                    ValueKind::Number => {
                        let n = val.as_i64().unwrap_or(0).max(0);
                        check_width("tojson indent", n.into())?;
                        Some(" ".repeat(n as usize))
                    }
                    other => {
                        return Err(Error::new(
                            ErrorKind::InvalidOperation,
                            format!("tojson: indent must be an int or a string, not {other}"),
                        ))
                    }
                }
            }
            "separators" => {
                if val.is_none() || val.is_undefined() {
                    opts.separators = None;
                } else {
                    let parts: Vec<Value> = val.try_iter()?.collect();
                    match parts.as_slice() {
                        [a, b] if a.as_str().is_some() && b.as_str().is_some() => {
                            opts.separators = Some((
                                a.as_str().unwrap_or_default().to_string(),
                                b.as_str().unwrap_or_default().to_string(),
                            ));
                        }
                        _ => {
                            return Err(Error::new(
                                ErrorKind::InvalidOperation,
                                "tojson: separators must be a pair of strings",
                            ))
                        }
                    }
                }
            }
            _ => {}
        }
    }
    json_dumps(v, &opts).map(Value::from_safe_string)
}

/// pycompat first; then the Python methods it lacks.
fn unknown_method(
    state: &State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, Error> {
    if let Some(s) = value.as_str() {
        if let Some(done) = guarded::string_method(s, method, args)? {
            return Ok(done);
        }
    }
    match minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args) {
        Err(e) if e.kind() == ErrorKind::UnknownMethod => {}
        other => return other,
    }
    let rv = match value.kind() {
        ValueKind::Undefined => {
            return Err(Error::new(
                ErrorKind::UndefinedError,
                format!("cannot call method {method}() on an undefined value"),
            ))
        }
        ValueKind::None => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("'NoneType' object has no attribute '{method}'"),
            ))
        }
        ValueKind::String => string_methods(value.as_str().unwrap_or_default(), method, args),
        ValueKind::Seq => seq_methods(value, method, args),
        ValueKind::Map => map_methods(value, method, args),
        _ => Err(Error::from(ErrorKind::UnknownMethod)),
    };
    if let Err(e) = &rv {
        if e.kind() == ErrorKind::UnknownMethod {
            debug!(method, kind = %value.kind(), "template called an unsupported method");
            return Err(Error::new(
                ErrorKind::UnknownMethod,
                format!("{} has no method named {method}", value.kind()),
            ));
        }
    }
    rv
}

fn arg_str<'a>(args: &'a [Value], i: usize, what: &str) -> Result<&'a str, Error> {
    args.get(i).and_then(|v| v.as_str()).ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("{what}: argument {} must be a string", i + 1),
        )
    })
}

fn opt_i64(args: &[Value], i: usize) -> Option<i64> {
    args.get(i)
        .filter(|v| !v.is_none())
        .and_then(|v| v.as_i64())
}

fn string_methods(s: &str, method: &str, args: &[Value]) -> Result<Value, Error> {
    match method {
        "rsplit" => {
            let sep = args
                .first()
                .filter(|v| !v.is_none())
                .and_then(|v| v.as_str());
            let max = opt_i64(args, 1).unwrap_or(-1);
            let parts: Vec<String> = match sep {
                Some("") => {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        "rsplit: empty separator",
                    ))
                }
                Some(sep) if max < 0 => s.split(sep).map(str::to_string).collect(),
                Some(sep) => s
                    .rsplitn(max as usize + 1, sep)
                    .map(str::to_string)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect(),
                None => {
                    let words: Vec<&str> = s.split_whitespace().collect();
                    if max < 0 || words.len() <= max as usize + 1 {
                        words.into_iter().map(str::to_string).collect()
                    } else {
                        // keep the leading remainder intact (trailing whitespace stripped)
                        let mut rest = s.trim_end();
                        let mut tail = Vec::new();
                        for _ in 0..max {
                            let cut = rest.rfind(char::is_whitespace).map_or(0, |p| p);
                            let word = rest[cut..].trim_start();
                            tail.push(word.to_string());
                            rest = rest[..cut].trim_end();
                        }
                        tail.push(rest.to_string());
                        tail.reverse();
                        tail
                    }
                }
            };
            Ok(Value::from(parts))
        }
        "index" | "rindex" => {
            let sub = arg_str(args, 0, method)?;
            let found = if method == "index" {
                s.find(sub)
            } else {
                s.rfind(sub)
            };
            match found {
                Some(b) => Ok(Value::from(s[..b].chars().count())),
                None => Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "substring not found",
                )),
            }
        }
        "partition" | "rpartition" => {
            let sep = arg_str(args, 0, method)?;
            let found = if method == "partition" {
                s.find(sep)
            } else {
                s.rfind(sep)
            };
            let parts = match found {
                Some(b) => vec![&s[..b], sep, &s[b + sep.len()..]],
                None if method == "partition" => vec![s, "", ""],
                None => vec!["", "", s],
            };
            Ok(Value::from(
                parts.into_iter().map(str::to_string).collect::<Vec<_>>(),
            ))
        }
        "removeprefix" => {
            let p = arg_str(args, 0, method)?;
            Ok(Value::from(s.strip_prefix(p).unwrap_or(s)))
        }
        "removesuffix" => {
            let p = arg_str(args, 0, method)?;
            Ok(Value::from(s.strip_suffix(p).unwrap_or(s)))
        }
        "casefold" => Ok(Value::from(s.to_lowercase())),
        "swapcase" => Ok(Value::from(
            s.chars()
                .flat_map(|c| {
                    if c.is_uppercase() {
                        c.to_lowercase().collect::<Vec<_>>()
                    } else {
                        c.to_uppercase().collect::<Vec<_>>()
                    }
                })
                .collect::<String>(),
        )),
        "zfill" => {
            let width = opt_i64(args, 0).unwrap_or(0).max(0);
            check_width("str.zfill", width.into())?;
            let width = width as usize;
            let len = s.chars().count();
            if len >= width {
                return Ok(Value::from(s));
            }
            let (sign, digits) = match s.chars().next() {
                Some(c @ ('+' | '-')) => (c.to_string(), &s[1..]),
                _ => (String::new(), s),
            };
            Ok(Value::from(format!(
                "{sign}{}{digits}",
                "0".repeat(width - len)
            )))
        }
        "ljust" | "rjust" | "center" => {
            let width = opt_i64(args, 0).unwrap_or(0).max(0);
            check_width(method, width.into())?;
            let width = width as usize;
            let fill = args
                .get(1)
                .and_then(|v| v.as_str())
                .and_then(|f| f.chars().next())
                .unwrap_or(' ');
            let len = s.chars().count();
            if len >= width {
                return Ok(Value::from(s));
            }
            let pad = width - len;
            let (left, right) = match method {
                "ljust" => (0, pad),
                "rjust" => (pad, 0),
                _ => {
                    // CPython: left = pad/2 + (pad & width & 1)
                    let left = pad / 2 + (pad & width & 1);
                    (left, pad - left)
                }
            };
            let f = fill.to_string();
            Ok(Value::from(format!(
                "{}{s}{}",
                f.repeat(left),
                f.repeat(right)
            )))
        }
        "isidentifier" => Ok(Value::from(
            s.chars()
                .next()
                .is_some_and(|c| c == '_' || c.is_alphabetic())
                && s.chars().all(|c| c == '_' || c.is_alphanumeric()),
        )),
        "istitle" => {
            let mut prev_cased = false;
            let mut any = false;
            let mut ok = true;
            for c in s.chars() {
                if c.is_uppercase() {
                    if prev_cased {
                        ok = false;
                    }
                    prev_cased = true;
                    any = true;
                } else if c.is_lowercase() {
                    if !prev_cased {
                        ok = false;
                    }
                    prev_cased = true;
                    any = true;
                } else {
                    prev_cased = false;
                }
            }
            Ok(Value::from(ok && any))
        }
        "expandtabs" => {
            let size = opt_i64(args, 0).unwrap_or(8).max(0);
            check_width("str.expandtabs", size.into())?;
            let size = size as usize;
            let tabs = s.matches('\t').count() as u128;
            check_bytes("str.expandtabs", s.len() as u128 + tabs * size as u128)?;
            let mut out = String::new();
            let mut col = 0;
            for c in s.chars() {
                match c {
                    '\t' => {
                        if size > 0 {
                            let n = size - col % size;
                            out.push_str(&" ".repeat(n));
                            col += n;
                        }
                    }
                    '\n' | '\r' => {
                        out.push(c);
                        col = 0;
                    }
                    c => {
                        out.push(c);
                        col += 1;
                    }
                }
            }
            Ok(Value::from(out))
        }
        _ => Err(Error::from(ErrorKind::UnknownMethod)),
    }
}

fn seq_methods(v: &Value, method: &str, args: &[Value]) -> Result<Value, Error> {
    match method {
        "index" => {
            let what = args.first().ok_or_else(|| {
                Error::new(
                    ErrorKind::MissingArgument,
                    "index: missing the value to look for",
                )
            })?;
            for (i, item) in v.try_iter()?.enumerate() {
                if &item == what {
                    return Ok(Value::from(i));
                }
            }
            Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("{what} is not in list"),
            ))
        }
        "copy" => Ok(Value::from(v.try_iter()?.collect::<Vec<_>>())),
        "append" | "extend" | "pop" | "insert" | "remove" | "clear" | "sort" | "reverse" => {
            Err(immutable(method, "list"))
        }
        _ => Err(Error::from(ErrorKind::UnknownMethod)),
    }
}

fn map_methods(v: &Value, method: &str, _args: &[Value]) -> Result<Value, Error> {
    match method {
        "copy" => {
            let pairs = v
                .as_object()
                .and_then(|o| o.try_iter_pairs())
                .map(|it| it.collect::<Vec<_>>())
                .unwrap_or_default();
            Ok(Value::from_iter(pairs))
        }
        "update" | "pop" | "popitem" | "setdefault" | "clear" => Err(immutable(method, "dict")),
        _ => Err(Error::from(ErrorKind::UnknownMethod)),
    }
}

/// transformers renders in jinja2's *immutable* sandbox: mutating methods are refused there
/// too, so a template calling them fails in the reference as well.
fn immutable(method: &str, ty: &str) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!(
            "{ty}.{method}() modifies a value; chat templates run in an immutable sandbox (transformers refuses it too)"
        ),
    )
}
