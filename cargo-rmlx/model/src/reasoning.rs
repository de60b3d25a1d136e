//! Reasoning ("thinking") sections in a model's output: the one home of the markers each
//! chat-template family uses to delimit them, read by the probe (which judges the answer only)
//! and by the server (which returns the reasoning as `reasoning_content`).
//!
//! [`FAMILIES`] is matched against the chat template's source ([`detect_family`]); a
//! [`Family`] then says where the assistant's turn starts ([`Family::initial`]), which markers
//! open and close the reasoning, and labels decoded steps ([`Family::label`]).

use serde::Serialize;

/// Where a step of the assistant's turn belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Channel {
    /// Inside a reasoning section (skipped by the probe's verdict).
    Reasoning,
    /// Part of a marker opening or closing a reasoning section, or the whitespace after one.
    Marker,
    /// The visible answer.
    Answer,
}

/// How one template family delimits reasoning in the model's output.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    /// Stable name (`think-tags`, `gemma4-channel`, `mistral-think`, `harmony`).
    pub name: &'static str,
    /// Strings that all occur in a template of this family.
    detect: &'static [&'static str],
    /// Markers that open a reasoning section.
    pub open: &'static [&'static str],
    /// Markers after which the answer follows.
    pub close: &'static [&'static str],
    /// A word the model writes right after an open marker to name the section (Gemma 4's
    /// `thought`): not part of the reasoning text.
    pub label_word: &'static str,
    /// The assistant's turn starts outside the answer until a `close` marker (harmony: a
    /// message must declare the `final` channel); otherwise the prompt decides.
    answer_needs_marker: bool,
}

/// Known families; the first whose `detect` strings all occur in the template applies.
pub const FAMILIES: &[Family] = &[
    // GPT-OSS: `<|channel|>analysis<|message|>…<|end|><|start|>assistant<|channel|>final
    // <|message|>answer<|return|>`.
    Family {
        name: "harmony",
        detect: &["<|channel|>", "<|message|>"],
        open: &["<|channel|>analysis", "<|channel|>commentary"],
        close: &["<|channel|>final<|message|>"],
        label_word: "",
        answer_needs_marker: true,
    },
    // Gemma 4: `<|channel>thought\n…<channel|>answer`.
    Family {
        name: "gemma4-channel",
        detect: &["<|channel>", "<channel|>"],
        open: &["<|channel>"],
        close: &["<channel|>"],
        label_word: "thought",
        answer_needs_marker: false,
    },
    // Qwen3, Qwen3.5, QwQ, DeepSeek-R1 and their fine-tunes: `<think>\n…\n</think>\n\nanswer`.
    Family {
        name: "think-tags",
        detect: &["</think>"],
        open: &["<think>"],
        close: &["</think>"],
        label_word: "",
        answer_needs_marker: false,
    },
    // Magistral, Ministral 3 Reasoning: `[THINK]…[/THINK]answer`.
    Family {
        name: "mistral-think",
        detect: &["[/THINK]"],
        open: &["[THINK]"],
        close: &["[/THINK]"],
        label_word: "",
        answer_needs_marker: false,
    },
];

/// The family named `name`, if known.
pub fn family_named(name: &str) -> Option<Family> {
    FAMILIES.iter().find(|f| f.name == name).copied()
}

/// The reasoning family of a template, if any.
pub fn detect_family(template_source: &str) -> Option<Family> {
    FAMILIES
        .iter()
        .find(|f| f.detect.iter().all(|m| template_source.contains(m)))
        .copied()
}

/// One marker occurrence in the generated text.
struct Hit {
    at: usize,
    end: usize,
    to: Channel,
    marker: &'static str,
}

impl Family {
    /// Where the assistant's turn starts, given the rendered prompt: inside a reasoning
    /// section when the prompt's last marker opened one (a template that forces `<think>`).
    pub fn initial(&self, prompt: &str) -> Channel {
        if self.answer_needs_marker {
            return Channel::Reasoning;
        }
        let last = |markers: &[&str]| markers.iter().filter_map(|m| prompt.rfind(m)).max();
        match (last(self.open), last(self.close)) {
            (Some(o), c) if c.is_none_or(|c| o > c) => Channel::Reasoning,
            _ => Channel::Answer,
        }
    }

    /// Marker occurrences in `text`, in order, non-overlapping.
    fn hits(&self, text: &str) -> Vec<Hit> {
        let mut all: Vec<Hit> = Vec::new();
        for (markers, to) in [
            (self.open, Channel::Reasoning),
            (self.close, Channel::Answer),
        ] {
            for &marker in markers {
                all.extend(text.match_indices(marker).map(|(at, _)| Hit {
                    at,
                    end: at + marker.len(),
                    to,
                    marker,
                }));
            }
        }
        all.sort_by_key(|h| h.at);
        let mut out: Vec<Hit> = Vec::new();
        for h in all {
            if out.last().is_none_or(|p| h.at >= p.end) {
                out.push(h);
            }
        }
        out
    }

    /// Labels each step, given the decoded text of each step (special tokens included) and
    /// the channel the turn starts in.
    pub fn label(&self, start: Channel, texts: &[String]) -> Vec<Channel> {
        let full: String = texts.concat();
        let hits = self.hits(&full);
        let mut state = start;
        let mut after_close = false;
        let mut pos = 0;
        let mut out = Vec::with_capacity(texts.len());
        for t in texts {
            let (a, b) = (pos, pos + t.len());
            pos = b;
            let touching: Vec<&Hit> = hits.iter().filter(|h| h.at < b && h.end > a).collect();
            if !touching.is_empty() {
                if let Some(h) = touching.iter().rev().find(|h| h.end <= b) {
                    state = h.to;
                    after_close = h.to == Channel::Answer;
                }
                out.push(Channel::Marker);
            } else if after_close && state == Channel::Answer && t.trim().is_empty() {
                out.push(Channel::Marker);
            } else {
                after_close = false;
                out.push(state);
            }
        }
        out
    }

    /// The markers found in `text`, in order.
    pub fn markers_in(&self, text: &str) -> Vec<String> {
        self.hits(text)
            .into_iter()
            .map(|h| h.marker.to_string())
            .collect()
    }
}
