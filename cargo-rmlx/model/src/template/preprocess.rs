//! Source rewrites that keep byte offsets identical, so that error spans computed on the
//! rewritten text point into the original template.
//!
//! Hugging Face's `{% generation %}…{% endgeneration %}` tag (assistant-token masks) is
//! unknown to minijinja; transformers renders its body unchanged. Each tag keyword is
//! replaced in place by a no-op block of the same length (`if true` / `endif` padded with
//! spaces), which also keeps the whitespace control (`-`, `+`) and trim/lstrip behavior of
//! the original block tag.
//!
//! jinja2 also keeps the newline after `{% raw %}` even with trim_blocks; minijinja
//! removes it unless the tag ends in `+%}`, so a space before that `%}` becomes `+`.
//!
//! One rewrite changes lengths: [`guard_for_iterables`] wraps the iterable of every
//! `{% for … in EXPR %}` as `(EXPR)|__rmlx_iterable`, a filter that fails like Python on
//! values jinja2 cannot iterate (`None`, numbers, booleans; minijinja iterates `none` as
//! empty). Its insertions are recorded in an [`OffsetMap`] that maps positions in the
//! compiled text back to the original template.

use minijinja::machinery::{tokenize, Token, WhitespaceConfig};
use minijinja::syntax::SyntaxConfig;

/// Name of the filter [`guard_for_iterables`] inserts (registered by the environment).
pub const ITERABLE_FILTER: &str = "__rmlx_iterable";

/// Insertions made into a template text, to map positions back to the original.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OffsetMap {
    /// (position in the original text, inserted length), in order.
    inserts: Vec<(usize, usize)>,
}

impl OffsetMap {
    /// The original position of `pos` in the rewritten text (a position inside inserted
    /// text maps to the insertion point).
    pub fn to_original(&self, pos: usize) -> usize {
        let mut shift = 0;
        for &(at, len) in &self.inserts {
            let start = at + shift;
            if pos < start {
                break;
            }
            if pos < start + len {
                return at;
            }
            shift += len;
        }
        pos - shift
    }
}

type Tok<'a> = (Token<'a>, usize, usize);

/// The tokens of `src` other than template data, with byte ranges; stops at the first lexer
/// error (the compile step reports it at a mapped position).
fn tokens(src: &str) -> Vec<Tok<'_>> {
    let mut toks = Vec::new();
    // `SyntaxConfig` is a unit struct unless minijinja's `custom_syntax` feature is on.
    #[allow(clippy::default_constructed_unit_structs)]
    let syntax = SyntaxConfig::default();
    for item in tokenize(src, false, syntax, WhitespaceConfig::default()) {
        match item {
            Ok((t, span)) => {
                if !matches!(t, Token::TemplateData(_)) {
                    toks.push((t, span.start_offset as usize, span.end_offset as usize));
                }
            }
            Err(_) => break,
        }
    }
    toks
}

/// Most operators (`+ ~ | . [ ( and or not …`) one `{{ … }}` or `{% … %}` tag may hold.
/// minijinja's parser builds left-deep trees for operator chains without its recursion
/// guard, and compiling one recurses once per operator: 15,000 terms overflow a 2 MiB
/// thread. jinja2 fails on such chains too (Python's recursion limit).
pub const MAX_OPERATORS_PER_TAG: usize = 1000;

/// A tag with more than [`MAX_OPERATORS_PER_TAG`] operators: (operators, byte range of
/// the tag in `src`).
pub fn overlong_expression(src: &str) -> Option<(usize, std::ops::Range<usize>)> {
    let mut count = 0;
    let mut start = 0;
    for (t, s, e) in tokens(src) {
        match t {
            Token::VariableStart | Token::BlockStart => {
                count = 0;
                start = s;
            }
            Token::Plus
            | Token::Minus
            | Token::Mul
            | Token::Div
            | Token::FloorDiv
            | Token::Pow
            | Token::Mod
            | Token::Dot
            | Token::Tilde
            | Token::Pipe
            | Token::Eq
            | Token::Ne
            | Token::Gt
            | Token::Gte
            | Token::Lt
            | Token::Lte
            | Token::BracketOpen
            | Token::ParenOpen
            | Token::Ident("and" | "or" | "not" | "in" | "is" | "if" | "else") => {
                count += 1;
                if count > MAX_OPERATORS_PER_TAG {
                    let end = src[e..].find(['}']).map_or(src.len(), |p| e + p + 1);
                    return Some((count, start..end));
                }
            }
            _ => {}
        }
    }
    None
}

/// Wraps each for-loop iterable in `(…)|__rmlx_iterable` and the value of each
/// `{% set ns.attr = … %}` in `(…)|__rmlx_ns_value(ns)` (see the module documentation).
pub fn guard_for_iterables(src: &str) -> (String, OffsetMap) {
    let toks = tokens(src);
    let mut wraps: Vec<(usize, usize, String)> = iterable_ranges(&toks)
        .into_iter()
        .map(|(s, e)| (s, e, format!(")|{ITERABLE_FILTER}")))
        .collect();
    wraps.extend(namespace_stores(&toks));
    wraps.sort_by_key(|w| w.0);
    let mut out = String::with_capacity(src.len() + wraps.len() * 24);
    let mut map = OffsetMap::default();
    let mut last = 0;
    for (start, end, suffix) in wraps {
        out.push_str(&src[last..start]);
        out.push('(');
        map.inserts.push((start, 1));
        out.push_str(&src[start..end]);
        out.push_str(&suffix);
        map.inserts.push((end, suffix.len()));
        last = end;
    }
    out.push_str(&src[last..]);
    (out, map)
}

/// `{% set NAME.ATTR = EXPR %}`: the byte range of EXPR and the suffix that passes it
/// through the namespace guard filter with NAME.
fn namespace_stores(toks: &[Tok<'_>]) -> Vec<(usize, usize, String)> {
    let mut out = Vec::new();
    for (i, w) in toks.windows(6).enumerate() {
        let (
            Token::BlockStart,
            Token::Ident("set"),
            Token::Ident(ns),
            Token::Dot,
            Token::Ident(_),
            Token::Assign,
        ) = (&w[0].0, &w[1].0, &w[2].0, &w[3].0, &w[4].0, &w[5].0)
        else {
            continue;
        };
        let first = i + 6;
        let Some(end) = toks[first..]
            .iter()
            .position(|t| matches!(t.0, Token::BlockEnd))
            .map(|p| first + p)
        else {
            continue;
        };
        if end > first {
            out.push((
                toks[first].1,
                toks[end - 1].2,
                format!(")|{}({ns})", super::guarded::NAMESPACE_FILTER),
            ));
        }
    }
    out
}

/// (start, end) byte ranges of for-loop iterable expressions.
fn iterable_ranges(toks: &[Tok<'_>]) -> Vec<(usize, usize)> {
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    while i + 1 < toks.len() {
        if !(matches!(toks[i].0, Token::BlockStart) && matches!(toks[i + 1].0, Token::Ident("for")))
        {
            i += 1;
            continue;
        }
        // Find `in` at depth 0.
        let mut j = i + 2;
        let mut depth = 0i32;
        while j < toks.len() {
            match toks[j].0 {
                Token::ParenOpen | Token::BracketOpen | Token::BraceOpen => depth += 1,
                Token::ParenClose | Token::BracketClose | Token::BraceClose => depth -= 1,
                Token::Ident("in") if depth == 0 => break,
                Token::BlockEnd => break,
                _ => {}
            }
            j += 1;
        }
        if j >= toks.len() || !matches!(toks[j].0, Token::Ident("in")) {
            i = j;
            continue;
        }
        let first = j + 1;
        let mut k = first;
        depth = 0;
        while k < toks.len() {
            match toks[k].0 {
                Token::ParenOpen | Token::BracketOpen | Token::BraceOpen => depth += 1,
                Token::ParenClose | Token::BracketClose | Token::BraceClose => depth -= 1,
                Token::Ident("if" | "recursive") if depth == 0 => break,
                Token::BlockEnd | Token::VariableStart | Token::BlockStart => break,
                _ => {}
            }
            k += 1;
        }
        if k > first && k < toks.len() && matches!(toks[k].0, Token::BlockEnd | Token::Ident(_)) {
            ranges.push((toks[first].1, toks[k - 1].2));
        }
        i = k;
    }
    ranges
}

/// Result of [`rewrite`]: the text to compile (same length as the input) and how many
/// `generation` tag pairs were rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewritten {
    /// The source to compile; byte-for-byte the same length as the original.
    pub text: String,
    /// Number of `{% generation %}` / `{% endgeneration %}` tags rewritten.
    pub generation_tags: usize,
    /// Number of `{% raw %}` tags given `+%}` to keep the newline after them (jinja2).
    pub raw_tags: usize,
}

/// Rewrites `{% generation %}` and `{% endgeneration %}` (outside `{% raw %}` blocks and
/// comments) into same-length no-op blocks.
pub fn rewrite(src: &str) -> Rewritten {
    let bytes = src.as_bytes();
    let mut text = src.as_bytes().to_vec();
    let mut count = 0;
    let mut raw_tags = 0;
    let mut i = 0;
    let mut in_raw = false;
    while i + 1 < bytes.len() {
        if bytes[i] == b'{' && bytes[i + 1] == b'#' && !in_raw {
            // Skip a comment.
            match find(bytes, i + 2, b"#}") {
                Some(end) => {
                    i = end + 2;
                    continue;
                }
                None => break,
            }
        }
        if !(bytes[i] == b'{' && bytes[i + 1] == b'%') {
            i += 1;
            continue;
        }
        let Some(close) = find(bytes, i + 2, b"%}") else {
            break;
        };
        // Inner text between `{%` and `%}`.
        let mut s = i + 2;
        if s < close && (bytes[s] == b'-' || bytes[s] == b'+') {
            s += 1;
        }
        while s < close && bytes[s].is_ascii_whitespace() {
            s += 1;
        }
        let mut e = close;
        if e > s && (bytes[e - 1] == b'-' || bytes[e - 1] == b'+') {
            e -= 1;
        }
        while e > s && bytes[e - 1].is_ascii_whitespace() {
            e -= 1;
        }
        let word = &bytes[s..e];
        if in_raw {
            if word == b"endraw" {
                in_raw = false;
            }
        } else if word == b"raw" {
            in_raw = true;
            // jinja2 never applies trim_blocks after `{% raw %}` (only `-%}` strips);
            // minijinja does unless the tag ends in `+%}`. Reuse a space before `%}`.
            if close > e && bytes[close - 1].is_ascii_whitespace() {
                text[close - 1] = b'+';
                raw_tags += 1;
            }
        } else if word == b"generation" || word == b"endgeneration" {
            let replacement: &[u8] = if word == b"generation" {
                b"if true"
            } else {
                b"endif"
            };
            let slot = &mut text[s..e];
            slot.fill(b' ');
            slot[..replacement.len()].copy_from_slice(replacement);
            count += 1;
        }
        i = close + 2;
    }
    // Only ASCII bytes were replaced by ASCII bytes inside ASCII words: still UTF-8.
    let text = String::from_utf8(text).unwrap_or_else(|_| src.to_string());
    Rewritten {
        text,
        generation_tags: count,
        raw_tags,
    }
}

fn find(hay: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    if from > hay.len() {
        return None;
    }
    hay[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn for_iterables_guarded_and_mapped_back() {
        let src = "{% for m in messages %}{{ m }}{% endfor %}\n{%- for a, b in x.items() if a recursive -%}{% endfor %}{{ y }}";
        let (text, map) = guard_for_iterables(src);
        assert_eq!(
            text,
            "{% for m in (messages)|__rmlx_iterable %}{{ m }}{% endfor %}\n{%- for a, b in (x.items())|__rmlx_iterable if a recursive -%}{% endfor %}{{ y }}"
        );
        let y = text.find("y }}").unwrap();
        assert_eq!(map.to_original(y), src.find("y }}").unwrap());
        let m = text.find("messages").unwrap();
        assert_eq!(map.to_original(m), src.find("messages").unwrap());
        // Inside inserted text: the insertion point.
        let f = text.find("__rmlx").unwrap();
        assert_eq!(map.to_original(f), src.find(" %}{{ m").unwrap());
    }

    #[test]
    fn generation_tags_same_length() {
        let src = "a{% generation %}b{%- endgeneration -%}c{%+generation%}{%endgeneration%}";
        let r = rewrite(src);
        assert_eq!(r.text.len(), src.len());
        assert_eq!(r.generation_tags, 4);
        assert_eq!(
            r.text,
            "a{% if true    %}b{%- endif         -%}c{%+if true   %}{%endif        %}"
        );
    }

    #[test]
    fn raw_and_comments_untouched() {
        let src =
            "{# {% generation %} #}{% raw %}{% generation %}{% endraw %}{% if x %}{% endif %}";
        let r = rewrite(src);
        assert_eq!(r.text, src.replace("{% raw %}", "{% raw+%}"));
        assert_eq!(r.generation_tags, 0);
        assert_eq!(r.raw_tags, 1);
        assert_eq!(rewrite("{% raw -%}x{%raw%}").text, "{% raw -%}x{%raw%}");
    }
}
