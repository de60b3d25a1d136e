//! Mistral tool calls, after `[TOOL_CALLS]`, in any of the three spellings Mistral's templates
//! use: a JSON list `[{"name": …, "arguments": {…}}, …]` (v0.3, Nemo), `NAME[ARGS]{…}` once
//! per call (v11+: Ministral 3, Devstral, Mistral Small 3.2), and `NAME[CALL_ID]id[ARGS]{…}`.
//! A call lasts until its arguments value is complete or the next `[TOOL_CALLS]`.

use super::blocks::{BlockFormat, Blocks, Piece};
use super::json::{scan_value, ObjectCall, Scan};
use super::{Calls, Delta};

/// The marker before calls.
pub const TOOL_CALLS: &str = "[TOOL_CALLS]";
const ARGS: &str = "[ARGS]";
const CALL_ID: &str = "[CALL_ID]";
/// Markers of the format.
pub const MARKERS: &[&str] = &[TOOL_CALLS, ARGS, CALL_ID];

/// One `[TOOL_CALLS]` block being generated.
#[derive(Debug, Default)]
enum Block {
    #[default]
    Undecided,
    /// A JSON list: one object call per element.
    List(Vec<ObjectCall>),
    /// `NAME[ARGS]value`: the call's index, and argument bytes forwarded.
    Named(Option<usize>, usize),
}

/// The parser.
#[derive(Debug)]
pub struct Mistral {
    blocks: Blocks,
    block: Block,
}

impl Default for Mistral {
    fn default() -> Self {
        Self {
            blocks: Blocks::new(&[TOOL_CALLS], &[]),
            block: Block::Undecided,
        }
    }
}

impl Mistral {
    /// Feeds the block's whole body; with `end`, finishes it. Whether it held a call.
    fn update(&mut self, body: &str, end: bool, calls: &mut Calls, out: &mut Delta) -> bool {
        if let Block::Undecided = self.block {
            self.block = match body.trim_start().chars().next() {
                None => return false,
                Some('[') => Block::List(Vec::new()),
                Some(_) => Block::Named(None, 0),
            };
        }
        match &mut self.block {
            Block::Undecided => false,
            Block::List(elements) => list(elements, body, end, calls, out),
            Block::Named(index, sent) => named(index, sent, body, end, calls, out),
        }
    }
}

/// The elements of a JSON list of call objects.
fn list(
    elements: &mut Vec<ObjectCall>,
    body: &str,
    end: bool,
    calls: &mut Calls,
    out: &mut Delta,
) -> bool {
    let mut rest = body.trim_start().strip_prefix('[').unwrap_or_default();
    let mut k = 0;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == ',');
        if rest.is_empty() || rest.starts_with(']') {
            break;
        }
        if elements.len() <= k {
            elements.push(ObjectCall::default());
        }
        match scan_value(rest) {
            Scan::Complete(n) => {
                elements[k].finish(&rest[..n], calls, out);
                rest = &rest[n..];
            }
            Scan::Incomplete if end => {
                elements[k].finish(rest, calls, out);
                break;
            }
            Scan::Incomplete => {
                elements[k].update(rest, calls, out);
                break;
            }
            Scan::Invalid => break,
        }
        k += 1;
    }
    elements.iter().any(ObjectCall::started)
}

/// `NAME[ARGS]value` or `NAME[CALL_ID]id[ARGS]value`.
fn named(
    index: &mut Option<usize>,
    sent: &mut usize,
    body: &str,
    end: bool,
    calls: &mut Calls,
    out: &mut Delta,
) -> bool {
    let Some(args_at) = body.find(ARGS) else {
        return false;
    };
    let i = match *index {
        Some(i) => i,
        None => {
            let head = &body[..args_at];
            let name = head.split(CALL_ID).next().unwrap_or(head).trim();
            let i = calls.start(name.to_string(), out);
            *index = Some(i);
            i
        }
    };
    let value = &body[args_at + ARGS.len()..];
    let stop = match scan_value(value) {
        Scan::Complete(n) => n,
        _ => value.len(),
    };
    if stop > *sent {
        calls.args(i, &value[*sent..stop], out);
        *sent = stop;
    }
    if end {
        if *sent == 0 {
            calls.args(i, "{}", out);
        }
        out.content.push_str(value[stop..].trim());
    }
    true
}

impl BlockFormat for Mistral {
    fn blocks(&mut self) -> &mut Blocks {
        &mut self.blocks
    }

    fn handle(&mut self, piece: Piece, calls: &mut Calls, out: &mut Delta) {
        match piece {
            Piece::Text(t) => out.content.push_str(&t),
            Piece::Open => self.block = Block::Undecided,
            Piece::Body(b) => {
                self.update(&b, false, calls, out);
            }
            Piece::Close(b, _) => {
                if !self.update(&b, true, calls, out) {
                    tracing::warn!("a {TOOL_CALLS} block is not a tool call; returned as text");
                    out.content.push_str(TOOL_CALLS);
                    out.content.push_str(&b);
                }
                self.block = Block::Undecided;
            }
        }
    }
}
