//! A template that emits BOS twice at the start of the prompt: `{{ bos_token }}` twice, or
//! `{{ bos_token }}` in front of a literal BOS. Chat prompts are encoded without adding
//! special tokens, so both reach the model (whatever the tokenizer's post-processor does).
//! Without the model's tokenizer only `bos_token` read twice counts (the placeholder BOS may
//! clash with the template's own text).

use std::ops::Range;

use super::scan::Scan;
use super::{Cx, CODE_DUPLICATE_BOS};
use crate::diagnostic::Diagnostic;

/// Flags a seed render (`seed`: one user turn, generation prompt on) that starts with BOS,
/// optional whitespace, and BOS again. The primary span is the emitter to remove: the first
/// bare `{{ bos_token }}` expression (whole expression, braces included, so removing the span
/// is the fix), else the second emitter in source order.
pub(super) fn duplicate_check(cx: &mut Cx<'_>, scan: &Scan<'_>, seed: &str) {
    let Some(bos) = cx.special.get("bos_token").filter(|b| !b.is_empty()) else {
        return;
    };
    let twice = seed
        .strip_prefix(bos.as_str())
        .is_some_and(|rest| rest.trim_start().starts_with(bos.as_str()));
    if !twice {
        return;
    }
    let src = cx.t.source();
    let refs: Vec<Range<usize>> = scan
        .var_refs("bos_token")
        .into_iter()
        .map(|r| r.span)
        .collect();
    // Without the model's tokenizer BOS is a placeholder (`<s>`) that a template may use
    // literally for something else: only a template that emits `bos_token` itself twice is
    // certain to duplicate it.
    if !cx.has_tokenizer && refs.len() < 2 {
        return;
    }
    let literals: Vec<Range<usize>> = src
        .match_indices(bos.as_str())
        .map(|(i, s)| i..i + s.len())
        .collect();
    let mut emitters: Vec<Range<usize>> = refs.iter().chain(&literals).cloned().collect();
    emitters.sort_by_key(|s| s.start);
    let bare = refs.iter().find_map(|r| bare_expression(src, r));
    let primary = bare.clone().or_else(|| emitters.get(1).cloned());
    let mut d = Diagnostic::warning(
        CODE_DUPLICATE_BOS,
        format!("the template emits BOS `{bos}` twice at the start of the prompt"),
    )
    .with_help(
        "chat prompts are encoded without adding special tokens, so the model receives two BOS \
         tokens; emit it once",
    );
    if let Some(p) = primary {
        let label = if bare.is_some() {
            "duplicated BOS: remove this"
        } else {
            "second BOS emitted here"
        };
        d = d.with_span(p.clone(), label);
        if let Some(other) = emitters
            .iter()
            .find(|e| !(p.start <= e.start && e.end <= p.end))
        {
            d = d.with_label(other.clone(), "BOS also emitted here");
        }
    }
    cx.diags.push(d);
}

/// The whole `{{ bos_token }}` expression (`{{-`/`-}}`, `{{+`/`+}}` allowed) around the name
/// at `name`, when the expression is nothing but that name.
fn bare_expression(src: &str, name: &Range<usize>) -> Option<Range<usize>> {
    let before = src.get(..name.start)?.trim_end();
    let start = before
        .strip_suffix("{{-")
        .or_else(|| before.strip_suffix("{{+"))
        .or_else(|| before.strip_suffix("{{"))?
        .len();
    let after = src.get(name.end..)?;
    let rest = after.trim_start();
    let close = ["-}}", "+}}", "}}"]
        .iter()
        .find(|c| rest.starts_with(**c))?;
    let end = name.end + (after.len() - rest.len()) + close.len();
    Some(start..end)
}

#[cfg(test)]
mod tests {
    use super::bare_expression;

    #[test]
    fn bare() {
        let src = "a{{- bos_token }}b{{ bos_token + 'x' }}";
        let i = src.find("bos_token").unwrap();
        assert_eq!(
            bare_expression(src, &(i..i + 9)).map(|r| &src[r]),
            Some("{{- bos_token }}")
        );
        let j = src.rfind("bos_token").unwrap();
        assert_eq!(bare_expression(src, &(j..j + 9)), None);
    }
}
