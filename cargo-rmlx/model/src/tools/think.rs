//! A reasoning section split off the answer as it streams, with the markers of the template's
//! reasoning family ([`crate::reasoning::Family`]: `<think>…</think>`, `[THINK]…[/THINK]`,
//! Gemma 4's `<|channel>thought…<channel|>`). Whitespace right after a marker (and Gemma 4's
//! `thought` label) and at the end of the reasoning is dropped, as llama.cpp does.

use super::marker::{find_marker, partial_tail};
use super::Delta;
use crate::reasoning::{Channel, Family};

/// The splitter.
#[derive(Debug)]
pub struct ThinkSplit {
    family: Family,
    inside: bool,
    pending: String,
    /// Leading whitespace (and the label) of the current section is still to drop.
    at_start: bool,
}

impl ThinkSplit {
    /// A splitter for `family`, starting where the rendered `prompt` leaves the turn.
    pub fn new(family: Family, prompt: &str) -> Self {
        let inside = family.initial(prompt) == Channel::Reasoning;
        Self {
            family,
            inside,
            pending: String::new(),
            at_start: true,
        }
    }

    /// Adds text: reasoning goes to `out`, the answer text is returned.
    pub fn push(&mut self, text: &str, out: &mut Delta) -> String {
        self.pending.push_str(text);
        let mut answer = String::new();
        loop {
            let markers = if self.inside {
                self.family.close
            } else {
                self.family.open
            };
            match find_marker(&self.pending, markers) {
                Some((at, i)) => {
                    let part = self.pending[..at].to_string();
                    self.emit(&part, true, out, &mut answer);
                    self.pending.drain(..at + markers[i].len());
                    self.inside = !self.inside;
                    self.at_start = true;
                }
                None => {
                    let mut keep = partial_tail(&self.pending, markers);
                    if self.inside {
                        // Whitespace before a (possible) close marker may end the reasoning.
                        let head = &self.pending[..self.pending.len() - keep];
                        keep += head.len() - head.trim_end().len();
                    }
                    if self.inside && self.at_start && self.label_pending() {
                        keep = self.pending.len();
                    }
                    let cut = self.pending.len() - keep;
                    let part = self.pending[..cut].to_string();
                    self.emit(&part, false, out, &mut answer);
                    self.pending.drain(..cut);
                    return answer;
                }
            }
        }
    }

    /// The text ended.
    pub fn finish(&mut self, out: &mut Delta) -> String {
        let rest = std::mem::take(&mut self.pending);
        let mut answer = String::new();
        self.emit(&rest, true, out, &mut answer);
        answer
    }

    /// Whether the start of the section could still be the family's label word.
    fn label_pending(&self) -> bool {
        let word = self.family.label_word;
        let t = self.pending.trim_start();
        !word.is_empty() && t.len() < word.len() && word.starts_with(t)
    }

    fn emit(&mut self, part: &str, last: bool, out: &mut Delta, answer: &mut String) {
        let mut s = part;
        if self.at_start {
            s = s.trim_start();
            if self.inside {
                let word = self.family.label_word;
                if !word.is_empty() {
                    s = s.strip_prefix(word).unwrap_or(s).trim_start();
                }
            }
            self.at_start = s.is_empty();
        }
        if self.inside {
            out.reasoning.push_str(if last { s.trim_end() } else { s });
        } else {
            answer.push_str(s);
        }
    }
}
