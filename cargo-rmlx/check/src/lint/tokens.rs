//! Checks of a template against its model's tokenizer: BOS handling (double, or expected but
//! missing), special-token-like strings that the vocabulary does not have as one token, and
//! the seed prompt's token count.
//!
//! Chat prompts are encoded with `add_special_tokens=false` (rmlx, mlx-lm and transformers'
//! `apply_chat_template` all do): the template is the only source of BOS. What the
//! tokenizer's post-processor would add is found by encoding the same text both ways.

use std::collections::BTreeSet;

use super::scan::Scan;
use super::{Cx, CODE_DOUBLE_BOS, CODE_MISSING_BOS, CODE_SEED_TOKENS, CODE_SPLIT_SPECIAL};
use crate::diagnostic::Diagnostic;
use crate::tokenize::Tokenizer;

/// Most special-token-like strings checked per template.
const MAX_CANDIDATES: usize = 256;

/// Runs the tokenizer checks on the seed render (`seed`) and every successful sample render
/// (`rendered`); returns the seed's token count.
pub(super) fn check(
    cx: &mut Cx<'_>,
    scan: &Scan<'_>,
    tok: &Tokenizer,
    seed: &str,
    rendered: &[&str],
) -> Option<usize> {
    let plain = match tok.encode(seed, false) {
        Ok(ids) => ids,
        Err(d) => {
            cx.diags.push(d);
            return None;
        }
    };
    let with_special = tok.encode(seed, true).unwrap_or_else(|_| plain.clone());
    bos_checks(cx, scan, tok, seed, &plain, &with_special);
    special_token_checks(cx, tok, rendered);

    let bos = match tok.resolve_bos() {
        Some(b) => format!("; BOS chain: `{}` (id {}, from {})", b.token, b.id, b.rule),
        None => "; BOS chain: no BOS token in the vocabulary".into(),
    };
    cx.diags.push(
        Diagnostic::advice(
            CODE_SEED_TOKENS,
            format!(
                "the seed prompt (one user turn, generation prompt on) is {} tokens{bos}",
                plain.len()
            ),
        )
        .with_help(
            "encoded without adding special tokens, exactly as rmlx's probe and server encode \
             chat prompts",
        ),
    );
    Some(plain.len())
}

/// Double BOS (template emits it and the post-processor adds another), or a BOS the
/// post-processor adds that the template never emits.
fn bos_checks(
    cx: &mut Cx<'_>,
    scan: &Scan<'_>,
    tok: &Tokenizer,
    seed: &str,
    plain: &[u32],
    with_special: &[u32],
) {
    // The token the post-processor puts in front, if any.
    let added = if with_special.starts_with(plain) {
        None
    } else if with_special.len() > plain.len() && with_special[1..].starts_with(plain) {
        Some(with_special[0])
    } else {
        None
    };
    let Some(bos_id) = added else { return };
    let bos_text = tok
        .id_to_piece(bos_id)
        .unwrap_or_else(|| format!("#{bos_id}"));
    if plain.first() == Some(&bos_id) {
        let span = scan
            .first_ref("bos_token")
            .or_else(|| cx.t.source().find(&bos_text).map(|s| s..s + bos_text.len()));
        let d = Diagnostic::warning(
            CODE_DOUBLE_BOS,
            format!(
                "double BOS: the template emits `{bos_text}` and the tokenizer's post-processor \
                 adds another when encoding with special tokens"
            ),
        )
        .with_help(
            "encode rendered chat prompts with add_special_tokens=false (rmlx, mlx-lm and \
             transformers do); a client that encodes the rendered text with the tokenizer's \
             defaults (llama.cpp strips one, most others do not) sends the model two BOS tokens",
        );
        let d = cx.at(d, span, "BOS emitted here");
        cx.diags.push(d);
    } else if !seed.starts_with(&bos_text) {
        cx.diags.push(
            Diagnostic::warning(
                CODE_MISSING_BOS,
                format!(
                    "the tokenizer adds `{bos_text}` in front of plain text, but the template \
                     never emits it: chat prompts (encoded without special tokens) start without \
                     a BOS"
                ),
            )
            .with_help(format!(
                "emit `{{{{ bos_token }}}}` at the start of the template if the model was trained \
                 with `{bos_text}` in front of each conversation"
            )),
        );
    }
}

/// Strings in the renders that look like special tokens but are not one token.
fn special_token_checks(cx: &mut Cx<'_>, tok: &Tokenizer, rendered: &[&str]) {
    let added: Vec<String> = tok
        .inner()
        .get_added_tokens_decoder()
        .values()
        .filter(|t| t.special)
        .map(|t| t.content.clone())
        .collect();
    let angle_style = added
        .iter()
        .any(|t| t.starts_with('<') && t.ends_with('>') && !t.starts_with("<|"));
    let bracket_style = added.iter().any(|t| t.starts_with('[') && t.ends_with(']'));
    let mut candidates = BTreeSet::new();
    for text in rendered {
        collect_candidates(text, angle_style, bracket_style, &mut candidates);
        if candidates.len() >= MAX_CANDIDATES {
            break;
        }
    }
    for c in candidates {
        if tok.token_to_id(&c).is_some() {
            continue;
        }
        let pieces = tok.encode(&c, false).map(|ids| ids.len()).unwrap_or(0);
        let span = cx.t.source().find(c.as_str()).map(|s| s..s + c.len());
        let from = if span.is_some() {
            ""
        } else {
            " (it comes from a variable, not from the template text)"
        };
        let d = Diagnostic::warning(
            CODE_SPLIT_SPECIAL,
            format!(
                "`{c}` looks like a special token but is not a token of the vocabulary (it \
                 encodes as {pieces} ordinary token{}){from}",
                if pieces == 1 { "" } else { "s" }
            ),
        )
        .with_help(
            "the model never saw this string as a control token; the template probably belongs \
             to another model family or misspells the token (compare with the added tokens in \
             tokenizer.json)",
        );
        let d = cx.at(d, span, "not a token of this vocabulary");
        cx.diags.push(d);
    }
}

/// Adds special-token-like substrings of `text`: `<|…|>`, `<｜…｜>` always; `<name>` /
/// `</name>` when the vocabulary has angle-style special tokens; `[NAME]` / `[/NAME]` when it
/// has bracket-style ones.
fn collect_candidates(text: &str, angle: bool, bracket: bool, out: &mut BTreeSet<String>) {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() && out.len() < MAX_CANDIDATES {
        let rest = &text[i..];
        let found = if let Some(inner) = rest.strip_prefix("<|") {
            inner
                .find("|>")
                .map(|e| e + 4)
                .filter(|&n| n <= 64 && !rest[..n].contains(char::is_whitespace))
        } else if rest.starts_with("<\u{ff5c}") {
            rest.find("\u{ff5c}>")
                .filter(|&e| e > 0)
                .map(|e| e + "\u{ff5c}>".len())
                .filter(|&n| n <= 96 && !rest[..n].contains(char::is_whitespace))
        } else if angle && rest.starts_with('<') {
            name_run(
                &rest[1..],
                |c| c.is_ascii_alphanumeric() || "_-.:".contains(c),
                '>',
            )
            .map(|n| n + 2)
        } else if bracket && rest.starts_with('[') {
            name_run(
                &rest[1..],
                |c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_',
                ']',
            )
            .map(|n| n + 2)
        } else {
            None
        };
        match found {
            Some(n) => {
                out.insert(rest[..n].to_string());
                i += n;
            }
            None => {
                i += rest.chars().next().map_or(1, char::len_utf8);
            }
        }
    }
}

/// Length of `[/]name` at the start of `s` followed by `close` (the name: 1–40 chars
/// matching `ok`, starting with a letter or `_`).
fn name_run(s: &str, ok: impl Fn(char) -> bool, close: char) -> Option<usize> {
    let body = s.strip_prefix('/').unwrap_or(s);
    let slash = s.len() - body.len();
    let first = body.chars().next()?;
    if !(first.is_ascii_alphabetic() || first == '_') {
        return None;
    }
    let n = body.find(|c: char| !ok(c)).unwrap_or(body.len());
    if n == 0 || n > 40 || !body[n..].starts_with(close) {
        return None;
    }
    Some(slash + n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates() {
        let mut out = BTreeSet::new();
        collect_candidates(
            "<|im_start|>user\nhi<|im_end|> <｜User｜>x <think>y</think> [INST] a [b] <| x |>",
            true,
            true,
            &mut out,
        );
        let got: Vec<&str> = out.iter().map(String::as_str).collect();
        assert_eq!(
            got,
            vec![
                "<think>",
                "</think>",
                "<|im_end|>",
                "<|im_start|>",
                "<｜User｜>",
                "[INST]"
            ]
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
        );
    }
}
