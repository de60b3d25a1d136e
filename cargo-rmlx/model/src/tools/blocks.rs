//! Text split, as it streams, into plain text and blocks between markers (`<tool_call>` …
//! `</tool_call>`): the shape of most tool-call formats. Markers that may still be growing at
//! the end of a piece are held back. [`BlockFormat`] makes a format parser of a block-shaped
//! format from its handling of one piece.

use super::marker::{find_marker, partial_tail};
use super::{Calls, Delta, FormatParser};

/// What a piece of text turned into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Text outside blocks.
    Text(String),
    /// A block opened.
    Open,
    /// The block's whole body so far (grows with every piece).
    Body(String),
    /// The block ended: its whole body, and whether its end marker was seen (otherwise the
    /// next block or the end of the text ended it).
    Close(String, bool),
}

/// The splitter.
#[derive(Debug)]
pub struct Blocks {
    open: &'static [&'static str],
    /// Empty: a block lasts until the next open marker or the end of the text.
    close: &'static [&'static str],
    pending: String,
    body: Option<String>,
}

impl Blocks {
    /// Blocks from any of `open` to any of `close`.
    pub fn new(open: &'static [&'static str], close: &'static [&'static str]) -> Self {
        Self {
            open,
            close,
            pending: String::new(),
            body: None,
        }
    }

    /// Adds text.
    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.pending.push_str(text);
        let mut out = Vec::new();
        while self.step(&mut out) {}
        out
    }

    /// One marker (or the held-back end); whether to look again.
    fn step(&mut self, out: &mut Vec<Piece>) -> bool {
        match self.body.take() {
            None => match find_marker(&self.pending, self.open) {
                Some((at, i)) => {
                    text(out, &self.pending[..at]);
                    self.pending.drain(..at + self.open[i].len());
                    self.body = Some(String::new());
                    out.push(Piece::Open);
                    true
                }
                None => {
                    let cut = self.pending.len() - partial_tail(&self.pending, self.open);
                    text(out, &self.pending[..cut]);
                    self.pending.drain(..cut);
                    false
                }
            },
            Some(mut body) => {
                let ends = if self.close.is_empty() {
                    self.open
                } else {
                    self.close
                };
                match find_marker(&self.pending, ends) {
                    Some((at, i)) => {
                        body.push_str(&self.pending[..at]);
                        let closed = !self.close.is_empty();
                        let used = if closed { at + ends[i].len() } else { at };
                        self.pending.drain(..used);
                        out.push(Piece::Close(body, closed));
                        true
                    }
                    None => {
                        let cut = self.pending.len() - partial_tail(&self.pending, ends);
                        body.push_str(&self.pending[..cut]);
                        self.pending.drain(..cut);
                        out.push(Piece::Body(body.clone()));
                        self.body = Some(body);
                        false
                    }
                }
            }
        }
    }

    /// The text ended: an open block closes unterminated, held-back text is released.
    pub fn finish(&mut self) -> Vec<Piece> {
        let rest = std::mem::take(&mut self.pending);
        let mut out = Vec::new();
        match self.body.take() {
            Some(body) => out.push(Piece::Close(body + &rest, false)),
            None => text(&mut out, &rest),
        }
        out
    }
}

fn text(out: &mut Vec<Piece>, s: &str) {
    if s.is_empty() {
        return;
    }
    match out.last_mut() {
        Some(Piece::Text(t)) => t.push_str(s),
        _ => out.push(Piece::Text(s.to_string())),
    }
}

/// A tool-call format whose text is [`Blocks`]: it handles one piece at a time, and is a
/// [`FormatParser`] through that.
pub trait BlockFormat {
    /// The format's block splitter.
    fn blocks(&mut self) -> &mut Blocks;
    /// Takes one piece of plain text or block.
    fn handle(&mut self, piece: Piece, calls: &mut Calls, out: &mut Delta);
}

impl<T: BlockFormat + Send + std::fmt::Debug> FormatParser for T {
    fn push(&mut self, text: &str, calls: &mut Calls, out: &mut Delta) {
        for p in self.blocks().push(text) {
            self.handle(p, calls, out);
        }
    }

    fn finish(&mut self, calls: &mut Calls, out: &mut Delta) {
        for p in self.blocks().finish() {
            self.handle(p, calls, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(b: &mut Blocks, pieces: &[&str]) -> Vec<Piece> {
        let mut out: Vec<Piece> = pieces.iter().flat_map(|p| b.push(p)).collect();
        out.extend(b.finish());
        out.retain(|p| !matches!(p, Piece::Body(_)));
        out
    }

    #[test]
    fn blocks_between_markers_split_over_pieces() {
        let mut b = Blocks::new(&["<a>"], &["</a>"]);
        let out = all(&mut b, &["x <", "a>bo", "dy</", "a> y <a>tail"]);
        assert_eq!(
            out,
            [
                Piece::Text("x ".into()),
                Piece::Open,
                Piece::Close("body".into(), true),
                Piece::Text(" y ".into()),
                Piece::Open,
                Piece::Close("tail".into(), false),
            ]
        );
    }

    #[test]
    fn without_close_markers_a_block_lasts_until_the_next_one() {
        let mut b = Blocks::new(&["[C]"], &[]);
        let out = all(&mut b, &["[C]f1", "[C]f2"]);
        assert_eq!(
            out,
            [
                Piece::Open,
                Piece::Close("f1".into(), false),
                Piece::Open,
                Piece::Close("f2".into(), false),
            ]
        );
    }
}
