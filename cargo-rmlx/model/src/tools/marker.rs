//! Markers in streamed text: where the first of several markers occurs, and how much of a
//! text's tail may still grow into one (held back by the stop-string filter and the
//! reasoning/tool-call parsers).

/// The earliest occurrence of any of `markers` in `hay`: (byte position, index of the marker).
pub fn find_marker(hay: &str, markers: &[&str]) -> Option<(usize, usize)> {
    markers
        .iter()
        .enumerate()
        .filter(|(_, m)| !m.is_empty())
        .filter_map(|(i, m)| hay.find(m).map(|p| (p, i)))
        .min_by_key(|&(p, _)| p)
}

/// Length of the longest tail of `hay` that is a proper prefix of one of `markers`: the text
/// to hold back because it may still grow into a marker.
pub fn partial_tail(hay: &str, markers: &[&str]) -> usize {
    let mut keep = 0;
    for m in markers {
        for (i, _) in m.char_indices().skip(1) {
            if i > keep && hay.ends_with(&m[..i]) {
                keep = i;
            }
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_found_and_partial_ones_held_back() {
        assert_eq!(find_marker("ab<x>c<y>", &["<y>", "<x>"]), Some((2, 1)));
        assert_eq!(find_marker("abc", &["<y>", ""]), None);
        assert_eq!(partial_tail("text <tool_", &["<tool_call>"]), 6);
        assert_eq!(partial_tail("text <tool_call>", &["<tool_call>"]), 0);
        assert_eq!(partial_tail("é<", &["<é>"]), 1);
    }
}
