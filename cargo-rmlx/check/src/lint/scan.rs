//! A static pass over the template's tokens (minijinja's own lexer, so it agrees with the
//! parser): which filters, tests, methods and functions the template names, which names it
//! defines itself, and where it reads a given variable — each with its byte span in the
//! original source. Templates are scanned as written (`{% generation %}` is just a name
//! here), so spans index the user's text.

use std::collections::HashSet;
use std::ops::Range;

use minijinja::machinery::{tokenize, Token, WhitespaceConfig};
use minijinja::syntax::SyntaxConfig;

/// What kind of name a [`Use`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UseKind {
    /// `x|name`, `{% filter name %}`, `map('name')`.
    Filter,
    /// `x is name`, `select('name')`, `selectattr('a', 'name')`.
    Test,
    /// `x.name(…)`.
    Method,
    /// `name(…)` (a global, a macro, or something undefined).
    Call,
}

/// One use of a filter/test/method/function name.
#[derive(Debug, Clone)]
pub struct Use<'a> {
    /// What it is.
    pub kind: UseKind,
    /// The name.
    pub name: &'a str,
    /// Byte span of the name in the source.
    pub span: Range<usize>,
}

/// One read of a top-level variable.
#[derive(Debug, Clone)]
pub struct VarRef {
    /// Byte span of the name.
    pub span: Range<usize>,
    /// Tested for definedness (`x is defined`, `x is not defined`, `x|default(…)`).
    pub guarded: bool,
}

/// Result of [`scan`].
#[derive(Debug, Default)]
pub struct Scan<'a> {
    /// Filter, test, method and function uses, in source order.
    pub uses: Vec<Use<'a>>,
    /// Names the template binds itself (macros and their parameters, `set`, `for`,
    /// `with` and `import` targets).
    pub defined: HashSet<&'a str>,
    /// Identifier tokens that are plain names (not attributes, filters, tests or keyword
    /// arguments), with their spans; see [`Scan::var_refs`].
    names: Vec<(&'a str, Range<usize>, bool)>,
    /// The lexer stopped early on a syntax error (the compile step reports it).
    pub incomplete: bool,
}

const KEYWORDS: &[&str] = &[
    "if",
    "elif",
    "else",
    "endif",
    "for",
    "endfor",
    "in",
    "not",
    "and",
    "or",
    "is",
    "recursive",
    "with",
    "endwith",
    "set",
    "endset",
    "macro",
    "endmacro",
    "call",
    "endcall",
    "filter",
    "endfilter",
    "block",
    "endblock",
    "extends",
    "include",
    "import",
    "from",
    "as",
    "raw",
    "endraw",
    "autoescape",
    "endautoescape",
    "do",
    "break",
    "continue",
    "true",
    "false",
    "none",
    "True",
    "False",
    "None",
    "generation",
    "endgeneration",
    "ignore",
    "missing",
    "context",
    "without",
];

/// Scans `source`. Never fails: on a lexer error the scan stops there and is marked
/// [`Scan::incomplete`].
pub fn scan(source: &str) -> Scan<'_> {
    let mut toks: Vec<(Token<'_>, Range<usize>)> = Vec::new();
    let mut out = Scan::default();
    // `SyntaxConfig` is a unit struct unless minijinja's `custom_syntax` feature is on.
    #[allow(clippy::default_constructed_unit_structs)]
    let syntax = SyntaxConfig::default();
    for item in tokenize(source, false, syntax, WhitespaceConfig::default()) {
        match item {
            Ok((tok, span)) => {
                if matches!(tok, Token::TemplateData(_)) {
                    continue;
                }
                toks.push((tok, span.start_offset as usize..span.end_offset as usize));
            }
            Err(_) => {
                out.incomplete = true;
                break;
            }
        }
    }

    let ident = |i: usize| -> Option<&str> {
        match toks.get(i) {
            Some((Token::Ident(n), _)) => Some(*n),
            _ => None,
        }
    };
    let is = |i: usize, f: &dyn Fn(&Token<'_>) -> bool| toks.get(i).is_some_and(|(t, _)| f(t));
    let str_arg = |i: usize| -> Option<(&str, Range<usize>)> {
        match toks.get(i) {
            Some((Token::Str(s), r)) => Some((*s, r.clone())),
            _ => None,
        }
    };

    let mut i = 0;
    while i < toks.len() {
        let (tok, span) = (&toks[i].0, toks[i].1.clone());
        let prev = i.checked_sub(1).map(|p| &toks[p].0);
        if let Token::Ident(name) = tok {
            let name: &str = name;
            let after_block_start = matches!(prev, Some(Token::BlockStart));
            let prev_ident = i.checked_sub(1).and_then(ident);
            let prev2_ident = i.checked_sub(2).and_then(ident);
            let next_is_paren = is(i + 1, &|t| matches!(t, Token::ParenOpen));
            if matches!(prev, Some(Token::Pipe)) {
                out.uses.push(Use {
                    kind: UseKind::Filter,
                    name,
                    span: span.clone(),
                });
                // Names of filters/tests passed as strings.
                if next_is_paren {
                    match name {
                        "map" => {
                            if let Some((f, r)) = str_arg(i + 2) {
                                if !is(i + 3, &|t| matches!(t, Token::Assign)) {
                                    out.uses.push(Use {
                                        kind: UseKind::Filter,
                                        name: f,
                                        span: r,
                                    });
                                }
                            }
                        }
                        "select" | "reject" => {
                            if let Some((t, r)) = str_arg(i + 2) {
                                out.uses.push(Use {
                                    kind: UseKind::Test,
                                    name: t,
                                    span: r,
                                });
                            }
                        }
                        "selectattr" | "rejectattr"
                            if str_arg(i + 2).is_some()
                                && is(i + 3, &|t| matches!(t, Token::Comma)) =>
                        {
                            if let Some((t, r)) = str_arg(i + 4) {
                                out.uses.push(Use {
                                    kind: UseKind::Test,
                                    name: t,
                                    span: r,
                                });
                            }
                        }
                        _ => {}
                    }
                }
            } else if prev_ident == Some("is")
                || (prev_ident == Some("not") && prev2_ident == Some("is"))
            {
                if name != "not" {
                    out.uses.push(Use {
                        kind: UseKind::Test,
                        name,
                        span: span.clone(),
                    });
                }
            } else if after_block_start && name == "filter" {
                if let Some(f) = ident(i + 1) {
                    out.uses.push(Use {
                        kind: UseKind::Filter,
                        name: f,
                        span: toks[i + 1].1.clone(),
                    });
                    i += 2;
                    continue;
                }
            } else if matches!(prev, Some(Token::Dot)) {
                // `dict.anything(x)` is `dict(x)` in jinja2 (a generic alias); not a method.
                let on_dict = i >= 2 && matches!(toks[i - 2].0, Token::Ident("dict"));
                if next_is_paren && !on_dict {
                    out.uses.push(Use {
                        kind: UseKind::Method,
                        name,
                        span: span.clone(),
                    });
                }
            } else if after_block_start {
                i = definitions(&toks, i, &mut out.defined);
                continue;
            } else if !KEYWORDS.contains(&name) {
                let kwarg = is(i + 1, &|t| matches!(t, Token::Assign))
                    && matches!(prev, Some(Token::ParenOpen | Token::Comma));
                if !kwarg {
                    if next_is_paren {
                        out.uses.push(Use {
                            kind: UseKind::Call,
                            name,
                            span: span.clone(),
                        });
                    }
                    out.names.push((name, span, guarded_at(&toks, i)));
                }
            }
        }
        i += 1;
    }
    out
}

impl<'a> Scan<'a> {
    /// Every read of the top-level name `var`.
    pub fn var_refs(&self, var: &str) -> Vec<VarRef> {
        self.names
            .iter()
            .filter(|(n, _, _)| *n == var)
            .map(|(_, span, guarded)| VarRef {
                span: span.clone(),
                guarded: *guarded,
            })
            .collect()
    }

    /// Span of the first read of `var`.
    pub fn first_ref(&self, var: &str) -> Option<Range<usize>> {
        self.names
            .iter()
            .find(|(n, _, _)| *n == var)
            .map(|(_, s, _)| s.clone())
    }
}

/// Is the name at `i` followed by `is [not] defined|undefined` or `|default`/`|d`?
fn guarded_at(toks: &[(Token<'_>, Range<usize>)], i: usize) -> bool {
    let ident = |j: usize| match toks.get(j) {
        Some((Token::Ident(n), _)) => Some(*n),
        _ => None,
    };
    match toks.get(i + 1) {
        Some((Token::Ident("is"), _)) => {
            let j = if ident(i + 2) == Some("not") {
                i + 3
            } else {
                i + 2
            };
            matches!(ident(j), Some("defined" | "undefined"))
        }
        Some((Token::Pipe, _)) => matches!(ident(i + 2), Some("default" | "d")),
        _ => false,
    }
}

/// At a statement's first word (`toks[i]`, right after `{%`): records the names it binds
/// and returns the index to continue scanning at (the statement's expressions are scanned
/// normally).
fn definitions<'a>(
    toks: &[(Token<'a>, Range<usize>)],
    i: usize,
    defined: &mut HashSet<&'a str>,
) -> usize {
    let Some((Token::Ident(word), _)) = toks.get(i) else {
        return i + 1;
    };
    let targets_until =
        |mut j: usize, stop: &dyn Fn(&Token<'_>) -> bool, defined: &mut HashSet<&'a str>| {
            // Names separated by commas (optionally parenthesised) until `stop`.
            while let Some((t, _)) = toks.get(j) {
                match t {
                    Token::Ident(n) if !stop(t) => {
                        defined.insert(*n);
                    }
                    Token::Comma | Token::ParenOpen | Token::ParenClose => {}
                    _ => break,
                }
                j += 1;
            }
            j
        };
    match *word {
        "for" => targets_until(i + 1, &|t| matches!(t, Token::Ident("in")), defined),
        "set" => {
            // `{% set a, b = … %}` or `{% set a %}…{% endset %}`; not `{% set ns.x = … %}`.
            if matches!(toks.get(i + 2), Some((Token::Dot, _))) {
                i + 1
            } else {
                targets_until(i + 1, &|_| false, defined)
            }
        }
        "macro" | "call" => {
            let mut j = i + 1;
            if let Some((Token::Ident(n), _)) = toks.get(j) {
                if *word == "macro" {
                    defined.insert(*n);
                }
                j += 1;
            }
            // Parameters: identifiers at depth 1 followed by `,`, `)` or `=`.
            if matches!(toks.get(j), Some((Token::ParenOpen, _))) {
                let mut depth = 0usize;
                while let Some((t, _)) = toks.get(j) {
                    match t {
                        Token::ParenOpen => depth += 1,
                        Token::ParenClose => {
                            depth = depth.saturating_sub(1);
                            if depth == 0 {
                                break;
                            }
                        }
                        Token::Ident(n) if depth == 1 => {
                            if matches!(
                                toks.get(j + 1),
                                Some((Token::Comma | Token::ParenClose | Token::Assign, _))
                            ) {
                                defined.insert(*n);
                            }
                        }
                        Token::BlockEnd => break,
                        _ => {}
                    }
                    j += 1;
                }
            }
            i + 1
        }
        "with" => {
            let mut j = i + 1;
            while let Some((t, _)) = toks.get(j) {
                match t {
                    Token::Ident(n) if matches!(toks.get(j + 1), Some((Token::Assign, _))) => {
                        defined.insert(*n);
                    }
                    Token::BlockEnd => break,
                    _ => {}
                }
                j += 1;
            }
            i + 1
        }
        "import" | "from" => {
            let mut j = i + 1;
            while let Some((t, _)) = toks.get(j) {
                match t {
                    Token::Ident("as") | Token::Ident("import") => {
                        if let Some((Token::Ident(n), _)) = toks.get(j + 1) {
                            defined.insert(*n);
                        }
                    }
                    Token::BlockEnd => break,
                    _ => {}
                }
                j += 1;
            }
            j
        }
        _ => i + 1,
    }
}
