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
