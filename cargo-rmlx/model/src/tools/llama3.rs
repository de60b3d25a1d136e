//! Llama 3.x tool calls: the whole answer is a JSON object `{"name": …, "parameters": {…}}`
//! (Llama 3.1/3.2/3.3 custom tools), optionally after `<|python_tag|>`; several calls are
//! separated by `;`. The answer's first characters decide: an object whose first key is
//! `name` starts calls, anything else is plain content from then on.

use super::json::{scan_value, ObjectCall, Scan};
use super::{Calls, Delta, FormatParser};

/// The marker of an ipython-mode call.
pub const PYTHON_TAG: &str = "<|python_tag|>";
/// Markers of the format.
pub const MARKERS: &[&str] = &[PYTHON_TAG];

#[derive(Debug, Default, PartialEq, Eq)]
enum Mode {
    /// Nothing decisive seen yet.
    #[default]
    Start,
    Content,
    Calls,
}

/// The parser.
#[derive(Debug, Default)]
pub struct Llama3 {
    mode: Mode,
    pending: String,
    /// Where the current object starts in `pending` (calls mode).
    at: usize,
    call: ObjectCall,
}

/// What the start of an answer says.
enum Start {
    Wait,
    Content,
    /// Calls, after this many bytes (the tag).
    Calls(usize),
}

fn classify(text: &str) -> Start {
    let t = text.trim_start();
    let lead = text.len() - t.len();
    if t.starts_with(PYTHON_TAG) {
        return Start::Calls(lead + PYTHON_TAG.len());
    }
    if t.is_empty() || PYTHON_TAG.starts_with(t) {
        return Start::Wait;
    }
    let Some(obj) = t.strip_prefix('{') else {
        return Start::Content;
    };
    let key = obj.trim_start();
    if key.starts_with("\"name\"") {
        Start::Calls(lead)
    } else if "\"name\"".starts_with(key) {
        Start::Wait
    } else {
        Start::Content
    }
}

impl Llama3 {
    /// Works through the calls in `pending` from `at`.
    fn calls(&mut self, end: bool, calls: &mut Calls, out: &mut Delta) {
        loop {
            let rest = &self.pending[self.at..];
            let skipped = rest.len()
                - rest
                    .trim_start_matches(|c: char| c.is_whitespace() || c == ';')
                    .len();
            let obj = &rest[skipped..];
            if obj.is_empty() {
                return;
            }
            match scan_value(obj) {
                Scan::Complete(n) => {
                    if !self.call.finish(&obj[..n], calls, out) {
                        out.content.push_str(&obj[..n]);
                    }
                    self.call = ObjectCall::default();
                    self.at += skipped + n;
                }
                Scan::Incomplete if !end => return self.call.update(obj, calls, out),
                Scan::Incomplete => {
                    if !self.call.finish(obj, calls, out) {
                        out.content.push_str(obj);
                    }
                    self.at = self.pending.len();
                    return;
                }
                Scan::Invalid => {
                    // Text after the calls: content from here on.
                    out.content.push_str(obj);
                    self.pending.clear();
                    self.at = 0;
                    self.mode = Mode::Content;
                    return;
                }
            }
        }
    }
}

impl FormatParser for Llama3 {
    fn push(&mut self, text: &str, calls: &mut Calls, out: &mut Delta) {
        if self.mode == Mode::Content {
            out.content.push_str(text);
            return;
        }
        self.pending.push_str(text);
        if self.mode == Mode::Start {
            match classify(&self.pending) {
                Start::Wait => return,
                Start::Content => {
                    self.mode = Mode::Content;
                    out.content.push_str(&std::mem::take(&mut self.pending));
                    return;
                }
                Start::Calls(at) => {
                    self.mode = Mode::Calls;
                    self.at = at;
                }
            }
        }
        self.calls(false, calls, out);
    }

    fn finish(&mut self, calls: &mut Calls, out: &mut Delta) {
        match self.mode {
            Mode::Start => out.content.push_str(&std::mem::take(&mut self.pending)),
            Mode::Calls => self.calls(true, calls, out),
            Mode::Content => {}
        }
    }
}
