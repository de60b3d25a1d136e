//! Size-checked replacements for the engine's methods and filters that can be asked to
//! allocate without bound (`str.replace`, `str.join`, `str.format`, `|format`, `|batch`,
//! `|slice`, `|pprint`), and the guard on namespace stores that keeps every value acyclic
//! and shallow. Each checks what it would build against [`super::limits`] before building
//! it, then does exactly what minijinja (or minijinja-contrib's pycompat) does.

use std::fmt::Write;

use minijinja::value::{Rest, ValueKind};
use minijinja::{Error, ErrorKind, State, Value};

use super::limits::{check_bytes, check_depth, check_format_spec, check_items, exceeded};

/// Name of the filter `preprocess::guard_namespace_stores` wraps around the value of
/// every `{% set ns.attr = … %}`; its argument is the namespace.
pub const NAMESPACE_FILTER: &str = "__rmlx_ns_value";

/// Checks the string methods pycompat implements without limits, before pycompat runs
/// them; `Ok(Some(v))` when the method was computed here.
pub fn string_method(s: &str, method: &str, args: &[Value]) -> Result<Option<Value>, Error> {
    match method {
        "replace" => {
            replace_size(s, args)?;
            Ok(None)
        }
        "format" => {
            check_format_spec("str.format", s, false)?;
            Ok(None)
        }
        "join" => {
            let items = args.first().ok_or_else(|| {
                Error::new(ErrorKind::MissingArgument, "join: missing the iterable")
            })?;
            join_display(s, items).map(Some)
        }
        _ => Ok(None),
    }
}

/// `s.replace(old, new[, count])`: fails when the result would be over the limit.
fn replace_size(s: &str, args: &[Value]) -> Result<(), Error> {
    let (Some(old), Some(new)) = (
        args.first().and_then(Value::as_str),
        args.get(1).and_then(Value::as_str),
    ) else {
        return Ok(()); // pycompat reports the argument error
    };
    let count = args.get(2).and_then(Value::as_i64).unwrap_or(-1);
    replaced_len("str.replace", s, old, new, count)
}

/// Fails when replacing `old` by `new` in `s` (at most `count` times when `count >= 0`)
/// would build a string over the limit. An empty `old` matches between every character.
pub fn replaced_len(what: &str, s: &str, old: &str, new: &str, count: i64) -> Result<(), Error> {
    if new.len() <= old.len() {
        return Ok(());
    }
    let mut n = if old.is_empty() {
        s.chars().count() as u128 + 1
    } else {
        s.matches(old).count() as u128
    };
    if count >= 0 {
        n = n.min(count as u128);
    }
    check_bytes(what, s.len() as u128 + n * (new.len() - old.len()) as u128)
}

/// pycompat's `sep.join(items)` (items printed with their display form), checking the
/// length before each piece is appended.
fn join_display(sep: &str, items: &Value) -> Result<Value, Error> {
    let mut rv = String::new();
    let mut piece = String::new();
    for (idx, item) in items.try_iter()?.enumerate() {
        piece.clear();
        match item.as_str() {
            Some(s) => piece.push_str(s),
            None => {
                let _ = write!(piece, "{item}");
            }
        }
        let sep_len = if idx > 0 { sep.len() } else { 0 };
        check_bytes("str.join", (rv.len() + sep_len + piece.len()) as u128)?;
        if idx > 0 {
            rv.push_str(sep);
        }
        rv.push_str(&piece);
    }
    Ok(Value::from(rv))
}

/// jinja2's `|format` (printf style) with its widths and precisions checked.
pub fn format(state: &State, fmt: &Value, args: Rest<Value>) -> Result<Value, Error> {
    if let Some(s) = fmt.as_str() {
        check_format_spec("format", s, true)?;
    }
    minijinja::filters::format(state, fmt, args)
}

/// `|batch(count, fill_with=None)`: without a fill value a batch never holds more items
/// than the input has, so a huge count is the same as the input's length.
pub fn batch(
    state: &State,
    value: Value,
    count: i64,
    fill_with: Option<Value>,
) -> Result<Value, Error> {
    let count = positive_count("batch", count)?;
    let items: Vec<Value> = value.try_iter()?.collect();
    let count = if fill_with.is_some() {
        check_items("batch", count as u128)?;
        count
    } else {
        count.min(items.len().max(1) as u64)
    };
    minijinja::filters::batch(state, Value::from(items), count as usize, fill_with)
}

/// `|slice(count, fill_with=None)`: builds `count` lists, so `count` is checked.
pub fn slice(
    state: &State,
    value: Value,
    count: i64,
    fill_with: Option<Value>,
) -> Result<Value, Error> {
    let count = positive_count("slice", count)?;
    check_items("slice", count as u128)?;
    minijinja::filters::slice(state, value, count as usize, fill_with)
}

fn positive_count(what: &str, count: i64) -> Result<u64, Error> {
    u64::try_from(count).ok().filter(|c| *c > 0).ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("{what}: count must be positive"),
        )
    })
}

/// `|pprint`: minijinja's debug form, after checking the value is bounded.
pub fn pprint(v: &Value) -> Result<Value, Error> {
    let mut budget = super::limits::MAX_ITEMS;
    walk(v, 0, &mut budget, &mut |_| Ok(()))?;
    let mut out = String::new();
    let _ = write!(out, "{v:#?}");
    Ok(Value::from(out))
}

/// The value of `{% set ns.attr = value %}`, refused when it contains `ns` itself (a cycle
/// no printer or comparison could finish), nests deeper than the limit, or expands to
/// more than the item limit (shared sub-lists counted each time they appear).
pub fn namespace_value(value: Value, ns: &Value) -> Result<Value, Error> {
    let mut budget = super::limits::MAX_ITEMS;
    walk(&value, 0, &mut budget, &mut |item| {
        if minijinja::tests::is_sameas(item, ns) {
            Err(exceeded(
                "a namespace cannot contain itself (the value stored refers back to it)",
            ))
        } else {
            Ok(())
        }
    })?;
    Ok(value)
}

/// Visits every list, dict and namespace inside `v` (depth first), failing past the depth
/// limit or after `budget` containers and items.
fn walk(
    v: &Value,
    depth: usize,
    budget: &mut usize,
    visit: &mut dyn FnMut(&Value) -> Result<(), Error>,
) -> Result<(), Error> {
    if v.as_object().is_none() {
        return Ok(());
    }
    check_depth("value", depth)?;
    visit(v)?;
    let children: Vec<Value> = match v.kind() {
        ValueKind::Seq => v.try_iter()?.collect(),
        ValueKind::Map => match v.as_object().and_then(|o| o.try_iter_pairs()) {
            Some(pairs) => pairs.map(|(_, val)| val).collect(),
            None => Vec::new(),
        },
        _ => return Ok(()),
    };
    if children.len() > *budget {
        return Err(exceeded(format!(
            "value has more than {} items in all",
            super::limits::MAX_ITEMS
        )));
    }
    *budget -= children.len();
    for child in &children {
        walk(child, depth + 1, budget, visit)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_sizes() {
        assert!(replaced_len("r", &"a".repeat(100_000), "", &"b".repeat(100_000), -1).is_err());
        assert!(replaced_len("r", &"a".repeat(100_000), "", &"b".repeat(100_000), 3).is_ok());
        assert!(replaced_len("r", "aaa", "a", "bb", -1).is_ok());
        assert!(replaced_len("r", &"a".repeat(1000), "a", &"b".repeat(1_000_000), -1).is_err());
    }
}
