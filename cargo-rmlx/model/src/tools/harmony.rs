//! GPT-OSS's harmony format, which carries reasoning and tool calls in one message structure:
//! `<|channel|>analysis<|message|>…<|end|>` (reasoning), `<|start|>assistant to=functions.NAME
//! <|channel|>commentary json<|message|>{…}<|call|>` (a tool call; the recipient may also follow
//! the channel), `<|channel|>final<|message|>…<|return|>` (the answer). The generation prompt
//! ends with `<|start|>assistant`, so the output begins inside a message header.

use super::marker::{find_marker, partial_tail};
use super::{Calls, Delta, FormatParser};

const START: &str = "<|start|>";
const CHANNEL: &str = "<|channel|>";
const MESSAGE: &str = "<|message|>";
/// What ends a message body.
const BODY_END: &[&str] = &["<|end|>", "<|call|>", "<|return|>", START];
/// Markers of the format (every harmony special token the parser reads).
pub const MARKERS: &[&str] = &[
    START,
    CHANNEL,
    MESSAGE,
    "<|end|>",
    "<|call|>",
    "<|return|>",
    "<|constrain|>",
];

/// Where a message's body goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Reasoning,
    Content,
    Tool(usize),
}

#[derive(Debug)]
enum State {
    /// Reading a header (up to `<|message|>`).
    Header(String),
    Body(Route),
    /// After a message, before the next `<|start|>`.
    Between,
}

/// The parser; `tools`: messages to a recipient are tool calls (else their body is content).
#[derive(Debug)]
pub struct Harmony {
    tools: bool,
    state: State,
    pending: String,
}

impl Harmony {
    /// A parser at the start of the assistant's first header.
    pub fn new(tools: bool) -> Self {
        Self {
            tools,
            state: State::Header(String::new()),
            pending: String::new(),
        }
    }

    /// One transition (or the held-back end); whether to look again.
    fn step(&mut self, calls: &mut Calls, out: &mut Delta) -> bool {
        match std::mem::replace(&mut self.state, State::Between) {
            State::Header(mut h) => match self.pending.find(MESSAGE) {
                Some(at) => {
                    h.push_str(&self.pending[..at]);
                    self.pending.drain(..at + MESSAGE.len());
                    self.state = State::Body(self.route(&h, calls, out));
                    true
                }
                None => {
                    let cut = self.pending.len() - partial_tail(&self.pending, &[MESSAGE]);
                    h.push_str(&self.pending[..cut]);
                    self.pending.drain(..cut);
                    self.state = State::Header(h);
                    false
                }
            },
            State::Body(route) => match find_marker(&self.pending, BODY_END) {
                Some((at, i)) => {
                    let body = self.pending[..at].to_string();
                    emit(route, &body, calls, out);
                    self.pending.drain(..at + BODY_END[i].len());
                    self.state = if BODY_END[i] == START {
                        State::Header(String::new())
                    } else {
                        State::Between
                    };
                    true
                }
                None => {
                    let cut = self.pending.len() - partial_tail(&self.pending, BODY_END);
                    let body = self.pending[..cut].to_string();
                    emit(route, &body, calls, out);
                    self.pending.drain(..cut);
                    self.state = State::Body(route);
                    false
                }
            },
            State::Between => match self.pending.find(START) {
                Some(at) => {
                    out.content.push_str(self.pending[..at].trim());
                    self.pending.drain(..at + START.len());
                    self.state = State::Header(String::new());
                    true
                }
                None => false,
            },
        }
    }

    /// Where the body of a message with header `h` goes.
    fn route(&self, h: &str, calls: &mut Calls, out: &mut Delta) -> Route {
        let word = |key: &str| {
            let at = h.find(key)? + key.len();
            let rest = &h[at..];
            let end = rest
                .find(|c: char| c.is_whitespace() || c == '<')
                .unwrap_or(rest.len());
            Some(&rest[..end])
        };
        let recipient = word("to=").filter(|r| *r != "assistant" && !r.is_empty());
        match (recipient, word(CHANNEL)) {
            (Some(r), _) if self.tools => {
                let name = r.strip_prefix("functions.").unwrap_or(r);
                Route::Tool(calls.start(name.to_string(), out))
            }
            (_, Some("analysis")) => Route::Reasoning,
            _ => Route::Content,
        }
    }
}

fn emit(route: Route, text: &str, calls: &mut Calls, out: &mut Delta) {
    match route {
        Route::Reasoning => out.reasoning.push_str(text),
        Route::Content => out.content.push_str(text),
        Route::Tool(i) => calls.args(i, text, out),
    }
}

impl FormatParser for Harmony {
    fn push(&mut self, text: &str, calls: &mut Calls, out: &mut Delta) {
        self.pending.push_str(text);
        while self.step(calls, out) {}
    }

    fn finish(&mut self, calls: &mut Calls, out: &mut Delta) {
        let rest = std::mem::take(&mut self.pending);
        match std::mem::replace(&mut self.state, State::Between) {
            // A model that never wrote a harmony header answered in plain text.
            State::Header(h) if !h.contains(CHANNEL) => out.content.push_str((h + &rest).trim()),
            State::Header(_) => {}
            State::Body(route) => emit(route, &rest, calls, out),
            State::Between => out.content.push_str(rest.trim()),
        }
        calls.fill_empty(out);
    }
}
