//! Byte offsets ↔ LSP positions. LSP columns count UTF-16 code units (the protocol's default
//! and the only encoding every client supports); templates hold emoji, CJK and `▁`, so a
//! byte or `char` column would be wrong. Lines end at `\n`, `\r\n` or a lone `\r`, as the
//! protocol defines.

use std::ops::Range;

use ls_types::Position;

/// Line starts of one text, for converting offsets to positions and back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineIndex {
    /// Byte offset of the start of each line (the first is 0).
    starts: Vec<usize>,
    /// Length of the text, in bytes.
    len: usize,
}

impl LineIndex {
    /// Indexes `text`.
    pub fn new(text: &str) -> Self {
        let bytes = text.as_bytes();
        let mut starts = vec![0];
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'\n' => starts.push(i + 1),
                b'\r' => {
                    if bytes.get(i + 1) == Some(&b'\n') {
                        i += 1;
                    }
                    starts.push(i + 1);
                }
                _ => {}
            }
            i += 1;
        }
        Self {
            starts,
            len: text.len(),
        }
    }

    /// Number of lines (a text ending in a line break has an empty last line).
    pub fn line_count(&self) -> usize {
        self.starts.len()
    }

    /// The position of byte `offset` of `text` (the text this index was built from). An
    /// offset past the end is clamped to the end; one inside a multi-byte character to that
    /// character's start.
    pub fn position(&self, text: &str, offset: usize) -> Position {
        debug_assert_eq!(text.len(), self.len, "LineIndex used with another text");
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.starts.partition_point(|&s| s <= offset) - 1;
        let start = self.starts[line];
        let character: usize = text[start..offset].chars().map(char::len_utf16).sum();
        Position::new(line as u32, character as u32)
    }

    /// The LSP range of byte span `span` of `text`.
    pub fn range(&self, text: &str, span: Range<usize>) -> ls_types::Range {
        let start = self.position(text, span.start);
        let end = self.position(text, span.end.max(span.start));
        ls_types::Range::new(start, end)
    }

    /// The range of line `line` without its line break (clamped to the last line).
    pub fn line_range(&self, text: &str, line: usize) -> ls_types::Range {
        let line = line.min(self.starts.len() - 1);
        let (start, end) = self.line_span(text, line);
        self.range(text, start..end)
    }

    /// Byte span of line `line`'s content (no line break).
    fn line_span(&self, text: &str, line: usize) -> (usize, usize) {
        let start = self.starts[line];
        let end = self.starts.get(line + 1).copied().unwrap_or(text.len());
        let content = &text[start..end];
        let content = content
            .strip_suffix("\r\n")
            .or_else(|| content.strip_suffix('\n'))
            .or_else(|| content.strip_suffix('\r'))
            .unwrap_or(content);
        (start, start + content.len())
    }

    /// The byte offset of `pos` in `text`. A line past the end maps to the end of the text, a
    /// column past the end of its line to the line's end, and a column inside a surrogate
    /// pair to the end of that character.
    pub fn offset(&self, text: &str, pos: Position) -> usize {
        let line = pos.line as usize;
        if line >= self.starts.len() {
            return text.len();
        }
        let (start, end) = self.line_span(text, line);
        let mut units = 0u32;
        for (i, c) in text[start..end].char_indices() {
            if units >= pos.character {
                return start + i;
            }
            units += c.len_utf16() as u32;
        }
        end
    }
}

/// The position of byte `offset` in `text` without building an index (for a one-off lookup
/// in a large file, e.g. a key in tokenizer.json).
pub fn position_of(text: &str, offset: usize) -> Position {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let mut line = 0u32;
    let mut start = 0;
    let bytes = before.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\n' => {
                line += 1;
                start = i + 1;
            }
            b'\r' if bytes.get(i + 1) != Some(&b'\n') => {
                line += 1;
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    let character: usize = before[start..].chars().map(char::len_utf16).sum();
    Position::new(line, character as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf16_columns() {
        // "é" is 2 bytes / 1 unit, "中" 3 bytes / 1 unit, "😀" 4 bytes / 2 units, "▁" 3 / 1.
        let text = "ab\né中😀▁x\r\nlast";
        let idx = LineIndex::new(text);
        assert_eq!(idx.line_count(), 3);
        let x = text.find('x').unwrap();
        assert_eq!(idx.position(text, x), Position::new(1, 5));
        assert_eq!(idx.offset(text, Position::new(1, 5)), x);
        let l = text.find("last").unwrap();
        assert_eq!(idx.position(text, l), Position::new(2, 0));
        assert_eq!(idx.position(text, text.len()), Position::new(2, 4));
        // Inside the emoji's bytes: its start.
        let e = text.find('😀').unwrap();
        assert_eq!(idx.position(text, e + 2), Position::new(1, 2));
        // Inside the surrogate pair: the end of the emoji.
        assert_eq!(idx.offset(text, Position::new(1, 3)), e + 4);
        // Past the line's end: the end of its content (before \r\n).
        assert_eq!(idx.offset(text, Position::new(1, 99)), x + 1);
        assert_eq!(idx.offset(text, Position::new(9, 0)), text.len());
        assert_eq!(position_of(text, x), Position::new(1, 5));
        assert_eq!(
            idx.line_range(text, 1),
            ls_types::Range::new(Position::new(1, 0), Position::new(1, 6))
        );
    }

    #[test]
    fn lone_carriage_returns() {
        let text = "a\rb\r\nc";
        let idx = LineIndex::new(text);
        assert_eq!(idx.position(text, 2), Position::new(1, 0));
        assert_eq!(idx.position(text, 5), Position::new(2, 0));
        assert_eq!(position_of(text, 5), Position::new(2, 0));
    }
}
