//! What the template engine supports, asked of the engine itself: is a filter, test, method
//! or global function available? Used by lint to report engine gaps statically (before a
//! render reaches them).
//!
//! Answers come from evaluating a tiny expression in an environment built exactly like the
//! render environment ([`super::env::build`]), so they never drift from what a render does.
//! Results are cached per process.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, OnceLock};

use minijinja::{Environment, ErrorKind, Value};

use super::TemplateOptions;

/// Filters of jinja2 3.1 (what transformers' environment has besides `tojson`).
pub const JINJA2_FILTERS: &[&str] = &[
    "abs",
    "attr",
    "batch",
    "capitalize",
    "center",
    "count",
    "d",
    "default",
    "dictsort",
    "e",
    "escape",
    "filesizeformat",
    "first",
    "float",
    "forceescape",
    "format",
    "groupby",
    "indent",
    "int",
    "items",
    "join",
    "last",
    "length",
    "list",
    "lower",
    "map",
    "max",
    "min",
    "pprint",
    "random",
    "reject",
    "rejectattr",
    "replace",
    "reverse",
    "round",
    "safe",
    "select",
    "selectattr",
    "slice",
    "sort",
    "string",
    "striptags",
    "sum",
    "title",
    "tojson",
    "trim",
    "truncate",
    "unique",
    "upper",
    "urlencode",
    "urlize",
    "wordcount",
    "wordwrap",
    "xmlattr",
];

/// Tests of jinja2 3.1.
pub const JINJA2_TESTS: &[&str] = &[
    "boolean",
    "callable",
    "defined",
    "divisibleby",
    "eq",
    "equalto",
    "escaped",
    "even",
    "false",
    "filter",
    "float",
    "ge",
    "greaterthan",
    "gt",
    "in",
    "integer",
    "iterable",
    "le",
    "lessthan",
    "lower",
    "lt",
    "mapping",
    "ne",
    "none",
    "number",
    "odd",
    "sameas",
    "sequence",
    "string",
    "test",
    "true",
    "undefined",
    "upper",
];

/// Global functions of transformers' jinja2 environment.
pub const JINJA2_GLOBALS: &[&str] = &[
    "range",
    "dict",
    "lipsum",
    "cycler",
    "joiner",
    "namespace",
    "raise_exception",
    "strftime_now",
];

/// Methods of objects the engine creates itself (`loop.cycle()`, `cycler.next()`,
/// `dict.fromkeys()`), which the str/list/dict probe cannot see.
const OBJECT_METHODS: &[&str] = &["cycle", "changed", "next", "reset", "current", "fromkeys"];

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Filter,
    Test,
    Method,
}

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| super::env::build(&TemplateOptions::default()))
}

fn cache() -> &'static Mutex<HashMap<(Kind, String), bool>> {
    static CACHE: OnceLock<Mutex<HashMap<(Kind, String), bool>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

fn probe(kind: Kind, name: &str) -> bool {
    if !is_identifier(name) {
        return false;
    }
    let key = (kind, name.to_string());
    if let Some(known) = cache().lock().ok().and_then(|c| c.get(&key).copied()) {
        return known;
    }
    let missing = |src: String, value: Value, wanted: ErrorKind| -> bool {
        match env().compile_expression_owned(src) {
            Ok(expr) => match expr.eval(minijinja::context! { v => value }) {
                Ok(_) => false,
                Err(e) => e.kind() == wanted,
            },
            Err(_) => true,
        }
    };
    let known = match kind {
        Kind::Filter => !missing(
            format!("v|{name}"),
            Value::from(()),
            ErrorKind::UnknownFilter,
        ),
        Kind::Test => !missing(
            format!("v is {name}"),
            Value::from(()),
            ErrorKind::UnknownTest,
        ),
        Kind::Method => {
            OBJECT_METHODS.contains(&name)
                || [
                    Value::from("a"),
                    Value::from(vec![Value::from(1)]),
                    Value::from_iter([("\u{0}k", 1)]),
                ]
                .into_iter()
                .any(|v| !missing(format!("v.{name}()"), v, ErrorKind::UnknownMethod))
        }
    };
    if let Ok(mut c) = cache().lock() {
        c.insert(key, known);
    }
    known
}

/// Does the engine have the filter `name` (`x|name`)?
pub fn has_filter(name: &str) -> bool {
    probe(Kind::Filter, name)
}

/// Does the engine have the test `name` (`x is name`)?
pub fn has_test(name: &str) -> bool {
    probe(Kind::Test, name)
}

/// Does the engine provide the method `name` on a string, a list or a dict (or on one of
/// its own objects such as `loop`)?
pub fn has_method(name: &str) -> bool {
    probe(Kind::Method, name)
}

/// The engine's global names (functions and values: `range`, `namespace`,
/// `raise_exception`, `strftime_now`, …).
pub fn globals() -> &'static BTreeSet<String> {
    static GLOBALS: OnceLock<BTreeSet<String>> = OnceLock::new();
    GLOBALS.get_or_init(|| env().globals().map(|(n, _)| n.to_string()).collect())
}
