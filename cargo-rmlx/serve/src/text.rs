//! The text a generation streams out: token ids to text (keeping the special tokens a
//! family's markers need), stop strings, then the reasoning/tool-call parser.
//!
//! Generated text arrives in pieces; a stop string or a marker can span pieces. [`TextFilter`]
//! holds back the shortest tail that could still grow into a stop string, emits everything
//! before it and ends the text at a stop string (the stop string itself is not part of the
//! output, as in OpenAI's API). [`TokenText`] detokenizes with special tokens skipped, except
//! those inside the markers the request's parser reads (`<|channel|>`, `[TOOL_CALLS]`, …).
//! [`TextStream`] chains both with a [`tools::output::OutputParser`]: the worker's one hook.

use std::collections::HashMap;

use super::tools::output::OutputParser;
use super::tools::{Delta, ToolCall};
use crate::tokenize::{StreamDecoder, Tokenizer};
use crate::tools::marker::{find_marker, partial_tail};

/// Where the filter is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep generating.
    Continue,
    /// A stop string was found: stop generating.
    Stop,
}

/// Stop strings over streamed text.
#[derive(Debug, Clone)]
pub struct TextFilter {
    stops: Vec<String>,
    pending: String,
    stopped: bool,
}

impl TextFilter {
    /// A filter ending the text at any of `stops`.
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: String::new(),
            stopped: false,
        }
    }

    /// Whether a stop string ended the text.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Adds generated text; returns the text that is now final and whether to stop.
    pub fn push(&mut self, text: &str) -> (String, Flow) {
        if self.stopped {
            return (String::new(), Flow::Stop);
        }
        self.pending.push_str(text);
        let stops: Vec<&str> = self.stops.iter().map(String::as_str).collect();
        if let Some((s, _)) = find_marker(&self.pending, &stops) {
            let out = self.pending[..s].to_string();
            self.pending.clear();
            self.stopped = true;
            return (out, Flow::Stop);
        }
        let cut = self.pending.len() - partial_tail(&self.pending, &stops);
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, Flow::Continue)
    }

    /// Ends the stream: returns the held-back text (no stop string completed).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

/// Token ids to text: special tokens are skipped, except those whose text occurs in one of
/// the markers a parser reads.
#[derive(Debug)]
pub struct TokenText {
    decoder: StreamDecoder,
    kept: HashMap<u32, String>,
}

impl TokenText {
    /// A detokenizer keeping the special tokens found inside `markers`.
    pub fn new(tok: &Tokenizer, markers: &[&str]) -> Self {
        let kept: HashMap<u32, String> = tok
            .inner()
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special && markers.iter().any(|m| m.contains(&t.content)))
            .map(|(id, t)| (id, t.content))
            .collect();
        if !kept.is_empty() {
            let mut names: Vec<&str> = kept.values().map(String::as_str).collect();
            names.sort_unstable();
            tracing::debug!(
                "special tokens kept in the output text: {}",
                names.join(" ")
            );
        }
        Self {
            decoder: tok.stream_decoder(true),
            kept,
        }
    }

    /// The text that `id` completes.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        let decoded = match self.kept.get(&id) {
            Some(marker) => self
                .decoder
                .flush(tok)
                .map(|t| t.unwrap_or_default() + marker),
            None => self.decoder.push(tok, id).map(Option::unwrap_or_default),
        };
        decoded.unwrap_or_else(|e| {
            tracing::warn!("detokenizing failed: {e}");
            String::new()
        })
    }

    /// The text still held back at the end of the stream.
    pub fn flush(&mut self, tok: &Tokenizer) -> String {
        self.decoder
            .flush(tok)
            .map(Option::unwrap_or_default)
            .unwrap_or_else(|e| {
                tracing::warn!("detokenizing failed: {e}");
                String::new()
            })
    }
}

/// One request's output: token ids → text → stop strings → reasoning and tool calls.
#[derive(Debug)]
pub struct TextStream {
    tokens: TokenText,
    filter: TextFilter,
    parser: OutputParser,
}

impl TextStream {
    /// The stream of one request.
    pub fn new(tok: &Tokenizer, stops: Vec<String>, parser: OutputParser) -> Self {
        Self {
            tokens: TokenText::new(tok, &parser.markers()),
            filter: TextFilter::new(stops),
            parser,
        }
    }

    /// Adds a generated id: what the answer gains, and whether a stop string ended it.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> (Delta, Flow) {
        let text = self.tokens.push(tok, id);
        let (text, flow) = self.filter.push(&text);
        (self.parser.push(&text), flow)
    }

    /// Ends the stream: the held-back rest and the tool calls.
    pub fn finish(&mut self, tok: &Tokenizer) -> (Delta, Vec<ToolCall>) {
        let mut rest = String::new();
        if !self.filter.stopped() {
            let tail = self.tokens.flush(tok);
            rest = self.filter.push(&tail).0;
            if !self.filter.stopped() {
                rest.push_str(&self.filter.finish());
            }
        }
        let mut delta = self.parser.push(&rest);
        let (last, calls) = self.parser.finish();
        delta.append(last);
        (delta, calls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(filter: &mut TextFilter, pieces: &[&str]) -> (String, bool) {
        let mut out = String::new();
        for p in pieces {
            let (t, flow) = filter.push(p);
            out.push_str(&t);
            if flow == Flow::Stop {
                return (out, true);
            }
        }
        out.push_str(&filter.finish());
        (out, false)
    }

    #[test]
    fn stop_string_spanning_pieces_ends_the_text() {
        let mut f = TextFilter::new(vec!["END".into()]);
        assert_eq!(
            run(&mut f, &["Paris is", " the E", "N", "D of it"]),
            ("Paris is the ".to_string(), true)
        );
    }

    #[test]
    fn held_back_prefix_is_released_when_it_does_not_complete() {
        let mut f = TextFilter::new(vec!["\n\n".into()]);
        let (t, _) = f.push("a\n");
        assert_eq!(t, "a");
        let (t, _) = f.push("b");
        assert_eq!(t, "\nb");
        assert_eq!(f.finish(), "");
    }

    #[test]
    fn earliest_stop_wins_and_multibyte_is_safe() {
        let mut f = TextFilter::new(vec!["é!".into(), "b".into()]);
        assert_eq!(run(&mut f, &["aé", "!b"]), ("a".to_string(), true));
    }
}
