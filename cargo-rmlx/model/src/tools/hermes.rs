//! Hermes / Qwen tool calls: `<tool_call>` … `</tool_call>` around either a JSON object
//! `{"name": …, "arguments": {…}}` (Qwen2.5, Qwen3, SmolLM3, Hermes) or the XML body of
//! Qwen3.5 / Qwen3-Coder (`<function=NAME><parameter=K>…`, [`super::qwen_xml`]). The body's
//! first character decides; text outside the tags is answer content.

use serde_json::Value;

use super::blocks::{BlockFormat, Blocks, Piece};
use super::json::ObjectCall;
use super::qwen_xml::{ParamTypes, XmlCall};
use super::{Calls, Delta};

/// The start marker of a tool call.
pub const START: &str = "<tool_call>";
/// The end marker of a tool call.
pub const END: &str = "</tool_call>";
/// Markers of the format.
pub const MARKERS: &[&str] = &[START, END];

/// The body of the call being generated.
#[derive(Debug)]
enum Body {
    Undecided,
    Json(ObjectCall),
    Xml(XmlCall),
}

/// The parser.
#[derive(Debug)]
pub struct Hermes {
    blocks: Blocks,
    body: Body,
    types: ParamTypes,
}

impl Hermes {
    /// A parser; `tools` give parameter types to the XML body.
    pub fn new(tools: Option<&Value>) -> Self {
        Self {
            blocks: Blocks::new(&[START], &[END]),
            body: Body::Undecided,
            types: ParamTypes::new(tools),
        }
    }

    fn update(&mut self, body: &str, calls: &mut Calls, out: &mut Delta) {
        if let Body::Undecided = self.body {
            self.body = match body.trim_start().chars().next() {
                Some('{') => Body::Json(ObjectCall::default()),
                Some('<') => Body::Xml(XmlCall::default()),
                _ => return,
            };
        }
        match &mut self.body {
            Body::Undecided => {}
            Body::Json(c) => c.update(body, calls, out),
            Body::Xml(c) => c.update(body, &self.types, calls, out),
        }
    }
}

impl BlockFormat for Hermes {
    fn blocks(&mut self) -> &mut Blocks {
        &mut self.blocks
    }

    fn handle(&mut self, piece: Piece, calls: &mut Calls, out: &mut Delta) {
        match piece {
            Piece::Text(t) => out.content.push_str(&t),
            Piece::Open => self.body = Body::Undecided,
            Piece::Body(b) => self.update(&b, calls, out),
            Piece::Close(b, closed) => {
                self.update(&b, calls, out);
                let started = match &mut self.body {
                    Body::Undecided => false,
                    Body::Json(c) => c.finish(&b, calls, out),
                    Body::Xml(c) => c.finish(&b, &self.types, calls, out),
                };
                if !started {
                    tracing::warn!("a {START} block is not a tool call; returned as text");
                    out.content.push_str(START);
                    out.content.push_str(&b);
                    if closed {
                        out.content.push_str(END);
                    }
                }
                self.body = Body::Undecided;
            }
        }
    }
}
